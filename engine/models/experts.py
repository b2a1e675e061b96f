"""Two noise-level experts seen as one denoiser (Wan2.2 A14B: `transformer` for high noise, `transformer_2` low).

`ExpertPair` is the module the engine trains, adapts and installs radial attention on: it routes each
sample to the expert of its noise level exactly as diffusers' WanPipeline does (`transformer` when
t >= boundary_ratio * num_train_timesteps, else `transformer_2`), and holds as submodules only the experts
it was made with, so a LoRA attached to it lands on those alone and its state dict names them
`high_noise.*` / `low_noise.*`. It is a diffusers model (PEFT, attention processors, gradient
checkpointing, layerwise casting) over the experts' own modules: nothing is copied.

A forward pre-hook registered on the pair goes on each expert it holds, so it fires whether the pair or
the stock pipeline calls the expert: one radial schedule then counts the steps of a whole sampling run,
across the switch from one expert to the other.
"""

from __future__ import annotations

import torch
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.modeling_outputs import Transformer2DModelOutput

# Expert name (setting lora_experts) -> the pair's submodule name (the LoRA state's key prefix).
MODULE = {"high": "high_noise", "low": "low_noise"}


class _Handles:
    def __init__(self, handles):
        self.handles = handles

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class ExpertPair(ModelMixin, AttentionMixin, PeftAdapterMixin):
    _supports_gradient_checkpointing = True

    def __init__(self, experts: dict[str, torch.nn.Module], boundary_timestep: float):
        super().__init__()
        if not experts or set(experts) - set(MODULE):
            raise ValueError(f"experts must be some of {list(MODULE)}, got {list(experts)}")
        for name in MODULE:  # high first: the pipeline's order
            if name in experts:
                setattr(self, MODULE[name], experts[name])
        self.held = tuple(n for n in MODULE if n in experts)
        self.boundary_timestep = float(boundary_timestep)
        first = experts[self.held[0]]
        self._no_split_modules = list(getattr(first, "_no_split_modules", None) or [])
        self._skip_layerwise_casting_patterns = getattr(first, "_skip_layerwise_casting_patterns", None)

    @property
    def config(self):  # the experts share one architecture
        return self.expert(self.held[0]).config

    def expert(self, name: str) -> torch.nn.Module:
        return getattr(self, MODULE[name])

    def expert_for(self, level: float) -> str:
        """The expert of a timestep (0..1000), as WanPipeline switches."""
        name = "high" if level >= self.boundary_timestep else "low"
        if name not in self.held:
            raise ValueError(f"timestep {level:g} belongs to the {name}-noise expert, which this denoiser does not hold "
                             f"(it holds {list(self.held)}; boundary {self.boundary_timestep:g})")
        return name

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict: bool = False, **kwargs):
        """Each sample through its expert; per-token timesteps [B, S] route on their largest value (the level of
        the tokens being denoised; a clean prefix sits at 0)."""
        levels = (timestep if timestep.ndim == 1 else timestep.flatten(1).amax(1)).tolist()
        names = [self.expert_for(float(v)) for v in levels]
        if len(set(names)) == 1:
            return self.expert(names[0])(hidden_states=hidden_states, timestep=timestep,
                                         encoder_hidden_states=encoder_hidden_states, return_dict=return_dict, **kwargs)
        out = None
        for name in dict.fromkeys(names):
            idx = torch.tensor([i for i, n in enumerate(names) if n == name], device=hidden_states.device)
            part = self.expert(name)(hidden_states=hidden_states[idx], timestep=timestep[idx],
                                     encoder_hidden_states=encoder_hidden_states[idx], return_dict=False, **kwargs)[0]
            out = part.new_empty((hidden_states.shape[0], *part.shape[1:])) if out is None else out
            out[idx] = part
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    def register_forward_pre_hook(self, hook, *, prepend: bool = False, with_kwargs: bool = False):
        return _Handles([self.expert(n).register_forward_pre_hook(hook, prepend=prepend, with_kwargs=with_kwargs)
                         for n in self.held])
