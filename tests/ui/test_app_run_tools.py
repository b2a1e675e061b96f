"""Issue 16, results and run management, through gradio_client: downloads, import, clone, delete, log, queue,
the TTA run list, and Stop on an ended run."""

import json
import os
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from engine.jobs import RunDir


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url[0], verbose=False)


@pytest.fixture(scope="module")
def finished(app_url, tiny_preset):
    from tests.run_factory import make_finished_run

    _, root = app_url
    run_id = "20261203-000001-abcdef"
    make_finished_run(root / "runs" / run_id, tiny_preset)
    RunDir(root / "runs" / run_id).update_status(kind="train", data_source="synthetic", created=time.time() - 100)
    return run_id


def test_the_lora_and_config_download_and_only_those(client, app_url, finished):
    _, root = app_url
    paths, note = client.predict(finished, api_name="/run_downloads")
    names = sorted(os.path.basename(p["path"] if isinstance(p, dict) else p) for p in paths)
    assert names == sorted([f"{finished}-config.json", "lora_comfyui.safetensors", "pytorch_lora_weights.safetensors"])
    got = {os.path.basename(p): p for p in (q["path"] if isinstance(q, dict) else q for q in paths)}
    final = root / "runs" / finished / "final" / "pytorch_lora_weights.safetensors"
    assert Path(got["pytorch_lora_weights.safetensors"]).read_bytes() == final.read_bytes()
    config = json.loads(Path(got[f"{finished}-config.json"]).read_text())
    assert config["max_steps"] == 10 and "output_dir" not in config and "data_dir" not in config
    assert str(root) not in json.dumps(config) and str(root) not in note
    for bad in ("../etc", "/etc/passwd", "_datasets"):
        with pytest.raises(Exception, match="unknown run"):
            client.predict(bad, api_name="/run_downloads")


def _form(out):
    """/train_config_import and /run_clone: preset, data source, folder, 16 settings, 4 memory options, note."""
    return {"preset": out[0], "data_source": out[1], "folder": out[2], "max_steps": out[3], "learning_rate": out[4],
            "lora_rank": out[5], "note": out[-1]}


def test_a_config_file_fills_the_form_and_a_bad_one_is_refused_clearly(client, tmp_path):
    good = tmp_path / "my config.json"
    good.write_text(json.dumps({"preset": "tiny-wan", "lr": 5e-4, "lora_rank": 4, "max_steps": 7, "height": 64,
                                "dataset_dir": "/somewhere/else"}))
    form = _form(client.predict(handle_file(str(good)), api_name="/train_config_import"))
    assert form["preset"] == "tiny-wan" and form["max_steps"] == 7 and form["lora_rank"] == 4
    assert form["learning_rate"] == 5e-4
    assert "height" in form["note"] and "data_dir" in form["note"]
    for text, match in (("{oops", "invalid JSON at line 1"), ('{"lora_rank": -3}', "'lora_rank'"),
                        ('{"preset": "../../etc/x.json"}', "'preset'"), ('{"fly": 1}', "unknown setting")):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(Exception, match=match) as info:
            client.predict(handle_file(str(bad)), api_name="/train_config_import")
        assert "config file 'bad.json'" in str(info.value) and "/tmp/" not in str(info.value)
    assert client.predict(api_name="/train_runs") is not None  # the app is still up


def test_clone_fills_the_form_from_a_past_run(client, finished):
    form = _form(client.predict(finished, api_name="/run_clone"))
    assert form["max_steps"] == 10 and form["data_source"] == "synthetic" and finished in form["note"]
    with pytest.raises(Exception, match="unknown run"):
        client.predict("../x", api_name="/run_clone")


