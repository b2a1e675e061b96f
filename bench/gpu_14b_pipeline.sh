#!/usr/bin/env bash
# Issue 17's 14B row through the real pipeline: Wan2.1-T2V-14B with random weights at the official sizes, saved in
# diffusers format and loaded by the wan2.1-t2v-14b preset (bench/e2e.py --build_random), generate_video at
# 1280x720 with guidance, dense (the fastest SDPA backend, picked in the run) then radial (the preset's settings),
# text encoding and VAE decode included; 3 steps measured, projected to 50.
#   FRAMES=81 bash bench/gpu_14b_pipeline.sh    (81 video frames = 21 latent)
#   COMPILE=1 FRAMES=81 bash bench/gpu_14b_pipeline.sh   the same with regional compilation on both rows
#   FRAMES=321 STEPS=1 WARMUP=small RADIAL_STEPS_ONLY=1 bash bench/gpu_14b_pipeline.sh
#       81 latent frames in one 600 s call: one dense step is ~280 s, so each row measures one step, the full-shape
#       warm-up forwards are skipped, and the radial row's 2 dense timesteps are projected at the dense row's step
#       (bench/e2e.py --radial_steps_only; run 31 measured the two within 0.6% at 21 latent); SDPA=cudnn skips the
#       backend pick (~1 min at this length) where the same session's 81-frame call picked it
set -uo pipefail
source bench/gpu_setup.sh
rm -rf /tmp/e2e-m  # the 1.3B's folder: the disk holds one of the two (14B + UMT5-XXL: ~40 GB)
M=/tmp/e2e-14b
BUILD=()
[ -f $M/model_index.json ] || BUILD=(--build_random Wan-AI/Wan2.1-T2V-14B-Diffusers)
PYTHONUNBUFFERED=1 python3 bench/e2e.py sample --preset wan2.1-t2v-14b --model_dir $M "${BUILD[@]}" --no_mp4 \
  --frames "${FRAMES:-81}" --height 720 --width 1280 --steps "${STEPS:-3}" --project_steps 50 --warmup "${WARMUP:-first}" \
  --sdpa "${SDPA:-auto}" --out $OUT ${COMPILE:+--compile_blocks} ${RADIAL_STEPS_ONLY:+--radial_steps_only} \
  > $OUT/e2e_14b.log 2>&1
tail -14 $OUT/e2e_14b.log
