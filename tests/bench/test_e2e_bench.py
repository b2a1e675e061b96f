"""bench/e2e.py on the tiny preset (CPU): every case's JSON, the projection arithmetic, the random-weight model
folder loaded through a preset, and bench/e2e_chart.py's PNG. The GPU numbers come from the same code."""

import contextlib
import importlib.util
import io
import json
import math
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


e2e = _load("e2e")
TINY = ["--preset", "tiny-wan", "--device", "cpu"]


@pytest.fixture(scope="module")
def all_run(tmp_path_factory):
    """`all` once at tiny sizes: 5 and 9 frames, 2 sampling steps projected to 4, TTA 2 + 2 steps."""
    out = tmp_path_factory.mktemp("e2e")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        e2e.main(["all", *TINY, "--warmup", "none", "--frames", "5,9", "--steps", "2", "--project_steps", "4",
                  "--train_base_frames", "5", "--tta_steps", "2", "--sample_steps", "2", "--out", str(out),
                  "--work_dir", str(out / "work")])
    return out, printed.getvalue()


def _json(out, case):
    return json.loads((out / f"e2e_{case}.json").read_text())


def _by(rows):
    return {(r["frames"], r["pattern"]): r for r in rows}


def test_projection_counts_dense_timestep_and_radial_steps_apart():
    # radial run: 2 dense-timestep steps (2.0, 2.2 s -> median 2.1) and one radial step (1.0 s), 10 s fixed
    p = e2e.project_steps([2.0, 2.2, 1.0], ["dense_timestep", "dense_timestep", "radial"], 10.0, 50, 2)
    assert p["label"] == "projection" and p["counts"] == {"dense_timestep": 2, "radial": 48}
    assert p["denoise_s"] == pytest.approx(2 * 2.1 + 48 * 1.0)
    assert p["total_s"] == pytest.approx(10.0 + 52.2)
    dense = e2e.project_steps([3.0, 3.2, 2.9], ["dense"] * 3, 5.0, 50, 2)
    assert dense["counts"] == {"dense": 50} and dense["total_s"] == pytest.approx(5.0 + 50 * 3.0)
    with pytest.raises(ValueError, match="dense_timesteps"):  # no radial step measured: nothing to project from
        e2e.project_steps([2.0, 2.0], ["dense_timestep"] * 2, 1.0, 50, 2)


def test_projection_borrows_only_the_kinds_it_did_not_measure():
    # --radial_steps_only: one radial step measured (1.0 s); the 2 dense timesteps at the dense row's 3.0 s
    p = e2e.project_steps([1.0], ["radial"], 4.0, 50, 2, borrowed={"dense_timestep": 3.0})
    assert p["counts"] == {"dense_timestep": 2, "radial": 48} and p["borrowed"] == ["dense_timestep"]
    assert p["total_s"] == pytest.approx(4.0 + 2 * 3.0 + 48 * 1.0)
    measured = e2e.project_steps([2.0, 2.2, 1.0], ["dense_timestep", "dense_timestep", "radial"], 10.0, 50, 2,
                                 borrowed={"dense_timestep": 99.0})
    assert "borrowed" not in measured and measured["per_step_s"]["dense_timestep"] == pytest.approx(2.1)
    with pytest.raises(ValueError, match="dense_timestep"):  # no dense row to borrow from (it ran out of memory)
        e2e.project_steps([1.0], ["radial"], 4.0, 50, 2)


def test_radial_steps_only_measures_radial_steps_and_projects_the_dense_timesteps_from_the_dense_row(
        tmp_path, monkeypatch):
    full_shape_warmups = []
    monkeypatch.setattr(e2e, "warm_transformer", lambda *a, **kw: full_shape_warmups.append(a))
    out = tmp_path / "out"
    e2e.main(["sample", *TINY, "--frames", "9", "--steps", "1", "--project_steps", "4", "--warmup", "small",
              "--radial_steps_only", "--no_mp4", "--out", str(out), "--work_dir", str(tmp_path / "work")])
    data = _json(out, "sample")
    rows = _by(data["rows"])
    dense, radial = rows[(9, "dense")], rows[(9, "radial")]
    assert radial["step_kinds"] == ["radial"] and radial["radial_calls"] == radial["expected_radial_calls"] == 1 * 3 * 2
    proj = radial["projection"]
    first = data["settings"]["radial"]["dense_timesteps"]  # the preset's, though the measured call ran none
    assert first >= 1 and proj["borrowed"] == ["dense_timestep"]
    assert proj["counts"] == {"dense_timestep": first, "radial": 4 - first}
    assert proj["per_step_s"]["dense_timestep"] == pytest.approx(dense["step_s"][0])
    assert proj["per_step_s"]["radial"] == pytest.approx(radial["step_s"][0])
    assert "borrowed" not in dense["projection"]
    assert full_shape_warmups == []  # --warmup small: only the small pipeline calls warmed up


