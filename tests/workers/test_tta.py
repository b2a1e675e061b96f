"""Per-video test-time adaptation on the tiny backbones: loss, isolation, outputs, sweep, bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import ConfigError, InputError
from engine.jobs import RunDir
from engine.presets import PRESETS_DIR, load_preset
from engine.data.synthetic import render_clip
from engine.workers.tta import (
    AdaptSettings, SampleSettings, VideoSession, _load_model, adapt, evaluate_tta, load_clip, resolve_preset, run_tta,
    run_tta_sweep,
)
from engine.video import read_mp4, write_mp4

FAST = dict(sample_steps=2, lpips=False)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two 65-frame 64x64 synthetic clips with captions beside them."""
    folder = tmp_path_factory.mktemp("tta-clips")
    paths = {}
    for name, seed in (("a", 0), ("b", 1)):
        clip = render_clip(seed, 65, 64, 64)
        paths[name] = write_mp4(clip.frames, folder / f"{name}.mp4", fps=16)
        (folder / f"{name}.txt").write_text(clip.caption)
    return paths


def _session(preset_name, path, seed=0):
    preset, mode = resolve_preset(preset_name)
    pipe, fam = _load_model(preset)
    clip = load_clip(path, preset, cond_frames=33, total_frames=65)
    return VideoSession(pipe, fam, mode, clip, cond_frames=33, seed=seed,
                        sample=SampleSettings(steps=2, guidance_scale=5.0, negative_prompt=""))


def _weights(transformer):
    return {k: v.detach().clone() for k, v in transformer.state_dict().items()}


# ---------------------------------------------------------------------------- the loop


def test_tta_lowers_its_training_loss_and_leaves_the_base_untouched(clips):
    session = _session("tiny-wan", clips["a"])
    transformer = session.pipe.transformer
    before = _weights(transformer)
    info = adapt(session, AdaptSettings(rank=4, lr=1e-2, steps=5, seed=0))
    assert len(info["losses"]) == 5
    assert info["probe"][5] < info["probe"][0]  # the objective at fixed noise levels went down
    assert not getattr(transformer, "peft_config", None)
    assert not any("lora" in name for name, _ in transformer.named_modules())
    after = _weights(transformer)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_failure_inside_adapt_still_takes_the_lora_off_the_cached_pipeline(clips):
    """A fault mid-adaptation (here a callback raising at step 2) must not leave the LoRA on the shared transformer:
    the next video would start from it."""
    session = _session("tiny-wan", clips["a"])
    transformer = session.pipe.transformer
    before = _weights(transformer)

    def fail_at_two(info):
        if info["step"] == 2:
            raise RuntimeError("callback fault")

    with pytest.raises(RuntimeError, match="callback fault"):
        adapt(session, AdaptSettings(rank=4, lr=1e-2, steps=5, seed=0), on_step=fail_at_two)
    assert not getattr(transformer, "peft_config", None)
    assert not any("lora" in name for name, _ in transformer.named_modules())
    after = _weights(transformer)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not transformer.training


@pytest.mark.parametrize("preset_name", ["tiny-skyreels-df", "tiny-wan-vace"])
def test_continuation_objective_trains_on_each_backbone(clips, preset_name):
    session = _session(preset_name, clips["a"])
    info = adapt(session, AdaptSettings(rank=4, lr=1e-2, steps=3, objective="continuation", seed=0))
    assert info["probe"][3] < info["probe"][0]
    assert not getattr(session.pipe.transformer, "peft_config", None)


def test_video_b_after_video_a_is_the_same_as_b_alone(clips):
    settings = AdaptSettings(rank=4, lr=1e-2, steps=3, seed=0)
    results = {}

    def run(name, key):
        session = _session("tiny-wan", clips[name])
        adapt(session, settings, on_snapshot=lambda step, info: results.__setitem__(key, session.generate()))

    run("b", "b alone")
    run("a", "a")
    run("b", "b after a")
    latents_alone, frames_alone = results["b alone"]
    latents_after, frames_after = results["b after a"]
    assert torch.equal(latents_alone, latents_after) and np.array_equal(frames_alone, frames_after)
    assert not torch.equal(results["a"][0], latents_alone)


# ---------------------------------------------------------------------------- one run on disk


