"""engine.api: presets per task, refusals in the request (before anything is queued or written)."""

import math
import time

import pytest

from engine import api
from engine.errors import ConfigError, EngineError


def test_each_task_lists_only_the_presets_whose_family_can_do_it():
    train = api.presets_for("length_extension")
    generate = api.presets_for("generate")
    tta = api.presets_for("tta")
    assert {"tiny-wan", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b"} <= set(train)
    assert not {"tiny-wan-vace", "wan2.1-vace-1.3b", "tiny-opensora2", "opensora2-256px", "tiny-skyreels-df"} & set(train)
    assert "tiny-opensora2" not in generate and "opensora2-768px" not in generate and "tiny-wan" in generate
    assert {"tiny-wan", "tiny-wan-vace", "tiny-skyreels-df", "tiny-opensora2"} <= set(tta)
    assert api.default_preset_for("tta", "nope") == tta[0]
    with pytest.raises(ConfigError, match="unknown task"):
        api.presets_for("juggle")


def test_a_broken_preset_file_is_left_out_of_the_lists(tmp_path, monkeypatch):
    import shutil

    from engine import presets

    for p in presets.PRESETS_DIR.glob("tiny-wan.json"):
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "broken.json").write_text("{not json")
    monkeypatch.setattr(presets, "PRESETS_DIR", tmp_path)
    assert api.presets_for("generate") == ["tiny-wan"]


def test_incapable_presets_are_refused_in_the_request(tmp_path, monkeypatch):
    monkeypatch.setenv("RADIAL_STUDIO_RUNS", str(tmp_path / "runs"))
    with pytest.raises(ConfigError, match=r"tiny-opensora2.*cannot generate videos from text; presets that can: .*tiny-wan"):
        api.generate("a red ball", preset="tiny-opensora2")
    with pytest.raises(ConfigError, match=r"tiny-opensora2.*cannot generate"):
        api.compare("a red ball", preset="tiny-opensora2")
    # Length extension with VACE used to crash in the first validation; it is refused before a job exists.
    with pytest.raises(ConfigError, match=r"tiny-wan-vace.*cannot train length-extension LoRAs; presets that can: .*\btiny-wan\b"):
        api.start_training("tiny-wan-vace")
    assert not list((tmp_path / "runs").glob("2*"))  # no run folder, nothing queued


@pytest.mark.parametrize("settings, field, expected", [
    ({"dense_layers": -3}, "dense_layers", ">= 0"),
    ({"dense_layers": 9}, "dense_layers", "the model has 4 blocks"),
    ({"attention_backend": "cuda-magic"}, "attention_backend", "['triton', 'triton_fp8', 'flex', 'reference', 'dense']"),
    ({"attention_backend": "triton_fp8"}, "attention_backend", "forward-only (sampling)"),
    ({"seed": -5}, "seed", ">= 0"),
    ({"learning_rate": math.nan}, "learning_rate", "finite"),
    ({"learning_rate": math.inf}, "learning_rate", "finite"),
    ({"lora_rank": 65}, "lora_rank", "above the model width (64)"),
    ({"lora_rank": 0}, "lora_rank", ">= 1"),
    ({"max_steps": 0}, "max_steps", ">= 1"),
    ({"gradient_accumulation_steps": 1.5}, "gradient_accumulation_steps", "expected a integer"),
    ({"lora_dropout": 1.0}, "lora_dropout", "< 1"),
    ({"validation_timesteps": [0.5, 1.5]}, "validation_timesteps", "(0, 1)"),
    ({"base_num_frames": 16}, "base_num_frames", "13 or 17"),
    ({"pattern": "sparse"}, "pattern", "['radial', 'dense']"),
])
def test_invalid_training_settings_are_refused_before_a_job_is_queued(settings, field, expected, tmp_path, monkeypatch):
    monkeypatch.setenv("RADIAL_STUDIO_RUNS", str(tmp_path / "runs"))
    with pytest.raises(ConfigError) as info:
        api.start_training("tiny-wan", settings=settings)
    assert field in str(info.value) and expected in str(info.value)
    assert not list((tmp_path / "runs").glob("2*"))


