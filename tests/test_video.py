import numpy as np
import pytest

from engine.errors import InputError
from engine.video import read_mp4, side_by_side, write_mp4


@pytest.mark.parametrize("frames, fps", [(65, 16), (81, 16), (17, 8), (65, 24), (81, 24), (33, 23.976)])
def test_mp4_roundtrip_keeps_every_frame(tmp_path, frames, fps):
    rng = np.random.default_rng(0)
    video = np.repeat(np.linspace(0, 255, frames).astype(np.uint8)[:, None, None, None], 32 * 48 * 3, axis=1)
    video = video.reshape(frames, 32, 48, 3)
    video[:, :4, :4] = rng.integers(0, 255, (frames, 4, 4, 3), dtype=np.uint8)
    path = write_mp4(video, tmp_path / "v.mp4", fps=fps)
    back, back_fps = read_mp4(path)
    assert back.shape == video.shape and back_fps == pytest.approx(fps, abs=0.01)
    # H.264 is lossy; the brightness ramp survives frame by frame.
    assert np.abs(back[:, 8:, 8:].mean(axis=(1, 2, 3)) - video[:, 8:, 8:].mean(axis=(1, 2, 3))).max() < 3


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(InputError, match="could not be decoded"):
        read_mp4(bad)
    with pytest.raises(InputError, match="does not exist"):
        read_mp4(tmp_path / "none.mp4")


def test_side_by_side_holds_the_shorter_video_and_labels():
    a = np.full((5, 32, 32, 3), 200, np.uint8)
    b = np.full((9, 32, 48, 3), 50, np.uint8)
    out = side_by_side([a, b], ["base", "extended"])
    assert out.shape[0] == 9 and out.shape[2] == 32 + 4 + 48
    assert (out[8, :32, :32] == 200).all()  # base holds its last frame
    assert out[0, 32:].max() > 100  # label text drawn, below the frames
    with pytest.raises(InputError):
        side_by_side([a], ["one", "two"])


def test_labels_fit_small_panels_whole_and_sit_below_the_frames():
    """Issue 16 defect 7: on 64-pixel panels the labels were cut ("base 17f dens") and drawn at the top,
    under Gradio's label badge."""
    panels = [np.full((3, 64, 64, 3), 90, np.uint8) for _ in range(3)]
    labels = ["base 17f dense", "LoRA 33f radial", "a much longer label than fits on one line"]
    out = side_by_side(panels, labels)
    assert (out[:, :64] == 90).all(axis=(0, 1, 3))[:64].all()  # the top is the video itself, no strip over it
    strip = out[0, 64:]
    for i in range(3):
        text = strip[:, i * 68:i * 68 + 64].max(axis=2) > 150
        cols = np.flatnonzero(text.any(axis=0))
        assert cols.size and cols.min() >= 1 and cols.max() <= 62, (labels[i], cols.min(), cols.max())


def test_lossless_roundtrip_is_exact(tmp_path):
    from engine.video import write_lossless

    video = np.random.default_rng(1).integers(0, 255, (65, 24, 40, 3), dtype=np.uint8)
    back, fps = read_mp4(write_lossless(video, tmp_path / "v.mkv", fps=24))
    assert np.array_equal(back, video) and fps == 24
