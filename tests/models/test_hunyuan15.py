"""HunyuanVideo 1.5 on the family contract, on the tiny preset (CPU): the tests HunyuanVideo gets."""

import json
import logging
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from engine.attention import joint
from engine.attention.processor import install_radial_attention, remove_radial_attention
from engine.attention.schedule import AttentionSettings
from engine.errors import InputError
from engine.lora import COMFY_WEIGHT_NAME, DIFFUSERS_WEIGHT_NAME, add_lora, load_lora_into_pipeline, save_lora
from engine.models import family, get_pipeline
from engine.models.hunyuan15 import VISION_TOKENS, unpack_glyph
from engine.models.wan import ensure_tiny_model
from engine.presets import load_preset
from tests.run_factory import engine_cli, resumed_equals_whole, trains_and_evaluates

TINY = "tiny-hunyuanvideo-1.5"
REAL = "hunyuanvideo-1.5"


@pytest.fixture(scope="module")
def tiny():
    preset = load_preset(TINY)
    return preset, family(preset), get_pipeline(preset)


def _sample(pipe, frames=9, steps=3):
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        return pipe(prompt="a red circle", height=64, width=64, num_frames=frames, num_inference_steps=steps,
                    generator=gen, output_type="latent").frames


def _inputs(fam, pipe, frames=9, seed=0, prompt='a red circle with the words "HI"'):
    gen = torch.Generator().manual_seed(seed)
    text, _ = fam.encode_prompt(pipe, prompt, None, 1.0)
    assert not text.mask.all()  # padded text tokens: the key mask matters
    return torch.randn(1, 8, frames, 4, 4, generator=gen), text


def test_frame_rule_layout_and_layers():
    preset = load_preset(REAL)
    fam = family(preset)
    assert preset["source"] == "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-720p_t2v"
    assert fam.latent_frames(121) == 31 and fam.latent_frames(61) == 16 and fam.size_multiple == 16
    layout = fam.token_layout(121, 720, 1280)
    assert (layout.latent_frames, layout.tokens_per_frame, layout.num_tokens) == (31, 45 * 80, 111_600)
    assert fam.num_layers(preset) == 54 and fam.model_width(preset) == 2048 and not fam.attention_sink
    assert fam.capabilities.can("generate") and fam.capabilities.can("length_extension")
    assert not fam.capabilities.can("tta")
    gen, att = preset["generation"], preset["attention"]
    assert (gen["num_frames"], gen["height"], gen["width"], gen["guidance_scale"]) == (121, 720, 1280, 6.0)
    assert (att["block_size"], att["decay_factor"], att["dense_layers"], att["dense_timesteps"]) == (128, 1.0, 2, 2)
    with pytest.raises(InputError, match="117 or 121"):
        fam.check_frame_count(120)
    assert fam.num_layers(load_preset(TINY)) == 3


def test_dense_layers_count_the_blocks_in_order(tiny):
    _, fam, pipe = tiny
    layers = {layer.processor_name: layer.index for layer in fam.attention_layers(pipe.transformer)}
    assert layers == {f"transformer_blocks.{i}.attn.processor": i for i in range(3)}  # no refiner block


def test_every_layer_dense_equals_the_stock_model_bit_for_bit(tiny):
    preset, fam, pipe = tiny
    remove_radial_attention(pipe.transformer, fam)
    stock = _sample(pipe)
    install_radial_attention(pipe.transformer, AttentionSettings(pattern="dense"), fam)
    assert torch.equal(_sample(pipe), stock)
    install_radial_attention(pipe.transformer, AttentionSettings(pattern="radial", dense_layers=fam.num_layers(preset)), fam)
    assert torch.equal(_sample(pipe), stock)  # our processor (key mask only), every layer dense: the same bits
    install_radial_attention(pipe.transformer, AttentionSettings(pattern="radial", dense_layers=1, dense_timesteps=0,
                                                                 block_size=16), fam)
    radial = _sample(pipe, frames=33)
    remove_radial_attention(pipe.transformer, fam)
    assert not torch.allclose(radial, _sample(pipe, frames=33))  # radial layers do change it


