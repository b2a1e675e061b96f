"""Aspect-ratio buckets: frame sizes of about the run's pixel area, one per aspect ratio.

As musubi-tuner's BucketSelector does: for each side length s from half the square side up to the
square side (in steps of the family's size multiple), the bucket s x (area / s rounded down to the
multiple), in both orientations, so aspect ratios run from 1:1 to about 4:1. The run's own
height x width is always a bucket, so a clip of exactly that size is never resized. A clip goes to
the bucket whose aspect ratio is nearest its own (on a log scale, so 2:1 and 1:2 are equally far
from 1:1), then is scaled to cover it and centre-cropped (engine.video.resize_center_crop).
"""

from __future__ import annotations

import math


def bucket_sizes(height: int, width: int, multiple: int) -> list[tuple[int, int]]:
    """Every (height, width) bucket for a run of height x width, sides multiples of `multiple`, sorted."""
    area = height * width
    square = math.isqrt(area)
    smallest = max(multiple, square // 2 // multiple * multiple)
    sizes = {(height, width)}
    for side in range(smallest, square + 1, multiple):
        other = area // side // multiple * multiple
        if other >= multiple:
            sizes.update({(side, other), (other, side)})
    return sorted(sizes)


def nearest_bucket(height: int, width: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest height x width's (ties: the first in the list)."""
    aspect = math.log(width / height)
    return min(buckets, key=lambda b: abs(math.log(b[1] / b[0]) - aspect))


def clip_size(height: int, width: int, run_height: int, run_width: int, multiple: int,
              enable_bucket: bool, no_upscale: bool = False) -> tuple[int, int]:
    """The frame size a clip of height x width is trained at.

    `no_upscale` (musubi-tuner's bucket_no_upscale): a clip of fewer pixels than the run's area keeps its own
    size, each side rounded down to the multiple (a crop of at most multiple - 1 pixels), rather than being
    scaled up to a bucket; larger clips go to their bucket as usual."""
    if not enable_bucket:
        return run_height, run_width
    if no_upscale and height * width < run_height * run_width:
        return max(multiple, height // multiple * multiple), max(multiple, width // multiple * multiple)
    return nearest_bucket(height, width, bucket_sizes(run_height, run_width, multiple))
