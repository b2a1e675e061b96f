"""The one registry of model families: name -> module (each module exposes `FAMILY`).

Adding a family is its module, its presets and one line in `FAMILY_MODULES`. Families kept
outside this repository (and the test-only family of the test suite) are added through
`RADIAL_STUDIO_FAMILIES="name=package.module,..."`, read at lookup time.
"""

from __future__ import annotations

import importlib
import os

from ..errors import ConfigError
from .base import ModelFamily

FAMILY_MODULES = {
    "wan": "engine.models.wan",
    "skyreels": "engine.models.skyreels",
    "wan_vace": "engine.models.wan_vace",
    "opensora2": "engine.models.opensora2",
    "wan22": "engine.models.wan22",
    "wan22_ti2v": "engine.models.wan22_ti2v",
    "hunyuan": "engine.models.hunyuan",
    "hunyuan15": "engine.models.hunyuan15",
}
DEFAULT_FAMILY = "wan"
ENV_VAR = "RADIAL_STUDIO_FAMILIES"


def _modules() -> dict[str, str]:
    modules = dict(FAMILY_MODULES)
    for item in filter(None, (x.strip() for x in os.environ.get(ENV_VAR, "").split(","))):
        name, sep, module = item.partition("=")
        if not sep or not name.strip() or not module.strip():
            raise ConfigError(f"{ENV_VAR}: '{item}' is not 'name=package.module'.")
        modules[name.strip()] = module.strip()
    return modules


def family_names() -> list[str]:
    return sorted(_modules())


def family_named(name: str) -> ModelFamily:
    modules = _modules()
    if name not in modules:
        raise ConfigError(f"unknown model family '{name}'; known families: {sorted(modules)}.")
    family = getattr(importlib.import_module(modules[name]), "FAMILY", None)
    if not isinstance(family, ModelFamily) or family.name != name:
        raise ConfigError(f"module {modules[name]} must expose FAMILY, a ModelFamily named '{name}'.")
    return family


def family(preset: dict) -> ModelFamily:
    """The family of a validated preset."""
    return family_named(preset["family"])
