"""The Dataset tab's API (/dataset_view, /dataset_caption, /dataset_trigger_word) on a running app.

The view's numbers are the engine's (tests/data/test_dataset_view.py); here: what a client gets,
that thumbnails are served, that errors come back as messages without server paths, and that a
refused edit leaves the data root as it was.
"""

import httpx
import pytest
from gradio_client import Client

from tests.data.test_dataset_view import snapshot
from tests.data.test_mixed_dataset import write_mixed_folder


@pytest.fixture(scope="module")
def client(app_url):
    _, root = app_url
    (root / "data" / "clips").mkdir()
    write_mixed_folder(root / "data" / "clips")
    return Client(app_url[0], verbose=False)


def _view(client):
    return client.predict("clips", "tiny-wan", api_name="/dataset_view")


def test_the_view_lists_every_clip_with_its_bucket_and_skip_reason(client, app_url):
    url, root = app_url
    summary, gallery, table, clip, caption, trigger, record = _view(client)
    assert "5 clips, 3 used, 2 skipped" in summary and "48x80 (1)" in summary
    rows = {r[0]: r for r in table["data"]}
    assert rows["ucf.mp4"][1:7] == [70, "240x320", "8", "48x80", 1, "validation"]
    assert rows["short.mp4"][6:] == ["skipped", "too short: 20 frames; needs at least 33 (the run's "
                                                "extended_num_frames)"]
    assert clip["value"] == "long.mp4" and caption == "a long clip, moving right" and trigger == ""
    assert len(gallery) == 5 and all(item["image"].endswith(".png") for item in gallery)
    assert "thumbnail" not in record["clips"][0] and str(root) not in str(record)
    # the thumbnails are served from the outputs folder; the clips themselves are not
    png = next((root / "outputs" / "thumbnails").glob("*.png"))
    assert httpx.get(f"{url}gradio_api/file={png}").status_code == 200
    assert httpx.get(f"{url}gradio_api/file={root / 'data' / 'clips' / 'ucf.txt'}").status_code in (403, 404)


def test_a_caption_saved_through_the_api_changes_that_txt_only(client, app_url):
    _, root = app_url
    before = snapshot(root / "data")
    message = client.predict("clips", "nocap.mp4", "a clip that had no caption", api_name="/dataset_caption")
    assert "nocap.mp4" in message and "nocap.txt" in message
    after = snapshot(root / "data")
    assert after.pop("clips/nocap.txt")[0] == b"a clip that had no caption\n" and after == before
    rows = {r[0]: r for r in _view(client)[2]["data"]}
    assert rows["nocap.mp4"][6:] == ["train", "a clip that had no caption"]


def test_the_trigger_word_is_saved_and_shown_in_the_trained_prompts(client, app_url):
    _, root = app_url
    assert "sks" in client.predict("clips", "sks", api_name="/dataset_trigger_word")
    assert (root / "data" / "clips" / "dataset.toml").read_text() == 'trigger_word = "sks"\n'
    summary, _, table, *_ = _view(client)
    assert "trigger word `sks`" in summary
    assert {r[0]: r[7] for r in table["data"]}["long.mp4"] == "sks, a long clip, moving right"
    client.predict("clips", "", api_name="/dataset_trigger_word")


@pytest.mark.parametrize("endpoint, args, message", [
    ("/dataset_view", ("../clips", "tiny-wan"), "contains '..'"),
    ("/dataset_view", ("nowhere", "tiny-wan"), "'nowhere' does not exist under the data root"),
    ("/dataset_view", ("clips", "tiny-opensora2"), "tiny-opensora2 is not in the list of choices"),
    ("/dataset_caption", ("clips", "ghost.mp4", "x"), "no clip 'ghost.mp4' in this folder"),
    ("/dataset_caption", ("/etc", "passwd", "x"), "is an absolute path"),
    ("/dataset_trigger_word", ("clips", "sks\ndog"), "newline or another control character"),
])
def test_a_bad_input_comes_back_as_a_message_without_server_paths_and_changes_nothing(client, app_url, endpoint,
                                                                                      args, message):
    _, root = app_url
    before = snapshot(root / "data")
    with pytest.raises(Exception) as info:
        client.predict(*args, api_name=endpoint)
    assert message in str(info.value) and str(root) not in str(info.value) and "/tmp/" not in str(info.value)
    assert snapshot(root / "data") == before
