"""Length-extension LoRA trainer.

Each optimizer step, per clip: the same noise and timestep at two lengths.
- base loss: flow-matching loss on the first base-length latent frames, dense attention
  (the regime the model was trained in);
- extended loss: the same on the whole extended clip, attention on the preset's radial schedule;
- consistency loss: the extended prediction's first base-length latent frames should match the
  base-length prediction (held fixed), so extending does not change how a video starts.
The two lengths run as two forward/backward passes (one graph alive at a time; the first
without a DDP gradient sync). Everything is deterministic given the seed and the step: data
order comes from per-epoch batches of one bucket each (engine.data.sampler) and noise from a
generator seeded per micro-step, so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..attention.processor import install_radial_attention
from ..attention.schedule import AttentionSettings
from ..checkpoint import gather_training_state, latest_checkpoint, load_newest_intact, save_checkpoint
from ..config import TrainConfig
from ..errors import ConfigError, InputError
from ..jobs import RunDir, atomic_write_json, clean_leftovers, disk_full_message, this_process
from ..lora import add_lora, lora_state_dict, save_lora
from ..memory.block_swap import enable_block_swap
from ..memory.sharding import full, local, set_gradient_sync
from ..models import TextEmbeds, family

ProgressFn = Callable[[dict], None]


class Diverged(RuntimeError):
    pass


# ---------------------------------------------------------------------------- run folder checks


def _started(run: RunDir) -> bool:
    """A run has started once it logged an event or wrote a checkpoint (a launcher writes config.json first)."""
    return run.events_path.is_file() or run.checkpoints_dir.is_dir()


def prepare_run_dir(config: TrainConfig, resume: bool) -> RunDir:
    """Refuse to mix runs: a folder holding another run is left untouched."""
    run = RunDir(config.output_dir)
    if not config.output_dir:
        raise ConfigError("output_dir is required: the folder the run writes into.")
    if "\x00" in config.output_dir:
        raise InputError("output_dir contains a NUL character; choose a plain folder name.")
    if run.path.exists() and not run.path.is_dir():
        raise InputError(f"output dir '{run.path}' is a file, not a folder; choose a new --output_dir.")
    existing = run.config_path.is_file()
    if existing and not resume and not _started(run):
        try:  # a launcher prepared this folder with this very config: start it
            prepared = json.loads(run.config_path.read_text()) == config.to_dict()
        except (OSError, ValueError):
            prepared = False
        if prepared:
            return run.create()
    if existing and not resume:
        raise InputError(
            f"output dir '{run.path}' already holds a run (state: {run.read_status().get('state', 'unknown')}). "
            "Pass --resume to continue it, or choose another --output_dir."
        )
    if existing and resume:
        old = json.loads(run.config_path.read_text())
        new = config.to_dict()
        changed = sorted(k for k in new if k not in TrainConfig.RESUMABLE_CHANGES and old.get(k) != new[k])
        if changed:
            details = "; ".join(f"{k}: checkpoint {old.get(k)!r} vs now {new[k]!r}" for k in changed)
            raise ConfigError(
                f"cannot resume '{run.path}': the config differs from the run's ({details}). "
                "Resume with the original settings, or start a new run in another --output_dir."
            )
    # A job started by engine.jobs has already written its bookkeeping files there.
    job_files = {run.status_path.name, run.log_path.name, run.stop_path.name}
    if not existing and run.path.is_dir() and any(p.name not in job_files for p in run.path.iterdir()):
        raise InputError(
            f"output dir '{run.path}' is not empty and holds no run; choose an empty or new --output_dir."
        )
    return run.create()


# ---------------------------------------------------------------------------- data


def _empty_cache() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class CachedClips:
    """Latents and text embeddings of the clips, from the latent cache, kept on the CPU."""

    def __init__(self, items: list[dict], base_latent_frames: int):
        self.items = items
        self.base_latent_frames = base_latent_frames

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, indices: list[int], device) -> tuple[torch.Tensor, TextEmbeds]:
        latents = torch.cat([self.items[i]["latents"] for i in indices]).to(device)
        embeds = TextEmbeds.cat([self.items[i]["prompt_embeds"] for i in indices]).to(device)
        return latents, embeds


def check_dataset(config: TrainConfig, fam):
    """The run's samples (engine.data.samples.DatasetPlan), before anything is written: every problem of a
    metadata.json dataset at once, the clips skipped (and why), too few usable clips refused."""
    from ..data.dataset_config import DATASET_FILE
    from ..data.samples import plan_dataset
    from ..settings import DATASET

    plan = plan_dataset(config.data_dir, fam, frames=config.extended_num_frames, base_frames=config.base_num_frames,
                        height=config.height, width=config.width,
                        negative_prompt=config.preset_dict()["generation"]["negative_prompt"],
                        overrides={k: getattr(config, k) for k in DATASET})
    clips = len(plan.clip_ids())
    if clips <= config.num_validation_clips:
        why = "; ".join(f"{name}: {reason}" for name, reason in plan.skipped[:5])
        raise InputError(
            f"{config.data_dir} has {clips} usable clip(s); need more than num_validation_clips="
            f"{config.num_validation_clips} (held out for validation)." + (f" Skipped: {why}." if why else "") +
            (" Add longer clips, lower extended_num_frames, or change frame_extraction (--frame_extraction, or "
             f"{DATASET_FILE} in the data folder)." if plan.skipped else " Add clips."))
    if config.context_parallel > 1:  # every bucket's tokens split evenly over a CP group, checked before the run
        for h, w in dict.fromkeys((s.height, s.width) for s in plan.samples):
            tokens = fam.token_layout(config.extended_num_frames, h, w).num_tokens
            if tokens % config.context_parallel:
                raise ConfigError(f"context_parallel={config.context_parallel} does not divide the {tokens} video "
                                  f"tokens of the {h}x{w} (height x width) bucket of {config.data_dir}: turn buckets off "
                                  f"(--enable_bucket false, or enable_bucket = false in {DATASET_FILE}) or choose "
                                  "another context_parallel.")
    return plan


def load_clips(pipe, preset: dict, config: TrainConfig, plan) -> tuple[CachedClips, CachedClips]:
    """Encode (once, cached) and split into training samples and held-out validation samples."""
    from ..data.latent_cache import build_latent_cache, load_cached
    from ..data.samples import split_validation

    train_samples, val_samples = split_validation(plan.samples, config.num_validation_clips)
    base_lf = family(preset).latent_frames(config.base_num_frames)

    def cached(samples) -> CachedClips:
        items = []
        for sample, path in zip(samples, build_latent_cache(pipe, preset, config.data_dir, samples=samples)):
            tensors = load_cached(path)
            latents = tensors["latents"]
            items.append({"latents": latents if latents.ndim == 5 else latents[None],
                          "prompt_embeds": TextEmbeds.from_tensors(tensors, "prompt_embeds"),
                          "bucket": (sample.height, sample.width)})
        return CachedClips(items, base_lf)

    return cached(train_samples), cached(val_samples)


def batch_sampler(config: TrainConfig, clips: CachedClips):
    """Micro-batches of one bucket each, deterministic per (seed, epoch) (engine.data.sampler)."""
    from ..data.sampler import BucketSampler

    return BucketSampler([item["bucket"] for item in clips.items], config.batch_size, config.seed)


def _sample_indices(config: TrainConfig, sampler, step: int, micro: int, rank: int, world: int) -> list[int]:
    """Sample indices of one micro-batch: its place in the run (step, accumulation, rank) picks the batch."""
    return sampler.batch((step * config.gradient_accumulation_steps + micro) * world + rank)


def steps_per_epoch(config: TrainConfig, batches_per_epoch: int, world: int) -> int:
    return max(1, math.ceil(batches_per_epoch / (config.gradient_accumulation_steps * world)))


# ---------------------------------------------------------------------------- losses


def length_extension_losses(fam, model, schedule, latents, embeds: TextEmbeds, noise, sigmas, base_lf: int,
                            config: TrainConfig, backward: Callable[[torch.Tensor, bool], None] | None = None) -> dict:
    """Base, extended and consistency losses for one micro-batch, through the family's forward and objective.

    `backward(loss, sync)`, when given, is called after each length's pass so only one graph
    is alive at a time; without it, losses keep their graphs (for evaluation).
    """
    t = fam.timesteps(sigmas).to(latents.device)
    xt, target = fam.flow_pair(latents, noise, sigmas)
    # The base pass stays dense through its backward too: gradient checkpointing recomputes
    # the forward during backward, and must take the same attention path.
    if schedule is not None:
        schedule.force_dense = True
    try:
        pred_base = fam.forward(model, xt[:, :, :base_lf], t, embeds)
        loss_base = F.mse_loss(pred_base.float(), target[:, :, :base_lf].float())
        if backward is not None:
            backward(config.base_loss_weight * loss_base, False)
    finally:
        if schedule is not None:
            schedule.force_dense = False
    pred_ext = fam.forward(model, xt, t, embeds)
    loss_ext = F.mse_loss(pred_ext.float(), target.float())
    loss_cons = F.mse_loss(pred_ext[:, :, :base_lf].float(), pred_base.detach().float())
    rest = config.extended_loss_weight * loss_ext + config.consistency_loss_weight * loss_cons
    if backward is not None:
        backward(rest, True)
    total = config.base_loss_weight * loss_base.detach() + rest.detach()
    return {"loss": total, "loss_base": loss_base.detach(), "loss_extended": loss_ext.detach(),
            "loss_consistency": loss_cons.detach()}


@torch.no_grad()
def validation_loss(fam, model, schedule, clips: CachedClips, config: TrainConfig, device) -> dict:
    """Mean losses over held-out clips at fixed noise (seeded per clip) and fixed timesteps."""
    totals = {"loss": 0.0, "loss_base": 0.0, "loss_extended": 0.0, "loss_consistency": 0.0}
    count = 0
    for i in range(len(clips)):
        latents, embeds = clips.batch([i], device)
        gen = torch.Generator().manual_seed(10_000 + i)
        noise = torch.randn(latents.shape, generator=gen).to(latents)
        for s in config.validation_timesteps:
            sigmas = torch.full((latents.shape[0],), float(s))
            losses = length_extension_losses(fam, model, schedule, latents, embeds, noise, sigmas,
                                             clips.base_latent_frames, config)
            for k in totals:
                totals[k] += float(losses[k])
            count += 1
    return {f"val_{k}": v / count for k, v in totals.items()}


# ---------------------------------------------------------------------------- samples


SAMPLE_PROMPTS_FILE = "prompts.json"  # in each samples/step-N/: the prompt of each pair of videos


def sample_prompt_embeds(fam, pipe, config: TrainConfig, val: CachedClips) -> list[tuple[str | None, object]]:
    """(prompt, its embeddings on the CPU) per sample video pair: the run's sample_prompts, encoded once before
    the encoders leave the accelerator, else the first held-out clip's (its prompt text is not kept: None)."""
    if not config.sample_prompts:
        return [(None, val.items[0]["prompt_embeds"])]
    out = []
    for prompt in config.sample_prompts:
        with torch.no_grad():
            embeds, _ = fam.encode_prompt(pipe, prompt, "", 1.0)
        out.append((prompt, embeds.to("cpu")))
    return out


