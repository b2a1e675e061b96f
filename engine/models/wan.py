"""Wan2.1-family models (T2V 1.3B / 14B and the embedded tiny model) through diffusers.

Everything model-specific lives here: where weights come from (tiny config, local folder,
Hub id), dtype/device placement, prompt encoding, VAE encode/decode with Wan's latent
normalisation, the latent/token layout the attention code needs, and the LoRA targets.
The tiny model is saved with `save_pretrained` once and then loaded through exactly the
same `from_pretrained` path as a downloaded checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelLoadError
from ..paths import cache_dir

FAMILY = "wan"
# Bump when the way tiny models are built changes, so cached builds are rebuilt.
TINY_FORMAT_VERSION = 1

# Attention projections of every Wan block (self- and cross-attention).
LORA_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
# The seed's longer list: attention plus the feed-forward projections.
LORA_TARGET_MODULES_FULL = LORA_TARGET_MODULES + ["ffn.net.0.proj", "ffn.net.2"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def compute_dtype(preset: dict, device: torch.device) -> torch.dtype:
    """The preset's dtype on accelerators; float32 on the CPU (half precision there is slow and lossy)."""
    return _DTYPES[preset["dtype"]] if device.type == "cuda" else torch.float32


# ---------------------------------------------------------------------------- tiny model


def tiny_model_dir(tiny: dict, family: str = FAMILY) -> Path:
    # The Wan key stays as it was (existing caches remain valid); other families add their name.
    key = {"v": TINY_FORMAT_VERSION, "tiny": tiny} if family == FAMILY else {"v": TINY_FORMAT_VERSION, "family": family, "tiny": tiny}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"tiny-{family.replace('_', '-')}-{digest}"


def build_tiny_parts(tiny: dict, make_transformer) -> dict:
    """The shared tiny components (tokenizer, UMT5, Wan VAE, UniPC) plus `make_transformer(config)`.

    `make_transformer` gets the preset's transformer config (with `text_dim` and a tuple
    `patch_size`) and returns the family's transformer; it is built at the same point of the
    seeded RNG stream as Wan's, so the tiny Wan model is unchanged by this split.
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    from .tiny_tokenizer import build_tiny_tokenizer

    torch.manual_seed(int(tiny.get("seed", 0)))
    tokenizer = build_tiny_tokenizer(**tiny.get("tokenizer", {}))
    text_cfg = UMT5Config(vocab_size=len(tokenizer), **tiny["text_encoder"])
    text_encoder = UMT5EncoderModel(text_cfg).eval()
    transformer_cfg = dict(tiny["transformer"])
    transformer_cfg["patch_size"] = tuple(transformer_cfg.get("patch_size", (1, 2, 2)))
    transformer = make_transformer({"text_dim": text_cfg.d_model, **transformer_cfg})
    vae = AutoencoderKLWan(**tiny["vae"])
    # Wan2.1's own sampler settings: UniPC on flow-matching sigmas.
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
        **tiny.get("scheduler", {"flow_shift": 3.0}),
    )
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer)


def build_tiny_pipeline(tiny: dict):
    """A randomly initialised Wan2.1-architecture pipeline from the preset's `tiny` configs."""
    from diffusers import WanPipeline, WanTransformer3DModel

    return WanPipeline(**build_tiny_parts(tiny, lambda cfg: WanTransformer3DModel(**cfg)))


def ensure_tiny_model(tiny: dict, family: str = FAMILY, builder=None) -> Path:
    """Build and save the tiny model once; later calls return the cached folder.

    `builder(tiny)` makes the pipeline (default: Wan's); `family` keeps caches apart.
    """
    target = tiny_model_dir(tiny, family)
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a temporary sibling and rename, so a crash never leaves a half-saved model.
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        (builder or build_tiny_pipeline)(tiny).save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race; its copy is identical
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------- loading


def resolve_source(preset: dict, builder=None) -> str:
    """A local folder path or a Hub id for the preset's weights (`builder`: the family's tiny builder)."""
    source = preset["source"]
    if source == "tiny":
        return str(ensure_tiny_model(preset["tiny"], preset.get("family", FAMILY), builder))
    expanded = Path(os.path.expanduser(source))
    looks_local = source.startswith((".", "/", "~")) or expanded.exists() or source.count("/") != 1
    if looks_local:
        if not expanded.is_dir():
            raise ModelLoadError(
                f"Model folder '{source}' (preset '{preset['name']}', field 'source') does not exist. "
                "Point 'source' at a folder saved with save_pretrained, or at a Hub id like "
                "'Wan-AI/Wan2.1-T2V-1.3B-Diffusers'."
            )
        if not (expanded / "model_index.json").is_file():
            raise ModelLoadError(
                f"Model folder '{source}' has no model_index.json, so it is not a diffusers pipeline folder. "
                "Download the '-Diffusers' variant of the model (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers)."
            )
        return str(expanded)
    return source


