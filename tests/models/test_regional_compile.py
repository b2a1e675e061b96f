"""Regional compilation (engine.models.regional_compile) on the tiny models, CPU.

The CPU runs torch.compile's "aot_eager" backend: the same Dynamo capture and AOT autograd as on the
GPU, without Inductor's code generation (its numerics are PyTorch's to check; the GPU bench compares
the compiled and eager outputs). Dynamo is set to raise past two graph variants per block class: one for
the layers and steps that are dense, one for the radial ones (`processor.radial_now`), never one per
block or per step.
"""

import pytest
import torch
import torch._dynamo

from engine.attention.processor import install_radial_attention
from engine.attention.schedule import AttentionSettings
from engine.config import config_from_preset
from engine.errors import ConfigError
from engine.models import family, regional_compile
from engine.models.regional_compile import is_compiled, repeated_blocks, set_block_compilation
from engine.presets import load_preset

from tests.memory.test_memory_options import _inputs, _tiny_with_lora

ENGINE_RECOMPILE_LIMIT = regional_compile.RECOMPILE_LIMIT


@pytest.fixture
def no_recompiles(monkeypatch):
    """aot_eager, a clean Dynamo cache, and an error past the two variants (dense, radial) of a block's graph,
    i.e. on a guard that differs per block or per step."""
    monkeypatch.setattr(regional_compile, "BACKEND", "aot_eager")
    monkeypatch.setattr(regional_compile, "RECOMPILE_LIMIT", 2)  # what set_block_compilation raises the limit to
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True):
        yield
    torch._dynamo.reset()


def _radial(transformer, fam, dense_timesteps=1):
    settings = AttentionSettings(pattern="radial", dense_layers=1, dense_timesteps=dense_timesteps, block_size=16,
                                 backend="reference")
    return install_radial_attention(transformer, settings, fam)


def _steps(transformer, latents, text, timesteps=(900.0, 700.0, 500.0)):
    with torch.no_grad():
        return [transformer(hidden_states=latents, timestep=torch.tensor([t]), encoder_hidden_states=text,
                            return_dict=False)[0] for t in timesteps]


def test_compiled_wan_blocks_give_the_eager_output_with_one_graph_set_for_every_block_and_step(tiny_preset,
                                                                                                no_recompiles):
    from engine.models.wan import build_tiny_pipeline

    fam = family(tiny_preset)
    transformer = build_tiny_pipeline(tiny_preset["tiny"]).transformer.eval()
    _radial(transformer, fam)  # layer 0 dense, the others radial; step 1 dense everywhere, then radial
    latents, _, text = _inputs()
    eager = _steps(transformer, latents, text)
    assert set_block_compilation(transformer, True) == len(transformer.blocks) == 4 and is_compiled(transformer)
    compiled = _steps(transformer, latents, text)  # raises if any block or step needed its own graph
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)
    set_block_compilation(transformer, False)
    assert not is_compiled(transformer)
    assert all(torch.equal(a, b) for a, b in zip(eager, _steps(transformer, latents, text)))


def test_radial_attention_is_traced_into_the_block_graph_like_the_dense_pattern(tiny_preset, no_recompiles,
                                                                                 monkeypatch):
    # No graph break in either pattern: the dense baseline's stock attention and the radial operator are both
    # nodes of the block's graph (radial: one graph for the dense first layer, one for the radial others).
    # With the attention outside the graphs (processor.ATTENTION_IN_GRAPH off: the old path, the bench's A/B)
    # each block breaks there.
    from torch._dynamo.utils import counters

    from engine.attention import processor
    from engine.attention.processor import remove_radial_attention
    from engine.models.wan import build_tiny_pipeline

    fam = family(tiny_preset)
    transformer = build_tiny_pipeline(tiny_preset["tiny"]).transformer.eval()
    latents, _, text = _inputs()
    set_block_compilation(transformer, True)
    seen = {}
    for pattern in ("dense", "radial", "outside"):
        torch._dynamo.reset()
        counters.clear()
        monkeypatch.setattr(processor, "ATTENTION_IN_GRAPH", pattern != "outside")
        if pattern == "dense":
            remove_radial_attention(transformer, fam)
        else:
            _radial(transformer, fam, dense_timesteps=0)
        _steps(transformer, latents, text, timesteps=(700.0,))
        seen[pattern] = (counters["stats"]["unique_graphs"], dict(counters["graph_break"]))
    assert seen["dense"] == (1, {})
    assert seen["radial"] == (2, {})
    graphs, breaks = seen["outside"]
    assert graphs > 2 and breaks and all("_attend_outside_graph" in reason for reason in breaks)


