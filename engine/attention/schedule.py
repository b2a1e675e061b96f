"""Which layers and denoising steps use radial attention, and what step we are on.

One `AttentionSchedule` is shared by every processor of a transformer. A forward pre-hook on
the transformer tells it the current timestep and token layout before the blocks run. The
step is keyed on the timestep *value*: with classifier-free guidance the transformer runs
twice per step with the same timestep, and a sampling run's timesteps strictly decrease, so
a larger timestep than the last one means a new run started.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from ..errors import ConfigError
from ..settings import ATTENTION

_A = ATTENTION


@dataclass(frozen=True)
class AttentionSettings:
    """The attention fields of engine.settings.ATTENTION (defaults and checks there), plus two set by
    the code: `sink` (from the model family) and `dense_backend` (from `use_sage_attention`)."""

    pattern: str = _A["pattern"].default  # "radial" | "dense"
    dense_layers: int = _A["dense_layers"].default  # the first N transformer blocks stay dense
    dense_timesteps: int = _A["dense_timesteps"].default  # the first N denoising steps stay dense (sampling only)
    decay_factor: float = _A["decay_factor"].default
    block_size: int = _A["block_size"].default
    backend: str | None = _A["backend"].default  # None: triton on CUDA, reference on CPU
    sink: bool = True  # every token attends to the first frame (the family says whether)
    dense_backend: str = "sdpa"  # dense layers/steps: "sdpa", or "sage" (SageAttention when installed)

    def __post_init__(self):
        for name, setting in ATTENTION.items():
            setting.check(getattr(self, name), f"attention setting '{name}'")
        if self.dense_backend not in ("sdpa", "sage"):
            raise ConfigError(f"attention setting 'dense_backend'={self.dense_backend!r}: choose 'sdpa' or 'sage'.")

    @classmethod
    def from_preset(cls, preset: dict, **overrides) -> "AttentionSettings":
        values = {k: v for k, v in preset["attention"].items() if k in {f.name for f in fields(cls)}}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


class AttentionSchedule:
    def __init__(self, settings: AttentionSettings, patch_size=(1, 2, 2)):
        self.settings = settings
        self.patch_size = tuple(patch_size)
        self._processors: list = []  # attached radial processors: their `radial_now` follows this schedule
        self._training = False
        self._force_dense = False
        self.cp = None  # Ulysses context parallelism (context_parallel.ContextParallel) while it is on
        self.reset()

    @property
    def training(self) -> bool:
        """In training every step counts as "late": dense_timesteps do not apply."""
        return self._training

    @training.setter
    def training(self, on: bool) -> None:
        self._training = bool(on)
        self._refresh()

    @property
    def force_dense(self) -> bool:
        """Every layer dense, e.g. the base-length pass of length-extension training."""
        return self._force_dense

    @force_dense.setter
    def force_dense(self, on: bool) -> None:
        self._force_dense = bool(on)
        self._refresh()

    def attach(self, processor):
        """Keep `processor.radial_now` (its layer's choice now) up to date; returns the processor.

        Compiled blocks read that flag instead of the layer index (processor.attend_layer says why)."""
        self._processors.append(processor)
        processor.radial_now = self.use_radial(processor.layer_index)
        return processor

    def _refresh(self) -> None:
        for p in self._processors:
            p.radial_now = self.use_radial(p.layer_index)

    def reset(self) -> None:
        self.step = -1
        self._last_timestep: float | None = None
        self.num_frames = 0
        self.tokens_per_frame = 0
        self._refresh()

    def observe(self, timestep: torch.Tensor, latent_shape) -> None:
        """Called before each transformer forward with its timestep and latent input shape."""
        value = float(timestep.detach().flatten().max()) if torch.is_tensor(timestep) else float(timestep)
        if self._last_timestep is None or value > self._last_timestep:
            self.step = 0
        elif value < self._last_timestep:
            self.step += 1
        self._last_timestep = value
        pt, ph, pw = self.patch_size
        self.num_frames = latent_shape[2] // pt
        self.tokens_per_frame = (latent_shape[3] // ph) * (latent_shape[4] // pw)
        self._refresh()

    def use_radial(self, layer_index: int) -> bool:
        s = self.settings
        if s.pattern != "radial" or self.force_dense or layer_index < s.dense_layers:
            return False
        return self.training or self.step >= s.dense_timesteps
