"""engine.launch.training: which run an empty run id means, and errors for unknown runs."""

import os
import time

import pytest

from engine.errors import InputError
from engine.jobs import RunDir
from engine.launch.training import active_or_newest_run, list_runs, resume_training, training_status


def _run(root, name, kind, state, created):
    RunDir(root / name).create().update_status(state=state, kind=kind, created=created, step=0, total_steps=1)


def test_active_run_wins_then_newest_and_kinds_are_kept_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("RADIAL_STUDIO_RUNS", str(tmp_path))
    assert active_or_newest_run("train") is None and list_runs() == []
    now = time.time()
    _run(tmp_path, "a-old-finished", "train", "finished", now - 30)
    _run(tmp_path, "b-stopped", "train", "stopped", now - 20)
    _run(tmp_path, "c-tta", "tta", "finished", now - 10)
    assert active_or_newest_run("train") == "b-stopped"
    assert active_or_newest_run(("tta", "tta-sweep")) == "c-tta"
    _run(tmp_path, "0-running", "train", "running", now - 40)  # the oldest, but running: the active one
    RunDir(tmp_path / "0-running").update_status(pid=os.getpid())  # a live process
    assert [r["run_id"] for r in list_runs("train")] == ["b-stopped", "a-old-finished", "0-running"]
    assert active_or_newest_run("train") == "0-running"


def test_unknown_or_finished_runs_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("RADIAL_STUDIO_RUNS", str(tmp_path))
    with pytest.raises(InputError, match="unknown run"):
        training_status("../etc")
    _run(tmp_path, "done", "train", "finished", time.time())
    with pytest.raises(InputError, match="has finished"):
        resume_training("done")


def test_run_settings_are_the_runs_config_and_a_run_without_one_is_a_clear_error(tmp_path, monkeypatch):
    from engine.jobs import atomic_write_json
    from engine.launch.training import run_settings

    monkeypatch.setenv("RADIAL_STUDIO_RUNS", str(tmp_path))
    _run(tmp_path, "with-config", "train", "finished", time.time())
    atomic_write_json(RunDir(tmp_path / "with-config").config_path, {"preset": "tiny-wan", "max_steps": 10})
    assert run_settings("with-config") == {"preset": "tiny-wan", "max_steps": 10}
    _run(tmp_path, "queued", "train", "queued", time.time())
    with pytest.raises(InputError, match="'queued' has no settings yet"):
        run_settings("queued")
    (tmp_path / "with-config" / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="config.json cannot be read"):
        run_settings("with-config")
    with pytest.raises(InputError):
        run_settings("../elsewhere")  # run ids are checked like every other run call
