"""Checks on video geometry. The factors come from the model family (`ModelFamily.temporal_factor`,
`ModelFamily.size_multiple`): a causal video VAE takes factor*k+1 frames (the first frame alone, then
whole chunks), and pixel sizes must be multiples of the VAE's spatial factor times the patch size."""

from .errors import InputError


def nearest_valid_frame_counts(num_frames: int, factor: int) -> tuple[int, int]:
    lower = max(1, ((num_frames - 1) // factor) * factor + 1)
    upper = lower if lower >= num_frames else lower + factor
    return lower, upper


def check_frame_count(num_frames, name: str, factor: int) -> int:
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


def check_size(height, width, multiple: int) -> tuple[int, int]:
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
                f"(the VAE's spatial factor times the patch size). Nearest valid: {nearest}."
            )
    return height, width
