#!/usr/bin/env bash
# GPU smoke run of the whole length-extension path on the tiny preset: data -> train (bf16 autocast,
# Triton radial backend) -> generate with the LoRA. Needs an ffmpeg binary on the machine.
#   bash bench/train_smoke_gpu.sh
# On the lent GPU machine (no ffmpeg, no internet) carry wheels in the git-ignored .wheels/: diffusers,
# peft, ftfy, wcwidth, imageio-ffmpeg built from its sdist (no binary), and the binary from the
# imageio-ffmpeg wheel compressed with `xz -9` (48 MB: under the 64 MiB carry limit); then
#   python3 -m pip install --no-deps .wheels/*.whl
#   python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('.wheels/ffmpeg.xz'), open('/usr/local/bin/ffmpeg', 'wb'))"
#   chmod +x /usr/local/bin/ffmpeg
# Seen on an H100 (2026-11-23): finished 10 steps, validation loss 3.217 -> 3.153 -> 3.053, generate ran.
set -euo pipefail
FFMPEG=$(command -v ffmpeg || true)
if [ -z "$FFMPEG" ]; then echo "no ffmpeg binary on this machine: smoke run skipped"; exit 0; fi
export IMAGEIO_FFMPEG_EXE=$FFMPEG RADIAL_STUDIO_CACHE=${TMPDIR:-/tmp}/rs-smoke PYTHONUNBUFFERED=1
work=$(mktemp -d)
python3 -m engine data create --output_dir "$work/data" --num_samples 4 >/dev/null
python3 -m engine train --preset tiny-wan --data_dir "$work/data" --output_dir "$work/run" --max_steps 10 \
  --validation_steps 5 --checkpointing_steps 5 --sample_steps 2 --attention_backend triton --quiet
python3 -m engine generate --prompt "a red circle moves left" --num_frames 33 --lora_checkpoint_dir "$work/run/final" \
  --attention_backend triton --out "$work/g.mp4" --quiet
python3 - "$work" <<'PY'
import json, sys
run = sys.argv[1] + "/run"
status = json.load(open(run + "/status.json"))
vals = [json.loads(l) for l in open(run + "/events.jsonl") if '"validation"' in l]
print("status:", status["state"], status["step"], "val:", [round(v["val_loss"], 4) for v in vals])
PY
