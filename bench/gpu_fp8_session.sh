#!/usr/bin/env bash
# The fp8 radial forward on the GPU machine: kernel rows (bf16 vs fp8 vs Flex, default and tuned) and a 1.3B
# clip (random weights at the official sizes, built once into /tmp/e2e-m) bf16 vs fp8, accuracy bar checked.
#   bash bench/gpu_fp8_session.sh            # all of bench/fp8_attention.py
#   FP8_ARGS=--skip_clip bash bench/gpu_fp8_session.sh
set -uo pipefail
source bench/gpu_setup.sh
PYTHONUNBUFFERED=1 python3 bench/fp8_attention.py --out $OUT --model_dir /tmp/e2e-m ${FP8_ARGS:-} > $OUT/fp8.log 2>&1
tail -14 $OUT/fp8.log
