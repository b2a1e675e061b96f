"""bench/radial_host_overhead.py on the CPU: the operators' Python work with the launches stubbed, then restored."""

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import radial_host_overhead  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU mode stubs the launches; on CUDA it runs real kernels")
def test_host_time_is_measured_and_the_kernels_and_environment_are_restored():
    from engine.attention import triton_radial

    before = {name: getattr(triton_radial, name) for name in radial_host_overhead.KERNELS}
    env = os.environ.get("TRITON_INTERPRET")
    result = radial_host_overhead.measure(calls=3)
    assert result["calls"] == 3 and "stubbed" in result["device"]
    assert result["fwd_host_us"] > 0 and result["bwd_host_us"] > 0 and "sdpa_fwd_host_us" not in result
    assert {name: getattr(triton_radial, name) for name in radial_host_overhead.KERNELS} == before
    assert os.environ.get("TRITON_INTERPRET") == env
