"""Train one segmenter on one fold, choose its checkpoint on the fold's validation part, and
evaluate it on the fold's test cases (whole cases, original size).

Output folder::

    config.yaml    the SegConfig (+ prepared set, fold, synthetic set)
    log.csv        per epoch: loss, validation Dice, learning rate, seconds
    model/         the selected checkpoint: config.json + model.safetensors
    state/         last epoch's weights, optimizer and counters (safetensors + JSON), to resume
    metrics.csv    per test case: Dice, Precision, Recall, HD95, ASSD (per label and mean)
    predictions.npz  the test predictions at the original size
    summary.json   mean ± std per metric, best epoch, timings, and the last epoch's test means (to judge
                   the checkpoint rule; nothing selects on them); its presence marks the fold as done

Every random choice of an epoch (order, variants, masks, which samples are mixed, augmentations) is
drawn from (seed, epoch), so a run resumed from ``state/`` ends with the same weights as an
uninterrupted one.

With ``mix_prob < 1`` each sample of a strategy with variants is mixed by Algorithm 1 with that
probability and otherwise trains on its real image whole (with ``mix="output"`` its variant then
does not go through the network either): ``mix_prob = 0`` trains exactly as ``none``. With
``pixel_filter`` the loss leaves out the pixels that Algorithm 1 takes from a variant where the
teacher's loss on that variant was high (:func:`masked_dice_ce`).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..utils.lock import locks_folder
from ..utils.environment import environment
from ..config import save_yaml
from ..data.store import PreparedSet, group_rows
from ..utils.atomic import artifact_dir, atomic_write_text, read_control, recover_artifact, write_control
from ..utils.csvlog import append_row, trim_rows
from ..utils.progress import ProgressBar
from .augment import BatchAugmenter
from .config import (FIXMATCH, FIXMATCH_DIFFBOOST, HISTMATCH, IN_MEMORY, MIX_CLASSIC, SELF_TRAIN, SegConfig, drop_unused,
                     parse_strategy, semi_of, uses_unlabelled)
from .data import FoldData, load_synthetic, load_training, teacher_identity, to_size
from .jobs import run_folder
from .networks import build_network, size_multiple
from .patchmix import choose_variants, default_patch, mix, mix_labels, patch_mask
from .predict import evaluate_cases, quick_dice

LOG_FIELDS = ["epoch", "loss", "val_dice", "lr", "seconds"]


# ---- saving and loading a segmenter (safetensors + config.json) ---------------------------------

def save_segmenter(net: torch.nn.Module, config: dict, path: str | Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    with artifact_dir(path) as tmp:  # the previous checkpoint stays until this one is complete
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
    return path


def load_segmenter(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """A saved segmenter (``model/`` of a training run) and its config."""
    from safetensors.torch import load_file

    path = Path(path)
    recover_artifact(path)
    if not (path / "config.json").exists() or not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"{path}: not a segmenter folder (config.json + model.safetensors)")
    config = json.loads((path / "config.json").read_text())
    net = build_network(config["network"], config["out_channels"], config.get("channels"))
    net.load_state_dict(load_file(str(path / "model.safetensors")))
    return net, config


# ---- resumable training state -------------------------------------------------------------------

def _save_state(out: Path, net, opt, counters: dict) -> None:
    from safetensors.torch import save_file

    sd = opt.state_dict()
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous() if torch.is_tensor(v) else torch.tensor(v)
    with artifact_dir(out / "state") as tmp:  # the previous epoch's state stays until this one is complete
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**counters, "param_groups": sd["param_groups"]}, indent=1))


def _load_state_weights(out: Path, net) -> dict:
    """Load the last epoch's weights from ``state/`` into ``net``; returns every tensor there (the
    optimizer's too)."""
    from safetensors.torch import load_file

    tensors = load_file(str(out / "state" / "state.safetensors"))
    net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    return tensors


def _load_state(out: Path, net, opt) -> dict:
    tensors = _load_state_weights(out, net)
    meta = json.loads((out / "state" / "state.json").read_text())
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.default_rng([seed, epoch]).integers(2**62))


