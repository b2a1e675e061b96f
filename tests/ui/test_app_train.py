"""The Length extension and Compare tabs through gradio_client (tiny preset, CPU)."""

import json
import time

import pytest
from gradio_client import Client, handle_file

from engine.video import read_mp4


@pytest.fixture(scope="module")
def client(app_url):
    url, _ = app_url
    return Client(url, verbose=False)


def _status(client, run_id):
    return client.predict(run_id, 0.0, api_name="/train_status")[-1]


def _wait(client, run_id, predicate, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = _status(client, run_id)
        if predicate(status):
            return status
        time.sleep(0.5)
    raise AssertionError(f"timed out: {status}")


@pytest.mark.slow
def test_train_start_with_defaults_runs_the_demo_and_compare_uses_it(client):
    run_id = client.predict(api_name="/train_start")[0]  # every parameter has a default: the tiny demo
    status = _wait(client, run_id, lambda s: s["state"] in ("finished", "failed"), timeout=400)
    assert status["state"] == "finished" and status["step"] == status["total_steps"] == 40, status
    assert status["final"] and status["samples"]["extended"].endswith("extended.mp4")
    from engine.presets import load_preset

    _, fps = read_mp4(status["samples"]["extended"])  # issue 16 defect 7: samples play at the preset's fps
    assert fps == load_preset("tiny-wan")["generation"]["fps"] == 8
    assert [e["step"] for e in status["train_events"]] == list(range(1, 41))
    plot = client.predict(run_id, 0.0, api_name="/train_status")[1]
    assert {row[2] for row in plot["data"]} >= {"total", "base", "extended", "consistency", "validation"}
    runs = client.predict(api_name="/train_runs")
    assert runs[0]["run_id"] == run_id and runs[0]["state"] == "finished"
    # The gallery: every validation step's pair, oldest first, not only the latest.
    gallery = client.predict(run_id, api_name="/train_samples")
    captions = [item["caption"] for item in gallery]
    steps = sorted({int(c.split(" ")[1]) for c in captions})
    assert len(steps) >= 2 and steps[-1] == status["sample_step"] and len(captions) == 2 * len(steps)
    assert captions[0].startswith(f"step {steps[0]} · base") and captions[1].startswith(f"step {steps[0]} · extended")

    # Compare with the finished run's adapter.
    composed, base, ext, info = client.predict("a red circle", "tiny-wan", f"run:{run_id}/final", 5, 9, 2, 0, 1.0, 1,
                                               1, api_name="/compare")
    assert read_mp4(base)[0].shape[0] == 5 and read_mp4(ext)[0].shape[0] == 9
    assert read_mp4(composed)[0].shape[0] == 9
    assert info["adapter"].endswith("final") and info["extended_seconds"] > 0


@pytest.mark.slow
def test_train_stop_then_resume_to_the_end(client):
    # Long enough that the stop lands mid-run even on a fast machine (~0.05 s a step when idle).
    run_id = client.predict(max_steps=150, validation_steps=50, checkpointing_steps=50, sample_steps=0,
                            api_name="/train_start")[0]
    _wait(client, run_id, lambda s: s.get("step", 0) >= 3)
    client.predict(run_id, 0.0, api_name="/train_stop")
    status = _wait(client, run_id, lambda s: s["state"] in ("stopped", "failed", "finished"))
    assert status["state"] == "stopped" and status["step"] < 150, status
    assert status["checkpoints"][-1] == f"step-{status['step']:06d}"  # stop wrote a checkpoint at its step
    client.predict(run_id, 0.0, api_name="/train_resume")
    status = _wait(client, run_id, lambda s: s["state"] in ("finished", "failed"), timeout=600)
    assert status["state"] == "finished" and status["step"] == 150, status
    assert [e["step"] for e in status["train_events"]] == list(range(1, 151))


def test_path_escapes_and_bad_uploads_get_clear_errors(client, app_url, tmp_path):
    _, root = app_url
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "data" / "link").symlink_to(outside)
    for folder, match in (("../etc", r"contains '\.\.'"), ("/etc", "absolute path"), ("link", "symlink"),
                          ("nowhere", "does not exist")):
        with pytest.raises(Exception, match=match):
            client.predict("tiny-wan", "folder", 4, [], folder, api_name="/train_start")
    bad = tmp_path / "notes.pdf"
    bad.write_bytes(b"%PDF-1.4")
    with pytest.raises(Exception, match="Invalid file type"):  # refused by the upload component itself
        client.predict("tiny-wan", "upload", 4, [handle_file(str(bad))], "", api_name="/train_start")
    only_text = tmp_path / "caption.txt"
    only_text.write_text("a caption without its video")
    with pytest.raises(Exception, match="no video among the uploaded files"):
        client.predict("tiny-wan", "upload", 4, [handle_file(str(only_text))], "", api_name="/train_start")
    broken = tmp_path / "clip.mp4"
    broken.write_bytes(b"\x00\x01 not a video")
    (tmp_path / "clip.txt").write_text("a caption")
    with pytest.raises(Exception, match="no usable clip"):
        client.predict("tiny-wan", "upload", 4, [handle_file(str(broken)), handle_file(str(tmp_path / "clip.txt"))],
                       "", api_name="/train_start")
    with pytest.raises(Exception, match="not a run of this app|leads outside|contains"):
        client.predict("a cat", "tiny-wan", "run:../../etc", 5, 9, 1, 0, 1.0, 1, 1, api_name="/compare")
    # The app is still up.
    assert client.predict(api_name="/train_runs") is not None


