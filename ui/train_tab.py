"""Length extension tab: start/stop/resume training jobs, live status, loss plot and samples.

All state is on disk (engine.launch.training); a timer polls it, so a page reload or a second
browser shows the same run. API: /train_start, /train_status, /train_stop, /train_resume,
/train_runs, /train_config_import and /run_clone (fill the form from a config file or a past run);
the run tools below the run (downloads, log, delete, compare, queue) are ui/run_tools.py.
"""

from __future__ import annotations

import gradio as gr

from engine import api
from engine.errors import EngineError

from . import run_tools
from .errors import user_errors_as_messages, without_server_paths
from .job_view import curves_frame, job_status_markdown

LOSS_SERIES = {"loss": "total", "loss_base": "base", "loss_extended": "extended", "loss_consistency": "consistency"}
# Every series has its colour before its first point: a scale built from the first data drawn leaves series that
# appear later (validation, a second run's terms) without a stroke colour.
SERIES_COLORS = {"total": "#1f77b4", "base": "#ff7f0e", "extended": "#2ca02c", "consistency": "#9467bd",
                 "validation": "#d62728"}


# The settings the form shows; their values come from the preset (engine.api.training_defaults).
SETTING_NAMES = ["max_steps", "learning_rate", "lora_rank", "lora_alpha", "base_num_frames", "extended_num_frames",
                 "pattern", "dense_layers", "dense_timesteps", "decay_factor", "block_size",
                 "gradient_accumulation_steps", "validation_steps", "checkpointing_steps", "sample_steps", "seed"]


def preset_training_defaults(name: str) -> dict:
    d = api.training_defaults(name)
    return {n: d[n] for n in SETTING_NAMES}
MEMORY_FLAGS = ("fp8_base", "offload_activations")  # engine.settings.MEMORY; ffn_chunks is a number
INT_SETTINGS = {"max_steps", "lora_rank", "base_num_frames", "extended_num_frames", "dense_layers", "dense_timesteps",
                "block_size", "gradient_accumulation_steps", "validation_steps", "checkpointing_steps", "sample_steps",
                "seed"}


def loss_frame(status: dict, smoothing: float = 0.0):
    """Loss curves as a long table (step, value, series); EMA smoothing for the training terms."""
    rows = []
    train = status.get("train_events") or []
    for key, name in LOSS_SERIES.items():
        ema = None
        for e in train:
            if key not in e:
                continue
            ema = e[key] if ema is None else smoothing * ema + (1 - smoothing) * e[key]
            rows.append({"step": e["step"], "value": ema, "series": name})
    for e in status.get("validation_events") or []:
        rows.append({"step": e["step"], "value": e["val_loss"], "series": "validation"})
    return curves_frame(rows, tuple(SERIES_COLORS))


def status_line(status: dict) -> str:
    if not status:
        return "No run selected. Start one, or pick a past run."
    return job_status_markdown(status, status["run_id"])


def _run_choices() -> list[tuple[str, str]]:
    return [(f"{r['run_id']} ({r['state']}, {r['step']}/{r['total_steps'] or '?'})", r["run_id"])
            for r in api.list_runs()]


def _view(status: dict, smoothing: float):
    samples = status.get("samples") or {}
    checkpoints = ", ".join(status.get("checkpoints") or []) or "none yet"
    return (status_line(status), loss_frame(status, smoothing), samples.get("base"), samples.get("extended"),
            f"Checkpoints: {checkpoints}" + (f" · final LoRA: `{without_server_paths(status['final'])}`"
                                             if status.get("final") else ""),  # relative: no server folders shown
            status)


