"""Ulysses context parallelism on the CPU: 2 and 4 gloo ranks against a single-process run (tiny Wan, fp32).

The ranks are forked from a forkserver that has imported torch, diffusers and the engine once, so a
run costs seconds instead of one import per rank. Each rank saves its outputs, LoRA gradients and
refusal messages; the comparisons are made here.
"""

import multiprocessing
import socket
import time

import pytest
import torch

from engine.attention.context_parallel import ContextParallel, check_degree, context_parallel_of, reduce_gradients
from engine.attention.context_parallel import disable_context_parallel, enable_context_parallel
from tests.attention import cp_workers

_TIMEOUT_S = 240
# Imported once by the forkserver before it forks the ranks (ignored when a forkserver already runs).
_PRELOAD = ["tests.attention.cp_workers", "diffusers", "peft", "engine.lora", "engine.models",
            "engine.attention.context_parallel"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(world: int, runs: list[tuple], tmp_path) -> list[dict]:
    multiprocessing.set_forkserver_preload(_PRELOAD)
    context = torch.multiprocessing.start_processes(
        cp_workers.worker, args=(world, _free_port(), str(tmp_path), runs), nprocs=world, join=False,
        start_method="forkserver")
    deadline = time.monotonic() + _TIMEOUT_S
    try:
        while not context.join(timeout=2):
            if time.monotonic() > deadline:
                pytest.fail(f"the {world} ranks did not finish in {_TIMEOUT_S} s")
    except torch.multiprocessing.ProcessRaisedException:
        tracebacks = "\n".join(f"rank {p.stem[4:]}:\n{p.read_text()}" for p in sorted(tmp_path.glob("rank*.error")))
        pytest.fail(f"a rank failed:\n{tracebacks}")
    finally:
        for process in context.processes:  # the ones still running after a failure or the timeout
            if process.is_alive():
                process.kill()
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]


def _close(actual, expected, what):
    # fp32 tolerance relative to the tensor's scale
    scale = float(expected.abs().max()) or 1.0
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale, msg=lambda m: f"{what}: {m}")


