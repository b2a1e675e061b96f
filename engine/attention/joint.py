"""Joint attention over video tokens then text tokens, with radial attention among the video tokens.

MMDiT-style models (HunyuanVideo's double- and single-stream blocks) attend over one sequence
``[video (num_video tokens, frame-major) | text (L tokens)]``. Radial attention replaces only the
video->video part; the rest stays dense:

* video queries: radial over video keys (``sink=False`` for these models) and dense over the valid
  text keys;
* text queries (padded ones included, as the stock model computes them): dense over every valid key;
* padded text keys (``key_mask`` False) are never attended.

The video rows are computed exactly as two attentions merged by their log-sum-exps:
``out = e^(lse_a - lse) out_a + e^(lse_b - lse) out_b`` with ``lse = logaddexp(lse_a, lse_b)``, where
(a) is radial video->video (``backends.radial_attention_lse``: the Triton kernel's LSE, with its
gradient) and (b) dense video->text (``_TextAttention``: queries in chunks over the short key set).
Autograd carries the gradient through both LSEs, so the merge trains exactly.
`joint_attention_reference` is the same attention as one masked SDPA over the whole sequence (memory
grows as N^2: for tests).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from . import backends

# Elements of one chunk's score matrix in the text attention (bounds its float32 temporaries).
_TEXT_CHUNK_ELEMS = 1 << 26


def _scores(q, k, key_mask, scale):
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return s


def _probs(s, lse):
    # rows with no valid key have lse = -inf: their probabilities are 0 (not NaN)
    return torch.exp(s - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)[..., None])


def _chunks(q, k):
    B, Sq, H, _ = q.shape
    step = max(1, _TEXT_CHUNK_ELEMS // max(1, B * H * k.shape[1]))
    return [slice(i, min(Sq, i + step)) for i in range(0, Sq, step)]


class _TextAttention(torch.autograd.Function):
    """Dense attention of many queries over a few masked keys, with the row LSE as a second output.

    Flash-attention style in PyTorch: only q, k, v, out and lse are kept; backward recomputes the
    probabilities per chunk, with delta = rowsum(dO * O) - dlse (the LSE's gradient)."""

    @staticmethod
    def forward(ctx, q, k, v, key_mask, scale):
        B, Sq, H, _ = q.shape
        out = torch.empty_like(q)
        lse = torch.empty(B, H, Sq, dtype=torch.float32, device=q.device)
        for c in _chunks(q, k):
            s = _scores(q[:, c], k, key_mask, scale)
            lse[:, :, c] = torch.logsumexp(s, dim=-1)
            out[:, c] = torch.einsum("bhqk,bkhd->bqhd", _probs(s, lse[:, :, c]), v.float()).to(q.dtype)
        ctx.save_for_backward(q, k, v, key_mask, out, lse)
        ctx.scale = scale
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, key_mask, out, lse = ctx.saved_tensors
        scale = ctx.scale
        dq = torch.zeros_like(q, dtype=torch.float32)
        dk = torch.zeros_like(k, dtype=torch.float32)
        dv = torch.zeros_like(v, dtype=torch.float32)
        kf, vf = k.float(), v.float()
        for c in _chunks(q, k):
            qc = q[:, c].float()
            p = _probs(_scores(qc, kf, key_mask, scale), lse[:, :, c])
            delta = torch.zeros_like(lse[:, :, c])
            ds = torch.zeros_like(p)
            if dout is not None:
                do = dout[:, c].float()
                dv += torch.einsum("bhqk,bqhd->bkhd", p, do)
                delta = (do * out[:, c].float()).sum(-1).transpose(1, 2)
                ds = torch.einsum("bqhd,bkhd->bhqk", do, vf)
            if dlse is not None:
                delta = delta - dlse[:, :, c]
            ds = p * (ds - delta[..., None])
            dq[:, c] = torch.einsum("bhqk,bkhd->bqhd", ds, kf) * scale
            dk += torch.einsum("bhqk,bqhd->bkhd", ds, qc) * scale
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None


def text_attention_lse(q, k, v, key_mask=None):
    """(out [B, Sq, H, D], lse [B, H, Sq] float32) of queries `q` over keys `k` [B, L, H, D] where
    `key_mask` [B, L] (bool, or None: all) is True. Rows without a valid key: out 0, lse -inf."""
    if key_mask is not None:
        key_mask = key_mask.to(device=q.device, dtype=torch.bool)
    return _TextAttention.apply(q, k, v, key_mask, 1.0 / math.sqrt(q.shape[-1]))


def merge_attention(out_a, lse_a, out_b, lse_b):
    """Two attentions of the same queries over disjoint key sets -> the attention over their union."""
    lse = torch.logaddexp(lse_a, lse_b)
    wa = torch.exp(lse_a - lse).transpose(1, 2)[..., None]  # [B, S, H, 1]
    wb = torch.exp(lse_b - lse).transpose(1, 2)[..., None]
    return (wa * out_a.float() + wb * out_b.float()).to(out_a.dtype)


def _key_mask_full(num_video: int, key_mask, batch: int, num_text: int, device):
    text = torch.ones(batch, num_text, dtype=torch.bool, device=device) if key_mask is None else key_mask.bool()
    return torch.cat([torch.ones(batch, num_video, dtype=torch.bool, device=device), text.to(device)], dim=1)


def joint_attention(q, k, v, *, num_video: int, key_mask=None, num_frames: int, tokens_per_frame: int,
                    decay_factor: float = 1.0, block_size: int = 128, sink: bool = False,
                    backend: str | None = None) -> torch.Tensor:
    """Radial video->video, dense elsewhere, on [B, N, H, D] with N = num_video + L (video first).

    `key_mask` [B, L]: the valid text keys (None: all). `backend` as `backends.radial_attention_lse`.
    """
    B, N = q.shape[:2]
    L = N - num_video
    if L < 0 or num_video != num_frames * tokens_per_frame:
        raise ValueError(f"joint attention: {N} tokens cannot hold num_video={num_video} video tokens "
                         f"(num_frames*tokens_per_frame = {num_frames}*{tokens_per_frame}) followed by text")
    if key_mask is not None and tuple(key_mask.shape) != (B, L):
        raise ValueError(f"joint attention: key_mask has shape {tuple(key_mask.shape)}, expected {(B, L)}")
    qv, kv, vv = q[:, :num_video], k[:, :num_video], v[:, :num_video]
    out_a, lse_a = backends.radial_attention_lse(qv, kv, vv, num_frames=num_frames, tokens_per_frame=tokens_per_frame,
                                                 decay_factor=decay_factor, block_size=block_size, sink=sink,
                                                 backend=backend)
    if L == 0:
        return out_a
    out_b, lse_b = text_attention_lse(qv, k[:, num_video:], v[:, num_video:], key_mask)
    video = merge_attention(out_a, lse_a, out_b, lse_b)
    keys = _key_mask_full(num_video, key_mask, B, L, q.device)[:, None, None, :]
    text = F.scaled_dot_product_attention(q[:, num_video:].transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          attn_mask=keys).transpose(1, 2)
    return torch.cat([video, text], dim=1)


def joint_token_mask(num_video: int, key_mask, num_text: int, *, num_frames: int, tokens_per_frame: int,
                     decay_factor: float = 1.0, block_size: int = 128, sink: bool = False, batch: int = 1,
                     device="cpu") -> torch.Tensor:
    """The whole attention pattern as a bool mask [B, 1, N, N] (True: attend)."""
    radial = backends._token_mask(backends._geometry(num_frames, tokens_per_frame, block_size, decay_factor, sink),
                                  str(torch.device(device)))
    keys = _key_mask_full(num_video, key_mask, batch, num_text, device)  # [B, N]
    mask = keys[:, None, :].repeat(1, num_video + num_text, 1)
    mask[:, :num_video, :num_video] = radial
    return mask[:, None]


def joint_attention_reference(q, k, v, *, num_video: int, key_mask=None, num_frames: int, tokens_per_frame: int,
                              decay_factor: float = 1.0, block_size: int = 128, sink: bool = False) -> torch.Tensor:
    """`joint_attention` as one masked SDPA (the pattern spelled out token by token)."""
    B, N = q.shape[:2]
    mask = joint_token_mask(num_video, key_mask, N - num_video, num_frames=num_frames,
                            tokens_per_frame=tokens_per_frame, decay_factor=decay_factor, block_size=block_size,
                            sink=sink, batch=B, device=q.device)
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          attn_mask=mask).transpose(1, 2)


