"""HunyuanVideo 1.5 text-to-video through diffusers' `HunyuanVideo15Pipeline` / `HunyuanVideo15Transformer3DModel`.

A relative of HunyuanVideo (`hunyuan`), so the family subclasses it and keeps what is shared: the VAE scaling
(scaling_factor, no shift), the flow-matching sampler's `shift`, the LoRA file format and the ComfyUI names.
What differs:

* Transformer: 54 double-stream blocks and no single-stream ones, patch size 1 on a 16x spatial / 4x temporal
  VAE with 32 latent channels, so tokens per frame = (H / 16) * (W / 16). Its input is [latents | image-condition
  latents | mask] (2C + 1 channels); for text-to-video the last two are zeros, as the pipeline passes them.
* Joint attention: each block attends over [video | text], the text being [image (729 tokens, all masked in
  T2V) | ByT5 glyph | Qwen2.5-VL], valid tokens first, then padding. Text comes last, so `attend_joint` takes it
  as it is: radial video->video (no attention sink), dense elsewhere, padded keys masked. `dense_layers`
  counts the blocks in order.
* Text: Qwen2.5-VL hidden states with their mask, and ByT5 states of the quoted text in the prompt with theirs.
  `TextEmbeds` has one sequence and mask, so the ByT5 part rides in `pooled` as [B, L2, D2 + 1]: its states
  with their key mask as the last channel (ByT5 has no pooled vector; no other code reads `pooled`).
* Guidance: real classifier-free guidance through the pipeline's `ClassifierFreeGuidance` guider (two
  transformer passes per step), not an embedded guidance input. The unconditional pass is the empty prompt;
  a negative with no valid Qwen token (a zeroed `TextEmbeds`, the trainer's unconditional) is replaced by
  the empty prompt's embeddings, since an all-masked text makes the token refiner divide by zero.

LoRA: diffusers 0.42.1 has no LoRA loader mixin for `HunyuanVideo15Pipeline` (no `load_lora_weights`), so the
file is written as `HunyuanVideoPipeline.save_lora_weights` writes it (`transformer.`-prefixed PEFT keys and
adapter metadata) and loaded with the transformer's stock `load_lora_adapter(..., prefix="transformer")`.
ComfyUI runs HunyuanVideo 1.5 on its HunyuanVideo model (Flux-style double blocks with fused q/k/v, the
repackaged checkpoint in the original `img_attn_qkv` names), so the export is HunyuanVideo's.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from ..attention.joint import attend_joint_layer
from ..attention.processor import tag_family
from ..errors import InputError
from .base import AttentionLayer, Capabilities, TextEmbeds
from .hunyuan import HunyuanVideoFamily

NAME = "hunyuan15"
LORA_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
LORA_TARGET_MODULES_FULL = LORA_TARGET_MODULES + ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                                                  "ff_context.net.2"]
# HunyuanVideo15Pipeline.__init__: vision_num_semantic_tokens = 729 zero image tokens in text-to-video.
VISION_TOKENS = 729
# The tiny model's chat template: the user's text only (the real Qwen template adds a system prompt that the
# pipeline crops off at token 108; the tiny template has nothing to crop).
TINY_CHAT_TEMPLATE = "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}"
_UNCOND_ATTR = "_radial_studio_uncond"  # the empty prompt's embeddings of a loaded pipeline (on the CPU)


# ---------------------------------------------------------------------------- tiny model


def _tiny_text_settings(pipe, tiny: dict):
    """The tiny pipeline's prompt lengths (HunyuanVideo15Pipeline sets 1000 / 256 and crop 108 in __init__)."""
    pipe.tokenizer_max_length = int(tiny.get("text_max_length", 16))
    pipe.tokenizer_2_max_length = int(tiny.get("glyph_max_length", 8))
    pipe.prompt_template_encode_start_idx = 0
    return pipe


