"""Open-Sora v2.0 port: parity with the official model on the shared fixture, and the key converter."""

import json
from pathlib import Path

import pytest
import torch

from engine.errors import ModelLoadError
from engine.models import opensora2 as osv2

FIXTURE = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "opensora2-tiny"
FILES = ("config.json", "inputs.safetensors", "official_out.safetensors", "official_tiny_mmdit.safetensors")


def _fixture():
    missing = [f for f in FILES if not (FIXTURE / f).is_file()]
    if missing:
        pytest.skip(f"Open-Sora v2 parity fixture not available at {FIXTURE.resolve()} (missing {', '.join(missing)}); "
                    "it lives in the shared/ folder beside the repository.")
    from safetensors.torch import load_file

    cfg = json.loads((FIXTURE / "config.json").read_text())["config"]
    return (cfg, load_file(str(FIXTURE / "official_tiny_mmdit.safetensors")), load_file(str(FIXTURE / "inputs.safetensors")),
            load_file(str(FIXTURE / "official_out.safetensors"))["out"])


def test_port_matches_the_official_model_on_the_fixture():
    cfg, sd, inputs, expected = _fixture()
    model = osv2.load_official_transformer(sd, cfg, torch.float32)
    # img_in (64) and cond_in (68) fold into one x_embedder over concat([img, cond]): 132 inputs
    assert model.x_embedder.weight.shape == (cfg["hidden_size"], 132)
    assert model.config.in_channels == 132 and model.config.out_channels == 64
    with torch.no_grad():
        out = osv2.official_forward(model, **inputs)
    rel = (out - expected).norm() / expected.norm()
    assert rel < 1e-5, f"relative error {rel:.2e}"
    # per sample too (the three guidance passes differ in text and cond)
    for i in range(out.shape[0]):
        assert (out[i] - expected[i]).norm() / expected[i].norm() < 1e-5


def test_fixture_keys_are_exactly_the_synthetic_official_layout():
    cfg, sd, _, _ = _fixture()
    assert osv2.official_key_shapes(cfg) == {k: tuple(v.shape) for k, v in sd.items()}
    converted, report = osv2.convert_opensora2_state_dict(sd, cfg["depth"], cfg["depth_single_blocks"])
    assert report.ok and report.used == len(sd) == 106
    model = osv2.build_transformer(cfg)  # random init, right shapes
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected


def test_converter_names_missing_and_unexpected_keys():
    cfg, sd, _, _ = _fixture()
    broken = dict(sd)
    del broken["double_blocks.1.txt_attn.k_proj.bias"]
    broken["double_blocks.0.img_attn.extra.weight"] = torch.zeros(1)
    _, report = osv2.convert_opensora2_state_dict(broken, cfg["depth"], cfg["depth_single_blocks"])
    assert report.missing == ["double_blocks.1.txt_attn.k_proj.bias"]
    assert report.unexpected == ["double_blocks.0.img_attn.extra.weight"]
    assert not report.ok
    with pytest.raises(ModelLoadError, match="missing 1: double_blocks.1.txt_attn.k_proj.bias.*unexpected 1: "
                                             "double_blocks.0.img_attn.extra.weight"):
        osv2.load_official_transformer(broken, cfg)