def test_run_tta_writes_videos_metrics_and_loss_events(clips, tmp_path):
    out = tmp_path / "run"
    statuses = []
    result = run_tta(clips["a"], preset="tiny-wan", output_dir=out, rank=4, lr=1e-2, steps=3, seed=3,
                     progress=statuses.append, **FAST)
    assert result["state"] == "finished" and result["video_id"] == "a"
    for key in ("ground_truth", "baseline", "tta", "side_by_side"):
        assert Path(result["videos"][key]).is_file()
    frames, fps = read_mp4(result["videos"]["side_by_side"])
    assert frames.shape[0] == 65 and frames.shape[2] >= 3 * 64 and fps == 16
    for kind in ("ground_truth", "baseline", "tta"):
        assert (out / "frames" / kind / "a.mkv").is_file()
    config = json.loads((out / "config.json").read_text())
    assert (config["seed"], config["rank"], config["lora_alpha"], config["continuation"]) == (3, 4, 4.0, "replacement")
    assert config["prompt"] == (clips["a"].with_suffix(".txt")).read_text()
    run = RunDir(out)
    assert run.read_status()["state"] == "finished"
    events = run.read_events("tta")
    assert [e["step"] for e in events] == [1, 2, 3] and all(np.isfinite(e["loss"]) for e in events)
    assert any(s.get("phase") == "train" for s in statuses)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["tta"]) >= {"psnr", "ssim", "lpips", "temporal_consistency", "first_frame_psnr"}
    assert metrics["tta"]["frames"] == [34, 65]
    assert metrics["difference"]["psnr"] == pytest.approx(metrics["tta"]["psnr"] - metrics["baseline"]["psnr"])
    curve = json.loads(Path(result["loss_curve"]).read_text())
    assert curve["step"] == [1, 2, 3] and curve["loss"] == [e["loss"] for e in events]
    # evaluate-tta recomputes the same numbers from the lossless copies
    again = evaluate_tta(out, out, lpips=False)
    assert again["source"] == "lossless"
    for name in ("psnr", "ssim", "temporal_consistency", "first_frame_psnr"):
        assert again["videos"]["a"]["tta"][name] == pytest.approx(metrics["tta"][name], abs=1e-6)
        assert again["videos"]["a"]["baseline"][name] == pytest.approx(metrics["baseline"][name], abs=1e-6)
    # the folder now holds a run: a second run there is refused
    with pytest.raises(InputError, match="already holds a run"):
        run_tta(clips["a"], preset="tiny-wan", output_dir=out, steps=1, **FAST)


# ---------------------------------------------------------------------------- sweep


def _dataset(folder: Path, clips) -> Path:
    (folder / "videos").mkdir(parents=True)
    entries = []
    for name, path in clips.items():
        (folder / "videos" / f"{name}.mp4").write_bytes(Path(path).read_bytes())
        caption = Path(path).with_suffix(".txt")
        entries.append({"video_id": name, "prompt": caption.read_text() if caption.is_file() else "a clip",
                        "negative_prompt": "",
                        "base_frames": 33, "extended_frames": 65, "height": 64, "width": 64, "fps": 16})
    (folder / "metadata.json").write_text(json.dumps(entries))
    return folder


