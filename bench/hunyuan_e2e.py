"""End-to-end GPU check and benchmark: radial joint attention inside a HunyuanVideo transformer.

Random weights at the official config (engine/models/official_configs.py, hunyuanvideo-community/HunyuanVideo:
20 double + 40 single blocks, 3072 wide; no download), bf16, 720x1280 (3600 tokens per latent frame),
256 text tokens of which 64 are valid (the rest padding, masked as the pipeline masks them). In one run:
  1. correctness at a short length: our processors with every layer dense reproduce stock diffusers; radial
     (Triton kernel + LSE merge with the dense text parts) is finite and differs from dense;
  2. timings (CUDA events, median): one transformer forward and one LoRA training step (rank 64 on the
     attention projections, gradient checkpointing, forward + backward), dense SDPA vs radial (Triton,
     dense_layers=2, decay 1.0, block 128, no sink), at 129 frames (33 latent) and 4x: 513 frames (129 latent);
     peak memory per row. A row that runs out of memory is recorded as such (4x training at 720p needs
     the memory options: ~460k tokens x 60 checkpointed block inputs).
Prints a table last; writes JSON to --out (default $OUT).

`--double_blocks D --single_blocks S` build only that many blocks (keep the full model's 1:2 proportion),
so the 4x rows fit a short device lease: the radial rows then run every block radial, and the table adds the
full 60-block model composed from the measured per-block times (`block_scaling.compose`, 2 dense layers).

    python3 bench/hunyuan_e2e.py --out $OUT                      # forward at 129 and 513, training at 129
    python3 bench/hunyuan_e2e.py --frames 129 --train_frames 129  # the short rows only
    python3 bench/hunyuan_e2e.py --frames 513 --train_frames 513 --double_blocks 1 --single_blocks 2 \
        --reps 1 --warmup_frames 33 --skip_checks

`--source hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-720p_t2v` builds HunyuanVideo 1.5 instead (54 double
blocks, 2048 wide, Qwen2.5-VL 1000 text tokens with 64 valid, ByT5 256 with none; 720p is 3600 tokens per latent
frame too): its 4x is 481 frames (121 latent), so e.g. `--frames 121,481 --double_blocks 6`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from block_scaling import compose  # bench/, the script's folder
from cuda_timing import event_median_ms, prime_radial_geometry, row_warmup
from family_inputs import latent_channels, text_embeds

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SOURCE = "hunyuanvideo-community/HunyuanVideo"
# official_configs source -> family: HunyuanVideo and HunyuanVideo 1.5 (54 double-stream blocks, 2048 wide, VAE 16x,
# patch 1: 3600 tokens per 720p latent frame as well)
FAMILIES = {SOURCE: "hunyuan", "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-720p_t2v": "hunyuan15"}


def cuda_time(fn, reps: int, warmup=True) -> float:
    if warmup:  # True: fn itself; a callable: that (a shorter row)
        (fn if warmup is True else warmup)()
        torch.cuda.synchronize()
    return event_median_ms(fn, reps)


def rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def measured(row: dict, name: str, fn, reps: int, warmup=True) -> None:
    """row[name + '_ms'] and row[name + '_peak_gib'], or row[name] = 'oom'."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        row[f"{name}_ms"] = cuda_time(fn, reps, warmup)
        row[f"{name}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    except torch.cuda.OutOfMemoryError:
        row[name] = "oom"
        torch.cuda.empty_cache()


def joint_kernel_check() -> dict:
    """The joint attention on the Triton kernel (bf16) vs the float32 masked reference, forward and gradients:
    8 frames of 1024 tokens + 256 text tokens of which 100 valid, 4 heads of 128."""
    from engine.attention import joint

    geom = dict(num_frames=8, tokens_per_frame=1024, block_size=128, decay_factor=1.0, sink=False)
    nv, L = 8 * 1024, 256
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, nv + L, 4, 128, device="cuda", generator=gen) for _ in range(3))
    key_mask = torch.zeros(1, L, dtype=torch.bool, device="cuda")
    key_mask[:, :100] = True
    go = torch.randn(q.shape, device="cuda", generator=gen)
    results = {}
    for name, dtype, fn in (("ref", torch.float32, joint.joint_attention_reference),
                            ("triton", torch.bfloat16, lambda *a, **kw: joint.joint_attention(*a, backend="triton", **kw))):
        x = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        out = fn(*x, num_video=nv, key_mask=key_mask, **geom)
        grads = torch.autograd.grad(out, x, go.to(dtype))
        results[name] = [out] + list(grads)
    names = ("out", "dq", "dk", "dv")
    return {f"joint_triton_bf16_vs_ref_rel_{n}": rel(a, b) for n, a, b in zip(names, results["triton"], results["ref"])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--source", default=SOURCE, choices=sorted(FAMILIES), help="the official config to build")
    parser.add_argument("--frames", default="129,513", help="pixel frames of the forward rows")
    parser.add_argument("--train_frames", default="129", help="pixel frames of the LoRA-step rows ('' for none)")
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--double_blocks", type=int, default=None, help="build only this many double blocks")
    parser.add_argument("--single_blocks", type=int, default=None, help="build only this many single blocks")
    parser.add_argument("--warmup_frames", type=int, default=None,
                        help="warm up each timed row at this many pixel frames instead of the row's own length "
                             "(compiles the kernels cheaply before a long row); 0: no warm-up")
    parser.add_argument("--skip_checks", action="store_true", help="skip the correctness checks at 33 frames")
    parser.add_argument("--dense_baseline", choices=("stock", "ours"), default=None,
                        help="dense rows on the stock diffusers processors or on ours with every layer dense (default: "
                             "stock for HunyuanVideo, ours for 1.5, whose stock processor builds an N x N pair mask "
                             "that does not fit at 720p: run 30)")
    args = parser.parse_args()
    import diffusers

    from engine.attention.processor import (
        install_radial_attention,
        remove_radial_attention,
        tag_family,
    )
    from engine.attention.schedule import AttentionSettings
    from engine.lora import add_lora
    from engine.models import family_named
    from engine.models.official_configs import official_config

    FAMILY = family_named(FAMILIES[args.source])
    cfg = official_config(args.source)
    full_layers = cfg["num_layers"] + cfg.get("num_single_layers", 0)
    if args.double_blocks is not None:
        cfg["num_layers"] = args.double_blocks
    if args.single_blocks is not None:
        if "num_single_layers" not in cfg:
            parser.error(f"{args.source} has no single-stream blocks: leave --single_blocks out")
        cfg["num_single_layers"] = args.single_blocks
    singles = cfg.get("num_single_layers", 0)
    layers = cfg["num_layers"] + singles
    reduced = layers < full_layers
    dev = torch.device("cuda")
    torch.manual_seed(0)
    t0 = time.time()
    torch.set_default_dtype(torch.bfloat16)  # build in bf16: no 52 GB float32 copy first
    with dev:
        model = getattr(diffusers, FAMILY.transformer_class)(**cfg).eval()
    torch.set_default_dtype(torch.float32)
    tag_family(model, FAMILY)  # built here, not by the family's loader
    print(f"built {args.source} transformer ({cfg['num_layers']} double + {singles} single blocks) "
          f"in {time.time() - t0:.1f} s; {torch.cuda.get_device_name()}", flush=True)
    radial = AttentionSettings(pattern="radial", dense_layers=0 if reduced else 2, dense_timesteps=2, decay_factor=1.0,
                               block_size=128, backend="triton")
    baseline = args.dense_baseline or ("ours" if FAMILY.name == "hunyuan15" else "stock")

    def dense_attention():  # the dense rows' processors
        if baseline == "stock":
            remove_radial_attention(model)
        else:  # the radial processors with every layer dense: SDPA with a key mask, as the radial rows' text parts
            install_radial_attention(model, AttentionSettings(pattern="radial", dense_layers=layers))

    text = text_embeds(FAMILY.name, cfg, dev)  # 64 valid text tokens, the rest padding
    t = torch.tensor([700.0], device=dev)
    layout = FAMILY.token_layout(1, args.height, args.width)
    tokens_per_frame = layout.num_tokens

    def forward(latents):  # the family's own call: embedded guidance 6.0 (HunyuanVideo), condition channels (1.5)
        return FAMILY.forward(model, latents, t, text)

    def latents_for(frames):
        return torch.randn(1, latent_channels(cfg), FAMILY.latent_frames(frames), layout.latent_height,
                           layout.latent_width, device=dev, dtype=torch.bfloat16)

    # ---- correctness at 33 frames (9 latent frames)
    checks = {}
    if not args.skip_checks:
        latents = latents_for(33)
        with torch.no_grad():
            remove_radial_attention(model)
            stock = forward(latents)
            install_radial_attention(model, AttentionSettings(pattern="radial", dense_layers=layers))
            ours_dense = forward(latents)
            install_radial_attention(model, radial).training = True  # past the dense timesteps
            ours_radial = forward(latents)
        checks["all_dense_processor_vs_stock_rel"] = rel(ours_dense, stock)
        checks["radial_vs_dense_rel"] = rel(ours_radial, stock)
        checks["radial_finite"] = bool(torch.isfinite(ours_radial).all())
        print("checks:", json.dumps(checks), flush=True)
        assert checks["all_dense_processor_vs_stock_rel"] < 2e-2 and checks["radial_finite"], checks

    def warmup(fn_of_latents, latents):
        return row_warmup(args.warmup_frames, fn_of_latents, latents_for)

    checks.update(joint_kernel_check())
    print("joint kernel check:", json.dumps(checks), flush=True)
    for frames in sorted({int(f) for f in (args.frames + "," + args.train_frames).split(",") if f}):
        prime_radial_geometry(FAMILY.latent_frames(frames), tokens_per_frame, radial, sink=False)

    # ---- forward rows
    results = {}
    for frames in [int(f) for f in args.frames.split(",") if f]:
        latents = latents_for(frames)
        row = results.setdefault(frames, {"frames": frames, "latent_frames": latents.shape[2],
                                          "tokens": latents.shape[2] * tokens_per_frame})
        with torch.no_grad():
            dense_attention()
            measured(row, "fwd_dense", lambda: forward(latents), args.reps, warmup(forward, latents))
            install_radial_attention(model, radial).training = True
            measured(row, "fwd_radial", lambda: forward(latents), args.reps, warmup(forward, latents))
        print(json.dumps(row), flush=True)

    # ---- LoRA training step
    train_frames = [int(f) for f in args.train_frames.split(",") if f]
    if train_frames:
        add_lora(model, 64, 64, 0.0, list(FAMILY.lora_targets), seed=0)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        model.enable_gradient_checkpointing()
        model.train()
    last_block = f"single_transformer_blocks.{singles - 1}" if singles else f"transformer_blocks.{cfg['num_layers'] - 1}"
    for frames in train_frames:
        latents = latents_for(frames)
        row = results.setdefault(frames, {"frames": frames, "latent_frames": latents.shape[2],
                                          "tokens": latents.shape[2] * tokens_per_frame})

        def step_on(x):
            model.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = forward(x)
            out.float().square().mean().backward()

        def step():
            step_on(latents)

        for name, settings in (("dense", None), ("radial", radial)):
            if settings is None:
                dense_attention()
            else:
                install_radial_attention(model, settings).training = True
            measured(row, f"train_{name}", step, max(1, args.reps - 1), warmup(step_on, latents))
        grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n and f"{last_block}.attn.to_q" in n]
        checks[f"lora_grads_finite_nonzero_{frames}"] = bool(
            grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads))
        print(json.dumps(row), flush=True)

    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows = [results[k] for k in sorted(results)]
    if reduced:
        for r in rows:
            for kind in ("fwd", "train"):
                if f"{kind}_dense_ms" in r and f"{kind}_radial_ms" in r:
                    r[f"{kind}_full_composed_dense_ms"], r[f"{kind}_full_composed_radial_ms"] = compose(
                        r[f"{kind}_dense_ms"], r[f"{kind}_radial_ms"], measured_layers=layers, full_layers=full_layers,
                        dense_layers=2)
    stem = f"{FAMILY.name}_e2e" + (f"_D{cfg['num_layers']}S{singles}" if reduced else "")
    (Path(args.out) / f"{stem}.json").write_text(json.dumps({
        "checks": checks, "height": args.height, "width": args.width, "double_blocks": cfg["num_layers"],
        "single_blocks": singles, "source": args.source, "dense_baseline": baseline, "results": rows}, indent=2))

    def cell(r, name, unit="ms"):
        if r.get(name) == "oom":
            return "OOM"
        value = r.get(f"{name}_{unit}")
        return "-" if value is None else (f"{value:.0f}" if unit == "ms" else f"{value:.1f}")

    def speedup(r, kind):
        a, b = r.get(f"{kind}_dense_ms"), r.get(f"{kind}_radial_ms")
        return f"{a / b:.2f}x" if a and b else "-"

    print("\n| frames | latent frames | tokens | fwd dense ms | fwd radial ms | fwd speed-up | fwd peak GiB dense / radial "
          "| train dense ms | train radial ms | train speed-up | train peak GiB dense / radial |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['frames']} | {r['latent_frames']} | {r['tokens']} | {cell(r, 'fwd_dense')} | {cell(r, 'fwd_radial')} | "
              f"{speedup(r, 'fwd')} | {cell(r, 'fwd_dense', 'peak_gib')} / {cell(r, 'fwd_radial', 'peak_gib')} | "
              f"{cell(r, 'train_dense')} | {cell(r, 'train_radial')} | {speedup(r, 'train')} | "
              f"{cell(r, 'train_dense', 'peak_gib')} / {cell(r, 'train_radial', 'peak_gib')} |")
    if reduced:
        print(f"\nComposed for all {full_layers} blocks (2 dense) from {layers} measured:")
        print("| frames | fwd dense ms | fwd radial ms | fwd speed-up | train dense ms | train radial ms | train speed-up |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['frames']} | {cell(r, 'fwd_full_composed_dense')} | {cell(r, 'fwd_full_composed_radial')} | "
                  f"{speedup(r, 'fwd_full_composed')} | {cell(r, 'train_full_composed_dense')} | "
                  f"{cell(r, 'train_full_composed_radial')} | {speedup(r, 'train_full_composed')} |")
    print("checks:", json.dumps(checks))


if __name__ == "__main__":
    main()
