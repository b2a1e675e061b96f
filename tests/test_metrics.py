"""Continuation metrics against hand-computed values on known inputs; LPIPS availability and plumbing."""

import math

import numpy as np
import pytest
import torch

from engine.errors import InputError
from engine.metrics import (
    LPIPS_CHANNELS, PSNR_CAP, AlexNetFeatures, continuation_metrics, frame_metrics, lpips_weights, metric_difference,
)


def _video(frames=8, h=32, w=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(40, 216, size=(frames, h, w, 3), dtype=np.uint8)


@pytest.fixture
def no_lpips_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("RADIAL_STUDIO_LPIPS_ALEXNET", str(tmp_path / "missing-alexnet.pth"))
    monkeypatch.setenv("RADIAL_STUDIO_LPIPS_LINEAR", str(tmp_path / "missing-alex.pth"))


def test_identical_frames_are_perfect(no_lpips_weights):
    ref = _video()
    m = frame_metrics(ref, ref.copy())
    assert m["psnr"] == PSNR_CAP and m["first_frame_psnr"] == PSNR_CAP  # MSE 0 -> the documented 100 dB cap
    assert m["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert m["temporal_consistency"] == 0.0
    assert m["num_frames"] == 8


def test_psnr_of_a_known_uniform_noise_level(no_lpips_weights):
    """Every pixel off by exactly +-10 grey levels: MSE = (10/255)^2, PSNR = 10*log10(1/MSE) in every frame."""
    ref = _video()
    signs = np.where(np.random.default_rng(1).random(ref.shape) < 0.5, -10, 10)
    gen = (ref.astype(int) + signs).astype(np.uint8)
    mse = (10 / 255) ** 2
    m = frame_metrics(gen, ref)
    assert m["psnr"] == pytest.approx(10 * math.log10(1 / mse), abs=1e-3)
    assert m["first_frame_psnr"] == pytest.approx(10 * math.log10(1 / mse), abs=1e-3)
    assert 0 < m["ssim"] < 1


def test_psnr_is_the_mean_over_frames_and_the_seam_is_the_first_frame(no_lpips_weights):
    ref = np.full((3, 16, 16, 3), 100, np.uint8)
    offsets = [5, 20, 40]
    gen = np.stack([np.full((16, 16, 3), 100 + d, np.uint8) for d in offsets])
    per_frame = [10 * math.log10(1 / (d / 255) ** 2) for d in offsets]
    m = frame_metrics(gen, ref)
    assert m["psnr"] == pytest.approx(np.mean(per_frame), abs=1e-3)
    assert m["first_frame_psnr"] == pytest.approx(per_frame[0], abs=1e-3)


def test_temporal_consistency_measures_changes_not_offsets(no_lpips_weights):
    # the real clip brightens by 3, 6, 9 ... levels; a generated copy shifted by a constant changes identically
    levels = 60 + 3 * np.arange(6) ** 2
    ref = np.broadcast_to(levels[:, None, None, None], (6, 8, 8, 3)).astype(np.uint8).copy()
    shifted = (ref.astype(int) + 25).astype(np.uint8)
    assert frame_metrics(shifted, ref)["temporal_consistency"] == pytest.approx(0.0, abs=1e-7)
    # a frozen video misses every change: error = mean |ref[t+1] - ref[t]| (here in grey levels / 255)
    frozen = np.broadcast_to(ref[:1], ref.shape).copy()
    expected = np.mean(np.abs(np.diff(levels))) / 255
    assert frame_metrics(frozen, ref)["temporal_consistency"] == pytest.approx(expected, abs=1e-6)


def test_continuation_metrics_use_only_the_predicted_frames(no_lpips_weights):
    gt = _video(frames=65, h=16, w=16)
    gen = gt.copy()
    gen[:33] = 0  # the conditioning frames do not count
    m = continuation_metrics(gen, gt, cond_frames=33)
    assert m["frames"] == [34, 65] and m["num_frames"] == 32 and m["psnr"] == PSNR_CAP
    gen[40] = 255 - gen[40]
    assert continuation_metrics(gen, gt, cond_frames=33)["psnr"] < PSNR_CAP
    with pytest.raises(InputError, match="differ in shape"):
        continuation_metrics(gen[:64], gt)
    with pytest.raises(InputError, match="cond_frames"):
        continuation_metrics(gen, gt, cond_frames=65)
    assert metric_difference({"psnr": 30.0, "ssim": 0.5, "lpips": None}, {"psnr": 28.0, "ssim": 0.75, "lpips": 0.2}) == \
        {"psnr": 2.0, "ssim": -0.25}


def test_lpips_reports_unavailable_with_the_reason(no_lpips_weights, tmp_path):
    alex, lin, reason = lpips_weights()
    assert alex is None and lin is None
    assert "missing-alexnet.pth" in reason and "RADIAL_STUDIO_LPIPS_ALEXNET" in reason and "missing-alex.pth" in reason
    m = frame_metrics(_video(frames=2), _video(frames=2, seed=3))
    assert m["lpips"] is None and "AlexNet weights not found" in m["lpips_unavailable"]


def _synthetic_lpips_files(tmp_path, scale=1.0):
    """Weight files with the right names and shapes but synthetic values: they test plumbing, not LPIPS."""
    torch.manual_seed(0)
    alex = {k: v.clone() for k, v in AlexNetFeatures().state_dict().items()}
    alex["classifier.1.weight"] = torch.zeros(4, 4)  # torchvision's file also holds the classifier: ignored
    torch.save(alex, tmp_path / "alexnet.pth")
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) * scale for i, c in enumerate(LPIPS_CHANNELS)}
    path = tmp_path / f"alex-{scale}.pth"
    torch.save(lin, path)
    return tmp_path / "alexnet.pth", path


