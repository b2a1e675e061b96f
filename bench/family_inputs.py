"""Random transformer inputs for a family's GPU benchmarks: prompt embeddings shaped as its text encoders give them.

The lengths are those the real pipelines pad to (no text encoder is loaded): Wan2.1/2.2 umT5 512 x 4096;
HunyuanVideo LLaMA 256 x 4096 with 64 valid tokens and the CLIP-L pooled 768; HunyuanVideo 1.5 Qwen2.5-VL
1000 x 3584 with 64 valid and ByT5 256 x 1472 with none valid (a prompt without quoted text).
"""

from __future__ import annotations

import torch

VALID_TEXT = 64


def _mask(length: int, valid: int, device) -> torch.Tensor:
    mask = torch.zeros(1, length, device=device, dtype=torch.long)
    mask[:, :valid] = 1
    return mask


def text_embeds(family_name: str, cfg: dict, device, generator: torch.Generator | None = None):
    """A TextEmbeds batch of one for `family_name`'s transformer with config `cfg`."""
    from engine.models import TextEmbeds

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=torch.bfloat16, generator=generator)

    if family_name == "hunyuan":
        return TextEmbeds(randn(1, 256, cfg["text_embed_dim"]), randn(1, cfg["pooled_projection_dim"]),
                          _mask(256, VALID_TEXT, device))
    if family_name == "hunyuan15":
        from engine.models.hunyuan15 import pack_glyph

        glyph = pack_glyph(randn(1, 256, cfg["text_embed_2_dim"]), _mask(256, 0, device))
        return TextEmbeds(randn(1, 1000, cfg["text_embed_dim"]), glyph, _mask(1000, VALID_TEXT, device))
    return TextEmbeds(randn(1, 512, cfg.get("text_dim", 4096)))


def latent_channels(cfg: dict) -> int:
    """Channels of the latents a family's `forward` takes (HunyuanVideo 1.5 adds its condition channels itself)."""
    return int(cfg["out_channels"])
