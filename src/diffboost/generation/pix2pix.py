"""The Pix2Pix baseline (Isola et al. 2017): an edge -> image conditional GAN.

Generator: a U-Net (MONAI ``UNet``, dropout as Pix2Pix's only noise source, tanh output in [-1, 1])
from the fold's condition (edges + mask boundary) to the image. Discriminator: MONAI's
``PatchDiscriminator`` (PatchGAN, 3 stride-2 layers: the 70 x 70 receptive field at 256 px) on
(condition, image) pairs. Loss: least-squares GAN + 100 x L1, Adam (2e-4, betas 0.5 / 0.999), as the
paper's defaults. It trains on the TRAINING part of a fold only, at the prepared size, and can write
a synthetic set in the same format as the diffusion model's (variants differ by their dropout
masks), so ``compare`` can use it as the ``pix2pix`` strategy (it is a generator, like the diffusion model).

Saved as ``config.json`` + ``generator.safetensors`` (+ ``discriminator.safetensors``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.store import PreparedSet
from ..utils.atomic import artifact_dir, recover_artifact
from ..utils.progress import ProgressBar


@dataclass
class Pix2PixConfig:
    """Options of ``diffboost pix2pix train``."""

    steps: int = 3000
    batch_size: int = 8
    learning_rate: float = 2e-4
    l1_weight: float = 100.0
    channels: tuple[int, ...] = (32, 64, 128, 256, 256)
    disc_channels: int = 32
    dropout: float = 0.2
    seed: int = 0
    condition: str = "condition"  # condition (edges + mask boundary) | edges

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        if self.condition not in ("condition", "edges"):
            raise ValueError(f"condition must be 'condition' or 'edges', got {self.condition!r}")
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError("steps must be >= 1 and batch_size >= 2")


def build_generator(cfg: Pix2PixConfig) -> torch.nn.Module:
    from monai.networks.nets import UNet

    unet = UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=cfg.channels,
                strides=(2,) * (len(cfg.channels) - 1), num_res_units=0, norm="instance", dropout=cfg.dropout)
    return torch.nn.Sequential(unet, torch.nn.Tanh())


def build_discriminator(cfg: Pix2PixConfig) -> torch.nn.Module:
    from monai.networks.nets import PatchDiscriminator

    return PatchDiscriminator(spatial_dims=2, channels=cfg.disc_channels, in_channels=2, out_channels=1,
                              num_layers_d=3, norm="INSTANCE")


def _conditions(ps: PreparedSet, idx, cfg: Pix2PixConfig) -> torch.Tensor:
    arr = ps.conditions if cfg.condition == "condition" else ps.edges
    return torch.from_numpy(np.asarray(arr[np.asarray(idx)], np.float32) / 255.0)[:, None] * 2 - 1


def train_pix2pix(ps: PreparedSet, fold: int, out: str | Path, cfg: Pix2PixConfig | None = None,
                  progress: bool = True) -> Path:
    """Train on the fold's training samples; write ``out/model``; return it (reused when present)."""
    from safetensors.torch import save_file

    cfg = cfg or Pix2PixConfig()
    out = Path(out)
    model = out / "model"
    recover_artifact(model)  # a kill while swapping a new version in leaves the previous one aside
    if (model / "generator.safetensors").exists():
        saved = json.loads((model / "config.json").read_text())
        if saved["pix2pix"] != _plain(cfg) or saved["fold"] != fold:
            raise ValueError(f"{model}: holds a Pix2Pix model with other settings; choose another --out")
        return model
    ps = ps.for_fold(fold)
    idx = ps.indices(ps.fold(fold).train, training=True)
    if not idx:
        raise ValueError(f"{ps.root}: fold {fold} has no training samples")
    images = torch.from_numpy(np.asarray(ps.images[np.asarray(idx)], np.float32))[:, None]
    conds = _conditions(ps, idx, cfg)
    torch.manual_seed(cfg.seed)
    gen, disc = build_generator(cfg), build_discriminator(cfg)
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.learning_rate, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.learning_rate, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(cfg.seed)
    bar = ProgressBar("pix2pix", cfg.steps, fields={"L1": "{:.4f}", "D": "{:.3f}"}, enabled=progress)
    t0 = time.perf_counter()
    log = []
    for step in range(cfg.steps):
        b = torch.randint(0, len(idx), (cfg.batch_size,), generator=g)
        flip = torch.rand(cfg.batch_size, generator=g) < 0.5
        x, c = images[b].clone(), conds[b].clone()
        x[flip], c[flip] = x[flip].flip(-1), c[flip].flip(-1)
        fake = gen(c)
        # discriminator: real pairs -> 1, generated pairs -> 0 (least squares)
        d_real, d_fake = disc(torch.cat([c, x], 1))[-1], disc(torch.cat([c, fake.detach()], 1))[-1]
        loss_d = 0.5 * (F.mse_loss(d_real, torch.ones_like(d_real)) + F.mse_loss(d_fake, torch.zeros_like(d_fake)))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        # generator: fool the discriminator and stay close to the real image
        d_fake = disc(torch.cat([c, fake], 1))[-1]
        l1 = F.l1_loss(fake, x)
        loss_g = F.mse_loss(d_fake, torch.ones_like(d_fake)) + cfg.l1_weight * l1
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if step % 10 == 0 or step + 1 == cfg.steps:
            l1_v, d_v = float(l1.detach()), float(loss_d.detach())
            log.append({"step": step + 1, "l1": l1_v, "loss_d": d_v})
            bar.update(step + 1, L1=l1_v, D=d_v)
    bar.close()
    with artifact_dir(model) as tmp:  # a previous model stays until this one is complete
        save_file({k: v.contiguous() for k, v in gen.state_dict().items()}, str(tmp / "generator.safetensors"))
        save_file({k: v.contiguous() for k, v in disc.state_dict().items()}, str(tmp / "discriminator.safetensors"))
        (tmp / "config.json").write_text(json.dumps({"pix2pix": _plain(cfg), "fold": fold, "size": ps.size,
                                                     "prepared": str(ps.root.resolve()), "samples": len(idx),
                                                     "seconds": round(time.perf_counter() - t0, 1)}, indent=1))
        (tmp / "log.json").write_text(json.dumps(log))
    return model


