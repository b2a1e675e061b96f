"""Bounds on uploads, and uploads decoded in the job, not the app (reliability and security, item 13)."""

import time
import tracemalloc

import numpy as np
import pytest

from engine.errors import ConfigError, InputError


@pytest.fixture
def runs(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setenv("RADIAL_STUDIO_RUNS", str(runs))
    monkeypatch.setenv("RADIAL_STUDIO_DATA_ROOT", str(tmp_path / "data"))
    return runs


def _clip(path, frames=33, height=64, width=64, fps=8, seed=0, caption="a red ball rolls"):
    from engine.data.synthetic import render_clip
    from engine.video import write_mp4

    clip = render_clip(seed=seed, num_frames=frames, height=height, width=width)
    write_mp4(clip.frames, path, fps=fps)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)
    return path


def _nothing_queued(runs):
    if not runs.exists():
        return True
    kept = [p for p in runs.iterdir() if not p.name.startswith((".", "_samples"))]
    datasets = runs / "_datasets"
    return all(p == datasets for p in kept) and (not datasets.exists() or not any(datasets.iterdir()))


def _no_decoding(monkeypatch):
    """Make any frame decode in this process fail loudly: the request may only read headers."""
    import engine.data.dataset
    import engine.video
    import engine.workers.tta  # noqa: F401  (imported before the patch, so it keeps the real reader)

    def refuse(*args, **kwargs):
        raise AssertionError("a frame was decoded in the request")

    monkeypatch.setattr(engine.video, "read_mp4", refuse)
    monkeypatch.setattr(engine.video, "frame_stream", refuse)
    monkeypatch.setattr(engine.data.dataset, "_frame_stream", refuse)


def test_an_upload_over_the_size_bound_is_refused_and_not_kept(runs, tmp_path, monkeypatch):
    from engine.launch.training import start_training
    from engine.launch.tta import start_tta

    big = tmp_path / "big.mp4"
    big.write_bytes(b"\x00" * (2 * 1024 * 1024 + 1))
    big.with_suffix(".txt").write_text("a caption")
    monkeypatch.setenv("RADIAL_STUDIO_MAX_UPLOAD_MB", "2")
    with pytest.raises(InputError, match=r"'big.mp4' is 2 MB; uploads may be at most 2 MB \(RADIAL_STUDIO_MAX_UPLOAD_MB\)"):
        start_tta(str(big))
    with pytest.raises(InputError, match="uploads may be at most 2 MB"):
        start_training("tiny-wan", "upload", uploads=[str(big), str(big.with_suffix(".txt"))])
    assert _nothing_queued(runs) and not (runs / "_inputs").exists()
    monkeypatch.setenv("RADIAL_STUDIO_MAX_UPLOAD_MB", "lots")
    with pytest.raises(ConfigError, match="RADIAL_STUDIO_MAX_UPLOAD_MB='lots' is not a whole number"):
        start_tta(str(big))


def test_the_app_hands_gradio_the_same_upload_bound(monkeypatch):
    import app

    monkeypatch.setenv("RADIAL_STUDIO_MAX_UPLOAD_MB", "123")
    assert app.launch_options()["max_file_size"] == "123mb"


def test_a_source_over_the_frame_size_bound_is_refused_from_its_header(runs, tmp_path, monkeypatch):
    from engine.launch.tta import start_tta
    from engine.video import write_mp4

    huge = tmp_path / "huge.mp4"
    write_mp4(np.zeros((2, 4112, 4096, 3), np.uint8), huge, fps=8)  # 16.8 MP > 4096 x 4096
    _no_decoding(monkeypatch)
    with pytest.raises(InputError, match=r"'huge.mp4' is 4096x4112 \(width x height\); sources may have at most"):
        start_tta(str(huge))
    assert not (runs / "_inputs").exists()


