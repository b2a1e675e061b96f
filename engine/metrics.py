"""Video continuation metrics: PSNR, SSIM, LPIPS, temporal consistency, seam PSNR.

Every metric compares generated frames with the real ones, frame by frame, on RGB pixels in
[0, 1] (uint8 frames are divided by 255):

- `psnr`: mean over frames of 10*log10(1 / MSE) (torchmetrics, data range 1). A frame identical
  to the reference has MSE 0; its PSNR is capped at PSNR_CAP (100 dB) so results stay finite
  JSON numbers.
- `ssim`: mean over frames of SSIM (torchmetrics; Gaussian window 11, sigma 1.5, data range 1).
- `lpips`: mean over frames of LPIPS (v0.1, AlexNet), computed only with the real weights found
  locally (see `lpips_weights`); otherwise `lpips` is null and `lpips_unavailable` says why.
  It is never computed with a randomly initialised network.
- `temporal_consistency`: how the generated frame-to-frame changes match the real ones: the mean
  absolute difference between (gen[t+1] - gen[t]) and (ref[t+1] - ref[t]) over consecutive
  pairs and pixels. 0 means the generated video changes exactly as the real one does; lower is
  better. A constant offset (e.g. a colour shift) does not count; missing or extra motion does.
- `first_frame_psnr`: PSNR of the first generated frame alone (continuity at the seam).

`METRIC_DIRECTIONS` says which way is better for each, for summaries.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .errors import InputError

PSNR_CAP = 100.0  # dB, for identical frames (MSE 0)
METRIC_DIRECTIONS = {"psnr": "higher", "ssim": "higher", "lpips": "lower", "temporal_consistency": "lower",
                     "first_frame_psnr": "higher"}
METRIC_NAMES = tuple(METRIC_DIRECTIONS)

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's ImageNet AlexNet
ALEXNET_ENV = "RADIAL_STUDIO_LPIPS_ALEXNET"
LINEAR_ENV = "RADIAL_STUDIO_LPIPS_LINEAR"
LPIPS_CHANNELS = (64, 192, 384, 256, 256)


def _to_float(frames) -> torch.Tensor:
    """uint8 or float [F, H, W, 3] -> float32 [F, 3, H, W] in [0, 1]."""
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise InputError(f"frames must have shape [frames, height, width, 3], got {arr.shape}.")
    t = torch.from_numpy(np.ascontiguousarray(arr))
    t = t.float() / 255.0 if arr.dtype == np.uint8 else t.float().clamp(0, 1)
    return t.permute(0, 3, 1, 2).contiguous()


def psnr_per_frame(generated: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of each frame, capped at PSNR_CAP. Inputs float [F, 3, H, W] in [0, 1]."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    values = peak_signal_noise_ratio(generated, reference, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return torch.nan_to_num(values, posinf=PSNR_CAP).clamp(max=PSNR_CAP)


def ssim_per_frame(generated: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(generated, reference, data_range=1.0, reduction="none")


def temporal_consistency(generated: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean |(gen[t+1]-gen[t]) - (ref[t+1]-ref[t])| (pixels in [0, 1]); 0 is perfect. Needs >= 2 frames."""
    if generated.shape[0] < 2:
        raise InputError("temporal consistency needs at least 2 frames.")
    return float(((generated[1:] - generated[:-1]) - (reference[1:] - reference[:-1])).abs().mean())


# ---------------------------------------------------------------------------- LPIPS


class AlexNetFeatures(nn.Module):
    """AlexNet's convolutional trunk; parameter names match torchvision's `alexnet().features`."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five ReLU outputs LPIPS compares (relu1 .. relu5)."""
        outs, ends = [], (2, 5, 8, 10, 12)
        start = 0
        for end in ends:
            for layer in self.features[start:end]:
                x = layer(x)
            outs.append(x)
            start = end
        return outs


class _Linear(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, stride=1, padding=0, bias=False))


