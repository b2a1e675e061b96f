"""Per-video test-time adaptation (TTA) for video continuation.

Given a clip of at least the preset's `tta.total_frames` (65) frames: encode its first
`tta.cond_frames` (33) frames alone, fine-tune a fresh LoRA on them, then generate the remaining
frames conditioned on the prefix with the adapted model. The baseline is the same generation
without the LoRA: same seed, same initial noise, same sampler settings. Both are measured
against the real frames (engine/metrics.py).

Objectives (one per run):
- "diffusion": the flow-matching loss on the conditioning latents (one noise level for the
  whole window), as in the original experiment.
- "continuation": within the conditioning window, the first k latent frames (k drawn per step
  from 1..P-1) are the context and the loss is on the rest: the task met at generation. The
  context is given exactly as the family's continuation mode gives it when sampling
  (`ContinuationMode`): clean at timestep 0 (prefix "clean"), through the family's conditioning
  (`continuation_control`; for the diffusion objective the conditioning with nothing known), or
  carrying the true latents noised to the current level with the same noise (prefix "noised": a
  uniform-timestep model sees a noised prefix at generation, never a clean one).

Isolation: the LoRA (rank, alpha, the family's attention projections, optionally the MLP) is
created fresh for each video and removed afterwards with `unload_lora`, so the base weights are
never changed and nothing carries from one video to the next; every random draw comes from a
generator seeded by (seed, step). The learning rate is constant (AdamW, no weight decay), so the
first n steps of a longer run are exactly a run of n steps: a sweep over step counts trains once
to the largest and samples at each count ("snapshots"). `run_tta` is a sweep of one clip and one
setting (named "tta"), written with the same code.

Files (a run folder, engine.jobs.RunDir): config.json, status.json, events.jsonl with
{"type": "tta", "step", "loss", "lr", "sigma", "k", "grad_norm", "step_time", "video_id",
"setting"} per step, and the results layout of `tta_results.ResultsLayout`.
"""

from __future__ import annotations

import json
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
from ..jobs import RunDir, atomic_write_json, this_process
from ..metrics import METRIC_DIRECTIONS
from ..models import family
from ..models.regional_compile import block_compilation, repeated_blocks
from ..presets import DEFAULT_PRESET, check_capable, load_preset, presets_for
from ..settings import TTA, TTA_RUN, TTA_SWEEP
from .tta_results import (  # noqa: F401  (evaluate_tta and the layout are part of this module's API)
    BASELINE,
    GROUND_TRUTH,
    PROBE_SIGMAS,
    ResultsLayout,
    evaluate_tta,
    existing_baseline,
    setting_name,
    summarize_experiment,
    summarize_pairs,
    summary_markdown,
    write_baseline,
    write_tta,
)
from .tta_results import (
    TTA as TTA_SETTING,
)

OBJECTIVES = TTA["objective"].choices
MAX_GRAD_NORM = 1.0
JOB_FILES = {"status.json", "job.log", "stop"}  # written by engine.jobs before the worker starts

ProgressFn = Callable[[dict], None]


class TTAStopped(Exception):
    """The stop flag was set; the run ends without results for the current item."""


# ---------------------------------------------------------------------------- settings checks


def check_settings(*, rank, alpha, lr, steps, objective, seed, cond_frames, total_frames, fam=None) -> None:
    """InputError naming the setting for anything out of range (nothing is read or written)."""
    checks = {"rank": (TTA["rank"], rank), "alpha": (TTA_RUN["alpha"], alpha), "lr": (TTA["lr"], lr),
              "steps": (TTA["steps"], steps), "objective": (TTA["objective"], objective),
              "seed": (TTA_RUN["seed"], seed), "cond_frames": (TTA["cond_frames"], cond_frames),
              "total_frames": (TTA["total_frames"], total_frames)}
    for name, (setting, value) in checks.items():
        try:
            setting.check(value, name)
        except ConfigError as err:
            raise InputError(str(err)) from None
    if fam is not None:
        fam.check_frame_count(cond_frames, "cond_frames")
        fam.check_frame_count(total_frames, "total_frames")
    if total_frames <= cond_frames:
        raise InputError(f"total_frames ({total_frames}) must be greater than cond_frames ({cond_frames}).")
    if objective == "continuation" and fam is not None and fam.latent_frames(cond_frames) < 2:
        raise InputError(f"the continuation objective needs at least 2 conditioning latent frames "
                         f"(cond_frames >= {fam.pixel_frames(2)}), got cond_frames={cond_frames}.")


