"""LoRA adapters on a transformer: attach, save (diffusers + ComfyUI formats), load.

The diffusers-format file carries the adapter metadata (rank, alpha, targets) so the family's
stock pipeline (`load_lora_weights(dir)`) restores `lora_alpha` exactly; the family writes it
(`ModelFamily.save_lora_weights`). The ComfyUI-style export renames every key the family can
map (`ModelFamily.comfy_key`) and adds an `.alpha` per module; keys ComfyUI has no module for are
left out and reported (`SavedLora.comfy_skipped`, and a `comfy_skipped` entry in the export's
metadata). Files are byte-reproducible: keys and metadata are written in sorted order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import InputError

ADAPTER_NAME = "default"
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
COMFY_WEIGHT_NAME = "lora_comfyui.safetensors"


@dataclass
class SavedLora:
    directory: Path
    comfy_written: bool = False
    comfy_skipped: list[str] = field(default_factory=list)  # modules ComfyUI cannot load


def add_lora(transformer, rank: int, alpha: float, dropout: float, target_modules: list[str], seed: int | None = None):
    """Attach a fresh trainable LoRA (B = 0, so the model starts unchanged); base weights frozen."""
    from peft import LoraConfig

    transformer.requires_grad_(False)
    if seed is not None:  # LoRA A init draws from the global RNG
        torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=sorted(target_modules),
                        init_lora_weights=True)
    try:
        transformer.add_adapter(config, adapter_name=ADAPTER_NAME)
    except ValueError as err:
        raise InputError(f"target_modules {list(target_modules)} do not match the model's layers: {err}") from None
    return [p for p in transformer.parameters() if p.requires_grad]


def lora_state_dict(transformer) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    sd = get_peft_model_state_dict(transformer, adapter_name=ADAPTER_NAME)
    # A sharded (FSDP) model holds DTensors: gathering them is a collective, so every rank calls this then.
    whole = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in sorted(sd.items())}
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in whole.items()}


def set_lora_state_dict(transformer, state: dict[str, torch.Tensor]) -> None:
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(transformer, state, adapter_name=ADAPTER_NAME)
    if getattr(result, "unexpected_keys", None):
        raise InputError(f"LoRA weights do not fit this model: unexpected keys {result.unexpected_keys[:3]}...")


def adapter_metadata(transformer) -> dict:
    meta = transformer.peft_config[ADAPTER_NAME].to_dict()
    # peft keeps target_modules as a set: sort it, so the saved file does not depend on hash order
    return {k: (sorted(v) if isinstance(v, (set, frozenset)) else v) for k, v in sorted(meta.items())}


def save_lora(transformer, directory: str | Path, family, comfy: bool = True,
              state: dict[str, torch.Tensor] | None = None) -> SavedLora:
    """Write the diffusers-format LoRA (with metadata) and, when the family has one, the ComfyUI export.

    `state`: the LoRA weights already gathered (lora_state_dict on every rank of a sharded model)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = lora_state_dict(transformer) if state is None else state
    meta = adapter_metadata(transformer)
    family.save_lora_weights(directory, state, meta, DIFFUSERS_WEIGHT_NAME)
    _sort_file(directory / DIFFUSERS_WEIGHT_NAME)
    saved = SavedLora(directory)
    if comfy and family.capabilities.comfy_export:
        skipped = set()
        for suffix, part in family.lora_parts(state).items():  # one file per expert of a two-expert model
            skipped.update(save_comfy_export(part, meta["lora_alpha"], directory / comfy_weight_name(suffix), family))
        saved.comfy_skipped = sorted(skipped)
        saved.comfy_written = True
    return saved


def comfy_weight_name(suffix: str = "") -> str:
    """The ComfyUI export of a LoRA part (`ModelFamily.lora_parts`): lora_comfyui<suffix>.safetensors."""
    return COMFY_WEIGHT_NAME.replace(".safetensors", f"{suffix}.safetensors")


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file whose bytes depend only on its content.

    safetensors keeps `__metadata__` in a hash map, so its order (and the file's bytes) change from
    one save to the next; this writes the same header with every key in sorted order. The data
    section and every tensor's offsets are safetensors' own.
    """
    import struct

    from safetensors.torch import save

    raw = save(dict(sorted(tensors.items())))
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    if metadata:
        header["__metadata__"] = dict(sorted(metadata.items()))
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(text)) + text + raw[8 + n:]


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    Path(path).write_bytes(safetensors_bytes(tensors, metadata))


def _sort_file(path: Path) -> None:
    """Rewrite a safetensors file (written by a library) in the byte-reproducible form."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    write_safetensors(path, tensors, meta)


def to_comfy_state_dict(state: dict[str, torch.Tensor], alpha: float, family) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(ComfyUI-named weights with an `.alpha` per module, the modules that have no ComfyUI name)."""
    out, skipped = {}, set()
    state = family.comfy_state(state)
    for key in sorted(state):
        name = family.comfy_key(key)
        if name is None:
            skipped.add(key.removeprefix("transformer.").rsplit(".lora_", 1)[0])
            continue
        module, value = name.rsplit(".lora_", 1)[0], state[key]
        if family.comfy_alpha(module):
            out[module + ".alpha"] = torch.tensor(float(alpha))
        elif ".lora_up." in name:  # no alpha key: the scale alpha / rank goes into the up weights
            value = value * (float(alpha) / value.shape[1])
        out[name] = value
    return out, sorted(skipped)


def save_comfy_export(state: dict[str, torch.Tensor], alpha: float, path: Path, family) -> list[str]:
    """Write the ComfyUI file; returns the modules left out (ComfyUI has no module of that name)."""
    tensors, skipped = to_comfy_state_dict(state, alpha, family)
    metadata = {"format": "pt"}
    if skipped:
        metadata["comfy_skipped"] = json.dumps(skipped)
    write_safetensors(path, tensors, metadata)
    return skipped


def load_lora_into_pipeline(pipe, lora_dir: str | Path, family, adapter_name: str = "radial-studio") -> str:
    """Load an adapter folder (diffusers format) into a pipeline; returns the adapter name."""
    lora_dir = Path(lora_dir)
    if not (lora_dir / DIFFUSERS_WEIGHT_NAME).is_file():
        raise InputError(
            f"LoRA folder '{lora_dir.name}' has no {DIFFUSERS_WEIGHT_NAME}. Point it at a training run's "
            "`final/` or `best_model/` folder, or a checkpoint's `lora/` folder."
        )
    family.load_lora(pipe, lora_dir, DIFFUSERS_WEIGHT_NAME, adapter_name)
    return adapter_name
