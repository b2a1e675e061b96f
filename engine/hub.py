"""Push adapters to, and pull them from, the Hugging Face Hub; the model card.

`push_adapter(run_or_dir, repo_id)` uploads, in one commit to a model repo (private by default;
pushing again adds a commit, unchanged files are not re-sent):

- `pytorch_lora_weights.safetensors`: the diffusers-format LoRA, with its adapter metadata (and the
  family's per-part stock files beside it: a two-expert model's `pytorch_lora_weights_<expert>_noise...`);
- `lora_comfyui.safetensors`: the ComfyUI export (made from the diffusers file if missing), one per part
  (`ModelFamily.lora_parts`: `lora_comfyui_<expert>_noise.safetensors` for a two-expert model);
- `training_config.json`: the run's `config.json`;
- `loss.png`: training and validation loss, drawn from `events.jsonl`;
- `sample.mp4`: the latest extended-length sample video of the run;
- `README.md`: the model card (`build_model_card`).

`resolve_adapter(ref)` turns what the user typed into a local adapter folder: a folder passes
through; a Hub id `user/repo` or `user/repo@revision` is downloaded (the diffusers LoRA files, the card
and the training config only) into the Hugging Face cache.

The token comes from the caller (a field, `--token`, a Space's OAuth login), else `HF_TOKEN`,
else the cached `hf auth login`. It is never logged, never written to a file, and scrubbed from
every error message this module raises.

The endpoint is `HF_ENDPOINT`, read at call time (huggingface_hub reads it once, at import), or
the `endpoint=` argument.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import EngineError, InputError
from .lora import COMFY_WEIGHT_NAME, DIFFUSERS_WEIGHT_NAME, comfy_weight_name
from .presets import DEFAULT_PRESET

logger = logging.getLogger(__name__)

TRAINING_CONFIG_NAME = "training_config.json"
LOSS_PLOT_NAME = "loss.png"
SAMPLE_VIDEO_NAME = "sample.mp4"
CARD_NAME = "README.md"
# What a pull downloads: enough to load the adapter and know how it was trained.
# The diffusers LoRA and a family's per-part stock files beside it (what `ModelFamily.load_lora` reads).
DIFFUSERS_FILES = DIFFUSERS_WEIGHT_NAME.replace(".safetensors", "*.safetensors")
PULL_PATTERNS = [DIFFUSERS_FILES, CARD_NAME, TRAINING_CONFIG_NAME]
CARD_TAGS = ["lora", "text-to-video", "radial-attention", "diffusers", "video-length-extension", "radial-studio"]
DEFAULT_ENDPOINT = "https://huggingface.co"
TOKEN_HELP = ("Create a token with write access at https://huggingface.co/settings/tokens, then pass it "
              "(the token field, or --token), set HF_TOKEN, or run `hf auth login`.")

ProgressFn = Callable[[float, str], None]  # (fraction done in [0, 1], what is happening)

_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?$")


class HubError(EngineError):
    """The Hub refused a request or could not be reached. The message says what to do."""


# ---------------------------------------------------------------------------- token, endpoint


def resolve_token(token: str | None = None) -> str | None:
    """The token to use: the given one, else `HF_TOKEN`, else the cached login; None when none."""
    if token is not None and str(token).strip():
        return str(token).strip()
    from huggingface_hub import get_token

    return get_token()


def hub_endpoint(endpoint: str | None = None) -> str:
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _scrub(text: str, secrets: list[str | None]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    # Belt and braces: anything that looks like a Hub token or a bearer header.
    text = re.sub(r"hf_[A-Za-z0-9]{8,}", "hf_***", text)
    return re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _hub_error(err: Exception, action: str, repo_id: str, endpoint: str, token: str | None) -> HubError:
    """A clear, token-free message for an exception raised by huggingface_hub or the network."""
    import httpx2
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = getattr(getattr(err, "response", None), "status_code", None)
    cause, seen = err, 0
    while status is None and cause is not None and seen < 8:  # a cache fallback hides the server's answer
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
        status = getattr(getattr(cause, "response", None), "status_code", None)
    if isinstance(status, int) and status >= 500:
        msg = (f"Cannot {action}: the Hub at {endpoint} answered {status} (a server error, not your request). "
               "Try again later; nothing was changed locally.")
    elif isinstance(err, OfflineModeIsEnabled):
        msg = (f"Cannot {action}: offline mode is on (HF_HUB_OFFLINE=1). Unset HF_HUB_OFFLINE to reach "
               f"{endpoint}.")
    elif isinstance(err, RevisionNotFoundError):
        msg = f"Cannot {action}: '{repo_id}' has no such revision (branch, tag or commit). Check the part after '@'."
    elif status == 401 and not isinstance(err, RepositoryNotFoundError):
        msg = (f"Cannot {action}: the Hub at {endpoint} rejected the token (401 Unauthorized): it is invalid, "
               f"expired or revoked. {TOKEN_HELP}")
    elif status == 403:
        msg = (f"Cannot {action}: the token has no write access to '{repo_id}' (403 Forbidden). Use a token "
               f"with the 'write' role for that user or organisation. {TOKEN_HELP}")
    elif isinstance(err, RepositoryNotFoundError) or status == 404:
        msg = (f"Cannot {action}: repository '{repo_id}' was not found on {endpoint}, or it is private and "
               f"the token cannot read it. Check the id (user/name) and the token. {TOKEN_HELP}")
    elif isinstance(err, (httpx2.ConnectError, httpx2.TimeoutException, ConnectionError, TimeoutError)):
        msg = (f"Cannot {action}: the Hub at {endpoint} could not be reached ({type(err).__name__}). Check the "
               "network connection, proxy settings and HF_ENDPOINT, then try again. Nothing was changed locally.")
    elif isinstance(err, LocalEntryNotFoundError):
        msg = (f"Cannot {action}: the Hub at {endpoint} could not be reached and '{repo_id}' is not in the "
               "local cache. Check the network connection and HF_ENDPOINT, then try again.")
    elif isinstance(err, HfHubHTTPError):
        msg = f"Cannot {action}: the Hub answered {status}: {_first_line(err)}"
    else:
        msg = f"Cannot {action}: {type(err).__name__}: {_first_line(err)}"
    return HubError(_scrub(msg, [token]))


# ---------------------------------------------------------------------------- what to push


@dataclass
class AdapterSource:
    """An adapter folder and, when it belongs to a run, the run's files."""

    adapter_dir: Path
    run_dir: Path | None
    config: dict = field(default_factory=dict)
    config_path: Path | None = None
    events: list = field(default_factory=list)
    sample: Path | None = None

    @property
    def label(self) -> str:
        if self.run_dir is None:
            return self.adapter_dir.name
        rel = self.adapter_dir.relative_to(self.run_dir)
        return str(rel) if str(rel) != "." else self.run_dir.name