def _sample_name(name: str, i: int) -> str:
    return f"{name}.mp4" if i == 0 else f"{name}-{i}.mp4"  # the first pair keeps the names the app always showed


@torch.no_grad()
def write_samples(fam, pipe, schedule, prompts: list, config: TrainConfig, step: int, run: RunDir, generation: dict,
                  write: bool = True) -> dict:
    """Base (dense) and extended (radial) videos per sample prompt (`sample_prompt_embeds`), at the frame rate and
    guidance of `generation` (the preset's section: what Generate uses for this model), seeded by sample_seed (else
    the run's seed); returns the first pair's paths and `all` of them.

    `write=False`: generate only (a context-parallel rank that is not the main one takes part, writes nothing)."""
    from ..jobs import atomic_write_json
    from ..video import write_mp4

    folder = run.samples_dir / f"step-{step:06d}"
    out, listing = {}, []
    schedule_training = schedule.training if schedule is not None else False
    if schedule is not None:
        schedule.training = False
    transformer = fam.transformers(pipe)[0]
    seed = config.seed if config.sample_seed is None else config.sample_seed
    guidance = {"guidance_scale": generation["guidance_scale"], "guidance_scale_2": generation["guidance_scale_2"]}
    vae_device = pipe.vae.device
    if not config.use_model_offload:  # offload: the VAE stays on the CPU and decodes there (slower, less memory)
        pipe.vae.to(transformer.device)  # the encoders were moved off the accelerator for training
    try:
        for i, (prompt, cpu_embeds) in enumerate(prompts):
            embeds = cpu_embeds.to(transformer.device, transformer.dtype)
            pair = {"prompt": prompt}
            for name, frames in (("base", config.base_num_frames), ("extended", config.extended_num_frames)):
                if schedule is not None:
                    schedule.force_dense = name == "base"
                gen = torch.Generator().manual_seed(seed)
                video = fam.generate(pipe, embeds=embeds, negative_embeds=embeds.zeros_like(), height=config.height,
                                     width=config.width, num_frames=frames, steps=config.sample_steps,
                                     generator=gen, **guidance)
                if write:
                    pair[name] = str(write_mp4(video, folder / _sample_name(name, i), fps=generation["fps"]))
            listing.append(pair)
    finally:
        pipe.vae.to(vae_device)
        if schedule is not None:
            schedule.force_dense = False
            schedule.training = schedule_training
    if write:
        atomic_write_json(folder / SAMPLE_PROMPTS_FILE,
                          [{"prompt": p["prompt"], "base": _sample_name("base", i), "extended": _sample_name("extended", i),
                            "seed": seed, "steps": config.sample_steps, **guidance} for i, p in enumerate(listing)])
        out = {"base": listing[0]["base"], "extended": listing[0]["extended"], "all": listing}
    return out


