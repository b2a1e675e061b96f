"""Compare tab: base video (dense, base length) vs adapter video (radial, extended length). API: /compare."""

from __future__ import annotations

import gradio as gr

from engine import api
from engine.api import gpu_task

from .errors import user_errors_as_messages


def _gpu_seconds(prompt, preset, adapter, base_frames, extended_frames, steps, *rest, **kw):
    return api.compare_gpu_seconds(preset, int(base_frames), int(extended_frames), int(steps))


@user_errors_as_messages
@gpu_task(_gpu_seconds)
def run_compare(prompt, preset, adapter, base_frames, extended_frames, steps, seed, decay_factor, dense_layers,
                dense_timesteps, context_parallel=1, progress=gr.Progress()):
    """`context_parallel` comes last so positional API calls made before it existed still work."""
    result, lora_dir = api.compare(
        prompt, preset=preset, adapter=adapter, base_frames=int(base_frames), extended_frames=int(extended_frames),
        steps=int(steps), seed=int(seed),
        attention={"decay_factor": float(decay_factor), "dense_layers": int(dense_layers),
                   "dense_timesteps": int(dense_timesteps)},
        progress=lambda done, total: progress((done, total), desc="sampling", unit="steps"),
        context_parallel=int(context_parallel or 1),
    )
    return result.side_by_side, result.base, result.extended, {**result.to_dict(), "adapter": str(lora_dir) if lora_dir else None}


def compare_summary(info: dict | None, adapter: str = "") -> str:
    """The comparison as a person reads it: frames, attention and time per side, the speed ratio per frame.
    The adapter is named as the user chose it (the hidden JSON output keeps the full record for API clients)."""
    if not info:
        return ""
    per_frame = [info["base_seconds"] / info["base_frames"], info["extended_seconds"] / info["extended_frames"]]
    lines = ["| | frames | attention | sampling time | per frame |", "|---|---|---|---|---|",
             f"| base | {info['base_frames']} | dense | {info['base_seconds']:.1f} s | {per_frame[0]:.2f} s |",
             f"| {'adapter' if info.get('adapter') else 'extended'} | {info['extended_frames']} | radial | "
             f"{info['extended_seconds']:.1f} s | {per_frame[1]:.2f} s |"]
    lines.append("")
    lines.append(f"Adapter: `{adapter}`" if info.get("adapter") else
                 "No adapter: the base model alone at extended length.")
    lines.append(f"The extended video is {info['extended_frames'] / info['base_frames']:.1f}x as long and took "
                 f"{info['extended_seconds'] / max(info['base_seconds'], 1e-9):.1f}x the time.")
    return "\n".join(lines)


def _defaults(name):
    d = api.compare_defaults(name)
    return (d["base_frames"], d["extended_frames"], d["steps"], d["decay_factor"], d["dense_layers"],
            d["dense_timesteps"])


def build(default_preset: str) -> None:
    presets = api.presets_for("generate")
    default_preset = api.default_preset_for("generate", default_preset)
    base0, ext0, steps0, decay0, layers0, timesteps0 = _defaults(default_preset)
    with gr.Tab("Compare") as tab:
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", value="a red circle moves from left to right on a dark blue background", lines=2)
                preset = gr.Dropdown(presets, value=default_preset, label="Preset")
                adapter = gr.Dropdown(choices=api.finished_adapters(), value="", allow_custom_value=True,
                                      label="Adapter: a finished run, a folder under the data root, or a Hub id (user/repo)",
                                      info="empty: the base model alone at extended length")
                with gr.Row():
                    base_frames = gr.Number(base0, precision=0, label="Base frames")
                    extended_frames = gr.Number(ext0, precision=0, label="Extended frames")
                with gr.Row():
                    steps = gr.Number(steps0, precision=0, label="Steps")
                    seed = gr.Number(0, precision=0, label="Seed")
                with gr.Accordion("Radial attention", open=False):
                    decay = gr.Number(decay0, label="Decay factor")
                    dense_layers = gr.Number(layers0, precision=0, label="Dense layers")
                    dense_timesteps = gr.Number(timesteps0, precision=0, label="Dense timesteps")
                    context_parallel = gr.Number(1, precision=0, minimum=1, label="GPUs (context parallelism)",
                                                 info="N > 1: the sequence split over N GPUs of this machine")
                button = gr.Button("Compare", variant="primary")
                refresh = gr.Button("Refresh adapters", size="sm")
            with gr.Column():
                composed = gr.Video(label="Side by side (in sync)", autoplay=True, loop=True)
                with gr.Row():
                    base_video = gr.Video(label="Base")
                    ext_video = gr.Video(label="Extended")
                summary = gr.Markdown(elem_id="compare-summary")
                info = gr.JSON(label="Timings and settings", visible=False)  # the API's record of the comparison
        preset.change(lambda n: _defaults(n), preset, [base_frames, extended_frames, steps, decay, dense_layers,
                                                       dense_timesteps], api_name=False)
        refresh.click(lambda: gr.Dropdown(choices=api.finished_adapters()), None, adapter, api_name=False)
        # Runs that finished since the page loaded are offered as soon as the tab opens.
        tab.select(lambda: gr.Dropdown(choices=api.finished_adapters()), None, adapter, api_name=False)
        button.click(run_compare, [prompt, preset, adapter, base_frames, extended_frames, steps, seed, decay,
                                   dense_layers, dense_timesteps, context_parallel], [composed, base_video, ext_video, info],
                     api_name="compare").then(compare_summary, [info, adapter], summary, api_name=False)
