"""What a run gives out: its LoRA files and its settings, and nothing else of its folder.

A download is asked for by run id, never by path: the files are found by fixed names in the run's own
folder (`final/`), and each must be a plain file inside it (a symlink out of the folder is not followed).
The settings come as a copy of `config.json` without the server's folders (`data_dir`, `output_dir`).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from ..jobs import RunDir, atomic_write_json, runs_root
from ..safe_paths import is_inside
from .training import run_dir

# The adapter as the trainer writes it (engine.lora.save_lora): the diffusers file (one per part of a
# two-expert model) and the ComfyUI export (one per part).
LORA_FILES = {"diffusers": ("pytorch_lora_weights.safetensors", "pytorch_lora_weights_*.safetensors"),
              "comfyui": ("lora_comfyui*.safetensors",)}
SERVER_FIELDS = ("data_dir", "output_dir")  # where the run read and wrote on this server: not given out


def exports_root() -> Path:
    """Where given-out copies are written (a private folder: no run id starts with '_')."""
    return runs_root() / "_exports"


def owned_run_dir(run_id: str) -> Path:
    """The run's folder, refused unless it is a real folder of the runs root (not a symlink to elsewhere)."""
    path = run_dir(run_id)
    if path.is_symlink() or not is_inside(runs_root(), path):
        raise InputError(f"run '{run_id}' is a link to a folder outside the runs folder; it is not handled here.")
    return path


def _plain_files(folder: Path, patterns: tuple[str, ...], inside: Path) -> list[Path]:
    found = {p for pattern in patterns for p in folder.glob(pattern)}
    return sorted(p for p in found if p.is_file() and not p.is_symlink() and is_inside(inside, p))


def exported_config(run_id: str) -> Path | None:
    """A copy of the run's config.json without server folders, named after the run; None when it has none."""
    config = RunDir(owned_run_dir(run_id)).config_path
    if not config.is_file() or config.is_symlink():
        return None
    try:
        values = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InputError(f"run '{run_id}': its config.json cannot be read, so its settings cannot be given out.") \
            from None
    if not isinstance(values, dict):
        raise InputError(f"run '{run_id}': its config.json holds no settings object.")
    out = exports_root() / run_id / f"{run_id}-config.json"
    atomic_write_json(out, {k: v for k, v in values.items() if k not in SERVER_FIELDS})
    return out


def run_downloads(run_id: str) -> dict:
    """The files of a run a user may download: {"files": [{"kind", "name", "path"}], "note"}.

    kinds: "diffusers" and "comfyui" (the final LoRA, once the run has finished) and "config" (its settings)."""
    path = owned_run_dir(run_id)
    files = []
    final = path / "final"
    if final.is_dir() and not final.is_symlink():
        for kind, patterns in LORA_FILES.items():
            files += [{"kind": kind, "name": p.name, "path": str(p)} for p in _plain_files(final, patterns, path)]
    note = "" if files else "No LoRA yet: a run writes its final LoRA when it finishes."
    config = exported_config(run_id)
    if config is not None:
        files.append({"kind": "config", "name": config.name, "path": str(config)})
    if not files:
        raise InputError(f"run '{run_id}' has nothing to download yet: no final LoRA and no config.json.")
    return {"run_id": run_id, "files": files, "note": note}
