"""engine.hub: push a run's adapter with its model card, pull it back by Hub id.

Every test talks to the local Hub-compatible server of tests/hub_server.py (HF_ENDPOINT), never
the internet. The adapter is a real LoRA on the tiny model, saved by engine.lora.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from engine.errors import InputError
from engine.hub import (CARD_NAME, LOSS_PLOT_NAME, SAMPLE_VIDEO_NAME, TRAINING_CONFIG_NAME, HubError,
                        build_model_card, find_adapter, parse_hub_ref, push_adapter, resolve_adapter, resolve_token)
from engine.lora import COMFY_WEIGHT_NAME, DIFFUSERS_WEIGHT_NAME
from tests.hub_server import FakeHub
from tests.run_factory import make_finished_run, write_events

TOKEN = "hf_TestTokenAlice0123456789abcdef"
BOB_TOKEN = "hf_TestTokenBob0123456789abcdefgh"
BAD_TOKEN = "hf_BadToken9876543210zyxwvutsrqp"
PUSHED = {DIFFUSERS_WEIGHT_NAME, COMFY_WEIGHT_NAME, TRAINING_CONFIG_NAME, CARD_NAME, LOSS_PLOT_NAME, SAMPLE_VIDEO_NAME}


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory, tiny_preset):
    """A finished tiny-wan run folder: final/ LoRA (both formats), config, events, a sample video."""
    return make_finished_run(tmp_path_factory.mktemp("hub") / "run", tiny_preset)


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The fake Hub, with huggingface_hub pointed at it, online, and no ambient token."""
    import huggingface_hub.constants as constants

    with FakeHub({TOKEN: "alice", BOB_TOKEN: "bob"}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest set it to 1 before import
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
        yield server


@pytest.fixture
def run_copy(adapter_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(adapter_run, dst)
    return dst


class _LogCapture:
    """Everything logged anywhere (huggingface_hub does not propagate to the root logger)."""

    NAMES = ("", "huggingface_hub", "httpx", "httpx2", "engine", "urllib3")

    def __enter__(self):
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setLevel(logging.DEBUG)
        self.saved = []
        for name in self.NAMES:
            logger = logging.getLogger(name)
            self.saved.append((logger, logger.level))
            logger.addHandler(self.handler)
            logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc):
        for logger, level in self.saved:
            logger.removeHandler(self.handler)
            logger.setLevel(level)

    @property
    def text(self) -> str:
        return self.stream.getvalue()


def _front_matter(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n")
    _, front, body = card.split("---\n", 2)
    return yaml.safe_load(front), body


# ---------------------------------------------------------------------------- push


def test_push_sends_exactly_the_adapter_files_and_card(hub, adapter_run):
    before = _snapshot(adapter_run)
    progress = []
    result = push_adapter(adapter_run, "alice/radial-lora", token=TOKEN, progress=lambda f, m: progress.append((f, m)))

    repo = hub.repos["alice/radial-lora"]
    assert repo.private is True  # private by default
    commits = repo.history()
    assert len(commits) == 2  # the repo's initial commit + ours
    commit = commits[-1]
    assert set(commit.added) == PUSHED
    assert result["commit_oid"] == commit.oid and result["commit_url"].endswith(f"/alice/radial-lora/commit/{commit.oid}")
    assert result["revision"] == "main" and result["private"] is True and set(result["files"]) == PUSHED
    assert Path(result["adapter"]) == adapter_run / "final"
    assert progress[0][0] == 0.0 and progress[-1] == (1.0, "done")
    assert [f for f, _ in progress] == sorted(f for f, _ in progress)

    final = adapter_run / "final"
    assert commit.added[DIFFUSERS_WEIGHT_NAME] == (final / DIFFUSERS_WEIGHT_NAME).read_bytes()
    assert commit.added[COMFY_WEIGHT_NAME] == (final / COMFY_WEIGHT_NAME).read_bytes()
    config = json.loads((adapter_run / "config.json").read_text())
    published = json.loads(commit.added[TRAINING_CONFIG_NAME])
    assert published == {**config, "output_dir": "run", "data_dir": "tiny"}  # local paths by folder name only
    assert commit.added[SAMPLE_VIDEO_NAME] == (adapter_run / "samples/step-000010/extended.mp4").read_bytes()
    from PIL import Image

    plot = Image.open(io.BytesIO(commit.added[LOSS_PLOT_NAME]))
    assert plot.format == "PNG" and plot.size[0] >= 400

    card = commit.added[CARD_NAME].decode()
    assert hub.yaml_validated == [card]  # huggingface_hub validated the card's YAML before uploading
    front, body = _front_matter(card)
    # tiny-wan's source is the embedded model, not a Hub repo: no base_model id, a note instead.
    assert "base_model" not in front and "tiny-wan" in front["base_model_note"]
    assert front["library_name"] == "diffusers" and front["pipeline_tag"] == "text-to-video"
    assert front["license"] == "apache-2.0"
    assert {"lora", "text-to-video", "radial-attention"} <= set(front["tags"])
    assert 'load_lora_weights("alice/radial-lora", weight_name="pytorch_lora_weights.safetensors")' in body
    assert "--lora_checkpoint_dir alice/radial-lora" in body
    for row in ("| attention pattern | radial |", "| dense_layers | 1 |", "| dense_timesteps | 1 |",
                "| decay_factor | 1.0 |", "| block_size | 16 |", "| frames (base -> extended) | 17 -> 33 |",
                "| lora_rank / lora_alpha | 8 / 8 |", "| steps trained | 10 |", "| adapter | `final` |"):
        assert row in body, row
    assert f"{hub.url}/alice/radial-lora/resolve/main/{LOSS_PLOT_NAME}" in body
    assert f'<video controls autoplay loop muted src="{hub.url}/alice/radial-lora/resolve/main/{SAMPLE_VIDEO_NAME}">' in body
    assert _snapshot(adapter_run) == before  # nothing written locally


def test_card_names_a_hub_base_model(adapter_run, tmp_path):
    run = tmp_path / "run14"
    shutil.copytree(adapter_run / "final", run / "final")
    config = json.loads((adapter_run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "preset": "wan2.1-t2v-1.3b", "base_num_frames": 69,
                                                  "extended_num_frames": 161, "height": 480, "width": 832}))
    (run / "events.jsonl").write_text("")
    card = build_model_card(run, "alice/wan-lora")
    front, body = _front_matter(card)
    assert front["base_model"] == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers" and "base_model_note" not in front
    assert front["license"] == "apache-2.0" and front["pipeline_tag"] == "text-to-video"
    assert 'WanPipeline.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", torch_dtype=torch.bfloat16)' in body
    assert "num_frames=161" in body and "69 -> 161" in body
    assert "Training loss" not in body and "<video" not in body  # no events, no samples: no broken links


def test_push_again_adds_a_commit_with_only_what_changed(hub, run_copy):
    first = push_adapter(run_copy, "alice/again", token=TOKEN)
    write_events(run_copy, range(11, 16), (15,))  # training went on: new losses, new card and plot
    second = push_adapter(run_copy, "alice/again", token=TOKEN)
    history = hub.repos["alice/again"].history()
    assert [c.oid for c in history[-2:]] == [first["commit_oid"], second["commit_oid"]]
    assert history[-1].parent == first["commit_oid"]
    assert set(history[-1].added) == {CARD_NAME, LOSS_PLOT_NAME}  # unchanged weights are not sent again
    assert "| steps trained | 15 |" in history[-1].tree[CARD_NAME].decode()
    third = push_adapter(run_copy, "alice/again", token=TOKEN)  # nothing changed: no empty commit
    assert third["commit_oid"] == second["commit_oid"] and len(hub.repos["alice/again"].history()) == 3


def test_push_public_from_the_cli_with_hf_token(hub, adapter_run, monkeypatch, capsys):
    from engine.cli import main

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["push", "--run", str(adapter_run), "--repo_id", "alice/public-lora", "--public"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert hub.repos["alice/public-lora"].private is False and result["private"] is False
    assert result["commit_oid"] == hub.repos["alice/public-lora"].history()[-1].oid
    assert "[100%] done" in err and TOKEN not in out + err
    # pushing again (default private=True) keeps an existing repo's visibility, and says so
    assert push_adapter(adapter_run, "alice/public-lora")["private"] is False


def test_push_to_a_branch(hub, adapter_run):
    result = push_adapter(adapter_run, "alice/branchy", token=TOKEN, revision="exp")
    repo = hub.repos["alice/branchy"]
    assert repo.branches["exp"] == result["commit_oid"] and repo.branches["main"] != result["commit_oid"]
    assert "/resolve/exp/loss.png" in repo.resolve("exp").tree[CARD_NAME].decode()


def test_bad_token_is_a_clear_error_and_changes_nothing(hub, adapter_run, capsys):
    from engine.cli import main

    before = _snapshot(adapter_run)
    with pytest.raises(HubError) as info:
        push_adapter(adapter_run, "alice/nope", token=BAD_TOKEN)
    msg = str(info.value)
    assert "rejected the token (401 Unauthorized)" in msg
    assert "HF_TOKEN" in msg and "hf auth login" in msg and "huggingface.co/settings/tokens" in msg
    assert BAD_TOKEN not in msg and info.value.__cause__ is None and info.value.__suppress_context__
    assert "alice/nope" not in hub.repos and _snapshot(adapter_run) == before

    assert main(["push", "--run", str(adapter_run), "--repo_id", "alice/nope", "--token", BAD_TOKEN]) == 2
    out, err = capsys.readouterr()
    assert "error: Cannot push to 'alice/nope': the Hub" in err and "rejected the token" in err
    assert "Traceback" not in err and BAD_TOKEN not in out + err


def test_pushing_to_someone_elses_namespace_is_forbidden(hub, adapter_run):
    with pytest.raises(HubError, match="403|rights|write access"):
        push_adapter(adapter_run, "bob/not-yours", token=TOKEN)
    assert "bob/not-yours" not in hub.repos


def _closed_port() -> int:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub_is_a_clear_error_and_changes_nothing(hub, adapter_run):
    port = _closed_port()
    before = _snapshot(adapter_run)
    start = time.perf_counter()
    with pytest.raises(HubError, match="could not be reached") as info:
        push_adapter(adapter_run, "alice/offline", token=TOKEN, endpoint=f"http://127.0.0.1:{port}")
    assert time.perf_counter() - start < 20
    assert f"127.0.0.1:{port}" in str(info.value) and "Nothing was changed locally" in str(info.value)
    assert TOKEN not in str(info.value) and _snapshot(adapter_run) == before


def test_no_token_anywhere_says_how_to_get_one(hub, adapter_run):
    with pytest.raises(HubError, match="No Hugging Face token found.*HF_TOKEN.*hf auth login"):
        push_adapter(adapter_run, "alice/x", token="  ")
    assert not hub.requests


def test_token_resolution_order(hub, monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    login = tmp_path / "login" / "token"
    login.parent.mkdir()
    login.write_text("hf_FromCachedLogin000000000000")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(login))
    assert resolve_token(None) == "hf_FromCachedLogin000000000000"
    monkeypatch.setenv("HF_TOKEN", "hf_FromEnvironment0000000000000")
    assert resolve_token(None) == "hf_FromEnvironment0000000000000"
    assert resolve_token(" hf_FromTheField ") == "hf_FromTheField"


def test_bad_repo_id_and_missing_adapter_are_input_errors(hub, adapter_run, tmp_path):
    with pytest.raises(InputError, match="user/name"):
        push_adapter(adapter_run, "no-namespace", token=TOKEN)
    with pytest.raises(InputError, match="user/name"):
        push_adapter(adapter_run, "alice/x@main", token=TOKEN)
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(InputError, match="holds no adapter"):
        push_adapter(tmp_path / "empty-run", "alice/x", token=TOKEN)
    assert not hub.requests


def test_a_bare_adapter_folder_gets_a_comfy_export(hub, adapter_run, tmp_path):
    from safetensors.torch import load, load_file

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(adapter_run / "final" / DIFFUSERS_WEIGHT_NAME, bare)
    push_adapter(bare, "alice/bare", token=TOKEN)
    added = hub.repos["alice/bare"].history()[-1].added
    assert set(added) == {DIFFUSERS_WEIGHT_NAME, COMFY_WEIGHT_NAME, CARD_NAME}
    made, saved = load(added[COMFY_WEIGHT_NAME]), load_file(adapter_run / "final" / COMFY_WEIGHT_NAME)
    assert made.keys() == saved.keys() and all(torch.equal(made[k], saved[k]) for k in made)
    assert list(bare.iterdir()) == [bare / DIFFUSERS_WEIGHT_NAME]


def test_find_adapter_falls_back_to_best_model_then_checkpoints(adapter_run, tmp_path):
    run = tmp_path / "r"
    shutil.copytree(adapter_run, run)
    shutil.move(run / "final", run / "checkpoints" / "step-000010" / "lora")
    (run / "checkpoints" / "step-000010" / "state.json").write_text("{}")
    assert find_adapter(run).adapter_dir == run / "checkpoints" / "step-000010" / "lora"
    shutil.copytree(run / "checkpoints" / "step-000010" / "lora", run / "best_model")
    src = find_adapter(run)
    assert src.adapter_dir == run / "best_model" and src.run_dir == run and src.config["seed"] == 7
    assert find_adapter(run / "best_model").run_dir == run  # an adapter folder inside a run: the run's files
    assert src.sample == run / "samples" / "step-000010" / "extended.mp4"


# ---------------------------------------------------------------------------- the token never leaks


def test_the_token_appears_in_no_file_log_or_error(hub, run_copy, tmp_path, capsys):
    import huggingface_hub.constants as constants

    with _LogCapture() as logs:
        push_adapter(run_copy, "alice/secret", token=TOKEN, progress=lambda f, m: logging.getLogger("engine").info(m))
        resolve_adapter("alice/secret", token=TOKEN)
        errors = []
        for call in (lambda: push_adapter(run_copy, "alice/secret", token=BAD_TOKEN),
                     lambda: resolve_adapter("alice/not-pulled-yet", token=BAD_TOKEN),
                     lambda: push_adapter(run_copy, "bob/secret", token=TOKEN)):
            with pytest.raises(HubError) as info:
                call()
            errors.append(info.value)
    assert "alice/secret" in logs.text  # the capture works
    out, err = capsys.readouterr()
    for secret in (TOKEN, BAD_TOKEN):
        assert secret not in logs.text and secret not in out + err
        for e in errors:
            assert secret not in str(e) and secret not in repr(e.args)
        for folder in (run_copy, Path(constants.HF_HUB_CACHE)):
            for path in folder.rglob("*"):
                assert not path.is_file() or secret.encode() not in path.read_bytes(), path
        for commit in hub.repos["alice/secret"].commits.values():
            assert all(secret.encode() not in data for data in commit.tree.values())


# ---------------------------------------------------------------------------- pull


def _lora_a(transformer, adapter: str) -> torch.Tensor:
    return transformer.blocks[0].attn1.to_q.lora_A[adapter].weight.detach().clone()


def test_pull_by_id_and_by_revision_loads_into_a_pipeline(hub, run_copy, tiny_pipe, monkeypatch, capsys):
    from safetensors.torch import load_file

    from engine.lora import load_lora_into_pipeline

    first = push_adapter(run_copy, "alice/pull-me", token=TOKEN)
    write_events(run_copy, range(11, 13), ())
    push_adapter(run_copy, "alice/pull-me", token=TOKEN)

    latest = resolve_adapter("alice/pull-me", token=TOKEN)
    assert sorted(p.name for p in latest.iterdir()) == sorted([DIFFUSERS_WEIGHT_NAME, CARD_NAME, TRAINING_CONFIG_NAME])
    assert "| steps trained | 12 |" in (latest / CARD_NAME).read_text()
    pinned = resolve_adapter(f"alice/pull-me@{first['commit_oid']}", token=TOKEN)
    assert pinned != latest and "| steps trained | 10 |" in (pinned / CARD_NAME).read_text()

    from engine.cli import main

    assert main(["pull", "--adapter", f"alice/pull-me@{first['commit_oid']}", "--token", TOKEN]) == 0
    assert Path(json.loads(capsys.readouterr().out)["folder"]) == pinned

    # Offline (or with a refused token), an adapter pulled before comes from the local cache.
    assert resolve_adapter("alice/pull-me", endpoint=f"http://127.0.0.1:{_closed_port()}") == latest

    saved = load_file(run_copy / "final" / DIFFUSERS_WEIGHT_NAME)["transformer.blocks.0.attn1.to_q.lora_A.weight"]
    from engine.models.wan import FAMILY

    monkeypatch.setenv("HF_TOKEN", TOKEN)  # resolve_adapter takes the token from the env
    for ref in ("alice/pull-me", f"alice/pull-me@{first['commit_oid']}", "alice/pull-me@main"):
        name = load_lora_into_pipeline(tiny_pipe, resolve_adapter(ref), FAMILY)
        try:
            assert torch.equal(_lora_a(tiny_pipe.transformer, name), saved)
        finally:
            tiny_pipe.unload_lora_weights()


def test_pull_errors_are_clear(hub, adapter_run):
    push_adapter(adapter_run, "alice/private-lora", token=TOKEN)
    with pytest.raises(HubError, match="not found.*or it is private"):
        resolve_adapter("alice/private-lora")  # no token: a private repo is invisible
    with pytest.raises(HubError, match="not found.*or it is private"):
        resolve_adapter("alice/private-lora", token=BOB_TOKEN)
    with pytest.raises(HubError, match="no such revision"):
        resolve_adapter("alice/private-lora@nope", token=TOKEN)
    with pytest.raises(InputError, match="neither a local folder nor a Hub id"):
        resolve_adapter("./not/here")
    assert resolve_adapter(adapter_run / "final") == adapter_run / "final"  # a folder passes through


@pytest.mark.parametrize("rev", ["../../..", "main/../../x", "/etc", ".hidden", "a//b", "ok/.."])
def test_revisions_that_could_leave_the_cache_are_refused_before_any_request(rev, tmp_path, adapter_run):
    endpoint = f"http://127.0.0.1:{_closed_port()}"  # nothing answers: the refusal comes first
    with pytest.raises(InputError, match="is not a branch, tag or commit name"):
        resolve_adapter(f"alice/lora@{rev}", endpoint=endpoint, cache_dir=tmp_path / "cache")
    with pytest.raises(InputError, match="is not a branch, tag or commit name"):
        push_adapter(adapter_run, "alice/lora", token=TOKEN, revision=rev, endpoint=endpoint)
    assert not (tmp_path / "cache").exists()
    assert parse_hub_ref("alice/lora@refs/pr/1") == ("alice/lora", "refs/pr/1")  # real refs still pass


def test_a_hub_server_error_is_reported_as_such_not_as_unreachable(hub, adapter_run):
    hub.fail_with = 500
    with pytest.raises(HubError, match=r"answered 500 \(a server error, not your request\)") as info:
        resolve_adapter("alice/never-pulled", token=TOKEN)
    assert "could not be reached" not in str(info.value)
    with pytest.raises(HubError, match="answered 500"):
        push_adapter(adapter_run, "alice/lora", token=TOKEN)


def test_a_two_expert_adapter_goes_up_and_comes_back_with_a_file_per_expert(hub, tmp_path, caplog):
    """Wan2.2 A14B: the per-expert stock and ComfyUI files are pushed (made from the engine's file where missing),
    pulled back, and load into the right expert."""
    from safetensors.torch import load, load_file

    from engine.config import config_from_preset
    from engine.jobs import atomic_write_json
    from engine.lora import add_lora, load_lora_into_pipeline, save_lora
    from engine.models import family
    from engine.presets import load_preset

    preset = load_preset("tiny-wan2.2-a14b")
    fam = family(preset)
    pipe = fam.build_tiny_pipeline(preset["tiny"])
    pair = fam.denoiser(pipe)
    add_lora(pair, 4, 4, 0.0, ["to_q", "to_v"], seed=0)
    with torch.no_grad():
        for name, p in pair.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(name)))
    run = tmp_path / "run"
    save_lora(pair, run / "final", fam)
    atomic_write_json(run / "config.json", config_from_preset("tiny-wan2.2-a14b", output_dir=str(run),
                                                              data_dir="data/tiny").to_dict())
    stock = {f"pytorch_lora_weights_{e}_noise.safetensors" for e in ("high", "low")}
    comfy = {f"lora_comfyui_{e}_noise.safetensors" for e in ("high", "low")}

    push_adapter(run, "alice/a14b", token=TOKEN)
    added = hub.repos["alice/a14b"].history()[-1].added
    assert set(added) == {DIFFUSERS_WEIGHT_NAME, *stock, *comfy, TRAINING_CONFIG_NAME, CARD_NAME}
    assert all(added[n] == (run / "final" / n).read_bytes() for n in stock | comfy)
    assert "lora_comfyui_low_noise.safetensors" in added[CARD_NAME].decode()

    bare = tmp_path / "bare"  # no ComfyUI files: they are made from the engine's file, equal to the saved ones
    (bare / "final").mkdir(parents=True)
    shutil.copy(run / "config.json", bare)
    for name in (DIFFUSERS_WEIGHT_NAME, *stock):
        shutil.copy(run / "final" / name, bare / "final")
    push_adapter(bare, "alice/a14b-bare", token=TOKEN)
    made = hub.repos["alice/a14b-bare"].history()[-1].added
    for name in comfy:
        a, b = load(made[name]), load_file(run / "final" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    pulled = resolve_adapter("alice/a14b", token=TOKEN)
    assert {p.name for p in pulled.iterdir()} == {DIFFUSERS_WEIGHT_NAME, *stock, CARD_NAME, TRAINING_CONFIG_NAME}
    fresh = fam.build_tiny_pipeline(preset["tiny"])
    name = load_lora_into_pipeline(fresh, pulled, fam)
    for expert, module in (("high_noise", fresh.transformer), ("low_noise", fresh.transformer_2)):
        saved = load_file(run / "final" / DIFFUSERS_WEIGHT_NAME)[f"{expert}.blocks.0.attn1.to_q.lora_A.weight"]
        assert torch.equal(_lora_a(module, name), saved), expert
