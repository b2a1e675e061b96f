"""Text-to-video sampling: prompt -> frames + mp4, with dense or radial attention."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .attention.processor import install_radial_attention
from .attention.schedule import AttentionSettings
from .errors import ConfigError, InputError
from .lora import load_lora_into_pipeline
from .models import family, get_pipeline
from .models.regional_compile import is_compiled, set_block_compilation
from .paths import outputs_dir
from .presets import DEFAULT_PRESET, apply_overrides, check_capable, load_preset
from .video import write_mp4

ProgressFn = Callable[[int, int], None]  # (steps done, total steps)


@dataclass
class GenerationResult:
    path: Path  # the mp4
    frames: np.ndarray  # uint8 [F, H, W, 3]
    seconds: float  # sampling + decoding wall time
    settings: dict = field(default_factory=dict)


def resolve_preset(preset: str | dict) -> dict:
    return load_preset(preset) if isinstance(preset, str) else preset


def is_main_process() -> bool:
    """Rank 0 of a launched group (torchrun / accelerate launch), or a lone process: the one that writes files."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@contextmanager
def context_parallel_sampling(pipe, fam, degree: int):
    """Ulysses context parallelism of `degree` on the pipeline's transformers for the calls inside (1: nothing).

    The processes must have been launched together (torchrun / accelerate launch); the process group is
    started here if the launcher did not. The loaded pipeline is shared between requests: CP is taken off
    again on the way out, whatever happens.
    """
    if degree == 1:
        yield
        return
    from accelerate import PartialState

    from .attention.context_parallel import ContextParallel, disable_context_parallel, enable_context_parallel

    PartialState()  # initialises torch.distributed from the launcher's environment (gloo on CPU, NCCL on GPUs)
    cp = ContextParallel.from_env(degree)
    enabled = []
    try:
        for transformer in fam.transformers(pipe):
            enable_context_parallel(transformer, cp, fam)
            enabled.append(transformer)
        yield
    finally:
        for transformer in enabled:
            disable_context_parallel(transformer)


def shard_for_sampling(pipe, fam) -> None:
    """FSDP2 over the launched processes for the pipeline's transformers: each process keeps 1/N of the weights
    and every process runs the same sampling. Done once and kept (sharding cannot be undone), so it is for a
    process that samples and exits (the CLI's --fsdp), never for the app's shared pipeline."""
    from accelerate import PartialState

    from .memory.sharding import is_sharded, shard_transformer

    PartialState()  # initialises torch.distributed from the launcher's environment
    for transformer in fam.transformers(pipe):
        if not is_sharded(transformer):
            shard_transformer(transformer)


def _check_request(fam, prompt, num_frames, height, width, steps, guidance_scale, seed):
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("prompt is empty: describe the video to generate, e.g. 'a red ball bounces on a beach'.")
    fam.check_frame_count(num_frames)
    fam.check_size(height, width)
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}.")
    if guidance_scale < 0:
        raise InputError(f"guidance_scale must be >= 0, got {guidance_scale}.")
    if not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}.")


