import json
import os
import subprocess
import sys
from pathlib import Path

from engine.video import read_mp4

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ}, timeout=300)


def test_cli_generate_writes_mp4(tmp_path):
    out = tmp_path / "cli.mp4"
    proc = _run("generate", "--preset", "tiny-wan", "--prompt", "a blue square spins", "--out", str(out),
                "--num_frames", "9", "--steps", "2", "--seed", "3", "--pattern", "dense")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["video"] == str(out) and summary["frames"] == 9 and summary["attention"]["pattern"] == "dense"
    assert read_mp4(out)[0].shape == (9, 64, 64, 3)


def test_cli_bad_frame_count_is_a_clear_error(tmp_path):
    proc = _run("generate", "--prompt", "x", "--num_frames", "16", "--out", str(tmp_path / "x.mp4"))
    assert proc.returncode == 2
    assert "num_frames=16" in proc.stderr and "13 or 17" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.mp4").exists()
