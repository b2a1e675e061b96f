"""Whole-model times composed from a model built with fewer blocks (long rows in a short device lease).

A run with `measured_layers` blocks times the model once with every block dense and once with every block
radial. The full model with `full_layers` blocks, `dense_layers` of them dense, is then

    dense  = T_dense * full / measured
    radial = (dense_layers * T_dense + (full - dense_layers) * T_radial) / measured

Each measured time includes the embeddings and output head once; scaling them with the blocks overstates
both composed times by the same small amount (the blocks are >99% of a Wan or HunyuanVideo forward). The
blocks of one model are identical in cost (Wan); for HunyuanVideo build double and single blocks in the
full model's 1:2 proportion so that the average block stands for both kinds.
"""

from __future__ import annotations


def compose(t_dense: float, t_radial: float, *, measured_layers: int, full_layers: int,
            dense_layers: int) -> tuple[float, float]:
    if not 0 < measured_layers <= full_layers or not 0 <= dense_layers <= full_layers:
        raise ValueError(f"compose: need 0 < measured_layers ({measured_layers}) <= full_layers ({full_layers}) "
                         f"and 0 <= dense_layers ({dense_layers}) <= full_layers")
    dense = t_dense * full_layers / measured_layers
    radial = (dense_layers * t_dense + (full_layers - dense_layers) * t_radial) / measured_layers
    return dense, radial