def continuation_presets() -> list[str]:
    return presets_for("tta")


def resolve_preset(preset: str | dict) -> tuple[dict, str]:
    """(validated preset, continuation mode); ConfigError when the preset cannot continue a clip."""
    preset = load_preset(preset) if isinstance(preset, str) else preset
    if preset.get("continuation") is None:
        raise ConfigError(
            f"preset '{preset['name']}' cannot do video continuation (its field 'continuation' is null). "
            f"Use a preset that can: {', '.join(presets_for('tta')) or 'none found'}."
        )
    check_capable(preset, "tta")  # validate_preset already checked the mode against the family
    return preset, preset["continuation"]


def frames_of(preset: dict, cond_frames: int | None, total_frames: int | None) -> tuple[int, int]:
    """The run's (cond_frames, total_frames): given, else the preset's tta section."""
    return (preset["tta"]["cond_frames"] if cond_frames is None else cond_frames,
            preset["tta"]["total_frames"] if total_frames is None else total_frames)


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


def target_size(src_h: int, src_w: int, preset: dict, height: int | None, width: int | None) -> tuple[int, int]:
    """The TTA frame size for a source of src_h x src_w; InputError when the source is too small (an explicit
    size is never upscaled; the preset's short side by at most TTA_MAX_UPSCALE)."""
    from ..data.dataset import TTA_MAX_UPSCALE, tta_min_short_side, tta_size

    fam, short_side = family(preset), preset["tta"]["short_side"]
    if (height is None) != (width is None):
        raise InputError("give both height and width, or neither (then the preset's tta.short_side sets the size).")
    if height is not None:
        fam.check_size(height, width)
        if src_h < height or src_w < width:
            raise InputError(f"resolution too small: the video is {src_w}x{src_h} (width x height); "
                             f"the requested {width}x{height} needs at least that many pixels (clips are not upscaled).")
        return height, width
    if min(src_h, src_w) < tta_min_short_side(short_side):
        raise InputError(f"resolution too small: the video is {src_w}x{src_h} (width x height); the short side needs "
                         f"at least {tta_min_short_side(short_side)} pixels for this preset (tta.short_side "
                         f"{short_side}, upscaled by at most {TTA_MAX_UPSCALE:g}x).")
    return tta_size(src_h, src_w, short_side, fam.size_multiple)


def sweep_clips(data_dir: str | os.PathLike, preset: dict, *, total_frames: int, height: int | None = None,
                width: int | None = None, within: Path | None = None) -> tuple[list, list[tuple[str, str]]]:
    """(the clips a sweep runs on, skipped (file, reason)): too short or too small clips are left out.

    InputError when no clip is usable, with the first reasons."""
    from ..data.sources import find_clips

    clips, skipped = find_clips(data_dir, family(preset), negative_prompt=preset["generation"]["negative_prompt"],
                                max_frames=total_frames, within=within)
    usable = []
    for clip in clips:
        if clip.frames < total_frames:
            skipped.append((clip.path.name, f"too short: {clip.frames} frames; test-time adaptation needs at least "
                                            f"{total_frames} (total_frames)"))
            continue
        try:
            target_size(clip.height, clip.width, preset, height, width)
        except InputError as err:
            skipped.append((clip.path.name, str(err)))
            continue
        usable.append(clip)
    if not usable:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped[:5])
        raise InputError(f"no usable clip in {data_dir} for test-time adaptation ({reasons or 'no clip found'}).")
    return usable, skipped


