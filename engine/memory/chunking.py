"""Feed-forward layers run over slices of the tokens, each slice checkpointed on its own.

A transformer block's backward holds the feed-forward's wide activations for every token at once:
for Wan 14B at 157,440 tokens the 13,824-wide hidden layer is 4 GiB per tensor, and the up
projection, the GELU and their gradients are alive together (about 16 GiB, a third of the
block's recompute peak). The feed-forward is per-token, so running it over `chunks` slices of the
sequence, each under its own (nested, non-reentrant) checkpoint, gives the same result and
gradients with that part of the peak divided by `chunks`, for one more feed-forward forward.

Applied by giving each diffusers `FeedForward` instance a subclass that slices (its parameter
names, and so LoRA keys and checkpoints, stay the same); `chunks=1` restores the stock class.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint

_CHUNKED: dict[type, type] = {}


class _TokenChunked:
    """Mixin placed before a FeedForward class: forward over token slices of dim 1."""

    _token_chunks = 1

    def forward(self, hidden_states, *args, **kwargs):
        run = super().forward
        if self._token_chunks <= 1 or hidden_states.ndim < 3 or hidden_states.shape[1] < self._token_chunks:
            return run(hidden_states, *args, **kwargs)
        outs = []
        for part in hidden_states.chunk(self._token_chunks, dim=1):
            if torch.is_grad_enabled():
                outs.append(torch.utils.checkpoint.checkpoint(run, part, *args, use_reentrant=False, **kwargs))
            else:
                outs.append(run(part, *args, **kwargs))
        return torch.cat(outs, dim=1)


def _chunked_class(cls: type) -> type:
    if cls not in _CHUNKED:
        _CHUNKED[cls] = type(f"TokenChunked{cls.__name__}", (_TokenChunked, cls), {"__module__": __name__})
    return _CHUNKED[cls]


def chunk_feed_forward(transformer, chunks: int) -> int:
    """Slice every diffusers FeedForward in `transformer` into `chunks` token slices; returns how many."""
    from diffusers.models.attention import FeedForward

    count = 0
    for module in transformer.modules():
        if not isinstance(module, FeedForward):
            continue
        stock = next(c for c in type(module).__mro__ if c is not _TokenChunked and not issubclass(c, _TokenChunked))
        module.__class__ = stock if chunks <= 1 else _chunked_class(stock)
        if chunks > 1:
            module._token_chunks = int(chunks)
        count += 1
    return count
