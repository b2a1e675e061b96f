"""Regional compilation: `torch.compile` on each repeated transformer block, attention included.

The blocks are the classes a diffusers transformer lists in `_repeated_blocks` (what diffusers'
`compile_repeated_blocks` compiles). Every instance of a class runs the same compiled code. The radial
processors' attention is a node of the block's graph, as the stock processors' SDPA is: radial attention
is a custom operator (`engine.attention.radial_op`), and the layer's dense-or-radial choice for the step
is a flag the schedule sets before each forward (`processor.radial_now`). So a block class has two
graph variants (dense, radial), never one per block or per step, and no graph break: the dense baseline
and a radial run get the same compiled work around their attention. Context parallelism, SageAttention
and the flex backend keep their attention outside the graphs (one break per block).

The first call at a new shape compiles (seconds to a minute per block class); later calls reuse it.
`set_block_compilation(transformer, False)` returns the blocks to eager mode. Compilation is a
property of the loaded model, so a cached pipeline keeps it until it is turned off.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..errors import ConfigError

BACKEND = "inductor"
# torch.compile's mode when none is given: None is inductor's default. Other modes are for a benchmark's A/B
# (bench/e2e.py --compile_mode), not a setting: "reduce-overhead" (CUDA graphs) fails on per-block graphs, since
# each block's call starts a new graph iteration that overwrites the previous block's output (run 31).
MODE = None
# Static shapes compile one graph set per (shape, grad mode, input needing a gradient or not): a training run
# has two lengths x training / validation x the first block or the others, times its aspect-ratio buckets.
# Past Dynamo's default limit (8) the blocks would fall back to eager without a word, so it is raised.
RECOMPILE_LIMIT = 64


def repeated_blocks(module) -> list[torch.nn.Module]:
    """The blocks diffusers marks as repeated (`_repeated_blocks`) in every transformer inside `module` (a
    transformer, or a two-expert pair); ConfigError if there is none."""
    blocks, seen = [], set()
    for model in module.modules():
        names = set(getattr(model, "_repeated_blocks", None) or ())
        for m in model.modules() if names else ():
            if type(m).__name__ in names and id(m) not in seen:
                seen.add(id(m))
                blocks.append(m)
    if not blocks:
        raise ConfigError(f"setting 'compile_blocks': {type(module).__name__} names no repeated block class "
                          "(`_repeated_blocks`) to compile; set compile_blocks to false for this model.")
    return blocks


def set_block_compilation(module, on: bool, *, backend: str | None = None, mode: str | None = None) -> int:
    """Compile every repeated block in `module` (on) or return them to eager (off); returns the block count.

    What diffusers' `compile_repeated_blocks` does (`block.compile(...)` per block), over every transformer of
    a two-expert pair too. `dynamic=False`: a video's shape is fixed for a whole sampling or training run,
    and static shapes give the fastest kernels. `backend` (default: BACKEND) and `mode` go to torch.compile
    (tests set BACKEND to "aot_eager" on the CPU). Blocks compiled already keep their compilation.
    """
    blocks = repeated_blocks(module)
    if on:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for block in blocks:
        if not on:
            block._compiled_call_impl = None  # what nn.Module.compile set: __call__ runs eager again
        elif getattr(block, "_compiled_call_impl", None) is None:
            block.compile(backend=backend or BACKEND, mode=mode or MODE, dynamic=False)
    return len(blocks)


def is_compiled(transformer) -> bool:
    """Whether regional compilation is on (every repeated block compiled)."""
    try:
        blocks = repeated_blocks(transformer)
    except ConfigError:
        return False
    return all(getattr(b, "_compiled_call_impl", None) is not None for b in blocks)


@contextmanager
def block_compilation(module, on: bool):
    """The calls inside run with the repeated blocks of `module` compiled (on) or eager (off, which also undoes
    a compilation an earlier request left on a shared model); blocks compiled here are eager again after."""
    if on or is_compiled(module):
        set_block_compilation(module, on)
    try:
        yield
    finally:
        if on:
            set_block_compilation(module, False)
