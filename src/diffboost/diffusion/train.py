"""Training the text + edge conditioned diffusion model (pretraining and task fine-tuning).

accelerate underneath: devices, mixed precision, gradient accumulation, multi-process
(``accelerate launch``), and checkpoints that ``resume="latest"`` restores exactly (model,
optimizer, learning-rate schedule, EMA and step). Each step's batch, noise and timesteps are a pure
function of (seed, step, process), so an interrupted and resumed run equals an uninterrupted one.

Two levers for a model trained from scratch on a CPU budget: Min-SNR-gamma loss weighting
(``snr_gamma``; Hang et al. 2023, diffusers' ``compute_snr``), which stops the nearly noise-free
timesteps from dominating the gradient, and a timestep cap (``max_timestep_fraction``): a model
that only ever runs image-to-image at strength <= s needs no training above s x T.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..utils.lock import locks_folder
from ..conditioning.augment_text import PHRASES, apply_phrase
from ..config import save_yaml
from ..utils.atomic import artifact_dir, commit_artifact, recover_artifact, recover_artifacts
from ..utils.csvlog import append_row, trim_rows
from ..utils.progress import ProgressBar
from .conditions import visible_prompt
from .models import ModelConfig, foreground_labels, label_channels, set_mask_channels
from .pipeline import DiffBoostPipeline


# learning rate per model kind: the small model trains from scratch; sd15 fine-tunes a ControlNet on a
# locked Stable Diffusion, at the diffusers ControlNet example's 1e-5
DEFAULT_LEARNING_RATES = {"small": 3e-4, "sd15": 1e-5}


@dataclass
class TrainConfig:
    """Options of ``diffboost pretrain`` / ``finetune``."""

    steps: int = 3000
    batch_size: int = 8
    learning_rate: float | None = None  # None = the model kind's default (DEFAULT_LEARNING_RATES)
    lr_schedule: str = "cosine"  # cosine | constant
    warmup_steps: int = 100
    grad_accum: int = 1
    mixed_precision: str = "no"  # no | fp16 | bf16 (GPU)
    gradient_checkpointing: bool = False
    max_grad_norm: float = 1.0
    ema_decay: float = 0.999
    prompt_dropout: float = 0.1  # empty prompt for classifier-free guidance
    phrase_prob: float = 0.4  # share of targets changed by an augmentation phrase
    phrases: tuple[str, ...] = tuple(PHRASES)
    flip: bool = True  # random left-right flips of image and condition together
    checkpoint_every: int = 500
    checkpoints_limit: int = 2
    validate_every: int = 500
    log_every: int = 10
    seed: int = 0
    # whether this stage trains on the task's masks: "condition" (fine-tuning: edges + mask boundary,
    # and the filled mask for model.condition "edges+mask") | "edges" (pretraining: soft edges only,
    # empty mask channels). What the network takes as input is model.condition.
    condition: str = "condition"
    # fine-tuning also learns from the fold's training images without a label (prepare --unlabelled, or hidden
    # by a label budget), conditioned on their edges and the "no mask" input (diffusion.conditions)
    unlabelled: bool = False
    mask_dropout: float = 0.0  # probability that a labelled image trains with the "no mask" condition too
    max_minutes: float | None = None  # stop early (and save) once this much wall time has passed
    snr_gamma: float | None = None  # Min-SNR-gamma loss weighting (5 in the paper); None = plain MSE
    max_timestep_fraction: float = 1.0  # train on timesteps < fraction x T (img2img at strength <= it)

    def __post_init__(self):
        self.phrases = tuple(self.phrases)
        unknown = [p for p in self.phrases if p not in PHRASES]
        if unknown:
            raise ValueError(f"unknown augmentation phrases {unknown}; known: {', '.join(PHRASES)}")
        if self.condition not in ("condition", "edges"):
            raise ValueError(f"condition must be 'condition' or 'edges', got {self.condition!r}")
        if not 0.0 <= self.mask_dropout <= 1.0:
            raise ValueError(f"mask_dropout must be in [0, 1], got {self.mask_dropout}")
        if self.snr_gamma is not None:
            self.snr_gamma = float(self.snr_gamma)
            if not self.snr_gamma > 0:
                raise ValueError(f"snr_gamma must be positive (or null: unweighted MSE), got {self.snr_gamma}")
        self.max_timestep_fraction = float(self.max_timestep_fraction)
        if not 0 < self.max_timestep_fraction <= 1:
            raise ValueError(f"max_timestep_fraction must be in (0, 1], got {self.max_timestep_fraction}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        if self.learning_rate is not None:
            try:  # YAML reads 1e-5 (no dot) as a string
                self.learning_rate = float(self.learning_rate)
            except (TypeError, ValueError):
                raise ValueError(f"learning_rate must be a number or null, got {self.learning_rate!r}") from None
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive (or null for the model kind's default), "
                             f"got {self.learning_rate}")

    def lr_for(self, kind: str) -> float:
        """The learning rate for a model of ``kind``: the one set, else the kind's default."""
        if self.learning_rate is not None:
            return float(self.learning_rate)
        if kind not in DEFAULT_LEARNING_RATES:
            raise ValueError(f"no default learning rate for model kind {kind!r}; set train.learning_rate")
        return DEFAULT_LEARNING_RATES[kind]


