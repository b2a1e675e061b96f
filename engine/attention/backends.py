"""Public Radial Attention entry point and backend dispatch.

``radial_attention(q, k, v, *, num_frames, tokens_per_frame, ...)`` takes
``[B, S, H, D]`` tensors (diffusers' layout after ``unflatten``) with
``S = num_frames * tokens_per_frame`` frame-major tokens and returns
``[B, S, H, D]``. Backends:

* ``"triton"``  -- block-sparse Triton kernel (default on CUDA);
* ``"triton_fp8"`` -- its forward with fp8 matmuls (``triton_radial_fp8``): Hopper, no autograd
  (sampling only);
* ``"flex"``    -- torch FlexAttention with the same mask as a BlockMask
  (``BLOCK_SIZE=block_size``), compiled on CUDA, eager elsewhere;
* ``"reference"`` -- SDPA with the block mask expanded to tokens (CPU default;
  memory grows as S^2, meant for checking);
* ``"dense"``   -- plain SDPA, ignores the mask.

All but ``"triton_fp8"`` support autograd. Scale ``1/sqrt(D)``. Per-geometry setup (block mask,
kernel index lists, flex BlockMask, token mask) is built once and kept in
bounded caches keyed on geometry + device.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from . import chunked
from .mask import radial_block_mask

__all__ = ["radial_attention", "radial_attention_lse", "radial_part", "available_backends", "BACKENDS", "cached_block_mask"]

BACKENDS = ("triton", "triton_fp8", "flex", "reference", "dense")


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Backends usable for tensors on ``device`` (default: CUDA if present, else CPU)."""
    from .triton_radial import triton_usable

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    out = []
    if triton_usable(device)[0]:
        out.append("triton")
        from .triton_radial_fp8 import fp8_usable

        if fp8_usable(device)[0]:
            out.append("triton_fp8")
    if _flex_available():
        out.append("flex")
    out += ["reference", "dense"]
    return out


@functools.lru_cache(maxsize=1)
def _flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
    except Exception:
        return False
    return True


def _geometry(num_frames, tokens_per_frame, block_size, decay_factor, sink):
    return (int(num_frames), int(tokens_per_frame), int(block_size), float(decay_factor), bool(sink))


@functools.lru_cache(maxsize=32)
def _block_mask(geom: tuple, device: str) -> torch.Tensor:
    F_, T, bs, decay, sink = geom
    return radial_block_mask(F_, T, block_size=bs, decay_factor=decay, sink=sink).to(device)


def cached_block_mask(num_frames, tokens_per_frame, *, block_size=128, decay_factor=1.0, sink=True,
                      device="cpu") -> torch.Tensor:
    """The radial block mask for a geometry, from the shared bounded cache (do not mutate)."""
    geom = _geometry(num_frames, tokens_per_frame, block_size, decay_factor, sink)
    return _block_mask(geom, str(torch.device(device)))


@functools.lru_cache(maxsize=4)
def _token_mask(geom: tuple, device: str) -> torch.Tensor:
    F_, T, bs, _, _ = geom
    S = F_ * T
    blk = _block_mask(geom, device)
    idx = torch.arange(S, device=device) // bs
    return blk[idx][:, idx]


@functools.lru_cache(maxsize=16)
def _flex_block_mask(geom: tuple, device: str):
    from torch.nn.attention.flex_attention import BlockMask

    F_, T, bs, _, _ = geom
    S = F_ * T
    blk = _block_mask(geom, device)
    n = blk.shape[0]
    # All kept blocks are "full" (no mask_mod on the compiled path); the
    # mask_mod repeats the block lookup so that eager (token-level) flex agrees.
    counts = blk.sum(dim=1, dtype=torch.int32)
    order = torch.argsort((~blk).to(torch.int8), dim=1, stable=True).to(torch.int32)
    zeros_n = torch.zeros(1, 1, n, dtype=torch.int32, device=device)
    zeros_idx = torch.zeros(1, 1, n, n, dtype=torch.int32, device=device)

    def mask_mod(b, h, q_idx, kv_idx):
        return blk[q_idx // bs, kv_idx // bs]

    return BlockMask.from_kv_blocks(
        zeros_n, zeros_idx, counts[None, None], order[None, None],
        BLOCK_SIZE=bs, mask_mod=mask_mod, seq_lengths=(S, S),
    )


@functools.lru_cache(maxsize=4)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _sdpa(q, k, v, attn_mask=None):
    # [B, S, H, D] -> [B, H, S, D] views; SDPA's default scale is 1/sqrt(D).
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=attn_mask)
    return out.transpose(1, 2)


