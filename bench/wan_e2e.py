"""End-to-end GPU check and benchmark: radial attention inside a Wan2.1-1.3B transformer.

Random weights at the real 1.3B config (no download), bf16, 480x832 (1560 tokens per latent
frame). In one run:
  1. correctness: our processors with every layer dense reproduce stock diffusers; the radial
     processors run on the Triton kernel and differ from dense only in the sparse layers;
     LoRA gradients flow through the kernel and are finite;
  2. timings (CUDA events, median): one transformer forward (a denoising step's half) and one
     LoRA training step (forward + backward, gradient checkpointing), dense SDPA vs radial
     (Triton, dense_layers=2, decay 0.2, block 128), at 21 and 81 latent frames.
Prints a table last; writes JSON to --out.

    python3 bench/wan_e2e.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from cuda_timing import event_median_ms  # bench/, the script's folder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)


def cuda_time(fn, reps: int) -> float:
    """Median milliseconds of `fn()` over `reps` runs after one warm-up."""
    fn()
    torch.cuda.synchronize()
    return event_median_ms(fn, reps)


def rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--frames", default="21,81")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    from engine.attention.processor import install_radial_attention, remove_radial_attention
    from engine.attention.schedule import AttentionSettings
    from engine.attention.processor import tag_family
    from engine.lora import add_lora
    from engine.models.wan import FAMILY

    dev = torch.device("cuda")
    torch.manual_seed(0)
    t0 = time.time()
    with dev:
        model = WanTransformer3DModel(**WAN_1_3B).to(torch.bfloat16).eval()
    tag_family(model, FAMILY)  # built here, not by the family's loader
    print(f"built 1.3B transformer in {time.time() - t0:.1f} s; {torch.cuda.get_device_name()}", flush=True)
    radial = AttentionSettings(pattern="radial", dense_layers=2, dense_timesteps=2, decay_factor=0.2, block_size=128,
                               backend="triton")
    text = torch.randn(1, 512, 4096, device=dev, dtype=torch.bfloat16)
    t = torch.tensor([700.0], device=dev)
    results, checks = [], {}

    def forward(latents):
        return model(hidden_states=latents, timestep=t, encoder_hidden_states=text, return_dict=False)[0]

    # ---- correctness at 21 latent frames
    latents = torch.randn(1, 16, 21, 60, 104, device=dev, dtype=torch.bfloat16)
    with torch.no_grad():
        remove_radial_attention(model)
        stock = forward(latents)
        install_radial_attention(model, AttentionSettings(pattern="radial", dense_layers=WAN_1_3B["num_layers"]))
        ours_dense = forward(latents)
        sched = install_radial_attention(model, radial)
        sched.training = True  # past the dense timesteps
        ours_radial = forward(latents)
    checks["all_dense_processor_vs_stock_rel"] = rel(ours_dense, stock)
    checks["radial_vs_dense_rel"] = rel(ours_radial, stock)
    checks["radial_finite"] = bool(torch.isfinite(ours_radial).all())
    print("checks:", json.dumps(checks), flush=True)
    assert checks["all_dense_processor_vs_stock_rel"] < 2e-2, checks
    assert checks["radial_finite"]

    # ---- timings
    for frames in [int(f) for f in args.frames.split(",")]:
        latents = torch.randn(1, 16, frames, 60, 104, device=dev, dtype=torch.bfloat16)
        tokens = frames * 1560
        row = {"latent_frames": frames, "tokens": tokens}
        with torch.no_grad():
            remove_radial_attention(model)
            row["fwd_dense_ms"] = cuda_time(lambda: forward(latents), args.reps)
            sched = install_radial_attention(model, radial)
            sched.training = True
            row["fwd_radial_ms"] = cuda_time(lambda: forward(latents), args.reps)
        results.append(row)
        print(json.dumps(row), flush=True)

    # ---- LoRA training step (rank 64 on attention projections, gradient checkpointing)
    add_lora(model, 64, 64, 0.0, ["to_q", "to_k", "to_v", "to_out.0"], seed=0)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    model.enable_gradient_checkpointing()
    model.train()
    for row in results:
        latents = torch.randn(1, 16, row["latent_frames"], 60, 104, device=dev, dtype=torch.bfloat16)

        def step():
            model.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = forward(latents)
            out.float().square().mean().backward()

        for name, settings in (("dense", None), ("radial", radial)):
            if settings is None:
                remove_radial_attention(model)
            else:
                install_radial_attention(model, settings).training = True
            torch.cuda.reset_peak_memory_stats()
            row[f"train_{name}_ms"] = cuda_time(step, max(1, args.reps - 1))
            row[f"train_{name}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        # lora_B: at initialisation B = 0, so lora_A's gradient is exactly zero by construction.
        grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n and "attn1.to_q" in n]
        checks[f"lora_grads_finite_nonzero_{row['latent_frames']}"] = bool(
            all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads))
        print(json.dumps(row), flush=True)

    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "wan_e2e.json").write_text(json.dumps({"checks": checks, "results": results}, indent=2))
    print("\n| latent frames | tokens | fwd dense ms | fwd radial ms | fwd speed-up | train dense ms | train radial ms "
          "| train speed-up | peak GiB dense / radial |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['latent_frames']} | {r['tokens']} | {r['fwd_dense_ms']:.0f} | {r['fwd_radial_ms']:.0f} | "
              f"{r['fwd_dense_ms'] / r['fwd_radial_ms']:.2f}x | {r['train_dense_ms']:.0f} | {r['train_radial_ms']:.0f} | "
              f"{r['train_dense_ms'] / r['train_radial_ms']:.2f}x | {r['train_dense_peak_gib']:.1f} / "
              f"{r['train_radial_peak_gib']:.1f} |")
    print("checks:", json.dumps(checks))


if __name__ == "__main__":
    main()