class _Step:
    """The step counter, checkpointed with the rest of the state."""

    def __init__(self):
        self.step = 0

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, d):
        self.step = int(d["step"])


def new_pipeline(cfg: ModelConfig) -> DiffBoostPipeline:
    """A freshly initialised model of the configured kind."""
    from diffusers import DDPMScheduler

    from .models import EdgeTextDenoiser, build_small_unet, controlnet_from_unet
    from .text import TextEncoder

    if cfg.kind == "sd15":
        from .sd15 import load_sd15

        return load_sd15(cfg)
    text = TextEncoder(cfg.text_encoder, cfg.max_tokens)
    unet = build_small_unet(cfg, text.dim)
    cn = (controlnet_from_unet(unet, cfg.pixel_shuffle ** 2 * cfg.condition_channels, pixel_space=True)
          if cfg.control == "controlnet" else None)
    # cosine schedule with v-prediction: well conditioned at every noise level, including the
    # nearly pure-noise start of sampling (epsilon-prediction explodes there with this schedule)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                          prediction_type="v_prediction")
    return DiffBoostPipeline(EdgeTextDenoiser(unet, cn, cfg.control), sched, text, cfg)


def trainable_parameters(pipe: DiffBoostPipeline) -> list[torch.nn.Parameter]:
    """What trains: the whole denoiser for ``small``; only the ControlNet for ``sd15`` (its UNet
    stays locked, as in the paper)."""
    if pipe.config.kind == "sd15":
        pipe.denoiser.unet.requires_grad_(False)
        pipe.denoiser.controlnet.requires_grad_(True)
    return [p for p in pipe.denoiser.parameters() if p.requires_grad]


def uses_masks(ps, cfg: TrainConfig) -> bool:
    """Whether training reads the set's masks (fine-tuning on a task; not pretraining, not a corpus)."""
    return cfg.condition == "condition" and bool(ps.meta.get("has_masks", True))


def mask_labels(ps, mcfg: ModelConfig, cfg: TrainConfig) -> list[int] | None:
    """The labels whose filled masks an ``edges+mask`` model gets, in channel order; None when it
    gets empty mask channels (pretraining) or takes no masks (``edges``)."""
    if mcfg.condition != "edges+mask" or not uses_masks(ps, cfg):
        return None
    labels = foreground_labels(ps.label_names)
    if len(labels) != mcfg.mask_channels:
        raise ValueError(f"{ps.root}: has {len(labels)} foreground label(s) {labels}, but the model takes "
                         f"{mcfg.mask_channels} mask channel(s); set model.mask_channels to match (or null)")
    return labels


