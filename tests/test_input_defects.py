"""Small defects of the reliability and security issue (item 14): each bad input gets a clear error."""

import json

import pytest

from engine.errors import ConfigError, EngineError, InputError


def test_a_one_clip_dataset_is_refused_in_the_request(tmp_path, monkeypatch):
    from engine.data.dataset import create_synthetic_dataset
    from engine.launch.training import start_training

    data_root, runs = tmp_path / "data", tmp_path / "runs"
    monkeypatch.setenv("RADIAL_STUDIO_DATA_ROOT", str(data_root))
    monkeypatch.setenv("RADIAL_STUDIO_RUNS", str(runs))
    create_synthetic_dataset(data_root / "one", 1, seed=0)
    with pytest.raises(InputError, match=r"has 1 usable clip\(s\); need more than num_validation_clips=1"):
        start_training("tiny-wan", "folder", folder="one")
    assert not [p for p in runs.iterdir() if not p.name.startswith(("_", "."))]  # nothing queued
    assert not list((runs / "_datasets").iterdir()) if (runs / "_datasets").exists() else True


def test_a_non_utf8_preset_is_named_and_the_others_still_list(tmp_path, monkeypatch, capsys):
    import shutil

    from engine import presets
    from engine.cli import main

    shutil.copy(presets.PRESETS_DIR / "tiny-wan.json", tmp_path / "tiny-wan.json")
    (tmp_path / "latin1.json").write_bytes('{"name": "caf\xe9"}'.encode("latin-1"))
    monkeypatch.setattr(presets, "PRESETS_DIR", tmp_path)
    with pytest.raises(ConfigError, match="latin1.json is not UTF-8 text"):
        presets.load_preset("latin1")
    assert presets.presets_for("generate") == ["tiny-wan"]
    assert main(["presets"]) == 1
    out = capsys.readouterr().out
    assert "tiny-wan" in out and "latin1" in out and "BROKEN" in out


def test_config_files_and_output_folders_that_cannot_work(tmp_path):
    from engine.config import config_from_preset, read_config_file
    from engine.workers.trainer import prepare_run_dir

    binary = tmp_path / "config.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        read_config_file(binary)
    typed = tmp_path / "typed.json"
    typed.write_text(json.dumps({"lora_rank": "sixteen"}))
    with pytest.raises(ConfigError, match="lora_rank.*expected a integer, got str"):
        config_from_preset("tiny-wan", **read_config_file(typed))
    a_file = tmp_path / "out.txt"
    a_file.write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        prepare_run_dir(config_from_preset("tiny-wan", data_dir="d", output_dir=str(a_file)), resume=False)
    with pytest.raises(InputError, match="NUL character"):
        prepare_run_dir(config_from_preset("tiny-wan", data_dir="d", output_dir=str(tmp_path / "a\x00b")), False)


def test_a_nul_byte_in_a_folder_name_is_refused(tmp_path):
    from engine.safe_paths import resolve_under

    with pytest.raises(InputError, match="NUL character"):
        resolve_under(tmp_path, "data\x00/../../etc", "dataset folder")


def test_invalid_utf8_captions_are_skipped_with_the_reason(tmp_path):
    from engine.data.dataset import convert_dataset
    from engine.data.synthetic import render_clip
    from engine.video import write_mp4

    src = tmp_path / "src"
    for name, caption in (("good", "a red circle".encode()), ("bad", b"caf\xe9 \xff"), ("nul", b"a\x00b")):
        write_mp4(render_clip(0, 33, 64, 64).frames, src / f"{name}.mp4", fps=8)
        (src / f"{name}.txt").write_bytes(caption)
    report = convert_dataset(src, tmp_path / "out")
    assert report.kept == ["good"]
    reasons = dict(report.skipped)
    assert "not valid UTF-8" in reasons["bad.mp4"] and "NUL" in reasons["nul.mp4"]
    (src / "captions.json").write_bytes(b'[{"path": "good.mp4", "caption": "caf\xe9"}]')
    with pytest.raises(InputError, match="captions.json is not UTF-8 text"):
        convert_dataset(src, tmp_path / "out2")


def test_an_audio_only_clip_is_named_as_such(tmp_path):
    import subprocess

    import imageio_ffmpeg

    from engine.video import read_mp4

    path = tmp_path / "song.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=1", "-c:a", "aac", str(path)], check=True)
    with pytest.raises(EngineError, match="no video stream: the file holds only audio"):
        read_mp4(path)