@user_errors_as_messages
def train_start(preset=api.DEFAULT_PRESET, data_source="synthetic", num_samples=4, uploads=None, folder="", max_steps=None,
                learning_rate=None, lora_rank=None, lora_alpha=None, base_num_frames=None, extended_num_frames=None,
                pattern=None, dense_layers=None, dense_timesteps=None, decay_factor=None, block_size=None,
                gradient_accumulation_steps=None, validation_steps=None, checkpointing_steps=None, sample_steps=None,
                seed=None, smoothing=0.0, fp8_base=None, offload_activations=None, ffn_chunks=None, block_swap=None,
                extra_settings=None, sample_prompts=None, sample_seed=None, trigger_word=None):
    """Every parameter has a default: with none, a short demo run of the tiny model on synthetic clips.

    The memory options come after `smoothing` so positional API calls made before they existed still work.
    `extra_settings`: settings of an imported config or cloned run that the form does not show (the form's
    own fields win). `sample_prompts`: one per line (empty: the held-out clip's caption); `trigger_word` (empty:
    the data folder's dataset.toml).
    """
    values = locals()
    settings = {**(extra_settings or {})}
    settings.update({name: values[name] for name in MEMORY_FLAGS if values[name] is not None})
    for name in ("ffn_chunks", "block_swap"):  # numbers
        if values[name] not in (None, ""):
            settings[name] = int(values[name])
    for name in SETTING_NAMES:
        value = values[name]
        if value is None or value == "":
            continue
        settings[name] = int(value) if name in INT_SETTINGS else (float(value) if name != "pattern" else value)
    prompts = [line.strip() for line in (sample_prompts or "").splitlines() if line.strip()]
    if prompts:
        settings["sample_prompts"] = prompts
    if sample_seed not in (None, ""):
        settings["sample_seed"] = int(sample_seed)
    if (trigger_word or "").strip():
        settings["trigger_word"] = trigger_word.strip()
    status = api.start_training(preset, data_source, uploads=uploads, folder=folder, num_samples=int(num_samples or 4),
                            settings=settings)
    return (status["run_id"], *_view(status, smoothing))


def memory_line(preset: str = api.DEFAULT_PRESET, lora_rank: float | None = None, base_num_frames: float | None = None,
                extended_num_frames: float | None = None, fp8_base: bool = False, offload_activations: bool = False,
                ffn_chunks: float = 1, block_swap: float = 0) -> str:
    """The memory plan's estimate for these settings (engine.memory.plan), shown beside Start."""
    settings = {"lora_rank": lora_rank, "base_num_frames": base_num_frames, "extended_num_frames": extended_num_frames,
                "fp8_base": bool(fp8_base), "offload_activations": bool(offload_activations),
                "ffn_chunks": int(ffn_chunks or 1), "block_swap": int(block_swap or 0)}
    try:
        e = api.memory_estimate(preset, {k: (int(v) if isinstance(v, float) else v) for k, v in settings.items()})
    except EngineError as err:
        return f"Memory estimate: not available ({err})"
    host = f", {e['host_gib']} GiB of host memory" if e["host_gib"] else ""
    return f"Predicted peak GPU memory of a step: **{e['peak_gib']} GiB** ({e['options']}{host})"


def _default_run(run_id: str | None) -> str | None:
    """An empty run id means the active run (running or queued), else the newest one."""
    return run_id or api.active_or_newest_run("train")


@user_errors_as_messages
def train_status(run_id="", smoothing=0.0):
    run_id = _default_run(run_id)
    return _view(api.training_status(run_id) if run_id else {}, smoothing)


@user_errors_as_messages
def train_samples(run_id=""):
    """Every sample of the run, oldest step first: (video, "step N · base/extended · prompt") for the gallery."""
    run_id = _default_run(run_id)
    items = []
    for entry in api.sample_gallery(run_id) if run_id else []:
        prompt = entry["prompt"] or "the first held-out clip's caption"
        for kind in ("base", "extended"):
            if entry.get(kind):
                items.append((entry[kind], f"step {entry['step']} · {kind} · {prompt}"))
    return items


def poll_status(run_id="", smoothing=0.0):
    """The timer's refresh: a run that went away meanwhile (deleted from another page) is said once in the
    status line, not in a new error message every two seconds."""
    try:
        return train_status.__wrapped__(run_id, smoothing)
    except EngineError as err:
        return (without_server_paths(f"Run {run_id} is not available: {err}"), *[gr.skip()] * 5)


def _act(action, verb: str, run_id: str, smoothing: float):
    run_id = _default_run(run_id)
    if not run_id:
        raise gr.Error(f"There is no run to {verb}.")
    return _view(action(run_id), smoothing)


ENDED_STATES = ("stopped", "finished", "failed", "diverged", "damaged")