def _too_short(path: Path, found: int, cond_frames: int, total_frames: int, how: str = "") -> InputError:
    return InputError(f"video '{path.name}' has {found} frames{how}; test-time adaptation needs at least {total_frames} "
                      f"({cond_frames} conditioning frames + {total_frames - cond_frames} to predict).")


def check_clip_header(path: str | os.PathLike, preset: dict, *, cond_frames: int, total_frames: int,
                      height: int | None = None, width: int | None = None) -> None:
    """What a request can tell from the header alone (readable, size bound, big enough, about long enough).

    No frame is decoded here: the job decodes (and counts exactly) in its own process. The header's
    frame count (duration x fps) is often a frame off, so only a clip two or more frames short is refused now.
    """
    from ..uploads import check_source_size
    from ..video import probe_video

    path = Path(path)
    info = probe_video(path, path.name)
    check_source_size(path.name, info.height, info.width)
    target_size(info.height, info.width, preset, height, width)
    estimate = info.frames_estimate
    if estimate is not None and estimate + 1 < total_frames:
        raise _too_short(path, estimate, cond_frames, total_frames, " (by its header)")


def load_clip(path: str | os.PathLike, preset: dict, *, cond_frames: int, total_frames: int, height: int | None = None,
              width: int | None = None, prompt: str | None = None, video_id: str | None = None) -> Clip:
    """Read the first `total_frames` frames, resized/centre-cropped as they arrive. InputError for unusable clips."""
    from ..uploads import check_source_size
    from ..video import read_mp4

    path = Path(path)
    if not path.is_file():
        raise InputError(f"video file '{path.name}' does not exist.")
    source: list[tuple[int, int]] = []

    def size(src_h: int, src_w: int) -> tuple[int, int]:
        check_source_size(path.name, src_h, src_w)
        source.append((src_h, src_w))
        return target_size(src_h, src_w, preset, height, width)

    frames, fps = read_mp4(path, max_frames=total_frames, size=size)
    if len(frames) < total_frames:
        raise _too_short(path, len(frames), cond_frames, total_frames)
    return Clip(video_id=video_id or path.stem, path=path, prompt=find_prompt(path) if prompt is None else prompt,
                frames=frames, fps=float(fps or preset["generation"]["fps"]), source_size=source[0])


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
    """One clip on one loaded model: its latents, prompt embeddings, noise and conditioning."""

    def __init__(self, pipe, fam, mode: str, clip: Clip, *, cond_frames: int, seed: int, sample: SampleSettings):
        self.pipe, self.fam, self.mode, self.clip = pipe, fam, mode, clip
        self.spec = fam.capabilities.continuation[mode]
        self.cond_frames, self.seed, self.sample_settings = cond_frames, seed, sample
        self.transformer = fam.denoiser(pipe)  # a two-expert model: both experts, each at its noise levels
        self.device, self.dtype = self.transformer.device, self.transformer.dtype
        self.pixels = to_pixels(clip.frames)
        # The prefix is encoded alone: no information from the frames to predict reaches the model.
        self.cond = fam.encode_video(pipe, self.pixels[:, :, :cond_frames]).float().to(self.device)
        total_latents = fam.latent_frames(clip.frames.shape[0])
        c, _, h, w = self.cond.shape[1:]
        self.noise = initial_noise((1, c, total_latents, h, w), seed)
        with torch.no_grad():
            pos, neg = fam.encode_prompt(pipe, clip.prompt, sample.negative_prompt, sample.guidance_scale)
        self.prompt_embeds = pos.to(self.device, self.dtype)
        self.negative_embeds = None if neg is None else neg.to(self.device, self.dtype)
        self.control = self._control(self.prefix_latents, total_latents) if self.spec.uses_control else None
        self._train_controls: dict[int, torch.Tensor] = {}

    @property
    def prefix_latents(self) -> int:
        return self.cond.shape[2]

    def _control(self, known_latents: int, window_latents: int):
        return self.fam.continuation_control(self.pipe, self.mode, self.pixels, self.cond, known_latents, window_latents)

    def train_control(self, known_latents: int) -> torch.Tensor:
        """The conditioning inside the conditioning window with its first `known_latents` latent frames known."""
        if known_latents not in self._train_controls:
            self._train_controls[known_latents] = self._control(known_latents, self.prefix_latents)
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
        xt, target = self.fam.flow_pair(cond, noise, sigmas)
        t = self.fam.timesteps(sigmas).to(self.device)
        control, start = None, 0
        if objective == "diffusion":
            if self.spec.uses_control:
                control = self.train_control(0)  # the family's plain generation: nothing known
        else:
            start = k
            if self.spec.prefix == "clean":
                xt = torch.cat([cond[:, :, :k], xt[:, :, k:]], dim=2)
                t = frame_timesteps(t.item(), 1, cond.shape[2], k, self.device)
            elif self.spec.uses_control:  # the first k latent frames known; the noisy latents are not overwritten
                control = self.train_control(k)
        autocast = torch.autocast("cuda", dtype=self.dtype) if self.device.type == "cuda" and self.dtype != torch.float32 \
            else torch.autocast("cpu", enabled=False)
        with autocast:
            pred = self.fam.forward(self.transformer, xt.to(self.dtype), t, self.prompt_embeds, control=control,
                                    fps=self.clip.fps)
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
    rank: int = TTA["rank"].default
    alpha: float | None = TTA_RUN["alpha"].default  # None: the rank
    lr: float = TTA["lr"].default
    steps: int = TTA["steps"].default
    objective: str = TTA["objective"].default
    seed: int = TTA_RUN["seed"].default
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
    from ..lora import add_lora

    fam, transformer = session.fam, session.transformer
    snapshots = sorted(set(snapshots or [settings.steps]))
    targets = fam.default_lora_targets(settings.include_mlp)
    shift = fam.flow_shift(session.pipe)
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
            sigma = float(fam.sample_sigmas(1, gen, session.cond.shape, scheme="logit_normal", shift=shift)[0])
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


