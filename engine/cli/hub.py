"""`python -m engine push|pull`: share adapters through the Hugging Face Hub."""

from __future__ import annotations

import json
import sys


def cmd_push(args) -> int:
    from ..hub import push_adapter

    def progress(fraction: float, message: str) -> None:
        if not args.quiet:
            print(f"[{fraction:4.0%}] {message}", file=sys.stderr)

    result = push_adapter(args.run, args.repo_id, token=args.token, private=not args.public, revision=args.revision,
                          progress=progress)
    print(json.dumps(result, indent=2))
    return 0


def cmd_pull(args) -> int:
    from ..hub import resolve_adapter

    folder = resolve_adapter(args.adapter, token=args.token)
    print(json.dumps({"adapter": args.adapter, "folder": str(folder)}, indent=2))
    return 0


def add_hub_parsers(subparsers) -> None:
    token_help = ("Hub token (default: HF_TOKEN, then the cached `hf auth login`). Prefer HF_TOKEN: a flag "
                  "is visible in the process list and shell history.")
    p = subparsers.add_parser("push", help="push a run's LoRA adapter (with a model card) to a Hub model repo")
    p.add_argument("--run", required=True,
                   help="a training run folder (its final/, else best_model/, else latest checkpoint) or an adapter folder")
    p.add_argument("--repo_id", required=True, help="the model repo, 'user/name' (created when missing)")
    p.add_argument("--token", help=token_help)
    p.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    p.add_argument("--revision", help="branch to commit to (default: main; created from main when missing)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_push)

    q = subparsers.add_parser("pull", help="download a Hub adapter ('user/repo' or 'user/repo@revision'); prints its folder")
    q.add_argument("--adapter", required=True, help="'user/repo' or 'user/repo@revision'")
    q.add_argument("--token", help=token_help)
    q.set_defaults(func=cmd_pull)

