"""Training datasets on disk: metadata, synthetic creation, conversion and validation.

A dataset is a folder:

    <data_dir>/metadata.json     a JSON list, one object per clip (fields below)
    <data_dir>/videos/<video_id>.mp4

Required fields of each entry: "video_id" (a file stem: letters, digits, '.', '_', '-'),
"prompt" (non-empty), "negative_prompt" (may be empty), "base_frames" and "extended_frames"
(4k+1, extended > base; the clip holds at least `extended_frames` frames and the trainer uses
its first `base_frames` / `extended_frames`), "height", "width" (the clip's exact frame size,
multiples of 16). Optional, informational: "fps" (of the stored clip), "source" (the original
file), "source_fps".

`convert_dataset` accepts an input folder holding videos (.mp4 .mov .webm .mkv .avi .m4v .gif)
and captions in exactly one of these forms:
  - a `.txt` file with the same stem beside each video (`cat.mp4` + `cat.txt`), or
  - `captions.csv` with a header row and columns `path,caption`, or
  - `captions.json`: a list of {"path": ..., "caption": ...}.
Paths in the CSV/JSON are relative to the input folder (absolute paths work too). With a
captions file, videos it does not list are skipped as "missing caption".

Training and TTA also read such a folder as it is, unconverted (engine.data.sources, samples;
docs/datasets.md): clips of any size and length, bucketed and cut into frame windows per run.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError
from ..models import DEFAULT_FAMILY, family, family_named
from ..presets import DEFAULT_PRESET
from ..safe_paths import check_inside, is_inside
from ..validation import nearest_valid_frame_counts
from ..video import frame_stream as _frame_stream
from ..video import resize_center_crop
from ..video import read_mp4 as read_clip  # noqa: F401  (the clip reader of the training code: latent_cache, tests)
from ..video import write_mp4
from .clip_probe import ProbeCache

METADATA_FILE = "metadata.json"
VIDEOS_DIR = "videos"
REPORT_FILE = "convert_report.json"
CAPTION_FILES = ("captions.csv", "captions.json")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".gif")
FIELDS = {"video_id": str, "prompt": str, "negative_prompt": str, "base_frames": int,
          "extended_frames": int, "height": int, "width": int}
OPTIONAL_FIELDS = {"fps": (int, float), "source": str, "source_fps": (int, float)}
VIDEO_ID = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9._\-]*$")

# Test-time adaptation clips: the preset's tta.total_frames (65) at short side tta.short_side
# (256), each side a multiple of the family's size multiple. The long side keeps the source
# aspect (rounded down) up to 2:1, so a 16:9 source becomes 448x256 and a square one 256x256.
# The first tta.cond_frames (33) are the prefix the adapter is tuned on; the rest is the continuation.
TTA_MAX_ASPECT = 2.0
# A source a little below tta.short_side is upscaled to it (UCF-101's 320x240 to 341x256 for the 256 px
# presets); ground truth, baseline and TTA all see the same upscaled frames, so the comparison stays fair.
TTA_MAX_UPSCALE = 1.25


def tta_min_short_side(short_side: int) -> int:
    """The smallest source short side a TTA clip of `short_side` is made from."""
    return math.ceil(short_side / TTA_MAX_UPSCALE)

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class ClipEntry:
    """One validated metadata row plus where its video is."""

    video_id: str
    prompt: str
    negative_prompt: str
    base_frames: int
    extended_frames: int
    height: int
    width: int
    path: Path
    extra: dict = field(default_factory=dict)  # optional fields (fps, source, source_fps)


def _resolve_preset(preset: str | dict) -> dict:
    from ..presets import load_preset

    return load_preset(preset) if isinstance(preset, str) else preset


def _write_json_atomic(data: Any, path: Path) -> None:
    """Write JSON via a temporary sibling + os.replace, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".json", dir=path.parent, prefix=f".{path.stem}-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------------------- create


