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

Other models of the Wan architecture through `--config` (a source in engine/models/official_configs.py,
e.g. one Wan2.2-T2V-A14B expert at 720p with its preset's block size 64, or TI2V-5B with its 16x VAE and
per-token timesteps). `--layers N` builds only the
first N blocks, so long rows fit a short device lease: the radial rows then run every block radial
(`dense_layers=0`), and the table adds the full model composed from the measured per-block times
(`block_scaling.compose`: the preset's dense layers at the dense per-block time, the rest radial).

    python3 bench/wan_e2e.py --out $OUT
    python3 bench/wan_e2e.py --config Wan-AI/Wan2.2-T2V-A14B-Diffusers --height 720 --width 1280 \
        --block_size 64 --frames 21 --reps 1
    python3 bench/wan_e2e.py --config Wan-AI/Wan2.2-T2V-A14B-Diffusers --height 720 --width 1280 \
        --block_size 64 --frames 81 --layers 4 --reps 1 --warmup_frames 5 --skip_checks
    python3 bench/wan_e2e.py --config Wan-AI/Wan2.2-TI2V-5B-Diffusers --height 704 --width 1280 --frames 31,121
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from block_scaling import compose  # bench/, the script's folder
from cuda_timing import event_median_ms, prime_radial_geometry, row_warmup

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# official_configs sources of another family than Wan2.1's (token layout and forward)
FAMILIES = {"Wan-AI/Wan2.2-TI2V-5B-Diffusers": "wan22_ti2v"}
WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)


def cuda_time(fn, reps: int, warmup=True) -> float:
    """Median milliseconds of `fn()` over `reps` runs, after one warm-up unless told not to (long rows,
    once the kernels are compiled by a shorter one)."""
    if warmup:  # True: fn itself; a callable: that (a shorter row)
        (fn if warmup is True else warmup)()
        torch.cuda.synchronize()
    return event_median_ms(fn, reps)


def rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--frames", default="21,81")
    parser.add_argument("--train_frames", default=None, help="latent frames of the LoRA-step rows (default: --frames)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--config", default=None, help="official_configs source (default: the Wan2.1 1.3B)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--decay", type=float, default=0.2)
    parser.add_argument("--dense_layers", type=int, default=2, help="the preset's dense layers")
    parser.add_argument("--layers", type=int, default=None, help="build only this many blocks (see the docstring)")
    parser.add_argument("--warmup_frames", type=int, default=None,
                        help="warm up each timed row at this many latent frames instead of the row's own length "
                             "(compiles the kernels cheaply before a long row); 0: no warm-up")
    parser.add_argument("--skip_checks", action="store_true", help="skip the correctness checks at 21 frames")
    args = parser.parse_args()
    from diffusers import WanTransformer3DModel

    from engine.attention.processor import install_radial_attention, remove_radial_attention
    from engine.attention.schedule import AttentionSettings
    from engine.attention.processor import tag_family
    from engine.lora import add_lora
    from engine.models import TextEmbeds, family_named
    from engine.models.official_configs import official_config

    FAMILY = family_named(FAMILIES.get(args.config, "wan"))

    cfg = dict(WAN_1_3B) if args.config is None else official_config(args.config)
    full_layers = cfg["num_layers"]
    reduced = args.layers is not None and args.layers < full_layers
    if reduced:
        cfg["num_layers"] = args.layers
    dev = torch.device("cuda")
    torch.manual_seed(0)
    t0 = time.time()
    torch.set_default_dtype(torch.bfloat16)  # build in bf16: no float32 copy of a 14B first
    with dev:
        model = WanTransformer3DModel(**cfg).eval()
    torch.set_default_dtype(torch.float32)
    tag_family(model, FAMILY)  # built here, not by the family's loader
    name = args.config or "Wan2.1-T2V-1.3B"
    print(f"built {name} transformer ({cfg['num_layers']} of {full_layers} blocks) in {time.time() - t0:.1f} s; "
          f"{torch.cuda.get_device_name()}", flush=True)
    radial = AttentionSettings(pattern="radial", dense_layers=0 if reduced else args.dense_layers, dense_timesteps=2,
                               decay_factor=args.decay, block_size=args.block_size, backend="triton")
    layout = FAMILY.token_layout(1, args.height, args.width)  # VAE 8x (16x on TI2V-5B), patch 2
    lh, lw = layout.latent_height // 2, layout.latent_width // 2  # tokens per latent row / column
    channels = cfg["in_channels"]
    text = TextEmbeds(torch.randn(1, 512, 4096, device=dev, dtype=torch.bfloat16))
    t = torch.tensor([700.0], device=dev)
    checks = {}

    def forward(latents):  # the family's call: per-token timesteps on TI2V-5B, as its pipeline passes them
        return FAMILY.forward(model, latents, t, text)

    # ---- correctness at 21 latent frames
    if not args.skip_checks:
        latents = torch.randn(1, channels, 21, 2 * lh, 2 * lw, device=dev, dtype=torch.bfloat16)
        with torch.no_grad():
            remove_radial_attention(model)
            stock = forward(latents)
            install_radial_attention(model, AttentionSettings(pattern="radial", dense_layers=cfg["num_layers"]))
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
        del stock, ours_dense, ours_radial

    # ---- timings
    def latents_for(frames):
        return torch.randn(1, channels, frames, 2 * lh, 2 * lw, device=dev, dtype=torch.bfloat16)

    def warmup(fn_of_latents, latents):
        return row_warmup(args.warmup_frames, fn_of_latents, latents_for)

    rows = {}
    for frames in sorted({int(f) for f in (args.frames + "," + (args.train_frames or "")).split(",") if f}):
        prime_radial_geometry(frames, lh * lw, radial, sink=True)
    for frames in [int(f) for f in args.frames.split(",") if f]:
        latents = latents_for(frames)
        row = rows.setdefault(frames, {"latent_frames": frames, "tokens": frames * lh * lw})
        with torch.no_grad():
            remove_radial_attention(model)
            torch.cuda.reset_peak_memory_stats()
            row["fwd_dense_ms"] = cuda_time(lambda: forward(latents), args.reps, warmup(forward, latents))
            row["fwd_dense_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            sched = install_radial_attention(model, radial)
            sched.training = True
            torch.cuda.reset_peak_memory_stats()
            row["fwd_radial_ms"] = cuda_time(lambda: forward(latents), args.reps, warmup(forward, latents))
            row["fwd_radial_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        print(json.dumps(row), flush=True)

    # ---- LoRA training step (rank 64 on attention projections, gradient checkpointing)
    add_lora(model, 64, 64, 0.0, ["to_q", "to_k", "to_v", "to_out.0"], seed=0)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    model.enable_gradient_checkpointing()
    model.train()
    train_frames = args.frames if args.train_frames is None else args.train_frames
    for frames in [int(f) for f in train_frames.split(",") if f]:
        row = rows.setdefault(frames, {"latent_frames": frames, "tokens": frames * lh * lw})
        latents = latents_for(frames)

        def step_on(x):
            model.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = forward(x)
            out.float().square().mean().backward()

        def step():
            step_on(latents)

        for name, settings in (("dense", None), ("radial", radial)):
            if settings is None:
                remove_radial_attention(model)
            else:
                install_radial_attention(model, settings).training = True
            torch.cuda.reset_peak_memory_stats()
            row[f"train_{name}_ms"] = cuda_time(step, max(1, args.reps - 1), warmup(step_on, latents))
            row[f"train_{name}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        # lora_B: at initialisation B = 0, so lora_A's gradient is exactly zero by construction.
        grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n and "attn1.to_q" in n]
        checks[f"lora_grads_finite_nonzero_{row['latent_frames']}"] = bool(
            all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads))
        print(json.dumps(row), flush=True)

    results = [rows[k] for k in sorted(rows)]
    if reduced:
        for r in results:
            for kind in ("fwd", "train"):
                if f"{kind}_dense_ms" in r:
                    r[f"{kind}_full_composed_dense_ms"], r[f"{kind}_full_composed_radial_ms"] = compose(
                        r[f"{kind}_dense_ms"], r[f"{kind}_radial_ms"], measured_layers=cfg["num_layers"],
                        full_layers=full_layers, dense_layers=args.dense_layers)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    stem = "wan_e2e" if args.config is None else "wan_e2e_" + args.config.split("/")[-1]
    meta = {"config": name, "layers": cfg["num_layers"], "full_layers": full_layers, "height": args.height,
            "width": args.width, "block_size": args.block_size, "decay": args.decay}
    (Path(args.out) / f"{stem}{'_L' + str(cfg['num_layers']) if reduced else ''}.json").write_text(
        json.dumps({"meta": meta, "checks": checks, "results": results}, indent=2))

    def cell(r, key, fmt="{:.0f}"):
        return "-" if r.get(key) is None else fmt.format(r[key])

    def ratio(r, a, b):
        return f"{r[a] / r[b]:.2f}x" if r.get(a) and r.get(b) else "-"

    print(f"\n{name}, {cfg['num_layers']} of {full_layers} blocks, {args.height}x{args.width}, block {args.block_size}, "
          f"decay {args.decay}" + (" (radial rows: every block radial)" if reduced else ""))
    print("| latent frames | tokens | fwd dense ms | fwd radial ms | fwd speed-up | fwd peak GiB dense / radial "
          "| train dense ms | train radial ms | train speed-up | train peak GiB dense / radial |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['latent_frames']} | {r['tokens']} | {cell(r, 'fwd_dense_ms')} | {cell(r, 'fwd_radial_ms')} | "
              f"{ratio(r, 'fwd_dense_ms', 'fwd_radial_ms')} | {cell(r, 'fwd_dense_peak_gib', '{:.1f}')} / "
              f"{cell(r, 'fwd_radial_peak_gib', '{:.1f}')} | {cell(r, 'train_dense_ms')} | {cell(r, 'train_radial_ms')} | "
              f"{ratio(r, 'train_dense_ms', 'train_radial_ms')} | {cell(r, 'train_dense_peak_gib', '{:.1f}')} / "
              f"{cell(r, 'train_radial_peak_gib', '{:.1f}')} |")
    if reduced:
        print(f"\nComposed for all {full_layers} blocks ({args.dense_layers} dense):")
        print("| latent frames | fwd dense ms | fwd radial ms | fwd speed-up | train dense ms | train radial ms "
              "| train speed-up |")
        print("|---|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['latent_frames']} | {cell(r, 'fwd_full_composed_dense_ms')} | "
                  f"{cell(r, 'fwd_full_composed_radial_ms')} | "
                  f"{ratio(r, 'fwd_full_composed_dense_ms', 'fwd_full_composed_radial_ms')} | "
                  f"{cell(r, 'train_full_composed_dense_ms')} | {cell(r, 'train_full_composed_radial_ms')} | "
                  f"{ratio(r, 'train_full_composed_dense_ms', 'train_full_composed_radial_ms')} |")
    print("checks:", json.dumps(checks))



if __name__ == "__main__":
    main()
