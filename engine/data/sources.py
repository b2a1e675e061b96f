"""The clips of a data folder as they are: a dataset (metadata.json + videos/) or captioned videos.

A folder without metadata.json is read like `data convert`'s input (same-name .txt captions, or
captions.csv / captions.json; engine.data.dataset), so people train on the videos they have,
unconverted. Each clip is probed once per file version (engine.data.clip_probe): its frame count
(up to a limit) and frame size. A metadata.json dataset is validated as ever (every problem is an
error: it was written by a tool); in a folder of videos a clip that cannot be used is skipped,
with the reason, and the others are kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .clip_probe import ProbeCache
from .dataset import METADATA_FILE, VIDEO_EXTENSIONS, caption_pairs, caption_problem, load_dataset, safe_id


@dataclass(frozen=True)
class SourceClip:
    video_id: str
    path: Path
    prompt: str
    negative_prompt: str
    frames: int  # frames decoded, at most the limit asked for
    height: int  # of the stored frames
    width: int


def find_clips(data_dir: str | os.PathLike, fam, *, negative_prompt: str = "", max_frames: int | None = None,
               within: Path | None = None) -> tuple[list[SourceClip], list[tuple[str, str]]]:
    """(usable clips, skipped (file, reason)) of a data folder; frames counted up to `max_frames` (None: all).

    `negative_prompt` is the one of clips without their own (a folder of videos). With `within`, files that
    lead outside it are not read. InputError for a missing folder, a metadata.json with problems, or a folder
    with no video at all."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: dataset folder does not exist.")
    probes = ProbeCache()
    try:
        if (data_dir / METADATA_FILE).is_file():
            return _from_metadata(data_dir, fam, probes, max_frames, within), []
        return _from_videos(data_dir, probes, negative_prompt, max_frames, within)
    finally:
        probes.save()


def _from_metadata(data_dir: Path, fam, probes: ProbeCache, max_frames: int | None, within) -> list[SourceClip]:
    clips = []
    for e in load_dataset(data_dir, fam, within):  # lists every problem of the folder at once
        count, height, width = probes.probe(e.path, max_frames)
        clips.append(SourceClip(e.video_id, e.path, e.prompt, e.negative_prompt, count, height, width))
    return clips


def _from_videos(data_dir: Path, probes: ProbeCache, negative_prompt: str, max_frames: int | None,
                 within) -> tuple[list[SourceClip], list[tuple[str, str]]]:
    if not any(p.suffix.lower() in VIDEO_EXTENSIONS for p in data_dir.iterdir() if p.is_file()) and \
            not any((data_dir / name).is_file() for name in ("captions.csv", "captions.json")):
        raise InputError(f"{data_dir} holds no {METADATA_FILE} and no videos ({', '.join(VIDEO_EXTENSIONS)}): a data "
                         "folder is a dataset (`python -m engine data create` or `data convert`) or videos with "
                         "captions (a same-name .txt, or captions.csv / captions.json).")
    pairs, skipped, caption_file = caption_pairs(data_dir, within)
    clips, taken = [], set()
    for label, path, caption in pairs:
        problem = caption_problem(caption, path, caption_file)
        if problem:
            skipped.append((label, problem))
            continue
        try:
            count, height, width = probes.probe(path, max_frames)
        except InputError as err:
            skipped.append((label, f"unreadable or corrupt video ({getattr(err, 'detail', None) or err})"))
            continue
        clips.append(SourceClip(safe_id(path.stem, taken), path, caption.strip(), negative_prompt, count, height,
                                width))
    return clips, skipped