def test_a_layer_index_read_inside_the_graph_would_recompile_per_block(tiny_preset, no_recompiles, monkeypatch):
    """The check above can fail: the processor's old call, attend(self.schedule, self.layer_index, ...), recompiles."""
    from engine.attention.processor import attend
    from engine.models import wan

    monkeypatch.setattr(wan, "attend_layer", lambda p, q, k, v, mask=None: torch.compiler.disable(attend)(
        p.schedule, p.layer_index, q, k, v, mask))
    transformer = wan.build_tiny_pipeline(tiny_preset["tiny"])
    transformer = transformer.transformer.eval()
    _radial(transformer, family(tiny_preset))
    set_block_compilation(transformer, True)
    latents, _, text = _inputs()
    with torch._dynamo.config.patch(error_on_recompile=True), pytest.raises(Exception, match="layer_index"):
        _steps(transformer, latents, text)


def test_compiled_lora_training_with_checkpointing_gives_the_eager_gradients(tiny_preset, no_recompiles):
    """Two graph sets in training, not one per block: the first block's input needs no gradient, the others' do."""
    fam = family(tiny_preset)
    grads = []
    for compiled in (False, True):
        model = _tiny_with_lora(tiny_preset)
        model.enable_gradient_checkpointing()
        _radial(model, fam, dense_timesteps=0).training = True
        if compiled:
            set_block_compilation(model, True)
        latents, t, text = _inputs()
        with torch._dynamo.config.patch(error_on_recompile=False, recompile_limit=2, fail_on_recompile_limit_hit=True):
            out = model(hidden_states=latents, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
            out.square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


def test_compiled_hunyuan_joint_attention_blocks_give_the_eager_output(no_recompiles):
    """Double and single blocks share diffusers' Attention.forward at their own shapes: one graph set per block
    class (and the text refiner's), each with a dense and a radial variant, never one per block."""
    from engine.models import get_pipeline
    from tests.models.test_hunyuan import TINY, _inputs as hunyuan_inputs

    preset = load_preset(TINY)
    fam, pipe = family(preset), get_pipeline(preset)
    transformer = pipe.transformer
    x, text = hunyuan_inputs(fam, pipe, frames=9)
    _radial(transformer, fam)
    try:
        with torch.no_grad():
            eager = [fam.forward(transformer, x, torch.tensor([t]), text) for t in (900.0, 500.0)]
            assert set_block_compilation(transformer, True) >= 4  # double and single blocks (and text refiner)
            with torch._dynamo.config.patch(error_on_recompile=False, recompile_limit=4,
                                            fail_on_recompile_limit_hit=True):
                compiled = [fam.forward(transformer, x, torch.tensor([t]), text) for t in (900.0, 500.0)]
    finally:  # the pipeline is the shared cached one
        set_block_compilation(transformer, False)
        install_radial_attention(transformer, AttentionSettings(pattern="dense"), fam)
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)


def test_generate_with_compiled_blocks_gives_the_same_video_and_says_so(no_recompiles):
    from engine.generate import generate_video
    from engine.models import get_pipeline

    kwargs = dict(num_frames=17, height=64, width=64, steps=3, seed=7, attention={"dense_layers": 1,
                                                                                 "dense_timesteps": 1})
    eager = generate_video("a red circle moves left", **kwargs)
    compiled = generate_video("a red circle moves left", compile_blocks=True, **kwargs)
    transformer = get_pipeline(load_preset("tiny-wan")).transformer
    assert is_compiled(transformer) and compiled.settings["compile_blocks"] is True
    again = generate_video("a red circle moves left", **kwargs)  # a request without it: eager again
    assert not is_compiled(transformer) and again.settings["compile_blocks"] is False
    assert (compiled.frames == eager.frames).all() and (again.frames == eager.frames).all()


