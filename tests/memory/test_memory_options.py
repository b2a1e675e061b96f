"""Memory options (engine.memory) on the tiny Wan model, CPU: same gradients, less kept, fp8 base weights."""

import json

import pytest
import torch

from engine.errors import ConfigError
from engine.memory.fp8 import FP8, fp8_weight_count, store_base_in_fp8
from engine.memory.offload import ActivationOffload, PinnedPool, enable_activation_offload


def _tiny_with_lora(tiny_preset, seed=0):
    from engine.lora import add_lora
    from engine.models.wan import build_tiny_pipeline

    torch.manual_seed(seed)
    transformer = build_tiny_pipeline(tiny_preset["tiny"]).transformer
    add_lora(transformer, 4, 4, 0.0, ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"], seed=seed)
    with torch.no_grad():  # B != 0, so lora_A gets gradients too
        gen = torch.Generator().manual_seed(1)
        for name, p in transformer.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return transformer.train()


def _inputs():
    gen = torch.Generator().manual_seed(5)
    return (torch.randn(1, 16, 9, 8, 8, generator=gen), torch.tensor([600.0]), torch.randn(1, 512, 32, generator=gen))


def _lora_grads(transformer):
    latents, t, text = _inputs()
    transformer.zero_grad(set_to_none=True)
    out = transformer(hidden_states=latents, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    out.square().mean().backward()
    return {n: p.grad.clone() for n, p in transformer.named_parameters() if p.requires_grad}


def test_offloaded_checkpointing_gives_the_gradients_of_plain_checkpointing(tiny_preset):
    reference = _tiny_with_lora(tiny_preset)
    reference.enable_gradient_checkpointing()
    expected = _lora_grads(reference)

    model = _tiny_with_lora(tiny_preset)
    # On the CPU nothing is on a GPU to offload from; move every saved tensor to separate host buffers
    # instead, which exercises the same pack / unpack / slab reuse.
    offload = enable_activation_offload(model, ActivationOffload(PinnedPool(pin=False), min_bytes=0,
                                                                 offloadable=lambda t: True))
    got = _lora_grads(model)
    assert got.keys() == expected.keys() and len(got) > 0
    for name in expected:
        assert torch.allclose(got[name], expected[name], rtol=1e-5, atol=1e-7), name
        assert got[name].abs().sum() > 0, name  # the first block's LoRA gets gradients too
    blocks = len(model.blocks)
    assert offload.offloaded_bytes >= blocks * _inputs()[0].numel() // 4  # every block's input went out
    # A second step reuses the slabs: host memory does not grow.
    held = offload.pool.allocated_bytes
    _lora_grads(model)
    assert offload.pool.allocated_bytes == held


def test_the_pool_reuses_slabs_and_gives_back_small_ones_for_bigger_tensors():
    pool = PinnedPool(pin=False)
    small = [pool.take(10 * 2**20) for _ in range(3)]
    for slab in small:
        pool.give(slab)
    assert pool.allocated_bytes == 3 * 64 * 2**20  # rounded up to 64 MiB slabs
    again = pool.take(20 * 2**20)
    assert any(again is s for s in small)  # reused, not allocated
    pool.give(again)
    big = pool.take(100 * 2**20)  # nothing fits: the three small free slabs go first
    assert pool.allocated_bytes == 128 * 2**20 and pool.peak_bytes == 3 * 64 * 2**20
    pool.give(big)
    pool.clear()
    assert pool.allocated_bytes == 0


def test_fp8_base_stores_frozen_weights_in_float8_and_leaves_the_lora_alone(tiny_preset):
    full = _tiny_with_lora(tiny_preset)
    model = _tiny_with_lora(tiny_preset)
    saved = store_base_in_fp8(model, torch.float32)
    assert saved > 0 and fp8_weight_count(model) > 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.dtype == torch.float32, name  # LoRA weights
        elif name.startswith("blocks.") and name.endswith("to_q.base_layer.weight"):
            assert p.dtype == FP8, name
        if "norm" in name or "patch_embedding" in name or "condition_embedder" in name:
            assert p.dtype != FP8, name  # precision-sensitive modules keep their dtype
    latents, t, text = _inputs()
    with torch.no_grad():
        a = full(hidden_states=latents, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        b = model(hidden_states=latents, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    rel = float((a - b).norm() / a.norm())
    assert 0 < rel < 0.1, rel  # e4m3 rounding of the weights, nothing worse
    grads = _lora_grads(model)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())
    assert fp8_weight_count(model) > 0  # still stored in fp8 after forward and backward


def test_offloading_without_checkpointing_is_refused():
    from engine.config import config_from_preset

    with pytest.raises(ConfigError, match="'offload_activations'=true needs use_gradient_checkpointing=true"):
        config_from_preset("tiny-wan", data_dir="-", output_dir="-", offload_activations=True,
                           use_gradient_checkpointing=False)


def test_a_run_trains_with_both_options_and_they_may_change_on_resume(tmp_path):
    from engine.config import config_from_preset
    from engine.data.dataset import create_synthetic_dataset
    from engine.workers.trainer import train

    data = create_synthetic_dataset(tmp_path / "data", 3, preset="tiny-wan", seed=0)
    values = dict(data_dir=str(data), output_dir=str(tmp_path / "run"), max_steps=2, validation_steps=100,
                  checkpointing_steps=2, sample_steps=0, seed=0, use_gradient_checkpointing=True)
    status = train(config_from_preset("tiny-wan", fp8_base=True, offload_activations=True, **values))
    assert status["state"] == "finished" and status["step"] == 2
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["fp8_base"] is True and saved["offload_activations"] is True
    status = train(config_from_preset("tiny-wan", fp8_base=False, offload_activations=False,
                                      **{**values, "max_steps": 3}), resume=True)
    assert status["state"] == "finished" and status["step"] == 3


def test_token_chunked_feed_forwards_give_the_same_outputs_and_gradients(tiny_preset):
    from engine.memory.chunking import chunk_feed_forward

    reference = _tiny_with_lora(tiny_preset)
    reference.enable_gradient_checkpointing()
    expected = _lora_grads(reference)
    model = _tiny_with_lora(tiny_preset)
    model.enable_gradient_checkpointing()
    names = sorted(n for n, _ in model.named_parameters())
    assert chunk_feed_forward(model, 3) == len(model.blocks)
    assert sorted(n for n, _ in model.named_parameters()) == names  # LoRA keys and checkpoints unchanged
    got = _lora_grads(model)
    for name in expected:
        assert torch.allclose(got[name], expected[name], rtol=1e-5, atol=1e-7), name
    assert type(model.blocks[0].ffn).__name__ == "TokenChunkedFeedForward"
    chunk_feed_forward(model, 1)
    assert type(model.blocks[0].ffn).__name__ == "FeedForward"


def _tiny_hunyuan_with_lora():
    """(a builder of tiny HunyuanVideo with LoRA on its targets and B != 0, its forward on fixed inputs, its config):
    48 video tokens, 12 text tokens of which 7 valid. Each build gives the same weights."""
    from engine.lora import add_lora
    from engine.models import TextEmbeds, family_named
    from engine.presets import load_preset

    fam = family_named("hunyuan")
    tiny = load_preset("tiny-hunyuanvideo")["tiny"]

    def build():
        torch.manual_seed(0)
        model = fam.build_tiny_pipeline(tiny).transformer
        add_lora(model, 4, 4, 0.0, list(fam.lora_targets), seed=0)
        with torch.no_grad():
            gen = torch.Generator().manual_seed(1)
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        return model.train()

    gen = torch.Generator().manual_seed(5)
    latents = torch.randn(1, 16, 3, 8, 8, generator=gen)
    cfg = build().config
    text = TextEmbeds(torch.randn(1, 12, cfg.text_embed_dim, generator=gen),
                      torch.randn(1, cfg.pooled_projection_dim, generator=gen), torch.tensor([[1] * 7 + [0] * 5]))

    def forward(model):
        return fam.forward(model, latents, torch.tensor([600.0]), text)

    return build, forward, cfg


def test_offload_keeps_no_large_tensor_alive_through_a_small_view_of_it():
    """HunyuanVideo's single-stream blocks hand the text tokens on as a view of their whole [video | text] output;
    a saved view under the offload threshold must not keep that output on the device (run 30 measured ~40 block
    inputs' worth held back on the GPU). Gradients stay those of plain checkpointing."""
    build, forward, cfg = _tiny_hunyuan_with_lora()
    width = cfg.num_attention_heads * cfg.attention_head_dim

    def grads(model):
        forward(model).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    reference = build()
    reference.enable_gradient_checkpointing()
    expected = grads(reference)

    model = build()
    video_bytes, text_bytes = 48 * width * 4, 12 * width * 4  # float32 on the CPU
    offload = ActivationOffload(PinnedPool(pin=False), min_bytes=video_bytes, offloadable=lambda t: True)
    kept = []
    real_pack = offload.pack

    def pack(t):
        packed = real_pack(t)
        if isinstance(packed, torch.Tensor):
            kept.append((packed.untyped_storage().nbytes(), packed.numel() * packed.element_size()))
        return packed

    offload.pack = pack
    enable_activation_offload(model, offload)
    got = grads(model)
    for name in expected:
        assert torch.allclose(got[name], expected[name], rtol=1e-5, atol=1e-7), name
    assert offload.offloaded_bytes >= 4 * video_bytes  # the video inputs went out
    small_text_views = [k for k in kept if k[1] == text_bytes]
    assert small_text_views  # the text inputs stayed (under the threshold) ...
    assert all(storage < video_bytes + own for storage, own in kept)  # ... each in a storage of its own size
