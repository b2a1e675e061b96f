"""Radial attention in a diffusers transformer, through its attention processors.

`install_radial_attention(transformer, settings, family)` gives every self-attention layer the
family names (`family.attention_layers`) its own radial processor (`family.radial_processor`),
all sharing one `AttentionSchedule`; other layers keep their processors. A forward pre-hook on
the transformer feeds the schedule the timestep and latent shape. `pattern="dense"` restores the
family's stock processor, so it is exactly stock diffusers. The family comes from the argument or
from the tag its loader put on the transformer (`tag_family`); this module knows no family.

`attend` is what a family's processor calls once it has q, k, v: radial or dense, as the
schedule says for that layer and step. With Ulysses context parallelism on (`schedule.cp`, set by
`context_parallel.enable_context_parallel`) it runs that same attention on the full sequence for
a share of the heads, between two all-to-alls; the processors stay unaware of it.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
import torch.nn.functional as F

from .schedule import AttentionSchedule, AttentionSettings

_HOOK_ATTR = "_radial_studio_hook"
_SCHEDULE_ATTR = "_radial_studio_schedule"
_FAMILY_ATTR = "_radial_studio_family"
_CP_ATTR = "_radial_studio_cp"  # set while context parallelism is on (context_parallel.py)

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


def attend(schedule: AttentionSchedule, layer_index: int, query, key, value, attention_mask=None):
    """Attention of one layer on [B, S, H, D]: radial when the schedule says so, else dense."""
    if schedule.cp is not None:  # q, k, v hold this rank's tokens: attend over all of them, a share of the heads
        return schedule.cp.ulysses(lambda q, k, v: _attend(schedule, layer_index, q, k, v), query, key, value,
                                   attention_mask)
    return _attend(schedule, layer_index, query, key, value, attention_mask)


# False: every layer's attention runs outside the compiled block graphs, as it did before the operators
# (`radial_op`); for the A/B in bench/e2e.py (--attention_outside_graph), not a setting.
ATTENTION_IN_GRAPH = True


def attend_layer(processor, query, key, value, attention_mask=None):
    """`attend` for a radial processor's own layer, as one node of a torch.compile graph.

    Regional compilation (engine.models.regional_compile) compiles each transformer block. Radial attention
    is a custom operator (`radial_op`) and dense attention is SDPA, so neither breaks the block's graph. The
    layer's choice for this step is `processor.radial_now`, which the schedule sets before each forward:
    compiled code reads that flag, never the layer index, so its guards have two values (dense, radial),
    not one per block. Context parallelism, SageAttention and the flex backend run outside the graph.
    """
    schedule = processor.schedule
    s = schedule.settings
    if schedule.cp is not None or not ATTENTION_IN_GRAPH or s.dense_backend == "sage" or s.backend == "flex":
        return _attend_outside_graph(processor, query, key, value, attention_mask)
    if not processor.radial_now:
        return dense_attention(query, key, value, attention_mask)
    return _radial(schedule, query, key, value)


@torch.compiler.disable
def _attend_outside_graph(processor, query, key, value, attention_mask=None):
    # the processor is passed whole: compiled code never reads its layer index (a guard on it would recompile
    # the graph for every block)
    return attend(processor.schedule, processor.layer_index, query, key, value, attention_mask)


def _attend(schedule: AttentionSchedule, layer_index: int, query, key, value, attention_mask=None):
    if schedule.use_radial(layer_index):
        return _radial(schedule, query, key, value)
    return dense_attention(query, key, value, attention_mask, schedule.settings.dense_backend)


def _radial(schedule: AttentionSchedule, query, key, value):
    """Radial attention with the schedule's geometry: the custom operator, in or outside a graph, so that every
    path (compiled, eager, context parallel) computes the same sums; flex (no LSE) has its own call."""
    from . import backends, radial_op

    s = schedule.settings
    attention = backends.radial_attention if s.backend == "flex" else radial_op.radial
    return attention(query, key, value, num_frames=schedule.num_frames, tokens_per_frame=schedule.tokens_per_frame,
                     decay_factor=s.decay_factor, block_size=s.block_size, sink=s.sink, backend=s.backend)


def tag_family(transformer, family) -> None:
    """Remember which model family a loaded transformer belongs to (its loader calls this)."""
    setattr(transformer, _FAMILY_ATTR, family)


def _family_of(transformer, family):
    family = family or getattr(transformer, _FAMILY_ATTR, None)
    if family is None:
        raise ValueError("this transformer was not loaded through engine.models: pass its model family "
                         "(e.g. family=engine.models.family_named(...)).")
    return family


def _observe_hook(schedule: AttentionSchedule):
    def hook(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        schedule.observe(timestep, hidden.shape)

    return hook


def _refuse_under_context_parallel(transformer) -> None:
    if getattr(transformer, _CP_ATTR, None) is not None:  # new processors would drop the all-to-alls silently
        raise ValueError("context parallelism (setting 'context_parallel') is on for this transformer: call "
                         "disable_context_parallel(transformer) before changing its attention processors, then "
                         "enable_context_parallel again (the order is install_radial_attention, then enable).")


def remove_radial_attention(transformer, family=None) -> None:
    """Back to the family's stock processors and no hook."""
    _refuse_under_context_parallel(transformer)
    family = _family_of(transformer, family)
    handle = getattr(transformer, _HOOK_ATTR, None)
    if handle is not None:
        handle.remove()
        setattr(transformer, _HOOK_ATTR, None)
    setattr(transformer, _SCHEDULE_ATTR, None)
    transformer.set_attn_processor(family.stock_processor(transformer))


def install_radial_attention(transformer, settings: AttentionSettings, family=None) -> AttentionSchedule | None:
    """Install radial processors on the family's self-attention layers (or stock ones for pattern='dense').

    Returns the shared schedule (None for the dense pattern). Calling it again replaces the
    previous installation, so one loaded model can switch settings between requests.
    """
    family = _family_of(transformer, family)
    remove_radial_attention(transformer, family)
    if settings.pattern == "dense":
        return None
    settings = dataclasses.replace(settings, sink=family.attention_sink)
    patch = getattr(getattr(transformer, "config", None), "patch_size", None)
    patch = tuple(patch) if isinstance(patch, (list, tuple)) and len(patch) == 3 else family.patch_size
    schedule = AttentionSchedule(settings, patch)
    processors = dict(transformer.attn_processors)
    layers = family.attention_layers(transformer)
    if not layers:
        raise ValueError(f"model family '{family.name}' names no attention layer for radial processors in this model.")
    for layer in layers:
        processors[layer.processor_name] = schedule.attach(family.radial_processor(layer, schedule))
    transformer.set_attn_processor(processors)
    handle = transformer.register_forward_pre_hook(_observe_hook(schedule), with_kwargs=True)
    setattr(transformer, _HOOK_ATTR, handle)
    setattr(transformer, _SCHEDULE_ATTR, schedule)
    return schedule


def installed_schedule(transformer) -> AttentionSchedule | None:
    return getattr(transformer, _SCHEDULE_ATTR, None)
