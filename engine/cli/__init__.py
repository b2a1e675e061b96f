"""`python -m engine <command>`: the engine headless, one subcommand per UI action."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import EngineError
from ..presets import DEFAULT_PRESET
from ..settings import ATTENTION_BACKENDS, COMPILE_BLOCKS, GENERATION


def _add_attention_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("attention (default: the preset's)")
    g.add_argument("--pattern", choices=["radial", "dense"])
    g.add_argument("--dense_layers", type=int)
    g.add_argument("--dense_timesteps", type=int)
    g.add_argument("--decay_factor", type=float)
    g.add_argument("--block_size", type=int)
    g.add_argument("--attention_backend", dest="backend", choices=list(ATTENTION_BACKENDS))


def _add_context_parallel_flag(p: argparse.ArgumentParser) -> None:
    from ..settings import MEMORY

    p.add_argument("--context_parallel", type=int, default=1, help=MEMORY["context_parallel"].help)
    p.add_argument("--fsdp", action="store_true", help="FSDP2: the launched processes share the transformer's "
                   "weights (each keeps 1/N; every process runs the same sampling; with --context_parallel N, "
                   "the tokens too)")


def _attention_overrides(args) -> dict:
    keys = ("pattern", "dense_layers", "dense_timesteps", "decay_factor", "block_size", "backend")
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def is_main_process() -> bool:
    from ..generate import is_main_process as main

    return main()


def cmd_generate(args) -> int:
    from tqdm import tqdm

    from ..generate import generate_video

    bar = tqdm(total=args.steps, desc="sampling", unit="step", disable=args.quiet)

    def progress(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        result = generate_video(
            args.prompt, preset=args.preset, negative_prompt=args.negative_prompt, num_frames=args.num_frames,
            height=args.height, width=args.width, steps=args.steps, guidance_scale=args.guidance_scale,
            guidance_scale_2=args.guidance_scale_2, seed=args.seed, fps=args.fps, out_path=args.out,
            attention=_attention_overrides(args),
            lora_dir=args.lora_checkpoint_dir, progress=progress, context_parallel=args.context_parallel,
            fsdp=args.fsdp, compile_blocks=args.compile_blocks,
        )
    finally:
        bar.close()
    summary = {"video": str(result.path), "frames": int(result.frames.shape[0]), "seconds": round(result.seconds, 3),
               **result.settings}
    if is_main_process():
        print(json.dumps(summary, indent=2))
    return 0


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """One flag per training setting (--lora_rank, --learning_rate, ...), default: preset/config."""
    from ..config import FIELDS
    from ..settings import BOOL, FLOAT, INT, LIST

    explicit = {"preset", "data_dir", "output_dir"}
    g = p.add_argument_group("training settings (default: the preset's, then --config's)")
    for name, setting in FIELDS.items():
        if name in explicit:
            continue
        if setting.kind == BOOL:
            g.add_argument(f"--{name}", type=lambda v: v.lower() in ("1", "true", "yes"), metavar="true|false",
                           help=setting.help)
        elif setting.kind == LIST:
            item = float if setting.item == FLOAT else str
            g.add_argument(f"--{name}", type=lambda v, item=item, sep=setting.sep: [item(x) for x in v.split(sep)],
                           metavar=f"A{setting.sep}B", help=setting.help)
        else:
            g.add_argument(f"--{name}", type={INT: int, FLOAT: float}.get(setting.kind, str), help=setting.help)


def cmd_train(args) -> int:
    from tqdm import tqdm

    from ..config import FIELDS, config_from_preset, read_config_file
    from ..workers.trainer import train

    values = read_config_file(args.config) if args.config else {}
    preset = args.preset or values.pop("preset", None) or DEFAULT_PRESET
    values.pop("preset", None)
    cli = {k: getattr(args, k) for k in FIELDS if k != "preset" and getattr(args, k, None) is not None}
    config = config_from_preset(preset, validate=False, **{**values, **cli})  # train() checks it, once
    bar = tqdm(desc="training", unit="step", disable=args.quiet)

    def progress(status):
        bar.total = status.get("total_steps")
        bar.n = status.get("step", 0)
        bar.set_postfix(loss=f"{status.get('loss', float('nan')):.4f}", it_s=f"{status.get('it_per_s') or 0:.2f}")
        bar.refresh()

    try:
        status = train(config, resume=args.resume, progress=progress, prepare_from=args.prepare_from)
    finally:
        bar.close()
    if status:
        summary = {k: status.get(k) for k in ("state", "step", "total_steps", "best_val_loss", "error")}
        if status.get("skipped_clips"):  # clips of the data folder left out, each with its reason
            summary["skipped_clips"] = status["skipped_clips"]
        print(json.dumps(summary))
    return 0 if status.get("state", "finished") in ("finished", "stopped") else 1


def cmd_evaluate(args) -> int:
    from ..workers.evaluate import evaluate_lora

    summary = evaluate_lora(args.lora_checkpoint_dir, args.output_dir, base_frames=args.base_frames,
                            extended_frames=args.extended_frames, prompts_file=args.prompts, preset=args.preset,
                            steps=args.steps, seed=args.seed, attention=_attention_overrides(args),
                            context_parallel=args.context_parallel, fsdp=args.fsdp)
    if is_main_process():
        print(json.dumps(summary, indent=2))
    return 0


def cmd_compare(args) -> int:
    from ..compare import compare_base_extended

    result = compare_base_extended(args.prompt, preset=args.preset, lora_dir=args.adapter, base_frames=args.base_frames,
                                   extended_frames=args.extended_frames, steps=args.steps, seed=args.seed,
                                   attention=_attention_overrides(args), out_dir=args.out_dir,
                                   context_parallel=args.context_parallel, fsdp=args.fsdp)
    if is_main_process():
        print(json.dumps(result.to_dict()))  # one line: the app reads it back (engine.launch.compare)
    return 0


def cmd_presets(args) -> int:
    from ..presets import list_presets, load_preset

    broken = 0
    for name in list_presets():
        try:
            p = load_preset(name)
        except EngineError as err:  # one broken preset does not hide the others
            broken += 1
            print(f"{name:24s} BROKEN: {err}")
            continue
        print(f"{name:24s} {p['source']:40s} {p['description'][:60]}")
    return 1 if broken else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Radial Studio engine (headless).")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="text-to-video with a preset's model")
    g.add_argument("--preset", default=DEFAULT_PRESET)
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative_prompt")
    g.add_argument("--out", help="output mp4 path (default: outputs/generate-<time>.mp4)")
    g.add_argument("--num_frames", type=int)
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--steps", type=int)
    g.add_argument("--guidance_scale", type=float)
    g.add_argument("--guidance_scale_2", type=float, help=GENERATION["guidance_scale_2"].help)
    g.add_argument("--seed", type=int)
    g.add_argument("--fps", type=int)
    g.add_argument("--lora_checkpoint_dir", help="LoRA folder to apply (a run's final/ or best_model/)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--compile_blocks", action="store_true", help=COMPILE_BLOCKS.help)
    _add_context_parallel_flag(g)
    _add_attention_flags(g)
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("train", help="train a length-extension LoRA (runs in the foreground; the app runs it as a job)")
    t.add_argument("--preset", default=None, help="default: the config's, else the embedded default")
    t.add_argument("--data_dir", help="dataset folder (metadata.json + videos/)")
    t.add_argument("--output_dir", help="run folder: config, status, events, checkpoints, LoRA")
    t.add_argument("--config", help="JSON training config (the original format is accepted)")
    t.add_argument("--prepare_from", metavar="DIR", help="a folder of captioned clips to convert into the config's "
                   "data_dir first, in this process (what the app does with uploads); skipped once data_dir holds a dataset")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output_dir")
    t.add_argument("--quiet", action="store_true")
    _add_train_flags(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="base (dense) vs base+LoRA (radial, extended) videos, side by side")
    e.add_argument("--lora_checkpoint_dir", required=True)
    e.add_argument("--output_dir", required=True)
    e.add_argument("--base_frames", type=int, default=69)
    e.add_argument("--extended_frames", type=int, default=161)
    e.add_argument("--prompts", help=".txt (one per line) or .json list")
    e.add_argument("--preset", help="default: the run's preset")
    e.add_argument("--steps", type=int)
    e.add_argument("--seed", type=int, default=0)
    _add_context_parallel_flag(e)
    _add_attention_flags(e)
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("compare", help="the Compare tab: base (dense, base length) vs adapter (radial, extended "
                       "length), side by side")
    c.add_argument("--prompt", required=True)
    c.add_argument("--preset", default=DEFAULT_PRESET)
    c.add_argument("--adapter", help="a LoRA folder (default: the base model alone at extended length)")
    c.add_argument("--base_frames", type=int)
    c.add_argument("--extended_frames", type=int)
    c.add_argument("--steps", type=int)
    c.add_argument("--seed", type=int)
    c.add_argument("--out_dir", help="default: outputs/compare-<time>")
    _add_context_parallel_flag(c)
    _add_attention_flags(c)
    c.set_defaults(func=cmd_compare)

    p = sub.add_parser("presets", help="list the presets")
    p.set_defaults(func=cmd_presets)

    from .data import add_data_parser

    add_data_parser(sub)
    from .hub import add_hub_parsers
    from .tta import add_tta_parsers

    from .plan import add_plan_parser

    add_plan_parser(sub, _add_train_flags)
    add_tta_parsers(sub)  # tta, tta-sweep, evaluate-tta
    add_hub_parsers(sub)  # push, pull
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
