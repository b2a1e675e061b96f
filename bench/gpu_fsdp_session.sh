#!/bin/bash
# GPU check of FSDP2 through the real trainer (tiny model, CUDA, bf16 autocast, one-process NCCL group):
# plain vs --fsdp true (with the memory options) vs an accelerate FSDP2 config, losses side by side, then a
# sharded checkpoint resumed by a plain process; then the 1.3B step with and without FSDP (bench/train_memory.py).
# Needs .whl/ carried (see bench/gpu_check_session.sh).   bash bench/gpu_fsdp_session.sh   (with $OUT set)
set -e
source bench/gpu_setup.sh
COMMON="--preset tiny-wan --data_dir /tmp/d --max_steps 3 --validation_steps 3 --checkpointing_steps 3 --sample_steps 0
  --lora_dropout 0 --use_gradient_checkpointing true --quiet"
python3 -m engine train $COMMON --output_dir /tmp/plain 2>&1 | tail -1
python3 -m torch.distributed.run --nproc_per_node 1 -m engine train $COMMON --output_dir /tmp/fsdp --fsdp true \
  --offload_activations true --ffn_chunks 2 2>&1 | tail -1
sed -e 's/num_processes: 8/num_processes: 1/' examples/accelerate/one_node_8gpu_fsdp2.yaml > /tmp/fsdp1.yaml
python3 -m accelerate.commands.launch --config_file /tmp/fsdp1.yaml -m engine train $COMMON --output_dir /tmp/accel \
  2>&1 | tail -1
python3 -m engine train $COMMON --output_dir /tmp/fsdp --max_steps 4 --fsdp false --resume 2>&1 | tail -1
python3 - <<'PY'
import json
from safetensors.torch import load_file
runs = {n: [e for e in map(json.loads, open(f"/tmp/{n}/events.jsonl")) if e["type"] == "train"] for n in ("plain", "fsdp", "accel")}
cfg = {n: json.load(open(f"/tmp/{n}/config.json"))["fsdp"] for n in runs}
print("config fsdp:", cfg)
for n, ev in runs.items():
    print(n, [(e["step"], round(e["loss"], 6), round(e["grad_norm"], 6)) for e in ev])
w = {n: load_file(f"/tmp/{n}/checkpoints/step-000003/lora/pytorch_lora_weights.safetensors") for n in ("plain", "fsdp", "accel")}
for n in ("fsdp", "accel"):
    print(f"max |LoRA {n} - plain| at step 3:", max(float((w[n][k] - w["plain"][k]).abs().max()) for k in w["plain"]),
          "of max |w|", max(float(v.abs().max()) for v in w["plain"].values()))
PY
python3 bench/train_memory.py --out "$OUT" --fit "1.3b:161" --fit_layers 1 --fit_options none \
  --full "1.3b:none@161,1.3b:none@161,1.3b:fsdp@161,1.3b:fsdp@161,1.3b:fsdp+offload+chunk8@161" 2>&1 | grep "^|"
