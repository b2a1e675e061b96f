"""Frozen base weights stored in float8, computed in the compute dtype (diffusers' layerwise casting).

Each base Linear/Conv keeps its weight as float8_e4m3fn and is cast up just for its own forward
(and for gradient checkpointing's recompute), so the base costs 1 byte per parameter instead of 2.
The LoRA layers (`lora_A`/`lora_B`, trainable, fp32) and the family's precision-sensitive modules
(norms, embeddings: the model's `_skip_layerwise_casting_patterns`) are never cast. Apply after
the LoRA is added: PEFT would otherwise create its adapters in the base weight's dtype.
"""

from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
_NEVER = ("lora_",)  # PEFT adapter modules: trainable, kept in their own dtype


def store_base_in_fp8(transformer, compute_dtype: torch.dtype) -> int:
    """Store the frozen base weights of `transformer` in float8; returns how many bytes that saves."""
    before = _frozen_bytes(transformer)
    own = tuple(getattr(transformer, "_skip_layerwise_casting_patterns", None) or ())
    transformer.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=compute_dtype,
                                         skip_modules_pattern=own + _NEVER)
    return before - _frozen_bytes(transformer)


def _frozen_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters() if not p.requires_grad)


def fp8_weight_count(transformer) -> int:
    """How many parameters are stored in float8 (for reports and tests)."""
    return sum(p.numel() for p in transformer.parameters() if p.dtype == FP8)
