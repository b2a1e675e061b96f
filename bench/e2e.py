"""End-to-end benchmark of the engine's real calls: dense vs radial attention, one command per case.

    python3 bench/e2e.py sample [options] --out DIR   # engine.generate.generate_video, the whole Generate call
    python3 bench/e2e.py train  [options] --out DIR   # one LoRA length-extension training step
    python3 bench/e2e.py tta    [options] --out DIR   # engine.workers.tta.run_tta on a synthetic clip
    python3 bench/e2e.py all    [options] --out DIR   # the three with the full-scale options, one summary table

Every case runs dense, then radial, in the same process, on the same loaded model, and reports both and the
ratio. Dense is the best stock baseline: on CUDA the fastest SDPA backend of cuDNN / flash / efficient, picked on
a short warm-up at the case's largest shape and put first in SDPA's priority for both rows (a row's other SDPA
calls, such as the VAE's 384-wide attention, fall back as usual); the radial row's dense layers and dense
timesteps use it too. Timing: CUDA events recorded at the boundaries (no extra synchronisation inside a run) on
CUDA, wall clock on the CPU. Peak memory is torch.cuda.max_memory_allocated per row.

The model comes from the preset. `--build_random SOURCE --model_dir DIR` first saves a pipeline with random
weights at SOURCE's official sizes into DIR (transformer from engine/models/official_configs.py, the Wan2.1 VAE,
UMT5-XXL with the real 256,384-entry embedding, an offline byte-level tokenizer, UniPC), built with the engine's
own tiny-model builder (`build_tiny_parts`) and `save_pretrained`; the preset's source then points at DIR, so
the model loads through the engine's local-folder path exactly as a downloaded checkpoint would.

Sampling runs few steps on a short device lease; `--project_steps N` then projects the whole call to N steps from
the measured per-step times (dense-timestep steps and radial steps separately), labelled a projection.
JSON goes to --out (default $OUT, else .) after every row: e2e_<case>.json; a Markdown table is printed last.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # cuda_timing, also when imported by the tests

from engine.models.regional_compile import set_block_compilation  # noqa: E402

PROMPT = "a red ball bounces on a sandy beach, waves roll in behind it, the camera follows the ball"

# UMT5-XXL encoder as Wan2.1's text_encoder/config.json has it (vocabulary set separately: the offline tokenizer
# cannot reach it, the embedding can).
UMT5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_decoder_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                layer_norm_epsilon=1e-6, tie_word_embeddings=False, scalable_attention=True, pad_token_id=0,
                eos_token_id=1, decoder_start_token_id=0)
UMT5_VOCAB = 256384

# `all`: the full-scale benchmark (the 1.3B at 480p, random weights; TTA at the preset's 256 px).
FULL_SCALE = dict(preset="wan2.1-t2v-1.3b", frames="81,321", steps=3, project_steps=50, tta_steps=50, sample_steps=50)


# ---------------------------------------------------------------------------- timing


class Clock:
    """Marks on CUDA events (recorded in stream order, read after one synchronize) or the wall clock on the CPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, a, b) -> float:
        if not self.cuda:
            return b - a
        torch.cuda.synchronize()
        return a.elapsed_time(b) / 1000.0


def brief(row: dict, *keys: str) -> str:
    """One log line per row (the whole row is in the JSON)."""
    head = " ".join(f"{k}={row[k]}" for k in ("frames", "pattern") if k in row)
    times = " ".join(f"{k}={row[k]:.3f}" for k in keys if isinstance(row.get(k), float))
    extra = f" radial_calls={row.get('radial_calls')} peak_gib={_f(row.get('peak_gib'))}"
    return f"{head} {times}{extra}"


def median(values):
    return statistics.median(values) if values else None


def project_steps(step_s: list[float], kinds: list[str], fixed_s: float, target_steps: int,
                  dense_timesteps: int, borrowed: dict | None = None) -> dict:
    """Whole-call seconds projected to `target_steps` sampling steps from the measured ones.

    `kinds[i]` says what measured step i was: "dense" (dense pattern: every step the same), "dense_timestep" (radial
    pattern, i < dense_timesteps: dense attention) or "radial". Each kind's median time is multiplied by the number
    of steps of that kind in a `target_steps` run; `fixed_s` (text encoding, VAE decode, everything but the steps)
    is added once. `borrowed` gives per-step seconds of kinds this run did not measure (`--radial_steps_only`: the
    dense-timestep step from the dense row, which runs the same dense attention). ValueError when a kind the target
    run needs was neither measured nor borrowed.
    """
    per = {kind: median([t for t, k in zip(step_s, kinds) if k == kind]) for kind in set(kinds)}
    for kind, seconds in (borrowed or {}).items():
        per.setdefault(kind, seconds)
    if "radial" in kinds or "dense_timestep" in kinds:
        first = min(dense_timesteps, target_steps)
        counts = {"dense_timestep": first, "radial": target_steps - first}
    else:
        counts = {"dense": target_steps}
    counts = {k: n for k, n in counts.items() if n > 0}
    missing = [k for k in counts if per.get(k) is None]
    if missing:
        raise ValueError(f"no measured step of kind {missing}: measure more steps than dense_timesteps "
                         f"({dense_timesteps}) to project a radial run")
    denoise = sum(per[k] * n for k, n in counts.items())
    result = {"label": "projection", "steps": target_steps, "total_s": fixed_s + denoise, "denoise_s": denoise,
              "fixed_s": fixed_s, "per_step_s": {k: per[k] for k in counts}, "counts": counts}
    used = sorted(k for k in counts if k in (borrowed or {}) and k not in kinds)
    if used:
        result["borrowed"] = used
    return result


def peak_gib(cuda: bool):
    return torch.cuda.max_memory_allocated() / 2**30 if cuda else None


def reset_peak(cuda: bool) -> None:
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# ---------------------------------------------------------------------------- SDPA baseline


