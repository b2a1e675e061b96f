"""Starting the app: a busy port is a clear error naming the flag, not Gradio's traceback."""

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_busy_port_names_the_flag_to_change(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, capture_output=True,
                                text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "GRADIO_ANALYTICS_ENABLED": "False",
                                                             "RADIAL_STUDIO_RUNS": str(tmp_path / "runs"),
                                                             "HOME": str(tmp_path)})
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "pass --port N" in result.stderr
    assert "Traceback" not in result.stderr and "server_port" not in result.stderr