def _checked(q, k, v, num_frames: int, tokens_per_frame: int, backend: str | None, allowed) -> str:
    """The backend to use (default: triton on CUDA, else reference), after checking it and the q/k/v geometry."""
    if backend is None:
        backend = "triton" if q.device.type == "cuda" else "reference"
    if backend not in allowed:
        raise ValueError(f"attention backend {backend!r} is not one of {', '.join(allowed)} here")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor [B, S, H, D], got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    S = q.shape[1]
    if S != num_frames * tokens_per_frame:
        raise ValueError(
            f"sequence length mismatch: q has S={S} tokens but num_frames*tokens_per_frame = "
            f"{num_frames}*{tokens_per_frame} = {num_frames * tokens_per_frame}"
        )
    return backend


def radial_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    num_frames: int,
    tokens_per_frame: int,
    decay_factor: float = 1.0,
    block_size: int = 128,
    sink: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """Radial (block-sparse) attention over frame-major video tokens.

    q, k, v: ``[B, S, H, D]`` with ``S = num_frames * tokens_per_frame``.
    Returns ``[B, S, H, D]``.
    """
    backend = _checked(q, k, v, num_frames, tokens_per_frame, backend, BACKENDS)
    if backend == "dense":
        return _sdpa(q, k, v)

    geom = _geometry(num_frames, tokens_per_frame, block_size, decay_factor, sink)
    dev = str(q.device)

    if backend == "triton":
        from .triton_radial import radial_attention_triton, triton_usable

        ok, why = triton_usable(q.device)
        if not ok:
            raise RuntimeError(why)
        return radial_attention_triton(q, k, v, _block_mask(geom, dev), block_size, cache_key=geom)

    if backend == "triton_fp8":
        from .triton_radial_fp8 import radial_attention_fp8_lse

        return radial_attention_fp8_lse(q, k, v, _block_mask(geom, dev), block_size, cache_key=geom)[0]

    if backend == "reference":
        return _sdpa(q, k, v, attn_mask=_token_mask(geom, dev))

    # flex
    if not _flex_available():
        raise RuntimeError("FlexAttention (torch.nn.attention.flex_attention) is not available in this torch")
    from torch.nn.attention.flex_attention import flex_attention

    bm = _flex_block_mask(geom, dev)
    fn = _compiled_flex() if q.device.type == "cuda" and not os.environ.get("RADIAL_FLEX_EAGER") else flex_attention
    out = fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=bm)
    return out.transpose(1, 2)


