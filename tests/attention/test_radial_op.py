"""Radial and joint attention as custom operators (engine.attention.radial_op): registration, numerics, and
torch.compile capturing them in one graph. The Triton kernel runs under the interpreter (TRITON_INTERPRET=1,
set before triton is imported), at small sizes."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton or the kernel module is imported

import pytest
import torch

from engine.attention import backends, joint, radial_op
from engine.attention.triton_radial import HAS_TRITON

needs_triton = pytest.mark.skipif(not HAS_TRITON or os.environ.get("TRITON_INTERPRET") != "1",
                                  reason="needs triton and TRITON_INTERPRET=1 before triton is imported")

# 6 frames of 16 tokens, block 16: the radial mask drops far frame pairs (it differs from dense)
GEOM = dict(num_frames=6, tokens_per_frame=16, block_size=16, decay_factor=1.0, sink=True)
S = 96


def _qkv(n=S, B=1, H=2, D=16, seed=0, grad=True):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, n, H, D, generator=gen).requires_grad_(grad) for _ in range(3)]


def _grads(out, inputs, seed=1):
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad(out, inputs, go)


def _args(geometry, backend):
    return (geometry["num_frames"], geometry["tokens_per_frame"], geometry["decay_factor"], geometry["block_size"],
            geometry["sink"], backend)


def test_the_operators_pass_torch_library_opcheck():
    # schema, fake (shape) functions, autograd registration and AOT dispatch, as torch.compile uses them
    q, k, v = _qkv()
    torch.library.opcheck(radial_op._radial_fwd, (q, k, v, *_args(GEOM, "reference")))
    geometry = dict(GEOM, sink=False)
    q, k, v = _qkv(S + 5)
    mask = torch.tensor([[True, True, False, True, False]])
    for key_mask in (mask, None):
        torch.library.opcheck(radial_op._joint_fwd, (q, k, v, key_mask, S, *_args(geometry, "reference")))


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
def test_the_radial_operator_gives_the_backends_output_and_gradients(backend):
    q, k, v = _qkv()
    expected = backends.radial_attention(q, k, v, backend="reference", **GEOM)
    out = radial_op.radial(q, k, v, backend=backend, **GEOM)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    dense = backends.radial_attention(q, k, v, backend="dense", **GEOM)
    assert (out - dense).abs().max() > 1e-2  # the mask is sparse here: radial differs from dense
    for a, b in zip(_grads(out, (q, k, v)), _grads(expected, (q, k, v))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
def test_both_operators_compile_into_one_graph_with_their_backward(backend):
    # fullgraph=True: any graph break raises, so the operators are nodes of the caller's graph
    from torch._dynamo.utils import counters

    geometry = dict(GEOM, sink=False)
    key_mask = torch.tensor([[True, True, False, True, False]])

    def block(q, k, v):  # [video | 5 text tokens]: radial on the video tokens, then joint on the whole
        x = radial_op.radial(q[:, :S].sin(), k[:, :S], v[:, :S], backend=backend, **GEOM) * 2
        y = joint.joint_attention(q, k, v, num_video=S, key_mask=key_mask, backend=backend, **geometry)
        return torch.cat([x.cos() + y[:, :S].tanh(), y[:, S:]], dim=1)

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    inputs = _qkv(S + 5)
    eager_inputs = [t.detach().clone().requires_grad_() for t in inputs]
    got, want = compiled(*inputs), block(*eager_inputs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(_grads(got, inputs), _grads(want, eager_inputs)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    torch._dynamo.reset()


def test_bad_inputs_and_backends_are_refused_with_what_to_change():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="forward-only.*'triton'"):  # fp8 has no backward: refused before it runs
        radial_op.radial(q, k, v, backend="triton_fp8", **GEOM)
    with pytest.raises(ValueError, match="'flex' has no log-sum-exp"):
        radial_op.radial(q, k, v, backend="flex", **GEOM)
    with pytest.raises(ValueError, match="'nope' is not one of triton, triton_fp8, reference, dense"):
        radial_op.radial(q, k, v, backend="nope", **GEOM)
    with pytest.raises(ValueError, match="sequence length mismatch.*S=96.*5\\*16"):
        radial_op.radial(q, k, v, backend="reference", **dict(GEOM, num_frames=5))
    with pytest.raises(ValueError, match="'flex' has no log-sum-exp"):
        joint.joint_attention(*_qkv(S + 3), num_video=S, backend="flex", **GEOM)


def test_processor_flags_follow_the_schedule_for_every_layer_and_step(tiny_preset):
    # radial_now is what compiled blocks read: it must equal use_radial(layer) after every change
    from engine.attention.processor import install_radial_attention
    from engine.attention.schedule import AttentionSettings
    from engine.models import family
    from engine.models.wan import build_tiny_pipeline

    transformer = build_tiny_pipeline(tiny_preset["tiny"]).transformer
    settings = AttentionSettings(pattern="radial", dense_layers=1, dense_timesteps=1, block_size=16,
                                 backend="reference")
    schedule = install_radial_attention(transformer, settings, family(tiny_preset))
    processors = [b.attn1.processor for b in transformer.blocks]

    def flags():
        assert [p.radial_now for p in processors] == [schedule.use_radial(p.layer_index) for p in processors]
        return [p.radial_now for p in processors]

    assert flags() == [False] * 4  # before any forward: step -1 (dense)
    for t, expected in ((900.0, [False] * 4), (700.0, [False, True, True, True])):
        schedule.observe(torch.tensor([t]), (1, 16, 5, 8, 8))
        assert flags() == expected
    schedule.force_dense = True
    assert flags() == [False] * 4
    schedule.force_dense = False
    schedule.observe(torch.tensor([950.0]), (1, 16, 5, 8, 8))  # a new run: its first step is dense again
    assert flags() == [False] * 4
    schedule.training = True  # training: dense_timesteps do not apply
    assert flags() == [False, True, True, True]
    schedule.reset()
    assert flags() == [False, True, True, True]


def test_the_cpu_reference_part_gives_sdpas_own_output_whatever_the_operands_strides():
    """The reference part on the CPU runs SDPA's flash kernel: bit-equal to the masked SDPA the dense path
    and the earlier reference used, also for operands that are views (einsum's order would follow strides),
    with an LSE that matches the float32 log-sum-exp of the masked scores."""
    from engine.attention import chunked

    q, k, v = _qkv(grad=False)
    mask = backends._token_mask(backends._geometry(6, 16, 16, 1.0, True), "cpu")
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        *(t.transpose(1, 2) for t in (q, k, v)), attn_mask=mask).transpose(1, 2)
    part = backends.radial_part(**GEOM, backend="reference")
    views = [torch.cat([t, t], dim=-1)[..., :16] for t in (q, k, v)]  # same values, other strides
    for operands in ((q, k, v), views):
        out, lse = part.forward(*operands)
        assert torch.equal(out, sdpa)
    ref_out, ref_lse = chunked.attention_forward(q, k, v, chunked.token_mask_fn(mask))
    assert torch.allclose(lse, ref_lse, atol=1e-5) and torch.allclose(out, ref_out, atol=1e-5)
    assert not torch.allclose(out, radial_op.radial(q, k, v, **GEOM, backend="dense"), atol=1e-3)  # the mask bites
