"""Presets: JSON files in presets/ describing a model and its task defaults.

A preset is data the user can read. Every field has a default and a check; `load_preset`
returns a validated, fully-defaulted `dict`, and errors name the file, the field and the fix.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError, InputError
from .validation import check_frame_count

PRESETS_DIR = Path(os.environ.get("RADIAL_STUDIO_PRESETS", Path(__file__).resolve().parent.parent / "presets"))
DEFAULT_PRESET = "tiny-wan"

DTYPES = ("float32", "float16", "bfloat16")
ATTENTION_BACKENDS = ("triton", "flex", "reference", "dense")
WAN_ATTENTION_PROJECTIONS = ["to_q", "to_k", "to_v", "to_out.0"]
# How each model family can continue a clean prefix (engine/continuation.py); the first is the
# default when a preset leaves out `continuation`. null in a preset: it cannot do continuation.
FAMILY_CONTINUATION = {"wan": ("replacement", "per_token"), "skyreels": ("per_token", "replacement"),
                       "wan_vace": ("vace",), "opensora2": ("v2v_head",)}
CONTINUATION_MODES = ("replacement", "per_token", "vace", "v2v_head")


@dataclass(frozen=True)
class Field:
    type: type | tuple[type, ...]
    default: Any
    check: Callable[[Any], str | None] | None = None  # returns a problem description or None
    choices: tuple | None = None
    optional: bool = False  # None allowed


def _at_least(lo):
    return lambda v: None if v >= lo else f"must be >= {lo}"


def _positive(v):
    return None if v > 0 else "must be > 0"


def _fraction(v):
    return None if 0 <= v < 1 else "must be in [0, 1)"


def _frames(v):
    try:
        check_frame_count(v)
    except InputError as e:
        return str(e).split(" is not a valid frame count: ", 1)[-1]
    return None


def _size(v):
    return None if v >= 16 and v % 16 == 0 else f"must be a positive multiple of 16 (nearest: {max(16, v // 16 * 16)} or {max(16, v // 16 * 16) + 16})"


def _str_list(v):
    return None if all(isinstance(x, str) and x for x in v) and v else "must be a non-empty list of module names"


INT, FLOAT, STR, BOOL = int, (int, float), str, bool

SCHEMA: dict[str, Any] = {
    "name": Field(STR, None),
    "family": Field(STR, "wan", choices=tuple(FAMILY_CONTINUATION)),
    "description": Field(STR, ""),
    # "tiny" (built from `tiny` below), a Hugging Face Hub id, or a local folder.
    "source": Field(STR, None),
    "revision": Field(STR, None, optional=True),
    "dtype": Field(STR, "bfloat16", choices=DTYPES),
    "license": Field(STR, "apache-2.0"),
    "tiny": Field(dict, None, optional=True),
    # "replacement" | "per_token" | "vace" | "v2v_head" | null; default: the family's first mode.
    "continuation": Field(STR, "replacement", choices=CONTINUATION_MODES, optional=True),
    "generation": {
        "num_frames": Field(INT, 81, _frames),
        "height": Field(INT, 480, _size),
        "width": Field(INT, 832, _size),
        "steps": Field(INT, 50, _at_least(1)),
        "guidance_scale": Field(FLOAT, 5.0, _at_least(0)),
        "negative_prompt": Field(STR, ""),
        "fps": Field(INT, 16, _at_least(1)),
        "seed": Field(INT, 0, _at_least(0)),
    },
    "attention": {
        "pattern": Field(STR, "radial", choices=("radial", "dense")),
        "dense_layers": Field(INT, 2, _at_least(0)),
        "dense_timesteps": Field(INT, 2, _at_least(0)),
        "decay_factor": Field(FLOAT, 0.2, _positive),
        "block_size": Field(INT, 128, choices=(16, 32, 64, 128)),
        "backend": Field(STR, None, choices=ATTENTION_BACKENDS, optional=True),
    },
    "lora": {
        "lora_rank": Field(INT, 64, _at_least(1)),
        "lora_alpha": Field(FLOAT, 64, _positive),
        "lora_dropout": Field(FLOAT, 0.1, _fraction),
        "target_modules": Field(list, WAN_ATTENTION_PROJECTIONS, _str_list),
    },
    "training": {
        "learning_rate": Field(FLOAT, 1e-4, _positive),
        "batch_size": Field(INT, 1, _at_least(1)),
        "gradient_accumulation_steps": Field(INT, 4, _at_least(1)),
        "num_epochs": Field(INT, 1, _at_least(1)),
        "base_num_frames": Field(INT, 69, _frames),
        "extended_num_frames": Field(INT, 161, _frames),
        "height": Field(INT, 480, _size),
        "width": Field(INT, 832, _size),
    },
    "tta": {
        # Test-time adaptation clips are resized to this short side (the long side keeps the aspect).
        "short_side": Field(INT, 256, _size),
    },
}

REQUIRED = ("name", "source")


def _type_name(t) -> str:
    if isinstance(t, tuple):
        return "number"
    return {int: "integer", str: "string", bool: "boolean", dict: "object", list: "list"}.get(t, t.__name__)


def _check_field(where: str, field: Field, value: Any) -> Any:
    if value is None:
        if field.optional:
            return None
        raise ConfigError(f"{where}: field is null; set it to a {_type_name(field.type)}.")
    # bool is an int subclass in Python; never accept it for a number field.
    wrong_bool = isinstance(value, bool) and field.type is not bool
    if wrong_bool or not isinstance(value, field.type):
        raise ConfigError(
            f"{where}: expected a {_type_name(field.type)}, got {type(value).__name__} {value!r}."
        )
    if field.choices is not None and value not in field.choices:
        raise ConfigError(f"{where}: {value!r} is not allowed; choose one of {list(field.choices)}.")
    if field.check is not None:
        problem = field.check(value)
        if problem:
            raise ConfigError(f"{where}={value!r}: {problem}.")
    return value


def validate_preset(data: Any, origin: str = "preset") -> dict:
    """Validate a preset dict and fill in defaults. Raises ConfigError naming the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a preset must be a JSON object, got {type(data).__name__}.")
    for key in REQUIRED:
        if key not in data:
            raise ConfigError(f"{origin}: missing required field '{key}'. Add it to the preset file.")
    out: dict = {}
    if "continuation" not in data and data.get("family", "wan") in FAMILY_CONTINUATION:
        data = {**data, "continuation": FAMILY_CONTINUATION[data.get("family", "wan")][0]}
    for key, spec in SCHEMA.items():
        if isinstance(spec, dict):
            section = data.get(key, {})
            if not isinstance(section, dict):
                raise ConfigError(f"{origin}: field '{key}' must be an object of settings.")
            unknown = sorted(set(section) - set(spec))
            if unknown:
                raise ConfigError(
                    f"{origin}: unknown field(s) {', '.join(f'{key}.{u}' for u in unknown)}; "
                    f"known fields in '{key}': {sorted(spec)}."
                )
            out[key] = {
                name: _check_field(f"{origin}: field '{key}.{name}'", f, copy.deepcopy(section.get(name, f.default)))
                for name, f in spec.items()
            }
        else:
            value = data.get(key, spec.default)
            out[key] = _check_field(f"{origin}: field '{key}'", spec, copy.deepcopy(value))
    unknown = sorted(set(data) - set(SCHEMA))
    if unknown:
        raise ConfigError(f"{origin}: unknown field(s) {unknown}; known fields: {sorted(SCHEMA)}.")
    if out["source"] == "tiny" and not out["tiny"]:
        raise ConfigError(f"{origin}: source is 'tiny' but field 'tiny' (the model configs) is missing.")
    modes = FAMILY_CONTINUATION[out["family"]]
    if out["continuation"] is not None and out["continuation"] not in modes:
        raise ConfigError(
            f"{origin}: field 'continuation' is {out['continuation']!r}, which family '{out['family']}' cannot do; "
            f"choose one of {list(modes)} (or null: no continuation)."
        )
    train = out["training"]
    if train["extended_num_frames"] <= train["base_num_frames"]:
        raise ConfigError(
            f"{origin}: field 'training.extended_num_frames' ({train['extended_num_frames']}) must be "
            f"greater than 'training.base_num_frames' ({train['base_num_frames']})."
        )
    return out


