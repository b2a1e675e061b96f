"""Read and write mp4 files through ffmpeg (imageio-ffmpeg). Frames are uint8 arrays [F, H, W, 3]."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError


def to_uint8(frames) -> np.ndarray:
    """Float frames in [0, 1] (or uint8) -> uint8 [F, H, W, 3]."""
    arr = np.asarray(frames)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise InputError(f"frames must have shape [frames, height, width, 3], got {arr.shape}.")
    return arr


def _encode(frames, path: str | os.PathLike, fps: float, *, codec: str, pix_fmt_out: str,
            output_params: list[str]) -> Path:
    """Frames straight to ffmpeg (imageio-ffmpeg), one output frame per input frame, written atomically.

    Not moviepy's writer: it samples frames by time and drops one at rates like 24 fps (65 -> 64).
    """
    import imageio_ffmpeg

    arr = to_uint8(frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=path.suffix or ".mp4", dir=path.parent, prefix=f".{path.stem}-")
    os.close(fd)
    try:
        writer = imageio_ffmpeg.write_frames(
            tmp, (arr.shape[2], arr.shape[1]), fps=float(fps), codec=codec, pix_fmt_in="rgb24",
            pix_fmt_out=pix_fmt_out, quality=None, macro_block_size=1, ffmpeg_log_level="error",
            output_params=output_params,
        )
        writer.send(None)  # start ffmpeg
        for frame in arr:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_mp4(frames, path: str | os.PathLike, fps: float = 16) -> Path:
    """Write frames to an H.264 mp4 (yuv420p: plays in browsers; lossy). Written atomically."""
    height, width = to_uint8(frames).shape[1:3]
    if height % 2 or width % 2:
        raise InputError(f"frames are {height}x{width}; H.264 (yuv420p) needs even sizes.")
    return _encode(frames, path, fps, codec="libx264", pix_fmt_out="yuv420p", output_params=["-crf", "18"])


def write_lossless(frames, path: str | os.PathLike, fps: float = 16) -> Path:
    """Write frames losslessly (H.264 in RGB, qp 0, .mkv): decoding gives back the exact pixels.

    For metrics that must be recomputed later; browsers do not play it (use write_mp4 for viewing).
    """
    return _encode(frames, path, fps, codec="libx264rgb", pix_fmt_out="rgb24",
                   output_params=["-qp", "0", "-preset", "veryfast"])


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header says, read without decoding a frame into this process."""

    height: int
    width: int
    fps: float
    duration: float | None  # seconds; None where the container does not say

    @property
    def frames_estimate(self) -> int | None:
        """duration x fps, rounded: headers are often a frame off (or absent), so only a hint."""
        if self.duration and self.fps > 0:
            return int(round(self.duration * self.fps))
        return None