def test_sample_rows_time_the_generate_call_and_radial_really_ran(all_run):
    out, _ = all_run
    data = _json(out, "sample")
    rows = _by(data["rows"])
    assert set(rows) == {(f, p) for f in (5, 9) for p in ("dense", "radial")}
    for (frames, pattern), row in rows.items():
        assert row["total_s"] > 0 and row["denoise_s"] > 0 and row["text_encode_s"] > 0 and row["vae_decode_s"] > 0
        assert len(row["step_s"]) == 2 and all(t > 0 for t in row["step_s"])
        assert row["attention"]["pattern"] == pattern
        assert sum(row["shares"].values()) == pytest.approx(1.0)
        # the radial layers ran in exactly the steps and layers the schedule says (CFG: 2 calls per step)
        assert row["radial_calls"] == row["expected_radial_calls"]
        proj = row["projection"]
        assert proj["label"] == "projection" and proj["steps"] == 4
        fixed = row["total_s"] - sum(row["step_s"])
        assert proj["total_s"] == pytest.approx(fixed + sum(proj["per_step_s"][k] * n for k, n in proj["counts"].items()))
    assert rows[(9, "dense")]["radial_calls"] == 0
    assert rows[(9, "radial")]["radial_calls"] == 1 * 3 * 2  # 1 step past dense_timesteps x 3 radial layers x CFG
    assert rows[(9, "radial")]["step_kinds"] == ["dense_timestep", "radial"]
    cmp = {c["frames"]: c for c in data["comparisons"]}
    assert set(cmp) == {5, 9}
    assert cmp[9]["speedup"] == pytest.approx(rows[(9, "dense")]["total_s"] / rows[(9, "radial")]["total_s"])
    assert cmp[9]["projection"]["label"] == "projection"


def test_train_rows_time_both_passes_of_the_step(all_run):
    out, _ = all_run
    data = _json(out, "train")
    rows = _by(data["rows"])
    assert set(rows) == {(f, p) for f in (5, 9) for p in ("dense", "radial")}
    for (frames, pattern), row in rows.items():
        assert row["step_s"] > 0 and row["base_pass_s"] > 0 and row["extended_pass_s"] > 0
        assert math.isfinite(row["loss"]) and row["base_frames"] < frames
        assert (row["radial_calls"] > 0) == (pattern == "radial")
    assert rows[(9, "dense")]["base_frames"] == 5
    assert data["settings"]["gradient_checkpointing"] is True
    assert {c["frames"] for c in data["comparisons"]} == {5, 9}


def test_tta_rows_run_the_engine_tta_call(all_run):
    out, _ = all_run
    data = _json(out, "tta")
    rows = {r["pattern"]: r for r in data["rows"]}
    assert set(rows) == {"dense", "radial"}
    for pattern, row in rows.items():
        for key in ("clip_s", "baseline_s", "adapt_s", "continuation_s", "write_s"):
            assert row[key] > 0, key
        assert row["tta_steps"] == 2 and row["sample_steps"] == 2 and row["cond_frames"] == 33
        assert row["metrics"]["tta"]["num_frames"] == 32
        assert (row["radial_calls"] > 0) == (pattern == "radial")
    assert data["comparisons"] and data["comparisons"][0]["speedup"] > 0


def test_all_prints_one_summary_table_last(all_run):
    out, printed = all_run
    tail = printed.strip().splitlines()
    summary = tail[tail.index("### summary") + 2:]
    assert summary[0].startswith("| case |") and summary[1].startswith("|---")
    cases = [line.split("|")[1].strip() for line in summary[2:]]
    assert cases.count("sample") == 4 and cases.count("train") == 2 and cases.count("tta") == 1
    assert any("projection to 4 steps" in line for line in summary)
    assert json.loads((out / "e2e_all.json").read_text())["summary"] == summary


