"""Test-time adaptation runs and sweeps as background jobs (what the app calls).

`start_tta` checks the clip and settings in the request (clear errors at once), then queues
`python -m engine tta ...` into `runs/<run_id>/`; `tta_status` reads the loss events, status and,
once finished, the metrics and videos back from disk.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..errors import InputError
from ..jobs import RunDir, job_status, pump_queue_quietly, queue_position, runs_root, stop_job, submit_job
from ..presets import DEFAULT_PRESET, load_preset
from ..safe_paths import data_root, resolve_under, sanitize_filename
from ..uploads import check_upload_size
from .training import new_run_id, run_dir


def sample_clip(preset: str = DEFAULT_PRESET, seed: int = 0) -> Path:
    """A synthetic 65-frame clip (with its caption) at the preset's TTA size, made once."""
    from ..data.dataset import tta_size
    from ..data.synthetic import render_clip
    from ..models import family
    from ..video import write_mp4

    p = load_preset(preset)
    side, frames = p["tta"]["short_side"], p["tta"]["total_frames"]
    h, w = tta_size(side, side, side, family(p).size_multiple)
    folder = runs_root() / "_samples"
    path = folder / (f"sample-{h}x{w}-{seed}.mp4" if frames == 65 else f"sample-{h}x{w}x{frames}-{seed}.mp4")
    if not path.is_file():
        clip = render_clip(seed=seed, num_frames=frames, height=h, width=w)
        write_mp4(clip.frames, path, fps=p["generation"]["fps"])
        path.with_suffix(".txt").write_text(clip.caption)
    return path


def _uploaded(video) -> Path:
    """The uploaded file, refused unless it is there and named like a video."""
    from .training import VIDEO_SUFFIXES

    src = Path(getattr(video, "name", video))
    if not src.is_file():
        raise InputError(f"uploaded video '{src.name}' is missing; upload it again.")
    if src.suffix.lower() not in VIDEO_SUFFIXES:
        raise InputError(f"'{src.name}' is not a video file ({', '.join(VIDEO_SUFFIXES)}); upload a clip.")
    check_upload_size(src)
    return src


def _stage_upload(src: Path, run_id: str) -> Path:
    """Copy an accepted upload (and a same-name caption) beside the run under a sanitised name."""
    folder = runs_root() / "_inputs" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / sanitize_filename(src.name)
    shutil.copyfile(src, dst)
    caption = src.with_suffix(".txt")
    if caption.is_file():
        shutil.copyfile(caption, dst.with_suffix(".txt"))
    return dst


def start_tta(video=None, *, preset: str = DEFAULT_PRESET, rank: int | None = None, lr: float | None = None,
              steps: int | None = None, objective: str | None = None, seed: int = 0, prompt: str | None = None,
              in_request: bool = False) -> dict:
    """Queue one TTA run on `video` (an uploaded file; None: the built-in sample clip).

    Unset rank / lr / steps / objective take the preset's `tta` section. `in_request=True` runs it
    here and now instead (ZeroGPU lends a GPU only to the request).
    """
    from ..models import family
    from ..workers.tta import check_clip_header, check_settings, frames_of, resolve_preset

    preset_dict, _ = resolve_preset(preset)  # refuses presets that cannot continue a clip
    tta = preset_dict["tta"]
    rank, lr, steps = (tta["rank"] if rank is None else rank), (tta["lr"] if lr is None else lr), \
        (tta["steps"] if steps is None else steps)
    objective = tta["objective"] if objective is None else objective
    cond_frames, total_frames = frames_of(preset_dict, None, None)
    check_settings(rank=rank, alpha=None, lr=lr, steps=steps, objective=objective, seed=seed, cond_frames=cond_frames,
                   total_frames=total_frames, fam=family(preset_dict))
    run_id = new_run_id()
    # Checked where the upload lies, from its header (readable, size, length): a rejected file is never copied into
    # the runs, and no frame is decoded in the app's process (the job decodes it).
    path = sample_clip(preset, seed=0) if video in (None, "") else _uploaded(video)
    check_clip_header(path, preset_dict, cond_frames=cond_frames, total_frames=total_frames)
    if video not in (None, ""):
        path = _stage_upload(path, run_id)
    out = runs_root() / run_id
    argv = ["tta", "--video", str(path), "--preset", preset, "--output_dir", str(out), "--rank", str(rank),
            "--lr", str(lr), "--steps", str(steps), "--objective", objective, "--seed", str(seed)]
    if prompt:
        argv += ["--prompt", prompt]
    RunDir(out).create().update_status(state="queued", created=time.time(), kind="tta", run_id=run_id, preset=preset,
                                       total_steps=steps)
    if in_request:
        from ..workers.tta import run_tta

        run_tta(path, preset=preset, output_dir=out, rank=rank, lr=lr, steps=steps, objective=objective, seed=seed,
                prompt=prompt)
    else:
        submit_job(out, argv)
    return tta_status(run_id)


# The app's sweep defaults: a quick grid (the CLI's `tta-sweep` defaults, engine.settings.TTA_SWEEP, are the
# original experiment's).
APP_SWEEP = {"ranks": "8,16", "lrs": "2e-4", "steps": "5,10"}


