"""`ModelFamily`: the one contract between a model family and the rest of the engine.

Trainer, TTA, generation, comparison, the Hub card, Spaces estimates, the attention installer
and the dataset code call only these methods; no code above `engine/models/` names a family.
A family is one module exposing `FAMILY` (an instance of a `ModelFamily` subclass), its
presets, and one line in `engine/models/registry.py`. What a family can do is declared in
`capabilities`; the engine refuses a preset for a task its family cannot do, in the request.

The defaults here are the rectified-flow convention shared by the families we ship
(x_t = (1 - s) x_0 + s eps, velocity eps - x_0, timestep s * 1000); a family overrides what
differs.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import ConfigError, InputError

NUM_TRAIN_TIMESTEPS = 1000
TASKS = ("generate", "length_extension", "tta")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ContinuationMode:
    """How a family continues a clean prefix (engine/continuation.py and TTA).

    `prefix`: what happens to the prefix latents while denoising: "noised" (set to the
    conditioning latents noised to the current level before every model call), "clean" (the
    clean conditioning latents at timestep 0, per-frame timesteps) or "untouched" (the prefix
    reaches the model only through `continuation_control`). `own_sampler`: the family samples
    with `sample_continuation` instead of the shared loop.
    """

    prefix: str = "noised"
    uses_control: bool = False
    own_sampler: bool = False

    @property
    def per_frame_timesteps(self) -> bool:
        return self.prefix == "clean"


@dataclass(frozen=True)
class Capabilities:
    text_to_video: bool = True
    length_extension: bool = True
    # Continuation modes by name (preset field `continuation`); the first is the family default.
    continuation: dict[str, ContinuationMode] = field(default_factory=dict)
    tta_objectives: tuple[str, ...] = ("diffusion", "continuation")
    comfy_export: bool = True  # a ComfyUI-style LoRA export exists

    def can(self, task: str) -> bool:
        if task == "generate":
            return self.text_to_video
        if task == "length_extension":
            return self.length_extension
        if task == "tta":
            return bool(self.continuation)
        raise ValueError(f"unknown task {task!r}; tasks: {TASKS}")


@dataclass
class TextEmbeds:
    """Prompt embeddings as a family's transformer consumes them.

    `sequence` [B, L, D] is what every family has; `pooled` [B, D'] (e.g. a CLIP pooler output)
    and `mask` [B, L] are there for families that use them.
    """

    sequence: torch.Tensor
    pooled: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def to(self, *args, **kwargs) -> "TextEmbeds":
        def move(t):
            if t is None:
                return None
            # masks keep their integer/bool dtype; only the device moves
            if t.dtype in (torch.bool, torch.int64, torch.int32):
                device = next((a for a in args if isinstance(a, (str, torch.device))), kwargs.get("device"))
                return t.to(device) if device is not None else t
            return t.to(*args, **kwargs)

        return TextEmbeds(move(self.sequence), move(self.pooled), move(self.mask))

    @property
    def batch(self) -> int:
        return self.sequence.shape[0]

    def expand(self, batch: int) -> "TextEmbeds":
        if self.batch == batch:
            return self
        return TextEmbeds(*(None if t is None else t.expand(batch, *t.shape[1:]) for t in (self.sequence, self.pooled, self.mask)))

    def zeros_like(self) -> "TextEmbeds":
        return TextEmbeds(*(None if t is None else torch.zeros_like(t) for t in (self.sequence, self.pooled, self.mask)))

    @staticmethod
    def cat(items: list["TextEmbeds"]) -> "TextEmbeds":
        def join(name):
            parts = [getattr(i, name) for i in items]
            return None if parts[0] is None else torch.cat(parts)

        return TextEmbeds(join("sequence"), join("pooled"), join("mask"))

    # -- storage (latent cache files): `prefix` -> sequence, `prefix.pooled`, `prefix.mask`
    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {prefix: self.sequence.cpu().contiguous()}
        for name in ("pooled", "mask"):
            t = getattr(self, name)
            if t is not None:
                out[f"{prefix}.{name}"] = t.cpu().contiguous()
        return out

    @staticmethod
    def from_tensors(tensors: dict[str, torch.Tensor], prefix: str) -> "TextEmbeds":
        seq = tensors[prefix]
        return TextEmbeds(seq if seq.ndim == 3 else seq[None], tensors.get(f"{prefix}.pooled"), tensors.get(f"{prefix}.mask"))


@dataclass(frozen=True)
class TokenLayout:
    """How a video maps onto transformer tokens: frame-major, raster order within a frame."""

    latent_frames: int
    latent_height: int
    latent_width: int
    patch_size: tuple[int, int, int] = (1, 2, 2)

    @property
    def frames(self) -> int:  # token frames (latent frames / temporal patch)
        return self.latent_frames // self.patch_size[0]

    @property
    def tokens_per_frame(self) -> int:
        return (self.latent_height // self.patch_size[1]) * (self.latent_width // self.patch_size[2])

    @property
    def num_tokens(self) -> int:
        return self.frames * self.tokens_per_frame


@dataclass(frozen=True)
class AttentionLayer:
    """A module that takes a radial processor: its processor name (diffusers' `attn_processors`
    key) and its index in `dense_layers` order."""

    processor_name: str
    index: int


@dataclass(frozen=True)
class MemoryProfile:
    """How a family's length-extension training step uses GPU memory (engine.memory.plan reads it).

    The sizes come from the transformer config; the per-token coefficients were fitted to whole-model
    measurements (`measured` says which): one block's recompute peak is
    tokens x (bytes_per_token_width x width + bytes_per_token_ffn x ffn_width / ffn_chunks), and with
    offload_activations about `inflight_blocks` block inputs are still on the GPU at once.
    """

    transformer_class: str  # diffusers class name (built on the meta device to count parameters)
    transformer_config: dict
    width: int
    ffn_width: int
    layers: int
    bytes_per_token_width: float
    bytes_per_token_ffn: float
    inflight_blocks: float
    measured: str


class ModelFamily:
    """The contract. Subclasses set the class attributes and implement the methods that raise."""

    name: str = ""
    description: str = ""
    capabilities: Capabilities = Capabilities()
    # VAE and patching: frames must be temporal_factor * k + 1; sizes multiples of size_multiple.
    temporal_factor: int = 4
    spatial_factor: int = 8
    patch_size: tuple[int, int, int] = (1, 2, 2)
    # The radial mask lets every token see the first frame (a Wan-style attention sink).
    attention_sink: bool = True
    # LoRA targets: attention projections; `lora_targets_full` adds the feed-forward layers.
    lora_targets: tuple[str, ...] = ()
    lora_targets_full: tuple[str, ...] = ()
    card_tags: tuple[str, ...] = ()
    # Noise-level experts (setting `lora_experts`): () for one transformer; a two-expert model names them
    # in `transformers(pipe)` order, high noise first.
    experts: tuple[str, ...] = ()

    @property
    def size_multiple(self) -> int:
        return self.spatial_factor * self.patch_size[1]

    def __repr__(self) -> str:
        return f"<ModelFamily {self.name}>"

    # ------------------------------------------------------------------ loading
    def default_device(self) -> torch.device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def compute_dtype(self, preset: dict, device: torch.device) -> torch.dtype:
        """The preset's dtype on accelerators; float32 on the CPU (half precision there is slow and lossy)."""
        return _DTYPES[preset["dtype"]] if device.type == "cuda" else torch.float32

    def load_pipeline(self, preset: dict, device: torch.device | None = None):
        """The preset's model (tiny / local folder / Hub id) on `device`: an object with `.transformer`."""
        raise NotImplementedError

    def transformers(self, pipe) -> list:
        """The denoising transformers of a loaded pipeline (a list: two-expert models have two)."""
        return [pipe.transformer]

    def denoiser(self, pipe, experts: str | None = None):
        """The one module `forward` runs at every noise level, and the one training attaches its LoRA to.

        `experts` (setting `lora_experts`; None: all) picks the experts of a two-expert model it holds;
        the default is the single transformer."""
        return self.transformers(pipe)[0]

    def check_lora_experts(self, experts: str | None) -> None:
        """InputError unless setting `lora_experts` fits this family (null always does)."""
        if experts is not None and not self.experts:
            raise InputError(f"model family '{self.name}' has one transformer, so lora_experts must be null "
                             f"(it picks the experts of a two-expert model), not {experts!r}.")

    def check_guidance_scale_2(self, value: float | None) -> None:
        """InputError unless setting `guidance_scale_2` fits this family (null always does)."""
        if value is not None and not self.experts:
            raise InputError(f"model family '{self.name}' has one transformer, so guidance_scale_2 must be unset "
                             f"(it is the low-noise expert's guidance of a two-expert model), not {value!r}; "
                             "set guidance_scale instead.")

    def expert_counts(self, experts: str | None = None) -> tuple[int, int]:
        """(transformers a training run keeps on the GPU, those its LoRA trains): the memory plan counts them."""
        return 1, 1

    def noise_range(self, experts: str | None = None) -> tuple[float, float]:
        """The noise levels [lo, hi) the denoiser of `experts` serves (training draws its levels there)."""
        return (0.0, 1.0)

    def lora_parts(self, state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """A LoRA state split into what stock tools load one at a time (ComfyUI: one file per expert model), by
        file-name suffix; "" is the whole adapter of a single transformer."""
        return {"": state}

    def model_identity(self, preset: dict) -> str:
        """What names the weights (the latent cache keys on it)."""
        return f"{self.name}:{preset['source']}@{preset['revision'] or 'main'}"

    def model_width(self, preset: dict) -> int | None:
        """The transformer's hidden size (the largest useful LoRA rank), or None when unknown without loading."""
        return None

    def num_layers(self, preset: dict) -> int | None:
        """Transformer blocks counted by `dense_layers`, or None when unknown without loading."""
        return None

    def _transformer_config(self, preset: dict) -> dict | None:
        """The transformer's config.json without loading the model: the tiny preset's, a local folder's, the HF
        cache's for a Hub id, else the published one (official_configs); None when none is known."""
        if preset["source"] == "tiny":
            return dict(preset["tiny"]["transformer"])
        folder = Path(os.path.expanduser(preset["source"]))
        candidates = [folder / "transformer" / "config.json"]
        if not folder.is_dir():  # a Hub id: the config may be in the HF cache already
            try:
                from huggingface_hub import try_to_load_from_cache

                hit = try_to_load_from_cache(preset["source"], "transformer/config.json", revision=preset["revision"])
                candidates = [Path(hit)] if isinstance(hit, str) else []
            except Exception:  # noqa: BLE001 - unknown is an acceptable answer
                candidates = []
        for path in candidates:
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                continue
        from .official_configs import official_config

        return official_config(preset["source"])  # not downloaded yet: the published config

    # The memory plan's per-token fit ({"bytes_per_token_width", "bytes_per_token_ffn", "inflight_blocks"}, see
    # MemoryProfile) and what it was fitted to; None: this family's memory use has not been measured.
    MEMORY_FIT: dict | None = None
    MEMORY_MEASURED: str = ""

    def ffn_width(self, cfg: dict) -> int:
        """The feed-forward's hidden width in a transformer config."""
        raise NotImplementedError

    def memory_profile(self, preset: dict) -> MemoryProfile | None:
        """What the memory plan needs (None: this family's memory use has not been measured)."""
        cfg = self._transformer_config(preset) if self.MEMORY_FIT else None
        if not cfg:
            return None
        return MemoryProfile(transformer_class=self.transformer_class, transformer_config=cfg,
                             width=self.model_width(preset), ffn_width=self.ffn_width(cfg),
                             layers=self.num_layers(preset), measured=self.MEMORY_MEASURED, **self.MEMORY_FIT)

    def offload_encoders(self, pipe) -> None:
        """Move what training on cached latents does not need (VAE, text encoders) to the CPU."""
        for name in ("vae", "text_encoder", "text_encoder_2"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.to("cpu")

    def encoder_dtypes(self, pipe) -> str:
        """The dtypes of the encoders (part of the latent cache key)."""
        return f"vae={pipe.vae.dtype},text={pipe.text_encoder.dtype}"

    # ------------------------------------------------------------------ geometry
    def check_frame_count(self, num_frames, name: str = "num_frames") -> int:
        from ..validation import check_frame_count

        return check_frame_count(num_frames, name, self.temporal_factor)

    def check_size(self, height, width) -> tuple[int, int]:
        from ..validation import check_size

        return check_size(height, width, self.size_multiple)

    def latent_frames(self, num_frames: int) -> int:
        return (int(num_frames) - 1) // self.temporal_factor + 1

    def pixel_frames(self, latent_frames: int) -> int:
        """Pixel frames whose encoding has `latent_frames` latent frames (0 -> 0)."""
        return 0 if latent_frames == 0 else (latent_frames - 1) * self.temporal_factor + 1

    def token_layout(self, num_frames: int, height: int, width: int) -> TokenLayout:
        return TokenLayout(self.latent_frames(num_frames), height // self.spatial_factor, width // self.spatial_factor,
                           self.patch_size)

    def layout_from_latents(self, shape) -> TokenLayout:
        """Layout from a latent tensor shape [B, C, F, H, W] as the transformer receives it."""
        return TokenLayout(shape[2], shape[3], shape[4], self.patch_size)

    # ------------------------------------------------------------------ text and video
    def encode_prompt(self, pipe, prompt: str, negative_prompt: str | None,
                      guidance_scale: float) -> tuple[TextEmbeds, TextEmbeds | None]:
        raise NotImplementedError

    def encode_video(self, pipe, video: torch.Tensor, sample: bool = False,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels [B, 3, F, H, W] in [-1, 1] -> the latents the transformer denoises."""
        raise NotImplementedError

    def decode_latents(self, pipe, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> pixels [B, 3, F, H, W] in [-1, 1]."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the objective
    def forward(self, transformer, latents: torch.Tensor, timestep: torch.Tensor, text: TextEmbeds, *,
                control: torch.Tensor | None = None, fps: float | None = None) -> torch.Tensor:
        """The velocity prediction for latents [B, C, F, H, W] at `timestep` [B] (or [B, F] where the family
        takes per-frame levels) on the 0..1000 scale. `transformer` may be wrapped (DDP)."""
        raise NotImplementedError

    def flow_pair(self, x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, velocity target) at noise levels `sigmas` [B] in [0, 1]."""
        s = sigmas.view(-1, *([1] * (x0.ndim - 1))).to(x0)
        return (1 - s) * x0 + s * noise, noise - x0

    def timesteps(self, sigmas: torch.Tensor) -> torch.Tensor:
        return sigmas * NUM_TRAIN_TIMESTEPS

    def flow_shift(self, pipe) -> float:
        """The sampler's shift, which training noise levels follow."""
        scheduler = getattr(pipe, "scheduler", None)
        return float(getattr(scheduler, "config", {}).get("flow_shift", 3.0) or 3.0)

    def sample_sigmas(self, batch: int, generator: torch.Generator, latent_shape, *, scheme: str = "logit_normal",
                      shift: float = 3.0, noise_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
        """Training noise levels: logit-normal (or uniform), shifted like the sampler's.

        `noise_range` [lo, hi): the same distribution conditioned on that range (one expert's share of
        the levels), drawn by inverting its CDF so the draws stay one per sample and deterministic."""
        if tuple(noise_range) == (0.0, 1.0):
            if scheme == "logit_normal":
                u = torch.sigmoid(torch.randn(batch, generator=generator))
            else:
                u = torch.rand(batch, generator=generator)
            u = u.clamp(1e-4, 1 - 1e-4)
            return shift * u / (1 + (shift - 1) * u)
        lo, hi = (_unshift(float(x), shift) for x in noise_range)  # the range before the shift
        r = torch.rand(batch, generator=generator, dtype=torch.float64)
        if scheme == "logit_normal":  # u = sigmoid(z), z ~ N(0, 1) restricted to [logit(lo), logit(hi))
            normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
            c_lo, c_hi = (normal.cdf(torch.logit(torch.tensor(x, dtype=torch.float64), eps=1e-12)) for x in (lo, hi))
            u = torch.sigmoid(normal.icdf((c_lo + r * (c_hi - c_lo)).clamp(1e-12, 1 - 1e-12)))
        else:
            u = lo + r * (hi - lo)
        u = u.clamp(max(lo, 1e-4), min(hi, 1 - 1e-4))
        sigmas = (shift * u / (1 + (shift - 1) * u)).float()
        # float rounding must not push a level across the boundary into the other expert's share
        return sigmas.clamp(float(noise_range[0]), math.nextafter(float(noise_range[1]), 0.0))

    # ------------------------------------------------------------------ sampling
    def generate(self, pipe, *, prompt: str | None = None, negative_prompt: str | None = None,
                 embeds: TextEmbeds | None = None, negative_embeds: TextEmbeds | None = None, num_frames: int,
                 height: int, width: int, steps: int, guidance_scale: float, generator: torch.Generator,
                 on_step: Callable[[int], None] | None = None, guidance_scale_2: float | None = None) -> np.ndarray:
        """Text-to-video: float frames [F, H, W, 3] in [0, 1], from a prompt or from embeddings.
        `guidance_scale_2`: the low-noise expert's guidance (two-expert families; None: guidance_scale)."""
        raise ConfigError(f"model family '{self.name}' cannot generate videos from text.")

    def sample_continuation(self, pipe, cond_latents, total_latent_frames, prompt_embeds, negative_embeds, *, steps,
                            guidance_scale, noise, control, progress=None) -> torch.Tensor:
        """The family's own continuation sampler (modes with `own_sampler`)."""
        raise NotImplementedError

    def continuation_control(self, pipe, mode: str, pixels: torch.Tensor, cond_latents: torch.Tensor,
                             known_latents: int, window_latents: int) -> torch.Tensor | None:
        """Conditioning for a mode with `uses_control`: a window of `window_latents` latent frames (its pixels
        `pixels` [1, 3, F, H, W]) whose first `known_latents` are known (`cond_latents` holds at least those)."""
        return None

    # ------------------------------------------------------------------ attention
    def attention_layers(self, transformer) -> list[AttentionLayer]:
        """The self-attention modules that take radial processors."""
        raise NotImplementedError

    def radial_processor(self, layer: AttentionLayer, schedule):
        """A processor for `layer` that asks `schedule` whether to run radial or dense attention."""
        raise NotImplementedError

    def stock_processor(self, transformer):
        """The stock diffusers processor (dense attention exactly as the library runs it)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ LoRA
    def default_lora_targets(self, include_mlp: bool = False) -> list[str]:
        return list(self.lora_targets_full if include_mlp else self.lora_targets)

    def save_lora_weights(self, directory: Path, state: dict[str, torch.Tensor], metadata: dict, weight_name: str) -> None:
        """Write the diffusers-format LoRA file the family's stock pipeline loads (`load_lora_weights`)."""
        import json

        from safetensors.torch import save_file

        save_file({f"transformer.{k}": v for k, v in state.items()}, str(Path(directory) / weight_name),
                  metadata={"format": "pt", "lora_adapter_metadata": json.dumps(
                      {f"transformer.{k}": v for k, v in metadata.items()}, sort_keys=True, default=list)})

    def comfy_key(self, peft_key: str) -> str | None:
        """The ComfyUI name of a LoRA weight (`...lora_A.weight` -> `diffusion_model....lora_down.weight`), or
        None when ComfyUI has no module of that name (the key is skipped and reported)."""
        return None

    def comfy_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The LoRA weights the ComfyUI export renames (`comfy_key`); a family whose original checkpoint fuses
        layers (q/k/v in one Linear) merges their LoRAs here. Default: unchanged."""
        return state

    def comfy_alpha(self, comfy_module: str) -> bool:
        """Whether the export gives this module an `.alpha` (else its scale is folded into the up weights)."""
        return True

    def load_lora(self, pipe, folder: Path, weight_name: str, adapter_name: str) -> None:
        pipe.load_lora_weights(str(folder), weight_name=weight_name, adapter_name=adapter_name)

    def unload_lora(self, pipe) -> None:
        pipe.unload_lora_weights()

    # ------------------------------------------------------------------ Hub card
    def card_usage(self, *, base_model: str | None, repo: str, weight_name: str, num_frames: int, height: int,
                   width: int, fps: int, tiny: bool) -> list[str]:
        """Model-card lines: how a stock library loads and runs the adapter."""
        return [f"Load `{weight_name}` into the {self.name} pipeline this adapter was trained on."]

    def card_comfy_note(self) -> str:
        return "the module names of the model's original checkpoint"

    # ------------------------------------------------------------------ helpers for subclasses
    @staticmethod
    def unwrap(model):
        """The model under a DDP / accelerate wrapper."""
        return getattr(model, "module", model)


def step_callback(on_step):
    """A diffusers `callback_on_step_end` that reports each finished step (1-based) to `on_step`, if given."""
    def callback(pipeline, step, timestep, callback_kwargs):
        if on_step is not None:
            on_step(step + 1)
        return callback_kwargs
    return callback


def _unshift(sigma: float, shift: float) -> float:
    """The u with shift * u / (1 + (shift - 1) * u) == sigma."""
    return sigma / (shift - (shift - 1) * sigma)


def check_known_mode(family: ModelFamily, mode: Any) -> ContinuationMode:
    modes = family.capabilities.continuation
    if mode not in modes:
        raise InputError(f"continuation mode {mode!r} is not one of model family '{family.name}''s modes: {list(modes)}.")
    return modes[mode]
