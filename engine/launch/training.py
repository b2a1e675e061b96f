"""Training runs as background jobs: what the app (and gradio_client, and scripts) call.

`start_training` prepares the dataset, validates the config and queues a `python -m engine
train` job in `runs/<run_id>/`; `training_status` reads everything back from disk (status,
loss points, samples, checkpoints), so any process can follow any run.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import time
import uuid
from pathlib import Path

from ..checkpoint import checkpoint_dirs
from ..config import config_from_preset
from ..errors import InputError
from ..jobs import (
    RunDir,
    atomic_write_json,
    job_status,
    list_run_dirs,
    pump_queue_quietly,
    queue_position,
    runs_root,
    stop_job,
    submit_job,
)
from ..models import family
from ..presets import DEFAULT_PRESET
from ..safe_paths import data_root, resolve_under, sanitize_filename
from ..workers.trainer import check_dataset

DATA_SOURCES = ("synthetic", "upload", "folder")
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".gif")



def datasets_root() -> Path:
    path = runs_root() / "_datasets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def run_dir(run_id: str) -> Path:
    safe = sanitize_filename(run_id)
    if safe != run_id or not (runs_root() / run_id).is_dir():
        raise InputError(f"unknown run '{run_id}'; pick one from the list of runs.")
    return runs_root() / run_id


def stage_uploads(uploads: list | None, staging: Path, config) -> Path:
    """Check uploads from their sizes and headers only, and copy them to `staging` for the job to convert.

    Nothing is decoded here (the job converts them: engine.workers.trainer.convert_uploads); what
    the headers already show (not a video, too big, too small, too short, too few usable clips) is
    refused now, naming the file.
    """
    from ..uploads import check_source_size, check_upload_size
    from ..video import probe_video

    files = [Path(getattr(f, "name", f)) for f in (uploads or [])]
    if not any(f.suffix.lower() in VIDEO_SUFFIXES for f in files):
        raise InputError("no video among the uploaded files; upload videos with same-name .txt captions.")
    fps = config.preset_dict()["generation"]["fps"]
    seconds = (config.extended_num_frames - 1) / fps  # the time of the last frame a clip must show
    usable, problems = 0, []
    for f in files:
        if not f.is_file():
            raise InputError(f"uploaded file '{f.name}' is missing; upload it again.")
        if f.suffix.lower() not in VIDEO_SUFFIXES + (".txt",):
            raise InputError(f"uploaded file '{f.name}' is neither a video ({', '.join(VIDEO_SUFFIXES)}) nor a .txt caption.")
        check_upload_size(f)
        if f.suffix.lower() == ".txt":
            continue
        try:
            info = probe_video(f, f.name)
        except InputError as err:
            problems.append(f"{f.name}: unreadable ({getattr(err, 'detail', err)})")
            continue
        check_source_size(f.name, info.height, info.width)
        if info.height < config.height or info.width < config.width:
            problems.append(f"{f.name}: {info.width}x{info.height}, smaller than {config.width}x{config.height}")
        elif info.duration is not None and info.duration + 1 / max(info.fps, 1) < seconds:  # a frame of header slack
            problems.append(f"{f.name}: {info.duration:.2f} s, too short for {config.extended_num_frames} frames "
                            f"at {fps:g} fps")
        else:
            usable += 1
    why = f" ({'; '.join(problems[:5])})" if problems else ""
    if not usable:
        raise InputError(f"no usable clip among the uploads{why}.")
    if usable <= config.num_validation_clips:
        raise InputError(f"{usable} usable clip(s) among the uploads{why}; need more than num_validation_clips="
                         f"{config.num_validation_clips} (held out for validation). Upload more clips.")
    staging.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    for f in files:
        shutil.copyfile(f, staging / sanitize_filename(f.name, taken))
    return staging


def prepare_dataset(source: str, target: Path, *, preset: str, folder: str | None = None, num_samples: int = 4,
                    seed: int = 0) -> Path:
    """Make `target` a dataset (metadata.json + videos/) from a synthetic or data-root source (uploads: stage_uploads)."""
    from ..data.dataset import convert_dataset, create_synthetic_dataset, load_dataset

    if source not in DATA_SOURCES or source == "upload":
        raise InputError(f"data source '{source}' is not one of {[s for s in DATA_SOURCES if s != 'upload']}.")
    if source == "synthetic":
        if not 2 <= int(num_samples) <= 256:
            raise InputError(f"num_samples={num_samples}: choose 2 to 256 synthetic clips (one is held out).")
        return create_synthetic_dataset(target, int(num_samples), preset=preset, seed=seed)
    root = data_root()
    path = resolve_under(root, folder or "", "dataset folder")
    if (path / "metadata.json").is_file():
        load_dataset(path, within=root)  # validate (every file inside the data root); lists every problem
        return path
    if _reads_only_inside(path, root, preset):
        return path  # videos with captions train as they are: buckets and windows (engine.data.samples)
    # Some file leads outside the data root: the worker must not read it, so the rest is copied in converted.
    convert_dataset(path, target, preset=preset, within=root).require_kept(f"in the {source} data")
    return target


def _reads_only_inside(path: Path, root: Path, preset: str) -> bool:
    """Whether every clip and caption of a folder of videos lies inside the data root (the worker reads the
    folder without that rule, so one that leads out is converted instead)."""
    from ..data.sources import find_clips
    from ..presets import load_preset

    fam = family(load_preset(preset))
    contained, skipped_inside = find_clips(path, fam, max_frames=1, within=root)
    every, skipped = find_clips(path, fam, max_frames=1)
    return [c.video_id for c in contained] == [c.video_id for c in every] and len(skipped_inside) == len(skipped)


def _argv(run: RunDir, staging: Path | None = None) -> list[str]:
    """The job reads the run's own config.json (the same file `train --config` takes) and converts any uploads."""
    return ["train", "--config", str(run.config_path), "--quiet"] + (["--prepare_from", str(staging)] if staging else [])


