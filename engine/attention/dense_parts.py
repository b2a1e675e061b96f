"""The dense parts of joint video+text attention, on fused attention kernels, each with its log-sum-exp.

Joint attention (`engine.attention.joint`) splits ``[video | text]`` into radial video->video and three dense
parts: video rows over the valid text keys, text rows over the video keys, text rows over the valid text keys.
Each part is plain attention over a key set with no mask: the padded text keys are dropped (gathered out)
instead of masked, so no kernel ever sees a mask. The parts are merged with the radial part by their LSEs.

Kernels: on CUDA (fp16 / bf16, head dim <= 256) PyTorch's flash attention operator, which returns the LSE
and whose backward takes the output and LSE it is given; on a CPU PyTorch's CPU flash operator, the same
contract. The backward of a part is given the *merged* output and LSE, so it returns exactly that part's
share of the gradient (as ring attention does). Elsewhere (float32 on CUDA, other head dims), or with `FUSED`
off, the parts run in `chunked` float32 PyTorch with the text keys masked: the path before these kernels,
kept as the fallback and for the A/B (`bench/joint_text_parts.py`).

Why it matters: HunyuanVideo 1.5 has ~2,000 text tokens. In float32 chunks its text parts outweighed the
radial kernel's savings at 121 frames (docs/BENCHMARKS.md, run 30: forward 0.75x dense).
"""

from __future__ import annotations

import torch

from .chunked import _merge, _spans, attention_backward, attention_forward, key_mask_fn

FUSED = True  # False: every part in chunked float32 (tests and the bench A/B set it)


def fused_available(q: torch.Tensor) -> bool:
    """Whether the fused kernels take q's device, dtype and head dim."""
    if not FUSED:
        return False
    if q.device.type == "cuda":
        return q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256 and q.shape[-1] % 8 == 0
    return q.device.type == "cpu"


def attention_lse(q, k, v):
    """Unmasked attention on [B, S, H, D] -> (out [B, Sq, H, D], lse [B, H, Sq] float32, natural log)."""
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    with torch.no_grad():
        if q.device.type == "cuda":
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention(qt, kt, vt, 0.0, False, False)[:2]
        else:
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qt, kt, vt, 0.0, False)
    return out.transpose(1, 2), lse


def attention_lse_backward(do, q, k, v, out, lse):
    """(dq, dk, dv) of one part, given the merged `out` [B, Sq, H, D] and `lse` [B, H, Sq] of its rows."""
    dot, qt, kt, vt, ot = (t.transpose(1, 2) for t in (do, q, k, v, out))
    lse = lse.contiguous()
    with torch.no_grad():
        if q.device.type == "cuda":
            # dropout 0: the random state is never read; placeholders of the forward's shapes
            rng = torch.empty(2, dtype=torch.uint64, device=q.device)
            unused = torch.empty((), dtype=torch.uint64, device=q.device)
            grads = torch.ops.aten._scaled_dot_product_flash_attention_backward(
                dot, qt, kt, vt, ot, lse, None, None, q.shape[1], k.shape[1], 0.0, False, rng, unused)
        else:
            grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                dot, qt, kt, vt, ot, lse, 0.0, False)
    return tuple(g.transpose(1, 2) for g in grads)


def merge_into(out, lse, o_b, lse_b) -> None:
    """Merge part b (out [B, S, H, D], lse [B, H, S]) into (out, lse) in place, in row chunks (float32 bounded)."""
    B, S, H, D = out.shape
    for c in _spans(S, B * H * D):
        o, l = _merge(out[:, c].float(), lse[:, :, c], o_b[:, c].float(), lse_b[:, :, c])
        out[:, c] = o.to(out.dtype)
        lse[:, :, c] = l


# Rows (or keys) of one fused call over the long video side: bounds its gradient temporaries (flash's float32
# dq accumulator, the video keys' dk and dv) to a few hundred MiB at 2048-wide attention.
SPAN_ELEMS = 1 << 26


