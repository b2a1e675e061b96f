"""Radial and joint attention as PyTorch custom operators, so that torch.compile keeps them in a block's graph.

A Python autograd function around Triton launches (`triton_radial._RadialAttnFn`) is code Dynamo cannot
trace: each call would break the compiled block graph in two, with the work on either side compiled apart
and the guards checked again. Registered with `torch.library.custom_op`, an attention is
one opaque node with a shape function (`register_fake`), so a block compiles to one graph whatever backend
runs inside. The backward is a second operator (`register_autograd`), with the forward's output and LSE
saved: no recomputation, the same kernels as the eager path.

Both operators take the geometry as plain arguments. Dynamo guards on their values, which every block of a
run shares, so one graph serves all blocks. Backends are those of `backends.radial_part` ("triton",
"triton_fp8" forward only, "reference", "dense"); "flex" has no LSE and stays outside the graphs.
"""

from __future__ import annotations

import torch

from . import backends, dense_parts


def _part(q, num_frames, tokens_per_frame, decay_factor, block_size, sink, backend):
    return backends.radial_part(num_frames=num_frames, tokens_per_frame=tokens_per_frame, decay_factor=decay_factor,
                                block_size=block_size, sink=sink, backend=backend, device=q.device)


def _forward(q, k, v, geometry, out=None):
    """The radial part's forward, (o, lse), for both operators (bench/e2e.py counts its calls)."""
    return _part(q, *geometry).forward(q, k, v, out=out)


# ------------------------------------------------------------------ radial attention: [B, S, H, D] -> same

@torch.library.custom_op("radial_studio::radial_fwd", mutates_args=())
def _radial_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int, tokens_per_frame: int,
                decay_factor: float, block_size: int, sink: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse = _forward(q, k, v, (num_frames, tokens_per_frame, decay_factor, block_size, sink, backend))
    return out.contiguous(), lse.contiguous()


@_radial_fwd.register_fake
def _(q, k, v, num_frames, tokens_per_frame, decay_factor, block_size, sink, backend):
    B, S, H, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((B, H, S), dtype=torch.float32)


@torch.library.custom_op("radial_studio::radial_bwd", mutates_args=())
def _radial_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                lse: torch.Tensor, num_frames: int, tokens_per_frame: int, decay_factor: float, block_size: int,
                sink: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))  # dk, dv: one stride
    _part(q, num_frames, tokens_per_frame, decay_factor, block_size, sink, backend).backward(
        do, q, k, v, out, lse, dq, dk, dv)
    return dq, dk, dv


@_radial_bwd.register_fake
def _(do, q, k, v, out, lse, *geometry):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _radial_setup(ctx, inputs, output):
    q, k, v, *geometry = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.geometry = geometry


def _radial_backward(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _radial_bwd(dout, q, k, v, out, lse, *ctx.geometry)  # the LSE is internal: dlse is unused
    return (dq, dk, dv) + (None,) * len(ctx.geometry)


_radial_fwd.register_autograd(_radial_backward, setup_context=_radial_setup)


# ------------------------------------------------- joint attention: [B, N, H, D], video (radial) then text

@torch.library.custom_op("radial_studio::joint_fwd", mutates_args=())
def _joint_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, num_video: int,
               num_frames: int, tokens_per_frame: int, decay_factor: float, block_size: int, sink: bool,
               backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, the video rows' merged LSE [B, H, nv], the text rows' LSE [B, H, L]): see engine.attention.joint."""
    nv = num_video
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    geometry = (num_frames, tokens_per_frame, decay_factor, block_size, sink, backend)
    _, lse_radial = _forward(q[:, :nv], k[:, :nv], v[:, :nv], geometry, out=out[:, :nv])
    lse_video, lse_text = dense_parts.text_parts_forward(q, k, v, key_mask, nv, out, lse_radial)
    return out, lse_video.contiguous(), lse_text.contiguous()


@_joint_fwd.register_fake
def _(q, k, v, key_mask, num_video, *geometry):
    B, N, H, _ = q.shape
    return (q.new_empty(q.shape), q.new_empty((B, H, num_video), dtype=torch.float32),
            q.new_empty((B, H, N - num_video), dtype=torch.float32))


@torch.library.custom_op("radial_studio::joint_bwd", mutates_args=())
def _joint_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
               lse_video: torch.Tensor, lse_text: torch.Tensor, key_mask: torch.Tensor | None, num_video: int,
               num_frames: int, tokens_per_frame: int, decay_factor: float, block_size: int, sink: bool,
               backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each part's gradient share, given the merged output and LSEs (as ring attention does)."""
    nv = num_video
    dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))  # dk, dv: one stride
    video = slice(0, nv)
    # video rows over video keys: the radial part writes its share; the dense parts add theirs
    _part(q, num_frames, tokens_per_frame, decay_factor, block_size, sink, backend).backward(
        dout[:, video], q[:, video], k[:, video], v[:, video], out[:, video], lse_video,
        dq[:, video], dk[:, video], dv[:, video])
    dense_parts.text_parts_backward(dout, q, k, v, out, lse_video, lse_text, key_mask, nv, dq, dk, dv)
    return dq, dk, dv


@_joint_bwd.register_fake
def _(dout, q, k, v, *rest):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _joint_setup(ctx, inputs, output):
    q, k, v, key_mask, *geometry = inputs
    ctx.save_for_backward(q, k, v, *output, key_mask)
    ctx.geometry = geometry


def _joint_backward(ctx, dout, dlse_video, dlse_text):
    q, k, v, out, lse_video, lse_text, key_mask = ctx.saved_tensors
    dq, dk, dv = _joint_bwd(dout, q, k, v, out, lse_video, lse_text, key_mask, *ctx.geometry)
    return (dq, dk, dv, None) + (None,) * len(ctx.geometry)


_joint_fwd.register_autograd(_joint_backward, setup_context=_joint_setup)


# ------------------------------------------------------------------------------------------ entry points

def _refuse_forward_only(backend: str, *tensors) -> None:
    if backend == "triton_fp8" and torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        from .triton_radial_fp8 import FORWARD_ONLY

        raise ValueError(FORWARD_ONLY)


def radial(q, k, v, *, num_frames: int, tokens_per_frame: int, decay_factor: float = 1.0, block_size: int = 128,
           sink: bool = True, backend: str | None = None) -> torch.Tensor:
    """`backends.radial_attention` through the operator: [B, S, H, D] in and out, with autograd (not on
    "triton_fp8"). Backends as `backends.radial_part` (None: triton on CUDA, else reference)."""
    backend = backends.part_backend(backend, q.device)
    backends._checked(q, k, v, num_frames, tokens_per_frame, backend, backends.PART_BACKENDS)
    _refuse_forward_only(backend, q, k, v)
    return _radial_fwd(q, k, v, int(num_frames), int(tokens_per_frame), float(decay_factor), int(block_size),
                       bool(sink), backend)[0]


def joint(q, k, v, key_mask, *, num_video: int, num_frames: int, tokens_per_frame: int, decay_factor: float,
          block_size: int, sink: bool, backend: str) -> torch.Tensor:
    """`joint.joint_attention`'s general case (text tokens present) through the operator (inputs checked there;
    `backend` resolved)."""
    _refuse_forward_only(backend, q, k, v)
    return _joint_fwd(q, k, v, key_mask, int(num_video), int(num_frames), int(tokens_per_frame),
                      float(decay_factor), int(block_size), bool(sink), backend)[0]
