"""Block swap (engine.memory.block_swap) on the tiny Wan model, CPU: the same training, weights only where used.

On the CPU the "device" copy is a second host buffer, so the checks follow the data pointers: a swapped
weight must point into its block's loaded buffer whenever a layer reads it (forward, checkpoint
recompute, the nested feed-forward recompute), and back into the host slab between uses.
"""

import pytest
import torch

from engine.errors import ConfigError, InputError
from engine.memory.block_swap import BlockSwap, enable_block_swap
from engine.memory.chunking import chunk_feed_forward
from engine.memory.offload import ActivationOffload, PinnedPool, enable_activation_offload

from tests.memory.test_memory_options import _inputs, _tiny_hunyuan_with_lora, _tiny_with_lora


def _in(t: torch.Tensor, buf: torch.Tensor) -> bool:
    start = buf.data_ptr()
    return start <= t.data_ptr() < start + buf.numel()


class _Watch:
    """Forward pre-hooks on every swapped layer: is its weight the loaded copy when it runs?"""

    def __init__(self, swap: BlockSwap):
        self.swap, self.uses, self.from_host, self.most_loaded = swap, 0, [], 0
        for s in swap.swapped.values():
            for m in swap.blocks[s.index].modules():
                if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad:
                    m.register_forward_pre_hook(self._check(s, m))

    def _check(self, s, module):
        def hook(mod, args):
            self.uses += 1
            if s.buffer is None or _in(module.weight, s.slab):
                self.from_host.append(s.index)
            self.most_loaded = max(self.most_loaded, len(self.swap.loaded()))
        return hook


