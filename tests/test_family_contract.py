"""The model-family contract: a new family is its module, its preset and one registry line.

`tests/families/echo.py` is a test-only family on the Wan2.1 architecture with another name.
Registered through RADIAL_STUDIO_FAMILIES and given a preset in a private presets folder, it runs
generate, length-extension training and TTA through the CLI with nothing else changed.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ECHO = "echo=tests.families.echo"


@pytest.fixture(scope="module")
def echo_env(tmp_path_factory):
    """The environment of a process that knows the echo family and its tiny-echo preset."""
    from engine.presets import PRESETS_DIR

    presets = tmp_path_factory.mktemp("presets")
    for p in PRESETS_DIR.glob("*.json"):
        shutil.copy(p, presets / p.name)
    data = json.loads((PRESETS_DIR / "tiny-wan.json").read_text())
    data.update(name="tiny-echo", family="echo", description="test-only family")
    (presets / "tiny-echo.json").write_text(json.dumps(data))
    env = {**os.environ, "RADIAL_STUDIO_PRESETS": str(presets), "RADIAL_STUDIO_FAMILIES": ECHO,
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return env


def _cli(env, *args, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_a_new_family_generates_trains_and_adapts_through_the_cli(echo_env, tmp_path):
    from engine.video import read_mp4

    out = _cli(echo_env, "generate", "--preset", "tiny-echo", "--prompt", "a red circle", "--out",
               str(tmp_path / "g.mp4"), "--steps", "2", "--quiet").stdout
    record = json.loads(out)
    assert record["family"] == "echo" and read_mp4(tmp_path / "g.mp4")[0].shape[0] == 17

    data, run = tmp_path / "data", tmp_path / "run"
    _cli(echo_env, "data", "create", "--output_dir", str(data), "--num_samples", "3", "--preset", "tiny-echo")
    _cli(echo_env, "train", "--preset", "tiny-echo", "--data_dir", str(data), "--output_dir", str(run),
         "--max_steps", "2", "--validation_steps", "2", "--checkpointing_steps", "2", "--sample_steps", "0", "--quiet")
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 2
    assert json.loads((run / "config.json").read_text())["preset"] == "tiny-echo"
    assert (run / "final" / "pytorch_lora_weights.safetensors").is_file()
    assert (run / "final" / "lora_comfyui.safetensors").is_file()

    clip = tmp_path / "clip.mp4"
    from engine.data.synthetic import render_clip
    from engine.video import write_mp4

    write_mp4(render_clip(1, 65, 64, 64).frames, clip, fps=8)
    _cli(echo_env, "tta", "--video", str(clip), "--preset", "tiny-echo", "--output_dir", str(tmp_path / "tta"),
         "--steps", "1", "--rank", "2", "--sample_steps", "1", "--no_lpips", "--quiet")
    metrics = json.loads((tmp_path / "tta" / "metrics.json").read_text())
    assert metrics["preset"] == "tiny-echo" and metrics["continuation"] == "replacement"
    assert json.loads((tmp_path / "tta" / "config.json").read_text())["family"] == "echo"


def test_an_unregistered_family_is_refused_naming_the_known_ones(tmp_path):
    from engine.errors import ConfigError
    from engine.presets import load_preset, validate_preset

    data = {**load_preset("tiny-wan"), "family": "echo"}
    with pytest.raises(ConfigError, match=r"field 'family': 'echo' is not allowed; choose one of \[.*'wan'"):
        validate_preset(data)


def test_registry_entries_must_name_a_family(monkeypatch):
    from engine.errors import ConfigError
    from engine.models import family_named

    monkeypatch.setenv("RADIAL_STUDIO_FAMILIES", "broken")
    with pytest.raises(ConfigError, match="not 'name=package.module'"):
        family_named("wan")
    monkeypatch.setenv("RADIAL_STUDIO_FAMILIES", "other=tests.families.echo")
    with pytest.raises(ConfigError, match="must expose FAMILY, a ModelFamily named 'other'"):
        family_named("other")
    monkeypatch.setenv("RADIAL_STUDIO_FAMILIES", ECHO)
    assert family_named("echo").name == "echo"


def test_every_family_declares_its_capabilities():
    from engine.models import ModelFamily, family_named, family_names

    for name in family_names():
        fam = family_named(name)
        assert isinstance(fam, ModelFamily) and fam.name == name
        caps = fam.capabilities
        assert caps.can("generate") in (True, False) and set(caps.tta_objectives) <= {"diffusion", "continuation"}
        for mode in caps.continuation.values():
            assert mode.prefix in ("noised", "clean", "untouched")
            assert mode.uses_control or mode.prefix != "untouched"  # an untouched prefix reaches the model somehow
        assert fam.default_lora_targets() and set(fam.default_lora_targets()) <= set(fam.default_lora_targets(True))


def test_no_family_name_in_code_above_models():
    """Identifiers and string constants above engine/models/ never name a family (docstrings and comments may)."""
    import ast
    import re

    from engine.models import family_names
    from engine.models.registry import FAMILY_MODULES

    words = set(family_names()) | {m.rsplit(".", 1)[-1] for m in FAMILY_MODULES.values()}
    words |= {w for name in list(words) for w in name.split("_") if len(w) > 2}
    pattern = re.compile("|".join(sorted(map(re.escape, words))), re.I)
    hits = []
    for path in sorted((ROOT / "engine").rglob("*.py")):
        if path.relative_to(ROOT).parts[1] == "models":
            continue
        tree = ast.parse(path.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body
                and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            text = {ast.Name: "id", ast.Attribute: "attr", ast.alias: "name", ast.FunctionDef: "name",
                    ast.ClassDef: "name"}.get(type(node))
            text = getattr(node, text) if text else (
                node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
                else None)
            # the embedded default preset's name may appear
            if text and pattern.search(re.sub(r"tiny-[\w.-]+", "", text)):
                hits.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}: {text[:60]!r}")
    assert not hits, "\n".join(hits)


def test_import_layers_hold():
    """The import-linter contracts in pyproject.toml: layers point one way, no cycles, the UI only through engine.api."""
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.is_file():
        pytest.skip("lint-imports is not installed (pip install -r requirements-test.txt)")
    proc = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