def _mask_channels_for(ps, cfg: TrainConfig) -> int:
    """``model.mask_channels`` of a new ``edges+mask`` model: the set's foreground labels."""
    labels = foreground_labels(ps.label_names) if uses_masks(ps, cfg) else []
    if not labels:
        raise ValueError(f"{ps.root}: model condition 'edges+mask' on a set without masks (pretraining) needs "
                         "model.mask_channels: the number of foreground labels of the task it will be fine-tuned on")
    return len(labels)


def finetune_indices(ps, fold: int, cfg: TrainConfig) -> list[int]:
    """The samples fine-tuning on ``fold`` learns from: its labelled training images, and with
    ``cfg.unlabelled`` its training images without a label (never a validation or test image)."""
    f = ps.fold(fold)  # an unlabelled volume gives every slice: a hidden label may not choose them
    return ps.indices(f.train, training=True) + (ps.indices(f.unlabelled) if cfg.unlabelled else [])


def _batch(ps, indices: np.ndarray, cfg: TrainConfig, rng: np.random.Generator, g: torch.Generator,
           mcfg: ModelConfig, labels: list[int] | None):
    idx = np.sort(rng.choice(indices, size=cfg.batch_size, replace=len(indices) < cfg.batch_size))
    images = torch.from_numpy(np.asarray(ps.images[idx], np.float32))[:, None]
    if cfg.condition == "condition" and (cfg.unlabelled or cfg.mask_dropout > 0):
        from .conditions import condition_inputs

        # a "no mask" condition for images without a label and, with mask_dropout, for some labelled ones
        drop = rng.random(len(idx)) < cfg.mask_dropout if cfg.mask_dropout > 0 else np.zeros(len(idx), bool)
        cond, masks = condition_inputs(ps, idx, drop, labels, mcfg.mask_channels if mcfg.condition == "edges+mask" else None)
        cond, masks = torch.from_numpy(cond), None if masks is None else torch.from_numpy(masks)
    else:
        cond_arr = ps.conditions if cfg.condition == "condition" else ps.edges
        cond = torch.from_numpy(np.asarray(cond_arr[idx], np.float32) / 255.0)[:, None]
        masks = None
        if mcfg.condition == "edges+mask":  # the filled label map, or empty channels without masks
            masks = (torch.from_numpy(label_channels(ps.masks[idx], labels)) if labels is not None else
                     torch.zeros(len(idx), mcfg.mask_channels, *images.shape[2:]))
    prompts = [visible_prompt(ps, int(i)) for i in idx]  # a hidden image's category is not shown
    if cfg.flip:
        flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
        images[flip] = images[flip].flip(-1)
        cond[flip] = cond[flip].flip(-1)
        if masks is not None:
            masks[flip] = masks[flip].flip(-1)
    for j in range(len(idx)):
        if cfg.phrases and rng.random() < cfg.phrase_prob:
            phrase = cfg.phrases[rng.integers(len(cfg.phrases))]
            images[j : j + 1] = apply_phrase(phrase, images[j : j + 1], g)
            prompts[j] = f"{prompts[j]}, {phrase}"
        if rng.random() < cfg.prompt_dropout:
            prompts[j] = ""
    return images, cond, masks, prompts


