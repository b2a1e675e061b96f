"""Deterministic batches of one bucket each, walked by micro-batch number (so a resume continues in place).

Each epoch draws one permutation of the training samples (seeded by the run's seed and the epoch),
walks it and drops each sample into its bucket's open batch; a batch is emitted when it holds
batch_size samples, and each bucket's last, partial batch closes the epoch. The batch count per
epoch is the same every epoch (the sum over buckets of ceil(samples / batch_size)), so micro-batch m
is batch m mod that count of epoch m // count: no state beyond the step is needed to resume. With
one bucket and batch_size 1 this is exactly the permutation the trainer walked before buckets.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch


class BucketSampler:
    def __init__(self, buckets: list, batch_size: int, seed: int):
        """`buckets`: each training sample's bucket (any hashable, e.g. (height, width)), in sample order."""
        self.buckets = list(buckets)
        self.batch_size = batch_size
        self.seed = seed
        sizes: dict = {}
        for b in self.buckets:
            sizes[b] = sizes.get(b, 0) + 1
        self.batches_per_epoch = sum(math.ceil(n / batch_size) for n in sizes.values())
        self._epoch = lru_cache(maxsize=2)(self._batches)

    def _batches(self, epoch: int) -> list[list[int]]:
        n = len(self.buckets)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch)).tolist()
        open_batches: dict = {}  # bucket -> its batch being filled (insertion order: first seen)
        out = []
        for i in perm:
            batch = open_batches.setdefault(self.buckets[i], [])
            batch.append(i)
            if len(batch) == self.batch_size:
                out.append(batch)
                del open_batches[self.buckets[i]]
        out.extend(open_batches.values())
        return out

    def batch(self, micro_batch: int) -> list[int]:
        """Sample indices of the run's `micro_batch`-th micro-batch (counted over steps, accumulation and ranks)."""
        epoch, pos = divmod(micro_batch, self.batches_per_epoch)
        return self._epoch(epoch)[pos]
