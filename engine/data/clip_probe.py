"""How many frames a clip has (up to a limit) and its frame size, decoded once per file version.

Dataset validation needs, for every clip, the number of decodable frames (at least
`extended_frames`; all of them where a run takes several windows of a clip) and the frame size.
Counting frames exactly means decoding them (container headers often carry no frame count, or a
wrong one), which for thousands of clips takes longer
than a short training run. So the answer is kept in a small JSON file under the engine cache,
keyed by the file's resolved path, size, modification time (ns) and inode plus the frame limit:
editing or replacing a clip gives a new key, and an unchanged dataset validates without decoding.
Failures are not cached (a broken file is decoded, and reported, every time).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

from ..paths import cache_dir
from ..errors import InputError
from ..video import frame_stream

CACHE_FILE = "clip_probes.json"
MAX_ENTRIES = 50_000  # oldest entries go first; a few MB of JSON at most
_lock = threading.Lock()


def _key(path: Path, max_frames: int) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{max_frames}"


def _count_frames(path: Path, max_frames: int | None) -> list[int]:
    """[frames, height, width], decoding one frame at a time (a long clip is counted, never held)."""
    if not path.is_file():
        raise InputError(f"video file '{path}' does not exist.")
    _, stream, close = frame_stream(path)
    count, shape = 0, None
    try:
        for frame in stream:
            count, shape = count + 1, shape or frame.shape
            if max_frames is not None and count >= max_frames:
                break
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"video file '{path}' is corrupt: decoding failed after {count} frames "
                         f"({type(err).__name__}).") from None
    finally:
        close()
    if not count:
        raise InputError(f"video file '{path}' has no frames.")
    return [count, int(shape[0]), int(shape[1])]


class ProbeCache:
    """Probe results for one validation pass: `probe` per clip, then `save` once."""

    def __init__(self, file: Path | None = None):
        self.file = file or cache_dir() / CACHE_FILE
        self.entries: dict[str, list[int]] = {}
        self.dirty = False
        try:
            loaded = json.loads(self.file.read_text())
            if isinstance(loaded, dict):
                self.entries = loaded
        except (OSError, ValueError):
            pass  # missing or unreadable cache: start empty

    def probe(self, path: Path, max_frames: int | None) -> tuple[int, int, int]:
        """(frames decoded, at most max_frames (None: all); height; width). InputError if unreadable."""
        key = _key(path, max_frames)
        hit = self.entries.get(key)
        if isinstance(hit, list) and len(hit) == 3:
            return tuple(hit)
        found = _count_frames(path, max_frames)
        self.entries.pop(key, None)
        self.entries[key] = found  # insertion order = age, for trimming
        self.dirty = True
        return tuple(found)

    def save(self) -> None:
        """Write atomically; a concurrent writer (another rank) may win, which only costs a re-decode."""
        if not self.dirty:
            return
        while len(self.entries) > MAX_ENTRIES:
            self.entries.pop(next(iter(self.entries)))
        with _lock:
            fd, tmp = tempfile.mkstemp(dir=self.file.parent, prefix=".clip_probes.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(self.entries, f)
                os.replace(tmp, self.file)
            except OSError:
                Path(tmp).unlink(missing_ok=True)  # a read-only cache only loses the speed-up
        self.dirty = False