def _check_against_reference(results, runs) -> dict:
    """Every rank's output and LoRA gradients against the single-process run; returns those runs."""
    refs = {}
    for run in runs:
        degree, heads, pattern, per_frame, _ = run
        ref = refs[run] = cp_workers.reference(heads, pattern, per_frame)  # without gradient checkpointing
        for rank, result in enumerate(results):
            got = result[run]
            where = f"{pattern}, context_parallel={degree}, rank {rank}"
            assert (got["cp_rank"], got["data_rank"]) == (rank % degree, rank // degree)
            assert got["data_size"] == len(results) // degree
            _close(got["out"], ref["out"], f"output ({where})")
            assert got["grads"].keys() == ref["grads"].keys()
            for name, grad in ref["grads"].items():
                assert grad.abs().max() > 0, name  # every LoRA weight is exercised
                _close(got["grads"][name], grad, f"gradient of {name} ({where})")
            assert got["restored"], where
            _close(got["after_disable"], ref["out"], f"output after disable ({where})")
    return refs


def _check_refusals(errors, world):
    valid = "1, 2, 4." if world == 4 else "1, 2."
    assert f"context_parallel=3 does not divide the {world} ranks" in errors["degree_not_dividing_world"]
    assert f"Valid context_parallel values here: {valid}" in errors["degree_not_dividing_world"]
    if world == 4:
        assert "context_parallel=4 does not divide the 2 attention heads" in errors["degree_not_dividing_heads"]
        assert "1, 2." in errors["degree_not_dividing_heads"]
    assert "context_parallel=2 does not divide the 27 video tokens" in errors["tokens_not_divisible"]
    assert "Valid context_parallel values here: 1." in errors["tokens_not_divisible"]
    assert "disable_context_parallel" in errors["install_after_enable"]
    assert "already on" in errors["enable_twice"]
    assert errors["install_after_disable"] == "no error"
    assert "no diffusers context-parallel plan" in errors["no_cp_plan"]
    assert "set context_parallel to 1" in errors["no_cp_plan"]


def test_two_ranks_match_one_process_radial_and_dense(tmp_path):
    # radial with per-token timesteps (they are split too); dense through diffusers' stock processors, with
    # gradient checkpointing
    runs = [(2, 2, "radial", True, False), (2, 2, "dense", False, True)]
    results = _spawn(2, runs, tmp_path)
    refs = _check_against_reference(results, runs)
    radial = cp_workers.train_step(*cp_workers.build(2, "radial"), cp_workers.inputs(False))["out"]
    assert (radial - refs[runs[1]]["out"]).abs().max() > 1e-2  # the radial mask matters at this size
    for result in results:
        _check_refusals(result["errors"], 2)


def test_four_ranks_match_one_process_and_two_groups_of_two(tmp_path):
    # 4 heads of 16 channels (the preset's width): one group of 4, then two CP groups of 2 (data x context),
    # that one with gradient checkpointing
    runs = [(4, 4, "radial", False, False), (4, 4, "dense", False, False), (2, 4, "radial", False, True)]
    results = _spawn(4, runs, tmp_path)
    _check_against_reference(results, runs)
    for result in results:
        _check_refusals(result["errors"], 4)


def test_degree_one_installs_nothing():
    transformer, family, params = cp_workers.build(2, "radial")
    batch = cp_workers.inputs(False)
    before = (dict(transformer.attn_processors), dict(transformer._forward_pre_hooks),
              dict(transformer._forward_hooks), dict(vars(transformer)))
    expected = cp_workers.train_step(transformer, family, params, batch)
    cp = ContextParallel.from_env(1)  # no torch.distributed needed
    enable_context_parallel(transformer, cp, family)
    assert context_parallel_of(transformer) is None
    processors, pre_hooks, hooks, attrs = before
    assert all(transformer.attn_processors[k] is v for k, v in processors.items())
    assert dict(transformer._forward_pre_hooks) == pre_hooks and dict(transformer._forward_hooks) == hooks
    assert dict(vars(transformer)) == attrs  # no diffusers hook registry, no forward wrapper
    assert all(not hasattr(m, "_diffusers_hook") for m in transformer.modules())
    got = cp_workers.train_step(transformer, family, params, batch, cp)  # reduce_gradients: a no-op
    torch.testing.assert_close(got["out"], expected["out"], rtol=0, atol=0)
    for name, grad in expected["grads"].items():
        torch.testing.assert_close(got["grads"][name], grad, rtol=0, atol=0)
    reduce_gradients(params, cp)
    disable_context_parallel(transformer)  # nothing to undo


def _refusal(call) -> str:
    with pytest.raises(ValueError) as err:
        call()
    return str(err.value)


def test_check_degree_names_the_setting_and_the_valid_degrees():
    assert check_degree(4, 12, 32760, 8) == 4  # Wan 1.3B, 81 frames at 480x832, 8 ranks
    message = _refusal(lambda: check_degree(5, 12))
    assert "context_parallel=5 does not divide the 12 attention heads" in message
    assert message.endswith("Valid context_parallel values here: 1, 2, 3, 4, 6, 12.")
    assert _refusal(lambda: check_degree(16, 40, 32760, 16)).endswith("here: 1, 2, 4, 8.")  # 14B: heads first
    message = _refusal(lambda: check_degree(2, 12, 63))
    assert "context_parallel=2 does not divide the 63 video tokens" in message and "frame count" in message
    assert message.endswith("here: 1, 3.")
    assert "does not divide the 4 ranks" in _refusal(lambda: check_degree(3, 12, 48, 4))
    for bad in (0, -2, 1.5, True, "2"):
        assert "context_parallel must be a positive integer" in _refusal(lambda: check_degree(bad, 12))
    assert "from_env" in _refusal(lambda: ContextParallel(degree=2))