def list_presets(presets_dir: Path | None = None) -> list[str]:
    folder = Path(presets_dir or PRESETS_DIR)
    return sorted(p.stem for p in folder.glob("*.json"))


def load_preset(name_or_path: str, presets_dir: Path | None = None) -> dict:
    """Load a preset by name (presets/<name>.json) or by path to a JSON file."""
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ConfigError("preset: give a preset name, e.g. 'tiny-wan'.")
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = Path(presets_dir or PRESETS_DIR) / f"{name_or_path}.json"
    if not path.is_file():
        available = ", ".join(list_presets(presets_dir)) or "none"
        raise ConfigError(f"preset '{name_or_path}' not found (looked for {path}). Available presets: {available}.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"preset file {path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}.") from None
    return validate_preset(data, origin=f"preset file {path.name}")


def apply_overrides(preset: dict, section: str, overrides: dict) -> dict:
    """Return a copy of `preset` with `overrides` (None values ignored) applied to `section`, re-validated."""
    updated = copy.deepcopy(preset)
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in SCHEMA[section]:
            raise ConfigError(f"unknown setting '{section}.{key}'; known: {sorted(SCHEMA[section])}.")
        updated[section][key] = value
    return validate_preset(updated, origin=f"preset '{preset['name']}' with overrides")
