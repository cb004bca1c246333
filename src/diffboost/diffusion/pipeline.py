"""The generation pipeline: noise (or a noised real image) + prompt + condition -> a grey image, with
classifier-free guidance and a choice of samplers. Saved diffusers-style (safetensors + config.json
per part).

Image-to-image (SDEdit, ``strength < 1``) works as diffusers' img2img pipelines do: the sampler's
timesteps are set for ``steps``, the last ``int(strength * steps)`` are kept, the real image (SD:
its VAE latents) is noised to the first kept timestep with ``scheduler.add_noise`` and denoised from
there; multistep solvers start at that index (``set_begin_index``). Strength 1 starts from noise.

A ``keep`` region (the lesion) can be held to a lower strength than the rest of the image, as
diffusers' legacy inpainting pipeline holds its known region: after every step whose next timestep
is at or above ``keep_strength`` x T, the region is replaced by the real image noised to that
timestep with the same noise; below it the region is denoised freely with its context, which blends
it in. ``keep_strength`` equal to ``strength`` is plain image-to-image; 0 keeps the real pixels.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from .models import EdgeTextDenoiser, ModelConfig, from_model_space, to_model_space
from .text import TextEncoder

SAMPLERS = {
    "ddim": ("DDIMScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
}
CONFIG_NAME = "diffboost_model.json"

# The public code's text blend (SD 1.5 only there): its weights and fixed texts.
PUBLIC_BLEND = {"prompt": 0.045, "augment": 0.005, "base": 0.95,
                "prompt_suffix": ", best quality, extremely detailed", "base_text": "gray, sketch"}


def make_scheduler(name: str, train_config: dict):
    import diffusers

    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    cls_name, extra = SAMPLERS[name]
    cls = getattr(diffusers, cls_name)
    # a plain dict: diffusers' private "_use_default_values" would make a fresh scheduler and the
    # same scheduler reloaded from disk give different samplers
    config = {k: v for k, v in dict(train_config).items() if not k.startswith("_")}
    config["timestep_spacing"] = "trailing"  # start sampling at the last training step
    return cls.from_config(config, **extra)


def noise_for_seeds(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """Initial noise, one generator per seed: a sample does not depend on its batch."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


