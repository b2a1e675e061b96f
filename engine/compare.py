"""Base vs extended: one prompt, the same seed, two videos and one composed side-by-side mp4.

Base: the model alone at base length with dense attention (what it was trained for).
Extended: the model + a length-extension LoRA at extended length with radial attention.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .generate import generate_video, is_main_process, resolve_preset
from .paths import outputs_dir
from .presets import DEFAULT_PRESET
from .video import side_by_side, write_mp4


@dataclass
class Comparison:
    base: str
    extended: str
    side_by_side: str
    base_seconds: float
    extended_seconds: float
    base_frames: int
    extended_frames: int

    def to_dict(self) -> dict:
        return asdict(self)


def compare_base_extended(prompt: str, *, preset: str | dict = DEFAULT_PRESET, lora_dir: str | Path | None = None,
                          base_frames: int | None = None, extended_frames: int | None = None,
                          steps: int | None = None, seed: int | None = None, attention: dict | None = None,
                          out_dir: str | Path | None = None, progress=None, context_parallel: int = 1,
                          fsdp: bool = False) -> Comparison:
    """`lora_dir` may be None to see what the base model does at extended length alone. `context_parallel`,
    `fsdp`: see generate_video (every launched process calls this; rank 0 writes)."""
    preset = resolve_preset(preset)
    base_frames = base_frames or preset["training"]["base_num_frames"]
    extended_frames = extended_frames or preset["training"]["extended_num_frames"]
    out_dir = Path(out_dir or outputs_dir() / f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    total = 2

    def stage(i):
        return None if progress is None else (lambda done, n: progress(i * n + done, total * n))

    base = generate_video(prompt, preset=preset, num_frames=base_frames, steps=steps, seed=seed,
                          attention={"pattern": "dense"}, out_path=out_dir / "base.mp4", progress=stage(0),
                          context_parallel=context_parallel, fsdp=fsdp)
    ext = generate_video(prompt, preset=preset, num_frames=extended_frames, steps=steps, seed=seed,
                         attention={"pattern": "radial", **(attention or {})}, lora_dir=lora_dir,
                         out_path=out_dir / "extended.mp4", progress=stage(1), context_parallel=context_parallel,
                         fsdp=fsdp)
    ext_label = f"{'LoRA ' if lora_dir else ''}{extended_frames}f {ext.settings['attention']['pattern']}"
    composed = side_by_side([base.frames, ext.frames], [f"base {base_frames}f dense", ext_label])
    path = out_dir / "side_by_side.mp4"
    if is_main_process():
        write_mp4(composed, path, fps=preset["generation"]["fps"])
    return Comparison(str(base.path), str(ext.path), str(path), round(base.seconds, 3), round(ext.seconds, 3),
                      base_frames, extended_frames)
