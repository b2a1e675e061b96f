"""The whole-model composition of the reduced-block GPU rows (bench/block_scaling.py)."""

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "block_scaling.py"
_spec = importlib.util.spec_from_file_location("block_scaling", _PATH)
block_scaling = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(block_scaling)


def test_a_model_of_identical_blocks_composes_exactly():
    # 4 measured blocks: dense 4 x 10 ms, radial 4 x 2 ms; the full model has 40 blocks, 2 of them dense
    dense, radial = block_scaling.compose(40.0, 8.0, measured_layers=4, full_layers=40, dense_layers=2)
    assert dense == pytest.approx(400.0)
    assert radial == pytest.approx(2 * 10.0 + 38 * 2.0)


def test_every_layer_dense_composes_to_the_dense_model_and_bad_counts_are_refused():
    dense, radial = block_scaling.compose(30.0, 6.0, measured_layers=3, full_layers=60, dense_layers=60)
    assert radial == pytest.approx(dense) == pytest.approx(600.0)
    with pytest.raises(ValueError, match="measured_layers"):
        block_scaling.compose(1.0, 1.0, measured_layers=0, full_layers=40, dense_layers=2)
    with pytest.raises(ValueError, match="dense_layers"):
        block_scaling.compose(1.0, 1.0, measured_layers=4, full_layers=40, dense_layers=41)
