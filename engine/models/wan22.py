"""Wan2.2 T2V-A14B: two Wan2.1-architecture experts, switched at a boundary noise level.

`transformer` denoises the high-noise steps (t >= boundary_ratio * 1000), `transformer_2` the low-noise
ones; diffusers' WanPipeline makes the switch when sampling. Here `ExpertPair` (experts.py) is the one
denoiser that training, TTA and continuation run and that radial attention is installed on (both
experts, one schedule). The length-extension LoRA goes on the expert(s) named by setting `lora_experts`
("high", "low", "both"; null = both), each trained on its own noise levels.

LoRA files (a run's `final/`):
- `pytorch_lora_weights.safetensors`: the engine's adapter, keys `high_noise.*` / `low_noise.*` (the
  pair's names; stock loaders find no `transformer.` key in it and load nothing);
- `pytorch_lora_weights_high_noise.safetensors` / `..._low_noise.safetensors`: stock diffusers files, one
  per trained expert: `pipe.load_lora_weights(dir, weight_name=...)`, the low one with
  `load_into_transformer_2=True` (WanLoraLoaderMixin then loads it into `transformer_2`);
- `lora_comfyui_high_noise.safetensors` / `lora_comfyui_low_noise.safetensors`: ComfyUI loads a LoRA per
  model, and each expert is its own model there (Wan's original names, as Wan2.1's export).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..attention.processor import tag_family
from ..errors import InputError, ModelLoadError
from .base import AttentionLayer
from .experts import MODULE, ExpertPair
from .wan import WanFamily, build_tiny_parts

# model_index.json of Wan-AI/Wan2.2-T2V-A14B-Diffusers ("boundary_ratio": 0.875; Wan2.2's own
# configs/wan_t2v_A14B.py: boundary = 0.875): the high-noise expert takes t >= 875 of 1000.
BOUNDARY_RATIO = 0.875
NUM_TRAIN_TIMESTEPS = 1000
_DENOISER = "_radial_studio_denoiser"  # the pipeline's cached pair of both experts
STOCK_FILE = "pytorch_lora_weights_{}_noise.safetensors"  # one per expert (high / low)


class Wan22Family(WanFamily):
    name = "wan22"
    description = "Wan2.2 T2V-A14B: a high-noise and a low-noise expert (diffusers WanPipeline with transformer_2)"
    experts = ("high", "low")
    card_tags = ("wan", "wan2.2")
    boundary_ratio = BOUNDARY_RATIO

    # -- loading
    def build_tiny_pipeline(self, tiny: dict):
        from diffusers import WanPipeline, WanTransformer3DModel

        configs = []

        def make(cfg):
            configs.append(cfg)
            return WanTransformer3DModel(**cfg)

        parts = build_tiny_parts(tiny, make)
        # The second expert is drawn next from the same seeded stream: two different random experts.
        pipe = WanPipeline(**parts, transformer_2=WanTransformer3DModel(**configs[0]), boundary_ratio=self.boundary_ratio)
        return pipe

    def load_pipeline(self, preset: dict, device: torch.device | None = None):
        pipe = super().load_pipeline(preset, device)
        if getattr(pipe, "transformer_2", None) is None or pipe.config.boundary_ratio is None:
            raise ModelLoadError(f"model '{preset['source']}' (preset '{preset['name']}') has no transformer_2 / "
                                 "boundary_ratio, so it is not a two-expert Wan2.2 A14B pipeline; use a Wan2.1 or "
                                 "Wan2.2 TI2V preset for it.")
        if abs(float(pipe.config.boundary_ratio) - self.boundary_ratio) > 1e-9:
            raise ModelLoadError(f"model '{preset['source']}' switches experts at boundary_ratio "
                                 f"{pipe.config.boundary_ratio}, but family '{self.name}' trains each expert on its "
                                 f"side of {self.boundary_ratio}; use a T2V-A14B checkpoint.")
        tag_family(pipe.transformer_2, self)
        return pipe

    def transformers(self, pipe) -> list:
        return [pipe.transformer, pipe.transformer_2]

    def denoiser(self, pipe, experts=None):
        names = self._names(experts)
        boundary = float(pipe.config.boundary_ratio) * NUM_TRAIN_TIMESTEPS
        if names != self.experts:  # a training run on one expert: its own pair
            pair = ExpertPair({n: e for n, e in zip(self.experts, self.transformers(pipe)) if n in names}, boundary)
            tag_family(pair, self)
            return pair
        pair = getattr(pipe, _DENOISER, None)  # shared, so installing attention again replaces the last install
        if pair is None:
            pair = ExpertPair(dict(zip(self.experts, self.transformers(pipe))), boundary)
            tag_family(pair, self)
            setattr(pipe, _DENOISER, pair)
        return pair

    def _names(self, experts) -> tuple[str, ...]:
        self.check_lora_experts(experts)
        return self.experts if experts in (None, "both") else (experts,)

    def check_lora_experts(self, experts) -> None:
        if experts not in (None, "both", *self.experts):
            raise InputError(f"lora_experts={experts!r}: model family '{self.name}' has the experts "
                             f"{list(self.experts)}; choose 'high', 'low', 'both' (or null: both).")

    def expert_counts(self, experts=None) -> tuple[int, int]:
        # Both experts stay loaded (the validation samples run the whole noise range); the LoRA is on the named ones.
        return len(self.experts), len(self._names(experts))

    def noise_range(self, experts=None) -> tuple[float, float]:
        names = self._names(experts)
        if names == self.experts:
            return (0.0, 1.0)
        return (self.boundary_ratio, 1.0) if names == ("high",) else (0.0, self.boundary_ratio)

    # -- attention: "high_noise.blocks.<i>.attn1.processor" on the pair, "blocks.<i>..." on one expert
    def attention_layers(self, transformer):
        layers = []
        for name in transformer.attn_processors:
            parts = name.split(".")
            if parts[0] in MODULE.values():
                parts = parts[1:]
            if parts[0] == self.block_prefix and parts[2] == "attn1":
                layers.append(AttentionLayer(name, int(parts[1])))
        return layers

    # -- LoRA
    def _split(self, state: dict) -> dict[str, dict]:
        """{expert: its LoRA weights under the expert's own module names}."""
        out: dict[str, dict] = {}
        for key, value in state.items():
            prefix, _, rest = key.partition(".")
            expert = next((n for n, m in MODULE.items() if m == prefix), None)
            if expert is None:
                raise InputError(f"LoRA key '{key}' names no expert of family '{self.name}' "
                                 f"(keys start with {sorted(MODULE.values())}).")
            out.setdefault(expert, {})[rest] = value
        return out

    def lora_parts(self, state):
        return {f"_{n}_noise": part for n, part in self._split(state).items()}

    def save_lora_weights(self, directory, state, metadata, weight_name):
        from diffusers import WanPipeline
        from safetensors.torch import save_file

        directory = Path(directory)
        meta = json.dumps({f"transformer.{k}": v for k, v in metadata.items()}, sort_keys=True, default=list)
        save_file(dict(state), str(directory / weight_name), metadata={"format": "pt", "lora_adapter_metadata": meta})
        for name, part in self._split(state).items():
            WanPipeline.save_lora_weights(directory, transformer_lora_layers=part,
                                          transformer_lora_adapter_metadata=metadata,
                                          weight_name=STOCK_FILE.format(name), safe_serialization=True)

    def load_lora(self, pipe, folder, weight_name, adapter_name):
        found = [n for n in self.experts if (Path(folder) / STOCK_FILE.format(n)).is_file()]
        if not found:
            raise InputError(f"LoRA folder '{Path(folder).name}' has no {STOCK_FILE.format('high')} or "
                             f"{STOCK_FILE.format('low')}: it was not saved for a two-expert Wan2.2 model.")
        for name in found:  # the stock way: the low-noise file into transformer_2
            pipe.load_lora_weights(str(folder), weight_name=STOCK_FILE.format(name), adapter_name=adapter_name,
                                   load_into_transformer_2=name == "low")

    # -- Hub card
    def card_usage(self, *, base_model, repo, weight_name, num_frames, height, width, fps, tiny):
        load = [f'pipe.load_lora_weights("{repo}", weight_name="{STOCK_FILE.format("high")}", adapter_name="high")',
                f'pipe.load_lora_weights("{repo}", weight_name="{STOCK_FILE.format("low")}", adapter_name="low", '
                "load_into_transformer_2=True)"]
        source = f'"{base_model}"' if base_model else '"path/to/the/base/model"'
        return ["```python", "import torch", "from diffusers import WanPipeline", "",
                f"pipe = WanPipeline.from_pretrained({source}, torch_dtype=torch.bfloat16).to(\"cuda\")",
                "# one file per trained expert (the low-noise one goes into transformer_2)", *load,
                f'video = pipe("a red ball bounces on a beach", num_frames={num_frames}, height={height}, '
                f'width={width}).frames[0]', "```", ""]

    def card_comfy_note(self) -> str:
        return ("one file per expert (`lora_comfyui_high_noise.safetensors` for the high-noise model, "
                "`lora_comfyui_low_noise.safetensors` for the low-noise one), with Wan's original module names "
                "(`diffusion_model.blocks.N.self_attn.q.lora_down.weight`)")


FAMILY = Wan22Family()


def build_tiny_pipeline(tiny: dict):
    return FAMILY.build_tiny_pipeline(tiny)
