"""Wan2.2 on the family contract, on the tiny presets (CPU): T2V-A14B (two experts) and TI2V-5B (Wan2.2 VAE)."""

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from engine.attention.processor import install_radial_attention, remove_radial_attention
from engine.attention.schedule import AttentionSettings
from engine.config import config_from_preset
from engine.errors import ConfigError, InputError
from engine.lora import COMFY_WEIGHT_NAME, DIFFUSERS_WEIGHT_NAME, add_lora, save_lora
from engine.models import family, get_pipeline
from engine.models.wan import ensure_tiny_model
from engine.presets import load_preset
from tests.run_factory import engine_cli, killed_then_resumed

ROOT = Path(__file__).resolve().parents[2]
A14B, TI2V = "tiny-wan2.2-a14b", "tiny-wan2.2-ti2v-5b"
HIGH, LOW = "pytorch_lora_weights_high_noise.safetensors", "pytorch_lora_weights_low_noise.safetensors"


@pytest.fixture(scope="module")
def a14b():
    preset = load_preset(A14B)
    return preset, family(preset), get_pipeline(preset)


@pytest.fixture(scope="module")
def ti2v():
    preset = load_preset(TI2V)
    return preset, family(preset), get_pipeline(preset)


def _inputs(channels=16, frames=3, size=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, channels, frames, size, size, generator=gen), torch.randn(1, 8, 32, generator=gen)


def _run(module, x, t, text):
    with torch.no_grad():
        return module(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]


def _sample(pipe, size, frames=9, steps=4):
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        return pipe(prompt="a red circle", negative_prompt="", height=size, width=size, num_frames=frames,
                    num_inference_steps=steps, guidance_scale=5.0, generator=gen, output_type="latent").frames


# ---------------------------------------------------------------------------- T2V-A14B: two experts


def test_a14b_pipeline_has_two_experts_and_the_denoiser_switches_at_the_boundary(a14b):
    preset, fam, pipe = a14b
    assert pipe.config.boundary_ratio == 0.875 and fam.transformers(pipe) == [pipe.transformer, pipe.transformer_2]
    pair = fam.denoiser(pipe)
    x, text = _inputs()
    high, low = _run(pipe.transformer, x, torch.tensor([875.0]), text), _run(pipe.transformer_2, x, torch.tensor([874.0]), text)
    assert not torch.equal(_run(pipe.transformer, x, torch.tensor([874.0]), text), low)  # two different experts
    assert torch.equal(_run(pair, x, torch.tensor([875.0]), text), high)  # t >= 875: high noise, as WanPipeline
    assert torch.equal(_run(pair, x, torch.tensor([874.0]), text), low)
    both = _run(pair, x.expand(2, -1, -1, -1, -1), torch.tensor([874.0, 875.0]), text.expand(2, -1, -1))
    assert torch.equal(both[0], low[0]) and torch.equal(both[1], high[0])
    only_high = fam.denoiser(pipe, "high")
    with pytest.raises(ValueError, match="low-noise expert"):
        _run(only_high, x, torch.tensor([500.0]), text)


@pytest.mark.parametrize("name", [A14B, TI2V])
def test_every_layer_dense_equals_the_stock_model_bit_for_bit(name):
    preset = load_preset(name)
    fam, pipe = family(preset), get_pipeline(preset)
    size = preset["generation"]["height"]
    remove_radial_attention(fam.denoiser(pipe), fam)
    stock = _sample(pipe, size)
    install_radial_attention(fam.denoiser(pipe), AttentionSettings(pattern="dense"), fam)
    assert torch.equal(_sample(pipe, size), stock)
    layers = fam.num_layers(preset)
    install_radial_attention(fam.denoiser(pipe), AttentionSettings(pattern="radial", dense_layers=layers), fam)
    assert torch.equal(_sample(pipe, size), stock)  # our processor, every layer dense: the same bits
    install_radial_attention(fam.denoiser(pipe), AttentionSettings(pattern="radial", dense_layers=1, dense_timesteps=0,
                                                                   block_size=16), fam)
    radial = _sample(pipe, size, frames=33)
    remove_radial_attention(fam.denoiser(pipe), fam)
    assert not torch.allclose(radial, _sample(pipe, size, frames=33))  # radial layers do change it: the test can fail


