"""Test-time adaptation tab: adapt a LoRA to one clip's first 33 frames, continue it, compare.

API: /tta_run, /tta_status, /tta_stop, /tta_sweep, /tta_runs (the run list: state, progress, it/s, ETA).
Runs are background jobs; the loss plot and results are read back from the run folder by a timer.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from engine import api
from engine.api import gpu_task

from .errors import user_errors_as_messages
from .job_view import curves_frame, job_status_markdown

METRIC_ROWS = ("psnr", "ssim", "lpips", "temporal_consistency", "first_frame_psnr")


def _loss_frame(status: dict) -> pd.DataFrame:
    rows = [{"step": e["step"], "value": e["loss"], "series": e.get("setting", "tta")}
            for e in status.get("loss_events") or [] if "loss" in e]
    return curves_frame(rows)


METRIC_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS", "temporal_consistency": "temporal consistency",
                 "first_frame_psnr": "first-frame PSNR (dB)"}
METRIC_COLUMNS = ["metric", "better", "baseline", "TTA", "TTA - baseline"]


def _shown(v) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _metrics_table(status: dict) -> pd.DataFrame:
    """What a person reads: rounded values, which way is better, and why a metric is missing.
    The raw numbers stay in the run's metrics.json (and the hidden status output)."""
    m = status.get("metrics")
    if not m:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    directions = m.get("directions") or {}
    rows = []
    for k in METRIC_ROWS:
        if k not in m["baseline"]:
            continue
        base, tta, diff = m["baseline"].get(k), m["tta"].get(k), m["difference"].get(k)
        why = m["tta"].get(f"{k}_unavailable") or m["baseline"].get(f"{k}_unavailable")
        rows.append({"metric": METRIC_LABELS.get(k, k), "better": directions.get(k, ""),
                     "baseline": _shown(base), "TTA": _shown(tta),
                     "TTA - baseline": f"not computed: {why}" if (base is None or tta is None) and why
                     else (f"{diff:+.4g}" if diff is not None else "n/a")})
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def _status_line(s: dict) -> str:
    if not s:
        return "No TTA run selected."
    line = job_status_markdown(s, f"{s['run_id']} ({s['kind']})")
    return line + ("\n\n" + s["summary_md"] if s.get("summary_md") else "")


def _view(s: dict):
    videos = s.get("videos") or {}
    return (s.get("run_id") or "", _status_line(s), _loss_frame(s), videos.get("side_by_side"), _metrics_table(s), s)


RUN_COLUMNS = ["run", "kind", "state", "progress", "it/s", "ETA", "preset"]


def tta_runs() -> list[dict]:
    return api.list_tta_runs()


def _progress(r: dict) -> str:
    if r["kind"] == "tta-sweep" and r.get("total"):
        return f"{r.get('done') or 0}/{r['total']} items"
    return f"{r['step']}/{r['total_steps']}" if r.get("total_steps") else ""


def runs_table() -> pd.DataFrame:
    """Every TTA run and sweep, newest first; pick a row to show it."""
    rows = [{"run": r["run_id"], "kind": r["kind"], "state": r["state"], "progress": _progress(r),
             "it/s": f"{r['it_per_s']:.2f}" if r.get("it_per_s") else "",
             "ETA": f"{r['eta_seconds']:.0f} s" if r.get("eta_seconds") is not None else "",
             "preset": r.get("preset") or ""} for r in api.list_tta_runs()]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def pick_run(evt: gr.SelectData):
    """A click on a row of the run list shows that run."""
    row = evt.row_value or []
    return row[0] if row else gr.skip()


def _latest_tta_run() -> str | None:
    return api.active_or_newest_run(("tta", "tta-sweep"))


def _gpu_seconds(video=None, preset=api.DEFAULT_PRESET, rank=None, lr=None, steps=None, *rest, **kw):
    return api.tta_gpu_seconds(preset, steps or api.tta_defaults(preset)["steps"])


@gpu_task(_gpu_seconds)
def _tta_in_request(video, preset, rank, lr, steps, objective, seed, prompt):
    return api.start_tta(video, preset=preset, rank=rank, lr=lr, steps=steps, objective=objective, seed=seed,
                         prompt=prompt, in_request=True)


def _number(value, kind):
    return None if value is None or value == "" else kind(value)


@user_errors_as_messages
def tta_run(video=None, preset=api.DEFAULT_PRESET, rank=None, lr=None, steps=None, objective=None, seed=0, prompt=""):
    """Every parameter has a default (the preset's tta section): with none, the built-in sample clip on the tiny model."""
    args = (video or None, preset, _number(rank, int), _number(lr, float), _number(steps, int), objective or None,
            int(seed), prompt or None)
    if api.on_zero_gpu():  # the GPU is lent to this request only: run here, not as a background job
        return _view(_tta_in_request(*args))
    video, preset, rank, lr, steps, objective, seed, prompt = args
    return _view(api.start_tta(video, preset=preset, rank=rank, lr=lr, steps=steps, objective=objective, seed=seed,
                               prompt=prompt))


