"""HunyuanVideo on the family contract, on the tiny preset (CPU): the tests Wan2.1 gets."""

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from engine.attention import joint
from engine.attention.processor import install_radial_attention, remove_radial_attention
from engine.attention.schedule import AttentionSettings
from engine.lora import COMFY_WEIGHT_NAME, DIFFUSERS_WEIGHT_NAME, add_lora, save_lora
from engine.models import family, get_pipeline
from engine.models.hunyuan import fuse_lora_state
from engine.models.wan import ensure_tiny_model
from engine.presets import load_preset
from tests.run_factory import engine_cli, resumed_equals_whole, trains_and_evaluates

ROOT = Path(__file__).resolve().parents[2]
TINY = "tiny-hunyuanvideo"


@pytest.fixture(scope="module")
def tiny():
    preset = load_preset(TINY)
    return preset, family(preset), get_pipeline(preset)


def _sample(pipe, frames=9, steps=3, size=64):
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        return pipe(prompt="a red circle", height=size, width=size, num_frames=frames, num_inference_steps=steps,
                    guidance_scale=6.0, generator=gen, output_type="latent", max_sequence_length=16,
                    prompt_template={"template": "{}", "crop_start": 0}).frames


def _inputs(fam, pipe, frames=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    text, _ = fam.encode_prompt(pipe, "a red circle", None, 1.0)
    assert not text.mask.all()  # padded text tokens: the key mask matters
    return torch.randn(1, 16, frames, 8, 8, generator=gen), text


def test_frame_rule_layout_and_layers():
    fam = family(load_preset("hunyuanvideo"))
    assert fam.latent_frames(129) == 33 and fam.latent_frames(513) == 129 and fam.size_multiple == 16
    layout = fam.token_layout(129, 720, 1280)
    assert (layout.latent_frames, layout.tokens_per_frame) == (33, 45 * 80)
    assert fam.num_layers(load_preset("hunyuanvideo")) == 60 and not fam.attention_sink
    assert fam.capabilities.can("generate") and not fam.capabilities.can("tta")
    long = load_preset("hunyuanvideo-4x")
    assert long["generation"]["num_frames"] == 513 and long["attention"]["decay_factor"] == 1.0
    assert (long["attention"]["dense_layers"], long["attention"]["dense_timesteps"]) == (2, 2)


def test_dense_layers_count_double_blocks_first(tiny):
    _, fam, pipe = tiny
    layers = {layer.processor_name: layer.index for layer in fam.attention_layers(pipe.transformer)}
    assert layers == {"transformer_blocks.0.attn.processor": 0, "transformer_blocks.1.attn.processor": 1,
                      "single_transformer_blocks.0.attn.processor": 2, "single_transformer_blocks.1.attn.processor": 3}


def test_every_layer_dense_equals_the_stock_model_bit_for_bit(tiny):
    preset, fam, pipe = tiny
    remove_radial_attention(pipe.transformer, fam)
    stock = _sample(pipe)
    install_radial_attention(pipe.transformer, AttentionSettings(pattern="dense"), fam)
    assert torch.equal(_sample(pipe), stock)
    install_radial_attention(pipe.transformer, AttentionSettings(pattern="radial", dense_layers=fam.num_layers(preset)), fam)
    assert torch.equal(_sample(pipe), stock)  # our processor, every layer dense: the same bits
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
        seen.append((kw["num_video"], kw["num_frames"], kw["tokens_per_frame"], kw["sink"], int(kw["key_mask"].sum())))
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
    n_valid = int(text.mask.sum())
    assert seen == [(9 * 16, 9, 16, False, n_valid)] * 3  # layers 1-3 radial; no sink; padded text masked
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        dense = fam.forward(pipe.transformer, x, t, text)
    assert not torch.allclose(ours, dense, rtol=1e-4, atol=1e-5)
    assert joint.joint_token_mask(144, text.mask.bool(), 16, num_frames=9, tokens_per_frame=16, block_size=16).float().mean() < 0.9


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
    from diffusers import HunyuanVideoPipeline

    preset, fam, shared = tiny
    pipe = fam.build_tiny_pipeline(preset["tiny"])  # same seed: the stock folder's weights, private to this test
    x, text = _inputs(fam, shared, seed=1)
    transformer = _lora(fam, pipe)
    saved = save_lora(transformer, tmp_path / "lora", fam)
    assert saved.comfy_written and saved.comfy_skipped == []
    ours = _run(transformer, fam, x, text)
    stock = HunyuanVideoPipeline.from_pretrained(str(ensure_tiny_model(preset["tiny"], fam.name)))
    base = _run(stock.transformer, fam, x, text)
    with caplog.at_level(logging.WARNING):
        stock.load_lora_weights(str(tmp_path / "lora"), weight_name=DIFFUSERS_WEIGHT_NAME, adapter_name="ext")
    assert not [r for r in caplog.records if re.search("unexpected|No LoRA keys|not loaded", r.message, re.IGNORECASE)], caplog.text
    torch.testing.assert_close(_run(stock.transformer, fam, x, text), ours, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ours, base)
    n_modules = len([k for k in load_file(str(tmp_path / "lora" / DIFFUSERS_WEIGHT_NAME)) if "lora_A" in k])
    assert n_modules == len([n for n, _ in stock.transformer.named_modules() if n.endswith(".lora_A.ext")])


# ComfyUI's HunyuanVideo modules (comfy/ldm/hunyuan_video/model.py: Flux-style names; the token refiner's
# TokenRefinerBlock has self_attn.qkv, self_attn.proj and an nn.Sequential mlp.0 / mlp.2, what
# supported_models.HunyuanVideo.process_unet_state_dict makes of the original self_attn_qkv / mlp.fc1) and its
# comfy/lora.py model_lora_keys_unet rule for them: the generic "diffusion_model.<module>" key and, for the
# original checkpoint's names, these replacements ("Old loras" / diffusion-pipe format).
def _comfy_modules(double, single, refiner):
    mods = []
    for i in range(double):
        for s in ("img", "txt"):
            mods += [f"double_blocks.{i}.{s}_mod.lin", f"double_blocks.{i}.{s}_attn.qkv", f"double_blocks.{i}.{s}_attn.proj",
                     f"double_blocks.{i}.{s}_mlp.0", f"double_blocks.{i}.{s}_mlp.2"]
    for i in range(single):
        mods += [f"single_blocks.{i}.linear1", f"single_blocks.{i}.linear2", f"single_blocks.{i}.modulation.lin"]
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
        lora = lora.replace("mlp.0.", "mlp.fc1.").replace("mlp.2.", "mlp.fc2.").replace(".modulation.lin.", ".modulation.linear.")
        out["diffusion_model." + lora[len("diffusion_model."):-len(".weight")]] = k
    return out


def test_comfy_export_uses_comfyui_names_and_the_fused_update_is_exact(tiny, tmp_path):
    preset, fam, _ = tiny
    pipe = fam.build_tiny_pipeline(preset["tiny"])
    transformer = _lora(fam, pipe, fam.default_lora_targets(include_mlp=True))
    saved = save_lora(transformer, tmp_path / "lora", fam)
    assert saved.comfy_skipped == []  # every trained module has a ComfyUI name, the refiner's feed-forward too
    with safe_open(str(tmp_path / "lora" / COMFY_WEIGHT_NAME), "pt") as f:
        comfy = {k: f.get_tensor(k) for k in f.keys()}
    key_map = _comfy_key_map(_comfy_modules(2, 2, 1))
    modules = {k.rsplit(".lora_", 1)[0].removesuffix(".alpha") for k in comfy}
    assert modules <= set(key_map), sorted(modules - set(key_map))  # ComfyUI maps every module: no "lora key not loaded"
    assert "diffusion_model.double_blocks.0.img_attn_qkv" in modules and "diffusion_model.single_blocks.1.linear1" in modules
    refiner = "diffusion_model.txt_in.individual_token_refiner.blocks.0"
    assert {f"{refiner}.self_attn_qkv", f"{refiner}.mlp.fc1", f"{refiner}.mlp.fc2"} <= modules
    # ComfyUI's update (up @ down * alpha / rank) on a fused layer equals the diffusers modules' updates stacked
    state = {k.removeprefix("transformer."): v for k, v in load_file(str(tmp_path / "lora" / DIFFUSERS_WEIGHT_NAME)).items()}

    def delta(module):
        return state[f"{module}.lora_B.weight"] @ state[f"{module}.lora_A.weight"] * (8 / 4)

    def comfy_delta(module):
        down, up = comfy[f"{module}.lora_down.weight"], comfy[f"{module}.lora_up.weight"]
        return up @ down * float(comfy[f"{module}.alpha"]) / down.shape[0]

    want = torch.cat([delta(f"transformer_blocks.1.attn.{m}") for m in ("to_q", "to_k", "to_v")])
    torch.testing.assert_close(comfy_delta("diffusion_model.double_blocks.1.img_attn_qkv"), want)
    want = torch.cat([delta(f"single_transformer_blocks.0.{m}") for m in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")])
    torch.testing.assert_close(comfy_delta("diffusion_model.single_blocks.0.linear1"), want)
    torch.testing.assert_close(comfy_delta("diffusion_model.double_blocks.0.txt_mlp.fc2"), delta("transformer_blocks.0.ff_context.net.2"))
    # without an MLP LoRA, linear1's MLP rows get a zero update (the fused weight's full height)
    fused = fuse_lora_state({k: v for k, v in state.items() if "proj_mlp" not in k})
    assert fused["single_blocks.0.linear1.fused.lora_B.weight"].shape[0] == 3 * 64 + 4 * 64


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
    assert record["family"] == "hunyuan" and read_mp4(tmp_path / "g.mp4")[0].shape[0] == 17


def test_trains_and_evaluates_through_the_cli(data, tmp_path):
    trains_and_evaluates(TINY, data, tmp_path)


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(data, tmp_path):
    resumed_equals_whole(TINY, data, tmp_path)
