#!/usr/bin/env bash
# Regional compilation on the H200: bench/e2e.py with and without --compile_blocks in one run, 1.3B at 480p,
# random weights at the official sizes (built once into /tmp/e2e-m, reused while the machine stays warm).
#   bash bench/gpu_compile_session.sh train    # one LoRA step at 321 frames: compiled, then eager
#   bash bench/gpu_compile_session.sh sample   # generate_video at 321 frames, 3 steps projected to 50: same
#   bash bench/gpu_compile_session.sh tta      # one TTA clip at the preset's 256 px: compiled, then eager
#   bash bench/gpu_compile_session.sh profile  # compiled train and sample with --profile: kernel time by category
#   bash bench/gpu_compile_session.sh fp8      # compiled sample with the fp8 radial forward, then with bf16 (baseline)
#   GRAPH_CASE=train bash bench/gpu_compile_session.sh graph  # compiled, attention in the block graphs (custom
#                                              # operators), then outside them (--attention_outside_graph): A/B
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
if [ "$CASE" = graph ]; then
  G=${GRAPH_CASE:-train}
  mkdir -p $OUT/outside
  PYTHONUNBUFFERED=1 python3 bench/e2e.py $G "${COMMON[@]}" "${BUILD[@]}" --compile_blocks --out $OUT/compiled \
    > $OUT/in_graph.log 2>&1
  tail -12 $OUT/in_graph.log
  PYTHONUNBUFFERED=1 python3 bench/e2e.py $G "${COMMON[@]}" --compile_blocks --attention_outside_graph \
    --out $OUT/outside > $OUT/outside.log 2>&1
  tail -12 $OUT/outside.log
  exit 0
fi
PYTHONUNBUFFERED=1 python3 bench/e2e.py $CASE "${COMMON[@]}" "${BUILD[@]}" --compile_blocks --out $OUT/compiled \
  > $OUT/compiled.log 2>&1
tail -25 $OUT/compiled.log
PYTHONUNBUFFERED=1 python3 bench/e2e.py $CASE "${COMMON[@]}" --out $OUT/eager > $OUT/eager.log 2>&1
tail -12 $OUT/eager.log