def test_app_serves_only_its_own_folders(app_url, tmp_path):
    import httpx

    url, _ = app_url
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the browser")
    for path in ("/etc/passwd", str(secret)):
        response = httpx.get(f"{url}gradio_api/file={path}")
        assert response.status_code in (403, 404), (path, response.status_code)
        assert "not for the browser" not in response.text


def test_uploaded_videos_with_captions_train(client, app_url, tmp_path):
    from engine.data.synthetic import render_clip
    from engine.video import write_mp4

    files = []
    for i in range(2):
        clip = render_clip(seed=5, num_frames=33, height=64, width=64, index=i)
        name = f"my clip {i}!.mp4"  # a name that needs sanitising
        write_mp4(clip.frames, tmp_path / name, fps=8)  # the tiny preset's fps
        (tmp_path / f"my clip {i}!.txt").write_text(clip.caption)
        files += [handle_file(str(tmp_path / name)), handle_file(str(tmp_path / f"my clip {i}!.txt"))]
    out = client.predict("tiny-wan", "upload", 4, files, "", 2, api_name="/train_start")
    run_id = out[0]
    status = _wait(client, run_id, lambda s: s["state"] in ("finished", "failed"))
    assert status["state"] == "finished", status
    _, root = app_url
    videos = sorted(p.name for p in (root / "runs" / "_datasets" / run_id / "videos").iterdir())
    assert all(" " not in v and "!" not in v for v in videos) and len(videos) == 2


def test_the_memory_estimate_beside_start_follows_the_settings(client):
    out = client.predict("wan2.1-t2v-14b", 64, 69, 161, True, True, 8, api_name="/train_memory_estimate")
    assert "**71." in out and "fp8_base + offload_activations + ffn_chunks 8" in out and "host memory" in out
    plain = client.predict("wan2.1-t2v-14b", 64, 69, 161, False, False, 1, api_name="/train_memory_estimate")
    assert "**144." in plain  # the recipe without options: does not fit even an H200
    assert "not available" in client.predict("tiny-opensora2", api_name="/train_memory_estimate")


def test_a_folder_of_mixed_sizes_and_lengths_trains_in_place_from_the_app(client, app_url):
    """Issue 16's done-when: a 320x240 clip, clips longer than needed and one too short, trained without conversion."""
    from engine.data.synthetic import render_clip
    from engine.video import write_mp4

    _, root = app_url
    folder = root / "data" / "phone-clips"
    folder.mkdir()
    for name, (h, w, frames) in {"ucf": (240, 320, 40), "long": (64, 64, 90), "tall": (96, 48, 50),
                                 "short": (64, 64, 20)}.items():
        write_mp4(render_clip(seed=len(name), num_frames=frames, height=h, width=w).frames, folder / f"{name}.mp4", fps=8)
        (folder / f"{name}.txt").write_text(f"a {name} clip")
    run_id = client.predict("tiny-wan", "folder", 4, [], "phone-clips", 2, api_name="/train_start")[0]
    status = _wait(client, run_id, lambda s: s["state"] in ("finished", "failed"), timeout=400)
    assert status["state"] == "finished", status
    assert status["skipped_clips"] == ["short.mp4: too short: 20 frames; needs at least 33 (the run's "
                                       "extended_num_frames)"]
    assert set(status["buckets"]) >= {"48x80", "80x48"}  # the 320x240 and the tall clip at their own buckets
    assert not (root / "runs" / "_datasets" / run_id).exists()  # it read the folder itself, not a converted copy
    assert json.loads((root / "runs" / run_id / "config.json").read_text())["data_dir"] == str(folder)
