"""Training checkpoints: LoRA, optimizer, scheduler, RNG states and step, written atomically.

A checkpoint is a folder `checkpoints/step-000123/` that is complete or absent: it is written
under a temporary name and renamed, so a crash mid-write leaves the previous one intact.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "state.json"


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if re.fullmatch(r"step-\d+", p.name) and (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(root: Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def save_checkpoint(root: Path, step: int, *, transformer, family, optimizer, lr_scheduler, state: dict,
                    keep: int, gathered: tuple[dict, dict] | None = None) -> Path:
    """`gathered`: (LoRA state, optimizer state) of a sharded model, gathered on every rank beforehand
    (`gather_training_state`); this then only writes."""
    from .lora import save_lora

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    lora_state, optimizer_state = gathered or (None, optimizer.state_dict())
    save_lora(transformer, tmp / "lora", family, comfy=False, state=lora_state)
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(lr_scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(_rng_state(), tmp / "rng.pt")
    # state.json last: its presence marks the folder complete.
    (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read back whole; the message names the bad file."""


def read_checkpoint(path: Path) -> dict:
    """Every file of a checkpoint, read and checked before anything is applied (CheckpointError naming the file)."""
    from safetensors.torch import load_file

    from .lora import DIFFUSERS_WEIGHT_NAME

    out = {}

    def read(name, loader):
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path.name}/{name} is missing")
        try:
            return loader(file)
        except Exception as err:  # noqa: BLE001 - any failure to read means the file is damaged
            raise CheckpointError(f"{path.name}/{name} is damaged ({type(err).__name__}: {str(err)[:200]})") from None

    lora = read(f"lora/{DIFFUSERS_WEIGHT_NAME}", lambda f: load_file(str(f)))
    if not lora or not all(torch.isfinite(t).all() for t in lora.values()):
        raise CheckpointError(f"{path.name}/lora/{DIFFUSERS_WEIGHT_NAME} holds no weights or non-finite ones")
    # diffusers prefixes keys with "transformer."; peft expects them without.
    out["lora"] = {k.removeprefix("transformer."): v for k, v in lora.items()}
    out["optimizer"] = read("optimizer.pt", lambda f: torch.load(f, weights_only=False))
    if not isinstance(out["optimizer"], dict) or "param_groups" not in out["optimizer"]:
        raise CheckpointError(f"{path.name}/optimizer.pt is not an optimizer state")
    out["scheduler"] = read("scheduler.pt", lambda f: torch.load(f, weights_only=False))
    out["rng"] = read("rng.pt", lambda f: torch.load(f, weights_only=False))
    if not isinstance(out["rng"], dict) or "torch" not in out["rng"]:
        raise CheckpointError(f"{path.name}/rng.pt is not a random-state file")
    out["state"] = read(STATE_FILE, lambda f: json.loads(f.read_text()))
    return out


def load_checkpoint(path: Path, *, transformer, optimizer, lr_scheduler) -> dict:
    """Read a checkpoint whole (CheckpointError naming the bad file), then restore it; returns its state.json."""
    from .lora import set_lora_state_dict
    from .memory.sharding import shard_lora_state, shard_optimizer_state

    parts = read_checkpoint(path)
    # Saved whole; a sharded (FSDP) model takes this rank's shards of them.
    set_lora_state_dict(transformer, shard_lora_state(transformer, parts["lora"]))
    optimizer.load_state_dict(shard_optimizer_state(optimizer, parts["optimizer"]))
    lr_scheduler.load_state_dict(parts["scheduler"])
    _set_rng_state(parts["rng"])
    return parts["state"]


def gather_training_state(transformer, optimizer) -> tuple[dict, dict]:
    """(LoRA state, optimizer state), whole, of a sharded model: a collective, every rank calls it."""
    from .lora import lora_state_dict
    from .memory.sharding import full_optimizer_state

    return lora_state_dict(transformer), full_optimizer_state(optimizer)


def load_newest_intact(root: Path, **restore) -> tuple[Path | None, dict | None, list[str]]:
    """(checkpoint, its state, what was wrong with each newer one): the newest checkpoint that reads back whole."""
    problems = []
    for path in reversed(checkpoint_dirs(root)):
        try:
            return path, load_checkpoint(path, **restore), problems
        except CheckpointError as err:
            problems.append(str(err))
    return None, None, problems