def snr_weights(noise_sched, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights of the per-sample MSE for the scheduler's prediction type (as in
    diffusers' training scripts): min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v-prediction,
    min(SNR, gamma) for sample prediction."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_sched, t).float()
    w = snr.clamp(max=gamma)
    kind = noise_sched.config.prediction_type
    if kind == "epsilon":
        return w / snr
    if kind == "v_prediction":
        return w / (snr + 1)
    if kind == "sample":
        return w
    raise ValueError(f"snr_gamma: no Min-SNR weighting for prediction type {kind!r}")


def finished_training(model_dir: str | Path) -> bool:
    """Whether ``model_dir`` (a training folder's ``model/``) holds a model trained for all its steps:
    a run stopped by ``train.max_minutes`` saves one with ``steps_done < steps``."""
    info = Path(model_dir) / "training.json"
    if not info.exists():
        return Path(model_dir).exists()  # a model saved by another tool: taken as it is
    d = json.loads(info.read_text())
    return int(d.get("steps_done", d.get("steps", 0))) >= int(d.get("steps", 0))


def finetune_fold(ps, fold: int, out: str | Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
                  init: str | Path | None = None, progress: bool = True) -> Path:
    """Fine-tune fold ``fold``'s model into ``out`` on :func:`finetune_indices`, its validation grids drawn
    from the fold's validation images; an interrupted (or ``train.max_minutes``-stopped) run continues from its
    last checkpoint, a finished one is kept. Returns ``out/model``."""
    out = Path(out)
    if not finished_training(out / "model"):
        train_diffusion(ps.for_fold(fold), out, finetune_indices(ps, fold, train_cfg),
                        dataclasses.replace(model_cfg, image_size=ps.size), train_cfg, init=init,
                        resume="latest" if (out / "checkpoints").exists() else None,
                        val_indices=ps.indices(ps.fold(fold).val, training=True), progress=progress)
    return out / "model"


def _latest_checkpoint(out: Path) -> Path | None:
    """The newest ``checkpoints/step_*`` (call after ``recover_artifacts`` on the main process)."""
    ckpts = sorted((out / "checkpoints").glob("step_*"))
    return ckpts[-1] if ckpts else None


@locks_folder("out")
def train_diffusion(
    prepared,
    out: str | Path,
    indices: list[int],
    model_cfg: ModelConfig | None = None,
    train_cfg: TrainConfig | None = None,
    init: str | Path | None = None,
    resume: str | None = None,
    val_indices: list[int] | None = None,
    progress: bool = True,
) -> Path:
    """Train on ``indices`` of a prepared set; write ``out/model`` (EMA weights) and return it.

    ``init`` starts from a saved model (fine-tuning from a pretrained one). ``resume="latest"`` (or a
    checkpoint folder) continues an interrupted run in ``out``.
    """
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    out = Path(out)
    tcfg = train_cfg or TrainConfig()
    torch.manual_seed(tcfg.seed)  # the initial weights are part of the run's identity
    adapted = None
    if init is not None:
        pipe = DiffBoostPipeline.from_pretrained(init)
        if pipe.config.condition == "edges+mask" and uses_masks(prepared, tcfg):
            # a model pretrained on a corpus (empty label channels) takes the task's number of labels
            before = pipe.config.mask_channels
            if set_mask_channels(pipe, len(foreground_labels(prepared.label_names))):
                adapted = {"mask_channels": [before, pipe.config.mask_channels]}
        mcfg = pipe.config
    else:
        mcfg = model_cfg or ModelConfig(image_size=prepared.size)
        if mcfg.image_size != prepared.size:
            mcfg = dataclasses.replace(mcfg, image_size=prepared.size)
        if mcfg.condition == "edges+mask" and mcfg.mask_channels is None:
            mcfg = dataclasses.replace(mcfg, mask_channels=_mask_channels_for(prepared, tcfg))
        pipe = new_pipeline(mcfg)
    labels = mask_labels(prepared, mcfg, tcfg)
    if not indices:
        raise ValueError(f"{prepared.root}: no training samples to train the diffusion model on")
    acc = Accelerator(gradient_accumulation_steps=tcfg.grad_accum, mixed_precision=tcfg.mixed_precision)
    params = trainable_parameters(pipe)
    net = pipe.denoiser
    net.train()
    if tcfg.gradient_checkpointing:
        for m in (pipe.denoiser.unet, pipe.denoiser.controlnet):
            if m is not None and hasattr(m, "enable_gradient_checkpointing"):
                m.enable_gradient_checkpointing()
    tcfg = dataclasses.replace(tcfg, learning_rate=tcfg.lr_for(mcfg.kind))  # config.yaml records the one used
    opt = torch.optim.AdamW(params, lr=tcfg.learning_rate, weight_decay=1e-2)
    sched = get_scheduler("cosine" if tcfg.lr_schedule == "cosine" else "constant_with_warmup", opt,
                          num_warmup_steps=tcfg.warmup_steps * acc.num_processes,
                          num_training_steps=tcfg.steps * acc.num_processes)
    ema = EMAModel(params, decay=tcfg.ema_decay)
    state = _Step()
    net, opt, sched = acc.prepare(net, opt, sched)
    # the EMA weights and the step counter are saved beside accelerate's state as safetensors + JSON
    # (_save_training_state), not registered with accelerate, which would pickle them
    pipe.to(acc.device)
    ema.to(acc.device)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        recover_artifact(out / "model")  # a kill while swapping a new version in leaves the previous one aside
        recover_artifacts(out / "checkpoints")
        # temporary checkpoint folders of writers that died mid-save (the folder lock says none is alive)
        for leftover in (out / "checkpoints").glob(".step_*.tmp*"):
            shutil.rmtree(leftover, ignore_errors=True)
        unlabelled = sum(not prepared.label_readable(int(i)) for i in indices) if uses_masks(prepared, tcfg) else 0
        save_yaml({"model": dataclasses.asdict(mcfg), "train": dataclasses.asdict(tcfg),
                   "init": str(init) if init else None, "samples": len(indices),
                   "labelled_samples": len(indices) - unlabelled, "unlabelled_samples": unlabelled}, out / "config.yaml")
    acc.wait_for_everyone()
    ckpt = None
    if resume:
        ckpt = _latest_checkpoint(out) if resume == "latest" else Path(resume)
        if ckpt is None and resume != "latest":
            raise FileNotFoundError(f"{out}: no checkpoint to resume from (checkpoints/step_*)")
        # "latest" with no finished checkpoint (a kill during the first save leaves only its temporary
        # folder): nothing to resume, the training starts from step 0
    if ckpt is not None:
        legacy = _pickled_training_state(Path(ckpt))  # refused unless the user allows pickles
        if legacy:  # an older checkpoint: accelerate unpickles the EMA and step it registered then
            acc.register_for_checkpointing(ema, state)
        acc.load_state(str(ckpt))  # model weights from safetensors; optimizer, scheduler, RNG with weights_only
        if legacy:
            acc._custom_objects.clear()  # saved from now on as safetensors + JSON
        else:
            _load_training_state(Path(ckpt), ema, state)
        ema.to(acc.device)  # custom objects come back on the CPU (found by bench/gpu_check.py on an H200)
    log_path = out / "loss.csv"
    if acc.is_main_process:
        trim_rows(log_path, LOG_FIELDS, lambda k: k <= state.step)  # a resumed run rewrites the later rows
    noise_sched = pipe.scheduler
    idx_arr = np.asarray(indices)
    t_max = max(1, round(tcfg.max_timestep_fraction * noise_sched.config.num_train_timesteps))
    bar = ProgressBar("train", tcfg.steps, state.step, {"loss": "{:.4f}", "img/s": "{:.1f}"},
                      enabled=progress and acc.is_main_process)
    t_last, seen = time.perf_counter(), 0
    t_start = t_last
    token = _writer_token(acc)
    while state.step < tcfg.steps:
        if tcfg.max_minutes is not None and time.perf_counter() - t_start > 60 * tcfg.max_minutes:
            # out of time: a checkpoint at the stop, so that the next call resumes from here; model/ below
            # records steps_done < steps and `run` resumes it rather than taking it as final
            if state.step % tcfg.checkpoint_every != 0:
                _save_checkpoint(acc, out, state.step, tcfg.checkpoints_limit, token, ema, state)
            break
        step = state.step
        rng = np.random.default_rng([tcfg.seed, step, acc.process_index])
        g = torch.Generator().manual_seed(int(rng.integers(2**62)))
        with acc.accumulate(net):
            images, cond, masks, prompts = _batch(prepared, idx_arr, tcfg, rng, g, mcfg, labels)
            with torch.no_grad():
                states, mask = pipe.text_encoder(prompts)
                z0 = pipe.encode_images(images.to(acc.device))
                c = pipe.encode_condition(cond.to(acc.device), None if masks is None else masks.to(acc.device))
            noise = torch.randn(z0.shape, generator=g).to(acc.device)
            t = torch.randint(0, t_max, (z0.shape[0],), generator=g).to(acc.device)
            zt = noise_sched.add_noise(z0, noise, t)
            with acc.autocast():
                pred = net(zt, t, states.to(acc.device), mask.to(acc.device), c)
            target = noise if noise_sched.config.prediction_type == "epsilon" else noise_sched.get_velocity(z0, noise, t)
            if tcfg.snr_gamma is None:
                loss = mse = F.mse_loss(pred.float(), target)
            else:  # per-sample MSE, weighted by Min-SNR-gamma; the plain MSE is logged beside it
                per = F.mse_loss(pred.float(), target, reduction="none").mean(dim=tuple(range(1, target.ndim)))
                loss, mse = (per * snr_weights(noise_sched, t, tcfg.snr_gamma)).mean(), per.mean()
            acc.backward(loss)
            if acc.sync_gradients:
                acc.clip_grad_norm_(params, tcfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        if not acc.sync_gradients:
            continue
        ema.step(params)
        state.step += 1
        seen += images.shape[0] * acc.num_processes
        loss_v, mse_v = (float(v) for v in acc.gather(torch.stack([loss.detach(), mse.detach()])[None]).mean(0))
        if acc.is_main_process:
            now = time.perf_counter()
            ips = seen / max(now - t_last, 1e-9)
            bar.update(state.step, loss=mse_v, **{"img/s": ips})
            if state.step % tcfg.log_every == 0 or state.step == tcfg.steps:
                append_row(log_path, LOG_FIELDS, [state.step, f"{mse_v:.6f}", f"{sched.get_last_lr()[0]:.3e}",
                                                  f"{ips:.2f}", f"{loss_v:.6f}"])
                t_last, seen = now, 0
        if state.step % tcfg.checkpoint_every == 0 or state.step == tcfg.steps:
            _save_checkpoint(acc, out, state.step, tcfg.checkpoints_limit, token, ema, state)
        if val_indices and acc.is_main_process and (state.step % tcfg.validate_every == 0 or state.step == tcfg.steps):
            with _ema_weights(ema, params):
                _validation_grid(pipe, prepared, val_indices, tcfg, labels,
                                 out / "samples" / f"step_{state.step:07d}.png")
            net.train()
    bar.close()
    acc.wait_for_everyone()
    model_dir = out / "model"
    if acc.is_main_process:
        with _ema_weights(ema, params), artifact_dir(model_dir) as tmp:  # the previous model stays until then
            pipe.save_pretrained(tmp)
            (tmp / "training.json").write_text(json.dumps(
                {"steps": tcfg.steps, "steps_done": state.step, "samples": len(indices),
                 "init": str(init) if init else None, "init_adapted": adapted,
                 "max_timestep_fraction": tcfg.max_timestep_fraction,
                 "seconds": round(time.perf_counter() - t_start, 1)}, indent=1))  # this call's wall time
    acc.wait_for_everyone()
    # no acc.end_training(): it would destroy the process group that `diffboost run` under
    # `accelerate launch` still needs for generation and the segmentation runs (no trackers to stop)
    return model_dir


class _ema_weights:
    """Swap EMA weights in for the duration of a block."""

    def __init__(self, ema, params):
        self.ema, self.params = ema, params

    def __enter__(self):
        self.ema.store(self.params)
        self.ema.copy_to(self.params)

    def __exit__(self, *exc):
        self.ema.restore(self.params)


def _writer_token(acc) -> str:
    """A name this invocation's processes share and no other writer uses: the main process's pid."""
    from accelerate.utils import broadcast_object_list

    token = [f"{os.getpid()}"]
    if acc.num_processes > 1:
        broadcast_object_list(token)
    return token[0]


def _save_training_state(folder: Path, ema, state: _Step) -> None:
    """The EMA weights (safetensors) and counters (JSON) of a checkpoint: nothing to unpickle on resume."""
    from safetensors.torch import save_file

    sd = dict(ema.state_dict())
    shadow = sd.pop("shadow_params")
    save_file({f"shadow.{i:05d}": t.detach().to("cpu").contiguous() for i, t in enumerate(shadow)},
              str(folder / EMA_FILE))
    (folder / STATE_FILE).write_text(json.dumps({"step": state.step, "ema": sd}, indent=1))


def _load_training_state(folder: Path, ema, state: _Step) -> None:
    """Counterpart of :func:`_save_training_state`."""
    from safetensors.torch import load_file

    if not (folder / STATE_FILE).exists():
        raise FileNotFoundError(f"{folder}: a checkpoint without its EMA weights and step ({STATE_FILE})")
    meta = json.loads((folder / STATE_FILE).read_text())
    tensors = load_file(str(folder / EMA_FILE))
    ema.load_state_dict({**meta["ema"], "shadow_params": [tensors[k] for k in sorted(tensors)]})
    state.step = int(meta["step"])


def _pickled_training_state(folder: Path) -> bool:
    """Whether a checkpoint keeps its EMA and step as accelerate's pickles (``custom_checkpoint_*.pkl``,
    an older diffboost), which are loaded only with ``DIFFBOOST_ALLOW_PICKLE=1``. Pickles beside this
    version's own files were put there by someone else: refused, never loaded."""
    pickles = sorted(folder.glob("custom_checkpoint_*.pkl"))
    if not pickles:
        return False
    if (folder / STATE_FILE).exists():
        raise ValueError(f"{folder}: holds {', '.join(p.name for p in pickles)}, which diffboost never writes beside "
                         f"{STATE_FILE}; they were not loaded. Remove them to resume")
    from .sd15 import allow_pickle

    if not allow_pickle():
        raise ValueError(f"{folder}: made by an older diffboost, it keeps the EMA weights and step as pickles "
                         "(custom_checkpoint_*.pkl), which can run code when loaded; set DIFFBOOST_ALLOW_PICKLE=1 to "
                         "resume from it if you trust this folder")
    return True


EMA_FILE, STATE_FILE = "ema.safetensors", "training_state.json"


def _save_checkpoint(acc, out: Path, step: int, limit: int, token: str = "0", ema=None, state=None) -> None:
    ckdir = out / "checkpoints"
    tmp = ckdir / f".step_{step:07d}.tmp-{token}"  # every process of this invocation writes its part here
    if acc.is_main_process:
        ckdir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp), safe_serialization=True)
    acc.wait_for_everyone()
    if acc.is_main_process and ema is not None:
        _save_training_state(tmp, ema, state)
    if acc.is_main_process:
        commit_artifact(tmp, ckdir / f"step_{step:07d}")  # a checkpoint of this step stays until then
        for old in sorted(ckdir.glob("step_*"))[:-limit] if limit > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