def _is_run_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and ((path / "events.jsonl").is_file() or (path / "status.json").is_file())


def find_adapter(run_or_dir: str | os.PathLike) -> AdapterSource:
    """Locate the adapter to push: a folder holding the LoRA file, or a run folder's
    `final/` (else `best_model/`, else the latest checkpoint's `lora/`)."""
    from .checkpoint import checkpoint_dirs
    from .jobs import RunDir

    path = Path(run_or_dir).expanduser()
    if not path.is_dir():
        raise InputError(f"'{run_or_dir}' is not a folder: choose a training run folder or an adapter folder "
                         f"holding {DIFFUSERS_WEIGHT_NAME}.")
    path = path.resolve()
    if (path / DIFFUSERS_WEIGHT_NAME).is_file():
        adapter = path
        run_dir = next((p for p in [path, *list(path.parents)[:3]] if _is_run_dir(p)), None)
    else:
        candidates = [path / "final", path / "best_model"]
        candidates += [c / "lora" for c in reversed(checkpoint_dirs(path / "checkpoints"))]
        adapter = next((c for c in candidates if (c / DIFFUSERS_WEIGHT_NAME).is_file()), None)
        if adapter is None:
            raise InputError(
                f"'{run_or_dir}' holds no adapter ({DIFFUSERS_WEIGHT_NAME}): a run writes `best_model/` at its "
                "first validation, checkpoints as it goes and `final/` when it finishes. Wait for one, or "
                "choose a folder that holds the LoRA file."
            )
        run_dir = path
    config, config_path = {}, None
    for candidate in ([run_dir / "config.json"] if run_dir else []) + [adapter / TRAINING_CONFIG_NAME]:
        if candidate.is_file():
            try:
                config, config_path = json.loads(candidate.read_text()), candidate
            except json.JSONDecodeError as err:
                raise InputError(f"'{candidate}' is not valid JSON ({err}); fix or remove it.") from None
            break
    events = RunDir(run_dir).read_events() if run_dir else []
    return AdapterSource(adapter_dir=adapter, run_dir=run_dir, config=config, config_path=config_path,
                         events=events, sample=_latest_sample(run_dir) if run_dir else None)