def _long_spans(total: int, q) -> list[slice]:
    step = max(1, SPAN_ELEMS // max(1, q.shape[0] * q.shape[2] * q.shape[3]))
    return [slice(i, min(total, i + step)) for i in range(0, total, step)]


def _groups(key_mask, batch: int):
    """(batch slice, valid text key indices or None for all) per group of rows sharing their text keys."""
    if key_mask is None:
        return [(slice(0, batch), None)]
    return [(slice(b, b + 1), key_mask[b].nonzero().flatten()) for b in range(batch)]


def _text_keys(t, sl, nv, idx):
    return t[sl, nv:] if idx is None else t[sl, nv:].index_select(1, idx)


def text_parts_forward(q, k, v, key_mask, nv: int, out, lse_radial):
    """Add the dense parts to `out` (video rows hold the radial part, `lse_radial` its LSE; text rows are
    written). Returns (the video rows' merged LSE, the text rows' LSE)."""
    if not fused_available(q):
        return _chunked_forward(q, k, v, key_mask, nv, out, lse_radial)
    lse_video, lse_text = lse_radial, torch.empty(q.shape[0], q.shape[2], q.shape[1] - nv, dtype=torch.float32,
                                                  device=q.device)
    for sl, idx in _groups(key_mask, q.shape[0]):
        kt, vt = _text_keys(k, sl, nv, idx), _text_keys(v, sl, nv, idx)
        o_t, l_t = attention_lse(q[sl, nv:], k[sl, :nv], v[sl, :nv])  # text rows over the video keys
        out[sl, nv:] = o_t
        lse_text[sl] = l_t
        if kt.shape[1]:
            for c in _long_spans(nv, q):  # video rows in spans: bounded temporaries
                rows = slice(c.start, c.stop)
                merge_into(out[sl, rows], lse_video[sl, :, rows], *attention_lse(q[sl, rows], kt, vt))
            merge_into(out[sl, nv:], lse_text[sl], *attention_lse(q[sl, nv:], kt, vt))
    return lse_video, lse_text


def text_parts_backward(do, q, k, v, out, lse_video, lse_text, key_mask, nv: int, dq, dk, dv) -> None:
    """Add the dense parts' gradient shares: dq's video rows and dk, dv's video keys hold the radial part's;
    dq's text rows and dk, dv's text keys are written here (padded keys get 0)."""
    if not fused_available(q):
        return _chunked_backward(do, q, k, v, out, lse_video, lse_text, key_mask, nv, dq, dk, dv)
    dk[:, nv:] = 0
    dv[:, nv:] = 0
    for sl, idx in _groups(key_mask, q.shape[0]):
        kt, vt = _text_keys(k, sl, nv, idx), _text_keys(v, sl, nv, idx)
        text = (do[sl, nv:], q[sl, nv:])
        dq_t = torch.zeros_like(q[sl, nv:], dtype=torch.float32)
        for c in _long_spans(nv, q):  # video keys in spans: their dk, dv temporaries stay bounded
            keys = slice(c.start, c.stop)
            dq_c, dk_c, dv_c = attention_lse_backward(*text, k[sl, keys], v[sl, keys], out[sl, nv:], lse_text[sl])
            dq_t += dq_c
            dk[sl, keys] += dk_c
            dv[sl, keys] += dv_c
            del dq_c, dk_c, dv_c
        if kt.shape[1]:
            dk_t = torch.zeros_like(kt, dtype=torch.float32)
            dv_t = torch.zeros_like(vt, dtype=torch.float32)
            for c in _long_spans(nv, q):  # video rows in spans
                rows = slice(c.start, c.stop)
                dq_c, dk_c, dv_c = attention_lse_backward(do[sl, rows], q[sl, rows], kt, vt, out[sl, rows],
                                                          lse_video[sl, :, rows])
                dq[sl, rows] += dq_c
                dk_t += dk_c
                dv_t += dv_c
                del dq_c, dk_c, dv_c
            dq_c, dk_c, dv_c = attention_lse_backward(*text, kt, vt, out[sl, nv:], lse_text[sl])
            dq_t += dq_c
            dk_t, dv_t = (dk_t + dk_c).to(dk.dtype), (dv_t + dv_c).to(dv.dtype)
            if idx is None:
                dk[sl, nv:], dv[sl, nv:] = dk_t, dv_t
            else:
                dk[sl, nv:].index_copy_(1, idx, dk_t)
                dv[sl, nv:].index_copy_(1, idx, dv_t)
        dq[sl, nv:] = dq_t.to(dq.dtype)


def key_mask_full(num_video: int, key_mask, batch: int, num_text: int, device):
    """The valid keys of the whole [video | text] sequence, [B, N] bool: every video key, `key_mask`'s text keys."""
    text = torch.ones(batch, num_text, dtype=torch.bool, device=device) if key_mask is None else key_mask.bool()
    return torch.cat([torch.ones(batch, num_video, dtype=torch.bool, device=device), text.to(device)], dim=1)


def _full_key_mask(key_mask, q, nv):
    return key_mask_fn(key_mask_full(nv, key_mask, q.shape[0], q.shape[1] - nv, q.device))


def _chunked_forward(q, k, v, key_mask, nv, out, lse_radial):
    _, lse_video = attention_forward(q[:, :nv], k[:, nv:], v[:, nv:], key_mask_fn(key_mask),
                                     merge_into=(out[:, :nv], lse_radial))
    out[:, nv:], lse_text = attention_forward(q[:, nv:], k, v, _full_key_mask(key_mask, q, nv))
    return lse_video, lse_text


def _chunked_backward(do, q, k, v, out, lse_video, lse_text, key_mask, nv, dq, dk, dv):
    dk[:, nv:] = 0
    dv[:, nv:] = 0
    video = slice(0, nv)
    attention_backward(do[:, video], q[:, video], k[:, nv:], v[:, nv:], out[:, video], lse_video,
                       key_mask_fn(key_mask), dq[:, video], dk[:, nv:], dv[:, nv:])
    dq[:, nv:] = 0
    attention_backward(do[:, nv:], q[:, nv:], k, v, out[:, nv:], lse_text, _full_key_mask(key_mask, q, nv),
                       dq[:, nv:], dk, dv)