def _open(path: Path, name: str | None = None):
    """(header meta, frame reader) from imageio-ffmpeg; InputError (with `.detail`) naming the file (or `name`)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(reader)
        meta["size"][1]
    except Exception as err:  # header parsing fails in many ways for broken files
        reader.close()
        text = str(err)
        lines = text.strip().splitlines()
        if "Stream #" in text and "Video:" not in text:  # ffmpeg found streams, none of them video
            detail = "no video stream: the file holds only audio (or other data)"
        else:
            detail = f"{type(err).__name__}{': ' + lines[-1][:120] if lines else ''}"
        problem = InputError(f"video file '{name or path}' could not be decoded ({detail}); is it a valid video?")
        problem.detail = detail
        raise problem from None
    return meta, reader


def probe_video(path: str | os.PathLike, name: str | None = None) -> VideoInfo:
    """The header of a video (size, frame rate, duration): ffmpeg reads the container, no frame is decoded here.

    What the app checks in a request; decoding happens in the job. Errors name `name` (default: the path).
    """
    meta, reader = _open(Path(path), name)
    reader.close()
    width, height = meta["size"]
    duration = meta.get("duration")
    return VideoInfo(int(height), int(width), float(meta.get("fps") or 0),
                     float(duration) if isinstance(duration, (int, float)) and duration > 0 else None)


def frame_stream(path: Path):
    """(fps, frame iterator, close) for a video, decoded by imageio-ffmpeg.

    Not moviepy: its reader derives the frame count from the duration ffmpeg prints with two
    decimals, so e.g. 65 frames at 16 fps read back as 64. ffmpeg applies rotation metadata
    and the reported size is the rotated one. Raises InputError (with `.detail`) for
    unreadable files.
    """
    meta, reader = _open(Path(path))
    fps = float(meta.get("fps") or 0)
    width, height = meta["size"]

    def frames():
        for raw in reader:
            yield np.frombuffer(raw, np.uint8).reshape(height, width, 3)

    return fps, frames(), reader.close


def resize_center_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale uint8 [F, H, W, 3] to cover height x width (aspect kept, antialiased), then crop the centre."""
    import torch
    import torch.nn.functional as F

    h, w = frames.shape[1:3]
    if (h, w) == (height, width):
        return frames
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    x = torch.from_numpy(frames if frames.flags.writeable else frames.copy()).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    x = x[:, :, top:top + height, left:left + width]
    return x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def read_mp4(path: str | os.PathLike, max_frames: int | None = None,
             size: Callable[[int, int], tuple[int, int]] | None = None, skip: int = 0) -> tuple[np.ndarray, float]:
    """Decode every frame (or the first `max_frames`) -> (uint8 [F, H, W, 3], fps). InputError if unreadable.

    `size(height, width) -> (h, w)`: resize + centre-crop each frame as it arrives, so memory holds one
    source frame, not the whole source clip (a 4K upload stays small). `skip`: frames dropped first (a window
    later in the clip); they are decoded, never kept.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"video file '{path}' does not exist.")
    fps, stream, close = frame_stream(path)
    out, target, seen = [], None, 0
    try:
        for frame in stream:
            seen += 1
            if seen <= skip:
                continue
            if size is not None:
                target = target or size(*frame.shape[:2])
                frame = resize_center_crop(frame[None], *target)[0]
            out.append(frame)
            if max_frames is not None and len(out) >= max_frames:
                break
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"video file '{path}' is corrupt: decoding failed after {len(out)} frames "
                         f"({type(err).__name__}).") from None
    finally:
        close()
    if not out:
        raise InputError(f"video file '{path}' has no frames" + (f" after its first {skip}." if skip else "."))
    return np.stack(out), fps


MIN_LABEL_PX = 8  # the smallest font size a label shrinks to before it wraps


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow: fixed-size bitmap font
        return ImageFont.load_default()


def _text_width(text: str, font) -> int:
    from PIL import Image, ImageDraw

    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    return box[2] - box[0]


def label_layout(text: str, width: int, size: int) -> tuple[int, list[str]]:
    """(font size, lines) that fit `text` in `width` pixels with a 2-pixel margin each side: the preferred
    size shrunk as far as MIN_LABEL_PX, then words wrapped onto lines (a small panel names its video whole)."""
    room = max(1, width - 4)
    for px in range(size, MIN_LABEL_PX - 1, -1):
        if _text_width(text, _font(px)) <= room:
            return px, [text]
    px, font, lines = MIN_LABEL_PX, _font(MIN_LABEL_PX), []
    for word in text.split():
        if lines and _text_width(f"{lines[-1]} {word}", font) <= room:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return px, lines


def _label_strip(text: str, width: int, height: int, size: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (20, 20, 20))
    draw = ImageDraw.Draw(img)
    px, lines = label_layout(text, width, size)
    font, line_h = _font(px), px + 2
    y0 = max(0, (height - line_h * len(lines)) // 2)
    for i, line in enumerate(lines):
        box = draw.textbbox((0, 0), line, font=font)
        x = max(2, (width - (box[2] - box[0])) // 2 - box[0])
        draw.text((x, y0 + i * line_h - box[1]), line, fill=(235, 235, 235), font=font)
    return np.asarray(img)


def side_by_side(videos: list, labels: list[str], gap: int = 4) -> np.ndarray:
    """Compose videos left to right with a label below each, played in sync.

    Labels go below the frames, where a player's own overlays (Gradio's label badge sits top-left) do
    not cover them; a label too long for its panel shrinks, then wraps. Videos may differ in length
    (a shorter one holds its last frame) and size (each is centred on a common height). Returns uint8
    frames [F, H, W, 3].
    """
    if len(videos) != len(labels) or not videos:
        raise InputError("side_by_side needs one label per video and at least one video.")
    clips = [to_uint8(v) for v in videos]
    n = max(c.shape[0] for c in clips)
    h = max(c.shape[1] for c in clips)
    strip_h = max(14, min(32, h // 6))
    size = max(10, strip_h * 2 // 3)
    layouts = [label_layout(label, c.shape[2], size) for c, label in zip(clips, labels)]
    strip_h = max([strip_h] + [(px + 2) * len(lines) + 2 for px, lines in layouts])  # room for wrapped labels
    columns = []
    for clip, label in zip(clips, labels):
        f, ch, cw, _ = clip.shape
        col = np.zeros((n, h + strip_h, cw, 3), np.uint8)
        col[:, h:] = _label_strip(label, cw, strip_h, size)
        top = (h - ch) // 2
        col[:f, top:top + ch] = clip
        col[f:, top:top + ch] = clip[-1]  # hold the last frame
        columns.append(col)
        columns.append(np.zeros((n, strip_h + h, gap, 3), np.uint8))
    out = np.concatenate(columns[:-1], axis=2)
    # H.264 with yuv420p needs even sizes.
    return out[:, : out.shape[1] // 2 * 2, : out.shape[2] // 2 * 2]
