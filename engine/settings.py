"""Every setting of the engine, defined once: its type, default, valid range and help.

Presets (`engine.presets`), the training config (`engine.config.TrainConfig`), the attention
settings (`engine.attention.schedule.AttentionSettings`), test-time adaptation and the CLI /
UI / API defaults all read their fields from the groups below, so a default or a check
exists in exactly one place. `Setting.check` refuses wrong types, NaN/inf, values out of range
and unknown choices with a ConfigError naming the field and what is allowed.

Checks that need the model (a LoRA rank above the model width, dense layers beyond the layer
count, frame rules of a model family) are made where the preset is known (`engine.config`).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

INT, FLOAT, STR, BOOL, LIST, DICT = "integer", "number", "string", "boolean", "list", "object"


@dataclass(frozen=True)
class Setting:
    kind: str  # INT | FLOAT | STR | BOOL | LIST | DICT
    default: Any
    help: str = ""
    lo: float | None = None  # inclusive lower bound
    hi: float | None = None  # inclusive upper bound (hi_open: exclusive)
    lo_open: bool = False  # lower bound exclusive (e.g. > 0)
    hi_open: bool = False
    choices: tuple | None = None
    optional: bool = False  # null allowed
    multiple_of: int | None = None
    item: str | None = None  # LIST: the kind of each item (STR or FLOAT)
    item_lo: float | None = None  # LIST of FLOAT: items in (item_lo, item_hi)
    item_hi: float | None = None
    max_len: int | None = None  # STR: at most this many characters
    single_line: bool = False  # STR: no newline or other control character (a word put into every caption)
    sep: str = ","  # LIST: what separates the items on the command line (prompts hold commas: "|")

    def range_text(self) -> str:
        if self.choices is not None:
            return f"one of {list(self.choices)}"
        def num(v):
            return str(int(v)) if self.kind == INT else f"{v:g}"

        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {num(self.lo)}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {num(self.hi)}")
        text = f"a {'whole number' if self.kind == INT else self.kind}" + (f" {' and '.join(parts)}" if parts else "")
        if self.multiple_of:
            text += f", a multiple of {self.multiple_of}"
        return text + (" (or null)" if self.optional else "")

    def check(self, value: Any, where: str) -> Any:
        """The value when valid; ConfigError naming `where` and the valid range otherwise."""
        if value is None:
            if self.optional:
                return None
            raise ConfigError(f"{where}: the value is null; set it to {self.range_text()}.")
        if self.kind == BOOL:
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: expected true or false, got {value!r}.")
            return value
        if self.kind in (INT, FLOAT):
            wrong = isinstance(value, bool) or not isinstance(value, (int, float) if self.kind == FLOAT else int)
            if wrong:
                raise ConfigError(f"{where}: expected a {self.kind}, got {type(value).__name__} {value!r}; "
                                  f"valid: {self.range_text()}.")
            if self.kind == FLOAT and not math.isfinite(value):
                raise ConfigError(f"{where}={value!r}: must be a finite number ({self.range_text()}).")
            if self.choices is not None and value not in self.choices:
                raise ConfigError(f"{where}={value!r} is not allowed; choose {self.range_text()}.")
            low_bad = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
            high_bad = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
            if low_bad or high_bad or (self.multiple_of and value % self.multiple_of):
                raise ConfigError(f"{where}={value!r} is out of range: it must be {self.range_text()}.")
            return value
        if self.kind == STR:
            if not isinstance(value, str):
                raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}.")
            if self.choices is not None and value not in self.choices:
                raise ConfigError(f"{where}: {value!r} is not allowed; choose one of {list(self.choices)}.")
            if self.single_line and any(ord(c) < 32 or ord(c) == 127 for c in value):
                raise ConfigError(f"{where}: {value!r} holds a newline or another control character; "
                                  "write it on one line.")
            if self.max_len is not None and len(value) > self.max_len:
                raise ConfigError(f"{where}: {len(value)} characters; at most {self.max_len} are allowed.")
            return value
        if self.kind == DICT:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected an object, got {type(value).__name__}.")
            return value
        # LIST
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where}: expected a non-empty list, got {value!r}.")
        for v in value:
            if self.item == STR and not (isinstance(v, str) and v):
                raise ConfigError(f"{where}: every item must be a non-empty string, got {v!r}.")
            if self.item == FLOAT:
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
                    and self.item_lo < v < self.item_hi
                if not ok:
                    raise ConfigError(f"{where}: every item must be a number in ({self.item_lo:g}, {self.item_hi:g}), "
                                      f"got {v!r}.")
        return list(value)


def _frames(default, help):
    # The family's frame rule (e.g. 4k+1) is checked with the preset (engine.config / engine.presets).
    return Setting(INT, default, help, lo=1, hi=2001)


def _size(default, help):
    return Setting(INT, default, help, lo=16, hi=4096)


# ---------------------------------------------------------------------------- groups

# Preset `generation` section: text-to-video sampling defaults.
GENERATION = {
    "num_frames": _frames(81, "frames of a generated video"),
    "height": _size(480, "video height in pixels"),
    "width": _size(832, "video width in pixels"),
    "steps": Setting(INT, 50, "denoising steps", lo=1, hi=1000),
    "guidance_scale": Setting(FLOAT, 5.0, "classifier-free guidance scale", lo=0, hi=100),
    # diffusers' WanPipeline argument of the same name; Wan2.2 A14B's own config runs (3.0 low, 4.0 high).
    "guidance_scale_2": Setting(FLOAT, None, "two-expert models: guidance scale of the low-noise expert (null: "
                                "guidance_scale)", lo=0, hi=100, optional=True),
    "negative_prompt": Setting(STR, "", "what the video should not show"),
    "fps": Setting(INT, 16, "frame rate of written videos", lo=1, hi=240),
    "seed": Setting(INT, 0, "random seed", lo=0, hi=2**32 - 1),
}

ATTENTION_BACKENDS = ("triton", "triton_fp8", "flex", "reference", "dense")
# Backends without a backward: sampling only (the training config refuses them).
FORWARD_ONLY_BACKENDS = ("triton_fp8",)
# Preset `attention` section (and the training config's attention fields; `backend` there is
# `attention_backend`).
ATTENTION = {
    "pattern": Setting(STR, "radial", "radial (block-sparse) or dense attention", choices=("radial", "dense")),
    "dense_layers": Setting(INT, 2, "the first N transformer blocks stay dense", lo=0, hi=1000),
    "dense_timesteps": Setting(INT, 2, "the first N denoising steps stay dense (sampling)", lo=0, hi=1000),
    "decay_factor": Setting(FLOAT, 0.2, "how fast the radial window shrinks with temporal distance",
                            lo=0, lo_open=True, hi=100),
    "block_size": Setting(INT, 128, "mask block size in tokens", choices=(16, 32, 64, 128)),
    "backend": Setting(STR, None, "radial kernel: triton (CUDA default), triton_fp8 (fp8 matmuls, sampling only, "
                                  "Hopper), flex, reference (CPU default), dense",
                       choices=ATTENTION_BACKENDS, optional=True),
}

# Preset `lora` section.
LORA = {
    "lora_rank": Setting(INT, 64, "LoRA rank (at most the model width)", lo=1, hi=4096),
    "lora_alpha": Setting(FLOAT, 64, "LoRA alpha (scale = alpha / rank)", lo=0, lo_open=True, hi=1e6),
    "lora_dropout": Setting(FLOAT, 0.1, "dropout on the LoRA input", lo=0, hi=1, hi_open=True),
    "target_modules": Setting(LIST, None, "module name suffixes that get a LoRA (default: the family's)", item=STR,
                              optional=True),
    "lora_experts": Setting(STR, None, "two-expert models: the expert(s) that get the LoRA and are trained, each on "
                            "its own noise levels (high noise, low noise or both); null: every expert (one-transformer "
                            "models take only null)", choices=("high", "low", "both"), optional=True),
}

# Preset `training` section: the recipe.
TRAINING = {
    "learning_rate": Setting(FLOAT, 1e-4, "AdamW learning rate", lo=0, lo_open=True),
    "batch_size": Setting(INT, 1, "clips per micro-batch", lo=1, hi=256),
    "gradient_accumulation_steps": Setting(INT, 4, "micro-batches per optimizer step", lo=1, hi=4096),
    "num_epochs": Setting(INT, 1, "passes over the data (when max_steps is null)", lo=1, hi=100_000),
    "base_num_frames": _frames(69, "frames of the base-length (dense) pass"),
    "extended_num_frames": _frames(161, "frames of the extended-length (radial) pass"),
    "height": _size(480, "training height in pixels"),
    "width": _size(832, "training width in pixels"),
    "max_steps": Setting(INT, None, "optimizer steps (null: num_epochs over the data)", lo=1, hi=10_000_000,
                         optional=True),
    "validation_steps": Setting(INT, 50, "validate (and sample) every N steps", lo=1, hi=10_000_000),
    "checkpointing_steps": Setting(INT, 50, "checkpoint every N steps", lo=1, hi=10_000_000),
    "sample_steps": Setting(INT, 0, "denoising steps of sample videos at validation (0: none)", lo=0, hi=1000),
    "use_gradient_checkpointing": Setting(BOOL, True, "recompute activations in backward (less memory)"),
}

# Regional compilation (engine.models.regional_compile), for sampling and training alike.
COMPILE_BLOCKS = Setting(BOOL, False, "torch.compile each repeated transformer block, attention left outside the "
                         "graphs (the first step at a new size compiles; faster after that; not with block_swap "
                         "or fsdp)")

# Training-config fields that no preset sets (the run's own choices).
RUN = {
    "seed": Setting(INT, 0, "random seed of the run", lo=0, hi=2**32 - 1),
    "lr_scheduler": Setting(STR, "constant_with_warmup", "learning-rate schedule (diffusers names)",
                            choices=("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                                     "polynomial")),
    "lr_warmup_steps": Setting(INT, 0, "warm-up steps", lo=0, hi=10_000_000),
    "adam_beta1": Setting(FLOAT, 0.9, "AdamW beta1", lo=0, hi=1, hi_open=True),
    "adam_beta2": Setting(FLOAT, 0.999, "AdamW beta2", lo=0, hi=1, hi_open=True),
    "adam_weight_decay": Setting(FLOAT, 1e-4, "AdamW weight decay", lo=0, hi=10),
    "adam_epsilon": Setting(FLOAT, 1e-8, "AdamW epsilon", lo=0, lo_open=True, hi=1),
    "max_grad_norm": Setting(FLOAT, 1.0, "gradient clipping norm", lo=0, lo_open=True),
    "base_loss_weight": Setting(FLOAT, 1.0, "weight of the base-length loss", lo=0),
    "extended_loss_weight": Setting(FLOAT, 1.0, "weight of the extended-length loss", lo=0),
    "consistency_loss_weight": Setting(FLOAT, 0.5, "weight of the consistency loss", lo=0),
    "timestep_sampling": Setting(STR, "logit_normal", "how training noise levels are drawn",
                                 choices=("logit_normal", "uniform")),
    "flow_shift": Setting(FLOAT, 3.0, "shift of the training noise levels", lo=0, lo_open=True, hi=100),
    "num_validation_clips": Setting(INT, 1, "clips held out for validation", lo=1, hi=10_000),
    "validation_timesteps": Setting(LIST, [0.25, 0.5, 0.75], "fixed noise levels of the validation loss", item=FLOAT,
                                    item_lo=0, item_hi=1),
    "sample_prompts": Setting(LIST, None, "prompts of the sample videos made at each validation (null: the first "
                              "held-out clip's caption; on the command line separated by |)", item=STR, optional=True,
                              sep="|"),
    "sample_seed": Setting(INT, None, "seed of the sample videos (null: the run's seed)", lo=0, hi=2**32 - 1,
                           optional=True),
    "checkpoints_total_limit": Setting(INT, 3, "checkpoints kept", lo=1, hi=10_000),
    "use_mixed_precision": Setting(BOOL, True, "bf16 autocast on CUDA"),
    "use_model_offload": Setting(BOOL, False, "keep the VAE on the CPU for sample videos"),
    "use_sage_attention": Setting(BOOL, False, "SageAttention in dense layers when installed"),
    "compile_blocks": COMPILE_BLOCKS,
}

# Memory and parallelism options of a training run (engine.memory, context parallelism); any of them may
# change on resume.
MEMORY = {
    "fp8_base": Setting(BOOL, False, "store the frozen base weights in float8 (e4m3) and compute in bf16: 1 byte "
                        "per base weight instead of 2 (LoRA weights stay fp32)"),
    "offload_activations": Setting(BOOL, False, "keep the block inputs that gradient checkpointing saves in pinned "
                                   "host memory, copied on a side stream (needs use_gradient_checkpointing)"),
    "ffn_chunks": Setting(INT, 1, "run each feed-forward over this many slices of the tokens, each recomputed on "
                          "its own in backward: its share of the peak shrinks by that factor (1: off)", lo=1, hi=64),
    "block_swap": Setting(INT, 0, "keep the frozen base weights of this many transformer blocks in pinned host "
                          "memory, each copied in on a side stream just before it runs (needs "
                          "use_gradient_checkpointing; not with fsdp; 0: off)", lo=0, hi=1000),
    "context_parallel": Setting(INT, 1, "Ulysses context parallelism: split each sample's tokens over this many "
                                "processes (launched with torchrun / accelerate launch; must divide the world size "
                                "and the head count; 1: off)", lo=1, hi=64),
    "fsdp": Setting(BOOL, False, "FSDP2: shard the frozen base, the LoRA and its optimizer state over the launched "
                    "processes (accelerate launch / torchrun), one transformer block gathered at a time; not with "
                    "fp8_base"),
    "gpu_memory_gb": Setting(FLOAT, None, "fit the step in this much GPU memory: the memory plan (python -m engine "
                             "plan) then chooses fp8_base, offload_activations, ffn_chunks and block_swap; null: as given",
                             lo=0, lo_open=True, hi=100_000, optional=True),
}

FRAME_EXTRACTION = ("head", "chunk", "slide", "uniform")
# A dataset folder's own options (its dataset.toml, engine.data.dataset_config); a training run may override each
# (engine.config: the same names, null there meaning "the folder's"). Names follow musubi-tuner's dataset config.
DATASET = {
    "enable_bucket": Setting(BOOL, True, "resize each clip to the aspect-ratio bucket nearest its own, all of about "
                             "the run's height x width pixels (false: every clip resized and centre-cropped to the "
                             "run's height x width)"),
    "bucket_no_upscale": Setting(BOOL, False, "a clip smaller than the run's pixel area trains at its own size (its "
                                 "sides rounded down to the size multiple), not scaled up to a bucket"),
    "frame_extraction": Setting(STR, "head", "which windows of extended_num_frames frames a clip gives: head (the "
                                "first), chunk (consecutive, non-overlapping), slide (one every frame_stride frames), "
                                "uniform (frame_sample windows spread evenly over the clip)", choices=FRAME_EXTRACTION),
    "frame_stride": Setting(INT, 1, "slide: frames between the starts of two windows", lo=1, hi=100_000),
    "frame_sample": Setting(INT, 1, "uniform: windows taken from each clip", lo=1, hi=10_000),
    "trigger_word": Setting(STR, "", "put before every caption at training time, as 'word, caption' (a caption "
                            "that already starts with it is left as it is); empty: none", max_len=200,
                            single_line=True),
}

TTA_OBJECTIVES = ("diffusion", "continuation")
TTA_SAMPLERS = ("scheduler", "euler")
# Preset `tta` section: test-time adaptation defaults (the CLI, the app and the API take them).
TTA = {
    "short_side": _size(256, "clips are resized to this short side (aspect kept)"),
    "cond_frames": _frames(33, "conditioning frames the LoRA is tuned on"),
    "total_frames": _frames(65, "frames of a clip: conditioning + frames to predict"),
    "rank": Setting(INT, 16, "LoRA rank", lo=1, hi=4096),
    "lr": Setting(FLOAT, 2e-4, "learning rate", lo=0, lo_open=True, hi=1),
    "steps": Setting(INT, 50, "adaptation steps", lo=1, hi=1_000_000),
    "objective": Setting(STR, "diffusion", "diffusion (denoise the prefix) or continuation (predict its tail)",
                         choices=TTA_OBJECTIVES),
}
# Per-call TTA choices (not preset fields).
TTA_RUN = {
    "alpha": Setting(FLOAT, None, "LoRA alpha (null: the rank)", lo=0, lo_open=True, hi=1e6, optional=True),
    "seed": Setting(INT, 0, "random seed", lo=0, hi=2**32 - 1),
    "sampler": Setting(STR, "scheduler", "the pipeline's scheduler or plain Euler", choices=TTA_SAMPLERS),
}
# A sweep's grid defaults.
TTA_SWEEP = {"ranks": "8,16,32", "lrs": "1e-4,2e-4", "steps": "20,50,100"}

# Sections of a preset file, in order.
PRESET_SECTIONS = {"generation": GENERATION, "attention": ATTENTION, "lora": LORA, "training": TRAINING, "tta": TTA}


def defaults(group: dict[str, Setting]) -> dict:
    return {name: copy.deepcopy(s.default) for name, s in group.items()}


def check_section(group: dict[str, Setting], values: dict, origin: str, section: str) -> dict:
    """All of `group` with `values` over the defaults, each checked; unknown names refused."""
    if not isinstance(values, dict):
        raise ConfigError(f"{origin}: field '{section}' must be an object of settings.")
    unknown = sorted(set(values) - set(group))
    if unknown:
        raise ConfigError(f"{origin}: unknown field(s) {', '.join(f'{section}.{u}' for u in unknown)}; "
                          f"known fields in '{section}': {sorted(group)}.")
    return {name: s.check(copy.deepcopy(values.get(name, s.default)), f"{origin}: field '{section}.{name}'")
            for name, s in group.items()}


def read_json_file(path, what: str) -> Any:
    """The JSON in a UTF-8 file; ConfigError naming `what` (e.g. "preset file x.json") when it is not that."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} is not UTF-8 text (a binary file?); save it as UTF-8 JSON.") from None
