"""Radial Studio: `python app.py [--preset P] [--host H] [--port N] [--share]`."""

from __future__ import annotations

import argparse
import threading
import time

import gradio as gr

from engine.jobs import pump_queue, runs_root
from engine.paths import outputs_dir
from engine.presets import DEFAULT_PRESET, load_preset
from ui import compare_tab, generate_tab, train_tab


def build_app(preset: str = DEFAULT_PRESET) -> gr.Blocks:
    load_preset(preset)  # fail fast on a bad --preset
    with gr.Blocks(title="Radial Studio") as demo:
        gr.Markdown("# Radial Studio\nLong video generation with LoRA adapters and radial attention.")
        train_tab.build(preset, demo)
        compare_tab.build(preset)
        generate_tab.build(preset)
    return demo


def served_paths() -> list[str]:
    """The app serves files only from its own output folders."""
    return [str(outputs_dir()), str(runs_root())]


def _pump_forever(interval: float = 2.0) -> None:
    while True:  # start queued jobs even when no browser is polling
        try:
            pump_queue()
        except Exception:  # a half-written status file; the next round sees it whole
            pass
        time.sleep(interval)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default=DEFAULT_PRESET, help="preset selected at start (default: tiny-wan)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    args = parser.parse_args(argv)
    threading.Thread(target=_pump_forever, daemon=True).start()
    build_app(args.preset).queue().launch(server_name=args.host, server_port=args.port, share=args.share,
                                          allowed_paths=served_paths())


if __name__ == "__main__":
    main()
