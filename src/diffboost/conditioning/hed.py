"""HED soft edges (Xie & Tu 2015, VGG16 trained on BSDS500) from a local weight file.

Module names follow the PyTorch conversion of the BSDS500 model by sniklaus/pytorch-hed
(``network-bsds500.pth`` / ``.pytorch``): ``netVggOne`` .. ``netVggFiv`` (VGG16 stages),
``netScoreOne`` .. ``netScoreFiv`` (1x1 side outputs) and ``netCombine`` (1x1 fusion + sigmoid),
so that file loads with ``strict=True``. Copies that use the older ``moduleVggOne`` ... names, or
a ``module.`` (DataParallel) prefix, are accepted too. The network expects BGR in 0..255 minus
the Caffe mean :data:`BGR_MEAN`. Nothing is downloaded: the user supplies the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError

#: Caffe mean pixel of the HED/VGG training data, in B, G, R order on the 0..255 scale.
BGR_MEAN: tuple[float, float, float] = (104.00698793, 116.66876762, 122.67891434)

#: (name suffix, channels, 3x3 convolutions) of the five VGG16 stages.
_STAGES: tuple[tuple[str, int, int], ...] = (
    ("One", 64, 2),
    ("Two", 128, 2),
    ("Thr", 256, 3),
    ("Fou", 512, 3),
    ("Fiv", 512, 3),
)

#: Smallest input side: four 2x2 poolings must leave stage five at least one pixel.
MIN_SIZE = 16


def _vgg_stage(c_in: int, c_out: int, n_conv: int, downsample: bool) -> nn.Sequential:
    """One VGG16 stage: optional 2x2 max-pool, then ``n_conv`` 3x3 conv + ReLU pairs."""
    layers: list[nn.Module] = [nn.MaxPool2d(kernel_size=2, stride=2)] if downsample else []
    for i in range(n_conv):
        layers.append(nn.Conv2d(c_in if i == 0 else c_out, c_out, kernel_size=3, stride=1, padding=1))
        layers.append(nn.ReLU(inplace=False))
    return nn.Sequential(*layers)


class HED(nn.Module):
    """Holistically-nested edge detector: VGG16 trunk, five side outputs, learned 1x1 fusion."""

    def __init__(self) -> None:
        super().__init__()
        c_in = 3
        for i, (name, c_out, n_conv) in enumerate(_STAGES):
            self.add_module(f"netVgg{name}", _vgg_stage(c_in, c_out, n_conv, downsample=i > 0))
            c_in = c_out
        for name, c_out, _ in _STAGES:
            self.add_module(f"netScore{name}", nn.Conv2d(c_out, 1, kernel_size=1, stride=1, padding=0))
        self.netCombine = nn.Sequential(nn.Conv2d(len(_STAGES), 1, kernel_size=1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fused edge probability.

        ``x``: ``[B, 3, H, W]`` BGR on 0..255 minus :data:`BGR_MEAN`, ``H, W >= MIN_SIZE``.
        Returns ``[B, 1, H, W]`` in [0, 1].
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"HED expects [B, 3, H, W] input, got {tuple(x.shape)}")
        size = (int(x.shape[2]), int(x.shape[3]))
        if min(size) < MIN_SIZE:
            raise ValueError(f"HED needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels, got {size}")
        sides = []
        feat = x
        for name, _, _ in _STAGES:
            feat = getattr(self, f"netVgg{name}")(feat)
            score = getattr(self, f"netScore{name}")(feat)
            sides.append(F.interpolate(score, size=size, mode="bilinear", align_corners=False))
        return self.netCombine(torch.cat(sides, dim=1))


def _canonical_key(key: str) -> str:
    """Map DataParallel (``module.``) and legacy (``moduleVggOne``) names to this module's names."""
    if key.startswith("module."):
        key = key[len("module."):]
    if key.startswith("module") and key[len("module"):len("module") + 1].isupper():
        key = "net" + key[len("module"):]
    return key


def _read_state(path: Path, device: str | torch.device) -> Mapping[str, object]:
    """The raw mapping stored in ``path`` (safetensors, or a ``weights_only`` torch pickle)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(device))
        except Exception as e:  # corrupt or not a safetensors file
            raise DataError(path, f"cannot read as safetensors ({type(e).__name__}: {e})") from None
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # refused pickle content, truncated file, not a torch file
        raise DataError(
            path, f"cannot load as a plain state dict with weights_only=True ({type(e).__name__}: {e})"
        ) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise DataError(path, f"expected a state dict, found {type(obj).__name__}")
    return obj


def _listing(keys: list[str], limit: int = 5) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_hed_weights(path: str | Path, device: str | torch.device = "cpu") -> HED:
    """Build :class:`HED` from BSDS500 weights in ``.safetensors`` or ``.pth``/``.pt`` form.

    Pickles are read with ``weights_only=True`` only. Raises :class:`FileNotFoundError` for a
    missing file and :class:`ValueError` (naming the file, listing up to five offending keys)
    for anything that is not this network's state dict. Returns the model in eval mode,
    without gradients, on ``device``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: HED weight file not found")
    raw = _read_state(path, device)

    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            raise DataError(path, f"entry {key!r} is a {type(value).__name__}, not a tensor")
        name = _canonical_key(str(key))
        if name in state:
            raise DataError(path, f"two entries map to the same parameter {name!r}")
        state[name] = value

    model = HED()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if state[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if reshaped:
        problems.append(f"wrong shapes: {_listing(reshaped)}")
    if problems:
        raise DataError(path, "not BSDS500 HED weights; " + "; ".join(problems))

    model.load_state_dict(state, strict=True)
    return model.to(device).eval().requires_grad_(False)


class HEDEdgeDetector:
    """Soft edges in [0, 1] of grey images in [-1, 1], computed by a HED network.

    Give exactly one of ``weights`` (a file for :func:`load_hed_weights`) or ``model``.
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        model: HED | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
    ) -> None:
        if (weights is None) == (model is None):
            raise ValueError("HEDEdgeDetector needs exactly one of weights (a file) or model")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        net = load_hed_weights(weights, self.device) if weights is not None else model
        self.model: nn.Module = net.to(self.device).eval()
        first = next(self.model.parameters(), None)
        self._dtype = first.dtype if first is not None else torch.float32

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Edges of ``[H, W]`` or ``[B, H, W]`` grey images in [-1, 1]; float32, same shape."""
        arr = np.asarray(images, dtype=np.float32)
        if arr.ndim not in (2, 3):
            raise ValueError(f"expected [H, W] or [B, H, W] grey images, got shape {arr.shape}")
        batch = arr[None] if arr.ndim == 2 else arr
        out = np.empty(batch.shape, dtype=np.float32)
        mean = torch.tensor(BGR_MEAN, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        with torch.inference_mode():
            for start in range(0, batch.shape[0], self.batch_size):
                chunk = torch.from_numpy(np.ascontiguousarray(batch[start : start + self.batch_size]))
                grey = (chunk.to(self.device).clamp(-1.0, 1.0) + 1.0) * 127.5  # 0..255
                x = grey[:, None].expand(-1, 3, -1, -1) - mean  # grey, so B = G = R
                edges = self.model(x.to(self._dtype))
                out[start : start + self.batch_size] = edges[:, 0].float().cpu().numpy()
        return out[0] if arr.ndim == 2 else out
