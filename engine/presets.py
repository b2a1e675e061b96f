"""Presets: JSON files in presets/ describing a model and its task defaults.

A preset is data the user can read. Every field has a default and a check; `load_preset`
returns a validated, fully-defaulted `dict`, and errors name the file, the field and the fix.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from .errors import ConfigError, InputError
from .models import DEFAULT_FAMILY, family_named, family_names
from .settings import DICT, PRESET_SECTIONS, STR, Setting, check_section, read_json_file

PRESETS_DIR = Path(os.environ.get("RADIAL_STUDIO_PRESETS", Path(__file__).resolve().parent.parent / "presets"))
DEFAULT_PRESET = "tiny-wan"

DTYPES = ("float32", "float16", "bfloat16")

# Top-level preset fields (the sections come from engine.settings.PRESET_SECTIONS).
TOP_LEVEL = {
    "name": Setting(STR, None),
    "family": Setting(STR, DEFAULT_FAMILY, "the model family (engine/models/registry.py)"),
    "description": Setting(STR, ""),
    # "tiny" (built from `tiny` below), a Hugging Face Hub id, or a local folder.
    "source": Setting(STR, None),
    "revision": Setting(STR, None, optional=True),
    "dtype": Setting(STR, "bfloat16", choices=DTYPES),
    "license": Setting(STR, "apache-2.0"),
    "tiny": Setting(DICT, None, optional=True),
    # A continuation mode of the family, or null (no continuation); default: the family's first mode.
    "continuation": Setting(STR, None, optional=True),
}
REQUIRED = ("name", "source")
FRAME_FIELDS = (("generation", "num_frames"), ("training", "base_num_frames"), ("training", "extended_num_frames"),
                ("tta", "cond_frames"), ("tta", "total_frames"))
SIZE_FIELDS = (("generation", "height", "width"), ("training", "height", "width"))


def _family_checks(out: dict, origin: str) -> None:
    """What depends on the model family: frame rule, size multiple, continuation mode, LoRA targets."""
    fam = family_named(out["family"])
    for section, key in FRAME_FIELDS:
        try:
            fam.check_frame_count(out[section][key], key)
        except InputError as err:
            raise ConfigError(f"{origin}: field '{section}.{key}': {err}") from None
    for section, h, w in SIZE_FIELDS:
        try:
            fam.check_size(out[section][h], out[section][w])
        except InputError as err:
            raise ConfigError(f"{origin}: field '{section}.{h}/{w}': {err}") from None
    modes = list(fam.capabilities.continuation)
    if out["continuation"] is not None and out["continuation"] not in modes:
        raise ConfigError(
            f"{origin}: field 'continuation' is {out['continuation']!r}, which family '{out['family']}' cannot do; "
            f"choose one of {modes} (or null: no continuation)."
        )
    for section, key, check in (("lora", "lora_experts", fam.check_lora_experts),
                                ("generation", "guidance_scale_2", fam.check_guidance_scale_2)):
        try:
            check(out[section][key])
        except InputError as err:
            raise ConfigError(f"{origin}: field '{section}.{key}': {err}") from None
    if out["lora"]["target_modules"] is None:
        out["lora"]["target_modules"] = fam.default_lora_targets()
    train, tta = out["training"], out["tta"]
    if train["extended_num_frames"] <= train["base_num_frames"]:
        raise ConfigError(
            f"{origin}: field 'training.extended_num_frames' ({train['extended_num_frames']}) must be "
            f"greater than 'training.base_num_frames' ({train['base_num_frames']})."
        )
    if tta["total_frames"] <= tta["cond_frames"]:
        raise ConfigError(f"{origin}: field 'tta.total_frames' ({tta['total_frames']}) must be greater than "
                          f"'tta.cond_frames' ({tta['cond_frames']}).")


def validate_preset(data: Any, origin: str = "preset") -> dict:
    """Validate a preset dict and fill in defaults. Raises ConfigError naming the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a preset must be a JSON object, got {type(data).__name__}.")
    for key in REQUIRED:
        if key not in data:
            raise ConfigError(f"{origin}: missing required field '{key}'. Add it to the preset file.")
    unknown = sorted(set(data) - set(TOP_LEVEL) - set(PRESET_SECTIONS))
    if unknown:
        raise ConfigError(f"{origin}: unknown field(s) {unknown}; known fields: {sorted({*TOP_LEVEL, *PRESET_SECTIONS})}.")
    out: dict = {}
    for key, setting in TOP_LEVEL.items():
        out[key] = setting.check(copy.deepcopy(data.get(key, setting.default)), f"{origin}: field '{key}'")
    if out["family"] not in family_names():
        raise ConfigError(f"{origin}: field 'family': {out['family']!r} is not allowed; choose one of {family_names()}.")
    if "continuation" not in data:  # the family's default mode
        out["continuation"] = next(iter(family_named(out["family"]).capabilities.continuation), None)
    for key, group in PRESET_SECTIONS.items():
        out[key] = check_section(group, data.get(key, {}), origin, key)
    if out["source"] == "tiny" and not out["tiny"]:
        raise ConfigError(f"{origin}: source is 'tiny' but field 'tiny' (the model configs) is missing.")
    _family_checks(out, origin)
    return out


