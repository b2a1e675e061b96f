"""Wan2.1-family models (T2V 1.3B / 14B and the embedded tiny model) through diffusers.

Everything model-specific lives here: where weights come from (tiny config, local folder,
Hub id), dtype/device placement, prompt encoding, VAE encode/decode with Wan's latent
normalisation, the latent/token layout the attention code needs, and the LoRA targets.
The tiny model is saved with `save_pretrained` once and then loaded through exactly the
same `from_pretrained` path as a downloaded checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..attention.processor import attend_layer, tag_family
from ..errors import ModelLoadError
from ..paths import cache_dir
from .base import (AttentionLayer, Capabilities, ContinuationMode, ModelFamily, TextEmbeds,
                   step_callback)

NAME = "wan"
# Bump when the way tiny models are built changes, so cached builds are rebuilt.
TINY_FORMAT_VERSION = 1

# Attention projections of every Wan block (self- and cross-attention).
LORA_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
# The seed's longer list: attention plus the feed-forward projections.
LORA_TARGET_MODULES_FULL = LORA_TARGET_MODULES + ["ffn.net.0.proj", "ffn.net.2"]


# ---------------------------------------------------------------------------- tiny model


def tiny_model_dir(tiny: dict, family: str = NAME) -> Path:
    # The Wan key stays as it was (existing caches remain valid); other families add their name.
    key = {"v": TINY_FORMAT_VERSION, "tiny": tiny} if family == NAME else {"v": TINY_FORMAT_VERSION, "family": family, "tiny": tiny}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"tiny-{family.replace('_', '-')}-{digest}"


def build_tiny_parts(tiny: dict, make_transformer) -> dict:
    """The shared tiny components (tokenizer, UMT5, Wan VAE, UniPC) plus `make_transformer(config)`.

    `make_transformer` gets the preset's transformer config (with `text_dim` and a tuple
    `patch_size`) and returns the family's transformer; it is built at the same point of the
    seeded RNG stream as Wan's, so the tiny Wan model is unchanged by this split.
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    from .tiny_tokenizer import build_tiny_tokenizer

    torch.manual_seed(int(tiny.get("seed", 0)))
    tokenizer = build_tiny_tokenizer(**tiny.get("tokenizer", {}))
    text_cfg = UMT5Config(vocab_size=len(tokenizer), **tiny["text_encoder"])
    text_encoder = UMT5EncoderModel(text_cfg).eval()
    transformer_cfg = dict(tiny["transformer"])
    transformer_cfg["patch_size"] = tuple(transformer_cfg.get("patch_size", (1, 2, 2)))
    transformer = make_transformer({"text_dim": text_cfg.d_model, **transformer_cfg})
    vae = AutoencoderKLWan(**tiny["vae"])
    # Wan2.1's own sampler settings: UniPC on flow-matching sigmas.
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
        **tiny.get("scheduler", {"flow_shift": 3.0}),
    )
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer)


def ensure_tiny_model(tiny: dict, family: str = NAME, builder=None) -> Path:
    """Build and save the tiny model once; later calls return the cached folder.

    `builder(tiny)` makes the pipeline (default: Wan's); `family` keeps caches apart.
    """
    target = tiny_model_dir(tiny, family)
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a temporary sibling and rename, so a crash never leaves a half-saved model.
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        (builder or build_tiny_pipeline)(tiny).save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race; its copy is identical
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------- loading


def resolve_source(preset: dict, builder=None) -> str:
    """A local folder path or a Hub id for the preset's weights (`builder`: the family's tiny builder)."""
    source = preset["source"]
    if source == "tiny":
        return str(ensure_tiny_model(preset["tiny"], preset.get("family", NAME), builder))
    expanded = Path(os.path.expanduser(source))
    looks_local = source.startswith((".", "/", "~")) or expanded.exists() or source.count("/") != 1
    if looks_local:
        if not expanded.is_dir():
            raise ModelLoadError(
                f"Model folder '{source}' (preset '{preset['name']}', field 'source') does not exist. "
                "Point 'source' at a folder saved with save_pretrained, or at a Hub id like "
                "'Wan-AI/Wan2.1-T2V-1.3B-Diffusers'."
            )
        if not (expanded / "model_index.json").is_file():
            raise ModelLoadError(
                f"Model folder '{source}' has no model_index.json, so it is not a diffusers pipeline folder. "
                "Download the '-Diffusers' variant of the model (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers)."
            )
        return str(expanded)
    return source