def _refuse_existing(out: Path, overwrite: bool) -> None:
    """A folder holding a dataset is replaced only when asked to (`--overwrite`)."""
    meta = out / METADATA_FILE
    if meta.is_file() and not overwrite:
        try:
            count = f"{len(json.loads(meta.read_text()))} clips"
        except (ValueError, TypeError, UnicodeDecodeError):
            count = "a metadata.json"
        raise InputError(f"'{out.name}' already holds a dataset ({count}); pass --overwrite (overwrite=True) to "
                         "replace its metadata.json, or choose another output folder.")


def create_synthetic_dataset(output_dir: str | os.PathLike, num_samples: int, *, preset: str | dict = DEFAULT_PRESET,
                             seed: int = 0, fps: int | None = None, progress: ProgressFn | None = None,
                             overwrite: bool = False, task: str = "extension") -> Path:
    """Render `num_samples` synthetic clips (engine.data.synthetic) at the preset's training size/length
    (task "extension") or as test-time adaptation clips (task "tta": tta.total_frames frames, square at
    tta.short_side, the first tta.cond_frames the prefix).

    An existing dataset in `output_dir` is refused unless `overwrite` (then its metadata.json is replaced)."""
    from .synthetic import render_clip

    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise InputError(f"num_samples must be a positive integer, got {num_samples!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}.")
    if task not in ("extension", "tta"):
        raise InputError(f"task must be 'extension' or 'tta', got {task!r}.")
    preset = _resolve_preset(preset)
    train = preset["training"]
    if task == "tta":
        side = preset["tta"]["short_side"]
        train = {"base_num_frames": preset["tta"]["cond_frames"], "extended_num_frames": preset["tta"]["total_frames"],
                 "height": side, "width": side}
    fps = int(fps or preset["generation"]["fps"])
    out = Path(output_dir)
    _refuse_existing(out, overwrite)
    entries = []
    for i in range(num_samples):
        clip = render_clip(seed, train["extended_num_frames"], train["height"], train["width"], index=i)
        video_id = f"synthetic_{i:05d}"
        write_mp4(clip.frames, out / VIDEOS_DIR / f"{video_id}.mp4", fps=fps)
        entries.append({
            "video_id": video_id, "prompt": clip.caption, "negative_prompt": preset["generation"]["negative_prompt"],
            "base_frames": train["base_num_frames"], "extended_frames": train["extended_num_frames"],
            "height": train["height"], "width": train["width"], "fps": fps, "source": f"synthetic seed={seed} index={i}",
        })
        if progress is not None:
            progress(i + 1, num_samples)
    _write_json_atomic(entries, out / METADATA_FILE)  # last: the dataset exists only once complete
    return out


# ---------------------------------------------------------------------------- convert


@dataclass
class ConvertReport:
    output_dir: str
    task: str
    fps: int  # of the written clips
    height: int | None  # the extension task's fixed size; None for tta (per clip)
    width: int | None
    frames: int
    kept: list[str] = field(default_factory=list)  # video ids written
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input file, reason)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skipped"] = [{"file": f, "reason": r} for f, r in self.skipped]
        return d

    def require_kept(self, what: str) -> None:
        """InputError with the first reasons when no clip was kept (`what`: where the clips came from)."""
        if not self.kept:
            reasons = "; ".join(f"{name}: {why}" for name, why in self.skipped[:5])
            raise InputError(f"no usable clip {what} ({reasons or 'no video found'}).")


class _Skip(Exception):
    """A source file is not usable; the message is the reason in the report."""


