"""Edit one clip's caption where training reads it: the .txt beside the clip, or its metadata.json entry.

Only those two places are written (a folder captioned by captions.csv / captions.json is refused: that
file is the user's to edit), and only inside the data root. A caption is written atomically (a
temporary sibling, then os.replace), so a run reading the folder never sees half a caption, and no
other file changes.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..errors import InputError
from ..safe_paths import is_inside
from .dataset import CAPTION_FILES, METADATA_FILE, VIDEO_EXTENSIONS

MAX_CAPTION_CHARS = 10_000


def check_caption(caption) -> str:
    """The caption as it is stored (surrounding white space dropped); InputError when it cannot be one."""
    if not isinstance(caption, str) or not caption.strip():
        raise InputError("caption is empty; describe the clip (what it shows, how things move).")
    if "\x00" in caption:
        raise InputError("caption holds a NUL character; write plain text.")
    if len(caption) > MAX_CAPTION_CHARS:
        raise InputError(f"caption has {len(caption)} characters; at most {MAX_CAPTION_CHARS} are allowed.")
    return caption.strip()


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) in one step, keeping its permission bits (0644 for a new file)."""
    mode = path.stat().st_mode & 0o777 if path.is_file() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def set_caption(data_dir: Path, clip: str, caption: str, within: Path) -> dict:
    """Write `caption` for `clip` of `data_dir` (a folder inside `within`, the data root).

    `clip`: a metadata.json dataset's video_id, or a video's file name in a folder of videos with .txt
    captions (as the dataset view lists them). Returns {"clip", "file" (written, relative to the folder),
    "caption"}."""
    text = check_caption(caption)
    if not isinstance(clip, str) or not clip.strip():
        raise InputError("clip is empty; pick a clip of the dataset (its file name, or its video_id).")
    clip = clip.strip()
    if (data_dir / METADATA_FILE).is_file():
        return _set_metadata_prompt(data_dir / METADATA_FILE, clip, text, within)
    listed = [name for name in CAPTION_FILES if (data_dir / name).is_file()]
    if listed:
        raise InputError(f"the captions of this folder come from {listed[0]}; edit that file (captions are "
                         "edited in place only as .txt files beside the clips or in metadata.json).")
    return _set_txt_caption(data_dir, clip, text, within)


def _set_txt_caption(data_dir: Path, clip: str, text: str, within: Path) -> dict:
    if "/" in clip or "\\" in clip or clip.startswith(".") or "\x00" in clip:
        raise InputError(f"clip '{clip}' is not a file name of this folder; give the video's name, e.g. cat.mp4.")
    video = data_dir / clip
    if video.suffix.lower() not in VIDEO_EXTENSIONS or not video.is_file():
        raise InputError(f"no clip '{clip}' in this folder; give the name of one of its videos "
                         f"({', '.join(VIDEO_EXTENSIONS)}), as the dataset view lists them.")
    txt = video.with_suffix(".txt")
    if not is_inside(within, video) or (txt.exists() or txt.is_symlink()) and not is_inside(within, txt):
        raise InputError(f"clip '{clip}' or its caption leads outside the data root (a symlink); it is not written.")
    if txt.is_symlink():  # os.replace would swap the link for a file: refuse rather than change its meaning
        raise InputError(f"the caption of '{clip}' ({txt.name}) is a symlink; replace it with a plain file first.")
    write_text_atomic(txt, text + "\n")
    return {"clip": clip, "file": txt.name, "caption": text}


def _set_metadata_prompt(meta: Path, clip: str, text: str, within: Path) -> dict:
    if not is_inside(within, meta) or meta.is_symlink():
        raise InputError(f"{METADATA_FILE} of this folder leads outside the data root or is a symlink; "
                         "it is not written.")
    try:
        entries = json.loads(meta.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{METADATA_FILE} is not valid UTF-8 JSON ({type(err).__name__}); fix it "
                         "(`python -m engine data validate`) before editing captions.") from None
    found = [e for e in entries if isinstance(e, dict) and e.get("video_id") == clip] \
        if isinstance(entries, list) else []
    if not found:
        raise InputError(f"no clip with video_id '{clip}' in {METADATA_FILE}; give the video_id of one of its "
                         "entries, as the dataset view lists them.")
    if len(found) > 1:
        raise InputError(f"{METADATA_FILE} has {len(found)} entries with video_id '{clip}'; make the ids unique first.")
    found[0]["prompt"] = text
    write_text_atomic(meta, json.dumps(entries, indent=2, ensure_ascii=False) + "\n")
    return {"clip": clip, "file": METADATA_FILE, "caption": text}
