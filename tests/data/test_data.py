"""Training data: synthetic clips, conversion of user folders, validation, and the `data` CLI."""

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.errors import InputError
from engine.data.dataset import (
    METADATA_FILE, REPORT_FILE, convert_dataset, create_synthetic_dataset, load_dataset, read_clip, validate_dataset,
)
from engine.data.synthetic import BACKGROUNDS, render_clip
from engine.video import read_mp4, write_mp4

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def good_dataset(tmp_path_factory):
    """Two synthetic clips for the tiny preset (33 frames, 64x64); copy it before changing it."""
    return create_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "data", 2, seed=1)


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / "data"))


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _ramp_clip(num_frames, height, width, step=3):
    """Frame i is uniformly grey at level step*i, so decoded frames say which source frame they came from."""
    levels = (np.arange(num_frames) * step % 250).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).copy()


# ---------------------------------------------------------------------------- synthetic clips


def test_create_writes_real_clips_whose_metadata_validates(good_dataset, tiny_preset):
    entries = json.loads((good_dataset / METADATA_FILE).read_text())
    assert [e["video_id"] for e in entries] == ["synthetic_00000", "synthetic_00001"]
    train = tiny_preset["training"]
    for e in entries:
        assert (e["base_frames"], e["extended_frames"], e["height"], e["width"]) == (17, 33, 64, 64)
        assert (train["base_num_frames"], train["extended_num_frames"]) == (17, 33)
        assert e["prompt"].endswith("background") and e["negative_prompt"] == ""
        frames, fps = read_mp4(good_dataset / "videos" / f"{e['video_id']}.mp4")
        assert frames.shape == (33, 64, 64, 3) and fps == tiny_preset["generation"]["fps"]
        assert frames.std() > 5  # not a blank clip
    assert validate_dataset(good_dataset) == []
    assert [c.video_id for c in load_dataset(good_dataset)] == ["synthetic_00000", "synthetic_00001"]


def test_synthetic_clips_are_deterministic_per_seed(tmp_path):
    a, b = render_clip(7, 33, 64, 64, index=3), render_clip(7, 33, 64, 64, index=3)
    assert np.array_equal(a.frames, b.frames) and a.caption == b.caption
    assert not np.array_equal(a.frames, render_clip(8, 33, 64, 64, index=3).frames)
    # The written files decode to the same frames too.
    one = create_synthetic_dataset(tmp_path / "one", 1, seed=7)
    two = create_synthetic_dataset(tmp_path / "two", 1, seed=7)
    assert np.array_equal(read_clip(one / "videos/synthetic_00000.mp4")[0], read_clip(two / "videos/synthetic_00000.mp4")[0])
    assert json.loads((one / METADATA_FILE).read_text()) == json.loads((two / METADATA_FILE).read_text())


def _find_clip(phrase: str, size=64, frames=17):
    for index in range(300):
        clip = render_clip(0, frames, size, size, index=index)
        if phrase in clip.caption and " and " not in clip.caption:  # one shape only
            return clip
    raise AssertionError(f"no single-shape clip saying {phrase!r}")


def _foreground(clip):
    name = clip.caption.rsplit(" on a", 1)[1].strip().removeprefix("n ").removesuffix(" background")
    return np.abs(clip.frames.astype(int) - np.array(BACKGROUNDS[name])).sum(-1) > 60


def test_synthetic_captions_say_what_moves():
    clip = _find_clip("moves from left to right")
    xs = [np.nonzero(m)[1].mean() for m in _foreground(clip)]
    assert all(b > a for a, b in zip(xs, xs[1:])) and xs[-1] - xs[0] > 20
    clip = _find_clip("moves from top to bottom")
    ys = [np.nonzero(m)[0].mean() for m in _foreground(clip)]
    assert all(b > a for a, b in zip(ys, ys[1:]))
    area = _foreground(_find_clip("grows larger")).sum((1, 2))
    assert all(b >= a for a, b in zip(area, area[1:])) and area[-1] > 2 * area[0]


