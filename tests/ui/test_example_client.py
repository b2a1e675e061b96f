"""examples/client.py (documented in the README) runs a full train -> compare cycle."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_example_client_trains_and_compares(app_url):
    url, root = app_url
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "client.py"), "--url", url, "--steps", "6"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["side_by_side"].endswith(".mp4") and summary["adapter"].endswith("final")
    for key in ("side_by_side", "base", "extended"):  # the downloaded copies, not the server's files
        assert Path(summary[key]).is_file() and not Path(summary[key]).resolve().is_relative_to(Path(root).resolve())
