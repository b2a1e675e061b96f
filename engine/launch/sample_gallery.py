"""Every sample video a training run made, by validation step and prompt (the Train tab's gallery)."""

from __future__ import annotations

import json
import re

from ..jobs import RunDir
from ..workers.trainer import SAMPLE_PROMPTS_FILE
from .training import run_dir


def sample_gallery(run_id: str) -> list[dict]:
    """[{step, prompt, seed, steps, base, extended}] over all of the run's validation steps, oldest first.

    A step folder from before sample prompts existed (no prompts.json) gives its one pair, prompt None."""
    run = RunDir(run_dir(run_id))
    if not run.samples_dir.is_dir():
        return []
    out = []
    for folder in sorted(p for p in run.samples_dir.glob("step-*") if p.is_dir() and re.fullmatch(r"step-\d+", p.name)):
        step = int(folder.name.split("-")[1])
        try:
            listing = json.loads((folder / SAMPLE_PROMPTS_FILE).read_text())
        except (OSError, ValueError):  # older runs, or the file is being written: the pair on disk
            listing = [{"prompt": None, "base": "base.mp4", "extended": "extended.mp4"}]
        for entry in listing:
            videos = {k: folder / entry[k] for k in ("base", "extended") if (folder / entry.get(k, "")).is_file()}
            if videos:
                out.append({"step": step, "prompt": entry.get("prompt"), "seed": entry.get("seed"),
                            "steps": entry.get("steps"), **{k: str(v) for k, v in videos.items()}})
    return out