# ---------------------------------------------------------------------------- run folders


# Config keys a resumed sweep may change: they do not change its results (compile_blocks: speed only).
RESUMABLE = ("created", "compile_blocks")


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
        changed = sorted(k for k in set(old) | set(config) if k not in RESUMABLE and old.get(k) != config.get(k))
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


def _load_model(preset: dict, compile_blocks: bool = False):
    from ..attention.processor import remove_radial_attention
    from ..models import get_pipeline

    fam = family(preset)
    pipe = get_pipeline(preset)
    transformer = fam.denoiser(pipe)
    remove_radial_attention(transformer, fam)  # TTA runs the stock dense attention
    if getattr(transformer, "peft_config", None):  # an adapter left by an interrupted call
        transformer.unload_lora()
    if compile_blocks:  # a model with no repeated blocks refuses here, before the run writes anything
        repeated_blocks(transformer)
    return pipe, fam


def _sample_settings(preset: dict, sample_steps: int | None, guidance_scale: float | None, sampler: str) -> SampleSettings:
    gen = preset["generation"]
    steps = gen["steps"] if sample_steps is None else sample_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"sample_steps must be a positive integer, got {steps!r}.")
    scale = gen["guidance_scale"] if guidance_scale is None else float(guidance_scale)
    if scale < 0:
        raise InputError(f"guidance_scale must be >= 0, got {scale}.")
    try:
        TTA_RUN["sampler"].check(sampler, "sampler")
    except ConfigError as err:
        raise InputError(str(err)) from None
    return SampleSettings(steps=steps, guidance_scale=scale, negative_prompt=gen["negative_prompt"], sampler=sampler)


# ---------------------------------------------------------------------------- the sweep loop


@dataclass
class ClipJob:
    """One clip of a sweep: how to read it, and its id (known before it is read)."""

    video_id: str
    load: Callable[[], Clip]