class Sdpa:
    """The dense baseline's SDPA backend: picked by timing each CUDA backend at one shape, then put first."""

    CANDIDATES = ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION")

    def __init__(self, chosen: str | None, timings_ms: dict, shape: dict | None, note: str = ""):
        self.chosen, self.timings_ms, self.shape, self.note = chosen, timings_ms, shape, note

    @classmethod
    def pick(cls, args, cuda: bool, heads: int, head_dim: int, tokens: int, backward: bool) -> "Sdpa":
        if not cuda:
            return cls(None, {}, None, "CPU: PyTorch's default SDPA")
        from torch.nn.attention import SDPBackend, sdpa_kernel

        shape = {"heads": heads, "head_dim": head_dim, "tokens": tokens, "backward": backward}
        if args.sdpa != "auto":
            return cls(None if args.sdpa == "default" else args.sdpa.upper() + "_ATTENTION", {}, shape, "given")
        import torch.nn.functional as F
        from cuda_timing import event_median_ms  # bench/

        q, k, v = (torch.randn(1, heads, tokens, head_dim, device="cuda", dtype=torch.bfloat16,
                               requires_grad=backward) for _ in range(3))
        grad = torch.randn_like(q) if backward else None

        def run():
            out = F.scaled_dot_product_attention(q, k, v)
            if backward:
                out.backward(grad)

        timings = {}
        for name in cls.CANDIDATES:
            try:
                with sdpa_kernel([getattr(SDPBackend, name)]):
                    run()
                    torch.cuda.synchronize()
                    timings[name] = event_median_ms(run, args.sdpa_reps)
            except RuntimeError as err:  # this backend cannot take the shape / is not built
                timings[name] = f"unavailable: {str(err).splitlines()[0][:120]}"
        numeric = {n: t for n, t in timings.items() if isinstance(t, float)}
        chosen = min(numeric, key=numeric.get) if numeric else None
        return cls(chosen, timings, shape)

    def context(self):
        if self.chosen is None:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        import inspect

        best = getattr(SDPBackend, self.chosen)
        if "set_priority" not in inspect.signature(sdpa_kernel).parameters:  # older torch: enable-only lists
            # cuDNN ranks last by default, so only enabling it alone makes it win, and the VAE's 384-wide heads
            # need a fallback: keep PyTorch's order then, and say so.
            if best == SDPBackend.CUDNN_ATTENTION:
                self.note = "this torch cannot prioritise cuDNN (no set_priority): PyTorch's default order ran"
                return contextlib.nullcontext()
            return sdpa_kernel([best, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
        order = [SDPBackend(i) for i in torch._C._get_sdp_priority_order()]
        return sdpa_kernel([best] + [b for b in order if b != best], set_priority=True)

    def to_dict(self) -> dict:
        return {"chosen": self.chosen, "timings_ms": self.timings_ms, "shape": self.shape, "note": self.note,
                "default_priority": [str(b) for b in _default_priority()]}


def _default_priority():
    try:
        from torch.nn.attention import SDPBackend

        return [SDPBackend(i).name for i in torch._C._get_sdp_priority_order()]
    except Exception:  # noqa: BLE001 - informational only
        return []


# ---------------------------------------------------------------------------- instrumentation


class RadialCounter:
    """Counts radial attention forwards: proof that a row really ran radial layers. Every backend but flex
    runs engine.attention.radial_op._forward (inside the operator, so also when compiled), in a block graph
    or outside (context parallelism, --attention_outside_graph); flex runs backends.radial_attention."""

    def __init__(self):
        self.calls = 0

    def __enter__(self):
        from engine.attention import backends, radial_op

        self._saved = [(m, name, getattr(m, name)) for m, name in ((backends, "radial_attention"),
                                                                  (radial_op, "_forward"))]
        for module, name, orig in self._saved:
            setattr(module, name, self._counted(orig))
        return self

    def _counted(self, orig):
        def counted(*a, **kw):
            self.calls += 1
            return orig(*a, **kw)

        return counted

    def __exit__(self, *exc):
        for module, name, orig in self._saved:
            setattr(module, name, orig)


class Patch:
    """Replace attributes for the duration of a `with` (module functions, methods), restoring them after."""

    def __init__(self):
        self._saved = []

    def set(self, owner, name, value):
        self._saved.append((owner, name, vars(owner).get(name, _MISSING)))  # _MISSING: inherited or a class's
        setattr(owner, name, value)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for owner, name, old in reversed(self._saved):
            if old is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, old)
        self._saved.clear()


_MISSING = object()


def spans(patch: Patch, clock: Clock, record: list, owner, name: str, label: str):
    """Wrap owner.name so each call appends (label, start mark, end mark) to `record`."""
    orig = getattr(owner, name)

    def timed(*a, **kw):
        start = clock.mark()
        try:
            return orig(*a, **kw)
        finally:
            record.append((label, start, clock.mark()))

    patch.set(owner, name, timed)


def total(clock: Clock, record: list, label: str) -> float:
    return sum(clock.seconds(a, b) for name, a, b in record if name == label)


# ---------------------------------------------------------------------------- model


def random_model_configs(source: str) -> dict:
    """The engine's tiny-model config format, at `source`'s official sizes (random weights: nothing downloaded)."""
    from engine.models.official_configs import official_config

    transformer = official_config(source)
    if transformer is None or "Wan2.1-T2V" not in source:
        raise SystemExit(f"--build_random: no official Wan2.1 T2V config for {source!r} "
                         "(engine/models/official_configs.py); e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers.")
    return {"seed": 0, "transformer": transformer, "text_encoder": dict(UMT5_XXL), "vae": {},  # {}: the Wan2.1 VAE
            "tokenizer": {"vocab_size": UMT5_VOCAB}, "scheduler": {"flow_shift": 3.0}, "embedding_vocab": UMT5_VOCAB}


def build_random_model(configs: dict, model_dir: Path, device: str, dtype: torch.dtype) -> dict:
    """Save a random-weight Wan pipeline (engine.models.wan.build_tiny_parts at `configs`) into `model_dir`.

    Built on `device` (fast init, no float32 copy of 7B parameters on the host), transformer and text encoder at
    `dtype`, the VAE in float32 (the engine loads it so). A folder that already holds a model is reused.
    """
    model_dir = Path(model_dir)
    if (model_dir / "model_index.json").is_file():
        return {"built": False, "model_dir": str(model_dir)}
    if model_dir.exists() and any(model_dir.iterdir()):
        raise SystemExit(f"--model_dir {model_dir} exists and holds no model (no model_index.json): choose another.")
    from diffusers import WanPipeline, WanTransformer3DModel

    from engine.models.wan import build_tiny_parts

    t0 = time.perf_counter()
    tiny = {k: v for k, v in configs.items() if k != "embedding_vocab"}
    # Initialised at the saved dtype: a 14B transformer in float32 (56 GB) and its bf16 copy do not fit one GPU.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            parts = build_tiny_parts(tiny, lambda cfg: WanTransformer3DModel(**cfg))
            vocab = configs.get("embedding_vocab")
            encoder = parts["text_encoder"]
            if vocab and vocab != encoder.config.vocab_size:  # the real embedding size; ids stay below the tokenizer's
                encoder.set_input_embeddings(torch.nn.Embedding(vocab, encoder.config.d_model))
                encoder.config.vocab_size = vocab
    finally:
        torch.set_default_dtype(previous)
    parts["vae"].float()  # the engine loads the VAE in float32
    pipe = WanPipeline(**parts)
    built_s = time.perf_counter() - t0
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=model_dir.name + ".tmp-", dir=model_dir.parent))
    try:
        pipe.save_pretrained(tmp)
        if model_dir.exists():
            model_dir.rmdir()
        os.replace(tmp, model_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    counts = {name: sum(p.numel() for p in parts[name].parameters()) for name in ("transformer", "text_encoder", "vae")}
    info = {"built": True, "model_dir": str(model_dir), "build_s": built_s,
            "save_s": time.perf_counter() - t0 - built_s, "parameters": counts,
            "tokenizer_vocab": len(parts["tokenizer"]), "embedding_vocab": encoder.config.vocab_size}
    del pipe, parts, encoder
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return info


class Context:
    """What every case shares: arguments, device, clock, the preset (its source swapped for --model_dir)."""

    def __init__(self, args):
        from engine.presets import load_preset, validate_preset

        self.args = args
        self.cuda = args.device == "cuda"
        self.clock = Clock(self.cuda)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if args.work_dir:
            Path(args.work_dir).mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="e2e-", dir=args.work_dir))  # fresh: run_tta wants new folders
        preset = load_preset(args.preset)
        self.model = {"preset": preset["name"], "preset_source": preset["source"]}
        if args.build_random:
            if not args.model_dir:
                raise SystemExit("--build_random needs --model_dir (the folder the random model is saved in).")
            dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[preset["dtype"]]
            info = build_random_model(random_model_configs(args.build_random), Path(args.model_dir), args.device,
                                      dtype if self.cuda else torch.float32)
            self.model.update(random_weights_at=args.build_random, **info)
            print(f"random model: {json.dumps(info)}", flush=True)
        if args.model_dir:
            if not (Path(args.model_dir) / "model_index.json").is_file():
                raise SystemExit(f"--model_dir {args.model_dir} holds no diffusers model (add --build_random SOURCE).")
            preset = validate_preset({**preset, "source": str(Path(args.model_dir).resolve())},
                                     origin=f"preset {preset['name']} with source {args.model_dir}")
        self.model["source"] = preset["source"]
        self.preset = preset
        self.results: dict[str, dict] = {}

    def pipeline(self):
        """The engine's cached pipeline for the preset (what generate_video and run_tta get), loaded once, timed."""
        from engine.models import get_pipeline

        start = self.clock.mark()
        pipe = get_pipeline(self.preset)
        load_s = self.clock.seconds(start, self.clock.mark())
        self.model.setdefault("first_load_s", load_s)
        return pipe

    def env(self) -> dict:
        import diffusers
        import transformers

        try:
            import triton

            triton_version = triton.__version__
        except ImportError:
            triton_version = None
        return {"device": torch.cuda.get_device_name() if self.cuda else "cpu" + (f" ({platform.processor()})" if platform.processor() else ""),
                "torch": torch.__version__, "triton": triton_version, "diffusers": diffusers.__version__,
                "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "argv": sys.argv[1:] if self.args.argv is None else self.args.argv,
                "timing": "CUDA events" if self.cuda else "wall clock (time.perf_counter)",
                "attention_in_graph": not self.args.attention_outside_graph,
                "compile_mode": self.args.compile_mode}

    def save(self, case: str, data: dict) -> Path:
        data = {"case": case, "env": self.env(), "model": self.model, **data}
        self.results[case] = data
        path = self.out / f"e2e_{case}.json"
        path.write_text(json.dumps(data, indent=2, default=str))
        return path