def start_tta_sweep(folder: str = "", *, preset: str = DEFAULT_PRESET, ranks: str = APP_SWEEP["ranks"],
                    lrs: str = APP_SWEEP["lrs"], steps: str = APP_SWEEP["steps"], objective: str | None = None,
                    seed: int = 0) -> dict:
    """Queue a sweep over a TTA dataset folder under the data root (empty: a set of sample clips)."""
    if folder:
        from ..workers.tta import sweep_clips

        data_dir = resolve_under(data_root(), folder, "TTA dataset folder")
        recipe = load_preset(preset)  # a dataset or captioned videos; every clip inside the data root, checked now
        sweep_clips(data_dir, recipe, total_frames=recipe["tta"]["total_frames"], within=data_root())
    else:
        data_dir = runs_root() / "_samples" / f"tta-set-{preset}"
        if not (data_dir / "metadata.json").is_file():
            from ..data.dataset import convert_dataset

            clips = data_dir.with_name(data_dir.name + "-clips")
            clips.mkdir(parents=True, exist_ok=True)
            for i in range(2):
                src = sample_clip(preset, seed=i)
                shutil.copyfile(src, clips / src.name)
                shutil.copyfile(src.with_suffix(".txt"), clips / src.with_suffix(".txt").name)
            convert_dataset(clips, data_dir, preset=preset, task="tta")
    run_id = new_run_id()
    argv = ["tta-sweep", "--data_dir", str(data_dir), "--ranks", ranks, "--lrs", lrs, "--steps", steps,
            "--preset", preset, "--seed", str(seed), "--output_root", str(runs_root()), "--experiment", run_id]
    if objective:
        argv += ["--objective", objective]
    RunDir(runs_root() / run_id).create().update_status(state="queued", created=time.time(), kind="tta-sweep", run_id=run_id,
                                                        preset=preset)
    submit_job(runs_root() / run_id, argv)
    return tta_status(run_id)


def stop_tta(run_id: str) -> dict:
    stop_job(run_dir(run_id))
    return tta_status(run_id)


def tta_status(run_id: str) -> dict:
    pump_queue_quietly()
    path = run_dir(run_id)
    run = RunDir(path)
    status = job_status(path)
    out = {"run_id": run_id, "kind": status.get("kind", "tta"), "state": status.get("state"),
           "phase": status.get("phase"), "step": status.get("step", 0), "total_steps": status.get("total_steps"),
           "loss": status.get("loss"), "error": status.get("error"), "queue_position": queue_position(path),
           "loss_events": run.read_events("tta"), "metrics": None, "videos": {}, "summary_md": None}
    metrics = path / "metrics.json"
    if metrics.is_file():
        out["metrics"] = json.loads(metrics.read_text())
        video_id = out["metrics"]["video_id"]
        for kind in ("ground_truth", "baseline", "tta"):
            candidate = path / "videos" / kind / f"{video_id}.mp4"
            if candidate.is_file():
                out["videos"][kind] = str(candidate)
        side = path / "videos" / "tta" / f"{video_id}_side_by_side.mp4"
        if side.is_file():
            out["videos"]["side_by_side"] = str(side)
    out.update(tta_speed(status, out["loss_events"]))
    summary = path / "summary.md"
    if summary.is_file():
        out["summary_md"] = summary.read_text()
    if out["state"] == "failed":
        out["log_tail"] = status.get("log_tail") or run.log_tail()
    return out


SPEED_WINDOW = 20  # the last steps the speed is measured over


def tta_speed(status: dict, events: list[dict]) -> dict:
    """{"it_per_s", "eta_seconds"} of a TTA run from its logged steps (the worker records their times).

    The speed is that of the current setting's last steps; the ETA is the current setting's remaining steps
    for one run, and the time per finished item times the items left for a sweep (None when not known)."""
    last = events[-1] if events else None
    recent = [e for e in events[-SPEED_WINDOW:] if last and e.get("setting") == last.get("setting")
              and e.get("video_id") == last.get("video_id") and isinstance(e.get("time"), (int, float))]
    rate = None
    if len(recent) >= 2 and recent[-1]["time"] > recent[0]["time"] and recent[-1]["step"] > recent[0]["step"]:
        rate = (recent[-1]["step"] - recent[0]["step"]) / (recent[-1]["time"] - recent[0]["time"])
    eta = None
    if status.get("state") == "running":
        done, total, started = status.get("done"), status.get("total"), status.get("started")
        if status.get("kind") == "tta-sweep":
            if isinstance(done, int) and isinstance(total, int) and done > 0 and isinstance(started, (int, float)):
                eta = (time.time() - started) / done * max(0, total - done)
        elif rate and isinstance(status.get("total_steps"), int):
            eta = max(0, status["total_steps"] - status.get("step", 0)) / rate
    return {"it_per_s": rate, "eta_seconds": eta}


def list_tta_runs() -> list[dict]:
    """TTA runs and sweeps, newest first, each with its state, progress, speed and ETA."""
    from .training import list_runs

    rows = []
    for r in list_runs(("tta", "tta-sweep")):
        path = runs_root() / r["run_id"]
        status = job_status(path)
        rows.append({**r, **tta_speed(status, RunDir(path).read_events("tta")),
                     "done": status.get("done"), "total": status.get("total")})
    return rows
