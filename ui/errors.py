"""Turn engine errors into Gradio messages so the app shows them and keeps running.

Messages never show the server's folders: absolute paths of the app's own folders (runs, outputs,
data root, cache, the install) are written relative to them.
"""

from __future__ import annotations

import functools

import gradio as gr

from engine import api
from engine.errors import EngineError


without_server_paths = api.without_server_paths  # one definition, the engine's (messages and logs alike)


def user_errors_as_messages(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EngineError as err:
            # duration=None: the message stays until the user closes it (a 10 s toast left a bare "Error" badge)
            raise gr.Error(without_server_paths(str(err)), duration=None, print_exception=False) from None

    return wrapper
