"""Per-video test-time adaptation (TTA) for video continuation.

Given a clip of at least `total_frames` (65) frames: encode its first `cond_frames` (33) frames
alone (9 latent frames; with Wan's causal VAE exactly the first 9 latents of the whole clip),
fine-tune a fresh LoRA on them, then generate the remaining frames (8 latent frames, frames
34-65) conditioned on the prefix with the adapted model. The baseline is the same generation
without the LoRA: same seed, same initial noise, same sampler settings. Both are measured
against the real frames 34-65 (engine/metrics.py).

Objectives (one per run):
- "diffusion": the flow-matching loss on the conditioning latents (one noise level for the
  whole window), as in the original experiment.
- "continuation": within the conditioning window, the first k latent frames (k drawn per step
  from 1..P-1) are the context and the loss is on the rest: the task met at generation. The
  context is given exactly as the backbone's continuation mode gives it when sampling: clean at
  timestep 0 ("per_token"), in VACE's conditioning video and mask ("vace"), in Open-Sora v2's
  v2v_head conditioning (mask + reference latents on the first k latent frames, "v2v_head"; the
  diffusion objective gives it zero conditioning, as its text-only pass), or carrying the
  true latents noised to the current level with the same noise ("replacement"; a uniform-
  timestep model sees a noised prefix at generation, never a clean one).

Isolation: the LoRA (rank, alpha, Q/K/V/O of every attention, optionally the MLP) is created
fresh for each video and removed afterwards with `unload_lora`, so the base weights are never
changed and nothing carries from one video to the next; every random draw comes from a
generator seeded by (seed, step). The learning rate is constant (AdamW, no weight decay), so
the first n steps of a longer run are exactly a run of n steps: a sweep over step counts trains
once to the largest and samples at each count ("snapshots").

Files (a run folder, engine.jobs.RunDir): config.json, status.json, events.jsonl with
{"type": "tta", "step", "loss", "lr", "sigma", "k", "grad_norm", "step_time", "video_id",
"setting"} per step, and the results layout of `ResultsLayout`.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..continuation import frame_timesteps, initial_noise, sample_continuation
from ..errors import ConfigError, EngineError, InputError
from ..jobs import RunDir, atomic_write_json
from ..metrics import METRIC_DIRECTIONS, METRIC_NAMES, continuation_metrics, metric_difference
from ..presets import FAMILY_CONTINUATION, list_presets, load_preset
from ..validation import TEMPORAL_FACTOR, check_frame_count, check_size, latent_frames
from . import flow

OBJECTIVES = ("diffusion", "continuation")
GROUND_TRUTH, BASELINE, TTA = "ground_truth", "baseline", "tta"
MAX_GRAD_NORM = 1.0
PROBE_SIGMAS = (0.25, 0.5, 0.75)  # fixed noise levels of the before/after loss probe
JOB_FILES = {"status.json", "job.log", "stop"}  # written by engine.jobs before the worker starts

ProgressFn = Callable[[dict], None]


class TTAStopped(Exception):
    """The stop flag was set; the run ends without results for the current item."""


# ---------------------------------------------------------------------------- settings checks


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_settings(*, rank, alpha, lr, steps, objective, seed, cond_frames, total_frames) -> None:
    """InputError naming the setting for anything out of range (nothing is read or written)."""
    if not _is_int(rank) or rank < 1:
        raise InputError(f"rank must be a positive integer (e.g. 16), got {rank!r}.")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0):
        raise InputError(f"alpha must be a positive number (default: the rank), got {alpha!r}.")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr)):
        raise InputError(f"lr must be a positive number (e.g. 2e-4), got {lr!r}.")
    if not _is_int(steps) or steps < 1:
        raise InputError(f"steps must be a positive integer (e.g. 50), got {steps!r}.")
    if objective not in OBJECTIVES:
        raise InputError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}.")
    if not _is_int(seed) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}.")
    check_frame_count(cond_frames, "cond_frames")
    check_frame_count(total_frames, "total_frames")
    if total_frames <= cond_frames:
        raise InputError(f"total_frames ({total_frames}) must be greater than cond_frames ({cond_frames}).")
    if objective == "continuation" and latent_frames(cond_frames) < 2:
        raise InputError(f"the continuation objective needs at least 2 conditioning latent frames "
                         f"(cond_frames >= {TEMPORAL_FACTOR + 1}), got cond_frames={cond_frames}.")


def continuation_presets() -> list[str]:
    names = []
    for name in list_presets():
        try:
            if load_preset(name)["continuation"] is not None:
                names.append(name)
        except EngineError:
            continue
    return names


def resolve_preset(preset: str | dict) -> tuple[dict, str]:
    """(validated preset, continuation mode); ConfigError when the preset cannot continue a clip."""
    preset = load_preset(preset) if isinstance(preset, str) else preset
    mode = preset.get("continuation")
    if mode is None:
        raise ConfigError(
            f"preset '{preset['name']}' cannot do video continuation (its field 'continuation' is null). "
            f"Use a preset that can: {', '.join(continuation_presets()) or 'none found'}."
        )
    if mode not in FAMILY_CONTINUATION.get(preset["family"], ()):
        raise ConfigError(f"preset '{preset['name']}': family '{preset['family']}' cannot do continuation mode {mode!r}.")
    return preset, mode


# ---------------------------------------------------------------------------- the clip


@dataclass
class Clip:
    video_id: str
    path: Path
    prompt: str
    frames: np.ndarray  # uint8 [total_frames, H, W, 3], already at the TTA size
    fps: float
    source_size: tuple[int, int]  # (height, width) of the file


def find_prompt(path: Path) -> str:
    """The clip's caption: a same-name .txt beside it, else its entry in a dataset's metadata.json, else ''."""
    txt = path.with_suffix(".txt")
    if txt.is_file():
        return txt.read_text(errors="replace").strip()
    meta = path.parent.parent / "metadata.json" if path.parent.name == "videos" else None
    if meta is not None and meta.is_file():
        try:
            for entry in json.loads(meta.read_text()):
                if isinstance(entry, dict) and entry.get("video_id") == path.stem:
                    return str(entry.get("prompt") or "")
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
    return ""


def target_size(src_h: int, src_w: int, short_side: int, height: int | None, width: int | None) -> tuple[int, int]:
    """The TTA frame size for a source of src_h x src_w; InputError when the source is too small (never upscaled)."""
    from .data import _tta_size

    if (height is None) != (width is None):
        raise InputError("give both height and width, or neither (then the preset's tta.short_side sets the size).")
    if height is not None:
        check_size(height, width)
        if src_h < height or src_w < width:
            raise InputError(f"resolution too small: the video is {src_w}x{src_h} (width x height); "
                             f"the requested {width}x{height} needs at least that many pixels (clips are not upscaled).")
        return height, width
    if min(src_h, src_w) < short_side:
        raise InputError(f"resolution too small: the video is {src_w}x{src_h} (width x height); "
                         f"the short side needs at least {short_side} pixels for this preset (tta.short_side).")
    return _tta_size(src_h, src_w, short_side)


def load_clip(path: str | os.PathLike, preset: dict, *, cond_frames: int, total_frames: int, height: int | None = None,
              width: int | None = None, prompt: str | None = None, video_id: str | None = None) -> Clip:
    """Read the first `total_frames` frames and resize/centre-crop them. InputError for unusable clips."""
    from ..video import read_mp4
    from .data import _resize_center_crop

    path = Path(path)
    if not path.is_file():
        raise InputError(f"video file '{path}' does not exist.")
    frames, fps = read_mp4(path, max_frames=total_frames)
    if len(frames) < total_frames:
        raise InputError(
            f"video '{path.name}' has {len(frames)} frames; test-time adaptation needs at least {total_frames} "
            f"({cond_frames} conditioning frames + {total_frames - cond_frames} to predict)."
        )
    src_h, src_w = frames.shape[1:3]
    h, w = target_size(src_h, src_w, preset["tta"]["short_side"], height, width)
    frames = _resize_center_crop(frames, h, w)
    return Clip(video_id=video_id or path.stem, path=path, prompt=find_prompt(path) if prompt is None else prompt,
                frames=frames, fps=float(fps or preset["generation"]["fps"]), source_size=(src_h, src_w))


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float [1, 3, F, H, W] in [-1, 1]."""
    return torch.from_numpy(frames).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None].contiguous()


