"""The launch examples (accelerate configs, SLURM scripts) load and name only flags the CLI has."""

import re
import shlex
import subprocess
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name, machines", [("one_node_8gpu.yaml", 1), ("two_nodes_16gpu.yaml", 2)])
def test_accelerate_configs_load_in_accelerate(name, machines):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(EXAMPLES / "accelerate" / name))
    assert config.num_machines == machines and config.num_processes == 8 * machines
    assert str(config.distributed_type).endswith("MULTI_GPU") and str(config.mixed_precision).endswith("bf16")


def test_the_fsdp2_accelerate_config_asks_for_version_2_which_the_trainer_serves():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(EXAMPLES / "accelerate" / "one_node_8gpu_fsdp2.yaml"))
    assert str(config.distributed_type).endswith("FSDP") and config.num_processes == 8
    assert config.fsdp_config["fsdp_version"] == 2


def _engine_command(script: Path) -> list[str]:
    text = script.read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if " -m engine " in line or line.startswith("python -m engine"))
    words = shlex.split(line)
    args = words[words.index("engine") + 1:]
    return [re.sub(r"\$\{?\w+\}?", "x", a) for a in args]  # shell variables stand for paths / names


@pytest.mark.parametrize("name", ["train.sbatch", "tta_sweep_array.sbatch"])
def test_slurm_scripts_are_valid_bash_and_call_the_cli_with_its_own_flags(name):
    from engine.cli import build_parser

    script = EXAMPLES / "slurm" / name
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    args = build_parser().parse_args(_engine_command(script))  # an unknown flag exits here
    if args.command == "train":
        gpus = int(re.search(r"--gpus-per-node=(\d+)", script.read_text()).group(1))
        assert gpus % args.context_parallel == 0 and 40 % args.context_parallel == 0  # Wan 14B: 40 heads
    else:
        assert args.shard == "auto"