@user_errors_as_messages
def tta_status_view(run_id=""):
    run_id = run_id or _latest_tta_run()
    return _view(api.tta_status(run_id) if run_id else {})


@user_errors_as_messages
def tta_stop(run_id=""):
    run_id = run_id or _latest_tta_run()
    if not run_id:
        raise gr.Error("There is no TTA run to stop.")
    return _view(api.stop_tta(run_id))


@user_errors_as_messages
def tta_sweep(folder="", preset=api.DEFAULT_PRESET, ranks=api.APP_SWEEP["ranks"], lrs=api.APP_SWEEP["lrs"],
              steps=api.APP_SWEEP["steps"], objective=None, seed=0):
    return _view(api.start_tta_sweep(folder, preset=preset, ranks=ranks, lrs=lrs, steps=steps,
                                     objective=objective or None, seed=int(seed)))


def build(default_preset: str) -> None:
    presets = api.presets_for("tta")
    preset0 = api.default_preset_for("tta", default_preset)
    d = api.tta_defaults(preset0) if preset0 else api.tta_defaults(api.DEFAULT_PRESET)
    with gr.Tab("Test-time adaptation"):
        gr.Markdown("A fresh LoRA learns the clip's **first 33 frames**; the model then generates frames 34-65 with "
                    "and without it (same seed and noise), compared with the real frames.")
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Clip (at least 65 frames; empty: a built-in sample clip)", sources=["upload"])
                prompt = gr.Textbox(label="Caption (optional)", value="")
                preset = gr.Dropdown(presets, value=preset0, label="Backbone preset")
                with gr.Row():
                    rank = gr.Number(d["rank"], precision=0, label="LoRA rank")
                    lr = gr.Number(d["lr"], label="Learning rate")
                    steps = gr.Number(d["steps"], precision=0, label="Steps")
                with gr.Row():
                    objective = gr.Radio(list(api.TTA["objective"].choices), value=d["objective"], label="Objective")
                    seed = gr.Number(d["seed"], precision=0, label="Seed")
                with gr.Row():
                    run = gr.Button("Run", variant="primary")
                    stop = gr.Button("Stop", variant="stop")
                with gr.Accordion("Sweep over a dataset (rank x lr x steps)", open=False):
                    folder = gr.Textbox(label="Dataset folder under the data root (empty: two sample clips)", value="")
                    ranks = gr.Textbox(api.APP_SWEEP["ranks"], label="Ranks")
                    lrs = gr.Textbox(api.APP_SWEEP["lrs"], label="Learning rates")
                    sweep_steps = gr.Textbox(api.APP_SWEEP["steps"], label="Steps")
                    sweep = gr.Button("Run sweep")
            with gr.Column():
                run_id = gr.Textbox(label="Run", value="", info="empty: the active TTA run, else the newest")
                status_md = gr.Markdown("No TTA run selected.", elem_id="tta-status")
                plot = gr.LinePlot(_loss_frame({}), x="step", y="value", color="series", label="TTA loss", height=260)
                composed = gr.Video(label="Ground truth | baseline | TTA", autoplay=True, loop=True)
                table = gr.Dataframe(_metrics_table({}), label="Metrics on frames 34-65", interactive=False,
                                     wrap=True, elem_id="tta-metrics")
                raw = gr.JSON(visible=False)
                runs = gr.Dataframe(runs_table(), label="TTA runs (click one to show it)", interactive=False,
                                    elem_id="tta-runs")
        view = [run_id, status_md, plot, composed, table, raw]
        run.click(tta_run, [video, preset, rank, lr, steps, objective, seed, prompt], view, api_name="tta_run")
        stop.click(tta_stop, run_id, view, api_name="tta_stop")
        sweep.click(tta_sweep, [folder, preset, ranks, lrs, sweep_steps, objective, seed], view, api_name="tta_sweep")
        run_id.submit(tta_status_view, run_id, view, api_name="tta_status")
        gr.Timer(2.0).tick(tta_status_view, run_id, view, api_name=False, show_progress="hidden")
        gr.Timer(5.0).tick(runs_table, None, runs, api_name=False, show_progress="hidden")
        runs.select(pick_run, None, run_id, api_name=False).then(tta_status_view, run_id, view, api_name=False)
        gr.api(tta_runs, api_name="tta_runs")
