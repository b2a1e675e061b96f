"""Hugging Face Spaces and ZeroGPU support.

On a ZeroGPU Space a GPU is lent to a function only while it runs under `spaces.GPU`, for at
most the duration it asks for. `gpu_task(duration)` wraps the GPU work of generation, compare
and TTA that way when the `spaces` package is importable, and is a no-op everywhere else (the
`spaces` decorator itself does nothing outside ZeroGPU). Durations are estimated from the work
(`work_seconds`, `generation_seconds`) and clamped to what ZeroGPU grants.

Training holds a GPU for its whole length, which ZeroGPU cannot do: `training_supported()`
says so plainly. ZeroGPU needs `spaces` imported before anything initialises CUDA: app.py
should import this module before the engine's models.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Callable

logger = logging.getLogger(__name__)

# ZeroGPU grants 60 s by default; longer calls must ask, and count against the user's quota.
MIN_SECONDS = 30
DEFAULT_SECONDS = 60
MAX_SECONDS = int(os.environ.get("RADIAL_STUDIO_ZEROGPU_MAX_SECONDS", "300"))

try:  # on Spaces this must happen before torch touches CUDA
    import spaces as _spaces  # type: ignore
except ImportError:  # the package is only installed on Spaces
    _spaces = None


def spaces_module():
    """The `spaces` package when importable, else None."""
    return _spaces


def on_spaces() -> bool:
    """True inside a Hugging Face Space (any hardware)."""
    return bool(os.environ.get("SPACE_ID"))


def on_zero_gpu() -> bool:
    """True on a ZeroGPU Space (the platform sets SPACES_ZERO_GPU)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true", "yes")


def clamp_seconds(seconds: float) -> int:
    return int(min(MAX_SECONDS, max(MIN_SECONDS, round(seconds))))


def gpu_task(duration: int | float | Callable[..., float] | None = None):
    """Decorator: run the function under `spaces.GPU(duration=...)` when `spaces` is importable.

    `duration` is seconds, or a function of the decorated function's arguments returning the
    seconds the call needs (estimated from the work); it is clamped to [MIN_SECONDS,
    MAX_SECONDS], and an estimator that fails falls back to DEFAULT_SECONDS. Without `spaces`
    the function is returned unchanged.
    """

    def decorate(func):
        if _spaces is None:
            return func
        if callable(duration):
            @functools.wraps(func)
            def estimate(*args, **kwargs):
                try:
                    return clamp_seconds(float(duration(*args, **kwargs)))
                except Exception as err:  # noqa: BLE001 - an estimate must never fail the call
                    logger.warning("GPU duration estimate failed (%s); asking for %d s", err, DEFAULT_SECONDS)
                    return DEFAULT_SECONDS

            return _spaces.GPU(duration=estimate)(func)
        return _spaces.GPU(duration=clamp_seconds(duration if duration is not None else DEFAULT_SECONDS))(func)

    return decorate


# ---------------------------------------------------------------------------- estimates

# A 1.3B model (Wan2.1 1.3B) at 81 frames, 480x832 (32,760 tokens): about 0.9 s per transformer forward on an
# H100/H200-class GPU with dense attention. Radial attention is cheaper at long lengths; the
# estimate stays on the safe side.
_REF_TOKENS = 21 * 30 * 52
_REF_SECONDS_PER_FORWARD = 0.9


def num_tokens(preset: dict, num_frames: int, height: int, width: int) -> int:
    """The transformer's token count for a video, by the preset's family layout."""
    from .models import family

    return family(preset).token_layout(int(num_frames), int(height), int(width)).num_tokens


def model_scale(preset: dict) -> float:
    """Cost relative to a 1.3B model: about width^2 (x10 for 14B), ~0 for the tiny models."""
    from .models import family

    if preset.get("source") == "tiny":
        return 0.01
    width = family(preset).model_width(preset)
    return (width / 1536) ** 2 if width else 10.0 if "14b" in str(preset.get("name", "")).lower() else 1.0


def work_seconds(forward_passes: int, tokens: int, scale: float = 1.0, overhead: float = 20.0) -> float:
    """Seconds for `forward_passes` transformer forwards of `tokens` tokens (backward counts as 2)."""
    per_forward = _REF_SECONDS_PER_FORWARD * scale * (max(tokens, 1) / _REF_TOKENS) ** 1.3
    return overhead + forward_passes * per_forward


def generation_seconds(preset: dict, num_frames: int, height: int, width: int, steps: int,
                       guidance_scale: float = 5.0, videos: int = 1) -> int:
    """A ZeroGPU duration for sampling `videos` videos (clamped)."""
    passes = steps * (2 if guidance_scale and guidance_scale > 1 else 1) * videos
    return clamp_seconds(work_seconds(passes, num_tokens(preset, num_frames, height, width), model_scale(preset)))


# ---------------------------------------------------------------------------- training


def training_supported() -> tuple[bool, str]:
    """(supported, message). Training is not supported on ZeroGPU."""
    if on_zero_gpu():
        return False, (
            "Training needs dedicated GPU hardware: on ZeroGPU a GPU is lent only for calls of a few minutes, "
            "while a training run holds one for its whole length. Duplicate this Space and choose a GPU under "
            "Settings -> Hardware (e.g. L40S or A100), or run Radial Studio on your own GPU machine. "
            "Generation, comparison and test-time adaptation work here."
        )
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_gpu = False
    if not has_gpu:
        return True, "No GPU here: training runs on the CPU, which is practical only with the tiny presets."
    return True, ""