def _latest_sample(run_dir: Path) -> Path | None:
    """The newest sample video: the extended-length one when there is one."""
    folders = sorted((p for p in (run_dir / "samples").glob("*") if p.is_dir()), key=lambda p: p.name)
    for folder in reversed(folders):
        for name in ("extended.mp4", "base.mp4"):
            if (folder / name).is_file():
                return folder / name
        videos = sorted(folder.glob("*.mp4"))
        if videos:
            return videos[-1]
    return None


def adapter_metadata(adapter_dir: Path) -> dict:
    """rank, alpha and target modules from the LoRA file's adapter metadata ({} when absent)."""
    from safetensors import safe_open

    try:
        with safe_open(str(adapter_dir / DIFFUSERS_WEIGHT_NAME), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("lora_adapter_metadata", "{}"))
    except (OSError, ValueError):
        return {}
    meta = {k.removeprefix("transformer."): v for k, v in meta.items()}
    return {k: meta[k] for k in ("r", "lora_alpha", "target_modules") if k in meta}


def public_config(config: dict) -> dict:
    """The training config as published: local folders (output, data, a local model) by name only."""
    out = dict(config)
    for key in ("output_dir", "data_dir", "model_id"):
        value = out.get(key)
        if isinstance(value, str) and value and (os.sep in value or value.startswith(("~", "."))) \
                and not (key == "model_id" and _looks_like_hub_id(value)):
            out[key] = Path(value).name
    return out


def family_of_config(config: dict):
    """The model family of a run's config (its preset's), else the default family."""
    from .models import DEFAULT_FAMILY, family, family_named
    from .presets import load_preset

    try:
        return family(load_preset(config.get("preset") or DEFAULT_PRESET))
    except EngineError:
        return family_named(DEFAULT_FAMILY)


def diffusers_files(adapter_dir: Path) -> dict[str, Path]:
    """The adapter's diffusers-format files: the LoRA and any per-part stock files beside it."""
    return {p.name: p for p in sorted(adapter_dir.glob(DIFFUSERS_FILES)) if p.is_file()}


def comfy_exports(adapter_dir: Path, fam) -> dict[str, bytes | Path]:
    """The ComfyUI files by name, one per LoRA part (`ModelFamily.lora_parts`): the run's exports, or made from
    the diffusers-format file where missing ({} when the family has none)."""
    if not fam.capabilities.comfy_export:
        return {}
    from safetensors import safe_open

    from .lora import safetensors_bytes, to_comfy_state_dict

    with safe_open(str(adapter_dir / DIFFUSERS_WEIGHT_NAME), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("lora_adapter_metadata", "{}"))
        state = {k: f.get_tensor(k) for k in f.keys()}
    out: dict[str, bytes | Path] = {}
    for suffix, part in fam.lora_parts(state).items():
        name = comfy_weight_name(suffix)
        if (adapter_dir / name).is_file():
            out[name] = adapter_dir / name
            continue
        alpha = meta.get("transformer.lora_alpha", meta.get("lora_alpha"))
        if alpha is None:
            raise InputError(f"{adapter_dir / DIFFUSERS_WEIGHT_NAME} has no adapter metadata (lora_alpha), so no "
                             "ComfyUI export can be made from it; save it with engine.lora.save_lora.")
        tensors, skipped = to_comfy_state_dict(part, alpha, fam)
        out[name] = safetensors_bytes(tensors, {"format": "pt",
                                                **({"comfy_skipped": json.dumps(skipped)} if skipped else {})})
    return out


# ---------------------------------------------------------------------------- loss plot


