"""SkyReels-V2 diffusion-forcing models (Wan2.1 architecture, per-frame noise levels).

`Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers` was trained with an independent noise level per
latent frame, so a clean prefix is given to it the way its own video-extension pipeline does:
the prefix latents are the clean conditioning latents at timestep 0, the rest at the current
level, through `SkyReelsV2Transformer3DModel(..., timestep=[B, F], enable_diffusion_forcing=True)`.
Everything else (VAE, text encoder, prompt and video encoding, token layout, LoRA targets) is
Wan's, imported from `wan.py`.
"""

from __future__ import annotations

import torch

from . import wan
from .wan import (  # noqa: F401  (the family interface, shared with Wan)
    LORA_TARGET_MODULES, LORA_TARGET_MODULES_FULL, TokenLayout, compute_dtype, decode_latents, default_device,
    encode_prompt, encode_video, layout_from_latents, token_layout,
)

FAMILY = "skyreels"
CONTINUATION_MODES = ("per_token", "replacement")


def build_tiny_pipeline(tiny: dict):
    """A randomly initialised SkyReels-V2 diffusion-forcing pipeline from the preset's `tiny` configs."""
    from diffusers import SkyReelsV2DiffusionForcingPipeline, SkyReelsV2Transformer3DModel

    return SkyReelsV2DiffusionForcingPipeline(**wan.build_tiny_parts(tiny, lambda cfg: SkyReelsV2Transformer3DModel(**cfg)))


def load_pipeline(preset: dict, device: torch.device | None = None):
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    return wan.load_pipeline(preset, device, pipeline_cls=SkyReelsV2DiffusionForcingPipeline, builder=build_tiny_pipeline)


def fps_class(fps: float | None) -> int:
    """The model's fps embedding index, as its pipelines compute it: 0 for 16 fps, 1 otherwise (24 fps)."""
    return 0 if fps is not None and round(float(fps)) == 16 else 1


def transformer_forward(transformer, hidden_states: torch.Tensor, timestep: torch.Tensor,
                        encoder_hidden_states: torch.Tensor, fps: float | None = None, **_) -> torch.Tensor:
    """Velocity prediction with per-frame timesteps ([B] is broadcast to every frame, [B, F] used as is)."""
    batch, frames = hidden_states.shape[0], hidden_states.shape[2] // transformer.config.patch_size[0]
    if timestep.ndim == 1:
        timestep = timestep[:, None].expand(batch, frames)
    extra = {}
    if transformer.config.inject_sample_info:
        extra["fps"] = [fps_class(fps)] * batch
    return transformer(hidden_states=hidden_states, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                       enable_diffusion_forcing=True, return_dict=False, **extra)[0]


def use_dense_attention(transformer) -> None:
    """SkyReels' stock attention processors and no radial hook."""
    from diffusers.models.transformers.transformer_skyreels_v2 import SkyReelsV2AttnProcessor

    from ..attention.processor import remove_radial_attention

    remove_radial_attention(transformer)
    transformer.set_attn_processor(SkyReelsV2AttnProcessor())