def test_a_tta_upload_is_checked_from_its_header_and_decoded_in_the_job(runs, tmp_path, monkeypatch):
    from engine.launch.tta import start_tta, tta_status
    from engine.presets import load_preset
    from engine.workers.tta import load_clip

    good = _clip(tmp_path / "good.mp4", frames=65)
    short = _clip(tmp_path / "short.mp4", frames=20)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x01 not a video")
    with monkeypatch.context() as m:
        _no_decoding(m)
        with pytest.raises(InputError, match=r"'short.mp4' has 20 frames \(by its header\); test-time adaptation needs "
                                             r"at least 65"):
            start_tta(str(short))
        with pytest.raises(InputError, match=r"video file 'broken.mp4' could not be decoded") as err:
            start_tta(str(broken))
        assert str(tmp_path) not in str(err.value)  # the user's file name, not a server path
        status = start_tta(str(good), steps=2)
    staged = runs / "_inputs" / status["run_id"] / "good.mp4"
    assert status["state"] in ("queued", "running") and staged.is_file()
    deadline = time.time() + 600
    while (status := tta_status(status["run_id"]))["state"] in ("queued", "running") and time.time() < deadline:
        time.sleep(1)
    assert status["state"] == "finished", status  # the job decoded it
    # What the job does with it: decodes, exactly counted, at the preset's size.
    preset = load_preset("tiny-wan")
    clip = load_clip(staged, preset, cond_frames=33, total_frames=65)
    assert clip.frames.shape[0] == 65 and clip.source_size == (64, 64)
    with pytest.raises(InputError, match="'short.mp4' has 20 frames; test-time adaptation needs at least 65"):
        load_clip(short, preset, cond_frames=33, total_frames=65)


def test_training_uploads_are_staged_from_headers_and_converted_in_the_job(runs, tmp_path, monkeypatch):
    from engine.config import config_from_preset, read_config_file
    from engine.data.dataset import load_dataset
    from engine.jobs import RunDir
    from engine.launch.training import start_training
    from engine.models import family
    from engine.workers.trainer import check_dataset, convert_uploads

    files = []
    for i in range(3):
        path = _clip(tmp_path / f"clip {i}.mp4", seed=i)
        files += [str(path), str(path.with_suffix(".txt"))]
    queued = []  # the queue itself is tested elsewhere; here the job must not start and race this test
    monkeypatch.setattr("engine.launch.training.submit_job", lambda out, argv: queued.append(argv))
    monkeypatch.setattr("engine.launch.training.training_status", lambda run_id: {"run_id": run_id})
    with monkeypatch.context() as m:
        _no_decoding(m)
        # The run trains at its own size, not the preset's 64x64: the job converts to that.
        status = start_training("tiny-wan", "upload", uploads=files, settings={"max_steps": 1, "height": 32,
                                                                                "width": 32})
    run = RunDir(runs / status["run_id"])
    argv = queued[0]
    staging = runs / "_datasets" / f"{status['run_id']}-uploads"
    assert argv[-2:] == ["--prepare_from", str(staging)] and len(list(staging.glob("*.mp4"))) == 3
    config = config_from_preset("tiny-wan", validate=False, **read_config_file(run.config_path))
    assert not (runs / "_datasets" / status["run_id"]).exists()  # nothing converted in the request
    convert_uploads(config, staging, config.preset_dict())  # what the job does first

    assert [(e.height, e.width) for e in load_dataset(config.data_dir)] == [(32, 32)] * 3 and not staging.exists()
    check_dataset(config, family(config.preset_dict()))  # what the job checks next: the run's size, so it passes
    convert_uploads(config, staging, config.preset_dict())  # a resume finds the dataset and converts nothing


def test_a_job_whose_staged_uploads_are_gone_says_so(runs, tmp_path):
    from engine.config import config_from_preset
    from engine.workers.trainer import convert_uploads

    config = config_from_preset("tiny-wan", data_dir=str(tmp_path / "ds"), output_dir=str(tmp_path / "run"))
    with pytest.raises(InputError, match="the uploaded clips of this run are gone.*upload them again"):
        convert_uploads(config, tmp_path / "never-staged", config.preset_dict())
    assert not (tmp_path / "ds").exists()


