"""2D segmentation networks from MONAI, chosen by name.

| name | MONAI network |
|---|---|
| ``attention_unet`` | ``AttentionUnet``, channels 16-32-64-128-128-256, five stride-2 levels (the paper's) |
| ``unet`` | ``UNet`` without residual units |
| ``res_unet`` | ``UNet`` with two residual units per level |
| ``resnet50_unet`` | ``FlexibleUNet`` with a ResNet-50 encoder (random init: nothing is downloaded) |
| ``swin_unetr`` | ``SwinUNETR`` in 2D |
| ``basic_unet`` | ``BasicUNet`` |

``channels`` (widths, finest level first) sets the widths of every network:

- the UNet family takes them as they are, one per level;
- ``basic_unet`` takes 6 (BasicUNet's ``features``: five levels, then the last decoder level) or 5
  (the five levels; the last decoder level gets the first width);
- ``resnet50_unet``'s encoder is ResNet-50's own, so ``channels`` set its decoder: 5 or 6 widths,
  finest first, of which the first five are the decoder's (a sixth, the bottleneck, is ResNet-50's
  2048 channels);
- ``swin_unetr``'s widths double per level from ``feature_size``, which MONAI needs divisible by
  12: the multiple of 12 nearest ``channels[0]`` (at least 12).

``check_network`` refuses a combination that cannot be built or run, with the reason, before any
training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

NETWORKS = ("attention_unet", "unet", "res_unet", "resnet50_unet", "swin_unetr", "basic_unet")
PAPER_CHANNELS = (16, 32, 64, 128, 128, 256)


def size_multiple(name: str, channels: Sequence[int] | None = None) -> int:
    """The input size must be a multiple of this."""
    if name in ("attention_unet", "unet", "res_unet"):
        return 2 ** (len(channels or PAPER_CHANNELS) - 1)
    if name == "basic_unet":
        return 16
    return 32


def swin_feature_size(channels: Sequence[int] | None) -> int:
    """``SwinUNETR``'s feature size for these widths: the multiple of 12 nearest ``channels[0]``."""
    if not channels:
        return 24
    return max(12, 12 * round(channels[0] / 12))


def check_network(name: str, channels: Sequence[int] | None = None, size: int | None = None) -> None:
    """Raise a ValueError saying why ``name`` cannot be built with ``channels`` (or trained at
    ``size`` pixels); return None when it can."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose one of {', '.join(NETWORKS)}")
    ch = tuple(channels) if channels else None
    if ch is not None and any(c < 1 for c in ch):
        raise ValueError(f"{name}: channel widths must be positive, got {list(ch)}")
    if ch is not None and name in ("attention_unet", "unet", "res_unet") and len(ch) < 2:
        raise ValueError(f"{name} takes at least 2 channel widths (one per level), got {len(ch)}")
    if ch is not None and name == "basic_unet" and not 5 <= len(ch) <= 6:
        raise ValueError(f"basic_unet takes 5 or 6 channel widths (its five levels, then optionally the last decoder "
                         f"level's), got {len(ch)}: {list(ch)}")
    if ch is not None and name == "resnet50_unet" and not 5 <= len(ch) <= 6:
        raise ValueError(f"resnet50_unet takes 5 or 6 channel widths (its five decoder levels, finest first; a sixth, "
                         f"the bottleneck, is ResNet-50's own 2048), got {len(ch)}: {list(ch)}")
    if size is not None and size % size_multiple(name, ch):
        raise ValueError(f"size {size} is not a multiple of {size_multiple(name, ch)}, which {name} needs")


def build_network(name: str, out_channels: int, channels: Sequence[int] | None = None,
                  in_channels: int = 1) -> nn.Module:
    """A 2D network ``[B, in, H, W] -> [B, out_channels, H, W]`` (logits)."""
    from monai.networks import nets

    check_network(name, channels)
    ch = tuple(channels) if channels else None
    if name == "attention_unet":
        ch = ch or PAPER_CHANNELS
        return nets.AttentionUnet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
                                  channels=ch, strides=(2,) * (len(ch) - 1))
    if name in ("unet", "res_unet"):
        ch = ch or PAPER_CHANNELS
        return nets.UNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, channels=ch,
                         strides=(2,) * (len(ch) - 1), num_res_units=2 if name == "res_unet" else 0,
                         norm="batch")
    if name == "basic_unet":
        feats = ch or (32, 32, 64, 128, 256, 32)
        feats = feats if len(feats) == 6 else (*feats, feats[0])  # 5 widths: the last decoder level gets the first
        return nets.BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, features=feats)
    if name == "resnet50_unet":
        decoder = tuple(reversed(ch[:5])) if ch else (256, 128, 64, 32, 16)  # coarsest first
        return nets.FlexibleUNet(in_channels=in_channels, out_channels=out_channels, backbone="resnet50",
                                 pretrained=False, decoder_channels=decoder, spatial_dims=2)
    return nets.SwinUNETR(in_channels=in_channels, out_channels=out_channels, spatial_dims=2,
                          feature_size=swin_feature_size(ch))
