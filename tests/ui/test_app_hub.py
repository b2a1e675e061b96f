"""The Hub tab through gradio_client, against the local fake Hub."""

import shutil

import pytest
from gradio_client import Client

from tests.hub_server import FakeHub
from tests.run_factory import make_finished_run

TOKEN = "hf_AppTestToken0123456789abcdefgh"


@pytest.fixture(scope="module")
def fake_hub(monkeypatch_module, tmp_path_factory):
    import huggingface_hub.constants as constants

    with FakeHub({TOKEN: "carol"}) as server:
        monkeypatch_module.setenv("HF_ENDPOINT", server.url)
        monkeypatch_module.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch_module.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch_module.setattr(constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))
        monkeypatch_module.setattr(constants, "HF_TOKEN_PATH", str(tmp_path_factory.mktemp("nologin") / "token"))
        monkeypatch_module.delenv("HF_TOKEN", raising=False)
        yield server


def test_push_a_finished_run_and_pull_it_back(fake_hub, app_url, tiny_preset, tmp_path):
    url, root = app_url
    make_finished_run(root / "runs" / "20260101-000000-abcdef", tiny_preset)
    client = Client(url, verbose=False)
    result, message = client.predict("run:20260101-000000-abcdef/final", "carol/tiny-radial", TOKEN, False,
                                     api_name="/hub_push")
    assert result["repo_id"] == "carol/tiny-radial" and result["private"] is True
    assert "README.md" in result["files"] and "pytorch_lora_weights.safetensors" in result["files"]
    assert "carol/tiny-radial" in message and TOKEN not in message
    with pytest.raises(Exception, match="not found.*or it is private"):
        client.predict("carol/tiny-radial", "", api_name="/hub_pull")  # private: needs the token
    pulled = client.predict("carol/tiny-radial", TOKEN, api_name="/hub_pull")
    assert "pytorch_lora_weights.safetensors" in pulled["files"]
    with pytest.raises(Exception, match="401|token"):
        client.predict("run:20260101-000000-abcdef/final", "carol/tiny-radial", "hf_wrong_token_000000000000000",
                       False, api_name="/hub_push")
    # A public Hub adapter works in Compare too.
    public, _ = client.predict("run:20260101-000000-abcdef/final", "carol/tiny-public", TOKEN, True,
                               api_name="/hub_push")
    assert public["private"] is False
    composed, *_, info = client.predict("a cat", "tiny-wan", "carol/tiny-public", 5, 9, 1, 0, 1.0, 1, 1,
                                        api_name="/compare")
    assert info["adapter"] and composed