def _lr(cfg: SegConfig, epoch: int) -> float:
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    return cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))


# ---- one fold -----------------------------------------------------------------------------------

def default_synthetic(ps: PreparedSet, fold: int, cfg: SegConfig, source: str = "diffboost") -> Path:
    """``cfg.synthetic`` ('{fold}' filled in), else ``synthetic/foldK`` (diffusion) or
    ``synthetic_pix2pix/foldK`` beside the prepared set."""
    if cfg.synthetic:
        return Path(cfg.synthetic.format(fold=fold))
    folder = "synthetic" if source == "diffboost" else f"synthetic_{source}"
    return ps.root.parent / folder / f"fold{fold}"


def labels_of(ps: PreparedSet) -> list[int]:
    return sorted(k for k in ps.label_names if k != 0) or [1]


@locks_folder("out")
def train_seg(prepared: str | Path | PreparedSet, fold: int, cfg: SegConfig | None = None,
              out: str | Path | None = None, progress: bool = True, replace_stale: bool = False) -> dict:
    """Train, select on validation, evaluate on test; return the summary. A finished run with the
    same settings is not retrained; an interrupted one continues from its last epoch. A run with
    other settings in ``out`` is an error, or is removed and redone with ``replace_stale``."""
    cfg = cfg or SegConfig()
    ps = prepared if isinstance(prepared, PreparedSet) else PreparedSet(prepared)
    f = ps.fold(fold)
    ps = ps.for_fold(fold)  # the labels of this fold's cases, no other
    out = Path(out) if out else run_folder(ps.root.parent / "seg", cfg.aug, fold, cfg.seed)
    source, classical = parse_strategy(cfg.aug)
    size = cfg.size or ps.size
    mult = size_multiple(cfg.network, cfg.channels)
    if size % mult:
        raise ValueError(f"size {size} is not a multiple of {mult}, which {cfg.network} needs")
    syn_path = default_synthetic(ps, fold, cfg, source) if source and source not in IN_MEMORY else None
    identity = {"config": cfg.identity(), "prepared": str(ps.root.resolve()), "fold": fold,
                "synthetic": str(syn_path.resolve()) if syn_path else None,
                "synthetic_variants": _variants_of(syn_path) if syn_path else None, "size": size}
    if source == MIX_CLASSIC:
        from .variants import classic_identity

        identity["synthetic_variants"] = classic_identity(cfg.n)
    elif source == HISTMATCH:
        from .variants import histmatch_identity

        identity["synthetic_variants"] = histmatch_identity(cfg.n)
    elif syn_path and (cfg.teacher_gate is not None or cfg.pixel_filter is not None):  # else absent, as in older runs
        identity["teacher"] = teacher_identity(syn_path, cfg.teacher_gate, cfg.pixel_filter)
    if 0 < len(f.val) < cfg.min_val_cases:  # absent otherwise, as in runs made before the option
        identity["last_checkpoint"] = True
    if ps.meta.get("budget") is not None or f.unlabelled:  # which cases this fold learns from (another budget
        from ..stages import digest  # prepared into the same folder is another run, never a silent reuse)

        identity["fold_cases"] = digest([f.train, f.val, f.test])
    semi = semi_of(cfg.aug)
    if uses_unlabelled(cfg.aug):  # which images it learns without labels
        from ..stages import digest

        identity["unlabelled_cases"] = digest([f.unlabelled])
    done = _check_run(out, identity, replace_stale)
    if done is not None:
        return done
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    labels = labels_of(ps)
    train_idx = ps.indices(f.train, training=True)
    data = load_training(ps, train_idx, size)
    unlabelled_term, semi_record = None, {}
    if semi == SELF_TRAIN:  # the teacher's most confident pseudo-labels join the labelled images
        from .semisup import self_training_set

        idx, pseudo, keep, semi_record = self_training_set(ps, fold, cfg, out, size, progress)
        data = data.extended(to_size(ps.images[np.asarray(idx)], size), pseudo, idx, ignore=~keep)
    if source == MIX_CLASSIC:
        from .variants import classic_variants

        data.synthetic = classic_variants(data.images, data.indices, cfg.n)
    elif source == HISTMATCH:  # matched to the fold's unlabelled images (another site's)
        from .semisup import unlabelled_indices
        from .variants import histmatch_variants

        refs = unlabelled_indices(ps, fold, cfg.aug)
        data.synthetic = histmatch_variants(data.images, data.indices, to_size(ps.images[np.asarray(refs)], size),
                                            cfg.n)
    elif source:
        data.synthetic = load_synthetic(syn_path, ps, fold, data.indices, size, cfg.n, cfg.quality_filter,
                                        cfg.teacher_gate, cfg.pixel_filter)
    if semi in (FIXMATCH, FIXMATCH_DIFFBOOST):  # a consistency term on unlabelled images in every step
        from .semisup import fixmatch_term

        unlabelled_term = fixmatch_term(ps, fold, cfg, size, syn_path)
        semi_record = {"unlabelled_images": len(unlabelled_term.images)}
    val_idx = ps.indices(f.val) if len(f.val) >= cfg.min_val_cases else []  # too few: the last epoch is kept
    val_images = to_size(ps.images[np.asarray(val_idx)], size) if val_idx else None
    val_masks = to_size(ps.masks[np.asarray(val_idx)], size, labels=True) if val_idx else None
    val_groups = [[val_idx.index(i) for i in rows] for rows in group_rows([ps.manifest[i] for i in val_idx], "case_id").values()]

    torch.manual_seed(cfg.seed)  # same initial weights for every strategy of a comparison
    out_channels = max(labels) + 1
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = build_network(cfg.network, out_channels, cfg.channels).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=cfg.batch_dice)
    out.mkdir(parents=True, exist_ok=True)
    model_config = {"network": cfg.network, "channels": list(cfg.channels) if cfg.channels else None,
                    "out_channels": out_channels, "size": size, "labels": labels,
                    "label_names": {str(k): v for k, v in ps.label_names.items()}, "strategy": cfg.aug}
    counters = {"epoch": 0, "best_dice": -1.0, "best_epoch": -1, "train_seconds": 0.0}
    recover_artifact(out / "model")  # a kill while swapping a new version in leaves the previous one aside
    recover_artifact(out / "state")
    if (out / "state" / "state.json").exists():
        counters = _load_state(out, net, opt)
        trim_rows(out / "log.csv", LOG_FIELDS, lambda e: e < counters["epoch"])  # an interruption may leave one more
    else:
        save_yaml({"seg": cfg, "run": identity}, out / "config.yaml")
        (out / "log.csv").unlink(missing_ok=True)
        write_control(out / "run.json", identity)
    augment = BatchAugmenter(classical, cfg.aug_prob, cfg.seed)
    patch = cfg.patch or default_patch(size)
    bar = ProgressBar(f"{cfg.aug} fold {fold}", cfg.epochs, counters["epoch"],
                      {"loss": "{:.4f}", "val Dice": "{:.3f}"}, enabled=progress)
    try:
        while counters["epoch"] < cfg.epochs:
            epoch = counters["epoch"]
            t0 = time.perf_counter()
            loss = _train_epoch(net, opt, loss_fn, data, cfg, augment, patch, epoch, prefetch=cfg.prefetch,
                                unlabelled=unlabelled_term)
            val = None
            if val_images is not None and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
                val = quick_dice(net, val_images, val_masks, val_groups, labels, channels_last=cfg.channels_last)
                if val > counters["best_dice"]:
                    counters.update(best_dice=val, best_epoch=epoch)
                    save_segmenter(net, {**model_config, "epoch": epoch, "val_dice": val}, out / "model")
            elif val_images is None and epoch + 1 == cfg.epochs:  # no validation part: the last epoch
                counters.update(best_epoch=epoch)
                save_segmenter(net, {**model_config, "epoch": epoch, "val_dice": None}, out / "model")
            seconds = time.perf_counter() - t0
            counters["epoch"] = epoch + 1
            counters["train_seconds"] += seconds
            append_row(out / "log.csv", LOG_FIELDS, [epoch, f"{loss:.6f}", "" if val is None else f"{val:.5f}",
                                   f"{_lr(cfg, epoch):.3e}", f"{seconds:.2f}"])
            _save_state(out, net, opt, counters)
            bar.update(epoch + 1, loss=loss, **{"val Dice": val})
    finally:
        bar.close()
    return _evaluate(out, ps, f, size, labels, cfg, counters, identity, time.perf_counter() - t_start,
                     {"steps_per_epoch": len(epoch_batches(len(data), cfg, torch.Generator())), **semi_record})


