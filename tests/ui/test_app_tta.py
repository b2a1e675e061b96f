"""The Test-time adaptation tab through gradio_client (tiny backbone, CPU)."""

import time

import numpy as np
import pytest
from gradio_client import Client, handle_file

from engine.video import read_mp4, write_mp4


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url[0], verbose=False)


def _wait(client, run_id, timeout=400):
    deadline = time.time() + timeout
    while time.time() < deadline:
        raw = client.predict(run_id, api_name="/tta_status")[-1]
        if raw["state"] in ("finished", "failed", "stopped"):
            return raw
        time.sleep(1)
    raise AssertionError(f"timed out: {raw}")


@pytest.mark.slow
def test_tta_run_on_the_sample_clip_gives_video_and_metrics(client):
    out = client.predict(steps=4, api_name="/tta_run")  # every other parameter has a default
    run_id = out[0]
    raw = _wait(client, run_id)
    assert raw["state"] == "finished", raw
    assert len(raw["loss_events"]) == 4
    frames, _ = read_mp4(raw["videos"]["side_by_side"])
    assert frames.shape[0] == 65 and frames.shape[2] > 3 * 64  # ground truth | baseline | TTA, whole clip
    metrics = raw["metrics"]
    for key in ("psnr", "ssim", "temporal_consistency", "first_frame_psnr"):
        assert isinstance(metrics["baseline"][key], float) and isinstance(metrics["tta"][key], float)
    assert metrics["baseline"]["lpips"] is None and metrics["baseline"]["lpips_unavailable"]
    # The table is for reading (issue 16 defect 8): rounded values, which way is better, why LPIPS is missing.
    table = client.predict(run_id, api_name="/tta_status")[4]
    assert table["headers"] == ["metric", "better", "baseline", "TTA", "TTA - baseline"]
    rows = {row[0]: row for row in table["data"]}
    assert rows["PSNR (dB)"][1] == "higher" and rows["LPIPS"][1] == "lower" and rows["SSIM"][1] == "higher"
    psnr = rows["PSNR (dB)"]
    assert float(psnr[2]) == pytest.approx(metrics["baseline"]["psnr"], rel=1e-3) and len(psnr[2]) <= 7
    assert float(psnr[4]) == pytest.approx(metrics["difference"]["psnr"], rel=1e-3, abs=1e-4)
    assert rows["LPIPS"][2] == rows["LPIPS"][3] == "n/a"
    assert rows["LPIPS"][4] == f"not computed: {metrics['baseline']['lpips_unavailable']}"


def test_tta_bad_inputs_are_clear(client, tmp_path):
    short = tmp_path / "short.mp4"
    write_mp4(np.random.default_rng(0).integers(0, 255, (20, 64, 64, 3), dtype=np.uint8), short, fps=8)
    with pytest.raises(Exception, match=r"has 20 frames \(by its header\); test-time adaptation needs at least 65"):
        client.predict(handle_file(str(short)), api_name="/tta_run")
    with pytest.raises(Exception, match="rank"):
        client.predict(None, "tiny-wan", 0, api_name="/tta_run")
    with pytest.raises(Exception, match="steps"):
        client.predict(None, "tiny-wan", 16, 2e-4, 0, api_name="/tta_run")


@pytest.mark.slow
def test_tta_tab_runs_the_open_sora_backbone(client):
    out = client.predict(None, "tiny-opensora2", 4, 2e-4, 2, "continuation", 0, "", api_name="/tta_run")
    raw = _wait(client, out[0])
    assert raw["state"] == "finished", raw
    assert raw["metrics"]["continuation"] == "v2v_head" and len(raw["loss_events"]) == 2
