import pytest

from engine.errors import InputError
from engine.validation import check_frame_count, check_size, nearest_valid_frame_counts


def test_frame_counts():
    for ok in (1, 5, 17, 69, 81, 161):
        assert check_frame_count(ok) == ok
    assert nearest_valid_frame_counts(16) == (13, 17)
    assert nearest_valid_frame_counts(70) == (69, 73)
    with pytest.raises(InputError, match=r"num_frames=16 .* 4k\+1 .* 13 or 17"):
        check_frame_count(16)
    with pytest.raises(InputError, match="at least 1"):
        check_frame_count(0)


def test_sizes():
    assert check_size(64, 1280) == (64, 1280)
    with pytest.raises(InputError, match=r"height=100 .* multiple of 16 .*Nearest valid: 96 or 112"):
        check_size(100, 64)
    with pytest.raises(InputError, match=r"width=8 "):
        check_size(64, 8)
