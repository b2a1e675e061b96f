"""The fp8 radial forward (backend "triton_fp8") in the Triton CPU interpreter, at small sizes.

What is checked: the kernel computes what its quantisation scheme says (against a PyTorch emulation of
the same per-tile scales, centred K and fp8 P); its error against exact attention is that of fp8, not
more; its LSE is the exact one's (the joint merge depends on it); a bias shared by all keys costs no
accuracy; every output element is written; and it refuses gradients and old GPUs with a clear message.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton or the kernel modules are imported

import pytest  # noqa: E402
import torch  # noqa: E402

from engine.attention import backends, joint  # noqa: E402
from engine.attention import triton_radial as TR  # noqa: E402
from engine.attention import triton_radial_fp8 as F8  # noqa: E402
from engine.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.skipif(not TR.HAS_TRITON, reason="triton is not installed")
TILE = TR._INTERP_TILE  # the interpreter's tiles (32): the emulation quantises over the same token tiles


@pytest.fixture(autouse=True)
def _poison():
    old = TR.POISON_OUTPUTS
    TR.POISON_OUTPUTS = True  # outputs start as NaN: an unwritten element shows up
    yield
    TR.POISON_OUTPUTS = old


def _mask(S, bs, p, seed):
    n = -(-S // bs)
    m = torch.rand(n, n, generator=torch.Generator().manual_seed(seed)) < p
    m.fill_diagonal_(True)
    return m


def _qkv(B, S, H, D, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, S, H, D, generator=gen) for _ in range(3)]


def _token_mask(blk, bs, S):
    idx = torch.arange(S) // bs
    return blk[idx][:, idx]


def _exact(q, k, v, blk, bs):
    """float64 masked attention: (out [B, S, H, D], lse [B, H, S])."""
    S, D = q.shape[1], q.shape[-1]
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / D ** 0.5
    s = s.masked_fill(~_token_mask(blk, bs, S), float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), v.double()), torch.logsumexp(s, -1)


def _fake_fp8(x, tile):
    """Per (batch, head, token tile) amax/448 scales, rounded to e4m3 by torch (round to nearest even)."""
    B, S, H, D = x.shape
    nt = -(-S // tile)
    xp = torch.zeros(B, nt * tile, H, D, dtype=torch.float64)
    xp[:, :S] = x.double()
    t = xp.view(B, nt, tile, H, D)
    sc = t.abs().amax(dim=(2, 4), keepdim=True).clamp_min(F8._EPS) / F8.FP8_MAX
    return ((t / sc).to(torch.float8_e4m3fn).double() * sc).view(B, nt * tile, H, D)[:, :S]


def _emulated(q, k, v, blk, bs):
    """The kernel's scheme in PyTorch, with one difference: P is quantised against each row's final
    maximum, where the kernel uses its running maximum. K is centred as the kernel centres it."""
    S, D = q.shape[1], q.shape[-1]
    kc = k.double() - k.double().mean(dim=1, keepdim=True)
    qq, kq, vq = _fake_fp8(q, TILE), _fake_fp8(kc, TILE), _fake_fp8(v, TILE)
    s = torch.einsum("bqhd,bkhd->bhqk", qq, kq) / D ** 0.5
    s = s.masked_fill(~_token_mask(blk, bs, S), float("-inf"))
    p = torch.exp(s - s.amax(-1, keepdim=True))
    p8 = (p * F8.FP8_MAX).to(torch.float8_e4m3fn).double() / F8.FP8_MAX
    return torch.einsum("bhqk,bkhd->bqhd", p8 / p.sum(-1, keepdim=True), vq)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("B, S, H, D, bs, p", [
    (1, 128, 2, 32, 32, 0.5),   # whole tiles
    (2, 150, 1, 64, 32, 0.4),   # a 22-token tail tile
    (1, 97, 2, 32, 64, 0.7),    # mask blocks of two tiles, a one-token tail
])
def test_the_kernel_computes_its_quantisation_scheme(B, S, H, D, bs, p):
    q, k, v = _qkv(B, S, H, D, seed=S + D)
    blk = _mask(S, bs, p, seed=S)
    out, lse = F8.radial_attention_fp8_lse(q, k, v, blk, bs)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    exact, exact_lse = _exact(q, k, v, blk, bs)
    # the scheme, emulated: close (P's running-max rounding aside)
    assert _rel(out, _emulated(q, k, v, blk, bs)) < 0.03
    # against exact attention: fp8's error (four e4m3 roundings of ~2.7% each), and not an exact kernel
    assert 5e-3 < _rel(out, exact) < 0.08
    # the LSE is of the true scores (the centring shift given back), within the score rounding
    assert (lse.double() - exact_lse).abs().max().item() < 0.2


def test_a_bias_shared_by_all_keys_costs_no_accuracy():
    # Softmax ignores a vector added to every key; without the centring, 50x the keys' spread would set the
    # scales and flatten the keys to a few fp8 levels.
    q, k, v = _qkv(1, 96, 2, 32, seed=7)
    blk = _mask(96, 32, 0.6, seed=2)
    exact, exact_lse = _exact(q, k, v, blk, 32)
    bias = 50 * torch.randn(1, 1, 2, 32, generator=torch.Generator().manual_seed(3))
    plain, _ = F8.radial_attention_fp8_lse(q, k, v, blk, 32)
    biased, biased_lse = F8.radial_attention_fp8_lse(q, k + bias, v, blk, 32)
    assert _rel(biased, exact) < 1.2 * _rel(plain, exact) + 1e-3
    shift = torch.einsum("bshd,bhd->bhs", q.double(), bias[:, 0].double()) / 32 ** 0.5
    assert (biased_lse.double() - (exact_lse + shift)).abs().max().item() < 0.5


def test_the_output_goes_into_a_given_view_and_a_wrong_buffer_is_refused():
    # joint attention hands the video rows of its whole output: the kernel writes there, no extra copy
    q, k, v = _qkv(1, 96, 2, 32, seed=4)
    blk = _mask(96, 32, 0.6, seed=5)
    fresh, lse = F8.radial_attention_fp8_lse(q, k, v, blk, 32)
    whole = torch.full((1, 101, 2, 32), 7.0)
    got, got_lse = F8.radial_attention_fp8_lse(q, k, v, blk, 32, out=whole[:, :96])
    assert got.data_ptr() == whole.data_ptr() and torch.equal(whole[:, :96], fresh) and torch.equal(got_lse, lse)
    assert (whole[:, 96:] == 7.0).all()  # nothing written past the view
    with pytest.raises(ValueError, match="output buffer must match"):
        F8.radial_attention_fp8_lse(q, k, v, blk, 32, out=torch.empty(1, 96, 2, 32, dtype=torch.float64))


def test_zero_inputs_give_zero_output():
    q, k, v = (torch.zeros(1, 64, 1, 32) for _ in range(3))
    out, lse = F8.radial_attention_fp8_lse(q, k, v, torch.ones(2, 2, dtype=torch.bool), 32)
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.allclose(lse, torch.full_like(lse, torch.log(torch.tensor(64.0)).item()))


def test_the_backend_entry_points_use_it():
    kw = dict(num_frames=4, tokens_per_frame=32, block_size=32, decay_factor=0.5)
    q, k, v = _qkv(1, 128, 2, 32, seed=11)
    ref = backends.radial_attention(q, k, v, backend="reference", **kw)
    fp8 = backends.radial_attention(q, k, v, backend="triton_fp8", **kw)
    assert 5e-3 < _rel(fp8, ref) < 0.08
    out, lse = backends.radial_attention_lse(q, k, v, backend="triton_fp8", **kw)
    assert torch.equal(out, fp8)
    assert (lse - backends.radial_attention_lse(q, k, v, backend="reference", **kw)[1]).abs().max() < 0.2


def test_joint_attention_samples_with_it_and_refuses_its_backward():
    geom = dict(num_frames=3, tokens_per_frame=32, block_size=32, decay_factor=1.0, sink=False)
    sv, L = 96, 5
    q, k, v = _qkv(1, sv + L, 2, 32, seed=5)
    key_mask = torch.tensor([[True, True, True, False, False]])
    with torch.no_grad():
        ref = joint.joint_attention(q, k, v, num_video=sv, key_mask=key_mask, backend="reference", **geom)
        fp8 = joint.joint_attention(q, k, v, num_video=sv, key_mask=key_mask, backend="triton_fp8", **geom)
    assert 5e-3 < _rel(fp8[:, :sv], ref[:, :sv]) < 0.08  # the merge weights come from the fp8 part's LSE
    assert _rel(fp8[:, sv:], ref[:, sv:]) < 1e-5  # text rows stay dense float32
    qg = q.clone().requires_grad_()
    with pytest.raises(ValueError, match="forward-only"):  # refused before it runs, not at the backward
        joint.joint_attention(qg, k, v, num_video=sv, key_mask=key_mask, backend="triton_fp8", **geom)


def test_gradients_are_refused_with_the_fix():
    q, k, v = _qkv(1, 64, 1, 32, seed=1)
    blk = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"forward-only.*backend 'triton'"):
        F8.radial_attention_fp8_lse(q.requires_grad_(), k, v, blk, 32)
    with torch.no_grad():  # sampling: the same tensors are fine
        F8.radial_attention_fp8_lse(q, k, v, blk, 32)


def test_small_head_dims_and_old_gpus_are_refused(monkeypatch):
    q = torch.randn(1, 64, 1, 16)
    with pytest.raises(ValueError, match="head dim of at least 32"):
        F8.radial_attention_fp8_lse(q, q, q, torch.ones(4, 4, dtype=torch.bool), 16)
    if not torch.cuda.is_available():  # no GPU here: said so, no crash on the capability query
        ok, why = F8.fp8_usable(torch.device("cuda"))
        assert not ok and "CUDA GPU" in why
        assert "triton_fp8" not in backends.available_backends("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    ok, why = F8.fp8_usable(torch.device("cuda"))
    assert not ok and "Hopper" in why and "A100" in why and "backend 'triton'" in why
    assert "triton_fp8" not in backends.available_backends("cuda")
    assert "triton_fp8" in backends.available_backends("cpu")  # the interpreter runs it


def test_training_refuses_the_backend():
    from engine.config import config_from_preset

    with pytest.raises(ConfigError, match=r"attention_backend'='triton_fp8'.*forward-only.*use 'triton'"):
        config_from_preset("tiny-wan", attention_backend="triton_fp8")


def test_the_interpreter_cast_workaround_rounds_like_torch():
    # the kernels' PRE_ROUND branch (see _to_e4m3) must give torch's e4m3 rounding, carries and subnormals included
    x = torch.tensor([7.99, -125.87, 0.0019, 3 * 2 ** -9 + 1e-5, 447.0, 500.0, 1.0625, 1.1875, 0.0, -2 ** -10])
    y = torch.empty(len(x), dtype=torch.float8_e4m3fn)
    import triton
    import triton.language as tl

    @triton.jit
    def cast(X, Y, N: tl.constexpr):
        r = tl.arange(0, N)
        tl.store(Y + r, F8._to_e4m3(tl.load(X + r), True), mask=r < 10)

    cast[(1,)](x, y, N=16)
    want = x.clamp(-448, 448).to(torch.float8_e4m3fn)
    assert torch.equal(y.float(), want.float()), (y.float(), want.float())


def test_generate_video_samples_with_it(tmp_path, monkeypatch):
    # The whole Generate path on the tiny Wan model: every radial layer through the fp8 kernel, a clip close to
    # the bf16-kernel clip (the interpreter's fp32 inputs stand in for bf16), and nothing trained.
    from engine.generate import generate_video
    from engine.metrics import psnr_per_frame

    calls = []
    real = F8._fwd_fp8
    monkeypatch.setattr(F8, "_fwd_fp8", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    attention = {"dense_layers": 0, "dense_timesteps": 0, "decay_factor": 0.5, "block_size": 32}
    clips = {}
    for backend in ("triton", "triton_fp8"):
        r = generate_video("a red ball", preset="tiny-wan", num_frames=17, height=64, width=64, steps=2, seed=3,
                           out_path=tmp_path / f"{backend}.mp4", attention={**attention, "backend": backend})
        clips[backend] = torch.from_numpy(r.frames).permute(0, 3, 1, 2).float() / 255
        assert r.path.is_file()
    assert calls  # the fp8 kernel ran
    assert not torch.equal(clips["triton"], clips["triton_fp8"])
    assert psnr_per_frame(clips["triton_fp8"], clips["triton"]).mean() > 25  # a little different, not much (59 dB)
