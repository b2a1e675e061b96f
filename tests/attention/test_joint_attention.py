"""Joint video+text attention (radial video->video merged with dense text parts by log-sum-exp).

The Triton kernel runs under the interpreter (TRITON_INTERPRET=1, set before triton is imported), at
small sizes, against the reference (one masked SDPA with the whole pattern), forward and backward.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton or the kernel module is imported

import pytest
import torch

from engine.attention import backends, dense_parts, joint
from engine.attention.triton_radial import (
    HAS_TRITON,
    radial_attention_triton,
    radial_attention_triton_lse,
)

needs_triton = pytest.mark.skipif(not HAS_TRITON or os.environ.get("TRITON_INTERPRET") != "1",
                                  reason="needs triton and TRITON_INTERPRET=1 before triton is imported")

# 6 frames of 16 tokens, block 16: the radial mask drops far frame pairs (it differs from dense)
GEOM = dict(num_frames=6, tokens_per_frame=16, block_size=16, decay_factor=1.0, sink=False)
SV = 6 * 16


@pytest.fixture(params=["fused", "chunked"])
def text_parts(request, monkeypatch):
    """The test runs with the text parts on the fused flash kernel (the CPU one here) and in float32 chunks."""
    monkeypatch.setattr(dense_parts, "FUSED", request.param == "fused")
    return request.param


def _qkv(B=2, L=7, H=2, D=16, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, SV + L, H, D, generator=gen, dtype=dtype).requires_grad_() for _ in range(3)]


def _mask(B=2, L=7):
    m = torch.zeros(B, L, dtype=torch.bool)
    m[0, :3] = True  # padded text: 4 of 7 keys masked in the first sample
    m[1] = True
    return m


def _grads(out, inputs, seed=1):
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad(out, inputs, go)


def test_the_reference_pattern_is_radial_among_video_and_dense_elsewhere():
    mask = joint.joint_token_mask(SV, _mask(), 7, batch=2, **GEOM)[:, 0]
    radial = backends.cached_block_mask(6, 16, block_size=16, decay_factor=1.0, sink=False)
    assert not radial.all()  # the geometry is sparse, so the tests can tell radial from dense
    assert torch.equal(mask[0, :SV, :SV], radial.repeat_interleave(16, 0).repeat_interleave(16, 1))
    assert mask[0, :, SV:SV + 3].all() and not mask[0, :, SV + 3:].any()  # padded text keys: never attended
    assert mask[0, SV:, :SV].all() and mask[1, :, SV:].all()  # text queries (padded ones too) see every valid key


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
def test_merged_attention_equals_the_masked_reference_forward_and_backward(backend, text_parts):
    q, k, v = _qkv()
    km = _mask()
    ref = joint.joint_attention_reference(q, k, v, num_video=SV, key_mask=km, **GEOM)
    out = joint.joint_attention(q, k, v, num_video=SV, key_mask=km, backend=backend, **GEOM)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(_grads(out, (q, k, v)), _grads(ref, (q, k, v))):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    dense = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        attn_mask=joint.key_mask_full(SV, km, 2, 7, "cpu")[:, None, None]).transpose(1, 2)
    assert not torch.allclose(out, dense, atol=1e-3)  # the radial part is really sparse


@needs_triton
def test_kernel_lse_and_its_gradient_match_pytorch():
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, SV, 2, 16, generator=gen).requires_grad_() for _ in range(3))
    blocks = backends.cached_block_mask(6, 16, block_size=16, decay_factor=1.0, sink=False)
    out, lse = radial_attention_triton_lse(q, k, v, blocks, 16)
    ref_out, ref_lse = backends._masked_attention_lse(q, k, v, backends._token_mask(backends._geometry(6, 16, 16, 1.0, False), "cpu"))
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)
    w = torch.randn(lse.shape, generator=gen)  # a loss on the LSE alone: the delta - dlse path
    for ours, theirs in zip(torch.autograd.grad((lse * w).sum() + out.sum(), (q, k, v)),
                            torch.autograd.grad((ref_lse * w).sum() + ref_out.sum(), (q, k, v))):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    # the existing entry point is unchanged: same output and gradients as before
    plain = radial_attention_triton(q, k, v, blocks, 16)
    assert torch.equal(plain, out)


def test_no_valid_text_key_and_no_text_at_all(text_parts):
    q, k, v = _qkv(B=1)
    none = torch.zeros(1, 7, dtype=torch.bool)  # e.g. an all-padding (zeroed) prompt
    out = joint.joint_attention(q, k, v, num_video=SV, key_mask=none, backend="reference", **GEOM)
    ref = joint.joint_attention_reference(q, k, v, num_video=SV, key_mask=none, **GEOM)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert all(torch.isfinite(g).all() for g in _grads(out, (q, k, v)))
    qv = q[:, :SV].detach()
    video_only = joint.joint_attention(qv, qv, qv, num_video=SV, backend="reference", **GEOM)
    assert video_only.shape == qv.shape


def test_half_precision_merge_stays_close(text_parts):
    q, k, v = (t.detach().to(torch.bfloat16) for t in _qkv())
    out = joint.joint_attention(q, k, v, num_video=SV, key_mask=_mask(), backend="reference", **GEOM)
    ref = joint.joint_attention_reference(q.float(), k.float(), v.float(), num_video=SV, key_mask=_mask(), **GEOM)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_bad_shapes_are_refused_with_the_numbers():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="num_video=95"):
        joint.joint_attention(q, k, v, num_video=95, **GEOM)
    with pytest.raises(ValueError, match="key_mask has shape"):
        joint.joint_attention(q, k, v, num_video=SV, key_mask=torch.ones(2, 3, dtype=torch.bool), **GEOM)
    with pytest.raises(ValueError, match="no log-sum-exp"):
        backends.radial_attention_lse(q[:, :SV], k[:, :SV], v[:, :SV], backend="flex", num_frames=6,
                                      tokens_per_frame=16)


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
def test_many_small_chunks_along_either_sequence_give_the_same_attention(backend, monkeypatch):
    from engine.attention import chunked

    monkeypatch.setattr(dense_parts, "FUSED", False)  # chunk sizes bound the float32 path only

    q, k, v = _qkv()
    km = _mask()
    ref = joint.joint_attention_reference(q, k, v, num_video=SV, key_mask=km, **GEOM)
    ref_grads = _grads(ref, (q, k, v))
    # 64 elements per chunk: the video rows' text part runs in query chunks of 2 rows, the text rows'
    # backward in key chunks of 2 keys (the accumulate-the-other-side paths)
    monkeypatch.setattr(chunked, "CHUNK_ELEMS", 64)
    out = joint.joint_attention(q, k, v, num_video=SV, key_mask=km, backend=backend, **GEOM)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(_grads(out, (q, k, v)), ref_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def _saved_bytes(fn):
    """Bytes of the tensors autograd keeps for backward while `fn()` runs (storages counted once)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_backward_keeps_what_dense_attention_keeps_and_no_float32_copies(text_parts):
    # bf16 inputs: the old merge kept float32 copies of both parts' outputs (4x the output's bytes)
    q, k, v = (t.detach().to(torch.bfloat16).requires_grad_() for t in _qkv(B=1, L=8, H=2, D=16))
    km = torch.ones(1, 8, dtype=torch.bool)
    km[0, 5:] = False
    ours = _saved_bytes(lambda: joint.joint_attention(q, k, v, num_video=SV, key_mask=km, backend="reference", **GEOM))
    full = joint.key_mask_full(SV, km, 1, 8, "cpu")[:, None, None]
    dense = _saved_bytes(lambda: torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=full))
    out_bytes = q.numel() * q.element_size()
    lse_bytes = q.shape[0] * q.shape[2] * q.shape[1] * 4
    # q, k, v, out and one float32 LSE per row (+ the key mask): nothing of the score matrix's size
    assert ours <= 4 * out_bytes + lse_bytes + km.numel(), (ours, out_bytes)
    assert ours <= dense + lse_bytes, (ours, dense)


