"""The dataset view, caption editing and the trigger word (issue 16, "Dataset view"), without Gradio.

The view is checked against the trainer's own plan (it must never disagree), and every write is
checked to change exactly one file, with every refused input leaving the data root as it was.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from engine.config import config_from_preset
from engine.data.dataset import create_synthetic_dataset
from engine.data.dataset_config import DATASET_FILE, read_dataset_config
from engine.data.latent_cache import cache_key
from engine.data.samples import plan_dataset, with_trigger
from engine.datasets_view import dataset_caption, dataset_trigger_word, dataset_view
from engine.errors import ConfigError, InputError
from engine.models import family

from tests.data.test_mixed_dataset import SKIPS, write_mixed_folder


@pytest.fixture
def root(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "clips").mkdir(parents=True)
    write_mixed_folder(data / "clips")
    monkeypatch.setenv("RADIAL_STUDIO_DATA_ROOT", str(data))
    monkeypatch.setenv("RADIAL_STUDIO_OUTPUTS", str(tmp_path / "outputs"))
    return data


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its bytes and modification time: what 'nothing else changed' means."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def test_the_view_shows_each_clip_as_the_trainer_plans_it(root, tiny_preset):
    view = dataset_view("clips", "tiny-wan")
    rows = {r["file"]: r for r in view["clips"]}
    assert sorted(rows) == ["long.mp4", "nocap.mp4", "short.mp4", "tall.mp4", "ucf.mp4"]
    train = tiny_preset["training"]
    plan = plan_dataset(root / "clips", family(tiny_preset), frames=train["extended_num_frames"],
                        base_frames=train["base_num_frames"], height=train["height"], width=train["width"])
    for s in plan.samples:  # the same bucket and prompt as the run's samples
        assert rows[s.path.name]["bucket"] == f"{s.height}x{s.width}" and rows[s.path.name]["prompt"] == s.prompt
    assert {f: r["reason"] for f, r in rows.items() if r["status"] == "skipped"} == SKIPS == dict(plan.skipped)
    assert rows["ucf.mp4"] | {"thumbnail": None} == {
        "clip": "ucf.mp4", "file": "ucf.mp4", "thumbnail": None, "frames": 70, "height": 240, "width": 320, "fps": 8.0,
        "caption": "a ucf clip, moving right", "prompt": "a ucf clip, moving right", "bucket": "48x80", "windows": 1,
        "status": "validation", "reason": ""}  # the last clip by name is held out, as the trainer does
    assert rows["long.mp4"]["status"] == "train" and rows["long.mp4"]["frames"] == 80  # counted in full
    assert view["buckets"] == plan.buckets() and view["options"] == plan.options and view["frames"] == 33
    for r in rows.values():  # a small first-frame PNG in the served outputs folder, even for a skipped clip
        png = Path(r["thumbnail"])
        assert png.parent == Path(os.environ["RADIAL_STUDIO_OUTPUTS"]) / "thumbnails" and png.suffix == ".png"
        with Image.open(png) as im:
            assert max(im.size) <= 160 and im.format == "PNG"
    assert Image.open(rows["ucf.mp4"]["thumbnail"]).size == (160, 120)  # aspect kept


def test_the_view_follows_the_folders_options_and_a_metadata_dataset(root, tiny_preset):
    (root / "clips" / DATASET_FILE).write_text('frame_extraction = "chunk"\nenable_bucket = false\n')
    rows = {r["file"]: r for r in dataset_view("clips", "tiny-wan")["clips"]}
    assert rows["long.mp4"]["windows"] == 2 and rows["ucf.mp4"]["bucket"] == "64x64"
    create_synthetic_dataset(root / "ds", 2, preset=tiny_preset)
    view = dataset_view("ds", "tiny-wan")
    assert view["kind"].startswith("dataset") and [r["clip"] for r in view["clips"]] == ["synthetic_00000",
                                                                                        "synthetic_00001"]
    assert view["clips"][0]["file"] == "videos/synthetic_00000.mp4" and view["clips"][1]["status"] == "validation"


def test_editing_a_txt_caption_writes_that_file_only_and_a_missing_one_makes_the_clip_train(root):
    (root / "clips" / "long.txt").chmod(0o640)
    before = snapshot(root)
    assert dataset_caption("clips", "long.mp4", "  a long clip, panning right \n") == {
        "clip": "long.mp4", "file": "long.txt", "caption": "a long clip, panning right"}
    after = snapshot(root)
    assert after["clips/long.txt"][0] == b"a long clip, panning right\n"
    assert {k: v for k, v in after.items() if k != "clips/long.txt"} == \
        {k: v for k, v in before.items() if k != "clips/long.txt"}
    assert (root / "clips" / "long.txt").stat().st_mode & 0o777 == 0o640  # its permissions kept
    dataset_caption("clips", "nocap.mp4", "a clip that had no caption")
    rows = {r["file"]: r for r in dataset_view("clips", "tiny-wan")["clips"]}
    assert rows["nocap.mp4"]["status"] == "train" and rows["nocap.mp4"]["caption"] == "a clip that had no caption"
    assert rows["long.mp4"]["caption"] == "a long clip, panning right"


def test_editing_a_metadata_caption_changes_that_entrys_prompt_only(root, tiny_preset):
    create_synthetic_dataset(root / "ds", 2, preset=tiny_preset)
    meta = root / "ds" / "metadata.json"
    old = json.loads(meta.read_text())
    videos = snapshot(root / "ds" / "videos")
    dataset_caption("ds", "synthetic_00001", "a new caption")
    new = json.loads(meta.read_text())
    assert new[1]["prompt"] == "a new caption" and {**new[1], "prompt": old[1]["prompt"]} == old[1]
    assert new[0] == old[0] and snapshot(root / "ds" / "videos") == videos
    assert dataset_view("ds", "tiny-wan")["clips"][1]["caption"] == "a new caption"


@pytest.mark.parametrize("folder, clip, caption, message", [
    ("../outside", "a.mp4", "x", "contains '..'"),
    ("/etc", "a.mp4", "x", "is an absolute path"),
    ("missing", "a.mp4", "x", "'missing' does not exist under the data root"),
    ("clips/long.mp4", "a.mp4", "x", "is a file; give the folder"),
    ("clips", "ghost.mp4", "x", "no clip 'ghost.mp4' in this folder"),
    ("clips", "long.txt", "x", "no clip 'long.txt' in this folder"),
    ("clips", "../clips/long.mp4", "x", "is not a file name of this folder"),
    ("clips", "long.mp4", "  \n", "caption is empty"),
    ("clips", "long.mp4", "a\x00b", "NUL character"),
    ("clips", "", "x", "clip is empty"),
    ("ds", "ghost", "x", "no clip with video_id 'ghost' in metadata.json"),
])
def test_a_refused_caption_edit_names_the_input_and_changes_nothing(root, tiny_preset, folder, clip, caption,
                                                                   message):
    create_synthetic_dataset(root / "ds", 1, preset=tiny_preset)
    before = snapshot(root)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(".", r"\.")):
        dataset_caption(folder, clip, caption)
    assert snapshot(root) == before


def test_captions_outside_the_root_or_in_a_caption_file_are_not_written(root, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    (root / "clips" / "long.txt").unlink()
    (root / "clips" / "long.txt").symlink_to(outside)  # a caption that leads out of the data root
    (root / "link").symlink_to(tmp_path)  # a folder that does
    (root / "csv").mkdir()
    shutil.copy(root / "clips" / "tall.mp4", root / "csv" / "tall.mp4")
    (root / "csv" / "captions.csv").write_text("path,caption\ntall.mp4,a tall clip\n")
    before = snapshot(root)
    with pytest.raises(InputError, match="leads outside the data root"):
        dataset_caption("clips", "long.mp4", "x")
    with pytest.raises(InputError, match="leads outside the data root"):
        dataset_caption("link", "x.mp4", "x")
    with pytest.raises(InputError, match="come from captions.csv; edit that file"):
        dataset_caption("csv", "tall.mp4", "x")
    assert snapshot(root) == before and outside.read_text() == "keep me"


def test_the_trigger_word_goes_before_every_trained_caption_and_into_the_cache_key(root, tiny_preset):
    folder = root / "clips"
    (folder / DATASET_FILE).write_text('# my clips\nframe_extraction = "head"\n')
    assert dataset_trigger_word("clips", "sks")["trigger_word"] == "sks"
    assert (folder / DATASET_FILE).read_text() == '# my clips\nframe_extraction = "head"\ntrigger_word = "sks"\n'
    rows = {r["file"]: r for r in dataset_view("clips", "tiny-wan")["clips"]}
    assert rows["long.mp4"]["caption"] == "a long clip, moving right"  # the file is unchanged
    assert rows["long.mp4"]["prompt"] == "sks, a long clip, moving right"  # what trains
    fam, train = family(tiny_preset), tiny_preset["training"]
    args = dict(frames=train["extended_num_frames"], base_frames=train["base_num_frames"], height=64, width=64)
    with_word = plan_dataset(folder, fam, **args).samples[0]
    without = plan_dataset(folder, fam, **args, overrides={"trigger_word": ""}).samples[0]  # a run's override wins
    assert with_word.prompt == "sks, " + without.prompt
    assert cache_key(with_word, tiny_preset, "sha", "f32") != cache_key(without, tiny_preset, "sha", "f32")
    assert with_trigger("sks dog running", "sks") == "sks dog running"  # not doubled
    dataset_trigger_word("clips", "")  # empty: removed, the rest kept
    assert (folder / DATASET_FILE).read_text() == '# my clips\nframe_extraction = "head"\n'
    assert config_from_preset("tiny-wan", data_dir="d", output_dir="o", trigger_word="sks").trigger_word == "sks"


@pytest.mark.parametrize("word", ["sks\ndog", "sks\r", "tab\there", "x" * 201])
def test_a_bad_trigger_word_is_refused_everywhere_and_changes_nothing(root, word):
    folder = root / "clips"
    (folder / DATASET_FILE).write_text("enable_bucket = true\n")
    before = snapshot(root)
    with pytest.raises(ConfigError, match="trigger word: .*(newline or another control character|at most 200)"):
        dataset_trigger_word("clips", word)
    assert snapshot(root) == before
    with pytest.raises(ConfigError, match="training config field 'trigger_word'"):
        config_from_preset("tiny-wan", data_dir="d", output_dir="o", trigger_word=word).validate()
    (folder / DATASET_FILE).write_text(f"trigger_word = {json.dumps(word)}\n")
    with pytest.raises(ConfigError, match=f"{DATASET_FILE}: field 'trigger_word'"):
        read_dataset_config(folder)


def test_a_trigger_word_is_not_written_into_a_broken_dataset_toml(root):
    (root / "clips" / DATASET_FILE).write_text("frame_extraction = \n")
    before = snapshot(root)
    with pytest.raises(ConfigError, match="invalid TOML"):
        dataset_trigger_word("clips", "sks")
    with pytest.raises(InputError, match="does not exist under the data root"):
        dataset_trigger_word("nowhere", "sks")
    assert snapshot(root) == before


def test_a_preset_that_cannot_train_is_refused_by_name(root):
    with pytest.raises(ConfigError, match="'tiny-opensora2' .* cannot train length-extension LoRAs; presets that can"):
        dataset_view("clips", "tiny-opensora2")


def test_the_trainers_plan_takes_the_trigger_word_from_the_folder_or_the_run(root, tmp_path, tiny_preset):
    from engine.workers.trainer import check_dataset

    folder = root / "clips"
    (folder / DATASET_FILE).write_text('trigger_word = "sks"\n')
    fam = family(tiny_preset)
    config = config_from_preset("tiny-wan", data_dir=str(folder), output_dir=str(tmp_path / "run"))
    assert {s.prompt.split(", ")[0] for s in check_dataset(config, fam).samples} == {"sks"}
    config = config_from_preset("tiny-wan", data_dir=str(folder), output_dir=str(tmp_path / "run"), trigger_word="ohwx")
    assert {s.prompt.split(", ")[0] for s in check_dataset(config, fam).samples} == {"ohwx"}
