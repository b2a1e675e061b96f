"""What a run trains on: each clip's frame windows (engine.data.extraction) at its bucket's size.

A sample is one window of `frames` consecutive frames of one clip, resized and centre-cropped to
the clip's bucket (engine.data.buckets). Every window of a run has the same length (the run's
extended_num_frames; the base pass takes its first base_num_frames), so a batch of one bucket
stacks. A clip with no whole window is skipped, and the reason says how short it is. The folder's
`trigger_word` (dataset.toml) is put before every caption here, so the latent cache (keyed by the
prompt) and the dataset view (engine.datasets_view) see the prompt the run trains on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .buckets import clip_size
from .dataset_config import dataset_options
from .extraction import frame_windows
from .sources import SourceClip, find_clips


@dataclass(frozen=True)
class Sample:
    video_id: str  # the clip's
    path: Path
    prompt: str
    negative_prompt: str
    start: int  # first frame of the window
    frames: int  # window length
    base_frames: int
    height: int  # the bucket
    width: int

    @property
    def name(self) -> str:
        return self.video_id if self.start == 0 else f"{self.video_id}@{self.start}"


@dataclass
class DatasetPlan:
    samples: list[Sample]  # ordered by clip id, then window
    skipped: list[tuple[str, str]]  # (file, reason)
    options: dict  # the dataset options used (engine.settings.DATASET)
    clips: list[SourceClip] = field(default_factory=list)  # every clip probed (kept or too short)

    def clip_ids(self) -> list[str]:
        return sorted({s.video_id for s in self.samples})

    def buckets(self) -> dict[str, int]:
        """Samples per bucket, "HxW" (height x width) -> count."""
        counts: dict[str, int] = {}
        for s in self.samples:
            counts[f"{s.height}x{s.width}"] = counts.get(f"{s.height}x{s.width}", 0) + 1
        return counts


def with_trigger(caption: str, trigger_word: str) -> str:
    """The prompt trained on: 'trigger, caption', unless the caption already starts with the trigger word."""
    word = trigger_word.strip()
    if not word or caption.startswith(word):
        return caption
    return f"{word}, {caption}"


def plan_samples(clips: list[SourceClip], *, frames: int, base_frames: int, height: int, width: int, multiple: int,
                 options: dict) -> tuple[list[Sample], list[tuple[str, str]]]:
    """(samples, skipped clips with the reason) for clips probed to at least `frames` frames."""
    samples, skipped = [], []
    for clip in sorted(clips, key=lambda c: c.video_id):
        starts = frame_windows(clip.frames, frames, options["frame_extraction"], stride=options["frame_stride"],
                               sample=options["frame_sample"])
        if not starts:
            skipped.append((clip.path.name, f"too short: {clip.frames} frames; needs at least {frames} "
                                             "(the run's extended_num_frames)"))
            continue
        bucket = clip_size(clip.height, clip.width, height, width, multiple, options["enable_bucket"],
                           options.get("bucket_no_upscale", False))
        prompt = with_trigger(clip.prompt, options.get("trigger_word", ""))
        samples.extend(Sample(clip.video_id, clip.path, prompt, clip.negative_prompt, start, frames, base_frames,
                              *bucket) for start in starts)
    return samples, skipped


def plan_dataset(data_dir: str | os.PathLike, fam, *, frames: int, base_frames: int, height: int, width: int,
                 negative_prompt: str = "", overrides: dict | None = None, within: Path | None = None,
                 count_all: bool = False) -> DatasetPlan:
    """The samples of a data folder for a run of `frames` frames at height x width (its bucket area).

    `overrides`: a run's dataset fields (None: the folder's dataset.toml, else the defaults). `count_all`:
    count every frame of each clip even where the mode needs only the first window (the dataset view shows
    lengths); the samples are the same."""
    options = dataset_options(data_dir, overrides)
    # head needs only the first window's frames counted; the other modes (and the view) count them all
    limit = frames if options["frame_extraction"] == "head" and not count_all else None
    clips, skipped = find_clips(data_dir, fam, negative_prompt=negative_prompt, max_frames=limit, within=within)
    samples, short = plan_samples(clips, frames=frames, base_frames=base_frames, height=height, width=width,
                                  multiple=fam.size_multiple, options=options)
    return DatasetPlan(samples, skipped + short, options, clips)


def split_validation(samples: list[Sample], num_clips: int) -> tuple[list[Sample], list[Sample]]:
    """(training samples, held-out samples): the last `num_clips` clips by id give their first window to
    validation and nothing to training (no window of a held-out clip is trained on)."""
    ids = sorted({s.video_id for s in samples})
    held = set(ids[len(ids) - num_clips:]) if num_clips else set()
    train = [s for s in samples if s.video_id not in held]
    val, seen = [], set()
    for s in samples:
        if s.video_id in held and s.video_id not in seen:
            val.append(s)
            seen.add(s.video_id)
    return train, val
