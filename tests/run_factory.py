"""A finished tiny-wan training run folder, made directly (no training) for tests that consume runs; waiting on a
training process's step (the SIGKILL-then-resume tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def write_events(run: Path, steps: range, val_steps) -> None:
    from engine.jobs import RunDir

    r = RunDir(run)
    for s in steps:
        r.append_event({"type": "train", "step": s, "loss": 0.5 / s + 0.1, "lr": 1e-3, "step_time": 0.1})
    for s in val_steps:
        r.append_event({"type": "validation", "step": s, "val_loss": 0.4 / (s + 1) + 0.15})


def make_finished_run(run: Path, tiny_preset: dict) -> Path:
    """final/ LoRA (both formats, B != 0), config.json, status, events and sample videos."""
    from engine.jobs import RunDir, atomic_write_json
    from engine.models.wan import FAMILY, build_tiny_pipeline
    from engine.config import config_from_preset
    from engine.lora import add_lora, save_lora
    from engine.video import write_mp4

    config = config_from_preset("tiny-wan", output_dir=str(run), data_dir="data/tiny", max_steps=10, seed=7)
    pipe = build_tiny_pipeline(tiny_preset["tiny"])
    add_lora(pipe.transformer, config.lora_rank, config.lora_alpha, 0.0, config.target_modules, seed=7)
    with torch.no_grad():  # a trained-looking adapter
        gen = torch.Generator().manual_seed(1)
        for name, p in pipe.transformer.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    save_lora(pipe.transformer, run / "final", FAMILY)
    atomic_write_json(run / "config.json", config.to_dict())
    RunDir(run).update_status(state="finished", step=10, total_steps=10)
    write_events(run, range(1, 11), (0, 5, 10))
    rng = np.random.default_rng(0)
    for step in (5, 10):
        for name, frames in (("base", 17), ("extended", 33)):
            write_mp4(rng.integers(0, 255, (frames, 32, 32, 3), dtype=np.uint8),
                      run / "samples" / f"step-{step:06d}" / f"{name}.mp4", fps=8)
    return run


def wait_for_step(run: Path, step: int, proc, timeout=300) -> None:
    """Until the run's status.json reaches `step`; fails if `proc` (the training process) ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if json.loads((run / "status.json").read_text()).get("step", 0) >= step:
                return
        except (OSError, ValueError):  # not written yet, or being replaced
            pass
        assert proc.poll() is None, "the run ended before it reached the step"
        time.sleep(0.05)
    raise AssertionError(f"the run did not reach step {step} in {timeout} s")


ROOT = Path(__file__).resolve().parents[1]


def engine_cli(*args, timeout=600) -> subprocess.CompletedProcess:
    """`python -m engine ARGS` in the repository; fails the test with the end of stderr unless it exits 0."""
    proc = subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def killed_then_resumed(flags: list[str], tmp_path: Path) -> tuple[Path, Path]:
    """A `train` run (`flags`, no --output_dir) SIGKILLed at step 5 and resumed, and the same run uninterrupted:
    (the killed run's folder, the whole run's folder), both finished, for the caller to compare."""
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "engine", *flags, "--output_dir", str(killed)], cwd=ROOT,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_step(killed, 5, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()
    engine_cli(*flags, "--output_dir", str(killed), "--resume")
    events = [json.loads(line) for line in (killed / "events.jsonl").read_text().splitlines()]
    assert next(e for e in events if e["type"] == "resume")["step"] >= 3
    engine_cli(*flags, "--output_dir", str(tmp_path / "whole"))
    return killed, tmp_path / "whole"


def trains_and_evaluates(preset: str, data: Path, tmp_path: Path) -> None:
    """A 2-step `train` through the CLI that writes its LoRA files and samples, then `evaluate` on its adapter."""
    from safetensors.torch import load_file

    from engine.lora import COMFY_WEIGHT_NAME, DIFFUSERS_WEIGHT_NAME

    run = tmp_path / "run"
    engine_cli("train", "--preset", preset, "--data_dir", str(data), "--output_dir", str(run), "--max_steps", "2",
               "--validation_steps", "2", "--checkpointing_steps", "2", "--sample_steps", "1", "--quiet")
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    state = load_file(str(run / "final" / DIFFUSERS_WEIGHT_NAME))
    assert any(float(v.abs().max()) > 0 for k, v in state.items() if "lora_B" in k)  # it trained
    assert (run / "final" / COMFY_WEIGHT_NAME).is_file() and (run / "samples" / "step-000002" / "extended.mp4").is_file()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    engine_cli("evaluate", "--preset", preset, "--lora_checkpoint_dir", str(run / "final"), "--output_dir",
               str(tmp_path / "eval"), "--steps", "1", "--prompts", str(prompts))
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())


def resumed_equals_whole(preset: str, data: Path, tmp_path: Path) -> None:
    """`killed_then_resumed` on a 30-step run of `preset`: the two final LoRAs are bit for bit equal."""
    from safetensors.torch import load_file

    from engine.lora import DIFFUSERS_WEIGHT_NAME

    flags = ["train", "--preset", preset, "--data_dir", str(data), "--max_steps", "30", "--checkpointing_steps", "3",
             "--validation_steps", "100", "--sample_steps", "0", "--quiet"]
    killed, whole = killed_then_resumed(flags, tmp_path)
    a, b = (load_file(str(d / "final" / DIFFUSERS_WEIGHT_NAME)) for d in (killed, whole))
    assert a.keys() == b.keys() and a and all(torch.equal(a[k], b[k]) for k in a)
