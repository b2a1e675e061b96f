import numpy as np
import pytest

from engine.errors import ConfigError, InputError
from engine.generate import generate_video
from engine.video import read_mp4


def test_tiny_generates_a_17_frame_video_deterministically(tmp_path):
    steps_seen = []
    first = generate_video("a red circle moves left", num_frames=17, height=64, width=64, steps=3, seed=7,
                           out_path=tmp_path / "a.mp4", progress=lambda done, total: steps_seen.append((done, total)))
    assert first.frames.shape == (17, 64, 64, 3) and first.frames.dtype == np.uint8
    assert first.frames.std() > 1  # not a blank video
    assert steps_seen[-1] == (3, 3)
    frames, fps = read_mp4(first.path)
    assert frames.shape == (17, 64, 64, 3) and fps == 8
    second = generate_video("a red circle moves left", num_frames=17, height=64, width=64, steps=3, seed=7,
                            out_path=tmp_path / "b.mp4")
    assert np.array_equal(first.frames, second.frames)
    other = generate_video("a red circle moves left", num_frames=17, height=64, width=64, steps=3, seed=8,
                           out_path=tmp_path / "c.mp4")
    assert not np.array_equal(first.frames, other.frames)
    assert first.settings["seed"] == 7 and first.settings["attention"]["pattern"] == "radial"


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_frames": 16}, InputError, r"num_frames=16 .* 13 or 17"),
        ({"height": 100, "width": 100}, InputError, r"height=100 .* 96 or 112"),
        ({"prompt": "   "}, InputError, "prompt is empty"),
        ({"preset": "no-such-preset"}, ConfigError, "preset 'no-such-preset' not found"),
        ({"steps": 0}, InputError, "steps"),
    ],
)
def test_bad_generation_inputs(kwargs, error, match, tmp_path):
    out = tmp_path / "x.mp4"
    args = {"prompt": "a cat", "out_path": out, **kwargs}
    with pytest.raises(error, match=match):
        generate_video(args.pop("prompt"), **args)
    assert not out.exists()
