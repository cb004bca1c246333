"""Bring your own Stable Diffusion 1.5: the paper's setting.

The SD UNet, VAE and CLIP text encoder are loaded from a local folder (diffusers layout) or a single
``.safetensors`` checkpoint and stay locked; only a ControlNet trains. It starts from a copy of the
UNet (``ControlNetModel.from_unet``; ``edges+mask`` gives it one conditioning channel per label more
than the edge map) or from a local ControlNet. Grey images go in as three equal
channels; the decoded RGB is averaged over channels (the paper's cross-channel average).
Nothing is downloaded, and nothing is unpickled: every part loads from safetensors, unless the
environment sets ``DIFFBOOST_ALLOW_PICKLE=1`` for a checkpoint that has only ``.bin`` / ``.ckpt`` weights
(a pickle can run code when it is loaded: only for files you trust).
"""

from __future__ import annotations

import os
from pathlib import Path

from .models import EdgeTextDenoiser, ModelConfig
from .pipeline import DiffBoostPipeline
from .text import TextEncoder


def allow_pickle() -> bool:
    """Whether the user let non-safetensors weights load (``DIFFBOOST_ALLOW_PICKLE=1``)."""
    return os.environ.get("DIFFBOOST_ALLOW_PICKLE", "") in ("1", "true", "yes")


def _safetensors_only(path: Path, what: str):
    """One clear error when a part has no safetensors weights and pickles are not allowed."""
    return ValueError(f"{path}: {what} has no .safetensors weights; diffboost loads no pickled weights by default "
                      "(they can run code). Convert it to safetensors, or set DIFFBOOST_ALLOW_PICKLE=1 if you trust it")


def _load_parts(path: Path):
    from diffusers import StableDiffusionPipeline

    if path.is_dir():
        if not (path / "unet").is_dir() or not (path / "vae").is_dir():
            raise FileNotFoundError(f"{path}: not a diffusers Stable Diffusion folder (needs unet/, vae/, text_encoder/, tokenizer/)")
        try:
            sd = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False,
                                                         local_files_only=True, use_safetensors=not allow_pickle() or None)
        except (OSError, EnvironmentError) as e:
            if not allow_pickle() and "safetensors" in str(e).lower():
                raise _safetensors_only(path, "the Stable Diffusion checkpoint") from None
            raise
    elif path.suffix == ".safetensors":
        try:
            sd = StableDiffusionPipeline.from_single_file(str(path), local_files_only=True)
        except Exception as e:
            raise ValueError(f"{path}: cannot load this single-file checkpoint offline ({type(e).__name__}: {e}); "
                             "convert it to a diffusers folder and pass that folder") from None
    else:
        raise ValueError(f"{path}: expected a diffusers folder or a .safetensors file")
    return sd


def load_sd15(cfg: ModelConfig) -> DiffBoostPipeline:
    """A trainable SD 1.5 + ControlNet pipeline from ``cfg.pretrained`` (and ``cfg.controlnet``)."""
    from diffusers import ControlNetModel, DDPMScheduler

    if not cfg.pretrained:
        raise ValueError("the sd15 model needs --pretrained: a local Stable Diffusion 1.5 folder or .safetensors")
    path = Path(cfg.pretrained).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: Stable Diffusion checkpoint not found")
    sd = _load_parts(path)
    unet, vae = sd.unet.requires_grad_(False), sd.vae.requires_grad_(False)
    sd.text_encoder.requires_grad_(False)
    if cfg.controlnet:
        try:
            controlnet = ControlNetModel.from_pretrained(cfg.controlnet, local_files_only=True,
                                                         use_safetensors=not allow_pickle() or None)
        except (OSError, EnvironmentError) as e:
            if not allow_pickle() and "safetensors" in str(e).lower():
                raise _safetensors_only(Path(cfg.controlnet), "the ControlNet") from None
            raise
        n = controlnet.config.conditioning_channels
        if cfg.condition == "edges+mask" and n != cfg.condition_channels:
            raise ValueError(f"{cfg.controlnet}: condition 'edges+mask' needs a ControlNet with "
                             f"{cfg.condition_channels} conditioning channels (edge map + labels); it has {n}")
    else:
        # the condition embedding must shrink the edge map to the latent size: one stride-2 stage
        # per VAE downsampling (SD 1.5: 8x, diffusers' default (16, 32, 96, 256))
        stages = len(vae.config.block_out_channels) - 1
        emb = (16, 32, 96, 256)[: stages + 1] if stages <= 3 else (16, 32, 96, 256) + (256,) * (stages - 3)
        controlnet = ControlNetModel.from_unet(unet, conditioning_channels=cfg.condition_channels,
                                               conditioning_embedding_out_channels=emb)
    scheduler = DDPMScheduler.from_config(sd.scheduler.config)
    cfg.max_tokens = int(sd.tokenizer.model_max_length)
    text = TextEncoder(model=sd.text_encoder, tokenizer=sd.tokenizer, max_tokens=cfg.max_tokens, pass_mask=False)
    cfg.control = "controlnet"
    return DiffBoostPipeline(EdgeTextDenoiser(unet, controlnet, "controlnet"), scheduler, text, cfg, vae=vae)
