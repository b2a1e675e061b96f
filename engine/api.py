"""The engine's API: one function per UI action. `ui/` and `app.py` import only this module and
`engine.errors`; scripts and tests can make the same calls without Gradio.

Presets are offered per task (`presets_for`): a tab lists only the presets whose model family can
do its task, and every call refuses an incapable preset with a clear error (the engine functions
check again, so the CLI and scripts get the same refusal).
"""

from __future__ import annotations

from pathlib import Path

from .adapters import finished_adapters, resolve_adapter_ref  # noqa: F401
from .compare import compare_base_extended
from .config import config_from_preset
from .generate import generate_video
from .hub import pull_adapter, push_adapter  # noqa: F401
from .jobs import gpu_request, pump_queue, runs_root  # noqa: F401
from .launch.run_admin import delete_run, job_queue  # noqa: F401
from .launch.run_admin import run_log as _run_log
from .launch.run_config import clone_run_settings, import_training_config  # noqa: F401
from .launch.run_curves import COMPARE_SERIES, compare_run_losses  # noqa: F401
from .launch.run_files import run_downloads  # noqa: F401
from .launch.sample_gallery import sample_gallery  # noqa: F401
from .launch.training import (  # noqa: F401
    active_or_newest_run,
    list_runs,
    memory_estimate,
    resume_training,
    run_settings,
    start_training,
    stop_training,
    training_status,
)
from .launch.tta import (  # noqa: F401
    APP_SWEEP,
    list_tta_runs,
    start_tta,
    start_tta_sweep,
    stop_tta,
    tta_status,
)
from .paths import outputs_dir
from .presets import (  # noqa: F401
    DEFAULT_PRESET,
    check_capable,
    list_presets,
    load_preset,
    presets_for,
)
from .settings import ATTENTION, TTA, TTA_RUN  # noqa: F401
from .spaces_support import (  # noqa: F401
    generation_seconds,
    gpu_task,
    num_tokens,
    on_spaces,
    on_zero_gpu,
    work_seconds,
)
from .uploads import max_upload_mb  # noqa: F401

# ---------------------------------------------------------------------------- presets


def default_preset_for(task: str, preferred: str = DEFAULT_PRESET) -> str | None:
    names = presets_for(task)
    return preferred if preferred in names else (names[0] if names else None)


def require_preset(name: str, task: str) -> dict:
    """The preset, or ConfigError when its family cannot do `task`."""
    preset = load_preset(name)
    check_capable(preset, task)
    return preset


def generation_defaults(name: str) -> dict:
    return dict(load_preset(name)["generation"])


def has_experts(name: str) -> bool:
    """Whether the preset's model has noise-level experts (settings lora_experts, guidance_scale_2 apply)."""
    from .models import family

    return bool(family(load_preset(name)).experts)


def training_defaults(name: str) -> dict:
    """The training form's values for a preset: what a run started with no overrides would use."""
    return config_from_preset(name, validate=False).to_dict()


def tta_defaults(name: str) -> dict:
    return {**load_preset(name)["tta"], "seed": TTA_RUN["seed"].default}


def compare_defaults(name: str) -> dict:
    p = load_preset(name)
    return {"base_frames": p["training"]["base_num_frames"], "extended_frames": p["training"]["extended_num_frames"],
            "steps": p["generation"]["steps"], "decay_factor": p["attention"]["decay_factor"],
            "dense_layers": p["attention"]["dense_layers"], "dense_timesteps": p["attention"]["dense_timesteps"]}


# ---------------------------------------------------------------------------- in-request work


HISTORY_SUFFIX = ".settings.json"  # beside each generated mp4: what made it (the Generate tab's history)


def generate(prompt: str, *, preset: str = DEFAULT_PRESET, progress=None, **settings):
    """Text-to-video in the request (see engine.generate.generate_video for the settings), under the
    one-GPU-job rule (engine.jobs.gpu_request): refused while the allowed jobs run. The settings (and the
    time taken) are kept beside the video for `generation_history`."""
    from .jobs import atomic_write_json

    preset = require_preset(preset, "generate")
    with gpu_request("Generate"):
        result = generate_video(prompt, preset=preset, progress=progress, **settings)
    atomic_write_json(result.path.with_name(result.path.name + HISTORY_SUFFIX),
                      {**result.settings, "seconds": round(result.seconds, 2), "video": result.path.name})
    return result