def test_radial_layers_match_the_reference_mask(tiny, monkeypatch):
    """The merged (LSE) attention inside the model equals one SDPA with the whole mask spelled out."""
    _, fam, pipe = tiny
    x, text = _inputs(fam, pipe, frames=9)
    t = torch.tensor([500.0])
    settings = AttentionSettings(pattern="radial", dense_layers=1, dense_timesteps=0, block_size=16, backend="reference")
    seen = []
    real = joint.joint_attention

    def spy(q, k, v, **kw):
        seen.append((kw["num_video"], q.shape[1] - kw["num_video"], kw["num_frames"], kw["tokens_per_frame"],
                     kw["sink"], int(kw["key_mask"].sum())))
        return real(q, k, v, **kw)

    monkeypatch.setattr(joint, "joint_attention", spy)
    install_radial_attention(pipe.transformer, settings, fam)
    try:
        with torch.no_grad():
            ours = fam.forward(pipe.transformer, x, t, text)
            monkeypatch.setattr(joint, "joint_attention", lambda q, k, v, backend=None, **kw:
                                joint.joint_attention_reference(q, k, v, **kw))
            ref = fam.forward(pipe.transformer, x, t, text)
    finally:
        remove_radial_attention(pipe.transformer, fam)
    glyph, glyph_mask = unpack_glyph(text.pooled)
    n_text = VISION_TOKENS + glyph.shape[1] + text.sequence.shape[1]
    n_valid = int(text.mask.sum()) + int(glyph_mask.sum())  # the image tokens are all masked in text-to-video
    assert int(glyph_mask.sum()) > 0  # the quoted text reached the ByT5 encoder
    # blocks 1-2 radial; text after the video; no sink; padded text, glyph and image keys masked
    assert seen == [(9 * 16, n_text, 9, 16, False, n_valid)] * 2
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        dense = fam.forward(pipe.transformer, x, t, text)
    assert not torch.allclose(ours, dense, rtol=1e-4, atol=1e-5)
    assert joint.joint_token_mask(144, None, 0, num_frames=9, tokens_per_frame=16, block_size=16).float().mean() < 0.9


def test_generation_guidance_steps_and_the_unconditional(tiny):
    """Real CFG through the pipeline's guider (this call's scale, restored after); a zeroed negative (the trainer's
    unconditional) samples as the empty prompt does; each finished step is reported."""
    _, fam, pipe = tiny
    embeds, _ = fam.encode_prompt(pipe, "a red circle", None, 1.0)
    guider = pipe.guider
    steps = []

    def run(scale, negative=None, on_step=None):
        return fam.generate(pipe, embeds=embeds, negative_embeds=negative, num_frames=5, height=64, width=64, steps=2,
                            guidance_scale=scale, generator=torch.Generator().manual_seed(0), on_step=on_step)

    zeroed = run(5.0, embeds.zeros_like(), on_step=steps.append)
    assert steps == [1, 2] and pipe.guider is guider and zeroed.shape == (5, 64, 64, 3)
    assert (zeroed >= 0).all() and (zeroed <= 1).all()
    empty = fam._encode(pipe, "")
    assert empty.mask.any()
    assert (run(5.0, empty) == zeroed).all()
    assert (run(5.0) == zeroed).all()  # no negative: the empty prompt
    assert not (run(1.0) == zeroed).all()  # guidance off: one pass per step, another result


def _lora(fam, pipe, targets=("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                              "to_add_out")):
    add_lora(pipe.transformer, 4, 8, 0.0, list(targets), seed=0)  # alpha != rank: the scale matters
    with torch.no_grad():
        for name, p in pipe.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(name)))
    return pipe.transformer


def _run(transformer, fam, x, text):
    with torch.no_grad():
        return fam.forward(transformer, x, torch.tensor([700.0]), text)


