"""Open-Sora v2.0 (11B MMDiT, `v2v_head` conditioning) on diffusers modules.

The official transformer (`MMDiTModel`, FLUX-like) maps onto diffusers'
`FluxTransformer2DModel` (see `transformer_config`): the official `img_in` (packed noisy
latents, 64 = 16 channels x 2x2 patch) and `cond_in` (packed [mask, masked reference latents],
68 channels) are summed, which is one `x_embedder` Linear over their concatenation (132 input
channels; weights concatenated on the input side, biases summed). Position ids are
(latent frame, patch row, patch column), so diffusers' 3-axis RoPE with axes (16, 56, 56)
runs over time too. The checkpoint was trained with rotate-half RoPE (channel j pairs with
j + head_dim/2) while diffusers rotates interleaved pairs (2j, 2j + 1); `convert_opensora2_state_dict`
permutes every q/k weight, bias and QK-norm scale per head (new[2j] = old[j],
new[2j + 1] = old[j + head_dim/2]), which leaves q.k products, and so the model, unchanged.

Everything else the project needs from a model family lives here too: loading
(`hpcai-tech/Open-Sora-v2`: `Open_Sora_v2.safetensors` + `hunyuan_vae.safetensors`, with T5-XXL
and CLIP-L from their own Hub ids), the tiny random-weight model (saved in the official key
layout and loaded through the same converter), prompt encoding, VAE encode/decode
(HunyuanVideo causal VAE, latents scaled by 0.476986, no shift), the v2v_head conditioning,
the official sampler (Euler with a resolution/length-dependent shift and 3-pass image + text
guidance) and the training objective.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..attention.processor import tag_family
from ..errors import ModelLoadError
from .base import Capabilities, ContinuationMode, ModelFamily, TextEmbeds

NAME = "opensora2"
TINY_FORMAT_VERSION = 1

HUB_ID = "hpcai-tech/Open-Sora-v2"
TRANSFORMER_FILE = "Open_Sora_v2.safetensors"
VAE_FILE = "hunyuan_vae.safetensors"
# The text encoders Open-Sora v2 uses, from their own repositories (a local model folder may hold
# them instead, in text_encoder/ + tokenizer/ (T5) and text_encoder_2/ + tokenizer_2/ (CLIP)).
T5_ID = "google/t5-v1_1-xxl"
CLIP_ID = "openai/clip-vit-large-patch14"
T5_MAX_LENGTH = 512
CLIP_MAX_LENGTH = 77
TINY_CONFIG_FILE = "opensora2_config.json"  # the official model config (only the tiny model ships one)

SCALING_FACTOR = 0.476986  # HunyuanVideo VAE latents: z * 0.476986, no shift
PATCH = 2
COND_FRAMES_LATENT = 9  # v2v_head: the mask covers the first 9 latent frames (33 frames)
PROMPT_SUFFIX = " 24 FPS. 4 motion score."
SIGMA_MIN = 1e-5  # training target (1 - sigma_min) * eps - x0

# The real model's official config (opensora/models/mmdit/model.py MMDiTConfig of the 11B model).
REAL_CONFIG = {
    "in_channels": 64, "vec_in_dim": 768, "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0,
    "num_heads": 24, "depth": 19, "depth_single_blocks": 38, "axes_dim": [16, 56, 56], "theta": 10000,
    "qkv_bias": True, "guidance_embed": False, "cond_embed": True, "fused_qkv": False, "patch_size": 2,
}

# Q/K/V/O of every attention (double blocks: image and text streams; single blocks have no
# separate output projection: their `proj_out` mixes attention and MLP and is in the MLP list).
LORA_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
# (peft matches list entries as name suffixes; the single blocks' `proj_out` is named per block so the
# model's final `proj_out` is left alone. 38 is the real model's single-block count; smaller models match fewer.)
LORA_TARGET_MODULES_FULL = LORA_TARGET_MODULES + [
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp",
] + [f"single_transformer_blocks.{i}.proj_out" for i in range(38)]


# ---------------------------------------------------------------------------- transformer


def transformer_config(cfg: dict) -> dict:
    """diffusers `FluxTransformer2DModel` kwargs for an official MMDiT config."""
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_heads"])
    if cfg.get("guidance_embed") or not cfg.get("cond_embed", True) or not cfg.get("qkv_bias", True):
        raise ModelLoadError("only the Open-Sora v2 layout (cond_embed, qkv_bias, no guidance embedding) is supported")
    if float(cfg.get("mlp_ratio", 4.0)) != 4.0:
        raise ModelLoadError("diffusers' Flux blocks have mlp_ratio 4")
    patch = int(cfg.get("patch_size", PATCH))
    return dict(
        patch_size=1, in_channels=int(cfg["in_channels"]) * 2 + patch * patch, out_channels=int(cfg["in_channels"]),
        num_layers=int(cfg["depth"]), num_single_layers=int(cfg["depth_single_blocks"]), num_attention_heads=heads,
        attention_head_dim=hidden // heads, joint_attention_dim=int(cfg["context_in_dim"]),
        pooled_projection_dim=int(cfg["vec_in_dim"]), guidance_embeds=False, axes_dims_rope=tuple(cfg["axes_dim"]),
    )


def build_transformer(cfg: dict, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    from diffusers import FluxTransformer2DModel

    if device is not None and str(device) == "meta":
        from accelerate import init_empty_weights

        with init_empty_weights():
            return FluxTransformer2DModel(**transformer_config(cfg))
    model = FluxTransformer2DModel(**transformer_config(cfg))
    return model if dtype is None else model.to(dtype)


def official_key_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of an official MMDiT checkpoint with this config (fused_qkv False)."""
    h, c = int(cfg["hidden_size"]), int(cfg["in_channels"])
    mlp = int(h * float(cfg.get("mlp_ratio", 4.0)))
    hd = h // int(cfg["num_heads"])
    p2 = int(cfg.get("patch_size", PATCH)) ** 2
    shapes = {
        "img_in.weight": (h, c), "img_in.bias": (h,), "cond_in.weight": (h, c + p2), "cond_in.bias": (h,),
        "txt_in.weight": (h, int(cfg["context_in_dim"])), "txt_in.bias": (h,),
        "time_in.in_layer.weight": (h, 256), "time_in.in_layer.bias": (h,),
        "time_in.out_layer.weight": (h, h), "time_in.out_layer.bias": (h,),
        "vector_in.in_layer.weight": (h, int(cfg["vec_in_dim"])), "vector_in.in_layer.bias": (h,),
        "vector_in.out_layer.weight": (h, h), "vector_in.out_layer.bias": (h,),
        "final_layer.adaLN_modulation.1.weight": (2 * h, h), "final_layer.adaLN_modulation.1.bias": (2 * h,),
        "final_layer.linear.weight": (c, h), "final_layer.linear.bias": (c,),
    }
    for i in range(int(cfg["depth"])):
        for s in ("img", "txt"):
            b = f"double_blocks.{i}.{s}_"
            for proj in ("q_proj", "k_proj", "v_proj", "proj"):
                shapes[f"{b}attn.{proj}.weight"], shapes[f"{b}attn.{proj}.bias"] = (h, h), (h,)
            shapes[f"{b}attn.norm.query_norm.scale"] = shapes[f"{b}attn.norm.key_norm.scale"] = (hd,)
            shapes[f"{b}mlp.0.weight"], shapes[f"{b}mlp.0.bias"] = (mlp, h), (mlp,)
            shapes[f"{b}mlp.2.weight"], shapes[f"{b}mlp.2.bias"] = (h, mlp), (h,)
            shapes[f"{b}mod.lin.weight"], shapes[f"{b}mod.lin.bias"] = (6 * h, h), (6 * h,)
    for i in range(int(cfg["depth_single_blocks"])):
        b = f"single_blocks.{i}."
        for proj in ("q_proj", "k_proj"):
            shapes[f"{b}{proj}.weight"], shapes[f"{b}{proj}.bias"] = (h, h), (h,)
        shapes[f"{b}v_mlp.weight"], shapes[f"{b}v_mlp.bias"] = (h + mlp, h), (h + mlp,)
        shapes[f"{b}linear2.weight"], shapes[f"{b}linear2.bias"] = (h, h + mlp), (h,)
        shapes[f"{b}modulation.lin.weight"], shapes[f"{b}modulation.lin.bias"] = (3 * h, h), (3 * h,)
        shapes[f"{b}norm.query_norm.scale"] = shapes[f"{b}norm.key_norm.scale"] = (hd,)
    return shapes


