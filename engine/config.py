"""The length-extension training config: preset defaults + a JSON config + overrides, checked once.

`TrainConfig` has one field per setting of engine.settings (LORA, ATTENTION, TRAINING, RUN, MEMORY, DATASET)
plus where the run reads and writes; defaults and checks come from there. Field names follow the
seed configuration (`lora_rank`, `base_num_frames`, `pattern`, ...), and the original JSON
config format (`--config`) is accepted as is: its `model_id` selects the weights (Hub id or
folder) on top of the preset. A run's folder holds its config as `config.json`, which the
worker reads back (`TrainConfig.from_file`).

`validate()` refuses, before anything is queued or written: wrong types, NaN/inf, values out of
range, unknown choices, frame counts and sizes the model family cannot take, a LoRA rank above
the model width, `dense_layers` beyond the model's blocks, and presets whose family cannot train
length extension.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from .errors import ConfigError, InputError
from .models import family
from .presets import DEFAULT_PRESET, check_capable, load_preset, validate_preset
from .settings import (ATTENTION, DATASET, FORWARD_ONLY_BACKENDS, LORA, MEMORY, RUN, STR, TRAINING, Setting,
                       read_json_file)

# The attention backend is `attention_backend` in a training config, `backend` in a preset.
_ATTENTION_FIELDS = {("attention_backend" if k == "backend" else k): s for k, s in ATTENTION.items()}
WHERE = {
    "preset": Setting(STR, DEFAULT_PRESET, "the preset (model and recipe)"),
    "model_id": Setting(STR, None, "weights (Hub id or folder) instead of the preset's source", optional=True),
    "data_dir": Setting(STR, "", "dataset folder (metadata.json + videos/, or videos with captions)"),
    "output_dir": Setting(STR, "", "the run folder"),
}
# The dataset options (engine.settings.DATASET) as run overrides: null takes the data folder's dataset.toml.
DATASET_OVERRIDES = {name: dataclasses.replace(s, default=None, optional=True,
                                               help=f"{s.help} (null: the data folder's dataset.toml, else {s.default})")
                     for name, s in DATASET.items()}
FIELDS: dict[str, Setting] = {**WHERE, **LORA, **_ATTENTION_FIELDS, **TRAINING, **RUN, **MEMORY, **DATASET_OVERRIDES}
# Fields that may differ between a run and its resume.
RESUMABLE_CHANGES = ("output_dir", "max_steps", "num_epochs", "validation_steps", "sample_steps",
                     "gradient_accumulation_steps",  # keeps the batch per step when the number of processes changes
                     "checkpointing_steps", "checkpoints_total_limit", "attention_backend", "learning_rate",
                     "max_grad_norm", "use_sage_attention", "compile_blocks", "use_model_offload", "sample_prompts",
                     "sample_seed",
                     *MEMORY)


class TrainConfigMethods:
    """What a `TrainConfig` does; its fields are made from FIELDS below."""

    RESUMABLE_CHANGES = RESUMABLE_CHANGES

    @classmethod
    def field_names(cls) -> set[str]:
        return set(FIELDS)

    @classmethod
    def from_dict(cls, values: dict):
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise ConfigError(f"unknown training setting(s) {unknown}; known settings: {sorted(FIELDS)}.")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def preset_dict(self) -> dict:
        preset = load_preset(self.preset)
        if self.model_id:
            preset = validate_preset({**preset, "source": self.model_id,
                                      "tiny": None if self.model_id != "tiny" else preset["tiny"]})
        return preset

    def validate(self, preset: dict | None = None):
        """Check every field and the model-dependent limits; returns self. ConfigError names the field."""
        for name, setting in FIELDS.items():
            setting.check(getattr(self, name), f"training config field '{name}'")
        if self.attention_backend in FORWARD_ONLY_BACKENDS:
            raise ConfigError(f"training config field 'attention_backend'='{self.attention_backend}': that kernel is "
                              "forward-only (sampling) and training needs the backward; use 'triton' (or leave it "
                              "null for the default).")
        preset = preset or self.preset_dict()
        check_capable(preset, "length_extension")
        fam = family(preset)
        try:
            fam.check_frame_count(self.base_num_frames, "base_num_frames")
            fam.check_frame_count(self.extended_num_frames, "extended_num_frames")
            fam.check_size(self.height, self.width)
        except InputError as err:
            raise ConfigError(f"training config: {err}") from None
        if self.extended_num_frames <= self.base_num_frames:
            raise ConfigError(f"training config field 'extended_num_frames'={self.extended_num_frames}: must be "
                              f"greater than base_num_frames ({self.base_num_frames}).")
        try:  # the family's experts, and validation levels they serve (others would measure an untrained expert)
            fam.check_lora_experts(self.lora_experts)
        except InputError as err:
            raise ConfigError(f"training config field 'lora_experts': {err}") from None
        lo, hi = fam.noise_range(self.lora_experts)
        outside = [s for s in self.validation_timesteps if not lo <= s < hi]
        if outside:
            raise ConfigError(f"training config field 'validation_timesteps': {outside} lie outside the noise levels "
                              f"[{lo:g}, {hi:g}) that lora_experts={self.lora_experts!r} trains; choose levels in "
                              "that range (e.g. --validation_timesteps " + ",".join(
                                  f"{lo + (hi - lo) * f:.3g}" for f in (0.25, 0.5, 0.75)) + ").")
        width = fam.model_width(preset)
        if width is not None and self.lora_rank > width:
            raise ConfigError(f"training config field 'lora_rank'={self.lora_rank}: above the model width ({width}); "
                              f"choose 1 to {width} (typically 8 to 128).")
        if self.offload_activations and not self.use_gradient_checkpointing:
            raise ConfigError("training config field 'offload_activations'=true needs use_gradient_checkpointing=true "
                              "(it offloads what checkpointing saves); turn checkpointing on or offloading off.")
        if self.block_swap and not self.use_gradient_checkpointing:
            raise ConfigError(f"training config field 'block_swap'={self.block_swap} needs use_gradient_checkpointing="
                              "true (without it the forward keeps every block's weights for the backward); turn "
                              "checkpointing on or block_swap off.")
        if self.fsdp and self.block_swap:
            raise ConfigError("training config fields 'fsdp' and 'block_swap' are both set: choose one (sharding over N "
                              "processes keeps 1/N of every block on each GPU already).")
        if self.fsdp and self.fp8_base:
            raise ConfigError("training config fields 'fsdp' and 'fp8_base' are both true: choose one (sharding over N "
                              "processes divides the base weights by N, more than fp8's halving; diffusers' fp8 "
                              "casting would keep every gathered block alive under FSDP).")
        for other in ("block_swap", "fsdp"):
            if self.compile_blocks and getattr(self, other):
                raise ConfigError(f"training config fields 'compile_blocks' and '{other}' are both set: choose one "
                                  f"({other} moves or shards each block's weights through hooks that compiled blocks "
                                  "do not follow).")
        layers = fam.num_layers(preset)
        swappable = None if layers is None else layers * fam.expert_counts(self.lora_experts)[1]  # the denoiser's
        if swappable is not None and self.block_swap > swappable:
            raise ConfigError(f"training config field 'block_swap'={self.block_swap}: the trained model has {swappable} "
                              f"blocks; choose 0 (off) to {swappable}.")
        if layers is not None and self.dense_layers > layers:
            raise ConfigError(f"training config field 'dense_layers'={self.dense_layers}: the model has {layers} "
                              f"blocks; choose 0 to {layers}.")
        return self


def _field(setting: Setting):
    return dataclasses.field(default_factory=lambda: copy.deepcopy(setting.default))


TrainConfig = dataclasses.make_dataclass(
    "TrainConfig", [(name, object, _field(s)) for name, s in FIELDS.items()], bases=(TrainConfigMethods,),
    namespace={"__module__": __name__, "__doc__": "One training run's settings (fields: engine.config.FIELDS)."})


def preset_training_values(preset: dict) -> dict:
    """The training-config values a preset sets (its lora, attention and training sections)."""
    values = dict(preset["lora"])
    values.update({("attention_backend" if k == "backend" else k): v for k, v in preset["attention"].items()})
    values.update(preset["training"])
    return values


def config_from_preset(preset_name: str, validate: bool = True, **overrides) -> TrainConfig:
    """Defaults from the preset's lora/attention/training sections, then overrides (None: not given); checked
    unless `validate` is False (the caller hands it to code that checks it)."""
    preset = load_preset(preset_name)
    values = {"preset": preset_name, **preset_training_values(preset)}
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = TrainConfig.from_dict(values)
    return config.validate(preset if not config.model_id else None) if validate else config


# Keys of the original JSON format that name the same thing differently here.
_ALIASES = {"train_batch_size": "batch_size", "gradient_accumulation": "gradient_accumulation_steps",
            "lr": "learning_rate", "dataset_dir": "data_dir", "lora_checkpoint_dir": "output_dir"}


def read_config_file(path: str | Path) -> dict:
    """Read a JSON training config (the original format or ours) into TrainConfig field values."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist.")
    data = read_json_file(path, f"config file '{path}'")
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}': expected a JSON object of settings.")
    values = {_ALIASES.get(k, k): v for k, v in data.items()}
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"config file '{path}': unknown setting(s) {unknown}; known: {sorted(FIELDS)}.")
    return values