def test_sweep_writes_the_layout_and_summary_and_resumes(clips, tmp_path):
    data = _dataset(tmp_path / "data", clips)
    kwargs = dict(ranks="2", lrs="1e-2", steps="1,2", experiment="exp", preset="tiny-wan",
                  output_root=tmp_path / "results", **FAST)
    result = run_tta_sweep(data, **kwargs)
    root = tmp_path / "results" / "exp"
    settings = ["diffusion-r2-lr0.01-s1", "diffusion-r2-lr0.01-s2"]
    assert result["state"] == "finished"
    for vid in ("a", "b"):
        for kind in ("ground_truth", "baseline", *settings):
            assert (root / "videos" / kind / f"{vid}.mp4").is_file()
            assert (root / "frames" / kind / f"{vid}.mkv").is_file()
        assert (root / "metrics" / "baseline" / f"{vid}.json").is_file()
        for s in settings:
            assert (root / "videos" / s / f"{vid}_side_by_side.mp4").is_file()
            record = json.loads((root / "metrics" / s / f"{vid}.json").read_text())
            assert record["setting"] == s and set(record["difference"]) >= {"psnr", "ssim"}
            curve = json.loads((root / "logs" / s / f"{vid}.json").read_text())
            assert curve["step"] == list(range(1, int(s[-1]) + 1))
    # the 1-step setting is a snapshot of the 2-step run: identical first step
    c1 = json.loads((root / "logs" / settings[0] / "a.json").read_text())
    c2 = json.loads((root / "logs" / settings[1] / "a.json").read_text())
    assert c1["loss"] == c2["loss"][:1]
    summary = json.loads((root / "summary.json").read_text())
    assert set(summary["settings"]) == set(settings)
    for s in settings:
        psnr = summary["settings"][s]["metrics"]["psnr"]
        assert psnr["tta"]["n"] == 2 and psnr["difference"]["n"] == 2
        values = [json.loads((root / "metrics" / s / f"{v}.json").read_text())["difference"]["psnr"] for v in "ab"]
        assert psnr["difference"]["mean"] == pytest.approx(np.mean(values))
        assert psnr["difference"]["std"] == pytest.approx(np.std(values, ddof=1))
    assert "Δpsnr" in (root / "summary.md").read_text()
    events = RunDir(root).read_events()
    assert sum(e["type"] == "sweep_item" for e in events) == 4
    assert {e["setting"] for e in events if e["type"] == "tta"} == {"diffusion-r2-lr0.01-s2"}
    # the same command again: everything is done, nothing is recomputed
    stamp = (root / "metrics" / settings[1] / "a.json").stat().st_mtime_ns
    again = run_tta_sweep(data, **kwargs)
    assert again["state"] == "finished"
    assert (root / "metrics" / settings[1] / "a.json").stat().st_mtime_ns == stamp
    # evaluate a setting folder against the baseline folder
    compared = evaluate_tta(root / "frames" / "baseline", root / "frames" / settings[1], lpips=False)
    assert set(compared["videos"]) == {"a", "b"}
    assert compared["summary"]["psnr"]["difference"]["mean"] == pytest.approx(
        summary["settings"][settings[1]]["metrics"]["psnr"]["difference"]["mean"], abs=1e-6)
    with pytest.raises(InputError, match="2 settings"):
        evaluate_tta(root, root, lpips=False)
    # different settings under the same experiment name are refused
    with pytest.raises(InputError, match="other settings"):
        run_tta_sweep(data, **{**kwargs, "ranks": "4"})


# ---------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    short = write_mp4(render_clip(0, 40, 64, 64).frames, folder / "short.mp4", fps=16)
    small = write_mp4(render_clip(0, 65, 32, 32).frames, folder / "small.mp4", fps=16)
    garbage = folder / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 100)
    preset = json.loads((PRESETS_DIR / "tiny-wan.json").read_text())
    preset.update(name="no-continuation", continuation=None)
    no_cont = folder / "no-continuation.json"
    no_cont.write_text(json.dumps(preset))
    return {"short": short, "small": small, "garbage": garbage, "no_continuation": no_cont}


@pytest.mark.parametrize("case, kwargs, error, message", [
    ("short clip", {"video": "short"}, InputError, r"has 40 frames; test-time adaptation needs at least 65"),
    ("unreadable", {"video": "garbage"}, InputError, r"could not be decoded"),
    ("missing", {"video": "nope"}, InputError, r"does not exist"),
    ("too small", {"video": "small"}, InputError, r"resolution too small: the video is 32x32.*at least 52 pixels.*tta.short_side 64"),
    ("steps 0", {"steps": 0}, InputError, r"steps=0 is out of range: it must be a whole number >= 1"),
    ("rank 0", {"rank": 0}, InputError, r"rank=0 is out of range: it must be a whole number >= 1"),
    ("objective", {"objective": "magic"}, InputError, r"objective: .magic. is not allowed; choose one of"),
    ("no continuation", {"preset": "no_continuation"}, ConfigError, r"cannot do video continuation.*tiny-wan"),
])
def test_bad_input_gives_a_clear_error_and_writes_nothing(clips, bad_files, tmp_path, case, kwargs, error, message):
    video = kwargs.pop("video", None)
    video = clips["a"] if video is None else bad_files.get(video, tmp_path / "nope.mp4")
    if kwargs.get("preset") == "no_continuation":
        kwargs["preset"] = str(bad_files["no_continuation"])
    out = tmp_path / "out"
    with pytest.raises(error, match=message):
        run_tta(video, output_dir=out, **{"steps": 1, **kwargs}, **FAST)
    assert not out.exists()


def test_a_job_folder_records_the_error_and_nothing_else(bad_files, tmp_path):
    out = tmp_path / "job"
    RunDir(out).create().update_status(state="running", pid=1)  # as engine.jobs leaves it
    with pytest.raises(InputError):
        run_tta(bad_files["short"], output_dir=out, steps=1, **FAST)
    assert sorted(p.name for p in out.iterdir()) == ["status.json"]
    status = RunDir(out).read_status()
    assert status["state"] == "failed" and "has 40 frames" in status["error"]


