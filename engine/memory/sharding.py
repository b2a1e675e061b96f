"""FSDP2: the transformer's weights, the LoRA and its AdamW moments sharded over the launched processes.

Every transformer block (the classes the model lists in `_no_split_modules`) is one FSDP unit,
all-gathered for its forward and again for its backward (gradient checkpointing recomputes it inside
that window) and resharded after; the root unit holds the rest. Nothing is cast on the way
(`MixedPrecisionPolicy()`: each weight is gathered in the dtype it is stored in, so bf16 base
weights, the fp32 norms diffusers keeps and the fp32 LoRA compute exactly as unsharded under
autocast); gradients are averaged over the world like DDP's, so the trainer's context-parallel loss
scale holds unchanged.

Checkpoints keep the unsharded format: `full_optimizer_state` (with `lora_state_dict`, a collective:
every rank calls it) gathers, and `shard_optimizer_state` / `shard_lora_state` cut a full state into
this rank's shards. A checkpoint therefore resumes under any number of processes, sharded or not.

Why torch's `fully_shard` and not accelerate's FSDP plugin: accelerate 1.15 turns FSDP on only for
GPU process groups, so the gloo tests on the CPU could not run the path users run. The calls are the
ones accelerate makes (one `fully_shard` per block, then the root), and an accelerate config that
asks for FSDP version 2 is served by this same path (engine.workers.trainer).

Not with fp8_base: diffusers' layerwise casting re-types the weights FSDP has just gathered, which
would keep every block's gathered copy alive. Sharding N ways saves more than fp8's halving anyway.
"""

from __future__ import annotations

import warnings

import torch

from ..errors import InputError
from .blocks import block_modules


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def shard_transformer(transformer, reshard_after_forward: bool = True) -> None:
    """fully_shard every block, then the root, over the default process group (already initialised).

    After the LoRA, the memory options, the attention processors and context parallelism are in place:
    sharding replaces the parameters, so build the optimizer from `transformer.parameters()` afterwards.
    `reshard_after_forward=False` keeps the gathered blocks from forward to backward (faster, more memory).
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not dist.is_initialized():
        raise InputError("fsdp needs the processes a launcher starts (accelerate launch or torchrun); "
                         "one plain process has nothing to shard over.")
    mesh = None
    if transformer.device.type == "cpu":  # fully_shard's default mesh is the accelerator's
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    # The root's output is a view (diffusers' unpatchify); torch warns that an in-place op on it would skip
    # FSDP's backward hook. Our callers (the losses, the samplers) use it out of place only, and the gloo
    # tests check that the gradients equal one process's.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(.*\) returned a view tensor")
    policy = MixedPrecisionPolicy()  # gather and compute in the stored dtypes: no rounding anywhere
    for block in block_modules(transformer, "fsdp"):
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(transformer, mesh=mesh, mp_policy=policy, reshard_after_forward=False)


def is_sharded(transformer) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(transformer, FSDPModule)


def set_gradient_sync(transformer, sync: bool) -> None:
    """Accumulate unsharded gradients locally (False) or reduce-scatter them at this backward (True)."""
    transformer.set_requires_gradient_sync(sync)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded tensor; a plain tensor as it is."""
    return t.to_local() if _is_dtensor(t) else t


def full(t):
    """The whole tensor of a shard (a collective: every rank calls it in the same order); others unchanged."""
    return t.full_tensor() if _is_dtensor(t) else t


def full_optimizer_state(optimizer) -> dict:
    """The optimizer's state dict with every sharded tensor gathered, in the format of an unsharded run."""
    state = optimizer.state_dict()
    return {**state, "state": {i: {k: full(v) for k, v in s.items()} for i, s in state["state"].items()}}


def _like(value, param):
    """`value` (a full tensor) cut into the shard `param` holds, when `param` is sharded."""
    if not (_is_dtensor(param) and torch.is_tensor(value) and value.shape == param.shape):
        return value
    from torch.distributed.tensor import distribute_tensor

    # src_data_rank=None: every rank read the same file, so each cuts its own shard without communicating
    return distribute_tensor(value.to(param.device, param.dtype), param.device_mesh, param.placements,
                             src_data_rank=None)


def shard_optimizer_state(optimizer, state: dict) -> dict:
    """A full optimizer state (any process count) made to fit this optimizer's (possibly sharded) parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    index = [i for group in state["param_groups"] for i in group["params"]]
    by_index = dict(zip(index, params))
    moments = {}
    for i, s in state["state"].items():
        param = by_index.get(i)
        moments[i] = {k: (_like(v, param) if param is not None and k != "step" else v) for k, v in s.items()}
    return {**state, "state": moments}


def shard_lora_state(transformer, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full LoRA tensors (peft's keys, as a checkpoint holds them) cut into the shards the model holds."""
    from peft.utils import get_peft_model_state_dict

    from ..lora import ADAPTER_NAME

    current = get_peft_model_state_dict(transformer, adapter_name=ADAPTER_NAME)
    return {k: (_like(v, current[k]) if k in current else v) for k, v in state.items()}
