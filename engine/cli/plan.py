"""`python -m engine plan`: the predicted peak memory of a training step per memory option."""

from __future__ import annotations


def _same_kind(row, chosen) -> bool:
    """The listed row the choice comes from (a choice with block swap may swap fewer blocks than its row)."""
    return (row.fp8_base, row.offload_activations, row.ffn_chunks, bool(row.block_swap)) == \
        (chosen.fp8_base, chosen.offload_activations, chosen.ffn_chunks, bool(chosen.block_swap))


def cmd_plan(args) -> int:
    from ..config import FIELDS, config_from_preset, read_config_file
    from ..memory.plan import plan
    from ..presets import DEFAULT_PRESET

    values = read_config_file(args.config) if args.config else {}
    preset = args.preset or values.pop("preset", None) or DEFAULT_PRESET
    values.pop("preset", None)
    cli = {k: getattr(args, k) for k in FIELDS if k != "preset" and getattr(args, k, None) is not None}
    config = config_from_preset(preset, **{**values, **cli, "data_dir": "-", "output_dir": "-"})
    budget = config.gpu_memory_gb
    rows, chosen = plan(config, config.preset_dict(), budget if budget is not None else float("inf"),
                        args.host_memory_gb, args.processes)
    spread = (f", {args.processes} processes" + (" sharded (fsdp)" if config.fsdp else "") +
              (f", context_parallel {config.context_parallel}" if config.context_parallel > 1 else "")
              if args.processes > 1 or config.context_parallel > 1 else "")
    print(f"{preset}: {config.height}x{config.width}, {config.base_num_frames} -> {config.extended_num_frames} frames, "
          f"lora_rank {config.lora_rank}, batch {config.batch_size}{spread} (GiB per GPU)")
    print("| options | predicted peak GiB | host GiB | fits |")
    print("|---|---|---|---|")
    for r in rows:
        fits = "-" if budget is None else ("yes" if r.peak_gib <= budget and (
            args.host_memory_gb is None or r.host_gib <= args.host_memory_gb) else "no")
        mark = " (chosen)" if budget is not None and chosen is not None and _same_kind(r, chosen) else ""
        print(f"| {r.label()}{mark} | {r.peak_gib:.1f} | {r.host_gib:.1f} | {fits} |")
    if budget is None:
        return 0
    if chosen is None:
        hint = "" if args.processes > 1 else (", spread the step over several GPUs (--processes N with "
                                              "--context_parallel N or --fsdp true)")
        print(f"nothing fits {budget:g} GiB: lower extended_num_frames, height/width or lora_rank{hint}, or use a "
              "bigger GPU.")
        return 1
    flags = chosen.flags()
    print(f"the plan for {budget:g} GiB (exact options before fp8): {chosen.label()} ({chosen.peak_gib:.1f} GiB); train with {flags}, "
          f"or pass --gpu_memory_gb {budget:g} to train")
    return 0


def add_plan_parser(subparsers, add_train_flags) -> None:
    p = subparsers.add_parser("plan", help="predicted peak GPU memory of a training step per memory option "
                              "(--gpu_memory_gb N: the one to use)")
    p.add_argument("--preset", default=None, help="default: the config's, else the embedded default")
    p.add_argument("--config", help="JSON training config")
    p.add_argument("--host_memory_gb", type=float, help="free host memory to allow for offload_activations and block_swap")
    p.add_argument("--processes", type=int, default=1, help="processes (GPUs) the run is launched on: with --fsdp "
                   "true they share the weights, with --context_parallel N the tokens")
    add_train_flags(p)
    p.set_defaults(func=cmd_plan)