def to_frames(pixels: torch.Tensor) -> np.ndarray:
    """[1, 3, F, H, W] in [-1, 1] -> uint8 [F, H, W, 3]."""
    x = ((pixels[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


# ---------------------------------------------------------------------------- one video


@dataclass
class SampleSettings:
    steps: int
    guidance_scale: float
    negative_prompt: str
    sampler: str = "scheduler"


class VideoSession:
    """One clip on one loaded model: its latents, prompt embeddings, noise and VACE conditioning."""

    def __init__(self, pipe, fam, mode: str, clip: Clip, *, cond_frames: int, seed: int, sample: SampleSettings):
        self.pipe, self.fam, self.mode, self.clip = pipe, fam, mode, clip
        self.cond_frames, self.seed, self.sample_settings = cond_frames, seed, sample
        transformer = pipe.transformer
        self.device, self.dtype = transformer.device, transformer.dtype
        self.pixels = to_pixels(clip.frames)
        # The prefix is encoded alone: no information from the frames to predict reaches the model.
        self.cond = fam.encode_video(pipe, self.pixels[:, :, :cond_frames]).float().to(self.device)
        total_latents = latent_frames(clip.frames.shape[0])
        c, _, h, w = self.cond.shape[1:]
        self.noise = initial_noise((1, c, total_latents, h, w), seed)
        with torch.no_grad():
            pos, neg = fam.encode_prompt(pipe, clip.prompt, sample.negative_prompt, sample.guidance_scale)
        self.prompt_embeds = pos.to(self.device, self.dtype)
        self.negative_embeds = None if neg is None else neg.to(self.device, self.dtype)
        if mode == "vace":
            self.control = fam.control_latents(pipe, self.pixels, cond_frames)
        elif mode == "v2v_head":  # mask + reference latents on the prefix latent frames
            self.control = fam.v2v_cond(self.cond, total_latents)
        else:
            self.control = None
        self._train_controls: dict[int, torch.Tensor] = {}

    @property
    def prefix_latents(self) -> int:
        return self.cond.shape[2]

    def train_control(self, known_latents: int) -> torch.Tensor:
        """VACE conditioning inside the conditioning window with its first `known_latents` latent frames known."""
        if known_latents not in self._train_controls:
            known = 0 if known_latents == 0 else (known_latents - 1) * TEMPORAL_FACTOR + 1
            self._train_controls[known_latents] = self.fam.control_latents(
                self.pipe, self.pixels[:, :, :self.cond_frames], known)
        return self._train_controls[known_latents]

    def generate(self, progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """(latents, uint8 frames) of the continuation with the model as it is now (with or without a LoRA)."""
        s = self.sample_settings
        latents = sample_continuation(
            self.pipe, self.fam, self.cond, self.noise.shape[2], self.prompt_embeds, self.negative_embeds,
            mode=self.mode, steps=s.steps, guidance_scale=s.guidance_scale, noise=self.noise, control=self.control,
            fps=self.clip.fps, sampler=s.sampler, progress=progress,
        )
        return latents, to_frames(self.fam.decode_latents(self.pipe, latents))

    # -- training
    def objective_loss(self, objective: str, noise: torch.Tensor, sigma: float, k: int) -> torch.Tensor:
        """The TTA loss for one (noise, sigma, k) on the conditioning latents."""
        cond = self.cond
        sigmas = torch.tensor([sigma], dtype=torch.float32)
        if hasattr(self.fam, "flow_pair"):  # the family's own flow-matching convention (Open-Sora v2)
            xt, target = self.fam.flow_pair(cond, noise, sigmas)
        else:
            xt = flow.noisy_latents(cond, noise, sigmas)
            target = flow.velocity_target(cond, noise)
        t = flow.timesteps_from_sigmas(sigmas).to(self.device)
        control, start = None, 0
        if objective == "diffusion":
            if self.mode == "vace":
                control = self.train_control(0)  # VACE's plain generation: nothing known
            elif self.mode == "v2v_head":
                control = self.fam.v2v_cond(cond[:, :, :0], cond.shape[2])  # zero conditioning
        else:
            start = k
            if self.mode == "per_token":
                xt = torch.cat([cond[:, :, :k], xt[:, :, k:]], dim=2)
                t = frame_timesteps(t.item(), 1, cond.shape[2], k, self.device)
            elif self.mode == "vace":
                control = self.train_control(k)
            elif self.mode == "v2v_head":  # the first k latent frames known; the noisy latents are not overwritten
                control = self.fam.v2v_cond(cond[:, :, :k], cond.shape[2])
        autocast = torch.autocast("cuda", dtype=self.dtype) if self.device.type == "cuda" and self.dtype != torch.float32 \
            else torch.autocast("cpu", enabled=False)
        with autocast:
            pred = self.fam.transformer_forward(self.pipe.transformer, xt.to(self.dtype), t, self.prompt_embeds,
                                                control=control, fps=self.clip.fps)
        return F.mse_loss(pred.float()[:, :, start:], target[:, :, start:])

    @torch.no_grad()
    def probe_loss(self, objective: str) -> float:
        """The objective at fixed noise and levels (PROBE_SIGMAS, k = half the window): comparable across steps."""
        gen = torch.Generator("cpu").manual_seed(10_000 + self.seed)
        noise = torch.randn(self.cond.shape, generator=gen).to(self.cond)
        k = max(1, self.prefix_latents // 2)
        return float(np.mean([float(self.objective_loss(objective, noise, s, k)) for s in PROBE_SIGMAS]))


@dataclass
class AdaptSettings:
    rank: int = 16
    alpha: float | None = None  # None: the rank
    lr: float = 2e-4
    steps: int = 50
    objective: str = "diffusion"
    seed: int = 0
    include_mlp: bool = False

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)


def adapt(session: VideoSession, settings: AdaptSettings, *, snapshots: list[int] | None = None,
          on_step: Callable[[dict], None] | None = None, on_snapshot: Callable[[int, dict], None] | None = None,
          should_stop: Callable[[], bool] | None = None) -> dict:
    """Fine-tune a fresh LoRA on the session's conditioning latents; call `on_snapshot(step, info)` at each
    snapshot step with the LoRA active (sample there). The LoRA is removed before returning, always.

    Returns {"losses": [...], "probe": {step: loss}}.
    """
    from .lora import add_lora

    pipe, fam = session.pipe, session.fam
    transformer = pipe.transformer
    snapshots = sorted(set(snapshots or [settings.steps]))
    targets = fam.LORA_TARGET_MODULES_FULL if settings.include_mlp else fam.LORA_TARGET_MODULES
    # A family with its own training noise schedule (Open-Sora v2: shape-dependent shift) says so.
    own_sigma = getattr(fam, "sample_train_sigma", None)
    shift = None if own_sigma is not None else float(pipe.scheduler.config.get("flow_shift", 3.0) or 3.0)
    losses: list[float] = []
    probe: dict[int, float] = {}
    try:
        params = add_lora(transformer, settings.rank, settings.lora_alpha, 0.0, targets, seed=settings.seed)
        for p in params:  # trainable weights in float32 even when the frozen base is bf16
            p.data = p.data.float()
        optimizer = torch.optim.AdamW(params, lr=settings.lr, betas=(0.9, 0.999), weight_decay=0.0, eps=1e-8)
        probe[0] = session.probe_loss(settings.objective)
        transformer.train()
        for step in range(1, snapshots[-1] + 1):
            if should_stop is not None and should_stop():
                raise TTAStopped(f"stopped at step {step - 1}")
            t0 = time.perf_counter()
            gen = torch.Generator("cpu").manual_seed(settings.seed * 1_000_003 + step)
            noise = torch.randn(session.cond.shape, generator=gen).to(session.cond)
            if own_sigma is not None:
                sigma = own_sigma(gen, session.cond.shape)
            else:
                sigma = float(flow.sample_sigmas(1, gen, "logit_normal", shift)[0])
            k = int(torch.randint(1, session.prefix_latents, (1,), generator=gen)) if session.prefix_latents > 1 else 0
            loss = session.objective_loss(settings.objective, noise, sigma, k)
            if not torch.isfinite(loss):
                raise EngineError(f"test-time adaptation diverged: non-finite loss at step {step}; lower the learning rate.")
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step({"step": step, "total_steps": snapshots[-1], "loss": losses[-1], "lr": settings.lr,
                         "sigma": sigma, "k": k if settings.objective == "continuation" else None,
                         "grad_norm": float(grad_norm), "step_time": time.perf_counter() - t0})
            if step in snapshots:
                transformer.eval()
                probe[step] = session.probe_loss(settings.objective)
                if on_snapshot is not None:
                    on_snapshot(step, {"losses": list(losses), "probe_before": probe[0], "probe_after": probe[step]})
                transformer.train()
    finally:
        transformer.eval()
        if getattr(transformer, "peft_config", None):
            transformer.unload_lora()  # back to the exact base modules: nothing carries to the next video
    return {"losses": losses, "probe": probe}


# ---------------------------------------------------------------------------- results on disk


class ResultsLayout:
    """Where a run's or an experiment's results go (kind: ground_truth, baseline, or a setting name)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def video(self, kind: str, video_id: str) -> Path:
        return self.root / "videos" / kind / f"{video_id}.mp4"

    def side_by_side(self, setting: str, video_id: str) -> Path:
        return self.root / "videos" / setting / f"{video_id}_side_by_side.mp4"

    def frames(self, kind: str, video_id: str) -> Path:
        """Lossless copy (H.264 RGB, qp 0) for recomputing metrics exactly."""
        return self.root / "frames" / kind / f"{video_id}.mkv"

    def metrics(self, kind: str, video_id: str) -> Path:
        return self.root / "metrics" / kind / f"{video_id}.json"

    def log(self, setting: str, video_id: str) -> Path:
        return self.root / "logs" / setting / f"{video_id}.json"


def setting_name(objective: str, rank: int, lr: float, steps: int) -> str:
    return f"{objective}-r{rank}-lr{lr:g}-s{steps}"


def _write_video(layout: ResultsLayout, kind: str, video_id: str, frames: np.ndarray, fps: float) -> dict:
    from ..video import write_lossless, write_mp4

    fps_out = max(1, round(fps))
    return {"video": str(write_mp4(frames, layout.video(kind, video_id), fps=fps_out)),
            "frames": str(write_lossless(frames, layout.frames(kind, video_id), fps=fps_out))}


def write_baseline(layout: ResultsLayout, session: VideoSession, frames: np.ndarray, *, lpips: bool = True) -> dict:
    """Ground truth + baseline videos and the baseline's metrics for one clip. Returns the metrics record."""
    clip = session.clip
    paths = {GROUND_TRUTH: _write_video(layout, GROUND_TRUTH, clip.video_id, clip.frames, clip.fps),
             BASELINE: _write_video(layout, BASELINE, clip.video_id, frames, clip.fps)}
    record = {"video_id": clip.video_id, "kind": BASELINE, "prompt": clip.prompt, "seed": session.seed,
              "cond_frames": session.cond_frames, "total_frames": int(clip.frames.shape[0]),
              "metrics": continuation_metrics(frames, clip.frames, session.cond_frames, lpips=lpips), "paths": paths}
    atomic_write_json(layout.metrics(BASELINE, clip.video_id), record)
    return record


def write_tta(layout: ResultsLayout, setting: str, session: VideoSession, frames: np.ndarray, baseline_frames: np.ndarray,
              baseline_metrics: dict, adapt_info: dict, step_events: list[dict], *, lpips: bool = True) -> dict:
    """The adapted model's video, the labelled side-by-side, its loss curve and metrics vs the baseline."""
    from ..video import side_by_side, write_mp4

    clip = session.clip
    paths = _write_video(layout, setting, clip.video_id, frames, clip.fps)
    panel = side_by_side([clip.frames, baseline_frames, frames], ["ground truth", "baseline", "TTA"])
    paths["side_by_side"] = str(write_mp4(panel, layout.side_by_side(setting, clip.video_id), fps=max(1, round(clip.fps))))
    curve = {"video_id": clip.video_id, "setting": setting,
             "step": [e["step"] for e in step_events], "loss": [e["loss"] for e in step_events],
             "sigma": [e["sigma"] for e in step_events], "k": [e.get("k") for e in step_events],
             "probe_before": adapt_info["probe_before"], "probe_after": adapt_info["probe_after"],
             "probe_sigmas": list(PROBE_SIGMAS)}
    atomic_write_json(layout.log(setting, clip.video_id), curve)
    paths["loss_curve"] = str(layout.log(setting, clip.video_id))
    metrics = continuation_metrics(frames, clip.frames, session.cond_frames, lpips=lpips)
    record = {"video_id": clip.video_id, "setting": setting, "tta": metrics, "baseline": baseline_metrics,
              "difference": metric_difference(metrics, baseline_metrics),
              "loss": {"first": curve["loss"][0] if curve["loss"] else None,
                       "last": curve["loss"][-1] if curve["loss"] else None,
                       "probe_before": adapt_info["probe_before"], "probe_after": adapt_info["probe_after"]},
              "paths": paths}
    atomic_write_json(layout.metrics(setting, clip.video_id), record)  # last: the item is complete once this exists
    return record


def _existing_baseline(layout: ResultsLayout, video_id: str) -> tuple[np.ndarray | None, dict | None]:
    """A resumed sweep's finished baseline for this clip (its lossless frames and record), if complete."""
    from ..video import read_mp4

    record_path, frames_path = layout.metrics(BASELINE, video_id), layout.frames(BASELINE, video_id)
    if not (record_path.is_file() and frames_path.is_file()):
        return None, None
    try:
        return read_mp4(frames_path)[0], json.loads(record_path.read_text())
    except (EngineError, json.JSONDecodeError):
        return None, None


def _prepare_output_dir(path: Path, kind: str, config: dict, resume: bool) -> RunDir:
    """Refuse to mix runs. With `resume`, a folder holding the same config continues; otherwise it must be new/empty."""
    run = RunDir(path)
    if run.config_path.is_file():
        try:
            old = json.loads(run.config_path.read_text())
        except json.JSONDecodeError:
            old = {}
        if not resume or old.get("kind") != kind:
            raise InputError(f"output folder '{path}' already holds a run ({old.get('kind', 'unknown')}, state: "
                             f"{run.read_status().get('state', 'unknown')}); choose a new folder.")
        changed = sorted(k for k in set(old) | set(config) if k not in ("created",) and old.get(k) != config.get(k))
        if changed:
            details = "; ".join(f"{k}: {old.get(k)!r} there vs {config.get(k)!r} now" for k in changed[:6])
            raise InputError(f"'{path}' holds an experiment with other settings ({details}); "
                             "use another --experiment name or the original settings.")
    elif path.is_dir() and any(p.name not in JOB_FILES for p in path.iterdir()):
        raise InputError(f"output folder '{path}' is not empty and holds no run; choose an empty or new folder.")
    return run


def _fail_job_status(path: Path, err: Exception) -> None:
    """A job started by engine.jobs already has status.json: record why it failed (no other file is written)."""
    run = RunDir(path)
    if run.status_path.is_file() and not run.config_path.is_file():
        run.update_status(state="failed", error=str(err)[:2000])


def _load_model(preset: dict):
    from ..models import family, get_pipeline

    fam = family(preset)
    pipe = get_pipeline(preset)
    fam.use_dense_attention(pipe.transformer)
    if getattr(pipe.transformer, "peft_config", None):  # an adapter left by an interrupted call
        pipe.transformer.unload_lora()
    return pipe, fam


def _sample_settings(preset: dict, sample_steps: int | None, guidance_scale: float | None, sampler: str) -> SampleSettings:
    gen = preset["generation"]
    steps = gen["steps"] if sample_steps is None else sample_steps
    if not _is_int(steps) or steps < 1:
        raise InputError(f"sample_steps must be a positive integer, got {steps!r}.")
    scale = gen["guidance_scale"] if guidance_scale is None else float(guidance_scale)
    if scale < 0:
        raise InputError(f"guidance_scale must be >= 0, got {scale}.")
    return SampleSettings(steps=steps, guidance_scale=scale, negative_prompt=gen["negative_prompt"], sampler=sampler)


# ---------------------------------------------------------------------------- one run


def run_tta(video_path: str | os.PathLike, *, preset: str | dict = "tiny-wan", output_dir: str | os.PathLike,
            rank: int = 16, alpha: float | None = None, lr: float = 2e-4, steps: int = 50, objective: str = "diffusion",
            seed: int = 0, include_mlp: bool = False, cond_frames: int = 33, total_frames: int = 65,
            height: int | None = None, width: int | None = None, prompt: str | None = None,
            sample_steps: int | None = None, guidance_scale: float | None = None, sampler: str = "scheduler",
            save_adapter: bool = False, lpips: bool = True, progress: ProgressFn | None = None) -> dict:
    """Adapt a fresh LoRA to one clip's first `cond_frames` frames, continue it with and without the LoRA, measure.

    Everything is written under `output_dir` (see ResultsLayout; the setting is called "tta"):
    config.json, status.json, events.jsonl, videos/{ground_truth,baseline,tta}/<id>.mp4,
    videos/tta/<id>_side_by_side.mp4, frames/... (lossless), logs/tta/<id>.json (loss curve),
    metrics/{baseline,tta}/<id>.json and metrics.json (baseline, tta, difference). Bad input
    raises InputError/ConfigError before anything is written. `progress(status)` gets each
    status update (phase, step, total_steps, loss, ...). Returns paths and metrics.
    """
    check_settings(rank=rank, alpha=alpha, lr=lr, steps=steps, objective=objective, seed=seed,
                   cond_frames=cond_frames, total_frames=total_frames)
    output_dir = Path(output_dir)
    try:
        preset, mode = resolve_preset(preset)
        sample = _sample_settings(preset, sample_steps, guidance_scale, sampler)
        clip = load_clip(video_path, preset, cond_frames=cond_frames, total_frames=total_frames, height=height,
                         width=width, prompt=prompt)
        settings = AdaptSettings(rank=rank, alpha=alpha, lr=float(lr), steps=steps, objective=objective, seed=seed,
                                 include_mlp=include_mlp)
        config = {"kind": "tta", "video": str(Path(video_path)), "video_id": clip.video_id, "preset": preset["name"],
                  "family": preset["family"], "continuation": mode, **asdict(settings), "lora_alpha": settings.lora_alpha,
                  "cond_frames": cond_frames, "total_frames": total_frames, "height": int(clip.frames.shape[1]),
                  "width": int(clip.frames.shape[2]), "prompt": clip.prompt, "fps": clip.fps,
                  "sample_steps": sample.steps, "guidance_scale": sample.guidance_scale, "sampler": sample.sampler,
                  "negative_prompt": sample.negative_prompt}
        run = _prepare_output_dir(output_dir, "tta", config, resume=False)
        pipe, fam = _load_model(preset)
    except EngineError as err:
        _fail_job_status(output_dir, err)
        raise
    run.create()
    atomic_write_json(run.config_path, config)
    run.events_path.unlink(missing_ok=True)
    started = time.time()

    def status(**fields):
        s = run.update_status(**fields)
        if progress is not None:
            progress(s)

    status(state="running", pid=os.getpid(), phase="encode", step=0, total_steps=steps, error=None)
    layout = ResultsLayout(output_dir)
    try:
        session = VideoSession(pipe, fam, mode, clip, cond_frames=cond_frames, seed=seed, sample=sample)
        run.append_event({"type": "phase", "phase": "sample_baseline"})
        status(phase="sample_baseline")
        _, baseline_frames = session.generate()
        baseline = write_baseline(layout, session, baseline_frames, lpips=lpips)
        run.append_event({"type": "baseline", "video_id": clip.video_id, **baseline["metrics"]})
        status(phase="train")
        step_events: list[dict] = []
        results: dict = {}

        def on_step(event):
            event = {"type": "tta", **event, "video_id": clip.video_id, "setting": TTA}
            step_events.append(event)
            run.append_event(event)
            status(phase="train", step=event["step"], loss=event["loss"])

        def on_snapshot(step, info):
            status(phase="sample_tta")
            _, frames = session.generate()
            if save_adapter:
                from .lora import save_lora

                save_lora(pipe.transformer, output_dir / "lora", comfy=preset["family"] == "wan")
            results["record"] = write_tta(layout, TTA, session, frames, baseline_frames, baseline["metrics"], info,
                                          step_events, lpips=lpips)

        adapt(session, settings, on_step=on_step, on_snapshot=on_snapshot, should_stop=run.stop_requested)
        record = results["record"]
        summary = {"video_id": clip.video_id, "preset": preset["name"], "continuation": mode, "objective": objective,
                   "baseline": baseline["metrics"], "tta": record["tta"], "difference": record["difference"],
                   "loss": record["loss"], "directions": METRIC_DIRECTIONS}
        atomic_write_json(output_dir / "metrics.json", summary)
        run.append_event({"type": "metrics", "video_id": clip.video_id, "baseline": baseline["metrics"],
                          "tta": record["tta"], "difference": record["difference"]})
        status(state="finished", phase="done", seconds=time.time() - started)
    except TTAStopped:
        status(state="stopped")
        run.clear_stop()
        return {"output_dir": str(output_dir), "state": "stopped"}
    except Exception as err:
        status(state="failed", error=f"{type(err).__name__}: {str(err)[:2000]}")
        raise
    return {
        "output_dir": str(output_dir), "state": "finished", "video_id": clip.video_id, "preset": preset["name"],
        "continuation": mode, "metrics": {"baseline": baseline["metrics"], "tta": record["tta"],
                                          "difference": record["difference"]},
        "loss": record["loss"],
        "videos": {GROUND_TRUTH: baseline["paths"][GROUND_TRUTH]["video"], BASELINE: baseline["paths"][BASELINE]["video"],
                   TTA: record["paths"]["video"], "side_by_side": record["paths"]["side_by_side"]},
        "loss_curve": record["paths"]["loss_curve"], "metrics_path": str(output_dir / "metrics.json"),
        "events": str(run.events_path), "lora": str(output_dir / "lora") if save_adapter else None,
        "seconds": time.time() - started,
    }


# ---------------------------------------------------------------------------- sweep


def _positive_list(name: str, values, kind) -> list:
    if isinstance(values, str):
        try:
            values = [kind(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise InputError(f"{name} must be a comma-separated list of {kind.__name__}s, got {values!r}.") from None
    values = list(values or [])
    if not values:
        raise InputError(f"{name} is empty; give at least one value.")
    for v in values:
        ok = _is_int(v) if kind is int else (isinstance(v, (int, float)) and not isinstance(v, bool))
        if not ok or not v > 0:
            raise InputError(f"every value of {name} must be a positive {kind.__name__}, got {v!r}.")
    return sorted(set(values), key=values.index)


def _stats(values: list[float]) -> dict:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0, "n": int(arr.size)}


def summarize_pairs(pairs: list[tuple[dict, dict]]) -> dict:
    """Mean/std over videos of each metric for TTA and baseline, and of the paired difference (tta - baseline)."""
    out = {}
    for name in METRIC_NAMES:
        tta = [t.get(name) for t, _ in pairs]
        base = [b.get(name) for _, b in pairs]
        diff = [t - b for t, b in zip(tta, base) if t is not None and b is not None]
        out[name] = {"tta": _stats(tta), "baseline": _stats(base), "difference": _stats(diff),
                     "better": METRIC_DIRECTIONS[name],
                     "tta_better_count": sum(1 for d in diff if (d > 0) == (METRIC_DIRECTIONS[name] == "higher") and d != 0)}
    reasons = {t.get("lpips_unavailable") for t, _ in pairs if t.get("lpips") is None}
    if reasons - {None}:
        out["lpips"]["unavailable"] = "; ".join(sorted(r for r in reasons if r))
    return out


def summarize_experiment(root: Path, settings: list[str], video_ids: list[str]) -> dict:
    layout = ResultsLayout(root)
    baseline = {}
    for vid in video_ids:
        p = layout.metrics(BASELINE, vid)
        if p.is_file():
            baseline[vid] = json.loads(p.read_text())["metrics"]
    out = {"experiment": root.name, "videos": video_ids, "directions": METRIC_DIRECTIONS,
           "baseline": {name: _stats([m.get(name) for m in baseline.values()]) for name in METRIC_NAMES},
           "settings": {}}
    for setting in settings:
        records = [json.loads(layout.metrics(setting, vid).read_text()) for vid in video_ids
                   if layout.metrics(setting, vid).is_file()]
        out["settings"][setting] = {
            "n": len(records), "metrics": summarize_pairs([(r["tta"], r["baseline"]) for r in records]),
            "probe_loss_before": _stats([r["loss"]["probe_before"] for r in records]),
            "probe_loss_after": _stats([r["loss"]["probe_after"] for r in records]),
            "final_train_loss": _stats([r["loss"]["last"] for r in records]),
        }
    return out


def _fmt(stat: dict, digits: int = 3) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def summary_markdown(summary: dict) -> str:
    lines = [f"# TTA experiment `{summary['experiment']}`", "",
             f"{len(summary['videos'])} videos. Mean ± std over videos (std with ddof=1); Δ = TTA − baseline, paired "
             "per video. Better: " + ", ".join(f"{k} {v}" for k, v in summary["directions"].items()) + ".", ""]
    head = ["setting", "n"] + [f"{m}" for m in METRIC_NAMES] + [f"Δ{m}" for m in METRIC_NAMES] + ["probe loss before → after"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = summary["baseline"]
    lines.append("| baseline | " + str(base["psnr"]["n"]) + " | " + " | ".join(_fmt(base[m]) for m in METRIC_NAMES)
                 + " |" + " |" * len(METRIC_NAMES) + "  |")
    for name, s in summary["settings"].items():
        m = s["metrics"]
        row = [name, str(s["n"])] + [_fmt(m[k]["tta"]) for k in METRIC_NAMES] + [_fmt(m[k]["difference"]) for k in METRIC_NAMES]
        row.append(f"{_fmt(s['probe_loss_before'], 4)} → {_fmt(s['probe_loss_after'], 4)}")
        lines.append("| " + " | ".join(row) + " |")
    unavailable = {s["metrics"]["lpips"].get("unavailable") for s in summary["settings"].values()} - {None}
    if unavailable:
        lines += ["", f"LPIPS unavailable: {'; '.join(sorted(unavailable))}"]
    return "\n".join(lines) + "\n"


def run_tta_sweep(data_dir: str | os.PathLike, *, ranks=(8, 16, 32), lrs=(1e-4, 2e-4), steps=(20, 50, 100),
                  experiment: str | None = None, objective: str = "diffusion", preset: str | dict = "tiny-wan",
                  output_root: str | os.PathLike = "results", seed: int = 0, alpha: float | None = None,
                  include_mlp: bool = False, cond_frames: int = 33, total_frames: int = 65,
                  height: int | None = None, width: int | None = None, sample_steps: int | None = None,
                  guidance_scale: float | None = None, sampler: str = "scheduler", lpips: bool = True,
                  progress: ProgressFn | None = None) -> dict:
    """A grid of TTA settings (rank x lr x steps) over every clip of a dataset folder (`data convert --task tta`).

    Written to `<output_root>/<experiment>/`: config.json, status.json, events.jsonl,
    videos/{ground_truth,baseline,<setting>}/<id>.mp4 (+ <setting>/<id>_side_by_side.mp4),
    frames/... (lossless), metrics/{baseline,<setting>}/<id>.json, logs/<setting>/<id>.json,
    summary.json and summary.md. Settings are named `<objective>-r<rank>-lr<lr>-s<steps>`. The
    baseline is generated once per clip; for each (rank, lr) the LoRA trains once to the
    largest step count and is sampled at each count. Running the same command again resumes:
    finished items are kept. Returns the summary.
    """
    from .data import load_dataset

    ranks = _positive_list("ranks", ranks, int)
    lrs = _positive_list("lrs", lrs, float)
    step_list = sorted(_positive_list("steps", steps, int))
    for r in ranks:
        check_settings(rank=r, alpha=alpha, lr=lrs[0], steps=step_list[0], objective=objective, seed=seed,
                       cond_frames=cond_frames, total_frames=total_frames)
    for lr in lrs:
        check_settings(rank=ranks[0], alpha=alpha, lr=lr, steps=step_list[0], objective=objective, seed=seed,
                       cond_frames=cond_frames, total_frames=total_frames)
    experiment = experiment or f"tta-{Path(data_dir).resolve().name}-{objective}"
    if not re.match(r"^[A-Za-z0-9_.\-]+$", experiment) or experiment in (".", ".."):
        raise InputError(f"experiment name {experiment!r} must be a plain folder name (letters, digits, '.', '_', '-').")
    root = Path(output_root) / experiment
    try:
        preset, mode = resolve_preset(preset)
        sample = _sample_settings(preset, sample_steps, guidance_scale, sampler)
        entries = load_dataset(data_dir)
        for e in entries:
            if e.extended_frames < total_frames:
                raise InputError(f"clip '{e.video_id}' in {data_dir} has {e.extended_frames} frames (metadata "
                                 f"'extended_frames'); test-time adaptation needs at least {total_frames}. "
                                 "Convert the data with `data convert --task tta`.")
            target_size(e.height, e.width, preset["tta"]["short_side"], height, width)
        settings = [(r, lr, s) for r in ranks for lr in lrs for s in step_list]
        names = [setting_name(objective, r, lr, s) for r, lr, s in settings]
        config = {"kind": "tta_sweep", "experiment": experiment, "data_dir": str(Path(data_dir).resolve()),
                  "videos": [e.video_id for e in entries], "preset": preset["name"], "family": preset["family"],
                  "continuation": mode, "ranks": ranks, "lrs": lrs, "steps": step_list, "objective": objective,
                  "seed": seed, "alpha": alpha, "include_mlp": include_mlp, "cond_frames": cond_frames,
                  "total_frames": total_frames, "height": height, "width": width, "sample_steps": sample.steps,
                  "guidance_scale": sample.guidance_scale, "sampler": sample.sampler,
                  "negative_prompt": sample.negative_prompt, "settings": names}
        run = _prepare_output_dir(root, "tta_sweep", config, resume=True)
        pipe, fam = _load_model(preset)
    except EngineError as err:
        _fail_job_status(root, err)
        raise
    resumed = run.config_path.is_file()
    run.create()
    atomic_write_json(run.config_path, config)
    layout = ResultsLayout(root)
    total_items = len(entries) * len(settings)
    done = sum(1 for e in entries for n in names if layout.metrics(n, e.video_id).is_file())
    started = time.time()

    def status(**fields):
        s = run.update_status(**fields)
        if progress is not None:
            progress(s)

    status(state="running", pid=os.getpid(), done=done, total=total_items, error=None, resumed=resumed)
    run.append_event({"type": "sweep_start", "done": done, "total": total_items, "resumed": resumed})
    try:
        for entry in entries:
            needed = [(r, lr, s) for (r, lr, s), n in zip(settings, names)
                      if not layout.metrics(n, entry.video_id).is_file()]
            if not needed:
                continue
            clip = load_clip(entry.path, preset, cond_frames=cond_frames, total_frames=total_frames, height=height,
                             width=width, prompt=entry.prompt, video_id=entry.video_id)
            status(video_id=clip.video_id, setting=None, phase="encode")
            session = VideoSession(pipe, fam, mode, clip, cond_frames=cond_frames, seed=seed, sample=sample)
            baseline_frames, baseline = _existing_baseline(layout, clip.video_id)
            if baseline is None:  # the baseline is the same for every setting: made once per clip
                status(phase="sample_baseline")
                _, baseline_frames = session.generate()
                baseline = write_baseline(layout, session, baseline_frames, lpips=lpips)
                run.append_event({"type": "baseline", "video_id": clip.video_id, **baseline["metrics"]})
            for r, lr in dict.fromkeys((r, lr) for r, lr, _ in needed):
                group_steps = sorted(s for rr, ll, s in needed if (rr, ll) == (r, lr))
                adapt_settings = AdaptSettings(rank=r, alpha=alpha, lr=float(lr), steps=group_steps[-1],
                                               objective=objective, seed=seed, include_mlp=include_mlp)
                step_events: list[dict] = []
                group = setting_name(objective, r, lr, group_steps[-1])

                def on_step(event, group=group, step_events=step_events):
                    event = {"type": "tta", **event, "video_id": clip.video_id, "setting": group}
                    step_events.append(event)
                    run.append_event(event)
                    status(phase="train", setting=group, step=event["step"], total_steps=event["total_steps"],
                           loss=event["loss"])

                def on_snapshot(step, info, r=r, lr=lr, step_events=step_events):
                    nonlocal done
                    name = setting_name(objective, r, lr, step)
                    status(phase="sample_tta", setting=name)
                    _, frames = session.generate()
                    record = write_tta(layout, name, session, frames, baseline_frames, baseline["metrics"], info,
                                       [e for e in step_events if e["step"] <= step], lpips=lpips)
                    done += 1
                    run.append_event({"type": "sweep_item", "video_id": clip.video_id, "setting": name, "done": done,
                                      "total": total_items, "difference": record["difference"]})
                    status(done=done)

                adapt(session, adapt_settings, snapshots=group_steps, on_step=on_step, on_snapshot=on_snapshot,
                      should_stop=run.stop_requested)
        summary = summarize_experiment(root, names, [e.video_id for e in entries])
        atomic_write_json(root / "summary.json", summary)
        (root / "summary.md").write_text(summary_markdown(summary))
        status(state="finished", phase="done", seconds=time.time() - started)
    except TTAStopped:
        status(state="stopped")
        run.clear_stop()
        return {"output_dir": str(root), "state": "stopped", "done": done, "total": total_items}
    except Exception as err:
        status(state="failed", error=f"{type(err).__name__}: {str(err)[:2000]}")
        raise
    return {"output_dir": str(root), "state": "finished", "summary_path": str(root / "summary.json"),
            "summary_md": str(root / "summary.md"), "summary": summary}


# ---------------------------------------------------------------------------- evaluate


def _read_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _resolve_eval_dir(d: Path, role: str) -> tuple[Path, Path, dict]:
    """(folder of generated clips, ground-truth folder, run config) for a run folder, an experiment or a clip folder."""
    if not d.is_dir():
        raise InputError(f"--{role} folder '{d}' does not exist.")
    config = _read_config(d)
    if config.get("kind") == "tta":
        return d / "frames" / (BASELINE if role == "baseline" else TTA), d / "frames" / GROUND_TRUTH, config
    if config.get("kind") == "tta_sweep":
        if role == "baseline":
            return d / "frames" / BASELINE, d / "frames" / GROUND_TRUTH, config
        settings = sorted(p.name for p in (d / "frames").iterdir() if p.is_dir() and p.name not in (BASELINE, GROUND_TRUTH))
        if len(settings) != 1:
            raise InputError(f"'{d}' is an experiment with {len(settings)} settings; pass one of its folders, e.g. "
                             f"{d / 'frames' / (settings[0] if settings else '<setting>')} (settings: {', '.join(settings)}).")
        return d / "frames" / settings[0], d / "frames" / GROUND_TRUTH, config
    parent_config = _read_config(d.parent.parent)
    return d, d.parent / GROUND_TRUTH, parent_config


def _clip_files(folder: Path) -> dict[str, Path]:
    """video id -> file: lossless .mkv when present, else .mp4 (not the side-by-side panels)."""
    if not folder.is_dir():
        return {}
    files = {p.stem: p for p in folder.glob("*.mp4") if not p.stem.endswith("_side_by_side")}
    files.update({p.stem: p for p in folder.glob("*.mkv")})
    return dict(sorted(files.items()))


def evaluate_tta(baseline_dir: str | os.PathLike, tta_dir: str | os.PathLike, *, ground_truth_dir: str | os.PathLike | None = None,
                 cond_frames: int | None = None, lpips: bool = True, output: str | os.PathLike | None = None) -> dict:
    """Recompute every metric for baseline and TTA clips against the ground truth, and compare them (paired).

    Each of `baseline_dir` / `tta_dir` is a `tta` run folder, a sweep experiment folder (baseline
    side; the TTA side when it has a single setting) or a folder of clips named <video_id>.mkv /
    .mp4 (e.g. results/<exp>/frames/<setting>). The ground truth defaults to the `ground_truth`
    folder beside them. Lossless .mkv copies are preferred; plain .mp4 files work but their
    compression lowers PSNR. Returns (and with `output`, writes) per-video metrics and the summary.
    """
    b_dir, b_gt, b_cfg = _resolve_eval_dir(Path(baseline_dir), "baseline")
    t_dir, t_gt, t_cfg = _resolve_eval_dir(Path(tta_dir), "tta")
    gt_dir = Path(ground_truth_dir) if ground_truth_dir is not None else (b_gt if b_gt.is_dir() else t_gt)
    cond_frames = cond_frames or b_cfg.get("cond_frames") or t_cfg.get("cond_frames") or 33
    base_files, tta_files, gt_files = _clip_files(b_dir), _clip_files(t_dir), _clip_files(gt_dir)
    for name, folder, files in (("baseline", b_dir, base_files), ("TTA", t_dir, tta_files), ("ground truth", gt_dir, gt_files)):
        if not files:
            raise InputError(f"no {name} clips (<video_id>.mkv or .mp4) found in '{folder}'.")
    ids = sorted(set(base_files) & set(tta_files) & set(gt_files))
    if not ids:
        raise InputError(f"no video id is in all three folders: baseline {sorted(base_files)[:5]}, "
                         f"TTA {sorted(tta_files)[:5]}, ground truth {sorted(gt_files)[:5]}.")
    from ..video import read_mp4

    videos, pairs = {}, []
    for vid in ids:
        gt, _ = read_mp4(gt_files[vid])
        per = {}
        for role, files in (("baseline", base_files), ("tta", tta_files)):
            frames, _ = read_mp4(files[vid])
            if frames.shape != gt.shape:
                raise InputError(f"'{files[vid]}' is {frames.shape} but its ground truth '{gt_files[vid]}' is {gt.shape}.")
            per[role] = continuation_metrics(frames, gt, cond_frames, lpips=lpips)
        per["difference"] = metric_difference(per["tta"], per["baseline"])
        videos[vid] = per
        pairs.append((per["tta"], per["baseline"]))
    lossy = [str(f) for f in [*base_files.values(), *tta_files.values(), *gt_files.values()] if f.suffix != ".mkv"]
    result = {"baseline_dir": str(b_dir), "tta_dir": str(t_dir), "ground_truth_dir": str(gt_dir), "cond_frames": cond_frames,
              "videos": videos, "summary": summarize_pairs(pairs), "directions": METRIC_DIRECTIONS,
              "missing": {"baseline": sorted(set(tta_files) - set(base_files)), "tta": sorted(set(base_files) - set(tta_files))},
              "source": "lossless" if not lossy else "mp4 (lossy: compression lowers PSNR)"}
    if output is not None:
        atomic_write_json(output, result)
    return result
