"""Masked softmax attention in float32 PyTorch, in chunks, with a backward that takes the LSE it is given.

For the small dense parts of joint video+text attention (video queries over a few text keys, a few
text queries over every key) and for the PyTorch reference of the radial part. Layout ``[B, S, H, D]``,
scale ``1/sqrt(D)``, natural-log LSE ``[B, H, Sq]``.

`attention_backward` is the flash-attention backward written out: with P = exp(scores - lse) and
delta = rowsum(dO * O), dS = P * (dO V^T - delta). Given the *merged* output and LSE of an attention
over several disjoint key sets, it returns exactly that key set's share of the gradient (as ring
attention does), so a merge needs no gradient through the LSEs and keeps no float32 copies alive.

Chunks run along the longer of the two sequences, so every float32 temporary stays below
`CHUNK_ELEMS` elements; the other side's gradients accumulate in float32 (that side is short).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

# Elements of one chunk's score matrix (bounds the float32 temporaries: a few times 64 MiB).
CHUNK_ELEMS = 1 << 24


@contextmanager
def _tf32(device):
    """TF32 tensor-core matmuls for the float32 chunks on CUDA. Exact for the scores (bf16/fp16 inputs have at
    most 10 mantissa bits); P and dS round to 10 bits, finer than the bf16 P of flash-style dense kernels."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _spans(total: int, per: int) -> list[slice]:
    step = max(1, CHUNK_ELEMS // max(1, per))
    return [slice(i, min(total, i + step)) for i in range(0, total, step)]


def _masked(scores, mask, qs: slice, ks: slice):
    """`mask(qs, ks)` -> bool broadcastable to [B, H, q, k] (True: attend), or None for no mask."""
    m = None if mask is None else mask(qs, ks)
    return scores if m is None else scores.masked_fill(~m, float("-inf"))


def _probs(scores, lse):
    # rows with no valid key have lse = -inf: their probabilities are 0 (not NaN)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    return torch.exp(scores - safe[..., None])


def key_mask_fn(key_mask):
    """A key-padding mask [B, Sk] (bool, True: attend) as the `mask` callable, or None."""
    if key_mask is None:
        return None
    km = key_mask.bool()
    return lambda qs, ks: km[:, None, None, ks]


def token_mask_fn(token_mask):
    """A token mask [Sq, Sk] (bool) as the `mask` callable."""
    return lambda qs, ks: token_mask[qs, ks]


def attention_forward(q, k, v, mask=None, *, merge_into=None):
    """(out [B, Sq, H, D] in q's dtype, lse [B, H, Sq] float32) without autograd, in query chunks.

    `merge_into=(out, lse)`: the same queries' attention over other, disjoint keys. This attention is
    then merged into that `out` in place, chunk by chunk (``e^(lse_a - lse) out_a + e^(lse_b - lse) out_b``,
    float32), and the result is (that out, the merged lse): no second output is ever materialised."""
    B, Sq, H, D = q.shape
    scale = 1.0 / math.sqrt(D)
    if merge_into is None:
        out, other_lse = torch.empty_like(q), None
    else:
        out, other_lse = merge_into
    if Sq < k.shape[1]:  # few queries over many keys (text rows): key chunks, merged online
        return _forward_key_chunks(q, k, v, mask, out, other_lse, scale)
    lse = torch.empty(B, H, Sq, dtype=torch.float32, device=q.device)
    kf, vf, all_k = k.float(), v.float(), slice(0, k.shape[1])
    with torch.no_grad(), _tf32(q.device):
        for c in _spans(Sq, B * H * max(k.shape[1], D)):
            s = _masked(torch.einsum("bqhd,bkhd->bhqk", q[:, c].float(), kf) * scale, mask, c, all_k)
            lse_c = torch.logsumexp(s, dim=-1)
            o_c = torch.einsum("bhqk,bkhd->bqhd", _probs(s, lse_c), vf)
            if other_lse is not None:  # merge: weights of the two parts per row
                o_c, lse_c = _merge(out[:, c].float(), other_lse[:, :, c], o_c, lse_c)
            out[:, c] = o_c.to(out.dtype)
            lse[:, :, c] = lse_c
    return out, lse


def _merge(o_a, lse_a, o_b, lse_b):
    """Float32 outputs [B, q, H, D] and LSEs [B, H, q] of two disjoint key sets -> those of their union."""
    lse = torch.logaddexp(lse_a, lse_b)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    w_a = torch.exp(lse_a - safe).transpose(1, 2)[..., None]
    w_b = torch.exp(lse_b - safe).transpose(1, 2)[..., None]
    return w_a * o_a + w_b * o_b, lse


def _forward_key_chunks(q, k, v, mask, out, other_lse, scale):
    # only a chunk of the keys is ever in float32 (the text rows' keys are the whole sequence)
    B, Sq, H, D = q.shape
    qf, all_q = q.float(), slice(0, Sq)
    if other_lse is None:
        acc = torch.zeros(B, Sq, H, D, dtype=torch.float32, device=q.device)
        lse = torch.full((B, H, Sq), float("-inf"), dtype=torch.float32, device=q.device)
    else:
        acc, lse = out.float(), other_lse.clone()
    with torch.no_grad(), _tf32(q.device):
        for c in _spans(k.shape[1], B * H * Sq):
            s = _masked(torch.einsum("bqhd,bkhd->bhqk", qf, k[:, c].float()) * scale, mask, all_q, c)
            lse_c = torch.logsumexp(s, dim=-1)
            o_c = torch.einsum("bhqk,bkhd->bqhd", _probs(s, lse_c), v[:, c].float())
            acc, lse = _merge(acc, lse, o_c, lse_c)
        out.copy_(acc.to(out.dtype))
    return out, lse


def attention_backward(do, q, k, v, out, lse, mask, dq, dk, dv):
    """Add this key set's gradient share into dq, dk, dv (any dtype, q/k/v's shapes).

    `out` and `lse` are those of the whole (merged) attention the rows belong to."""
    B, Sq, H, D = q.shape
    Sk = k.shape[1]
    scale = 1.0 / math.sqrt(D)
    with torch.no_grad(), _tf32(q.device):
        if Sq >= Sk:  # chunks of queries; dk, dv accumulate
            dk_acc = torch.zeros(dk.shape, dtype=torch.float32, device=q.device)
            dv_acc = torch.zeros_like(dk_acc)
            kf, vf, all_k = k.float(), v.float(), slice(0, Sk)
            for c in _spans(Sq, B * H * Sk):
                qc, doc = q[:, c].float(), do[:, c].float()
                delta_c = torch.einsum("bqhd,bqhd->bhq", doc, out[:, c].float())  # rowsum(dO * O)
                p = _probs(_masked(torch.einsum("bqhd,bkhd->bhqk", qc, kf) * scale, mask, c, all_k), lse[:, :, c])
                dv_acc += torch.einsum("bhqk,bqhd->bkhd", p, doc)
                ds = p * (torch.einsum("bqhd,bkhd->bhqk", doc, vf) - delta_c[..., None])
                dq[:, c] += (torch.einsum("bhqk,bkhd->bqhd", ds, kf) * scale).to(dq.dtype)
                dk_acc += torch.einsum("bhqk,bqhd->bkhd", ds, qc) * scale
            dk += dk_acc.to(dk.dtype)
            dv += dv_acc.to(dv.dtype)
        else:  # chunks of keys; dq accumulates
            dq_acc = torch.zeros(dq.shape, dtype=torch.float32, device=q.device)
            qf, dof, all_q = q.float(), do.float(), slice(0, Sq)
            delta = torch.einsum("bqhd,bqhd->bhq", dof, out.float())  # few rows
            for c in _spans(Sk, B * H * Sq):
                kc, vc = k[:, c].float(), v[:, c].float()
                p = _probs(_masked(torch.einsum("bqhd,bkhd->bhqk", qf, kc) * scale, mask, all_q, c), lse)
                dv[:, c] += torch.einsum("bhqk,bqhd->bkhd", p, dof).to(dv.dtype)
                ds = p * (torch.einsum("bqhd,bkhd->bhqk", dof, vc) - delta[..., None])
                dq_acc += torch.einsum("bhqk,bkhd->bqhd", ds, kc) * scale
                dk[:, c] += (torch.einsum("bhqk,bqhd->bkhd", ds, qf) * scale).to(dk.dtype)
            dq += dq_acc.to(dq.dtype)
