#!/usr/bin/env python
"""GPU readiness (issue 12): the ``gpu`` preset's code paths end to end, at reduced scale.

    python bench/gpu_check.py                 # a CUDA machine; designed for < 8 min on one H100
    python bench/gpu_check.py --cpu-dry-run   # the same checks on CPU at the smallest scale

Without CUDA (and without ``--cpu-dry-run``) it says that it needs CUDA and exits 0.

Everything goes through the project's Python API on the built-in SYNTHETIC phantoms:

- ``diffboost.run`` with the ``gpu`` preset, scaled down (image size, steps, epochs, variants; the
  preset's diffusion model, AttentionUNet and batch sizes otherwise), with ``train.mixed_precision``
  bf16 and ``train.gradient_checkpointing`` on (the preset leaves it off): prepare -> fine-tune ->
  generate -> compare (train-seg for ``none`` and ``diffboost``) -> report. Checked: the training
  forward ran on the device in bf16 with gradient checkpointing active, finite losses and weights,
  variants of the expected shape, finite and in [-1, 1], finite Dice in [0, 1], the report;
- the preset as it is (gradient checkpointing off) at its batch size: 2 steps, peak GPU memory;
- a second ``diffboost.run`` call reuses every stage (no training step, image or epoch redone);
- resume without killing anything: a fine-tune interrupted right after its mid-run checkpoint and
  resumed with ``resume="latest"`` (continues from that step; weights compared with the
  uninterrupted run's), ``generate`` with n=1 then n=2 (adds only the missing variants), a
  ``train_seg`` interrupted after its first epoch and resumed (weights compared again; on CPU they
  must be bit-identical, on CUDA within 0.05, its kernels not being deterministic);
- the ``sd15`` route with tiny random Stable Diffusion components saved as a local checkpoint:
  ControlNet fine-tune (bf16, gradient checkpointing; the SD UNet must stay locked), generate,
  train-seg on its variants;
- fp16 mixed precision through ``diffboost finetune --mixed-precision fp16`` in a child process
  (accelerate allows one mixed precision per process: a second ``train_diffusion`` call with another
  one in the same process raises);
- ``accelerate launch`` with 2 processes (fine-tune + generate; the sharded images must equal a
  single process's) when 2 or more CUDA devices exist.

It prints a pass / fail / skipped table with the seconds of each check, writes
``bench/results/gpu_check.json`` (``gpu_check_cpu_dry_run.json`` for the dry run) and exits 1 if any
check failed. ``--launch-processes N`` forces the ``accelerate launch`` check with N processes (on
CPU: N=1) to test its plumbing where there are fewer than 2 GPUs.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 8 * 60  # one H100
DRY_TARGET_SECONDS = 5 * 60  # one CPU thread
MARKER = ".gpu_check_work"


# ---- scale ----------------------------------------------------------------------------------------

@dataclass
class Scale:
    """What differs from the ``gpu`` preset (None = the preset's value)."""

    phantoms: int
    size: int
    steps: int  # diffusion fine-tuning steps (even: the resume check interrupts at steps / 2)
    model: dict = field(default_factory=dict)
    batch_size: int | None = None
    gen_n: int = 2
    gen_steps: int | None = None
    gen_batch: int | None = None
    seg_channels: tuple[int, ...] | None = None
    seg_epochs: int = 2
    seg_batch: int | None = None
    sd_steps: int = 10
    sd_batch: int = 8
    sd_gen_steps: int = 10
    fp16_steps: int = 10


# the preset's architecture and batch sizes at its 384 px, few steps
GPU_SCALE = Scale(phantoms=24, size=384, steps=40)
# the smallest that runs every code path on one CPU thread
CPU_SCALE = Scale(phantoms=12, size=32, steps=6, model={"channels": (8, 16, 32), "attention": (False, True, True)},
                  batch_size=4, gen_n=2, gen_steps=2, gen_batch=8, seg_channels=(8, 16, 32), seg_epochs=2,
                  seg_batch=4, sd_steps=2, sd_batch=2, sd_gen_steps=2, fp16_steps=2)


# ---- checks: bookkeeping --------------------------------------------------------------------------

class CheckFailed(Exception):
    pass


def expect(cond, msg: str) -> None:
    if not cond:
        raise CheckFailed(msg)


class Runner:
    def __init__(self, device: str):
        self.device = device
        self.cuda = device == "cuda"
        self.rows: list[dict] = []
        self.ok: set[str] = set()

    def check(self, key: str, label: str, fn, needs: tuple[str, ...] = (), skip: str | None = None) -> None:
        import torch

        t0 = time.perf_counter()
        missing = [n for n in needs if n not in self.ok]
        seconds = None
        if skip:
            status, detail = "skipped", skip
        elif missing:
            status, detail = "skipped", f"needs the passing check(s): {', '.join(missing)}"
        else:
            if self.cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            print(f"-- {label} ...", flush=True)
            try:
                out = fn()
                detail, seconds = out if isinstance(out, tuple) else (out, None)
                status = "pass"
                self.ok.add(key)
            except CheckFailed as e:
                status, detail = "fail", str(e)
            except Exception as e:  # noqa: BLE001 - a check's crash is its result
                status, detail = "fail", f"{type(e).__name__}: {e}"
                traceback.print_exc()
        row = {"check": label, "status": status,
               "seconds": round(seconds if seconds is not None else time.perf_counter() - t0, 1),
               "detail": " ".join(str(detail).replace("|", "/").split())}
        if self.cuda:
            row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if status != "skipped" else 0.0
        self.rows.append(row)
        print(f"   {status.upper()} ({row['seconds']} s): {row['detail']}", flush=True)

    @property
    def failed(self) -> bool:
        return any(r["status"] == "fail" for r in self.rows)


class Interrupted(Exception):
    """Raised by the probes to interrupt a stage without killing the process."""


class Probe:
    """Watches the project's code from the outside (wrappers installed on its module attributes):
    what the training forward ran on, checkpoints saved, epochs trained, images generated; and
    interrupts a stage on request. Nothing in src/ is edited."""

    def __init__(self):
        self.reset()
        self._undo: list = []

    def reset(self):
        self.train_forwards: set[tuple] = set()  # (device, dtype, unet checkpointing, controlnet checkpointing)
        self.seg_forwards: set[tuple] = set()  # (training?, device, dtype)
        self.ckpt_steps: list[int] = []
        self.seg_epochs: list[int] = []
        self.images: int = 0
        self.gen_devices: set[str] = set()
        self.diffusion_calls = 0
        self.interrupt_step: int | None = None
        self.interrupt_epoch: int | None = None

    def snapshot(self) -> dict:
        return {"train_forwards": set(self.train_forwards), "seg_forwards": set(self.seg_forwards),
                "ckpt_steps": list(self.ckpt_steps), "seg_epochs": list(self.seg_epochs), "images": self.images,
                "gen_devices": set(self.gen_devices), "diffusion_calls": self.diffusion_calls}

    def _patch(self, owner, name, new):
        self._undo.append((owner, name, getattr(owner, name)))
        setattr(owner, name, new)

    def install(self):
        import torch

        import diffboost.diffusion.train as train_mod
        import diffboost.segmentation.trainer as trainer_mod
        from diffboost.diffusion.models import EdgeTextDenoiser
        from diffboost.diffusion.pipeline import DiffBoostPipeline

        probe = self
        fwd, call = EdgeTextDenoiser.forward, DiffBoostPipeline.__call__
        save_ckpt, train_epoch = train_mod._save_checkpoint, trainer_mod._train_epoch
        build, train_diffusion = trainer_mod.build_network, train_mod.train_diffusion

        def forward(self, x, *a, **k):
            out = fwd(self, x, *a, **k)
            if torch.is_grad_enabled() and self.training:
                gc = lambda m: None if m is None else bool(getattr(m, "is_gradient_checkpointing", False))  # noqa: E731
                probe.train_forwards.add((out.device.type, str(out.dtype).replace("torch.", ""),
                                          gc(self.unet), gc(self.controlnet)))
            return out

        def pipe_call(self, prompts, *a, **k):
            probe.images += len(prompts)
            probe.gen_devices.add(self.device.type)
            return call(self, prompts, *a, **k)

        def save_checkpoint(acc, out, step, *a, **k):  # passes on whatever the trainer's checkpoint takes
            save_ckpt(acc, out, step, *a, **k)
            probe.ckpt_steps.append(step)
            if probe.interrupt_step is not None and step == probe.interrupt_step:
                raise Interrupted(f"interrupted after the checkpoint of step {step}")

        def seg_epoch(net, opt, loss_fn, data, cfg, augment, patch, epoch, *a, **k):
            if probe.interrupt_epoch is not None and epoch == probe.interrupt_epoch:
                raise Interrupted(f"interrupted before epoch {epoch}")
            probe.seg_epochs.append(epoch)
            return train_epoch(net, opt, loss_fn, data, cfg, augment, patch, epoch, *a, **k)

        def build_network(*a, **k):
            net = build(*a, **k)

            def hook(mod, inputs, out):
                probe.seg_forwards.add((mod.training, inputs[0].device.type, str(out.dtype).replace("torch.", "")))

            net.register_forward_hook(hook)
            return net

        def train_diffusion_counted(*a, **k):
            probe.diffusion_calls += 1
            return train_diffusion(*a, **k)

        self._patch(EdgeTextDenoiser, "forward", forward)
        self._patch(DiffBoostPipeline, "__call__", pipe_call)
        self._patch(train_mod, "_save_checkpoint", save_checkpoint)
        self._patch(trainer_mod, "_train_epoch", seg_epoch)
        self._patch(trainer_mod, "build_network", build_network)
        self._patch(train_mod, "train_diffusion", train_diffusion_counted)

    def uninstall(self):
        for owner, name, old in reversed(self._undo):
            setattr(owner, name, old)
        self._undo.clear()


# ---- helpers ----------------------------------------------------------------------------------------

def read_losses(path: Path, column: str = "loss") -> list[float]:
    with open(path, newline="") as f:
        return [float(r[column]) for r in csv.DictReader(f)]


def tensors(folder: Path) -> dict[str, "torch.Tensor"]:  # noqa: F821
    """Every tensor of every safetensors file under ``folder``, keyed by relative path + name."""
    from safetensors.torch import load_file

    out = {}
    for p in sorted(folder.rglob("*.safetensors")):
        for k, v in load_file(str(p)).items():
            out[f"{p.relative_to(folder)}:{k}"] = v.float()
    return out


def all_finite(folder: Path) -> tuple[bool, int]:
    import torch

    ts = tensors(folder)
    return all(bool(torch.isfinite(v).all()) for v in ts.values()), len(ts)


def max_diff(a: Path, b: Path) -> float:
    ta, tb = tensors(a), tensors(b)
    if set(ta) != set(tb):
        raise CheckFailed(f"{a} and {b} hold different tensors")
    return max(float((ta[k] - tb[k]).abs().max()) if ta[k].numel() else 0.0 for k in ta)


def check_images(images, count: int, size: int) -> str:
    import numpy as np

    arr = np.asarray(images, np.float32)
    expect(arr.shape == (count, size, size), f"images {arr.shape}, expected {(count, size, size)}")
    expect(np.isfinite(arr).all(), "non-finite pixels")
    expect(arr.min() >= -1.0 and arr.max() <= 1.0, f"pixels outside [-1, 1]: {arr.min():.3f}..{arr.max():.3f}")
    expect(float(arr.std()) > 0, "every pixel has the same value")
    return f"{arr.shape[0]} x {size}x{size}, range {arr.min():.2f}..{arr.max():.2f}"


def close_enough(diff: float, tol: float, exact: bool) -> bool:
    return diff == 0.0 if exact else diff <= tol


def fmt_forwards(recs) -> str:
    return ", ".join("/".join(str(x) for x in r if x is not None) for r in sorted(recs, key=str)) or "none"


def replace_known(obj, **changes):
    """``dataclasses.replace`` with the options this version of the config has (others are ignored)."""
    names = {f.name for f in dataclasses.fields(obj)}
    return dataclasses.replace(obj, **{k: v for k, v in changes.items() if k in names})


def seg_dir(run_dir: Path, strategy: str, fold: int, seed: int) -> Path:
    """Where ``compare`` put one segmentation run (``seg/S/seedN/foldK``, or ``seg/S/foldK`` before seeds)."""
    try:
        from diffboost.segmentation.jobs import run_folder
    except ImportError:
        return run_dir / "seg" / strategy / f"fold{fold}"
    return run_folder(run_dir / "seg", strategy, fold, seed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_tiny_sd(folder: Path, size: int) -> Path:
    """A Stable-Diffusion-1.5-shaped diffusers folder with tiny random weights (as tests/test_sd15.py
    builds it; the VAE has SD's four levels, so latents are 1/8 of the image as in SD 1.5)."""
    import string

    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    tok_dir = folder / "tok"
    tok_dir.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ",.":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=16)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=16, projection_dim=32))
    unet = UNet2DConditionModel(sample_size=size // 8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                cross_attention_dim=32, attention_head_dim=4, norm_num_groups=32)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 32, 64, 64), latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        norm_num_groups=32, sample_size=size)
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder / "sd15")
    return folder / "sd15"