def caption_pairs(input_dir: Path, within: Path | None = None) -> tuple[list[tuple[str, Path, str | None]],
                                                                        list[tuple[str, str]], str | None]:
    """(label, video path, caption or None) for every candidate, rows already known to be bad, the caption file.
    With `within`, a video or caption that resolves outside that folder is a bad row (never read)."""
    present = [name for name in CAPTION_FILES if (input_dir / name).is_file()]
    if len(present) > 1:
        raise InputError(f"{input_dir} holds both {present[0]} and {present[1]}; keep one caption file.")
    videos = sorted(p for p in input_dir.iterdir()
                    if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith("."))
    if not present:
        pairs = []
        bad = []
        for video in videos:
            txt = video.with_suffix(".txt")
            if within is not None and not (is_inside(within, video) and (not txt.exists() or is_inside(within, txt))):
                bad.append((video.name, "leads outside the data root (a symlink); not read"))
                continue
            pairs.append((video.name, video, txt.read_text(errors="replace") if txt.is_file() else None))
        if not pairs and not bad:
            raise InputError(f"no videos found in {input_dir} (looked for {', '.join(VIDEO_EXTENSIONS)} files).")
        return pairs, bad, None
    listed = _read_caption_file(check_inside(within, input_dir / present[0], present[0]))
    pairs, bad, seen = [], [], set()
    for label, caption in listed:
        path = Path(label) if os.path.isabs(label) else input_dir / label
        if within is not None and not is_inside(within, path):
            bad.append((label, f"leads outside the data root (an absolute path or a symlink, listed in {present[0]}); "
                               "not read"))
            continue
        if not path.is_file():
            bad.append((label, f"file not found (listed in {present[0]})"))
            continue
        seen.add(path.resolve())
        pairs.append((label, path, caption))
    for video in videos:
        if video.resolve() in seen:
            continue
        if within is not None and not is_inside(within, video):
            bad.append((video.name, "leads outside the data root (a symlink); not read"))
        else:
            pairs.append((video.name, video, None))
    if not pairs and not bad:
        raise InputError(f"{input_dir / present[0]} lists no videos; add rows with a path and a caption.")
    return pairs, bad, present[0]


def caption_problem(caption: str | None, video: Path, caption_file: str | None) -> str | None:
    """Why a video's caption (from caption_pairs) is unusable, or None."""
    if caption is None:
        beside = f"add {video.with_suffix('.txt').name} beside it"
        return f"missing caption ({f'add a row for it to {caption_file}' if caption_file else beside})"
    if not caption.strip():
        return "empty caption"
    if "\ufffd" in caption or "\x00" in caption:  # read with errors="replace": invalid bytes show as U+FFFD
        return "the caption is not valid UTF-8 text (or holds a NUL character); save it as UTF-8"
    return None


def _read_caption_file(path: Path) -> list[tuple[str, str | None]]:
    try:
        return _parse_caption_file(path)
    except UnicodeDecodeError:
        raise InputError(f"{path.name} is not UTF-8 text; save it as UTF-8.") from None


