"""Issue 16, "Getting results out" and "Run management": the engine calls the Length extension and TTA tabs make.

Every bad input gets a clear message and leaves everything as it was.
"""

import json
import os
import time
from pathlib import Path

import pytest

from engine import api
from engine.errors import ConfigError, InputError
from engine.jobs import RunDir, atomic_write_json


@pytest.fixture
def roots(tmp_path, monkeypatch):
    for name, sub in (("RADIAL_STUDIO_RUNS", "runs"), ("RADIAL_STUDIO_DATA_ROOT", "data")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(name, str(tmp_path / sub))
    return tmp_path


def _run(roots, name, state="finished", kind="train", created=None, **status):
    run = RunDir(roots / "runs" / name).create()
    run.update_status(**{"state": state, "kind": kind, "created": created or time.time(), "step": 0, "total_steps": 4,
                         **status})
    return run


def _lora_run(roots, name, config=None):
    run = _run(roots, name)
    (run.path / "final").mkdir()
    for f in ("pytorch_lora_weights.safetensors", "pytorch_lora_weights_high.safetensors",
              "lora_comfyui.safetensors", "lora_comfyui_high.safetensors", "adapter_config.json"):
        (run.path / "final" / f).write_bytes(b"weights")
    atomic_write_json(run.config_path, config or {
        "preset": "tiny-wan", "max_steps": 10, "lora_rank": 8,
        "data_dir": str(roots / "runs" / "_datasets" / name), "output_dir": str(run.path)})
    return run


# ---------------------------------------------------------------------------- downloads


def test_downloads_are_the_lora_files_and_a_config_without_server_folders(roots):
    run = _lora_run(roots, "done")
    (run.path / "job.log").write_text("secret")
    out = api.run_downloads("done")
    by_kind = {}
    for f in out["files"]:
        by_kind.setdefault(f["kind"], []).append(f["name"])
    assert by_kind == {"diffusers": ["pytorch_lora_weights.safetensors", "pytorch_lora_weights_high.safetensors"],
                       "comfyui": ["lora_comfyui.safetensors", "lora_comfyui_high.safetensors"],
                       "config": ["done-config.json"]}
    config = json.loads(Path(out["files"][-1]["path"]).read_text())
    assert config == {"preset": "tiny-wan", "max_steps": 10, "lora_rank": 8}  # no data_dir / output_dir
    assert str(roots) not in json.dumps(config)


def test_downloads_never_follow_a_link_out_of_the_run_and_refuse_other_folders(roots, tmp_path):
    run = _lora_run(roots, "linked")
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(b"not yours")
    (run.path / "final" / "pytorch_lora_weights.safetensors").unlink()
    (run.path / "final" / "pytorch_lora_weights.safetensors").symlink_to(secret)
    names = [f["name"] for f in api.run_downloads("linked")["files"]]
    assert "pytorch_lora_weights.safetensors" not in names
    for bad in ("../linked", "_datasets", "/etc", "nowhere"):
        with pytest.raises(InputError, match="unknown run"):
            api.run_downloads(bad)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (roots / "runs" / "link-run").symlink_to(outside)
    with pytest.raises(InputError, match="outside the runs folder"):
        api.run_downloads("link-run")


def test_a_run_without_lora_gives_its_config_and_says_why(roots):
    run = _run(roots, "running-ish", state="stopped")
    atomic_write_json(run.config_path, {"preset": "tiny-wan"})
    out = api.run_downloads("running-ish")
    assert [f["kind"] for f in out["files"]] == ["config"] and "No LoRA yet" in out["note"]
    _run(roots, "empty", state="queued")
    with pytest.raises(InputError, match="nothing to download yet"):
        api.run_downloads("empty")


# ---------------------------------------------------------------------------- import and clone


def _names(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != ".queue.lock")


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_an_original_format_config_fills_the_form(roots, tmp_path):
    path = _write(tmp_path, "config.json", json.dumps({"preset": "tiny-wan", "lr": 3e-4, "lora_rank": 4,
                                                       "dataset_dir": "/data/videos", "max_steps": 12}))
    out = api.import_training_config(str(path))
    assert out["preset"] == "tiny-wan" and out["settings"]["learning_rate"] == 3e-4
    assert out["settings"]["lora_rank"] == 4 and out["settings"]["max_steps"] == 12
    assert out["given"] == ["learning_rate", "lora_rank", "max_steps"] and out["dropped"] == ["data_dir"]
    assert "data_dir" not in out["settings"] and "output_dir" not in out["settings"]
    defaults = api.training_defaults("tiny-wan")
    assert out["settings"]["base_num_frames"] == defaults["base_num_frames"]  # the rest: the preset's


@pytest.mark.parametrize("text, match", [
    ("{not json", r"config file 'bad.json': invalid JSON at line 1"),
    ("[1, 2]", r"config file 'bad.json': expected a JSON object"),
    ('{"lora_rank": 0}', r"config file 'bad.json': .*'lora_rank'"),
    ('{"lora_rank": "eight"}', r"config file 'bad.json': .*'lora_rank'"),
    ('{"extended_num_frames": 5, "base_num_frames": 9}', r"'extended_num_frames'"),
    ('{"warp_speed": 9}', r"unknown setting\(s\) \['warp_speed'\]"),
    ('{"preset": "../../etc/passwd.json"}', r"field 'preset'=.* is not a preset of this app"),
    ('{"preset": "/tmp/evil.json"}', r"field 'preset'=.* is not a preset of this app"),
    ('{"model_id": "/srv/models/wan"}', r"field 'model_id'=.* not a Hub model id"),
    ('{"model_id": "../weights"}', r"field 'model_id'=.* not a Hub model id"),
])
def test_a_bad_config_is_refused_naming_the_file_and_the_field(roots, tmp_path, text, match):
    path = _write(tmp_path, "bad.json", text)
    with pytest.raises(ConfigError, match=match) as info:
        api.import_training_config(str(path))
    assert str(tmp_path) not in str(info.value)  # the upload's name, never its server path
    assert _names(roots / "runs") == []  # nothing written


def test_a_missing_or_huge_config_file_is_refused(roots, tmp_path):
    with pytest.raises(InputError, match="'gone.json' is missing"):
        api.import_training_config(str(tmp_path / "gone.json"))
    big = _write(tmp_path, "big.json", " " * (2 << 20) + "{}")
    with pytest.raises(InputError, match="'big.json' is 2.0 MiB"):
        api.import_training_config(str(big))


def test_clone_takes_a_runs_settings_and_data_source_but_never_its_folders(roots):
    run = _lora_run(roots, "past", config=None)
    run.update_status(data_source="synthetic")
    out = api.clone_run_settings("past")
    assert out["preset"] == "tiny-wan" and out["settings"]["max_steps"] == 10 and out["data_source"] == "synthetic"
    assert "output_dir" not in out["settings"] and "data_dir" not in out["settings"]
    data = roots / "data" / "clips"
    data.mkdir()
    folder_run = _lora_run(roots, "from-folder", config={"preset": "tiny-wan", "data_dir": str(data),
                                                         "output_dir": "x"})
    folder_run.update_status(data_source="folder")
    assert api.clone_run_settings("from-folder")["folder"] == "clips"
    upload_run = _lora_run(roots, "from-upload")
    upload_run.update_status(data_source="upload")
    assert api.clone_run_settings("from-upload")["data_source"] is None  # upload the clips again
    with pytest.raises(InputError, match="unknown run"):
        api.clone_run_settings("../past")


# ---------------------------------------------------------------------------- delete, log, queue


def test_delete_removes_the_run_and_its_private_data_only(roots):
    run = _lora_run(roots, "old")
    for private in ("_datasets/old", "_datasets/old-uploads", "_inputs/old"):
        (roots / "runs" / private).mkdir(parents=True)
        (roots / "runs" / private / "clip.mp4").write_bytes(b"x")
    (roots / "runs" / "_datasets" / "other").mkdir()  # another run's data
    user_data = roots / "data" / "mine"
    user_data.mkdir()
    (user_data / "clip.mp4").write_bytes(b"x")
    atomic_write_json(run.config_path, {"preset": "tiny-wan", "data_dir": str(user_data)})
    api.run_downloads("old")  # writes _exports/old
    keep = _lora_run(roots, "keep")
    assert api.delete_run("old") == {"run_id": "old", "deleted": True}
    assert _names(roots / "runs") == ["_datasets", "_exports", "_inputs", "keep"]
    assert sorted(p.name for p in (roots / "runs" / "_datasets").iterdir()) == ["other"]
    assert not (roots / "runs" / "_exports" / "old").exists() and keep.path.is_dir()
    assert (user_data / "clip.mp4").is_file()  # the user's own data folder is never ours to delete
    assert [r["run_id"] for r in api.list_runs()] == ["keep"]
    with pytest.raises(InputError, match="unknown run 'old'"):
        api.delete_run("old")


@pytest.mark.parametrize("state", ["queued", "running", "stopping"])
def test_an_active_run_cannot_be_deleted(roots, state):
    run = _lora_run(roots, "busy")
    run.update_status(state=state, pid=os.getpid())
    with pytest.raises(InputError, match=f"run 'busy' is {state}: stop it first"):
        api.delete_run("busy")
    assert (run.path / "final" / "pytorch_lora_weights.safetensors").is_file() and run.config_path.is_file()


def test_delete_never_leaves_the_runs_root(roots, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "status.json").write_text('{"state": "finished"}')
    (roots / "runs" / "link").symlink_to(outside)
    for bad, match in (("link", "outside the runs folder"), ("../precious", "unknown run"), ("/tmp", "unknown run"),
                       ("_datasets", "unknown run"), ("", "unknown run")):
        with pytest.raises(InputError, match=match):
            api.delete_run(bad)
    assert (outside / "status.json").is_file()
    # a linked private folder of a run: the link goes, what it points to stays
    _run(roots, "r")
    (roots / "runs" / "_inputs").mkdir()
    (roots / "runs" / "_inputs" / "r").symlink_to(outside)
    api.delete_run("r")
    assert (outside / "status.json").is_file() and not (roots / "runs" / "_inputs" / "r").is_symlink()


def test_a_delete_cut_short_is_finished_by_the_next(roots):
    half = roots / "runs" / "_deleting-gone-abc123"
    (half / "final").mkdir(parents=True)
    (half / "status.json").write_text('{"state": "finished"}')
    assert [r["run_id"] for r in api.list_runs()] == []  # not a run any more
    _run(roots, "next")
    api.delete_run("next")
    assert _names(roots / "runs") == []


def test_the_log_is_the_end_of_job_log_without_server_paths(roots):
    run = _run(roots, "logged")
    lines = [f"step {i} in {roots / 'runs' / 'logged'}" for i in range(300)]
    run.log_path.write_text("\n".join(lines) + "\n")
    text = api.run_log("logged", 5)
    assert text.splitlines() == [f"step {i} in runs/logged" for i in range(295, 300)]
    assert str(roots) not in api.run_log("logged")
    assert len(api.run_log("logged").splitlines()) == 200
    assert "no log yet" in api.run_log(_run(roots, "fresh", state="queued").path.name)
    with pytest.raises(InputError, match="lines=0"):
        api.run_log("logged", 0)
    with pytest.raises(InputError, match="unknown run"):
        api.run_log("../logged")


def test_the_job_queue_lists_running_then_queued_jobs_in_order(roots):
    now = time.time()
    _run(roots, "done", state="finished", created=now - 50)
    _run(roots, "live", state="running", created=now - 40, pid=os.getpid(), started=now - 30, preset="tiny-wan")
    _run(roots, "second", state="queued", created=now - 20, queued_at=now - 5)
    _run(roots, "first", state="queued", kind="tta", created=now - 10, queued_at=now - 15)
    _run(roots, "_request-abc", state="running", kind="request", what="Generate", pid=os.getpid(), created=now)
    os.environ["RADIAL_STUDIO_MAX_JOBS"] = "1"
    try:
        queue = api.job_queue()
    finally:
        del os.environ["RADIAL_STUDIO_MAX_JOBS"]
    assert [(r["run_id"], r["kind"], r["state"], r["position"]) for r in queue] == [
        ("live", "train", "running", None), (None, "Generate", "running", None),
        ("first", "tta", "queued", 1), ("second", "train", "queued", 2)]
    assert queue[0]["preset"] == "tiny-wan"


# ---------------------------------------------------------------------------- compare, TTA list


def test_two_runs_losses_on_one_plot_with_fixed_series_names(roots):
    for name, scale in (("a", 1.0), ("b", 2.0)):
        run = _run(roots, name)
        for s in (1, 2, 3):
            run.append_event({"type": "train", "step": s, "loss": scale / s})
        run.append_event({"type": "validation", "step": 3, "val_loss": scale * 0.3})
    out = api.compare_run_losses("a", "b")
    assert out["runs"] == {"this run": "a", "other run": "b"}
    assert {r["series"] for r in out["rows"]} == set(api.COMPARE_SERIES)
    other = [r["value"] for r in out["rows"] if r["series"] == "other run: total"]
    assert other == [2.0, 1.0, pytest.approx(2 / 3)]
    smooth = [r["value"] for r in api.compare_run_losses("a", "b", 0.5)["rows"] if r["series"] == "this run: total"]
    assert smooth == [1.0, 0.75, pytest.approx(0.75 * 0.5 + 0.5 / 3)]
    _run(roots, "t", kind="tta")
    for bad, match in (("a", "compared with itself"), ("", "pick a second run"), ("t", "is a tta run"),
                       ("../b", "unknown run")):
        with pytest.raises(InputError, match=match):
            api.compare_run_losses("a", bad)


def test_tta_runs_are_listed_with_speed_and_eta(roots):
    now = time.time()
    run = _run(roots, "tta-live", state="running", kind="tta", pid=os.getpid(), step=4, total_steps=10,
               created=now - 5)
    for s in range(1, 5):  # 2 steps a second
        run.append_event({"type": "tta", "step": s, "loss": 1.0, "setting": "tta", "video_id": "v",
                          "time": now - 2 + s * 0.5})
    run.update_status(step=4)
    _run(roots, "train-run", kind="train")
    rows = api.list_tta_runs()
    assert [r["run_id"] for r in rows] == ["tta-live"]
    assert rows[0]["it_per_s"] == pytest.approx(2.0) and rows[0]["eta_seconds"] == pytest.approx(3.0)
    status = api.tta_status("tta-live")
    assert status["it_per_s"] == pytest.approx(2.0) and status["eta_seconds"] == pytest.approx(3.0)