def start_training(preset: str = DEFAULT_PRESET, data_source: str = "synthetic", *, uploads: list | None = None,
                   folder: str | None = None, num_samples: int = 4, settings: dict | None = None) -> dict:
    """Prepare data, validate settings, queue the training job. Returns the run's status."""
    from ..spaces_support import training_supported

    supported, message = training_supported()
    if not supported:
        raise InputError(message)
    settings = {k: v for k, v in (settings or {}).items() if v is not None and v != ""}
    run_id = new_run_id()
    out = runs_root() / run_id
    # Validate the settings (once) before touching the disk; the data folder is filled in below.
    config = config_from_preset(preset, **{**settings, "data_dir": "-", "output_dir": str(out)})
    if config.gpu_memory_gb is not None:  # nothing fits: said now (the job plans again, with its host's memory)
        from ..memory.plan import apply_plan

        apply_plan(copy.copy(config), config.preset_dict(), config.gpu_memory_gb)
    if data_source not in DATA_SOURCES:
        raise InputError(f"data source '{data_source}' is not one of {list(DATA_SOURCES)}.")
    staging = None
    try:
        if data_source == "upload":  # checked from headers now, converted in the job
            staging = stage_uploads(uploads, datasets_root() / f"{run_id}-uploads", config)
            config.data_dir = str(datasets_root() / run_id)
        else:
            config.data_dir = str(prepare_dataset(data_source, datasets_root() / run_id, preset=preset, folder=folder,
                                                  num_samples=num_samples, seed=config.seed))
            # what the worker would find wrong with the data (too few clips, other sizes), said now
            check_dataset(config, family(config.preset_dict()))
    except BaseException:
        shutil.rmtree(datasets_root() / run_id, ignore_errors=True)
        shutil.rmtree(datasets_root() / f"{run_id}-uploads", ignore_errors=True)
        raise
    run = RunDir(out).create()
    atomic_write_json(run.config_path, config.to_dict())
    run.update_status(state="queued", created=time.time(), kind="train", run_id=run_id, preset=preset,
                      data_source=data_source, total_steps=config.max_steps)
    try:
        submit_job(out, _argv(run, staging))
    except BaseException:  # a request that failed leaves no queued job (nor its data) behind
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(datasets_root() / run_id, ignore_errors=True)
        shutil.rmtree(datasets_root() / f"{run_id}-uploads", ignore_errors=True)
        raise
    return training_status(run_id)


def memory_estimate(preset: str = DEFAULT_PRESET, settings: dict | None = None) -> dict:
    """The memory plan's prediction for a run of `preset` with `settings` (what the UI shows beside Start)."""
    from ..memory.plan import estimate

    settings = {k: v for k, v in (settings or {}).items() if v is not None and v != ""}
    config = config_from_preset(preset, **{**settings, "data_dir": "-", "output_dir": "-"})
    e = estimate(config, config.preset_dict(), config.fp8_base, config.offload_activations, config.ffn_chunks,
                 block_swap=config.block_swap)
    return {"peak_gib": round(e.peak_gib, 1), "host_gib": round(e.host_gib, 1), "options": e.label(),
            "parts": {k: round(v, 2) for k, v in e.parts.items()}}


