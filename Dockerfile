# Radial Studio: the Gradio app on port 7860. Runs the tiny preset with no GPU, and the real
# presets with one (`docker run --gpus all -p 7860:7860 radial-studio`). Also the image of a
# Docker Space on the Hugging Face Hub (docs/spaces.md).
#
# Base image: the CUDA runtime (as the project asks for), with Python 3.11 from the deadsnakes
# PPA (Ubuntu 22.04 ships 3.10). torch==2.13.0 from PyPI brings its own CUDA libraries as
# nvidia-* wheels; the base adds the CUDA userspace and the NVIDIA Container Toolkit wiring
# (NVIDIA_* variables), and the host's driver comes in at `docker run --gpus all`.
FROM nvidia/cuda:12.8.1-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    GRADIO_ANALYTICS_ENABLED=False

# Python 3.11, and gcc: Triton compiles a small C launcher the first time a kernel runs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev gcc libc6-dev \
    && python3.11 -m venv /opt/venv \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:$PATH

# A non-root user with uid 1000 (the uid Hugging Face Spaces runs containers as).
RUN useradd --create-home --uid 1000 user
ENV HOME=/home/user \
    HF_HOME=/home/user/.cache/huggingface \
    TRITON_CACHE_DIR=/home/user/.cache/triton \
    RADIAL_STUDIO_CACHE=/home/user/.cache/radial-studio \
    RADIAL_STUDIO_OUTPUTS=/home/user/app/outputs \
    RADIAL_STUDIO_RUNS=/home/user/app/runs \
    RADIAL_STUDIO_DATA_ROOT=/home/user/app/data
WORKDIR /home/user/app

# Dependencies first (their layer is reused while only the code changes).
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY --chown=user app.py ./
COPY --chown=user engine ./engine
COPY --chown=user ui ./ui
COPY --chown=user presets ./presets
RUN mkdir -p outputs runs data && chown -R user:user /home/user/app

USER user
# Build the embedded tiny model once, so the first request is fast (and the image is smoke-tested).
RUN python -c "from engine.presets import load_preset; from engine.models.wan import ensure_tiny_model; ensure_tiny_model(load_preset('tiny-wan')['tiny'])"

EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=4)"
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]