def test_fewer_video_than_text_tokens_and_key_chunked_rows_merge_exactly(monkeypatch, text_parts):
    from engine.attention import chunked

    if text_parts == "fused":
        monkeypatch.setattr(dense_parts, "_spans", lambda total, per: [slice(i, i + 1) for i in range(total)])

    # one frame of 4 video tokens and 7 text tokens: the video rows' text part runs in key chunks too
    geom = dict(num_frames=1, tokens_per_frame=4, block_size=4, decay_factor=1.0, sink=False)
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 11, 2, 16, generator=gen).requires_grad_() for _ in range(3))
    km = _mask()
    monkeypatch.setattr(chunked, "CHUNK_ELEMS", 16)
    out = joint.joint_attention(q, k, v, num_video=4, key_mask=km, backend="reference", **geom)
    ref = joint.joint_attention_reference(q, k, v, num_video=4, key_mask=km, **geom)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(_grads(out, (q, k, v)), _grads(ref, (q, k, v))):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("span_rows", [None, 16])
def test_fused_text_parts_run_no_float32_chunk_and_drop_padded_keys(monkeypatch, span_rows):
    assert dense_parts.FUSED  # the default
    if span_rows:  # the long video side in spans of 16 rows / keys: 6 fused calls where there was one
        monkeypatch.setattr(dense_parts, "SPAN_ELEMS", span_rows * 2 * 2 * 16)

    def refuse(*args, **kwargs):
        raise AssertionError("the float32 chunked path ran")

    monkeypatch.setattr(dense_parts, "attention_forward", refuse)
    monkeypatch.setattr(dense_parts, "attention_backward", refuse)
    seen = []
    plain = dense_parts.attention_lse
    monkeypatch.setattr(dense_parts, "attention_lse", lambda q, k, v: seen.append(k.shape[1]) or plain(q, k, v))
    q, k, v = _qkv()
    km = _mask()  # sample 0: 3 of 7 text keys valid; sample 1: all 7
    out = joint.joint_attention(q, k, v, num_video=SV, key_mask=km, backend="reference", **GEOM)
    ref = joint.joint_attention_reference(q, k, v, num_video=SV, key_mask=km, **GEOM)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(_grads(out, (q, k, v)), _grads(ref, (q, k, v))):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    # per sample: text rows over the video keys, then the valid text keys for the video rows (in spans) and the
    # text rows
    spans = SV // span_rows if span_rows else 1
    assert seen == [SV, *[3] * spans, 3, SV, *[7] * spans, 7]


@needs_triton
def test_kernel_part_writes_into_given_buffers_and_refuses_mismatched_ones():
    from engine.attention.triton_radial import RadialKernelPart

    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, SV, 2, 16, generator=gen) for _ in range(3))
    part = RadialKernelPart(backends.cached_block_mask(6, 16, block_size=16, decay_factor=1.0, sink=False), 16)
    big = torch.zeros(1, SV + 5, 2, 16)
    out, lse = part.forward(q, k, v, out=big[:, :SV])  # a view of a larger buffer
    assert out.data_ptr() == big.data_ptr() and torch.equal(big[:, SV:], torch.zeros(1, 5, 2, 16))
    torch.testing.assert_close(out, radial_attention_triton(q, k, v, part.block_mask, 16))
    with pytest.raises(ValueError, match="output buffer must match"):
        part.forward(q, k, v, out=torch.zeros(1, SV, 2, 16, dtype=torch.float64))
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    dv = torch.empty(1, 2, SV, 16).transpose(1, 2)  # other strides than dk
    with pytest.raises(ValueError, match="share strides"):
        part.backward(torch.ones_like(q), q, k, v, out, lse, dq, dk, dv)