# ---- the checks -------------------------------------------------------------------------------------

class GpuCheck:
    def __init__(self, args, scale: Scale, device: str, mp: str, work: Path):
        self.args, self.scale, self.device, self.mp, self.work = args, scale, device, mp, work
        self.exact = device == "cpu"  # CPU: resumed runs must equal uninterrupted ones bit for bit
        self.tol = 5e-2  # CUDA: kernels are not deterministic; differences are reported
        self.progress = bool(args.verbose)  # the project's progress bars
        self.probe = Probe()
        self.r = Runner(device)
        self.ctx: dict = {}

    # -- configuration
    def run_config(self):
        from diffboost.run import AblateConfig, preset

        s, cfg = self.scale, preset("gpu")
        rep = dataclasses.replace
        cfg.prepare = rep(cfg.prepare, size=s.size)
        if s.model:
            cfg.model = rep(cfg.model, **s.model)
        cfg.train = rep(cfg.train, steps=s.steps, batch_size=s.batch_size or cfg.train.batch_size,
                        checkpoint_every=s.steps // 2, validate_every=s.steps, warmup_steps=max(1, s.steps // 10),
                        log_every=1, gradient_checkpointing=True, mixed_precision=self.mp)
        cfg.generate = rep(cfg.generate, n=s.gen_n, steps=s.gen_steps or cfg.generate.steps,
                           batch_size=s.gen_batch or cfg.generate.batch_size)
        cfg.seg = rep(cfg.seg, channels=s.seg_channels, epochs=s.seg_epochs, batch_size=s.seg_batch or cfg.seg.batch_size,
                      precision="bf16" if self.mp == "bf16" else "fp32")
        # one process: the probes see the segmenters train (compare.jobs > 1 would train in workers)
        cfg.compare = replace_known(cfg.compare, augs=("none", "diffboost"), folds=(0,), seeds=None, jobs=1)
        cfg.ablate = AblateConfig(sweeps=())
        return cfg

    def fold0(self):
        from diffboost.data.store import PreparedSet

        ps = PreparedSet(self.ctx["run_dir"] / "prepared")
        f = ps.fold(0)
        return ps, ps.indices(f.train, training=True), ps.indices(f.val, training=True)

    def expect_train_forward(self, recs, dtype: str, controlnet: bool, checkpointing: bool = True) -> str:
        expect(recs, "no training forward pass was seen")
        want = (self.device, dtype, checkpointing, checkpointing if controlnet else None)
        expect(all(r == want for r in recs), f"training forward ran as {fmt_forwards(recs)}, "
                                             f"expected {fmt_forwards([want])} (device/dtype/unet ckpt/controlnet ckpt)")
        return f"forward {fmt_forwards(recs)} (device/dtype/grad-ckpt)"

    def expect_training_dir(self, out: Path, steps: int) -> str:
        losses = read_losses(out / "loss.csv")
        expect(losses and all(math.isfinite(v) for v in losses), f"loss.csv: non-finite or no losses: {losses[:5]}")
        meta = json.loads((out / "model" / "training.json").read_text())
        expect(meta["steps_done"] == steps, f"steps_done {meta['steps_done']} != {steps}")
        finite, n = all_finite(out / "model")
        expect(finite, "non-finite weights in model/")
        return f"{steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, {n} tensors finite"

    # -- 1
    def environment(self):
        import accelerate
        import diffusers
        import monai
        import torch
        import transformers

        versions = (f"torch {torch.__version__}, diffusers {diffusers.__version__}, accelerate {accelerate.__version__}, "
                    f"monai {monai.__version__}, transformers {transformers.__version__}")
        if self.device == "cuda":
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            bf16 = torch.cuda.is_bf16_supported()
            expect(bf16, f"{names[0]} does not support bf16 (the gpu preset trains in bf16)")
            x = torch.randn(64, 64, device="cuda")
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = x @ x
            expect(y.dtype == torch.bfloat16 and bool(torch.isfinite(y).all()), "bf16 autocast matmul failed")
            return f"{len(names)} x {names[0]}, CUDA {torch.version.cuda}, bf16 yes; {versions}"
        return f"CPU dry run, {torch.get_num_threads()} thread(s), mixed precision {self.mp}; {versions}"

    # -- 2
    def pipeline(self):
        from diffboost.data.phantoms import generate_phantoms
        from diffboost.run import run

        src = generate_phantoms(self.work / "phantoms", n=self.scale.phantoms, seed=3, overwrite=True)
        self.ctx["phantoms"] = src
        out = self.work / "run"
        cfg = self.run_config()
        self.ctx["cfg"] = cfg
        self.probe.reset()
        t0 = time.perf_counter()
        report = run(src, out, cfg, progress=self.progress)
        self.ctx["run_seconds"] = time.perf_counter() - t0
        self.ctx["run_dir"] = out
        self.ctx["run_probe"] = self.probe.snapshot()
        times = json.loads((out / "times.json").read_text())
        self.ctx["times"] = times
        expect(report.exists() and report.stat().st_size > 1000, f"{report}: missing or empty")
        return ("report written; stages (s): " + ", ".join(f"{k} {v}" for k, v in times.items()),
                self.ctx["run_seconds"])

    # -- 3
    def finetune(self):
        rp = self.ctx["run_probe"]
        out = self.ctx["run_dir"] / "models" / "fold0"
        expect(rp["diffusion_calls"] == 1, f"diffusion training called {rp['diffusion_calls']} times, expected 1")
        fwd = self.expect_train_forward(rp["train_forwards"], "bfloat16" if self.mp == "bf16" else "float32", False)
        expect(sorted(set(rp["ckpt_steps"])) == [self.scale.steps // 2, self.scale.steps],
               f"checkpoints saved at {rp['ckpt_steps']}")
        expect(list((out / "samples").glob("step_*.png")), "no validation grid in samples/")
        return f"{self.expect_training_dir(out, self.scale.steps)}; {fwd}", self.ctx["times"].get("fine-tune fold0")

    # -- 4
    def generate(self):
        from diffboost.generation.generate import SyntheticSet

        ps, train_idx, _ = self.fold0()
        syn = SyntheticSet(self.ctx["run_dir"] / "synthetic" / "fold0")
        n = self.scale.gen_n * len(train_idx)
        rp = self.ctx["run_probe"]
        expect(rp["gen_devices"] == {self.device}, f"generation ran on {rp['gen_devices']}, expected {self.device}")
        expect(len(syn.manifest) == n, f"{len(syn.manifest)} manifest rows, expected {n}")
        detail = check_images(syn.images, n, ps.size)
        return f"{self.scale.gen_n} per image x {len(train_idx)} images: {detail}; on {self.device}", \
            self.ctx["times"].get("generate fold0")

    # -- 5
    def compare(self):
        out = self.ctx["run_dir"]
        rp = self.ctx["run_probe"]
        cfg = self.ctx["cfg"]
        dtype = "bfloat16" if cfg.seg.precision == "bf16" else "float32"
        train = {r for r in rp["seg_forwards"] if r[0]}
        evals = {r for r in rp["seg_forwards"] if not r[0]}
        expect(train == {(True, self.device, dtype)}, f"segmenter training forward ran as {sorted(train)}, "
                                                      f"expected {self.device}/{dtype}")
        expect(len(rp["seg_epochs"]) == 2 * cfg.seg.epochs, f"epochs trained {rp['seg_epochs']}")
        parts = []
        for s in ("none", "diffboost"):
            d = seg_dir(out, s, 0, cfg.seg.seed)
            summary = json.loads((d / "summary.json").read_text())
            dice = summary["metrics"]["dice"]["mean"]
            expect(math.isfinite(dice) and 0 <= dice <= 1, f"{s}: Dice {dice}")
            losses = read_losses(d / "log.csv")
            expect(losses and all(math.isfinite(v) for v in losses), f"{s}: non-finite training loss {losses}")
            finite, _ = all_finite(d / "model")
            expect(finite, f"{s}: non-finite segmenter weights")
            parts.append(f"{s} Dice {dice:.3f} ({summary['cases']} cases)")
        table = json.loads((out / "compare" / "table.json").read_text())
        expect({"none", "diffboost"} <= set(table["table"]), f"compare/table.json holds {sorted(table['table'])}")
        expect((out / "report.md").exists(), "no report.md")
        eval_devices = sorted({r[1] for r in evals})
        return (f"{cfg.seg.network} {cfg.seg.precision} on {self.device}: " + "; ".join(parts)
                + f"; validation/test forward on {'+'.join(eval_devices)}", self.ctx["times"].get("compare"))

    # -- 5b
    def no_checkpointing(self):
        """The preset as it is (gradient checkpointing off) at its batch size: does it fit, how much memory."""
        import torch

        import diffboost.diffusion.train as train_mod

        cfg = self.ctx["cfg"]
        ps, train_idx, _ = self.fold0()
        s = 2
        tcfg = dataclasses.replace(cfg.train, steps=s, gradient_checkpointing=False, checkpoint_every=s, validate_every=s)
        out = self.work / "no_checkpointing"
        self.probe.reset()
        train_mod.train_diffusion(ps, out, train_idx, dataclasses.replace(cfg.model, image_size=ps.size), tcfg,
                                  progress=self.progress)
        fwd = self.expect_train_forward(self.probe.train_forwards, "bfloat16" if self.mp == "bf16" else "float32", False,
                                        checkpointing=False)
        mem = f"; peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if self.device == "cuda" else ""
        return f"batch {tcfg.batch_size}: {self.expect_training_dir(out, s)}{mem}; {fwd}"

    # -- 6
    def rerun(self):
        from diffboost.run import run

        self.probe.reset()
        run(self.ctx["phantoms"], self.ctx["run_dir"], self.ctx["cfg"], progress=self.progress)
        p = self.probe
        expect(p.diffusion_calls == 0, f"diffusion training ran again ({p.diffusion_calls} call(s))")
        expect(p.images == 0, f"{p.images} images generated again")
        expect(not p.seg_epochs, f"segmenter epochs trained again: {p.seg_epochs}")
        return "no diffusion step, generated image or segmenter epoch redone; report rewritten"

    # -- 7
    def resume_finetune(self):
        import diffboost.diffusion.train as train_mod

        cfg = self.ctx["cfg"]
        ps, train_idx, val_idx = self.fold0()
        out = self.work / "resume_finetune"
        mcfg = dataclasses.replace(cfg.model, image_size=ps.size)
        half = self.scale.steps // 2
        self.probe.reset()
        self.probe.interrupt_step = half
        try:
            train_mod.train_diffusion(ps, out, train_idx, mcfg, cfg.train, val_indices=val_idx, progress=self.progress)
            raise CheckFailed("the interruption did not happen")
        except Interrupted:
            pass
        finally:
            self.probe.interrupt_step = None
        expect(not (out / "model").exists(), "model/ written by the interrupted run")
        self.probe.reset()
        train_mod.train_diffusion(ps, out, train_idx, mcfg, cfg.train, resume="latest", val_indices=val_idx,
                                  progress=self.progress)
        saved = self.probe.ckpt_steps
        expect(saved and min(saved) > half, f"the resumed run saved checkpoints at steps {saved}: it did not "
                                            f"continue from step {half}")
        detail = self.expect_training_dir(out, self.scale.steps)
        steps_logged = [int(v) for v in read_losses(out / "loss.csv", "step")]
        expect(steps_logged == list(range(1, self.scale.steps + 1)), f"loss.csv steps {steps_logged}")
        diff = max_diff(out / "model", self.ctx["run_dir"] / "models" / "fold0" / "model")
        expect(close_enough(diff, self.tol, self.exact),
               f"resumed weights differ from the uninterrupted run's by up to {diff:.3g}")
        return (f"interrupted at step {half}, resumed to {self.scale.steps}; {detail}; "
                f"max |weight diff| vs uninterrupted {diff:.3g}")

    # -- 8
    def resume_generate(self):
        import numpy as np

        from diffboost.generation.generate import SyntheticSet, generate

        cfg = self.ctx["cfg"]
        ps, train_idx, _ = self.fold0()
        model = self.ctx["run_dir"] / "models" / "fold0" / "model"
        out = self.work / "resume_generate"
        # one batch per variant, so that n=2 after n=1 has exactly one batch to make
        gcfg = dataclasses.replace(cfg.generate, batch_size=len(train_idx))
        self.probe.reset()
        generate(model, ps, out, 0, dataclasses.replace(gcfg, n=1), progress=self.progress)
        first = np.asarray(SyntheticSet(out).images).copy()
        expect(self.probe.images == len(train_idx), f"n=1 made {self.probe.images} images")
        self.probe.reset()
        syn = generate(model, ps, out, 0, dataclasses.replace(gcfg, n=2), progress=self.progress)
        expect(self.probe.images == len(train_idx), f"n=2 after n=1 made {self.probe.images} images, "
                                                    f"expected only the {len(train_idx)} missing")
        both = np.asarray(syn.images)
        expect(np.array_equal(both[: len(first)], first), "n=2 changed the variants n=1 had made")
        self.probe.reset()
        generate(model, ps, out, 0, dataclasses.replace(gcfg, n=2), progress=self.progress)
        expect(self.probe.images == 0, f"a complete set was regenerated ({self.probe.images} images)")
        detail = check_images(both, 2 * len(train_idx), ps.size)
        ref = np.asarray(SyntheticSet(self.ctx["run_dir"] / "synthetic" / "fold0").images, np.float32)
        diff = float(np.abs(both[: len(ref)].astype(np.float32) - ref[: len(both)]).max())
        tol = 1e-2 if self.exact else 0.1  # float16 storage; batch composition differs from run()'s
        expect(diff <= tol, f"variants differ from run()'s (other batches) by up to {diff:.3g}")
        return f"n=1 then n=2 added {len(train_idx)}, a third call none; {detail}; max |diff| vs run()'s set {diff:.3g}"

    # -- 9
    def resume_seg(self):
        from diffboost.segmentation.trainer import train_seg

        cfg = self.ctx["cfg"]
        ps, _, _ = self.fold0()
        scfg = dataclasses.replace(cfg.seg, aug="none")
        out = self.work / "resume_seg"
        expect(scfg.epochs >= 2, "needs at least 2 epochs")
        self.probe.reset()
        self.probe.interrupt_epoch = 1
        try:
            train_seg(ps, 0, scfg, out, progress=self.progress)
            raise CheckFailed("the interruption did not happen")
        except Interrupted:
            pass
        finally:
            self.probe.interrupt_epoch = None
        expect((out / "state" / "state.json").exists(), "no state/ to resume from")
        self.probe.reset()
        summary = train_seg(ps, 0, scfg, out, progress=self.progress)
        expect(self.probe.seg_epochs == list(range(1, scfg.epochs)),
               f"the resumed run trained epochs {self.probe.seg_epochs}, expected {list(range(1, scfg.epochs))}")
        self.probe.reset()
        again = train_seg(ps, 0, scfg, out, progress=self.progress)
        expect(not self.probe.seg_epochs and again == summary, "a finished run was trained again")
        ref = seg_dir(self.ctx["run_dir"], "none", 0, scfg.seed)
        ref_summary = json.loads((ref / "summary.json").read_text())
        d, d_ref = summary["metrics"]["dice"]["mean"], ref_summary["metrics"]["dice"]["mean"]
        head = (f"interrupted before epoch 1, resumed epochs {list(range(1, scfg.epochs))}, a third call reused; "
                f"Dice {d:.3f} vs uninterrupted {d_ref:.3f}")
        if not self.exact and summary["best_epoch"] != ref_summary["best_epoch"]:
            # CUDA kernels are not deterministic: validation may pick another epoch; weights not comparable
            return (f"{head}; selected epochs differ ({summary['best_epoch']} vs {ref_summary['best_epoch']}), "
                    "weights not compared")
        diff = max_diff(out / "model", ref / "model")
        expect(close_enough(diff, self.tol, self.exact),
               f"resumed segmenter differs from the uninterrupted one by up to {diff:.3g}")
        return f"{head}; max |weight diff| {diff:.3g}"

    # -- 10
    def sd15_finetune(self):
        import diffboost.diffusion.train as train_mod
        from diffboost.diffusion.models import ModelConfig

        cfg = self.ctx["cfg"]
        ps, train_idx, val_idx = self.fold0()
        base = build_tiny_sd(self.work / "sd", ps.size)
        out = self.work / "sd15_finetune"
        mcfg = ModelConfig(kind="sd15", pretrained=str(base), image_size=ps.size)
        s = self.scale.sd_steps
        tcfg = dataclasses.replace(cfg.train, steps=s, batch_size=self.scale.sd_batch, warmup_steps=0,
                                   checkpoint_every=s, validate_every=s)
        self.probe.reset()
        model = train_mod.train_diffusion(ps, out, train_idx, mcfg, tcfg, val_indices=val_idx, progress=self.progress)
        fwd = self.expect_train_forward(self.probe.train_forwards, "bfloat16" if self.mp == "bf16" else "float32", True)
        detail = self.expect_training_dir(out, s)
        locked = max_diff(base / "unet", model / "unet")
        expect(locked == 0.0, f"the SD UNet changed (max |diff| {locked:.3g}); it must stay locked")
        cn = tensors(model / "controlnet")
        moved = max(float(v.abs().max()) for k, v in cn.items()
                    if "controlnet_down_blocks" in k or "controlnet_mid_block" in k)
        expect(moved > 0, "the ControlNet's zero convolutions did not train")
        for part in ("vae", "text_encoder", "tokenizer", "controlnet"):
            expect((model / part).exists(), f"model/{part} missing")
        self.ctx["sd15_model"] = model
        return f"{detail}; SD UNet locked, ControlNet trained (max |zero-conv| {moved:.2g}); {fwd}"

    # -- 11
    def sd15_generate(self):
        from diffboost.generation.generate import GenerateConfig, generate

        ps, train_idx, _ = self.fold0()
        out = self.work / "sd15_synthetic"
        self.probe.reset()
        gcfg = GenerateConfig(n=1, steps=self.scale.sd_gen_steps, batch_size=self.ctx["cfg"].generate.batch_size)
        syn = generate(self.ctx["sd15_model"], ps, out, 0, gcfg, progress=self.progress)
        expect(self.probe.gen_devices == {self.device}, f"generation ran on {self.probe.gen_devices}")
        self.ctx["sd15_synthetic"] = out
        return check_images(syn.images, len(train_idx), ps.size) + f"; on {self.device}"

    # -- 12
    def sd15_seg(self):
        from diffboost.segmentation.trainer import train_seg

        ps, _, _ = self.fold0()
        scfg = dataclasses.replace(self.ctx["cfg"].seg, aug="diffboost", synthetic=str(self.ctx["sd15_synthetic"]),
                                   epochs=1)
        summary = train_seg(ps, 0, scfg, self.work / "sd15_seg", progress=self.progress)
        dice = summary["metrics"]["dice"]["mean"]
        expect(math.isfinite(dice) and 0 <= dice <= 1, f"Dice {dice}")
        losses = read_losses(self.work / "sd15_seg" / "log.csv")
        expect(all(math.isfinite(v) for v in losses), f"non-finite loss {losses}")
        return f"diffboost strategy on sd15 variants, 1 epoch: loss {losses[-1]:.3f}, Dice {dice:.3f}"

    # -- CLI in a child process (accelerate allows one mixed precision per process)
    def stage_config(self) -> Path:
        import yaml

        from diffboost.config import to_dict

        cfg = self.ctx["cfg"]
        conf = self.work / "stages.yaml"
        conf.write_text(yaml.safe_dump({"model": to_dict(cfg.model), "train": to_dict(cfg.train),
                                        "generate": to_dict(cfg.generate)}, sort_keys=False))
        return conf

    def cli(self, args: list[str], nproc: int = 0, mp: str | None = None) -> None:
        """``python -m diffboost.cli ARGS``, or under ``accelerate launch`` with ``nproc`` processes."""
        cmd = [sys.executable]
        if nproc:
            cmd += ["-m", "accelerate.commands.launch", "--num_processes", str(nproc), "--num_machines", "1",
                    "--dynamo_backend", "no", "--mixed_precision", mp or self.mp, "--main_process_port", str(free_port())]
            cmd += ["--multi_gpu"] if nproc > 1 else []
            cmd += ["--cpu"] if self.device == "cpu" else []
        cmd += ["-m", "diffboost.cli"] + [str(a) for a in args] + ["--quiet"]
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=420)
        if p.returncode != 0:
            sys.stderr.write(p.stdout[-4000:] + p.stderr[-8000:])
            tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise CheckFailed(f"`{'accelerate launch ' if nproc else ''}diffboost {args[0]}` exited {p.returncode}: {tail}")

    # -- 13
    def fp16(self):
        import yaml

        ps, _, _ = self.fold0()
        s = self.scale.fp16_steps
        out = self.work / "fp16"
        # a child process: accelerate's state allows one mixed precision per process (this one is at bf16)
        self.cli(["finetune", ps.root, "--fold", "0", "--out", out, "--config", self.stage_config(), "--steps", s,
                  "--mixed-precision", "fp16"])
        used = yaml.safe_load((out / "config.yaml").read_text())["train"]["mixed_precision"]
        expect(used == "fp16", f"trained with mixed_precision {used!r}")
        return f"`diffboost finetune --mixed-precision fp16`: {self.expect_training_dir(out, s)}"

    # -- 14
    def launch(self, nproc: int):
        import numpy as np

        from diffboost.generation.generate import SyntheticSet, generate

        cfg = self.ctx["cfg"]
        ps, train_idx, _ = self.fold0()
        out = self.work / "launch"
        conf = self.stage_config()
        t0 = time.perf_counter()
        self.cli(["finetune", ps.root, "--fold", "0", "--out", out / "finetune", "--config", conf], nproc)
        t_ft = time.perf_counter() - t0
        detail = self.expect_training_dir(out / "finetune", cfg.train.steps)
        model = out / "finetune" / "model"
        t0 = time.perf_counter()
        self.cli(["generate", model, ps.root, "--fold", "0", "-n", cfg.generate.n, "--out", out / "syn_launched",
                  "--config", conf], nproc)
        t_gen = time.perf_counter() - t0
        launched = np.asarray(SyntheticSet(out / "syn_launched").images, np.float32)
        check_images(launched, cfg.generate.n * len(train_idx), ps.size)
        single = np.asarray(generate(model, ps, out / "syn_single", 0, cfg.generate, progress=self.progress).images, np.float32)
        diff = float(np.abs(launched - single).max())
        tol = 1e-2 if self.exact else 0.1
        expect(diff <= tol, f"{nproc}-process variants differ from 1 process's by up to {diff:.3g}")
        return (f"{nproc} process(es): fine-tune {t_ft:.0f} s ({detail}), generate {t_gen:.0f} s; "
                f"max /diff/ vs in-process generation {diff:.3g}")

    # -- all
    def run_all(self) -> Runner:
        import torch

        r, cuda = self.r, self.device == "cuda"
        half = self.scale.steps // 2
        self.probe.install()
        try:
            r.check("env", "environment", self.environment)
            r.check("run", f"diffboost.run, gpu preset at {self.scale.size} px (prepare..report)", self.pipeline,
                    needs=("env",))
            r.check("ft", f"fine-tune: {self.mp} autocast + gradient checkpointing", self.finetune, needs=("run",))
            r.check("gen", "generate: variants", self.generate, needs=("run",))
            r.check("cmp", "compare: train-seg none + diffboost", self.compare, needs=("run",))
            r.check("nogc", "fine-tune without gradient checkpointing (the preset as is)", self.no_checkpointing,
                    needs=("run",))
            r.check("rerun", "resume: rerun of diffboost.run reuses every stage", self.rerun, needs=("run",))
            r.check("rft", f"resume: fine-tune interrupted at step {half}", self.resume_finetune, needs=("ft",))
            r.check("rgen", "resume: generate n=1 then n=2", self.resume_generate, needs=("gen",))
            r.check("rseg", "resume: train-seg interrupted at epoch 1", self.resume_seg, needs=("cmp",))
            r.check("sd", f"sd15: tiny SD 1.5 + ControlNet fine-tune ({self.mp}, grad ckpt)", self.sd15_finetune,
                    needs=("run",))
            r.check("sdgen", "sd15: generate", self.sd15_generate, needs=("sd",))
            r.check("sdseg", "sd15: train-seg on its variants", self.sd15_seg, needs=("sdgen",))
            r.check("fp16", "fp16 mixed precision fine-tune (CLI, child process)", self.fp16, needs=("run",))
            n_gpu = torch.cuda.device_count() if cuda else 0
            nproc = self.args.launch_processes or (2 if n_gpu >= 2 else 0)
            r.check("launch", f"accelerate launch: {nproc or 2} process{'' if nproc == 1 else 'es'} (fine-tune + generate)",
                    lambda: self.launch(nproc), needs=("run",),
                    skip=None if nproc else f"needs 2 or more CUDA devices; found {n_gpu}")
        finally:
            self.probe.uninstall()
        return r