def test_a14b_radial_runs_on_both_experts_with_one_schedule(a14b, monkeypatch):
    from engine.attention import radial_op

    preset, fam, pipe = a14b
    calls = []
    real = radial_op.radial

    def spy(q, k, v, **kw):
        calls.append(kw["block_size"])
        return real(q, k, v, **kw)

    used = []
    for expert in fam.transformers(pipe):
        expert.register_forward_pre_hook(lambda m, a, k, e=expert: used.append(e), with_kwargs=True)
    monkeypatch.setattr(radial_op, "radial", spy)
    settings = AttentionSettings(pattern="radial", dense_layers=1, dense_timesteps=2, block_size=16)
    schedule = install_radial_attention(fam.denoiser(pipe), settings, fam)
    try:
        _sample(pipe, 64, steps=8, frames=17)
    finally:
        remove_radial_attention(fam.denoiser(pipe), fam)
        for expert in fam.transformers(pipe):
            expert._forward_pre_hooks.clear()
    assert schedule.step == 7  # one count over the whole run, across the switch of experts
    ran = [fam.transformers(pipe).index(e) for e in used]
    assert 0 in ran and 1 in ran  # both experts sampled; radial in layers >= 1 of steps >= 2 of either
    assert len(calls) == 2 * 6 * (fam.num_layers(preset) - 1) and set(calls) == {16}


def test_lora_experts_setting_is_checked_where_it_is_given():
    with pytest.raises(ConfigError, match="one transformer.*lora_experts must be null"):
        config_from_preset("tiny-wan", lora_experts="high", data_dir="d", output_dir="o")
    with pytest.raises(ConfigError, match=r"validation_timesteps.*\[0\.875, 1\).*--validation_timesteps"):
        config_from_preset(A14B, lora_experts="high", data_dir="d", output_dir="o")
    with pytest.raises(ConfigError, match="lora_experts.*one of"):
        config_from_preset(A14B, lora_experts="middle", data_dir="d", output_dir="o")
    config_from_preset(A14B, lora_experts="high", validation_timesteps=[0.9, 0.95], data_dir="d", output_dir="o")
    config_from_preset(A14B, lora_experts="low", data_dir="d", output_dir="o")


def test_a14b_low_noise_expert_takes_its_own_guidance_as_stock_diffusers_does(a14b, tmp_path):
    """guidance_scale_2 (Wan2.2's own config: 4.0 high, 3.0 low) reaches WanPipeline: with every layer dense the
    engine's video equals stock diffusers' bit for bit at the same two scales, and the preset's value is the default."""
    import numpy as np

    from engine.generate import generate_video

    preset, fam, pipe = a14b
    assert preset["generation"]["guidance_scale_2"] == 3.0

    def ours(**kw):
        return generate_video("a red circle", preset=A14B, num_frames=9, height=32, width=32, steps=4,
                              guidance_scale=5.0, attention={"pattern": "dense"}, out_path=tmp_path / "v.mp4", **kw)

    default, same = ours(), ours(guidance_scale_2=5.0)
    assert default.settings["guidance_scale_2"] == 3.0 and same.settings["guidance_scale_2"] == 5.0
    assert not np.array_equal(default.frames, same.frames)  # the low-noise steps changed
    remove_radial_attention(fam.denoiser(pipe), fam)
    for scale_2, result in ((3.0, default), (5.0, same)):
        with torch.inference_mode():
            stock = pipe(prompt="a red circle", negative_prompt="", height=32, width=32, num_frames=9,
                         num_inference_steps=4, guidance_scale=5.0, guidance_scale_2=scale_2,
                         generator=torch.Generator().manual_seed(preset["generation"]["seed"]), output_type="np").frames[0]
        assert np.array_equal((np.clip(stock, 0, 1) * 255).round().astype(np.uint8), result.frames), scale_2


def test_guidance_scale_2_is_refused_clearly_where_it_cannot_apply(tmp_path, capsys):
    from engine.generate import generate_video
    from engine.presets import validate_preset

    out = tmp_path / "v.mp4"
    with pytest.raises(InputError, match="'wan' has one transformer, so guidance_scale_2 must be unset.*guidance_scale "
                                         "instead"):
        generate_video("a cat", preset="tiny-wan", num_frames=5, steps=1, guidance_scale_2=3.0, out_path=out)
    with pytest.raises(InputError, match="guidance_scale_2 must be >= 0, got -1.0"):
        generate_video("a cat", preset=A14B, num_frames=5, steps=1, guidance_scale_2=-1, out_path=out)
    assert not out.exists()
    data = json.loads((ROOT / "presets" / "tiny-wan.json").read_text())
    data["generation"]["guidance_scale_2"] = 3.0
    with pytest.raises(ConfigError, match="field 'generation.guidance_scale_2': model family 'wan' has one"):
        validate_preset(data, "my-preset")
    from engine.cli import main

    assert main(["generate", "--preset", "tiny-wan", "--prompt", "a cat", "--num_frames", "5", "--steps", "1",
                 "--guidance_scale_2", "3", "--out", str(out), "--quiet"]) == 2  # a bad input
    assert "guidance_scale_2 must be unset" in capsys.readouterr().err and not out.exists()


