import copy
import json

import pytest

from engine.errors import ConfigError
from engine.presets import apply_overrides, list_presets, load_preset, validate_preset


def test_every_preset_file_validates():
    names = list_presets()
    assert {"tiny-wan", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b"} <= set(names)
    for name in names:
        preset = load_preset(name)
        assert preset["name"] == name
        # every schema field is filled in
        assert set(preset["attention"]) >= {"pattern", "dense_layers", "dense_timesteps", "decay_factor", "block_size"}


def test_real_presets_carry_the_seed_defaults():
    for name in ("wan2.1-t2v-1.3b", "wan2.1-t2v-14b"):
        p = load_preset(name)
        assert p["lora"]["lora_rank"] == 64 and p["lora"]["lora_alpha"] == 64 and p["lora"]["lora_dropout"] == 0.1
        t = p["training"]
        assert (t["learning_rate"], t["batch_size"], t["gradient_accumulation_steps"]) == (1e-4, 1, 4)
        assert (t["base_num_frames"], t["extended_num_frames"]) == (69, 161)
        a = p["attention"]
        assert (a["pattern"], a["dense_layers"], a["dense_timesteps"], a["decay_factor"]) == ("radial", 2, 2, 0.2)
    assert load_preset("wan2.1-t2v-1.3b")["source"] == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    big = load_preset("wan2.1-t2v-14b")
    assert big["source"] == "Wan-AI/Wan2.1-T2V-14B-Diffusers"
    assert (big["training"]["height"], big["training"]["width"]) == (768, 1280)


def _tiny_data():
    from engine.presets import PRESETS_DIR

    return json.loads((PRESETS_DIR / "tiny-wan.json").read_text())


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d.pop("source"), "missing required field 'source'"),
        (lambda d: d["generation"].update(num_frames="17"), "'generation.num_frames': expected a integer"),
        (lambda d: d["generation"].update(num_frames=16), "Nearest valid counts: 13 or 17"),
        (lambda d: d["training"].update(extended_num_frames=70), "training.extended_num_frames"),
        (lambda d: d["generation"].update(height=100), "generation.height"),
        (lambda d: d["attention"].update(pattern="sparse"), "choose one of ['radial', 'dense']"),
        (lambda d: d["lora"].update(lora_rank=0), "lora.lora_rank"),
        (lambda d: d["attention"].update(decay=0.5), "unknown field(s) attention.decay"),
        (lambda d: d.update(dtype="int8"), "field 'dtype'"),
        (lambda d: d["generation"].update(steps=True), "expected a integer, got bool"),
        (lambda d: d.pop("tiny"), "field 'tiny'"),
    ],
)
def test_broken_preset_gives_clear_error(mutate, expected):
    data = _tiny_data()
    mutate(data)
    with pytest.raises(ConfigError) as info:
        validate_preset(data, origin="preset file broken.json")
    assert expected in str(info.value)
    assert "broken.json" in str(info.value)


def test_invalid_json_and_unknown_preset(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "bad", "source": "tiny",}')
    with pytest.raises(ConfigError, match=r"invalid JSON at line 1"):
        load_preset(str(bad))
    with pytest.raises(ConfigError, match=r"preset 'no-such' not found.*Available presets: .*tiny-wan"):
        load_preset("no-such")


def test_local_folder_source_and_overrides(tmp_path):
    data = _tiny_data()
    data.update(source=str(tmp_path), tiny=None, name="local")
    preset = validate_preset(data)
    assert preset["source"] == str(tmp_path)
    tiny = load_preset("tiny-wan")
    changed = apply_overrides(tiny, "attention", {"pattern": "dense", "decay_factor": None})
    assert changed["attention"]["pattern"] == "dense" and tiny["attention"]["pattern"] == "radial"
    with pytest.raises(ConfigError, match="attention.block_size"):
        apply_overrides(tiny, "attention", {"block_size": 48})
    assert copy.deepcopy(tiny) == load_preset("tiny-wan")
