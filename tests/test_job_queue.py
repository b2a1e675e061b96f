"""One GPU job at a time: a second job waits in the on-disk queue and starts when the first ends."""

import time

import pytest

from engine.jobs import job_status, pump_queue, queue_position, submit_job
from engine.data.dataset import create_synthetic_dataset


def _argv(data, run):
    return ["train", "--preset", "tiny-wan", "--data_dir", str(data), "--output_dir", str(run), "--max_steps", "3",
            "--checkpointing_steps", "100", "--validation_steps", "100", "--use_gradient_checkpointing", "false",
            "--quiet"]


@pytest.mark.slow
def test_second_job_waits_then_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("RADIAL_STUDIO_MAX_JOBS", "1")
    data = tmp_path / "data"
    create_synthetic_dataset(data, 3, preset="tiny-wan", seed=9)
    root = tmp_path / "runs"
    root.mkdir()
    first, second = root / "a", root / "b"
    assert submit_job(first, _argv(data, first), root)["state"] == "running"
    status = submit_job(second, _argv(data, second), root)
    assert status["state"] == "queued" and queue_position(second) == 1
    deadline = time.time() + 300
    while time.time() < deadline and job_status(second).get("state") not in ("finished", "failed"):
        pump_queue(root)  # what the app's poller does
        if job_status(first).get("state") in ("running", "queued"):
            assert job_status(second)["state"] == "queued"
        time.sleep(0.5)
    assert job_status(first)["state"] == "finished"
    assert job_status(second)["state"] == "finished"
    assert job_status(second)["started"] >= job_status(first)["updated"] - 1