def _hub_help(source: str, err: Exception) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    why = "offline mode is on (HF_HUB_OFFLINE=1)" if offline else "the Hugging Face Hub could not be reached or refused the request"
    return ModelLoadError(
        f"Could not load model '{source}': it is not in the local Hugging Face cache and {why}. "
        f"To get the weights, run `hf download {source}` on a machine with internet access (they land in "
        "the HF cache, HF_HOME), or download them to a folder and set the preset's 'source' to that folder. "
        f"Details: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    )


def load_pipeline(preset: dict, device: torch.device | None = None, pipeline_cls=None, builder=None):
    """Load the preset's pipeline onto `device` (default: CUDA when present, else CPU).

    `pipeline_cls` / `builder` let other Wan-architecture families (SkyReels-V2, VACE) reuse
    this path; the default is WanPipeline and the tiny Wan builder.
    """
    from diffusers import AutoencoderKLWan, WanPipeline

    pipeline_cls = pipeline_cls or WanPipeline
    device = device or default_device()
    source = resolve_source(preset, builder)
    dtype = compute_dtype(preset, device)
    is_hub = not Path(source).is_dir()
    try:
        # Wan's VAE is kept in float32 (its causal convolutions drift in half precision).
        vae = AutoencoderKLWan.from_pretrained(source, subfolder="vae", dtype=torch.float32, revision=preset["revision"])
        pipe = pipeline_cls.from_pretrained(source, vae=vae, dtype=dtype, revision=preset["revision"])
    except ModelLoadError:
        raise
    except (OSError, ValueError) as err:
        if is_hub:
            raise _hub_help(source, err) from None
        raise ModelLoadError(f"Could not load the model in '{source}': {err}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# ---------------------------------------------------------------------------- encode / decode


def encode_prompt(pipe, prompt: str, negative_prompt: str | None, guidance_scale: float, max_sequence_length: int = 512):
    """Text embeddings (positive, negative or None) as the transformer consumes them."""
    pos, neg = pipe.encode_prompt(
        prompt=prompt,
        negative_prompt=negative_prompt or "",
        do_classifier_free_guidance=guidance_scale > 1.0,
        max_sequence_length=max_sequence_length,
        device=pipe._execution_device,
    )
    return pos, neg


def _latent_stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=like.device, dtype=like.dtype).view(shape)
    std = torch.tensor(vae.config.latents_std, device=like.device, dtype=like.dtype).view(shape)
    return mean, std


@torch.no_grad()
def encode_video(pipe, video: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pixels [B, 3, F, H, W] in [-1, 1] -> normalised latents [B, z, (F-1)/4+1, H/8, W/8]."""
    vae = pipe.vae
    dist = vae.encode(video.to(device=vae.device, dtype=vae.dtype)).latent_dist
    latents = dist.sample(generator) if sample else dist.mode()
    mean, std = _latent_stats(vae, latents)
    return (latents - mean) / std


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents -> pixels [B, 3, F, H, W] in [-1, 1]."""
    vae = pipe.vae
    latents = latents.to(device=vae.device, dtype=vae.dtype)
    mean, std = _latent_stats(vae, latents)
    return vae.decode(latents * std + mean, return_dict=False)[0].clamp(-1, 1)


# ---------------------------------------------------------------------------- token layout


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


def token_layout(num_frames: int, height: int, width: int, temporal_factor: int = 4, spatial_factor: int = 8,
                 patch_size=(1, 2, 2)) -> TokenLayout:
    return TokenLayout((num_frames - 1) // temporal_factor + 1, height // spatial_factor, width // spatial_factor, tuple(patch_size))


def layout_from_latents(shape, patch_size=(1, 2, 2)) -> TokenLayout:
    """Layout from a latent tensor shape [B, C, F, H, W] as the transformer receives it."""
    return TokenLayout(shape[2], shape[3], shape[4], tuple(patch_size))


# ---------------------------------------------------------------------------- continuation


# How this family continues a clean prefix (engine/continuation.py): the preset's
# `continuation` field picks one of these; the first is the family default.
CONTINUATION_MODES = ("replacement", "per_token")


def transformer_forward(transformer, hidden_states: torch.Tensor, timestep: torch.Tensor,
                        encoder_hidden_states: torch.Tensor, **_) -> torch.Tensor:
    """The transformer's velocity prediction.

    `timestep` is [B] (one noise level for the whole clip) or [B, F] (one per latent frame).
    Per-frame levels are expanded to Wan's per-token timesteps [B, seq_len] (frame-major, as the
    tokens are laid out), which WanTransformer3DModel accepts (the Wan2.2 TI2V path).
    """
    if timestep.ndim == 2:
        pt, ph, pw = transformer.config.patch_size
        if pt != 1:
            raise ValueError("per-frame timesteps need a temporal patch size of 1")
        per_frame = (hidden_states.shape[3] // ph) * (hidden_states.shape[4] // pw)
        timestep = timestep.repeat_interleave(per_frame, dim=1)
    return transformer(hidden_states=hidden_states, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                       return_dict=False)[0]


def use_dense_attention(transformer) -> None:
    """Stock dense attention processors and no radial hook (test-time adaptation runs dense)."""
    from ..attention.processor import remove_radial_attention

    remove_radial_attention(transformer)
