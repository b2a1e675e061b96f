"""`python -m engine <command>`: the engine headless, one subcommand per UI action."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import EngineError


def _add_attention_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("attention (default: the preset's)")
    g.add_argument("--pattern", choices=["radial", "dense"])
    g.add_argument("--dense_layers", type=int)
    g.add_argument("--dense_timesteps", type=int)
    g.add_argument("--decay_factor", type=float)
    g.add_argument("--block_size", type=int)
    g.add_argument("--attention_backend", dest="backend", choices=["triton", "flex", "reference", "dense"])


def _attention_overrides(args) -> dict:
    keys = ("pattern", "dense_layers", "dense_timesteps", "decay_factor", "block_size", "backend")
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def cmd_generate(args) -> int:
    from tqdm import tqdm

    from .generate import generate_video

    bar = tqdm(total=args.steps, desc="sampling", unit="step", disable=args.quiet)

    def progress(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        result = generate_video(
            args.prompt, preset=args.preset, negative_prompt=args.negative_prompt, num_frames=args.num_frames,
            height=args.height, width=args.width, steps=args.steps, guidance_scale=args.guidance_scale,
            seed=args.seed, fps=args.fps, out_path=args.out, attention=_attention_overrides(args), progress=progress,
        )
    finally:
        bar.close()
    summary = {"video": str(result.path), "frames": int(result.frames.shape[0]), "seconds": round(result.seconds, 3),
               **result.settings}
    print(json.dumps(summary, indent=2))
    return 0


def cmd_presets(args) -> int:
    from .presets import list_presets, load_preset

    for name in list_presets():
        p = load_preset(name)
        print(f"{name:24s} {p['source']:40s} {p['description'][:60]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Radial Studio engine (headless).")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="text-to-video with a preset's model")
    g.add_argument("--preset", default="tiny-wan")
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative_prompt")
    g.add_argument("--out", help="output mp4 path (default: outputs/generate-<time>.mp4)")
    g.add_argument("--num_frames", type=int)
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--steps", type=int)
    g.add_argument("--guidance_scale", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--fps", type=int)
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_attention_flags(g)
    g.set_defaults(func=cmd_generate)

    p = sub.add_parser("presets", help="list the presets")
    p.set_defaults(func=cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