def _sweep_clips(run: RunDir, layout: ResultsLayout, clips: list[ClipJob], groups: dict[tuple, list[int]],
                 name_of: Callable[[int, float, int], str], *, objective: str, seed: int, alpha, include_mlp: bool,
                 pipe, fam, mode: str, cond_frames: int, sample: SampleSettings, lpips: bool,
                 status: Callable[..., None], done: int, total: int,
                 after_sample: Callable[[VideoSession, str], None] | None = None) -> int:
    """The loop every TTA run shares: per clip the baseline once, then per (rank, lr) one LoRA trained to the
    largest step count and sampled at each. Items whose metrics exist are skipped (resume). Returns `done`."""
    for job in clips:
        needed = {key: [s for s in steps if not layout.metrics(name_of(*key, s), job.video_id).is_file()]
                  for key, steps in groups.items()}
        needed = {key: steps for key, steps in needed.items() if steps}
        if not needed:
            continue
        clip = job.load()
        status(video_id=clip.video_id, setting=None, phase="encode")
        session = VideoSession(pipe, fam, mode, clip, cond_frames=cond_frames, seed=seed, sample=sample)
        baseline_frames, baseline = existing_baseline(layout, clip.video_id)
        if baseline is None:  # the baseline is the same for every setting: made once per clip
            status(phase="sample_baseline")
            run.append_event({"type": "phase", "phase": "sample_baseline", "video_id": clip.video_id})
            _, baseline_frames = session.generate()
            baseline = write_baseline(layout, session, baseline_frames, lpips=lpips)
            run.append_event({"type": "baseline", "video_id": clip.video_id, **baseline["metrics"]})
        for (rank, lr), group_steps in needed.items():
            settings = AdaptSettings(rank=rank, alpha=alpha, lr=float(lr), steps=group_steps[-1], objective=objective,
                                     seed=seed, include_mlp=include_mlp)
            step_events: list[dict] = []
            group = name_of(rank, lr, group_steps[-1])

            def on_step(event, group=group, step_events=step_events):
                event = {"type": "tta", **event, "video_id": clip.video_id, "setting": group}
                step_events.append(event)
                run.append_event(event)
                status(phase="train", setting=group, step=event["step"], total_steps=event["total_steps"],
                       loss=event["loss"])

            def on_snapshot(step, info, rank=rank, lr=lr, step_events=step_events):
                nonlocal done
                name = name_of(rank, lr, step)
                status(phase="sample_tta", setting=name)
                _, frames = session.generate()
                if after_sample is not None:
                    after_sample(session, name)
                record = write_tta(layout, name, session, frames, baseline_frames, baseline["metrics"], info,
                                   [e for e in step_events if e["step"] <= step], lpips=lpips)
                done += 1
                run.append_event({"type": "sweep_item", "video_id": clip.video_id, "setting": name, "done": done,
                                  "total": total, "difference": record["difference"]})
                status(done=done)

            adapt(session, settings, snapshots=group_steps, on_step=on_step, on_snapshot=on_snapshot,
                  should_stop=run.stop_requested)
    return done


def _status_writer(run: RunDir, progress: ProgressFn | None):
    def status(**fields):
        s = run.update_status(**fields)
        if progress is not None:
            progress(s)

    return status


# ---------------------------------------------------------------------------- one run


