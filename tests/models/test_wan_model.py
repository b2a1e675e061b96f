import json

import pytest
import torch

from engine.errors import ModelLoadError
from engine.models import wan
from engine.presets import load_preset, validate_preset


def test_tiny_model_builds_saves_and_reloads_from_its_folder(tiny_preset, tmp_path):
    folder = wan.ensure_tiny_model(tiny_preset["tiny"])
    assert (folder / "model_index.json").is_file()
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert index["transformer"][1] == "WanTransformer3DModel" and index["vae"][1] == "AutoencoderKLWan"
    # A preset naming the folder loads it through the same path as a download.
    local = validate_preset({**load_preset("tiny-wan"), "source": str(folder), "tiny": None, "name": "local"})
    pipe = wan.load_pipeline(local, torch.device("cpu"))
    rebuilt = wan.build_tiny_pipeline(tiny_preset["tiny"])  # same seed -> same random weights
    for name, param in rebuilt.transformer.state_dict().items():
        assert torch.equal(param, pipe.transformer.state_dict()[name]), name
    assert pipe.transformer.config.attention_head_dim in (16, 32)
    assert pipe.tokenizer("a red circle").input_ids[-1] == pipe.tokenizer.eos_token_id


def test_token_layout_and_vae_roundtrip_shapes(tiny_pipe):
    layout = wan.token_layout(17, 64, 64)
    assert (layout.latent_frames, layout.latent_height, layout.latent_width) == (5, 8, 8)
    assert layout.tokens_per_frame == 16 and layout.num_tokens == 80
    video = torch.rand(1, 3, 17, 64, 64) * 2 - 1
    latents = wan.encode_video(tiny_pipe, video)
    assert latents.shape == (1, 16, 5, 8, 8)
    assert wan.layout_from_latents(latents.shape) == layout
    # Encoding the 9-frame prefix alone gives the first 3 latents (causal VAE).
    prefix = wan.encode_video(tiny_pipe, video[:, :, :9])
    torch.testing.assert_close(prefix, latents[:, :, :3], atol=1e-4, rtol=1e-4)
    decoded = wan.decode_latents(tiny_pipe, latents)
    assert decoded.shape == video.shape and decoded.abs().max() <= 1


def test_hub_id_offline_gives_instructions_not_a_stack_trace(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    preset = load_preset("wan2.1-t2v-1.3b")
    with pytest.raises(ModelLoadError) as info:
        wan.load_pipeline(preset, torch.device("cpu"))
    msg = str(info.value)
    assert "Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in msg and "hf download" in msg and "HF_HUB_OFFLINE" in msg


def test_missing_or_wrong_local_folder(tmp_path):
    base = load_preset("tiny-wan")
    with pytest.raises(ModelLoadError, match="does not exist"):
        wan.resolve_source({**base, "source": str(tmp_path / "nope")})
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        wan.resolve_source({**base, "source": str(tmp_path)})