def loss_plot_png(events: list[dict], width: int = 800, height: int = 420) -> bytes | None:
    """Training loss (per step) and validation loss, as a PNG drawn with PIL; None without losses."""
    from PIL import Image, ImageDraw, ImageFont

    train = [(e["step"], e["loss"]) for e in events if e.get("type") == "train" and _finite(e.get("loss"))]
    val = [(e["step"], e["val_loss"]) for e in events if e.get("type") == "validation" and _finite(e.get("val_loss"))]
    if not train and not val:
        return None
    points = train + val
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo, y_hi = min(p[1] for p in points), max(p[1] for p in points)
    if x_hi == x_lo:
        x_hi = x_lo + 1
    pad = (y_hi - y_lo) * 0.08 or abs(y_hi) * 0.1 or 1.0
    y_lo, y_hi = y_lo - pad, y_hi + pad

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=13)
    left, right, top, bottom = 70, width - 20, 40, height - 45

    def sx(x):
        return left + (x - x_lo) / (x_hi - x_lo) * (right - left)

    def sy(y):
        return bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top)

    for i in range(6):  # grid and ticks
        y = y_lo + (y_hi - y_lo) * i / 5
        draw.line([(left, sy(y)), (right, sy(y))], fill=(230, 230, 230))
        draw.text((left - 8, sy(y)), _fmt(y), fill="black", font=font, anchor="rm")
        x = x_lo + (x_hi - x_lo) * i / 5
        draw.line([(sx(x), top), (sx(x), bottom)], fill=(230, 230, 230))
        draw.text((sx(x), bottom + 6), str(int(round(x))) if x_hi - x_lo >= 5 else _fmt(x), fill="black", font=font,
                  anchor="mt")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) / 2, height - 8), "step", fill="black", font=font, anchor="mb")
    draw.text((left, 12), "loss", fill="black", font=font, anchor="lt")
    colors = {"train loss": (31, 119, 180), "validation loss": (255, 127, 14)}
    for (name, series) in (("train loss", train), ("validation loss", val)):
        if not series:
            continue
        xy = [(sx(s), sy(v)) for s, v in sorted(series)]
        if len(xy) > 1:
            draw.line(xy, fill=colors[name], width=2)
        for x, y in xy if (name == "validation loss" or len(xy) == 1) else []:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colors[name])
    legend_x = right - 150
    for i, name in enumerate(n for n, s in (("train loss", train), ("validation loss", val)) if s):
        y = top + 12 + 18 * i
        draw.line([(legend_x, y), (legend_x + 24, y)], fill=colors[name], width=3)
        draw.text((legend_x + 30, y), name, fill="black", font=font, anchor="lm")
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _finite(v) -> bool:
    import math

    return isinstance(v, (int, float)) and math.isfinite(v)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


# ---------------------------------------------------------------------------- model card


def _looks_like_hub_id(source: str | None) -> bool:
    if not source or source == "tiny" or source.startswith((".", "/", "~")):
        return False
    return bool(_HUB_ID.match(source)) and "@" not in source and not Path(source).expanduser().exists()


def _preset_info(config: dict) -> dict:
    """license, source (base model) and frame rate from the run's preset, when it can be loaded."""
    from .presets import load_preset

    info = {"name": config.get("preset"), "license": "other", "source": None, "fps": 16, "preset": None}
    try:
        preset = load_preset(config.get("preset") or DEFAULT_PRESET)
    except EngineError:
        return info
    info.update(name=preset["name"], license=preset["license"], source=preset["source"],
                fps=preset["generation"]["fps"], preset=preset)
    if config.get("model_id"):
        info["source"] = config["model_id"]
    return info


def _summary(events: list[dict]) -> dict:
    train = [e for e in events if e.get("type") == "train"]
    val = [e for e in events if e.get("type") == "validation" and _finite(e.get("val_loss"))]
    best = min(val, key=lambda e: e["val_loss"]) if val else None
    return {"steps": max((e.get("step", 0) for e in train), default=0),
            "final_loss": train[-1].get("loss") if train else None,
            "best_val_loss": best["val_loss"] if best else None, "best_val_step": best["step"] if best else None}