def _rope_permutation(head_dim: int) -> torch.Tensor:
    """Index list: new channel 2j <- old j, new 2j + 1 <- old j + head_dim/2 (rotate-half -> interleaved)."""
    half = head_dim // 2
    return torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).reshape(-1)


def _permute_heads(t: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Apply the RoPE channel permutation within every head of a q/k weight [H*hd, in], bias [H*hd] or scale [hd]."""
    perm = _rope_permutation(head_dim)
    if t.shape[0] == head_dim and t.ndim == 1:
        return t[perm].contiguous()
    shape = t.shape
    return t.reshape(shape[0] // head_dim, head_dim, *shape[1:])[:, perm].reshape(shape).contiguous()


@dataclass
class ConversionReport:
    """What the key conversion did: official tensors used, and the names it expected but lacked / did not know."""

    used: int
    total: int
    missing: list[str]
    unexpected: list[str]

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected and self.used == self.total

    def message(self) -> str:
        parts = [f"used {self.used} of {self.total} checkpoint tensors"]
        if self.missing:
            parts.append(f"missing {len(self.missing)}: {', '.join(self.missing[:8])}{' ...' if len(self.missing) > 8 else ''}")
        if self.unexpected:
            parts.append(f"unexpected {len(self.unexpected)}: {', '.join(self.unexpected[:8])}"
                         f"{' ...' if len(self.unexpected) > 8 else ''}")
        return "; ".join(parts)


def convert_opensora2_state_dict(sd: dict, num_double: int, num_single: int,
                                 head_dim: int | None = None) -> tuple[dict, ConversionReport]:
    """Official Open-Sora v2 MMDiT state dict -> diffusers FluxTransformer2DModel state dict (+ a report).

    Works on real tensors and on meta tensors (shape-only checks). `head_dim` defaults to the size
    of the first QK-norm scale found. Missing official tensors are listed (their diffusers targets
    are left out); tensors the converter does not know are listed as unexpected and not used.
    """
    sd = dict(sd)
    if head_dim is None:
        scale = next((v for k, v in sd.items() if k.endswith("query_norm.scale")), None)
        if scale is None:
            raise ModelLoadError("cannot infer the head size: no QK-norm scale in the checkpoint")
        head_dim = int(scale.shape[0])
    used: set[str] = set()
    missing: list[str] = []
    out: dict = {}

    def take(name):
        if name in sd:
            used.add(name)
            return sd[name]
        missing.append(name)
        return None

    def put(target, *names, fn=lambda *t: t[0]):
        tensors = [take(n) for n in names]
        if all(t is not None for t in tensors):
            out[target] = fn(*tensors)

    def perm(t):
        return _permute_heads(t, head_dim)

    # embedders: img_in + cond_in fold into one x_embedder over concat([img, cond])
    put("x_embedder.weight", "img_in.weight", "cond_in.weight", fn=lambda a, b: torch.cat([a, b], dim=1))
    put("x_embedder.bias", "img_in.bias", "cond_in.bias", fn=lambda a, b: a + b)
    put("context_embedder.weight", "txt_in.weight")
    put("context_embedder.bias", "txt_in.bias")
    for src, dst in (("time_in", "time_text_embed.timestep_embedder"), ("vector_in", "time_text_embed.text_embedder")):
        for a, b in (("in_layer", "linear_1"), ("out_layer", "linear_2")):
            for p in ("weight", "bias"):
                put(f"{dst}.{b}.{p}", f"{src}.{a}.{p}")
    # double blocks
    for i in range(num_double):
        o, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for stream, names in (("img", ("to_q", "to_k", "to_v", "to_out.0", "norm_q", "norm_k", "norm1", "ff")),
                              ("txt", ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "norm_added_q",
                                       "norm_added_k", "norm1_context", "ff_context"))):
            q, k, v, proj, nq, nk, mod, ff = names
            for p in ("weight", "bias"):
                put(f"{d}attn.{q}.{p}", f"{o}{stream}_attn.q_proj.{p}", fn=perm)
                put(f"{d}attn.{k}.{p}", f"{o}{stream}_attn.k_proj.{p}", fn=perm)
                put(f"{d}attn.{v}.{p}", f"{o}{stream}_attn.v_proj.{p}")
                put(f"{d}attn.{proj}.{p}", f"{o}{stream}_attn.proj.{p}")
                put(f"{d}{mod}.linear.{p}", f"{o}{stream}_mod.lin.{p}")
                put(f"{d}{ff}.net.0.proj.{p}", f"{o}{stream}_mlp.0.{p}")
                put(f"{d}{ff}.net.2.{p}", f"{o}{stream}_mlp.2.{p}")
            put(f"{d}attn.{nq}.weight", f"{o}{stream}_attn.norm.query_norm.scale", fn=perm)
            put(f"{d}attn.{nk}.weight", f"{o}{stream}_attn.norm.key_norm.scale", fn=perm)
    # single blocks: v_mlp = [to_v (hidden rows); proj_mlp (mlp rows)]
    for i in range(num_single):
        o, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for p in ("weight", "bias"):
            put(f"{d}attn.to_q.{p}", f"{o}q_proj.{p}", fn=perm)
            put(f"{d}attn.to_k.{p}", f"{o}k_proj.{p}", fn=perm)
            v_mlp = take(f"{o}v_mlp.{p}")
            if v_mlp is not None:
                hidden = v_mlp.shape[0] // 5  # hidden + 4 * hidden rows (mlp_ratio 4)
                out[f"{d}attn.to_v.{p}"] = v_mlp[:hidden].contiguous() if v_mlp.device.type != "meta" else v_mlp[:hidden]
                out[f"{d}proj_mlp.{p}"] = v_mlp[hidden:].contiguous() if v_mlp.device.type != "meta" else v_mlp[hidden:]
            put(f"{d}proj_out.{p}", f"{o}linear2.{p}")
            put(f"{d}norm.linear.{p}", f"{o}modulation.lin.{p}")
        put(f"{d}attn.norm_q.weight", f"{o}norm.query_norm.scale", fn=perm)
        put(f"{d}attn.norm_k.weight", f"{o}norm.key_norm.scale", fn=perm)
    # final layer: official (shift, scale) -> diffusers AdaLayerNormContinuous (scale, shift)
    for p in ("weight", "bias"):
        put(f"norm_out.linear.{p}", f"final_layer.adaLN_modulation.1.{p}",
            fn=lambda t: torch.cat(list(t.chunk(2, dim=0))[::-1], dim=0))
        put(f"proj_out.{p}", f"final_layer.linear.{p}")
    unexpected = sorted(set(sd) - used)
    return out, ConversionReport(used=len(used), total=len(sd), missing=missing, unexpected=unexpected)


def load_official_transformer(sd: dict, cfg: dict, dtype: torch.dtype = torch.float32, strict: bool = True):
    """A FluxTransformer2DModel holding an official state dict (ModelLoadError naming the bad keys if it does not fit)."""
    from diffusers import FluxTransformer2DModel

    converted, report = convert_opensora2_state_dict(sd, int(cfg["depth"]), int(cfg["depth_single_blocks"]),
                                                     int(cfg["hidden_size"]) // int(cfg["num_heads"]))
    if strict and not report.ok:
        raise ModelLoadError(f"the Open-Sora v2 checkpoint does not match the model config: {report.message()}")
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = FluxTransformer2DModel(**transformer_config(cfg))
    result = model.load_state_dict({k: v.to(dtype) for k, v in converted.items()}, strict=False, assign=True)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise ModelLoadError(f"converted Open-Sora v2 weights do not fit FluxTransformer2DModel: missing "
                             f"{result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}")
    return model.eval()


def official_forward(transformer, img, img_ids, txt, txt_ids, timesteps, y_vec, cond=None, guidance=None):
    """The official MMDiT forward's signature on the diffusers model: packed tokens in, packed velocity out.

    `timesteps` in [0, 1] (diffusers' Flux multiplies by 1000 itself, as the official embedding
    does); ids with or without the batch dimension (one layout for the whole batch); `cond`
    None means zero conditioning; `guidance` is ignored (no guidance embedding).
    """
    if cond is None:
        patch2 = transformer.config.in_channels - 2 * transformer.config.out_channels
        cond = img.new_zeros(*img.shape[:2], img.shape[2] + patch2)
    hidden = torch.cat([img, cond.to(img.dtype)], dim=-1)
    img_ids = img_ids[0] if img_ids.ndim == 3 else img_ids
    txt_ids = txt_ids[0] if txt_ids.ndim == 3 else txt_ids
    return transformer(hidden_states=hidden, encoder_hidden_states=txt, pooled_projections=y_vec,
                       timestep=timesteps.to(img.dtype), img_ids=img_ids, txt_ids=txt_ids, return_dict=False)[0]


# ---------------------------------------------------------------------------- packing


def pack(x: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, T*(H/p)*(W/p), C*p*p] ("b c t (h ph) (w pw) -> b (t h w) (c ph pw)")."""
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 3, 5, 1, 4, 6).reshape(b, t * (h // patch) * (w // patch), c * patch * patch)


def unpack(x: torch.Tensor, t: int, h: int, w: int, patch: int = PATCH) -> torch.Tensor:
    """Inverse of `pack` for latents of T x H x W."""
    b, _, d = x.shape
    c = d // (patch * patch)
    x = x.reshape(b, t, h // patch, w // patch, c, patch, patch)
    return x.permute(0, 4, 1, 2, 5, 3, 6).reshape(b, c, t, h, w)


def image_ids(t: int, h: int, w: int, device=None, patch: int = PATCH) -> torch.Tensor:
    """[(t * h/p * w/p), 3] position ids (latent frame, patch row, patch column), frame-major."""
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h // patch), torch.arange(w // patch), indexing="ij")
    return torch.stack([tt, hh, ww], dim=-1).reshape(-1, 3).float().to(device)


# ---------------------------------------------------------------------------- v2v_head conditioning


def v2v_cond(ref_latents: torch.Tensor | None, total_latent_frames: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """The v2v_head conditioning [B, 1 + C, T, H, W]: channel 0 the mask (1 on the known frames), then the
    reference latents on those frames (zeros elsewhere). `ref_latents` [B, C, k, H, W] are the first
    k known latent frames (k = 0 or None: zero conditioning, shaped like `like`)."""
    if ref_latents is None or ref_latents.shape[2] == 0:
        ref = ref_latents if ref_latents is not None else like
        b, c, _, h, w = ref.shape
        return ref.new_zeros(b, c + 1, total_latent_frames, h, w, dtype=torch.float32)
    b, c, k, h, w = ref_latents.shape
    if k > total_latent_frames:
        raise ValueError(f"{k} known latent frames but only {total_latent_frames} in the clip")
    cond = ref_latents.new_zeros(b, c + 1, total_latent_frames, h, w, dtype=torch.float32)
    cond[:, 0, :k] = 1.0
    cond[:, 1:, :k] = ref_latents.float()
    return cond


# ---------------------------------------------------------------------------- the pipeline container


class OpenSora2Pipeline:
    """The loaded parts (no diffusers pipeline class exists for Open-Sora v2)."""

    def __init__(self, transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, config: dict,
                 text_max_length: int = T5_MAX_LENGTH):
        self.transformer, self.vae = transformer, vae
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        self.config, self.text_max_length = config, text_max_length
        self.scheduler = None  # the sampler is `sample_continuation` below

    def __call__(self, *args, **kwargs):
        from ..errors import ConfigError

        raise ConfigError("Open-Sora v2 presets do test-time adaptation (video continuation, the TTA tab / "
                          "`tta` commands) only; text-to-video generation and length-extension training are not "
                          "implemented for this family. Use a Wan preset for those.")

    @property
    def _execution_device(self) -> torch.device:
        return self.transformer.device

    def to(self, device):
        for m in (self.transformer, self.vae, self.text_encoder, self.text_encoder_2):
            m.to(device)
        return self


# ---------------------------------------------------------------------------- tiny model


def tiny_model_dir(tiny: dict) -> Path:
    from .wan import tiny_model_dir as _dir

    return _dir({"opensora2_v": TINY_FORMAT_VERSION, **tiny}, NAME)


def build_tiny_folder(tiny: dict, target: Path) -> None:
    """Random weights in the release's file layout: the MMDiT in official key names, the VAE, tiny text encoders."""
    from diffusers import AutoencoderKLHunyuanVideo
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from .tiny_tokenizer import build_tiny_tokenizer

    torch.manual_seed(int(tiny.get("seed", 0)))
    tokenizer = build_tiny_tokenizer(**tiny.get("tokenizer", {}))
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer), **tiny["text_encoder"])).eval()
    clip_cfg = CLIPTextConfig(vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1, bos_token_id=1,
                              max_position_embeddings=CLIP_MAX_LENGTH, **tiny["text_encoder_2"])
    clip = CLIPTextModel(clip_cfg).eval()
    cfg = {**REAL_CONFIG, **tiny["transformer"], "context_in_dim": t5.config.d_model, "vec_in_dim": clip_cfg.hidden_size}
    sd = {}
    gen = torch.Generator().manual_seed(int(tiny.get("seed", 0)) + 1)
    for name, shape in official_key_shapes(cfg).items():
        if name.endswith("scale"):
            sd[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith("bias"):
            sd[name] = 0.02 * torch.randn(shape, generator=gen)
        else:
            sd[name] = torch.randn(shape, generator=gen) / math.sqrt(shape[1])
    vae = AutoencoderKLHunyuanVideo(**tiny["vae"])
    target.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(target / TRANSFORMER_FILE))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(target / VAE_FILE))
    (target / TINY_CONFIG_FILE).write_text(json.dumps({"transformer": cfg, "vae": dict(vae.config),
                                                       "text_max_length": int(tiny.get("text_max_length", 16))},
                                                      indent=1, default=list))
    t5.save_pretrained(target / "text_encoder")
    tokenizer.save_pretrained(target / "tokenizer")
    clip.save_pretrained(target / "text_encoder_2")
    tokenizer.save_pretrained(target / "tokenizer_2")


