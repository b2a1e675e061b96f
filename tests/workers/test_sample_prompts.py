"""Samples during training: the user's prompts, seed and steps, one pair of videos per prompt at every validation,
all of them listed by the gallery (engine.launch.sample_gallery)."""

import json

import numpy as np
import pytest

from engine.cli import main
from engine.config import config_from_preset
from engine.data.dataset import create_synthetic_dataset
from engine.errors import ConfigError
from engine.video import read_mp4

PROMPTS = "a red ball, bouncing|a blue cube"  # the first holds a comma: the flag splits on |


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return create_synthetic_dataset(tmp_path_factory.mktemp("data") / "d", 3, preset="tiny-wan", seed=0)


def _train(data, out, *extra):
    assert main(["train", "--preset", "tiny-wan", "--data_dir", str(data), "--output_dir", str(out), "--max_steps", "2",
                 "--validation_steps", "1", "--checkpointing_steps", "100", "--sample_steps", "2", "--quiet",
                 *extra]) == 0


def test_each_prompt_gets_a_pair_of_videos_at_every_validation_and_the_gallery_lists_all(data, tmp_path, monkeypatch):
    monkeypatch.setenv("RADIAL_STUDIO_RUNS", str(tmp_path))
    _train(data, tmp_path / "run", "--sample_prompts", PROMPTS, "--sample_seed", "3")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["sample_prompts"] == ["a red ball, bouncing", "a blue cube"] and config["sample_seed"] == 3
    for step in (0, 1, 2):
        folder = tmp_path / "run" / "samples" / f"step-{step:06d}"
        listing = json.loads((folder / "prompts.json").read_text())
        assert [e["prompt"] for e in listing] == ["a red ball, bouncing", "a blue cube"]
        assert [(e["base"], e["extended"]) for e in listing] == [("base.mp4", "extended.mp4"),
                                                                 ("base-1.mp4", "extended-1.mp4")]
        assert listing[0]["seed"] == 3 and listing[0]["steps"] == 2
        assert listing[0]["guidance_scale"] == 5.0 and listing[0]["guidance_scale_2"] is None  # tiny-wan's
    first, second = (read_mp4(tmp_path / "run" / "samples" / "step-000002" / n)[0] for n in ("extended.mp4", "extended-1.mp4"))
    assert first.shape[0] == 33 and not np.array_equal(first, second)  # two prompts, two videos

    from engine.launch.sample_gallery import sample_gallery

    gallery = sample_gallery("run")
    assert [(g["step"], g["prompt"]) for g in gallery] == [(s, p) for s in (0, 1, 2)
                                                           for p in ("a red ball, bouncing", "a blue cube")]
    assert all(g["base"].endswith(".mp4") and g["extended"].endswith(".mp4") for g in gallery)


def test_the_sample_seed_changes_the_samples_and_not_the_training(data, tmp_path):
    _train(data, tmp_path / "a", "--sample_prompts", "a red ball", "--sample_seed", "1")
    _train(data, tmp_path / "b", "--sample_prompts", "a red ball", "--sample_seed", "2")
    a, b = (read_mp4(tmp_path / r / "samples" / "step-000002" / "extended.mp4")[0] for r in ("a", "b"))
    assert not np.array_equal(a, b)

    def losses(run):
        return [e.get("loss") for e in map(json.loads, (tmp_path / run / "events.jsonl").read_text().splitlines())
                if e["type"] == "train"]
    assert losses("a") == losses("b")


def test_samples_use_the_presets_guidance(data, tmp_path):
    """The samples are what Generate would make with the preset: its guidance scale, not a fixed one."""
    from pathlib import Path

    preset = json.loads((Path(__file__).resolve().parents[2] / "presets" / "tiny-wan.json").read_text())
    preset["generation"]["guidance_scale"] = 1.0
    custom = tmp_path / "tiny-wan-g1.json"
    custom.write_text(json.dumps({**preset, "name": "tiny-wan-g1"}))
    _train(data, tmp_path / "default", "--sample_prompts", "a red ball")
    assert main(["train", "--preset", str(custom), "--data_dir", str(data), "--output_dir", str(tmp_path / "g1"),
                 "--max_steps", "2", "--validation_steps", "1", "--checkpointing_steps", "100", "--sample_steps", "2",
                 "--quiet", "--sample_prompts", "a red ball"]) == 0
    folder = tmp_path / "g1" / "samples" / "step-000000"
    assert json.loads((folder / "prompts.json").read_text())[0]["guidance_scale"] == 1.0
    a, b = (read_mp4(tmp_path / r / "samples" / "step-000000" / "extended.mp4")[0] for r in ("default", "g1"))
    assert not np.array_equal(a, b)


def test_without_sample_prompts_the_first_held_out_clip_is_sampled_as_before(data, tmp_path, monkeypatch):
    monkeypatch.setenv("RADIAL_STUDIO_RUNS", str(tmp_path))
    _train(data, tmp_path / "plain")
    folder = tmp_path / "plain" / "samples" / "step-000002"
    assert sorted(p.name for p in folder.glob("*.mp4")) == ["base.mp4", "extended.mp4"]
    assert json.loads((folder / "prompts.json").read_text())[0]["prompt"] is None

    from engine.launch.sample_gallery import sample_gallery

    (folder / "prompts.json").unlink()  # a run from before sample prompts: its pair is still listed
    assert [g["step"] for g in sample_gallery("plain")][-1] == 2


@pytest.mark.parametrize("field, value, match", [
    ("sample_prompts", ["a cat", ""], "every item must be a non-empty string"),
    ("sample_prompts", "a cat", "expected a non-empty list"),
    ("sample_seed", -1, "out of range"),
])
def test_bad_sample_settings_are_refused_naming_the_field(field, value, match, tmp_path):
    with pytest.raises(ConfigError, match=f"'{field}'.*{match}|{field}.*{match}"):
        config_from_preset("tiny-wan", data_dir="-", output_dir=str(tmp_path / "never"), **{field: value})
    assert not (tmp_path / "never").exists()
