"""The HED network (Xie & Tu 2015, VGG16 BSDS500 version) for users who have its weights.

Module names follow the widely shared PyTorch conversion of the BSDS500 model
(``network-bsds500.pth``: ``netVggOne`` ... ``netVggFiv``, ``netScoreOne`` ... ``netScoreFiv``,
``netCombine``; older copies name them ``module...``), so that file loads as it is. The input is
BGR in 0..255 minus the Caffe mean; the output is the fused sigmoid edge map in [0, 1].
Nothing is downloaded: pass a local file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)
_NAMES = ("One", "Two", "Thr", "Fou", "Fiv")
_WIDTHS = (64, 128, 256, 512, 512)
_DEPTHS = (2, 2, 3, 3, 3)


def _stage(cin: int, cout: int, convs: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.MaxPool2d(2, 2)] if pool else []
    for i in range(convs):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, 1, 1), nn.ReLU(inplace=False)]
    return nn.Sequential(*layers)


class HED(nn.Module):
    """VGG16 trunk, a 1x1 side output per stage upsampled to the input, fused by a 1x1 conv."""

    def __init__(self):
        super().__init__()
        cin = 3
        for i, (name, width, depth) in enumerate(zip(_NAMES, _WIDTHS, _DEPTHS)):
            setattr(self, f"netVgg{name}", _stage(cin, width, depth, pool=i > 0))
            setattr(self, f"netScore{name}", nn.Conv2d(width, 1, 1))
            cin = width
        self.netCombine = nn.Sequential(nn.Conv2d(5, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: [B, 3, H, W], BGR 0..255 minus :data:`BGR_MEAN`; returns [B, 1, H, W] in [0, 1]."""
        h, w = x.shape[-2:]
        sides = []
        for name in _NAMES:
            x = getattr(self, f"netVgg{name}")(x)
            s = getattr(self, f"netScore{name}")(x)
            sides.append(F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False))
        return self.netCombine(torch.cat(sides, 1))


def _normalise_keys(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        if k.startswith("module."):
            k = k[len("module."):]
        if k.startswith("module"):  # the original conversion's "moduleVggOne..." names
            k = "net" + k[len("module"):]
        out[k] = v
    return out


def load_hed_weights(path: str | Path, device: str = "cpu") -> HED:
    """Load BSDS500 HED weights from ``.safetensors`` or ``.pth``/``.pt`` (``weights_only``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: HED weight file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device=device)
    else:
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: cannot read HED weights safely ({type(e).__name__}: {e})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict of tensors")
    state = _normalise_keys(state)
    model = HED()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}")
        if wrong:
            parts.append(f"wrong shapes {wrong[:5]}")
        raise ValueError(f"{path}: not BSDS500 HED weights ({'; '.join(parts)})")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval().requires_grad_(False)


class HEDEdgeDetector:
    """Soft edges of grey images in [-1, 1] with a HED network: ``[H,W]`` or ``[B,H,W]`` -> same."""

    def __init__(self, weights: str | Path | None = None, model: HED | None = None,
                 device: str = "cpu", batch_size: int = 16):
        if (weights is None) == (model is None):
            raise ValueError("give exactly one of weights (a file) or model")
        self.model = load_hed_weights(weights, device) if weights is not None else model.eval()
        self.device = device
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        arr = np.asarray(images, dtype=np.float32)
        single = arr.ndim == 2
        if single:
            arr = arr[None]
        if arr.ndim != 3:
            raise ValueError(f"expected [H, W] or [B, H, W] images, got shape {arr.shape}")
        mean = torch.tensor(BGR_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        out = []
        for i in range(0, len(arr), self.batch_size):
            x = torch.from_numpy((np.clip(arr[i : i + self.batch_size], -1, 1) + 1) * 127.5)[:, None]
            x = x.repeat(1, 3, 1, 1) - mean  # grey: B = G = R
            out.append(self.model(x.to(self.device)).cpu().numpy()[:, 0])
        res = np.concatenate(out).astype(np.float32)
        return res[0] if single else res