def test_the_same_settings_are_checked_for_presets_attention_and_tta(tmp_path):
    from engine.attention.schedule import AttentionSettings
    from engine.presets import load_preset, validate_preset
    from engine.workers.tta import check_settings

    with pytest.raises(ConfigError, match="decay_factor.*finite"):
        AttentionSettings(decay_factor=math.nan)
    with pytest.raises(ConfigError, match="dense_layers.*>= 0"):
        AttentionSettings(dense_layers=-1)
    bad = load_preset("tiny-wan")
    bad["attention"]["decay_factor"] = math.inf
    with pytest.raises(ConfigError, match="attention.decay_factor.*finite"):
        validate_preset(bad)
    with pytest.raises(EngineError, match="lr.*finite"):
        check_settings(rank=4, alpha=None, lr=math.nan, steps=2, objective="diffusion", seed=0, cond_frames=33,
                       total_frames=65)
    with pytest.raises(EngineError, match="rank.*>= 1"):
        check_settings(rank=-1, alpha=None, lr=1e-3, steps=2, objective="diffusion", seed=0, cond_frames=33,
                       total_frames=65)


def test_tta_frame_counts_and_defaults_are_preset_fields():
    from engine.presets import load_preset, validate_preset

    tiny = load_preset("tiny-wan")
    assert (tiny["tta"]["cond_frames"], tiny["tta"]["total_frames"]) == (33, 65)
    assert api.tta_defaults("tiny-wan")["steps"] == 20 and api.tta_defaults("wan2.1-t2v-1.3b")["steps"] == 50
    custom = validate_preset({**tiny, "tta": {**tiny["tta"], "cond_frames": 17, "total_frames": 33}})
    assert (custom["tta"]["cond_frames"], custom["tta"]["total_frames"]) == (17, 33)
    with pytest.raises(ConfigError, match="tta.total_frames.*must be greater than 'tta.cond_frames'"):
        validate_preset({**tiny, "tta": {**tiny["tta"], "cond_frames": 33, "total_frames": 33}})
    with pytest.raises(ConfigError, match="tta.cond_frames.*Nearest valid counts: 29 or 33"):
        validate_preset({**tiny, "tta": {**tiny["tta"], "cond_frames": 32}})


def test_one_definition_of_every_training_default():
    """The UI form, the API and the CLI take a preset's defaults from one place."""
    from engine.cli import build_parser
    from engine.config import FIELDS, TrainConfig, config_from_preset

    assert set(TrainConfig.field_names()) == set(FIELDS)
    form = api.training_defaults("tiny-wan")
    config = config_from_preset("tiny-wan", data_dir="d", output_dir="o")
    assert {k: v for k, v in form.items() if k not in ("data_dir", "output_dir")} == \
        {k: v for k, v in config.to_dict().items() if k not in ("data_dir", "output_dir")}
    assert (config.max_steps, config.validation_steps, config.checkpointing_steps) == (40, 10, 10)
    real = config_from_preset("wan2.1-t2v-1.3b", data_dir="d", output_dir="o")
    assert (real.validation_steps, real.checkpointing_steps, real.max_steps) == (50, 50, None)
    args = build_parser().parse_args(["train"])
    assert all(getattr(args, k, None) is None for k in FIELDS if k not in ("preset", "data_dir", "output_dir"))


def test_generate_keeps_a_history_newest_first_with_each_videos_settings(tmp_path, monkeypatch):
    """Issue 16 (Guidance): Generate keeps a history."""
    from engine import api
    from engine.video import read_mp4
    from ui.generate_tab import history_items

    monkeypatch.setenv("RADIAL_STUDIO_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("RADIAL_STUDIO_OUTPUTS", str(tmp_path / "outputs"))
    assert api.generation_history() == []
    first = api.generate("a red ball", preset="tiny-wan", steps=1, num_frames=5, seed=1)
    time.sleep(0.05)
    second = api.generate("a blue cube", preset="tiny-wan", steps=1, num_frames=9, seed=2)
    history = api.generation_history()
    assert [h["prompt"] for h in history] == ["a blue cube", "a red ball"]
    assert history[0]["video"] == str(second.path) and history[1]["video"] == str(first.path)
    assert (history[0]["num_frames"], history[0]["seed"], history[0]["preset"]) == (9, 2, "tiny-wan")
    assert read_mp4(history[1]["video"])[0].shape[0] == 5
    assert api.generation_history(limit=1) == history[:1]
    second.path.unlink()  # a video deleted by hand leaves the history, its settings file alone does not show
    assert [h["prompt"] for h in api.generation_history()] == ["a red ball"]
    (tmp_path / "outputs" / "junk.mp4.settings.json").write_text("{broken")
    (tmp_path / "outputs" / "junk.mp4").write_bytes(b"")
    assert [h["prompt"] for h in api.generation_history()] == ["a red ball"]
    video, caption = history_items()[0]
    assert video == str(first.path) and caption.startswith("a red ball · tiny-wan · 5f · seed 1 · ")