def ensure_tiny_model(tiny: dict) -> Path:
    target = tiny_model_dir(tiny)
    if (target / TINY_CONFIG_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        build_tiny_folder(tiny, tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / TINY_CONFIG_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------- loading


def _resolve_files(preset: dict) -> Path:
    """A local folder holding Open_Sora_v2.safetensors + hunyuan_vae.safetensors (downloading them from the Hub if needed)."""
    source = preset["source"]
    if source == "tiny":
        return ensure_tiny_model(preset["tiny"])
    expanded = Path(os.path.expanduser(source))
    if source.startswith((".", "/", "~")) or expanded.exists() or source.count("/") != 1:
        if not expanded.is_dir():
            raise ModelLoadError(f"Model folder '{source}' (preset '{preset['name']}', field 'source') does not exist. "
                                 f"Point 'source' at a folder with {TRANSFORMER_FILE} and {VAE_FILE}, or at '{HUB_ID}'.")
        folder = expanded
    else:
        from huggingface_hub import hf_hub_download

        try:
            for name in (TRANSFORMER_FILE, VAE_FILE):
                path = hf_hub_download(source, name, revision=preset["revision"])
            folder = Path(path).parent
        except Exception as err:  # offline, missing file, no access
            from .wan import _hub_help

            raise _hub_help(source, err) from None
    for name in (TRANSFORMER_FILE, VAE_FILE):
        if not (folder / name).is_file():
            raise ModelLoadError(f"'{folder}' has no {name}; an Open-Sora v2 folder needs {TRANSFORMER_FILE} and {VAE_FILE}.")
    return folder


def load_vae(path: Path, vae_config: dict | None = None):
    """hunyuan_vae.safetensors into diffusers' AutoencoderKLHunyuanVideo (same keys; ModelLoadError naming any that differ)."""
    from diffusers import AutoencoderKLHunyuanVideo
    from safetensors.torch import load_file

    cfg = {k: v for k, v in (vae_config or {}).items() if not k.startswith("_")}
    vae = AutoencoderKLHunyuanVideo.from_config(cfg) if cfg else AutoencoderKLHunyuanVideo()
    sd = load_file(str(path))
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    result = vae.load_state_dict(sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(f"{path.name} does not fit AutoencoderKLHunyuanVideo: missing {result.missing_keys[:6]} "
                             f"({len(result.missing_keys)}), unexpected {result.unexpected_keys[:6]} ({len(result.unexpected_keys)})")
    return vae.eval()


def _load_text(folder: Path, device, dtype):
    """T5-XXL + CLIP-L: from the model folder when it holds them (the tiny model does), else their own Hub ids."""
    from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

    def src(sub, hub_id):
        return str(folder / sub) if (folder / sub).is_dir() else hub_id

    try:
        tok = AutoTokenizer.from_pretrained(src("tokenizer", T5_ID))
        tok2 = AutoTokenizer.from_pretrained(src("tokenizer_2", CLIP_ID))
        t5 = T5EncoderModel.from_pretrained(src("text_encoder", T5_ID), dtype=dtype).eval()
        clip = CLIPTextModel.from_pretrained(src("text_encoder_2", CLIP_ID), dtype=dtype).eval()
    except (OSError, ValueError) as err:
        from .wan import _hub_help

        raise _hub_help(f"{T5_ID} / {CLIP_ID}", err) from None
    return t5.to(device), tok, clip.to(device), tok2


def load_pipeline(preset: dict, device: torch.device | None = None) -> OpenSora2Pipeline:
    from safetensors.torch import load_file

    device = device or FAMILY.default_device()
    dtype = FAMILY.compute_dtype(preset, device)
    folder = _resolve_files(preset)
    meta = json.loads((folder / TINY_CONFIG_FILE).read_text()) if (folder / TINY_CONFIG_FILE).is_file() else {}
    cfg = meta.get("transformer", REAL_CONFIG)
    transformer = load_official_transformer(load_file(str(folder / TRANSFORMER_FILE)), cfg, dtype).to(device)
    vae = load_vae(folder / VAE_FILE, meta.get("vae")).to(device)  # float32: causal conv VAEs drift in half precision
    t5, tok, clip, tok2 = _load_text(folder, device, dtype)
    tag_family(transformer, FAMILY)
    return OpenSora2Pipeline(transformer, vae, t5, tok, clip, tok2, cfg,
                             text_max_length=int(meta.get("text_max_length", T5_MAX_LENGTH)))


# ---------------------------------------------------------------------------- encode / decode


@torch.no_grad()
def encode_text(pipe: OpenSora2Pipeline, prompts: list[str]) -> TextEmbeds:
    """T5 (padded to max length, no attention mask, as the original) and the CLIP pooler output."""
    device = pipe.text_encoder.device
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.text_max_length, truncation=True,
                         return_tensors="pt").input_ids.to(device)
    txt = pipe.text_encoder(input_ids=ids, attention_mask=None).last_hidden_state
    ids2 = pipe.tokenizer_2(prompts, padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True,
                            return_tensors="pt").input_ids.to(pipe.text_encoder_2.device)
    pooled = pipe.text_encoder_2(input_ids=ids2, attention_mask=None).pooler_output
    return TextEmbeds(txt, pooled)


def encode_prompt(pipe, prompt: str, negative_prompt: str | None, guidance_scale: float, max_sequence_length: int = 512):
    """(prompt with the motion/FPS suffix, the empty prompt): Open-Sora's guidance uses "" as the negative."""
    both = encode_text(pipe, [prompt + PROMPT_SUFFIX, negative_prompt or ""])
    return TextEmbeds(both.sequence[:1], both.pooled[:1]), TextEmbeds(both.sequence[1:], both.pooled[1:])


@torch.no_grad()
def encode_video(pipe, video: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pixels [B, 3, F, H, W] in [-1, 1] -> latents [B, 16, (F-1)/4+1, H/8, W/8] scaled by 0.476986 (no shift).

    GroupNorm in this VAE spans time: encode the conditioning prefix on its own (the caller does).
    """
    vae = pipe.vae
    dist = vae.encode(video.to(device=vae.device, dtype=vae.dtype)).latent_dist
    latents = dist.sample(generator) if sample else dist.mode()
    return latents * SCALING_FACTOR


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    vae = pipe.vae
    latents = latents.to(device=vae.device, dtype=vae.dtype) / SCALING_FACTOR
    return vae.decode(latents, return_dict=False)[0].clamp(-1, 1)


# ---------------------------------------------------------------------------- forward / objective


def transformer_forward(transformer, hidden_states: torch.Tensor, timestep: torch.Tensor,
                        encoder_hidden_states: TextEmbeds, control: torch.Tensor | None = None, **_) -> torch.Tensor:
    """Velocity for latents [B, 16, T, H, W] at `timestep` [B] on the project's 0..1000 scale.

    `control` is the v2v_head conditioning [B, 17, T, H, W] (`v2v_cond`); None: zero conditioning.
    Text embeddings with batch 1 are broadcast to the latents' batch.
    """
    if timestep.ndim != 1:
        raise ValueError("Open-Sora v2 takes one timestep per sample, not per frame")
    b, _, t, h, w = hidden_states.shape
    dtype = hidden_states.dtype
    img = pack(hidden_states)
    cond = pack(control.to(hidden_states.device, dtype)) if control is not None else None
    if cond is not None and cond.shape[0] != b:
        cond = cond.expand(b, -1, -1)
    txt, pooled = encoder_hidden_states.sequence.to(dtype), encoder_hidden_states.pooled.to(dtype)
    if txt.shape[0] != b:
        txt, pooled = txt.expand(b, -1, -1), pooled.expand(b, -1)
    txt_ids = torch.zeros(txt.shape[1], 3, device=img.device, dtype=dtype)
    with _sdpa_without_cudnn(img.device):
        out = official_forward(transformer, img, image_ids(t, h, w, img.device).to(dtype), txt, txt_ids,
                               (timestep / 1000.0).to(img.device), pooled, cond)
    return unpack(out, t, h, w)


def _sdpa_without_cudnn(device: torch.device):
    """SDPA backends other than cuDNN on CUDA. Seen on an H100 (torch 2.11, 2026-11-23,
    bench/opensora2_gpu.py): the cuDNN attention backward hit an illegal memory access at the
    real config (4,688 joint tokens, bf16); flash / memory-efficient attention ran it. The
    backend of the backward is fixed at forward time, so scoping the forward is enough."""
    import contextlib

    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def time_shift_alpha(latent_frames: int, height: int, width: int) -> float:
    """a = (1 + (N - 256) * 2 / 3840) * sqrt(latent frames), N = tokens per latent frame."""
    n = (height // PATCH) * (width // PATCH)
    return (1 + (n - 256) * 2 / 3840) * math.sqrt(latent_frames)


def shift_time(t, alpha: float):
    return alpha * t / (1 + (alpha - 1) * t)


def sample_train_sigma(generator: torch.Generator, latent_shape) -> float:
    """Training noise level: shift(sigmoid(N(0, 1))) with the shape-dependent shift of the sampler."""
    alpha = time_shift_alpha(latent_shape[2], latent_shape[3], latent_shape[4])
    return float(shift_time(torch.sigmoid(torch.randn(1, generator=generator)), alpha)[0])


def flow_pair(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, velocity target) of Open-Sora's objective: x_t = t eps + (1 - (1 - s_min) t) x0, target (1 - s_min) eps - x0."""
    t = sigmas.view(-1, *([1] * (x0.ndim - 1))).to(x0)
    xt = t * noise + (1 - (1 - SIGMA_MIN) * t) * x0
    return xt, (1 - SIGMA_MIN) * noise - x0


# ---------------------------------------------------------------------------- sampling


def oscillating_scale(scale: float, step: int, force_steps: int = 10) -> float:
    """The official guidance oscillation: the full scale on the first `force_steps` steps and on even steps after."""
    return scale if step < force_steps or step % 2 == 0 else 1.0


def sample_timesteps(steps: int, alpha: float) -> list[float]:
    t = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    return [float(v) for v in shift_time(t, alpha)]


@torch.no_grad()
def sample_continuation(pipe, cond_latents: torch.Tensor, total_latent_frames: int, prompt_embeds: TextEmbeds,
                        negative_embeds: TextEmbeds | None, *, steps: int, noise: torch.Tensor,
                        guidance_scale: float = 7.5, image_guidance_scale: float = 3.0, oscillate: bool = True,
                        control: torch.Tensor | None = None,
                        progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """The official v2v sampler: Euler on shifted linspace(1, 0, steps + 1), a 3-batch per step
    [prompt + cond, "" + cond, "" + zero cond] and v = u2 + gi (u - u2) + gt (c - u); with `oscillate`
    both scales drop to 1 on odd steps from step 10 on. The noisy latents are never overwritten:
    the prefix reaches the model only through the v2v_head conditioning."""
    transformer = pipe.transformer
    device, dtype = transformer.device, transformer.dtype
    x = noise.to(device=device, dtype=torch.float32).clone()
    if control is None:
        control = v2v_cond(cond_latents.to(device), total_latent_frames)
    control = control.to(device=device, dtype=torch.float32)
    _, _, t_lat, h, w = x.shape
    alpha = time_shift_alpha(t_lat, h, w)
    ts = sample_timesteps(steps, alpha)
    neg = negative_embeds if negative_embeds is not None else encode_prompt(pipe, "", None, 1.0)[1]
    text = TextEmbeds.cat([prompt_embeds.to(device), neg.to(device), neg.to(device)])
    conds = torch.cat([control, control, torch.zeros_like(control)])
    for i in range(steps):
        t_curr, t_prev = ts[i], ts[i + 1]
        gt = oscillating_scale(guidance_scale, i) if oscillate else guidance_scale
        gi = oscillating_scale(image_guidance_scale, i) if oscillate else image_guidance_scale
        tvec = torch.full((3,), t_curr * 1000.0, device=device, dtype=torch.float32)
        out = transformer_forward(transformer, x.expand(3, -1, -1, -1, -1).to(dtype), tvec, text, control=conds).float()
        c, u, u2 = out[0:1], out[1:2], out[2:3]
        v = u2 + gi * (u - u2) + gt * (c - u)
        x = x + (t_prev - t_curr) * v
        if progress is not None:
            progress(i + 1, steps)
    return x


# ---------------------------------------------------------------------------- the family


class OpenSora2Family(ModelFamily):
    """Open-Sora v2.0: test-time adaptation (v2v_head continuation) only."""

    name = NAME
    description = "Open-Sora v2.0 (MMDiT on diffusers' Flux blocks, v2v_head conditioning)"
    capabilities = Capabilities(text_to_video=False, length_extension=False,
                                continuation={"v2v_head": ContinuationMode(prefix="untouched", uses_control=True,
                                                                           own_sampler=True)},
                                comfy_export=False)
    lora_targets = tuple(LORA_TARGET_MODULES)
    lora_targets_full = tuple(LORA_TARGET_MODULES_FULL)
    card_tags = ("open-sora",)

    def load_pipeline(self, preset, device=None):
        return load_pipeline(preset, device)

    def model_width(self, preset):
        cfg = preset["tiny"]["transformer"] if preset["source"] == "tiny" else REAL_CONFIG
        return int(cfg["hidden_size"])

    def encoder_dtypes(self, pipe):
        return f"vae={pipe.vae.dtype},text={pipe.text_encoder.dtype},text_2={pipe.text_encoder_2.dtype}"

    def encode_prompt(self, pipe, prompt, negative_prompt, guidance_scale):
        return encode_prompt(pipe, prompt, negative_prompt, guidance_scale)

    def encode_video(self, pipe, video, sample=False, generator=None):
        return encode_video(pipe, video, sample, generator)

    def decode_latents(self, pipe, latents):
        return decode_latents(pipe, latents)

    def forward(self, transformer, latents, timestep, text, *, control=None, fps=None):
        return transformer_forward(transformer, latents, timestep, text, control=control)

    def flow_pair(self, x0, noise, sigmas):
        return flow_pair(x0, noise, sigmas)

    def sample_sigmas(self, batch, generator, latent_shape, *, scheme="logit_normal", shift=3.0):
        """Open-Sora's own levels: shift(sigmoid(N(0, 1))) with the shape-dependent shift of its sampler."""
        return torch.tensor([sample_train_sigma(generator, latent_shape) for _ in range(batch)])

    def sample_continuation(self, pipe, cond_latents, total_latent_frames, prompt_embeds, negative_embeds, *, steps,
                            guidance_scale, noise, control, progress=None):
        return sample_continuation(pipe, cond_latents, total_latent_frames, prompt_embeds, negative_embeds,
                                   steps=steps, guidance_scale=guidance_scale, noise=noise, control=control,
                                   progress=progress)

    def continuation_control(self, pipe, mode, pixels, cond_latents, known_latents, window_latents):
        """Mask + reference latents on the first `known_latents` latent frames (0: zero conditioning)."""
        return v2v_cond(cond_latents[:, :, :known_latents], window_latents)

    def attention_layers(self, transformer):
        return []  # no radial processors for this family yet (TTA runs dense)

    def stock_processor(self, transformer):
        from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

        return FluxAttnProcessor()


FAMILY = OpenSora2Family()