@user_errors_as_messages
def train_stop(run_id="", smoothing=0.0):
    """Stop the run; one that has already ended is said so (a note, not an error)."""
    shown = _default_run(run_id)
    status = api.training_status(shown) if shown else {}
    if status.get("state") in ENDED_STATES:
        gr.Info(f"Run {shown} has already {'ended: it is ' if status['state'] != 'finished' else ''}"
                f"{status['state']}; there is nothing to stop.")
        return _view(status, smoothing)
    return _act(api.stop_training, "stop", run_id, smoothing)


@user_errors_as_messages
def train_resume(run_id="", smoothing=0.0):
    return _act(api.resume_training, "resume", run_id, smoothing)


def train_runs() -> list[dict]:
    return api.list_runs()


def on_load():
    """Re-attach to the running run (or the newest one) after a page load."""
    return gr.Dropdown(choices=_run_choices(), value=_default_run(None) or "")


def refresh_run_labels():
    """The run list's labels follow the runs' states (a run started as "running, 0/40" ends "finished, 40/40")."""
    return gr.Dropdown(choices=_run_choices())


def show_run_settings(run_id):
    """The form follows the run on display: its preset, settings and memory options (a run without a
    readable config.json leaves the form as it is)."""
    keep = [gr.skip()] * (1 + len(SETTING_NAMES) + 4)
    run_id = _default_run(run_id)
    if not run_id:
        return keep
    try:
        config = api.run_settings(run_id)
    except EngineError:
        return keep
    names = ["preset", *SETTING_NAMES, "fp8_base", "offload_activations", "ffn_chunks", "block_swap"]
    return [config[n] if n in config else gr.skip() for n in names]


FORM_MEMORY = ["fp8_base", "offload_activations", "ffn_chunks", "block_swap"]


def _fill_form(values: dict, note: str) -> list:
    """The form from engine form values (api.import_training_config / clone_run_settings): preset, data source,
    folder, the settings, memory options; what the form does not show is kept for Start (extra settings)."""
    shown = set(SETTING_NAMES) | set(FORM_MEMORY)
    settings = values["settings"]
    extras = {k: settings[k] for k in values["given"] if k not in shown}
    if extras:
        note += (f" {len(extras)} setting(s) not on the form are kept for Start: {', '.join(sorted(extras))} "
                 "(picking another preset or run drops them).")
    return [values["preset"], values["data_source"] or gr.skip(),
            values["folder"] if values["folder"] is not None else gr.skip(),
            *[settings[n] for n in SETTING_NAMES], *[settings[n] for n in FORM_MEMORY], extras, note]


@user_errors_as_messages
def import_config(config_file=None):
    """Fill the form from a JSON training config (ours or the original `--config` format)."""
    if not config_file:
        raise gr.Error("No config file: upload a config.json.", print_exception=False)
    values = api.import_training_config(config_file)
    note = f"Filled from **{values['source']}** ({len(values['given'])} setting(s); the rest are the preset's)."
    if "data_dir" in values["dropped"]:
        note += " Its data_dir is a path of another machine and is not used: choose the dataset above."
    return _fill_form(values, note)


@user_errors_as_messages
def clone_run(run_id=""):
    """Fill the form from the run on display; Start then makes a new run (a new folder)."""
    run_id = _default_run(run_id)
    if not run_id:
        raise gr.Error("There is no run to clone: pick a past run.", print_exception=False)
    values = api.clone_run_settings(run_id)
    note = f"Settings of run **{run_id}**; Start makes a new run."
    if values["data_source"] is None:
        note += " Its clips were uploaded (or converted) and are not kept for a clone: choose the dataset above."
    return _fill_form(values, note)


def on_preset_change(name):
    d = preset_training_defaults(name)
    return [d[n] for n in SETTING_NAMES]


