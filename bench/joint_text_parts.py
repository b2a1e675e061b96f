"""Joint attention's dense text parts: the fused flash kernels vs float32 chunks, and dense SDPA beside them.

HunyuanVideo 1.5 at 720p: 3600 video tokens per latent frame, 16 heads of 128, 1256 text tokens (Qwen2.5-VL 1000
+ ByT5 256) of which 64 are valid, as `bench/hunyuan_e2e.py` feeds its model. One joint attention layer
(`engine.attention.joint.joint_attention`, radial video->video on the Triton kernel, decay 1.0, block 128, no
sink), bf16, B=1. In one run:
  1. correctness at a short length (5 latent frames): the fused and the chunked text parts against one masked
     SDPA over the whole pattern (`joint_attention_reference`), output and q/k/v gradients, relative error;
  2. timings (CUDA events, median) at --frames latent frames: the joint forward and forward+backward with the
     text parts fused (`dense_parts.FUSED` on) and chunked (off), and dense SDPA over the whole sequence with
     the same key mask (what our processors run for a dense layer).
Prints a table last; JSON to --out (default $OUT).

    python3 bench/joint_text_parts.py [--frames 31] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cuda_timing import event_median_ms  # noqa: E402

from engine.attention import dense_parts, joint  # noqa: E402

TOKENS_PER_FRAME, HEADS, HEAD_DIM, TEXT, VALID = 3600, 16, 128, 1256, 64
GEOM = dict(tokens_per_frame=TOKENS_PER_FRAME, decay_factor=1.0, block_size=128, sink=False)


def inputs(frames: int, grad: bool):
    gen = torch.Generator(device="cuda").manual_seed(0)
    n = frames * TOKENS_PER_FRAME + TEXT
    q, k, v = (torch.randn(1, n, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
               .requires_grad_(grad) for _ in range(3))
    key_mask = torch.zeros(1, TEXT, dtype=torch.bool, device="cuda")
    key_mask[:, :VALID] = True
    return q, k, v, key_mask


def ours(q, k, v, key_mask, frames):
    return joint.joint_attention(q, k, v, num_video=frames * TOKENS_PER_FRAME, key_mask=key_mask, num_frames=frames,
                                 backend="triton", **GEOM)


def dense(q, k, v, key_mask, frames):
    full = joint.key_mask_full(frames * TOKENS_PER_FRAME, key_mask, 1, TEXT, q.device)[:, None, None]
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          attn_mask=full).transpose(1, 2)


def rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def check(frames: int) -> dict:
    q, k, v, km = inputs(frames, True)
    go = torch.randn(q.shape, device="cuda", dtype=torch.bfloat16)
    ref = joint.joint_attention_reference(q, k, v, num_video=frames * TOKENS_PER_FRAME, key_mask=km,
                                          num_frames=frames, **GEOM)
    ref_grads = torch.autograd.grad(ref, (q, k, v), go)
    result = {}
    for fused in (True, False):
        dense_parts.FUSED = fused
        out = ours(q, k, v, km, frames)
        grads = torch.autograd.grad(out, (q, k, v), go)
        name = "fused" if fused else "chunked"
        result[name] = {"out": rel(out, ref), **{f"d{n}": rel(g, r) for n, g, r in zip("qkv", grads, ref_grads)}}
    dense_parts.FUSED = True
    return result


def time_row(fn, frames: int, reps: int) -> dict:
    """Forward and forward+backward milliseconds of `fn` on fresh inputs, and the row's peak memory."""
    q, k, v, km = inputs(frames, False)
    with torch.no_grad():
        fn(q, k, v, km, frames)  # compile and cache the geometry
        fwd = event_median_ms(lambda: fn(q, k, v, km, frames), reps)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    go = torch.randn(q.shape, device="cuda", dtype=torch.bfloat16)

    def step():
        torch.autograd.grad(fn(q, k, v, km, frames), (q, k, v), go)

    step()
    torch.cuda.reset_peak_memory_stats()
    both = event_median_ms(step, reps)
    return {"forward_ms": fwd, "forward_backward_ms": both, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def timings(frames: int, reps: int) -> dict:
    rows = {}
    for name, fn, fused in (("radial, text parts fused", ours, True), ("radial, text parts chunked", ours, False),
                            ("dense SDPA", dense, True)):
        dense_parts.FUSED = fused
        rows[name] = time_row(fn, frames, reps)
        print(name, rows[name], flush=True)
        torch.cuda.empty_cache()
    dense_parts.FUSED = True
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=31, help="latent frames of the timed rows (31: 121 frames)")
    parser.add_argument("--check_frames", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    checks = check(args.check_frames)
    print("check (relative error vs one masked SDPA):", json.dumps(checks), flush=True)
    rows = timings(args.frames, args.reps)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "frames": args.frames,
              "video_tokens": args.frames * TOKENS_PER_FRAME, "text_tokens": TEXT, "valid_text": VALID,
              "checks": checks, "rows": rows}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "joint_text_parts.json").write_text(json.dumps(result, indent=1))
    base = rows["dense SDPA"]
    print(f"\n| {args.frames} latent frames ({args.frames * TOKENS_PER_FRAME} + {TEXT} tokens) | forward ms | "
          "vs dense | fwd+bwd ms | vs dense | peak GiB |\n|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['forward_ms']:.1f} | {base['forward_ms'] / r['forward_ms']:.2f}x | "
              f"{r['forward_backward_ms']:.1f} | {base['forward_backward_ms'] / r['forward_backward_ms']:.2f}x | "
              f"{r['peak_gib']:.1f} |")


if __name__ == "__main__":
    main()