# ---------------------------------------------------------------------------- the loop

# LoRA weights start near 0 (A ~ 1/sqrt(fan_in), B = 0) and stay well under 1 in healthy training; far
# beyond that the run has blown up even while its loss still reads as a number.
MAX_LORA_WEIGHT = 1e3


def _weights_problem(params) -> str | None:
    """What is wrong with this rank's LoRA weights (its shards of them under FSDP), if anything."""
    with torch.no_grad():
        for p in map(local, params):
            if p.numel() == 0:  # a small weight sharded over many ranks leaves some without a piece
                continue
            if not torch.isfinite(p).all():
                return "non-finite LoRA weights"
            if p.abs().max() > MAX_LORA_WEIGHT:
                return f"LoRA weights exploded (max |w| {float(p.abs().max()):.3g} > {MAX_LORA_WEIGHT:g})"
    return None


def _apply_learning_rate(optimizer, lr_scheduler, lr: float) -> None:
    """A resume may change the learning rate: the schedule continues from the checkpoint's step at the new base."""
    import warnings

    inner = getattr(lr_scheduler, "scheduler", lr_scheduler)  # under accelerate's wrapper
    inner.base_lrs = [lr for _ in inner.base_lrs]
    with warnings.catch_warnings():  # get_lr outside step() warns; here it is what we want
        warnings.simplefilter("ignore")
        values = inner.get_lr()
    for group, value in zip(getattr(optimizer, "optimizer", optimizer).param_groups, values):
        group["initial_lr"], group["lr"] = lr, value