class DiffBoostPipeline:
    """Text + edge conditioned diffusion (``small``: pixel space; ``sd15``: SD latents + VAE)."""

    def __init__(self, denoiser: EdgeTextDenoiser, scheduler, text_encoder: TextEncoder,
                 config: ModelConfig, vae=None):
        self.denoiser = denoiser
        self.scheduler = scheduler  # the training (DDPM) scheduler; samplers are derived from it
        self.text_encoder = text_encoder
        self.config = config
        self.vae = vae
        self.device = torch.device("cpu")

    # ---- model space ------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B,1,H,W] in [-1,1] -> model space (pixel patches, or SD latents)."""
        if self.vae is None:
            return to_model_space(images, self.config.pixel_shuffle)
        # the posterior mean: deterministic, so runs resume exactly
        latents = self.vae.encode(images.repeat(1, 3, 1, 1).to(self.vae.dtype)).latent_dist.mean
        return latents * self.vae.config.scaling_factor

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> grey images [B,1,H,W] in [-1,1] (SD: cross-channel average of RGB)."""
        if self.vae is None:
            return from_model_space(x, self.config.pixel_shuffle)
        rgb = self.vae.decode(x.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return rgb.float().mean(1, keepdim=True)

    def encode_condition(self, edges: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Edge maps [B,1,H,W] in [0,1] (+ for ``edges+mask`` models the label channels [B,K,H,W],
        0/1; None = empty, as in pretraining) -> the denoiser's condition input. ``masks`` is
        ignored by ``edges`` models."""
        cond = edges
        if self.config.condition == "edges+mask":
            k = self.config.mask_channels
            if masks is None:
                masks = torch.zeros(edges.shape[0], k, *edges.shape[2:], dtype=edges.dtype, device=edges.device)
            if masks.shape[1] != k:
                raise ValueError(f"the model takes {k} mask channel(s), got {masks.shape[1]}")
            cond = torch.cat([edges, masks.to(edges)], 1)
        if self.vae is None:
            return to_model_space(cond, self.config.pixel_shuffle)
        # the SD ControlNet embeds full-resolution conditions itself; a ControlNet made for RGB
        # conditions (e.g. a public HED ControlNet) gets the edge map on all three channels
        n = self.denoiser.controlnet.config.conditioning_channels
        if cond.shape[1] > 1:
            if n != cond.shape[1]:
                raise ValueError(f"condition 'edges+mask' needs a ControlNet with {cond.shape[1]} conditioning "
                                 f"channels (edge map + labels); this one has {n}")
            return cond
        return edges.repeat(1, n, 1, 1) if n != edges.shape[1] else edges

    def _mask_input(self, masks, b: int, h: int, w: int) -> torch.Tensor | None:
        """``masks`` as label channels [B,K,H,W]: given so, or as label maps [B,H,W] of labels 1..K."""
        if masks is None or self.config.condition != "edges+mask":
            return None
        m = torch.as_tensor(np.array(masks))  # a copy: memory-mapped masks are read-only
        if m.ndim == 3:
            m = torch.stack([m == v for v in range(1, self.config.mask_channels + 1)], 1)
        if m.ndim != 4 or tuple(m.shape[:1] + m.shape[2:]) != (b, h, w):
            raise ValueError(f"masks must be [B, H, W] label maps or [B, K, H, W] channels matching the "
                             f"conditions {(b, h, w)}, got shape {tuple(m.shape)}")
        return m.float()

    def img2img_start(self, sched, steps: int, strength: float, images, noise: torch.Tensor):
        """The timesteps left to run and the noised starting point for image-to-image at ``strength``
        (as diffusers' img2img): keep the last ``int(strength * steps)`` timesteps, noise the images'
        model-space encoding to the first of them."""
        run = min(int(strength * steps), steps)
        if run < 1:
            raise ValueError(f"strength {strength} x {steps} steps runs no denoising step; raise strength or steps")
        start = (steps - run) * sched.order
        timesteps = sched.timesteps[start:]
        if hasattr(sched, "set_begin_index"):  # multistep solvers index their history from here
            sched.set_begin_index(start)
        img = torch.as_tensor(np.array(images, dtype=np.float32))
        if img.ndim == 3:
            img = img[:, None]
        if img.shape[0] != noise.shape[0]:
            raise ValueError(f"got {img.shape[0]} images for {noise.shape[0]} seeds")
        z0 = self.encode_images(img.to(noise.device)).float()
        return timesteps, sched.add_noise(z0, noise, timesteps[:1].repeat(noise.shape[0])), z0

    def keep_map(self, keep, b: int, h: int, w: int) -> torch.Tensor:
        """A region [B, H, W] in [0, 1] (1 = follow the real image) in model space."""
        k = torch.as_tensor(np.array(keep, dtype=np.float32))
        if tuple(k.shape) != (b, h, w):
            raise ValueError(f"keep must be [B, H, W] matching the conditions {(b, h, w)}, got shape {tuple(k.shape)}")
        k = k[:, None]
        if self.vae is None:
            return to_model_space(k, self.config.pixel_shuffle)
        f = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return torch.nn.functional.avg_pool2d(k, f)

    def model_shape(self, size: int) -> tuple[int, int, int]:
        if self.vae is None:
            p = self.config.pixel_shuffle
            return (p * p, size // p, size // p)
        f = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (self.vae.config.latent_channels, size // f, size // f)

    # ---- text ---------------------------------------------------------------------------------
    def text_states(self, prompts: list[str], augment: list[str] | None = None, blend: dict | None = None):
        """Token states for prompts (+ augmentation phrases). Without ``blend`` the phrase is
        appended to the prompt ("US, Breast, benign, enhanced contrast"); with ``blend`` the states
        are the public code's weighted sum of three encodings (see ``PUBLIC_BLEND``)."""
        augment = augment or [""] * len(prompts)
        if blend is None:
            texts = [f"{p}, {a}" if a else p for p, a in zip(prompts, augment)]
            return self.text_encoder(texts)
        sp, mp = self.text_encoder([p + blend["prompt_suffix"] for p in prompts])
        sa, ma = self.text_encoder(list(augment))
        sb, mb = self.text_encoder([blend["base_text"]] * len(prompts))
        states = blend["prompt"] * sp + blend["augment"] * sa + blend["base"] * sb
        return states, torch.maximum(torch.maximum(mp, ma), mb)

    # ---- sampling -----------------------------------------------------------------------------
    @torch.inference_mode()
    def __call__(
        self,
        prompts: list[str],
        conditions: np.ndarray | torch.Tensor,
        seeds: list[int],
        augment: list[str] | None = None,
        sampler: str = "dpm++",
        steps: int = 20,
        guidance: float = 3.0,
        negative: str = "",
        blend: dict | None = None,
        control_scale: float = 1.0,
        images: np.ndarray | torch.Tensor | None = None,
        strength: float = 1.0,
        masks: np.ndarray | torch.Tensor | None = None,
        keep: np.ndarray | torch.Tensor | None = None,
        keep_strength: float | None = None,
    ) -> np.ndarray:
        """Generate one image per prompt / condition / seed; returns float32 [B, H, W] in [-1, 1].

        ``strength < 1`` is image-to-image: ``images`` [B, H, W] in [-1, 1] are noised to
        ``strength`` x T and denoised in ``int(strength * steps)`` steps; 1 starts from noise.
        ``masks`` (``edges+mask`` models): label maps [B, H, W] (labels 1..K) or channels [B, K, H, W];
        None gives empty mask channels. ``keep`` [B, H, W] in [0, 1]: a region held to ``keep_strength``
        (in [0, strength]) instead of ``strength`` (image-to-image only).
        """
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        held = keep is not None and keep_strength is not None and keep_strength < strength
        if held and (keep_strength < 0 or strength == 1):
            raise ValueError(f"keep_strength must be in [0, strength) of an image-to-image run (strength < 1), "
                             f"got {keep_strength} at strength {strength}")
        cond = torch.as_tensor(np.asarray(conditions, dtype=np.float32))
        if cond.ndim == 3:
            cond = cond[:, None]
        b, _, h, w = cond.shape
        if not (len(prompts) == len(seeds) == b):
            raise ValueError(f"got {len(prompts)} prompts, {len(seeds)} seeds and {b} conditions")
        dev = self.device
        sched = make_scheduler(sampler, self.scheduler.config)
        sched.set_timesteps(steps, device=dev)
        noise = noise_for_seeds(seeds, self.model_shape(h)).to(dev)
        if strength == 1:
            timesteps, x = sched.timesteps, noise * sched.init_noise_sigma
        elif images is None:
            raise ValueError(f"strength {strength} < 1 (image-to-image) needs the real images")
        else:
            timesteps, x, z0 = self.img2img_start(sched, steps, strength, images, noise)
        hold = 0  # the region is put back after the first `hold` steps: down to where keep_strength starts
        if held:
            region = self.keep_map(keep, b, h, w).to(dev)
            hold = (min(int(strength * steps), steps) - int(keep_strength * steps)) * sched.order
        m = self._mask_input(masks, b, h, w)
        c = self.encode_condition(cond.to(dev), None if m is None else m.to(dev))
        states, mask = self.text_states(prompts, augment, blend)
        use_cfg = guidance != 1.0
        if use_cfg:
            ns, nm = self.text_encoder([negative] * b)
            states, mask, c = torch.cat([ns, states]), torch.cat([nm, mask]), torch.cat([c, c])
        states, mask = states.to(dev), mask.to(dev)
        for i, t in enumerate(timesteps, start=1):
            inp = sched.scale_model_input(torch.cat([x, x]) if use_cfg else x, t)
            eps = self.denoiser(inp, t.expand(inp.shape[0]), states, mask, c, control_scale)
            if use_cfg:
                eu, ec = eps.chunk(2)
                eps = eu + guidance * (ec - eu)
            x = sched.step(eps, t, x).prev_sample
            if i <= hold:  # x is now at timesteps[i], or clean after the last step
                real = z0 if i == len(timesteps) else sched.add_noise(z0, noise, timesteps[i:i + 1].repeat(b))
                x = region * real + (1 - region) * x
        return self.decode(x).clamp(-1, 1)[:, 0].float().cpu().numpy()

    # ---- save / load --------------------------------------------------------------------------
    def to(self, device) -> "DiffBoostPipeline":
        self.device = torch.device(device)
        self.denoiser.to(self.device)
        self.text_encoder.to(self.device)
        if self.vae is not None:
            self.vae.to(self.device)
        return self

    def save_pretrained(self, path: str | Path) -> None:
        """Write each part with its own ``save_pretrained`` (safetensors + config.json)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.denoiser.unet.save_pretrained(path / "unet")
        if self.denoiser.controlnet is not None:
            self.denoiser.controlnet.save_pretrained(path / "controlnet")
        self.scheduler.save_pretrained(path / "scheduler")
        if self.vae is not None:
            self.vae.save_pretrained(path / "vae")
            self.text_encoder.model.save_pretrained(path / "text_encoder")
            self.text_encoder.tokenizer.save_pretrained(path / "tokenizer")
        cfg = dataclasses.asdict(self.config)
        (path / CONFIG_NAME).write_text(json.dumps({"model": cfg, "diffboost_format": 1}, indent=1))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu") -> "DiffBoostPipeline":
        from diffusers import ControlNetModel, DDPMScheduler, UNet2DConditionModel

        path = Path(path)
        meta = path / CONFIG_NAME
        if not meta.exists():
            raise FileNotFoundError(f"{path}: not a diffboost model folder (no {CONFIG_NAME})")
        from ..config import from_dict

        cfg = from_dict(ModelConfig, json.loads(meta.read_text())["model"])
        unet = UNet2DConditionModel.from_pretrained(path / "unet", use_safetensors=True)
        controlnet = (ControlNetModel.from_pretrained(path / "controlnet", use_safetensors=True)
                      if (path / "controlnet").exists() else None)
        scheduler = DDPMScheduler.from_pretrained(path / "scheduler")
        vae = None
        if (path / "vae").exists():
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(path / "vae", use_safetensors=True)
            text = TextEncoder((str(path / "text_encoder"), str(path / "tokenizer")), cfg.max_tokens, pass_mask=False)
        else:
            text = TextEncoder(cfg.text_encoder, cfg.max_tokens)
        control = "controlnet" if controlnet is not None else "concat"
        pipe = cls(EdgeTextDenoiser(unet, controlnet, control).eval(), scheduler, text, cfg, vae)
        return pipe.to(device)


def model_hash(path: str | Path) -> str:
    """A short content hash of a saved model's weights (recorded with every synthetic image)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(path).rglob("*.safetensors")):
        h.update(f.relative_to(path).as_posix().encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]
