"""A small PNG of a clip's first frame, for the dataset view; made once per file version.

The PNG goes to `<outputs>/thumbnails/` (a folder the app serves images from; the clip itself is
never served) under a hash of the clip's resolved path, size, modification time and inode, so an
edited clip gets a new thumbnail and no server path shows in the name. The clip's frame rate rides
along in the PNG's text chunk: the view reads it back without starting ffmpeg again.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..paths import outputs_dir
from ..video import frame_stream

THUMBNAIL_DIR = "thumbnails"
MAX_SIDE = 160  # px: a row of the view, not a preview to judge quality by


@dataclass(frozen=True)
class Thumbnail:
    png: Path
    fps: float  # of the stored clip (0 where the container does not say)


def _name(video: Path, max_side: int) -> str:
    st = video.stat()
    key = f"{video.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{max_side}"
    return hashlib.sha256(key.encode()).hexdigest()[:24] + ".png"


def thumbnail(video: Path, max_side: int = MAX_SIDE) -> Thumbnail:
    """The clip's first-frame PNG (made when missing); InputError when the clip cannot be decoded."""
    from PIL import Image, PngImagePlugin

    folder = outputs_dir() / THUMBNAIL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / _name(video, max_side)
    if png.is_file():
        try:
            with Image.open(png) as im:
                return Thumbnail(png, float(im.text.get("fps", 0)))
        except (OSError, ValueError):
            pass  # a damaged thumbnail: make it again
    fps, frames, close = frame_stream(video)
    try:
        first = next(frames, None)
    except Exception as err:  # a corrupt stream fails in many ways
        raise InputError(f"video file '{video.name}' is corrupt: its first frame does not decode "
                         f"({type(err).__name__}).") from None
    finally:
        close()
    if first is None:
        raise InputError(f"video file '{video.name}' has no frames.")
    image = Image.fromarray(first)
    image.thumbnail((max_side, max_side))
    info = PngImagePlugin.PngInfo()
    info.add_text("fps", f"{fps:g}")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".thumb-", suffix=".tmp")
    os.close(fd)
    try:
        image.save(tmp, format="PNG", pnginfo=info, optimize=True)
        os.replace(tmp, png)  # a reader never sees half a PNG
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return Thumbnail(png, fps)
