"""Dataset tab: each clip of a data folder as a training run would take it; captions and trigger word edited in place.

API: /dataset_view (folder, preset), /dataset_caption (folder, clip, caption), /dataset_trigger_word
(folder, word). The engine (engine.datasets_view) plans with the trainer's own code and keeps every
read and write inside the data root.
"""

from __future__ import annotations

import gradio as gr

from engine import api, datasets_view

from .errors import user_errors_as_messages

COLUMNS = ["clip", "frames", "h x w", "fps", "bucket", "windows", "status", "caption (as trained) / why skipped"]


def _table(rows: list[dict]) -> list[list]:
    def size(r):
        return f"{r['height']}x{r['width']}" if r["height"] else ""

    return [[r["clip"], r["frames"] if r["frames"] is not None else "", size(r),
             f"{r['fps']:g}" if r["fps"] else "", r["bucket"], r["windows"], r["status"],
             r["reason"] if r["status"] == "skipped" else r["prompt"]] for r in rows]


def _summary(view: dict) -> str:
    rows, options = view["clips"], view["options"]
    used = sum(r["status"] != "skipped" for r in rows)
    buckets = ", ".join(f"{size} ({n})" for size, n in sorted(view["buckets"].items())) or "none"
    trigger = f"`{options['trigger_word']}`" if options["trigger_word"] else "none"
    return (f"**{view['folder']}**: {view['kind']} · {len(rows)} clips, {used} used, {len(rows) - used} skipped · "
            f"preset `{view['preset']}`: windows of {view['frames']} frames · frame_extraction "
            f"`{options['frame_extraction']}` · buckets {'on' if options['enable_bucket'] else 'off'}: {buckets} · "
            f"trigger word {trigger}")


@user_errors_as_messages
def show_dataset(folder: str, preset: str, keep: str | None = None):
    """The view's outputs; `keep`: the clip to leave selected (after a save), else the first."""
    view = datasets_view.dataset_view(folder, preset)
    rows = view["clips"]
    gallery = [(r["thumbnail"], r["clip"]) for r in rows if r["thumbnail"]]
    captions = {r["clip"]: r["caption"] for r in rows}
    first = keep if keep in captions else rows[0]["clip"] if rows else None
    # the JSON is for API clients: the whole view, without server paths
    record = {**view, "clips": [{k: v for k, v in r.items() if k != "thumbnail"} for r in rows]}
    return (_summary(view), gallery, _table(rows), gr.Dropdown(choices=list(captions), value=first),
            captions.get(first, ""), view["options"]["trigger_word"], captions, record)


@user_errors_as_messages
def save_caption(folder: str, clip: str, caption: str):
    done = datasets_view.dataset_caption(folder, clip, caption)
    return f"Saved the caption of `{done['clip']}` in `{done['file']}`."


@user_errors_as_messages
def save_trigger_word(folder: str, word: str):
    options = datasets_view.dataset_trigger_word(folder, word)
    word = options["trigger_word"]
    return (f"Trigger word `{word}` saved in dataset.toml: runs train on \"{word}, <caption>\"." if word else
            "Trigger word removed from dataset.toml.")


def _pick_row(rows, evt: gr.SelectData):
    """A click on a table row picks its clip for editing (the table's first column is the clip)."""
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    return rows.iloc[row, 0] if hasattr(rows, "iloc") else rows[row][0]


def build(default_preset: str) -> None:
    presets = api.presets_for("length_extension")
    default_preset = api.default_preset_for("length_extension", default_preset)
    with gr.Tab("Dataset") as tab:
        gr.Markdown("A data folder as a training run takes it: each clip's first frame, length, size, the bucket it "
                    "trains at and why a clip is skipped. Edit a caption (saved beside the clip, or in "
                    "metadata.json) and the trigger word (dataset.toml) in place.")
        with gr.Row():
            folder = gr.Dropdown(choices=datasets_view.dataset_folders(), value=None, allow_custom_value=True,
                                 label="Dataset folder (under the data root)", scale=3)
            preset = gr.Dropdown(presets, value=default_preset, label="Preset (its training size and frames)",
                                 scale=2)
            show = gr.Button("Show", variant="primary", scale=1)
        summary = gr.Markdown(elem_id="dataset-summary")
        # fit_columns=False: a few clips stay thumbnail-sized instead of stretching over the row
        gallery = gr.Gallery(label="First frames", columns=10, fit_columns=False, height=150, object_fit="contain",
                             elem_id="dataset-gallery")
        table = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, elem_id="dataset-table")
        with gr.Row():
            clip = gr.Dropdown(choices=[], label="Clip", allow_custom_value=True, scale=1)
            caption = gr.Textbox(label="Caption", lines=2, scale=3)
            save = gr.Button("Save caption", scale=1)
        with gr.Row():
            trigger = gr.Textbox(label="Trigger word (put before every caption at training time)", scale=3)
            save_trigger = gr.Button("Save trigger word", scale=1)
        message = gr.Markdown(elem_id="dataset-message")
        captions = gr.State({})
        record = gr.JSON(visible=False)
        view_outputs = [summary, gallery, table, clip, caption, trigger, captions, record]
        show.click(show_dataset, [folder, preset], view_outputs, api_name="dataset_view")
        clip.input(lambda name, known: known.get(name, ""), [clip, captions], caption, api_name=False)
        table.select(_pick_row, table, clip, api_name=False).then(
            lambda name, known: known.get(name, ""), [clip, captions], caption, api_name=False)
        save.click(save_caption, [folder, clip, caption], message, api_name="dataset_caption").success(
            show_dataset, [folder, preset, clip], view_outputs, api_name=False)
        save_trigger.click(save_trigger_word, [folder, trigger], message, api_name="dataset_trigger_word").success(
            show_dataset, [folder, preset, clip], view_outputs, api_name=False)
        tab.select(lambda: gr.Dropdown(choices=datasets_view.dataset_folders()), None, folder, api_name=False)
