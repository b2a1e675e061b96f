"""What the running app serves, and how (reliability and security issue, items 1 and 4)."""

import json

import httpx
import pytest
from gradio_client import Client, handle_file


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url[0], verbose=False)


def test_an_uploaded_page_is_refused_not_kept_and_the_error_shows_no_server_path(client, app_url, tmp_path):
    url, root = app_url
    evil = tmp_path / "evil.html"
    evil.write_text("<script>alert(document.cookie)</script>")
    with pytest.raises(Exception) as info:
        client.predict(handle_file(str(evil)), api_name="/tta_run")
    message = str(info.value)
    assert "evil.html" in message and "is not a video file" in message
    assert str(root) not in message and "/tmp/" not in message
    inputs = root / "runs" / "_inputs"
    assert not inputs.exists() or not any(inputs.rglob("*.html"))  # a rejected upload is not kept


def test_run_folders_serve_media_and_lora_files_only_never_as_a_page(app_url):
    url, root = app_url
    run = root / "runs" / "20260101-000000-abcdef"
    (run / "samples" / "step-000001").mkdir(parents=True)
    (run / "final").mkdir()
    (run / "samples" / "step-000001" / "extended.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    (run / "final" / "pytorch_lora_weights.safetensors").write_bytes(b"8\x00\x00\x00\x00\x00\x00\x00{}")
    for name in ("config.json", "job.log", "rng.pt", "page.html"):
        (run / name).write_text("{\"secret\": 1}")
    (root / "runs" / "_inputs" / "x").mkdir(parents=True)
    (root / "runs" / "_inputs" / "x" / "their.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    (root / "outputs" / "page.html").write_text("<script>1</script>")

    def get(path):
        return httpx.get(f"{url}gradio_api/file={path}")

    video = get(run / "samples" / "step-000001" / "extended.mp4")
    assert video.status_code == 200 and video.headers["content-type"].startswith("video/")
    assert video.headers["x-content-type-options"] == "nosniff" and video.headers["content-security-policy"] == "sandbox"
    lora = get(run / "final" / "pytorch_lora_weights.safetensors")
    assert lora.status_code == 200 and lora.headers["content-type"] == "application/octet-stream"
    assert lora.headers["content-disposition"] == "attachment"
    for hidden in (run / "config.json", run / "job.log", run / "rng.pt", run / "page.html",
                   root / "runs" / "_inputs" / "x" / "their.mp4", root / "outputs" / "page.html"):
        response = get(hidden)
        assert response.status_code == 404, (hidden, response.status_code)
        assert "secret" not in response.text and "script" not in response.text


def test_files_gradio_keeps_for_uploads_are_never_served_as_a_page(app_url, tmp_path):
    url, _ = app_url
    evil = tmp_path / "evil.html"
    evil.write_text("<script>alert(1)</script>")
    with open(evil, "rb") as f:
        uploaded = httpx.post(f"{url}gradio_api/upload", files={"files": ("evil.html", f, "text/html")}).json()[0]
    response = httpx.get(f"{url}gradio_api/file={uploaded}")
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == "attachment"
    assert response.headers["x-content-type-options"] == "nosniff"
