"""Wan2.1 VACE models: video extension through VACE's conditioning video and mask.

VACE continues a clip the way its pipeline does video extension: the conditioning video holds
the known frames (the rest is blank), the mask is 0 on known frames and 1 on frames to
generate, and both go to `WanVACETransformer3DModel` as `control_hidden_states` (the inactive
and reactive VAE encodings plus the 8x8-unshuffled mask, 96 channels), built with the
pipeline's own `prepare_video_latents` / `prepare_masks`. The noisy latents themselves are not
touched. Everything else is Wan's, imported from `wan.py`.
"""

from __future__ import annotations

import torch

from . import wan
from .wan import (  # noqa: F401  (the family interface, shared with Wan)
    LORA_TARGET_MODULES, LORA_TARGET_MODULES_FULL, TokenLayout, compute_dtype, decode_latents, default_device,
    encode_prompt, encode_video, layout_from_latents, token_layout, use_dense_attention,
)

FAMILY = "wan_vace"
CONTINUATION_MODES = ("vace",)


def build_tiny_pipeline(tiny: dict):
    """A randomly initialised Wan2.1-VACE pipeline from the preset's `tiny` configs."""
    from diffusers import WanVACEPipeline, WanVACETransformer3DModel

    return WanVACEPipeline(**wan.build_tiny_parts(tiny, lambda cfg: WanVACETransformer3DModel(**cfg)))


def load_pipeline(preset: dict, device: torch.device | None = None):
    from diffusers import WanVACEPipeline

    return wan.load_pipeline(preset, device, pipeline_cls=WanVACEPipeline, builder=build_tiny_pipeline)


@torch.no_grad()
def control_latents(pipe, video: torch.Tensor, known_frames: int) -> torch.Tensor:
    """VACE's extension conditioning for pixels [1, 3, F, H, W] in [-1, 1] whose first `known_frames` are known.

    Frames after `known_frames` are blanked (0, mid grey) and masked (1 = generate). Returns
    [1, 2 * z_dim + 64, latent frames, H/8, W/8] on the VAE's device.
    """
    device = pipe.vae.device
    video = video.to(device=device, dtype=torch.float32).clone()
    video[:, :, known_frames:] = 0
    mask = torch.ones_like(video)
    mask[:, :, :known_frames] = 0
    latents = pipe.prepare_video_latents(video, mask, [[]], None, device)
    masks = pipe.prepare_masks(mask, [[]], None)
    return torch.cat([latents.float(), masks.to(latents.device).float()], dim=1)


def transformer_forward(transformer, hidden_states: torch.Tensor, timestep: torch.Tensor,
                        encoder_hidden_states: torch.Tensor, control: torch.Tensor | None = None, **_) -> torch.Tensor:
    """Velocity prediction given VACE `control` latents (see `control_latents`); one timestep per sample."""
    if control is None:
        raise ValueError("VACE needs control latents (wan_vace.control_latents)")
    if timestep.ndim != 1:
        raise ValueError("VACE takes one timestep per sample, not per frame")
    return transformer(hidden_states=hidden_states, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                       control_hidden_states=control.to(device=hidden_states.device, dtype=hidden_states.dtype),
                       return_dict=False)[0]
