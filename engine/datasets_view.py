"""The dataset view: what a training run would make of each clip of a data folder, and caption edits.

Everything comes from the trainer's own planning (engine.data.samples.plan_dataset with the preset's
training recipe and the folder's dataset.toml), so the view cannot disagree with a run: a clip's
bucket, its windows, whether it is held out for validation, and why it is skipped. Folders are
named relative to the data root (engine.safe_paths) and nothing outside it is read or written.
"""

from __future__ import annotations

from pathlib import Path

from .data.captions import set_caption
from .data.dataset import CAPTION_FILES, METADATA_FILE, VIDEO_EXTENSIONS
from .data.dataset_config import DATASET_FILE, write_trigger_word
from .data.samples import plan_dataset, split_validation
from .data.thumbnails import thumbnail
from .errors import InputError
from .models import family
from .presets import check_capable, load_preset
from .safe_paths import data_root, is_inside, resolve_under
from .settings import RUN

MAX_THUMBNAILS = 200  # a larger folder lists every clip, with pictures for the first ones only


def _folder(folder: str) -> Path:
    path = resolve_under(data_root(), folder, "dataset folder")
    if not path.is_dir():
        raise InputError(f"dataset folder '{folder.strip()}' is a file; give the folder that holds the clips.")
    return path


def _kind(data_dir: Path) -> str:
    if (data_dir / METADATA_FILE).is_file():
        return f"dataset ({METADATA_FILE} + videos/)"
    listed = [name for name in CAPTION_FILES if (data_dir / name).is_file()]
    return f"videos captioned by {listed[0]}" if listed else "videos with .txt captions"


def _picture(path: Path | None, root: Path, budget: list[int]) -> tuple[str | None, float | None]:
    """(thumbnail PNG, fps) of a clip inside the root; (None, None) when it has none (outside, corrupt, over budget)."""
    if path is None or not path.is_file() or not is_inside(root, path) or budget[0] <= 0:
        return None, None
    budget[0] -= 1
    try:
        made = thumbnail(path)
    except InputError:
        return None, None
    return str(made.png), made.fps


def dataset_view(folder: str, preset: str) -> dict:
    """Each clip of `folder` (relative to the data root) as the preset's training run would take it.

    {"folder", "kind", "preset", "options" (the dataset options in force), "frames" (a window's length),
    "buckets" ("HxW" -> samples), "clips": [{"clip" (what set_caption takes), "file", "thumbnail" (PNG or
    None), "frames", "height", "width", "fps", "caption", "prompt" (as trained: with the trigger word),
    "bucket", "windows", "status" (train | validation | skipped), "reason"}]}."""
    root = data_root()
    data_dir = _folder(folder)
    spec = load_preset(preset)
    check_capable(spec, "length_extension")
    train = spec["training"]
    plan = plan_dataset(data_dir, family(spec), frames=train["extended_num_frames"],
                        base_frames=train["base_num_frames"], height=train["height"], width=train["width"],
                        negative_prompt=spec["generation"]["negative_prompt"], within=root, count_all=True)
    # the trainer holds out the last clips' first windows (a run's default num_validation_clips)
    _, held = split_validation(plan.samples, RUN["num_validation_clips"].default)
    held_ids = {s.video_id for s in held}
    by_metadata = (data_dir / METADATA_FILE).is_file()
    reasons = dict(plan.skipped)
    windows: dict[str, list] = {}
    for s in plan.samples:
        windows.setdefault(s.video_id, []).append(s)
    budget, rows = [MAX_THUMBNAILS], []
    for clip in plan.clips:
        samples = windows.get(clip.video_id, [])
        file = clip.path.relative_to(data_dir).as_posix() if clip.path.is_relative_to(data_dir) else clip.path.name
        png, fps = _picture(clip.path, root, budget)
        reason = reasons.get(clip.path.name) or reasons.get(file) or ""
        rows.append({
            "clip": clip.video_id if by_metadata else file, "file": file, "thumbnail": png, "frames": clip.frames,
            "height": clip.height, "width": clip.width, "fps": fps, "caption": clip.prompt,
            "prompt": samples[0].prompt if samples else "",
            "bucket": f"{samples[0].height}x{samples[0].width}" if samples else "", "windows": len(samples),
            "status": "skipped" if not samples else "validation" if clip.video_id in held_ids else "train",
            "reason": reason if not samples else "",
        })
    probed = {row["file"] for row in rows} | {Path(row["file"]).name for row in rows}
    for label, reason in plan.skipped:  # clips never probed: no caption, unreadable, outside the root
        if label in probed:
            continue
        path = data_dir / label if not Path(label).is_absolute() else None
        png, fps = _picture(path, root, budget)
        rows.append({"clip": label, "file": label, "thumbnail": png, "frames": None, "height": None, "width": None,
                     "fps": fps, "caption": "", "prompt": "", "bucket": "", "windows": 0, "status": "skipped",
                     "reason": reason})
    rows.sort(key=lambda r: r["file"])
    return {"folder": folder.strip(), "kind": _kind(data_dir), "preset": spec["name"], "options": plan.options,
            "frames": train["extended_num_frames"], "buckets": plan.buckets(), "clips": rows}


def dataset_caption(folder: str, clip: str, caption: str) -> dict:
    """Write one clip's caption in place (the .txt beside it, or its metadata.json entry); see engine.data.captions."""
    return set_caption(_folder(folder), clip, caption, data_root())


def dataset_trigger_word(folder: str, word: str) -> dict:
    """Set the folder's trigger word in its dataset.toml (empty: none); the folder's options after."""
    data_dir = _folder(folder)
    toml = data_dir / DATASET_FILE
    if toml.is_symlink() or toml.exists() and not is_inside(data_root(), toml):
        raise InputError(f"{DATASET_FILE} of this folder is a symlink; replace it with a plain file first.")
    return write_trigger_word(data_dir, word)


def dataset_folders(limit: int = 200) -> list[str]:
    """Folders under the data root (two levels deep) that hold a dataset or videos, relative to it, sorted."""
    root, found = data_root(), []
    if not root.is_dir():
        return []
    level = [root]
    for _ in range(2):
        level = sorted(p for parent in level for p in parent.iterdir()
                       if p.is_dir() and not p.name.startswith((".", "_")) and is_inside(root, p))
        for path in level:
            if (path / METADATA_FILE).is_file() or any(f.suffix.lower() in VIDEO_EXTENSIONS for f in path.iterdir()):
                found.append(path.relative_to(root).as_posix())
    return sorted(found)[:limit]
