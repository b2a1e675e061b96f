"""Continuation sampling on the tiny backbones: how each mode holds the prefix, and determinism."""

import numpy as np
import pytest
import torch

from engine.attention.processor import remove_radial_attention
from engine.continuation import initial_noise, sample_continuation
from engine.errors import InputError
from engine.models import family, get_pipeline
from engine.presets import load_preset
from engine.data.synthetic import render_clip
from engine.workers.tta import to_pixels


@pytest.fixture(scope="module")
def clip_pixels():
    return to_pixels(render_clip(3, 65, 64, 64).frames)  # [1, 3, 65, 64, 64] in [-1, 1]


def _setup(name, clip_pixels):
    preset = load_preset(name)
    pipe, fam = get_pipeline(preset), family(preset)
    remove_radial_attention(pipe.transformer)
    cond = fam.encode_video(pipe, clip_pixels[:, :, :33])
    pos, neg = fam.encode_prompt(pipe, "a red circle moves from left to right", "", 5.0)
    return pipe, fam, cond, pos, neg


class Spy:
    """Wraps a family's forward and records what the model was given (everything else is the family's)."""

    def __init__(self, fam):
        self.fam, self.calls = fam, []

    def __getattr__(self, name):
        return getattr(self.fam, name)

    def forward(self, transformer, hidden_states, timestep, encoder_hidden_states, **kw):
        self.calls.append((hidden_states.clone(), timestep.clone(), kw))
        return self.fam.forward(transformer, hidden_states, timestep, encoder_hidden_states, **kw)


def test_encoding_the_prefix_alone_gives_the_first_latents_of_the_whole_clip(tiny_pipe, clip_pixels):
    fam = family(load_preset("tiny-wan"))
    whole = fam.encode_video(tiny_pipe, clip_pixels)
    prefix = fam.encode_video(tiny_pipe, clip_pixels[:, :, :33])
    assert whole.shape[2] == 17 and prefix.shape[2] == 9
    torch.testing.assert_close(prefix, whole[:, :, :9], rtol=1e-4, atol=1e-4)


def test_replacement_mode_noises_the_prefix_to_each_level_and_returns_it_clean(clip_pixels):
    pipe, fam, cond, pos, neg = _setup("tiny-wan", clip_pixels)
    noise = initial_noise((1, 16, 17, 8, 8), seed=7)
    spy = Spy(fam)
    out = sample_continuation(pipe, spy, cond, 17, pos, neg, mode="replacement", steps=3, guidance_scale=5.0, noise=noise)
    assert torch.equal(out[:, :, :9], cond.float())
    assert not torch.allclose(out[:, :, 9:], noise[:, :, 9:])
    import copy

    sched = copy.deepcopy(pipe.scheduler)
    sched.set_timesteps(3)
    assert len(spy.calls) == 6  # 3 steps, conditional + unconditional
    for i, (latents, timestep, _) in enumerate(spy.calls[::2]):
        sigma = float(sched.sigmas[i])
        torch.testing.assert_close(latents[:, :, :9], (1 - sigma) * cond + sigma * noise[:, :, :9])
        assert timestep.shape == (1,) and float(timestep) == float(sched.timesteps[i])
    again = sample_continuation(pipe, fam, cond, 17, pos, neg, mode="replacement", steps=3, guidance_scale=5.0, noise=noise)
    assert torch.equal(out, again)  # same noise and settings: bit-identical


def test_per_token_mode_on_skyreels_keeps_the_prefix_clean_at_timestep_zero(clip_pixels):
    pipe, fam, cond, pos, neg = _setup("tiny-skyreels-df", clip_pixels)
    noise = initial_noise((1, 16, 17, 8, 8), seed=7)
    spy = Spy(fam)
    out = sample_continuation(pipe, spy, cond, 17, pos, neg, mode="per_token", steps=2, guidance_scale=5.0,
                              noise=noise, fps=16)
    assert torch.equal(out[:, :, :9], cond.float())
    for latents, timestep, kw in spy.calls:
        assert torch.equal(latents[:, :, :9], cond.to(latents.dtype))
        assert timestep.shape == (1, 17) and (timestep[:, :9] == 0).all() and (timestep[:, 9:] > 0).all()
        assert kw["fps"] == 16
    # the per-frame timesteps reach the model: a clean prefix at timestep 0 predicts differently than at t
    x = out.clone()
    t_all = torch.full((1, 17), 500.0)
    t_prefix0 = t_all.clone()
    t_prefix0[:, :9] = 0
    with torch.no_grad():
        a = fam.forward(pipe.transformer, x, t_all, pos, fps=16)
        b = fam.forward(pipe.transformer, x, t_prefix0, pos, fps=16)
        c = fam.forward(pipe.transformer, x, torch.tensor([500.0]), pos, fps=16)
    assert not torch.allclose(a, b)
    assert torch.equal(a, c)  # a [B] timestep is the same level on every frame


def test_per_token_mode_on_wan_uses_per_token_timesteps(clip_pixels):
    pipe, fam, cond, pos, neg = _setup("tiny-wan", clip_pixels)
    noise = initial_noise((1, 16, 17, 8, 8), seed=1)
    out = sample_continuation(pipe, fam, cond, 17, pos, None, mode="per_token", steps=2, guidance_scale=1.0,
                              noise=noise, sampler="euler")
    assert torch.equal(out[:, :, :9], cond.float())


def test_vace_mode_conditions_through_control_latents(clip_pixels):
    pipe, fam, cond, pos, neg = _setup("tiny-wan-vace", clip_pixels)
    control = fam.control_latents(pipe, clip_pixels, 33)
    assert control.shape == (1, 96, 17, 8, 8)
    assert (control[:, 32:, 9:] == 1).all() and (control[:, 32:, :9] == 0).all()  # the mask: 1 = generate
    noise = initial_noise((1, 16, 17, 8, 8), seed=2)
    spy = Spy(fam)
    out = sample_continuation(pipe, spy, cond, 17, pos, neg, mode="vace", steps=2, guidance_scale=5.0, noise=noise,
                              control=control)
    assert out.shape == noise.shape and torch.isfinite(out).all()
    assert all(kw["control"] is control for _, _, kw in spy.calls)
    assert torch.equal(spy.calls[0][0], noise)  # VACE does not touch the latents
    with pytest.raises(InputError, match="control"):
        sample_continuation(pipe, fam, cond, 17, pos, neg, mode="vace", steps=2, guidance_scale=5.0, noise=noise)


def test_bad_modes_and_shapes_are_refused(tiny_pipe):
    fam = family(load_preset("tiny-wan"))
    cond = torch.zeros(1, 16, 9, 8, 8)
    with pytest.raises(InputError, match="continuation mode"):
        sample_continuation(tiny_pipe, fam, cond, 17, None, None, mode="inpaint", steps=1, guidance_scale=1.0,
                            noise=torch.zeros(1, 16, 17, 8, 8))
    with pytest.raises(InputError, match="latent frames"):
        sample_continuation(tiny_pipe, fam, cond, 17, None, None, mode="replacement", steps=1, guidance_scale=1.0,
                            noise=torch.zeros(1, 16, 9, 8, 8))
    assert np.array_equal(initial_noise((2, 3), 5).numpy(), initial_noise((2, 3), 5).numpy())
