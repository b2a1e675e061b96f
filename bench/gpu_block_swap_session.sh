#!/bin/bash
# GPU check of block swap (block_swap): the real trainer on the tiny model (CUDA, bf16) with and without it, losses
# side by side, then the 1.3B and 14B steps with and without it (bench/train_memory.py). Needs .whl/ carried (see
# bench/gpu_check_session.sh).   PART=1 bash bench/gpu_block_swap_session.sh   (with $OUT set; PART 2: a warmed 1.3B
# baseline, then the 14B at 161)
set -e
source bench/gpu_setup.sh
COMMON="--preset tiny-wan --data_dir /tmp/d --max_steps 3 --validation_steps 3 --checkpointing_steps 3 --sample_steps 2
  --lora_dropout 0 --use_gradient_checkpointing true --quiet"
if [ "${PART:-1}" = 1 ]; then
  python3 -m engine train $COMMON --output_dir /tmp/plain 2>&1 | tail -1
  python3 -m engine train $COMMON --output_dir /tmp/swap --block_swap 2 --ffn_chunks 2 --offload_activations true 2>&1 | tail -1
  python3 -m engine train $COMMON --output_dir /tmp/swapfp8 --block_swap 2 --fp8_base true 2>&1 | tail -1
  python3 - <<'PY'
import json
for n in ("plain", "swap", "swapfp8"):
    ev = [e for e in map(json.loads, open(f"/tmp/{n}/events.jsonl")) if e["type"] in ("train", "validation")]
    print(n, json.load(open(f"/tmp/{n}/config.json"))["block_swap"], [(e["type"][0], e["step"], round(e.get("loss", float("nan")), 6)) for e in ev])
PY
  ls /tmp/swap/samples | head -3
  python3 bench/train_memory.py --out "$OUT" --fit "" \
    --full "1.3b:none@161,1.3b:swap30@161,1.3b:offload+chunk8@161,1.3b:offload+chunk8+swap30@161,14b:none@121,14b:swap40@121" \
    2>&1 | grep -v "^{"
else
  python3 bench/train_memory.py --out "$OUT" --fit "" \
    --full "1.3b:swap30@161,1.3b:none@161,14b:none@121,14b:offload+chunk8+swap16@161,14b:offload+chunk8+swap40@161" 2>&1 | grep -v "^{"
fi
