"""Training checkpoints: LoRA, optimizer, scheduler, RNG states and step, written atomically.

A checkpoint is a folder `checkpoints/step-000123/` that is complete or absent: it is written
under a temporary name and renamed, so a crash mid-write leaves the previous one intact.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "state.json"


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if re.fullmatch(r"step-\d+", p.name) and (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(root: Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def save_checkpoint(root: Path, step: int, *, transformer, family, optimizer, lr_scheduler, state: dict,
                    keep: int) -> Path:
    from .lora import save_lora

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_lora(transformer, tmp / "lora", family, comfy=False)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(lr_scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(_rng_state(), tmp / "rng.pt")
    # state.json last: its presence marks the folder complete.
    (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, *, transformer, optimizer, lr_scheduler) -> dict:
    from safetensors.torch import load_file

    from .lora import DIFFUSERS_WEIGHT_NAME, set_lora_state_dict

    raw = load_file(str(path / "lora" / DIFFUSERS_WEIGHT_NAME))
    # diffusers prefixes keys with "transformer."; peft expects them without.
    state_dict = {k.removeprefix("transformer."): v for k, v in raw.items()}
    set_lora_state_dict(transformer, state_dict)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    lr_scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    _set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return json.loads((path / STATE_FILE).read_text())