def frame_list(text: str | None, default: int) -> list[int]:
    return [int(f) for f in text.split(",") if f.strip()] if text else [default]


def radial_settings(ctx: Context):
    from engine.attention.schedule import AttentionSettings

    return AttentionSettings.from_preset(ctx.preset, backend=ctx.args.backend)


def warm_transformer(ctx: Context, pipe, fam, frames: int, height: int, width: int, around=None) -> dict:
    """One dense and one radial forward at this shape: kernels compiled, plans built, before anything is timed.
    `around(pattern, forward)`, when given, runs each forward instead (the profiler); its results are returned."""
    import dataclasses

    from engine.attention.processor import install_radial_attention, remove_radial_attention

    transformer = fam.denoiser(pipe)
    cfg = transformer.config
    device, dtype = transformer.device, transformer.dtype
    latents = torch.randn(1, cfg.in_channels, fam.latent_frames(frames), height // fam.spatial_factor,
                          width // fam.spatial_factor, device=device, dtype=dtype)
    t = torch.tensor([700.0], device=device)
    # As the families' generate runs the pipeline: inference mode and the prompt's own text length (compiled
    # blocks guard on both, so the rows then reuse what this compiled).
    with torch.inference_mode():
        text, _ = fam.encode_prompt(pipe, ctx.args.prompt, "", 1.0)
        text = text.to(device, dtype)
        results = {}
        for pattern in ("dense", "radial"):
            schedule = install_radial_attention(transformer, dataclasses.replace(radial_settings(ctx), pattern=pattern),
                                                fam)
            if schedule is not None:
                schedule.training = True  # every step radial (no dense timesteps): the radial step's own cost

            def forward(latents=latents, text=text):
                fam.forward(transformer, latents, t, text)

            results[pattern] = forward() if around is None else around(pattern, forward)
    remove_radial_attention(transformer, fam)
    del latents, text
    if ctx.cuda:
        torch.cuda.synchronize()
    return results


def profiled(ctx: Context, fn) -> dict:
    """bench/kernel_profile.py's per-kernel time of one `fn()`; a profiler fault is recorded, not raised (the
    timed rows are already saved)."""
    from kernel_profile import profile_call

    try:
        return profile_call(fn, ctx.cuda)
    except Exception as error:  # noqa: BLE001 - any profiler failure leaves the rows intact
        return {"error": f"{type(error).__name__}: {error}"[:300]}


def warm_now(ctx: Context, index: int) -> bool:
    """Whether the full-shape warm-up (one dense and one radial forward) runs before this frame count's rows; "small"
    keeps only the 2-latent-frame pipeline calls (kernels compiled, encoder and VAE warm), for shapes where one
    dense forward takes minutes."""
    return ctx.args.warmup == "each" or (ctx.args.warmup == "first" and index == 0)


# ---------------------------------------------------------------------------- case: sample


def case_sample(ctx: Context) -> dict:
    """generate_video as the app calls it, dense then radial per frame count; per-part times and projection."""
    import numpy as np

    import engine.generate as generate_mod
    from engine.models import family

    args, clock, fam = ctx.args, ctx.clock, family(ctx.preset)
    gen = ctx.preset["generation"]
    height, width = args.height or gen["height"], args.width or gen["width"]
    steps = args.steps or gen["steps"]
    frames_all = frame_list(args.frames, gen["num_frames"])
    settings = radial_settings(ctx)
    pipe = ctx.pipeline()
    transformer = fam.denoiser(pipe)
    layers = len(fam.attention_layers(transformer))
    passes = 2 if gen["guidance_scale"] > 1.0 else 1  # classifier-free guidance: two transformer calls per step
    largest = max(frames_all)
    sdpa = Sdpa.pick(args, ctx.cuda, transformer.config.num_attention_heads, transformer.config.attention_head_dim,
                     fam.token_layout(largest, height, width).num_tokens, backward=False)
    sdpa_ctx = sdpa.context()  # made now: it may add a note to the record
    print(f"sample: SDPA {json.dumps(sdpa.to_dict())}", flush=True)
    if args.project_steps and steps <= settings.dense_timesteps and not args.radial_steps_only:
        print(f"sample: {steps} measured steps <= dense_timesteps ({settings.dense_timesteps}): no radial step is "
              "measured, so the radial row cannot be projected", flush=True)
    rows, comparisons = [], []
    data = {"sdpa": sdpa.to_dict(), "settings": {"height": height, "width": width, "steps": steps,
                                                 "project_steps": args.project_steps, "guidance_scale": gen["guidance_scale"],
                                                 "radial": settings.to_dict(), "layers": layers, "mp4": not args.no_mp4},
            "rows": rows, "comparisons": comparisons}
    video_dir = ctx.work / "videos"
    record: list = []
    step_marks: list = []
    first_call: list = []

    def on_step(done, total_steps):
        step_marks.append(clock.mark())

    def pre_hook(module, a, kw):
        if not first_call:
            first_call.append(clock.mark())

    hook = transformer.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with Patch() as patch, sdpa_ctx, RadialCounter() as counter:
            spans(patch, clock, record, pipe.text_encoder, "forward", "text")
            spans(patch, clock, record, pipe.vae, "decode", "decode")
            if args.no_mp4:
                patch.set(generate_mod, "write_mp4", lambda frames, path, fps=16: Path(path))
            spans(patch, clock, record, generate_mod, "write_mp4", "mp4")

            def call(frames, pattern, n_steps, attention=None, out=None):
                for marks in (record, step_marks, first_call):
                    marks.clear()
                override = {"pattern": pattern, "backend": args.backend, **(attention or {})}
                start = clock.mark()
                result = generate_mod.generate_video(
                    args.prompt, preset=ctx.preset, num_frames=frames, height=height, width=width, steps=n_steps,
                    attention=override, progress=on_step, out_path=out or video_dir / f"{pattern}-{frames}.mp4",
                    compile_blocks=args.compile_blocks)
                return result, start, clock.mark()

            if args.compile_blocks:  # on before the warm-ups, so that they compile the blocks at each row's shape
                set_block_compilation(transformer, True)
            if args.warmup != "none":  # text encoder, VAE, mp4 writer and the pipeline's own first-call costs
                for pattern in ("dense", "radial"):
                    call(fam.pixel_frames(2), pattern, 1, {"dense_timesteps": 0}, video_dir / "warmup.mp4")
            for index, frames in enumerate(frames_all):
                if warm_now(ctx, index):
                    warm_transformer(ctx, pipe, fam, frames, height, width)
                    if args.compile_blocks:  # the graphs the pipeline's own calls need at this shape, compiled now
                        for pattern in ("dense", "radial"):
                            call(frames, pattern, 1, {"dense_timesteps": 0}, video_dir / "warmup.mp4")
                by_pattern = {}
                for pattern in ("dense", "radial"):
                    reset_peak(ctx.cuda)
                    counter.calls = 0
                    layout = fam.token_layout(frames, height, width)
                    row = {"frames": frames, "latent_frames": layout.latent_frames, "tokens": layout.num_tokens,
                           "pattern": pattern, "steps": steps, "sdpa_backend": sdpa.chosen}
                    graphs = compiled_graphs()
                    # --radial_steps_only: the radial row measures radial steps only; its dense timesteps are
                    # projected at the dense row's step time (the same dense attention)
                    only_radial = args.radial_steps_only and pattern == "radial"
                    try:
                        result, start, end = call(frames, pattern, steps, {"dense_timesteps": 0} if only_radial else None)
                    except torch.OutOfMemoryError:
                        row.update(oom=True, peak_gib=peak_gib(ctx.cuda))
                        rows.append(row)
                        ctx.save("sample", data)
                        continue
                    borrowed = None
                    if only_radial and "dense" in by_pattern:
                        borrowed = {"dense_timestep": median(by_pattern["dense"][0]["step_s"])}
                    row.update(sample_row(ctx, result, start, end, record, step_marks, first_call, pattern, steps,
                                          settings, layers, passes, measured_dense_timesteps=0 if only_radial else None,
                                          borrowed=borrowed))
                    row["radial_calls"] = counter.calls
                    row["graphs_compiled_in_row"] = compiled_graphs() - graphs  # 0: the warm-up compiled them all
                    row["peak_gib"] = peak_gib(ctx.cuda)
                    rows.append(row)
                    by_pattern[pattern] = (row, result.frames)
                    print(f"sample: {brief(row, 'total_s', 'denoise_s', 'text_encode_s', 'vae_decode_s', 'mp4_s')}", flush=True)
                    ctx.save("sample", data)
                if args.profile and index == len(frames_all) - 1:  # one denoiser forward per pattern, untimed
                    data["profiles"] = warm_transformer(ctx, pipe, fam, frames, height, width,
                                                        around=lambda pattern, forward: profiled(ctx, forward))
                    ctx.save("sample", data)
                if len(by_pattern) == 2:
                    (dense, dense_frames), (radial, radial_frames) = by_pattern["dense"], by_pattern["radial"]
                    cmp = {"frames": frames, "tokens": dense["tokens"], "dense_s": dense["total_s"],
                           "radial_s": radial["total_s"], "speedup": dense["total_s"] / radial["total_s"],
                           "denoise_speedup": dense["denoise_s"] / radial["denoise_s"],
                           "frames_mean_abs_diff": float(np.abs(dense_frames.astype(np.int16)
                                                                - radial_frames.astype(np.int16)).mean())}
                    if dense.get("projection") and radial.get("projection"):
                        pd, pr = dense["projection"], radial["projection"]
                        cmp["projection"] = {"label": "projection", "steps": pd["steps"], "dense_s": pd["total_s"],
                                             "radial_s": pr["total_s"], "speedup": pd["total_s"] / pr["total_s"]}
                    comparisons.append(cmp)
                    ctx.save("sample", data)
                del by_pattern
    finally:
        hook.remove()
        if args.compile_blocks:
            set_block_compilation(transformer, False)
    return data


def compiled_graphs() -> int:
    """Graphs torch.compile has made in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def sample_row(ctx, result, start, end, record, step_marks, first_call, pattern, steps, settings, layers, passes,
               measured_dense_timesteps=None, borrowed=None):
    """One row's times and projection. `measured_dense_timesteps`: the dense timesteps the measured call ran (0 with
    --radial_steps_only; default the settings'); the projection always uses the settings' own."""
    clock = ctx.clock
    ran_dense = settings.dense_timesteps if measured_dense_timesteps is None else measured_dense_timesteps
    total_s = clock.seconds(start, end)
    text_s, decode_s, mp4_s = (total(clock, record, k) for k in ("text", "decode", "mp4"))
    starts = first_call[:1] + step_marks[:-1]
    step_s = [clock.seconds(a, b) for a, b in zip(starts, step_marks)]
    denoise_s = clock.seconds(first_call[0], step_marks[-1]) if step_marks else 0.0
    dense_steps = steps if pattern == "dense" else min(ran_dense, steps)
    kinds = ["dense"] * steps if pattern == "dense" else \
        ["dense_timestep" if i < ran_dense else "radial" for i in range(steps)]
    radial_layers = max(0, layers - settings.dense_layers)
    row = {"total_s": total_s, "generate_s": result.seconds, "text_encode_s": text_s, "denoise_s": denoise_s,
           "vae_decode_s": decode_s, "mp4_s": mp4_s, "other_s": total_s - text_s - denoise_s - decode_s - mp4_s,
           "step_s": step_s, "step_kinds": kinds, "attention": result.settings["attention"],
           "expected_radial_calls": 0 if pattern == "dense" else (steps - dense_steps) * radial_layers * passes}
    row["shares"] = shares(total_s, text_s, denoise_s, decode_s)
    target = ctx.args.project_steps
    if target and steps < target and len(step_s) == steps:
        try:
            proj = project_steps(step_s, kinds, total_s - sum(step_s), target, settings.dense_timesteps, borrowed)
            proj["shares"] = shares(proj["total_s"], text_s, proj["denoise_s"], decode_s)
            row["projection"] = proj
        except ValueError as err:
            row["projection_error"] = str(err)
    return row


def shares(total_s, text_s, denoise_s, decode_s) -> dict:
    return {"text_encode": text_s / total_s, "denoise": denoise_s / total_s, "vae_decode": decode_s / total_s,
            "other": max(0.0, 1 - (text_s + denoise_s + decode_s) / total_s)}


# ---------------------------------------------------------------------------- case: train


def base_frames_for(fam, preset: dict, frames: int, given: int | None) -> int:
    """The base (dense) pass length of a length-extension step: given, else the recipe's, else half the clip."""
    base = given or preset["training"]["base_num_frames"]
    if base >= frames:
        base = fam.pixel_frames(max(1, fam.latent_frames(frames) // 2))
    return base


def case_train(ctx: Context) -> dict:
    """One LoRA length-extension step per row, as engine.workers.trainer runs it (length_extension_losses, clip,
    AdamW), with gradient checkpointing and the preset's LoRA targets; dense vs radial per frame count."""
    import dataclasses

    from engine.attention.processor import install_radial_attention, remove_radial_attention
    from engine.config import TrainConfig, preset_training_values
    from engine.lora import add_lora
    from engine.models import family
    from engine.workers.trainer import apply_memory_options

    args, clock, preset, fam = ctx.args, ctx.clock, ctx.preset, family(ctx.preset)
    train = preset["training"]
    height, width = args.height or train["height"], args.width or train["width"]
    frames_all = frame_list(args.train_frames or args.frames, train["extended_num_frames"])
    pipe = ctx.pipeline()
    transformer = fam.denoiser(pipe)
    device = transformer.device

    def config_for(frames: int):
        values = {"preset": preset["name"], **preset_training_values(preset), "data_dir": "-", "output_dir": "-",
                  "height": height, "width": width, "extended_num_frames": frames,
                  "base_num_frames": base_frames_for(fam, preset, frames, args.train_base_frames),
                  "use_gradient_checkpointing": True}
        if args.backend:
            values["attention_backend"] = args.backend
        return TrainConfig.from_dict(values).validate(preset)

    config0 = config_for(frames_all[0])
    with torch.no_grad():  # the trainer encodes captions before it moves the encoders off the accelerator
        embeds, _ = fam.encode_prompt(pipe, args.prompt, "", 1.0)
    embeds = embeds.to(torch.float32)  # as cached latents and embeddings reach the trainer
    encoders = {name: getattr(pipe, name).device for name in ("vae", "text_encoder") if getattr(pipe, name, None)}
    fam.offload_encoders(pipe)
    reset_peak(ctx.cuda)
    mixed = ctx.cuda and config0.use_mixed_precision
    sdpa = Sdpa.pick(args, ctx.cuda, transformer.config.num_attention_heads, transformer.config.attention_head_dim,
                     fam.token_layout(max(frames_all), height, width).num_tokens, backward=True)
    sdpa_ctx = sdpa.context()  # made now: it may add a note to the record
    print(f"train: SDPA {json.dumps(sdpa.to_dict())}", flush=True)
    rows, comparisons = [], []
    data = {"sdpa": sdpa.to_dict(), "settings": {"height": height, "width": width, "lora_rank": config0.lora_rank,
                                                 "target_modules": config0.target_modules, "gradient_checkpointing": True,
                                                 "mixed_precision_bf16": mixed, "reps": args.train_reps},
            "rows": rows, "comparisons": comparisons}
    params = add_lora(transformer, config0.lora_rank, config0.lora_alpha, config0.lora_dropout, config0.target_modules,
                      seed=config0.seed)
    try:
        if mixed:
            for p in params:  # trainable weights in fp32; the frozen base stays in bf16 (as the trainer does)
                p.data = p.data.float()
        apply_memory_options(transformer, config0, ctx.cuda)
        if args.compile_blocks:  # as the trainer does it: after the LoRA and the memory options
            set_block_compilation(transformer, True)
        transformer.train()
        autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if mixed else contextlib.nullcontext
        with sdpa_ctx, RadialCounter() as counter:
            for index, frames in enumerate(frames_all):
                config = config_for(frames)
                lf, base_lf = fam.latent_frames(frames), fam.latent_frames(config.base_num_frames)
                gen = torch.Generator().manual_seed(0)
                c = transformer.config.in_channels
                latents = torch.randn(1, c, lf, height // fam.spatial_factor, width // fam.spatial_factor,
                                      generator=gen).to(device)
                noise = torch.randn(latents.shape, generator=gen).to(device)
                sigmas = fam.sample_sigmas(1, gen, latents.shape, scheme=config.timestep_sampling,
                                           shift=config.flow_shift)
                text = embeds.to(device)
                by_pattern = {}
                for pattern in ("dense", "radial"):
                    settings = dataclasses.replace(radial_settings(ctx), pattern=pattern,
                                                   backend=config.attention_backend)
                    schedule = install_radial_attention(transformer, settings, fam)
                    if schedule is not None:
                        schedule.training = True
                    optimizer = torch.optim.AdamW(params, lr=config.learning_rate,
                                                  betas=(config.adam_beta1, config.adam_beta2),
                                                  weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
                    batch = (latents, text, noise, sigmas, base_lf)

                    def step(optimizer=optimizer, schedule=schedule, config=config, batch=batch):
                        return train_step(clock, fam, transformer, schedule, batch, config, params, optimizer, autocast)

                    layout = fam.token_layout(frames, height, width)
                    row = {"frames": frames, "latent_frames": lf, "tokens": layout.num_tokens,
                           "base_frames": config.base_num_frames,
                           "tokens_base": fam.token_layout(config.base_num_frames, height, width).num_tokens,
                           "pattern": pattern, "sdpa_backend": sdpa.chosen}
                    try:
                        if warm_now(ctx, index):
                            step()
                        reset_peak(ctx.cuda)
                        counter.calls = 0
                        graphs = compiled_graphs()
                        measured = [step() for _ in range(args.train_reps)]
                    except torch.OutOfMemoryError:
                        row.update(oom=True, peak_gib=peak_gib(ctx.cuda))
                        rows.append(row)
                        optimizer.zero_grad(set_to_none=True)
                        optimizer = step = None
                        ctx.save("train", data)
                        continue
                    parts = [[clock.seconds(a, b) for a, b in zip(m, m[1:])] for m, _ in measured]
                    row.update(step_s=median([sum(p) for p in parts]), base_pass_s=median([p[0] for p in parts]),
                               extended_pass_s=median([p[1] for p in parts]), optimizer_s=median([p[2] for p in parts]),
                               steps_s=[sum(p) for p in parts], loss=measured[-1][1],
                               radial_calls=counter.calls, peak_gib=peak_gib(ctx.cuda),
                               graphs_compiled_in_row=compiled_graphs() - graphs)
                    if args.profile and index == len(frames_all) - 1:  # one more step, untimed, under the profiler
                        data.setdefault("profiles", {})[pattern] = profiled(ctx, step)
                    optimizer = step = None  # Adam's state goes before the next row
                    rows.append(row)
                    by_pattern[pattern] = row
                    print(f"train: {brief(row, 'step_s', 'base_pass_s', 'extended_pass_s', 'optimizer_s')}", flush=True)
                    ctx.save("train", data)
                if len(by_pattern) == 2:
                    d, r = by_pattern["dense"], by_pattern["radial"]
                    comparisons.append({"frames": frames, "tokens": d["tokens"], "dense_s": d["step_s"],
                                        "radial_s": r["step_s"], "speedup": d["step_s"] / r["step_s"],
                                        "extended_pass_speedup": d["extended_pass_s"] / r["extended_pass_s"]})
                    ctx.save("train", data)
                latents = noise = text = batch = None
    finally:
        if args.compile_blocks:
            set_block_compilation(transformer, False)
        transformer.zero_grad(set_to_none=True)
        transformer.eval()
        remove_radial_attention(transformer, fam)
        if getattr(transformer, "peft_config", None):
            transformer.unload_lora()  # the cached pipeline serves the next case unchanged
        if getattr(transformer, "is_gradient_checkpointing", False):
            transformer.disable_gradient_checkpointing()
        for name, dev in encoders.items():
            getattr(pipe, name).to(dev)
        reset_peak(ctx.cuda)
    return data


def train_step(clock: Clock, fam, transformer, schedule, batch, config, params, optimizer, autocast):
    """The trainer's micro-step: length_extension_losses with a backward per pass, clipping, AdamW.

    Returns the marks (start, after the base pass's backward, after the extended pass's, after the optimizer) and
    the loss."""
    from engine.workers.trainer import length_extension_losses

    latents, text, noise, sigmas, base_lf = batch
    marks = [clock.mark()]

    def backward(loss, sync):
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss.detach())}")
        loss.backward()
        marks.append(clock.mark())

    with autocast():
        losses = length_extension_losses(fam, transformer, schedule, latents, text, noise, sigmas, base_lf, config,
                                         backward)
    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    marks.append(clock.mark())
    return marks, float(losses["loss"])


# ---------------------------------------------------------------------------- case: tta


PROFILE_TTA_STEPS = 10  # --profile: adaptation steps in the profiled clip (enough to dwarf its one-time work)


def case_tta(ctx: Context) -> dict:
    """engine.workers.tta.run_tta on a synthetic clip at the preset's TTA size: baseline continuation, a fresh LoRA
    tuned on the 33 conditioning frames, the continuation with it; per-part times. The engine's TTA runs dense
    attention; the radial row installs the preset's radial processors after the engine loads the model (a bench
    hook: every step past the dense layers radial, training and sampling alike)."""
    import engine.workers.tta as tta_mod
    from engine.attention.processor import install_radial_attention, remove_radial_attention
    from engine.data.dataset import tta_size
    from engine.data.synthetic import render_clip
    from engine.models import family
    from engine.video import write_mp4

    args, clock, preset, fam = ctx.args, ctx.clock, ctx.preset, family(ctx.preset)
    tta = preset["tta"]
    side = args.tta_short_side or tta["short_side"]
    height, width = tta_size(side, side * 16 // 9, side, fam.size_multiple)  # a 16:9 landscape clip
    cond, total_frames = tta["cond_frames"], tta["total_frames"]
    tta_steps = args.tta_steps or tta["steps"]
    sample_steps = args.sample_steps or preset["generation"]["steps"]
    clip = render_clip(seed=0, num_frames=total_frames, height=height, width=width)
    clip_path = ctx.work / "tta-clip" / "clip.mp4"
    write_mp4(clip.frames, clip_path, fps=preset["generation"]["fps"])
    clip_path.with_suffix(".txt").write_text(clip.caption)
    pipe = ctx.pipeline()
    transformer = fam.denoiser(pipe)
    sdpa = Sdpa.pick(args, ctx.cuda, transformer.config.num_attention_heads, transformer.config.attention_head_dim,
                     fam.token_layout(total_frames, height, width).num_tokens, backward=True)
    sdpa_ctx = sdpa.context()  # made now: it may add a note to the record
    print(f"tta: SDPA {json.dumps(sdpa.to_dict())}", flush=True)
    rows = []
    data = {"sdpa": sdpa.to_dict(), "settings": {"height": height, "width": width, "cond_frames": cond,
                                                 "total_frames": total_frames, "tta_steps": tta_steps,
                                                 "sample_steps": sample_steps, "rank": tta["rank"],
                                                 "objective": tta["objective"], "lpips": args.lpips,
                                                 "caption": clip.caption},
            "rows": rows, "comparisons": []}
    record: list = []
    settings = radial_settings(ctx)
    orig_load = tta_mod._load_model

    def load_radial(p, *rest):
        pipe_, fam_ = orig_load(p, *rest)
        schedule = install_radial_attention(fam_.denoiser(pipe_), settings, fam_)
        schedule.training = True  # TTA's noise levels are random: no step count for dense_timesteps to follow
        return pipe_, fam_

    def run(pattern: str, steps: int, n_sample: int, name: str):
        with Patch() as patch:
            if pattern == "radial":
                patch.set(tta_mod, "_load_model", load_radial)
            record.clear()
            start = clock.mark()
            result = tta_mod.run_tta(clip_path, preset=preset, output_dir=ctx.work / name, steps=steps,
                                     sample_steps=n_sample, lpips=args.lpips, compile_blocks=args.compile_blocks)
            return result, start, clock.mark()

    def profile_adaptation(pattern: str) -> dict:
        """One more clip, untimed (PROFILE_TTA_STEPS adaptation steps, 1 sampling step): its `adapt` call under
        the profiler. That call includes its end-of-adaptation snapshot (one 1-step sample and its write)."""
        profiles, real_adapt = {}, tta_mod.adapt

        def adapt(*a, **kw):
            out = []
            profiles["adapt"] = profiled(ctx, lambda: out.append(real_adapt(*a, **kw)))
            if not out:
                raise RuntimeError(profiles["adapt"]["error"])
            return out[0]

        try:
            with Patch() as patch:
                patch.set(tta_mod, "adapt", adapt)
                run(pattern, min(PROFILE_TTA_STEPS, tta_steps), 1, f"tta-profile-{pattern}")
        except Exception as error:  # noqa: BLE001 - the timed rows are saved; the profile records its fault
            profiles.setdefault("adapt", {"error": f"{type(error).__name__}: {error}"[:300]})
        return profiles["adapt"]

    try:
        with Patch() as patch, sdpa_ctx, RadialCounter() as counter:
            spans(patch, clock, record, tta_mod.VideoSession, "generate", "generate")
            spans(patch, clock, record, tta_mod, "adapt", "adapt")
            spans(patch, clock, record, tta_mod, "write_baseline", "write_baseline")
            spans(patch, clock, record, tta_mod, "write_tta", "write_tta")
            for pattern in ("dense", "radial"):
                if args.warmup != "none":
                    run(pattern, 2, 2, f"tta-warmup-{pattern}")
                reset_peak(ctx.cuda)
                counter.calls = 0
                row = {"pattern": pattern, "height": height, "width": width, "cond_frames": cond,
                       "total_frames": total_frames, "tta_steps": tta_steps, "sample_steps": sample_steps,
                       "sdpa_backend": sdpa.chosen}
                graphs = compiled_graphs()
                try:
                    result, start, end = run(pattern, tta_steps, sample_steps, f"tta-{pattern}")
                except torch.OutOfMemoryError:
                    row.update(oom=True, peak_gib=peak_gib(ctx.cuda))
                    rows.append(row)
                    ctx.save("tta", data)
                    continue
                gens = [clock.seconds(a, b) for name, a, b in record if name == "generate"]
                clip_s, adapt_span = clock.seconds(start, end), total(clock, record, "adapt")
                write_tta_s = total(clock, record, "write_tta")
                write_s = total(clock, record, "write_baseline") + write_tta_s
                baseline_s = gens[0] if gens else None
                continuation_s = gens[-1] if len(gens) > 1 else None
                adapt_s = adapt_span - (continuation_s or 0.0) - write_tta_s  # on_snapshot samples and writes in it
                row.update(clip_s=clip_s, baseline_s=baseline_s, adapt_s=adapt_s, adapt_step_s=adapt_s / tta_steps,
                           continuation_s=continuation_s, tta_s=adapt_s + (continuation_s or 0.0), write_s=write_s,
                           other_s=clip_s - (baseline_s or 0.0) - adapt_s - (continuation_s or 0.0) - write_s,
                           radial_calls=counter.calls, peak_gib=peak_gib(ctx.cuda),
                           graphs_compiled_in_row=compiled_graphs() - graphs, under_60_s=clip_s < 60.0, metrics=result["metrics"], loss=result.get("loss"))
                rows.append(row)
                print(f"tta: {brief(row, 'clip_s', 'baseline_s', 'adapt_s', 'continuation_s', 'write_s')}", flush=True)
                ctx.save("tta", data)
                if args.profile:
                    data.setdefault("profiles", {})[f"{pattern} adaptation"] = profile_adaptation(pattern)
                    ctx.save("tta", data)
    finally:
        remove_radial_attention(transformer, fam)
    by = {r["pattern"]: r for r in rows if "clip_s" in r}
    if len(by) == 2:
        d, r = by["dense"], by["radial"]
        data["comparisons"].append({"dense_s": d["clip_s"], "radial_s": r["clip_s"], "speedup": d["clip_s"] / r["clip_s"],
                                    "tta_speedup": d["tta_s"] / r["tta_s"]})
    ctx.save("tta", data)
    return data


# ---------------------------------------------------------------------------- tables


def _f(x, fmt="{:.2f}"):
    return "-" if x is None else fmt.format(x)


def _gib(rows_by_pattern):
    d, r = rows_by_pattern.get("dense", {}), rows_by_pattern.get("radial", {})
    return f"{_f(d.get('peak_gib'), '{:.1f}')} / {_f(r.get('peak_gib'), '{:.1f}')}"


def _pct(row):
    s = row.get("shares")
    return "-" if not s else f"{s['text_encode']:.0%} / {s['denoise']:.0%} / {s['vae_decode']:.0%}"


def _pairs(rows):
    out = {}
    for row in rows:
        out.setdefault(row["frames"], {})[row["pattern"]] = row
    return out


def table_sample(data: dict) -> list[str]:
    steps = data["settings"]["steps"]
    lines = ["| frames (latent) | tokens | steps | dense s | radial s | speed-up | denoise speed-up | "
             "dense text / denoise / decode | radial text / denoise / decode | peak GiB dense / radial |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for frames, rows in _pairs(data["rows"]).items():
        d, r = rows.get("dense", {}), rows.get("radial", {})
        lat, tok = (d or r).get("latent_frames"), (d or r).get("tokens")
        sp = d["total_s"] / r["total_s"] if "total_s" in d and "total_s" in r else None
        dsp = d["denoise_s"] / r["denoise_s"] if "denoise_s" in d and "denoise_s" in r else None
        lines.append(f"| {frames} ({lat}) | {tok} | {steps} | {_f(d.get('total_s'))} | {_f(r.get('total_s'))} | "
                     f"{_f(sp, '{:.2f}x')} | {_f(dsp, '{:.2f}x')} | {_pct(d)} | {_pct(r)} | {_gib(rows)} |")
        pd, pr = d.get("projection"), r.get("projection")
        if pd and pr:
            lines.append(f"| {frames} ({lat}) | {tok} | {pd['steps']} (projection) | {pd['total_s']:.2f} | "
                         f"{pr['total_s']:.2f} | {pd['total_s'] / pr['total_s']:.2f}x | "
                         f"{pd['denoise_s'] / pr['denoise_s']:.2f}x | {_pct(pd)} | {_pct(pr)} | - |")
    return lines


def table_train(data: dict) -> list[str]:
    lines = ["| frames (latent) | tokens | base frames | dense step s | radial step s | speed-up | "
             "extended pass dense / radial s | extended-pass speed-up | peak GiB dense / radial |",
             "|---|---|---|---|---|---|---|---|---|"]
    for frames, rows in _pairs(data["rows"]).items():
        d, r = rows.get("dense", {}), rows.get("radial", {})
        any_row = d or r
        sp = d["step_s"] / r["step_s"] if "step_s" in d and "step_s" in r else None
        esp = d["extended_pass_s"] / r["extended_pass_s"] if "step_s" in d and "step_s" in r else None
        lines.append(f"| {frames} ({any_row.get('latent_frames')}) | {any_row.get('tokens')} | "
                     f"{any_row.get('base_frames')} | {_f(d.get('step_s'))}{' OOM' if d.get('oom') else ''} | "
                     f"{_f(r.get('step_s'))}{' OOM' if r.get('oom') else ''} | {_f(sp, '{:.2f}x')} | "
                     f"{_f(d.get('extended_pass_s'))} / {_f(r.get('extended_pass_s'))} | {_f(esp, '{:.2f}x')} | "
                     f"{_gib(rows)} |")
    return lines


def table_tta(data: dict) -> list[str]:
    s = data["settings"]
    lines = ["| pattern | size | cond / total frames | TTA steps | sample steps | clip s | baseline s | adapt s | "
             "continuation s | writing s | peak GiB | clip < 60 s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['pattern']} | {s['height']}x{s['width']} | {s['cond_frames']} / {s['total_frames']} | "
                     f"{s['tta_steps']} | {s['sample_steps']} | {_f(r.get('clip_s'))}{' OOM' if r.get('oom') else ''} | "
                     f"{_f(r.get('baseline_s'))} | {_f(r.get('adapt_s'))} | {_f(r.get('continuation_s'))} | "
                     f"{_f(r.get('write_s'))} | {_f(r.get('peak_gib'), '{:.1f}')} | "
                     f"{'-' if 'clip_s' not in r else ('yes' if r['under_60_s'] else 'no')} |")
    for c in data["comparisons"]:
        lines.append(f"| dense / radial | | | | | {c['speedup']:.2f}x | | | | | | |")
    return lines


def summary_table(results: dict) -> list[str]:
    lines = ["| case | frames | dense s | radial s | speed-up | peak GiB dense / radial | note |",
             "|---|---|---|---|---|---|---|"]
    if "sample" in results:
        data = results["sample"]
        pairs = _pairs(data["rows"])
        for c in data["comparisons"]:
            rows = pairs.get(c["frames"], {})
            lines.append(f"| sample | {c['frames']} | {c['dense_s']:.2f} | {c['radial_s']:.2f} | {c['speedup']:.2f}x | "
                         f"{_gib(rows)} | measured, {data['settings']['steps']} steps |")
            if "projection" in c:
                p = c["projection"]
                lines.append(f"| sample | {c['frames']} | {p['dense_s']:.2f} | {p['radial_s']:.2f} | "
                             f"{p['speedup']:.2f}x | - | projection to {p['steps']} steps |")
    if "train" in results:
        pairs = _pairs(results["train"]["rows"])
        for c in results["train"]["comparisons"]:
            lines.append(f"| train | {c['frames']} | {c['dense_s']:.2f} | {c['radial_s']:.2f} | {c['speedup']:.2f}x | "
                         f"{_gib(pairs.get(c['frames'], {}))} | one LoRA length-extension step |")
    if "tta" in results:
        data = results["tta"]
        by = {r["pattern"]: r for r in data["rows"]}
        s = data["settings"]
        for c in data["comparisons"]:
            lines.append(f"| tta | {s['cond_frames']} -> {s['total_frames']} | {c['dense_s']:.2f} | {c['radial_s']:.2f} | "
                         f"{c['speedup']:.2f}x | {_gib(by)} | per clip, {s['height']}x{s['width']}, "
                         f"{s['tta_steps']} TTA + {s['sample_steps']} sampling steps |")
    return lines


TABLES = {"sample": table_sample, "train": table_train, "tta": table_tta}
CASES = {"sample": case_sample, "train": case_train, "tta": case_tta}


# ---------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=[*CASES, "all"])
    parser.add_argument("--preset", default=None, help="model preset (default: wan2.1-t2v-1.3b)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when present")
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="JSON folder (default $OUT, else .)")
    parser.add_argument("--work_dir", default=None, help="videos and TTA run folders (default: a temp folder)")
    parser.add_argument("--build_random", default=None, metavar="SOURCE",
                        help="save a random-weight model at SOURCE's official sizes into --model_dir first")
    parser.add_argument("--model_dir", default=None, help="a local diffusers folder the preset's source points at")
    parser.add_argument("--frames", default=None, help="video frame counts, comma list (sample, train)")
    parser.add_argument("--train_frames", default=None, help="training frame counts (default: --frames)")
    parser.add_argument("--train_base_frames", type=int, default=None, help="base (dense) pass of the training step")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="measured sampling steps (default: the preset's)")
    parser.add_argument("--project_steps", type=int, default=None, help="project sampling to this many steps")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--backend", default=None, help="radial backend (default: triton on CUDA, reference on CPU)")
    parser.add_argument("--sdpa", default="auto", choices=("auto", "default", "cudnn", "flash", "efficient"),
                        help="dense SDPA backend: auto picks the fastest on a warm-up; default leaves PyTorch's order")
    parser.add_argument("--sdpa_reps", type=int, default=2)
    parser.add_argument("--warmup", choices=("each", "first", "small", "none"), default="each",
                        help="sample/train: warm-up before every frame count's rows, only the first's, only the "
                             "small-shape pipeline calls (sample), or none; tta: a 2-step run_tta per pattern unless none")
    parser.add_argument("--radial_steps_only", action="store_true", help="sample: the radial row measures radial "
                        "steps only (dense_timesteps 0 in that call); its projection counts the preset's dense "
                        "timesteps at the dense row's measured step time (labelled 'borrowed')")
    parser.add_argument("--train_reps", type=int, default=1, help="measured training steps per row (median)")
    parser.add_argument("--tta_steps", type=int, default=None, help="TTA steps (default: the preset's tta.steps)")
    parser.add_argument("--sample_steps", type=int, default=None, help="TTA continuation sampling steps")
    parser.add_argument("--tta_short_side", type=int, default=None)
    parser.add_argument("--lpips", action="store_true", help="compute LPIPS in TTA (needs its local weights)")
    parser.add_argument("--no_mp4", action="store_true", help="skip the mp4 encode at the end of generate_video")
    parser.add_argument("--compile_blocks", action="store_true", help="regional compilation (setting compile_blocks) "
                        "in every case, dense and radial alike; the warm-ups compile")
    parser.add_argument("--attention_outside_graph", action="store_true", help="with --compile_blocks: every "
                        "attention call outside the block graphs (engine.attention.processor.ATTENTION_IN_GRAPH "
                        "off), the path before the custom operators; for their A/B")
    parser.add_argument("--compile_mode", default=None, choices=("default", "reduce-overhead", "max-autotune",
                        "max-autotune-no-cudagraphs"), help="with --compile_blocks: torch.compile's mode for the blocks "
                        "(engine.models.regional_compile.MODE; reduce-overhead: CUDA graphs, which fail on per-block graphs: "
                        "docs/BENCHMARKS.md run 31)")
    parser.add_argument("--profile", action="store_true", help="sample and train: after the rows at the last frame "
                        "count, one untimed call per pattern under torch.profiler; tta: one short clip's adaptation "
                        "per pattern; kernel time per category")
    args = parser.parse_args(argv)
    args.argv = None if argv is None else list(argv)
    if args.case == "all":  # full-scale defaults for what was not given
        for key, value in FULL_SCALE.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    args.preset = args.preset or FULL_SCALE["preset"]
    if args.case == "all" and args.model_dir is None and args.build_random is None:
        from engine.presets import load_preset

        source = load_preset(args.preset)["source"]
        if source != "tiny" and not Path(os.path.expanduser(source)).exists():
            args.build_random, args.model_dir = source, f"/tmp/e2e-{args.preset}"
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cpu" and torch.cuda.is_available():
        raise SystemExit("--device cpu on a machine with CUDA: run it with CUDA_VISIBLE_DEVICES= (the engine's "
                         "generate and TTA calls put the model on CUDA whenever it is there).")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --device cpu with a tiny preset).")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.attention_outside_graph:
        from engine.attention import processor

        processor.ATTENTION_IN_GRAPH = False
    if args.compile_mode not in (None, "default"):
        from engine.models import regional_compile

        regional_compile.MODE = args.compile_mode
    ctx = Context(args)
    cases = list(CASES) if args.case == "all" else [args.case]
    print(f"{json.dumps(ctx.env())}", flush=True)
    for case in cases:
        t0 = time.perf_counter()
        data = CASES[case](ctx)
        data["case_wall_s"] = time.perf_counter() - t0
        ctx.save(case, data)
        print(f"{case}: {time.perf_counter() - t0:.1f} s", flush=True)
    if args.case == "all":
        (ctx.out / "e2e_all.json").write_text(json.dumps({"env": ctx.env(), "model": ctx.model,
                                                          "summary": summary_table(ctx.results)}, indent=2))
    print()
    for case in cases:
        print(f"### {case}\n")
        print("\n".join(TABLES[case](ctx.results[case])))
        print()
        if ctx.results[case].get("profiles"):
            from kernel_profile import share_table

            print(f"### {case}: kernel time by category (one untimed call per pattern, torch.profiler)\n")
            print("\n".join(share_table(sorted(ctx.results[case]["profiles"].items()))))
            print()
    if args.case == "all":
        print("### summary\n")
        print("\n".join(summary_table(ctx.results)))
    return ctx.results


if __name__ == "__main__":
    main()
