"""The model, the training step and the per-rank work of tests/attention/test_context_parallel.py.

Top-level functions, so that worker processes started by torch.multiprocessing can import them.
The tiny Wan transformer is built from the tiny-wan preset (optionally with more, narrower heads so
that 4 ranks can share them), seeded the same on every rank; its LoRA up-weights get seeded values
so that every LoRA weight has a gradient.
"""

from __future__ import annotations

import os
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

# 2 x 4 latent frames of 4 x 4 tokens: 64 tokens per sample, which 2 and 4 ranks split evenly.
LATENT_SHAPE = (2, 16, 4, 8, 8)
TEXT_LEN = 8
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2",
                "proj_out", "time_proj", "linear_1"]  # also layers before the split and after the gather


def build(heads: int, pattern: str, checkpointing: bool = False):
    """The tiny Wan transformer (`heads` heads, the preset's width) with radial/dense attention and a LoRA."""
    from diffusers import WanTransformer3DModel

    from engine.attention.processor import install_radial_attention, tag_family
    from engine.attention.schedule import AttentionSettings
    from engine.lora import add_lora
    from engine.models import family_named
    from engine.presets import load_preset

    tiny = load_preset("tiny-wan")["tiny"]
    cfg = dict(tiny["transformer"], patch_size=tuple(tiny["transformer"]["patch_size"]),
               text_dim=tiny["text_encoder"]["d_model"])
    width = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    cfg.update(num_attention_heads=heads, attention_head_dim=width // heads)
    torch.manual_seed(tiny["seed"])
    transformer = WanTransformer3DModel(**cfg)
    if checkpointing:  # the blocks (their split hook and all-to-alls) run again in the backward
        transformer.enable_gradient_checkpointing()
    family = family_named("wan")
    tag_family(transformer, family)
    # the first block dense, the others radial: both kinds of layer in one forward
    settings = AttentionSettings(pattern=pattern, dense_layers=1, dense_timesteps=0, block_size=16, backend="reference")
    schedule = install_radial_attention(transformer, settings, family)
    if schedule is not None:
        schedule.training = True
    params = add_lora(transformer, 4, 4.0, 0.0, LORA_TARGETS, seed=1)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():  # B = 0 would leave every A without a gradient
        for name, p in transformer.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return transformer, family, params


def inputs(per_frame: bool, latent_shape=LATENT_SHAPE) -> dict:
    gen = torch.Generator().manual_seed(3)
    batch, _, frames = latent_shape[:3]
    return {
        "latents": torch.randn(latent_shape, generator=gen),
        # per-frame levels become Wan's per-token timesteps [B, S] (family.forward), which are split too
        "timestep": torch.rand((batch, frames) if per_frame else (batch,), generator=gen) * 1000,
        "text": torch.randn(batch, TEXT_LEN, 32, generator=gen),
        "target": torch.randn(latent_shape, generator=gen),
    }


def train_step(transformer, family, params, batch: dict, cp=None) -> dict:
    """Forward + loss + backward (+ the CP gradient sum): the output and every LoRA gradient."""
    from engine.attention.context_parallel import reduce_gradients
    from engine.models.base import TextEmbeds

    for p in params:
        p.grad = None
    out = family.forward(transformer, batch["latents"], batch["timestep"], TextEmbeds(batch["text"]))
    loss = torch.nn.functional.mse_loss(out, batch["target"])
    loss.backward()
    if cp is not None:
        reduce_gradients(params, cp)
    names = {id(p): n for n, p in transformer.named_parameters()}
    return {"out": out.detach().clone(), "grads": {names[id(p)]: p.grad.detach().clone() for p in params}}


def reference(heads: int, pattern: str, per_frame: bool) -> dict:
    """The single-process result."""
    transformer, family, params = build(heads, pattern)
    return train_step(transformer, family, params, inputs(per_frame))


def _error(fn) -> str:
    try:
        fn()
    except ValueError as err:
        return str(err)
    return "no error"


def _checks(world: int) -> dict:
    """The refusals, on a 2-rank CP: a bad degree, a token count it does not divide, the wrong order."""
    from engine.attention.context_parallel import ContextParallel, disable_context_parallel, enable_context_parallel
    from engine.attention.processor import install_radial_attention
    from engine.attention.schedule import AttentionSettings

    errors = {"degree_not_dividing_world": _error(lambda: ContextParallel.from_env(3))}
    cp = ContextParallel.from_env(2)
    transformer, family, params = build(2, "radial")
    if world == 4:  # 4 ranks of one group, a model of 2 heads
        errors["degree_not_dividing_heads"] = _error(
            lambda: enable_context_parallel(transformer, ContextParallel.from_env(4), family))
    enable_context_parallel(transformer, cp, family)
    odd = inputs(False, latent_shape=(1, 16, 3, 6, 6))  # 3 x 3 x 3 = 27 tokens
    errors["tokens_not_divisible"] = _error(lambda: train_step(transformer, family, params, odd, cp))
    errors["install_after_enable"] = _error(
        lambda: install_radial_attention(transformer, AttentionSettings(pattern="dense"), family))
    errors["enable_twice"] = _error(lambda: enable_context_parallel(transformer, cp, family))
    disable_context_parallel(transformer)
    transformer._cp_plan = None  # as models without a diffusers plan (SkyReels-V2, VACE) have
    errors["no_cp_plan"] = _error(lambda: enable_context_parallel(transformer, cp, family))
    errors["install_after_disable"] = _error(
        lambda: install_radial_attention(transformer, AttentionSettings(pattern="dense"), family))
    return errors


def _cp_run(degree: int, heads: int, pattern: str, per_frame: bool, checkpointing: bool) -> dict:
    from engine.attention.context_parallel import ContextParallel, disable_context_parallel, enable_context_parallel

    cp = ContextParallel.from_env(degree)
    transformer, family, params = build(heads, pattern, checkpointing)
    before = dict(transformer.attn_processors)
    enable_context_parallel(transformer, cp, family)
    result = train_step(transformer, family, params, inputs(per_frame), cp)
    disable_context_parallel(transformer)
    # after disable: the same processors, and the single-process result again
    result["restored"] = all(transformer.attn_processors[k] is v for k, v in before.items())
    result["after_disable"] = train_step(transformer, family, params, inputs(per_frame))["out"]
    result.update(cp_rank=cp.rank, data_rank=cp.data_rank, data_size=cp.data_size)
    return result


def worker(rank: int, world: int, port: int, out_dir: str, runs: list[tuple]) -> None:
    """One rank: each CP run of `runs` ((degree, heads, pattern, per_frame, checkpointing)), then the refusals;
    saves it all."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=120))
    try:
        results = {run: _cp_run(*run) for run in runs}
        results["errors"] = _checks(world)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # rank 0 hosts the store: it must not leave while another rank still sets up a group
    except BaseException:  # the test reports every rank's traceback, not only the first one it sees
        (Path(out_dir) / f"rank{rank}.error").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()
