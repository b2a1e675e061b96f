"""Tests for engine.attention.mask.

Two slow references, written independently of the analytic builder:
* ``_official_mask``: the upstream algorithm step by step (frame-local T x T
  tiles with float band widths, shrunk per frame pair with float32 densities,
  placed at block offsets). Only used where T is a multiple of the block size,
  where it is exactly the upstream mask.
* ``_global_grid_mask``: the same tiles, materialised on the global block grid
  and reduced per frame pair, for geometries whose frames straddle blocks (our
  documented extension: row threshold relative to a short last block's real
  rows, diagonal always kept).
"""

import math

import pytest
import torch

from engine.attention.mask import mask_density, radial_block_mask


def _tile(i, j, T, block_size, decay, sink):
    """Token-level T x T tile for query frame i, key frame j (official rule)."""
    if sink and j == 0:
        return torch.ones(T, T, dtype=torch.bool)
    d = abs(i - j)
    base = 2 ** T.bit_length() / 2 ** d.bit_length()
    if base < 128 and d % int(128 / base) != 0:
        return torch.zeros(T, T, dtype=torch.bool)
    width = T if d <= 1 else max(base * decay, block_size)
    r = torch.arange(T)
    return (r[:, None] - r[None, :]).abs() <= width


def _reduce(plane, bs, rows):
    """Reduce a (nq*bs, nk*bs) token plane; `rows` (nq,) is each query block's row count."""
    nq, nk = plane.shape[0] // bs, plane.shape[1] // bs
    counts = plane.reshape(nq, bs, nk, bs).sum(1).float()  # (nq, nk, bs) column hits
    col_density = counts / rows.float()[:, None, None]  # float32 like upstream
    touched = (col_density > 0).sum(-1)
    dense = (col_density > 1 / 3).sum(-1)
    return dense / (touched + 1e-9) > 0.6


def _official_mask(F, T, bs, decay, sink):
    assert T % bs == 0
    k = T // bs
    out = torch.zeros(F * k, F * k, dtype=torch.bool)
    full = torch.full((k,), bs)
    for i in range(F):
        for j in range(F):
            blocks = _reduce(_tile(i, j, T, bs, decay, sink), bs, full)
            out[i * k:(i + 1) * k, j * k:(j + 1) * k] |= blocks
    return out


def _global_grid_mask(F, T, bs, decay, sink):
    N = F * T
    n = math.ceil(N / bs)
    out = torch.zeros(n, n, dtype=torch.bool)
    for i in range(F):
        q0, q1 = i * T // bs, (i * T + T - 1) // bs + 1
        rows = torch.tensor([min(bs, N - qb * bs) for qb in range(q0, q1)])
        for j in range(F):
            k0, k1 = j * T // bs, (j * T + T - 1) // bs + 1
            plane = torch.zeros((q1 - q0) * bs, (k1 - k0) * bs, dtype=torch.bool)
            ro, co = i * T - q0 * bs, j * T - k0 * bs
            plane[ro:ro + T, co:co + T] = _tile(i, j, T, bs, decay, sink)
            out[q0:q1, k0:k1] |= _reduce(plane, bs, rows)
    out.diagonal().fill_(True)
    return out


# (tokens_per_frame, num_frames) -> density at decay 0.2 and 1.0 (block 128, sink on).
FACTS = {
    (3600, 21): (0.262, 0.396),
    (3600, 81): (0.116, 0.162),
    (1560, 21): (0.339, 0.445),
    (1560, 81): (0.153, 0.186),
}


@pytest.mark.parametrize("T,F,decay,expected", [
    (T, F, decay, fact)
    for (T, F), facts in FACTS.items()
    for decay, fact in zip((0.2, 1.0), facts)
])
def test_density_facts(T, F, decay, expected):
    # These T straddle blocks; our global-grid reduction lands on every fact to
    # 3 decimals, so no tolerance is needed. (Upstream's frame-local shrink, which
    # drops a frame's spill-over block, gives 0.338 / 0.444 at 1560 x 21 instead.)
    mask = radial_block_mask(F, T, decay_factor=decay)
    assert mask.shape == (math.ceil(F * T / 128),) * 2
    assert round(mask_density(mask), 3) == expected


