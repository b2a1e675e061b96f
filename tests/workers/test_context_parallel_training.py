"""Training with context parallelism over several processes (torchrun, gloo, CPU) equals one process."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
COMMON = ["--preset", "tiny-wan", "--validation_steps", "100", "--checkpointing_steps", "2", "--lora_dropout", "0",
          "--quiet"]  # LoRA dropout draws per rank: off, so runs can be compared number for number


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(data, out, procs: int, *args) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_addr",
              "127.0.0.1", "--master_port", str(_port()), "-m"] if procs > 1 else [sys.executable, "-m"]
    result = subprocess.run([*launch, "engine", "train", *COMMON, "--data_dir", str(data), "--output_dir", str(out),
                             *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-8000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _steps(out) -> list[dict]:
    return [e for e in map(json.loads, (out / "events.jsonl").read_text().splitlines()) if e["type"] == "train"]


def _same_run(a, b):
    ea, eb = _steps(a), _steps(b)
    assert [e["step"] for e in ea] == [e["step"] for e in eb] and ea
    for x, y in zip(ea, eb):
        # grad_norm catches a wrong gradient scale (AdamW itself would hide it); the loss, the samples and noise
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)
        for k in ("loss", "loss_base", "loss_extended", "loss_consistency"):
            assert x[k] == pytest.approx(y[k], rel=1e-5), k
    wa, wb = load_file(a / "final" / "pytorch_lora_weights.safetensors"), load_file(b / "final" / "pytorch_lora_weights.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-4), k


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from engine.data.dataset import create_synthetic_dataset

    return create_synthetic_dataset(tmp_path_factory.mktemp("cp") / "data", 3, preset="tiny-wan", seed=0)


def test_two_processes_of_context_parallelism_train_as_one(data, tmp_path):
    _train(data, tmp_path / "one", 1, "--max_steps", "2", "--gradient_accumulation_steps", "2")
    _train(data, tmp_path / "cp2", 2, "--max_steps", "2", "--gradient_accumulation_steps", "2", "--context_parallel", "2")
    _same_run(tmp_path / "one", tmp_path / "cp2")


def test_four_processes_two_cp_groups_train_as_one_with_twice_the_accumulation_and_checkpoints_move(data, tmp_path):
    one, four = tmp_path / "one", tmp_path / "four"
    _train(data, one, 1, "--max_steps", "2", "--gradient_accumulation_steps", "4")
    _train(data, four, 4, "--max_steps", "2", "--gradient_accumulation_steps", "2", "--context_parallel", "2")
    _same_run(one, four)
    # A 4-process checkpoint resumes in 1 process and a 1-process one in 4 (same batch per step: the
    # accumulation may change on resume for that), and the resumed steps agree.
    a = _train(data, four, 1, "--max_steps", "3", "--gradient_accumulation_steps", "4", "--context_parallel", "1",
               "--resume")
    b = _train(data, one, 4, "--max_steps", "3", "--gradient_accumulation_steps", "2", "--context_parallel", "2",
               "--resume")
    assert a["state"] == b["state"] == "finished" and a["step"] == b["step"] == 3
    _same_run(four, one)


def test_a_degree_the_processes_cannot_take_is_a_clear_error(data, tmp_path):
    from engine.config import config_from_preset
    from engine.workers.trainer import train

    config = config_from_preset("tiny-wan", data_dir=str(data), output_dir=str(tmp_path / "run"), max_steps=1,
                                context_parallel=2)
    with pytest.raises(ValueError, match="context_parallel"):
        train(config)  # one process cannot be split two ways
    assert "context_parallel" in json.loads((tmp_path / "run" / "status.json").read_text())["error"]
