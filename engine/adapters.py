"""Where an adapter comes from: a training run, a folder under the data root, or a Hub id."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError
from .jobs import runs_root
from .lora import DIFFUSERS_WEIGHT_NAME
from .safe_paths import check_inside, data_root, is_inside, resolve_under


def finished_adapters() -> list[tuple[str, str]]:
    """(label, reference) for every run folder holding a final or best LoRA, newest first."""
    out = []
    root = runs_root()
    for run in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")), reverse=True):
        for sub in ("final", "best_model"):
            if (run / sub / DIFFUSERS_WEIGHT_NAME).is_file():
                out.append((f"run {run.name} ({sub})", f"run:{run.name}/{sub}"))
    return out


def resolve_adapter_ref(ref: str) -> Path | str:
    """A local LoRA folder for `ref`: 'run:<id>/<final|best_model>', a path under the data root, or a Hub id."""
    ref = (ref or "").strip()
    if not ref:
        raise InputError("adapter is empty: pick a run, a folder under the data root, or a Hub id.")
    if ref.startswith("run:"):
        run_part = ref[4:]
        if ".." in Path(run_part).parts or run_part.startswith("/"):
            raise InputError(f"adapter '{ref}' is not a run of this app.")
        path = runs_root() / run_part
        if not (path / DIFFUSERS_WEIGHT_NAME).is_file():
            raise InputError(f"adapter '{ref}': the run has no saved LoRA there (yet).")
        if not is_inside(runs_root(), path / DIFFUSERS_WEIGHT_NAME):
            raise InputError(f"adapter '{ref}': its LoRA file leads outside the runs folder; it is not read.")
        return path
    local = data_root() / ref
    from .hub import parse_hub_ref, pull_adapter

    if parse_hub_ref(ref) and not local.exists():
        return pull_adapter(ref)  # downloads into the HF cache; never reads a server path
    folder = resolve_under(data_root(), ref, "adapter folder")
    for name in (DIFFUSERS_WEIGHT_NAME, "adapter_config.json"):
        if (folder / name).exists():
            check_inside(data_root(), folder / name, f"adapter '{ref}': {name}")
    return folder
