"""Length-extension training configuration: preset defaults + a JSON config + overrides.

Field names follow the seed configuration (`lora_rank`, `base_num_frames`, `pattern`, ...).
The original JSON config format (`--config`) is accepted as is; its `model_id` selects the
weights (Hub id or folder) on top of the preset.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import ConfigError, InputError
from ..presets import load_preset, validate_preset
from ..validation import check_frame_count, check_size


@dataclass
class TrainConfig:
    preset: str = "tiny-wan"
    model_id: str | None = None  # overrides the preset's weights source
    data_dir: str = ""
    output_dir: str = ""
    seed: int = 0
    # LoRA
    lora_rank: int = 64
    lora_alpha: float = 64
    lora_dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    # optimisation
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant_with_warmup"  # diffusers get_scheduler names
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-4
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    batch_size: int = 1
    gradient_accumulation_steps: int = 4
    num_epochs: int = 1
    max_steps: int | None = None  # optimizer steps; default num_epochs * steps per epoch
    # geometry
    base_num_frames: int = 69
    extended_num_frames: int = 161
    height: int = 480
    width: int = 832
    # radial attention
    pattern: str = "radial"
    dense_layers: int = 2
    dense_timesteps: int = 2
    decay_factor: float = 0.2
    block_size: int = 128
    attention_backend: str | None = None
    # objective
    base_loss_weight: float = 1.0
    extended_loss_weight: float = 1.0
    consistency_loss_weight: float = 0.5
    timestep_sampling: str = "logit_normal"  # or "uniform"
    flow_shift: float = 3.0
    # validation, samples, checkpoints
    num_validation_clips: int = 1
    validation_steps: int = 50
    validation_timesteps: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    sample_steps: int = 0  # denoising steps for sample videos at validation; 0 = none
    checkpointing_steps: int = 50
    checkpoints_total_limit: int = 3
    # hardware
    use_mixed_precision: bool = True
    use_gradient_checkpointing: bool = True
    use_model_offload: bool = False  # the VAE stays on the CPU for sample videos too (encoders always leave the GPU)
    use_sage_attention: bool = False

    # fields that may differ between a run and its resume
    RESUMABLE_CHANGES = ("output_dir", "max_steps", "num_epochs", "validation_steps", "sample_steps",
                         "checkpointing_steps", "checkpoints_total_limit", "attention_backend")

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    def to_dict(self) -> dict:
        return asdict(self)

    def preset_dict(self) -> dict:
        preset = load_preset(self.preset)
        if self.model_id:
            preset = validate_preset({**preset, "source": self.model_id, "tiny": None if self.model_id != "tiny" else preset["tiny"]})
        return preset

    def validate(self) -> "TrainConfig":
        def bad(name, why):
            raise ConfigError(f"training config field '{name}'={getattr(self, name)!r}: {why}.")

        try:
            check_frame_count(self.base_num_frames, "base_num_frames")
            check_frame_count(self.extended_num_frames, "extended_num_frames")
            check_size(self.height, self.width)
        except InputError as err:
            raise ConfigError(f"training config: {err}") from None
        if self.extended_num_frames <= self.base_num_frames:
            bad("extended_num_frames", f"must be greater than base_num_frames ({self.base_num_frames})")
        for name in ("lora_rank", "batch_size", "gradient_accumulation_steps", "num_epochs", "validation_steps",
                     "checkpointing_steps", "checkpoints_total_limit", "num_validation_clips"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                bad(name, "must be a positive integer")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            bad("max_steps", "must be a positive integer or null")
        for name in ("learning_rate", "lora_alpha", "max_grad_norm", "flow_shift", "decay_factor"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) <= 0:
                bad(name, "must be a positive number")
        if not 0 <= self.lora_dropout < 1:
            bad("lora_dropout", "must be in [0, 1)")
        if self.pattern not in ("radial", "dense"):
            bad("pattern", "choose 'radial' or 'dense'")
        if self.timestep_sampling not in ("logit_normal", "uniform"):
            bad("timestep_sampling", "choose 'logit_normal' or 'uniform'")
        if self.block_size not in (16, 32, 64, 128):
            bad("block_size", "choose one of 16, 32, 64, 128")
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            bad("target_modules", "must be a non-empty list of module names")
        if not all(0 < t < 1 for t in self.validation_timesteps):
            bad("validation_timesteps", "each must be in (0, 1)")
        for name in ("base_loss_weight", "extended_loss_weight", "consistency_loss_weight"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        return self


def config_from_preset(preset_name: str, **overrides) -> TrainConfig:
    """Defaults from the preset's lora/attention/training sections, then overrides."""
    preset = load_preset(preset_name)
    values = {"preset": preset_name}
    values.update({k: v for k, v in preset["lora"].items()})
    values.update({k: v for k, v in preset["training"].items() if k in TrainConfig.field_names()})
    attn = preset["attention"]
    values.update(pattern=attn["pattern"], dense_layers=attn["dense_layers"], dense_timesteps=attn["dense_timesteps"],
                  decay_factor=attn["decay_factor"], block_size=attn["block_size"], attention_backend=attn["backend"])
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(values) - TrainConfig.field_names())
    if unknown:
        raise ConfigError(f"unknown training setting(s) {unknown}; known settings: {sorted(TrainConfig.field_names())}.")
    return TrainConfig(**values).validate()


# Keys of the original JSON format that name the same thing differently here.
_ALIASES = {"train_batch_size": "batch_size", "gradient_accumulation": "gradient_accumulation_steps",
            "lr": "learning_rate", "dataset_dir": "data_dir", "lora_checkpoint_dir": "output_dir"}


def read_config_file(path: str | Path) -> dict:
    """Read a JSON training config (the original format or ours) into TrainConfig field values."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file '{path}': invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}': expected a JSON object of settings.")
    values = {_ALIASES.get(k, k): v for k, v in data.items()}
    unknown = sorted(set(values) - TrainConfig.field_names())
    if unknown:
        raise ConfigError(f"config file '{path}': unknown setting(s) {unknown}; known: {sorted(TrainConfig.field_names())}.")
    return values