def test_each_expert_trains_on_its_own_noise_levels():
    fam = family(load_preset(A14B))
    draws = {}
    for experts in ("high", "low", "both"):
        for scheme in ("logit_normal", "uniform"):
            gen = torch.Generator().manual_seed(0)
            draws[experts, scheme] = fam.sample_sigmas(4000, gen, None, scheme=scheme, shift=3.0,
                                                       noise_range=fam.noise_range(experts))
    for scheme in ("logit_normal", "uniform"):
        assert draws["high", scheme].min() >= 0.875 and draws["low", scheme].max() < 0.875
        # the full range is the draw training always made (old runs stay reproducible)
        gen = torch.Generator().manual_seed(0)
        u = (torch.sigmoid(torch.randn(4000, generator=gen)) if scheme == "logit_normal" else
             torch.rand(4000, generator=gen)).clamp(1e-4, 1 - 1e-4)
        assert torch.equal(draws["both", scheme], 3 * u / (1 + 2 * u))
    # conditioned, not squeezed: the restricted draws follow the full distribution's shape on their side
    full = draws["both", "logit_normal"]
    assert abs(float(draws["high", "logit_normal"].median()) - float(full[full >= 0.875].median())) < 0.01


def _lora_pair(fam, pipe, experts):
    pair = fam.denoiser(pipe, experts)
    add_lora(pair, 4, 8, 0.0, ["to_q", "to_v", "to_out.0"], seed=0)  # alpha != rank: the scale matters
    with torch.no_grad():
        for name, p in pair.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(name)))
    return pair