def run_tta(video_path: str | os.PathLike, *, preset: str | dict = DEFAULT_PRESET, output_dir: str | os.PathLike,
            rank: int | None = None, alpha: float | None = None, lr: float | None = None, steps: int | None = None,
            objective: str | None = None, seed: int = 0, include_mlp: bool = False, cond_frames: int | None = None,
            total_frames: int | None = None, height: int | None = None, width: int | None = None,
            prompt: str | None = None, sample_steps: int | None = None, guidance_scale: float | None = None,
            sampler: str = "scheduler", save_adapter: bool = False, lpips: bool = True, compile_blocks: bool = False,
            progress: ProgressFn | None = None) -> dict:
    """Adapt a fresh LoRA to one clip's first `cond_frames` frames, continue it with and without the LoRA, measure.

    Unset rank / lr / steps / objective / frame counts take the preset's `tta` section. Everything
    is written under `output_dir` (see ResultsLayout; the setting is called "tta"): config.json,
    status.json, events.jsonl, videos/{ground_truth,baseline,tta}/<id>.mp4,
    videos/tta/<id>_side_by_side.mp4, frames/... (lossless), logs/tta/<id>.json (loss curve),
    metrics/{baseline,tta}/<id>.json and metrics.json (baseline, tta, difference). Bad input
    raises InputError/ConfigError before anything is written. `progress(status)` gets each
    status update (phase, step, total_steps, loss, ...). `compile_blocks`: regional compilation of the
    denoiser's blocks for the run (engine.models.regional_compile; eager again after). Returns paths and metrics.
    """
    output_dir = Path(output_dir)
    try:
        preset, mode = resolve_preset(preset)
        fam, tta = family(preset), preset["tta"]
        rank, lr, steps = (tta["rank"] if rank is None else rank), (tta["lr"] if lr is None else lr), \
            (tta["steps"] if steps is None else steps)
        objective = tta["objective"] if objective is None else objective
        cond_frames, total_frames = frames_of(preset, cond_frames, total_frames)
        check_settings(rank=rank, alpha=alpha, lr=lr, steps=steps, objective=objective, seed=seed,
                       cond_frames=cond_frames, total_frames=total_frames, fam=fam)
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
                  "negative_prompt": sample.negative_prompt, "compile_blocks": bool(compile_blocks)}
        run = _prepare_output_dir(output_dir, "tta", config, resume=False)
        pipe, fam = _load_model(preset, compile_blocks)
    except EngineError as err:
        _fail_job_status(output_dir, err)
        raise
    run.create()
    atomic_write_json(run.config_path, config)
    run.events_path.unlink(missing_ok=True)
    started = time.time()
    status = _status_writer(run, progress)
    status(state="running", **this_process(), phase="encode", step=0, total_steps=steps, error=None)
    layout = ResultsLayout(output_dir)

    def keep_adapter(session, name):
        if save_adapter:
            from ..lora import save_lora

            save_lora(session.transformer, output_dir / "lora", fam)

    try:
        with block_compilation(fam.denoiser(pipe), compile_blocks):
            _sweep_clips(run, layout, [ClipJob(clip.video_id, lambda: clip)], {(rank, float(lr)): [steps]},
                         lambda r, l, s: TTA_SETTING, objective=objective, seed=seed, alpha=alpha,
                         include_mlp=include_mlp, pipe=pipe, fam=fam, mode=mode, cond_frames=cond_frames,
                         sample=sample, lpips=lpips, status=status, done=0, total=1, after_sample=keep_adapter)
        baseline = json.loads(layout.metrics(BASELINE, clip.video_id).read_text())
        record = json.loads(layout.metrics(TTA_SETTING, clip.video_id).read_text())
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
                   TTA_SETTING: record["paths"]["video"], "side_by_side": record["paths"]["side_by_side"]},
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
        ok = (isinstance(v, int) and not isinstance(v, bool)) if kind is int else \
            (isinstance(v, (int, float)) and not isinstance(v, bool))
        if not ok or not v > 0:
            raise InputError(f"every value of {name} must be a positive {kind.__name__}, got {v!r}.")
    return sorted(set(values), key=values.index)


def sweep_shard(shard: str | None = None) -> tuple[int, int]:
    """(index, count) of this process's share of a sweep's clips.

    `shard` "i/N" names it; None or "auto": torchrun's RANK / WORLD_SIZE, else a SLURM array's task
    (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT), else the whole sweep (0, 1).
    """
    env = os.environ
    if shard not in (None, "", "auto"):
        m = re.fullmatch(r"(\d+)/(\d+)", str(shard))
        if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
            raise InputError(f"shard {shard!r} must be i/N with 0 <= i < N, e.g. 0/4.")
        return int(m.group(1)), int(m.group(2))
    if "WORLD_SIZE" in env and "RANK" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"])
    if "SLURM_ARRAY_TASK_COUNT" in env and "SLURM_ARRAY_TASK_ID" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        return int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"])
    return 0, 1


class _ShardRun(RunDir):
    """A shard's own status and events (shards/shard-<i>/), stopped by the experiment's stop flag too."""

    def __init__(self, path, root: RunDir):
        super().__init__(path)
        self.root = root

    def stop_requested(self) -> bool:
        return super().stop_requested() or self.root.stop_requested()


