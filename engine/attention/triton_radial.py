"""Block-sparse (Radial) attention in Triton: forward and backward.

Flash-attention-2 style. Layout ``[B, S, H, D]`` (any strides), softmax scale
``1/sqrt(D)`` unless given. The sparsity pattern is a bool block mask over
``block_size`` token blocks, turned into per-tile CSR lists
(``block_lists.TileLists``):

* forward: one program per (query tile, batch*head) runs an online softmax
  over the key tiles listed for its query tile, writes O and the row
  log-sum-exp (base 2, fp32);
* backward: ``delta = rowsum(dO * O)`` (preprocess kernel); dK/dV: one program
  per key tile iterating over the query tiles that attend it (transposed
  lists); dQ: one program per query tile iterating over its key tiles. No
  atomics, so the backward is deterministic (a fused dK/dV/dQ kernel with fp32
  atomics for dQ was measured no faster on H100 and removed, see
  docs/kernel_notes.md v4).

On Hopper (fp16/bf16, D 64 or 128, 128-token tiles, TMA-aligned strides) the
forward and both backward passes use warp-specialised variants (``_fwd_ws_kernel``,
``_bwd_dkdv_ws_kernel``, ``_bwd_dq_ws_kernel``: Triton's automatic warp specialisation, one TMA
producer warp group and two consumer warp groups, device-side tensor
descriptors; ``CONFIGS[...]["WS"]``). Elsewhere, or with ``WS`` off, the plain
kernels run; both compute the same values (bitwise equal on H100, runs 6 and 8-12 of
docs/kernel_notes.md).

Any ``S`` works: loads and stores are masked at the tail, padded key columns
get ``-inf``, padded query rows get ``lse=+inf`` (so they contribute nothing); the
warp-specialised kernels rely on TMA's zero fill instead (see their comments).
A query row with no kept key block (impossible for radial masks, which keep
the diagonal) gives output 0 and zero gradients.

Tile sizes (``BLOCK_M``/``BLOCK_N``) must divide the mask block size; they are
per-pass settings in ``CONFIGS`` (tuned for H100, see docs/kernel_notes.md).
On a CPU tensor the kernels run only under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import math
import os

import torch

from .block_lists import TileLists, get_tile_lists

try:  # the module must import on machines without triton / CUDA
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # pragma: no cover - triton missing
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = ["radial_attention_triton", "radial_attention_triton_lse", "RadialKernelPart", "CONFIGS", "HAS_TRITON", "triton_usable"]

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453

# Per pass: tile sizes (capped at the mask block size), warps, pipeline stages.
# WS=True: use the warp-specialised kernel of that pass where _ws_ok allows (its own config below,
# num_warps per warp group: 4 -> 12 warps in all).
CONFIGS = {
    "fwd": dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, WS=True),
    # PIPELINE / DP_FIRST: kernel v11's overlap of the exp2 with a wgmma (docs/kernel_notes.md), off until measured
    "fwd_ws": dict(BLOCK_M=128, BLOCK_N=128, num_warps=4, num_stages=2, TAIL_SPLIT=True, PIPELINE=False),
    "bwd_dkdv": dict(BLOCK_M=64, BLOCK_N=128, num_warps=8, num_stages=3, WS=True),
    "bwd_dkdv_ws": dict(BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=2, DP_FIRST=False),  # 3 stages: wrong dK/dV (v7)
    "bwd_dq": dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, WS=True),
    "bwd_dq_ws": dict(BLOCK_M=128, BLOCK_N=128, num_warps=4, num_stages=2, DP_FIRST=False),  # run 9: >= 128x64 s2/s3
    "bwd_pre": dict(BLOCK_M=64, num_warps=4),
    # triton_radial_fp8 (sampling only); WS as fwd_ws where the query tile is 128 rows
    "fwd_fp8": dict(BLOCK_M=128, BLOCK_N=128, num_warps=4, num_stages=2, WS=True),
}
# Tests/bench set this to allocate outputs filled with NaN (proves every element is written).
POISON_OUTPUTS = False
# Smaller tiles in the interpreter: far fewer wasted lanes at tiny sizes.
_INTERP_TILE = 32


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_usable(device: torch.device) -> tuple[bool, str]:
    if not HAS_TRITON:
        return False, "triton is not installed"
    if device.type == "cuda":
        return True, ""
    if device.type == "cpu" and _interpreting():
        return True, ""
    return False, (
        f"the triton backend needs CUDA tensors (got device {device}); on CPU set "
        "TRITON_INTERPRET=1 before importing triton, or use backend='reference'"
    )


if HAS_TRITON:
    # Row reductions through tl.reduce with triton's own combine functions
    # (tl.standard._elementwise_max / _sum_combine): the interpreter recognises
    # those and reduces with numpy. We avoid tl.max / tl.sum / tl.zeros
    # themselves: they are @jit functions fixed as compiled or interpreted when
    # triton is first imported, so if torch imported triton before
    # TRITON_INTERPRET was set, the interpreter could not call them.

    @triton.jit
    def _row_max(x, axis: tl.constexpr):
        return tl.reduce(x, axis, tl.standard._elementwise_max)

    @triton.jit
    def _row_sum(x, axis: tl.constexpr):
        return tl.reduce(x, axis, tl.standard._sum_combine)

    @triton.jit
    def _fwd_tile(q, acc, l_i, m_i, k_base, v_base, n0, offs_n, offs_d, sks, skd, svs, svd, S, qk_scale,
                  MASK: tl.constexpr, DOT_PREC: tl.constexpr):
        kp = k_base + n0.to(tl.int64) * sks + offs_n[:, None] * sks + offs_d[None, :] * skd
        vp = v_base + n0.to(tl.int64) * svs + offs_n[:, None] * svs + offs_d[None, :] * svd
        if MASK:
            col_ok = (n0 + offs_n) < S
            k = tl.load(kp, mask=col_ok[:, None], other=0.0)
        else:
            k = tl.load(kp)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
        if MASK:
            qk = tl.where(col_ok[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, _row_max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])  # one FMA + exp2 per score
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + _row_sum(p, 1)
        acc = acc * alpha[:, None]
        if MASK:
            v = tl.load(vp, mask=col_ok[:, None], other=0.0)
        else:
            v = tl.load(vp)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
        return acc, l_i, m_new

    @triton.jit
    def _split_tail(idx_ptr, start, end, TILE: tl.constexpr, S, EVEN: tl.constexpr):
        # Lists are sorted, so a partial (tail) tile can only be the last entry:
        # iterate [start, end_full) unmasked and [end_full, end) masked.
        end_full = end
        if not EVEN:
            last = tl.load(idx_ptr + end - 1, mask=end > start, other=0)
            is_tail = ((last + 1) * TILE > S) & (end > start)
            end_full = end - is_tail.to(tl.int32)
        return end_full

    @triton.jit
    def _fwd_kernel(
        Q, K, V, O, LSE,
        row_off, row_idx, row_order,
        sqb, sqs, sqh, sqd,
        skb, sks, skh, skd,
        svb, svs, svh, svd,
        sob, sos, soh, sod,
        H, S, SL, qk_scale,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        EVEN_N: tl.constexpr, DOT_PREC: tl.constexpr,
    ):
        pid = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        mt = tl.load(row_order + pid)
        start = tl.load(row_off + mt)
        end = tl.load(row_off + mt + 1)
        end_full = _split_tail(row_idx, start, end, BLOCK_N, S, EVEN_N)

        offs_m = mt * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < S

        q_base = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
        k_base = K + b.to(tl.int64) * skb + h.to(tl.int64) * skh
        v_base = V + b.to(tl.int64) * svb + h.to(tl.int64) * svh

        q = tl.load(q_base + offs_m[:, None] * sqs + offs_d[None, :] * sqd, mask=row_ok[:, None], other=0.0)

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
        acc = tl.full([BLOCK_M, HEAD_DIM], 0.0, dtype=tl.float32)

        for it in range(start, end_full):
            n0 = tl.load(row_idx + it) * BLOCK_N
            acc, l_i, m_i = _fwd_tile(q, acc, l_i, m_i, k_base, v_base, n0, offs_n, offs_d, sks, skd, svs, svd,
                                      S, qk_scale, False, DOT_PREC)
        if not EVEN_N:
            for it in range(end_full, end):
                n0 = tl.load(row_idx + it) * BLOCK_N
                acc, l_i, m_i = _fwd_tile(q, acc, l_i, m_i, k_base, v_base, n0, offs_n, offs_d, sks, skd, svs,
                                          svd, S, qk_scale, True, DOT_PREC)

        empty = l_i == 0.0
        l_safe = tl.where(empty, 1.0, l_i)
        out = acc / l_safe[:, None]
        lse = tl.where(empty, float("inf"), m_i + tl.math.log2(l_safe))
        o_base = O + b.to(tl.int64) * sob + h.to(tl.int64) * soh
        tl.store(o_base + offs_m[:, None] * sos + offs_d[None, :] * sod, out.to(O.dtype.element_ty),
                 mask=row_ok[:, None])
        tl.store(LSE + bh.to(tl.int64) * SL + offs_m, lse, mask=row_ok)

    @triton.jit
    def _head_desc(ptr, b, h, sb, sh, ss, S, HEAD_DIM: tl.constexpr, ROWS: tl.constexpr):
        # TMA descriptor over one (batch, head) slice [S, HEAD_DIM] of a [B, S, H, D] tensor, ROWS-row tiles
        return tl.make_tensor_descriptor(ptr + b.to(tl.int64) * sb + h.to(tl.int64) * sh, shape=[S, HEAD_DIM],
                                         strides=[ss, 1], block_shape=[ROWS, HEAD_DIM])

    @triton.jit
    def _fwd_ws_kernel(
        Q, K, V, O, LSE,
        row_off, row_idx, row_order,
        sqb, sqs, sqh,
        skb, sks, skh,
        svb, svs, svh,
        sob, sos, soh, sod,
        H, S, SL, qk_scale, ZERO,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr,
        MASK_COLS: tl.constexpr, PIPELINE: tl.constexpr,
    ):
        # Forward with Hopper warp specialisation (Triton's automatic WS, num_warps=4): a producer warp
        # group issues the TMA loads of Q/K/V through device-side descriptors, two consumer warp groups
        # take 64 query rows each. The WS pass accepts one plain loop only (no tail split inside the
        # kernel), so the host launches query tiles whose list holds the partial last key tile apart,
        # with MASK_COLS: every tile then masks its key columns (TMA zero-fills rows past S, the mask
        # turns their scores into -inf). The other query tiles run without any mask.
        pid = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        mt = tl.load(row_order + pid)
        start = tl.load(row_off + mt)
        end = tl.load(row_off + mt + 1)
        k_desc = _head_desc(K, b, h, skb, skh, sks, S, HEAD_DIM, BLOCK_N)
        v_desc = _head_desc(V, b, h, svb, svh, svs, S, HEAD_DIM, BLOCK_N)
        q_desc = _head_desc(Q, b, h, sqb, sqh, sqs, S, HEAD_DIM, BLOCK_M)
        # The WS pass gives the second consumer group its 64 rows by rewriting the Q load's row coordinate
        # (+64) in that group, and separately splits tl.arange(0, BLOCK_M). In Triton 3.6 an epilogue
        # that reuses the same mt*BLOCK_M value therefore got +64 twice (rows 64-127 of every tile
        # unwritten, the next tile's rows overwritten). ZERO (a runtime 0) keeps the two values apart.
        q = q_desc.load([mt * BLOCK_M + ZERO, 0])
        offs_m = mt * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < S
        offs_n = tl.arange(0, BLOCK_N)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
        acc = tl.full([BLOCK_M, HEAD_DIM], 0.0, dtype=tl.float32)
        if PIPELINE:
            # Software-pipelined by one tile: iteration j issues QK^T of key tile j and then PV of tile j-1
            # (both asynchronous wgmma), waits for QK^T only, and runs tile j's softmax (exp2 on the SFU)
            # while PV j-1 is on the tensor cores; the plain loop below runs the two strictly in turn.
            # The WS pass accepts no dot before the loop, so the loop runs one extra iteration: it issues
            # PV of the last tile and a QK^T of a clamped tile whose softmax is discarded (`live`); the
            # first iteration's PV adds a zero P. p_prev stays fp32 across iterations: a bf16 carried dot
            # operand makes Triton 3.6's WS pass assert.
            last = tl.maximum(end - 1, start)
            has = end > start
            n_prev = tl.load(row_idx + start, mask=has, other=0) * BLOCK_N
            p_prev = tl.full([BLOCK_M, BLOCK_N], 0.0, dtype=tl.float32)
            for it in tl.range(start, end + 1, warp_specialize=True):
                n0 = tl.load(row_idx + tl.minimum(it, last), mask=has, other=0) * BLOCK_N
                k = k_desc.load([n0, 0])
                qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
                v = v_desc.load([n_prev, 0])
                acc = tl.dot(p_prev.to(v.dtype), v, acc, input_precision=DOT_PREC)
                if MASK_COLS:
                    qk = tl.where((n0 + offs_n)[None, :] < S, qk, float("-inf"))
                live = it < end
                m_new = tl.where(live, tl.maximum(m_i, _row_max(qk, 1) * qk_scale), m_i)
                # the extra iteration: subtracting +inf gives p = 0, and alpha = 1 (no 0 * inf anywhere)
                p = tl.math.exp2(qk * qk_scale - tl.where(live, m_new, float("inf"))[:, None])
                alpha = tl.math.exp2(tl.where(live, m_i - m_new, 0.0))
                l_i = l_i * alpha + _row_sum(p, 1)
                acc = acc * alpha[:, None]
                p_prev = p
                m_i = m_new
                n_prev = n0
        else:
            for it in tl.range(start, end, warp_specialize=True):
                n0 = tl.load(row_idx + it) * BLOCK_N
                k = k_desc.load([n0, 0])
                qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
                if MASK_COLS:
                    qk = tl.where((n0 + offs_n)[None, :] < S, qk, float("-inf"))
                m_new = tl.maximum(m_i, _row_max(qk, 1) * qk_scale)
                p = tl.math.exp2(qk * qk_scale - m_new[:, None])
                alpha = tl.math.exp2(m_i - m_new)
                l_i = l_i * alpha + _row_sum(p, 1)
                acc = acc * alpha[:, None]
                v = v_desc.load([n0, 0])
                acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
                m_i = m_new

        empty = l_i == 0.0
        l_safe = tl.where(empty, 1.0, l_i)
        out = acc / l_safe[:, None]
        lse = tl.where(empty, float("inf"), m_i + tl.math.log2(l_safe))
        o_base = O + b.to(tl.int64) * sob + h.to(tl.int64) * soh
        tl.store(o_base + offs_m[:, None] * sos + offs_d[None, :] * sod, out.to(O.dtype.element_ty),
                 mask=row_ok[:, None])
        tl.store(LSE + bh.to(tl.int64) * SL + offs_m, lse, mask=row_ok)

    @triton.jit
    def _bwd_preprocess(
        O, DO, DELTA,
        sob, sos, soh, sod,
        sdb, sds, sdh, sdd,
        H, S, SL,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
    ):
        pid = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        ok = offs_m < S
        o = tl.load(O + b.to(tl.int64) * sob + h.to(tl.int64) * soh + offs_m[:, None] * sos + offs_d[None, :] * sod,
                    mask=ok[:, None], other=0.0).to(tl.float32)
        do = tl.load(DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh + offs_m[:, None] * sds
                     + offs_d[None, :] * sdd, mask=ok[:, None], other=0.0).to(tl.float32)
        tl.store(DELTA + bh.to(tl.int64) * SL + offs_m, _row_sum(o * do, 1), mask=ok)

    @triton.jit
    def _dkdv_tile(k, v, dk, dv, q_base, do_base, lse_base, delta_base, m0, offs_m, offs_d, sqs, sqd, sds, sdd,
                   S, qk_scale, MASK: tl.constexpr, DOT_PREC: tl.constexpr):
        rows = m0 + offs_m
        qp = q_base + m0.to(tl.int64) * sqs + offs_m[:, None] * sqs + offs_d[None, :] * sqd
        dop = do_base + m0.to(tl.int64) * sds + offs_m[:, None] * sds + offs_d[None, :] * sdd
        if MASK:
            row_ok = rows < S
            q = tl.load(qp, mask=row_ok[:, None], other=0.0)
            lse = tl.load(lse_base + rows, mask=row_ok, other=float("inf"))
        else:
            q = tl.load(qp)
            lse = tl.load(lse_base + rows)
        qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PREC)  # [BN, BM]
        pT = tl.math.exp2(qkT * qk_scale - lse[None, :])
        if MASK:
            do = tl.load(dop, mask=row_ok[:, None], other=0.0)
            delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)
        else:
            do = tl.load(dop)
            delta = tl.load(delta_base + rows)
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PREC)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=DOT_PREC)
        return dk, dv

    @triton.jit
    def _bwd_dkdv_kernel(
        Q, K, V, DO, DK, DV, LSE, DELTA,
        col_off, col_idx, col_order,
        sqb, sqs, sqh, sqd,
        skb, sks, skh, skd,
        svb, svs, svh, svd,
        sdb, sds, sdh, sdd,
        sgb, sgs, sgh, sgd,  # dK and dV share one layout
        H, S, SL, qk_scale, sm_scale,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        EVEN_M: tl.constexpr, DOT_PREC: tl.constexpr,
    ):
        pid = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        nt = tl.load(col_order + pid)
        start = tl.load(col_off + nt)
        end = tl.load(col_off + nt + 1)
        end_full = _split_tail(col_idx, start, end, BLOCK_M, S, EVEN_M)

        offs_n = nt * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        col_ok = offs_n < S

        q_base = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
        do_base = DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh
        k = tl.load(K + b.to(tl.int64) * skb + h.to(tl.int64) * skh + offs_n[:, None] * sks + offs_d[None, :] * skd,
                    mask=col_ok[:, None], other=0.0)
        v = tl.load(V + b.to(tl.int64) * svb + h.to(tl.int64) * svh + offs_n[:, None] * svs + offs_d[None, :] * svd,
                    mask=col_ok[:, None], other=0.0)
        lse_base = LSE + bh.to(tl.int64) * SL
        delta_base = DELTA + bh.to(tl.int64) * SL

        dk = tl.full([BLOCK_N, HEAD_DIM], 0.0, dtype=tl.float32)
        dv = tl.full([BLOCK_N, HEAD_DIM], 0.0, dtype=tl.float32)
        for it in range(start, end_full):
            m0 = tl.load(col_idx + it) * BLOCK_M
            dk, dv = _dkdv_tile(k, v, dk, dv, q_base, do_base, lse_base, delta_base, m0, offs_m, offs_d,
                                sqs, sqd, sds, sdd, S, qk_scale, False, DOT_PREC)
        if not EVEN_M:
            for it in range(end_full, end):
                m0 = tl.load(col_idx + it) * BLOCK_M
                dk, dv = _dkdv_tile(k, v, dk, dv, q_base, do_base, lse_base, delta_base, m0, offs_m, offs_d,
                                    sqs, sqd, sds, sdd, S, qk_scale, True, DOT_PREC)

        dk = dk * sm_scale
        g_off = b.to(tl.int64) * sgb + h.to(tl.int64) * sgh + offs_n[:, None] * sgs + offs_d[None, :] * sgd
        tl.store(DK + g_off, dk.to(DK.dtype.element_ty), mask=col_ok[:, None])
        tl.store(DV + g_off, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])

    @triton.jit
    def _bwd_dkdv_ws_kernel(
        Q, K, V, DO, DK, DV, LSE, DELTA,
        col_off, col_idx, col_order,
        sqb, sqs, sqh,
        skb, sks, skh,
        svb, svs, svh,
        sdb, sds, sdh,
        sgb, sgs, sgh, sgd,
        H, S, SL, qk_scale, sm_scale, ZERO,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr,
        DP_FIRST: tl.constexpr,
    ):
        # _bwd_dkdv_kernel with Hopper warp specialisation (num_warps=4): a producer group loads the
        # Q / dO tiles through device-side TMA descriptors, two consumer groups hold 64 key rows each.
        # Rows past S come back as zeros (TMA) with lse = +inf, so they add nothing: no masks needed.
        pid = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        nt = tl.load(col_order + pid)
        start = tl.load(col_off + nt)
        end = tl.load(col_off + nt + 1)
        q_desc = _head_desc(Q, b, h, sqb, sqh, sqs, S, HEAD_DIM, BLOCK_M)
        do_desc = _head_desc(DO, b, h, sdb, sdh, sds, S, HEAD_DIM, BLOCK_M)
        offs_n = nt * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        col_ok = offs_n < S
        k_desc = _head_desc(K, b, h, skb, skh, sks, S, HEAD_DIM, BLOCK_N)
        v_desc = _head_desc(V, b, h, svb, svh, svs, S, HEAD_DIM, BLOCK_N)
        k = k_desc.load([nt * BLOCK_N + ZERO, 0])  # ZERO: see _fwd_ws_kernel
        v = v_desc.load([nt * BLOCK_N + ZERO, 0])
        lse_base = LSE + bh.to(tl.int64) * SL
        delta_base = DELTA + bh.to(tl.int64) * SL
        dk = tl.full([BLOCK_N, HEAD_DIM], 0.0, dtype=tl.float32)
        dv = tl.full([BLOCK_N, HEAD_DIM], 0.0, dtype=tl.float32)
        for it in tl.range(start, end, warp_specialize=True):
            m0 = tl.load(col_idx + it) * BLOCK_M
            rows = m0 + offs_m
            q = q_desc.load([m0, 0])
            do = do_desc.load([m0, 0])
            lse = tl.load(lse_base + rows, mask=rows < S, other=float("inf"))
            delta = tl.load(delta_base + rows, mask=rows < S, other=0.0)
            qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PREC)
            # DP_FIRST: dP^T's wgmma is issued before the exp2 of P^T, which then runs under it on the SFU
            # (issued after, as in v10, the two run in turn); the values are the same
            if DP_FIRST:
                dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
                pT = tl.math.exp2(qkT * qk_scale - lse[None, :])
                dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PREC)
            else:
                pT = tl.math.exp2(qkT * qk_scale - lse[None, :])
                dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PREC)
                dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
            dsT = pT * (dpT - delta[None, :])
            dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=DOT_PREC)
        dk = dk * sm_scale
        g_off = b.to(tl.int64) * sgb + h.to(tl.int64) * sgh + offs_n[:, None] * sgs + offs_d[None, :] * sgd
        tl.store(DK + g_off, dk.to(DK.dtype.element_ty), mask=col_ok[:, None])
        tl.store(DV + g_off, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])

    @triton.jit
    def _dq_tile(q, do, lse, delta, dq, k_base, v_base, n0, offs_n, offs_d, sks, skd, svs, svd, S, qk_scale,
                 MASK: tl.constexpr, DOT_PREC: tl.constexpr):
        kp = k_base + n0.to(tl.int64) * sks + offs_n[:, None] * sks + offs_d[None, :] * skd
        vp = v_base + n0.to(tl.int64) * svs + offs_n[:, None] * svs + offs_d[None, :] * svd
        if MASK:
            col_ok = (n0 + offs_n) < S
            k = tl.load(kp, mask=col_ok[:, None], other=0.0)
            v = tl.load(vp, mask=col_ok[:, None], other=0.0)
        else:
            k = tl.load(kp)
            v = tl.load(vp)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
        p = tl.math.exp2(qk * qk_scale - lse[:, None])
        if MASK:
            p = tl.where(col_ok[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PREC)
        return dq

    @triton.jit
    def _bwd_dq_kernel(
        Q, K, V, DO, DQ, LSE, DELTA,
        row_off, row_idx, row_order,
        sqb, sqs, sqh, sqd,
        skb, sks, skh, skd,
        svb, svs, svh, svd,
        sdb, sds, sdh, sdd,
        sgb, sgs, sgh, sgd,
        H, S, SL, qk_scale, sm_scale,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        EVEN_N: tl.constexpr, DOT_PREC: tl.constexpr,
    ):
        pid = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        mt = tl.load(row_order + pid)
        start = tl.load(row_off + mt)
        end = tl.load(row_off + mt + 1)
        end_full = _split_tail(row_idx, start, end, BLOCK_N, S, EVEN_N)

        offs_m = mt * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < S

        q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + offs_m[:, None] * sqs + offs_d[None, :] * sqd,
                    mask=row_ok[:, None], other=0.0)
        do = tl.load(DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh + offs_m[:, None] * sds
                     + offs_d[None, :] * sdd, mask=row_ok[:, None], other=0.0)
        lse = tl.load(LSE + bh.to(tl.int64) * SL + offs_m, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + bh.to(tl.int64) * SL + offs_m, mask=row_ok, other=0.0)
        k_base = K + b.to(tl.int64) * skb + h.to(tl.int64) * skh
        v_base = V + b.to(tl.int64) * svb + h.to(tl.int64) * svh

        dq = tl.full([BLOCK_M, HEAD_DIM], 0.0, dtype=tl.float32)
        for it in range(start, end_full):
            n0 = tl.load(row_idx + it) * BLOCK_N
            dq = _dq_tile(q, do, lse, delta, dq, k_base, v_base, n0, offs_n, offs_d, sks, skd, svs, svd, S,
                          qk_scale, False, DOT_PREC)
        if not EVEN_N:
            for it in range(end_full, end):
                n0 = tl.load(row_idx + it) * BLOCK_N
                dq = _dq_tile(q, do, lse, delta, dq, k_base, v_base, n0, offs_n, offs_d, sks, skd, svs, svd, S,
                              qk_scale, True, DOT_PREC)

        dq = dq * sm_scale
        tl.store(DQ + b.to(tl.int64) * sgb + h.to(tl.int64) * sgh + offs_m[:, None] * sgs + offs_d[None, :] * sgd,
                 dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])

    @triton.jit
    def _bwd_dq_ws_kernel(
        Q, K, V, DO, DQ, LSE, DELTA,
        row_off, row_idx, row_order,
        sqb, sqs, sqh,
        skb, sks, skh,
        svb, svs, svh,
        sdb, sds, sdh,
        sgb, sgs, sgh, sgd,
        H, S, SL, qk_scale, sm_scale, ZERO,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr,
        DP_FIRST: tl.constexpr,
    ):
        # _bwd_dq_kernel with Hopper warp specialisation (num_warps=4): a producer group loads K / V
        # tiles through device-side TMA descriptors, two consumer groups hold 64 query rows each.
        # No column mask: TMA zero-fills key rows past S, so their dS columns multiply zero K rows.
        pid = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        mt = tl.load(row_order + pid)
        start = tl.load(row_off + mt)
        end = tl.load(row_off + mt + 1)
        q_desc = _head_desc(Q, b, h, sqb, sqh, sqs, S, HEAD_DIM, BLOCK_M)
        do_desc = _head_desc(DO, b, h, sdb, sdh, sds, S, HEAD_DIM, BLOCK_M)
        k_desc = _head_desc(K, b, h, skb, skh, sks, S, HEAD_DIM, BLOCK_N)
        v_desc = _head_desc(V, b, h, svb, svh, svs, S, HEAD_DIM, BLOCK_N)
        q = q_desc.load([mt * BLOCK_M + ZERO, 0])  # ZERO: see _fwd_ws_kernel
        do = do_desc.load([mt * BLOCK_M + ZERO, 0])
        offs_m = mt * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < S
        # lse / delta through 1-D descriptors too: Triton 3.6's WS pass asserts (WSLowerToken) on pointer
        # loads of them, before or inside the loop. Their rows start 16-byte aligned (SL, _lse_stride).
        # Rows past S read as 0 (TMA zero fill); their Q and dO rows are 0 too, and they are not stored.
        lse_desc = tl.make_tensor_descriptor(LSE + bh.to(tl.int64) * SL, shape=[S], strides=[1],
                                             block_shape=[BLOCK_M])
        delta_desc = tl.make_tensor_descriptor(DELTA + bh.to(tl.int64) * SL, shape=[S], strides=[1],
                                               block_shape=[BLOCK_M])
        lse = lse_desc.load([mt * BLOCK_M + ZERO])
        delta = delta_desc.load([mt * BLOCK_M + ZERO])
        dq = tl.full([BLOCK_M, HEAD_DIM], 0.0, dtype=tl.float32)
        for it in tl.range(start, end, warp_specialize=True):
            n0 = tl.load(row_idx + it) * BLOCK_N
            k = k_desc.load([n0, 0])
            v = v_desc.load([n0, 0])
            qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
            # DP_FIRST: as in _bwd_dkdv_ws_kernel, the exp2 of P under dP's wgmma
            if DP_FIRST:
                dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
                p = tl.math.exp2(qk * qk_scale - lse[:, None])
            else:
                p = tl.math.exp2(qk * qk_scale - lse[:, None])
                dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
            ds = p * (dp - delta[:, None])
            dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PREC)
        dq = dq * sm_scale
        tl.store(DQ + b.to(tl.int64) * sgb + h.to(tl.int64) * sgh + offs_m[:, None] * sgs + offs_d[None, :] * sgd,
                 dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])


def _tiles(cfg: dict, block_size: int) -> tuple[int, int]:
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    if _interpreting():
        bm, bn = min(bm, _INTERP_TILE), min(bn, _INTERP_TILE)
    bm, bn = min(bm, block_size), min(bn, block_size)
    return bm, bn


def _launch_kw(cfg: dict) -> dict:
    return {"num_warps": cfg["num_warps"], "num_stages": cfg.get("num_stages", 2)}


def _dot_prec(dtype: torch.dtype):
    # fp32 inputs: exact fp32 products (tests, interpreter); 16-bit: default.
    return "ieee" if dtype == torch.float32 else None


class _Plan:
    """Everything that depends only on the geometry: the tile lists of each pass, built on first use."""

    def __init__(self, mask, block_size, seq_len, device, key):
        self.block_size = block_size
        self._args = (mask, block_size, seq_len, device, key)
        self._lists = {}
        self.fwd = self.lists("fwd")

    def lists(self, pass_name: str) -> TileLists:
        if pass_name not in self._lists:
            mask, block_size, seq_len, device, key = self._args
            tm, tn = _tiles(CONFIGS[pass_name], block_size)
            self._lists[pass_name] = get_tile_lists(mask, block_size, seq_len, tm, tn, device, key)
        return self._lists[pass_name]


def _new(shape, dtype, device):
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _strides(t: torch.Tensor):
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def _ws_ok(tensors, split_tile: int) -> bool:
    """The warp-specialised kernels need Hopper (or the interpreter) and TMA-compatible operands:
    16-byte aligned bases and row strides (the last stride is 1 already)."""
    q = tensors[0]
    if q.dtype not in (torch.float16, torch.bfloat16) and not _interpreting():
        return False
    if q.shape[-1] not in (64, 128) and not _interpreting():  # the head dims compiled and measured
        return False
    if not _interpreting():
        if not q.is_cuda or torch.cuda.get_device_capability(q.device)[0] != 9:
            return False
        if split_tile != 128:  # the WS pass splits 128 rows over two consumer groups
            return False
    es = q.element_size()
    for t in tensors:
        if t.data_ptr() % 16 or (t.stride(1) * es) % 16 or (t.stride(2) * es) % 16 or (t.stride(0) * es) % 16:
            return False
    return True


def _lse_stride(S: int) -> int:
    # LSE / delta rows start 16-byte aligned (S rounded up to 4 floats): the WS dQ kernel reads them
    # through 1-D TMA descriptors. The padding columns are never read or written.
    return -(-S // 4) * 4


def _ensure_allocator():
    # device-side TMA descriptors need a small global scratch per program (Triton's allocator hook,
    # a context variable: set it where it is still Triton's raising default)
    from triton.runtime import _allocation

    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))


def _output(q, out=None):
    """The forward's output: a new [B, S, H, D] tensor, or the caller's buffer (a view is fine) once checked."""
    o = _new(tuple(q.shape), q.dtype, q.device) if out is None else out
    if o.stride(-1) != 1 or o.shape != q.shape or o.dtype != q.dtype:
        raise ValueError("radial forward: the output buffer must match q's shape and dtype, with unit last stride")
    return o


def _fwd(q, k, v, plan: _Plan, sm_scale: float, out=None):
    B, S, H, D = q.shape
    o = _output(q, out)
    SL = _lse_stride(S)
    lse = _new((B * H, SL), torch.float32, q.device)
    cfg = CONFIGS["fwd"]
    if cfg.get("WS") and _ws_ok((q, k, v), _tiles(CONFIGS["fwd_ws"], plan.block_size)[0]):
        wcfg = CONFIGS["fwd_ws"]
        L = plan.lists("fwd_ws")
        if q.is_cuda:
            _ensure_allocator()
        if wcfg.get("TAIL_SPLIT", True):
            launches = ((L.row_order_no_tail, False), (L.row_order_tail, True))
        else:  # every query tile masks (one launch; kept for A/B in bench/attention.py)
            launches = ((L.row_order, True),)
        for order, mask_cols in launches:
            if order.numel() == 0:
                continue
            _fwd_ws_kernel[(order.numel(), B * H)](
                q, k, v, o, lse,
                L.row_offsets, L.row_indices, order,
                *_strides(q)[:3], *_strides(k)[:3], *_strides(v)[:3], *_strides(o),
                H, S, SL, sm_scale * _LOG2E, 0,
                HEAD_DIM=D, BLOCK_M=L.tile_m, BLOCK_N=L.tile_n, DOT_PREC=_dot_prec(q.dtype), MASK_COLS=mask_cols,
                PIPELINE=bool(wcfg["PIPELINE"]), **_launch_kw(wcfg),
            )
        return o, lse
    tl_ = plan.fwd
    grid = (tl_.n_q_tiles, B * H)
    _fwd_kernel[grid](
        q, k, v, o, lse,
        tl_.row_offsets, tl_.row_indices, tl_.row_order,
        *_strides(q), *_strides(k), *_strides(v), *_strides(o),
        H, S, SL, sm_scale * _LOG2E,
        HEAD_DIM=D, BLOCK_M=tl_.tile_m, BLOCK_N=tl_.tile_n,
        EVEN_N=(S % tl_.tile_n == 0), DOT_PREC=_dot_prec(q.dtype),
        **_launch_kw(cfg),
    )
    return o, lse


def _bwd(do, q, k, v, o, lse, plan: _Plan, sm_scale: float, dlse=None, out=None):
    """dlse (optional, [B, H, S], on the natural-log LSE): with dS = P * (dP - delta) and
    d lse_i / d S_ij = P_ij, a gradient on the LSE only shifts delta to delta - dlse.
    out (optional): (dq, dk, dv) tensors to write into (views of larger buffers are fine; dk and dv
    must share strides)."""
    B, S, H, D = q.shape
    if do.stride(-1) != 1:
        do = do.contiguous()
    SL = lse.shape[1]
    delta = _new((B * H, SL), torch.float32, q.device)
    pre = CONFIGS["bwd_pre"]
    pre_bm = pre["BLOCK_M"]
    _bwd_preprocess[(triton.cdiv(S, pre_bm), B * H)](
        o, do, delta, *_strides(o), *_strides(do), H, S, SL,
        HEAD_DIM=D, BLOCK_M=pre_bm, num_warps=pre["num_warps"],
    )
    if dlse is not None:
        delta[:, :S] -= dlse.reshape(B * H, S).to(torch.float32)
    if out is None:
        dq, dk, dv = (_new((B, S, H, D), t.dtype, q.device) for t in (q, k, v))
    else:
        dq, dk, dv = out
        if dk.stride() != dv.stride() or any(t.stride(-1) != 1 for t in out):
            raise ValueError("radial backward: dk and dv buffers must share strides, with unit last stride")
    prec = _dot_prec(q.dtype)
    if CONFIGS["bwd_dkdv"].get("WS") and _ws_ok((q, k, v, do), _tiles(CONFIGS["bwd_dkdv_ws"], plan.block_size)[1]):
        L = plan.lists("bwd_dkdv_ws")
        if q.is_cuda:
            _ensure_allocator()
        _bwd_dkdv_ws_kernel[(L.n_k_tiles, B * H)](
            q, k, v, do, dk, dv, lse, delta,
            L.col_offsets, L.col_indices, L.col_order,
            *_strides(q)[:3], *_strides(k)[:3], *_strides(v)[:3], *_strides(do)[:3], *_strides(dk),
            H, S, SL, sm_scale * _LOG2E, sm_scale, 0,
            HEAD_DIM=D, BLOCK_M=L.tile_m, BLOCK_N=L.tile_n, DOT_PREC=prec,
            DP_FIRST=bool(CONFIGS["bwd_dkdv_ws"]["DP_FIRST"]), **_launch_kw(CONFIGS["bwd_dkdv_ws"]),
        )
    else:
        L = plan.lists("bwd_dkdv")
        _bwd_dkdv_kernel[(L.n_k_tiles, B * H)](
            q, k, v, do, dk, dv, lse, delta,
            L.col_offsets, L.col_indices, L.col_order,
            *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dk),
            H, S, SL, sm_scale * _LOG2E, sm_scale,
            HEAD_DIM=D, BLOCK_M=L.tile_m, BLOCK_N=L.tile_n,
            EVEN_M=(S % L.tile_m == 0), DOT_PREC=prec,
            **_launch_kw(CONFIGS["bwd_dkdv"]),
        )
    if CONFIGS["bwd_dq"].get("WS") and _ws_ok((q, k, v, do), _tiles(CONFIGS["bwd_dq_ws"], plan.block_size)[0]):
        L = plan.lists("bwd_dq_ws")
        if q.is_cuda:
            _ensure_allocator()
        _bwd_dq_ws_kernel[(L.n_q_tiles, B * H)](
            q, k, v, do, dq, lse, delta,
            L.row_offsets, L.row_indices, L.row_order,
            *_strides(q)[:3], *_strides(k)[:3], *_strides(v)[:3], *_strides(do)[:3], *_strides(dq),
            H, S, SL, sm_scale * _LOG2E, sm_scale, 0,
            HEAD_DIM=D, BLOCK_M=L.tile_m, BLOCK_N=L.tile_n, DOT_PREC=prec,
            DP_FIRST=bool(CONFIGS["bwd_dq_ws"]["DP_FIRST"]), **_launch_kw(CONFIGS["bwd_dq_ws"]),
        )
        return dq, dk, dv
    L = plan.lists("bwd_dq")
    _bwd_dq_kernel[(L.n_q_tiles, B * H)](
        q, k, v, do, dq, lse, delta,
        L.row_offsets, L.row_indices, L.row_order,
        *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dq),
        H, S, SL, sm_scale * _LOG2E, sm_scale,
        HEAD_DIM=D, BLOCK_M=L.tile_m, BLOCK_N=L.tile_n,
        EVEN_N=(S % L.tile_n == 0), DOT_PREC=prec,
        **_launch_kw(CONFIGS["bwd_dq"]),
    )
    return dq, dk, dv


class _RadialAttnFn(torch.autograd.Function):
    """The kernel with autograd; `with_lse` also returns the row LSE (natural log) with a gradient (see _bwd)."""

    @staticmethod
    def forward(ctx, q, k, v, plan, sm_scale, with_lse):
        o, lse2 = _fwd(q, k, v, plan, sm_scale)
        ctx.save_for_backward(q, k, v, o, lse2)
        ctx.plan, ctx.sm_scale, ctx.with_lse = plan, sm_scale, with_lse
        if not with_lse:
            return o
        ctx.set_materialize_grads(False)  # a caller may use only one of the two outputs
        B, S, H, _ = q.shape
        # the kernels keep log2 of the scaled scores' exp-sum: ln = log2 * ln 2
        return o, lse2[:, :S].reshape(B, H, S) * _LN2

    @staticmethod
    def backward(ctx, do, dlse=None):
        q, k, v, o, lse2 = ctx.saved_tensors
        if do is None and dlse is None:
            return None, None, None, None, None, None
        if do is None:
            do = torch.zeros_like(o)
        dq, dk, dv = _bwd(do, q, k, v, o, lse2, ctx.plan, ctx.sm_scale, dlse)
        return dq, dk, dv, None, None, None


_SUPPORTED_D = (16, 32, 64, 128)


def _prepare(q, k, v, block_mask, block_size, sm_scale, cache_key):
    """Checked inputs (unit last stride), the geometry plan and the scale, for both entry points."""
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must all be [B, S, H, D] of one shape, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"unsupported dtype {q.dtype}; use float16, bfloat16 or float32")
    ok, why = triton_usable(q.device)
    if not ok:
        raise RuntimeError(why)
    B, S, H, D = q.shape
    if D not in _SUPPORTED_D:
        raise ValueError(f"head dim {D} not supported by the triton kernel; use one of {_SUPPORTED_D}")
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(D)
    # Keep the caller's strides; only a non-unit last stride forces a copy.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    plan = _Plan(block_mask, block_size, S, q.device, cache_key)
    return q, k, v, plan, float(sm_scale)


def radial_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    block_size: int,
    *,
    sm_scale: float | None = None,
    cache_key=None,
) -> torch.Tensor:
    """Block-sparse attention, ``[B, S, H, D]`` in and out, with autograd.

    ``block_mask``: bool ``(n, n)``, ``n = ceil(S / block_size)``. ``cache_key``
    (hashable geometry description) caches the tile lists; without it they are
    rebuilt on every call (fine for tests, not for a sampler loop).
    """
    q, k, v, plan, sm_scale = _prepare(q, k, v, block_mask, block_size, sm_scale, cache_key)
    return _RadialAttnFn.apply(q, k, v, plan, sm_scale, False)


def radial_attention_triton_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    block_size: int,
    *,
    sm_scale: float | None = None,
    cache_key=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``radial_attention_triton`` that also returns the row log-sum-exp of the scaled scores,
    ``[B, H, S]`` float32 (natural log), differentiable: what an exact merge with another attention
    over other keys needs (``engine.attention.joint``)."""
    q, k, v, plan, sm_scale = _prepare(q, k, v, block_mask, block_size, sm_scale, cache_key)
    return _RadialAttnFn.apply(q, k, v, plan, sm_scale, True)


