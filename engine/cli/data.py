"""`python -m engine data create|convert|validate`: dataset commands for the CLI."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import InputError
from ..presets import DEFAULT_PRESET


def cmd_data_create(args) -> int:
    from ..data.dataset import create_synthetic_dataset, load_dataset

    out = create_synthetic_dataset(args.output_dir, args.num_samples, preset=args.preset, seed=args.seed, fps=args.fps,
                                   overwrite=args.overwrite, task=args.task)
    entries = load_dataset(out)
    print(json.dumps({"output_dir": str(out), "clips": len(entries), "seed": args.seed, "preset": args.preset,
                      "frames": entries[0].extended_frames, "height": entries[0].height, "width": entries[0].width},
                     indent=2))
    return 0


def cmd_data_convert(args) -> int:
    from ..data.dataset import REPORT_FILE, convert_dataset

    report = convert_dataset(args.input_dir, args.output_dir, preset=args.preset, task=args.task, fps=args.fps,
                             overwrite=args.overwrite)
    print(json.dumps(report.to_dict(), indent=2))
    if not report.kept:  # nothing usable is a failure the caller should see, with the reasons
        try:
            report.require_kept(f"in {args.input_dir}")
        except InputError as err:
            print(f"error: {err} No dataset was written (the reasons are in {REPORT_FILE}).", file=sys.stderr)
        return 1
    return 0


def cmd_data_validate(args) -> int:
    from pathlib import Path

    from ..data.dataset import scan_dataset

    if Path(args.output_dir).is_dir() and not (Path(args.output_dir) / "metadata.json").is_file():
        return _validate_videos(args)
    problems, entries = scan_dataset(args.output_dir)
    if problems:
        for problem in problems:
            print(problem)
        return 1
    print(f"ok: {len(entries)} clips")
    return 0


def _validate_videos(args) -> int:
    """A folder of videos with captions, as a run of the preset's recipe would take it: each skipped clip with
    its reason, then what is used (clips, windows, buckets); 1 when nothing is usable."""
    from ..config import config_from_preset
    from ..models import family
    from ..settings import DATASET
    from ..data.samples import plan_dataset

    config = config_from_preset(args.preset, data_dir=args.output_dir, output_dir="-")
    plan = plan_dataset(args.output_dir, family(config.preset_dict()), frames=config.extended_num_frames,
                        base_frames=config.base_num_frames, height=config.height, width=config.width,
                        overrides={k: getattr(config, k) for k in DATASET})
    for name, reason in plan.skipped:
        print(f"skipped {name}: {reason}")
    clips = len(plan.clip_ids())
    if not clips:
        print(f"error: no usable clip for preset '{args.preset}' ({config.extended_num_frames} frames per window)",
              file=sys.stderr)
        return 1
    buckets = ", ".join(f"{b} ({n})" for b, n in sorted(plan.buckets().items()))
    print(f"ok: {clips} clips, {len(plan.samples)} windows of {config.extended_num_frames} frames, buckets {buckets}; "
          f"{len(plan.skipped)} skipped (preset '{args.preset}')")
    return 0


def add_data_parser(subparsers) -> argparse.ArgumentParser:
    data = subparsers.add_parser("data", help="create, convert or validate a training dataset")
    sub = data.add_subparsers(dest="data_command", required=True)

    c = sub.add_parser("create", help="render synthetic captioned clips (the embedded default dataset)")
    c.add_argument("--output_dir", required=True)
    c.add_argument("--num_samples", type=int, required=True)
    c.add_argument("--preset", default=DEFAULT_PRESET)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--fps", type=int, help="default: the preset's generation.fps")
    c.add_argument("--task", choices=["extension", "tta"], default="extension",
                   help="tta: clips of the preset's tta.total_frames at tta.short_side (for tta / tta-sweep)")
    c.add_argument("--overwrite", action="store_true", help="replace a dataset already in --output_dir")
    c.set_defaults(func=cmd_data_create)

    v = sub.add_parser("convert", help="turn a folder of captioned videos into a dataset")
    v.add_argument("--input_dir", required=True,
                   help="videos with same-name .txt captions, or a captions.csv (path,caption) / captions.json")
    v.add_argument("--output_dir", required=True)
    v.add_argument("--preset", default=DEFAULT_PRESET)
    v.add_argument("--task", choices=["extension", "tta"], default="extension")
    v.add_argument("--fps", type=float, help="resample to this frame rate (default: the preset's generation.fps)")
    v.add_argument("--overwrite", action="store_true", help="replace a dataset already in --output_dir")
    v.set_defaults(func=cmd_data_convert)

    k = sub.add_parser("validate", help="check a dataset folder; prints every problem")
    k.add_argument("--output_dir", required=True, help="the dataset folder (metadata.json, or videos with captions)")
    k.add_argument("--preset", default=DEFAULT_PRESET, help="a folder of videos is checked as this preset's recipe "
                   "takes it (frames, size, buckets)")
    k.set_defaults(func=cmd_data_validate)
    return data