def generate_video(
    prompt: str,
    *,
    preset: str | dict = DEFAULT_PRESET,
    negative_prompt: str | None = None,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    guidance_scale_2: float | None = None,
    seed: int | None = None,
    fps: int | None = None,
    out_path: str | Path | None = None,
    attention: dict | None = None,
    lora_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    context_parallel: int = 1,
    fsdp: bool = False,
    compile_blocks: bool = False,
) -> GenerationResult:
    """Generate one video. Unset arguments take the preset's defaults.

    `attention` overrides the preset's attention settings (pattern, dense_layers,
    dense_timesteps, decay_factor, block_size, backend). `lora_dir` is an adapter folder
    (diffusers format, e.g. a run's `final/`), applied for this call only. `context_parallel` N > 1: every
    process of a launched group calls this; each attends over all tokens for 1/N of the heads
    (`context_parallel_sampling`), all get the same frames, and only rank 0 writes the mp4. `fsdp`: the
    launched processes share the transformer's weights (`shard_for_sampling`; composes with context_parallel).
    `compile_blocks`: regional compilation of the denoiser's blocks (engine.models.regional_compile), kept on the
    loaded model until a call without it; the first call at a new size compiles.
    """
    preset = resolve_preset(preset)
    check_capable(preset, "generate")
    fam = family(preset)
    gen = preset["generation"]
    num_frames = gen["num_frames"] if num_frames is None else int(num_frames)
    height = gen["height"] if height is None else int(height)
    width = gen["width"] if width is None else int(width)
    steps = gen["steps"] if steps is None else int(steps)
    guidance_scale = gen["guidance_scale"] if guidance_scale is None else float(guidance_scale)
    if guidance_scale_2 is not None:
        fam.check_guidance_scale_2(guidance_scale_2)
        guidance_scale_2 = float(guidance_scale_2)
        if guidance_scale_2 < 0:
            raise InputError(f"guidance_scale_2 must be >= 0, got {guidance_scale_2}.")
    else:
        guidance_scale_2 = gen["guidance_scale_2"]
    seed = gen["seed"] if seed is None else int(seed)
    fps = gen["fps"] if fps is None else int(fps)
    negative_prompt = gen["negative_prompt"] if negative_prompt is None else negative_prompt
    _check_request(fam, prompt, num_frames, height, width, steps, guidance_scale, seed)
    if attention:
        preset = apply_overrides(preset, "attention", attention)
    settings = AttentionSettings.from_preset(preset)
    if fsdp and compile_blocks:
        raise ConfigError("compile_blocks and fsdp are both set: choose one (sharded blocks gather their weights "
                          "through hooks that compiled blocks do not follow).")

    lora_ref = lora_dir
    if lora_dir is not None:
        from .hub import resolve_adapter

        lora_dir = resolve_adapter(lora_dir)  # a folder, or a Hub id downloaded into the HF cache
    pipe = get_pipeline(preset)
    # One schedule over the whole sampling: a two-expert model's denoiser holds both experts, so the step count
    # (dense_timesteps) runs on across the switch from one to the other.
    install_radial_attention(fam.denoiser(pipe), settings, fam)
    if fsdp:  # before the LoRA: the adapter stays whole on every process and unloads as usual
        shard_for_sampling(pipe, fam)
    if compile_blocks or any(is_compiled(t) for t in fam.transformers(pipe)):
        for transformer in fam.transformers(pipe):
            set_block_compilation(transformer, compile_blocks)
    if lora_dir is not None:
        load_lora_into_pipeline(pipe, lora_dir, fam)

    generator = torch.Generator(device="cpu").manual_seed(seed)
    start = time.perf_counter()
    try:
        with context_parallel_sampling(pipe, fam, int(context_parallel)):
            video = fam.generate(pipe, prompt=prompt, negative_prompt=negative_prompt, height=height, width=width,
                                 num_frames=num_frames, steps=steps, guidance_scale=guidance_scale,
                                 guidance_scale_2=guidance_scale_2,
                                 generator=generator, on_step=None if progress is None else (lambda done: progress(done, steps)))
    finally:
        if lora_dir is not None:  # the loaded model is shared between requests: leave it clean
            fam.unload_lora(pipe)
    seconds = time.perf_counter() - start
    frames = (np.clip(video, 0, 1) * 255).round().astype(np.uint8)
    if out_path is None:
        out_path = outputs_dir() / f"generate-{time.strftime('%Y%m%d-%H%M%S')}-{seed}.mp4"
    path = write_mp4(frames, out_path, fps=fps) if is_main_process() else Path(out_path)
    record = {
        "preset": preset["name"], "prompt": prompt, "negative_prompt": negative_prompt, "num_frames": num_frames,
        "height": height, "width": width, "steps": steps, "guidance_scale": guidance_scale,
        "guidance_scale_2": guidance_scale_2, "seed": seed,
        "fps": fps, "attention": settings.to_dict(), "family": fam.name,
        "lora_dir": str(lora_ref) if lora_ref is not None else None, "context_parallel": int(context_parallel),
        "fsdp": bool(fsdp), "compile_blocks": bool(compile_blocks),
    }
    return GenerationResult(path=Path(path), frames=frames, seconds=seconds, settings=record)