def list_presets(presets_dir: Path | None = None) -> list[str]:
    folder = Path(presets_dir or PRESETS_DIR)
    return sorted(p.stem for p in folder.glob("*.json"))


def load_preset(name_or_path: str, presets_dir: Path | None = None) -> dict:
    """Load a preset by name (presets/<name>.json) or by path to a JSON file."""
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ConfigError(f"preset: give a preset name, e.g. '{DEFAULT_PRESET}'.")
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = Path(presets_dir or PRESETS_DIR) / f"{name_or_path}.json"
    if not path.is_file():
        available = ", ".join(list_presets(presets_dir)) or "none"
        raise ConfigError(f"preset '{name_or_path}' not found (looked for {path}). Available presets: {available}.")
    data = read_json_file(path, f"preset file {path.name}")
    return validate_preset(data, origin=f"preset file {path.name}")


def apply_overrides(preset: dict, section: str, overrides: dict) -> dict:
    """Return a copy of `preset` with `overrides` (None values ignored) applied to `section`, re-validated."""
    updated = copy.deepcopy(preset)
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in PRESET_SECTIONS[section]:
            raise ConfigError(f"unknown setting '{section}.{key}'; known: {sorted(PRESET_SECTIONS[section])}.")
        updated[section][key] = value
    return validate_preset(updated, origin=f"preset '{preset['name']}' with overrides")


# ---------------------------------------------------------------------------- presets per task

TASK_WORDS = {"generate": "generate videos from text", "length_extension": "train length-extension LoRAs",
              "tta": "continue a clip (test-time adaptation)"}


def can_do(preset: dict, task: str) -> bool:
    """Whether the preset's model family can do `task` ("generate", "length_extension", "tta")."""
    if task not in TASK_WORDS:
        raise ConfigError(f"unknown task {task!r}; tasks: {list(TASK_WORDS)}.")
    ok = family_named(preset["family"]).capabilities.can(task)
    return ok and (task != "tta" or preset["continuation"] is not None)


def presets_for(task: str, presets_dir: Path | None = None) -> list[str]:
    """The presets that can do `task`; a preset file that does not load is left out."""
    names = []
    for name in list_presets(presets_dir):
        try:
            if can_do(load_preset(name, presets_dir), task):
                names.append(name)
        except ConfigError:
            if task not in TASK_WORDS:
                raise
    return names


def check_capable(preset: dict, task: str) -> None:
    """ConfigError naming the presets that can, when this preset's family cannot do `task`."""
    if not can_do(preset, task):
        raise ConfigError(f"preset '{preset['name']}' (model family '{preset['family']}') cannot {TASK_WORDS[task]}; "
                          f"presets that can: {', '.join(presets_for(task)) or 'none'}.")
