"""Open-Sora v2.0 on one GPU: random weights at the real config (11.9B parameters, bf16), 256px, 65 frames.

Measures the two costs of a TTA experiment with this backbone and prints a table:
- one TTA step: LoRA rank 16 on every attention projection, forward + backward + AdamW step on the
  33-frame conditioning window (9 latent frames) with the v2v_head conditioning;
- one sampling step: the official 3-pass guidance batch [prompt + cond, "" + cond, "" + zero cond]
  over the whole 65-frame clip (17 latent frames), no grad.
Time (mean of `--repeats` after a warm-up) and peak memory (torch.cuda.max_memory_allocated).
If the TTA step runs out of memory it is retried with gradient checkpointing (the table says so).

    python bench/opensora2_gpu.py                 # CUDA, real config (needs ~24 GB for the weights)
    python bench/opensora2_gpu.py --tiny          # CPU dry run of the same code path at the tiny preset's config

Results go to stdout and, when $OUT is set, $OUT/opensora2_gpu.json. No download: weights are random,
text embeddings are random tensors of the real shapes (T5-XXL 512 x 4096, CLIP-L pooled 768).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.models import opensora2 as osv2  # noqa: E402
from engine.presets import load_preset  # noqa: E402
from engine.lora import add_lora  # noqa: E402
from engine.models import TextEmbeds  # noqa: E402


def build(cfg: dict, device: torch.device, dtype: torch.dtype):
    """The diffusers transformer at `cfg` with random weights, built without a CPU copy (meta -> device)."""
    model = osv2.build_transformer(cfg, device="meta").to(dtype)  # cast on meta: no float32 copy is ever allocated
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 1:  # norm scales
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn, device, repeats: int) -> tuple[float, float | None]:
    fn()  # warm-up
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    seconds = (time.perf_counter() - t0) / repeats
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return seconds, peak


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU dry run at the tiny-opensora2 preset's config")
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=464, help="256px 16:9 as the opensora2-256px preset")
    ap.add_argument("--frames", type=int, default=65)
    ap.add_argument("--cond-frames", type=int, default=33)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--grad-checkpointing", action="store_true", help="TTA step with gradient checkpointing from the start")
    args = ap.parse_args(argv)

    if args.tiny:
        tiny = load_preset("tiny-opensora2")["tiny"]
        cfg = {**osv2.REAL_CONFIG, **tiny["transformer"], "context_in_dim": 32, "vec_in_dim": 32}
        device, dtype, text_len = torch.device("cpu"), torch.float32, 16
        args.height, args.width, args.repeats = 64, 64, 1
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device; use --tiny for a CPU dry run")
        cfg, device, dtype, text_len = osv2.REAL_CONFIG, torch.device("cuda"), torch.bfloat16, osv2.T5_MAX_LENGTH
    lat_t, lat_cond = (args.frames - 1) // 4 + 1, (args.cond_frames - 1) // 4 + 1
    h, w = args.height // 8, args.width // 8
    result = {"config": "tiny" if args.tiny else "real (random weights)", "device": torch.cuda.get_device_name(0)
              if device.type == "cuda" else "cpu", "dtype": str(dtype), "height": args.height, "width": args.width,
              "frames": args.frames, "cond_frames": args.cond_frames, "lora_rank": args.rank,
              "tokens_per_frame": (h // 2) * (w // 2), "torch": torch.__version__}

    t_build = time.perf_counter()
    model = build(cfg, device, dtype)
    sync(device)
    result["params_b"] = sum(p.numel() for p in model.parameters()) / 1e9
    result["build_s"] = time.perf_counter() - t_build
    result["weights_gib"] = torch.cuda.memory_allocated() / 2**30 if device.type == "cuda" else None

    g = torch.Generator().manual_seed(0)
    text = TextEmbeds(torch.randn(1, text_len, cfg["context_in_dim"], generator=g),
                             torch.randn(1, cfg["vec_in_dim"], generator=g)).to(device=device, dtype=dtype)
    x0 = torch.randn(1, 16, lat_t, h, w, generator=g).to(device)

    # ---- one TTA step (continuation objective: the first k = 4 latent frames known, loss on the rest)
    params = add_lora(model, args.rank, float(args.rank), 0.0, osv2.LORA_TARGET_MODULES, seed=0)
    for p in params:
        p.data = p.data.float()
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)
    cond_lat = x0[:, :, :lat_cond]
    k = lat_cond // 2
    control = osv2.v2v_cond(cond_lat[:, :, :k], lat_cond)
    noise = torch.randn(cond_lat.shape, generator=g).to(device)
    xt, target = osv2.flow_pair(cond_lat, noise, torch.tensor([0.7]))
    tstep = torch.tensor([700.0], device=device)
    autocast = torch.autocast("cuda", dtype=dtype) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def tta_step():
        model.train()
        with autocast:
            pred = osv2.transformer_forward(model, xt.to(dtype), tstep, text, control=control)
        loss = torch.nn.functional.mse_loss(pred.float()[:, :, k:], target[:, :, k:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    result["tta_grad_checkpointing"] = bool(args.grad_checkpointing)
    if args.grad_checkpointing:
        model.enable_gradient_checkpointing()
    try:
        result["tta_step_s"], result["tta_peak_gib"] = measure(tta_step, device, args.repeats)
    except torch.OutOfMemoryError:
        opt.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        model.enable_gradient_checkpointing()
        result["tta_grad_checkpointing"] = True
        result["tta_step_s"], result["tta_peak_gib"] = measure(tta_step, device, args.repeats)
        model.disable_gradient_checkpointing()
    model.eval()
    opt.zero_grad(set_to_none=True)
    del opt
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # ---- one sampling step: the 3-pass guidance batch over the whole clip (LoRA still attached, as in TTA sampling)
    full_control = osv2.v2v_cond(cond_lat, lat_t)
    conds = torch.cat([full_control, full_control, torch.zeros_like(full_control)])
    text3 = TextEmbeds.cat([text, text, text])
    xs = torch.randn(1, 16, lat_t, h, w, generator=g).to(device=device, dtype=dtype).expand(3, -1, -1, -1, -1)
    ts = torch.full((3,), 900.0, device=device)

    @torch.no_grad()
    def sample_step():
        out = osv2.transformer_forward(model, xs, ts, text3, control=conds).float()
        c, u, u2 = out[0:1], out[1:2], out[2:3]
        return u2 + 3.0 * (u - u2) + 7.5 * (c - u)

    result["sample_step_s"], result["sample_peak_gib"] = measure(sample_step, device, args.repeats)
    result["sample_50_steps_s"] = 50 * result["sample_step_s"]

    def gib(v):
        return "n/a" if v is None else f"{v:.1f}"

    print(f"\nOpen-Sora v2.0 ({result['config']}, {result['params_b']:.2f}B params, {result['dtype']}) on {result['device']}: "
          f"{args.height}x{args.width}, {args.frames} frames ({lat_t} latent frames x {result['tokens_per_frame']} tokens)")
    print("| measurement | time (s) | peak memory (GiB) | notes |")
    print("|---|---|---|---|")
    print(f"| TTA step (LoRA r{args.rank}, fwd+bwd+AdamW, {lat_cond} latent frames) | {result['tta_step_s']:.3f} | "
          f"{gib(result['tta_peak_gib'])} | {'gradient checkpointing' if result['tta_grad_checkpointing'] else 'no checkpointing'} |")
    print(f"| sampling step (3-pass guidance, {lat_t} latent frames) | {result['sample_step_s']:.3f} | "
          f"{gib(result['sample_peak_gib'])} | x50 steps = {result['sample_50_steps_s']:.1f} s |")
    print(f"| weights | | {gib(result['weights_gib'])} | built in {result['build_s']:.1f} s |")
    out_dir = os.environ.get("OUT")
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "opensora2_gpu.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
