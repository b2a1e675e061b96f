"""Bounds on what a user may hand the app: upload size and source frame size.

An upload is checked in the request from its size on disk and its video header only (nothing is
decoded in the app's process); the job decodes it, one frame at a time. The upload bound is
`RADIAL_STUDIO_MAX_UPLOAD_MB` (default 2048), also given to Gradio so it refuses bigger files
before they are written; the frame bound is fixed: 4096 x 4096 pixels (4K DCI and below).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError, InputError

DEFAULT_MAX_UPLOAD_MB = 2048
MAX_SOURCE_PIXELS = 4096 * 4096


def max_upload_mb() -> int:
    raw = os.environ.get("RADIAL_STUDIO_MAX_UPLOAD_MB", str(DEFAULT_MAX_UPLOAD_MB))
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"RADIAL_STUDIO_MAX_UPLOAD_MB={raw!r} is not a whole number; set the largest upload "
                          f"in megabytes (default {DEFAULT_MAX_UPLOAD_MB}).") from None
    if value < 1:
        raise ConfigError(f"RADIAL_STUDIO_MAX_UPLOAD_MB={value}: allow at least 1 MB.")
    return value


def check_upload_size(path: Path, name: str | None = None) -> None:
    """InputError naming the file when it is over the upload bound."""
    limit = max_upload_mb()
    size = path.stat().st_size
    if size > limit * 1024 * 1024:
        raise InputError(f"uploaded file '{name or path.name}' is {size / 2**20:.0f} MB; uploads may be at most "
                         f"{limit} MB (RADIAL_STUDIO_MAX_UPLOAD_MB). Trim or re-encode the clip.")


def check_source_size(name: str, height: int, width: int) -> None:
    """InputError when a source frame is over the bound (decoding it would take gigabytes)."""
    if height * width > MAX_SOURCE_PIXELS:
        raise InputError(f"video '{name}' is {width}x{height} (width x height); sources may have at most "
                         f"{MAX_SOURCE_PIXELS:,} pixels per frame (4096x4096). Downscale it first, e.g. "
                         "ffmpeg -i in.mp4 -vf scale=-2:1080 out.mp4.")
