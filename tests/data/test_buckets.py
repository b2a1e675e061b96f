"""Datasets as people have them: bucket maths, frame windows, the bucket sampler, dataset.toml checks."""

import pytest

from engine.config import config_from_preset
from engine.data.buckets import bucket_sizes, clip_size, nearest_bucket
from engine.data.dataset_config import DATASET_FILE, dataset_options, read_dataset_config
from engine.data.extraction import frame_windows
from engine.data.sampler import BucketSampler
from engine.errors import ConfigError

# ---------------------------------------------------------------------------- buckets


def test_buckets_keep_the_run_area_in_multiples_and_include_the_run_size():
    buckets = bucket_sizes(480, 832, 16)
    assert (480, 832) in buckets and (832, 480) in buckets
    assert all(h % 16 == 0 and w % 16 == 0 for h, w in buckets)
    assert all(0.9 * 480 * 832 <= h * w <= 480 * 832 for h, w in buckets)  # rounded down, never above the area
    assert {(h, w) for h, w in buckets} == {(w, h) for h, w in buckets}  # both orientations
    assert max(w / h for h, w in buckets) == pytest.approx(4, rel=0.1)  # from 1:1 to about 4:1
    # The tiny preset's 64x64: 32x128 ... 64x64 ... 128x32.
    assert bucket_sizes(64, 64, 16) == [(32, 128), (48, 80), (64, 64), (80, 48), (128, 32)]
    assert (48, 96) in bucket_sizes(48, 96, 16)  # an aspect beyond the generated range stays a bucket


def test_nearest_bucket_by_aspect_ratio():
    buckets = bucket_sizes(64, 64, 16)
    assert nearest_bucket(240, 320, buckets) == (48, 80)  # 4:3 (UCF-101): 5:3 is nearer than 1:1 on a log scale
    assert nearest_bucket(320, 240, buckets) == (80, 48)
    assert nearest_bucket(64, 64, buckets) == (64, 64)
    assert nearest_bucket(1080, 1920, bucket_sizes(480, 832, 16)) == (480, 832)  # 16:9 -> the run's own 832x480
    assert nearest_bucket(100, 1000, buckets) == (32, 128)  # 10:1 -> the widest
    assert clip_size(240, 320, 64, 64, 16, enable_bucket=False) == (64, 64)  # off: everything at the run size
    assert clip_size(240, 320, 64, 64, 16, enable_bucket=True) == (48, 80)


# ---------------------------------------------------------------------------- windows


@pytest.mark.parametrize("mode, options, count, expected", [
    ("head", {}, 100, [0]),
    ("head", {}, 33, [0]),
    ("chunk", {}, 100, [0, 33, 66]),  # 99 frames used, the last one dropped
    ("chunk", {}, 65, [0]),
    ("slide", {"stride": 16}, 80, [0, 16, 32]),  # 32 + 33 = 65 <= 80; 48 + 33 > 80
    ("slide", {"stride": 1}, 35, [0, 1, 2]),
    ("uniform", {"sample": 3}, 80, [0, 23, 47]),  # the first at 0, the last ending at the clip's end
    ("uniform", {"sample": 1}, 80, [0]),
    ("uniform", {"sample": 5}, 35, [0, 1, 2]),  # only 3 distinct windows fit
])
def test_frame_windows(mode, options, count, expected):
    assert frame_windows(count, 33, mode, **options) == expected


@pytest.mark.parametrize("mode", ["head", "chunk", "slide", "uniform"])
def test_a_clip_shorter_than_a_window_gives_none(mode):
    assert frame_windows(32, 33, mode, stride=4, sample=3) == []


# ---------------------------------------------------------------------------- sampler


def test_sampler_batches_hold_one_bucket_and_cover_each_sample_once_per_epoch():
    buckets = ["a"] * 5 + ["b"] * 3 + ["c"]
    sampler = BucketSampler(buckets, batch_size=2, seed=7)
    assert sampler.batches_per_epoch == 3 + 2 + 1
    for epoch in range(3):
        batches = [sampler.batch(epoch * sampler.batches_per_epoch + i) for i in range(sampler.batches_per_epoch)]
        assert sorted(i for b in batches for i in b) == list(range(9))
        assert all(len({buckets[i] for i in b}) == 1 and 1 <= len(b) <= 2 for b in batches)
    first = [sampler.batch(m) for m in range(6)]
    assert first != [sampler.batch(m) for m in range(6, 12)]  # a new permutation each epoch


def test_sampler_order_depends_only_on_the_micro_batch_number():
    """What a resume relies on: a new sampler (a resumed process) gives the same batch for the same number."""
    buckets = [(48, 80), (64, 64)] * 4
    before = [BucketSampler(buckets, 2, seed=3).batch(m) for m in range(20)]
    fresh = BucketSampler(buckets, 2, seed=3)
    assert [fresh.batch(m) for m in range(10, 20)] == before[10:]
    assert [BucketSampler(buckets, 2, seed=4).batch(m) for m in range(20)] != before


