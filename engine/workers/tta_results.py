"""Test-time adaptation results on disk: the layout, the writers, summaries and `evaluate_tta`.

A run's or an experiment's folder holds videos/{ground_truth,baseline,<setting>}/<id>.mp4 (+
<setting>/<id>_side_by_side.mp4), frames/... (lossless copies for exact metrics),
metrics/{baseline,<setting>}/<id>.json and logs/<setting>/<id>.json (loss curves).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import EngineError, InputError
from ..jobs import atomic_write_json
from ..metrics import METRIC_DIRECTIONS, METRIC_NAMES, continuation_metrics, metric_difference

GROUND_TRUTH, BASELINE, TTA = "ground_truth", "baseline", "tta"
PROBE_SIGMAS = (0.25, 0.5, 0.75)  # fixed noise levels of the before/after loss probe


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


def write_baseline(layout: ResultsLayout, session, frames: np.ndarray, *, lpips: bool = True) -> dict:
    """Ground truth + baseline videos and the baseline's metrics for one clip. Returns the metrics record."""
    clip = session.clip
    paths = {GROUND_TRUTH: _write_video(layout, GROUND_TRUTH, clip.video_id, clip.frames, clip.fps),
             BASELINE: _write_video(layout, BASELINE, clip.video_id, frames, clip.fps)}
    record = {"video_id": clip.video_id, "kind": BASELINE, "prompt": clip.prompt, "seed": session.seed,
              "cond_frames": session.cond_frames, "total_frames": int(clip.frames.shape[0]),
              "metrics": continuation_metrics(frames, clip.frames, session.cond_frames, lpips=lpips), "paths": paths}
    atomic_write_json(layout.metrics(BASELINE, clip.video_id), record)
    return record


def write_tta(layout: ResultsLayout, setting: str, session, frames: np.ndarray, baseline_frames: np.ndarray,
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


def existing_baseline(layout: ResultsLayout, video_id: str) -> tuple[np.ndarray | None, dict | None]:
    """A resumed sweep's finished baseline for this clip (its lossless frames and record), if complete."""
    from ..video import read_mp4

    record_path, frames_path = layout.metrics(BASELINE, video_id), layout.frames(BASELINE, video_id)
    if not (record_path.is_file() and frames_path.is_file()):
        return None, None
    try:
        return read_mp4(frames_path)[0], json.loads(record_path.read_text())
    except (EngineError, json.JSONDecodeError):
        return None, None


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
