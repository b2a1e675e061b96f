"""LoRA files through the family: any target peft accepts saves; ComfyUI gets every key it can load."""

import json

import torch
from safetensors import safe_open

from engine.lora import COMFY_WEIGHT_NAME, DIFFUSERS_WEIGHT_NAME, add_lora, save_lora
from engine.models import wan


def _tiny_transformer(tiny_preset, targets):
    pipe = wan.build_tiny_pipeline(tiny_preset["tiny"])
    add_lora(pipe.transformer, 4, 8, 0.0, targets, seed=0)  # alpha != rank: the scale matters
    for name, p in pipe.transformer.named_parameters():  # non-zero B so the LoRA changes the output
        if "lora_B" in name:
            p.data.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(name)))
    return pipe


def test_comfy_export_maps_what_comfyui_loads_and_reports_the_rest(tiny_preset, tmp_path):
    # `train --target_modules to_q,proj_out` used to fail the whole run in the ComfyUI export.
    pipe = _tiny_transformer(tiny_preset, ["to_q", "proj_out", "linear_1"])
    saved = save_lora(pipe.transformer, tmp_path / "lora", wan.FAMILY)
    with safe_open(str(tmp_path / "lora" / COMFY_WEIGHT_NAME), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert "diffusion_model.head.head.lora_down.weight" in keys
    # diffusers' Wan converter refuses an `.alpha` on the head: its scale is folded into the up weights there
    assert "diffusion_model.head.head.alpha" not in keys and "diffusion_model.blocks.0.self_attn.q.alpha" in keys
    assert "diffusion_model.blocks.0.self_attn.q.lora_up.weight" in keys
    assert "diffusion_model.blocks.3.cross_attn.q.lora_down.weight" in keys
    # the time/text embedding MLPs (`linear_1`) have no ComfyUI LoRA name that diffusers also converts back
    assert saved.comfy_skipped == ["condition_embedder.text_embedder.linear_1", "condition_embedder.time_embedder.linear_1"]
    assert json.loads(meta["comfy_skipped"]) == saved.comfy_skipped
    assert not any("linear_1" in k or "text_embedding" in k for k in keys)
    with safe_open(str(tmp_path / "lora" / DIFFUSERS_WEIGHT_NAME), "pt") as f:
        assert any("linear_1" in k for k in f.keys())  # the diffusers file keeps everything


def test_comfy_export_of_the_mapped_keys_loads_in_stock_diffusers(tiny_preset, tmp_path):
    from diffusers import WanPipeline

    pipe = _tiny_transformer(tiny_preset, ["to_q", "to_v", "proj_out"])
    save_lora(pipe.transformer, tmp_path / "lora", wan.FAMILY)
    gen = torch.Generator().manual_seed(0)
    x, t, text = torch.randn(1, 16, 3, 8, 8, generator=gen), torch.tensor([500.0]), torch.randn(1, 8, 32, generator=gen)
    with torch.no_grad():
        ours = pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    stock = WanPipeline.from_pretrained(str(wan.ensure_tiny_model(tiny_preset["tiny"])))
    stock.load_lora_weights(str(tmp_path / "lora"), weight_name=COMFY_WEIGHT_NAME)
    with torch.no_grad():
        theirs = stock.transformer(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)


def test_saved_files_are_byte_reproducible(tiny_preset, tmp_path):
    for name in ("a", "b"):
        pipe = _tiny_transformer(tiny_preset, ["to_v", "to_k", "to_q", "to_out.0"] if name == "a" else
                                 ["to_out.0", "to_q", "to_k", "to_v"])
        save_lora(pipe.transformer, tmp_path / name, wan.FAMILY)
    for file in (DIFFUSERS_WEIGHT_NAME, COMFY_WEIGHT_NAME):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
