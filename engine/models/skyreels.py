"""SkyReels-V2 diffusion-forcing models (Wan2.1 architecture, per-frame noise levels).

`Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers` was trained with an independent noise level per
latent frame, so a clean prefix is given to it the way its own video-extension pipeline does:
the prefix latents are the clean conditioning latents at timestep 0, the rest at the current
level, through `SkyReelsV2Transformer3DModel(..., timestep=[B, F], enable_diffusion_forcing=True)`.
Everything else (VAE, text encoder, prompt and video encoding, token layout, LoRA names) is
Wan's: `SkyReelsFamily` is a `WanFamily`.
"""

from __future__ import annotations

import torch

from .base import Capabilities, ContinuationMode
from .wan import WanFamily


def fps_class(fps: float | None) -> int:
    """The model's fps embedding index, as its pipelines compute it: 0 for 16 fps, 1 otherwise (24 fps)."""
    return 0 if fps is not None and round(float(fps)) == 16 else 1


class SkyReelsFamily(WanFamily):
    name = "skyreels"
    description = "SkyReels-V2 diffusion forcing (Wan2.1 architecture, per-frame noise levels)"
    capabilities = Capabilities(
        text_to_video=True, length_extension=False,
        continuation={"per_token": ContinuationMode(prefix="clean"), "replacement": ContinuationMode(prefix="noised")},
    )
    card_tags = ("wan", "skyreels-v2")
    pipeline_class = "SkyReelsV2DiffusionForcingPipeline"
    transformer_class = "SkyReelsV2Transformer3DModel"

    def forward(self, transformer, latents, timestep, text, *, control=None, fps=None):
        """Per-frame timesteps ([B] is broadcast to every frame, [B, F] used as is)."""
        config = self.unwrap(transformer).config
        batch, frames = latents.shape[0], latents.shape[2] // config.patch_size[0]
        if timestep.ndim == 1:
            timestep = timestep[:, None].expand(batch, frames)
        extra = {"fps": [fps_class(fps)] * batch} if config.inject_sample_info else {}
        return transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=text.sequence,
                           enable_diffusion_forcing=True, return_dict=False, **extra)[0]

    def stock_processor(self, transformer):
        from diffusers.models.transformers.transformer_skyreels_v2 import SkyReelsV2AttnProcessor

        return SkyReelsV2AttnProcessor()


FAMILY = SkyReelsFamily()


def build_tiny_pipeline(tiny: dict):
    return FAMILY.build_tiny_pipeline(tiny)


def load_pipeline(preset: dict, device: torch.device | None = None):
    return FAMILY.load_pipeline(preset, device)