def build_model_card(run_dir: str | os.PathLike, repo_id: str | None = None, *, endpoint: str | None = None,
                     revision: str | None = None, files: set[str] | None = None) -> str:
    """The README.md for a run's (or an adapter folder's) Hub repo: YAML front matter + body.

    `files` names what the repo holds (default: what the folder can provide); the card links the
    loss plot and the sample video only when they are there. With `repo_id`, media links are
    absolute `resolve/` URLs (they render anywhere); without, relative paths.
    """
    import yaml

    src = run_dir if isinstance(run_dir, AdapterSource) else find_adapter(run_dir)
    cfg = src.config
    info = _preset_info(cfg)
    fam = family_of_config(cfg)
    summary = _summary(src.events)
    meta = adapter_metadata(src.adapter_dir)
    if files is None:
        files = {*diffusers_files(src.adapter_dir), CARD_NAME, *comfy_exports(src.adapter_dir, fam)}
        files |= {TRAINING_CONFIG_NAME} if src.config_path else set()
        files |= {LOSS_PLOT_NAME} if loss_plot_png(src.events) else set()
        files |= {SAMPLE_VIDEO_NAME} if src.sample else set()
    repo = repo_id or "<user>/<repo>"
    base_ref = f"{hub_endpoint(endpoint)}/{repo_id}/resolve/{revision or 'main'}/" if repo_id else ""

    base_model = info["source"] if _looks_like_hub_id(info["source"]) else None
    front = {}
    if base_model:
        front["base_model"] = base_model
    front.update({"library_name": "diffusers", "pipeline_tag": "text-to-video", "license": info["license"],
                  "tags": list(CARD_TAGS) + list(fam.card_tags)})
    if not base_model:
        # The Hub checks base_model against existing repos, so an embedded or local model is named here
        # (a plain key the Hub ignores) and in the body, not faked as a base_model id.
        front["base_model_note"] = (
            f"embedded {info['name']} model (random weights built from presets/{info['name']}.json of Radial Studio), "
            "not on the Hub" if info["source"] == "tiny" else f"a local model folder ({Path(str(info['source'])).name}), not on the Hub")
    yaml_text = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=1000)

    def g(key, default="n/a"):
        v = cfg.get(key)
        return default if v is None else v

    base_frames, ext_frames = g("base_num_frames", None), g("extended_num_frames", None)
    is_tiny = info["source"] == "tiny"
    what = ("a **length-extension LoRA**: it lets the base model generate longer videos than it was trained for "
            f"({base_frames} -> {ext_frames} frames), trained with **Radial Attention** (sparse, O(n log n) attention "
            "whose spatial window shrinks with temporal distance; arXiv 2506.19852)"
            if base_frames and ext_frames else
            "a LoRA adapter trained with **Radial Attention** (arXiv 2506.19852)")
    lines = [f"# {repo.split('/')[-1]}", "",
             f"This is {what}, made with Radial Studio.", ""]
    if base_model:
        lines += [f"Base model: [{base_model}](https://huggingface.co/{base_model}).", ""]
    elif is_tiny:
        lines += [f"Base model: the **embedded {info['name']} model** of Radial Studio: a tiny, randomly initialised "
                  f"model of the {fam.description} architecture, built from `presets/{info['name']}.json`. It exists "
                  "for demos and tests; its videos are noise and this adapter is not useful for real generation.", ""]
    else:
        lines += [f"Base model: a local model folder (`{info['source']}`).", ""]

    lines += ["## Training settings", "", "| setting | value |", "|---|---|"]
    rows = [("preset", info["name"] or g("preset")), ("adapter", f"`{src.label}`"),
            ("frames (base -> extended)", f"{g('base_num_frames')} -> {g('extended_num_frames')}"),
            ("resolution (h x w)", f"{g('height')} x {g('width')}"),
            ("attention pattern", g("pattern")), ("dense_layers", g("dense_layers")),
            ("dense_timesteps", g("dense_timesteps")), ("decay_factor", g("decay_factor")),
            ("block_size", g("block_size")),
            ("lora_rank / lora_alpha", f"{meta.get('r', g('lora_rank'))} / {meta.get('lora_alpha', g('lora_alpha'))}"),
            ("target_modules", ", ".join(sorted(meta.get("target_modules") or cfg.get("target_modules") or [])) or "n/a"),
            ("learning_rate", g("learning_rate")), ("seed", g("seed")),
            ("steps trained", summary["steps"] or "n/a")]
    if summary["final_loss"] is not None:
        rows.append(("final training loss", f"{summary['final_loss']:.4g}"))
    if summary["best_val_loss"] is not None:
        rows.append(("best validation loss", f"{summary['best_val_loss']:.4g} (step {summary['best_val_step']})"))
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "The full configuration is in "
              f"[`{TRAINING_CONFIG_NAME}`]({base_ref}{TRAINING_CONFIG_NAME})." if TRAINING_CONFIG_NAME in files else "",
              ""]
    lines += [
        "Radial attention: the first `dense_layers` transformer blocks and the first `dense_timesteps` denoising "
        "steps use dense attention; the rest use the radial mask with `decay_factor` setting how fast the spatial "
        "window shrinks with temporal distance. Sample with the same settings for the best results.", ""]

    if LOSS_PLOT_NAME in files:
        lines += ["## Training loss", "", f"![Training and validation loss]({base_ref}{LOSS_PLOT_NAME})", ""]
    if SAMPLE_VIDEO_NAME in files:
        lines += ["## Sample", "", f"An extended-length sample ({ext_frames or '?'} frames) from the run's last validation:",
                  "", f'<video controls autoplay loop muted src="{base_ref}{SAMPLE_VIDEO_NAME}"></video>', ""]

    fps = info["fps"]
    lines += ["## Use it with diffusers", ""]
    lines += fam.card_usage(base_model=base_model, repo=repo, weight_name=DIFFUSERS_WEIGHT_NAME,
                            num_frames=ext_frames or g("num_frames", 81), height=g("height", 480),
                            width=g("width", 832), fps=fps, tiny=is_tiny)
    lines += ["Stock diffusers samples with dense attention: the adapter works, but long videos cost O(n^2) "
              "attention. Radial Studio samples with the radial attention the adapter was trained with.", "",
              (f"ComfyUI: `{COMFY_WEIGHT_NAME}` uses {fam.card_comfy_note()}." if COMFY_WEIGHT_NAME in files else
               f"ComfyUI: {fam.card_comfy_note()}." if any(n.startswith("lora_comfyui") for n in files) else ""), "",
              "## Use it with Radial Studio", "", "```bash",
              f"python -m engine generate --preset {info['name'] or 'tiny-wan'} --prompt \"a red ball bounces on a beach\" "
              f"--num_frames {ext_frames or 161} --lora_checkpoint_dir {repo}", "```", "",
              f"In the app, type `{repo}` (optionally `{repo}@<revision>`) wherever an adapter is asked for.", ""]
    body = "\n".join(line for line in lines if line is not None)
    body = re.sub(r"\n{3,}", "\n\n", body)
    return f"---\n{yaml_text}---\n\n{body.strip()}\n"