def build_tiny_pipeline(tiny: dict):
    """A randomly initialised HunyuanVideo 1.5 pipeline: tiny Qwen2.5-VL text model and ByT5 encoder from config."""
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        ClassifierFreeGuidance,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

    from .tiny_tokenizer import build_tiny_tokenizer

    torch.manual_seed(int(tiny.get("seed", 0)))
    tokenizer = build_tiny_tokenizer(**tiny.get("tokenizer", {}))
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokenizer.padding_side = "right"  # as the real Qwen tokenizer is saved for this pipeline
    qwen = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1,
                                                    bos_token_id=1, **tiny["text_encoder"])).eval()
    glyph_tokenizer = ByT5Tokenizer()  # byte-level: no vocabulary file, nothing to download
    byt5 = T5EncoderModel(T5Config(vocab_size=len(glyph_tokenizer), **tiny["text_encoder_2"])).eval()
    vae = AutoencoderKLHunyuanVideo15(**tiny["vae"])
    channels = vae.config.latent_channels
    transformer = HunyuanVideo15Transformer3DModel(in_channels=2 * channels + 1, out_channels=channels,
                                                   text_embed_dim=qwen.config.hidden_size,
                                                   text_embed_2_dim=byt5.config.d_model, **tiny["transformer"])
    scheduler = FlowMatchEulerDiscreteScheduler(shift=float(tiny.get("scheduler", {}).get("shift", 9.0)))
    guider = ClassifierFreeGuidance(guidance_scale=float(tiny.get("guidance_scale", 6.0)))
    pipe = HunyuanVideo15Pipeline(text_encoder=qwen, tokenizer=tokenizer, transformer=transformer, vae=vae,
                                  scheduler=scheduler, text_encoder_2=byt5, tokenizer_2=glyph_tokenizer, guider=guider)
    tag_family(pipe.transformer, FAMILY)
    return _tiny_text_settings(pipe, tiny)


# ---------------------------------------------------------------------------- text