def test_a_model_without_repeated_blocks_and_refused_combinations_say_what_to_change(tmp_path):
    with pytest.raises(ConfigError, match="compile_blocks.*Linear.*_repeated_blocks"):
        repeated_blocks(torch.nn.Linear(2, 2))
    for other in ({"block_swap": 1}, {"fsdp": True}):
        with pytest.raises(ConfigError, match=f"'compile_blocks' and '{next(iter(other))}' are both set"):
            config_from_preset("tiny-wan", output_dir=str(tmp_path / "run"), data_dir="data/tiny",
                               compile_blocks=True, use_gradient_checkpointing=True, **other).validate()
    from engine.generate import generate_video

    with pytest.raises(ConfigError, match="compile_blocks and fsdp"):
        generate_video("a red circle", num_frames=17, height=64, width=64, steps=1, compile_blocks=True, fsdp=True)
    assert not (tmp_path / "run").exists()


def test_a_training_run_with_compile_blocks_gives_the_eager_runs_losses(tmp_path, no_recompiles, monkeypatch):
    """The config field reaches the trainer: the same losses, and the run's config records it. Its graph sets
    (two lengths, training and validation, the first block or the others) stay within the engine's limit."""
    import json

    from engine.data.dataset import create_synthetic_dataset
    from engine.workers.trainer import train

    monkeypatch.setattr(regional_compile, "RECOMPILE_LIMIT", ENGINE_RECOMPILE_LIMIT)
    data = tmp_path / "data"
    create_synthetic_dataset(data, 2, preset="tiny-wan", seed=0)
    losses = {}
    for on in (False, True):
        out = tmp_path / f"run-{on}"
        config = config_from_preset("tiny-wan", data_dir=str(data), output_dir=str(out), max_steps=2,
                                    gradient_accumulation_steps=1, validation_steps=100, checkpointing_steps=100,
                                    use_gradient_checkpointing=True, sample_steps=0, seed=0, compile_blocks=on)
        with torch._dynamo.config.patch(error_on_recompile=False, fail_on_recompile_limit_hit=True):  # no eager fallback
            assert train(config)["state"] == "finished"
        events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
        losses[on] = [e["loss"] for e in events if e["type"] == "train"]
        assert json.loads((out / "config.json").read_text())["compile_blocks"] is on
    assert len(losses[False]) == 2
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_the_cli_takes_compile_blocks_for_generate_and_train(tmp_path, monkeypatch):
    import engine.generate
    from engine.cli import build_parser, main

    parser = build_parser()
    assert parser.parse_args(["generate", "--prompt", "x", "--compile_blocks"]).compile_blocks is True
    assert parser.parse_args(["generate", "--prompt", "x"]).compile_blocks is False
    assert parser.parse_args(["train", "--compile_blocks", "true"]).compile_blocks is True
    seen = {}

    def fake_generate(prompt, **kw):  # what the command hands the engine call
        seen.update(kw)
        raise ConfigError("stop here")

    monkeypatch.setattr(engine.generate, "generate_video", fake_generate)
    assert main(["generate", "--prompt", "x", "--compile_blocks", "--quiet"]) != 0
    assert seen["compile_blocks"] is True


def test_an_adapter_for_one_call_leaves_the_compiled_model_as_it_was(tmp_path, monkeypatch):
    """generate_video(lora_dir=...) loads and unloads the adapter on the shared model. Its base weights are frozen
    from the load on, so the unload leaves them as they were: a call without the adapter afterwards runs the
    graphs compiled before it, and a second adapter of the same shape compiles nothing new either."""
    from torch._dynamo.utils import counters

    from engine.generate import generate_video
    from engine.models import get_pipeline
    from tests.run_factory import make_finished_run

    monkeypatch.setattr(regional_compile, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    runs = [make_finished_run(tmp_path / f"run{i}", load_preset("tiny-wan")) for i in range(2)]

    def graphs(**kw):
        before = counters["stats"]["unique_graphs"]
        generate_video("a red circle", num_frames=9, steps=2, out_path=tmp_path / "v.mp4", compile_blocks=True, **kw)
        return counters["stats"]["unique_graphs"] - before

    try:
        assert graphs() > 0
        assert graphs(lora_dir=runs[0] / "final") > 0  # the adapter's layers are new code to compile
        assert graphs(lora_dir=runs[1] / "final") == 0
        assert graphs() == 0  # before the fix: 3 graphs again, every frozen-by-PEFT weight's requires_grad changed
    finally:
        set_block_compilation(get_pipeline(load_preset("tiny-wan")).transformer, False)
        torch._dynamo.reset()
