"""Block-sparse mask for Radial Attention (Li et al., 2025, mit-han-lab).

Video tokens are laid out frame-major: token ``f * T + s`` is raster position
``s`` of frame ``f`` (``T`` tokens per frame). The mask is over blocks of
``block_size`` tokens; entry ``[qb, kb]`` says query block ``qb`` attends key
block ``kb``.

Token-level rule for query frame ``i`` and key frame ``j`` (``d = |i - j|``),
with ``P = 2 ** T.bit_length()`` (smallest power of two above ``T``):

* ``sink`` and ``j == 0``: the whole tile (Wan's first-frame attention sink);
* else, with ``g = d.bit_length()`` and ``base = P / 2**g`` (energy decays in
  log2 distance bands 1 | 2-3 | 4-7 | ...):

  - ``base < 128`` and ``d % int(128 / base) != 0``: nothing; far frames keep
    only every k-th frame. 128 is a constant of the method, not ``block_size``;
  - ``d <= 1``: the whole tile;
  - otherwise a spatial band ``|sq - sk| <= W`` with
    ``W = floor(max(base * decay_factor, block_size))``.

Each frame pair's tile is reduced to blocks like the reference
``shrinkMaskStrict``: within a block, a key column is *dense* when more than a
third of the block's query rows hit it, and the block is kept when more than
60% of its touched (non-empty) columns are dense. The results of all frame
pairs are OR-ed.

When ``T`` is a multiple of ``block_size`` this equals the reference mask bit
for bit. Otherwise frames straddle blocks, and we reduce each frame pair on the
global block grid: for block ``(qb, kb)`` the rows counted are those of ``qb``
inside frame ``i`` and the columns those of ``kb`` inside frame ``j`` (the
reference instead shrinks on a frame-local grid of ``ceil(T / block_size)``
blocks and drops the rows and columns of a frame that spill into one more
block). Choices beyond the reference:

* "whole tile" pairs go through the same reduction as bands, so a block that
  holds a sliver of at most a third of its rows from frame ``i`` gains nothing
  from pair ``(i, j)`` -- exactly what the reference does with its zero-padded
  local tiles; the block is still judged by the frame pairs that fill it;
* the one-third row threshold is taken relative to the rows the query block
  really has, which is ``block_size`` except for a short last block (else that
  block would need more than ``block_size / 3`` rows of one frame to be kept);
* diagonal blocks are always kept, so no query block is left with nothing to
  attend (already true whenever ``T >= block_size``; matters only for tiny
  frames where every frame is a sliver of a block).

Per-block counts are computed analytically rather than by materialising
``T x T`` tiles: under a band of half-width ``W``, the rows ``[a, b]`` that hit
column ``sk`` are ``[a, b] ∩ [sk - W, sk + W]``, a clipped interval, so the
columns hit at least ``m`` times form an interval too.
"""

from __future__ import annotations

import functools
import math
import operator

import torch

__all__ = ["radial_block_mask", "mask_density"]

# Frame-skip threshold of the reference implementation (independent of block size).
_SKIP_THRESHOLD = 128
# Bound on the int32 elements of one (query frames, key frames, q blocks, k blocks) chunk.
_CHUNK_ELEMS = 1 << 22


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _band_widths(num_frames: int, T: int, block_size: int, decay_factor: float) -> list[int]:
    """Band half-width per frame distance d: -1 = nothing, T = whole tile."""
    P = 2 ** T.bit_length()
    widths = []
    for d in range(num_frames):
        base = P / 2 ** d.bit_length()
        if base < _SKIP_THRESHOLD and d % int(_SKIP_THRESHOLD / base) != 0:
            widths.append(-1)
        elif d <= 1:
            widths.append(T)  # |sq - sk| <= T - 1 always holds
        else:
            widths.append(int(math.floor(max(base * decay_factor, block_size))))
    return widths


