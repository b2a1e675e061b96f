"""CUDA-event timing shared by the GPU benchmarks (imported from the scripts' own folder)."""

from __future__ import annotations

import torch


def event_median_ms(fn, n: int) -> float:
    """Median milliseconds of `n` calls of `fn`, each timed with CUDA events (no warm-up here)."""
    times = []
    for _ in range(n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def prime_radial_geometry(num_frames: int, tokens_per_frame: int, settings, *, sink: bool, head_dim: int = 128) -> None:
    """Build the cached block mask and kernel tile lists of a geometry (forward and backward) outside the
    timed calls: one head of attention at that length, forward and backward."""
    from engine.attention.backends import radial_attention

    S = num_frames * tokens_per_frame
    q, k, v = (torch.randn(1, S, 1, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    out = radial_attention(q, k, v, num_frames=num_frames, tokens_per_frame=tokens_per_frame,
                           decay_factor=settings.decay_factor, block_size=settings.block_size, sink=sink,
                           backend="triton")
    out.sum().backward()
    torch.cuda.synchronize()


def row_warmup(warmup_frames, fn_of_latents, latents_for):
    """The warm-up of a timed row for `cuda_time`: the row itself (None), none (0), or the same call on a
    shorter input of `warmup_frames` frames (compiles the kernels cheaply before a long row)."""
    if warmup_frames is None:
        return True
    if warmup_frames == 0:
        return False
    short = latents_for(warmup_frames)
    return lambda: fn_of_latents(short)