def _save_lora_atomically(transformer, target: Path, fam, state: dict | None = None):
    tmp = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        saved = save_lora(transformer, tmp, fam, state=state)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-written adapter behind
        raise
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return saved


def convert_uploads(config: TrainConfig, staging: str | os.PathLike, preset: dict) -> None:
    """Turn the app's staged uploads into the run's dataset (config.data_dir), here in the job, then drop them.

    The app only checked the files' sizes and headers: decoding (and the exact frame counts) happens
    here, so a huge or broken upload costs the job, never the app. Done once: a resume finds the dataset.
    """
    from ..data.dataset import METADATA_FILE, convert_dataset

    target = Path(config.data_dir)
    if (target / METADATA_FILE).is_file():
        return
    staging = Path(staging)
    if not staging.is_dir():
        raise InputError("the uploaded clips of this run are gone (they are kept only until they are converted); "
                         "start a new run and upload them again.")
    # The run's own size and lengths (its settings may differ from the preset's recipe).
    run_recipe = {**preset, "training": {**preset["training"], "height": config.height, "width": config.width,
                                         "base_num_frames": config.base_num_frames,
                                         "extended_num_frames": config.extended_num_frames}}
    report = convert_dataset(staging, target, preset=run_recipe, overwrite=True)
    report.require_kept("among the uploads")
    if report.skipped:  # the run trains on the rest; the UI lists what was left out and why
        RunDir(config.output_dir).update_status(skipped_uploads=[f"{name}: {why}" for name, why in report.skipped])
    shutil.rmtree(staging, ignore_errors=True)