def test_one_bucket_and_batch_size_one_walk_the_pre_bucket_permutation():
    import torch

    sampler = BucketSampler([(64, 64)] * 5, 1, seed=2)
    for epoch in range(2):
        perm = torch.randperm(5, generator=torch.Generator().manual_seed(2 * 7919 + epoch)).tolist()
        assert [sampler.batch(epoch * 5 + i)[0] for i in range(5)] == perm


# ---------------------------------------------------------------------------- dataset.toml


def test_dataset_toml_sets_the_options_and_a_run_overrides_them(tmp_path):
    assert read_dataset_config(tmp_path) == {"enable_bucket": True, "bucket_no_upscale": False,
                                             "frame_extraction": "head", "frame_stride": 1, "frame_sample": 1,
                                             "trigger_word": ""}
    (tmp_path / DATASET_FILE).write_text('# how clips are cut\nframe_extraction = "slide"\nframe_stride = 8\n'
                                         "enable_bucket = false\n")
    assert read_dataset_config(tmp_path) == {"enable_bucket": False, "bucket_no_upscale": False,
                                             "frame_extraction": "slide", "frame_stride": 8, "frame_sample": 1,
                                             "trigger_word": ""}
    options = dataset_options(tmp_path, {"frame_extraction": "uniform", "frame_sample": 4, "frame_stride": None})
    assert options == {"enable_bucket": False, "bucket_no_upscale": False, "frame_extraction": "uniform",
                       "frame_stride": 8, "frame_sample": 4, "trigger_word": ""}


@pytest.mark.parametrize("text, pattern", [
    ('frame_extraction = "middle"', r"field 'frame_extraction': 'middle' is not allowed; choose one of "
                                    r"\['head', 'chunk', 'slide', 'uniform'\]"),
    ("frame_stride = 0", r"field 'frame_stride'=0 is out of range: it must be a whole number >= 1"),
    ('enable_bucket = "yes"', r"field 'enable_bucket': expected true or false"),
    ("frame_samples = 3", r"unknown field\(s\) \['frame_samples'\]; the known fields are .*frame_sample"),
    ("frame_extraction = head", r"invalid TOML .*line 1.*frame_extraction = \"head\""),
])
def test_bad_dataset_toml_values_name_the_file_the_field_and_the_fix(tmp_path, text, pattern):
    (tmp_path / DATASET_FILE).write_text(text + "\n")
    with pytest.raises(ConfigError, match=pattern) as err:
        read_dataset_config(tmp_path)
    assert DATASET_FILE in str(err.value)


def test_run_overrides_are_training_config_fields_checked_like_the_others(tmp_path):
    config = config_from_preset("tiny-wan", frame_extraction="chunk", enable_bucket=False)
    assert (config.frame_extraction, config.enable_bucket, config.frame_stride) == ("chunk", False, None)
    with pytest.raises(ConfigError, match=r"training config field 'frame_extraction': 'every' is not allowed"):
        config_from_preset("tiny-wan", frame_extraction="every")
    with pytest.raises(ConfigError, match=r"training config field 'frame_sample'=0 is out of range"):
        dataset_options(tmp_path, {"frame_sample": 0})


def test_bucket_no_upscale_keeps_a_small_clip_at_its_own_size_rounded_down():
    from engine.data.buckets import clip_size

    assert clip_size(40, 72, 64, 64, 16, True, no_upscale=True) == (32, 64)  # 2880 px < 4096: own size, rounded
    assert clip_size(40, 72, 64, 64, 16, True) == (48, 80)  # the default: scaled up to its bucket
    assert clip_size(240, 320, 64, 64, 16, True, no_upscale=True) == (48, 80)  # a larger clip: its bucket
    assert clip_size(8, 8, 64, 64, 16, True, no_upscale=True) == (16, 16)  # never below one multiple
    assert clip_size(40, 72, 64, 64, 16, False, no_upscale=True) == (64, 64)  # buckets off: the run's size


def test_bucket_no_upscale_from_dataset_toml_reaches_the_plan(tmp_path):
    from engine.data.samples import plan_dataset
    from engine.data.synthetic import render_clip
    from engine.models import family
    from engine.presets import load_preset
    from engine.video import write_mp4

    write_mp4(render_clip(seed=0, num_frames=33, height=40, width=72).frames, tmp_path / "small.mp4", fps=8)
    (tmp_path / "small.txt").write_text("a small clip")
    fam = family(load_preset("tiny-wan"))
    args = dict(frames=33, base_frames=17, height=64, width=64)
    assert (plan_dataset(tmp_path, fam, **args).samples[0].height, plan_dataset(tmp_path, fam, **args).samples[0].width) \
        == (48, 80)
    (tmp_path / DATASET_FILE).write_text("bucket_no_upscale = true\n")
    sample = plan_dataset(tmp_path, fam, **args).samples[0]
    assert (sample.height, sample.width) == (32, 64)
    sample = plan_dataset(tmp_path, fam, **args, overrides={"bucket_no_upscale": False}).samples[0]  # a run's wins
    assert (sample.height, sample.width) == (48, 80)
