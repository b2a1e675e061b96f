"""Docker image and Spaces deployment: the Dockerfile's essentials, the Space README, ZeroGPU helpers.

`docker build` runs only where a Docker daemon answers (marked slow: it installs torch).
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    out, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            word, _, args = current.partition(" ")
            out.append((word.upper(), args.strip()))
            current = ""
    return out


def _dockerignore() -> list[str]:
    return [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, p.lstrip("/")) or fnmatch.fnmatch(path.split("/")[0], p.lstrip("/"))
               for p in patterns if not p.startswith("!"))


def test_dockerfile_essentials():
    ins = _instructions()
    kinds = [k for k, _ in ins]
    base = dict(ins)["FROM"]
    assert base.startswith("nvidia/cuda:") and "-runtime-" in base, base  # a CUDA runtime base
    assert any(k == "RUN" and "python3.11" in a for k, a in ins)  # with Python 3.11
    useradd = next(a for k, a in ins if k == "RUN" and "useradd" in a)
    assert "--uid 1000" in useradd or "-u 1000" in useradd
    user = shlex.split(useradd)[-1]
    users = [a for k, a in ins if k == "USER"]
    assert users and users[-1] == user != "root"
    assert kinds.index("CMD") > len(kinds) - 1 - kinds[::-1].index("USER")  # the app runs as the user
    assert ("EXPOSE", "7860") in ins
    cmd = [a for k, a in ins if k == "CMD"]
    assert len(cmd) == 1 and json.loads(cmd[0]) == ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]
    env = " ".join(a for k, a in ins if k == "ENV")
    assert "HOME=/home/user" in env and "RADIAL_STUDIO_CACHE=/home/user/" in env and "HF_HOME=/home/user/" in env
    assert any(k == "RUN" and "pip install -r requirements.txt" in a for k, a in ins)


def test_every_file_the_dockerfile_copies_exists_and_is_in_the_build_context():
    patterns = _dockerignore()
    copies = [a for k, a in _instructions() if k in ("COPY", "ADD")]
    assert copies
    for args in copies:
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        assert not any(p.startswith("--from") for p in shlex.split(args))
        for src in parts[:-1]:
            assert (ROOT / src).exists(), f"Dockerfile copies '{src}', which does not exist"
            assert not _ignored(src, patterns), f"Dockerfile copies '{src}', which .dockerignore excludes"
    for needed in ("app.py", "engine", "ui", "presets", "requirements.txt"):
        assert any(needed in shlex.split(a) for a in copies), needed


def test_dockerignore_keeps_runs_caches_and_tests_out():
    patterns = _dockerignore()
    for path in ("runs", "outputs", ".cache", ".pytest_cache", ".venv", "tests", ".git", "engine/__pycache__",
                 "runs/x/final/pytorch_lora_weights.safetensors", "out.mp4"):
        assert _ignored(path, patterns), path
    for path in ("app.py", "engine", "ui", "presets", "requirements.txt"):
        assert not _ignored(path, patterns), path


def test_space_readme_front_matter():
    text = (ROOT / "docs" / "space_README.md").read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n", 2)[1])
    assert front["sdk"] == "docker" and front["app_port"] == 7860
    assert front["suggested_hardware"] in ("l40sx1", "l4x1", "a10g-large", "a100-large")
    assert front["hf_oauth"] is True and {"write-repos", "manage-repos"} <= set(front["hf_oauth_scopes"])
    assert len(front["short_description"]) <= 60 and front["license"] == "apache-2.0"
    docs = (ROOT / "docs" / "spaces.md").read_text()
    for needed in ("docker run", "ZeroGPU", "hf_oauth", "HF_TOKEN", "training_supported", "python -m engine push"):
        assert needed in docs, needed


def _docker_daemon() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client on this machine"
    proc = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    return None if proc.returncode == 0 else "no Docker daemon answers `docker info`"


@pytest.mark.slow
def test_docker_build():
    reason = _docker_daemon()
    if reason:
        pytest.skip(f"docker build not run: {reason}")
    proc = subprocess.run(["docker", "build", "-t", "radial-studio:test", str(ROOT)], capture_output=True, text=True,
                          timeout=3600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    inspect = subprocess.run(["docker", "image", "inspect", "radial-studio:test"], capture_output=True, text=True)
    config = json.loads(inspect.stdout)[0]["Config"]
    assert config["User"] == "user" and "7860/tcp" in config["ExposedPorts"]
    assert config["Cmd"] == ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]


# ---------------------------------------------------------------------------- ZeroGPU helpers


@pytest.fixture
def fake_spaces(monkeypatch):
    """A stand-in for the `spaces` package: records what `spaces.GPU` was asked."""
    import engine.spaces_support as ss

    calls = []

    def GPU(duration=60):
        def wrap(func):
            def run(*args, **kwargs):
                calls.append(duration(*args, **kwargs) if callable(duration) else duration)
                return func(*args, **kwargs)

            return run

        return wrap

    monkeypatch.setattr(ss, "_spaces", types.SimpleNamespace(GPU=GPU))
    return calls


def test_gpu_task_is_a_no_op_without_spaces(monkeypatch):
    import engine.spaces_support as ss

    monkeypatch.setattr(ss, "_spaces", None)

    def work(x):
        return x + 1

    assert ss.gpu_task(120)(work) is work and ss.gpu_task(lambda x: 10)(work) is work


def test_gpu_task_asks_spaces_for_the_estimated_duration(fake_spaces):
    import engine.spaces_support as ss

    @ss.gpu_task(lambda n: 45 * n)
    def work(n):
        return n * 2

    assert work(2) == 4 and work(100) == 200
    assert fake_spaces == [90, ss.MAX_SECONDS]  # estimated, then clamped

    @ss.gpu_task(lambda n: 1 / 0)
    def broken(n):
        return n

    @ss.gpu_task(5)
    def fixed(n):
        return n

    assert broken(1) == 1 and fixed(1) == 1
    assert fake_spaces[2:] == [ss.DEFAULT_SECONDS, ss.MIN_SECONDS]


def test_generation_duration_estimates(tiny_preset):
    from engine.presets import load_preset
    from engine.spaces_support import MAX_SECONDS, MIN_SECONDS, generation_seconds

    small = load_preset("wan2.1-t2v-1.3b")
    big = load_preset("wan2.1-t2v-14b")
    assert generation_seconds(tiny_preset, 17, 64, 64, 4) == MIN_SECONDS
    short = generation_seconds(small, 81, 480, 832, 50)
    long = generation_seconds(small, 161, 480, 832, 50)
    assert MIN_SECONDS < short < long <= MAX_SECONDS
    assert generation_seconds(big, 81, 720, 1280, 50) == MAX_SECONDS


def test_training_is_refused_on_zero_gpu(monkeypatch):
    from engine.spaces_support import training_supported

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    ok, message = training_supported()
    assert not ok and "dedicated GPU hardware" in message and "Duplicate this Space" in message
    monkeypatch.delenv("SPACES_ZERO_GPU")
    ok, message = training_supported()
    assert ok


def test_spaces_support_imports_without_spaces():
    proc = subprocess.run([sys.executable, "-c", "import engine.spaces_support as s; print(s.spaces_module())"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "None", proc.stderr
