"""Turn engine errors into Gradio messages so the app shows them and keeps running."""

from __future__ import annotations

import functools

import gradio as gr

from engine.errors import EngineError


def user_errors_as_messages(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EngineError as err:
            raise gr.Error(str(err), print_exception=False) from None

    return wrapper