def build(default_preset: str, demo: gr.Blocks) -> None:
    presets = api.presets_for("length_extension")
    default_preset = api.default_preset_for("length_extension", default_preset)
    d = preset_training_defaults(default_preset)
    with gr.Tab("Length extension"):
        with gr.Row():
            with gr.Column(scale=1):
                preset = gr.Dropdown(presets, value=default_preset, label="Preset")
                data_source = gr.Radio(["synthetic", "upload", "folder"], value="synthetic", label="Dataset",
                                       info="synthetic: built-in procedural clips; upload: videos + same-name .txt "
                                            "captions; folder: a path under the server's data root")
                num_samples = gr.Number(4, precision=0, label="Synthetic clips (one held out)")
                uploads = gr.File(value=[], file_count="multiple", label="Videos and captions", file_types=[".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".gif", ".txt"])
                folder = gr.Textbox(label="Server folder (relative to the data root)", value="")
                with gr.Row():
                    max_steps = gr.Number(d["max_steps"], precision=0, label="Steps")
                    learning_rate = gr.Number(d["learning_rate"], label="Learning rate")
                with gr.Row():
                    lora_rank = gr.Number(d["lora_rank"], precision=0, label="LoRA rank")
                    lora_alpha = gr.Number(d["lora_alpha"], label="LoRA alpha")
                with gr.Row():
                    base_frames = gr.Number(d["base_num_frames"], precision=0, label="Base frames")
                    ext_frames = gr.Number(d["extended_num_frames"], precision=0, label="Extended frames")
                with gr.Accordion("Advanced: radial attention and training", open=False):
                    pattern = gr.Radio(["radial", "dense"], value=d["pattern"], label="Attention pattern")
                    with gr.Row():
                        dense_layers = gr.Number(d["dense_layers"], precision=0, label="Dense layers")
                        dense_timesteps = gr.Number(d["dense_timesteps"], precision=0, label="Dense timesteps")
                    with gr.Row():
                        decay_factor = gr.Number(d["decay_factor"], label="Decay factor")
                        block_size = gr.Dropdown([16, 32, 64, 128], value=d["block_size"], label="Block size")
                    with gr.Row():
                        accum = gr.Number(d["gradient_accumulation_steps"], precision=0, label="Grad accumulation")
                        seed = gr.Number(d["seed"], precision=0, label="Seed")
                    with gr.Row():
                        val_steps = gr.Number(d["validation_steps"], precision=0, label="Validate every")
                        ckpt_steps = gr.Number(d["checkpointing_steps"], precision=0, label="Checkpoint every")
                        sample_steps = gr.Number(d["sample_steps"], precision=0, label="Sample steps (0: none)")
                    sample_prompts = gr.Textbox(lines=2, label="Sample prompts (one per line)",
                                                info="empty: the held-out clip's caption", elem_id="sample-prompts")
                    with gr.Row():
                        sample_seed = gr.Number(None, precision=0, label="Sample seed", info="empty: the run's seed")
                        trigger_word = gr.Textbox(label="Trigger word", info="empty: the data folder's dataset.toml")
                with gr.Accordion("Advanced: memory (long videos, big models)", open=False):
                    gr.Markdown("Measured costs per option: docs/memory.md. The 14B recipe (1280x768, 69 -> 161) "
                                "fits 76 GiB with the first three. Block swap keeps that many blocks' frozen "
                                "weights in host memory, copied in as each block runs.")
                    with gr.Row():
                        fp8_base = gr.Checkbox(False, label="fp8 base weights")
                        offload_activations = gr.Checkbox(False, label="Offload activations to host")
                        ffn_chunks = gr.Number(1, precision=0, minimum=1, maximum=64, label="Feed-forward slices")
                        block_swap = gr.Number(0, precision=0, minimum=0, maximum=1000, label="Blocks swapped to host")
                with gr.Accordion("Import a config, or clone the run on display", open=False):
                    config_file = gr.File(label="Config file (config.json)", file_types=[".json"],
                                          elem_id="config-import")
                    clone = gr.Button("Clone the run on display into the form", size="sm")
                    import_md = gr.Markdown(elem_id="import-note")
                extras = gr.State({})
                with gr.Row():
                    start = gr.Button("Start", variant="primary")
                    stop = gr.Button("Stop", variant="stop")
                    resume = gr.Button("Resume")
                # Where Start/Stop/Resume show their progress and errors: a failed Start marks this line, not
                # every panel of the tab.
                action_md = gr.Markdown(elem_id="train-action")
                memory_md = gr.Markdown(memory_line(default_preset, d["lora_rank"], d["base_num_frames"],
                                                 d["extended_num_frames"]), elem_id="memory-estimate")
            with gr.Column(scale=2):
                run_id = gr.Dropdown(choices=[], value="", label="Run", allow_custom_value=True,
                                     info="empty: the active run, else the newest")
                status_md = gr.Markdown("No run selected.", elem_id="train-status")
                smoothing = gr.Slider(0, 0.95, value=0.0, step=0.05, label="Smoothing")
                plot = gr.LinePlot(loss_frame({}), x="step", y="value", color="series", label="Losses",
                                   color_map=SERIES_COLORS, color_title="", elem_id="loss-plot")
                with gr.Row():
                    base_video = gr.Video(label="Latest sample: base (dense)", autoplay=True)
                    ext_video = gr.Video(label="Latest sample: extended (radial)", autoplay=True)
                with gr.Accordion("Every sample (all validation steps)", open=False):
                    gallery_refresh = gr.Button("Show every sample", size="sm")
                    gallery = gr.Gallery(label="Samples by validation step", columns=4, height="auto",
                                         elem_id="sample-gallery")
                checkpoints_md = gr.Markdown()
                raw = gr.JSON(label="Status (raw)", visible=False)
                run_tools.build(run_id, smoothing, _run_choices)

        settings = [max_steps, learning_rate, lora_rank, lora_alpha, base_frames, ext_frames, pattern, dense_layers,
                    dense_timesteps, decay_factor, block_size, accum, val_steps, ckpt_steps, sample_steps, seed]
        view = [status_md, plot, base_video, ext_video, checkpoints_md, raw]
        # .input: a preset the user picks brings its defaults; one the run on display sets keeps that run's values
        preset.input(on_preset_change, preset, settings, api_name=False)
        memory = [fp8_base, offload_activations, ffn_chunks, block_swap]
        form = [preset, data_source, folder, *settings, *memory, extras, import_md]
        for event in (preset.input, run_id.input):  # another preset or run: an import's extra settings go
            event(lambda: ({}, ""), None, [extras, import_md], api_name=False)
        config_file.upload(import_config, config_file, form, api_name="train_config_import",
                           show_progress_on=import_md)
        clone.click(clone_run, run_id, form, api_name="run_clone", show_progress_on=import_md)
        start.click(train_start, [preset, data_source, num_samples, uploads, folder, *settings, smoothing, fp8_base,
                                  offload_activations, ffn_chunks, block_swap, extras, sample_prompts, sample_seed,
                                  trigger_word],
                    [run_id, *view], api_name="train_start", show_progress_on=action_md).then(
            lambda current: gr.Dropdown(choices=_run_choices(), value=current), run_id, run_id, api_name=False)
        memory_inputs = [preset, lora_rank, base_frames, ext_frames, fp8_base, offload_activations, ffn_chunks,
                         block_swap]
        for component in memory_inputs:
            component.change(memory_line, memory_inputs, memory_md, api_name=False, show_progress="hidden")
        gr.api(memory_line, api_name="train_memory_estimate")
        stop.click(train_stop, [run_id, smoothing], view, api_name="train_stop", show_progress_on=action_md)
        resume.click(train_resume, [run_id, smoothing], view, api_name="train_resume", show_progress_on=action_md)
        run_id.change(train_status, [run_id, smoothing], view, api_name="train_status")
        gallery_refresh.click(train_samples, run_id, gallery, api_name="train_samples")
        run_id.change(train_samples, run_id, gallery, api_name=False, show_progress="hidden")
        run_id.change(show_run_settings, run_id, [preset, *settings, fp8_base, offload_activations, ffn_chunks,
                                                  block_swap],
                      api_name=False, show_progress="hidden")
        smoothing.change(train_status, [run_id, smoothing], view, api_name=False)
        gr.Timer(2.0).tick(poll_status, [run_id, smoothing], view, api_name=False, show_progress="hidden")
        gr.Timer(5.0).tick(refresh_run_labels, None, run_id, api_name=False, show_progress="hidden")
        gr.Button("Refresh runs", size="sm").click(on_load, None, run_id, api_name="train_runs_refresh")
        gr.api(train_runs, api_name="train_runs")
        demo.load(on_load, None, run_id, api_name=False)