def test_lora_loads_in_stock_diffusers_with_no_key_left_over(tiny, tmp_path, caplog):
    from diffusers import HunyuanVideo15Pipeline, HunyuanVideoPipeline

    preset, fam, shared = tiny
    # diffusers 0.42.1 gives this pipeline no LoRA loader mixin: its transformer loads the file
    assert not hasattr(HunyuanVideo15Pipeline, "load_lora_weights")
    pipe = fam.build_tiny_pipeline(preset["tiny"])  # same seed: the stock folder's weights, private to this test
    x, text = _inputs(fam, shared, seed=1)
    transformer = _lora(fam, pipe)
    saved = save_lora(transformer, tmp_path / "lora", fam)
    assert saved.comfy_written and saved.comfy_skipped == []
    ours = _run(transformer, fam, x, text)
    stock = HunyuanVideo15Pipeline.from_pretrained(str(ensure_tiny_model(preset["tiny"], fam.name)))
    base = _run(stock.transformer, fam, x, text)
    with caplog.at_level(logging.WARNING):
        stock.transformer.load_lora_adapter(str(tmp_path / "lora"), weight_name=DIFFUSERS_WEIGHT_NAME,
                                            prefix="transformer", adapter_name="ext")
    assert not [r for r in caplog.records if re.search("unexpected|No LoRA keys|not loaded", r.message, re.IGNORECASE)], caplog.text
    torch.testing.assert_close(_run(stock.transformer, fam, x, text), ours, rtol=1e-4, atol=1e-5)  # lora_alpha kept
    assert not torch.allclose(ours, base)
    n_modules = len([k for k in load_file(str(tmp_path / "lora" / DIFFUSERS_WEIGHT_NAME)) if "lora_A" in k])
    assert n_modules == len([n for n, _ in stock.transformer.named_modules() if n.endswith(".lora_A.ext")])
    # the file is the one diffusers' HunyuanVideo LoRA loader reads, keys and metadata as they are
    state, meta = HunyuanVideoPipeline.lora_state_dict(str(tmp_path / "lora"), weight_name=DIFFUSERS_WEIGHT_NAME,
                                                       return_lora_metadata=True)
    assert state.keys() == load_file(str(tmp_path / "lora" / DIFFUSERS_WEIGHT_NAME)).keys()
    assert meta["transformer.lora_alpha"] == 8 and meta["transformer.r"] == 4
    # the family's own unload / load (generation with an adapter) are the same stock calls
    fam.unload_lora(stock)
    assert torch.equal(_run(stock.transformer, fam, x, text), base)
    load_lora_into_pipeline(stock, tmp_path / "lora", fam, adapter_name="again")
    torch.testing.assert_close(_run(stock.transformer, fam, x, text), ours, rtol=1e-4, atol=1e-5)
    fam.unload_lora(stock)
    assert torch.equal(_run(stock.transformer, fam, x, text), base)


# ComfyUI runs HunyuanVideo 1.5 on its HunyuanVideo model: comfy/supported_models.py's HunyuanVideo15 subclasses
# HunyuanVideo ("image_model": "hunyuan_video", the same process_unet_state_dict), so comfy/ldm/hunyuan_video's
# Flux-style double blocks with fused q/k/v and the 1.0 token refiner (self_attn.qkv, self_attn.proj, mlp.0 / mlp.2),
# no single blocks; and comfy/lora.py's HunyuanVideo rule: the generic "diffusion_model.<module>" key and, for the
# original checkpoint's names, these replacements.
def _comfy_modules(double, refiner):
    mods = []
    for i in range(double):
        for s in ("img", "txt"):
            mods += [f"double_blocks.{i}.{s}_mod.lin", f"double_blocks.{i}.{s}_attn.qkv", f"double_blocks.{i}.{s}_attn.proj",
                     f"double_blocks.{i}.{s}_mlp.0", f"double_blocks.{i}.{s}_mlp.2"]
    for i in range(refiner):
        mods += [f"txt_in.individual_token_refiner.blocks.{i}.{m}" for m in ("self_attn.qkv", "self_attn.proj",
                                                                           "mlp.0", "mlp.2")]
    return mods


def _comfy_key_map(modules):
    out = {}
    for m in modules:
        k = f"diffusion_model.{m}.weight"
        out[k[:-len(".weight")]] = k
        lora = k.replace("_mod.lin.", "_mod.linear.").replace("_attn.qkv.", "_attn_qkv.").replace("_attn.proj.", "_attn_proj.")
        lora = lora.replace("mlp.0.", "mlp.fc1.").replace("mlp.2.", "mlp.fc2.")
        out["diffusion_model." + lora[len("diffusion_model."):-len(".weight")]] = k
    return out