def apply_memory_options(transformer, config: TrainConfig, use_cuda: bool):
    """Gradient checkpointing (its saved inputs in host memory with offload_activations), fp8 base weights and
    token-sliced feed-forwards (ffn_chunks).

    After the LoRA is added: fp8 storage leaves the adapters alone only when they exist already.
    """
    from ..memory.chunking import chunk_feed_forward
    from ..memory.fp8 import store_base_in_fp8
    from ..memory.offload import enable_activation_offload

    chunk_feed_forward(transformer, config.ffn_chunks)
    if config.fp8_base:
        store_base_in_fp8(transformer, torch.bfloat16 if (use_cuda and config.use_mixed_precision) else torch.float32)
    if config.use_gradient_checkpointing and config.offload_activations:
        return enable_activation_offload(transformer)
    if config.use_gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    return None


def train(config: TrainConfig, resume: bool = False, progress: ProgressFn | None = None,
          prepare_from: str | os.PathLike | None = None) -> dict:
    """Run (or resume) a length-extension training run. Returns the final status.

    `prepare_from`: staged uploads (the app's) to convert into config.data_dir first; what is wrong
    with them (or the dataset made of them) goes into the run's status as its error.
    """
    preset = config.preset_dict()
    config.validate(preset)
    if config.gpu_memory_gb is not None:  # the plan picks the memory options for this machine's free host memory
        from ..memory.plan import apply_plan, free_host_gib

        if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":  # an accelerate FSDP config: plan for it
            config.fsdp = True
        world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun / accelerate launch
        apply_plan(config, preset, config.gpu_memory_gb, free_host_gib(), world,
                   int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))
        config.validate(preset)  # what the plan chose, with the rest (e.g. block_swap beside compile_blocks)
    if prepare_from is None:
        plan = check_dataset(config, family(preset))
    else:
        try:
            RunDir(config.output_dir).update_status(phase="converting the uploaded clips")
            convert_uploads(config, prepare_from, preset)
            plan = check_dataset(config, family(preset))
        except InputError as err:
            RunDir(config.output_dir).update_status(state="failed", error=str(err), phase=None)
            raise
        RunDir(config.output_dir).update_status(phase=None)
    run = prepare_run_dir(config, resume)
    clean_leftovers(run)  # a worker that died mid-write (a full disk, a kill) left temporary files
    try:
        return _train(config, preset, run, plan, resume, progress)
    except Exception as err:
        disk_full = isinstance(err, OSError) and err.errno == errno.ENOSPC
        why = disk_full_message(run.path) if disk_full else None
        try:
            run.update_status(state="failed", error=why or ("disk full: " if disk_full else "") +
                              f"{type(err).__name__}: {str(err)[:2000]}")
        except OSError:
            pass  # the disk is full: readers report it (engine.jobs.job_status)
        raise


def _agreed(flag: bool, accelerator) -> bool:
    """True on every rank when it is true on any (a stop read from disk at slightly different moments)."""
    if accelerator.num_processes == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _mean_over_ranks(values: dict, accelerator) -> dict:
    if accelerator.num_processes == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(list(values.values()), dtype=torch.float64, device=accelerator.device)
    dist.all_reduce(t)  # context-parallel ranks hold equal losses: the world mean is the mean over samples
    return dict(zip(values, (t / accelerator.num_processes).tolist()))


def _context_parallel(transformer, config: TrainConfig, fam):
    """Ulysses context parallelism of degree config.context_parallel over the launched processes (None: off).

    Every rank of a CP group holds part of each gradient; the DDP that accelerate wraps the model in
    averages over all ranks, so the losses are scaled by the degree (see _train) to make that the sum.
    """
    if config.context_parallel == 1:
        return None
    from ..attention.context_parallel import ContextParallel, enable_context_parallel

    cp = ContextParallel.from_env(config.context_parallel)
    enable_context_parallel(transformer, cp, fam)
    return cp