def test_what_the_headers_show_is_refused_in_the_request_naming_each_file(runs, tmp_path, monkeypatch):
    from engine.launch.training import start_training

    short = _clip(tmp_path / "short.mp4", frames=12)
    small = _clip(tmp_path / "small.mp4", height=32, width=32)
    good = _clip(tmp_path / "good.mp4")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x01 not a video")
    uploads = [str(p) for p in (short, small, good, broken)]
    _no_decoding(monkeypatch)
    with pytest.raises(InputError) as err:
        start_training("tiny-wan", "upload", uploads=uploads)
    message = str(err.value)
    assert message.startswith("1 usable clip(s) among the uploads") and "need more than num_validation_clips=1" in message
    assert "short.mp4: 1.50 s, too short for 33 frames at 8 fps" in message
    assert "small.mp4: 32x32, smaller than 64x64" in message and "broken.mp4: unreadable" in message
    assert str(tmp_path) not in message
    assert _nothing_queued(runs)


def test_a_job_reports_what_converting_the_uploads_found(runs, tmp_path):
    from engine.config import config_from_preset
    from engine.jobs import RunDir
    from engine.workers.trainer import train

    staging = tmp_path / "staged"
    staging.mkdir()
    for i in range(2):  # readable, long enough, but no captions: conversion skips both
        _clip(staging / f"clip{i}.mp4", seed=i, caption=None)
    out = runs / "run-1"
    RunDir(out).create().update_status(state="running")
    config = config_from_preset("tiny-wan", data_dir=str(runs / "_datasets" / "run-1"), output_dir=str(out))
    with pytest.raises(InputError, match="no usable clip among the uploads"):
        train(config, prepare_from=staging)
    status = RunDir(out).read_status()
    assert status["state"] == "failed" and "clip0.mp4: missing caption" in status["error"]
    assert staging.is_dir()  # kept: the user's clips are not lost by a failed conversion


def test_uploads_the_job_leaves_out_are_listed_in_the_runs_status(runs, tmp_path):
    """Issue 16 defect 6: clips skipped during an upload were never reported in the UI."""
    from engine.config import config_from_preset
    from engine.jobs import RunDir
    from engine.launch.training import training_status
    from engine.workers.trainer import convert_uploads
    from ui.job_view import job_status_markdown

    staging = tmp_path / "staged"
    staging.mkdir()
    for i in range(3):
        _clip(staging / f"clip{i}.mp4", seed=i)
    _clip(staging / "nocaption.mp4", seed=5, caption=None)
    out = runs / "run-2"
    RunDir(out).create().update_status(state="running")
    config = config_from_preset("tiny-wan", data_dir=str(runs / "_datasets" / "run-2"), output_dir=str(out))
    convert_uploads(config, staging, config.preset_dict())
    status = training_status("run-2")
    assert status["skipped_uploads"] == ["nocaption.mp4: missing caption (add nocaption.txt beside it)"]
    assert "1 upload(s) left out of the dataset:** nocaption.mp4: missing caption" in job_status_markdown(status, "r")


def test_frames_are_resized_as_they_arrive_so_memory_holds_one_source_frame(tmp_path):
    from engine.video import read_mp4, resize_center_crop, write_mp4

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (24, 768, 1024, 3), dtype=np.uint8)
    path = write_mp4(frames, tmp_path / "big.mp4", fps=8)
    whole, _ = read_mp4(path)
    tracemalloc.start()
    streamed, _ = read_mp4(path, size=lambda h, w: (96, 128))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert np.array_equal(streamed, resize_center_crop(whole, 96, 128))
    assert peak < whole.nbytes / 4, (peak, whole.nbytes)  # the whole source clip is 56 MB; far less was held


@pytest.mark.parametrize("field, value, message", [
    ("lora_rank", 100000, r"'lora_rank'=100000 is out of range: it must be a whole number >= 1 and <= 4096"),
    ("lora_rank", 2048, r"lora_rank.*above the model width \(64\)"),
    ("height", 100000, r"'height'=100000 is out of range: .* <= 4096"),
    ("extended_num_frames", 100001, r"'extended_num_frames'=100001 is out of range: .* <= 2001"),
])
def test_rank_frames_and_sizes_are_bounded_before_anything_runs(runs, field, value, message):
    from engine.launch.training import start_training

    with pytest.raises((ConfigError, InputError), match=message):
        start_training("tiny-wan", "synthetic", settings={field: value})
    assert _nothing_queued(runs)
