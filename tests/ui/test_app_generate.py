import socket

import pytest
from gradio_client import Client

from engine.video import read_mp4


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client():
    from app import build_app
    from engine.paths import outputs_dir

    demo = build_app("tiny-wan")
    port = _free_port()
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port,
                        allowed_paths=[str(outputs_dir())], quiet=True)
    yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    demo.close()


def test_generate_endpoint_returns_a_playable_mp4(client):
    video, info = client.predict("tiny-wan", "a yellow star bounces", "", 9, 64, 64, 2, 5.0, 1, api_name="/generate")
    path = video["video"] if isinstance(video, dict) else video
    frames, _ = read_mp4(path)
    assert frames.shape == (9, 64, 64, 3)
    assert info["num_frames"] == 9 and info["preset"] == "tiny-wan"


@pytest.mark.parametrize(
    "args, match",
    [
        (("tiny-wan", "a cat", "", 16, 64, 64, 2, 5.0, 0), "13 or 17"),
        (("tiny-wan", "a cat", "", 9, 100, 100, 2, 5.0, 0), "96 or 112"),
        (("tiny-wan", "", "", 9, 64, 64, 2, 5.0, 0), "prompt is empty"),
        (("no-such", "a cat", "", 9, 64, 64, 2, 5.0, 0), "no-such is not in the list of choices"),
    ],
)
def test_bad_inputs_show_errors_and_app_stays_up(client, args, match):
    with pytest.raises(Exception, match=match):
        client.predict(*args, api_name="/generate")
    video, _ = client.predict("tiny-wan", "still up", "", 5, 64, 64, 1, 5.0, 0, api_name="/generate")
    assert read_mp4(video["video"] if isinstance(video, dict) else video)[0].shape[0] == 5


@pytest.mark.parametrize("preset", ["tiny-wan2.2-a14b", "tiny-wan2.2-ti2v-5b", "tiny-hunyuanvideo",
                                    "tiny-hunyuanvideo-1.5"])
def test_every_family_generates_through_gradio_client(client, preset):
    video, info = client.predict(preset, "a red ball bounces", "", 9, 64, 64, 2, 5.0, 0, api_name="/generate")
    frames, _ = read_mp4(video["video"] if isinstance(video, dict) else video)
    assert frames.shape == (9, 64, 64, 3) and info["preset"] == preset


def test_low_noise_guidance_is_the_last_optional_input(client):
    """guidance_scale_2 rides as the 10th input: a two-expert preset takes it, a 9-argument call keeps the
    preset's value, and a one-transformer preset refuses it with the engine's message."""
    _, info = client.predict("tiny-wan2.2-a14b", "a red ball", "", 5, 32, 32, 1, 5.0, 0, 4.5, api_name="/generate")
    assert info["guidance_scale_2"] == 4.5
    _, info = client.predict("tiny-wan2.2-a14b", "a red ball", "", 5, 32, 32, 1, 5.0, 0, api_name="/generate")
    assert info["guidance_scale_2"] == 3.0  # the preset's (Wan2.2's own 3.0 for the low-noise expert)
    with pytest.raises(Exception, match="guidance_scale_2 must be unset"):
        client.predict("tiny-wan", "a cat", "", 5, 64, 64, 1, 5.0, 0, 3.0, api_name="/generate")
    _, info = client.predict("tiny-wan", "still up", "", 5, 64, 64, 1, 5.0, 0, None, api_name="/generate")
    assert info["guidance_scale_2"] is None


def test_the_low_noise_guidance_field_shows_for_two_expert_presets_only():
    from ui.generate_tab import on_preset_change

    *_, field = on_preset_change("tiny-wan2.2-a14b")
    assert field["visible"] is True and field["value"] == 3.0
    *_, field = on_preset_change("tiny-wan")
    assert field["visible"] is False and field["value"] is None
