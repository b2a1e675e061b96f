"""Base vs extended comparison of a trained length-extension LoRA.

For each prompt, with the same seed: the base model at base length with dense attention,
and base + LoRA at extended length with radial attention. Writes each video, a labelled
side-by-side mp4 and `summary.json` (settings, timings).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..compare import compare_base_extended
from ..generate import is_main_process
from ..errors import InputError
from ..jobs import atomic_write_json
from ..presets import DEFAULT_PRESET, load_preset

DEFAULT_PROMPTS = [
    "a red circle moves from left to right on a dark blue background",
    "a yellow star rotates slowly in the middle of the frame",
]


def read_prompts(path: str | Path | None) -> list[str]:
    """Prompts from a .txt (one per line) or .json (list of strings) file; defaults if None."""
    if path is None:
        return list(DEFAULT_PROMPTS)
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompts file '{path}' does not exist.")
    if path.suffix == ".json":
        try:
            prompts = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"prompts file '{path}': invalid JSON at line {e.lineno}: {e.msg}.") from None
    else:
        prompts = [line.strip() for line in path.read_text().splitlines()]
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise InputError(f"prompts file '{path}' must hold a list of strings.")
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise InputError(f"prompts file '{path}' holds no prompts.")
    return prompts


def run_preset_of(lora_dir: Path) -> str | None:
    """The preset a run was trained with, from `<run>/config.json` beside `final/` or `best_model/`."""
    for candidate in (lora_dir / "config.json", lora_dir.parent / "config.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text()).get("preset")
    return None


def evaluate_lora(lora_dir, output_dir, *, base_frames: int, extended_frames: int, prompts_file=None,
                  preset: str | None = None, steps: int | None = None, seed: int = 0, attention: dict | None = None,
                  progress=None, context_parallel: int = 1, fsdp: bool = False) -> dict:
    lora_dir, output_dir = Path(lora_dir), Path(output_dir)
    preset_name = preset or run_preset_of(lora_dir) or DEFAULT_PRESET
    preset_dict = load_preset(preset_name)
    prompts = read_prompts(prompts_file)
    radial = {"pattern": "radial", **(attention or {})}
    results = []
    for i, prompt in enumerate(prompts):
        result = compare_base_extended(prompt, preset=preset_dict, lora_dir=lora_dir, base_frames=base_frames,
                                       extended_frames=extended_frames, steps=steps, seed=seed, attention=radial,
                                       out_dir=output_dir / f"prompt-{i:03d}", context_parallel=context_parallel,
                                       fsdp=fsdp)
        results.append({"prompt": prompt, **result.to_dict()})
        if progress is not None:
            progress(i + 1, len(prompts))
    summary = {"lora_dir": str(lora_dir), "preset": preset_name, "base_frames": base_frames,
               "extended_frames": extended_frames, "seed": seed, "steps": steps or preset_dict["generation"]["steps"],
               "attention_extended": radial, "context_parallel": context_parallel, "fsdp": fsdp,
               "results": results}
    if is_main_process():
        atomic_write_json(output_dir / "summary.json", summary)
    return summary
