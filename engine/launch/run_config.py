"""The training form's values from a config file (import) or from a past run (clone).

Both give the same thing back: the preset, every setting of the run it would start (checked now, as
Start checks it), which of them the source set, and where the data comes from. A new run always gets
a new folder: the source's `output_dir` (and `data_dir`, a server path) are never taken over.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..config import config_from_preset, read_config_file
from ..errors import ConfigError, EngineError, InputError
from ..jobs import job_status
from ..presets import DEFAULT_PRESET, list_presets
from ..safe_paths import data_root, is_inside
from .run_files import SERVER_FIELDS, owned_run_dir
from .training import run_settings

MAX_CONFIG_BYTES = 1 << 20  # a training config is a few KiB
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _checked_source(values: dict, what: str) -> None:
    """A config from outside names presets and weights, never files of this server."""
    preset = values.get("preset", DEFAULT_PRESET)
    if not isinstance(preset, str) or preset not in list_presets():
        raise ConfigError(f"{what}: field 'preset'={preset!r} is not a preset of this app; use one of "
                          f"{', '.join(list_presets())}.")
    model_id = values.get("model_id")
    if model_id is not None and model_id != "tiny" and (
            not isinstance(model_id, str) or not HUB_ID.fullmatch(model_id) or ".." in model_id
            or os.path.exists(model_id)):
        raise ConfigError(f"{what}: field 'model_id'={model_id!r} is not a Hub model id (owner/name); the app "
                          "loads weights from the Hub or the preset, not from a server folder. Remove it or give "
                          "a Hub id.")


def form_values(values: dict, what: str) -> dict:
    """{"preset", "settings" (the run's whole config less server folders), "given" (names the source set),
    "dropped" (server folders it named)}; ConfigError naming the field when a value is refused."""
    _checked_source(values, what)
    values = dict(values)
    preset = values.pop("preset", None) or DEFAULT_PRESET
    dropped = [k for k in SERVER_FIELDS if values.pop(k, None) not in (None, "")]
    try:
        config = config_from_preset(preset, **values, data_dir="-", output_dir="-")
    except EngineError as err:
        raise ConfigError(f"{what}: {err}") from None
    settings = {k: v for k, v in config.to_dict().items() if k not in (*SERVER_FIELDS, "preset")}
    return {"preset": preset, "settings": settings, "given": sorted(k for k in values if values[k] is not None),
            "dropped": dropped}


def import_training_config(path) -> dict:
    """The form's values from a JSON training config (ours or the original format `train --config` takes).

    `path`: the uploaded file. Refused with the file's name (never the server's path): missing, too big,
    not JSON, unknown settings, a value out of range, a preset or model that is not this app's."""
    path = Path(getattr(path, "name", path) or "")
    name = path.name or "(none)"
    if not path.is_file():
        raise InputError(f"config file '{name}' is missing; upload a config.json.")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise InputError(f"config file '{name}' is {path.stat().st_size / 2**20:.1f} MiB; a training config is a "
                         f"JSON object of a few KiB (at most {MAX_CONFIG_BYTES // 2**20} MiB).")
    try:
        values = read_config_file(path)
    except ConfigError as err:
        raise ConfigError(str(err).replace(str(path), name)) from None
    out = form_values(values, f"config file '{name}'")
    return {**out, "data_source": None, "folder": None, "source": name}


def clone_run_settings(run_id: str) -> dict:
    """The form's values from a past run: its settings and data source (a folder under the data root, or
    synthetic clips); uploads are not kept for a clone (`data_source` None: upload them again)."""
    owned_run_dir(run_id)
    config = run_settings(run_id)
    if not isinstance(config, dict):
        raise InputError(f"run '{run_id}': its config.json holds no settings object.")
    out = form_values({k: v for k, v in config.items()}, f"run '{run_id}'")
    source, folder = job_status(owned_run_dir(run_id)).get("data_source"), None
    data_dir = config.get("data_dir")
    if source == "folder":
        root = data_root()
        inside = isinstance(data_dir, str) and data_dir and is_inside(root, Path(data_dir))
        folder = str(Path(data_dir).resolve().relative_to(root)) if inside else None
        source = "folder" if folder else None
    elif source != "synthetic":
        source = None
    return {**out, "data_source": source, "folder": folder, "source": f"run {run_id}"}
