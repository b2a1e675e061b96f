"""Where the engine keeps things on disk."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Built tiny models and other derived artefacts (`RADIAL_STUDIO_CACHE` overrides)."""
    root = os.environ.get("RADIAL_STUDIO_CACHE") or Path.home() / ".cache" / "radial-studio"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def outputs_dir() -> Path:
    """Videos and results written by one-shot actions (`RADIAL_STUDIO_OUTPUTS` overrides)."""
    path = Path(os.environ.get("RADIAL_STUDIO_OUTPUTS") or Path.cwd() / "outputs")
    path.mkdir(parents=True, exist_ok=True)
    return path
