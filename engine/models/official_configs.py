"""The published `transformer/config.json` of the Hub models the presets name.

The GPU benchmarks build random weights at these sizes (nothing is downloaded); code that needs a
model's size before its weights are here (a memory estimate) can read them too.
"""

from __future__ import annotations

_WAN = dict(patch_size=[1, 2, 2], attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)

OFFICIAL = {
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": {**_WAN, "num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30},
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": {**_WAN, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40},
}


def official_config(source: str) -> dict | None:
    return dict(OFFICIAL[source]) if source in OFFICIAL else None
