"""LoRA adapters on the transformer: attach, save (diffusers + ComfyUI formats), load.

The diffusers-format file carries the adapter metadata (rank, alpha, targets) so a stock
`WanPipeline.load_lora_weights(dir)` restores `lora_alpha` exactly. The ComfyUI-style export
uses Wan's original module names (`diffusion_model.blocks.N.self_attn.q.lora_down.weight`,
with an `.alpha` per module), which diffusers' Wan loader also converts.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import InputError

ADAPTER_NAME = "default"
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
COMFY_WEIGHT_NAME = "lora_comfyui.safetensors"

# diffusers module path -> Wan original module path (inside a block)
_TO_ORIGINAL = {
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v", "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v", "attn2.to_out.0": "cross_attn.o",
    "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}


def add_lora(transformer, rank: int, alpha: float, dropout: float, target_modules: list[str], seed: int | None = None):
    """Attach a fresh trainable LoRA (B = 0, so the model starts unchanged); base weights frozen."""
    from peft import LoraConfig

    transformer.requires_grad_(False)
    if seed is not None:  # LoRA A init draws from the global RNG
        torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                        init_lora_weights=True)
    try:
        transformer.add_adapter(config, adapter_name=ADAPTER_NAME)
    except ValueError as err:
        raise InputError(f"target_modules {list(target_modules)} do not match the model's layers: {err}") from None
    return [p for p in transformer.parameters() if p.requires_grad]


def lora_state_dict(transformer) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    sd = get_peft_model_state_dict(transformer, adapter_name=ADAPTER_NAME)
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sd.items()}


def set_lora_state_dict(transformer, state: dict[str, torch.Tensor]) -> None:
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(transformer, state, adapter_name=ADAPTER_NAME)
    if getattr(result, "unexpected_keys", None):
        raise InputError(f"LoRA weights do not fit this model: unexpected keys {result.unexpected_keys[:3]}...")


def adapter_metadata(transformer) -> dict:
    return transformer.peft_config[ADAPTER_NAME].to_dict()


def save_lora(transformer, directory: str | Path, comfy: bool = True) -> Path:
    """Write the diffusers-format LoRA (with metadata) and, optionally, the ComfyUI export."""
    from diffusers import WanPipeline

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = lora_state_dict(transformer)
    meta = adapter_metadata(transformer)
    WanPipeline.save_lora_weights(directory, transformer_lora_layers=state, transformer_lora_adapter_metadata=meta,
                                  weight_name=DIFFUSERS_WEIGHT_NAME, safe_serialization=True)
    if comfy:
        save_comfy_export(state, meta, directory / COMFY_WEIGHT_NAME)
    return directory


def to_comfy_state_dict(state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        m = re.match(r"(?:transformer\.)?blocks\.(\d+)\.(.+)\.lora_([AB])\.weight$", key)
        if not m or m.group(2) not in _TO_ORIGINAL:
            raise ValueError(f"cannot export LoRA key '{key}' to the ComfyUI format")
        block, module, which = m.groups()
        base = f"diffusion_model.blocks.{block}.{_TO_ORIGINAL[module]}"
        out[f"{base}.lora_{'down' if which == 'A' else 'up'}.weight"] = value
        out[f"{base}.alpha"] = torch.tensor(float(alpha))
    return out


def save_comfy_export(state: dict[str, torch.Tensor], meta: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file(to_comfy_state_dict(state, meta["lora_alpha"]), str(path), metadata={"format": "pt"})


def load_lora_into_pipeline(pipe, lora_dir: str | Path, adapter_name: str = "radial-studio") -> str:
    """Load an adapter (diffusers format) into a pipeline; returns the adapter name.

    `lora_dir` is a folder or a Hub id `user/repo[@revision]` (downloaded by engine.hub)."""
    from ..hub import resolve_adapter

    lora_dir = resolve_adapter(lora_dir)
    if not (lora_dir / DIFFUSERS_WEIGHT_NAME).is_file():
        raise InputError(
            f"LoRA folder '{lora_dir}' has no {DIFFUSERS_WEIGHT_NAME}. Point it at a training run's "
            "`final/` or `best_model/` folder, or a checkpoint's `lora/` folder."
        )
    pipe.load_lora_weights(str(lora_dir), weight_name=DIFFUSERS_WEIGHT_NAME, adapter_name=adapter_name)
    return adapter_name