def stop_training(run_id: str) -> dict:
    stop_job(run_dir(run_id))  # a queued run leaves the queue; a running one stops after its step
    return training_status(run_id)


def resume_training(run_id: str) -> dict:
    path = run_dir(run_id)
    status = job_status(path)
    if status.get("state") in ("running", "stopping", "queued"):
        raise InputError(f"run '{run_id}' is {status['state']}; stop it before resuming.")
    if status.get("state") == "finished":
        raise InputError(f"run '{run_id}' has finished; start a new run to train more.")
    argv = [a for a in status.get("argv", []) if a != "--resume"] + ["--resume"]
    if len(argv) < 3:
        raise InputError(f"run '{run_id}' has no recorded command to resume.")
    submit_job(path, argv)
    return training_status(run_id)


def list_runs(kind: str | tuple[str, ...] | None = "train") -> list[dict]:
    """Past and current runs of some kinds ("train", "tta", "tta-sweep"; None: all), newest first."""
    kinds = (kind,) if isinstance(kind, str) else kind
    pump_queue_quietly()
    rows = []
    for path in reversed(list_run_dirs()):
        if path.name.startswith("_"):
            continue
        s = job_status(path)
        if kinds is not None and s.get("kind", "train") not in kinds:
            continue
        rows.append({"run_id": path.name, "kind": s.get("kind", "train"), "state": s.get("state"), "step": s.get("step", 0),
                     "total_steps": s.get("total_steps"), "preset": s.get("preset")})
    return rows


def active_or_newest_run(kind: str | tuple[str, ...] | None = "train") -> str | None:
    """The running (or queued) run of these kinds, else the newest one: what an empty run id means."""
    runs = list_runs(kind)
    active = next((r for r in runs if r["state"] in ("running", "stopping", "queued")), runs[0] if runs else None)
    return active["run_id"] if active else None


def run_settings(run_id: str) -> dict:
    """The training settings a run was started with (its config.json): what the form shows for that run."""
    path = run_dir(run_id)
    config = RunDir(path).config_path
    if not config.is_file():
        raise InputError(f"run '{run_id}' has no settings yet (its config.json is written when it starts).")
    try:
        return json.loads(config.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"run '{run_id}': its config.json cannot be read ({err}).") from None


def training_status(run_id: str) -> dict:
    """Everything the UI shows about a run, read from its folder."""
    pump_queue_quietly()
    path = run_dir(run_id)
    run = RunDir(path)
    status = job_status(path)
    samples = sorted(p for p in run.samples_dir.glob("step-*") if re.fullmatch(r"step-\d+", p.name) and p.is_dir()) \
        if run.samples_dir.is_dir() else []
    latest = samples[-1] if samples else None
    out = {
        "run_id": run_id,
        "state": status.get("state"),
        "step": status.get("step", 0),
        "total_steps": status.get("total_steps"),
        "it_per_s": status.get("it_per_s"),
        "eta_seconds": status.get("eta_seconds"),
        "loss": status.get("loss"),
        "best_val_loss": status.get("best_val_loss"),
        "error": status.get("error"),
        "phase": status.get("phase"),
        "warning": status.get("warning"),
        "skipped_uploads": status.get("skipped_uploads") or [],
        "skipped_clips": status.get("skipped_clips") or [],  # clips of the data folder the run left out, and why
        "buckets": status.get("buckets") or {},
        "queue_position": queue_position(path),
        "train_events": run.read_events("train"),
        "validation_events": run.read_events("validation"),
        "samples": {p.stem: str(p) for p in sorted(latest.glob("*.mp4"))} if latest else {},
        "sample_step": int(latest.name.split("-")[1]) if latest else None,
        "checkpoints": [p.name for p in checkpoint_dirs(run.checkpoints_dir)],
        "final": str(path / "final") if (path / "final").is_dir() else None,
        "best_model": str(path / "best_model") if (path / "best_model").is_dir() else None,
    }
    if out["state"] == "failed":
        out["log_tail"] = status.get("log_tail") or run.log_tail()
    return out
