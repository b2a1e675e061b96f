# One device call: the HunyuanVideo and Wan2.2-A14B GPU rows (random weights at the official configs).
#   bash bench/gpu_families_session.sh      (on the GPU machine, repo root, carry .whl)
# HunyuanVideo at 129 frames on 6 of its 60 blocks (2 double + 4 single) and at 4x (513 frames) on 3 (1 + 2);
# one Wan2.2-A14B expert (the 14B architecture, block size 64) at 81 frames (21 latent) on 10 of 40 blocks and
# at 4x (321 frames, 81 latent) on 4. Each reduced row is composed to the whole model (bench/block_scaling.py).
#   PART=memory bash bench/gpu_families_session.sh   HunyuanVideo's whole-model training memory (the memory plan's
#       fit: two no-option lengths, 8 feed-forward slices, activation offload, then the preset's 33 -> 129 recipe
#       with offload and 8 slices as the check)
#   PART=more bash bench/gpu_families_session.sh     Wan2.2 TI2V-5B at 121 frames (31 latent, whole model) and 4x
#       (481, 121 latent, 6 of 30 blocks); HunyuanVideo 1.5 at 121 frames (6 of 54 blocks) and 4x (481, 2 blocks),
#       its dense rows on our processors (the stock one's N x N mask does not fit); SKIP_TI2V=1: the 1.5 rows only
#   PART=textparts bash bench/gpu_families_session.sh   joint attention's text parts on the fused flash kernels vs
#       float32 chunks (bench/joint_text_parts.py, one HunyuanVideo 1.5 layer at 121 frames), the 1.5 rows at 121
#       frames again (6 of 54 blocks), and the radial operators' host time per call (bench/radial_host_overhead.py);
#       WITH_HV=1: HunyuanVideo's 129-frame rows too (2 double + 4 single blocks; its 64 valid text keys of 256)
set -o pipefail
source bench/gpu_setup.sh
export PYTHONUNBUFFERED=1
cd bench
if [ "${PART:-}" = memory ]; then
  timeout 560 python3 train_memory.py --out "$OUT" --fit "" --base 33 \
    --full "hunyuan:none@49,hunyuan:none@65,hunyuan:chunk8@65,hunyuan:offload@97,hunyuan:offload+chunk8@129" \
    2>&1 | tee "$OUT/hunyuan_memory.log"
  exit 0
fi
if [ "${PART:-}" = textparts ]; then
  python3 joint_text_parts.py --out "$OUT" 2>&1 | tee "$OUT/joint_text_parts.log"
  python3 radial_host_overhead.py 2>&1 | tee "$OUT/radial_host_overhead.log"
  python3 hunyuan_e2e.py --out "$OUT" --source hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-720p_t2v \
    --frames 121 --train_frames 121 --double_blocks 6 --reps 1 2>&1 | tee "$OUT/hv15_121.log"
  [ "${WITH_HV:-}" = 1 ] && python3 hunyuan_e2e.py --out "$OUT" --frames 129 --train_frames 129 --double_blocks 2 \
    --single_blocks 4 --reps 1 2>&1 | tee "$OUT/hunyuan_129.log"
  exit 0
fi
if [ "${PART:-}" = more ]; then
  TI2V=Wan-AI/Wan2.2-TI2V-5B-Diffusers
  HV15=hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-720p_t2v
  if [ "${SKIP_TI2V:-}" != 1 ]; then
    python3 wan_e2e.py --out "$OUT" --config $TI2V --height 704 --width 1280 --block_size 64 --frames 31 --reps 1 \
      2>&1 | tee "$OUT/ti2v_31.log"
    python3 wan_e2e.py --out "$OUT" --config $TI2V --height 704 --width 1280 --block_size 64 --frames 121 --layers 6 \
      --reps 1 --warmup_frames 5 --skip_checks 2>&1 | tee "$OUT/ti2v_121.log"
  fi
  python3 hunyuan_e2e.py --out "$OUT" --source $HV15 --frames 121 --train_frames 121 --double_blocks 6 --reps 1 \
    2>&1 | tee "$OUT/hv15_121.log"
  python3 hunyuan_e2e.py --out "$OUT" --source $HV15 --frames 481 --train_frames 481 --double_blocks 2 --reps 1 \
    --warmup_frames 33 --skip_checks 2>&1 | tee "$OUT/hv15_481.log"
  exit 0
fi
A14B=Wan-AI/Wan2.2-T2V-A14B-Diffusers
python3 hunyuan_e2e.py --out "$OUT" --frames 129 --train_frames 129 --double_blocks 2 --single_blocks 4 --reps 1 \
    2>&1 | tee "$OUT/hunyuan_129.log"
python3 hunyuan_e2e.py --out "$OUT" --frames 513 --train_frames 513 --double_blocks 1 --single_blocks 2 --reps 1 \
    --warmup_frames 33 --skip_checks 2>&1 | tee "$OUT/hunyuan_513.log"
python3 wan_e2e.py --out "$OUT" --config $A14B --height 720 --width 1280 --block_size 64 --frames 21 --layers 10 \
    --reps 1 2>&1 | tee "$OUT/a14b_21.log"
python3 wan_e2e.py --out "$OUT" --config $A14B --height 720 --width 1280 --block_size 64 --frames 81 --layers 4 \
    --reps 1 --warmup_frames 5 --skip_checks 2>&1 | tee "$OUT/a14b_81.log"
