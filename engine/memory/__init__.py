"""Memory options for training big models on one GPU, and the plan that picks them.

- `fp8.store_base_in_fp8`: the frozen base weights kept in float8 (e4m3), computed in bf16
  (diffusers' layerwise casting; the LoRA weights are left alone).
- `offload.offloading_checkpoint`: gradient checkpointing whose saved block inputs live in pinned
  host memory, copied out on a side stream during the forward and back during the backward.
- `chunking.chunk_feed_forward`: feed-forwards run over token slices, each checkpointed on its own.
Measured costs: docs/memory.md (bench/train_memory.py).
"""