def test_rope_permutation_keeps_q_dot_k():
    """Rotate-half RoPE on the official layout == interleaved RoPE on the permuted layout."""
    torch.manual_seed(0)
    hd, n = 32, 5
    q, k = torch.randn(n, hd), torch.randn(n, hd)
    ang = torch.rand(n, hd // 2) * 6

    def rotate_half(x):
        a, b = x[:, : hd // 2], x[:, hd // 2:]
        c, s = ang.cos(), ang.sin()
        return torch.cat([a * c - b * s, a * s + b * c], dim=1)

    def interleaved(x):
        a, b = x[:, 0::2], x[:, 1::2]
        c, s = ang.cos(), ang.sin()
        return torch.stack([a * c - b * s, a * s + b * c], dim=-1).reshape(n, hd)

    perm = osv2._rope_permutation(hd)
    ref = rotate_half(q) @ rotate_half(k).T
    assert torch.allclose(interleaved(q[:, perm]) @ interleaved(k[:, perm]).T, ref, atol=1e-5)


def test_real_config_checkpoint_has_1082_tensors_and_converts_on_meta():
    shapes = osv2.official_key_shapes(osv2.REAL_CONFIG)
    assert len(shapes) == 1082
    sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    converted, report = osv2.convert_opensora2_state_dict(sd, 19, 38)
    assert report.ok and report.used == 1082 and not report.missing and not report.unexpected
    model = osv2.build_transformer(osv2.REAL_CONFIG, device="meta")
    assert model.config.in_channels == 132 and model.config.num_layers == 19 and model.config.num_single_layers == 38
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    assert sum(v.numel() for v in model.state_dict().values()) == pytest.approx(11.9e9, rel=0.02)  # "11B" (FLUX.1-dev size)


def test_pack_unpack_and_ids_match_the_official_layout():
    x = torch.randn(2, 16, 3, 4, 6)
    packed = osv2.pack(x)
    assert packed.shape == (2, 3 * 2 * 3, 64)
    assert torch.equal(osv2.unpack(packed, 3, 4, 6), x)
    # token 0 = frame 0, patch (0, 0): channel-major, then the 2x2 pixels
    assert torch.equal(packed[0, 0, :4], x[0, 0, 0, :2, :2].reshape(-1))
    ids = osv2.image_ids(3, 4, 6)
    assert ids.shape == (18, 3) and ids[1].tolist() == [0, 0, 1] and ids[6].tolist() == [1, 0, 0]


def test_sampling_schedule_and_guidance_oscillation():
    # 256px (16 x 16 patches = 256 tokens per frame), 65 frames -> 17 latent frames
    alpha = osv2.time_shift_alpha(17, 32, 32)
    assert alpha == pytest.approx(17 ** 0.5)
    ts = osv2.sample_timesteps(50, alpha)
    assert len(ts) == 51 and ts[0] == 1.0 and ts[-1] == 0.0 and all(a > b for a, b in zip(ts, ts[1:]))
    assert ts[25] == pytest.approx(alpha * 0.5 / (1 + (alpha - 1) * 0.5))
    scales = [osv2.oscillating_scale(7.5, i) for i in range(14)]
    assert scales == [7.5] * 10 + [7.5, 1.0, 7.5, 1.0]


def test_v2v_cond_marks_the_known_frames():
    ref = torch.randn(1, 16, 9, 4, 4)
    cond = osv2.v2v_cond(ref, 17)
    assert cond.shape == (1, 17, 17, 4, 4)
    assert torch.all(cond[:, 0, :9] == 1) and torch.all(cond[:, 0, 9:] == 0)
    assert torch.equal(cond[:, 1:, :9], ref) and torch.all(cond[:, 1:, 9:] == 0)
    assert osv2.pack(cond).shape[-1] == 68
    assert torch.all(osv2.v2v_cond(ref[:, :, :0], 9) == 0)


def test_lora_targets_cover_every_attention_and_not_the_final_projection():
    from engine.lora import add_lora

    cfg = {**osv2.REAL_CONFIG, "hidden_size": 64, "num_heads": 2, "depth": 2, "depth_single_blocks": 2,
           "axes_dim": [8, 12, 12], "context_in_dim": 32, "vec_in_dim": 32}
    model = osv2.build_transformer(cfg)
    add_lora(model, 4, 4.0, 0.0, osv2.LORA_TARGET_MODULES_FULL, seed=0)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_modules() if n.endswith("lora_A")}
    assert "transformer_blocks.0.attn.to_q" in adapted and "transformer_blocks.1.attn.to_add_out" in adapted
    assert "single_transformer_blocks.1.attn.to_k" in adapted and "single_transformer_blocks.1.proj_out" in adapted
    assert "single_transformer_blocks.0.proj_mlp" in adapted and "transformer_blocks.0.ff_context.net.2" in adapted
    assert "proj_out" not in adapted and "x_embedder" not in adapted
    model.unload_lora()
    base = osv2.build_transformer(cfg)
    add_lora(base, 4, 4.0, 0.0, osv2.LORA_TARGET_MODULES, seed=0)
    attn_only = {n.rsplit(".lora_A", 1)[0] for n, _ in base.named_modules() if n.endswith("lora_A")}
    assert len(attn_only) == 2 * 8 + 2 * 3  # double: q/k/v/o x 2 streams; single: q/k/v


def test_gpu_benchmark_runs_its_code_path_at_the_tiny_config(capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "bench" / "opensora2_gpu.py"
    spec = importlib.util.spec_from_file_location("opensora2_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--tiny", "--repeats", "1"])
    assert result["tta_step_s"] > 0 and result["sample_step_s"] > 0
    assert "| TTA step (LoRA r16" in capsys.readouterr().out
