"""Dataset validation decodes each clip once per file version (engine/data/clip_probe.py)."""

import json
import os
import shutil

import numpy as np
import pytest

from engine.errors import InputError
from engine.data import clip_probe
from engine.data.clip_probe import ProbeCache
from engine.data.dataset import METADATA_FILE, create_synthetic_dataset, validate_dataset
from engine.video import write_mp4


def _clip(path, frames, size=32, level=40):
    write_mp4(np.full((frames, size, size, 3), level, np.uint8), path, fps=16)
    return path


def _no_decoding(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("decoded a clip the cache should have answered")
    monkeypatch.setattr(clip_probe, "frame_stream", fail)


def test_probe_decodes_once_then_answers_from_the_cache(tmp_path, monkeypatch):
    clip = _clip(tmp_path / "a.mp4", 9)
    cache_file = tmp_path / "probes.json"
    first = ProbeCache(cache_file)
    assert first.probe(clip, 5) == (5, 32, 32)  # stops at the limit
    assert first.probe(clip, 50) == (9, 32, 32)  # another limit is another key
    first.save()
    assert len(json.loads(cache_file.read_text())) == 2
    _no_decoding(monkeypatch)
    again = ProbeCache(cache_file)  # a new process reads the file
    assert again.probe(clip, 5) == (5, 32, 32)
    assert again.probe(clip, 50) == (9, 32, 32)


def test_an_edited_or_replaced_clip_is_decoded_again(tmp_path, monkeypatch):
    clip = _clip(tmp_path / "a.mp4", 9)
    cache = ProbeCache(tmp_path / "probes.json")
    assert cache.probe(clip, 50) == (9, 32, 32)
    _clip(tmp_path / "b.mp4", 17, size=48)
    os.replace(tmp_path / "b.mp4", clip)  # same path, new file
    assert cache.probe(clip, 50) == (17, 48, 48)
    stat = clip.stat()
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # touched in place
    calls = []
    real = clip_probe.frame_stream
    monkeypatch.setattr(clip_probe, "frame_stream", lambda *a, **k: (calls.append(a), real(*a, **k))[1])
    assert cache.probe(clip, 50) == (17, 48, 48)
    assert len(calls) == 1


def test_broken_clips_are_not_cached(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    cache = ProbeCache(tmp_path / "probes.json")
    for _ in range(2):
        with pytest.raises(InputError, match="bad.mp4"):
            cache.probe(bad, 9)
    assert cache.entries == {} and not cache.dirty


def test_unreadable_cache_file_and_size_bound(tmp_path, monkeypatch):
    cache_file = tmp_path / "probes.json"
    cache_file.write_text("{ not json")
    cache = ProbeCache(cache_file)
    assert cache.entries == {}
    monkeypatch.setattr(clip_probe, "MAX_ENTRIES", 3)
    clips = [_clip(tmp_path / f"c{i}.mp4", 5) for i in range(5)]
    for c in clips:
        cache.probe(c, 5)
    cache.save()
    kept = json.loads(cache_file.read_text())
    assert len(kept) == 3 and all("c0.mp4" not in k and "c1.mp4" not in k for k in kept)  # oldest dropped


def test_validation_of_an_unchanged_dataset_decodes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RADIAL_STUDIO_CACHE", str(tmp_path / "cache"))
    data = create_synthetic_dataset(tmp_path / "data", 2, seed=3)
    assert validate_dataset(data) == []
    with monkeypatch.context() as m:
        _no_decoding(m)
        assert validate_dataset(data) == []
    # a clip cut short is noticed (new file version), with the usual message
    meta = json.loads((data / METADATA_FILE).read_text())
    victim = data / "videos" / f"{meta[0]['video_id']}.mp4"
    shutil.copy(_clip(tmp_path / "short.mp4", 9, size=meta[0]["width"]), victim)
    problems = validate_dataset(data)
    assert len(problems) == 1 and "video has 9 frames; needs at least" in problems[0]