class LPIPS(nn.Module):
    """LPIPS v0.1 with AlexNet: names of the linear heads match the `lpips` package's weights (lin0..lin4)."""

    def __init__(self):
        super().__init__()
        self.net = AlexNetFeatures()
        self.lins = nn.ModuleList(_Linear(c) for c in LPIPS_CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distances [N] for images a, b [N, 3, H, W] in [0, 1]."""
        fa = self.net(((a * 2 - 1) - self.shift) / self.scale)
        fb = self.net(((b * 2 - 1) - self.shift) / self.scale)
        total = 0
        for lin, xa, xb in zip(self.lins, fa, fb):
            xa = xa / (xa.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            xb = xb / (xb.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + lin.model((xa - xb) ** 2).mean(dim=(2, 3))
        return total.flatten()


def lpips_weights() -> tuple[Path | None, Path | None, str | None]:
    """(AlexNet file, linear-heads file, reason when either is missing). Looks only at local files.

    AlexNet: $RADIAL_STUDIO_LPIPS_ALEXNET, else torch's hub cache
    ($TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth). Linear heads: $RADIAL_STUDIO_LPIPS_LINEAR,
    else `weights/v0.1/alex.pth` inside the `lpips` pip package when it is installed (it is
    located, not imported).
    """
    reasons = []
    alex_env = os.environ.get(ALEXNET_ENV)
    alex = Path(alex_env) if alex_env else Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    if not alex.is_file():
        reasons.append(f"AlexNet weights not found at {alex} (put torchvision's {ALEXNET_FILE} there or set {ALEXNET_ENV})")
    lin_env = os.environ.get(LINEAR_ENV)
    if lin_env:
        lin = Path(lin_env)
        if not lin.is_file():
            reasons.append(f"LPIPS linear weights not found at {lin} ({LINEAR_ENV})")
    else:
        spec = importlib.util.find_spec("lpips")
        lin = Path(spec.origin).parent / "weights" / "v0.1" / "alex.pth" if spec and spec.origin else None
        if lin is None or not lin.is_file():
            reasons.append(f"LPIPS linear weights not found (install the `lpips` package, which bundles "
                           f"weights/v0.1/alex.pth, or set {LINEAR_ENV})")
    return (alex if alex.is_file() else None, lin if lin is not None and lin.is_file() else None,
            "; ".join(reasons) or None)


_LPIPS_CACHE: dict[tuple, LPIPS] = {}


def load_lpips(device: torch.device | str = "cpu") -> tuple[LPIPS | None, str | None]:
    """The LPIPS network with real weights, or (None, reason). Never returns a random network."""
    alex, lin, reason = lpips_weights()
    if reason:
        return None, reason
    key = (str(alex), alex.stat().st_mtime_ns, str(lin), lin.stat().st_mtime_ns, str(device))
    if key in _LPIPS_CACHE:
        return _LPIPS_CACHE[key], None
    model = LPIPS()
    try:
        alex_sd = torch.load(alex, map_location="cpu", weights_only=True)
        alex_sd = {k: v for k, v in alex_sd.items() if k.startswith("features.")}
        model.net.load_state_dict(alex_sd, strict=True)
        lin_sd = torch.load(lin, map_location="cpu", weights_only=True)
        lin_sd = {k.replace("lin", "", 1) if k.startswith("lin") else k: v for k, v in lin_sd.items()}
        model.lins.load_state_dict(lin_sd, strict=True)
    except Exception as err:  # a corrupt or foreign file: say so rather than use partial weights
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        return None, f"LPIPS weights could not be loaded ({alex}, {lin}): {type(err).__name__}: {detail}"
    model = model.eval().requires_grad_(False).to(device)
    _LPIPS_CACHE[key] = model
    return model, None


@torch.no_grad()
def lpips_per_frame(generated: torch.Tensor, reference: torch.Tensor, batch: int = 8) -> tuple[torch.Tensor | None, str | None]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, reason = load_lpips(device)
    if model is None:
        return None, reason
    out = [model(generated[i:i + batch].to(device), reference[i:i + batch].to(device)).cpu()
           for i in range(0, generated.shape[0], batch)]
    return torch.cat(out), None


# ---------------------------------------------------------------------------- the report


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else PSNR_CAP


def frame_metrics(generated, reference, *, lpips: bool = True) -> dict:
    """Every metric for generated vs reference frames (uint8 or float [F, H, W, 3], same shape)."""
    gen, ref = _to_float(generated), _to_float(reference)
    if gen.shape != ref.shape:
        raise InputError(f"generated frames {tuple(gen.shape)} and reference frames {tuple(ref.shape)} differ in shape.")
    psnr = psnr_per_frame(gen, ref)
    out = {
        "num_frames": int(gen.shape[0]),
        "psnr": _finite(psnr.mean().item()),
        "ssim": float(ssim_per_frame(gen, ref).mean()),
        "lpips": None,
        "temporal_consistency": temporal_consistency(gen, ref) if gen.shape[0] > 1 else None,
        "first_frame_psnr": _finite(psnr[0].item()),
    }
    if lpips:
        values, reason = lpips_per_frame(gen, ref)
        if values is None:
            out["lpips_unavailable"] = reason
        else:
            out["lpips"] = float(values.mean())
    else:
        out["lpips_unavailable"] = "not requested"
    return out


def continuation_metrics(generated_video, ground_truth_video, cond_frames: int = 33, *, lpips: bool = True) -> dict:
    """Metrics on the predicted frames only: frames cond_frames+1 .. end (1-based) of both videos."""
    gen, ref = np.asarray(generated_video), np.asarray(ground_truth_video)
    if gen.shape != ref.shape:
        raise InputError(f"generated video {gen.shape} and ground truth {ref.shape} differ in shape.")
    if not 0 < cond_frames < gen.shape[0]:
        raise InputError(f"cond_frames={cond_frames} must be between 1 and the video length - 1 ({gen.shape[0] - 1}).")
    out = frame_metrics(gen[cond_frames:], ref[cond_frames:], lpips=lpips)
    out["frames"] = [cond_frames + 1, int(gen.shape[0])]  # 1-based, inclusive
    return out


def metric_difference(tta: dict, baseline: dict) -> dict:
    """tta - baseline for every metric both have as a number."""
    return {k: tta[k] - baseline[k] for k in METRIC_NAMES
            if isinstance(tta.get(k), (int, float)) and isinstance(baseline.get(k), (int, float))}
