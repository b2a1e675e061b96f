"""Wan's flow-matching objective.

x_t = (1 - sigma) * x_0 + sigma * noise, the model predicts the velocity noise - x_0, and
the transformer's timestep is sigma * 1000. Training sigmas are drawn logit-normally (or
uniformly) and then shifted like the sampler's (shift * s / (1 + (shift - 1) * s)), so the
training noise levels match the ones met when sampling.
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sample_sigmas(batch: int, generator: torch.Generator, scheme: str = "logit_normal", shift: float = 3.0) -> torch.Tensor:
    if scheme == "logit_normal":
        u = torch.sigmoid(torch.randn(batch, generator=generator))
    else:
        u = torch.rand(batch, generator=generator)
    return shift_sigmas(u.clamp(1e-4, 1 - 1e-4), shift)


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    s = sigmas.view(-1, *([1] * (x0.ndim - 1))).to(x0)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def timesteps_from_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    return sigmas * NUM_TRAIN_TIMESTEPS
