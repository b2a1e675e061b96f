"""Joint attention over video tokens then text tokens, with radial attention among the video tokens.

MMDiT-style models (HunyuanVideo's double- and single-stream blocks) attend over one sequence
``[video (num_video tokens, frame-major) | text (L tokens)]``. Radial attention replaces only the
video->video part; the rest stays dense:

* video queries: radial over video keys (``sink=False`` for these models) and dense over the valid
  text keys;
* text queries (padded ones included, as the stock model computes them): dense over every valid key;
* padded text keys (``key_mask`` False) are never attended.

The video rows are two attentions merged exactly by their log-sum-exps:
``out = e^(lse_a - lse) out_a + e^(lse_b - lse) out_b`` with ``lse = logaddexp(lse_a, lse_b)``, where
(a) is radial video->video (`backends.radial_part`: the Triton kernel) and (b) dense video->text
(`dense_parts`: a fused flash kernel over the valid text keys, or float32 PyTorch chunks where that kernel
does not apply). The whole sequence is one operator with its own
backward (`radial_op.joint`, which torch.compile keeps in the block graph): it keeps only q, k, v, the
output and the rows' merged LSEs, and its backward gives
each part the merged output and LSE (as ring attention does), so no gradient flows through an LSE and no
float32 copy of a part's output is kept. Its peak memory is that of dense attention plus bounded chunks.
`joint_attention_reference` is the same attention as one masked SDPA over the whole sequence (memory
grows as N^2: for tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from . import backends, radial_op
from .dense_parts import key_mask_full


def joint_attention(q, k, v, *, num_video: int, key_mask=None, num_frames: int, tokens_per_frame: int,
                    decay_factor: float = 1.0, block_size: int = 128, sink: bool = False,
                    backend: str | None = None) -> torch.Tensor:
    """Radial video->video, dense elsewhere, on [B, N, H, D] with N = num_video + L (video first).

    `key_mask` [B, L]: the valid text keys (None: all). `backend` as `backends.radial_part`.
    """
    B, N = q.shape[:2]
    L = N - num_video
    if L < 0 or num_video != num_frames * tokens_per_frame:
        raise ValueError(f"joint attention: {N} tokens cannot hold num_video={num_video} video tokens "
                         f"(num_frames*tokens_per_frame = {num_frames}*{tokens_per_frame}) followed by text")
    if key_mask is not None and tuple(key_mask.shape) != (B, L):
        raise ValueError(f"joint attention: key_mask has shape {tuple(key_mask.shape)}, expected {(B, L)}")
    geometry = dict(num_frames=num_frames, tokens_per_frame=tokens_per_frame, decay_factor=decay_factor,
                    block_size=block_size, sink=sink, backend=backend)
    if L == 0:
        return radial_op.radial(q, k, v, **geometry)
    geometry["backend"] = backends.part_backend(backend, q.device)  # refuses flex (no LSE) here, not in the op
    if key_mask is not None:
        key_mask = key_mask.to(device=q.device, dtype=torch.bool)
    return radial_op.joint(q, k, v, key_mask, num_video=num_video, **geometry)


def joint_token_mask(num_video: int, key_mask, num_text: int, *, num_frames: int, tokens_per_frame: int,
                     decay_factor: float = 1.0, block_size: int = 128, sink: bool = False, batch: int = 1,
                     device="cpu") -> torch.Tensor:
    """The whole attention pattern as a bool mask [B, 1, N, N] (True: attend)."""
    radial = backends._token_mask(backends._geometry(num_frames, tokens_per_frame, block_size, decay_factor, sink),
                                  str(torch.device(device)))
    keys = key_mask_full(num_video, key_mask, batch, num_text, device)  # [B, N]
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


def attend_joint_layer(processor, query, key, value, attention_mask, num_text: int):
    """`attend_joint` for a processor's own layer, as one node of a torch.compile graph (why and how:
    `processor.attend_layer`; the layer's choice is `processor.radial_now`)."""
    from .processor import ATTENTION_IN_GRAPH

    s = processor.schedule.settings
    if not ATTENTION_IN_GRAPH or s.dense_backend == "sage":
        return _attend_joint_outside_graph(processor, query, key, value, attention_mask, num_text)
    return _joint_or_dense(processor.schedule, processor.radial_now, query, key, value, attention_mask, num_text)


@torch.compiler.disable
def _attend_joint_outside_graph(processor, query, key, value, attention_mask, num_text: int):
    return attend_joint(processor.schedule, processor.layer_index, query, key, value, attention_mask, num_text)


def attend_joint(schedule, layer_index: int, query, key, value, attention_mask, num_text: int):
    """What a joint-attention processor calls with q, k, v [B, N, H, D] (text last, `num_text` tokens) and the
    model's key mask (bool, broadcastable to [B, 1, 1, N], or None): radial when the schedule says so, else
    the dense attention stock diffusers runs."""
    return _joint_or_dense(schedule, schedule.use_radial(layer_index), query, key, value, attention_mask, num_text)


def _joint_or_dense(schedule, radial: bool, query, key, value, attention_mask, num_text: int):
    from .processor import dense_attention

    if schedule.cp is not None:
        raise ConfigError("context parallelism (setting 'context_parallel') does not cover joint video+text "
                          "attention yet; set context_parallel to 1 for this model.")
    if not radial:
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
