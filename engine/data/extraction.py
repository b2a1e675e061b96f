"""Which windows of consecutive frames a clip gives, by frame_extraction mode (musubi-tuner's names).

A window is `length` consecutive frames (the run's extended_num_frames; its first base_num_frames
are the base clip); it is named by its first frame. For a clip of `count` frames:
  head     the first window only;
  chunk    windows one after another, not overlapping (frames past the last whole window unused);
  slide    a window every `stride` frames;
  uniform  `sample` windows with evenly spaced starts, the first at 0 and the last ending at the
           clip's end (fewer when the clip has fewer distinct windows).
A clip shorter than `length` gives none.
"""

from __future__ import annotations


def frame_windows(count: int, length: int, mode: str, *, stride: int = 1, sample: int = 1) -> list[int]:
    """The first frame of each window, ascending."""
    last = count - length  # the latest start that still fits
    if last < 0:
        return []
    if mode == "head":
        return [0]
    if mode == "chunk":
        return list(range(0, last + 1, length))
    if mode == "slide":
        return list(range(0, last + 1, stride))
    if mode == "uniform":
        if sample == 1:
            return [0]
        return sorted({i * last // (sample - 1) for i in range(sample)})
    raise ValueError(f"unknown frame_extraction mode {mode!r}")  # the settings check the choice first