def _parse_caption_file(path: Path) -> list[tuple[str, str | None]]:
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            if "path" not in columns or "caption" not in columns:
                raise InputError(f"{path}: the header row must name the columns 'path' and 'caption' "
                                 f"(found {columns or 'no header'}).")
            rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
    else:
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}.") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise InputError(f"{path}: expected a list of objects like {{\"path\": \"a.mp4\", \"caption\": \"...\"}}.")
    out = []
    for n, row in enumerate(rows, start=1):
        label = str(row.get("path") or "").strip()
        if not label:
            raise InputError(f"{path}: row {n} has no 'path'.")
        caption = row.get("caption")
        out.append((label, caption if isinstance(caption, str) else None))
    return out


def tta_size(height: int, width: int, short_side: int, multiple: int) -> tuple[int, int]:
    """Short side `short_side`, long side the aspect-kept length rounded down to `multiple` (capped at 2:1)."""
    short, long = min(height, width), max(height, width)
    long_px = min(long * short_side / short, short_side * TTA_MAX_ASPECT)
    long_px = int(long_px // multiple * multiple)
    return (short_side, long_px) if height <= width else (long_px, short_side)


def _source_indices(count: int, source_fps: float, target_fps: float) -> list[int]:
    """Which source frames show times 0, 1/target, 2/target, ... (the latest frame at or before each time)."""
    step = source_fps / target_fps
    return [math.floor(j * step + 1e-6) for j in range(count)]


def _read_resampled(path: Path, needed: int, target_fps: float | None) -> tuple[np.ndarray, float, list[int]]:
    """Decode only the source frames needed for `needed` frames at `target_fps`.

    Returns (frames, source fps, source indices). Raises _Skip for unreadable or too-short videos.
    """
    try:
        source_fps, stream, close = _frame_stream(path)
    except InputError as err:
        raise _Skip(f"unreadable or corrupt video ({err.detail})") from None
    try:
        if not source_fps > 0:
            raise _Skip("unreadable video: it reports no frame rate")
        fps = source_fps if target_fps is None or abs(source_fps - target_fps) < 1e-3 else float(target_fps)
        picks = _source_indices(needed, source_fps, fps)
        last, picked_set = picks[-1], set(picks)
        picked: dict[int, np.ndarray] = {}
        count = 0
        try:
            for i, frame in enumerate(stream):
                count = i + 1
                if i in picked_set:
                    picked[i] = frame
                if i >= last:
                    break
        except Exception as err:
            raise _Skip(f"unreadable or corrupt video: decoding failed after {count} frames ({type(err).__name__})") from None
    finally:
        close()
    if count == 0:
        raise _Skip("unreadable or corrupt video: no frames could be decoded")
    if count <= last:
        available = sum(1 for index in picks if index < count)  # indices only grow
        at = "" if fps == source_fps else f" at {fps:g} fps ({count} at the source's {source_fps:g} fps)"
        raise _Skip(f"too short: {available} frames{at}; needs at least {needed}")
    return np.stack([picked[i] for i in picks]), source_fps, picks


def safe_id(stem: str, taken: set[str]) -> str:
    """A video id from a file stem (unsafe characters to '_'), made unique among `taken` (which it joins)."""
    base = re.sub(r"[^A-Za-z0-9._\-]", "_", stem).lstrip(".") or "clip"
    video_id, n = base, 2
    while video_id in taken:
        video_id, n = f"{base}_{n}", n + 1
    taken.add(video_id)
    return video_id


def convert_dataset(input_dir: str | os.PathLike, output_dir: str | os.PathLike, *, preset: str | dict = DEFAULT_PRESET,
                    task: str = "extension", fps: float | None = None, progress: ProgressFn | None = None,
                    overwrite: bool = False, within: Path | None = None) -> ConvertReport:
    """Turn a folder of captioned videos into a dataset (see the module docstring for input forms).

    task "extension": resize + centre-crop to the preset's training size, keep clips with at least
    training.extended_num_frames frames (after fps resampling) and trim to that. task "tta": see
    TTA_FRAMES / _tta_size. Clips are resampled to `fps` (default: the preset's generation.fps) by
    picking frames. Skipped files and reasons go to the report and to convert_report.json. An existing
    dataset in `output_dir` is refused unless `overwrite` (then its metadata.json is replaced). With `within`
    (the app's data root) every file read must resolve inside it; others are skipped, never opened.
    """
    if task not in ("extension", "tta"):
        raise InputError(f"task must be 'extension' or 'tta', got {task!r}.")
    if fps is not None and not (isinstance(fps, (int, float)) and fps > 0):
        raise InputError(f"fps must be a positive number, got {fps!r}.")
    input_dir, out = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise InputError(f"input folder '{input_dir}' does not exist or is not a folder.")
    _refuse_existing(out, overwrite)
    preset = _resolve_preset(preset)
    train = preset["training"]
    target_fps = float(fps or preset["generation"]["fps"])
    if task == "extension":
        frames, base = train["extended_num_frames"], train["base_num_frames"]
        size = (train["height"], train["width"])
    else:
        tta = preset["tta"]
        frames, base, size = tta["total_frames"], tta["cond_frames"], None
    multiple = family(preset).size_multiple
    out_fps = round(target_fps)  # write_mp4 takes whole frame rates
    report = ConvertReport(str(out), task, out_fps, size[0] if size else None, size[1] if size else None, frames)
    check_inside(within, input_dir, f"input folder '{input_dir.name}'")
    pairs, report.skipped, caption_file = caption_pairs(input_dir, within)
    entries, taken = [], set()
    for n, (label, path, caption) in enumerate(pairs, start=1):
        try:
            problem = caption_problem(caption, path, caption_file)
            if problem:
                raise _Skip(problem)
            clip, source_fps, _ = _read_resampled(path, frames, target_fps)
            h, w = clip.shape[1:3]
            height, width = size or tta_size(h, w, preset["tta"]["short_side"], multiple)
            if task == "extension" and (h < height or w < width):
                raise _Skip(f"too small resolution: {w}x{h} (width x height); needs at least {width}x{height}")
            if task == "tta" and min(h, w) < tta_min_short_side(preset["tta"]["short_side"]):
                raise _Skip(f"too small resolution: {w}x{h} (width x height); the short side needs at least "
                            f"{tta_min_short_side(preset['tta']['short_side'])} (preset field tta.short_side "
                            f"{preset['tta']['short_side']}, upscaled by at most {TTA_MAX_UPSCALE:g}x)")
            clip = resize_center_crop(clip, height, width)
            video_id = safe_id(path.stem, taken)
            write_mp4(clip, out / VIDEOS_DIR / f"{video_id}.mp4", fps=out_fps)
            entries.append({
                "video_id": video_id, "prompt": caption.strip(), "negative_prompt": preset["generation"]["negative_prompt"],
                "base_frames": base, "extended_frames": frames, "height": height, "width": width,
                "fps": out_fps, "source": str(label), "source_fps": source_fps,
            })
            report.kept.append(video_id)
        except _Skip as why:
            report.skipped.append((label, str(why)))
        if progress is not None:
            progress(n, len(pairs))
    if entries:  # never leave an empty (invalid) dataset behind
        _write_json_atomic(entries, out / METADATA_FILE)
    _write_json_atomic(report.to_dict(), out / REPORT_FILE)
    return report


# ---------------------------------------------------------------------------- validate


def _type_name(t) -> str:
    return "number" if isinstance(t, tuple) else {int: "integer", str: "string"}[t]


def _check_entry(where: str, entry: Any, fam) -> list[str]:
    if not isinstance(entry, dict):
        return [f"{where}: expected an object with fields {list(FIELDS)}, got {type(entry).__name__}."]
    problems = []
    for name, kind in {**FIELDS, **OPTIONAL_FIELDS}.items():
        if name not in entry:
            if name in FIELDS:
                problems.append(f"{where}: missing field '{name}' ({_type_name(kind)}).")
            continue
        value = entry[name]
        if isinstance(value, bool) or not isinstance(value, kind):
            problems.append(f"{where}: field '{name}' must be a {_type_name(kind)}, got {type(value).__name__} {value!r}.")
    if problems:
        return problems
    if not VIDEO_ID.match(entry["video_id"]):
        problems.append(f"{where}: field 'video_id' {entry['video_id']!r} must be a plain file name stem "
                        "(letters, digits, '.', '_', '-'; no slashes).")
    if not entry["prompt"].strip():
        problems.append(f"{where}: field 'prompt' is empty; describe the clip.")
    for name in ("base_frames", "extended_frames"):
        value = entry[name]
        factor = fam.temporal_factor
        if value < 1 or (value - 1) % factor:
            lower, upper = nearest_valid_frame_counts(max(value, 1), factor)
            problems.append(f"{where}: field '{name}'={value} is not a valid frame count: the VAE needs "
                            f"{factor}k+1 frames. Nearest valid counts: {lower} or {upper}.")
    if entry["extended_frames"] <= entry["base_frames"]:
        problems.append(f"{where}: field 'extended_frames' ({entry['extended_frames']}) must be greater than "
                        f"'base_frames' ({entry['base_frames']}).")
    for name in ("height", "width"):
        value = entry[name]
        if value < fam.size_multiple or value % fam.size_multiple:
            problems.append(f"{where}: field '{name}'={value} must be a positive multiple of {fam.size_multiple}.")
    return problems


def _check_video(entry: dict, video: Path, rel: str, probes: ProbeCache) -> list[str]:
    if not video.is_file():
        return [f"{rel} (field 'video_id' {entry['video_id']!r}): video file is missing; put the clip there or remove the entry."]
    try:
        count, h, w = probes.probe(video, entry["extended_frames"])
    except Exception as err:
        return [f"{rel} (field 'video_id' {entry['video_id']!r}): unreadable or corrupt video ({getattr(err, 'detail', type(err).__name__)}); "
                "replace the file or remove the entry."]
    problems = []
    if count < entry["extended_frames"]:
        problems.append(f"{rel} (field 'extended_frames'): video has {count} frames; needs at least "
                        f"{entry['extended_frames']}.")
    if (h, w) != (entry["height"], entry["width"]):
        problems.append(f"{rel} (fields 'height', 'width'): frames are {h}x{w} (height x width) but the entry says "
                        f"{entry['height']}x{entry['width']}; re-convert the clip or fix the entry.")
    return problems


def _scan(data_dir: Path, fam, within: Path | None = None) -> tuple[list[str], list[ClipEntry]]:
    meta = data_dir / METADATA_FILE
    if within is not None and not is_inside(within, meta):
        return [f"{meta.name}: leads outside the data root (a symlink); it is not read."], []
    if not meta.is_file():
        hint = "create one with `python -m engine data create` or `data convert`"
        return [f"{meta}: missing; a dataset folder needs metadata.json ({hint})."], []
    try:
        data = json.loads(meta.read_text())
    except json.JSONDecodeError as e:
        return [f"{meta}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}."], []
    except UnicodeDecodeError:
        return [f"{meta}: not a UTF-8 text file."], []
    if not isinstance(data, list):
        return [f"{meta}: expected a JSON list of clip entries, got {type(data).__name__}."], []
    if not data:
        return [f"{meta}: the list is empty; a dataset needs at least one clip."], []
    problems, entries, seen = [], [], {}
    probes = ProbeCache()
    for i, entry in enumerate(data):
        label = entry.get("video_id") if isinstance(entry, dict) else None
        where = f"{meta} entry {i}" + (f" (video_id {label!r})" if isinstance(label, str) else "")
        found = _check_entry(where, entry, fam)
        if not found:
            video_id = entry["video_id"]
            if video_id in seen:
                found.append(f"{where}: field 'video_id' duplicates entry {seen[video_id]}; ids must be unique.")
            else:
                seen[video_id] = i
                rel = f"{data_dir / VIDEOS_DIR / (video_id + '.mp4')}"
                if within is not None and not is_inside(within, Path(rel)):
                    found = [f"{VIDEOS_DIR}/{video_id}.mp4 (field 'video_id' {video_id!r}): leads outside the data "
                             "root (a symlink); it is not read."]
                else:
                    found = _check_video(entry, Path(rel), rel, probes)
        problems.extend(found)
        if not found:
            extra = {k: entry[k] for k in entry if k not in FIELDS}
            entries.append(ClipEntry(**{k: entry[k] for k in FIELDS}, path=data_dir / VIDEOS_DIR / f"{entry['video_id']}.mp4",
                                     extra=extra))
    probes.save()
    return problems, entries


def scan_dataset(data_dir: str | os.PathLike, fam=None, within: Path | None = None) -> tuple[list[str], list[ClipEntry]]:
    """(every problem, the entries that passed), frame counts and sizes checked by the model family's
    rules (default: the default family's). Reads the dataset only; decodes each clip once per file
    version (results kept in the engine cache, see clip_probe.py)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return [f"{data_dir}: dataset folder does not exist."], []
    return _scan(data_dir, fam or family_named(DEFAULT_FAMILY), within)


def validate_dataset(data_dir: str | os.PathLike, fam=None) -> list[str]:
    """Every problem in the dataset folder, each naming the file and field. Reads the dataset only."""
    return scan_dataset(data_dir, fam)[0]


def load_dataset(data_dir: str | os.PathLike, fam=None, within: Path | None = None) -> list[ClipEntry]:
    """The dataset's entries, or InputError listing every problem (with `within`: files outside it are problems)."""
    problems, entries = scan_dataset(data_dir, fam, within)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise InputError(f"dataset {data_dir} has {len(problems)} problem(s):\n{listed}")
    return entries
