"""A data folder as people have it (issue 16): mixed sizes and lengths, captions beside the videos, no conversion.

The folder is written here with the project's own writer: a 320x240 UCF-101-size clip longer than a
window, a long square clip, a tall clip, one too short and one without a caption.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.config import config_from_preset
from engine.data.dataset_config import DATASET_FILE
from engine.data.latent_cache import build_latent_cache, cache_key, load_cached, load_cached_metadata
from engine.data.samples import plan_dataset
from engine.errors import ConfigError, InputError
from engine.models import family
from engine.video import write_mp4
from engine.workers import trainer as trainer_mod

ROOT = Path(__file__).resolve().parents[2]
CLIPS = {  # name: (frames, height, width)
    "ucf": (70, 240, 320),
    "long": (80, 64, 64),
    "tall": (36, 96, 48),
    "short": (20, 64, 64),
    "nocap": (40, 64, 64),
}
SKIPS = {"nocap.mp4": "missing caption (add nocap.txt beside it)",
         "short.mp4": "too short: 20 frames; needs at least 33 (the run's extended_num_frames)"}


def _moving(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    still = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return np.stack([np.roll(still, 2 * i, axis=1) for i in range(frames)])


def write_mixed_folder(folder: Path) -> Path:
    for seed, (name, (frames, height, width)) in enumerate(CLIPS.items()):
        write_mp4(_moving(frames, height, width, seed), folder / f"{name}.mp4", fps=8)
        if name != "nocap":
            (folder / f"{name}.txt").write_text(f"a {name} clip, moving right")
    return folder


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return write_mixed_folder(tmp_path_factory.mktemp("mixed") / "clips")


def _plan(folder, fam, **overrides):
    return plan_dataset(folder, fam, frames=33, base_frames=17, height=64, width=64, overrides=overrides)


def test_the_plan_takes_each_clip_at_its_bucket_and_names_each_skip(mixed, tiny_preset):
    fam = family(tiny_preset)
    plan = _plan(mixed, fam)
    assert [(s.name, s.height, s.width, s.start) for s in plan.samples] == [
        ("long", 64, 64, 0), ("tall", 80, 48, 0), ("ucf", 48, 80, 0)]  # longer clips are used, not refused
    assert dict(plan.skipped) == SKIPS
    assert plan.buckets() == {"64x64": 1, "80x48": 1, "48x80": 1}
    chunks = _plan(mixed, fam, frame_extraction="chunk", enable_bucket=False)
    assert [(s.name, s.height, s.width) for s in chunks.samples] == [
        ("long", 64, 64), ("long@33", 64, 64), ("tall", 64, 64), ("ucf", 64, 64), ("ucf@33", 64, 64)]

def test_the_folder_dataset_toml_chooses_the_windows(mixed, tiny_preset, tmp_path):
    folder = shutil.copytree(mixed, tmp_path / "clips")
    (folder / DATASET_FILE).write_text('frame_extraction = "slide"\nframe_stride = 16\n')
    names = ["long", "long@16", "long@32", "tall", "ucf", "ucf@16", "ucf@32"]
    assert [s.name for s in _plan(folder, family(tiny_preset)).samples] == names
    assert [s.name for s in _plan(folder, family(tiny_preset), frame_stride=32).samples] == ["long", "long@32", "tall",
                                                                                             "ucf", "ucf@32"]


def test_too_few_usable_clips_is_refused_with_each_reason(tmp_path):
    folder = tmp_path / "clips"
    for name in ("a", "b"):
        write_mp4(_moving(20, 64, 64, 0), folder / f"{name}.mp4", fps=8)
        (folder / f"{name}.txt").write_text("a short clip")
    config = config_from_preset("tiny-wan", data_dir=str(folder), output_dir=str(tmp_path / "run"))
    with pytest.raises(InputError, match=r"has 0 usable clip\(s\).*a\.mp4: too short: 20 frames; needs at least 33.*"
                                         r"--frame_extraction"):
        trainer_mod.train(config)
    assert not (tmp_path / "run").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no metadata.json and no videos"):
        _plan(tmp_path / "empty", family(config.preset_dict()))


def test_latent_cache_keys_change_with_the_bucket_and_the_window(mixed, tiny_pipe, tiny_preset, tmp_path):
    plan = _plan(mixed, family(tiny_preset), frame_extraction="chunk")
    long, long_33 = plan.samples[:2]
    keys = {cache_key(s, tiny_preset, "sha", "dtypes") for s in
            (long, long_33, dataclasses.replace(long, height=48, width=80))}
    assert len(keys) == 3
    paths = build_latent_cache(tiny_pipe, tiny_preset, mixed, cache_dir=tmp_path, samples=plan.samples)
    assert len(set(paths)) == len(plan.samples) == 5
    metas = [load_cached_metadata(p) for p in paths]
    assert [(m["video_id"], m["start"], m["height"], m["width"]) for m in metas] == [
        ("long", "0", "64", "64"), ("long", "33", "64", "64"), ("tall", "0", "80", "48"), ("ucf", "0", "48", "80"),
        ("ucf", "33", "48", "80")]
    assert load_cached(paths[3])["latents"].shape == (1, 16, 9, 6, 10)  # 48x80 at the VAE's 8x
    mtimes = [p.stat().st_mtime_ns for p in paths]
    assert build_latent_cache(tiny_pipe, tiny_preset, mixed, cache_dir=tmp_path, samples=plan.samples) == paths
    assert [p.stat().st_mtime_ns for p in paths] == mtimes  # reused, not encoded again


def _engine(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _train_events(out: Path) -> list[dict]:
    return [e for e in map(json.loads, (out / "events.jsonl").read_text().splitlines()) if e["type"] == "train"]


def test_resume_after_stop_keeps_the_sample_order(mixed, tmp_path, monkeypatch):
    picked = []
    real = trainer_mod._sample_indices
    monkeypatch.setattr(trainer_mod, "_sample_indices", lambda *a: picked.append(real(*a)) or picked[-1])

    def run(out, steps, resume=False):
        config = config_from_preset("tiny-wan", data_dir=str(mixed), output_dir=str(out), max_steps=steps,
                                    batch_size=2, frame_extraction="chunk", validation_steps=100,
                                    checkpointing_steps=2, sample_steps=0, seed=5)
        return trainer_mod.train(config, resume=resume)

    assert run(tmp_path / "whole", 4)["state"] == "finished"
    whole, picked[:] = list(picked), []
    run(tmp_path / "parts", 2)
    run(tmp_path / "parts", 4, resume=True)  # as after a stop at step 2
    assert picked == whole and len(whole) == 4
    losses = [[e["loss"] for e in _train_events(tmp_path / name)] for name in ("parts", "whole")]
    assert losses[0] == losses[1]


def test_a_mixed_folder_trains_via_the_cli_without_conversion(mixed, tmp_path):
    folder, out = shutil.copytree(mixed, tmp_path / "clips"), tmp_path / "run"
    (folder / DATASET_FILE).write_text('frame_extraction = "chunk"  # two windows of the long clips\n')
    proc = _engine("train", "--preset", "tiny-wan", "--data_dir", str(folder), "--output_dir", str(out),
                   "--max_steps", "3", "--batch_size", "2", "--validation_steps", "100", "--checkpointing_steps", "100",
                   "--sample_steps", "0", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["state"] == "finished" and result["step"] == 3
    assert result["skipped_clips"] == [f"{name}: {why}" for name, why in SKIPS.items()]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    dataset = next(e for e in events if e["type"] == "dataset")
    assert dataset["buckets"] == {"64x64": 2, "80x48": 1, "48x80": 2} and dataset["frame_extraction"] == "chunk"
    assert (out / "final").is_dir()


@pytest.mark.slow
def test_a_mixed_folder_runs_tta_without_conversion(mixed, tmp_path):
    proc = _engine("tta-sweep", "--data_dir", str(mixed), "--preset", "tiny-wan", "--ranks", "4", "--lrs", "1e-3",
                   "--steps", "1", "--sample_steps", "1", "--no_lpips", "--experiment", "mixed",
                   "--output_root", str(tmp_path), "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "mixed" / "summary.json").read_text())["videos"] == ["long", "ucf"]
    status = json.loads((tmp_path / "mixed" / "status.json").read_text())
    skipped = dict(s.split(": ", 1) for s in status["skipped_clips"])
    assert skipped["tall.mp4"].startswith("too short: 36 frames; test-time adaptation needs at least 65")
    assert skipped["nocap.mp4"].startswith("missing caption")


def test_convert_that_keeps_nothing_exits_non_zero_with_the_reason(tmp_path):
    src = tmp_path / "src"
    write_mp4(_moving(10, 64, 64, 0), src / "tiny.mp4", fps=8)
    (src / "tiny.txt").write_text("a clip")
    proc = _engine("data", "convert", "--input_dir", str(src), "--output_dir", str(tmp_path / "out"),
                   "--preset", "tiny-wan", "--task", "tta", "--fps", "8")
    assert proc.returncode == 1
    assert "error: no usable clip in" in proc.stderr and "tiny.mp4: too short" in proc.stderr
    assert not (tmp_path / "out" / "metadata.json").exists()


def test_buckets_that_context_parallelism_cannot_split_are_refused_before_the_run(mixed, tmp_path):
    config = config_from_preset("tiny-wan", data_dir=str(mixed), output_dir=str(tmp_path / "run"), context_parallel=2)
    with pytest.raises(ConfigError, match=r"context_parallel=2 does not divide the 135 video tokens of the 80x48 "
                                          r"\(height x width\) bucket.*--enable_bucket false"):
        trainer_mod.check_dataset(config, family(config.preset_dict()))
    config.enable_bucket = False  # every clip at the run's 64x64: 144 tokens
    assert trainer_mod.check_dataset(config, family(config.preset_dict())).buckets() == {"64x64": 3}


def test_data_validate_checks_a_folder_of_videos_as_the_presets_recipe_takes_it(tmp_path, capsys):
    from engine.cli import main
    from engine.data.synthetic import render_clip
    from engine.video import write_mp4

    folder = tmp_path / "clips"
    folder.mkdir()
    for name, (h, w, frames) in {"wide": (240, 320, 40), "square": (64, 64, 33), "short": (64, 64, 20)}.items():
        write_mp4(render_clip(seed=1, num_frames=frames, height=h, width=w).frames, folder / f"{name}.mp4", fps=8)
        (folder / f"{name}.txt").write_text(name)
    assert main(["data", "validate", "--output_dir", str(folder), "--preset", "tiny-wan"]) == 0
    out = capsys.readouterr().out
    assert "skipped short.mp4: too short: 20 frames" in out and "ok: 2 clips, 2 windows of 33 frames" in out
    assert "48x80 (1)" in out and "64x64 (1)" in out
    for name in ("wide", "square"):
        (folder / f"{name}.mp4").unlink()
    assert main(["data", "validate", "--output_dir", str(folder)]) == 1
    assert "no usable clip" in capsys.readouterr().err
