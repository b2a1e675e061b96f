#!/usr/bin/env bash
# Issue 17's 14B row through the real pipeline: Wan2.1-T2V-14B with random weights at the official sizes, saved in
# diffusers format and loaded by the wan2.1-t2v-14b preset (bench/e2e.py --build_random), generate_video at
# 1280x720 with guidance, dense (the fastest SDPA backend, picked in the run) then radial (the preset's settings),
# text encoding and VAE decode included; 3 steps measured, projected to 50.
#   FRAMES=81 bash bench/gpu_14b_pipeline.sh    (81 video frames = 21 latent; 321 = 81 latent needs ~15 min)
#   COMPILE=1 FRAMES=81 bash bench/gpu_14b_pipeline.sh   the same with regional compilation on both rows
set -uo pipefail
source bench/gpu_setup.sh
rm -rf /tmp/e2e-m  # the 1.3B's folder: the disk holds one of the two (14B + UMT5-XXL: ~40 GB)
M=/tmp/e2e-14b
BUILD=()
[ -f $M/model_index.json ] || BUILD=(--build_random Wan-AI/Wan2.1-T2V-14B-Diffusers)
PYTHONUNBUFFERED=1 python3 bench/e2e.py sample --preset wan2.1-t2v-14b --model_dir $M "${BUILD[@]}" --no_mp4 \
  --frames "${FRAMES:-81}" --height 720 --width 1280 --steps 3 --project_steps 50 --warmup first --out $OUT ${COMPILE:+--compile_blocks} \
  > $OUT/e2e_14b.log 2>&1
tail -14 $OUT/e2e_14b.log
