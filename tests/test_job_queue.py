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


def test_generate_and_compare_are_refused_while_a_job_holds_the_gpu_naming_it(tmp_path, monkeypatch):
    """Issue 16 defect 9: Generate and Compare ran inside the request beside a running training job."""
    from engine import api
    from engine.errors import InputError
    from engine.jobs import RunDir, this_process

    monkeypatch.setenv("RADIAL_STUDIO_MAX_JOBS", "1")
    monkeypatch.setenv("RADIAL_STUDIO_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("RADIAL_STUDIO_OUTPUTS", str(tmp_path / "outputs"))
    RunDir(tmp_path / "runs" / "20261202-101010-abcdef").create().update_status(state="running", **this_process())
    with pytest.raises(InputError, match=r"Generate needs the GPU, and run 20261202-101010-abcdef is using it.*"
                                         r"RADIAL_STUDIO_MAX_JOBS.*stop it"):
        api.generate("a red ball", preset="tiny-wan", steps=1, num_frames=5)
    with pytest.raises(InputError, match="Compare needs the GPU"):
        api.compare("a red ball", preset="tiny-wan", steps=1, base_frames=5, extended_frames=9)
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").iterdir())  # nothing written
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()) == ["20261202-101010-abcdef"]  # no lease


def test_a_request_on_the_gpu_holds_a_slot_so_queued_jobs_wait_for_it(tmp_path, monkeypatch):
    from engine.jobs import RunDir, gpu_request

    monkeypatch.setenv("RADIAL_STUDIO_MAX_JOBS", "1")
    root = tmp_path / "runs"
    started = []
    monkeypatch.setattr("engine.jobs.start_job", lambda path, argv: started.append(path.name))
    # A lease left by a request whose process died does not count, and is cleared.
    RunDir(root / "_request-dead").create().update_status(state="running", pid=2**22 + 12345, pid_started=1.0)
    with gpu_request("Generate", root):
        assert not (root / "_request-dead").exists()
        assert submit_job(root / "queued-run", ["train"], root)["state"] == "queued"  # the request holds the slot
        assert started == []
        with pytest.raises(Exception, match="another Generate or Compare request is using it"):
            with gpu_request("Compare", root):
                pass
    assert started == ["queued-run"]  # the request's end starts the queued job
    assert not any(p.name.startswith("_request-") for p in root.iterdir())
