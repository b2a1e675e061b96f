"""Radial Studio: `python app.py [--preset P] [--host H] [--port N] [--share]`."""

from __future__ import annotations

import argparse

import gradio as gr

from engine.paths import outputs_dir
from engine.presets import DEFAULT_PRESET, load_preset
from ui import generate_tab


def build_app(preset: str = DEFAULT_PRESET) -> gr.Blocks:
    load_preset(preset)  # fail fast on a bad --preset
    with gr.Blocks(title="Radial Studio") as demo:
        gr.Markdown("# Radial Studio\nLong video generation with LoRA adapters and radial attention.")
        generate_tab.build(preset)
    return demo


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default=DEFAULT_PRESET, help="preset selected at start (default: tiny-wan)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    args = parser.parse_args(argv)
    build_app(args.preset).queue().launch(
        server_name=args.host, server_port=args.port, share=args.share, allowed_paths=[str(outputs_dir())]
    )


if __name__ == "__main__":
    main()
