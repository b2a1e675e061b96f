"""FP8 forward of the block-sparse (Radial) attention kernel: sampling only, off by default.

Backend ``"triton_fp8"``. The same tile lists, online softmax and outputs (O and the base-2 row LSE)
as ``triton_radial._fwd``, with both matmuls on Hopper's fp8 tensor cores (e4m3 inputs, fp32
accumulation):

* Q, K and V are quantised per (batch, head, token tile) with one scale each, ``amax / 448``, by
  ``_quant_kernel`` (one read of the bf16 tensor, one write of the fp8 copy). Q's scale carries
  the softmax scale and log2(e), so a score tile costs what it costs in the bf16 kernel.
* QK^T: ``dot(q8, k8^T) * s_q * s_k``.
* K is centred first (its mean over the tokens subtracted, per batch and head): softmax rows are
  unchanged by it, and a bias that all keys share no longer sets the scales. The LSE, which is of
  the true scores, gets each row's shift ``q . mean`` back (from the unquantised q).
* PV: P is in [0, 1] after the online-softmax shift; it is multiplied by 448 before the cast, so
  small probabilities keep e4m3's normal range, and the tile's product is scaled by ``s_v / 448``
  before it joins the fp32 accumulator. The row sum uses the fp32 P.
* V is written transposed (``[B, H, D, S]``, key tokens contiguous): Hopper's fp8 matmul wants both
  operands K-major, and for PV the reduction runs over the key tokens.

There is no backward: training keeps the bf16 kernel (the training config refuses this backend; TTA adapts
with the stock attention anyway).
The accuracy bar is measured, not assumed: ``bench/fp8_attention.py`` reports the output error
against bf16 and the PSNR of a generated clip against the bf16 clip, in the same run as its times.
"""

from __future__ import annotations

import torch

from . import triton_radial as TR

__all__ = ["radial_attention_fp8_lse", "fp8_usable", "FP8_MAX"]

FP8_MAX = 448.0  # largest finite float8 e4m3fn
_EPS = 1e-12  # an all-zero tile quantises with this scale (any positive value gives zeros back)
FORWARD_ONLY = ("attention backend 'triton_fp8' is forward-only (sampling): it has no backward, so "
                "training uses the bf16 kernel, backend 'triton'")

