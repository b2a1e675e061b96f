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
