"""Radial attention for Wan through diffusers attention processors.

`install_radial_attention(transformer, settings)` gives every self-attention layer (`attn1`)
its own `WanRadialAttnProcessor` that knows its layer index, all sharing one
`AttentionSchedule`; cross-attention keeps the stock processor. A forward pre-hook on the
transformer feeds the schedule the timestep and token layout. `pattern="dense"` restores the
stock processors, so it is exactly stock diffusers.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .schedule import AttentionSchedule, AttentionSettings

_HOOK_ATTR = "_radial_studio_hook"
_SCHEDULE_ATTR = "_radial_studio_schedule"


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's RoPE: channel pairs (2i, 2i+1) rotate together; cos/sin come repeated per pair."""
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2).type_as(x)


_SAGE_NOTICE: list[str] = []


def _sage():
    """SageAttention's kernel if it is installed and a GPU is present, else None (said once)."""
    try:
        from sageattention import sageattn
    except ImportError:
        sageattn = None
    if sageattn is None or not torch.cuda.is_available():
        if not _SAGE_NOTICE:
            _SAGE_NOTICE.append("SageAttention is not installed (or no GPU); dense attention uses PyTorch SDPA.")
            warnings.warn(_SAGE_NOTICE[0], stacklevel=3)
        return None
    return sageattn


def dense_attention(query, key, value, attention_mask=None, backend: str = "sdpa"):
    """Dense attention on [B, S, H, D]; "sdpa" is the same call diffusers' native backend makes."""
    if backend == "sage" and attention_mask is None and query.is_cuda:
        sageattn = _sage()
        if sageattn is not None:
            return sageattn(query, key, value, tensor_layout="NHD", is_causal=False)
    elif backend == "sage":
        _sage()
    return F.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=attention_mask
    ).transpose(1, 2)


class WanRadialAttnProcessor:
    """Self-attention of one Wan block: radial (block-sparse) or dense, as the schedule says."""

    def __init__(self, layer_index: int, schedule: AttentionSchedule):
        self.layer_index = layer_index
        self.schedule = schedule

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        from .backends import radial_attention

        if encoder_hidden_states is not None:
            raise ValueError("WanRadialAttnProcessor is for self-attention (attn1) only.")
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _rotate(query, *rotary_emb)
            key = _rotate(key, *rotary_emb)

        sched = self.schedule
        if sched.use_radial(self.layer_index):
            s = sched.settings
            out = radial_attention(
                query, key, value, num_frames=sched.num_frames, tokens_per_frame=sched.tokens_per_frame,
                decay_factor=s.decay_factor, block_size=s.block_size, sink=s.sink, backend=s.backend,
            )
        else:
            out = dense_attention(query, key, value, attention_mask, sched.settings.dense_backend)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def _observe_hook(schedule: AttentionSchedule):
    def hook(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        schedule.observe(timestep, hidden.shape)

    return hook


def remove_radial_attention(transformer) -> None:
    """Back to stock diffusers processors and no hook."""
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    handle = getattr(transformer, _HOOK_ATTR, None)
    if handle is not None:
        handle.remove()
        setattr(transformer, _HOOK_ATTR, None)
    setattr(transformer, _SCHEDULE_ATTR, None)
    transformer.set_attn_processor(WanAttnProcessor())


def install_radial_attention(transformer, settings: AttentionSettings) -> AttentionSchedule | None:
    """Install radial processors on every `attn1` (or stock ones for pattern='dense').

    Returns the shared schedule (None for the dense pattern). Calling it again replaces the
    previous installation, so one loaded model can switch settings between requests.
    """
    remove_radial_attention(transformer)
    if settings.pattern == "dense":
        return None
    schedule = AttentionSchedule(settings, transformer.config.patch_size)
    processors = {}
    for name, proc in transformer.attn_processors.items():
        # names look like "blocks.<i>.attn1.processor"
        parts = name.split(".")
        if parts[0] == "blocks" and parts[2] == "attn1":
            processors[name] = WanRadialAttnProcessor(int(parts[1]), schedule)
        else:
            processors[name] = proc
    transformer.set_attn_processor(processors)
    handle = transformer.register_forward_pre_hook(_observe_hook(schedule), with_kwargs=True)
    setattr(transformer, _HOOK_ATTR, handle)
    setattr(transformer, _SCHEDULE_ATTR, schedule)
    return schedule


def installed_schedule(transformer) -> AttentionSchedule | None:
    return getattr(transformer, _SCHEDULE_ATTR, None)
