"""Model families (one module each, on the `ModelFamily` contract) and a small cache of loaded pipelines."""

from __future__ import annotations

import json
from collections import OrderedDict

import torch

from .base import Capabilities, ContinuationMode, ModelFamily, TextEmbeds, TokenLayout  # noqa: F401
from .registry import DEFAULT_FAMILY, family, family_named, family_names  # noqa: F401

# Loading a real model takes minutes; keep the last one (a bounded cache, one entry by default).
_MAX_PIPELINES = 1
_pipelines: "OrderedDict[tuple, object]" = OrderedDict()


def get_pipeline(preset: dict, device: torch.device | None = None):
    fam = family(preset)
    device = device or fam.default_device()
    key = (preset["family"], preset["source"], preset["revision"], preset["dtype"],
           json.dumps(preset["tiny"], sort_keys=True), str(device))
    if key in _pipelines:
        _pipelines.move_to_end(key)
        return _pipelines[key]
    while len(_pipelines) >= _MAX_PIPELINES:
        _pipelines.popitem(last=False)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    pipe = fam.load_pipeline(preset, device)
    # The cached pipeline is shared between requests and its base weights never train (a LoRA adds the trainable
    # ones and freezes the rest): frozen from the start, a LoRA's load and unload leave it exactly as loaded
    # (compiled blocks guard on requires_grad: no recompilation after the first adapter).
    for transformer in fam.transformers(pipe):
        transformer.requires_grad_(False)
    _pipelines[key] = pipe
    return pipe


def clear_pipelines() -> None:
    _pipelines.clear()