@pytest.mark.parametrize("T,bs,F", [
    (256, 128, 3), (256, 128, 20), (256, 64, 18), (256, 32, 9),
    (192, 64, 17), (128, 32, 12), (64, 16, 10), (64, 32, 5), (512, 128, 33),
    (128, 16, 9), (288, 48, 9),
])
# 0.7 gives widths off the power-of-two grid, which land exactly on the 1/3 and 60%
# thresholds in some blocks (catches > vs >= slips).
@pytest.mark.parametrize("decay", [0.2, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("sink", [True, False])
def test_bit_exact_on_block_multiples(T, bs, F, decay, sink):
    expected = _official_mask(F, T, bs, decay, sink)
    mask = radial_block_mask(F, T, block_size=bs, decay_factor=decay, sink=sink)
    assert torch.equal(mask, expected)
    if not sink:
        assert torch.equal(mask, mask.T)  # symmetric tiles on an aligned grid


# T < bs (several frames per block), T just above bs, short last blocks, frame skipping.
STRADDLING = [
    (50, 16, 7), (300, 64, 18), (40, 16, 5), (10, 16, 9), (8, 32, 6), (15, 16, 6),
    (134, 32, 18), (200, 128, 21), (1000, 128, 6),
]


@pytest.mark.parametrize("T,bs,F", STRADDLING)
@pytest.mark.parametrize("decay", [0.2, 0.7, 1.0])
@pytest.mark.parametrize("sink", [True, False])
def test_straddling_matches_token_level_reference(T, bs, F, decay, sink):
    expected = _global_grid_mask(F, T, bs, decay, sink)
    assert torch.equal(radial_block_mask(F, T, block_size=bs, decay_factor=decay, sink=sink), expected)


@pytest.mark.parametrize("T,bs,F", STRADDLING + [(3600, 128, 21), (1560, 128, 81)])
@pytest.mark.parametrize("sink", [True, False])
def test_straddling_sanity(T, bs, F, sink):
    mask = radial_block_mask(F, T, block_size=bs, decay_factor=0.5, sink=sink)
    n = math.ceil(F * T / bs)
    assert mask.shape == (n, n) and mask.dtype == torch.bool
    assert mask.diagonal().all()
    assert mask[-1].any() and mask[:, -1].any()
    if sink:
        # Every query block must see the first frame's blocks that lie wholly in frame 0.
        assert mask[:, : T // bs].all()
    elif T >= 4 * bs:
        # Tiles are symmetric without the sink; blocks only lose symmetry where frames
        # straddle them (rows are thresholded per column), a small share for large frames.
        unmirrored = (mask & ~mask.T).sum().item() / mask.sum().item()
        assert unmirrored < 0.05


def test_sink_false_drops_first_frame_column_far_away():
    with_sink = radial_block_mask(81, 1560, sink=True)
    without = radial_block_mask(81, 1560, sink=False)
    assert (without <= with_sink).all()  # sink only adds blocks
    assert with_sink[-1, 0] and not without[-1, 0]


def test_dense_for_short_clips():
    # Two frames: only d = 0, 1 (whole tiles) -> fully dense.
    assert radial_block_mask(2, 1024).all()


@pytest.mark.parametrize("kwargs,name", [
    (dict(num_frames=0, tokens_per_frame=16), "num_frames"),
    (dict(num_frames=2.5, tokens_per_frame=16), "num_frames"),
    (dict(num_frames=4, tokens_per_frame=0), "tokens_per_frame"),
    (dict(num_frames=4, tokens_per_frame=-3), "tokens_per_frame"),
    (dict(num_frames=4, tokens_per_frame=16, block_size=0), "block_size"),
    (dict(num_frames=4, tokens_per_frame=16, block_size=True), "block_size"),
    (dict(num_frames=4, tokens_per_frame=16, decay_factor=0.0), "decay_factor"),
    (dict(num_frames=4, tokens_per_frame=16, decay_factor=-1.0), "decay_factor"),
    (dict(num_frames=4, tokens_per_frame=16, decay_factor=float("nan")), "decay_factor"),
    (dict(num_frames=4, tokens_per_frame=16, decay_factor="x"), "decay_factor"),
])
def test_bad_arguments(kwargs, name):
    num_frames = kwargs.pop("num_frames")
    tokens_per_frame = kwargs.pop("tokens_per_frame")
    with pytest.raises(ValueError, match=name):
        radial_block_mask(num_frames, tokens_per_frame, **kwargs)


def test_cache_returns_independent_copies():
    a = radial_block_mask(9, 300, block_size=64, decay_factor=0.5)
    b = radial_block_mask(9, 300, block_size=64, decay_factor=0.5)
    assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    a.fill_(False)
    c = radial_block_mask(9, 300, block_size=64, decay_factor=0.5)
    assert torch.equal(b, c) and c.any()


def test_mask_density():
    m = torch.zeros(4, 4, dtype=torch.bool)
    m[0, :2] = True
    assert mask_density(m) == 2 / 16
    assert mask_density(torch.ones(3, 3, dtype=torch.bool)) == 1.0