def test_a14b_lora_files_load_in_stock_diffusers_into_the_right_expert(a14b, tmp_path, caplog):
    from diffusers import WanPipeline

    preset, fam, _ = a14b
    pipe = fam.build_tiny_pipeline(preset["tiny"])  # same seed: the stock folder's weights, private to this test
    pair = _lora_pair(fam, pipe, "both")
    saved = save_lora(pair, tmp_path / "lora", fam)
    assert saved.comfy_skipped == []
    files = sorted(p.name for p in (tmp_path / "lora").iterdir())
    assert files == sorted([DIFFUSERS_WEIGHT_NAME, HIGH, LOW, "lora_comfyui_high_noise.safetensors",
                            "lora_comfyui_low_noise.safetensors"])
    x, text = _inputs(seed=1)
    ours_high, ours_low = _run(pipe.transformer, x, torch.tensor([900.0]), text), _run(pipe.transformer_2, x, torch.tensor([300.0]), text)
    folder = str(ensure_tiny_model(preset["tiny"], fam.name))
    for weights in ((HIGH, LOW), ("lora_comfyui_high_noise.safetensors", "lora_comfyui_low_noise.safetensors")):
        stock = WanPipeline.from_pretrained(folder)
        base_low = _run(stock.transformer_2, x, torch.tensor([300.0]), text)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="diffusers"):
            stock.load_lora_weights(str(tmp_path / "lora"), weight_name=weights[0], adapter_name="high")
            stock.load_lora_weights(str(tmp_path / "lora"), weight_name=weights[1], adapter_name="low",
                                    load_into_transformer_2=True)
        assert not [r for r in caplog.records if "unexpected" in r.message or "No LoRA keys" in r.message], caplog.text
        torch.testing.assert_close(_run(stock.transformer, x, torch.tensor([900.0]), text), ours_high, rtol=1e-4, atol=1e-5)
        theirs_low = _run(stock.transformer_2, x, torch.tensor([300.0]), text)
        torch.testing.assert_close(theirs_low, ours_low, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(theirs_low, base_low)  # the low-noise LoRA did change transformer_2
    # The engine's own file names the experts: stock loaders find nothing of theirs in it, rather than the wrong expert.
    assert {k.split(".")[0] for k in load_file(str(tmp_path / "lora" / DIFFUSERS_WEIGHT_NAME))} == {"high_noise", "low_noise"}


def test_a14b_comfy_export_uses_wan_names_per_expert(a14b, tmp_path):
    preset, fam, _ = a14b
    pipe = fam.build_tiny_pipeline(preset["tiny"])
    save_lora(_lora_pair(fam, pipe, "low"), tmp_path / "lora", fam)
    assert not (tmp_path / "lora" / HIGH).exists() and not (tmp_path / "lora" / COMFY_WEIGHT_NAME).exists()
    with safe_open(str(tmp_path / "lora" / "lora_comfyui_low_noise.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "diffusion_model.blocks.0.self_attn.q.lora_down.weight" in keys
    assert "diffusion_model.blocks.3.cross_attn.o.lora_up.weight" in keys and "diffusion_model.blocks.3.self_attn.v.alpha" in keys
    assert all(k.startswith("diffusion_model.blocks.") for k in keys)
    with safe_open(str(tmp_path / "lora" / LOW), "pt") as f:
        assert all(k.startswith("transformer.blocks.") for k in f.keys())


# ---------------------------------------------------------------------------- TI2V-5B: the Wan2.2 VAE


def test_ti2v_frame_rule_sizes_and_token_layout():
    fam = family(load_preset("wan2.2-ti2v-5b"))
    assert fam.size_multiple == 32 and fam.latent_frames(121) == 31 and fam.latent_frames(17) == 5
    layout = fam.token_layout(121, 704, 1280)  # 720p on TI2V: 1280x704 (720 is not a multiple of 32)
    assert (layout.latent_frames, layout.latent_height, layout.latent_width) == (31, 44, 80)
    assert layout.tokens_per_frame == 22 * 40 and layout.num_tokens == 31 * 880
    with pytest.raises(InputError, match="117 or 121"):
        fam.check_frame_count(120)
    with pytest.raises(InputError, match="32"):
        fam.check_size(720, 1280)
    with pytest.raises(ConfigError, match="training.height/width"):
        from engine.presets import validate_preset
        validate_preset({**load_preset(TI2V), "training": {**load_preset(TI2V)["training"], "height": 112}})


def test_ti2v_vae_forward_and_radial_mask_follow_the_layout(ti2v, monkeypatch):
    from engine.attention import radial_op

    preset, fam, pipe = ti2v
    assert pipe.vae.config.z_dim == 48 and pipe.config.expand_timesteps
    video = torch.rand(1, 3, 33, 128, 128) * 2 - 1
    latents = fam.encode_video(pipe, video)
    assert latents.shape == (1, 48, 9, 8, 8) and fam.layout_from_latents(latents.shape) == fam.token_layout(33, 128, 128)
    assert fam.decode_latents(pipe, latents).shape == video.shape
    # forward: the per-token timesteps WanPipeline(expand_timesteps=True) passes, exactly
    x, text = latents[:, :, :3], torch.randn(1, 8, 32)
    seq = 3 * 4 * 4
    stock = _run(pipe.transformer, x, torch.full((1, seq), 700.0), text)
    assert torch.equal(fam.forward(pipe.transformer, x, torch.tensor([700.0]), type("T", (), {"sequence": text})()), stock)
    seen = []
    real = radial_op.radial
    monkeypatch.setattr(radial_op, "radial", lambda q, k, v, **kw: (seen.append((q.shape[1], kw["num_frames"],
                                                                                          kw["tokens_per_frame"])), real(q, k, v, **kw))[1])
    install_radial_attention(pipe.transformer, AttentionSettings(pattern="radial", dense_layers=0, dense_timesteps=0,
                                                                 block_size=16), fam)
    try:
        _run(pipe.transformer, latents, torch.tensor([500.0]), text)
    finally:
        remove_radial_attention(pipe.transformer, fam)
    assert set(seen) == {(9 * 16, 9, 16)}  # 33 frames at 128x128: 9 latent frames of 4x4 tokens


# ---------------------------------------------------------------------------- CLI: train, resume, TTA


_cli = engine_cli


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = {}
    for name in (A14B, TI2V):
        out[name] = tmp_path_factory.mktemp("data") / name
        _cli("data", "create", "--output_dir", str(out[name]), "--num_samples", "3", "--preset", name)
    return out


def test_a14b_trains_only_the_high_noise_expert_when_asked(data, tmp_path):
    run = tmp_path / "run"
    _cli("train", "--preset", A14B, "--data_dir", str(data[A14B]), "--output_dir", str(run), "--max_steps", "2",
         "--lora_experts", "high", "--validation_timesteps", "0.9,0.95", "--validation_steps", "2",
         "--checkpointing_steps", "2", "--sample_steps", "1", "--quiet")
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    final = run / "final"
    assert (final / HIGH).is_file() and not (final / LOW).exists()
    state = load_file(str(final / HIGH))
    assert state and any(float(v.abs().max()) > 0 for k, v in state.items() if "lora_B" in k)  # it trained
    assert (run / "samples" / "step-000002" / "extended.mp4").is_file()


@pytest.mark.parametrize("name", [TI2V])
def test_ti2v_trains_evaluates_and_adapts_through_the_cli(name, data, tmp_path):
    run = tmp_path / "run"
    _cli("train", "--preset", name, "--data_dir", str(data[name]), "--output_dir", str(run), "--max_steps", "2",
         "--validation_steps", "2", "--checkpointing_steps", "2", "--sample_steps", "0", "--quiet")
    assert (run / "final" / DIFFUSERS_WEIGHT_NAME).is_file() and (run / "final" / COMFY_WEIGHT_NAME).is_file()
    _cli("evaluate", "--preset", name, "--lora_checkpoint_dir", str(run / "final"), "--output_dir",
         str(tmp_path / "eval"), "--steps", "1", "--prompts", _prompts(tmp_path))
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())


def _prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\n")
    return str(path)


@pytest.mark.parametrize("name,mode", [(A14B, "replacement"), (TI2V, "per_token")])
def test_tta_continues_a_clip(name, mode, tmp_path):
    from engine.data.synthetic import render_clip
    from engine.video import write_mp4

    size = load_preset(name)["tta"]["short_side"]
    clip = tmp_path / "clip.mp4"
    write_mp4(render_clip(1, 33, size, size).frames, clip, fps=8)
    _cli("tta", "--video", str(clip), "--preset", name, "--output_dir", str(tmp_path / "tta"), "--steps", "1",
         "--rank", "2", "--sample_steps", "2", "--cond_frames", "17", "--total_frames", "33", "--no_lpips", "--quiet")
    metrics = json.loads((tmp_path / "tta" / "metrics.json").read_text())
    assert metrics["continuation"] == mode




@pytest.mark.slow
def test_a14b_sigkill_then_resume_equals_an_uninterrupted_run(data, tmp_path):
    flags = ["train", "--preset", A14B, "--data_dir", str(data[A14B]), "--max_steps", "30", "--checkpointing_steps", "3",
             "--validation_steps", "100", "--use_gradient_checkpointing", "false", "--quiet"]
    killed, whole = killed_then_resumed(flags, tmp_path)
    for file in (DIFFUSERS_WEIGHT_NAME, HIGH, LOW):
        a, b = load_file(str(killed / "final" / file)), load_file(str(whole / "final" / file))
        assert a.keys() == b.keys() and a
        assert all(torch.equal(a[k], b[k]) for k in a), file


def test_a14b_memory_options_train_both_experts_as_without(data, tmp_path):
    """fp8-free exact options on the two-expert denoiser: swapped blocks, offloaded inputs, sliced feed-forwards."""
    common = ["train", "--preset", A14B, "--data_dir", str(data[A14B]), "--max_steps", "2", "--validation_steps", "2",
              "--checkpointing_steps", "100", "--sample_steps", "0", "--seed", "0", "--lora_dropout", "0",
              "--use_gradient_checkpointing", "true", "--quiet"]

    def losses(run):
        events = [json.loads(line) for line in (tmp_path / run / "events.jsonl").read_text().splitlines()]
        return [(e["type"], e.get("loss")) for e in events if e["type"] in ("train", "validation")]

    _cli(*common, "--output_dir", str(tmp_path / "plain"))
    _cli(*common, "--output_dir", str(tmp_path / "options"), "--block_swap", "3", "--ffn_chunks", "2",
         "--offload_activations", "true")
    assert losses("options") == losses("plain") and len(losses("plain")) >= 3
    for file in (HIGH, LOW):
        a, b = (load_file(str(tmp_path / run / "final" / file)) for run in ("plain", "options"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), file