def _interval_len(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return (hi - lo + 1).clamp_min(0)


@functools.lru_cache(maxsize=32)
def _build(num_frames: int, T: int, block_size: int, decay_factor: float, sink: bool) -> torch.Tensor:
    bs, F = block_size, num_frames
    N = F * T
    n = -(-N // bs)
    i32 = torch.int32

    widths = torch.tensor(_band_widths(F, T, bs, decay_factor), dtype=i32)
    frames = torch.arange(F)
    W = widths[(frames[:, None] - frames[None, :]).abs()]  # (F, F)
    if sink:
        W[:, 0] = T

    # Blocks touched by frame f: q0[f] + (0 .. K-1); K covers the worst offset.
    K = (bs - 1 + T - 1) // bs + 1
    start = frames * T  # first token of each frame
    b0 = start // bs
    blk = b0[:, None] + torch.arange(K)[None, :]  # (F, K) global block index
    # Frame-local token range [lo, hi] of each (frame, block); empty when lo > hi.
    lo = (blk * bs - start[:, None]).clamp_min(0)
    hi = torch.minimum(blk * bs + bs - 1 - start[:, None], torch.full_like(blk, T - 1))
    # Real number of tokens in the (query) block: bs except a short last block.
    rows_in_block = (N - blk * bs).clamp(max=bs)
    m = rows_in_block // 3 + 1  # smallest count with count > rows/3
    lo, hi, m, blk = lo.to(i32), hi.to(i32), m.to(i32), blk.to(i32)

    mask = torch.zeros(n * n, dtype=torch.bool)
    step = max(1, _CHUNK_ELEMS // (F * K * K))
    for f0 in range(0, F, step):
        q = slice(f0, min(F, f0 + step))
        # Shapes: query side (Fq, 1, K, 1), key side (1, F, 1, K), width (Fq, F, 1, 1).
        a, b = lo[q, None, :, None], hi[q, None, :, None]
        mq = m[q, None, :, None]
        c, e = lo[None, :, None, :], hi[None, :, None, :]
        w = W[q, :, None, None]
        # Rows hitting column sk: [a, b] ∩ [sk - w, sk + w]. The columns hit at least once
        # (touched) or at least m times (dense) are intervals. Dense also needs m rows at
        # all; the band itself (2w + 1 >= 2 * min(T, bs) + 1) is never the tighter limit.
        touched = _interval_len(torch.maximum(c, a - w), torch.minimum(e, b + w))
        dense = _interval_len(torch.maximum(c, a + mq - 1 - w), torch.minimum(e, b - mq + 1 + w))
        dense = dense * (b - a + 1 >= mq)  # also zero where the block lies outside frame i
        keep = (touched > 0) & (5 * dense > 3 * touched)  # dense / touched > 0.6, exactly
        keep &= w >= 0  # frame pairs skipped entirely
        fi, fj, qi, ki = keep.nonzero(as_tuple=True)
        rows = blk[q][fi, qi].long()
        cols = blk[fj, ki].long()
        mask[rows * n + cols] = True

    mask = mask.view(n, n)
    mask.diagonal().fill_(True)
    return mask


def radial_block_mask(
    num_frames: int,
    tokens_per_frame: int,
    *,
    block_size: int = 128,
    decay_factor: float = 1.0,
    sink: bool = True,
) -> torch.Tensor:
    """Radial Attention block mask, ``torch.bool`` of shape ``(n, n)``,
    ``n = ceil(num_frames * tokens_per_frame / block_size)``.

    ``sink=True`` adds Wan's first-frame attention sink; ``sink=False`` is the
    HunyuanVideo variant. See the module docstring for the rule.
    """
    num_frames = _positive_int("num_frames", num_frames)
    tokens_per_frame = _positive_int("tokens_per_frame", tokens_per_frame)
    block_size = _positive_int("block_size", block_size)
    try:
        decay = float(decay_factor)
    except (TypeError, ValueError):
        raise ValueError(f"decay_factor must be a positive number, got {decay_factor!r}") from None
    if not (decay > 0 and math.isfinite(decay)):
        raise ValueError(f"decay_factor must be a finite number > 0, got {decay_factor!r}")
    # Clone: the cached tensor must not be mutated by callers.
    return _build(num_frames, tokens_per_frame, block_size, decay, bool(sink)).clone()


def mask_density(mask: torch.Tensor) -> float:
    """Fraction of blocks computed (True entries)."""
    if mask.numel() == 0:
        return 0.0
    return mask.count_nonzero().item() / mask.numel()
