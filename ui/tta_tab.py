"""Test-time adaptation tab: adapt a LoRA to one clip's first 33 frames, continue it, compare.

API: /tta_run, /tta_status, /tta_stop, /tta_sweep. Runs are background jobs; the loss plot and
results are read back from the run folder by a timer.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from engine.presets import load_preset
from engine.spaces_support import gpu_task, num_tokens, on_zero_gpu, work_seconds
from engine.train.runs import active_or_newest_run
from engine.train.tta import continuation_presets
from engine.train.tta_runs import start_tta, start_tta_sweep, stop_tta, tta_status

from .errors import user_errors_as_messages
from .job_view import curves_frame, job_status_markdown

METRIC_ROWS = ("psnr", "ssim", "lpips", "temporal_consistency", "first_frame_psnr")


def _loss_frame(status: dict) -> pd.DataFrame:
    rows = [{"step": e["step"], "value": e["loss"], "series": e.get("setting", "tta")}
            for e in status.get("loss_events") or [] if "loss" in e]
    return curves_frame(rows)


def _metrics_table(status: dict) -> pd.DataFrame:
    m = status.get("metrics")
    if not m:
        return pd.DataFrame(columns=["metric", "baseline", "tta", "difference"])
    rows = [{"metric": k, "baseline": m["baseline"].get(k), "tta": m["tta"].get(k), "difference": m["difference"].get(k)}
            for k in METRIC_ROWS if k in m["baseline"]]
    return pd.DataFrame(rows)


def _status_line(s: dict) -> str:
    if not s:
        return "No TTA run selected."
    line = job_status_markdown(s, f"{s['run_id']} ({s['kind']})")
    return line + ("\n\n" + s["summary_md"] if s.get("summary_md") else "")


def _view(s: dict):
    videos = s.get("videos") or {}
    return (s.get("run_id") or "", _status_line(s), _loss_frame(s), videos.get("side_by_side"), _metrics_table(s), s)


def _latest_tta_run() -> str | None:
    return active_or_newest_run(("tta", "tta-sweep"))


def _gpu_seconds(video=None, preset="tiny-wan", rank=16, lr=2e-4, steps=20, *rest, **kw):
    p = load_preset(preset)
    side = p["tta"]["short_side"]
    # steps of forward+backward (~3 passes) on the 33-frame prefix, then two 65-frame samplings
    passes = 3 * int(steps) + 2 * p["generation"]["steps"] * 2
    return work_seconds(passes, num_tokens(65, side, side * 16 // 9 // 16 * 16), 1.0)


@gpu_task(_gpu_seconds)
def _tta_in_request(video, preset, rank, lr, steps, objective, seed, prompt):
    return start_tta(video, preset=preset, rank=rank, lr=lr, steps=steps, objective=objective, seed=seed,
                     prompt=prompt, in_request=True)


@user_errors_as_messages
def tta_run(video=None, preset="tiny-wan", rank=16, lr=2e-4, steps=20, objective="diffusion", seed=0, prompt=""):
    """Every parameter has a default: with none, the built-in sample clip on the tiny model."""
    args = (video or None, preset, int(rank), float(lr), int(steps), objective, int(seed), prompt or None)
    if on_zero_gpu():  # the GPU is lent to this request only: run here, not as a background job
        return _view(_tta_in_request(*args))
    video, preset, rank, lr, steps, objective, seed, prompt = args
    return _view(start_tta(video, preset=preset, rank=rank, lr=lr, steps=steps, objective=objective, seed=seed,
                           prompt=prompt))


@user_errors_as_messages
def tta_status_view(run_id=""):
    run_id = run_id or _latest_tta_run()
    return _view(tta_status(run_id) if run_id else {})


@user_errors_as_messages
def tta_stop(run_id=""):
    run_id = run_id or _latest_tta_run()
    if not run_id:
        raise gr.Error("There is no TTA run to stop.")
    return _view(stop_tta(run_id))


@user_errors_as_messages
def tta_sweep(folder="", preset="tiny-wan", ranks="8,16", lrs="2e-4", steps="5,10", objective="diffusion", seed=0):
    return _view(start_tta_sweep(folder, preset=preset, ranks=ranks, lrs=lrs, steps=steps, objective=objective,
                                 seed=int(seed)))


def build(default_preset: str) -> None:
    presets = continuation_presets()
    preset0 = default_preset if default_preset in presets else (presets[0] if presets else None)
    with gr.Tab("Test-time adaptation"):
        gr.Markdown("A fresh LoRA learns the clip's **first 33 frames**; the model then generates frames 34-65 with "
                    "and without it (same seed and noise), compared with the real frames.")
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Clip (at least 65 frames; empty: a built-in sample clip)", sources=["upload"])
                prompt = gr.Textbox(label="Caption (optional)", value="")
                preset = gr.Dropdown(presets, value=preset0, label="Backbone preset")
                with gr.Row():
                    rank = gr.Number(16, precision=0, label="LoRA rank")
                    lr = gr.Number(2e-4, label="Learning rate")
                    steps = gr.Number(20, precision=0, label="Steps")
                with gr.Row():
                    objective = gr.Radio(["diffusion", "continuation"], value="diffusion", label="Objective")
                    seed = gr.Number(0, precision=0, label="Seed")
                with gr.Row():
                    run = gr.Button("Run", variant="primary")
                    stop = gr.Button("Stop", variant="stop")
                with gr.Accordion("Sweep over a dataset (rank x lr x steps)", open=False):
                    folder = gr.Textbox(label="Dataset folder under the data root (empty: two sample clips)", value="")
                    ranks = gr.Textbox("8,16", label="Ranks")
                    lrs = gr.Textbox("2e-4", label="Learning rates")
                    sweep_steps = gr.Textbox("5,10", label="Steps")
                    sweep = gr.Button("Run sweep")
            with gr.Column():
                run_id = gr.Textbox(label="Run", value="", info="empty: the active TTA run, else the newest")
                status_md = gr.Markdown("No TTA run selected.", elem_id="tta-status")
                plot = gr.LinePlot(_loss_frame({}), x="step", y="value", color="series", label="TTA loss", height=260)
                composed = gr.Video(label="Ground truth | baseline | TTA", autoplay=True, loop=True)
                table = gr.Dataframe(_metrics_table({}), label="Metrics on frames 34-65", interactive=False)
                raw = gr.JSON(visible=False)
        view = [run_id, status_md, plot, composed, table, raw]
        run.click(tta_run, [video, preset, rank, lr, steps, objective, seed, prompt], view, api_name="tta_run")
        stop.click(tta_stop, run_id, view, api_name="tta_stop")
        sweep.click(tta_sweep, [folder, preset, ranks, lrs, sweep_steps, objective, seed], view, api_name="tta_sweep")
        run_id.submit(tta_status_view, run_id, view, api_name="tta_status")
        gr.Timer(2.0).tick(tta_status_view, run_id, view, api_name=False, show_progress="hidden")
