"""bench/kernel_profile.py and `bench/e2e.py --profile` on the CPU: the grouping of real kernel names, a real
profile of a real call, and the per-pattern profiles the sample and train cases add to their JSON."""

import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
kernel_profile = pytest.importorskip("kernel_profile")


def _e2e():
    spec = importlib.util.spec_from_file_location("bench_e2e_profile", BENCH / "e2e.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, expected", [
    ("_fwd_kernel", "radial attention"),  # engine/attention/triton_radial.py's kernels, as the profiler names them
    ("_bwd_dkdv_ws_kernel", "radial attention"),
    ("_bwd_preprocess", "radial attention"),
    ("triton_poi_fused__scaled_dot_product_attention_add_0", "compiled (Inductor)"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x128x128_4x1x1_kernel0_0",
     "dense attention"),
    ("void flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4> >", "dense attention"),
    ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT", "matmul"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
    ("aten::addmm", "matmul"),
    ("void cudnn::ops::nchwToNhwcKernel<__nv_bfloat16>", "convolution"),  # the patch embedding's Conv3d
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "convolution"),
    ("aten::conv3d", "convolution"),
    ("Memcpy DtoH (Device -> Pinned)", "copies"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16> >",
     kernel_profile.OTHER),
])
def test_kernel_names_group_by_what_they_compute(name, expected):
    assert kernel_profile.category(name) == expected


def test_a_real_profile_counts_each_operator_once():
    a, b = torch.randn(256, 256), torch.randn(256, 256)

    def call():
        for _ in range(3):
            torch.nn.functional.gelu(a @ b)

    p = kernel_profile.profile_call(call, cuda=False)
    matmul = p["categories"]["matmul"]
    assert matmul["s"] > 0 and sum(c["share"] for c in p["categories"].values()) == pytest.approx(1.0)
    assert p["kernel_s"] == pytest.approx(sum(c["s"] for c in p["categories"].values()))
    mm = next(k for k in p["top"] if k["name"] == "aten::mm")
    assert mm["calls"] == 3 and mm["category"] == "matmul"
    # the wall time holds every operator's self time; the host list names the same operators
    assert p["wall_s"] >= p["kernel_s"] > 0
    host_mm = next(k for k in p["host_top"] if k["name"] == "aten::mm")
    assert host_mm["calls"] == 3 and host_mm["s"] == pytest.approx(mm["s"])
    assert [k["s"] for k in p["top"]] == sorted((k["s"] for k in p["top"]), reverse=True)
    lines = kernel_profile.share_table([("matmuls", p), ("broken", {"error": "RuntimeError: no CUPTI"})])
    assert lines[0].startswith("| call | wall s | kernel s | radial attention |") and len(lines) == 4
    assert lines[3] == "| broken | profiler failed: RuntimeError: no CUPTI |"


def test_e2e_profile_adds_one_profile_per_pattern_and_leaves_the_rows_alone(tmp_path):
    e2e = _e2e()
    for case in ("sample", "train"):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            e2e.main([case, "--preset", "tiny-wan", "--device", "cpu", "--warmup", "none", "--frames", "5,9",
                      "--steps", "2", "--train_base_frames", "5", "--profile", "--out", str(tmp_path),
                      "--work_dir", str(tmp_path / "work")])
        data = json.loads((tmp_path / f"e2e_{case}.json").read_text())
        assert len(data["rows"]) == 4 and all("kernels" not in r for r in data["rows"])
        assert sorted(data["profiles"]) == ["dense", "radial"]
        for pattern, p in data["profiles"].items():
            assert p["kernel_s"] > 0 and p["categories"]["matmul"]["s"] > 0, (case, pattern, p)
        text = printed.getvalue()
        assert f"### {case}: kernel time by category" in text
        assert text.count("\n| dense | ") == 1 and text.count("\n| radial | ") == 1


def test_e2e_tta_profile_adds_each_patterns_adaptation_and_leaves_the_rows_alone(tmp_path, monkeypatch):
    """The first profile (dense) fails in the profiler: it records the fault, and the radial row and profile after
    it still run in full."""
    e2e = _e2e()
    real, calls = kernel_profile.profile_call, []

    def first_fails(fn, cuda, top=12):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("no CUPTI")
        return real(fn, cuda, top)

    monkeypatch.setattr(kernel_profile, "profile_call", first_fails)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        e2e.main(["tta", "--preset", "tiny-wan", "--device", "cpu", "--warmup", "none", "--tta_steps", "2",
                  "--sample_steps", "2", "--profile", "--out", str(tmp_path), "--work_dir", str(tmp_path / "work")])
    data = json.loads((tmp_path / "e2e_tta.json").read_text())
    assert [r["pattern"] for r in data["rows"]] == ["dense", "radial"] and all("clip_s" in r for r in data["rows"])
    assert data["rows"][1]["radial_calls"] > 0
    assert data["profiles"]["dense adaptation"] == {"error": "RuntimeError: no CUPTI"}
    radial = data["profiles"]["radial adaptation"]
    assert radial["kernel_s"] > 0 and radial["categories"]["matmul"]["s"] > 0, radial
    text = printed.getvalue()
    assert "### tta: kernel time by category" in text and text.count("\n| radial adaptation | ") == 1
    assert "| dense adaptation | profiler failed: RuntimeError: no CUPTI |" in text