def generation_history(limit: int = 12) -> list[dict]:
    """The newest generations in the outputs folder (newest first): each its video path and settings.
    Videos without readable settings (or settings without their video) are left out."""
    import json

    items = []
    for meta in outputs_dir().glob(f"*.mp4{HISTORY_SUFFIX}"):
        video = meta.with_name(meta.name[: -len(HISTORY_SUFFIX)])
        try:
            record = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if video.is_file() and isinstance(record, dict):
            items.append((meta.stat().st_mtime, {**record, "video": str(video)}))
    return [r for _, r in sorted(items, key=lambda x: x[0], reverse=True)[: max(0, int(limit))]]


def compare(prompt: str, *, preset: str = DEFAULT_PRESET, adapter: str = "", progress=None, context_parallel: int = 1,
            **settings):
    """Base (dense, base length) vs the adapter (radial, extended length), side by side. Returns (result, folder).

    `context_parallel` N > 1: over N processes (one per GPU) launched for this comparison (engine.launch.compare)."""
    lora_dir = resolve_adapter_ref(adapter) if adapter else None
    preset = require_preset(preset, "generate")
    with gpu_request("Compare"):  # the one-GPU-job rule, as for Generate
        if int(context_parallel) > 1:
            from .launch.compare import compare_over_processes

            result = compare_over_processes(prompt, preset=preset, lora_dir=lora_dir,
                                            context_parallel=int(context_parallel), **{"attention": None, **settings})
            return result, lora_dir
        return compare_base_extended(prompt, preset=preset, lora_dir=lora_dir, progress=progress, **settings), lora_dir


def tta_gpu_seconds(preset: str, steps: int) -> float:
    """A ZeroGPU duration estimate for one TTA run: steps of forward+backward on the prefix, two samplings."""
    p = load_preset(preset)
    side = p["tta"]["short_side"]
    passes = 3 * int(steps) + 2 * p["generation"]["steps"] * 2
    return work_seconds(passes, num_tokens(p, p["tta"]["total_frames"], side, side * 16 // 9 // 16 * 16), 1.0)


def compare_gpu_seconds(preset: str, base_frames: int, extended_frames: int, steps: int) -> float:
    p = load_preset(preset)
    size = (p["generation"]["height"], p["generation"]["width"])
    return generation_seconds(p, base_frames, *size, steps) + generation_seconds(p, extended_frames, *size, steps)


def generate_gpu_seconds(preset: str, num_frames: int, height: int, width: int, steps: int,
                         guidance_scale: float) -> float:
    return generation_seconds(load_preset(preset), num_frames, height, width, steps, guidance_scale)


# ---------------------------------------------------------------------------- the app


def served_paths() -> list[str]:
    """The app serves files only from its own output folders."""
    return [str(outputs_dir()), str(runs_root())]


def server_folders() -> dict[str, str]:
    """The server's own folders by the name a user may see ("" for the install itself), for scrubbing messages."""
    import tempfile

    from .paths import cache_dir
    from .safe_paths import data_root

    folders = {"runs": runs_root(), "outputs": outputs_dir(), "data": data_root(), "cache": cache_dir(),
               "": Path(__file__).resolve().parent.parent, "tmp": Path(tempfile.gettempdir())}
    return {label: str(Path(folder).resolve()) for label, folder in folders.items()}


def hub_push(adapter: str, repo_id: str, token: str | None = None, public: bool = False, progress=None) -> dict:
    folder = resolve_adapter_ref(adapter)
    # A run's adapter lives in runs/<id>/final: push the run so the card gets its config and losses.
    source = folder.parent if Path(folder).name in ("final", "best_model") else folder
    return push_adapter(source, repo_id, token=token, private=not public, progress=progress)


def without_server_paths(text: str) -> str:
    """`text` with the server's own folders written relative to them ("runs/...", "data/..."), as every message."""
    for label, folder in sorted(server_folders().items(), key=lambda kv: -len(kv[1])):
        text = text.replace(folder + "/", f"{label}/" if label else "").replace(folder, label or ".")
    return text


def run_log(run_id: str, lines: int = 200) -> str:
    """The end of a run's job log (engine.launch.run_admin.run_log), without the server's folders."""
    return without_server_paths(_run_log(run_id, lines))