def test_delete_refuses_a_running_run_and_removes_a_finished_one(client, app_url, tiny_preset):
    from tests.run_factory import make_finished_run

    _, root = app_url
    busy, done = "20261203-000002-abcdef", "20261203-000003-abcdef"
    make_finished_run(root / "runs" / busy, tiny_preset)
    RunDir(root / "runs" / busy).update_status(state="running", pid=os.getpid(), kind="train")
    make_finished_run(root / "runs" / done, tiny_preset)
    with pytest.raises(Exception, match=f"run '{busy}' is running: stop it first"):
        client.predict(busy, api_name="/run_delete")
    assert (root / "runs" / busy / "final" / "pytorch_lora_weights.safetensors").is_file()
    queue = client.predict(api_name="/job_queue")
    assert any(r["run_id"] == busy and r["state"] == "running" for r in queue)
    message = client.predict(done, api_name="/run_delete")  # (the confirmation row is the page's, not the API's)
    assert message == f"Run {done} was deleted." and not (root / "runs" / done).exists()
    assert done not in [r["run_id"] for r in client.predict(api_name="/train_runs")]
    RunDir(root / "runs" / busy).update_status(state="stopped")
    client.predict(busy, api_name="/run_delete")


def test_the_log_is_shown_without_server_paths(client, app_url, finished):
    _, root = app_url
    RunDir(root / "runs" / finished).log_path.write_text(f"loading {root}/runs/{finished}/config.json\nstep 1\n")
    text = client.predict(finished, api_name="/run_log")
    assert text == f"loading runs/{finished}/config.json\nstep 1"


def test_stop_on_a_finished_run_says_so_and_is_no_error(client, finished):
    out = client.predict(finished, 0.0, api_name="/train_stop")
    assert out[-1]["state"] == "finished"


def test_tta_runs_are_listed(client, app_url):
    _, root = app_url
    run = RunDir(root / "runs" / "20261203-000004-abcdef").create()
    run.update_status(state="finished", kind="tta", step=4, total_steps=4, created=time.time(), preset="tiny-wan")
    for s in range(1, 5):
        run.append_event({"type": "tta", "step": s, "loss": 0.1, "setting": "tta", "video_id": "v"})
    rows = client.predict(api_name="/tta_runs")
    assert rows[0]["run_id"] == "20261203-000004-abcdef" and rows[0]["kind"] == "tta"
    assert all(r["kind"] in ("tta", "tta-sweep") for r in rows)


def test_start_passes_the_imported_settings_the_form_does_not_show(monkeypatch):
    from ui import train_tab

    seen = {}

    def fake_start(preset, source, **kw):
        seen.update(kw["settings"])
        return {"run_id": "x", "state": "queued"}

    monkeypatch.setattr(train_tab.api, "start_training", fake_start)
    train_tab.train_start(max_steps=3, extra_settings={"height": 64, "max_steps": 99})
    assert seen["height"] == 64 and seen["max_steps"] == 3  # the form's own fields win


def test_the_status_poll_of_a_run_deleted_meanwhile_says_so_once_and_raises_nothing(app_url):
    from ui import train_tab

    line, *_ = train_tab.poll_status("20261203-999999-abcdef", 0.0)
    assert line.startswith("Run 20261203-999999-abcdef is not available: unknown run")
    with pytest.raises(Exception, match="unknown run"):  # the API call itself still says so as an error
        train_tab.train_status("20261203-999999-abcdef", 0.0)


def test_sample_prompts_seed_and_trigger_word_from_the_form_reach_the_run(client, app_url):
    _, root = app_url
    run_id = client.predict(max_steps=1, validation_steps=1, sample_steps=1, sample_prompts="a red ball, fast\n\n a cube ",
                            sample_seed=5, trigger_word="sks", api_name="/train_start")[0]
    config = json.loads((root / "runs" / run_id / "config.json").read_text())
    assert config["sample_prompts"] == ["a red ball, fast", "a cube"] and config["sample_seed"] == 5
    assert config["trigger_word"] == "sks"
    client.predict(run_id, 0.0, api_name="/train_stop")
    with pytest.raises(Exception, match="sample_seed"):  # a bad value names the field; no run is made
        client.predict(max_steps=1, sample_seed=-3, api_name="/train_start")
