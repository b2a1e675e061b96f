"""The official transformer configs of the Hub models the presets name, for planning without a download.

A preset whose weights are on disk (or in the HF cache) is planned from its own config.json; these
are the published `transformer/config.json` values, used when the weights are not here yet (the
plan runs before the download) and by the GPU benchmarks, which build random weights at these sizes.
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
