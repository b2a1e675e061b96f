"""Wan2.2 TI2V-5B: one Wan transformer on the Wan2.2 VAE (48 latent channels, 16x spatial compression).

The VAE patchifies 2x2 before its 8x convolutional downsampling (`patch_size` 2, `scale_factor_spatial` 16),
and the transformer patches 2x2 on top: sizes are multiples of 32, a 1280x704 frame is 80x44 latents and
40x22 tokens. Time is compressed 4x like Wan2.1 (latent frames 1 + (n - 1) // 4). The pipeline runs with
`expand_timesteps=True`: one timestep per token ([B, seq_len]), which is also how the model takes a clean
first frame (its image-to-video mode), so `forward` passes per-token timesteps as the pipeline does and
continuation defaults to a clean prefix at timestep 0 ("per_token").
"""

from __future__ import annotations

import torch

from .base import Capabilities, ContinuationMode
from .wan import WanFamily, build_tiny_parts


class Wan22TI2VFamily(WanFamily):
    name = "wan22_ti2v"
    description = "Wan2.2 TI2V-5B text-to-video (diffusers WanPipeline with the Wan2.2 VAE, per-token timesteps)"
    capabilities = Capabilities(
        text_to_video=True, length_extension=True,
        continuation={"per_token": ContinuationMode(prefix="clean"), "replacement": ContinuationMode(prefix="noised")},
    )
    spatial_factor = 16  # Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json: scale_factor_spatial 16
    card_tags = ("wan", "wan2.2")

    def build_tiny_pipeline(self, tiny: dict):
        from diffusers import WanPipeline, WanTransformer3DModel

        return WanPipeline(**build_tiny_parts(tiny, lambda cfg: WanTransformer3DModel(**cfg)), expand_timesteps=True)

    def forward(self, transformer, latents, timestep, text, *, control=None, fps=None):
        """One timestep per sample ([B]) goes to every token, as WanPipeline(expand_timesteps=True) passes it."""
        if timestep.ndim == 1:
            frames = latents.shape[2] // self.unwrap(transformer).config.patch_size[0]
            timestep = timestep[:, None].expand(-1, frames)
        return super().forward(transformer, latents, timestep, text, control=control, fps=fps)


FAMILY = Wan22TI2VFamily()


def build_tiny_pipeline(tiny: dict):
    return FAMILY.build_tiny_pipeline(tiny)


def load_pipeline(preset: dict, device: torch.device | None = None):
    return FAMILY.load_pipeline(preset, device)
