"""Radial Studio: `python app.py [--preset P] [--host H] [--port N] [--share]`."""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import gradio as gr  # noqa: E402

from engine import (
    api,  # noqa: E402
    spaces_support,  # noqa: F401  (first: ZeroGPU needs `spaces` before CUDA is touched)
)
from ui import compare_tab, dataset_tab, generate_tab, hub_tab, presets_view, train_tab, tta_tab  # noqa: E402


def build_app(preset: str = api.DEFAULT_PRESET) -> gr.Blocks:
    api.load_preset(preset)  # fail fast on a bad --preset
    with gr.Blocks(title="Radial Studio") as demo:
        gr.Markdown("# Radial Studio\nLong video generation with LoRA adapters and radial attention.")
        train_tab.build(preset, demo)
        dataset_tab.build(preset)
        tta_tab.build(preset)
        compare_tab.build(preset)
        generate_tab.build(preset)
        hub_tab.build()
        presets_view.build()
    return demo


def served_paths() -> list[str]:
    """The app serves files only from its own output folders."""
    return api.served_paths()


def launch_options() -> dict:
    """What every launch of the app passes to Gradio: the folders it may serve and the guard in front of them."""
    from starlette.middleware import Middleware

    from ui.serving import ServedFiles

    def roots():  # read per request: the folders come from the environment
        outputs, runs = map(Path, api.served_paths())
        return runs, outputs

    # Gradio refuses bigger uploads before writing them; the engine checks the same bound (engine.uploads).
    return {"allowed_paths": served_paths(), "app_kwargs": {"middleware": [Middleware(ServedFiles, roots=roots)]},
            "max_file_size": f"{api.max_upload_mb()}mb"}


def _pump_forever(interval: float = 2.0) -> None:
    while True:  # start queued jobs even when no browser is polling
        try:
            api.pump_queue()
        except Exception:  # a half-written status file; the next round sees it whole
            pass
        time.sleep(interval)


def _check_port(host: str, port: int) -> None:
    """A busy port is the user's to fix: say which flag, before Gradio's traceback about `server_port`."""
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as err:
            raise SystemExit(f"error: cannot listen on {host}:{port} ({err.strerror or err}); another server may "
                             "be using it: pass --port N (or set GRADIO_SERVER_PORT), or stop the other one.") from None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default=api.DEFAULT_PRESET, help="preset selected at start (default: tiny-wan)")
    # Spaces (Gradio SDK) pass the address through these variables.
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    args = parser.parse_args(argv)
    _check_port(args.host, args.port)
    threading.Thread(target=_pump_forever, daemon=True).start()
    build_app(args.preset).queue().launch(server_name=args.host, server_port=args.port, share=args.share,
                                          **launch_options())


if __name__ == "__main__":
    main()