def _hub_help(source: str, err: Exception) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    why = "offline mode is on (HF_HUB_OFFLINE=1)" if offline else "the Hugging Face Hub could not be reached or refused the request"
    return ModelLoadError(
        f"Could not load model '{source}': it is not in the local Hugging Face cache and {why}. "
        f"To get the weights, run `hf download {source}` on a machine with internet access (they land in "
        "the HF cache, HF_HOME), or download them to a folder and set the preset's 'source' to that folder. "
        f"Details: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    )


def load_pipeline(preset: dict, device: torch.device | None = None, pipeline_cls=None, builder=None, family=None):
    """Load the preset's pipeline onto `device` (default: CUDA when present, else CPU).

    `pipeline_cls` / `builder` / `family` let other Wan-architecture families (SkyReels-V2, VACE)
    reuse this path; the default is WanPipeline, the tiny Wan builder and Wan's family.
    """
    from diffusers import AutoencoderKLWan, WanPipeline

    pipeline_cls = pipeline_cls or WanPipeline
    family = family or FAMILY
    device = device or family.default_device()
    source = resolve_source(preset, builder)
    dtype = family.compute_dtype(preset, device)
    is_hub = not Path(source).is_dir()
    try:
        # Wan's VAE is kept in float32 (its causal convolutions drift in half precision).
        vae = AutoencoderKLWan.from_pretrained(source, subfolder="vae", dtype=torch.float32, revision=preset["revision"])
        pipe = pipeline_cls.from_pretrained(source, vae=vae, dtype=dtype, revision=preset["revision"])
    except ModelLoadError:
        raise
    except (OSError, ValueError) as err:
        if is_hub:
            raise _hub_help(source, err) from None
        raise ModelLoadError(f"Could not load the model in '{source}': {err}") from None
    pipe.set_progress_bar_config(disable=True)
    tag_family(pipe.transformer, family)
    return pipe.to(device)


# ---------------------------------------------------------------------------- attention


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's RoPE: channel pairs (2i, 2i+1) rotate together; cos/sin come repeated per pair."""
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2).type_as(x)


class WanRadialAttnProcessor:
    """Self-attention of one Wan block: radial (block-sparse) or dense, as the shared schedule says."""

    def __init__(self, layer_index: int, schedule):
        self.layer_index = layer_index
        self.schedule = schedule

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        if encoder_hidden_states is not None:
            raise ValueError("WanRadialAttnProcessor is for self-attention (attn1) only.")
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _rotate(query, *rotary_emb)
            key = _rotate(key, *rotary_emb)
        out = attend_layer(self, query, key, value, attention_mask)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


# ---------------------------------------------------------------------------- LoRA names