# loss: the plain MSE (comparable across weightings); objective: what is minimised (Min-SNR weighted)
LOG_FIELDS = ["step", "loss", "lr", "images_per_s", "objective"]


def _validation_grid(pipe, ps, val_indices, tcfg: TrainConfig, labels: list[int] | None, path: Path,
                     n: int = 4) -> None:
    """Variants of a few validation images: from noise, or image-to-image at the timestep cap."""
    from ..data.preview import grid_png, to_uint8

    pick = list(val_indices[:: max(1, len(val_indices) // n)][:n])
    cond_arr = ps.conditions if tcfg.condition == "condition" else ps.edges
    cond = np.asarray(cond_arr[pick], np.float32) / 255.0
    masks = label_channels(ps.masks[pick], labels) if labels is not None else None
    prompts = [ps.manifest[i]["prompt"] for i in pick]
    texts = ["", "enhanced contrast"]
    pipe.denoiser.eval()
    outs = [pipe(prompts, cond, seeds=list(range(len(pick))), augment=[t] * len(pick), steps=20, masks=masks,
                 images=np.asarray(ps.images[pick], np.float32), strength=tcfg.max_timestep_fraction)
            for t in texts]
    rows = [[to_uint8(ps.images[i]), (cond[j] * 255).astype(np.uint8)] + [to_uint8(o[j]) for o in outs]
            for j, i in enumerate(pick)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(grid_png(rows, [""] * len(rows), ["real", "condition", "generated", "+ enhanced contrast"]))

