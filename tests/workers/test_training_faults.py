"""Training faults (reliability and security, items 9 and 10): divergence keeps only healthy checkpoints and
resumes with a changed learning rate; a damaged checkpoint is named and the newest intact one is used."""

import json

import pytest
import torch
from safetensors.torch import load_file

from engine.checkpoint import checkpoint_dirs
from engine.config import config_from_preset
from engine.data.dataset import create_synthetic_dataset
from engine.jobs import RunDir
from engine.lora import DIFFUSERS_WEIGHT_NAME
from engine.workers.trainer import MAX_LORA_WEIGHT, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return create_synthetic_dataset(tmp_path_factory.mktemp("faults") / "data", 3, seed=3)


def _config(data, out, **kw):
    values = dict(data_dir=str(data), output_dir=str(out), max_steps=4, validation_steps=100, checkpointing_steps=2,
                  sample_steps=0)
    return config_from_preset("tiny-wan", **{**values, **kw})


@pytest.mark.slow
def test_divergence_keeps_only_healthy_checkpoints_and_resumes_with_a_lower_learning_rate(data, tmp_path):
    out = tmp_path / "run"
    # lr 1e9 with a long warm-up: the step size grows by ~100 a step, so the weights blow up after a few steps
    status = train(_config(data, out, learning_rate=1e9, lr_warmup_steps=10_000_000, max_steps=12,
                           checkpointing_steps=1, checkpoints_total_limit=20))
    assert status["state"] == "diverged"
    assert "exploded" in status["error"] or "non-finite" in status["error"]
    kept = checkpoint_dirs(out / "checkpoints")
    assert kept, "the healthy steps before the blow-up were checkpointed"
    for ckpt in kept:
        for name, w in load_file(str(ckpt / "lora" / DIFFUSERS_WEIGHT_NAME)).items():
            assert torch.isfinite(w).all() and w.abs().max() <= MAX_LORA_WEIGHT, (ckpt.name, name)
    assert f"the last good checkpoint is {kept[-1].name}" in status["error"]
    # the message says to resume with a lower learning rate: that is allowed now
    resumed = train(_config(data, out, learning_rate=1e-3, lr_warmup_steps=10_000_000, max_steps=12,
                            checkpointing_steps=1, checkpoints_total_limit=20), resume=True)
    assert resumed["state"] == "finished" and resumed["step"] == 12
    resume = [e for e in RunDir(out).read_events() if e["type"] == "resume"]
    assert resume and resume[-1]["checkpoint"] == kept[-1].name
    with pytest.raises(Exception, match="lora_rank"):  # other settings still may not change
        train(_config(data, out, lora_rank=4, learning_rate=1e-3, lr_warmup_steps=10_000_000, max_steps=14,
                      checkpointing_steps=1, checkpoints_total_limit=20), resume=True)


def _half_safetensors(ckpt):
    path = ckpt / "lora" / DIFFUSERS_WEIGHT_NAME
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return f"{ckpt.name}/lora/{DIFFUSERS_WEIGHT_NAME} is damaged"


def _zeroed_optimizer(ckpt):
    path = ckpt / "optimizer.pt"
    path.write_bytes(b"\x00" * path.stat().st_size)
    return f"{ckpt.name}/optimizer.pt is damaged"


def _missing_rng(ckpt):
    (ckpt / "rng.pt").unlink()
    return f"{ckpt.name}/rng.pt is missing"


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_half_safetensors, _zeroed_optimizer, _missing_rng])
def test_a_damaged_latest_checkpoint_is_named_and_the_newest_intact_one_is_used(data, tmp_path, damage):
    out = tmp_path / "run"
    assert train(_config(data, out, max_steps=4))["state"] == "finished"
    older, latest = checkpoint_dirs(out / "checkpoints")[-2:]
    expected = damage(latest)
    status = train(_config(data, out, max_steps=6), resume=True)
    assert status["state"] == "finished" and status["step"] == 6
    events = RunDir(out).read_events()
    skipped = [e["error"] for e in events if e["type"] == "checkpoint_skipped"]
    assert any(expected in s for s in skipped), skipped
    assert [e for e in events if e["type"] == "resume"][-1]["checkpoint"] == older.name
    assert json.loads((out / "status.json").read_text())["state"] == "finished"


def test_no_intact_checkpoint_is_a_clear_refusal(data, tmp_path):
    from engine.checkpoint import CheckpointError, read_checkpoint

    ckpt = tmp_path / "checkpoints" / "step-000002"
    (ckpt / "lora").mkdir(parents=True)
    (ckpt / "state.json").write_text("{}")
    with pytest.raises(CheckpointError, match=rf"step-000002/lora/{DIFFUSERS_WEIGHT_NAME} is missing"):
        read_checkpoint(ckpt)


def test_a_full_disk_says_disk_full_and_the_next_start_cleans_up(data, tmp_path, monkeypatch):
    import errno
    import os
    import time

    from engine import jobs
    from engine.workers import trainer

    out = tmp_path / "run"
    real_save = trainer.save_checkpoint

    def full(root, step, **kw):
        (root / f".tmp-step-{step:06d}").mkdir(parents=True, exist_ok=True)  # what a save cut short leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer, "save_checkpoint", full)
    monkeypatch.setattr(jobs, "DISK_FULL_BYTES", 2**62)  # this disk "is full" for the readers
    with pytest.raises(OSError):
        train(_config(data, out))
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and status["error"].startswith("disk full")
    # A worker that could not even write its status: the reader says disk full (and reading writes nothing).
    RunDir(out).update_status(state="running", pid=999_999_999, pid_started=1.0)
    before = (out / "status.json").read_bytes()
    shown = jobs.job_status(out)
    assert shown["state"] == "failed" and shown["error"].startswith("disk full")
    assert (out / "status.json").read_bytes() == before
    stale = out / ".status.json.abc123"
    stale.write_text("{")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    monkeypatch.setattr(jobs, "DISK_FULL_BYTES", 64 * 2**20)
    assert train(_config(data, out), resume=True)["state"] == "finished"
    assert not list((out / "checkpoints").glob(".tmp-*")) and not stale.exists()
