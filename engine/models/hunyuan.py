"""HunyuanVideo text-to-video through diffusers' `HunyuanVideoPipeline` / `HunyuanVideoTransformer3DModel`.

The transformer is an MMDiT: 20 double-stream blocks (video and text with their own weights) then 40
single-stream blocks (one sequence), each attending jointly over [video tokens | text tokens]. Radial
attention replaces the video->video part only (`engine.attention.joint`, no attention sink); the
text parts stay dense and padded text keys stay masked, as the stock model masks them. `dense_layers`
counts double blocks first, then single blocks.

Text: LLaMA hidden states (the pipeline's prompt template, 256 tokens with an attention mask) and a CLIP
pooled vector. The model is guidance-distilled: `guidance_scale` is its embedded guidance (no negative
prompt pass, true_cfg_scale 1 as the pipeline's default). VAE: causal 3D, 4x temporal / 8x spatial,
latents scaled by the VAE's scaling_factor (0.476986), no shift. Sampler: flow-matching Euler, shift 7.

LoRA: the diffusers file (`HunyuanVideoPipeline.load_lora_weights`) and a ComfyUI export in the original
checkpoint's names (`diffusion_model.double_blocks.N.img_attn_qkv`, `single_blocks.N.linear1`, ...), which
ComfyUI's loader maps for HunyuanVideo. The original fuses q/k/v (and, in single blocks, the MLP input)
into one Linear, so separate to_q/to_k/to_v LoRAs of rank r are exported as one LoRA of rank n*r on the
fused layer: down = [A_q; A_k; A_v], up = blockdiag(B_q, B_k, B_v), exactly the same weight update.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from ..attention.joint import attend_joint_layer
from ..attention.processor import tag_family
from ..errors import InputError, ModelLoadError
from .base import AttentionLayer, Capabilities, ModelFamily, TextEmbeds, step_callback
from .wan import _hub_help, resolve_source

NAME = "hunyuan"
LORA_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
LORA_TARGET_MODULES_FULL = LORA_TARGET_MODULES + ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                                                  "ff_context.net.2", "proj_mlp"]
SAMPLER_SHIFT = 7.0  # hunyuanvideo-community/HunyuanVideo scheduler_config.json: "shift": 7.0
# Embedded guidance the LoRA trains at: the pipeline's default sampling value, so training sees the
# conditioning it is used with (a guidance-distilled model takes guidance as an input).
TRAIN_GUIDANCE = 6.0
_TEXT_ATTR = "_radial_studio_text"  # (prompt_template, max_sequence_length) of a loaded pipeline


# ---------------------------------------------------------------------------- tiny model


def build_tiny_pipeline(tiny: dict):
    """A randomly initialised HunyuanVideo-architecture pipeline: tiny LLaMA + CLIP from config, offline tokenizers."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    from .tiny_tokenizer import build_tiny_tokenizer

    torch.manual_seed(int(tiny.get("seed", 0)))
    tokenizer = build_tiny_tokenizer(**tiny.get("tokenizer", {}))
    special = dict(pad_token_id=0, eos_token_id=1, bos_token_id=1)  # the tiny tokenizer's ids
    llama = LlamaModel(LlamaConfig(vocab_size=len(tokenizer), **special, **tiny["text_encoder"])).eval()
    clip_cfg = CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=77, **special, **tiny["text_encoder_2"])
    clip = CLIPTextModel(clip_cfg).eval()
    transformer = HunyuanVideoTransformer3DModel(text_embed_dim=llama.config.hidden_size,
                                                 pooled_projection_dim=clip_cfg.hidden_size, **tiny["transformer"])
    vae = AutoencoderKLHunyuanVideo(**tiny["vae"])
    scheduler = FlowMatchEulerDiscreteScheduler(shift=float(tiny.get("scheduler", {}).get("shift", SAMPLER_SHIFT)))
    pipe = HunyuanVideoPipeline(text_encoder=llama, tokenizer=tokenizer, transformer=transformer, vae=vae,
                                scheduler=scheduler, text_encoder_2=clip, tokenizer_2=tokenizer)
    tag_family(pipe.transformer, FAMILY)
    return pipe


# ---------------------------------------------------------------------------- attention