def _plain(cfg: Pix2PixConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["channels"] = list(d["channels"])
    return d


class Pix2PixGenerator:
    """A trained generator: ``__call__(conditions [N, H, W] in [0, 1], seeds)`` -> images in [-1, 1].
    Without seeds the dropout is off (deterministic); with seeds it is on, one draw per seed."""

    def __init__(self, path: str | Path):
        from safetensors.torch import load_file

        path = Path(path)
        recover_artifact(path)
        if not (path / "generator.safetensors").exists():
            raise FileNotFoundError(f"{path}: not a Pix2Pix model (generator.safetensors missing)")
        self.meta = json.loads((path / "config.json").read_text())
        self.cfg = Pix2PixConfig(**self.meta["pix2pix"])
        self.net = build_generator(self.cfg)
        self.net.load_state_dict(load_file(str(path / "generator.safetensors")))
        self.net.eval()

    @torch.no_grad()
    def __call__(self, conditions: np.ndarray, seeds: list[int] | None = None) -> np.ndarray:
        c = torch.from_numpy(np.asarray(conditions, np.float32))[:, None] * 2 - 1
        if seeds is None:
            return self.net(c)[:, 0].numpy()
        out = []
        for j, s in enumerate(seeds):
            torch.manual_seed(s)
            for m in self.net.modules():  # dropout on, normalisation in eval mode
                if isinstance(m, torch.nn.Dropout):
                    m.train()
            out.append(self.net(c[j : j + 1])[0, 0])
            for m in self.net.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.eval()
        return torch.stack(out).numpy()


def generate_pix2pix(model: str | Path, ps: PreparedSet, out: str | Path, fold: int, n: int = 1, seed: int = 0,
                     progress: bool = True):
    """n variants of every training sample of ``fold``, written as a synthetic set."""
    from .synthetic import SyntheticSet, check_set_folder, variant_seed, write_synthetic_set
    from ..utils.progress import progress_iter

    gen = Pix2PixGenerator(model)
    if gen.meta["fold"] != fold:
        raise ValueError(f"{model}: trained on fold {gen.meta['fold']}, not fold {fold}")
    out = Path(out)
    check_set_folder(out)  # before the work: writing the set replaces the whole folder
    ps = ps.for_fold(fold)
    idx = ps.indices(ps.fold(fold).train, training=True)
    cond_arr = ps.conditions if gen.cfg.condition == "condition" else ps.edges
    rows, images = [], []
    t0 = time.perf_counter()
    for v in progress_iter(range(n), f"pix2pix fold {fold}", enabled=progress):
        for i in range(0, len(idx), 32):
            chunk = idx[i : i + 32]
            seeds = [variant_seed(seed, ps.manifest[r]["case_id"], ps.manifest[r]["slice_index"], v) % 2**63
                     for r in chunk]
            imgs = gen(np.asarray(cond_arr[np.asarray(chunk)], np.float32) / 255.0, seeds)
            for r, s, img in zip(chunk, seeds, imgs):
                m = ps.manifest[r]
                rows.append({"index": len(rows), "real_index": r, "case_id": m["case_id"],
                             "slice_index": m["slice_index"], "variant": v, "category": m["category"],
                             "prompt": m["prompt"], "text": "", "seed": s, "sampler": "pix2pix", "steps": 1,
                             "guidance": 0.0, "model_hash": ""})
                images.append(img.astype(np.float16))
    out.mkdir(parents=True, exist_ok=True)
    write_synthetic_set(out, ps, rows, np.stack(images), gen.cfg, {
        "identity": {"model": str(Path(model).resolve()), "fold": fold, "seed": seed}, "model": str(Path(model).resolve()),
        "fold": fold, "n": n, "num_real": len(idx), "num_variants": len(rows),
        "seconds": round(time.perf_counter() - t0, 2), "generator": "pix2pix"})
    return SyntheticSet(out)
