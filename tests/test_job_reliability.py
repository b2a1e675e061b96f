"""The job queue under load and faults: a job starts once, stop is never lost, reused pids and damaged
run folders do not break the queue (issue: reliability and security, items 5-8, and MAX_JOBS=abc)."""

import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import pytest

from engine import jobs
from engine.errors import ConfigError, InputError
from engine.jobs import RunDir, job_status, pump_queue, queue_position, stop_job, submit_job

# A stand-in worker: it holds a "GPU slot" for a while, then exits (its status then reads failed: done).
SLEEPER = [sys.executable, "-c", "import time; time.sleep(1.2)"]


def _starts(run: Path) -> int:
    log = run / "job.log"
    return log.read_text().count("\n--- ") if log.is_file() else 0


def _poller(root: str, seconds: float, sleeper: list[str]):
    jobs.JOB_COMMAND = sleeper  # set here too, so the poller works under any start method
    deadline = time.time() + seconds
    while time.time() < deadline:
        pump_queue(Path(root))
        time.sleep(0.01)


@pytest.mark.slow
def test_load_many_pollers_start_each_job_once_and_respect_max_jobs(tmp_path, monkeypatch):
    """4 processes polling while jobs are submitted and stopped: each job runs once, MAX_JOBS holds."""
    monkeypatch.setenv("RADIAL_STUDIO_MAX_JOBS", "2")
    monkeypatch.setattr(jobs, "JOB_COMMAND", SLEEPER)
    root = tmp_path / "runs"
    root.mkdir()
    ctx = multiprocessing.get_context("fork")
    pollers = [ctx.Process(target=_poller, args=(str(root), 25.0, SLEEPER)) for _ in range(4)]
    for p in pollers:
        p.start()
    runs = [root / f"job-{i}" for i in range(8)]
    most_alive = 0
    try:
        for i, run in enumerate(runs):
            submit_job(run, ["presets"], root)
            if i == 5:
                try:  # stopped while queued (or just started): it must not run twice, or at all if queued
                    stop_job(run)
                except InputError:  # it had already finished: nothing to stop
                    pass
            alive = sum(jobs.pid_alive(s.get("pid"), s.get("pid_started")) for s in map(job_status, runs[: i + 1]))
            most_alive = max(most_alive, alive)
            time.sleep(0.05)
        deadline = time.time() + 60
        while time.time() < deadline:
            statuses = [job_status(r) for r in runs]
            alive = sum(jobs.pid_alive(s.get("pid"), s.get("pid_started")) for s in statuses)
            most_alive = max(most_alive, alive)
            if all(s.get("state") not in ("queued", "running", "stopping") for s in statuses):
                break
            time.sleep(0.05)
    finally:
        for p in pollers:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert most_alive <= 2
    for i, run in enumerate(runs):
        expected = (0, 1) if i == 5 else (1,)
        assert _starts(run) in expected, (run.name, _starts(run), (run / "job.log").read_text())
    assert all(job_status(r)["state"] in ("failed", "stopped") for r in runs)  # every sleeper ran and exited


def test_stop_on_a_queued_job_takes_it_out_of_the_queue(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "JOB_COMMAND", SLEEPER)
    monkeypatch.setenv("RADIAL_STUDIO_MAX_JOBS", "1")
    root = tmp_path / "runs"
    first, second = root / "a", root / "b"
    assert submit_job(first, ["presets"], root)["state"] == "running"
    assert submit_job(second, ["presets"], root)["state"] == "queued" and queue_position(second) == 1
    stop_job(second)
    assert job_status(second)["state"] == "stopped" and RunDir(second).stop_requested()
    time.sleep(1.5)  # the first job ends
    pump_queue(root)
    assert _starts(second) == 0 and job_status(second)["state"] == "stopped"


