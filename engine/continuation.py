"""Continuation sampling: generate a clip whose first latent frames are a given (clean) prefix.

The stock pipelines do not take a clean prefix this way, so this is our own loop over a copy of
the pipeline's scheduler (UniPC for the Wan-architecture families) or a plain Euler step. How the
prefix is held is the family's continuation mode (`engine.models.base.ContinuationMode`, named by
the preset's `continuation` field):

- prefix "noised": before every model call the prefix latents are set to the conditioning
  latents noised to the current level with the run's own noise, (1 - sigma) * cond + sigma * noise;
  after the last step they are the conditioning latents.
- prefix "clean": the prefix latents are the clean conditioning latents at timestep 0, the other
  frames at the current timestep (per-frame timesteps, as diffusion-forcing models take them).
- prefix "untouched" (with `uses_control`): the latents are not touched; the known frames reach
  the model only through the family's conditioning (`control`).
- `own_sampler`: the family samples itself (its guidance and schedule are part of the model).

The initial noise comes from the seed alone (`initial_noise`), so a baseline and an adapted
model given the same seed start from the same noise and take the same steps.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch

from .errors import InputError
from .models.base import check_known_mode
from .settings import TTA_SAMPLERS as SAMPLERS


def initial_noise(shape, seed: int) -> torch.Tensor:
    """Standard normal float32 noise on the CPU from `seed` only (identical on every device)."""
    return torch.randn(tuple(shape), generator=torch.Generator("cpu").manual_seed(int(seed)), dtype=torch.float32)


def frame_timesteps(t: torch.Tensor | float, batch: int, frames: int, prefix: int, device) -> torch.Tensor:
    """[batch, frames] timesteps: 0 on the first `prefix` frames (clean), `t` elsewhere."""
    ts = torch.full((batch, frames), float(t), device=device, dtype=torch.float32)
    ts[:, :prefix] = 0.0
    return ts


@torch.no_grad()
def sample_continuation(pipe, fam, cond_latents: torch.Tensor, total_latent_frames: int, prompt_embeds,
                        negative_embeds, *, mode: str, steps: int, guidance_scale: float,
                        noise: torch.Tensor, control: torch.Tensor | None = None, fps: float | None = None,
                        sampler: str = "scheduler", progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Denoise `noise` [B, C, total_latent_frames, h, w] into latents whose first frames continue from `cond_latents`.

    `fam` is the model family (its `forward` and continuation modes); `control` is the family's
    conditioning for modes that use one; `fps` feeds models with an fps embedding. Returns
    float32 latents; with a "noised" or "clean" prefix the prefix equals `cond_latents` exactly.
    """
    spec = check_known_mode(fam, mode)
    if sampler not in SAMPLERS:
        raise InputError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}.")
    if spec.uses_control and control is None:
        raise InputError(f"mode {mode!r} needs the family's conditioning (control).")
    prefix = cond_latents.shape[2]
    if noise.shape[2] != total_latent_frames or not 0 < prefix < total_latent_frames:
        raise InputError(f"noise has {noise.shape[2]} latent frames and the prefix {prefix}; "
                         f"expected {total_latent_frames} with a shorter prefix.")
    if spec.own_sampler:
        return fam.sample_continuation(pipe, cond_latents, total_latent_frames, prompt_embeds, negative_embeds,
                                       steps=steps, guidance_scale=guidance_scale, noise=noise, control=control,
                                       progress=progress)
    transformer = fam.denoiser(pipe)  # every noise level (a two-expert model routes each to its expert)
    device, dtype = transformer.device, transformer.dtype
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(steps, device=device)
    timesteps, sigmas = scheduler.timesteps, scheduler.sigmas.float()
    cond = cond_latents.to(device=device, dtype=torch.float32)
    noise = noise.to(device=device, dtype=torch.float32)
    x = noise.clone()
    use_cfg = guidance_scale > 1.0 and negative_embeds is not None

    def velocity(latents, t, embeds):
        if spec.per_frame_timesteps:
            ts = frame_timesteps(t, latents.shape[0], latents.shape[2], prefix, device)
        else:
            ts = torch.full((latents.shape[0],), float(t), device=device, dtype=torch.float32)
        return fam.forward(transformer, latents.to(dtype), ts, embeds.to(device=device, dtype=dtype),
                           control=control, fps=fps).float()

    for i, t in enumerate(timesteps):
        sigma = float(sigmas[i])
        if spec.prefix == "noised":
            x[:, :, :prefix] = (1 - sigma) * cond + sigma * noise[:, :, :prefix]
        elif spec.prefix == "clean":
            x[:, :, :prefix] = cond
        v = velocity(x, t, prompt_embeds)
        if use_cfg:
            v_uncond = velocity(x, t, negative_embeds)
            v = v_uncond + guidance_scale * (v - v_uncond)
        if sampler == "euler":
            x = x + (float(sigmas[i + 1]) - sigma) * v
        else:
            x = scheduler.step(v, t, x, return_dict=False)[0].float()
        if progress is not None:
            progress(i + 1, len(timesteps))
    if spec.prefix in ("noised", "clean"):
        x[:, :, :prefix] = cond
    return x
