"""The Compare action over several processes: context parallelism needs processes launched together.

The app is one process, so a comparison with `context_parallel` N > 1 runs `python -m engine compare`
under torchrun with N processes (one per GPU) and waits for it; rank 0 writes the videos and prints
the result, which is read back here. N = 1 runs in the request as before (engine.compare).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..compare import Comparison
from ..errors import InputError
from ..paths import outputs_dir

TIMEOUT_S = 6 * 3600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compare_over_processes(prompt: str, *, preset: dict, context_parallel: int, lora_dir: Path | None = None,
                           base_frames: int | None = None, extended_frames: int | None = None, steps: int | None = None,
                           seed: int | None = None, attention: dict | None = None,
                           out_dir: Path | None = None) -> Comparison:
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() < context_parallel:
        raise InputError(f"context_parallel={context_parallel} needs {context_parallel} GPUs; this machine has "
                         f"{torch.cuda.device_count()}. Choose at most that many.")
    out_dir = Path(out_dir or outputs_dir() / f"compare-{time.strftime('%Y%m%d-%H%M%S')}-cp{context_parallel}")
    args = ["compare", "--prompt", prompt, "--preset", preset["name"], "--out_dir", str(out_dir),
            "--context_parallel", str(context_parallel)]
    for flag, value in (("--adapter", lora_dir), ("--base_frames", base_frames), ("--extended_frames", extended_frames),
                        ("--steps", steps), ("--seed", seed)):
        if value is not None:
            args += [flag, str(value)]
    for name, value in (attention or {}).items():
        args += [f"--{'attention_backend' if name == 'backend' else name}", str(value)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(context_parallel), "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), "-m", "engine", *args]
    result = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], env=dict(os.environ), capture_output=True,
                            text=True, timeout=TIMEOUT_S)
    if result.returncode != 0:
        # The CLI's own clear errors ("error: ...") and the context-parallel checks (ValueError) name the fix.
        # (torchrun may prefix each line with "[rankN]:").
        said = [m.group(1) for m in re.finditer(r"^(?:\[rank\d+\]:\s*)?(?:error|ValueError): (.+)$", result.stderr,
                                                 re.MULTILINE)]
        raise InputError(said[-1] if said else
                         f"the comparison over {context_parallel} processes failed: {result.stderr.strip()[-800:]}")
    return Comparison(**json.loads(result.stdout.strip().splitlines()[-1]))
