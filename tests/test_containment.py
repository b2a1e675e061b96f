"""Every file the app opens on a user's behalf resolves inside the data root (reliability and security, item 2)."""

import json
import os

import pytest

from engine.errors import InputError


@pytest.fixture
def roots(tmp_path, monkeypatch):
    data, outside, runs = tmp_path / "data", tmp_path / "outside", tmp_path / "runs"
    for d in (data, outside, runs):
        d.mkdir()
    monkeypatch.setenv("RADIAL_STUDIO_DATA_ROOT", str(data))
    monkeypatch.setenv("RADIAL_STUDIO_RUNS", str(runs))
    return data, outside, runs


def _clips(folder, n=3, frames=33):
    from engine.data.synthetic import render_clip
    from engine.video import write_mp4

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        clip = render_clip(seed=1, num_frames=frames, height=64, width=64, index=i)
        write_mp4(clip.frames, folder / f"clip{i}.mp4", fps=8)
        (folder / f"clip{i}.txt").write_text(clip.caption)


def test_a_videos_symlink_out_of_the_data_root_is_refused(roots):
    from engine.data.dataset import create_synthetic_dataset
    from engine.launch.training import prepare_dataset

    data, outside, runs = roots
    real = create_synthetic_dataset(outside / "ds", 3, seed=0)
    fake = data / "ds"
    fake.mkdir()
    (fake / "metadata.json").write_text((real / "metadata.json").read_text())
    os.symlink(real / "videos", fake / "videos")
    with pytest.raises(InputError, match="leads outside the data root"):
        prepare_dataset("folder", runs / "_datasets" / "x", preset="tiny-wan", folder="ds")


def test_absolute_or_symlinked_clips_in_a_caption_file_are_skipped_not_read(roots):
    from engine.data.dataset import convert_dataset
    from engine.launch.training import prepare_dataset

    data, outside, runs = roots
    _clips(outside / "src", n=1)
    _clips(data / "mine", n=2)
    rows = [{"path": str(outside / "src" / "clip0.mp4"), "caption": "stolen"},
            {"path": "clip0.mp4", "caption": "mine"}, {"path": "clip1.mp4", "caption": "mine too"}]
    (data / "mine" / "captions.json").write_text(json.dumps(rows))
    os.symlink(outside / "src" / "clip0.mp4", data / "mine" / "linked.mp4")
    target = runs / "_datasets" / "y"
    prepare_dataset("folder", target, preset="tiny-wan", folder="mine")
    kept = json.loads((target / "convert_report.json").read_text())
    skipped = {row["file"]: row["reason"] for row in kept["skipped"]}
    assert sorted(kept["kept"]) == ["clip0", "clip1"]
    assert "outside the data root" in skipped[str(outside / "src" / "clip0.mp4")]
    assert "outside the data root" in skipped["linked.mp4"]
    assert not any("stolen" in e["prompt"] for e in json.loads((target / "metadata.json").read_text()))
    # the CLI (no data root) still converts anything the user points it at
    report = convert_dataset(data / "mine", runs / "cli", preset="tiny-wan")
    assert len(report.kept) == 3


def test_an_adapter_folder_holding_a_symlinked_lora_file_is_refused(roots, tiny_preset):
    from engine.adapters import resolve_adapter_ref
    from engine.lora import DIFFUSERS_WEIGHT_NAME

    data, outside, _ = roots
    (outside / DIFFUSERS_WEIGHT_NAME).write_bytes(b"secret")
    (data / "lora").mkdir()
    os.symlink(outside / DIFFUSERS_WEIGHT_NAME, data / "lora" / DIFFUSERS_WEIGHT_NAME)
    with pytest.raises(InputError, match="leads outside the data root"):
        resolve_adapter_ref("lora")
    (data / "ok").mkdir()
    (data / "ok" / DIFFUSERS_WEIGHT_NAME).write_bytes(b"x")
    assert resolve_adapter_ref("ok") == (data / "ok").resolve()


def test_a_contained_folder_of_videos_trains_as_it_is_not_converted(roots):
    """The app's folder source: clips of mixed sizes and lengths inside the data root are used in place (buckets,
    windows); nothing is copied."""
    from engine.data.synthetic import render_clip
    from engine.launch.training import prepare_dataset
    from engine.video import write_mp4

    data, _, runs = roots
    folder = data / "mixed"
    folder.mkdir()
    for i, (h, w, frames) in enumerate([(64, 64, 33), (240, 320, 40), (96, 48, 60)]):
        write_mp4(render_clip(seed=i, num_frames=frames, height=h, width=w).frames, folder / f"c{i}.mp4", fps=8)
        (folder / f"c{i}.txt").write_text(f"clip {i}")
    target = runs / "_datasets" / "z"
    assert prepare_dataset("folder", target, preset="tiny-wan", folder="mixed") == folder
    assert not target.exists()