class HunyuanRadialAttnProcessor:
    """Joint attention of one double- or single-stream block: radial video->video when the schedule says so.

    Steps 1-4 and 6 are the stock HunyuanVideoAttnProcessor2_0's (projections, QK norm, RoPE on the video
    tokens, the text stream's own projections, output split); only the attention call differs."""

    def __init__(self, layer_index: int, schedule):
        self.layer_index = layer_index
        self.schedule = schedule

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        if encoder_hidden_states is None:
            raise ValueError("HunyuanRadialAttnProcessor is for the joint video+text attention of the main blocks.")
        num_text = encoder_hidden_states.shape[1]
        single = attn.add_q_proj is None  # single-stream: the text rides at the end of the sequence
        if single:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
        query, key, value = (proj(hidden_states).unflatten(2, (attn.heads, -1)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            if single:
                query = torch.cat([apply_rotary_emb(query[:, :-num_text], image_rotary_emb, sequence_dim=1),
                                   query[:, -num_text:]], dim=1)
                key = torch.cat([apply_rotary_emb(key[:, :-num_text], image_rotary_emb, sequence_dim=1),
                                 key[:, -num_text:]], dim=1)
            else:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        if not single:
            eq, ek, ev = (proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
                          for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            if attn.norm_added_q is not None:
                eq = attn.norm_added_q(eq)
            if attn.norm_added_k is not None:
                ek = attn.norm_added_k(ek)
            query, key, value = torch.cat([query, eq], dim=1), torch.cat([key, ek], dim=1), torch.cat([value, ev], dim=1)
        out = attend_joint_layer(self, query, key, value, attention_mask, num_text)
        out = out.flatten(2, 3).to(query.dtype)
        video, text = out[:, :-num_text], out[:, -num_text:]
        if getattr(attn, "to_out", None) is not None:
            video = attn.to_out[1](attn.to_out[0](video))
        if getattr(attn, "to_add_out", None) is not None:
            text = attn.to_add_out(text)
        return video, text


# ---------------------------------------------------------------------------- LoRA names

# diffusers module (inside a block) -> the original checkpoint's module, and the slot of a fused layer
_DOUBLE = {"attn.to_q": ("img_attn_qkv", 0), "attn.to_k": ("img_attn_qkv", 1), "attn.to_v": ("img_attn_qkv", 2),
           "attn.to_out.0": ("img_attn_proj", None),
           "attn.add_q_proj": ("txt_attn_qkv", 0), "attn.add_k_proj": ("txt_attn_qkv", 1),
           "attn.add_v_proj": ("txt_attn_qkv", 2), "attn.to_add_out": ("txt_attn_proj", None),
           "ff.net.0.proj": ("img_mlp.fc1", None), "ff.net.2": ("img_mlp.fc2", None),
           "ff_context.net.0.proj": ("txt_mlp.fc1", None), "ff_context.net.2": ("txt_mlp.fc2", None)}
_SINGLE = {"attn.to_q": ("linear1", 0), "attn.to_k": ("linear1", 1), "attn.to_v": ("linear1", 2),
           "proj_mlp": ("linear1", 3), "proj_out": ("linear2", None)}
_REFINER = {"attn.to_q": ("self_attn_qkv", 0), "attn.to_k": ("self_attn_qkv", 1), "attn.to_v": ("self_attn_qkv", 2),
            "attn.to_out.0": ("self_attn_proj", None),
            # ComfyUI loads the refiner's MLP as mlp.0 / mlp.2 and maps the original mlp.fc1 / mlp.fc2 to them
            # (comfy/supported_models.py HunyuanVideo.process_unet_state_dict, comfy/lora.py)
            "ff.net.0.proj": ("mlp.fc1", None), "ff.net.2": ("mlp.fc2", None)}
_PREFIXES = (("transformer_blocks", "double_blocks", _DOUBLE), ("single_transformer_blocks", "single_blocks", _SINGLE),
             ("context_embedder.token_refiner.refiner_blocks", "txt_in.individual_token_refiner.blocks", _REFINER))
_PEFT_KEY = re.compile(r"(?:transformer\.)?(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")
_FUSED = ".fused"  # marks a key comfy_state made (a fused layer), already in original names


def original_module(module: str) -> tuple[str, int | None] | None:
    """(the original checkpoint's module, slot in its fused layer or None) for a diffusers module path."""
    for ours, theirs, table in _PREFIXES:
        m = re.match(rf"{re.escape(ours)}\.(\d+)\.(.+)$", module)
        if m and m.group(2) in table:
            name, slot = table[m.group(2)]
            return f"{theirs}.{m.group(1)}.{name}", slot
    return None


def fuse_lora_state(state: dict[str, torch.Tensor], mlp_ratio: float = 4.0) -> dict[str, torch.Tensor]:
    """diffusers-named LoRA weights -> weights on the original (fused) modules, the same update per module.

    A fused layer with n trained slots gets down = [A_1; ...; A_n] and up = blockdiag(B_1, ..., B_n), its up
    scaled by n so that ComfyUI's alpha / rank (rank n*r) gives each slot alpha / r. A single block's
    linear1 without an MLP LoRA gets zero rows for its MLP part (mlp_ratio x width: 4.0 in every
    HunyuanVideo config). Keys of unfused modules keep their diffusers names (comfy_key renames them)."""
    groups: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    out = {}
    for key, value in state.items():
        m = _PEFT_KEY.match(key)
        found = original_module(m.group("module")) if m else None
        if found is None or found[1] is None:
            out[key] = value
            continue
        groups.setdefault(found[0], {}).setdefault(found[1], {})[m.group("which")] = value
    for module, slots in sorted(groups.items()):
        missing = [s for s in range(3) if s not in slots]
        if missing:
            raise InputError(f"LoRA on {module}: q/k/v slot(s) {missing} of the fused layer have no weights; train "
                             "to_q, to_k and to_v together (the original checkpoint fuses them into one layer).")
        order = sorted(slots)
        up = torch.block_diag(*(slots[i]["B"] for i in order)) * len(order)
        if module.endswith("linear1") and 3 not in slots:
            width = slots[0]["B"].shape[0]
            up = torch.cat([up, up.new_zeros(int(width * mlp_ratio), up.shape[1])])
        out[f"{module}{_FUSED}.lora_A.weight"] = torch.cat([slots[i]["A"] for i in order], dim=0)
        out[f"{module}{_FUSED}.lora_B.weight"] = up
    return out


class HunyuanVideoFamily(ModelFamily):
    name = NAME
    description = "HunyuanVideo text-to-video (diffusers HunyuanVideoPipeline)"
    # No continuation: the T2V model has no clean-prefix conditioning (its I2V variant is another model).
    capabilities = Capabilities(text_to_video=True, length_extension=True, continuation={}, comfy_export=True)
    attention_sink = False  # the radial paper's HunyuanVideo mask has no first-frame sink
    lora_targets = tuple(LORA_TARGET_MODULES)
    lora_targets_full = tuple(LORA_TARGET_MODULES_FULL)
    card_tags = ("hunyuanvideo",)
    pipeline_class = "HunyuanVideoPipeline"
    transformer_class = "HunyuanVideoTransformer3DModel"

    # -- loading
    def build_tiny_pipeline(self, tiny: dict):
        return build_tiny_pipeline(tiny)

    def load_pipeline(self, preset: dict, device: torch.device | None = None):
        import diffusers

        device = device or self.default_device()
        source = resolve_source(preset, self.build_tiny_pipeline)
        dtype = self.compute_dtype(preset, device)
        try:
            pipe = getattr(diffusers, self.pipeline_class).from_pretrained(source, dtype=dtype, revision=preset["revision"])
        except (OSError, ValueError) as err:
            if preset["source"] != "tiny" and source == preset["source"]:
                raise _hub_help(source, err) from None
            raise ModelLoadError(f"Could not load the model in '{source}': {err}") from None
        pipe.set_progress_bar_config(disable=True)
        self._configure_text(pipe, preset)
        if device.type == "cuda":
            pipe.vae.enable_tiling()  # 720p x 129 frames does not decode in one piece
        tag_family(pipe.transformer, self)
        return pipe.to(device)

    def _configure_text(self, pipe, preset: dict) -> None:
        """The prompt template and text length a loaded pipeline encodes with (the tiny preset's own)."""
        tiny = preset.get("tiny") or {}
        template = tiny.get("prompt_template")
        if template is None:
            from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import (
                DEFAULT_PROMPT_TEMPLATE as template,
            )
        setattr(pipe, _TEXT_ATTR, (template, int(tiny.get("text_max_length", 256))))

    def model_identity(self, preset: dict) -> str:
        if preset["source"] == "tiny":
            from .wan import tiny_model_dir

            return f"tiny:{tiny_model_dir(preset['tiny'], self.name).name}"
        return super().model_identity(preset)

    # Fitted by bench/memory_fit.py to the whole-model rows of docs/bench_runs/run30_train_memory_hunyuan.json (33 ->
    # 49 and 65 frames with no option, 65 with 8 feed-forward slices, 97 with offload). Slices do not lower the peak
    # (the single-stream blocks' fused MLP is no FeedForward): the ffn term is ~0. With offload_activations the
    # peak held ~40 block inputs' worth more than the inputs in flight (Wan: under 1): each single-stream block's
    # small text view kept its whole output alive. engine/memory/offload.py now compacts such views; until that
    # is measured on a GPU the fit keeps the measured 40.5, which over-predicts (the safe side).
    MEMORY_FIT = {"bytes_per_token_width": 71.45, "bytes_per_token_ffn": 0.01, "inflight_blocks": 40.5}
    MEMORY_MEASURED = "HunyuanVideo (13B) on an H100, 2026-12-07 (BENCHMARKS run 30)"

    def ffn_width(self, cfg: dict) -> int:  # double blocks' FeedForward and single blocks' proj_mlp alike
        return int(int(cfg.get("num_attention_heads", 24)) * int(cfg.get("attention_head_dim", 128))
                   * float(cfg.get("mlp_ratio", 4.0)))

    def model_width(self, preset: dict) -> int | None:
        cfg = self._transformer_config(preset)
        return None if not cfg else int(cfg.get("num_attention_heads", 24)) * int(cfg.get("attention_head_dim", 128))

    def num_layers(self, preset: dict) -> int | None:
        cfg = self._transformer_config(preset)
        return None if not cfg else int(cfg.get("num_layers", 20)) + int(cfg.get("num_single_layers", 40))

    def encoder_dtypes(self, pipe) -> str:
        return f"vae={pipe.vae.dtype},text={pipe.text_encoder.dtype},text2={pipe.text_encoder_2.dtype}"

    # -- text and video
    def _encode(self, pipe, prompt: str) -> TextEmbeds:
        template, max_len = getattr(pipe, _TEXT_ATTR)
        seq, pooled, mask = pipe.encode_prompt(prompt=prompt, prompt_template=template, device=pipe._execution_device,
                                               max_sequence_length=max_len)
        return TextEmbeds(seq, pooled, mask)

    @torch.no_grad()
    def encode_prompt(self, pipe, prompt, negative_prompt, guidance_scale):
        # the embedded guidance needs no negative pass; the negative is encoded for callers that drop the prompt
        neg = self._encode(pipe, negative_prompt or "") if guidance_scale > 1.0 else None
        return self._encode(pipe, prompt), neg

    @torch.no_grad()
    def encode_video(self, pipe, video, sample=False, generator=None):
        vae = pipe.vae
        dist = vae.encode(video.to(device=vae.device, dtype=vae.dtype)).latent_dist
        latents = dist.sample(generator) if sample else dist.mode()
        return latents * vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, pipe, latents):
        vae = pipe.vae
        latents = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
        return vae.decode(latents, return_dict=False)[0].clamp(-1, 1)

    # -- the objective
    def forward(self, transformer, latents, timestep, text, *, control=None, fps=None):
        if timestep.ndim != 1:
            raise InputError("HunyuanVideo takes one timestep per sample, not per frame.")
        model = self.unwrap(transformer)
        dtype = model.dtype
        mask = text.mask if text.mask is not None else torch.ones(text.sequence.shape[:2], device=latents.device)
        guidance = None
        if model.config.guidance_embeds:
            guidance = torch.full((latents.shape[0],), TRAIN_GUIDANCE * 1000.0, device=latents.device, dtype=dtype)
        return transformer(hidden_states=latents.to(dtype), timestep=timestep.to(latents.device, latents.dtype),
                           encoder_hidden_states=text.sequence.to(dtype), encoder_attention_mask=mask.to(latents.device, dtype),
                           pooled_projections=text.pooled.to(dtype), guidance=guidance, return_dict=False)[0]

    def flow_shift(self, pipe) -> float:
        return float(pipe.scheduler.config.get("shift", SAMPLER_SHIFT))

    # -- sampling
    def generate(self, pipe, *, prompt=None, negative_prompt=None, embeds=None, negative_embeds=None, num_frames,
                 height, width, steps, guidance_scale, generator, on_step=None, guidance_scale_2=None):
        # guidance_scale_2: one transformer, so always None here (presets and generate_video refuse a value)
        callback = step_callback(on_step)

        if embeds is None:
            embeds = self._encode(pipe, prompt or "")
        device = pipe._execution_device
        with torch.inference_mode():
            out = pipe(prompt_embeds=embeds.sequence.to(device), pooled_prompt_embeds=embeds.pooled.to(device),
                       prompt_attention_mask=embeds.mask.to(device), height=height, width=width, num_frames=num_frames,
                       num_inference_steps=steps, guidance_scale=guidance_scale, true_cfg_scale=1.0,
                       generator=generator, output_type="np", callback_on_step_end=callback)
        return np.asarray(out.frames[0])

    # -- attention: double blocks 0..D-1, then single blocks D..D+S-1
    def attention_layers(self, transformer):
        model = self.unwrap(transformer)
        double = len(model.transformer_blocks)
        layers = []
        for name in model.attn_processors:
            parts = name.split(".")
            if parts[0] == "transformer_blocks" and parts[2] == "attn":
                layers.append(AttentionLayer(name, int(parts[1])))
            elif parts[0] == "single_transformer_blocks" and parts[2] == "attn":
                layers.append(AttentionLayer(name, double + int(parts[1])))
        return layers

    def radial_processor(self, layer, schedule):
        return HunyuanRadialAttnProcessor(layer.index, schedule)

    def stock_processor(self, transformer):
        from diffusers.models.transformers.transformer_hunyuan_video import (
            HunyuanVideoAttnProcessor2_0,
        )

        ours = {layer.processor_name for layer in self.attention_layers(transformer)}
        return {name: HunyuanVideoAttnProcessor2_0() if name in ours else proc
                for name, proc in self.unwrap(transformer).attn_processors.items()}

    # -- LoRA
    def save_lora_weights(self, directory, state, metadata, weight_name):
        from diffusers import HunyuanVideoPipeline

        HunyuanVideoPipeline.save_lora_weights(directory, transformer_lora_layers=state,
                                               transformer_lora_adapter_metadata=metadata, weight_name=weight_name,
                                               safe_serialization=True)

    def comfy_state(self, state):
        return fuse_lora_state(state)

    def comfy_key(self, peft_key):
        m = _PEFT_KEY.match(peft_key)
        if not m:
            return None
        module, which = m.group("module"), "lora_down" if m.group("which") == "A" else "lora_up"
        if module.endswith(_FUSED):
            return f"diffusion_model.{module.removesuffix(_FUSED)}.{which}.weight"
        found = original_module(module)
        if found is None or found[1] is not None:  # a fused slot reaches here only through comfy_state
            return None
        return f"diffusion_model.{found[0]}.{which}.weight"

    # -- Hub card
    def _card_lora_lines(self, repo, weight_name) -> list[str]:
        return [f'pipe.load_lora_weights("{repo}", weight_name="{weight_name}")']

    def card_usage(self, *, base_model, repo, weight_name, num_frames, height, width, fps, tiny):
        source = f'"{base_model}"' if base_model else '"path/to/the/base/model"'
        return ["```python", "import torch", f"from diffusers import {self.pipeline_class}",
                "from diffusers.utils import export_to_video", "",
                f"pipe = {self.pipeline_class}.from_pretrained({source}, torch_dtype=torch.bfloat16).to(\"cuda\")",
                "pipe.vae.enable_tiling()", *self._card_lora_lines(repo, weight_name),
                f'video = pipe("a red ball bounces on a beach", num_frames={num_frames}, height={height}, '
                f'width={width}).frames[0]', f'export_to_video(video, "extended.mp4", fps={fps})', "```", ""]

    def card_comfy_note(self) -> str:
        return ("HunyuanVideo's original module names (`diffusion_model.double_blocks.N.img_attn_qkv.lora_down.weight`, "
                "`single_blocks.N.linear1`): q/k/v LoRAs are fused into one LoRA of three times the rank, the same update")


FAMILY = HunyuanVideoFamily()
