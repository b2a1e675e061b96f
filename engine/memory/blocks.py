"""The transformer blocks memory options work on, one at a time (FSDP units, swapped blocks)."""

from __future__ import annotations

import torch

from ..errors import InputError


def block_modules(transformer, option: str) -> list[torch.nn.Module]:
    """The model's transformer blocks (the classes it lists in `_no_split_modules`), in forward order.

    `option` names the setting that needs them, for the error when the model lists none."""
    names = set(getattr(transformer, "_no_split_modules", None) or ())
    blocks = [m for m in transformer.modules() if type(m).__name__ in names]
    if not blocks:
        raise InputError(f"{option}: {type(transformer).__name__} names no transformer block classes "
                         f"(_no_split_modules), so there is nothing to work on block by block; turn {option} off.")
    return blocks