def test_random_model_folder_loads_through_the_preset(tmp_path):
    from engine.presets import load_preset

    official = e2e.random_model_configs("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    assert official["transformer"]["num_layers"] == 30 and official["text_encoder"]["d_model"] == 4096
    assert official["embedding_vocab"] == 256384
    configs = {**load_preset("tiny-wan")["tiny"], "embedding_vocab": 4096}  # tiny sizes, the real-vocab resize path
    model = tmp_path / "model"
    info = e2e.build_random_model(configs, model, "cpu", torch.float32)
    assert info["built"] and info["embedding_vocab"] == 4096 and info["tokenizer_vocab"] < 4096
    assert json.loads((model / "text_encoder" / "config.json").read_text())["vocab_size"] == 4096
    assert not e2e.build_random_model(configs, model, "cpu", torch.float32)["built"]  # reused
    out = tmp_path / "out"
    e2e.main(["sample", *TINY, "--model_dir", str(model), "--frames", "5", "--steps", "2", "--warmup", "first",
              "--no_mp4", "--out", str(out), "--work_dir", str(tmp_path / "work")])
    data = _json(out, "sample")
    assert data["model"]["source"] == str(model.resolve())
    assert {r["pattern"] for r in data["rows"]} == {"dense", "radial"}
    assert all(r["mp4_s"] < r["total_s"] for r in data["rows"])


def test_a_bf16_random_model_is_initialised_in_bf16_and_keeps_a_float32_vae(tmp_path, monkeypatch):
    """Built at the saved dtype (a 14B float32 init beside its bf16 copy would not fit one GPU); the default
    dtype is the caller's again after, also when the build fails."""
    from diffusers import WanTransformer3DModel
    from safetensors import safe_open

    from engine.presets import load_preset

    configs = load_preset("tiny-wan")["tiny"]
    seen = []
    real_init = WanTransformer3DModel.__init__

    def spy(self, *args, **kwargs):
        seen.append(torch.get_default_dtype())
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(WanTransformer3DModel, "__init__", spy)
    e2e.build_random_model(configs, tmp_path / "bf16", "cpu", torch.bfloat16)
    assert seen == [torch.bfloat16] and torch.get_default_dtype() == torch.float32
    for part, dtype in (("vae", torch.float32), ("transformer", torch.bfloat16), ("text_encoder", torch.bfloat16)):
        with safe_open(str(next((tmp_path / "bf16" / part).glob("*.safetensors"))), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {dtype}, part

    def broken(self, *args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(WanTransformer3DModel, "__init__", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        e2e.build_random_model(configs, tmp_path / "failed", "cpu", torch.bfloat16)
    assert torch.get_default_dtype() == torch.float32 and not (tmp_path / "failed").exists()


def test_chart_draws_a_png_from_the_json(all_run, tmp_path):
    out, _ = all_run
    chart = _load("e2e_chart")
    path = chart.main([str(out), "--out", str(tmp_path / "chart.png")])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width = matplotlib.image.imread(path).shape[:2]
    assert width > 2 * height > 400  # two panels side by side


def test_compiled_rows_compile_in_the_warm_ups_only(tmp_path, monkeypatch):
    """--compile_blocks: the warm-ups compile every graph a row needs, so no row times a compilation (aot_eager
    on the CPU; Inductor on the GPU), and the blocks are eager again afterwards."""
    import torch._dynamo

    from engine.models import get_pipeline, regional_compile
    from engine.presets import load_preset

    monkeypatch.setattr(regional_compile, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    for case in ("sample", "train", "tta"):
        with contextlib.redirect_stdout(io.StringIO()):
            e2e.main([case, *TINY, "--compile_blocks", "--frames", "5,9", "--steps", "2", "--train_base_frames", "5",
                      "--tta_steps", "2", "--sample_steps", "2", "--out", str(tmp_path),
                      "--work_dir", str(tmp_path / "work")])
        rows = _json(tmp_path, case)["rows"]
        assert len(rows) == (2 if case == "tta" else 4), rows
        assert all(r["graphs_compiled_in_row"] == 0 for r in rows), rows
        assert any(r["radial_calls"] > 0 for r in rows)
    assert not regional_compile.is_compiled(get_pipeline(load_preset("tiny-wan")).transformer)
    torch._dynamo.reset()
