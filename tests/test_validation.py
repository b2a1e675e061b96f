"""Geometry checks with the model family's factors (Wan-architecture: 4x in time, sizes x16)."""

import pytest

from engine.errors import InputError
from engine.models import family_named
from engine.validation import check_frame_count, check_size, nearest_valid_frame_counts


def test_frame_counts():
    for ok in (1, 5, 17, 69, 81, 161):
        assert check_frame_count(ok, "num_frames", 4) == ok
    assert nearest_valid_frame_counts(16, 4) == (13, 17)
    assert nearest_valid_frame_counts(70, 4) == (69, 73)
    with pytest.raises(InputError, match=r"num_frames=16 .* 4k\+1 .* 13 or 17"):
        check_frame_count(16, "num_frames", 4)
    with pytest.raises(InputError, match="at least 1"):
        check_frame_count(0, "num_frames", 4)
    # another VAE, another rule
    assert check_frame_count(17, "num_frames", 8) == 17
    with pytest.raises(InputError, match=r"8k\+1 .* 9 or 17"):
        check_frame_count(13, "num_frames", 8)


def test_sizes():
    assert check_size(64, 1280, 16) == (64, 1280)
    with pytest.raises(InputError, match=r"height=100 .* multiple of 16 .*Nearest valid: 96 or 112"):
        check_size(100, 64, 16)
    with pytest.raises(InputError, match=r"width=8 "):
        check_size(64, 8, 16)
    with pytest.raises(InputError, match=r"width=48 .* multiple of 32"):
        check_size(64, 48, 32)


def test_the_family_supplies_the_factors():
    fam = family_named("wan")
    assert (fam.temporal_factor, fam.size_multiple) == (4, 16)
    assert fam.check_frame_count(17) == 17 and fam.latent_frames(17) == 5 and fam.pixel_frames(5) == 17
    with pytest.raises(InputError, match="13 or 17"):
        fam.check_frame_count(16)