# diffusers module path -> Wan's original module path, inside a block and at the top level. These
# are the names ComfyUI's Wan model uses, and the ones diffusers' Wan LoRA loader converts back.
_BLOCK_TO_ORIGINAL = {
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v", "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v", "attn2.to_out.0": "cross_attn.o",
    "attn2.add_k_proj": "cross_attn.k_img", "attn2.add_v_proj": "cross_attn.v_img",
    "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}
_TOP_TO_ORIGINAL = {"proj_out": "head.head", "condition_embedder.time_proj": "time_projection.1"}
_PEFT_KEY = re.compile(r"(?:transformer\.)?(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")


class WanFamily(ModelFamily):
    """Wan2.1 text-to-video (1.3B / 14B and the tiny model) through diffusers' WanPipeline."""

    name = NAME
    description = "Wan2.1 text-to-video (diffusers WanPipeline)"
    capabilities = Capabilities(
        text_to_video=True, length_extension=True,
        continuation={"replacement": ContinuationMode(prefix="noised"), "per_token": ContinuationMode(prefix="clean")},
    )
    lora_targets = tuple(LORA_TARGET_MODULES)
    lora_targets_full = tuple(LORA_TARGET_MODULES_FULL)
    card_tags = ("wan",)
    pipeline_class = "WanPipeline"  # diffusers class name (stock loading, model cards)
    transformer_class = "WanTransformer3DModel"
    block_prefix = "blocks"  # self-attention modules are <block_prefix>.<i>.attn1

    # -- loading
    def build_tiny_pipeline(self, tiny: dict):
        import diffusers

        transformer_cls = getattr(diffusers, self.transformer_class)
        pipe = getattr(diffusers, self.pipeline_class)(**build_tiny_parts(tiny, lambda cfg: transformer_cls(**cfg)))
        tag_family(pipe.transformer, self)
        return pipe

    def load_pipeline(self, preset: dict, device: torch.device | None = None):
        import diffusers

        return load_pipeline(preset, device, pipeline_cls=getattr(diffusers, self.pipeline_class),
                             builder=self.build_tiny_pipeline, family=self)

    def model_identity(self, preset: dict) -> str:
        if preset["source"] == "tiny":  # the cache key of tiny Wan models stays as it always was
            key = {"v": TINY_FORMAT_VERSION, "tiny": preset["tiny"]}
            if self.name != NAME:  # other families on this architecture build other pipelines
                key["family"] = self.name
            config = json.dumps(key, sort_keys=True)
            return f"tiny:{hashlib.sha256(config.encode()).hexdigest()[:16]}"
        return super().model_identity(preset)

    # One block's recompute peak per token and the offload overlap, fitted to the H200 whole-model rows of
    # docs/bench_runs/run17_train_memory.json (Wan2.1 14B at 69 -> 121 and 1.3B at 69 -> 161, no options);
    # docs/memory.md shows how close the fit comes on every other row.
    MEMORY_FIT = {"bytes_per_token_width": 62.2, "bytes_per_token_ffn": 3.73, "inflight_blocks": 5.0}
    MEMORY_MEASURED = "Wan2.1 1.3B and 14B on an H200, 2026-12-02 (BENCHMARKS run 17)"

    def ffn_width(self, cfg: dict) -> int:
        return int(cfg["ffn_dim"])

    def model_width(self, preset: dict) -> int | None:
        cfg = self._transformer_config(preset)
        return None if not cfg else int(cfg["num_attention_heads"]) * int(cfg["attention_head_dim"])

    def num_layers(self, preset: dict) -> int | None:
        cfg = self._transformer_config(preset)
        return None if not cfg else int(cfg["num_layers"])

    # -- text and video
    def encode_prompt(self, pipe, prompt, negative_prompt, guidance_scale, max_sequence_length: int = 512):
        pos, neg = pipe.encode_prompt(
            prompt=prompt, negative_prompt=negative_prompt or "", do_classifier_free_guidance=guidance_scale > 1.0,
            max_sequence_length=max_sequence_length, device=pipe._execution_device,
        )
        return TextEmbeds(pos), (None if neg is None else TextEmbeds(neg))

    @staticmethod
    def _latent_stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean, device=like.device, dtype=like.dtype).view(shape)
        std = torch.tensor(vae.config.latents_std, device=like.device, dtype=like.dtype).view(shape)
        return mean, std

    @torch.no_grad()
    def encode_video(self, pipe, video, sample=False, generator=None):
        """Pixels [B, 3, F, H, W] in [-1, 1] -> normalised latents [B, z, (F-1)/4+1, H/8, W/8]."""
        vae = pipe.vae
        dist = vae.encode(video.to(device=vae.device, dtype=vae.dtype)).latent_dist
        latents = dist.sample(generator) if sample else dist.mode()
        mean, std = self._latent_stats(vae, latents)
        return (latents - mean) / std

    @torch.no_grad()
    def decode_latents(self, pipe, latents):
        vae = pipe.vae
        latents = latents.to(device=vae.device, dtype=vae.dtype)
        mean, std = self._latent_stats(vae, latents)
        return vae.decode(latents * std + mean, return_dict=False)[0].clamp(-1, 1)

    # -- the objective
    def forward(self, transformer, latents, timestep, text, *, control=None, fps=None):
        """`timestep` [B] (one level for the clip) or [B, F] (one per latent frame, expanded to Wan's per-token
        timesteps [B, seq_len], frame-major as the tokens are laid out; the Wan2.2 TI2V path)."""
        if timestep.ndim == 2:
            pt, ph, pw = self.unwrap(transformer).config.patch_size
            if pt != 1:
                raise ValueError("per-frame timesteps need a temporal patch size of 1")
            timestep = timestep.repeat_interleave((latents.shape[3] // ph) * (latents.shape[4] // pw), dim=1)
        return transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=text.sequence,
                           return_dict=False)[0]

    # -- sampling
    def generate(self, pipe, *, prompt=None, negative_prompt=None, embeds=None, negative_embeds=None, num_frames,
                 height, width, steps, guidance_scale, generator, on_step=None, guidance_scale_2=None):
        callback = step_callback(on_step)
        # WanPipeline refuses guidance_scale_2 without experts; the engine checks the family first (None here)
        two = {} if guidance_scale_2 is None else {"guidance_scale_2": guidance_scale_2}

        text = {"prompt": prompt, "negative_prompt": negative_prompt} if embeds is None else {
            "prompt_embeds": embeds.sequence,
            "negative_prompt_embeds": None if negative_embeds is None else negative_embeds.sequence}
        with torch.inference_mode():
            out = pipe(**text, height=height, width=width, num_frames=num_frames, num_inference_steps=steps,
                       guidance_scale=guidance_scale, generator=generator, output_type="np",
                       callback_on_step_end=callback, **two)
        return np.asarray(out.frames[0])

    # -- attention
    def attention_layers(self, transformer):
        layers = []
        for name in transformer.attn_processors:  # "blocks.<i>.attn1.processor"
            parts = name.split(".")
            if parts[0] == self.block_prefix and parts[2] == "attn1":
                layers.append(AttentionLayer(name, int(parts[1])))
        return layers

    def radial_processor(self, layer, schedule):
        return WanRadialAttnProcessor(layer.index, schedule)

    def stock_processor(self, transformer):
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor

        return WanAttnProcessor()

    # -- LoRA
    def save_lora_weights(self, directory, state, metadata, weight_name):
        import diffusers

        getattr(diffusers, self.pipeline_class).save_lora_weights(
            directory, transformer_lora_layers=state, transformer_lora_adapter_metadata=metadata,
            weight_name=weight_name, safe_serialization=True)

    def comfy_key(self, peft_key):
        m = _PEFT_KEY.match(peft_key)
        if not m:
            return None
        module, which = m.group("module"), "lora_down" if m.group("which") == "A" else "lora_up"
        block = re.match(rf"{self.block_prefix}\.(\d+)\.(.+)$", module)
        if block and block.group(2) in _BLOCK_TO_ORIGINAL:
            return f"diffusion_model.{self.block_prefix}.{block.group(1)}.{_BLOCK_TO_ORIGINAL[block.group(2)]}.{which}.weight"
        if module in _TOP_TO_ORIGINAL:
            return f"diffusion_model.{_TOP_TO_ORIGINAL[module]}.{which}.weight"
        return None

    def comfy_alpha(self, comfy_module):
        # diffusers' Wan LoRA converter takes no `.alpha` for the top-level modules (it refuses the file)
        return comfy_module.removeprefix("diffusion_model.") not in _TOP_TO_ORIGINAL.values()

    # -- Hub card
    def card_usage(self, *, base_model, repo, weight_name, num_frames, height, width, fps, tiny):
        cls = self.pipeline_class
        if base_model:
            return ["```python", "import torch", f"from diffusers import {cls}", "from diffusers.utils import export_to_video", "",
                    f'pipe = {cls}.from_pretrained("{base_model}", torch_dtype=torch.bfloat16).to("cuda")',
                    f'pipe.load_lora_weights("{repo}", weight_name="{weight_name}")',
                    f'video = pipe("a red ball bounces on a beach", num_frames={num_frames}, height={height}, '
                    f'width={width}).frames[0]',
                    f'export_to_video(video, "extended.mp4", fps={fps})', "```", ""]
        if tiny:
            return [f"The tiny base model is built by Radial Studio, but it is a stock diffusers `{cls}` and the "
                    "adapter loads with stock `load_lora_weights`:", "",
                    "```python", "from engine.models import get_pipeline  # Radial Studio, run from its repository",
                    "from engine.presets import load_preset", "",
                    f'pipe = get_pipeline(load_preset("tiny-wan"))  # a diffusers {cls}',
                    f'pipe.load_lora_weights("{repo}", weight_name="{weight_name}")',
                    f'video = pipe("a red ball bounces on a beach", num_frames={num_frames}, height={height}, '
                    f'width={width}).frames[0]', "```", ""]
        return ["```python", f"from diffusers import {cls}", "",
                f'pipe = {cls}.from_pretrained("path/to/the/base/model")  # the model this adapter was trained on',
                f'pipe.load_lora_weights("{repo}", weight_name="{weight_name}")', "```", ""]

    def card_comfy_note(self) -> str:
        return (f"`{self.block_prefix}.N.self_attn.q`-style names: Wan's original module names "
                f"(`diffusion_model.{self.block_prefix}.N.self_attn.q.lora_down.weight`, with an `.alpha` per module)")


FAMILY = WanFamily()

# Module-level names for the functions other code and tests use directly.
token_layout = FAMILY.token_layout
layout_from_latents = FAMILY.layout_from_latents
encode_prompt = FAMILY.encode_prompt
encode_video = FAMILY.encode_video
decode_latents = FAMILY.decode_latents


def build_tiny_pipeline(tiny: dict):
    """A randomly initialised Wan2.1-architecture pipeline from the preset's `tiny` configs."""
    return FAMILY.build_tiny_pipeline(tiny)
