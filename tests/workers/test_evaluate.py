"""Evaluate (base vs extended) and generation with a trained LoRA."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.errors import InputError
from engine.generate import generate_video
from engine.config import config_from_preset
from engine.data.dataset import create_synthetic_dataset
from engine.workers.evaluate import evaluate_lora, read_prompts
from engine.workers.trainer import train
from engine.video import read_mp4

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("eval-data") / "data"
    create_synthetic_dataset(data, 3, preset="tiny-wan", seed=2)
    run = tmp_path_factory.mktemp("eval-run") / "run"
    # A high learning rate makes the LoRA's effect on the output unmistakable after 3 steps.
    train(config_from_preset("tiny-wan", data_dir=str(data), output_dir=str(run), max_steps=3, learning_rate=5e-2,
                             validation_steps=100, checkpointing_steps=3, use_gradient_checkpointing=False))
    return run


def test_evaluate_writes_videos_side_by_side_and_summary(trained_run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moves left\n\na blue square spins\n")
    summary = evaluate_lora(trained_run / "final", tmp_path / "eval", base_frames=9, extended_frames=17,
                            prompts_file=prompts, steps=2, seed=3)
    assert summary["preset"] == "tiny-wan"  # read from the run's config.json
    assert len(summary["results"]) == 2
    first = summary["results"][0]
    assert read_mp4(first["base"])[0].shape[0] == 9
    assert read_mp4(first["extended"])[0].shape[0] == 17
    composed, _ = read_mp4(first["side_by_side"])
    assert composed.shape[0] == 17 and composed.shape[2] > 2 * 64  # two videos next to each other
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["extended_frames"] == 17
    assert first["base_seconds"] > 0 and first["extended_seconds"] > 0


def test_generate_with_lora_differs_from_base_and_leaves_the_model_clean(trained_run, tmp_path):
    kwargs = dict(num_frames=9, steps=2, seed=0)
    base = generate_video("a cat", out_path=tmp_path / "a.mp4", **kwargs)
    with_lora = generate_video("a cat", out_path=tmp_path / "b.mp4", lora_dir=trained_run / "final", **kwargs)
    again = generate_video("a cat", out_path=tmp_path / "c.mp4", **kwargs)
    assert not np.array_equal(base.frames, with_lora.frames)
    assert np.array_equal(base.frames, again.frames)  # the adapter was unloaded
    with pytest.raises(InputError, match="has no pytorch_lora_weights.safetensors"):
        generate_video("a cat", out_path=tmp_path / "d.mp4", lora_dir=tmp_path, **kwargs)


def test_cli_evaluate_and_generate_with_lora(trained_run, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "engine", "generate", "--prompt", "a dog", "--num_frames", "17",
                           "--steps", "2", "--lora_checkpoint_dir", str(trained_run / "final"), "--pattern", "radial",
                           "--dense_layers", "2", "--dense_timesteps", "1", "--decay_factor", "0.2",
                           "--out", str(tmp_path / "g.mp4"), "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["lora_dir"] == str(trained_run / "final")
    proc = subprocess.run([sys.executable, "-m", "engine", "evaluate", "--lora_checkpoint_dir", str(trained_run / "final"),
                           "--output_dir", str(tmp_path / "ev"), "--base_frames", "5", "--extended_frames", "9",
                           "--steps", "1"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "ev" / "summary.json").is_file()


def test_prompts_file_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_prompts(tmp_path / "none.txt")
    bad = tmp_path / "p.json"
    bad.write_text("[1, 2]")
    with pytest.raises(InputError, match="list of strings"):
        read_prompts(bad)