# ---------------------------------------------------------------------------- push


def push_adapter(run_or_dir: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = True,
                 revision: str | None = None, progress: ProgressFn | None = None, *, endpoint: str | None = None,
                 commit_message: str | None = None) -> dict:
    """Push a run's adapter (or any adapter folder) with its card to a Hub model repo.

    Creates the repo when missing (private unless `private=False`; an existing repo keeps its
    visibility) and adds one commit to `revision` (default `main`; another branch is created from
    `main` when missing). Nothing is written locally. Returns {repo_id, repo_url, commit_url,
    commit_oid, revision, private (the repo's actual visibility), adapter, files}.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(fraction, message)

    repo_id = (repo_id or "").strip()
    m = _HUB_ID.match(repo_id)
    if not m or m.group("rev"):
        raise InputError(f"repo_id '{repo_id}' is not a Hub model id: write it as 'user/name' "
                         "(letters, digits, '-', '_', '.'), e.g. 'alice/radial-lora'.")
    endpoint = hub_endpoint(endpoint)
    token = resolve_token(token)
    if not token:
        raise HubError(f"No Hugging Face token found to push to '{repo_id}'. {TOKEN_HELP}")
    branch = check_revision((revision or "main").strip() or "main")

    report(0.0, "collecting files")
    src = find_adapter(run_or_dir)
    loss_png = loss_plot_png(src.events)
    ops: dict[str, bytes | Path] = {**diffusers_files(src.adapter_dir),
                                    **comfy_exports(src.adapter_dir, family_of_config(src.config))}
    if src.config_path is not None:
        ops[TRAINING_CONFIG_NAME] = (json.dumps(public_config(src.config), indent=2) + "\n").encode()
    if loss_png:
        ops[LOSS_PLOT_NAME] = loss_png
    if src.sample is not None:
        ops[SAMPLE_VIDEO_NAME] = src.sample
    files = set(ops) | {CARD_NAME}
    ops[CARD_NAME] = build_model_card(src, repo_id, endpoint=endpoint, revision=branch, files=files).encode()

    api = HfApi(endpoint=endpoint, token=token)
    action = f"push to '{repo_id}'"
    try:
        report(0.1, f"creating {repo_id} ({'private' if private else 'public'}) if missing")
        repo_url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if branch != "main":
            api.create_branch(repo_id, branch=branch, repo_type="model", exist_ok=True)
        report(0.3, f"uploading {len(ops)} files")
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(data) if isinstance(data, Path) else data)
                      for name, data in sorted(ops.items())]
        info = api.create_commit(repo_id, operations, repo_type="model", revision=branch,
                                 commit_message=commit_message or f"Upload Radial Studio adapter ({src.label})")
        report(0.95, "checking the repo")
        # An existing repo keeps its visibility: report the real one.
        is_private = bool(api.repo_info(repo_id, repo_type="model").private)
    except EngineError:
        raise
    except Exception as err:  # noqa: BLE001 - every failure becomes a token-free message
        raise _hub_error(err, action, repo_id, endpoint, token) from None
    report(1.0, "done")
    result = {"repo_id": repo_id, "repo_url": str(repo_url), "commit_url": info.commit_url, "commit_oid": info.oid,
              "revision": branch, "private": is_private, "adapter": str(src.adapter_dir), "files": sorted(ops)}
    logger.info("pushed %s to %s (commit %s)", src.adapter_dir, repo_id, info.oid)
    return result


# ---------------------------------------------------------------------------- pull


def check_revision(rev: str | None, ref: str = "") -> str | None:
    """A revision is a branch, tag or commit: parts of letters, digits, '_', '.', '-' joined by '/', none of them
    '.' or '..' and none starting with '.' (revisions name cache folders: no path may lead out of the cache)."""
    if rev is None:
        return None
    parts = rev.split("/")
    if not rev or rev.startswith("/") or any(not p or p.startswith(".") or not re.fullmatch(r"[\w.-]+", p)
                                             for p in parts):
        raise InputError(f"adapter '{ref or rev}': revision '{rev}' is not a branch, tag or commit name "
                         "(letters, digits, '_', '.', '-' and '/'; no part may be '.' or '..' or start with '.').")
    return rev


def parse_hub_ref(ref: str) -> tuple[str, str | None] | None:
    """('user/repo', revision or None) when `ref` reads as a Hub id, else None. InputError for a bad revision."""
    m = _HUB_ID.match(str(ref).strip())
    return (m.group("repo"), check_revision(m.group("rev"), str(ref).strip())) if m else None


def resolve_adapter(ref: str | os.PathLike, *, token: str | None = None, endpoint: str | None = None,
                    cache_dir: str | os.PathLike | None = None) -> Path:
    """A local adapter folder for `ref`: an existing folder as is; a Hub id `user/repo` or
    `user/repo@revision` downloaded (LoRA file, card, training config) into the HF cache."""
    path = Path(os.path.expanduser(str(ref)))
    if path.is_dir():
        return path
    return pull_adapter(ref, token=token, endpoint=endpoint, cache_dir=cache_dir)


def pull_adapter(ref: str | os.PathLike, *, token: str | None = None, endpoint: str | None = None,
                 cache_dir: str | os.PathLike | None = None) -> Path:
    """Download a Hub adapter (`user/repo` or `user/repo@revision`); never reads a local folder."""
    text = str(ref).strip()
    parsed = None if text.startswith((".", "/", "~")) else parse_hub_ref(text)
    if parsed is None:
        raise InputError(f"adapter '{ref}' is neither a local folder nor a Hub id ('user/repo' or 'user/repo@revision'). "
                         "Choose a run's final/ or best_model/ folder, or a Hub repo holding "
                         f"{DIFFUSERS_WEIGHT_NAME}.")
    repo_id, rev = parsed
    from huggingface_hub import snapshot_download

    endpoint = hub_endpoint(endpoint)
    token = resolve_token(token)
    try:
        folder = snapshot_download(repo_id, repo_type="model", revision=rev, allow_patterns=PULL_PATTERNS,
                                   endpoint=endpoint, token=token or False, cache_dir=cache_dir)
    except Exception as err:  # noqa: BLE001
        hub_err = _hub_error(err, f"download adapter '{text}'", repo_id, endpoint, token)
        raise HubError(f"{hub_err} (There is no local folder '{text}' either.)") from None
    folder = Path(folder)
    if not (folder / DIFFUSERS_WEIGHT_NAME).is_file():
        raise InputError(f"Hub repo '{text}' has no {DIFFUSERS_WEIGHT_NAME}, so it is not a diffusers-format LoRA "
                         "adapter (push one with `python -m engine push`).")
    return folder
