"""Wan2.1 VACE models: video extension through VACE's conditioning video and mask.

VACE continues a clip the way its pipeline does video extension: the conditioning video holds
the known frames (the rest is blank), the mask is 0 on known frames and 1 on frames to
generate, and both go to `WanVACETransformer3DModel` as `control_hidden_states` (the inactive
and reactive VAE encodings plus the 8x8-unshuffled mask, 96 channels), built with the
pipeline's own `prepare_video_latents` / `prepare_masks`. The noisy latents themselves are not
touched. Everything else is Wan's: `VaceFamily` is a `WanFamily`.

Length-extension training is not offered: its forward needs a conditioning video the recipe
has not defined (nothing known is plain T2V, which the Wan presets train).
"""

from __future__ import annotations

import torch

from .base import Capabilities, ContinuationMode
from .wan import WanFamily


class VaceFamily(WanFamily):
    name = "wan_vace"
    description = "Wan2.1 VACE (video extension through a conditioning video and mask)"
    capabilities = Capabilities(text_to_video=True, length_extension=False,
                                continuation={"vace": ContinuationMode(prefix="untouched", uses_control=True)})
    card_tags = ("wan", "vace")
    pipeline_class = "WanVACEPipeline"
    transformer_class = "WanVACETransformer3DModel"

    @torch.no_grad()
    def control_latents(self, pipe, video: torch.Tensor, known_frames: int) -> torch.Tensor:
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

    def continuation_control(self, pipe, mode, pixels, cond_latents, known_latents, window_latents):
        return self.control_latents(pipe, pixels[:, :, :self.pixel_frames(window_latents)],
                                    self.pixel_frames(known_latents))

    def forward(self, transformer, latents, timestep, text, *, control=None, fps=None):
        """One timestep per sample, given VACE `control` latents (see `control_latents`)."""
        if control is None:
            raise ValueError("VACE needs control latents (VaceFamily.control_latents)")
        if timestep.ndim != 1:
            raise ValueError("VACE takes one timestep per sample, not per frame")
        return transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=text.sequence,
                           control_hidden_states=control.to(device=latents.device, dtype=latents.dtype),
                           return_dict=False)[0]


FAMILY = VaceFamily()


def build_tiny_pipeline(tiny: dict):
    return FAMILY.build_tiny_pipeline(tiny)


def load_pipeline(preset: dict, device: torch.device | None = None):
    return FAMILY.load_pipeline(preset, device)


control_latents = FAMILY.control_latents