# ---- main ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="run the checks on CPU at the smallest scale (CUDA-only checks are skipped)")
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary folder, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    ap.add_argument("--json", type=Path, help="result file (default bench/results/gpu_check.json, "
                                              "gpu_check_cpu_dry_run.json for the dry run)")
    ap.add_argument("--size", type=int, help="image size (default 384 on CUDA, 32 for the dry run)")
    ap.add_argument("--steps", type=int, help="diffusion fine-tuning steps, even (default 40 on CUDA, 6 for the dry run)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (dry run default: 1)")
    ap.add_argument("--launch-processes", type=int, default=0,
                    help="force the accelerate launch check with this many processes (plumbing test)")
    ap.add_argument("--verbose", action="store_true", help="show the project's progress bars")
    args = ap.parse_args(argv)

    if args.cpu_dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is the CPU path even on a GPU machine
        threads = args.threads or 1
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    t_start = time.perf_counter()
    import torch

    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("gpu_check: needs CUDA, and torch sees no CUDA device here "
              f"(torch {torch.__version__}); nothing was run. "
              "`python bench/gpu_check.py --cpu-dry-run` runs the same checks on CPU at the smallest scale.")
        return 0
    device = "cpu" if args.cpu_dry_run else "cuda"
    if args.cpu_dry_run:
        torch.set_num_threads(threads)
    elif args.threads:
        torch.set_num_threads(args.threads)
    scale = dataclasses.replace(CPU_SCALE if args.cpu_dry_run else GPU_SCALE)
    if args.size:
        scale.size = args.size
    if args.steps:
        scale.steps = args.steps
    if scale.steps < 2 or scale.steps % 2:
        ap.error("--steps must be even and at least 2 (the resume check interrupts half-way)")
    mp = "bf16"
    if device == "cpu":
        try:
            mp = "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"
        except (AttributeError, RuntimeError):
            mp = "no"
    sys.path.insert(0, str(REPO / "bench"))
    from common import report

    work = args.work or Path(tempfile.mkdtemp(prefix="diffboost_gpu_check_"))
    if args.work and work.exists() and any(work.iterdir()):
        if not (work / MARKER).exists():
            ap.error(f"--work {work}: not empty and not a gpu_check working folder; give a new or empty folder")
        shutil.rmtree(work)  # a fresh start: the checks compare fresh runs
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text("bench/gpu_check.py working folder; removed and remade by the next run\n")
    print(f"gpu_check: {'CPU dry run' if args.cpu_dry_run else 'CUDA'}, size {scale.size} px, {scale.steps} steps, "
          f"mixed precision {mp}; working folder {work}", flush=True)
    try:
        gc = GpuCheck(args, scale, device, mp, work)
        runner = gc.run_all()
        total = time.perf_counter() - t_start
        if device == "cuda":
            runner.rows.append({"check": f"total wall time < {TARGET_SECONDS // 60} min", "seconds": round(total, 1),
                                "status": "pass" if total < TARGET_SECONDS else "fail",
                                "detail": f"{total:.0f} s for all checks (target: one H100)", "peak_gpu_gib": 0.0})
        else:
            runner.rows.append({"check": f"total wall time (dry-run target < {DRY_TARGET_SECONDS // 60} min)",
                                "seconds": round(total, 1), "status": "skipped",
                                "detail": f"{total:.0f} s; the time limit is checked on CUDA only"})
        rows = runner.rows
        extra = {"mode": "cuda" if device == "cuda" else "cpu-dry-run", "passed": not runner.failed,
                 "total_seconds": round(total, 1), "target_seconds": TARGET_SECONDS,
                 "scale": dataclasses.asdict(scale), "mixed_precision": mp, "work": str(work),
                 "cuda": ({"devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                           "cuda": torch.version.cuda} if device == "cuda" else None)}
        name = "gpu_check" if device == "cuda" else "gpu_check_cpu_dry_run"
        out_dir = args.json.parent if args.json else None
        path = report(name, rows, extra, out_dir=out_dir)
        if args.json and path != args.json:
            path.replace(args.json)
            print(f"moved to {args.json}")
        fails = [r["check"] for r in rows if r["status"] == "fail"]
        print(f"\ngpu_check: {'FAIL: ' + '; '.join(fails) if fails else 'all checks passed'} "
              f"({sum(r['status'] == 'pass' for r in rows)} passed, {len(fails)} failed, "
              f"{sum(r['status'] == 'skipped' for r in rows)} skipped) in {total:.0f} s")
        return 1 if fails else 0
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"working folder kept: {work}")


if __name__ == "__main__":
    sys.exit(main())
