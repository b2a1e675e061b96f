"""Encode each training clip once: VAE latents + prompt embeddings in one safetensors file.

A cache file holds one training sample (engine.data.samples: a window of a clip at its bucket's
size) and is named by a hash of everything that determines its contents (see `cache_key`), so
editing a clip, its prompt, the bucket, the window or the model gives a new file, and unchanged
samples are reused across runs and datasets. Each file holds:

  latents                 [1, C, latent frames, h, w]  float32, as the family's `encode_video` gives them
  prompt_embeds           [1, seq, dim]  as the transformer consumes them (`TextEmbeds.sequence`; a family
                          with pooled embeddings or a mask adds `prompt_embeds.pooled` / `.mask`)
  negative_prompt_embeds  the same for the negative prompt

The base-length latents are the family's latent frames of the base clip, the first ones of the
same encoding (`base_latents`): the VAEs are causal in time, so encoding the base clip alone gives
the same numbers (checked in tests/data/test_latent_cache.py; exact on the tiny model in float32).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch

from ..errors import InputError
from ..models import family
from ..paths import cache_dir as engine_cache_dir
from .dataset import read_clip
from .samples import Sample, plan_dataset

# Bump when what goes into a cache file changes, so old files are not reused (2: the window's first frame).
CACHE_FORMAT_VERSION = 2
ProgressFn = Callable[[int, int], None]


def default_cache_dir() -> Path:
    return engine_cache_dir() / "latents"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_identity(preset: dict) -> str:
    """What names the weights (the family says: e.g. the tiny config's hash, or the source plus its revision)."""
    return family(preset).model_identity(preset)


def cache_key(sample: Sample, preset: dict, clip_sha256: str, encoder_dtypes: str) -> str:
    parts = {
        "v": CACHE_FORMAT_VERSION, "clip": clip_sha256, "model": model_identity(preset), "dtypes": encoder_dtypes,
        "start": sample.start, "frames": sample.frames, "height": sample.height, "width": sample.width,
        "prompt": sample.prompt, "negative_prompt": sample.negative_prompt,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def clip_to_tensor(frames) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float [1, 3, F, H, W] in [-1, 1], as the VAE takes it."""
    x = torch.from_numpy(frames).float().div(127.5).sub(1.0)
    return x.permute(3, 0, 1, 2).unsqueeze(0).contiguous()


def _encode_sample(pipe, preset: dict, sample: Sample) -> dict[str, torch.Tensor]:
    fam = family(preset)
    frames, _ = read_clip(sample.path, max_frames=sample.frames, skip=sample.start,
                          size=lambda h, w: (sample.height, sample.width))
    if len(frames) < sample.frames:  # the file changed since it was probed
        raise InputError(f"video '{sample.path.name}' has {sample.start + len(frames)} frames now; its window "
                         f"{sample.start}..{sample.start + sample.frames - 1} needs more (start the run again).")
    latents = fam.encode_video(pipe, clip_to_tensor(frames))
    # guidance_scale > 1 asks for the negative embeddings too (the trainer may drop the prompt).
    pos, neg = fam.encode_prompt(pipe, sample.prompt, sample.negative_prompt, guidance_scale=2.0)
    return {"latents": latents.float().cpu().contiguous(), **pos.to_tensors("prompt_embeds"),
            **(neg or pos.zeros_like()).to_tensors("negative_prompt_embeds")}


def _save_atomic(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".safetensors", dir=path.parent, prefix=f".{path.stem}-")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def build_latent_cache(pipe, preset: dict, data_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                       progress: ProgressFn | None = None, samples: list[Sample] | None = None) -> list[Path]:
    """Encode every sample that is not cached yet; the cache files, in sample order.

    `samples`: what to encode (a run's plan, engine.data.samples); default: the folder's samples for the
    preset's training recipe. Raises InputError (listing every problem) if the dataset does not validate.
    """
    fam = family(preset)
    if samples is None:
        train = preset["training"]
        samples = plan_dataset(data_dir, fam, frames=train["extended_num_frames"], base_frames=train["base_num_frames"],
                               height=train["height"], width=train["width"],
                               negative_prompt=preset["generation"]["negative_prompt"]).samples
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dtypes = fam.encoder_dtypes(pipe)
    digests: dict[Path, str] = {}  # one hash per file, however many windows it gives
    paths = []
    for n, sample in enumerate(samples, start=1):
        if sample.path not in digests:
            digests[sample.path] = file_sha256(sample.path)
        path = folder / f"{cache_key(sample, preset, digests[sample.path], dtypes)}.safetensors"
        if not path.is_file():
            tensors = _encode_sample(pipe, preset, sample)
            metadata = {
                "video_id": sample.video_id, "prompt": sample.prompt, "negative_prompt": sample.negative_prompt,
                "start": str(sample.start), "base_frames": str(sample.base_frames),
                "extended_frames": str(sample.frames), "base_latent_frames": str(fam.latent_frames(sample.base_frames)),
                "height": str(sample.height), "width": str(sample.width), "model": model_identity(preset),
                "format": str(CACHE_FORMAT_VERSION),
            }
            _save_atomic(tensors, metadata, path)
        paths.append(path)
        if progress is not None:
            progress(n, len(samples))
    return paths


def load_cached(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of one cache file (latents, prompt_embeds, negative_prompt_embeds)."""
    from safetensors.torch import load_file

    return load_file(str(path), device=str(device))


def load_cached_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata stored beside the tensors (video_id, prompt, frame counts, size, model)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def base_latents(latents: torch.Tensor, base_frames: int, fam) -> torch.Tensor:
    """The latents of the clip's first `base_frames` frames (the causal VAE's prefix)."""
    return latents[:, :, : fam.latent_frames(base_frames)]
