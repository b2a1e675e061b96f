#!/bin/bash
# GPU check of the memory options through the real trainer and CLI (tiny model, CUDA, bf16), then the
# memory plan's predictions against 1.3B rows it was not fitted to (69 -> 121 frames). Needs .whl/ (diffusers,
# ftfy, wcwidth, psutil, filelock wheels; site/imageio_ffmpeg and ffmpeg.xz) carried to the GPU machine.
#   bash bench/gpu_check_session.sh   (with $OUT set)
set -e
source bench/gpu_setup.sh
python3 -m engine train --preset tiny-wan --data_dir /tmp/d --output_dir /tmp/r --max_steps 3 --validation_steps 3 \
  --checkpointing_steps 3 --sample_steps 0 --use_gradient_checkpointing true --fp8_base true \
  --offload_activations true --ffn_chunks 2 --quiet 2>&1 | tail -1
python3 -m engine train --preset tiny-wan --data_dir /tmp/d --output_dir /tmp/r2 --max_steps 2 --validation_steps 2 \
  --checkpointing_steps 2 --sample_steps 0 --use_gradient_checkpointing true --gpu_memory_gb 0.00195 --quiet 2>&1 | tail -1
python3 -c "import json; c=json.load(open('/tmp/r2/config.json')); print('plan chose', c['fp8_base'], c['offload_activations'], c['ffn_chunks'])"
python3 bench/train_memory.py --out "$OUT" --fit "" \
  --full "1.3b:none@121,1.3b:offload+chunk4@121,1.3b:chunk8@121,1.3b:fp8+offload@121" 2>&1 | grep "^|"
