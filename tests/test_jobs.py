"""Jobs: a training subprocess whose state lives on disk."""

import json
import time
from pathlib import Path

import pytest

from engine.jobs import RunDir, job_status, kill_job, start_job, stop_job
from engine.data.dataset import create_synthetic_dataset


def _wait(run, predicate, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = job_status(run)
        if predicate(status):
            return status
        time.sleep(0.3)
    raise AssertionError(f"timed out; last status {job_status(run)}; log:\n{RunDir(run).log_tail()}")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jobs") / "data"
    create_synthetic_dataset(folder, 3, preset="tiny-wan", seed=4)
    return folder


def _argv(data, run, steps, *extra):
    return ["train", "--preset", "tiny-wan", "--data_dir", str(data), "--output_dir", str(run), "--max_steps",
            str(steps), "--checkpointing_steps", "100", "--validation_steps", "100",
            "--use_gradient_checkpointing", "false", "--quiet", *extra]


@pytest.mark.slow
def test_stop_checkpoints_and_resume_finishes(data, tmp_path):
    run = tmp_path / "run"
    start_job(run, _argv(data, run, 200))
    _wait(run, lambda s: s.get("step", 0) >= 2)
    stop_job(run)
    status = _wait(run, lambda s: s.get("state") in ("stopped", "failed", "finished"))
    assert status["state"] == "stopped", status
    ckpts = sorted((run / "checkpoints").iterdir())
    assert ckpts and int(ckpts[-1].name.split("-")[1]) == status["step"]  # stop wrote a checkpoint at its step
    start_job(run, _argv(data, run, status["step"] + 2, "--resume"))
    final = _wait(run, lambda s: s.get("state") in ("finished", "failed"))
    assert final["state"] == "finished" and final["step"] == status["step"] + 2
    events = RunDir(run).read_events("train")
    assert [e["step"] for e in events] == list(range(1, final["step"] + 1))


def test_dead_process_is_reported_failed_with_its_log(data, tmp_path):
    run = tmp_path / "run"
    start_job(run, _argv(data, run, 10_000))
    _wait(run, lambda s: s.get("step", 0) >= 1)
    kill_job(run)
    status = _wait(run, lambda s: s.get("state") != "running")
    assert status["state"] == "failed" and "exited unexpectedly" in status["error"]
    assert "log_tail" in status


def test_job_with_bad_arguments_fails_with_clear_log(tmp_path):
    run = tmp_path / "run"
    start_job(run, ["train", "--data_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "out")])
    status = _wait(run, lambda s: s.get("state") != "running")
    assert status["state"] == "failed"
    assert "does not exist" in RunDir(run).log_tail()