class RadialKernelPart:
    """The kernel as one part of a larger attention that the caller merges and differentiates itself.

    `forward` gives (o, natural-log lse [B, H, S]) without autograd; `backward` takes the *merged*
    output and LSE of the whole attention and writes this part's exact gradient share into the given
    dq, dk, dv (the kernels' dS = P * (dP - delta) with P and delta of the whole attention)."""

    def __init__(self, block_mask: torch.Tensor, block_size: int, *, cache_key=None):
        self.block_mask, self.block_size, self.cache_key = block_mask, block_size, cache_key

    def forward(self, q, k, v, out=None):
        """`out` (optional): a [B, S, H, D] tensor (a view is fine) the output is written into."""
        q, k, v, plan, scale = _prepare(q, k, v, self.block_mask, self.block_size, None, self.cache_key)
        o, lse2 = _fwd(q, k, v, plan, scale, out)
        B, S, H, _ = q.shape
        return o, lse2[:, :S].reshape(B, H, S) * _LN2

    def backward(self, do, q, k, v, o, lse, dq, dk, dv):
        q, k, v, plan, scale = _prepare(q, k, v, self.block_mask, self.block_size, None, self.cache_key)
        B, S, H, _ = q.shape
        lse2 = torch.empty(B * H, _lse_stride(S), dtype=torch.float32, device=q.device)
        lse2[:, :S] = lse.reshape(B * H, S) * _LOG2E
        _bwd(do, q, k, v, o, lse2, plan, scale, out=(dq, dk, dv))