def epoch_batches(n: int, cfg: SegConfig, g: torch.Generator) -> list[torch.Tensor]:
    """An epoch's batches of sample indices: one shuffled pass over the ``n`` samples, or, with
    ``cfg.steps_per_epoch``, exactly that many full batches (shuffled passes one after another, cut)."""
    perm = torch.randperm(n, generator=g)
    if cfg.steps_per_epoch is not None:
        need = cfg.steps_per_epoch * cfg.batch_size
        perm = torch.cat([perm] + [torch.randperm(n, generator=g) for _ in range(-(-need // n) - 1)])[:need]
    batches = [perm[i : i + cfg.batch_size] for i in range(0, len(perm), cfg.batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches.pop()  # a batch of one breaks batch normalisation
    return batches


def _train_epoch(net, opt, loss_fn, data: FoldData, cfg: SegConfig, augment: BatchAugmenter, patch: int,
                 epoch: int, prefetch: bool = False, unlabelled=None) -> float:
    """One pass over the real training samples. With ``prefetch`` the next batch (variant choice,
    augmentation, Algorithm 1 mask) is made in a background thread while the network trains on the
    current one; batches are still made one after another, in order, so the result is the same.
    ``unlabelled`` (a :class:`.semisup.FixMatch`) adds its term on unlabelled images to each step's loss."""
    for group in opt.param_groups:
        group["lr"] = _lr(cfg, epoch)
    g = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
    batches = epoch_batches(len(data), cfg, g)
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    device = next(net.parameters()).device
    pool = data.synthetic

    def make_batch(step: int):
        """(real, labels, variants, Algorithm 1 mask, which samples are mixed (None: all), pixels kept in
        the loss (None: all))."""
        b = batches[step]
        x, y = data.images[b], data.masks[b]
        unsure = data.ignore[b].long() if data.ignore is not None else None  # pseudo-labels' uncertain pixels
        if pool is None:
            if augment:
                packed = y if unsure is None else y + _PACK * unsure  # the ignored pixels move with the label
                x, packed = augment(x, packed, epoch, step)
                y, unsure = (packed, None) if unsure is None else (packed % _PACK, packed // _PACK)
            return x, y, None, None, None, None if unsure is None else unsure == 0
        counts = pool.counts[b]
        rows = pool.rows[b, choose_variants(counts.clamp_min(1), g)]  # a sample without variants: unmixed below
        syn = pool.images[rows]
        drop = pool.ignore[rows].long() if pool.ignore is not None else None
        y_syn = pool.masks[rows] if pool.masks is not None else None  # variants with labels of their own
        if augment:  # the variants' labels and the pixels to ignore ride on the labels: spatial transforms move them alike
            packed = y if y_syn is None else y + _LABELS * y_syn
            flags = None if drop is None and unsure is None else (0 if drop is None else drop) + 2 * (0 if unsure is None else unsure)
            both, packed = augment(torch.cat([x, syn], 1), packed if flags is None else packed + _PACK * flags, epoch, step)
            x, syn = both[:, :1], both[:, 1:]
            if flags is not None:
                packed, flags = packed % _PACK, packed // _PACK
                drop = None if drop is None else flags % 2
                unsure = None if unsure is None else flags // 2
            y, y_syn = (packed, None) if y_syn is None else (packed % _LABELS, packed // _LABELS)
        m = patch_mask(len(b), x.shape[-2], x.shape[-1], cfg.alpha, patch, g)
        mixed = None
        if cfg.mix_prob < 1.0 or bool((counts == 0).any()):  # drawn only then: mix_prob = 1 is Algorithm 1 as before
            mixed = (torch.rand(len(b), generator=g) < cfg.mix_prob) & (counts > 0)
            m[~mixed] = 1.0
        if y_syn is not None:  # the label mixed with the image's grid: the real one where m = 1
            y = mix_labels(y, y_syn, m)
        keep = None if drop is None else ~((drop > 0) & (m == 0))
        if unsure is not None:  # a pseudo-label's uncertain pixel, from the image or its variant alike
            keep = (unsure == 0) if keep is None else keep & (unsure == 0)
        return x, y, syn, m, mixed, keep

    bf16 = cfg.training_precision() == "bf16"

    def forward(inputs):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return net(inputs.to(device).contiguous(memory_format=layout)).float()

    net.train()
    total = 0.0
    with ThreadPoolExecutor(max_workers=1) as worker:
        pending = worker.submit(make_batch, 0) if prefetch else None
        for step in range(len(batches)):
            x, y, syn, m, mixed, keep = pending.result() if prefetch else make_batch(step)
            if prefetch and step + 1 < len(batches):
                pending = worker.submit(make_batch, step + 1)
            if syn is None or (mixed is not None and not bool(mixed.any())):
                logits = forward(x)  # no sample mixed: the real images alone, as `none` trains
            elif cfg.mix == "input":
                logits = forward(mix(x, syn, m))  # an unmixed sample has m = 1: its real image
            elif mixed is None or bool(mixed.all()):
                both = forward(torch.cat([x, syn]))
                logits = mix(both[: len(x)], both[len(x):], m.to(device))
            else:  # only the mixed samples' variants go through the network
                idx = mixed.nonzero()[:, 0]
                both = forward(torch.cat([x, syn[idx]]))
                real_out = both[: len(x)]
                logits = mix(real_out, real_out.index_copy(0, idx.to(device), both[len(x):]), m.to(device))
            if keep is None or bool(keep.all()):  # nothing filtered: the plain loss
                loss = loss_fn(logits, y.to(device))
            else:
                loss = masked_dice_ce(logits, y.to(device), keep.to(device), batch=cfg.batch_dice)
            if unlabelled is not None:  # the consistency term on unlabelled images (None: no pixel passed)
                extra = unlabelled.loss(net, forward, epoch, step)
                loss = loss if extra is None else loss + extra
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
    return total / len(batches)


_PACK = 1 << 12  # labels + _PACK * ignored: label values stay below it (prepared masks are uint8)
_LABELS = 1 << 6  # real label + _LABELS * variant label (layout sets), below _PACK: labels stay below 64


def masked_dice_ce(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor, batch: bool = False) -> torch.Tensor:
    """The trainer's Dice + cross-entropy loss (foreground Dice, softmax) on the pixels where ``keep``
    ``[B, 1, H, W]`` is true only: Dice on probabilities and one-hot labels both zeroed elsewhere
    (MONAI's ``MaskedDiceLoss``), cross-entropy averaged over the kept pixels."""
    from monai.losses import MaskedDiceLoss

    dice = MaskedDiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=batch)(logits, labels, keep.float())
    ce = torch.nn.functional.cross_entropy(logits, labels[:, 0].long(), reduction="none")
    return dice + (ce * keep[:, 0]).sum() / keep.sum().clamp_min(1)


def _evaluate(out: Path, ps: PreparedSet, f, size: int, labels, cfg: SegConfig, counters: dict, identity: dict,
              seconds: float, extra: dict) -> dict:
    from ..utils.atomic import atomic_write_bytes

    net, _ = load_segmenter(out / "model")  # as a user loads it: the test predictions are reproducible
    net = net.to(torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")))
    t0 = time.perf_counter()
    metric, preds = evaluate_cases(net, ps, f.test, size, labels, keep=set(f.test))
    eval_seconds = time.perf_counter() - t0
    aggregate = metric.aggregate()
    last = ({k: m for k, (m, _) in aggregate.items()} if counters["best_epoch"] == cfg.epochs - 1
            else _last_epoch_means(out, net, ps, f, size, labels))
    rows = [{"strategy": cfg.aug, "fold": f.index, **r} for r in metric.rows]
    _write_csv(out / "metrics.csv", rows)
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **preds)
    atomic_write_bytes(out / "predictions.npz", buf.getvalue())
    summary = {"strategy": cfg.aug, "fold": f.index, "cases": len(rows),
               "metrics": {k: {"mean": m, "std": s} for k, (m, s) in aggregate.items()},
               "best_epoch": counters["best_epoch"], "best_val_dice": counters["best_dice"],
               "epochs": cfg.epochs, "train_seconds": round(counters["train_seconds"], 3),
               "labelled_training_cases": len(f.train), "validation_cases": len(f.val), **extra,
               "checkpoint": "last epoch" if counters["best_dice"] < 0 else "best validation Dice",
               "last_epoch_metrics": last, "eval_seconds": round(eval_seconds, 3), "identity": identity,
               "environment": environment(next(net.parameters()).device)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    shutil.rmtree(out / "state", ignore_errors=True)  # done: the selected model and metrics stay
    return summary


def _last_epoch_means(out: Path, net, ps: PreparedSet, f, size: int, labels) -> dict | None:
    """Mean test metrics of the last epoch's weights (``state/``), beside the selected checkpoint's: a
    record for judging the checkpoint rule over many runs. Nothing chooses a model from it."""
    if not (out / "state" / "state.safetensors").exists():
        return None
    _load_state_weights(out, net)
    metric, _ = evaluate_cases(net, ps, f.test, size, labels)
    return {k: m for k, (m, _) in metric.aggregate().items()}


def _variants_of(syn_path: Path) -> dict | None:
    """What a synthetic set was generated from and how many variants it holds: a run trained on it is
    stale once the set is regenerated or grows."""
    meta = syn_path / "generation.json"
    if not meta.exists():
        return None
    d = json.loads(meta.read_text())
    return {"identity": d.get("identity"), "num_variants": d.get("num_variants")}


def _placeless(identity: dict) -> dict:
    """A run's identity without the absolute paths it records (the prepared set, the synthetic set): their
    contents are in it already (the variants' identity and count), so a moved folder is the same run."""
    d = {k: v for k, v in identity.items() if k not in ("prepared", "synthetic")}
    d["config"] = {k: v for k, v in (identity.get("config") or {}).items() if k != "synthetic"}
    return d


def recorded_config(config: dict) -> dict:
    """A run's recorded config (``run.json``) as its identity would be written now: an option the run
    predates takes the value it ran with (``batch_dice``: Dice per image before the option; any other: its
    default), and options its strategy does not use are dropped."""
    every_option = SegConfig(aug="diffboost").identity()  # a strategy with variants uses them all
    return drop_unused({**every_option, "aug": "none", "batch_dice": False, **config})


def changed_options(old: dict, new: dict) -> list[str]:
    """The keys on which two configs differ, sorted."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _check_run(out: Path, identity: dict, replace_stale: bool = False) -> dict | None:
    """The summary of a finished run with these settings; None to (re)start; an error when ``out``
    holds a run with other settings."""
    run = out / "run.json"
    if not run.exists():
        return None
    old = read_control(run)
    old["config"] = recorded_config(old.get("config", {}))
    old.setdefault("synthetic_variants", identity["synthetic_variants"])  # recorded before this was kept
    if "fold_cases" in identity:  # runs at a budget recorded before their fold's cases were
        old.setdefault("fold_cases", identity["fold_cases"])
    old, new = _placeless(old), _placeless(identity)  # where the data lies is no setting: a moved run is reused
    if old != new and replace_stale:
        shutil.rmtree(out)
        return None
    if old != new:
        diff = changed_options(old["config"], new["config"])
        diff += [k for k in ("fold", "synthetic_variants", "teacher", "size", "last_checkpoint", "fold_cases",
                             "unlabelled_cases")
                 if old.get(k) != new.get(k)]
        raise ValueError(f"{out}: holds a segmentation run with other settings ({', '.join(diff)}); nothing was "
                         "deleted. Choose another --out or remove it (diffboost run: --redo seg)")
    summary = out / "summary.json"
    return json.loads(summary.read_text()) if summary.exists() else None


def _write_csv(path: Path, rows: list[dict]) -> None:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["case_id"])
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