def test_a_stop_asked_for_while_the_worker_starts_is_kept(tmp_path):
    """The worker no longer clears the stop flag at start-up: the run stops at its first step."""
    from engine.config import config_from_preset
    from engine.data.dataset import create_synthetic_dataset
    from engine.workers.trainer import train

    data = create_synthetic_dataset(tmp_path / "data", 3, seed=2)
    run = tmp_path / "run"
    RunDir(run).create().request_stop()  # pressed Stop before the worker got going
    status = train(config_from_preset("tiny-wan", data_dir=str(data), output_dir=str(run), max_steps=5,
                                      validation_steps=100, checkpointing_steps=100, sample_steps=0))
    assert status["state"] == "stopped" and status["step"] == 0
    assert not RunDir(run).stop_requested()  # spent once the run ended


def test_a_reused_pid_is_not_taken_for_the_job(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "JOB_COMMAND", SLEEPER)
    root = tmp_path / "runs"
    dead = RunDir(root / "dead").create()
    # The job's process is gone and its pid now belongs to another process (this one), started at another time.
    dead.update_status(state="running", pid=os.getpid(), pid_started=jobs.process_start_time(os.getpid()) - 3600,
                       argv=["presets"], created=1.0)
    assert job_status(dead.path)["state"] == "failed"
    assert json.loads(dead.status_path.read_text())["state"] == "running"  # reading wrote nothing
    waiting = root / "waiting"
    assert submit_job(waiting, ["presets"], root)["state"] == "running"  # the queue is not blocked
    alive = RunDir(root / "alive").create()
    alive.update_status(state="running", **jobs.this_process())
    assert job_status(alive.path)["state"] == "running"


@pytest.mark.parametrize("damage", ["list", "bad_created", "not_utf8", "bad_json"])
def test_one_damaged_run_folder_leaves_the_others_working(tmp_path, monkeypatch, damage):
    from engine.launch.training import list_runs, resume_training, training_status

    monkeypatch.setenv("RADIAL_STUDIO_RUNS", str(tmp_path))
    good = RunDir(tmp_path / "20260101-000000-good").create()
    good.update_status(state="finished", kind="train", created=10.0, step=3, total_steps=3)
    good.append_event({"type": "train", "step": 1, "loss": 1.0})
    with open(good.events_path, "a") as f:
        f.write("not json\n[1, 2]\n{\"type\": \"train\", \"step\": \"abc\"}\n")
    (good.checkpoints_dir / "step-abc").mkdir(parents=True)
    (good.samples_dir / "step-xyz").mkdir(parents=True)
    bad = tmp_path / "20260101-000001-bad"
    bad.mkdir()
    content = {"list": b"[1, 2]", "bad_created": json.dumps({"state": "finished", "created": "yesterday"}).encode(),
               "not_utf8": b"\xff\xfe{}", "bad_json": b"{\"state\": "}[damage]
    (bad / "status.json").write_bytes(content)
    rows = {r["run_id"]: r for r in list_runs(None)}
    assert rows[good.path.name]["state"] == "finished"
    shown = training_status(bad.name)
    expected = "finished" if damage == "bad_created" else "damaged"
    assert shown["state"] == expected
    if expected == "damaged":
        assert "damaged" in shown["error"] and "status.json" in shown["error"]
    view = training_status(good.path.name)
    assert [e["step"] for e in view["train_events"]] == [1] and view["checkpoints"] == [] and view["samples"] == {}
    with pytest.raises(Exception) as info:
        resume_training(bad.name)
    assert "run" in str(info.value)  # a clear refusal, not a traceback from the damaged file


def test_max_jobs_must_be_a_whole_number(monkeypatch, tmp_path):
    monkeypatch.setenv("RADIAL_STUDIO_MAX_JOBS", "abc")
    with pytest.raises(ConfigError, match=r"RADIAL_STUDIO_MAX_JOBS='abc' is not a whole number"):
        pump_queue(tmp_path)
    monkeypatch.setenv("RADIAL_STUDIO_MAX_JOBS", "0")
    with pytest.raises(ConfigError, match="at least 1"):
        pump_queue(tmp_path)


def test_stop_on_an_ended_run_says_so_and_leaves_no_flag_for_its_resume(tmp_path):
    for state in ("finished", "failed", "stopped"):
        run = RunDir(tmp_path / state).create()
        run.update_status(state=state)
        with pytest.raises(InputError, match=f"run '{state}' is {state}: there is nothing to stop"):
            stop_job(run.path)
        assert not run.stop_requested()  # a later resume is not stopped at its first step