def merge_tta_sweep(root: str | os.PathLike) -> dict:
    """Write summary.json / summary.md of an experiment whose shards have all finished; InputError says what is missing."""
    root = Path(root)
    config_path = root / "config.json"
    if not config_path.is_file():
        raise InputError(f"'{root}' holds no TTA sweep (no config.json); run tta-sweep first.")
    config = json.loads(config_path.read_text())
    layout = ResultsLayout(root)
    missing = [(v, n) for v in config["videos"] for n in config["settings"] if not layout.metrics(n, v).is_file()]
    if missing:
        raise InputError(f"{len(missing)} of {len(config['videos']) * len(config['settings'])} items are not done yet "
                         f"(first: {missing[0][0]} / {missing[0][1]}); run the missing shards, then merge.")
    summary = summarize_experiment(root, config["settings"], config["videos"])
    atomic_write_json(root / "summary.json", summary)
    (root / "summary.md").write_text(summary_markdown(summary))
    return summary


def run_tta_sweep(data_dir: str | os.PathLike, *, ranks=TTA_SWEEP["ranks"], lrs=TTA_SWEEP["lrs"],
                  steps=TTA_SWEEP["steps"], experiment: str | None = None, objective: str | None = None,
                  preset: str | dict = DEFAULT_PRESET, output_root: str | os.PathLike = "results", seed: int = 0,
                  alpha: float | None = None, include_mlp: bool = False, cond_frames: int | None = None,
                  total_frames: int | None = None, height: int | None = None, width: int | None = None,
                  sample_steps: int | None = None, guidance_scale: float | None = None, sampler: str = "scheduler",
                  lpips: bool = True, progress: ProgressFn | None = None, shard: str | None = None,
                  compile_blocks: bool = False) -> dict:
    """A grid of TTA settings (rank x lr x steps) over every usable clip of a data folder: a dataset
    (`data convert --task tta`) or videos with captions as they are (each resized when it is loaded).

    Written to `<output_root>/<experiment>/`: config.json, status.json, events.jsonl,
    videos/{ground_truth,baseline,<setting>}/<id>.mp4 (+ <setting>/<id>_side_by_side.mp4),
    frames/... (lossless), metrics/{baseline,<setting>}/<id>.json, logs/<setting>/<id>.json,
    summary.json and summary.md. Settings are named `<objective>-r<rank>-lr<lr>-s<steps>`. The
    baseline is generated once per clip; for each (rank, lr) the LoRA trains once to the
    largest step count and is sampled at each count. Running the same command again resumes:
    finished items are kept. Returns the summary.

    Sharded (`shard`, see `sweep_shard`: several torchrun processes, a SLURM array, or "i/N" by hand):
    shard i takes every N-th clip (by video id) and keeps its status and events in shards/shard-<i>/;
    the shard that finds every item done writes the one summary (`merge_tta_sweep` does it by hand).
    """
    ranks = _positive_list("ranks", ranks, int)
    lrs = _positive_list("lrs", lrs, float)
    step_list = sorted(_positive_list("steps", steps, int))
    preset_dict, mode = resolve_preset(preset)
    fam = family(preset_dict)
    objective = preset_dict["tta"]["objective"] if objective is None else objective
    cond_frames, total_frames = frames_of(preset_dict, cond_frames, total_frames)
    for r in ranks:
        for lr in lrs:
            check_settings(rank=r, alpha=alpha, lr=lr, steps=step_list[0], objective=objective, seed=seed,
                           cond_frames=cond_frames, total_frames=total_frames, fam=fam)
    experiment = experiment or f"tta-{Path(data_dir).resolve().name}-{objective}"
    if not re.match(r"^[A-Za-z0-9_.\-]+$", experiment) or experiment in (".", ".."):
        raise InputError(f"experiment name {experiment!r} must be a plain folder name (letters, digits, '.', '_', '-').")
    root = Path(output_root) / experiment
    try:
        sample = _sample_settings(preset_dict, sample_steps, guidance_scale, sampler)
        entries, skipped = sweep_clips(data_dir, preset_dict, total_frames=total_frames, height=height, width=width)
        names = [setting_name(objective, r, lr, s) for r in ranks for lr in lrs for s in step_list]
        config = {"kind": "tta_sweep", "experiment": experiment, "data_dir": str(Path(data_dir).resolve()),
                  "videos": [e.video_id for e in entries], "preset": preset_dict["name"], "family": preset_dict["family"],
                  "continuation": mode, "ranks": ranks, "lrs": lrs, "steps": step_list, "objective": objective,
                  "seed": seed, "alpha": alpha, "include_mlp": include_mlp, "cond_frames": cond_frames,
                  "total_frames": total_frames, "height": height, "width": width, "sample_steps": sample.steps,
                  "guidance_scale": sample.guidance_scale, "sampler": sample.sampler,
                  "negative_prompt": sample.negative_prompt, "settings": names, "compile_blocks": bool(compile_blocks)}
        run = _prepare_output_dir(root, "tta_sweep", config, resume=True)
        index, count = sweep_shard(shard)
        if count > 1 and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # one GPU per torchrun process
        pipe, fam = _load_model(preset_dict, compile_blocks)
    except EngineError as err:
        _fail_job_status(root, err)
        raise
    resumed = run.config_path.is_file()
    run.create()
    atomic_write_json(run.config_path, config)
    if count > 1:
        entries = sorted(entries, key=lambda e: e.video_id)[index::count]
        run = _ShardRun(root / "shards" / f"shard-{index}", run)
        run.create()
    layout = ResultsLayout(root)
    total_items = len(entries) * len(names)
    done = sum(1 for e in entries for n in names if layout.metrics(n, e.video_id).is_file())
    started = time.time()
    status = _status_writer(run, progress)
    status(state="running", **this_process(), done=done, total=total_items, error=None, resumed=resumed,
           skipped_clips=[f"{name}: {why}" for name, why in skipped])
    run.append_event({"type": "sweep_start", "done": done, "total": total_items, "resumed": resumed})

    def clip_job(e):
        return ClipJob(e.video_id, lambda: load_clip(e.path, preset_dict, cond_frames=cond_frames,
                                                     total_frames=total_frames, height=height, width=width,
                                                     prompt=e.prompt, video_id=e.video_id))

    try:
        with block_compilation(fam.denoiser(pipe), compile_blocks):
            done = _sweep_clips(run, layout, [clip_job(e) for e in entries],
                                {(r, lr): step_list for r in ranks for lr in lrs},
                                lambda r, lr, s: setting_name(objective, r, lr, s), objective=objective, seed=seed,
                                alpha=alpha, include_mlp=include_mlp, pipe=pipe, fam=fam, mode=mode,
                                cond_frames=cond_frames, sample=sample, lpips=lpips, status=status, done=done,
                                total=total_items)
        if count > 1:
            try:
                summary = merge_tta_sweep(root)
            except InputError:  # other shards are still at work: the last one to finish merges
                status(state="finished", phase="done", seconds=time.time() - started)
                return {"output_dir": str(root), "state": "finished", "shard": [index, count], "summary": None,
                        "summary_path": None, "summary_md": None}
        else:
            summary = summarize_experiment(root, names, [e.video_id for e in entries])
            atomic_write_json(root / "summary.json", summary)
            (root / "summary.md").write_text(summary_markdown(summary))
        status(state="finished", phase="done", seconds=time.time() - started)
    except TTAStopped:
        status(state="stopped")
        run.clear_stop()
        done = sum(1 for e in entries for n in names if layout.metrics(n, e.video_id).is_file())
        return {"output_dir": str(root), "state": "stopped", "done": done, "total": total_items}
    except Exception as err:
        status(state="failed", error=f"{type(err).__name__}: {str(err)[:2000]}")
        raise
    return {"output_dir": str(root), "state": "finished", "summary_path": str(root / "summary.json"),
            "summary_md": str(root / "summary.md"), "summary": summary}