def attend_joint(schedule, layer_index: int, query, key, value, attention_mask, num_text: int):
    """What a joint-attention processor calls with q, k, v [B, N, H, D] (text last, `num_text` tokens) and the
    model's key mask (bool, broadcastable to [B, 1, 1, N], or None): radial when the schedule says so, else
    the dense attention stock diffusers runs."""
    from .processor import dense_attention

    if schedule.cp is not None:
        raise ConfigError("context parallelism (setting 'context_parallel') does not cover joint video+text "
                          "attention yet; set context_parallel to 1 for this model.")
    if not schedule.use_radial(layer_index):
        return dense_attention(query, key, value, attention_mask, schedule.settings.dense_backend)
    num_video = query.shape[1] - num_text
    key_mask = None
    if attention_mask is not None:
        if attention_mask.dtype != torch.bool:
            raise ValueError("joint attention takes a boolean key mask (True: attend)")
        key_mask = attention_mask.reshape(attention_mask.shape[0], -1)[:, num_video:].expand(query.shape[0], -1)
    s = schedule.settings
    return joint_attention(query, key, value, num_video=num_video, key_mask=key_mask, num_frames=schedule.num_frames,
                           tokens_per_frame=schedule.tokens_per_frame, decay_factor=s.decay_factor,
                           block_size=s.block_size, sink=s.sink, backend=s.backend)
