#!/usr/bin/env bash
# Regional compilation on the H200: bench/e2e.py with and without --compile_blocks in one run, 1.3B at 480p,
# random weights at the official sizes (built once into /tmp/e2e-m, reused while the machine stays warm).
#   bash bench/gpu_compile_session.sh train    # one LoRA step at 321 frames: compiled, then eager
#   bash bench/gpu_compile_session.sh sample   # generate_video at 321 frames, 3 steps projected to 50: same
#   bash bench/gpu_compile_session.sh tta      # one TTA clip at the preset's 256 px: compiled, then eager
#   bash bench/gpu_compile_session.sh profile  # compiled train and sample with --profile: kernel time by category
#   PROFILE_CASES=tta bash bench/gpu_compile_session.sh profile   # compiled TTA: each pattern's adaptation profiled
#   bash bench/gpu_compile_session.sh fp8      # compiled sample with the fp8 radial forward, then with bf16 (baseline)
#   bash bench/gpu_compile_session.sh cudagraph   # TTA clip compiled (default mode), then compiled with CUDA graphs
#                                              # (--compile_mode reduce-overhead)
#   bash bench/gpu_compile_session.sh graph train:in tta:in train:out   # compiled runs in this order, attention
#                                              # in the block graphs (in: the custom operators) or outside them
#                                              # (out: --attention_outside_graph): the A/B of the operators
set -uo pipefail
# Logs go to files under $OUT: a run cut off at its time limit still brings back what it printed.
source bench/gpu_setup.sh
CASE=${1:-train}
P=wan2.1-t2v-1.3b
M=/tmp/e2e-m
BUILD=()
[ -f $M/model_index.json ] || BUILD=(--build_random "$(python3 -c "from engine.presets import load_preset; print(load_preset('$P')['source'])")")
COMMON=(--preset $P --model_dir $M --no_mp4 --frames 321 --steps 3 --project_steps 50)
mkdir -p $OUT/compiled $OUT/eager
if [ "$CASE" = profile ]; then
  for c in ${PROFILE_CASES:-train sample}; do  # PROFILE_CASES=train: the step only (a shorter lease)
    PYTHONUNBUFFERED=1 python3 bench/e2e.py $c "${COMMON[@]}" "${BUILD[@]}" --compile_blocks --profile \
      --out $OUT/compiled > $OUT/profile_$c.log 2>&1
    BUILD=()
    grep -A5 "kernel time by category" $OUT/profile_$c.log; tail -8 $OUT/profile_$c.log | grep "^| 321"
  done
  exit 0
fi
if [ "$CASE" = fp8 ]; then  # the same compiled sampling rows, radial on backend triton_fp8, then on triton
  mkdir -p $OUT/fp8
  PYTHONUNBUFFERED=1 python3 bench/e2e.py sample "${COMMON[@]}" "${BUILD[@]}" --compile_blocks --backend triton_fp8 \
    --out $OUT/fp8 > $OUT/fp8.log 2>&1
  tail -8 $OUT/fp8.log
  PYTHONUNBUFFERED=1 python3 bench/e2e.py sample "${COMMON[@]}" --compile_blocks --out $OUT/compiled > $OUT/compiled.log 2>&1
  tail -8 $OUT/compiled.log
  exit 0
fi
if [ "$CASE" = cudagraph ]; then
  mkdir -p $OUT/cudagraph
  PYTHONUNBUFFERED=1 python3 bench/e2e.py tta "${COMMON[@]}" "${BUILD[@]}" --compile_blocks --out $OUT/compiled \
    > $OUT/compiled.log 2>&1
  tail -12 $OUT/compiled.log
  PYTHONUNBUFFERED=1 python3 bench/e2e.py tta "${COMMON[@]}" --compile_blocks --compile_mode reduce-overhead \
    --out $OUT/cudagraph > $OUT/cudagraph.log 2>&1
  tail -12 $OUT/cudagraph.log
  exit 0
fi
if [ "$CASE" = graph ]; then
  shift
  for run in "$@"; do  # case:in or case:out
    c=${run%%:*}; where=${run##*:}; extra=(); [ "$where" = out ] && extra=(--attention_outside_graph)
    mkdir -p $OUT/$where
    PYTHONUNBUFFERED=1 python3 bench/e2e.py $c "${COMMON[@]}" "${BUILD[@]}" --compile_blocks "${extra[@]}" \
      --out $OUT/$where > $OUT/${c}_$where.log 2>&1
    BUILD=()
    echo "== $run"; tail -8 $OUT/${c}_$where.log
  done
  exit 0
fi
PYTHONUNBUFFERED=1 python3 bench/e2e.py $CASE "${COMMON[@]}" "${BUILD[@]}" --compile_blocks --out $OUT/compiled \
  > $OUT/compiled.log 2>&1
tail -25 $OUT/compiled.log
PYTHONUNBUFFERED=1 python3 bench/e2e.py $CASE "${COMMON[@]}" --out $OUT/eager > $OUT/eager.log 2>&1
tail -12 $OUT/eager.log
