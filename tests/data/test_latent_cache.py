"""Latent cache: each clip is encoded once; base latents are the causal prefix of the extended ones."""

import json

import pytest
import torch

from engine.errors import InputError
from engine.models import wan
from engine.data.dataset import METADATA_FILE, create_synthetic_dataset, read_clip
from engine.data.latent_cache import (
    base_latents, build_latent_cache, clip_to_tensor, load_cached, load_cached_metadata,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return create_synthetic_dataset(tmp_path_factory.mktemp("cache-data") / "data", 2, seed=4)


@pytest.fixture
def encode_calls(monkeypatch):
    """Count VAE encodes made through the model family."""
    calls = []
    real = wan.WanFamily.encode_video

    def counting(self, pipe, video, *args, **kwargs):
        calls.append(tuple(video.shape))
        return real(self, pipe, video, *args, **kwargs)

    monkeypatch.setattr(wan.WanFamily, "encode_video", counting)
    return calls


def test_cache_encodes_each_clip_once(tiny_pipe, tiny_preset, dataset, tmp_path, encode_calls):
    progress = []
    paths = build_latent_cache(tiny_pipe, tiny_preset, dataset, cache_dir=tmp_path, progress=lambda d, t: progress.append((d, t)))
    assert len(paths) == 2 and all(p.is_file() and p.parent == tmp_path for p in paths)
    assert encode_calls == [(1, 3, 33, 64, 64)] * 2 and progress == [(1, 2), (2, 2)]
    mtimes = [p.stat().st_mtime_ns for p in paths]
    assert build_latent_cache(tiny_pipe, tiny_preset, dataset, cache_dir=tmp_path) == paths
    assert len(encode_calls) == 2 and [p.stat().st_mtime_ns for p in paths] == mtimes
    assert not list(tmp_path.glob(".*"))  # no temporary files left

    # A changed prompt is a different cache entry; the other clip is reused.
    entries = json.loads((dataset / METADATA_FILE).read_text())
    entries[1]["prompt"] += " slowly"
    edited = dataset.parent / "edited"
    edited.mkdir()
    (edited / "videos").symlink_to(dataset / "videos")
    (edited / METADATA_FILE).write_text(json.dumps(entries))
    new_paths = build_latent_cache(tiny_pipe, tiny_preset, edited, cache_dir=tmp_path)
    assert new_paths[0] == paths[0] and new_paths[1] != paths[1] and len(encode_calls) == 3


def test_cached_tensors_and_causal_base_latents(tiny_pipe, tiny_preset, dataset, tmp_path):
    path = build_latent_cache(tiny_pipe, tiny_preset, dataset, cache_dir=tmp_path)[0]
    cached = load_cached(path)
    assert cached["latents"].shape == (1, 16, 9, 8, 8) and cached["latents"].dtype == torch.float32
    assert cached["prompt_embeds"].shape == (1, 512, 32)
    assert cached["negative_prompt_embeds"].shape == (1, 512, 32)
    meta = load_cached_metadata(path)
    assert meta["video_id"] == "synthetic_00000" and meta["base_latent_frames"] == "5"
    assert meta["prompt"] == json.loads((dataset / METADATA_FILE).read_text())[0]["prompt"]
    # Wan's VAE is causal: the first 5 latent frames equal encoding the 17-frame base clip alone
    # (exact on the tiny model in float32; 1e-4 leaves room for other kernels).
    frames, _ = read_clip(dataset / "videos/synthetic_00000.mp4")
    alone = wan.encode_video(tiny_pipe, clip_to_tensor(frames[:17]))
    base = base_latents(cached["latents"], 17, wan.FAMILY)
    assert base.shape == (1, 16, 5, 8, 8)
    torch.testing.assert_close(base, alone, atol=1e-4, rtol=1e-4)
    pos, _ = wan.encode_prompt(tiny_pipe, meta["prompt"], "", guidance_scale=1.0)
    torch.testing.assert_close(cached["prompt_embeds"], pos.sequence.cpu())


def test_cache_refuses_an_invalid_dataset(tiny_pipe, tiny_preset, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / METADATA_FILE).write_text("[]")
    with pytest.raises(InputError, match="empty"):
        build_latent_cache(tiny_pipe, tiny_preset, tmp_path / "data", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_offload_encoders_moves_them_to_cpu(tiny_pipe):
    wan.FAMILY.offload_encoders(tiny_pipe)
    assert tiny_pipe.vae.device.type == "cpu" and tiny_pipe.text_encoder.device.type == "cpu"
