# Sourced by the bench/gpu_*_session.sh scripts on the GPU machine: installs the carried .whl/ (pure-Python
# wheels the machine lacks, site/imageio_ffmpeg and ffmpeg.xz, see bench/gpu_check_session.sh), sets the
# environment and makes the tiny dataset in /tmp/d.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>&1 | tail -2
cp -r .whl/site/imageio_ffmpeg /tmp/site/
python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('.whl/ffmpeg.xz'), open('/usr/local/bin/ffmpeg','wb'))"
chmod +x /usr/local/bin/ffmpeg
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 IMAGEIO_FFMPEG_EXE=/usr/local/bin/ffmpeg
python3 -m engine data create --output_dir /tmp/d --num_samples 3 --preset tiny-wan > /dev/null
