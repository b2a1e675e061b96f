"""Public entry `radial_attention`: backends agree, autograd, clear errors (CPU)."""

import pytest
import torch
import torch.nn.functional as F

from engine.attention import available_backends, radial_attention, radial_block_mask
from engine.attention import backends as BE


def qkv(B, S, H, D, seed=0, dtype=torch.float64, grad=False):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, S, H, D, generator=gen, dtype=dtype).requires_grad_(grad) for _ in range(3)]


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def masked_reference(q, k, v, blk, bs):
    S = q.shape[1]
    idx = torch.arange(S) // bs
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / q.shape[-1] ** 0.5
    s = s.masked_fill(~blk[idx][:, idx], float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v.double())


def test_reference_equals_dense_when_all_blocks_kept():
    # one frame: the whole frame tile is kept, so every block is (S=50, tail block of 2)
    kw = dict(num_frames=1, tokens_per_frame=50, block_size=16)
    assert radial_block_mask(1, 50, block_size=16).all()
    q, k, v = qkv(2, 50, 3, 16)
    ref = radial_attention(q, k, v, backend="reference", **kw)
    dense = radial_attention(q, k, v, backend="dense", **kw)
    assert ref.shape == q.shape
    assert rel(ref, dense) < 1e-12


def test_reference_matches_manual_blocks():
    F_, T, bs = 6, 20, 16  # S=120, not a block multiple
    blk = radial_block_mask(F_, T, block_size=bs, decay_factor=0.5)
    assert not blk.all()
    q, k, v = qkv(1, F_ * T, 2, 16, seed=1)
    out = radial_attention(q, k, v, num_frames=F_, tokens_per_frame=T, block_size=bs, decay_factor=0.5,
                           backend="reference")
    assert rel(out, masked_reference(q, k, v, blk, bs)) < 1e-12


def test_flex_matches_reference():
    if not BE._flex_available():
        pytest.skip("torch.nn.attention.flex_attention is not available")
    F_, T, bs = 5, 20, 16  # S=100: partial tail block
    kw = dict(num_frames=F_, tokens_per_frame=T, block_size=bs, decay_factor=1.0)
    q, k, v = qkv(1, F_ * T, 2, 16, seed=2, dtype=torch.float32)
    out = radial_attention(q, k, v, backend="flex", **kw)
    ref = radial_attention(q, k, v, backend="reference", **kw)
    assert out.shape == q.shape
    assert rel(out, ref) < 1e-5
    # gradients: flex has no CPU backward in some torch versions (NotImplementedError)
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    try:
        g1 = torch.autograd.grad(radial_attention(q, k, v, backend="flex", **kw).square().sum(), (q, k, v))
    except NotImplementedError as e:
        pytest.skip(f"FlexAttention backward not supported here: {e}")
    g2 = torch.autograd.grad(radial_attention(q, k, v, backend="reference", **kw).square().sum(), (q, k, v))
    for a, b in zip(g1, g2):
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("backend", ["reference", "dense"])
def test_autograd(backend):
    q, k, v = qkv(1, 60, 2, 16, seed=3, grad=True)
    out = radial_attention(q, k, v, num_frames=3, tokens_per_frame=20, block_size=16, backend=backend)
    out.sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


def test_default_backend_on_cpu_is_reference():
    q, k, v = qkv(1, 60, 1, 16, seed=4)
    kw = dict(num_frames=3, tokens_per_frame=20, block_size=16)
    assert torch.equal(radial_attention(q, k, v, **kw), radial_attention(q, k, v, backend="reference", **kw))


def test_wrong_sequence_length():
    q, k, v = qkv(1, 50, 1, 16)
    with pytest.raises(ValueError, match=r"S=50.*3\*20 = 60"):
        radial_attention(q, k, v, num_frames=3, tokens_per_frame=20)


def test_unknown_backend():
    q, k, v = qkv(1, 60, 1, 16)
    with pytest.raises(ValueError, match="triton, triton_fp8, flex, reference, dense"):
        radial_attention(q, k, v, num_frames=3, tokens_per_frame=20, backend="sage")


def test_bad_shapes():
    q, k, v = qkv(1, 60, 1, 16)
    with pytest.raises(ValueError, match="4-D"):
        radial_attention(q[0], k, v, num_frames=3, tokens_per_frame=20)
    with pytest.raises(ValueError, match="differ"):
        radial_attention(q, k[:, :, :, :8], v, num_frames=3, tokens_per_frame=20)


def test_triton_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v = qkv(1, 60, 1, 16, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="CUDA"):
        radial_attention(q, k, v, num_frames=3, tokens_per_frame=20, block_size=16, backend="triton")
    assert "triton" not in available_backends("cpu")
    assert {"reference", "dense"} <= set(available_backends("cpu"))


def test_setup_is_cached_per_geometry():
    q, k, v = qkv(1, 60, 1, 16)
    kw = dict(num_frames=3, tokens_per_frame=20, block_size=16, decay_factor=0.7)
    radial_attention(q, k, v, backend="reference", **kw)
    before = BE._block_mask.cache_info()
    radial_attention(q, k, v, backend="reference", **kw)
    after = BE._block_mask.cache_info()
    assert after.misses == before.misses
    assert BE._token_mask.cache_info().maxsize is not None  # bounded
    assert BE._block_mask.cache_info().maxsize is not None
