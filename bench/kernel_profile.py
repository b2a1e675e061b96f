"""Where one call's time goes, per kernel: torch.profiler around the call, kernels grouped by what they are.

Used by `bench/e2e.py --profile` after the timed rows (never inside them: the profiler adds its own cost). On CUDA
it sums the device time of every GPU kernel; on the CPU (tests, tiny models) the self time of every operator,
so the same grouping runs on both.
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch

# First match wins. Our Triton kernels are named in engine/attention/triton_radial.py (_fwd_kernel, _bwd_dq_kernel,
# ...); Inductor's fused kernels start with triton_; GEMM names vary by library (cuBLAS nvjet / xmma / cutlass,
# aten::mm on the CPU).
CATEGORIES = (
    ("radial attention", re.compile(r"^_(fwd|bwd)\w*kernel|^_bwd_preprocess|^radial")),
    ("compiled (Inductor)", re.compile(r"^triton_")),  # before attention: a fused kernel's name lists its ops
    ("dense attention", re.compile(r"sdpa|fmha|flash|attention|attn", re.I)),
    # cuDNN's other kernels (implicit-GEMM convolutions, layout changes) serve the patch-embedding Conv3d
    ("convolution", re.compile(r"conv|implicit_gemm|winograd|nchwToNhwc|nhwcToNchw|cudnn", re.I)),
    ("matmul", re.compile(r"gemm|nvjet|xmma|cutlass|cublas|^aten::(mm|addmm|bmm|matmul|linear|baddbmm|_addmm)",
                          re.I)),
    ("copies", re.compile(r"memcpy|memset|copy|^aten::(to|_to_copy|contiguous|clone)$", re.I)),
)
OTHER = "other (elementwise, norms, reductions)"


def category(name: str) -> str:
    return next((label for label, pattern in CATEGORIES if pattern.search(name)), OTHER)


def _kernel_seconds(prof, cuda: bool) -> dict[str, tuple[float, int]]:
    """{kernel or operator name: (seconds, calls)} without double counting: device kernels on CUDA (each one
    a leaf), operators' self time on the CPU."""
    from torch.autograd import DeviceType

    seconds, calls = defaultdict(float), defaultdict(int)
    for event in prof.events():
        if cuda:
            if event.device_type != DeviceType.CUDA:
                continue
            us = event.time_range.elapsed_us()
        else:
            if event.device_type != DeviceType.CPU:
                continue
            us = event.self_cpu_time_total
        seconds[event.name] += us / 1e6
        calls[event.name] += 1
    return {name: (seconds[name], calls[name]) for name in seconds}


def _host_ops(prof, top: int) -> list[dict]:
    """The operators with the most CPU self time (Python-level custom ops, dispatch, launches): where the host
    spends a call that keeps the GPU waiting."""
    from torch.autograd import DeviceType

    seconds, calls = defaultdict(float), defaultdict(int)
    for event in prof.events():
        if event.device_type == DeviceType.CPU:
            seconds[event.name] += event.self_cpu_time_total / 1e6
            calls[event.name] += 1
    ranked = sorted(seconds.items(), key=lambda item: -item[1])[:top]
    return [{"name": name[:120], "s": s, "calls": calls[name]} for name, s in ranked]


def profile_call(fn, cuda: bool, top: int = 12) -> dict:
    """Run `fn()` once under the profiler; its kernel time per category (seconds and share), the `top` kernels,
    the call's wall time under the profiler (its own per-operator cost included; on CUDA, wall minus kernel time
    is time the GPU waited on the host) and the operators with the most host time."""
    import time

    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    per_kernel = _kernel_seconds(prof, cuda)
    by_category = defaultdict(float)
    for name, (s, _) in per_kernel.items():
        by_category[category(name)] += s
    total = sum(by_category.values())
    ranked = sorted(per_kernel.items(), key=lambda item: -item[1][0])[:top]
    return {"timing": "CUDA kernel time" if cuda else "CPU operator self time", "kernel_s": total, "wall_s": wall,
            "host_top": _host_ops(prof, top),
            "categories": {label: {"s": s, "share": s / total if total else 0.0}
                           for label, s in sorted(by_category.items(), key=lambda item: -item[1])},
            "top": [{"name": name[:120], "s": s, "calls": n, "category": category(name)}
                    for name, (s, n) in ranked]}


def share_table(profiles: list[tuple[str, dict]]) -> list[str]:
    """Markdown: one row per profiled call (label, wall and kernel seconds), one column per category's share."""
    labels = [label for label, _ in CATEGORIES] + [OTHER]
    lines = ["| call | wall s | kernel s | " + " | ".join(labels) + " |", "|---|---|---|" + "---|" * len(labels)]
    for name, p in profiles:
        if "error" in p:
            lines.append(f"| {name} | profiler failed: {p['error']} |")
            continue
        cells = [f"{p['categories'].get(label, {}).get('share', 0.0):.0%}" for label in labels]
        wall = f"{p['wall_s']:.2f}" if "wall_s" in p else "-"
        lines.append(f"| {name} | {wall} | {p['kernel_s']:.2f} | " + " | ".join(cells) + " |")
    return lines