def pack_glyph(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ByT5 states [B, L, D] and their mask [B, L] -> [B, L, D + 1], the mask as the last channel."""
    return torch.cat([states, mask[..., None].to(states.dtype)], dim=-1)


def unpack_glyph(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return packed[..., :-1], packed[..., -1]


# ---------------------------------------------------------------------------- attention


class HunyuanVideo15RadialAttnProcessor:
    """The joint video+text attention of one block: radial video->video when the schedule says so.

    Projections, QK norm, RoPE on the video tokens, the text stream's projections and the output split are
    the stock HunyuanVideo15AttnProcessor2_0's. The stock masks attention by a pair mask (valid query and
    valid key, [B, 1, N, N]); here only keys are masked ([B, 1, 1, N]), which changes only the rows of padded
    text queries: stock zeroes them, here they attend the valid keys. Those rows reach the output only as
    masked keys, so the video tokens get the same numbers, and no N x N mask is built."""

    def __init__(self, layer_index: int, schedule):
        self.layer_index = layer_index
        self.schedule = schedule

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        if encoder_hidden_states is None or attention_mask is None:
            raise ValueError("HunyuanVideo15RadialAttnProcessor is for the joint video+text attention of the blocks.")
        query, key, value = (proj(hidden_states).unflatten(2, (attn.heads, -1)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        query, key = attn.norm_q(query), attn.norm_k(key)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        eq, ek, ev = (proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
                      for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
        if attn.norm_added_q is not None:
            eq = attn.norm_added_q(eq)
        if attn.norm_added_k is not None:
            ek = attn.norm_added_k(ek)
        query, key, value = torch.cat([query, eq], dim=1), torch.cat([key, ek], dim=1), torch.cat([value, ev], dim=1)
        batch, tokens = query.shape[:2]
        num_text = encoder_hidden_states.shape[1]
        video = torch.ones(batch, tokens - num_text, dtype=torch.bool, device=query.device)
        keys = torch.cat([video, attention_mask.to(query.device).bool()], dim=1).view(batch, 1, 1, tokens)
        out = attend_joint_layer(self, query, key, value, keys, num_text)
        out = out.flatten(2, 3).to(query.dtype)
        video_out, text_out = out[:, :-num_text], out[:, -num_text:]
        return attn.to_out[1](attn.to_out[0](video_out)), attn.to_add_out(text_out)


@contextmanager
def _reporting_steps(pipe, on_step):
    """Report each finished denoising step: the pipeline has no step callback, but updates its progress bar
    once per finished step, so a stand-in bar counts them for this call."""
    if on_step is None:
        yield
        return

    class _Steps:
        done = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n=1):
            self.done += n
            on_step(self.done)

    pipe.progress_bar = lambda *args, **kwargs: _Steps()
    try:
        yield
    finally:
        del pipe.progress_bar


class HunyuanVideo15Family(HunyuanVideoFamily):
    name = NAME
    description = "HunyuanVideo 1.5 text-to-video (diffusers HunyuanVideo15Pipeline)"
    # No continuation: the T2V model has no clean-prefix conditioning (its I2V variant is another model).
    capabilities = Capabilities(text_to_video=True, length_extension=True, continuation={}, comfy_export=True)
    attention_sink = False
    spatial_factor = 16
    patch_size = (1, 1, 1)
    lora_targets = tuple(LORA_TARGET_MODULES)
    lora_targets_full = tuple(LORA_TARGET_MODULES_FULL)
    card_tags = ("hunyuanvideo", "hunyuanvideo-1.5")
    pipeline_class = "HunyuanVideo15Pipeline"
    transformer_class = "HunyuanVideo15Transformer3DModel"
    MEMORY_FIT = None  # another architecture than HunyuanVideo's fit: not measured yet

    # -- loading
    def build_tiny_pipeline(self, tiny: dict):
        return build_tiny_pipeline(tiny)

    def _configure_text(self, pipe, preset: dict) -> None:
        if preset["source"] == "tiny":  # the real pipeline's lengths are its own (set in its __init__)
            _tiny_text_settings(pipe, preset["tiny"])

    def model_width(self, preset: dict) -> int | None:
        cfg = self._transformer_config(preset)
        return None if not cfg else int(cfg.get("num_attention_heads", 16)) * int(cfg.get("attention_head_dim", 128))

    def num_layers(self, preset: dict) -> int | None:
        cfg = self._transformer_config(preset)
        return None if not cfg else int(cfg.get("num_layers", 54))

    # -- text
    def _encode(self, pipe, prompt: str) -> TextEmbeds:
        # on the encoders' own device: the trainer moves them off the accelerator before sampling
        seq, mask, glyph, glyph_mask = pipe.encode_prompt(prompt=prompt, device=pipe.text_encoder.device)
        return TextEmbeds(seq, pack_glyph(glyph, glyph_mask), mask.long())

    def _unconditional(self, pipe, negative: TextEmbeds) -> TextEmbeds:
        """`negative`, unless a row has no valid Qwen token: then the empty prompt's embeddings (encoded once)."""
        if negative.mask is None or bool(negative.mask.bool().any(dim=1).all()):
            return negative
        empty = getattr(pipe, _UNCOND_ATTR, None)
        if empty is None:
            with torch.no_grad():
                empty = self._encode(pipe, "").to("cpu")
            setattr(pipe, _UNCOND_ATTR, empty)
        return empty.expand(negative.batch)

    @staticmethod
    def _call_kwargs(embeds: TextEmbeds, device, prefix: str = "") -> dict:
        glyph, glyph_mask = unpack_glyph(embeds.pooled.to(device))
        return {f"{prefix}prompt_embeds": embeds.sequence.to(device), f"{prefix}prompt_embeds_mask": embeds.mask.to(device),
                f"{prefix}prompt_embeds_2": glyph, f"{prefix}prompt_embeds_mask_2": glyph_mask}

    # -- the objective
    def forward(self, transformer, latents, timestep, text, *, control=None, fps=None):
        if timestep.ndim != 1:
            raise InputError("HunyuanVideo 1.5 takes one timestep per sample, not per frame.")
        if text.pooled is None:
            raise InputError("HunyuanVideo 1.5 prompt embeddings need their ByT5 part (TextEmbeds.pooled); encode the "
                             "prompt with this family's encode_prompt.")
        model = self.unwrap(transformer)
        dtype, device = model.dtype, latents.device
        x = latents.to(dtype)
        # text-to-video: no image-condition latents and a zero condition mask, as the pipeline passes them
        hidden = torch.cat([x, torch.zeros_like(x), x.new_zeros(x.shape[0], 1, *x.shape[2:])], dim=1)
        mask = text.mask if text.mask is not None else torch.ones(text.sequence.shape[:2], device=device)
        glyph, glyph_mask = unpack_glyph(text.pooled.to(device, dtype))
        image = torch.zeros(x.shape[0], VISION_TOKENS, model.config.image_embed_dim, device=device, dtype=dtype)
        return transformer(hidden_states=hidden, timestep=timestep.to(device, dtype),
                           encoder_hidden_states=text.sequence.to(device, dtype),
                           encoder_attention_mask=mask.to(device, dtype), encoder_hidden_states_2=glyph,
                           encoder_attention_mask_2=glyph_mask, image_embeds=image, return_dict=False)[0]

    # -- sampling
    def generate(self, pipe, *, prompt=None, negative_prompt=None, embeds=None, negative_embeds=None, num_frames,
                 height, width, steps, guidance_scale, generator, on_step=None, guidance_scale_2=None):
        # guidance_scale_2: one transformer, so always None here (presets and generate_video refuse a value)
        cfg = guidance_scale > 1.0
        if embeds is None:
            embeds = self._encode(pipe, prompt or "")
        device = pipe._execution_device
        kwargs = self._call_kwargs(embeds, device)
        if cfg:
            if negative_embeds is None:
                negative_embeds = self._encode(pipe, negative_prompt or "")
            kwargs.update(self._call_kwargs(self._unconditional(pipe, negative_embeds), device, "negative_"))
        guider = pipe.guider
        pipe.guider = guider.new(guidance_scale=float(guidance_scale), enabled=cfg)  # this call's scale
        try:
            with torch.inference_mode(), _reporting_steps(pipe, on_step):
                out = pipe(height=height, width=width, num_frames=num_frames, num_inference_steps=steps,
                           generator=generator, output_type="np", **kwargs)
        finally:
            pipe.guider = guider
        return np.asarray(out.frames[0])

    # -- attention: the blocks in order
    def attention_layers(self, transformer):
        layers = []
        for name in self.unwrap(transformer).attn_processors:
            parts = name.split(".")
            if parts[0] == "transformer_blocks" and parts[2] == "attn":
                layers.append(AttentionLayer(name, int(parts[1])))
        return layers

    def radial_processor(self, layer, schedule):
        return HunyuanVideo15RadialAttnProcessor(layer.index, schedule)

    def stock_processor(self, transformer):
        from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15AttnProcessor2_0

        ours = {layer.processor_name for layer in self.attention_layers(transformer)}
        return {name: HunyuanVideo15AttnProcessor2_0() if name in ours else proc
                for name, proc in self.unwrap(transformer).attn_processors.items()}

    # -- LoRA: the file HunyuanVideoPipeline.save_lora_weights writes (inherited), loaded by the transformer
    def load_lora(self, pipe, folder, weight_name, adapter_name):
        pipe.transformer.load_lora_adapter(str(folder), weight_name=weight_name, prefix="transformer",
                                           adapter_name=adapter_name)

    def unload_lora(self, pipe):
        pipe.transformer.unload_lora()

    # -- Hub card
    def _card_lora_lines(self, repo, weight_name) -> list[str]:
        return ["# the pipeline has no load_lora_weights: the transformer loads the adapter",
                f'pipe.transformer.load_lora_adapter("{repo}", weight_name="{weight_name}", prefix="transformer")']

    def card_comfy_note(self) -> str:
        return ("ComfyUI's HunyuanVideo names, which it uses for HunyuanVideo 1.5 too "
                "(`diffusion_model.double_blocks.N.img_attn_qkv.lora_down.weight`): q/k/v LoRAs are fused into one "
                "LoRA of three times the rank, the same update")


FAMILY = HunyuanVideo15Family()
