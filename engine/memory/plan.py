"""The memory plan: predicted peak GPU (and host) memory of a training step per option combination.

The model, per step (bf16 base, fp32 LoRA with AdamW, gradient checkpointing, batch B):
  weights     base parameters x 2 bytes (x 1 for those fp8_base stores in float8) + LoRA x 4, less the
              frozen Linear weights of block_swap blocks (to the host) plus two such blocks in flight
  LoRA state  LoRA x 12 (fp32 gradient + two AdamW moments)
  saved       blocks x B x tokens x width x 2: the block inputs checkpointing keeps (to the host with
              offload_activations, which leaves `inflight_blocks` of them on the GPU at once)
  recompute   B x tokens x (a x width + b x ffn_width / ffn_chunks): one block's backward
Parameters are counted exactly on the meta device from the transformer config; a, b and the
in-flight count are the family's fit to whole-model measurements (`ModelFamily.memory_profile`).
Tokens are those of the extended pass (the base pass is shorter and runs first).

Over several processes (not measured yet: multi-GPU machines were not lent, so these two terms are the
model's arithmetic, not a fit): context_parallel N gives each rank 1/N of the tokens for saved
inputs and recompute (Ulysses' attention holds all tokens for 1/N of the heads: the same bytes); fsdp
over P processes keeps 1/P of the weights and the LoRA state per rank plus two gathered blocks (the
one running and the one prefetched). fp8_base is not offered with fsdp (the config refuses the pair).

Combinations are tried in a fixed order: options that keep the arithmetic exact first (feed-forward
slices, then activation offload, then both; then the same with block swap, which copies weights over
PCIe), fp8 storage (which rounds the base weights) only when those do not fit; within that order the
measured step-time costs are all small (docs/memory.md). A combination with block swap is offered with
every block swapped, and the plan's choice swaps the fewest blocks that fit the budget.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from ..errors import InputError

GIB = 2**30
# (fp8_base, offload_activations, ffn_chunks, block swap of every block), in the order the plan prefers them.
# With block swap the other exact options come first (most of them first): they leave fewer blocks to swap.
_EXACT = ((False, 1), (False, 8), (True, 1), (True, 8))
COMBINATIONS = tuple((fp8, offload, chunks, swap) for fp8 in (False, True) for swap in (False, True)
                     for offload, chunks in (_EXACT[::-1] if swap else _EXACT))
IN_FLIGHT_SWAPPED = 2  # swapped blocks on the GPU at once: the one running and the one copied in
_FP8_LAYERS = ("Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")


@dataclass(frozen=True)
class Estimate:
    fp8_base: bool
    offload_activations: bool
    ffn_chunks: int
    peak_gib: float
    host_gib: float
    parts: dict = field(default_factory=dict)  # GiB per part of the model above
    block_swap: int = 0

    @property
    def options(self) -> dict:
        return {"fp8_base": self.fp8_base, "offload_activations": self.offload_activations,
                "ffn_chunks": self.ffn_chunks, "block_swap": self.block_swap}

    def label(self) -> str:
        names = [n for n, on in (("fp8_base", self.fp8_base), ("offload_activations", self.offload_activations)) if on]
        names += [f"ffn_chunks {self.ffn_chunks}"] if self.ffn_chunks > 1 else []
        names += [f"block_swap {self.block_swap}"] if self.block_swap else []
        return " + ".join(names) or "none"

    def flags(self) -> str:
        """The `train` flags that set these options."""
        return (f"--fp8_base {str(self.fp8_base).lower()} --offload_activations "
                f"{str(self.offload_activations).lower()} --ffn_chunks {self.ffn_chunks} --block_swap {self.block_swap}")


@lru_cache(maxsize=8)
def _parameter_counts(transformer_class: str, config_json: str, targets: tuple[str, ...], rank: int) -> tuple:
    """(all base parameters, those fp8 storage would cast, LoRA parameters, and for each block in forward order the
    frozen weights block swap moves and those of them fp8 storage casts), counted on the meta device. Blocks differ
    in size in some families (HunyuanVideo: 340M parameters per double-stream block, 142M per single-stream one)."""
    import json

    import diffusers
    import torch

    cls = getattr(diffusers, transformer_class)
    with torch.device("meta"):
        model = cls.from_config(json.loads(config_json))
    skip = tuple(getattr(model, "_skip_layerwise_casting_patterns", None) or ())
    from .block_swap import _MOVABLE
    from .blocks import block_modules

    total = sum(p.numel() for p in model.parameters())
    cast = lora = 0
    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind in _FP8_LAYERS and not any(re.search(pat, name) for pat in skip):
            cast += sum(p.numel() for p in module.parameters(recurse=False))
        if kind == "Linear" and any(name == t or name.endswith("." + t) for t in targets):
            lora += rank * (module.in_features + module.out_features)
    prefixes = {id(m): n for n, m in model.named_modules()}
    blocks = []
    for block in block_modules(model, "block_swap"):
        moved = moved_cast = 0
        for name, module in block.named_modules():
            if isinstance(module, _MOVABLE):
                n = sum(p.numel() for p in module.parameters(recurse=False))
                moved += n
                if not any(re.search(pat, f"{prefixes[id(block)]}.{name}") for pat in skip):
                    moved_cast += n
        blocks.append((moved, moved_cast))
    return total, cast, lora, tuple(blocks)


def _context(config, preset: dict):
    from ..models import family

    fam = family(preset)
    profile = fam.memory_profile(preset)
    if profile is None or profile.bytes_per_token_width is None:
        raise InputError(f"no memory plan for model family '{fam.name}': its memory use has not been measured; "
                         "set fp8_base / offload_activations / ffn_chunks / block_swap yourself.")
    targets = tuple(config.target_modules or fam.lora_targets)
    import json

    counts = _parameter_counts(profile.transformer_class, json.dumps(profile.transformer_config, sort_keys=True),
                               targets, int(config.lora_rank))
    tokens = fam.token_layout(config.extended_num_frames, config.height, config.width).num_tokens * config.batch_size
    # A two-expert model keeps both on the GPU and trains a LoRA on those named; a step runs one of them.
    loaded, trained = fam.expert_counts(config.lora_experts)
    total, cast, lora, blocks = counts
    return profile, (total * loaded, cast * loaded, lora * trained, blocks), tokens, (loaded, trained)


def estimate(config, preset: dict, fp8_base: bool, offload_activations: bool, ffn_chunks: int,
             processes: int = 1, block_swap: int = 0) -> Estimate:
    """The predicted peak of one training step of `config` with these options, per GPU of `processes`."""
    profile, (total, cast, lora, blocks), tokens, (loaded, _) = _context(config, preset)
    tokens = tokens / max(1, int(config.context_parallel))
    shards = max(1, int(processes)) if config.fsdp else 1
    block_input = tokens * profile.width * 2
    if not config.use_gradient_checkpointing:
        raise InputError("the memory plan models runs with use_gradient_checkpointing=true (without it every "
                         "block keeps all its activations); turn checkpointing on.")
    parts = {
        "weights": (total * 2 - (cast if fp8_base else 0) + lora * 4) / shards / GIB,
        "lora_state": lora * 12 / shards / GIB,
        "saved_inputs": (profile.inflight_blocks if offload_activations else profile.layers) * block_input / GIB,
        "recompute": tokens * (profile.bytes_per_token_width * profile.width
                               + profile.bytes_per_token_ffn * profile.ffn_width / ffn_chunks) / GIB,
    }
    if config.fsdp:  # measured at one process too: +0.3 GiB (1.3B), +1.8 GiB (14B), docs/BENCHMARKS.md run 19
        parts["gathered_blocks"] = 2 * (total * 2 + lora * 4) / (profile.layers * loaded) / GIB
    # the first `block_swap` blocks' swappable weights as stored (a two-expert model's trained experts in turn);
    # the largest two of them may be on the GPU at once
    swapped = [moved * 2 - (moved_cast if fp8_base else 0)
               for moved, moved_cast in (blocks[i % len(blocks)] for i in range(block_swap))]
    if block_swap:
        parts["weights"] -= (sum(swapped) - sum(sorted(swapped)[-IN_FLIGHT_SWAPPED:])) / GIB
    from .offload import SLAB_ROUND  # the pool's slabs: one per block, rounded up

    slab = -(-block_input // SLAB_ROUND) * SLAB_ROUND
    host = profile.layers * slab / GIB if offload_activations else 0.0  # per process
    host += sum(swapped) / GIB
    return Estimate(fp8_base, offload_activations, ffn_chunks, sum(parts.values()), host, parts, block_swap)


def _check_processes(config, processes: int) -> int:
    processes = int(processes)
    if processes < 1 or processes % max(1, int(config.context_parallel)):
        raise InputError(f"processes={processes}: must be a positive multiple of context_parallel "
                         f"({config.context_parallel}); launch that many processes.")
    return processes


def plan(config, preset: dict, gpu_memory_gb: float, host_memory_gb: float | None = None,
         processes: int = 1, processes_per_host: int | None = None) -> tuple[list, Estimate | None]:
    """Every combination's estimate, and the first (in COMBINATIONS order) that fits `gpu_memory_gb`
    (and `host_memory_gb` of free host memory, when given); None when none does. `processes`: the
    launched processes (one GPU each); `processes_per_host` of them (default: all) share the host memory."""
    processes = _check_processes(config, processes)
    profile, _, _, (_, trained) = _context(config, preset)
    layers = profile.layers * trained  # the blocks of the trained denoiser (both experts of a two-expert model)
    # The config refuses fp8_base and block_swap with fsdp, and block_swap with compile_blocks: never offered.
    combos = [c for c in COMBINATIONS if not ((config.fsdp and (c[0] or c[3])) or (config.compile_blocks and c[3]))]
    rows = [estimate(config, preset, *combo[:3], processes=processes, block_swap=layers if combo[3] else 0)
            for combo in combos]
    per_gpu_host = None if host_memory_gb is None else host_memory_gb / (processes_per_host or processes)

    def fits(r: Estimate) -> bool:
        return r.peak_gib <= gpu_memory_gb and (per_gpu_host is None or r.host_gib <= per_gpu_host)

    chosen = next((r for r in rows if fits(r)), None)
    if chosen is not None and chosen.block_swap:  # the fewest swapped blocks that still fit
        for count in range(IN_FLIGHT_SWAPPED + 1, layers):
            fewer = estimate(config, preset, chosen.fp8_base, chosen.offload_activations, chosen.ffn_chunks,
                             processes=processes, block_swap=count)
            if fits(fewer):
                chosen = fewer
                break
    return rows, chosen


def free_host_gib() -> float:
    import psutil

    return psutil.virtual_memory().available / GIB


def apply_plan(config, preset: dict, gpu_memory_gb: float, host_memory_gb: float | None = None,
               processes: int = 1, processes_per_host: int | None = None) -> Estimate:
    """Set config's memory options to the plan's choice for `gpu_memory_gb`; InputError naming the smallest need."""
    rows, chosen = plan(config, preset, gpu_memory_gb, host_memory_gb, processes, processes_per_host)
    host_memory_gb = None if host_memory_gb is None else host_memory_gb / (processes_per_host or int(processes))
    if chosen is None:
        hostable = [r for r in rows if host_memory_gb is None or r.host_gib <= host_memory_gb] or rows
        best = min(hostable, key=lambda r: r.peak_gib)
        host = f" and {best.host_gib:.0f} GiB of free host memory" if best.host_gib else ""
        within = "" if host_memory_gb is None else f" within {host_memory_gb:.0f} GiB of free host memory"
        raise InputError(f"the step is predicted to need at least {best.peak_gib:.1f} GiB of GPU memory{host} "
                         f"(with {best.label()}){within}, more than gpu_memory_gb={gpu_memory_gb:g}. "
                         "Lower extended_num_frames, height/width or lora_rank, or use a bigger GPU"
                         f"{'' if host_memory_gb is None else ' (or free host memory for offload_activations / block_swap)'}.")
    for name, value in chosen.options.items():
        setattr(config, name, value)
    return chosen