def test_bad_sweep_input_writes_nothing(clips, bad_files, tmp_path):
    data = _dataset(tmp_path / "data", {"a": clips["a"], "short": bad_files["short"]})
    results = tmp_path / "results"
    with pytest.raises(InputError, match="short"):
        run_tta_sweep(data, ranks="2", lrs="1e-2", steps="1", output_root=results, experiment="x", **FAST)
    data2 = _dataset(tmp_path / "data2", {"a": clips["a"]})
    for kwargs, message in (({"ranks": "0"}, "ranks"), ({"steps": "0,5"}, "steps"), ({"lrs": "abc"}, "lrs")):
        with pytest.raises(InputError, match=message):
            run_tta_sweep(data2, **{"ranks": "2", "lrs": "1e-2", "steps": "1", **kwargs}, output_root=results,
                          experiment="x", **FAST)
    assert not results.exists()


def test_cli_parses_the_commands_and_reports_bad_input(clips, tmp_path, capsys):
    from engine.cli import build_parser, main

    args = build_parser().parse_args(["tta", "--video", "v.mp4", "--preset", "tiny-wan", "--output_dir", "o", "--rank", "8",
                                      "--lr", "1e-4", "--steps", "20", "--objective", "continuation", "--seed", "3"])
    assert (args.rank, args.lr, args.steps, args.objective, args.seed) == (8, 1e-4, 20, "continuation", 3)
    args = build_parser().parse_args(["tta-sweep", "--data_dir", "d", "--ranks", "8,16,32", "--lrs", "1e-4,2e-4",
                                      "--steps", "20,50,100", "--experiment", "e"])
    assert (args.ranks, args.output_root, args.preset) == ("8,16,32", "results", "tiny-wan")
    assert args.compile_blocks is False
    for command in (["tta", "--video", "v.mp4", "--output_dir", "o"], ["tta-sweep", "--data_dir", "d"]):
        assert build_parser().parse_args([*command, "--compile_blocks"]).compile_blocks is True
    args = build_parser().parse_args(["evaluate-tta", "--baseline", "b", "--tta", "t"])
    assert (args.baseline, args.tta) == ("b", "t")
    out = tmp_path / "cli"
    assert main(["tta", "--video", str(clips["a"]), "--output_dir", str(out), "--rank", "0", "--quiet"]) == 2
    assert "rank=0 is out of range" in capsys.readouterr().err
    assert not out.exists()


def test_presets_declare_how_they_continue():
    assert resolve_preset("tiny-wan")[1] == "replacement"
    assert resolve_preset("wan2.1-t2v-1.3b")[1] == "replacement"
    assert resolve_preset("skyreels-v2-df-1.3b")[1] == "per_token"
    assert resolve_preset("tiny-skyreels-df")[1] == "per_token"
    assert resolve_preset("wan2.1-vace-1.3b")[1] == "vace"
    assert resolve_preset("tiny-wan-vace")[1] == "vace"
    assert load_preset("skyreels-v2-df-1.3b")["source"] == "Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers"
    assert load_preset("wan2.1-vace-1.3b")["source"] == "Wan-AI/Wan2.1-VACE-1.3B-diffusers"
    assert load_preset("skyreels-v2-df-1.3b")["tta"]["short_side"] == 256


def _rounded(value):
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


