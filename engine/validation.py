"""Checks on video geometry shared by presets, generation and training."""

from .errors import InputError

# Wan-family VAEs compress time 4x causally (first frame alone) and space 8x; the
# transformer patches latents 2x2, so pixel sizes must be multiples of 16.
TEMPORAL_FACTOR = 4
SIZE_MULTIPLE = 16


def nearest_valid_frame_counts(num_frames: int, factor: int = TEMPORAL_FACTOR) -> tuple[int, int]:
    lower = max(1, ((num_frames - 1) // factor) * factor + 1)
    upper = lower if lower >= num_frames else lower + factor
    return lower, upper


def check_frame_count(num_frames, name: str = "num_frames", factor: int = TEMPORAL_FACTOR) -> int:
    """Frame counts must be factor*k+1 (the VAE's causal first frame plus whole chunks)."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int):
        raise InputError(f"{name} must be an integer, got {num_frames!r}.")
    if num_frames < 1:
        raise InputError(f"{name} must be at least 1, got {num_frames}.")
    if (num_frames - 1) % factor != 0:
        lower, upper = nearest_valid_frame_counts(num_frames, factor)
        raise InputError(
            f"{name}={num_frames} is not a valid frame count: the VAE needs {factor}k+1 frames. "
            f"Nearest valid counts: {lower} or {upper}."
        )
    return num_frames


def check_size(height, width, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """Height and width must be positive multiples of `multiple`."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{name} must be an integer, got {value!r}.")
        if value < multiple or value % multiple != 0:
            lower = max(multiple, (value // multiple) * multiple)
            upper = lower if lower >= value else lower + multiple
            nearest = f"{lower}" if lower == upper else f"{lower} or {upper}"
            raise InputError(
                f"{name}={value} is not valid: it must be a multiple of {multiple} "
                f"(VAE 8x downsampling times the 2x2 patch). Nearest valid: {nearest}."
            )
    return height, width


def latent_frames(num_frames: int, factor: int = TEMPORAL_FACTOR) -> int:
    return (num_frames - 1) // factor + 1
