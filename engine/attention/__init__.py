"""Radial Attention: block mask, Triton kernel and backend dispatch."""

from .backends import available_backends, radial_attention
from .mask import mask_density, radial_block_mask

__all__ = ["radial_attention", "radial_block_mask", "mask_density", "available_backends"]
