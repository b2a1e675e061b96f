"""Generate tab: text-to-video with any preset (api_name="generate")."""

from __future__ import annotations

import gradio as gr

from engine import api
from engine.api import gpu_task

from .errors import user_errors_as_messages


def _gpu_seconds(preset, prompt, negative_prompt, num_frames, height, width, steps, guidance_scale, *rest, **kw):
    return api.generate_gpu_seconds(preset, int(num_frames), int(height), int(width), int(steps), float(guidance_scale))


@user_errors_as_messages
@gpu_task(_gpu_seconds)
def run_generate(preset, prompt, negative_prompt, num_frames, height, width, steps, guidance_scale, seed,
                 guidance_scale_2=None, progress=gr.Progress()):
    def report(done, total):
        progress((done, total), desc="sampling", unit="steps")

    result = api.generate(
        prompt, preset=preset, negative_prompt=negative_prompt, num_frames=int(num_frames), height=int(height),
        width=int(width), steps=int(steps), guidance_scale=float(guidance_scale), seed=int(seed), progress=report,
        # last input, optional: gradio_client calls without it keep working (None: the preset's value)
        guidance_scale_2=None if guidance_scale_2 is None else float(guidance_scale_2),
    )
    return str(result.path), {**result.settings, "seconds": round(result.seconds, 2)}


def history_items() -> list[tuple[str, str]]:
    """The newest generations as (video, caption) for the gallery: prompt, preset, frames, seed, time."""
    return [(h["video"], f"{h.get('prompt', '')[:60]} · {h.get('preset', '')} · {h.get('num_frames', '?')}f · "
                         f"seed {h.get('seed', '?')} · {h.get('seconds', '?')} s") for h in api.generation_history()]


def _preset_defaults(name: str):
    """The form's values for a preset, the low-noise expert's guidance last (its field shows for two-expert
    models only)."""
    gen = api.generation_defaults(name)
    return (gen["num_frames"], gen["height"], gen["width"], gen["steps"], gen["guidance_scale"], gen["seed"],
            gen["guidance_scale_2"], api.has_experts(name))


@user_errors_as_messages
def on_preset_change(name):
    *values, guidance_2, experts = _preset_defaults(name)
    return (*values, gr.update(value=guidance_2, visible=experts))


def build(default_preset: str) -> None:
    presets = api.presets_for("generate")
    default_preset = api.default_preset_for("generate", default_preset)
    frames0, height0, width0, steps0, guidance0, seed0, guidance2_0, experts0 = _preset_defaults(default_preset)
    with gr.Tab("Generate") as tab:
        with gr.Row():
            with gr.Column():
                preset = gr.Dropdown(presets, value=default_preset, label="Preset")
                prompt = gr.Textbox(label="Prompt", value="a red circle moves left on a black background", lines=2)
                negative = gr.Textbox(label="Negative prompt", value="")
                with gr.Row():
                    num_frames = gr.Number(frames0, precision=0, label="Frames (4k+1)")
                    height = gr.Number(height0, precision=0, label="Height")
                    width = gr.Number(width0, precision=0, label="Width")
                with gr.Row():
                    steps = gr.Number(steps0, precision=0, label="Steps")
                    guidance = gr.Number(guidance0, label="Guidance scale")
                    seed = gr.Number(seed0, precision=0, label="Seed")
                guidance2 = gr.Number(guidance2_0, label="Low-noise expert guidance (empty: the guidance scale)",
                                      visible=experts0, elem_id="generate-guidance-2")
                button = gr.Button("Generate", variant="primary")
            with gr.Column():
                video = gr.Video(label="Video", autoplay=True)
                info = gr.JSON(label="Settings")
        history = gr.Gallery(history_items, label="History (newest first)", columns=4, height="auto",
                             elem_id="generate-history")
        preset.change(on_preset_change, preset, [num_frames, height, width, steps, guidance, seed, guidance2],
                      api_name=False)
        button.click(
            run_generate,
            [preset, prompt, negative, num_frames, height, width, steps, guidance, seed, guidance2],
            [video, info],
            api_name="generate",
        ).then(history_items, None, history, api_name=False)
        tab.select(history_items, None, history, api_name=False)  # generations from other sessions too
