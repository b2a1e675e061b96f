"""Host time per radial operator call: what a short sequence cannot hide behind its kernels.

Run 30's profile of compiled TTA (docs/BENCHMARKS.md) found the radial adaptation host-bound: the same kernel time
as dense, about 0.5 ms (forward) and 0.6 ms (backward) of host time per `radial_studio::radial_fwd/bwd` call. This
times the calls the way a training step makes them, at TTA's geometry (9 latent frames x 448 tokens, 12 heads of
128, bf16, block 128, decay 0.2):

  on CUDA   the real kernels, no synchronisation inside the loop: host microseconds per call while the GPU queue
            absorbs the launches (the enqueue rate), then the wall time per call after a synchronise; SDPA's
            forward beside them (the dense baseline's one call);
  on a CPU  (no GPU) the Triton launches replaced by no-ops (TRITON_INTERPRET=1 selects the Hopper code path): the
            Python work of the operator alone, which is what this file's optimisations change.

    python3 bench/radial_host_overhead.py [--calls 300]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KERNELS = ("_fwd_ws_kernel", "_fwd_kernel", "_bwd_preprocess", "_bwd_dkdv_ws_kernel", "_bwd_dkdv_kernel",
           "_bwd_dq_ws_kernel", "_bwd_dq_kernel")


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def measure(calls: int) -> dict:
    """Host (and wall) microseconds per call; on a CPU the launches are stubbed for the call and restored after."""
    cuda = torch.cuda.is_available()
    from engine.attention import radial_op, triton_radial  # noqa: F401  (registers the operators)

    saved_env = os.environ.get("TRITON_INTERPRET")
    saved = {name: getattr(triton_radial, name) for name in KERNELS}
    if not cuda:
        os.environ["TRITON_INTERPRET"] = "1"
        for name in KERNELS:
            setattr(triton_radial, name, _NoLaunch())
    try:
        return _measure(calls, cuda)
    finally:
        for name, kernel in saved.items():
            setattr(triton_radial, name, kernel)
        if saved_env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved_env


def _measure(calls: int, cuda: bool) -> dict:
    device = "cuda" if cuda else "cpu"
    B, F_, T, H, D = 1, 9, 448, 12, 128
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(B, F_ * T, H, D, device=device, dtype=torch.bfloat16, generator=gen) for _ in range(3))
    geometry = (F_, T, 0.2, 128, True, "triton")
    out, lse = torch.ops.radial_studio.radial_fwd(q, k, v, *geometry)
    ops = {"fwd": lambda: torch.ops.radial_studio.radial_fwd(q, k, v, *geometry),
           "bwd": lambda: torch.ops.radial_studio.radial_bwd(out, q, k, v, out, lse, *geometry)}
    if cuda:  # the dense baseline's forward: one SDPA call ([B, H, S, D]), whichever backend the default picks
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        ops["sdpa_fwd"] = lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)
    result = {"device": torch.cuda.get_device_name() if cuda else "cpu (launches stubbed)", "calls": calls}
    for name, op in ops.items():
        for _ in range(10):  # warm: compiled kernels, tile lists, caches
            op()
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            op()
        host = time.perf_counter() - start
        if cuda:
            torch.cuda.synchronize()
        total = time.perf_counter() - start
        result[f"{name}_host_us"] = host / calls * 1e6
        result[f"{name}_wall_us"] = total / calls * 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    result = measure(args.calls)
    print(json.dumps(result))
    print("| device | call | host us per call | wall us per call |\n|---|---|---|---|")
    for name in ("fwd", "bwd", "sdpa_fwd"):
        if f"{name}_host_us" in result:
            print(f"| {result['device']} | {name} | {result[name + '_host_us']:.0f} | {result[name + '_wall_us']:.0f} |")


if __name__ == "__main__":
    main()
