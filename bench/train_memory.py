"""Peak GPU memory and step time of one length-extension training step, per memory option (GPU).

Random weights at the official configs (no download): Wan2.1 1.3B and 14B, and HunyuanVideo (`hunyuan`, 720p,
whole models only; its prompt embeddings as bench/family_inputs.py shapes them), bf16 base, rank-64 LoRA in
fp32 on the preset's target modules, AdamW, bf16 autocast, gradient checkpointing, radial attention on the
Triton kernel, the project's own `length_extension_losses` (base pass dense, then the extended
pass, each with its backward), then the optimizer step: what `train` does per micro-step.
Memory is `torch.cuda.max_memory_allocated` over the step.

Two parts:
  fit   the 14B and 1.3B widths (Wan only) with 1 and 2 blocks at each token count: per-block kept memory and
        the one-block recompute peak, per option (the numbers the memory plan is fitted to);
  full  whole models at the recipes' sizes, per option (what the plan is checked against).
Options, joined by "+": offload (offload_activations), fp8 (fp8_base), chunkN (ffn_chunks=N), swapN (block_swap=N:
the frozen weights of N blocks in host memory), fsdp (FSDP2 over this one process: the gather/reshard machinery's
cost, no sharding gain); or none. A run that does not
fit is recorded as OOM. Results go to $OUT/train_memory.json after every run; a table is printed last.

    python3 bench/train_memory.py --out $OUT --fit_layers 1 --fit_options none \\
        --full "14b:none@121,14b:fp8+offload+chunk8@161,14b:fp8+offload+chunk8@121"
    python3 bench/train_memory.py --out $OUT --fit "" --base 17 --full "hunyuan:none@33,hunyuan:none@65"
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.models.official_configs import OFFICIAL  # noqa: E402
from family_inputs import latent_channels, text_embeds  # noqa: E402  (bench/, the script's folder)

# model key -> (family, preset, official config source, height, width)
MODELS = {
    "1.3b": ("wan", "wan2.1-t2v-1.3b", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", 480, 832),
    "14b": ("wan", "wan2.1-t2v-14b", "Wan-AI/Wan2.1-T2V-14B-Diffusers", 768, 1280),
    "hunyuan": ("hunyuan", "hunyuanvideo", "hunyuanvideo-community/HunyuanVideo", 720, 1280),
}
PRESET = {k: m[1] for k, m in MODELS.items()}
DIMS = {k: OFFICIAL[m[2]] for k, m in MODELS.items()}
SIZE = {k: (m[3], m[4]) for k, m in MODELS.items()}
OPTIONS = ("none", "offload", "chunk8", "fp8", "fp8+offload+chunk8")  # fp8 last: it cannot be undone on a model


def full_layers(size: str) -> int:
    cfg = DIMS[size]
    return int(cfg["num_layers"]) + int(cfg.get("num_single_layers", 0))


def gib(n: float) -> float:
    return n / 2**30


class Bench:
    def __init__(self, out: Path):
        from engine.config import config_from_preset
        from engine.models import family_named

        self.out = out
        self.family_named = family_named
        self.config_from_preset = config_from_preset
        self.rows: list[dict] = []

    def save(self):
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "train_memory.json").write_text(json.dumps({"device": torch.cuda.get_device_name(),
                                                                "rows": self.rows}, indent=2))

    def build(self, size: str, layers: int):
        """The model at `layers` blocks (the fit's 1- and 2-block models exist for the Wan family only)."""
        import diffusers

        from engine.attention.processor import tag_family
        from engine.lora import add_lora

        fam = self.family_named(MODELS[size][0])
        cfg = dict(DIMS[size])
        if layers != full_layers(size):
            if "num_single_layers" in cfg:
                raise ValueError(f"{size}: the block fit builds Wan models only; pass --fit ''")
            cfg["num_layers"] = layers
        torch.manual_seed(0)
        torch.set_default_dtype(torch.bfloat16)  # built in bf16: no float32 copy of a 13-14B model first
        try:
            with torch.device("cuda"):
                model = getattr(diffusers, fam.transformer_class)(**cfg)
        finally:
            torch.set_default_dtype(torch.float32)
        tag_family(model, fam)
        config = self.config_from_preset(PRESET[size], data_dir="-", output_dir="-")
        params = add_lora(model, config.lora_rank, config.lora_alpha, config.lora_dropout,
                          config.target_modules or list(fam.lora_targets), seed=0)
        for p in params:
            p.data = p.data.float()
        return model.train(), params, config

    def shard(self, model):
        """FSDP2 over a one-process NCCL group (cannot be undone: list fsdp runs last). Returns the new params."""
        import os

        import torch.distributed as dist

        from engine.memory.sharding import shard_transformer

        if not dist.is_initialized():
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29533")
            dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
        shard_transformer(model)
        model._bench_fsdp = True
        model._bench_params = [p for p in model.parameters() if p.requires_grad]  # the shards replace them
        return model._bench_params

    def step(self, model, params, config, options: str, base: int, extended: int, size: str) -> dict:
        from engine.attention.processor import install_radial_attention
        from engine.attention.schedule import AttentionSettings
        from engine.memory.block_swap import enable_block_swap
        from engine.memory.chunking import chunk_feed_forward
        from engine.memory.fp8 import store_base_in_fp8
        from engine.memory.offload import enable_activation_offload
        from engine.workers.trainer import length_extension_losses

        fam = self.family_named(MODELS[size][0])
        # the checkpointed transformer blocks (one attention layer each); run 30 counted diffusers' repeated blocks,
        # which list HunyuanVideo's patch embedder and text refiner too (62)
        blocks = len(fam.attention_layers(model))
        parts = options.split("+")
        if getattr(model, "_bench_fsdp", False) and "fsdp" not in parts:
            raise ValueError(f"{options}: FSDP cannot be undone on this model; list fsdp runs last")
        if "fp8" in parts and not getattr(model, "_bench_fp8", False):
            store_base_in_fp8(model, torch.bfloat16)
            model._bench_fp8 = True
        elif "fp8" not in parts and getattr(model, "_bench_fp8", False):
            raise ValueError(f"{options}: fp8 cannot be undone on this model; list fp8 runs last")
        chunks = next((int(p[5:]) for p in parts if p.startswith("chunk")), 1)
        chunk_feed_forward(model, chunks)
        offload = enable_activation_offload(model) if "offload" in parts else None
        if offload is None:
            model.enable_gradient_checkpointing()
        swap = enable_block_swap(model, next((int(p[4:]) for p in parts if p.startswith("swap")), 0))
        # The fit's 1-2 block models are all radial (that also warms the kernel at each shape); whole models keep
        # the recipe's dense layers.
        full = blocks == full_layers(size)
        settings = AttentionSettings(pattern=config.pattern, dense_layers=config.dense_layers if full else 0,
                                     dense_timesteps=config.dense_timesteps, decay_factor=config.decay_factor,
                                     block_size=config.block_size, backend="triton")
        schedule = install_radial_attention(model, settings, fam)
        schedule.training = True
        if "fsdp" in parts and not getattr(model, "_bench_fsdp", False):
            self.shard(model)
        params = getattr(model, "_bench_params", params)
        h, w = SIZE[size]
        lf_base, lf_ext = fam.latent_frames(base), fam.latent_frames(extended)
        layout = fam.token_layout(extended, h, w)
        tokens_ext, tokens_base = layout.num_tokens, fam.token_layout(base, h, w).num_tokens
        gen = torch.Generator(device="cuda").manual_seed(0)
        shape = (1, latent_channels(DIMS[size]), lf_ext, layout.latent_height, layout.latent_width)
        latents = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
        noise = torch.randn(latents.shape, device="cuda", dtype=torch.bfloat16, generator=gen)
        embeds = text_embeds(fam.name, DIMS[size], "cuda", gen)
        sigmas = torch.tensor([0.7])
        optimizer = torch.optim.AdamW(params, lr=1e-5)
        cfg = self.config_from_preset(PRESET[size], data_dir="-", output_dir="-", base_num_frames=base,
                                      extended_num_frames=extended)
        reserve_s = None
        if offload is not None:  # steady state: the slabs a first step allocates (timed separately)
            t_reserve = time.perf_counter()
            width = DIMS[size]["num_attention_heads"] * DIMS[size]["attention_head_dim"]
            offload.pool.reserve(blocks, tokens_ext * width * 2)
            reserve_s = time.perf_counter() - t_reserve
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_alloc = torch.cuda.memory_allocated()
        row = {"size": size, "layers": blocks, "options": options, "base": base, "extended": extended,
               "tokens_extended": tokens_ext, "tokens_base": tokens_base,
               "static_gib": gib(start_alloc), "reserve_seconds": reserve_s}
        t0 = time.perf_counter()
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                losses = length_extension_losses(fam, model, schedule, latents, embeds, noise, sigmas, lf_base,
                                                 cfg, backward=lambda loss, sync: loss.backward())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            row.update(seconds=time.perf_counter() - t0, peak_gib=gib(torch.cuda.max_memory_allocated()),
                       loss=float(losses["loss"]), finite=bool(torch.isfinite(losses["loss"])))
            host = (offload.pool.peak_bytes if offload is not None else 0) + (swap.host_bytes if swap else 0)
            if host:
                row.update(host_gib=gib(host))
            if offload is not None:
                row.update(offloaded_gib=gib(offload.offloaded_bytes))
        except torch.OutOfMemoryError:
            row.update(oom=True, peak_gib=gib(torch.cuda.max_memory_allocated()))
        finally:
            del optimizer
            if offload is not None:
                offload.pool.clear()
            if swap is not None:
                swap.remove()  # every weight back on the GPU for the next run
            model.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
        # Adam's state is part of the step's peak but is dropped with the optimizer above.
        self.rows.append(row)
        self.save()
        print(json.dumps(row), flush=True)
        return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--fit", default="14b:121,14b:161,1.3b:161", help="size:extended frames for the block fit")
    parser.add_argument("--full", default="14b:none@121,14b:fp8+offload@121,14b:fp8+offload@161",
                        help="size:options@extended frames, whole models")
    parser.add_argument("--base", type=int, default=69)
    parser.add_argument("--fit_layers", default="1,2")
    parser.add_argument("--fit_options", default=",".join(OPTIONS))
    args = parser.parse_args()
    bench = Bench(Path(args.out))
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}", flush=True)

    for item in filter(None, args.fit.split(",")):  # also warms the kernels at every shape used below
        size, extended = item.split(":")
        for layers in map(int, args.fit_layers.split(",")):
            model, params, config = bench.build(size, layers)
            for options in args.fit_options.split(","):
                bench.step(model, params, config, options, args.base, int(extended), size)
            del model, params
            gc.collect()
            torch.cuda.empty_cache()

    by_size: dict[str, list[tuple[str, int]]] = {}
    for item in filter(None, args.full.split(",")):
        size, rest = item.split(":")
        options, extended = rest.split("@")
        by_size.setdefault(size, []).append((options, int(extended)))
    for size, runs in by_size.items():
        t0 = time.perf_counter()
        model, params, config = bench.build(size, full_layers(size))
        print(f"built {size} in {time.perf_counter() - t0:.0f} s", flush=True)
        for options, extended in runs:  # in the order given (fp8 runs last: fp8 cannot be undone)
            bench.step(model, params, config, options, args.base, extended, size)
        del model, params
        gc.collect()
        torch.cuda.empty_cache()

    print("\n| model | blocks | options | frames | tokens (extended) | peak GiB | step s | host GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in bench.rows:
        peak = "OOM" if r.get("oom") else f"{r['peak_gib']:.1f}"
        secs = f"{r['seconds']:.1f}" if "seconds" in r else "-"
        host = f"{r['host_gib']:.1f}" if "host_gib" in r else "-"
        print(f"| {r['size']} | {r['layers']} | {r['options']} | {r['base']} -> {r['extended']} | "
              f"{r['tokens_extended']} | {peak} | {secs} | {host} |")


if __name__ == "__main__":
    main()