def test_comfy_export_uses_comfyui_names_and_the_fused_update_is_exact(tiny, tmp_path):
    preset, fam, _ = tiny
    pipe = fam.build_tiny_pipeline(preset["tiny"])
    transformer = _lora(fam, pipe, fam.default_lora_targets(include_mlp=True))
    saved = save_lora(transformer, tmp_path / "lora", fam)
    assert saved.comfy_skipped == []  # the refiner's feed-forward too: mlp.fc1 / mlp.fc2, ComfyUI's mlp.0 / mlp.2
    with safe_open(str(tmp_path / "lora" / COMFY_WEIGHT_NAME), "pt") as f:
        comfy = {k: f.get_tensor(k) for k in f.keys()}
    key_map = _comfy_key_map(_comfy_modules(3, 1))
    modules = {k.rsplit(".lora_", 1)[0].removesuffix(".alpha") for k in comfy}
    assert modules <= set(key_map), sorted(modules - set(key_map))  # ComfyUI maps every module: no "lora key not loaded"
    assert {"diffusion_model.double_blocks.2.img_attn_qkv", "diffusion_model.double_blocks.0.txt_attn_qkv",
            "diffusion_model.txt_in.individual_token_refiner.blocks.0.self_attn_qkv"} <= modules
    assert not [m for m in modules if "single_blocks" in m]
    # ComfyUI's update (up @ down * alpha / rank) on a fused layer equals the diffusers modules' updates stacked
    state = {k.removeprefix("transformer."): v for k, v in load_file(str(tmp_path / "lora" / DIFFUSERS_WEIGHT_NAME)).items()}

    def delta(module):
        return state[f"{module}.lora_B.weight"] @ state[f"{module}.lora_A.weight"] * (8 / 4)

    def comfy_delta(module):
        down, up = comfy[f"{module}.lora_down.weight"], comfy[f"{module}.lora_up.weight"]
        return up @ down * float(comfy[f"{module}.alpha"]) / down.shape[0]

    want = torch.cat([delta(f"transformer_blocks.1.attn.{m}") for m in ("to_q", "to_k", "to_v")])
    torch.testing.assert_close(comfy_delta("diffusion_model.double_blocks.1.img_attn_qkv"), want)
    want = torch.cat([delta(f"transformer_blocks.2.attn.{m}") for m in ("add_q_proj", "add_k_proj", "add_v_proj")])
    torch.testing.assert_close(comfy_delta("diffusion_model.double_blocks.2.txt_attn_qkv"), want)
    torch.testing.assert_close(comfy_delta("diffusion_model.double_blocks.0.txt_mlp.fc2"),
                               delta("transformer_blocks.0.ff_context.net.2"))
    torch.testing.assert_close(comfy_delta("diffusion_model.double_blocks.0.img_attn_proj"),
                               delta("transformer_blocks.0.attn.to_out.0"))


_cli = engine_cli


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / TINY
    _cli("data", "create", "--output_dir", str(out), "--num_samples", "3", "--preset", TINY)
    return out


def test_generate_writes_a_video(tmp_path):
    from engine.video import read_mp4

    record = json.loads(_cli("generate", "--preset", TINY, "--prompt", "a red circle", "--out", str(tmp_path / "g.mp4"),
                             "--steps", "2", "--quiet").stdout)
    assert record["family"] == "hunyuan15" and record["guidance_scale"] == 6.0
    assert read_mp4(tmp_path / "g.mp4")[0].shape[0] == 17


def test_trains_and_evaluates_through_the_cli(data, tmp_path):
    trains_and_evaluates(TINY, data, tmp_path)


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(data, tmp_path):
    resumed_equals_whole(TINY, data, tmp_path)


def test_model_cards_show_each_pipelines_own_way_to_load_the_lora():
    kw = dict(base_model="org/base", repo="me/lora", weight_name="w.safetensors", num_frames=121, height=720,
              width=1280, fps=24, tiny=False)
    v15 = "\n".join(family(load_preset(TINY)).card_usage(**kw))
    v1 = "\n".join(family(load_preset("tiny-hunyuanvideo")).card_usage(**kw))
    assert "HunyuanVideo15Pipeline.from_pretrained(\"org/base\"" in v15 and "pipe.load_lora_weights" not in v15
    assert 'pipe.transformer.load_lora_adapter("me/lora", weight_name="w.safetensors", prefix="transformer")' in v15
    assert "HunyuanVideoPipeline.from_pretrained(\"org/base\"" in v1
    assert 'pipe.load_lora_weights("me/lora", weight_name="w.safetensors")' in v1
