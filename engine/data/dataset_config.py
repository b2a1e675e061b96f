"""A data folder's own options: `dataset.toml` beside its clips, run overrides on top.

The file is optional and flat; every key is a setting of engine.settings.DATASET (names as in
musubi-tuner's dataset config), e.g.

    enable_bucket = true          # aspect-ratio buckets (false: crop every clip to the run's size)
    bucket_no_upscale = false     # true: a clip smaller than the run's area keeps its own size
    frame_extraction = "slide"    # head | chunk | slide | uniform
    frame_stride = 16             # slide: frames between window starts
    frame_sample = 4              # uniform: windows per clip
    trigger_word = "sks dog"      # put before every caption at training time ("sks dog, <caption>")

TOML, not JSON: the file is written by hand, and TOML takes comments. A training run's fields of
the same names (null by default) override the file (engine.config.DATASET_OVERRIDES).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from ..errors import ConfigError
from ..settings import DATASET, defaults

DATASET_FILE = "dataset.toml"


def read_dataset_config(data_dir: str | Path) -> dict:
    """The folder's options: DATASET's defaults, then its dataset.toml (each value checked)."""
    path = Path(data_dir) / DATASET_FILE
    if not path.is_file():
        return defaults(DATASET)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML ({err}); write one `name = value` per line, "
                          f"e.g. frame_extraction = \"head\".") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; save it as UTF-8.") from None
    unknown = sorted(set(values) - set(DATASET))
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {unknown}; the known fields are {sorted(DATASET)} "
                          "(see docs/datasets.md).")
    return {name: s.check(values.get(name, s.default), f"{path}: field '{name}'") for name, s in DATASET.items()}


def dataset_options(data_dir: str | Path, overrides: dict | None = None) -> dict:
    """The options a run uses: the folder's, then `overrides` that are not None (a run's config fields)."""
    options = read_dataset_config(data_dir)
    for name, value in (overrides or {}).items():
        if name in DATASET and value is not None:
            options[name] = DATASET[name].check(value, f"training config field '{name}'")
    return options


def write_trigger_word(data_dir: str | Path, word: str) -> dict:
    """Set (empty: remove) `trigger_word` in the folder's dataset.toml, keeping its other lines and comments.

    The word is checked first (one line, at most DATASET's length) and the file must already be valid;
    the new text is parsed back before it replaces the old one, so a failure changes nothing.
    Returns the folder's options as a run would read them."""
    from .captions import write_text_atomic

    word = DATASET["trigger_word"].check(word, "trigger word").strip()
    path = Path(data_dir) / DATASET_FILE
    before = read_dataset_config(data_dir)  # refuses a broken file before anything is written
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    lines = [line for line in old.splitlines() if not line.lstrip().startswith(("trigger_word=", "trigger_word "))]
    if word:
        # a TOML basic string: control characters are refused above, json.dumps escapes '"' and '\'
        lines.append(f"trigger_word = {json.dumps(word, ensure_ascii=False)}")
    text = "\n".join(lines) + "\n" if lines else ""
    parsed = tomllib.loads(text)
    if parsed.get("trigger_word", "") != word or {k: v for k, v in parsed.items() if k != "trigger_word"} != \
            {k: v for k, v in tomllib.loads(old).items() if k != "trigger_word"}:
        raise ConfigError(f"{DATASET_FILE}: could not set trigger_word without changing other lines; edit the file "
                          "by hand.")
    if text or path.is_file():
        write_text_atomic(path, text)
    return {**before, "trigger_word": word}
