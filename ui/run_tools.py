"""The Length extension tab's run tools: download a run's files, read its log, delete it, compare two runs'
losses, and the whole job queue. Each action is one engine.api call.

API: /run_downloads, /run_log, /run_delete, /train_compare_runs, /job_queue.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from engine import api
from engine.errors import EngineError

from .errors import user_errors_as_messages
from .job_view import curves_frame

COMPARE_COLORS = dict(zip(api.COMPARE_SERIES, ("#1f77b4", "#d62728", "#ff7f0e", "#9467bd")))
QUEUE_COLUMNS = ["position", "run", "kind", "state", "progress", "preset"]


def _run(run_id: str) -> str:
    run_id = run_id or api.active_or_newest_run("train")
    if not run_id:
        raise gr.Error("There is no run on display: start one, or pick a past run.", print_exception=False)
    return run_id


@user_errors_as_messages
def run_downloads(run_id=""):
    """The run's final LoRA files (diffusers, ComfyUI) and its config, as downloadable files."""
    out = api.run_downloads(_run(run_id))
    names = ", ".join(f"`{f['name']}`" for f in out["files"])
    return [f["path"] for f in out["files"]], f"Files of run {out['run_id']}: {names}. {out['note']}".strip()


@user_errors_as_messages
def run_log(run_id=""):
    return api.run_log(_run(run_id))


def ask_delete(run_id=""):
    """Deleting cannot be undone: the button only shows the confirmation."""
    run_id = run_id or api.active_or_newest_run("train")
    if not run_id:
        return gr.Row(visible=False), "There is no run to delete."
    return gr.Row(visible=True), f"Delete run **{run_id}** with its LoRA, checkpoints and samples? This cannot be undone."


@user_errors_as_messages
def delete_run(run_id=""):
    run_id = _run(run_id)
    api.delete_run(run_id)
    return f"Run {run_id} was deleted.", gr.Row(visible=False)


@user_errors_as_messages
def compare_runs(run_id="", other_run_id="", smoothing=0.0):
    """The run on display and another run, total and validation losses on one plot."""
    if not other_run_id:
        return None
    out = api.compare_run_losses(_run(run_id), other_run_id, float(smoothing or 0))
    return curves_frame(out["rows"], api.COMPARE_SERIES)


def compare_runs_quietly(run_id="", other_run_id="", smoothing=0.0):
    """The timer's refresh: a comparison that cannot be drawn now (a run just deleted) keeps the plot as it is."""
    try:
        return compare_runs(run_id, other_run_id, smoothing) if other_run_id else gr.skip()
    except (gr.Error, EngineError):
        return gr.skip()


def job_queue() -> list[dict]:
    return api.job_queue()


def queue_table() -> pd.DataFrame:
    rows = [{"position": r["position"] or "", "run": r["run_id"] or "(in a request)", "kind": r["kind"],
             "state": r["state"], "progress": f"{r['step']}/{r['total_steps']}" if r["total_steps"] else "",
             "preset": r["preset"] or ""} for r in api.job_queue()]
    return pd.DataFrame(rows, columns=QUEUE_COLUMNS)


def build(run_id: gr.Dropdown, smoothing: gr.Slider, run_choices) -> None:
    """The tools under the run on display. `run_choices()`: the run list's (label, id) pairs."""
    with gr.Accordion("Run files, log and deletion", open=True):
        with gr.Row():
            get_files = gr.Button("Get LoRA and config files", size="sm")
            show_log = gr.Button("Show log", size="sm")
            delete = gr.Button("Delete run", size="sm", variant="stop")
        with gr.Row(visible=False) as confirm_row:
            confirm_md = gr.Markdown()
            confirm = gr.Button("Yes, delete it", variant="stop", size="sm")
            cancel = gr.Button("Cancel", size="sm")
        note = gr.Markdown(elem_id="run-tools-note")
        files = gr.File(label="Downloads", file_count="multiple", interactive=False, height=150,
                        elem_id="run-downloads")
        log = gr.Textbox(label="Log (the end of the job's output)", lines=6, max_lines=24, interactive=False,
                         elem_id="run-log")
    with gr.Accordion("Compare with another run", open=False):
        other = gr.Dropdown(choices=[], value="", label="Other run", allow_custom_value=True)
        plot = gr.LinePlot(None, x="step", y="value", color="series", label="Losses: this run vs the other",
                           color_map=COMPARE_COLORS, color_title="", elem_id="compare-plot")
    with gr.Accordion("Job queue", open=False):
        queue = gr.Dataframe(queue_table(), label="Running and queued jobs", interactive=False, elem_id="job-queue")
        refresh_queue = gr.Button("Refresh queue", size="sm")

    # Errors show on the tools' own note, not on every panel of the tab.
    get_files.click(run_downloads, run_id, [files, note], api_name="run_downloads", show_progress_on=note)
    show_log.click(run_log, run_id, log, api_name="run_log", show_progress_on=log)
    delete.click(ask_delete, run_id, [confirm_row, confirm_md], api_name=False)
    cancel.click(lambda: gr.Row(visible=False), None, confirm_row, api_name=False)
    confirm.click(delete_run, run_id, [note, confirm_row], api_name="run_delete", show_progress_on=note).success(
        lambda: (gr.Dropdown(choices=run_choices(), value=""), gr.Dropdown(choices=run_choices(), value=""), None,
                 None, ""), None, [run_id, other, files, plot, log], api_name=False)
    other.change(compare_runs, [run_id, other, smoothing], plot, api_name="train_compare_runs", show_progress="hidden")
    for event in (smoothing.change, run_id.change):
        event(compare_runs_quietly, [run_id, other, smoothing], plot, api_name=False, show_progress="hidden")
    refresh_queue.click(queue_table, None, queue, api_name=False)
    gr.api(job_queue, api_name="job_queue")
    timer = gr.Timer(5.0)
    timer.tick(queue_table, None, queue, api_name=False, show_progress="hidden")
    timer.tick(compare_runs_quietly, [run_id, other, smoothing], plot, api_name=False, show_progress="hidden")
    timer.tick(lambda: gr.Dropdown(choices=run_choices()), None, other, api_name=False, show_progress="hidden")