# ---------------------------------------------------------------------------- convert


@pytest.fixture(scope="module")
def source_folder(tmp_path_factory):
    """Videos with same-name .txt captions, covering each keep/skip case."""
    src = tmp_path_factory.mktemp("source")
    # 96x80 with white side margins that the centre crop to 64x64 must remove, and a green centre stripe.
    frame = np.full((80, 96, 3), 128, np.uint8)
    frame[:, :5] = frame[:, -5:] = 255
    frame[:, 44:52] = (0, 200, 0)
    write_mp4(np.repeat(frame[None], 40, 0), src / "wide.mp4", fps=8)
    (src / "wide.txt").write_text("a green stripe on grey\n")
    write_mp4(_ramp_clip(65, 64, 64), src / "fast.mp4", fps=16)  # 65 frames at 16 fps = 33 at 8 fps
    (src / "fast.txt").write_text("a grey clip that brightens")
    write_mp4(_ramp_clip(20, 64, 64), src / "short.mp4", fps=8)
    (src / "short.txt").write_text("too short")
    write_mp4(_ramp_clip(33, 64, 64), src / "uncaptioned.mp4", fps=8)
    (src / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (src / "broken.txt").write_text("random bytes")
    write_mp4(_ramp_clip(33, 48, 48), src / "tiny.mp4", fps=8)
    (src / "tiny.txt").write_text("too small")
    return src


@pytest.fixture(scope="module")
def converted(source_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "data"
    return convert_dataset(source_folder, out, preset="tiny-wan"), out


def test_convert_txt_folder_keeps_good_clips_and_reports_each_skip(converted):
    report, out = converted
    assert sorted(report.kept) == ["fast", "wide"]
    reasons = dict(report.skipped)
    assert set(reasons) == {"short.mp4", "uncaptioned.mp4", "broken.mp4", "tiny.mp4"}
    assert "too short" in reasons["short.mp4"] and "20 frames" in reasons["short.mp4"] and "33" in reasons["short.mp4"]
    assert "missing caption" in reasons["uncaptioned.mp4"] and "uncaptioned.txt" in reasons["uncaptioned.mp4"]
    assert "unreadable or corrupt" in reasons["broken.mp4"]
    assert "too small resolution" in reasons["tiny.mp4"] and "48x48" in reasons["tiny.mp4"]
    saved = json.loads((out / REPORT_FILE).read_text())
    assert sorted(saved["kept"]) == ["fast", "wide"] and len(saved["skipped"]) == 4
    assert validate_dataset(out) == []
    entries = {e.video_id: e for e in load_dataset(out)}
    assert entries["wide"].prompt == "a green stripe on grey"
    assert (entries["wide"].base_frames, entries["wide"].extended_frames) == (17, 33)
    assert not list(out.glob("videos/.*"))  # no temporary files left


def test_convert_resizes_and_centre_crops(converted):
    _, out = converted
    frames, _ = read_clip(out / "videos/wide.mp4")
    assert frames.shape == (33, 64, 64, 3)
    assert frames.astype(int).min(-1).max() < 200  # the white margins were cropped away
    centre = frames[0, :, 30:34].astype(int).mean((0, 1))
    assert centre[1] > 150 and centre[0] < 60  # the green stripe stays in the middle


def test_convert_resamples_fps_by_frame_selection(converted):
    _, out = converted
    frames, fps = read_clip(out / "videos/fast.mp4")
    assert frames.shape[0] == 33 and fps == 8
    # Output frame j is source frame 2j (grey level 6j); allow for the codec.
    levels = frames.astype(float).mean((1, 2, 3))
    assert np.abs(levels - 6 * np.arange(33)).max() < 4
    entry = next(e for e in json.loads((out / METADATA_FILE).read_text()) if e["video_id"] == "fast")
    assert entry["source_fps"] == 16 and entry["fps"] == 8


def test_convert_from_csv_and_json_caption_files(tmp_path):
    src = tmp_path / "src"
    write_mp4(_ramp_clip(33, 64, 64), src / "clips" / "one.mp4", fps=8)
    write_mp4(_ramp_clip(33, 64, 64), src / "unlisted.mp4", fps=8)
    with open(src / "captions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "caption"])
        w.writerow(["clips/one.mp4", "a grey clip, brightening"])
        w.writerow(["clips/gone.mp4", "not there"])
    report = convert_dataset(src, tmp_path / "out")
    assert report.kept == ["one"]
    reasons = dict(report.skipped)
    assert "file not found" in reasons["clips/gone.mp4"]
    assert "missing caption" in reasons["unlisted.mp4"] and "captions.csv" in reasons["unlisted.mp4"]
    assert load_dataset(tmp_path / "out")[0].prompt == "a grey clip, brightening"

    (src / "captions.csv").unlink()
    (src / "captions.json").write_text(json.dumps([{"path": "clips/one.mp4", "caption": "from json"}]))
    report = convert_dataset(src, tmp_path / "out2")
    assert report.kept == ["one"] and load_dataset(tmp_path / "out2")[0].prompt == "from json"


def test_convert_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        convert_dataset(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no videos found"):
        convert_dataset(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "empty" / "captions.csv").write_text("file,text\na.mp4,x\n")
    with pytest.raises(InputError, match="'path' and 'caption'"):
        convert_dataset(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(InputError, match="task"):
        convert_dataset(tmp_path / "empty", tmp_path / "out", task="nope")


def test_convert_tta_crops_short_side_256_and_keeps_65_frames(tmp_path):
    src = tmp_path / "src"
    write_mp4(_ramp_clip(70, 272, 320, step=1), src / "landscape.mp4", fps=8)  # w x h = 320x272
    write_mp4(_ramp_clip(70, 288, 272, step=1), src / "squareish.mp4", fps=8)  # w x h = 272x288
    write_mp4(_ramp_clip(40, 256, 256, step=1), src / "short.mp4", fps=8)
    for name in ("landscape", "squareish", "short"):
        (src / f"{name}.txt").write_text(f"a {name} clip")
    # the preset's tta.short_side (256 for the real models) sets the size
    report = convert_dataset(src, tmp_path / "out", task="tta", preset="wan2.1-t2v-1.3b", fps=8)
    assert sorted(report.kept) == ["landscape", "squareish"]
    assert "40 frames" in dict(report.skipped)["short.mp4"] and "65" in dict(report.skipped)["short.mp4"]
    assert read_clip(tmp_path / "out/videos/landscape.mp4")[0].shape == (65, 256, 288, 3)  # 301 -> 288 (x16)
    assert read_clip(tmp_path / "out/videos/squareish.mp4")[0].shape == (65, 256, 256, 3)
    entries = {e.video_id: e for e in load_dataset(tmp_path / "out")}
    assert (entries["landscape"].height, entries["landscape"].width, entries["landscape"].extended_frames) == (256, 288, 65)
    # the tiny preset's short side is 64: the same clips are kept at 64 px
    small = convert_dataset(src, tmp_path / "small", task="tta", preset="tiny-wan")
    assert sorted(small.kept) == ["landscape", "squareish"]
    assert read_clip(tmp_path / "small/videos/landscape.mp4")[0].shape == (65, 64, 64, 3)  # 75 -> 64 (x16)


def test_convert_tta_upscales_a_ucf101_size_clip_slightly_and_refuses_what_is_far_too_small(tmp_path):
    """Issue 16 defect 3: 320x240 clips (UCF-101) were refused by the 256 px presets."""
    src = tmp_path / "src"
    write_mp4(_ramp_clip(66, 240, 320, step=1), src / "ucf.mp4", fps=8)  # w x h = 320x240
    write_mp4(_ramp_clip(66, 150, 200, step=1), src / "tiny.mp4", fps=8)  # w x h = 200x150
    for name in ("ucf", "tiny"):
        (src / f"{name}.txt").write_text(f"a {name} clip")
    report = convert_dataset(src, tmp_path / "out", task="tta", preset="wan2.1-t2v-1.3b", fps=8)
    assert report.kept == ["ucf"]
    assert read_clip(tmp_path / "out/videos/ucf.mp4")[0].shape == (65, 256, 336, 3)  # 341 -> 336 (x16)
    reason = dict(report.skipped)["tiny.mp4"]
    assert "200x150" in reason and "at least 205" in reason and "1.25x" in reason
    from engine.presets import load_preset
    from engine.workers.tta import target_size

    preset = load_preset("wan2.1-t2v-1.3b")
    assert target_size(240, 320, preset, None, None) == (256, 336)  # the app's request check agrees
    with pytest.raises(InputError, match="at least 205 pixels"):
        target_size(150, 200, preset, None, None)


# ---------------------------------------------------------------------------- validate


def _edit_metadata(fn):
    def mutate(data: Path):
        entries = json.loads((data / METADATA_FILE).read_text())
        fn(entries)
        (data / METADATA_FILE).write_text(json.dumps(entries, indent=2))
    return mutate


def _set(field, value, index=0):
    return _edit_metadata(lambda entries: entries[index].__setitem__(field, value))


def _write_text(text):
    return lambda data: (data / METADATA_FILE).write_text(text)


def _replace_video(frames):
    return lambda data: write_mp4(frames, data / "videos/synthetic_00000.mp4", fps=8)


CASES = {
    "missing metadata": (lambda data: (data / METADATA_FILE).unlink(), "metadata.json", ["missing"]),
    "invalid json": (_write_text('[{"video_id": "a",\n  oops}]'), "metadata.json", ["invalid JSON", "line 2", "column 3"]),
    "not a list": (_write_text('{"video_id": "a"}'), "metadata.json", ["expected a JSON list"]),
    "missing field": (_edit_metadata(lambda e: e[0].pop("prompt")), "metadata.json", ["entry 0", "missing field 'prompt'"]),
    "wrong type": (_set("height", "64"), "metadata.json", ["entry 0", "field 'height'", "integer"]),
    "empty prompt": (_set("prompt", "   "), "metadata.json", ["entry 0", "field 'prompt'", "empty"]),
    "duplicate id": (_set("video_id", "synthetic_00000", 1), "metadata.json", ["entry 1", "field 'video_id'", "duplicates entry 0"]),
    "frames not 4k+1": (_set("base_frames", 16), "metadata.json", ["field 'base_frames'=16", "13 or 17"]),
    "extended <= base": (_set("base_frames", 33), "metadata.json", ["field 'extended_frames'", "greater than 'base_frames'"]),
    "missing video": (lambda data: (data / "videos/synthetic_00000.mp4").unlink(), "synthetic_00000.mp4", ["field 'video_id'", "missing"]),
    "corrupt video": (lambda data: (data / "videos/synthetic_00000.mp4").write_bytes(b"\x00junk" * 100),
                      "synthetic_00000.mp4", ["field 'video_id'", "unreadable or corrupt"]),
    "too short": (_replace_video(_ramp_clip(21, 64, 64)), "synthetic_00000.mp4", ["field 'extended_frames'", "21 frames", "at least 33"]),
    "wrong size": (_replace_video(_ramp_clip(33, 48, 64)), "synthetic_00000.mp4", ["'height'", "'width'", "48x64"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_validate_names_file_and_field_and_changes_nothing(case, good_dataset, tmp_path):
    mutate, file_name, expected = CASES[case]
    data = _copy(good_dataset, tmp_path)
    mutate(data)
    before = _snapshot(data)
    problems = validate_dataset(data)
    assert _snapshot(data) == before
    assert len(problems) == 1, problems
    assert file_name in problems[0], problems[0]
    for text in expected:
        assert text in problems[0], (text, problems[0])
    with pytest.raises(InputError) as info:
        load_dataset(data)
    assert problems[0] in str(info.value)


def test_load_dataset_lists_every_problem(good_dataset, tmp_path):
    data = _copy(good_dataset, tmp_path)
    _set("prompt", "", 0)(data)
    (data / "videos/synthetic_00001.mp4").unlink()
    with pytest.raises(InputError) as info:
        load_dataset(data)
    msg = str(info.value)
    assert "2 problem(s)" in msg and "field 'prompt'" in msg and "synthetic_00001.mp4" in msg


# ---------------------------------------------------------------------------- CLI


def _run(*args):
    return subprocess.run([sys.executable, "-m", "engine", "data", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ}, timeout=120)


def test_cli_data_create_validate_convert(tmp_path, source_folder):
    out = tmp_path / "made"
    proc = _run("create", "--output_dir", str(out), "--num_samples", "2", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["clips"] == 2
    proc = _run("validate", "--output_dir", str(out))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok: 2 clips"
    (out / "videos/synthetic_00001.mp4").write_bytes(b"not a video")
    proc = _run("validate", "--output_dir", str(out))
    assert proc.returncode == 1 and "synthetic_00001.mp4" in proc.stdout and "unreadable" in proc.stdout

    proc = _run("convert", "--input_dir", str(source_folder), "--output_dir", str(tmp_path / "conv"), "--fps", "8")
    assert proc.returncode == 0, proc.stderr
    assert sorted(json.loads(proc.stdout)["kept"]) == ["fast", "wide"]

    proc = _run("create", "--output_dir", str(tmp_path / "x"), "--num_samples", "0")
    assert proc.returncode == 2 and "num_samples" in proc.stderr and "Traceback" not in proc.stderr


def test_create_or_convert_into_an_existing_dataset_is_refused_unless_overwrite(tmp_path, capsys):
    from engine.cli import main

    out = create_synthetic_dataset(tmp_path / "data", 4, seed=0)
    before = (out / METADATA_FILE).read_bytes()
    with pytest.raises(InputError, match=r"'data' already holds a dataset \(4 clips\); pass --overwrite"):
        create_synthetic_dataset(out, 2, seed=1)
    src = tmp_path / "src"
    write_mp4(_ramp_clip(40, 64, 64, step=1), src / "a.mp4", fps=8)
    (src / "a.txt").write_text("a clip")
    with pytest.raises(InputError, match="already holds a dataset"):
        convert_dataset(src, out)
    assert main(["data", "create", "--output_dir", str(out), "--num_samples", "2"]) == 2
    assert "already holds a dataset" in capsys.readouterr().err
    assert (out / METADATA_FILE).read_bytes() == before  # nothing was replaced
    create_synthetic_dataset(out, 2, seed=1, overwrite=True)
    assert len(json.loads((out / METADATA_FILE).read_text())) == 2
    assert main(["data", "create", "--output_dir", str(out), "--num_samples", "3", "--overwrite"]) == 0
    assert len(load_dataset(out)) == 3


@pytest.mark.slow
def test_data_create_makes_tta_clips_that_a_sweep_runs_on(tmp_path):
    """Issue 16 defect 3: `data create` could not make a TTA clip (no frame-count option)."""
    out = tmp_path / "tta"
    proc = _run("create", "--output_dir", str(out), "--num_samples", "1", "--preset", "tiny-wan", "--task", "tta")
    assert proc.returncode == 0, proc.stderr
    made = json.loads(proc.stdout)
    assert (made["frames"], made["height"], made["width"]) == (65, 64, 64)  # tiny-wan: tta 65 frames, short side 64
    entry = load_dataset(out)[0]
    assert (entry.base_frames, entry.extended_frames) == (33, 65)
    assert read_clip(entry.path)[0].shape == (65, 64, 64, 3)
    sweep = subprocess.run([sys.executable, "-m", "engine", "tta-sweep", "--data_dir", str(out), "--preset", "tiny-wan",
                            "--ranks", "4", "--lrs", "1e-3", "--steps", "1", "--sample_steps", "1", "--no_lpips",
                            "--experiment", "made", "--output_root", str(tmp_path / "results"), "--quiet"],
                           cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                           timeout=300)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    assert json.loads((tmp_path / "results" / "made" / "summary.json").read_text())["videos"] == [entry.video_id]