def _masked_attention_lse(q, k, v, token_mask=None):
    """(out [B, S, H, D], lse [B, H, S] float32): softmax attention in float32 PyTorch, autograd through both."""
    scale = 1.0 / q.shape[-1] ** 0.5
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    if token_mask is not None:
        scores = scores.masked_fill(~token_mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", torch.exp(scores - lse[..., None]), v.float())
    return out.to(q.dtype), lse


_FLEX_HAS_NO_LSE = ("attention backend 'flex' has no log-sum-exp output (needed to merge radial video attention "
                    "with text attention); use 'triton', 'reference' or 'dense'")


def radial_attention_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    num_frames: int,
    tokens_per_frame: int,
    decay_factor: float = 1.0,
    block_size: int = 128,
    sink: bool = True,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`radial_attention` plus the row log-sum-exp of the scaled scores, ``[B, H, S]`` float32
    (natural log), differentiable, for an exact merge with attention over other keys.

    Backends: "triton" (the kernel's own LSE), "triton_fp8" (no autograd) and "reference" / "dense"
    (float32 PyTorch, the same maths; memory grows as S^2). "flex" is not offered here.
    """
    if backend == "flex":
        raise ValueError(_FLEX_HAS_NO_LSE)
    backend = _checked(q, k, v, num_frames, tokens_per_frame, backend, ("triton", "triton_fp8", "reference", "dense"))
    if backend == "dense":
        return _masked_attention_lse(q, k, v)
    geom = _geometry(num_frames, tokens_per_frame, block_size, decay_factor, sink)
    dev = str(q.device)
    if backend == "triton":
        from .triton_radial import radial_attention_triton_lse, triton_usable

        ok, why = triton_usable(q.device)
        if not ok:
            raise RuntimeError(why)
        return radial_attention_triton_lse(q, k, v, _block_mask(geom, dev), block_size, cache_key=geom)
    if backend == "triton_fp8":
        from .triton_radial_fp8 import radial_attention_fp8_lse

        return radial_attention_fp8_lse(q, k, v, _block_mask(geom, dev), block_size, cache_key=geom)
    return _masked_attention_lse(q, k, v, _token_mask(geom, dev))


@functools.lru_cache(maxsize=4)
def _cpu_additive_mask(geom: tuple, dtype: torch.dtype) -> torch.Tensor:
    """`_token_mask` as the additive bias the CPU flash kernel takes (0 or -inf, in the queries' dtype)."""
    mask = _token_mask(geom, "cpu")
    return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, float("-inf"))


def _cpu_sdpa_lse(q, k, v, bias=None):
    """(out, lse) from the CPU flash kernel behind F.scaled_dot_product_attention: the very sums of the SDPA
    path (an einsum's order depends on where the operands lie in memory, and a tiny random model turns that
    1e-7 into visible pixels, e.g. between one process and FSDP's gathered weights)."""
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 0.0, False, attn_mask=bias)
    return out.transpose(1, 2), lse.float()


class _PyTorchPart:
    """The radial (or, without a mask, dense) part in PyTorch, `RadialKernelPart`'s interface: the forward on
    SDPA's CPU kernel on a CPU, else in chunked float32; the backward in chunked float32."""

    def __init__(self, geom: tuple | None, device: str):
        self.geom = geom  # None: dense
        self.mask = None if geom is None else chunked.token_mask_fn(_token_mask(geom, device))

    def forward(self, q, k, v, out=None):
        if q.device.type == "cpu":
            o, lse = _cpu_sdpa_lse(q, k, v, None if self.geom is None else _cpu_additive_mask(self.geom, q.dtype))
        else:
            o, lse = chunked.attention_forward(q, k, v, self.mask)
        if out is None:
            return o, lse
        out.copy_(o)
        return out, lse

    def backward(self, do, q, k, v, o, lse, dq, dk, dv):
        for t in (dq, dk, dv):
            t.zero_()
        chunked.attention_backward(do, q, k, v, o, lse, self.mask, dq, dk, dv)


PART_BACKENDS = ("triton", "triton_fp8", "reference", "dense")


def part_backend(backend: str | None, device) -> str:
    """The backend a radial part runs on `device` (None: triton on CUDA, else reference), once its name is checked."""
    if backend is None:
        backend = "triton" if torch.device(device).type == "cuda" else "reference"
    if backend == "flex":
        raise ValueError(_FLEX_HAS_NO_LSE)
    if backend not in PART_BACKENDS:
        raise ValueError(f"attention backend {backend!r} is not one of {', '.join(PART_BACKENDS)} here")
    return backend


def radial_part(*, num_frames: int, tokens_per_frame: int, decay_factor: float = 1.0, block_size: int = 128,
                sink: bool = True, backend: str | None = None, device="cpu"):
    """Radial attention as one part of a larger attention (`triton_radial.RadialKernelPart`'s interface:
    forward -> (o, lse) without autograd; backward(do, q, k, v, o, lse, dq, dk, dv) writes the part's
    gradient given the whole attention's o and lse). Backends as `radial_attention_lse`."""
    device = torch.device(device)
    backend = part_backend(backend, device)
    if backend == "dense":
        return _PyTorchPart(None, str(device))
    geom = _geometry(num_frames, tokens_per_frame, block_size, decay_factor, sink)
    if backend == "reference":
        return _PyTorchPart(geom, str(device))
    if backend == "triton_fp8":
        from .triton_radial_fp8 import RadialFp8Part, fp8_usable

        ok, why = fp8_usable(device)
        if not ok:
            raise RuntimeError(why)
        return RadialFp8Part(_block_mask(geom, str(device)), block_size, cache_key=geom)
    from .triton_radial import RadialKernelPart, triton_usable

    ok, why = triton_usable(device)
    if not ok:
        raise RuntimeError(why)
    return RadialKernelPart(_block_mask(geom, str(device)), block_size, cache_key=geom)