if TR.HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _to_e4m3(x, PRE_ROUND: tl.constexpr):
        # PRE_ROUND (the CPU interpreter only): Triton's interpreter casts to fp8 by dropping mantissa bits
        # without carrying a round-up into the exponent (7.99 -> 4.0) and flushes subnormals to zero, so x is
        # first rounded to the nearest e4m3 value in fp32 (ties to even); the cast is then
        # exact. On the GPU the cast is cvt.rn.satfinite and this branch is not compiled.
        if PRE_ROUND:
            a = tl.abs(x)
            bits = a.to(tl.int32, bitcast=True)
            normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576).to(tl.float32, bitcast=True)  # 3 mantissa bits
            t = a * 512.0  # subnormals: multiples of 2^-9, ties to even
            f = tl.floor(t)
            odd = f - 2.0 * tl.floor(f * 0.5)
            sub = tl.where((t - f > 0.5) | ((t - f == 0.5) & (odd == 1.0)), f + 1.0, f) / 512.0
            a = tl.minimum(tl.where(a < 0.015625, sub, normal), 448.0)
            x = tl.where(x < 0, -a, a)
        return x.to(tl.float8e4nv)

    @triton.jit
    def _quant_kernel(X, MEAN, DOTV, ROWDOT, Y, SC, sxb, sxs, sxh, sxd, syb, sys_, syh, syd, H, S, NT, SL, scale_mul,
                      TILE: tl.constexpr, HEAD_DIM: tl.constexpr, FP8_MAX: tl.constexpr, EPS: tl.constexpr,
                      SUB_MEAN: tl.constexpr, ROW_DOT: tl.constexpr, PRE_ROUND: tl.constexpr):
        # One (token tile, batch*head): its amax gives the tile's scale; rows past S are written as zeros
        # (the transposed V copy is padded to whole tiles and the forward reads those columns).
        # SUB_MEAN: subtract MEAN[b, h, :] (fp32) from every row first. ROW_DOT: also write each row's
        # scale_mul * (x . DOTV[b, h, :]) to ROWDOT[b*h, row] (fp32, from the unquantised row).
        t = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        offs_s = t * TILE + tl.arange(0, TILE)
        offs_d = tl.arange(0, HEAD_DIM)
        ok = offs_s < S
        x = tl.load(X + b.to(tl.int64) * sxb + h.to(tl.int64) * sxh + offs_s[:, None] * sxs + offs_d[None, :] * sxd,
                    mask=ok[:, None], other=0.0).to(tl.float32)
        if SUB_MEAN:
            x = tl.where(ok[:, None], x - tl.load(MEAN + bh.to(tl.int64) * HEAD_DIM + offs_d)[None, :], 0.0)
        if ROW_DOT:
            dv = tl.load(DOTV + bh.to(tl.int64) * HEAD_DIM + offs_d)
            tl.store(ROWDOT + bh.to(tl.int64) * SL + offs_s, TR._row_sum(x * dv[None, :], 1) * scale_mul, mask=ok)
        amax = TR._row_max(TR._row_max(tl.abs(x), 1), 0)
        scale = tl.maximum(amax, EPS) / FP8_MAX
        y = _to_e4m3(x / scale, PRE_ROUND)
        tl.store(Y + b.to(tl.int64) * syb + h.to(tl.int64) * syh + offs_s[:, None] * sys_ + offs_d[None, :] * syd, y)
        tl.store(SC + bh.to(tl.int64) * NT + t, scale * scale_mul)

    @triton.jit
    def _fwd_fp8_kernel(
        Q8, K8, V8T, SQ, SK, SV, SHIFT, O, LSE,
        row_off, row_idx, row_order,
        sqb, sqs, sqh,
        skb, sks, skh,
        svb, svh, svd,
        sob, sos, soh, sod,
        H, S, SP, SL, NQT, NKT, ZERO,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASK_COLS: tl.constexpr,
        WS: tl.constexpr, FP8_MAX: tl.constexpr, PRE_ROUND: tl.constexpr,
    ):
        # The layout of triton_radial._fwd_ws_kernel (TMA descriptors, one plain loop, the tail-tile
        # launches apart with MASK_COLS); ZERO as there.
        pid = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        mt = tl.load(row_order + pid)
        start = tl.load(row_off + mt)
        end = tl.load(row_off + mt + 1)
        q_desc = TR._head_desc(Q8, b, h, sqb, sqh, sqs, S, HEAD_DIM, BLOCK_M)
        k_desc = TR._head_desc(K8, b, h, skb, skh, sks, S, HEAD_DIM, BLOCK_N)
        v_desc = tl.make_tensor_descriptor(V8T + b.to(tl.int64) * svb + h.to(tl.int64) * svh, shape=[HEAD_DIM, SP],
                                           strides=[svd, 1], block_shape=[HEAD_DIM, BLOCK_N])
        q = q_desc.load([mt * BLOCK_M + ZERO, 0])
        s_q = tl.load(SQ + bh.to(tl.int64) * NQT + mt)
        sk_base = SK + bh.to(tl.int64) * NKT
        sv_base = SV + bh.to(tl.int64) * NKT
        offs_m = mt * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        offs_n = tl.arange(0, BLOCK_N)
        row_ok = offs_m < S
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
        acc = tl.full([BLOCK_M, HEAD_DIM], 0.0, dtype=tl.float32)
        for it in tl.range(start, end, warp_specialize=WS):
            nt = tl.load(row_idx + it)
            n0 = nt * BLOCK_N
            k = k_desc.load([n0, 0])
            s_qk = s_q * tl.load(sk_base + nt)
            qk = tl.dot(q, tl.trans(k))
            if MASK_COLS:
                qk = tl.where((n0 + offs_n)[None, :] < S, qk, float("-inf"))
            m_new = tl.maximum(m_i, TR._row_max(qk, 1) * s_qk)
            p = tl.math.exp2(qk * s_qk - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + TR._row_sum(p, 1)
            vt = v_desc.load([0, n0])
            pv = tl.dot(_to_e4m3(p * FP8_MAX, PRE_ROUND), tl.trans(vt))
            acc = acc * alpha[:, None] + pv * (tl.load(sv_base + nt) / FP8_MAX)
            m_i = m_new

        empty = l_i == 0.0
        l_safe = tl.where(empty, 1.0, l_i)
        out = acc / l_safe[:, None]
        shift = tl.load(SHIFT + bh.to(tl.int64) * SL + offs_m, mask=row_ok, other=0.0)
        lse = tl.where(empty, float("inf"), m_i + tl.math.log2(l_safe) + shift)
        o_base = O + b.to(tl.int64) * sob + h.to(tl.int64) * soh
        tl.store(o_base + offs_m[:, None] * sos + offs_d[None, :] * sod, out.to(O.dtype.element_ty),
                 mask=row_ok[:, None])
        tl.store(LSE + bh.to(tl.int64) * SL + offs_m, lse, mask=row_ok)


def fp8_usable(device: torch.device) -> tuple[bool, str]:
    """(usable, why not): fp8 tensor-core matmuls and device-side TMA descriptors need Hopper or newer."""
    ok, why = TR.triton_usable(device)
    if not ok:
        return ok, why
    if device.type == "cuda" and not torch.cuda.is_available():
        return False, "attention backend 'triton_fp8' needs a CUDA GPU, and none is available here"
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 9:
        name = torch.cuda.get_device_name(device)
        return False, (f"attention backend 'triton_fp8' needs a Hopper (sm_90) or newer GPU; this is {name}. "
                       "Use backend 'triton'.")
    return True, ""


def _quantise(x, tile: int, transpose: bool, scale_mul: float = 1.0, mean=None, row_dot=None):
    """(fp8 copy, fp32 scales [B*H, n_tiles], row dots or None): [B, S, H, D] in; out [B, S, H, D], or
    [B, H, D, S padded to tiles]. `mean` (optional, fp32 [B, H, D]) is subtracted from every token first;
    `row_dot` (optional, fp32 [B, H, D]) gives [B*H, _lse_stride(S)] of scale_mul * (token . row_dot)."""
    B, S, H, D = x.shape
    nt = -(-S // tile)
    if transpose:
        y = torch.empty((B, H, D, nt * tile), dtype=torch.float8_e4m3fn, device=x.device)
        ys = (y.stride(0), y.stride(3), y.stride(1), y.stride(2))  # as [b, s, h, d]
    else:
        y = torch.empty((B, nt * tile, H, D), dtype=torch.float8_e4m3fn, device=x.device)
        ys = TR._strides(y)
    sc = torch.empty((B * H, nt), dtype=torch.float32, device=x.device)
    SL = TR._lse_stride(S)
    dots = None if row_dot is None else torch.empty((B * H, SL), dtype=torch.float32, device=x.device)
    _quant_kernel[(nt, B * H)](x, sc if mean is None else mean, sc if row_dot is None else row_dot,
                               sc if dots is None else dots, y, sc, *TR._strides(x), *ys, H, S, nt, SL, scale_mul,
                               TILE=tile, HEAD_DIM=D, FP8_MAX=FP8_MAX, EPS=_EPS, SUB_MEAN=mean is not None,
                               ROW_DOT=row_dot is not None, PRE_ROUND=TR._interpreting(), num_warps=4)
    return (y if transpose else y[:, :S]), sc, dots


def _fwd_fp8(q, k, v, plan, sm_scale: float, out=None):
    B, S, H, D = q.shape
    L = plan.lists("fwd_fp8")
    bm, bn = L.tile_m, L.tile_n
    # Softmax is unchanged when every key moves by one vector (each score row moves by a constant), so K is
    # centred over its tokens before quantisation: a bias shared by all keys would otherwise set the scales.
    # The LSE is of the true scores, so each row gets back its shift, q . mean (scaled), from the bf16 q.
    k_mean = k.mean(dim=1, dtype=torch.float32).contiguous()
    k8, sk, _ = _quantise(k, bn, False, mean=k_mean)
    q8, sq, shift = _quantise(q, bm, False, sm_scale * TR._LOG2E, row_dot=k_mean)
    v8t, sv, _ = _quantise(v, bn, True)
    o = TR._output(q, out)  # `out`: the caller's buffer (joint attention writes the video rows in place)
    SL = TR._lse_stride(S)
    lse = TR._new((B * H, SL), torch.float32, q.device)
    if q.is_cuda:
        TR._ensure_allocator()
    cfg = TR.CONFIGS["fwd_fp8"]
    # The WS pass splits 128 query rows over two consumer warp groups; smaller tiles run one group.
    ws = bool(cfg.get("WS")) and (bm == 128 or TR._interpreting())
    for order, mask_cols in ((L.row_order_no_tail, False), (L.row_order_tail, True)):
        if order.numel() == 0:
            continue
        _fwd_fp8_kernel[(order.numel(), B * H)](
            q8, k8, v8t, sq, sk, sv, shift, o, lse,
            L.row_offsets, L.row_indices, order,
            *TR._strides(q8)[:3], *TR._strides(k8)[:3], v8t.stride(0), v8t.stride(1), v8t.stride(2),
            *TR._strides(o),
            H, S, v8t.shape[-1], SL, sq.shape[1], sk.shape[1], 0,
            HEAD_DIM=D, BLOCK_M=bm, BLOCK_N=bn, MASK_COLS=mask_cols, WS=ws, FP8_MAX=FP8_MAX,
            PRE_ROUND=TR._interpreting(),
            **TR._launch_kw(cfg),
        )
    return o, lse


def radial_attention_fp8_lse(q, k, v, block_mask, block_size: int, *, sm_scale: float | None = None,
                             cache_key=None, out=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse attention with fp8 matmuls: ``(out [B, S, H, D], lse [B, H, S] natural log)``, no autograd.

    Inputs as ``triton_radial.radial_attention_triton`` (fp16 / bf16; fp32 is accepted for the CPU
    interpreter). `out` (optional): a [B, S, H, D] buffer the output is written into (a view is fine).
    Raises ValueError when an input needs a gradient (see ``FORWARD_ONLY``)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError(FORWARD_ONLY)
    ok, why = fp8_usable(q.device)
    if not ok:
        raise RuntimeError(why)
    if q.shape[-1] < 32:
        raise ValueError(f"attention backend 'triton_fp8' needs a head dim of at least 32 (fp8 matmuls reduce over "
                         f"32 or more), got {q.shape[-1]}; use backend 'triton'")
    q, k, v, plan, sm_scale = TR._prepare(q, k, v, block_mask, block_size, sm_scale, cache_key)
    o, lse2 = _fwd_fp8(q, k, v, plan, sm_scale, out)
    B, S, H, _ = q.shape
    return o, lse2[:, :S].reshape(B, H, S) * TR._LN2


class RadialFp8Part:
    """`triton_radial.RadialKernelPart`'s interface for the fp8 forward (joint attention, sampling only)."""

    def __init__(self, block_mask: torch.Tensor, block_size: int, *, cache_key=None):
        self.block_mask, self.block_size, self.cache_key = block_mask, block_size, cache_key

    def forward(self, q, k, v, out=None):
        with torch.no_grad():
            return radial_attention_fp8_lse(q, k, v, self.block_mask, self.block_size, cache_key=self.cache_key,
                                            out=out)

    def backward(self, *args):
        raise ValueError(FORWARD_ONLY)