@pytest.mark.slow
def test_a_sweep_sharded_over_two_processes_gives_the_one_process_summary(clips, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from engine.workers.tta import merge_tta_sweep, sweep_shard

    data = _dataset(tmp_path / "data", clips)
    kwargs = dict(ranks="2", lrs="1e-2", steps="1", experiment="exp", preset="tiny-wan", **FAST)
    whole = run_tta_sweep(data, output_root=tmp_path / "one", shard="0/1", **kwargs)["summary"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "engine", "tta-sweep", "--data_dir", str(data), "--ranks", "2",
           "--lrs", "1e-2", "--steps", "1", "--experiment", "exp", "--output_root", str(tmp_path / "two"),
           "--sample_steps", "2", "--no_lpips", "--quiet"]
    result = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    root = tmp_path / "two" / "exp"
    shards = sorted(p.name for p in (root / "shards").iterdir())
    assert shards == ["shard-0", "shard-1"]  # each kept its own status and events
    logged = {json.loads(line).get("video_id") for shard in shards
              for line in (root / "shards" / shard / "events.jsonl").read_text().splitlines()} - {None}
    assert logged == {"a", "b"}
    assert _rounded(json.loads((root / "summary.json").read_text())) == _rounded(whole)
    assert _rounded(merge_tta_sweep(root)) == _rounded(whole)  # merging by hand (a SLURM array) gives it again
    # How shards are named
    assert sweep_shard("1/4") == (1, 4)
    with pytest.raises(InputError, match="shard '4/4' must be i/N"):
        sweep_shard("4/4")


def test_merging_an_unfinished_sharded_sweep_says_what_is_missing(clips, tmp_path):
    from engine.workers.tta import merge_tta_sweep

    data = _dataset(tmp_path / "data", clips)
    result = run_tta_sweep(data, ranks="2", lrs="1e-2", steps="1", experiment="exp", preset="tiny-wan",
                           output_root=tmp_path / "r", shard="0/2", **FAST)
    assert result["state"] == "finished" and result["summary"] is None  # shard 1/2 has not run
    root = tmp_path / "r" / "exp"
    assert not (root / "summary.json").exists()
    with pytest.raises(InputError, match=r"1 of 2 items are not done yet \(first: b / diffusion-r2-lr0.01-s1\)"):
        merge_tta_sweep(root)


# ---------------------------------------------------------------------------- regional compilation


def test_compile_blocks_gives_the_eager_run_and_leaves_the_model_eager(clips, tmp_path, monkeypatch):
    """TTA with compiled blocks (aot_eager on the CPU): the eager run's losses and metrics, recorded in config.json,
    the shared model eager afterwards; a sweep resumes with the option flipped (it changes no result)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from engine.models import get_pipeline, regional_compile

    monkeypatch.setattr(regional_compile, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    results = {}
    try:
        for on in (False, True):
            before = counters["stats"]["unique_graphs"]
            with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):  # never a silent eager fallback
                results[on] = run_tta(clips["a"], preset="tiny-wan", output_dir=tmp_path / f"run-{on}", rank=4,
                                      lr=1e-2, steps=2, seed=3, compile_blocks=on, **FAST)
            assert (counters["stats"]["unique_graphs"] > before) is on  # the blocks ran compiled, or not at all
            assert json.loads((tmp_path / f"run-{on}" / "config.json").read_text())["compile_blocks"] is on
        assert results[True]["loss"] == pytest.approx(results[False]["loss"], rel=1e-5)
        for kind in ("baseline", "tta"):
            for name in ("psnr", "ssim", "temporal_consistency"):
                assert results[True]["metrics"][kind][name] == pytest.approx(results[False]["metrics"][kind][name],
                                                                             abs=1e-4), (kind, name)
        transformer = get_pipeline(load_preset("tiny-wan")).transformer
        assert not regional_compile.is_compiled(transformer)

        data = _dataset(tmp_path / "data", {"a": clips["a"]})
        kwargs = dict(ranks="2", lrs="1e-2", steps="1", experiment="exp", preset="tiny-wan",
                      output_root=tmp_path / "results", **FAST)
        first = run_tta_sweep(data, compile_blocks=True, **kwargs)
        again = run_tta_sweep(data, **kwargs)  # the same experiment, eager: resumed, nothing to redo
        assert first["state"] == again["state"] == "finished" and not regional_compile.is_compiled(transformer)
    finally:
        torch._dynamo.reset()


def test_compile_blocks_on_a_model_without_repeated_blocks_is_refused_before_writing(clips, tmp_path, monkeypatch,
                                                                                      capsys):
    from engine.cli import main
    from engine.models import get_pipeline

    transformer = get_pipeline(load_preset("tiny-wan")).transformer
    monkeypatch.setattr(type(transformer), "_repeated_blocks", [])
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="compile_blocks.*_repeated_blocks.*set compile_blocks to false"):
        run_tta(clips["a"], preset="tiny-wan", output_dir=out, steps=1, compile_blocks=True, **FAST)
    assert not out.exists()
    # the CLI flag reaches run_tta: the same refusal, exit 2, nothing written
    assert main(["tta", "--video", str(clips["a"]), "--preset", "tiny-wan", "--output_dir", str(out), "--steps", "1",
                 "--sample_steps", "2", "--no_lpips", "--compile_blocks", "--quiet"]) == 2
    assert "set compile_blocks to false" in capsys.readouterr().err and not out.exists()