def test_lpips_plumbing_with_synthetic_weight_files(monkeypatch, tmp_path):
    """PLUMBING TEST, not a metric-value test: synthetic weight files exercise loading and the computation path."""
    alex, lin = _synthetic_lpips_files(tmp_path)
    monkeypatch.setenv("RADIAL_STUDIO_LPIPS_ALEXNET", str(alex))
    monkeypatch.setenv("RADIAL_STUDIO_LPIPS_LINEAR", str(lin))
    a, b = _video(frames=3, h=64, w=64), _video(frames=3, h=64, w=64, seed=5)
    same = frame_metrics(a, a)
    assert same["lpips"] == pytest.approx(0.0, abs=1e-7) and "lpips_unavailable" not in same
    d_ab, d_ba = frame_metrics(a, b)["lpips"], frame_metrics(b, a)["lpips"]
    assert d_ab > 0 and d_ab == pytest.approx(d_ba, rel=1e-5)
    # the linear heads weight the distance linearly: doubling them doubles LPIPS
    _, lin2 = _synthetic_lpips_files(tmp_path, scale=2.0)
    monkeypatch.setenv("RADIAL_STUDIO_LPIPS_LINEAR", str(lin2))
    assert frame_metrics(a, b)["lpips"] == pytest.approx(2 * d_ab, rel=1e-4)


def test_lpips_refuses_a_wrong_weight_file(monkeypatch, tmp_path):
    alex, _ = _synthetic_lpips_files(tmp_path)
    bad = tmp_path / "bad.pth"
    torch.save({"lin0.model.1.weight": torch.rand(1, 3, 1, 1)}, bad)  # wrong shape, missing heads
    monkeypatch.setenv("RADIAL_STUDIO_LPIPS_ALEXNET", str(alex))
    monkeypatch.setenv("RADIAL_STUDIO_LPIPS_LINEAR", str(bad))
    m = frame_metrics(_video(frames=2, h=64, w=64), _video(frames=2, h=64, w=64, seed=2))
    assert m["lpips"] is None and "could not be loaded" in m["lpips_unavailable"]
