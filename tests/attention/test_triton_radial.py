"""Block-sparse Triton kernel vs an fp64 reference, run in the Triton CPU interpreter.

fp32 inputs (the interpreter mis-multiplies bf16), small shapes so that the
whole file stays well under a minute on 2 cores.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton or the kernel module is imported

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from engine.attention import block_lists as BL  # noqa: E402
from engine.attention import triton_radial as TR  # noqa: E402

pytestmark = pytest.mark.skipif(not TR.HAS_TRITON, reason="triton is not installed")


@pytest.fixture(autouse=True)
def _poison():
    # Outputs (O, LSE, delta, dQ, dK, dV) start as NaN: any unwritten element shows up.
    old = TR.POISON_OUTPUTS
    TR.POISON_OUTPUTS = True
    yield
    TR.POISON_OUTPUTS = old


def random_block_mask(S, bs, p, gen):
    n = -(-S // bs)
    m = torch.rand(n, n, generator=gen) < p
    m.fill_diagonal_(True)  # radial masks always keep the diagonal
    return m


def reference(q, k, v, do, blk, bs):
    """fp64 masked SDPA forward and grads, [B, S, H, D] layout."""
    S = q.shape[1]
    idx = torch.arange(S) // bs
    tok = blk[idx][:, idx]
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    out = F.scaled_dot_product_attention(qd.transpose(1, 2), kd.transpose(1, 2), vd.transpose(1, 2),
                                         attn_mask=tok).transpose(1, 2)
    out.backward(do.double())
    return out.detach(), qd.grad, kd.grad, vd.grad


def run_kernel(q, k, v, do, blk, bs):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = TR.radial_attention_triton(q, k, v, blk, bs)
    out.backward(do)
    return out.detach(), q.grad, k.grad, v.grad


def assert_close(got, want, rtol=1e-4, name=""):
    assert got.shape == want.shape, name
    assert torch.isfinite(got).all(), f"{name}: non-finite values (unwritten output?)"
    err = ((got.double() - want).norm() / want.norm().clamp_min(1e-300)).item()
    maxerr = (got.double() - want).abs().max().item()
    assert err < rtol and maxerr < 1e3 * rtol * want.abs().max().item() + 1e-6, f"{name}: rel err {err:.2e}"


@pytest.fixture(params=["plain", "ws", "ws-overlap"])
def ws(request, monkeypatch):
    # plain kernels, or the warp-specialised forward / dK/dV / dQ kernels (which the interpreter runs
    # as ordinary loops: this checks their indexing, descriptors and the handling of rows past S);
    # ws-overlap: the forward's software-pipelined loop (PIPELINE, one tile of lag between QK^T and PV)
    # and the backward passes' dP-before-exp order (DP_FIRST)
    use_ws = request.param != "plain"
    overlap = request.param == "ws-overlap"
    for key in ("fwd", "bwd_dkdv", "bwd_dq"):
        monkeypatch.setitem(TR.CONFIGS, key, dict(TR.CONFIGS[key], WS=use_ws))
    monkeypatch.setitem(TR.CONFIGS, "fwd_ws", dict(TR.CONFIGS["fwd_ws"], PIPELINE=overlap))
    for key in ("bwd_dkdv_ws", "bwd_dq_ws"):
        monkeypatch.setitem(TR.CONFIGS, key, dict(TR.CONFIGS[key], DP_FIRST=overlap))
    used, flags = [], set()
    ws_kernels = {"_fwd_ws_kernel", "_bwd_dkdv_ws_kernel", "_bwd_dq_ws_kernel"}

    def spy(kern, name):
        def launch(grid):
            def run(*args, **kw):
                used.append(name)
                flags.update(f"{name}:{f}={kw[f]}" for f in ("PIPELINE", "DP_FIRST") if f in kw)
                return kern[grid](*args, **kw)
            return run
        return type("Spy", (), {"__getitem__": lambda self, grid: launch(grid)})()

    for name in ws_kernels:
        monkeypatch.setattr(TR, name, spy(getattr(TR, name), name))
    yield request.param
    assert (set(used) == ws_kernels) == use_ws
    if use_ws:  # the launches passed the configured flags on
        assert flags == {f"_fwd_ws_kernel:PIPELINE={overlap}", f"_bwd_dkdv_ws_kernel:DP_FIRST={overlap}",
                         f"_bwd_dq_ws_kernel:DP_FIRST={overlap}"}


def check(B, S, H, D, bs, p, seed, dtype=torch.float32, rtol=1e-4, blk=None):
    gen = torch.Generator().manual_seed(seed)
    q, k, v, do = (torch.randn(B, S, H, D, generator=gen).to(dtype) for _ in range(4))
    if blk is None:
        blk = random_block_mask(S, bs, p, gen)
    got = run_kernel(q, k, v, do, blk, bs)
    want = reference(q, k, v, do, blk, bs)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert g.dtype == dtype
        assert_close(g, w, rtol, name)


@pytest.mark.parametrize(
    "B,S,H,D,bs,p",
    [
        (1, 64, 1, 16, 16, 0.5),  # block multiple
        (2, 100, 3, 32, 32, 0.5),  # tail of 4 tokens
        (1, 77, 2, 64, 32, 0.4),  # D=64, odd length
        (2, 50, 1, 16, 16, 0.3),  # tail of 2 tokens
        (1, 33, 2, 32, 16, 0.6),  # last block holds one token
    ],
)
def test_random_blocks_fwd_bwd(B, S, H, D, bs, p, ws):
    check(B, S, H, D, bs, p, seed=S * 7 + D)


def test_diagonal_only_rows(ws):
    # every query block attends only its own block ("empty-ish" rows), odd length
    S, bs = 70, 16
    blk = torch.eye(-(-S // bs), dtype=torch.bool)
    check(1, S, 2, 32, bs, None, seed=1, blk=blk)


def test_query_blocks_with_no_keys(ws):
    # rows of blocks 1 and 3 keep no key block: output 0, dQ 0, and their keys get no gradient from them
    # (the pipelined loop still runs its one extra iteration there and must add nothing)
    S, bs, D = 70, 16, 32
    gen = torch.Generator().manual_seed(4)
    blk = random_block_mask(S, bs, 0.5, gen)
    blk[1] = False
    blk[3] = False
    q, k, v, do = (torch.randn(1, S, 2, D, generator=gen) for _ in range(4))
    out, dq, dk, dv = run_kernel(q, k, v, do, blk, bs)
    for rows in (slice(16, 32), slice(48, 64)):
        assert torch.equal(out[:, rows], torch.zeros_like(out[:, rows]))
        assert torch.equal(dq[:, rows], torch.zeros_like(dq[:, rows]))
    keep = torch.ones(S, dtype=torch.bool)
    keep[16:32] = False
    keep[48:64] = False
    # SDPA needs a key in every row: give the empty rows all keys and a zero dO, so that they add
    # nothing to dK / dV there either
    want = reference(q, k, v, do * keep[None, :, None, None], blk | ~blk.any(1, keepdim=True), bs)
    assert_close(out[:, keep], want[0][:, keep], 1e-4, "out")
    assert_close(dq[:, keep], want[1][:, keep], 1e-4, "dq")
    assert_close(dk, want[2], 1e-4, "dk")
    assert_close(dv, want[3], 1e-4, "dv")


def test_all_blocks_equals_dense_sdpa():
    B, S, H, D, bs = 1, 45, 2, 32, 16
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(B, S, H, D, generator=gen) for _ in range(3))
    blk = torch.ones(-(-S // bs), -(-S // bs), dtype=torch.bool)
    out = TR.radial_attention_triton(q, k, v, blk, bs)
    dense = F.scaled_dot_product_attention(q.double().transpose(1, 2), k.double().transpose(1, 2),
                                           v.double().transpose(1, 2)).transpose(1, 2)
    assert_close(out, dense, 1e-5, "dense")


def test_fp16_in_interpreter(ws):
    check(1, 40, 2, 32, 16, 0.5, seed=5, dtype=torch.float16, rtol=3e-3)


def test_strided_views_no_copy(ws):
    # [B, H, S, D] storage seen as [B, S, H, D], and a head slice of a wider tensor
    B, S, H, D, bs = 1, 48, 2, 16, 16
    gen = torch.Generator().manual_seed(11)
    base = torch.randn(B, H, S, D, generator=gen)
    q = base.transpose(1, 2)
    wide = torch.randn(B, S, 2 * H, D, generator=gen)
    k = wide[:, :, ::2]
    v = torch.randn(B, S, H, D, generator=gen)
    do = torch.randn(B, S, H, D, generator=gen)
    blk = random_block_mask(S, bs, 0.5, gen)
    want = reference(q, k, v, do, blk, bs)
    got = run_kernel(q, k, v, do, blk, bs)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert_close(g, w, 1e-4, name)


def test_custom_scale_and_determinism():
    B, S, H, D, bs = 1, 40, 1, 16, 16
    gen = torch.Generator().manual_seed(2)
    q, k, v, do = (torch.randn(B, S, H, D, generator=gen) for _ in range(4))
    blk = random_block_mask(S, bs, 0.5, gen)
    a = run_kernel(q, k, v, do, blk, bs)
    b = run_kernel(q, k, v, do, blk, bs)
    for x, y in zip(a, b):
        assert torch.equal(x, y)  # no atomics: bitwise reproducible
    # sm_scale=1/sqrt(D) explicitly == default
    out = TR.radial_attention_triton(q, k, v, blk, bs, sm_scale=1 / math.sqrt(D))
    assert torch.equal(out, a[0])


def test_radial_pattern_end_to_end():
    mask_mod = pytest.importorskip("engine.attention.mask", reason="engine/attention/mask.py not written yet")
    from engine.attention import radial_attention

    F_, T, bs = 5, 20, 16  # S=100: frames straddle blocks, tail block of 4 tokens
    blk = mask_mod.radial_block_mask(F_, T, block_size=bs, decay_factor=1.0)
    assert not blk.all(), "want a genuinely sparse mask"
    check(1, F_ * T, 2, 16, bs, None, seed=9, blk=blk)
    # public entry, triton backend == reference backend (with autograd)
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, F_ * T, 2, 16, generator=gen, requires_grad=True) for _ in range(3))
    kw = dict(num_frames=F_, tokens_per_frame=T, block_size=bs, decay_factor=1.0)
    o1 = radial_attention(q, k, v, backend="triton", **kw)
    g1 = torch.autograd.grad(o1.sum(), (q, k, v))
    o2 = radial_attention(q, k, v, backend="reference", **kw)
    g2 = torch.autograd.grad(o2.sum(), (q, k, v))
    assert_close(o1, o2.double(), 1e-4, "out")
    for a, b in zip(g1, g2):
        assert_close(a, b.double(), 1e-4, "grad")


def test_tile_lists():
    S, bs = 100, 32  # 4 blocks, last holds 4 tokens
    gen = torch.Generator().manual_seed(0)
    blk = random_block_mask(S, bs, 0.5, gen)
    L = BL.build_tile_lists(blk, bs, S, 16, 16)
    assert L.n_q_tiles == 7 and L.n_k_tiles == 7  # the 8th 16-tile would start at 112 >= S
    for mt in range(L.n_q_tiles):
        row = L.row_indices[L.row_offsets[mt]:L.row_offsets[mt + 1]].tolist()
        want = [nt for nt in range(L.n_k_tiles) if blk[mt * 16 // bs, nt * 16 // bs]]
        assert row == want
    for nt in range(L.n_k_tiles):
        col = L.col_indices[L.col_offsets[nt]:L.col_offsets[nt + 1]].tolist()
        want = [mt for mt in range(L.n_q_tiles) if blk[mt * 16 // bs, nt * 16 // bs]]
        assert col == want
    assert L.row_order.tolist() == list(range(L.n_q_tiles))  # natural launch order
    # the partial last key tile (tokens 96-99) splits the launch order in two
    tail = [mt for mt in range(L.n_q_tiles) if blk[mt * 16 // bs, 3]]
    assert 0 < len(tail) < L.n_q_tiles
    assert L.row_order_tail.tolist() == tail
    assert L.row_order_no_tail.tolist() == [mt for mt in range(L.n_q_tiles) if mt not in tail]
    even = BL.build_tile_lists(blk[:3, :3], bs, 96, 16, 16)  # no partial tile: nothing to mask
    assert even.row_order_tail.numel() == 0 and torch.equal(even.row_order_no_tail, even.row_order)
    old = BL.HEAVIEST_FIRST
    BL.HEAVIEST_FIRST = True
    try:
        L2 = BL.build_tile_lists(blk, bs, S, 16, 16)
    finally:
        BL.HEAVIEST_FIRST = old
    counts = L2.row_offsets.diff()
    assert sorted(L2.row_order.tolist()) == list(range(L2.n_q_tiles))
    assert (counts[L2.row_order.long()].diff() <= 0).all()  # heaviest first
    assert BL.computed_pairs(torch.ones(4, 4, dtype=torch.bool), bs, S) == S * S
    with pytest.raises(ValueError, match="divide"):
        BL.build_tile_lists(blk, bs, S, 24, 16)
    with pytest.raises(ValueError, match="needs"):
        BL.build_tile_lists(blk, bs, S + 40, 16, 16)


def test_tile_list_cache_is_bounded():
    BL.clear_cache()
    blk = torch.ones(2, 2, dtype=torch.bool)
    a = BL.get_tile_lists(blk, 16, 32, 16, 16, "cpu", key=("g", 1))
    assert BL.get_tile_lists(blk, 16, 32, 16, 16, "cpu", key=("g", 1)) is a
    for i in range(BL._CACHE_MAXSIZE + 5):
        BL.get_tile_lists(blk, 16, 32, 16, 16, "cpu", key=("g", i + 2))
    assert len(BL._cache) == BL._CACHE_MAXSIZE


def test_errors(monkeypatch):
    q = torch.randn(1, 32, 1, 16)
    blk = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="head dim"):
        TR.radial_attention_triton(torch.randn(1, 32, 1, 24), torch.randn(1, 32, 1, 24),
                                   torch.randn(1, 32, 1, 24), blk, 16)
    with pytest.raises(ValueError, match="block mask"):
        TR.radial_attention_triton(q, q, q, torch.ones(3, 3, dtype=torch.bool), 16)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CUDA"):
        TR.radial_attention_triton(q, q, q, blk, 16)
