"""Compare tab: base video (dense, base length) vs adapter video (radial, extended length). API: /compare."""

from __future__ import annotations

import gradio as gr

from engine.adapters import finished_adapters, resolve_adapter_ref
from engine.compare import compare_base_extended
from engine.presets import list_presets, load_preset
from engine.spaces_support import generation_seconds, gpu_task

from .errors import user_errors_as_messages


def _gpu_seconds(prompt, preset, adapter, base_frames, extended_frames, steps, *rest, **kw):
    p = load_preset(preset)
    size = (p["generation"]["height"], p["generation"]["width"])
    return (generation_seconds(p, int(base_frames), *size, int(steps))
            + generation_seconds(p, int(extended_frames), *size, int(steps)))


@user_errors_as_messages
@gpu_task(_gpu_seconds)
def run_compare(prompt, preset, adapter, base_frames, extended_frames, steps, seed, decay_factor, dense_layers,
                dense_timesteps, progress=gr.Progress()):
    lora_dir = resolve_adapter_ref(adapter) if adapter else None
    result = compare_base_extended(
        prompt, preset=preset, lora_dir=lora_dir, base_frames=int(base_frames), extended_frames=int(extended_frames),
        steps=int(steps), seed=int(seed),
        attention={"decay_factor": float(decay_factor), "dense_layers": int(dense_layers),
                   "dense_timesteps": int(dense_timesteps)},
        progress=lambda done, total: progress((done, total), desc="sampling", unit="steps"),
    )
    return result.side_by_side, result.base, result.extended, {**result.to_dict(), "adapter": str(lora_dir) if lora_dir else None}


def _defaults(name):
    p = load_preset(name)
    return (p["training"]["base_num_frames"], p["training"]["extended_num_frames"], p["generation"]["steps"],
            p["attention"]["decay_factor"], p["attention"]["dense_layers"], p["attention"]["dense_timesteps"])


def build(default_preset: str) -> None:
    base0, ext0, steps0, decay0, layers0, timesteps0 = _defaults(default_preset)
    with gr.Tab("Compare"):
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", value="a red circle moves from left to right on a dark blue background", lines=2)
                preset = gr.Dropdown(list_presets(), value=default_preset, label="Preset")
                adapter = gr.Dropdown(choices=finished_adapters(), value="", allow_custom_value=True,
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
                button = gr.Button("Compare", variant="primary")
                refresh = gr.Button("Refresh adapters", size="sm")
            with gr.Column():
                composed = gr.Video(label="Side by side (in sync)", autoplay=True, loop=True)
                with gr.Row():
                    base_video = gr.Video(label="Base")
                    ext_video = gr.Video(label="Extended")
                info = gr.JSON(label="Timings and settings")
        preset.change(lambda n: _defaults(n), preset, [base_frames, extended_frames, steps, decay, dense_layers,
                                                       dense_timesteps], api_name=False)
        refresh.click(lambda: gr.Dropdown(choices=finished_adapters()), None, adapter, api_name=False)
        button.click(run_compare, [prompt, preset, adapter, base_frames, extended_frames, steps, seed, decay,
                                   dense_layers, dense_timesteps], [composed, base_video, ext_video, info],
                     api_name="compare")
