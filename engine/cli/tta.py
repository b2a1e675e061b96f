"""`python -m engine tta | tta-sweep | evaluate-tta`: test-time adaptation commands for the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InputError
from ..presets import DEFAULT_PRESET
from ..settings import COMPILE_BLOCKS, TTA, TTA_RUN, TTA_SWEEP


def _bool(v: str) -> bool:
    return v.lower() in ("1", "true", "yes")


def _progress_printer(quiet: bool):
    from tqdm import tqdm

    bar = tqdm(desc="tta", unit="step", disable=quiet)

    def progress(status: dict) -> None:
        bar.set_description(f"{status.get('phase', '')} {status.get('video_id') or ''} {status.get('setting') or ''}".strip())
        if status.get("total_steps"):
            bar.total = status["total_steps"]
            bar.n = status.get("step", 0)
        if status.get("loss") is not None:
            bar.set_postfix(loss=f"{status['loss']:.4f}")
        bar.refresh()

    return bar, progress


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=DEFAULT_PRESET, help="a preset that can continue a clip (field 'continuation')")
    p.add_argument("--objective", choices=list(TTA["objective"].choices), help="default: the preset's tta.objective")
    p.add_argument("--seed", type=int, default=TTA_RUN["seed"].default)
    p.add_argument("--alpha", type=float, help="LoRA alpha (default: the rank)")
    p.add_argument("--include_mlp", action="store_true", help="also adapt the feed-forward layers")
    p.add_argument("--cond_frames", type=int, help="default: the preset's tta.cond_frames (33)")
    p.add_argument("--total_frames", type=int, help="default: the preset's tta.total_frames (65)")
    p.add_argument("--height", type=int, help="default: the preset's tta.short_side, aspect kept")
    p.add_argument("--width", type=int)
    p.add_argument("--sample_steps", type=int, help="sampling steps (default: the preset's generation.steps)")
    p.add_argument("--guidance_scale", type=float, help="default: the preset's generation.guidance_scale")
    p.add_argument("--sampler", choices=list(TTA_RUN["sampler"].choices), default=TTA_RUN["sampler"].default)
    p.add_argument("--no_lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--compile_blocks", action="store_true", help=COMPILE_BLOCKS.help)
    p.add_argument("--quiet", action="store_true")


def cmd_tta(args) -> int:
    from ..workers.tta import run_tta

    bar, progress = _progress_printer(args.quiet)
    try:
        result = run_tta(args.video, preset=args.preset, output_dir=args.output_dir, rank=args.rank, alpha=args.alpha,
                         lr=args.lr, steps=args.steps, objective=args.objective, seed=args.seed,
                         include_mlp=args.include_mlp, cond_frames=args.cond_frames, total_frames=args.total_frames,
                         height=args.height, width=args.width, prompt=args.prompt, sample_steps=args.sample_steps,
                         guidance_scale=args.guidance_scale, sampler=args.sampler, save_adapter=args.save_lora,
                         lpips=not args.no_lpips, compile_blocks=args.compile_blocks, progress=progress)
    finally:
        bar.close()
    print(json.dumps(result, indent=2, default=str))
    return 0 if result["state"] == "finished" else 1


def cmd_tta_sweep(args) -> int:
    from ..workers.tta import merge_tta_sweep, run_tta_sweep

    if args.merge:
        if not args.experiment:
            raise InputError("--merge needs --experiment (and --output_root) naming the sweep to merge.")
        merge_tta_sweep(Path(args.output_root) / args.experiment)
        print((Path(args.output_root) / args.experiment / "summary.md").read_text())
        return 0
    if not args.data_dir:
        raise InputError("tta-sweep needs --data_dir (a folder from `data convert --task tta`).")

    bar, progress = _progress_printer(args.quiet)
    try:
        result = run_tta_sweep(args.data_dir, ranks=args.ranks, lrs=args.lrs, steps=args.steps,
                               experiment=args.experiment, objective=args.objective, preset=args.preset,
                               output_root=args.output_root, seed=args.seed, alpha=args.alpha,
                               include_mlp=args.include_mlp, cond_frames=args.cond_frames,
                               total_frames=args.total_frames, height=args.height, width=args.width,
                               sample_steps=args.sample_steps, guidance_scale=args.guidance_scale,
                               sampler=args.sampler, lpips=not args.no_lpips, progress=progress, shard=args.shard,
                               compile_blocks=args.compile_blocks)
    finally:
        bar.close()
    if result["state"] == "finished" and result["summary_md"]:
        print(open(result["summary_md"]).read())
    print(json.dumps({k: v for k, v in result.items() if k != "summary"}, indent=2))
    return 0 if result["state"] == "finished" else 1


def cmd_evaluate_tta(args) -> int:
    from ..workers.tta import evaluate_tta

    result = evaluate_tta(args.baseline, args.tta, ground_truth_dir=args.ground_truth, cond_frames=args.cond_frames,
                          lpips=not args.no_lpips, output=args.output)
    print(json.dumps({k: result[k] for k in ("baseline_dir", "tta_dir", "ground_truth_dir", "source", "summary")},
                     indent=2))
    return 0


def add_tta_parsers(subparsers) -> None:
    t = subparsers.add_parser("tta", help="test-time adaptation of one clip: LoRA on its first frames, continue, measure")
    t.add_argument("--video", required=True, help="a clip of at least --total_frames frames")
    t.add_argument("--output_dir", required=True, help="new folder: config, status, events, videos, metrics")
    t.add_argument("--rank", type=int, help="default: the preset's tta.rank (16)")
    t.add_argument("--lr", type=float, help="default: the preset's tta.lr (2e-4)")
    t.add_argument("--steps", type=int, help="default: the preset's tta.steps (50; 20 on tiny presets)")
    t.add_argument("--prompt", help="caption (default: a same-name .txt beside the clip or its dataset entry)")
    t.add_argument("--save_lora", action="store_true", help="keep the adapted LoRA in <output_dir>/lora")
    _common(t)
    t.set_defaults(func=cmd_tta)

    s = subparsers.add_parser("tta-sweep", help="a grid of TTA settings over a dataset; results/<experiment>/")
    s.add_argument("--data_dir", help="dataset folder from `data convert --task tta`")
    s.add_argument("--ranks", default=TTA_SWEEP["ranks"], help="comma-separated, e.g. 8,16,32")
    s.add_argument("--lrs", default=TTA_SWEEP["lrs"], help="comma-separated, e.g. 1e-4,2e-4")
    s.add_argument("--steps", default=TTA_SWEEP["steps"], help="comma-separated, e.g. 20,50,100")
    s.add_argument("--experiment", help="name of the results folder (default: tta-<data folder>-<objective>); "
                                        "running again with the same name resumes")
    s.add_argument("--output_root", default="results")
    s.add_argument("--shard", default="auto", help="i/N: this process takes every N-th clip (auto: torchrun's RANK/"
                   "WORLD_SIZE or a SLURM array's task; else the whole sweep); the last shard to finish merges")
    s.add_argument("--merge", action="store_true", help="only write the summary of a finished sharded sweep "
                   "(--experiment, --output_root)")
    _common(s)
    s.set_defaults(func=cmd_tta_sweep)

    e = subparsers.add_parser("evaluate-tta", help="recompute and compare TTA vs baseline metrics")
    e.add_argument("--baseline", required=True, help="a tta run folder, an experiment folder or a folder of clips")
    e.add_argument("--tta", required=True, help="a tta run folder, or e.g. results/<exp>/frames/<setting>")
    e.add_argument("--ground_truth", help="default: the ground_truth folder beside them")
    e.add_argument("--cond_frames", type=int, help="default: the run's (33)")
    e.add_argument("--output", help="write the full comparison JSON here")
    e.add_argument("--no_lpips", action="store_true")
    e.set_defaults(func=cmd_evaluate_tta)
