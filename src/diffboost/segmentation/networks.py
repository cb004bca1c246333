"""2D segmentation networks from MONAI, chosen by name.

| name | MONAI network |
|---|---|
| ``attention_unet`` | ``AttentionUnet``, channels 16-32-64-128-128-256, five stride-2 levels (the paper's) |
| ``unet`` | ``UNet`` without residual units |
| ``res_unet`` | ``UNet`` with two residual units per level |
| ``resnet50_unet`` | ``FlexibleUNet`` with a ResNet-50 encoder (random init: nothing is downloaded) |
| ``swin_unetr`` | ``SwinUNETR`` in 2D |
| ``basic_unet`` | ``BasicUNet`` |

``channels`` overrides the widths of the UNet family (a CPU preset uses narrower ones).
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


def build_network(name: str, out_channels: int, channels: Sequence[int] | None = None,
                  in_channels: int = 1) -> nn.Module:
    """A 2D network ``[B, in, H, W] -> [B, out_channels, H, W]`` (logits)."""
    from monai.networks import nets

    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose one of {', '.join(NETWORKS)}")
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
        if len(feats) != 6:
            raise ValueError(f"basic_unet takes 6 channel widths, got {len(feats)}")
        return nets.BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, features=feats)
    if name == "resnet50_unet":
        return nets.FlexibleUNet(in_channels=in_channels, out_channels=out_channels, backbone="resnet50",
                                 pretrained=False, spatial_dims=2)
    return nets.SwinUNETR(in_channels=in_channels, out_channels=out_channels, spatial_dims=2,
                          feature_size=ch[0] if ch else 24)
