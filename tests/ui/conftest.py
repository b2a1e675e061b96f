"""A running app per test module, with its own runs/outputs/data folders."""

import socket

import pytest


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("app")
    for name, sub in (("RADIAL_STUDIO_RUNS", "runs"), ("RADIAL_STUDIO_OUTPUTS", "outputs"),
                      ("RADIAL_STUDIO_DATA_ROOT", "data")):
        (root / sub).mkdir()
        monkeypatch_module.setenv(name, str(root / sub))
    from app import build_app, launch_options

    demo = build_app("tiny-wan")
    port = _free_port()
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port,
                        quiet=True, **launch_options())
    yield f"http://127.0.0.1:{port}/", root
    demo.close()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()
