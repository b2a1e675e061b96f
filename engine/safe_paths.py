"""User-supplied file names and folders, kept inside the places they belong."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import InputError


def data_root() -> Path:
    """The only folder server-side dataset paths may point into (`RADIAL_STUDIO_DATA_ROOT`, default ./data)."""
    return Path(os.environ.get("RADIAL_STUDIO_DATA_ROOT") or Path.cwd() / "data").resolve()


def sanitize_filename(name: str, taken: set[str] | None = None) -> str:
    """A safe file name from an uploaded one: letters, digits, '.', '_' and '-', no leading dot, unique."""
    base = Path(str(name).replace("\\", "/")).name
    stem, suffix = os.path.splitext(base)
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("._-")[:80] or "file"
    suffix = re.sub(r"[^A-Za-z0-9]", "", suffix)[:8].lower()
    candidate = f"{stem}.{suffix}" if suffix else stem
    if taken is not None:
        n = 1
        while candidate in taken:
            n += 1
            candidate = f"{stem}_{n}.{suffix}" if suffix else f"{stem}_{n}"
        taken.add(candidate)
    return candidate


def resolve_under(root: Path, user_path: str, what: str = "folder") -> Path:
    """`root / user_path`, refusing absolute paths, '..' and symlinks that lead outside `root`."""
    if not isinstance(user_path, str) or not user_path.strip():
        raise InputError(f"{what} path is empty; give a path relative to {root}.")
    raw = user_path.strip()
    if "\x00" in raw:
        raise InputError(f"{what} path contains a NUL character; give a plain path relative to the data root.")
    if os.path.isabs(raw) or raw.startswith("~"):
        raise InputError(f"{what} '{raw}' is an absolute path; give a path relative to the data root {root}.")
    if ".." in Path(raw).parts:
        raise InputError(f"{what} '{raw}' contains '..'; give a path inside the data root {root}.")
    root = root.resolve()
    candidate = root / raw
    resolved = candidate.resolve()
    if resolved != root and root not in resolved.parents:
        raise InputError(f"{what} '{raw}' leads outside the data root {root} (through a symlink); it is not allowed.")
    if not resolved.exists():
        raise InputError(f"{what} '{raw}' does not exist under the data root {root}.")
    return resolved


def is_inside(root: Path, path: Path) -> bool:
    """Whether `path`, with every symlink resolved, lies in `root` (resolved too)."""
    root, resolved = Path(root).resolve(), Path(path).resolve()
    return resolved == root or root in resolved.parents


def check_inside(root: Path | None, path: Path, what: str) -> Path:
    """`path` when `root` is None or `path` resolves inside it; InputError naming `what` otherwise."""
    if root is not None and not is_inside(root, path):
        raise InputError(f"{what} leads outside the data root (an absolute path or a symlink); it is not allowed.")
    return path
