"""Test-time adaptation on the tiny Open-Sora v2.0 backbone (v2v_head conditioning, its own sampler and objective)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.jobs import RunDir
from engine.models import opensora2 as osv2
from engine.data.synthetic import render_clip
from engine.workers.tta import (
    AdaptSettings, SampleSettings, VideoSession, _load_model, adapt, load_clip, resolve_preset, run_tta, run_tta_sweep,
)
from engine.video import write_mp4

PRESET = "tiny-opensora2"
FAST = dict(sample_steps=2, lpips=False)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tta-os2-clips")
    paths = {}
    for name, seed in (("a", 0), ("b", 1)):
        clip = render_clip(seed, 65, 64, 64)
        paths[name] = write_mp4(clip.frames, folder / f"{name}.mp4", fps=16)  # (at fps=24 a 65-frame mp4 reads back as 64 frames)
        (folder / f"{name}.txt").write_text(clip.caption)
    return paths


def _session(path, seed=0, steps=2):
    preset, mode = resolve_preset(PRESET)
    pipe, fam = _load_model(preset)
    clip = load_clip(path, preset, cond_frames=33, total_frames=65)
    return VideoSession(pipe, fam, mode, clip, cond_frames=33, seed=seed,
                        sample=SampleSettings(steps=steps, guidance_scale=7.5, negative_prompt=""))


def test_preset_resolves_to_the_v2v_head_mode():
    preset, mode = resolve_preset(PRESET)
    assert mode == "v2v_head" and preset["family"] == "opensora2"
    for name in ("opensora2-256px", "opensora2-768px"):
        real, real_mode = resolve_preset(name)
        assert real_mode == "v2v_head" and real["source"] == "hpcai-tech/Open-Sora-v2"
    assert resolve_preset("opensora2-256px")[0]["tta"]["short_side"] == 256
    assert resolve_preset("opensora2-768px")[0]["tta"]["short_side"] == 768


@pytest.mark.parametrize("objective", ["diffusion", "continuation"])
def test_tta_lowers_its_loss_and_leaves_the_base_untouched(clips, objective):
    session = _session(clips["a"])
    transformer = session.pipe.transformer
    before = {k: v.detach().clone() for k, v in transformer.state_dict().items()}
    info = adapt(session, AdaptSettings(rank=4, lr=1e-2, steps=4, objective=objective, seed=0))
    assert len(info["losses"]) == 4 and all(np.isfinite(info["losses"]))
    assert info["probe"][4] < info["probe"][0]
    assert not getattr(transformer, "peft_config", None)
    after = transformer.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_the_prefix_reaches_the_model_only_through_the_v2v_cond(clips, monkeypatch):
    session = _session(clips["a"])
    # the 33-frame prefix encoded on its own: 9 latent frames; the clip has 17
    assert session.cond.shape[2] == 9 and session.noise.shape[2] == 17
    control = session.control
    assert control.shape == (1, 17, 17, 8, 8)
    assert torch.all(control[:, 0, :9] == 1) and torch.all(control[:, 0, 9:] == 0)
    assert torch.equal(control[:, 1:, :9], session.cond) and torch.all(control[:, 1:, 9:] == 0)

    calls = []
    real = osv2.transformer_forward

    def spy(transformer, hidden_states, timestep, encoder_hidden_states, control=None, **kw):
        calls.append((hidden_states.detach().clone(), timestep.clone(), None if control is None else control.clone()))
        return real(transformer, hidden_states, timestep, encoder_hidden_states, control=control, **kw)

    monkeypatch.setattr(osv2, "transformer_forward", spy)
    latents, frames = session.generate()
    assert frames.shape == (65, 64, 64, 3)
    # generation: a 3-batch per step, [prompt + cond, "" + cond, "" + zero cond]; the first step sees the pure noise
    x0, t0, c0 = calls[0]
    assert x0.shape[0] == 3 and torch.equal(x0[0], session.noise[0]) and torch.equal(x0[2], session.noise[0])
    assert t0.tolist() == [1000.0] * 3
    assert torch.equal(c0[0], control[0]) and torch.equal(c0[1], control[0]) and torch.all(c0[2] == 0)
    # the noisy latents are never overwritten: the output prefix is the model's, not the conditioning latents
    assert not torch.allclose(latents[:, :, :9], session.cond)

    # training, continuation objective: mask on the first k latent frames, x_t left as noised (not overwritten)
    calls.clear()
    noise = torch.randn(session.cond.shape, generator=torch.Generator().manual_seed(1))
    session.objective_loss("continuation", noise, 0.6, 3)
    x, t, c = calls[-1]
    xt, _ = osv2.flow_pair(session.cond, noise, torch.tensor([0.6]))
    assert torch.equal(x, xt) and t.tolist() == [pytest.approx(600.0)]
    assert torch.all(c[:, 0, :3] == 1) and torch.all(c[:, 0, 3:] == 0) and torch.equal(c[:, 1:, :3], session.cond[:, :, :3])
    # diffusion objective: zero conditioning
    session.objective_loss("diffusion", noise, 0.6, 3)
    assert torch.all(calls[-1][2] == 0)


def test_training_objective_and_noise_levels():
    x0, eps = torch.randn(1, 16, 9, 8, 8), torch.randn(1, 16, 9, 8, 8)
    xt, target = osv2.flow_pair(x0, eps, torch.tensor([0.3]))
    assert torch.allclose(xt, 0.3 * eps + (1 - (1 - 1e-5) * 0.3) * x0)
    assert torch.allclose(target, (1 - 1e-5) * eps - x0)
    gen = torch.Generator().manual_seed(0)
    u = torch.sigmoid(torch.randn(1, generator=torch.Generator().manual_seed(0)))
    alpha = osv2.time_shift_alpha(9, 8, 8)
    assert osv2.sample_train_sigma(gen, (1, 16, 9, 8, 8)) == pytest.approx(float(alpha * u / (1 + (alpha - 1) * u)))


def test_video_b_after_video_a_is_the_same_as_b_alone(clips):
    settings = AdaptSettings(rank=4, lr=1e-2, steps=2, objective="continuation", seed=0)
    results = {}

    def run(name, key):
        session = _session(clips[name])
        adapt(session, settings, on_snapshot=lambda step, info: results.__setitem__(key, session.generate()))

    run("b", "b alone")
    run("a", "a")
    run("b", "b after a")
    assert torch.equal(results["b alone"][0], results["b after a"][0])
    assert np.array_equal(results["b alone"][1], results["b after a"][1])


def test_run_tta_and_sweep_on_disk(clips, tmp_path):
    out = tmp_path / "run"
    result = run_tta(clips["a"], preset=PRESET, output_dir=out, rank=4, lr=1e-2, steps=2, objective="continuation",
                     **FAST)
    assert result["state"] == "finished" and result["continuation"] == "v2v_head"
    assert Path(result["videos"]["side_by_side"]).is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tta"]["frames"] == [34, 65] and np.isfinite(metrics["difference"]["psnr"])
    assert [e["step"] for e in RunDir(out).read_events("tta")] == [1, 2]

    data = tmp_path / "data"
    (data / "videos").mkdir(parents=True)
    (data / "videos" / "a.mp4").write_bytes(Path(clips["a"]).read_bytes())
    (data / "metadata.json").write_text(json.dumps([{"video_id": "a", "prompt": "a clip", "negative_prompt": "",
                                                     "base_frames": 33, "extended_frames": 65, "height": 64,
                                                     "width": 64, "fps": 24}]))
    sweep = run_tta_sweep(data, ranks="2", lrs="1e-2", steps="1,2", experiment="os2", preset=PRESET,
                          output_root=tmp_path / "results", **FAST)
    assert sweep["state"] == "finished"
    summary = sweep["summary"]
    assert set(summary["settings"]) == {"diffusion-r2-lr0.01-s1", "diffusion-r2-lr0.01-s2"}
    assert summary["settings"]["diffusion-r2-lr0.01-s2"]["metrics"]["psnr"]["tta"]["n"] == 1
