"""Radial attention wired into Wan through diffusers attention processors (tiny model, CPU)."""

import numpy as np
import pytest
import torch

from engine.attention import processor as proc_mod
from engine.attention.processor import install_radial_attention, installed_schedule, remove_radial_attention
from engine.attention.schedule import AttentionSchedule, AttentionSettings


def _sample(pipe, steps=3, guidance=5.0, frames=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        return pipe(prompt="a red circle", negative_prompt="", height=64, width=64, num_frames=frames,
                    num_inference_steps=steps, guidance_scale=guidance, generator=gen, output_type="latent").frames


def test_dense_pattern_and_all_dense_radial_processors_reproduce_stock_diffusers(tiny_pipe):
    remove_radial_attention(tiny_pipe.transformer)
    stock = _sample(tiny_pipe)
    assert install_radial_attention(tiny_pipe.transformer, AttentionSettings(pattern="dense")) is None
    torch.testing.assert_close(_sample(tiny_pipe), stock, rtol=0, atol=0)
    # Our processor with every layer dense: same projections, RoPE and SDPA as the stock one.
    n_layers = tiny_pipe.transformer.config.num_layers
    install_radial_attention(tiny_pipe.transformer, AttentionSettings(pattern="radial", dense_layers=n_layers))
    torch.testing.assert_close(_sample(tiny_pipe), stock, rtol=1e-5, atol=1e-5)
    remove_radial_attention(tiny_pipe.transformer)


def test_schedule_honours_dense_layers_and_dense_timesteps_with_guidance(tiny_pipe, monkeypatch):
    from engine.attention import radial_op

    calls = []
    real = radial_op.radial

    def spy(q, k, v, **kw):
        sched = installed_schedule(tiny_pipe.transformer)
        calls.append((sched.step, kw["num_frames"], kw["tokens_per_frame"], kw["block_size"]))
        return real(q, k, v, **kw)

    monkeypatch.setattr(radial_op, "radial", spy)
    n_layers = tiny_pipe.transformer.config.num_layers
    settings = AttentionSettings(pattern="radial", dense_layers=1, dense_timesteps=2, block_size=16, decay_factor=1.0)
    install_radial_attention(tiny_pipe.transformer, settings)
    steps = 4
    _sample(tiny_pipe, steps=steps, guidance=5.0, frames=9)
    # Guidance runs the transformer twice per step; radial only in layers >= 1 and steps >= 2.
    per_step = {s: sum(1 for c in calls if c[0] == s) for s in range(steps)}
    assert per_step == {0: 0, 1: 0, 2: 2 * (n_layers - 1), 3: 2 * (n_layers - 1)}
    assert {c[1:] for c in calls} == {(3, 16, 16)}  # 9 frames -> 3 latent frames of 4x4 tokens
    # A second run starts from step 0 again (timestep went up).
    calls.clear()
    _sample(tiny_pipe, steps=3, guidance=1.0, frames=9)
    assert sorted({c[0] for c in calls}) == [2] and len(calls) == n_layers - 1
    remove_radial_attention(tiny_pipe.transformer)


def test_radial_processors_change_the_output_and_are_only_on_self_attention(tiny_pipe):
    remove_radial_attention(tiny_pipe.transformer)
    stock = _sample(tiny_pipe, frames=17)
    install_radial_attention(tiny_pipe.transformer, AttentionSettings(pattern="radial", dense_layers=0,
                                                                      dense_timesteps=0, block_size=16))
    radial = _sample(tiny_pipe, frames=17)
    assert not torch.allclose(radial, stock, atol=1e-4)
    kinds = {name.split(".")[2]: type(p).__name__ for name, p in tiny_pipe.transformer.attn_processors.items()}
    assert kinds == {"attn1": "WanRadialAttnProcessor", "attn2": "WanAttnProcessor"}
    remove_radial_attention(tiny_pipe.transformer)
    assert installed_schedule(tiny_pipe.transformer) is None


def test_schedule_step_tracking_unit():
    sched = AttentionSchedule(AttentionSettings(dense_layers=2, dense_timesteps=2))
    shape = (1, 16, 5, 8, 8)
    seen = []
    for t in (999.0, 999.0, 800.0, 800.0, 500.0, 999.0):  # guidance pairs, then a new run
        sched.observe(torch.tensor([t]), shape)
        seen.append(sched.step)
    assert seen == [0, 0, 1, 1, 2, 0]
    assert (sched.num_frames, sched.tokens_per_frame) == (5, 16)
    assert not sched.use_radial(5)  # step 0 < dense_timesteps
    sched.training = True
    assert sched.use_radial(5) and not sched.use_radial(1)


def test_gradients_reach_lora_weights_through_radial_attention(tiny_preset):
    from peft import LoraConfig

    from engine.models import wan

    pipe = wan.build_tiny_pipeline(tiny_preset["tiny"])
    tr = pipe.transformer
    tr.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False))
    sched = install_radial_attention(tr, AttentionSettings(pattern="radial", dense_layers=1, block_size=16,
                                                           backend="reference"))
    sched.training = True
    latents = torch.randn(1, 16, 5, 8, 8)
    text = torch.randn(1, 8, tr.config.text_dim)
    out = tr(hidden_states=latents, timestep=torch.tensor([500]), encoder_hidden_states=text, return_dict=False)[0]
    out.square().mean().backward()
    grads = {n: p.grad for n, p in tr.named_parameters() if "lora_A" in n and "attn1.to_q" in n}
    assert len(grads) == tr.config.num_layers
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