def _fsdp_from_launcher(config: TrainConfig, accelerator) -> bool:
    """An accelerate config with FSDP (version 2 only) turns config.fsdp on. Returns reshard_after_forward."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.FSDP:
        return True
    plugin = accelerator.state.fsdp_plugin
    version = getattr(plugin, "fsdp_version", 1)
    if version != 2:
        raise InputError(f"the accelerate config asks for FSDP version {version}: this trainer shards with FSDP2; "
                         "set fsdp_version: 2 in its fsdp_config (or pass --fsdp true to a plain multi-GPU config).")
    if config.fp8_base:
        raise InputError("the accelerate config asks for FSDP, and fsdp cannot be combined with fp8_base: turn "
                         "fp8_base off (sharding saves more).")
    config.fsdp = True
    return bool(getattr(plugin, "reshard_after_forward", True))


def _fsdp(transformer, config: TrainConfig, reshard_after_forward: bool) -> bool:
    """Shard the transformer with FSDP2 when config.fsdp is on."""
    if not config.fsdp:
        return False
    from ..memory.sharding import shard_transformer

    shard_transformer(transformer, reshard_after_forward=reshard_after_forward)
    return True


def _train(config: TrainConfig, preset: dict, run: RunDir, plan, resume: bool,
           progress: ProgressFn | None) -> dict:
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler

    use_cuda = torch.cuda.is_available()
    accelerator = Accelerator(
        gradient_accumulation_steps=1,  # we accumulate ourselves (two backward passes per micro-step)
        mixed_precision="bf16" if (use_cuda and config.use_mixed_precision) else "no",
        cpu=not use_cuda,
    )
    main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    reshard = _fsdp_from_launcher(config, accelerator)  # before the config is written: it records fsdp
    if main:
        atomic_write_json(run.config_path, config.to_dict())
        # The stop flag stays: a stop asked for while the job was starting ends the run at its first step.
        run.update_status(state="running", **this_process(), step=0, error=None, phase="loading the model")
    accelerator.wait_for_everyone()

    def phase(name: str | None) -> None:  # what the first seconds are spent on, shown beside "step 0/N"
        if main:
            run.update_status(phase=name)

    fam = family(preset)
    pipe = fam.load_pipeline(preset, accelerator.device)
    clips = len(plan.clip_ids())
    windows = "" if len(plan.samples) == clips else f"{len(plan.samples)} windows of "
    phase(f"encoding {windows}{clips} clips (latent cache)")
    train_clips, val_clips = load_clips(pipe, preset, config, plan)
    prompts = sample_prompt_embeds(fam, pipe, config, val_clips) if config.sample_steps > 0 else []
    sampler = batch_sampler(config, train_clips)
    phase("preparing the LoRA and attention")
    fam.offload_encoders(pipe)
    _empty_cache()

    transformer = fam.denoiser(pipe, config.lora_experts)  # a two-expert model: the experts being trained
    params = add_lora(transformer, config.lora_rank, config.lora_alpha, config.lora_dropout, config.target_modules,
                      seed=config.seed)
    if config.use_mixed_precision and use_cuda:
        for p in params:  # trainable weights in fp32; the frozen base stays in bf16
            p.data = p.data.float()
    apply_memory_options(transformer, config, use_cuda)
    settings = AttentionSettings(pattern=config.pattern, dense_layers=config.dense_layers,
                                 dense_timesteps=config.dense_timesteps, decay_factor=config.decay_factor,
                                 block_size=config.block_size, backend=config.attention_backend,
                                 dense_backend="sage" if config.use_sage_attention else "sdpa")
    schedule = install_radial_attention(transformer, settings, fam)
    if schedule is not None:
        schedule.training = True
    if config.compile_blocks:  # after the LoRA, the memory options and the processors: the graphs include them
        from ..models.regional_compile import set_block_compilation

        set_block_compilation(transformer, True)
    cp = _context_parallel(transformer, config, fam)
    # Which sample this rank trains on: ranks of one context-parallel group share a sample.
    data_rank, data_size = (cp.data_rank, cp.data_size) if cp else (rank, world)
    cp_scale = config.context_parallel  # DDP's (or FSDP's) mean over the CP ranks' partial gradients, times N: their sum
    sharded = _fsdp(transformer, config, reshard)
    if sharded:  # sharding replaced the parameters with their shards
        params = [p for p in transformer.parameters() if p.requires_grad]

    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                  weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
    per_epoch = steps_per_epoch(config, sampler.batches_per_epoch, data_size)
    total_steps = config.max_steps or config.num_epochs * per_epoch
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps,
                                 num_training_steps=total_steps)
    if sharded:
        # FSDP2 wraps the model already, and under an accelerate FSDP config accelerate's prepare would shard it
        # again (it takes the model and the optimizer only together). The plain optimizer and schedule serve:
        # accelerate's wrappers add an fp16 loss scaler and accumulation skips, neither of which is used here.
        model = transformer
    else:
        model, optimizer, lr_scheduler = accelerator.prepare(transformer, optimizer, lr_scheduler)
    model.train()
    # After accelerate's prepare, which would move the swapped weights back to the GPU.
    enable_block_swap(transformer, config.block_swap)
    # Under FSDP every rank takes part in each forward and in gathering what is saved.
    everyone = bool(cp) or sharded

    step, best = 0, float("inf")
    ckpt, state, damaged = (load_newest_intact(run.checkpoints_dir, transformer=transformer, optimizer=optimizer,
                                               lr_scheduler=lr_scheduler) if resume else (None, None, []))
    if main:
        for problem in damaged:  # named in the events; the run goes on from the newest intact checkpoint
            run.append_event({"type": "checkpoint_skipped", "step": 0, "error": problem})
    if resume and damaged and ckpt is None:
        raise InputError(f"cannot resume '{run.path.name}': no checkpoint reads back whole ({'; '.join(damaged)}). "
                         "Start a new run.")
    if ckpt is not None:
        _apply_learning_rate(optimizer, lr_scheduler, config.learning_rate)
        step, best = state["step"], state.get("best_val_loss", float("inf"))
        if main:
            run.truncate_events_after(step)
            run.append_event({"type": "resume", "step": step, "checkpoint": ckpt.name})
    elif main:
        run.events_path.unlink(missing_ok=True)
    if main:  # what the data gave: the UI and the CLI list what was left out, and why
        skipped = [f"{name}: {why}" for name, why in plan.skipped]
        run.update_status(skipped_clips=skipped, buckets=plan.buckets())
        if ckpt is None:
            run.append_event({"type": "dataset", "step": 0, "samples": len(plan.samples), "clips": len(plan.clip_ids()),
                              "buckets": plan.buckets(), "skipped": skipped, **plan.options})

    def checkpoint(at_step: int) -> None:
        gathered = gather_training_state(transformer, optimizer) if sharded else None
        if main:
            save_checkpoint(run.checkpoints_dir, at_step, transformer=transformer, family=fam, optimizer=optimizer,
                            lr_scheduler=lr_scheduler, keep=config.checkpoints_total_limit,
                            state={"best_val_loss": best, "config": config.to_dict()}, gathered=gathered)
        accelerator.wait_for_everyone()

    def save_adapter(folder: str):
        state = lora_state_dict(transformer) if sharded else None  # a collective when sharded
        return _save_lora_atomically(transformer, run.path / folder, fam, state) if main else None

    def validate(at_step: int) -> None:
        nonlocal best
        if main or everyone:
            model.eval()
            with accelerator.autocast():
                val = validation_loss(fam, transformer, schedule, val_clips, config, accelerator.device)
            event = {"type": "validation", "step": at_step, **val}
            if val["val_loss"] < best:
                best = val["val_loss"]
                save_adapter("best_model")
                event["best"] = True
            if config.sample_steps > 0:
                event["samples"] = write_samples(fam, pipe, schedule, prompts, config, at_step, run,
                                                 preset["generation"], write=main)
            if main:
                run.append_event(event)
            model.train()
        accelerator.wait_for_everyone()

    if step == 0:
        phase("validating the untrained model")
        validate(0)
    phase(None)
    started, start_step = time.perf_counter(), step
    accum = config.gradient_accumulation_steps
    final_state = "finished"
    try:
        while step < total_steps:
            if _agreed(run.stop_requested(), accelerator):
                final_state = "stopped"
                break
            t0 = time.perf_counter()
            torch.manual_seed(config.seed * 100_003 + step)  # LoRA dropout; deterministic per step
            sums = {"loss": 0.0, "loss_base": 0.0, "loss_extended": 0.0, "loss_consistency": 0.0}
            for micro in range(accum):
                idx = _sample_indices(config, sampler, step, micro, data_rank, data_size)
                latents, embeds = train_clips.batch(idx, accelerator.device)
                # Seeded by the sample's place in the step, so N data-parallel ranks draw what one process with
                # N times the accumulation draws (and ranks of a context-parallel group draw the same).
                gen = torch.Generator().manual_seed((config.seed * 1_000_003 + step) * 4096 + (micro * data_size + data_rank) * 64)
                noise = torch.randn(latents.shape, generator=gen).to(latents)
                noise_range = fam.noise_range(config.lora_experts)  # the trained experts' levels
                sigmas = fam.sample_sigmas(latents.shape[0], gen, latents.shape, scheme=config.timestep_sampling,
                                           shift=config.flow_shift,
                                           **({} if noise_range == (0.0, 1.0) else {"noise_range": noise_range}))
                last_micro = micro == accum - 1

                def backward(loss, sync_point):
                    if not torch.isfinite(loss):
                        raise Diverged(f"non-finite loss {float(loss.detach())} at step {step + 1}")
                    if sharded:  # reduce-scatter at the step's last backward; accumulate unsharded before it
                        set_gradient_sync(model, sync_point and last_micro)
                        accelerator.backward(loss * cp_scale / accum)
                    elif sync_point and last_micro:
                        accelerator.backward(loss * cp_scale / accum)
                    else:
                        with accelerator.no_sync(model):
                            accelerator.backward(loss * cp_scale / accum)

                with accelerator.autocast():
                    losses = length_extension_losses(fam, model, schedule, latents, embeds.to(latents.dtype), noise,
                                                     sigmas, train_clips.base_latent_frames, config, backward)
                for k in sums:
                    sums[k] += float(losses[k]) / accum
            sums = _mean_over_ranks(sums, accelerator)  # the step's loss over every rank's samples, not rank 0's
            grad_norm = full(accelerator.clip_grad_norm_(params, config.max_grad_norm))
            if not torch.isfinite(torch.as_tensor(grad_norm)):
                raise Diverged(f"non-finite gradient norm at step {step + 1}")
            optimizer.step()
            problem = _weights_problem(params)
            if sharded and _agreed(problem is not None, accelerator):  # each rank checked its own shards
                problem = problem or "non-finite LoRA weights on another rank"
            if problem:  # checked before anything (a checkpoint, the best model) is saved from these weights
                raise Diverged(f"{problem} after step {step + 1}")
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            step_time = time.perf_counter() - t0
            if main:
                rate = (step - start_step) / max(time.perf_counter() - started, 1e-9)
                event = {"type": "train", "step": step, **sums, "lr": lr_scheduler.get_last_lr()[0],
                         "grad_norm": float(grad_norm), "step_time": step_time}
                run.append_event(event)
                status = run.update_status(state="running", step=step, total_steps=total_steps, it_per_s=rate,
                                           eta_seconds=(total_steps - step) / rate if rate > 0 else None,
                                           loss=sums["loss"], best_val_loss=best if best < float("inf") else None)
                if progress is not None:
                    progress(status)
            if step % config.validation_steps == 0 or step == total_steps:
                validate(step)
            if step % config.checkpointing_steps == 0 or step == total_steps or _agreed(run.stop_requested(), accelerator):
                checkpoint(step)
    except Diverged as err:
        if main:
            run.append_event({"type": "diverged", "step": step, "error": str(err)})
            last = latest_checkpoint(run.checkpoints_dir)
            return run.update_status(state="diverged", error=f"{err}; the last good checkpoint is "
                                     f"{last.name if last else 'none'} (resume from it with a lower learning rate)")
        return {}
    saved = save_adapter("final") if final_state == "finished" else None
    if main:
        if saved is not None:
            if saved.comfy_skipped:  # peft trained them; ComfyUI has no module of that name
                run.append_event({"type": "export", "comfy_skipped": saved.comfy_skipped})
                run.update_status(warning=f"the ComfyUI export leaves out {len(saved.comfy_skipped)} module(s) "
                                          f"ComfyUI cannot load: {', '.join(saved.comfy_skipped[:6])}"
                                          f"{' ...' if len(saved.comfy_skipped) > 6 else ''} (the diffusers file has them)")
        run.clear_stop()
        return run.update_status(state=final_state, step=step, total_steps=total_steps,
                                 best_val_loss=best if best < float("inf") else None, eta_seconds=0)
    return {}
