"""Ulysses context parallelism (CP) for a diffusers video transformer, forward and backward.

With CP of degree N a sample's video tokens are split over the N ranks of a CP group: everything
per-token (norms, linears, FFN, cross-attention to the replicated text) runs on S/N tokens, and each
self-attention layer turns q, k, v from [B, S/N, H, D] into [B, S, H/N, D] with one all-to-all,
attends over the whole sequence for its H/N heads (radial or dense, our kernels unchanged) and turns
the result back with a second all-to-all. Degree 1 is the single-process path untouched: nothing is
installed and nothing is communicated. The degree must divide the head count (Wan 1.3B: 12, 14B: 40,
the tiny preset: 2) and the tokens per sample (81 frames at 480x832: 21 x 30 x 52 = 32760); other
degrees are refused with the valid ones (`check_degree`), nothing is padded.

Design: diffusers' machinery for the split and the gather, ours for the attention.
* Split/gather: the model's own `_cp_plan` (WanTransformer3DModel: split the rotary embedding, the
  hidden states entering block 0 and per-token timesteps; gather `proj_out`'s output), installed with
  diffusers' `apply_context_parallel` hooks. They run on CPU/gloo, and their backward is what we need:
  the split is a slice, the gather's backward keeps this rank's slice of the (replicated) output
  gradient. We skip `ModelMixin.enable_parallelism`: it cannot be undone (no disable; a second call
  raises) and picks a device by `rank % accelerator count`, a division by zero on the CPU.
* Attention: diffusers' Ulysses (`TemplatedUlyssesAttention`) needs a backend split into separate
  forward/backward ops, which our radial kernels are not. So the shared `AttentionSchedule` carries
  the `ContextParallel` (`schedule.cp`), and `processor.attend` wraps whatever attention it runs in
  `ContextParallel.ulysses`, whose all-to-alls are diffusers' autograd-aware `SeqAllToAllDim`
  (the backward is the reverse all-to-all). q, k and v travel in one all-to-all.
* The dense pattern keeps diffusers' stock processors: they get the parallel config
  (`processor._parallel_config`) and diffusers' own Ulysses path runs, so dense stays stock diffusers.
The schedule's forward pre-hook runs before the split hooks (those wrap `forward`), so it sees the
full frame/token counts.

Order: `install_radial_attention` (any pattern) first, then `enable_context_parallel` on the loaded
(unwrapped) transformer, then any DDP/FSDP wrapping. While CP is on,
`install_radial_attention`/`remove_radial_attention` refuse (new processors would drop the all-to-alls);
to change attention settings: `disable_context_parallel`, install, enable again.

Groups: `ContextParallel.from_env(degree)` splits the world (already initialised `torch.distributed`)
into consecutive blocks of `degree` ranks, one CP group per block: ranks [b*N, (b+1)*N) form CP group b.
The ranks with the same position in every block form a data-parallel group (`data_group`, size
world/N, this rank's block is `data_rank`). Every rank of a CP group must get the same sample, noise
and timestep (shard the data by `data_rank` over `data_size`, seed by `data_rank`).

Gradients: every CP rank holds the full (gathered) output and computes the same loss, but its
backward only goes through its own tokens, so each parameter's gradient is a part; the gradient of
the sample is the SUM over the CP group: call `reduce_gradients(params, cp)` after backward and before
clipping or the optimizer step. With data parallelism on top (world = D x N):
* DDP/FSDP over `cp.data_group` (DDP(model, process_group=cp.data_group)) averages over the D
  replicas; `reduce_gradients` then sums over the CP group (both are linear: order does not matter);
* or DDP/FSDP over the whole world: it averages the parts over D*N ranks, which is the data-parallel
  mean divided by N; multiply the loss by N and skip `reduce_gradients`;
* CP degree == world size (D = 1): no DDP, just `reduce_gradients`.

Not covered: models without a diffusers `_cp_plan` (SkyReels-V2 with its per-frame timesteps, Wan
VACE, Open-Sora v2: enabling refuses), attention masks on self-attention, padding of token or head
counts the degree does not divide, ring attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .processor import _CP_ATTR, _family_of, installed_schedule

# Flattened gradients are all-reduced in buckets of at most this many elements (bounds the extra memory).
_BUCKET_ELEMS = 1 << 24


# ---------------------------------------------------------------------------- validation


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_degree(degree, heads: int | None, num_tokens: int | None = None, world_size: int | None = None) -> int:
    """The degree, if Ulysses CP of that degree works for `heads` heads, `num_tokens` tokens per sample and
    `world_size` ranks (those not None); else a ValueError that names `context_parallel` and the valid degrees."""
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise ValueError(f"context_parallel must be a positive integer (1 = off), got {degree!r}.")
    limits = {"attention heads of the model (each rank takes a share of the heads)": heads,
              "video tokens per sample (latent frames x latent height/patch x latent width/patch)": num_tokens,
              "ranks of the distributed world (ranks form CP groups of that size)": world_size}
    limits = {what: int(n) for what, n in limits.items() if n is not None}
    for what, n in limits.items():
        if n % degree:
            valid = _divisors(math.gcd(*limits.values()))
            hint = ("choose a video size / frame count whose token count it divides, or one of the valid degrees"
                    if what.startswith("video") else "use one of the valid degrees")
            raise ValueError(f"context_parallel={degree} does not divide the {n} {what}: {hint}. "
                             f"Valid context_parallel values here: {', '.join(map(str, valid))}.")
    return degree


# ---------------------------------------------------------------------------- groups


@dataclass(frozen=True, eq=False)
class ContextParallel:
    """One rank's view of Ulysses CP: its CP group (size `degree`) and its rank in it, plus the
    data-parallel group across the CP groups. Build it with `from_env` (degree 1 needs no group)."""

    degree: int = 1
    group: Any = None  # torch.distributed ProcessGroup of this rank's CP block
    rank: int = 0  # rank inside the CP group (which slice of the tokens this rank holds)
    data_group: Any = None  # the ranks at this position of every block (data parallelism across samples)
    data_rank: int = 0  # which CP group (block) this rank is in
    data_size: int = 1  # how many CP groups (data-parallel replicas)
    parallel_config: Any = None  # diffusers' ParallelConfig for the split/gather hooks and stock processors

    def __post_init__(self):
        if self.degree > 1 and (self.group is None or self.parallel_config is None):
            raise ValueError("ContextParallel with degree > 1 needs process groups: build it with "
                             "ContextParallel.from_env(degree) after torch.distributed.init_process_group.")

    @classmethod
    def from_env(cls, degree: int, device_type: str | None = None) -> "ContextParallel":
        """CP groups of `degree` consecutive ranks over the initialised default group (a collective call:
        every rank calls it with the same degree). Degree 1 works without torch.distributed."""
        initialised = dist.is_available() and dist.is_initialized()
        world = dist.get_world_size() if initialised else 1
        check_degree(degree, None, world_size=world)
        if degree == 1:
            rank = dist.get_rank() if initialised else 0
            return cls(data_group=dist.group.WORLD if initialised else None, data_rank=rank, data_size=world)
        device_type = device_type or _device_type()
        mesh = _mesh(device_type, world, degree)
        ulysses = mesh["ulysses"]
        return cls(degree=degree, group=ulysses.get_group(), rank=ulysses.get_local_rank(),
                   data_group=mesh["data"].get_group(), data_rank=mesh["data"].get_local_rank(),
                   data_size=world // degree, parallel_config=_parallel_config(mesh, degree, device_type))

    def ulysses(self, attention, query, key, value, attention_mask=None):
        """`attention(q, k, v)` on [B, S, H/N, D] (all tokens, this rank's heads) from this rank's
        [B, S/N, H, D] shards; returns this rank's [B, S/N, H, D] slice of the result."""
        from diffusers.models.attention_dispatch import SeqAllToAllDim

        if attention_mask is not None:
            raise ValueError("context_parallel > 1 does not support attention masks on self-attention; "
                             "set context_parallel to 1 for this model.")
        batch = query.shape[0]
        # one all-to-all for q, k and v (the batch dimension is carried along)
        qkv = SeqAllToAllDim.apply(self.group, torch.cat((query, key, value)), 2, 1)
        out = attention(*qkv.split(batch))
        return SeqAllToAllDim.apply(self.group, out, 1, 2)


def _device_type() -> str:
    return "cuda" if "nccl" in str(dist.get_backend()) else "cpu"


def _mesh(device_type: str, world: int, degree: int):
    from torch.distributed.device_mesh import DeviceMesh

    # diffusers' config wants "ring" and "ulysses" dimensions; ring attention is not used (size 1)
    layout = torch.arange(world).view(world // degree, 1, degree)
    return DeviceMesh(device_type, layout, mesh_dim_names=("data", "ring", "ulysses"))


def _parallel_config(mesh, degree: int, device_type: str):
    from diffusers import ContextParallelConfig, ParallelConfig

    config = ParallelConfig(context_parallel_config=ContextParallelConfig(ulysses_degree=degree, mesh=mesh))
    config.setup(dist.get_rank(), dist.get_world_size(), torch.device(device_type), mesh=mesh)
    return config


# ---------------------------------------------------------------------------- install


@dataclass
class _Installed:
    cp: ContextParallel
    plan: dict
    handle: Any  # the token-count check (a forward pre-hook)
    schedule: Any  # the radial schedule given `cp`, or None (dense pattern)
    stock_processors: list  # diffusers processors given the parallel config


def context_parallel_of(transformer) -> ContextParallel | None:
    """The CP installed on the transformer, or None."""
    state = getattr(transformer, _CP_ATTR, None)
    return None if state is None else state.cp


def enable_context_parallel(transformer, cp: ContextParallel, family=None) -> None:
    """Shard the transformer's tokens over `cp`'s group: after `install_radial_attention`, before any DDP/FSDP
    wrapping, on every rank of the group. Degree 1: nothing at all."""
    if cp.degree == 1:
        return
    if getattr(transformer, _CP_ATTR, None) is not None:
        raise ValueError("context parallelism is already on for this transformer: call disable_context_parallel first.")
    family = _family_of(transformer, family)
    config = transformer.config
    plan = getattr(transformer, "_cp_plan", None)
    if not plan:
        raise ValueError(f"context_parallel={cp.degree}: {type(transformer).__name__} (model family '{family.name}') "
                         "has no diffusers context-parallel plan (_cp_plan); set context_parallel to 1 for this model.")
    check_degree(cp.degree, config.num_attention_heads)
    from diffusers.hooks.context_parallel import apply_context_parallel

    stock = _wire_attention(transformer, family, cp)  # checks everything before it changes anything
    apply_context_parallel(transformer, cp.parallel_config.context_parallel_config, plan)
    handle = transformer.register_forward_pre_hook(
        _token_check(cp.degree, config.num_attention_heads, tuple(config.patch_size)), with_kwargs=True)
    setattr(transformer, _CP_ATTR, _Installed(cp, plan, handle, installed_schedule(transformer), stock))


def disable_context_parallel(transformer) -> None:
    """Back to the single-process transformer (the attention processors stay as installed)."""
    state = getattr(transformer, _CP_ATTR, None)
    if state is None:
        return
    from diffusers.hooks.context_parallel import remove_context_parallel

    remove_context_parallel(transformer, state.plan)
    state.handle.remove()
    if state.schedule is not None:
        state.schedule.cp = None
    for processor in state.stock_processors:
        processor._parallel_config = None
    delattr(transformer, _CP_ATTR)


def _wire_attention(transformer, family, cp: ContextParallel) -> list:
    """Make every self-attention layer do Ulysses: ours through the shared schedule, stock diffusers
    processors through their parallel config. Returns the stock processors it changed."""
    schedule = installed_schedule(transformer)
    processors = transformer.attn_processors
    stock = []
    for layer in family.attention_layers(transformer):
        processor = processors[layer.processor_name]
        if schedule is not None and getattr(processor, "schedule", None) is schedule:
            continue
        if not hasattr(processor, "_parallel_config"):
            raise ValueError(f"context_parallel={cp.degree}: the attention processor {type(processor).__name__} "
                             f"of '{layer.processor_name}' cannot split its work over ranks; call "
                             "install_radial_attention before enable_context_parallel, or set context_parallel to 1.")
        _check_backend(processor, cp.degree)
        if all(p is not processor for p in stock):
            stock.append(processor)
    if schedule is not None:
        schedule.cp = cp
    for processor in stock:
        processor._parallel_config = cp.parallel_config
    return stock


def _check_backend(processor, degree: int) -> None:
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    backend = getattr(processor, "_attention_backend", None)
    backend = _AttentionBackendRegistry.get_active_backend()[0] if backend is None else AttentionBackendName(backend)
    if not _AttentionBackendRegistry._is_context_parallel_available(backend):
        raise ValueError(f"context_parallel={degree}: diffusers' attention backend '{backend.value}' has no context "
                         "parallelism; use the radial pattern, another attention backend, or context_parallel=1.")


def _token_check(degree: int, heads: int, patch: tuple[int, int, int]):
    """A forward pre-hook that refuses (on every rank alike, before any collective) a token count
    the degree does not divide."""
    def hook(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        tokens = math.prod(n // p for n, p in zip(hidden.shape[2:], patch))
        check_degree(degree, heads, tokens)

    return hook


# ---------------------------------------------------------------------------- gradients


def reduce_gradients(params, cp: ContextParallel) -> None:
    """Sum the parameters' gradients over the CP group (each rank holds its tokens' part). Parameters
    without a gradient are skipped: all ranks of a CP group run the same graph, so they agree."""
    if cp.degree == 1:
        return
    for bucket in _buckets([p.grad for p in params if p.grad is not None]):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=cp.group)
        for grad, part in zip(bucket, flat.split([g.numel() for g in bucket])):
            grad.copy_(part.view_as(grad))


def _buckets(grads: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Gradients grouped by device and dtype (one flat all-reduce each), at most _BUCKET_ELEMS per bucket."""
    buckets: list[list[torch.Tensor]] = []
    sizes: list[int] = []
    current: dict[tuple, int] = {}  # (device, dtype) -> index of its open bucket
    for grad in grads:
        key = (grad.device, grad.dtype)
        i = current.get(key)
        if i is None or sizes[i] + grad.numel() > _BUCKET_ELEMS:
            i = current[key] = len(buckets)
            buckets.append([])
            sizes.append(0)
        buckets[i].append(grad)
        sizes[i] += grad.numel()
    return buckets
