"""Memory options for training big models on one GPU, and the plan that picks them.

- `fp8.store_base_in_fp8`: the frozen base weights kept in float8 (e4m3), computed in bf16
  (diffusers' layerwise casting; the LoRA weights are left alone).
- `offload.offloading_checkpoint`: gradient checkpointing whose saved block inputs live in pinned
  host memory, copied out on a side stream during the forward and back during the backward.
- `plan`: predicted peak GPU memory per option combination, from a model fitted to measurements
  (`python -m engine plan`, `train --gpu_memory_gb N`).
"""
