"""generate / evaluate with --context_parallel over processes (torchrun, gloo, CPU) give one process's videos."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.video import read_mp4

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _run(procs: int, *args, script: str | None = None) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_addr",
              "127.0.0.1", "--master_port", str(port)] if procs > 1 else [sys.executable]
    target = [script] if script else ["-m", "engine"]
    result = subprocess.run([*launch, *target, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _same_frames(a, b):
    fa, _ = read_mp4(a)
    fb, _ = read_mp4(b)
    assert fa.shape == fb.shape
    assert np.abs(fa.astype(int) - fb.astype(int)).max() <= 1  # fp32 sums in another order, then 8-bit video


@pytest.mark.parametrize("pattern", ["radial", "dense"])
def test_generate_over_two_processes_gives_the_one_process_video(tmp_path, pattern):
    args = ["generate", "--prompt", "a red ball rolls", "--seed", "3", "--steps", "3", "--quiet", "--pattern", pattern]
    _run(1, *args, "--out", str(tmp_path / "one.mp4"))
    out = _run(2, *args, "--out", str(tmp_path / "cp2.mp4"), "--context_parallel", "2")
    assert out.stdout.count('"context_parallel": 2') == 1  # rank 0 alone reports (and writes)
    _same_frames(tmp_path / "one.mp4", tmp_path / "cp2.mp4")


@pytest.mark.parametrize("pattern", ["radial", "dense"])
def test_compiled_blocks_over_two_processes_give_the_one_process_video(tmp_path, pattern):
    """compile_blocks with context_parallel: the split hooks and diffusers' Ulysses (dense) or ours (radial,
    outside the graphs) inside compiled blocks give the eager one-process video."""
    args = ["generate", "--prompt", "a red ball rolls", "--seed", "3", "--steps", "3", "--quiet", "--pattern", pattern]
    _run(1, *args, "--out", str(tmp_path / "one.mp4"))
    out = _run(2, *args, "--out", str(tmp_path / "cp2.mp4"), "--context_parallel", "2", "--compile_blocks",
               script="tests/compiled_cli.py")
    assert out.stdout.count('"compile_blocks": true') == 1
    graphs = [int(line.split(":")[1]) for line in out.stdout.splitlines() if line.startswith("compiled graphs:")]
    assert len(graphs) == 2 and min(graphs) > 0, out.stdout[-500:]  # both ranks ran compiled blocks
    _same_frames(tmp_path / "one.mp4", tmp_path / "cp2.mp4")


def test_evaluate_over_two_processes_writes_once_and_matches(tmp_path, tiny_preset):
    from tests.run_factory import make_finished_run

    run = make_finished_run(tmp_path / "run", tiny_preset)
    args = ["evaluate", "--lora_checkpoint_dir", str(run / "final"), "--base_frames", "9", "--extended_frames", "17",
            "--steps", "2"]
    _run(1, *args, "--output_dir", str(tmp_path / "one"))
    _run(2, *args, "--output_dir", str(tmp_path / "cp2"), "--context_parallel", "2")
    summary = json.loads((tmp_path / "cp2" / "summary.json").read_text())
    assert summary["context_parallel"] == 2 and len(summary["results"]) == 2
    for name in ("base.mp4", "extended.mp4", "side_by_side.mp4"):
        _same_frames(tmp_path / "one" / "prompt-000" / name, tmp_path / "cp2" / "prompt-000" / name)


def test_the_compare_action_over_two_processes_gives_the_in_request_comparison(tmp_path, monkeypatch):
    from engine import api
    from engine.errors import InputError

    monkeypatch.setenv("RADIAL_STUDIO_OUTPUTS", str(tmp_path / "outputs"))
    settings = dict(preset="tiny-wan", base_frames=9, extended_frames=17, steps=2, seed=1)
    here, _ = api.compare("a red ball rolls", **settings)
    over, _ = api.compare("a red ball rolls", context_parallel=2, **settings)
    assert over.base_frames == 9 and over.extended_frames == 17 and "cp2" in over.side_by_side
    for a, b in ((here.base, over.base), (here.extended, over.extended), (here.side_by_side, over.side_by_side)):
        _same_frames(a, b)
    with pytest.raises(InputError, match="context_parallel"):  # the tiny model has 2 heads: 3 cannot split them
        api.compare("a red ball rolls", context_parallel=3, **settings)


@pytest.mark.parametrize("extra", [[], ["--context_parallel", "2"]])
def test_generate_sharded_over_two_processes_gives_the_one_process_video(tmp_path, extra):
    args = ["generate", "--prompt", "a red ball rolls", "--seed", "3", "--steps", "3", "--quiet"]
    _run(1, *args, "--out", str(tmp_path / "one.mp4"))
    out = _run(2, *args, "--out", str(tmp_path / "fsdp.mp4"), "--fsdp", *extra)
    assert out.stdout.count('"fsdp": true') == 1  # rank 0 alone reports (and writes)
    _same_frames(tmp_path / "one.mp4", tmp_path / "fsdp.mp4")


def test_evaluate_sharded_loads_the_lora_into_the_sharded_model_and_matches(tmp_path, tiny_preset):
    from tests.run_factory import make_finished_run

    run = make_finished_run(tmp_path / "run", tiny_preset)
    args = ["evaluate", "--lora_checkpoint_dir", str(run / "final"), "--base_frames", "9", "--extended_frames", "17",
            "--steps", "2"]
    _run(1, *args, "--output_dir", str(tmp_path / "one"))
    _run(2, *args, "--output_dir", str(tmp_path / "fsdp"), "--fsdp")
    assert json.loads((tmp_path / "fsdp" / "summary.json").read_text())["fsdp"] is True
    for name in ("base.mp4", "extended.mp4"):
        # The gathered weights are bit-identical but lie elsewhere in memory, so fp32 matmuls may sum in another
        # order (~1e-6); through the codec that moves a few pixels by a few levels, never the picture.
        a, _ = read_mp4(tmp_path / "one" / "prompt-000" / name)
        b, _ = read_mp4(tmp_path / "fsdp" / "prompt-000" / name)
        diff = np.abs(a.astype(int) - b.astype(int))
        assert a.shape == b.shape and diff.max() <= 6 and diff.mean() < 0.02 and (diff > 1).mean() < 1e-3, name


def test_generate_sharded_in_one_plain_process_says_it_needs_a_launcher(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "engine", "generate", "--prompt", "a ball", "--steps", "1", "--quiet",
                             "--fsdp", "--out", str(tmp_path / "x.mp4")], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0 and "accelerate launch or torchrun" in result.stderr
    assert not (tmp_path / "x.mp4").exists()
