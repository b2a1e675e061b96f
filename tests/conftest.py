"""Test environment: offline, single-threaded, a private cache and outputs folder per session."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# The tiny model is built once per machine and reused (it is deterministic); outputs are per session.
os.environ.setdefault("RADIAL_STUDIO_CACHE", str(Path.home() / ".cache" / "radial-studio-tests"))

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(autouse=True, scope="session")
def _outputs_dir(tmp_path_factory):
    os.environ["RADIAL_STUDIO_OUTPUTS"] = str(tmp_path_factory.mktemp("outputs"))


@pytest.fixture(scope="session")
def tiny_preset():
    from engine.presets import load_preset

    return load_preset("tiny-wan")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_preset):
    from engine.models import get_pipeline

    return get_pipeline(tiny_preset)