def _train_steps(model, steps=2, swap=None):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        latents, t, text = _inputs()
        out = model(hidden_states=latents, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        loss = out.square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if swap is not None:
            assert swap.loaded() == []  # every block gave its weights back when the backward ended
    return losses, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("ffn_chunks", [1, 2])
def test_training_with_every_block_swapped_equals_training_without(tiny_preset, ffn_chunks):
    reference = _tiny_with_lora(tiny_preset)
    reference.enable_gradient_checkpointing()
    chunk_feed_forward(reference, ffn_chunks)
    expected_losses, expected = _train_steps(reference)

    model = _tiny_with_lora(tiny_preset)
    model.enable_gradient_checkpointing()
    chunk_feed_forward(model, ffn_chunks)  # nested checkpoints recompute inside the block's backward
    swap = enable_block_swap(model, len(model.blocks))
    watch = _Watch(swap)
    losses, got = _train_steps(model, swap=swap)
    assert losses == expected_losses
    for name in expected:  # LoRA updates persist from step to step: nothing restores a stale copy
        assert torch.equal(got[name], expected[name]), name
    assert watch.uses > 0 and watch.from_host == []  # every use read the loaded copy
    assert watch.most_loaded <= 2  # the block running and the one copied in
    for s in swap.swapped.values():  # between steps the weights are the host slabs
        assert all(_in(p, s.slab) for p in s.params)


def test_sampling_forwards_swap_too_and_match(tiny_preset):
    reference = _tiny_with_lora(tiny_preset).eval()
    model = _tiny_with_lora(tiny_preset).eval()
    swap = BlockSwap(model, 2)
    assert sorted(swap.swapped) == [0, 1] and swap.host_bytes > 0
    watch = _Watch(swap)
    latents, t, text = _inputs()
    with torch.no_grad():
        a = reference(hidden_states=latents, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        b = model(hidden_states=latents, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    assert torch.equal(a, b)
    assert watch.uses > 0 and watch.from_host == [] and swap.loaded() == []
    swap.remove()  # weights back on the device, no hooks: the model runs as before
    assert all(not any(_in(p, s.slab) for p in s.params) for s in swap.swapped.values())
    with torch.no_grad():
        c = model(hidden_states=latents, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    assert torch.equal(a, c)


def test_block_swap_composes_with_offloaded_activations_and_fp8(tiny_preset):
    from engine.memory.fp8 import FP8, store_base_in_fp8

    def build(swapped: bool):
        model = _tiny_with_lora(tiny_preset)
        store_base_in_fp8(model, torch.float32)
        enable_activation_offload(model, ActivationOffload(PinnedPool(pin=False), min_bytes=0,
                                                           offloadable=lambda t: True))
        return model, (enable_block_swap(model, len(model.blocks)) if swapped else None)

    reference, _ = build(False)
    expected_losses, expected = _train_steps(reference)
    model, swap = build(True)
    assert any(p.dtype == FP8 for s in swap.swapped.values() for p in s.host)  # the fp8 storage is what moves
    losses, got = _train_steps(model, swap=swap)
    assert losses == expected_losses
    assert all(torch.equal(got[n], expected[n]) for n in expected)


def test_a_bad_block_count_and_a_model_without_blocks_are_refused(tiny_preset):
    model = _tiny_with_lora(tiny_preset)
    with pytest.raises(InputError, match=r"block_swap=9: WanTransformer3DModel has 4 blocks; choose 0 \(off\) to 4"):
        BlockSwap(model, 9)
    assert enable_block_swap(model, 0) is None
    with pytest.raises(InputError, match="names no transformer block classes"):
        BlockSwap(torch.nn.Sequential(torch.nn.Linear(2, 2)), 1)


def test_block_swap_needs_checkpointing_and_not_fsdp():
    from engine.config import config_from_preset

    with pytest.raises(ConfigError, match="'block_swap'=1 needs use_gradient_checkpointing=true"):
        config_from_preset("tiny-wan", data_dir="-", output_dir="-", block_swap=1, use_gradient_checkpointing=False)
    with pytest.raises(ConfigError, match="'fsdp' and 'block_swap'"):
        config_from_preset("tiny-wan", data_dir="-", output_dir="-", block_swap=1, fsdp=True,
                           use_gradient_checkpointing=True)
    with pytest.raises(ConfigError, match="'block_swap'"):
        config_from_preset("tiny-wan", data_dir="-", output_dir="-", block_swap=-1)
    with pytest.raises(ConfigError, match=r"'block_swap'=9: the trained model has 4 blocks"):
        config_from_preset("tiny-wan", data_dir="-", output_dir="-", block_swap=9, use_gradient_checkpointing=True)


def test_a_run_with_block_swap_trains_as_one_without(tmp_path):
    import json

    from engine.cli import main
    from engine.data.dataset import create_synthetic_dataset

    data = create_synthetic_dataset(tmp_path / "data", 3, preset="tiny-wan", seed=0)
    common = ["train", "--preset", "tiny-wan", "--data_dir", str(data), "--max_steps", "2", "--validation_steps", "2",
              "--checkpointing_steps", "100", "--sample_steps", "0", "--seed", "0", "--lora_dropout", "0",
              "--use_gradient_checkpointing", "true", "--quiet"]

    def losses(run):
        events = [json.loads(line) for line in (tmp_path / run / "events.jsonl").read_text().splitlines()]
        return [(e["type"], e.get("loss")) for e in events if e["type"] in ("train", "validation")]

    assert main([*common, "--output_dir", str(tmp_path / "plain")]) == 0
    assert main([*common, "--output_dir", str(tmp_path / "swap"), "--block_swap", "3"]) == 0
    assert json.loads((tmp_path / "swap" / "config.json").read_text())["block_swap"] == 3
    assert losses("swap") == losses("plain") and len(losses("plain")) >= 3


def test_prefetching_stays_within_one_experts_blocks():
    """A two-expert denoiser runs one expert per forward: the last high-noise block must not fetch the low one's first."""
    from engine.models import family
    from engine.presets import load_preset

    preset = load_preset("tiny-wan2.2-a14b")
    fam = family(preset)
    pair = fam.denoiser(fam.load_pipeline(preset)).requires_grad_(False)  # a pipeline of its own: frozen here
    swap = enable_block_swap(pair, 8)  # every block of both experts (4 each)
    try:
        assert sorted(swap.swapped) == list(range(8))
        gen = torch.Generator().manual_seed(0)
        x, text = torch.randn(1, 16, 3, 8, 8, generator=gen), torch.randn(1, 8, 32, generator=gen)
        for level, name in ((950.0, "high"), (100.0, "low")):
            with torch.no_grad():
                pair(hidden_states=x, timestep=torch.tensor([level]), encoder_hidden_states=text, return_dict=False)
            assert swap.loaded() == [], name  # nothing left loaded for a block that did not run
    finally:
        swap.remove()


@pytest.mark.parametrize("ffn_chunks", [1, 2])
def test_hunyuanvideo_blocks_of_both_kinds_and_its_embedders_swap_and_train_as_without(ffn_chunks):
    """HunyuanVideo lists its patch embedder and text refiner as blocks too (diffusers' _no_split_modules), ahead
    of 2 double- and 2 single-stream blocks of other sizes; the refiner's attention carries LoRA (its to_q/...)."""
    build_plain, forward, _ = _tiny_hunyuan_with_lora()

    def build():
        model = build_plain()
        model.enable_gradient_checkpointing()
        chunk_feed_forward(model, ffn_chunks)  # the double blocks' FeedForwards, nested checkpoints
        return model

    def steps(model, swap=None):
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        losses = []
        for _ in range(2):
            loss = forward(model).square().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            if swap is not None:
                assert swap.loaded() == []
        return losses, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    expected_losses, expected = steps(build())
    model = build()
    swap = enable_block_swap(model, 6)  # every block: the two embedders, 2 double, 2 single
    kinds = [type(b).__name__ for b in swap.blocks]
    assert kinds[:2] == ["HunyuanVideoPatchEmbed", "HunyuanVideoTokenRefiner"] and len(kinds) == 6
    watch = _Watch(swap)
    losses, got = steps(model, swap)
    assert losses == expected_losses
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert watch.uses > 0 and watch.from_host == []
    assert watch.most_loaded <= 2
