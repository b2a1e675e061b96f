"""FSDP2 training over several processes (torchrun, gloo, CPU) equals one process, and its checkpoints move."""

import json

import pytest
import torch

from tests.workers.test_context_parallel_training import _same_run, _steps, _train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from engine.data.dataset import create_synthetic_dataset

    return create_synthetic_dataset(tmp_path_factory.mktemp("fsdp") / "data", 3, preset="tiny-wan", seed=0)


def test_two_sharded_processes_with_the_memory_options_train_as_one(data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "fsdp2"
    _train(data, one, 1, "--max_steps", "2", "--gradient_accumulation_steps", "2")
    _train(data, two, 2, "--max_steps", "2", "--gradient_accumulation_steps", "1", "--fsdp", "true",
           "--use_gradient_checkpointing", "true", "--offload_activations", "true", "--ffn_chunks", "2")
    _same_run(one, two)
    # The checkpoint is in the unsharded format: whole tensors, the same AdamW moments as one process's.
    a = torch.load(one / "checkpoints" / "step-000002" / "optimizer.pt", weights_only=False)
    b = torch.load(two / "checkpoints" / "step-000002" / "optimizer.pt", weights_only=False)
    assert a["param_groups"][0]["params"] == b["param_groups"][0]["params"] and a["state"]
    for i, moments in a["state"].items():
        assert type(b["state"][i]["exp_avg"]) is torch.Tensor  # not a shard
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(moments[k], b["state"][i][k], rtol=1e-4, atol=1e-9), (i, k)


def test_four_processes_fsdp_with_context_parallelism_train_as_one_and_checkpoints_move(data, tmp_path):
    one, four = tmp_path / "one", tmp_path / "four"
    _train(data, one, 1, "--max_steps", "2", "--gradient_accumulation_steps", "4")
    _train(data, four, 4, "--max_steps", "2", "--gradient_accumulation_steps", "2", "--context_parallel", "2",
           "--fsdp", "true")
    _same_run(one, four)
    # A sharded 4-process checkpoint resumes in one plain process, and a 1-process one sharded over 4.
    a = _train(data, four, 1, "--max_steps", "3", "--gradient_accumulation_steps", "4", "--context_parallel", "1",
               "--fsdp", "false", "--resume")
    b = _train(data, one, 4, "--max_steps", "3", "--gradient_accumulation_steps", "2", "--context_parallel", "2",
               "--fsdp", "true", "--resume")
    assert a["state"] == b["state"] == "finished" and a["step"] == b["step"] == 3
    _same_run(four, one)
    assert [e["step"] for e in _steps(one)] == [1, 2, 3]


def test_fsdp_with_fp8_base_is_refused_naming_both_fields(data, tmp_path):
    from engine.config import config_from_preset
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="'fsdp' and 'fp8_base'"):
        config_from_preset("tiny-wan", data_dir=str(data), output_dir=str(tmp_path / "run"), fsdp=True, fp8_base=True)
    assert not (tmp_path / "run").exists()


def test_fsdp_in_one_plain_process_says_it_needs_a_launcher_and_the_run_says_why(data, tmp_path):
    from engine.config import config_from_preset
    from engine.errors import InputError
    from engine.workers.trainer import train

    config = config_from_preset("tiny-wan", data_dir=str(data), output_dir=str(tmp_path / "run"), max_steps=1,
                                fsdp=True)
    with pytest.raises(InputError, match="accelerate launch or torchrun"):
        train(config)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and "fsdp" in status["error"]
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing half-made


def test_an_accelerate_fsdp_config_is_served_by_the_same_sharding_and_version_1_is_refused(tmp_path):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from engine.config import config_from_preset
    from engine.errors import InputError
    from engine.workers.trainer import _fsdp, _fsdp_from_launcher

    def accelerator(version, reshard=False):
        plugin = SimpleNamespace(fsdp_version=version, reshard_after_forward=reshard)
        return SimpleNamespace(distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=plugin))

    config = config_from_preset("tiny-wan", data_dir="-", output_dir="-")
    with pytest.raises(InputError, match="FSDP version 1.*fsdp_version: 2"):
        _fsdp_from_launcher(config, accelerator(1))
    assert config.fsdp is False
    assert _fsdp_from_launcher(config, accelerator(2)) is False  # the config's reshard_after_forward
    assert config.fsdp is True  # recorded in the run's config.json, which is written after this
    with pytest.raises(InputError, match="accelerate launch or torchrun"):  # one plain process: nothing to shard over
        _fsdp(torch.nn.Linear(2, 2), config, True)
    fp8 = config_from_preset("tiny-wan", data_dir="-", output_dir="-", fp8_base=True)
    with pytest.raises(InputError, match="fp8_base"):
        _fsdp_from_launcher(fp8, accelerator(2))
    plain = config_from_preset("tiny-wan", data_dir="-", output_dir="-")
    assert _fsdp_from_launcher(plain, SimpleNamespace(distributed_type=DistributedType.MULTI_GPU)) is True
    assert plain.fsdp is False and _fsdp(torch.nn.Linear(2, 2), plain, True) is False


def test_the_memory_plan_under_an_accelerate_fsdp_launch_never_picks_fp8(data, tmp_path, monkeypatch):
    from engine.config import config_from_preset
    from engine.errors import InputError
    from engine.workers.trainer import train

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    config = config_from_preset("tiny-wan", data_dir=str(data), output_dir=str(tmp_path / "run"), max_steps=1,
                                use_gradient_checkpointing=True, gpu_memory_gb=0.00195)  # the plan would take fp8
    with pytest.raises(InputError):  # one plain process: sharding then says it needs a launcher
        train(config)
    assert config.fsdp is True and config.fp8_base is False
