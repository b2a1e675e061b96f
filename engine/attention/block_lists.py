"""Block mask -> per-tile index lists for the block-sparse attention kernels.

The mask is a ``torch.bool`` matrix ``(n, n)`` over blocks of ``block_size``
tokens (``n = ceil(S / block_size)``). The Triton kernels work on tiles of
``tile_m`` query rows and ``tile_n`` key columns, each of which divides
``block_size``, so every tile lies inside one mask block and inherits its bit.

Two CSR structures are built from the tile-level mask:

* rows: for each query tile, the sorted key tiles it attends (forward, dQ);
* cols: for each key tile, the sorted query tiles attending it (dK/dV).

Key (query) tiles that start at or past ``S`` are dropped, so every listed tile
holds at least one real token. ``*_order`` is the launch order of the tiles:
natural (ascending) by default, so that programs running at the same time are
neighbouring tiles of one head and share their K/V tiles in L2;
``HEAVIEST_FIRST = True`` orders by decreasing work instead (measured slower
on H100 at 291,600 tokens, where it scatters concurrent programs over frames;
see docs/kernel_notes.md).

Lists are cached per geometry in a bounded LRU (``get_tile_lists``), keyed on
a caller-supplied hashable key plus block/tile sizes, sequence length and
device -- never on tensor identity.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

__all__ = ["TileLists", "build_tile_lists", "get_tile_lists", "computed_pairs", "clear_cache"]

_CACHE_MAXSIZE = 64
HEAVIEST_FIRST = False


@dataclass(frozen=True)
class TileLists:
    tile_m: int
    tile_n: int
    seq_len: int
    n_q_tiles: int
    n_k_tiles: int
    row_offsets: torch.Tensor  # int32 [n_q_tiles + 1]
    row_indices: torch.Tensor  # int32 [nnz] key tiles
    row_order: torch.Tensor  # int32 [n_q_tiles] launch order of the query tiles
    # row_order split by whether the query tile's list holds the partial last key tile (S % tile_n != 0):
    # kernels that mask key columns on every tile can skip the mask on the first set.
    row_order_no_tail: torch.Tensor  # int32
    row_order_tail: torch.Tensor  # int32
    col_offsets: torch.Tensor  # int32 [n_k_tiles + 1]
    col_indices: torch.Tensor  # int32 [nnz] query tiles
    col_order: torch.Tensor  # int32 [n_k_tiles] launch order of the key tiles
    nnz: int


def _check(mask: torch.Tensor, block_size: int, seq_len: int, tile_m: int, tile_n: int) -> None:
    if mask.dtype != torch.bool or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        raise ValueError(f"block mask must be a square torch.bool matrix, got {tuple(mask.shape)} {mask.dtype}")
    n = -(-seq_len // block_size)
    if mask.shape[0] != n:
        raise ValueError(
            f"block mask is {mask.shape[0]}x{mask.shape[1]} but seq_len={seq_len} with "
            f"block_size={block_size} needs {n}x{n}"
        )
    for name, t in (("tile_m", tile_m), ("tile_n", tile_n)):
        if t <= 0 or block_size % t:
            raise ValueError(f"{name}={t} must divide block_size={block_size}")


def _csr(tmask: torch.Tensor):
    """CSR (offsets, indices, heaviest-first order) of a 2-D bool matrix, int32."""
    counts = tmask.sum(dim=1, dtype=torch.int64)
    offsets = torch.zeros(tmask.shape[0] + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=offsets[1:])
    indices = tmask.nonzero(as_tuple=True)[1]  # row-major, so sorted within rows
    if HEAVIEST_FIRST:
        order = torch.sort(counts, descending=True, stable=True).indices
    else:
        order = torch.arange(tmask.shape[0])
    return offsets.to(torch.int32), indices.to(torch.int32), order.to(torch.int32)


def build_tile_lists(
    mask: torch.Tensor,
    block_size: int,
    seq_len: int,
    tile_m: int,
    tile_n: int,
    device: torch.device | str | None = None,
) -> TileLists:
    """Expand a block mask to tile CSR lists (see module docstring)."""
    _check(mask, block_size, seq_len, tile_m, tile_n)
    mask = mask.detach().to("cpu")
    n_q = -(-seq_len // tile_m)
    n_k = -(-seq_len // tile_n)
    qb = torch.arange(n_q) * tile_m // block_size
    kb = torch.arange(n_k) * tile_n // block_size
    tmask = mask[qb][:, kb]  # (n_q, n_k)
    r_off, r_idx, r_ord = _csr(tmask)
    c_off, c_idx, c_ord = _csr(tmask.t())
    if seq_len % tile_n:
        has_tail = tmask[:, n_k - 1][r_ord.long()]
    else:
        has_tail = torch.zeros(n_q, dtype=torch.bool)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    to = lambda t: t.to(dev)  # noqa: E731
    return TileLists(
        tile_m=tile_m,
        tile_n=tile_n,
        seq_len=seq_len,
        n_q_tiles=n_q,
        n_k_tiles=n_k,
        row_offsets=to(r_off),
        row_indices=to(r_idx),
        row_order=to(r_ord),
        row_order_no_tail=to(r_ord[~has_tail]),
        row_order_tail=to(r_ord[has_tail]),
        col_offsets=to(c_off),
        col_indices=to(c_idx),
        col_order=to(c_ord),
        nnz=int(r_idx.numel()),
    )


_cache: OrderedDict = OrderedDict()
_lock = threading.Lock()


def get_tile_lists(
    mask: torch.Tensor,
    block_size: int,
    seq_len: int,
    tile_m: int,
    tile_n: int,
    device: torch.device | str,
    key=None,
) -> TileLists:
    """``build_tile_lists`` through a bounded LRU when ``key`` (a hashable
    description of the mask's geometry) is given; uncached otherwise."""
    if key is None:
        return build_tile_lists(mask, block_size, seq_len, tile_m, tile_n, device)
    full_key = (key, block_size, seq_len, tile_m, tile_n, str(torch.device(device)), HEAVIEST_FIRST)
    with _lock:
        hit = _cache.get(full_key)
        if hit is not None:
            _cache.move_to_end(full_key)
            return hit
    lists = build_tile_lists(mask, block_size, seq_len, tile_m, tile_n, device)
    with _lock:
        _cache[full_key] = lists
        _cache.move_to_end(full_key)
        while len(_cache) > _CACHE_MAXSIZE:
            _cache.popitem(last=False)
    return lists


def clear_cache() -> None:
    with _lock:
        _cache.clear()


def computed_pairs(mask: torch.Tensor, block_size: int, seq_len: int) -> int:
    """Number of (query, key) token pairs inside kept blocks (real tokens only)."""
    n = mask.shape[0]
    sizes = torch.full((n,), block_size, dtype=torch.float64)
    sizes[-1] = seq_len - (n - 1) * block_size
    m = mask.detach().to("cpu", torch.float64)
    return int(round(float(sizes @ m @ sizes)))
