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
    # Each A14B expert (transformer/ and transformer_2/config.json) is the Wan2.1 14B architecture: diffusers'
    # scripts/convert_wan_to_diffusers.py gives "Wan2.2-T2V-A14B" the 14B numbers (dim 5120 = 40 x 128).
    "Wan-AI/Wan2.2-T2V-A14B-Diffusers": {**_WAN, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40},
    # TI2V-5B: dim 3072 = 24 heads x 128, ffn 14336, 30 layers (Wan2.2's configs/wan_ti2v_5B.py), 48 latent
    # channels in and out (the Wan2.2 VAE's z_dim).
    "Wan-AI/Wan2.2-TI2V-5B-Diffusers": {**_WAN, "num_attention_heads": 24, "ffn_dim": 14336, "num_layers": 30,
                                        "in_channels": 48, "out_channels": 48},
    # hunyuanvideo-community/HunyuanVideo transformer/config.json (diffusers' HunyuanVideoTransformer3DModel defaults,
    # which its docstring gives as the tencent/HunyuanVideo model): 24 heads x 128 = 3072 wide, 20 double-stream and
    # 40 single-stream blocks, LLaMA 4096-d text states, CLIP-L 768-d pooled vector, embedded guidance.
    "hunyuanvideo-community/HunyuanVideo": {
        "in_channels": 16, "out_channels": 16, "num_attention_heads": 24, "attention_head_dim": 128, "num_layers": 20,
        "num_single_layers": 40, "num_refiner_layers": 2, "mlp_ratio": 4.0, "patch_size": 2, "patch_size_t": 1,
        "qk_norm": "rms_norm", "guidance_embeds": True, "text_embed_dim": 4096, "pooled_projection_dim": 768,
        "rope_theta": 256.0, "rope_axes_dim": [16, 56, 56]},
    # hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-720p_t2v transformer/config.json: the defaults of diffusers'
    # HunyuanVideo15Transformer3DModel.__init__ (the 480p model; its class docstring still gives HunyuanVideo 1's
    # numbers) with target_size 960 and task_type "t2v", as diffusers' scripts/convert_hunyuan_video1_5_to_diffusers.py
    # gives "720p_t2v": 16 heads x 128 = 2048 wide, 54 double-stream blocks, patch 1, 32 latent channels in as
    # [latents | condition latents | mask] = 65, Qwen2.5-VL 3584-d and ByT5 1472-d text states, SigLIP 1152-d image.
    "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-720p_t2v": {
        "in_channels": 65, "out_channels": 32, "num_attention_heads": 16, "attention_head_dim": 128, "num_layers": 54,
        "num_refiner_layers": 2, "mlp_ratio": 4.0, "patch_size": 1, "patch_size_t": 1, "qk_norm": "rms_norm",
        "text_embed_dim": 3584, "text_embed_2_dim": 1472, "image_embed_dim": 1152, "rope_theta": 256.0,
        "rope_axes_dim": [16, 56, 56], "target_size": 960, "task_type": "t2v", "use_meanflow": False},
}

# The Wan2.2 VAE (Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json; Wan2.2_VAE.pth converted by the script above):
# 12 = 3 x 2 x 2 channels after its 2x2 patchify, residual blocks, 16x spatial / 4x temporal compression.
WAN22_VAE = dict(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                 temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                 patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16)


def official_config(source: str) -> dict | None:
    return dict(OFFICIAL[source]) if source in OFFICIAL else None
