"""``diffboost ablate DIR --sweep n=1,3,5``: the paper's ablations on a finished run folder.

Sweeps an option of one strategy with variants (``diffboost`` unless ``--strategy`` names another,
e.g. ``diffboost+classic``) with every other option as in ``DIR/run.yaml``, on the same folds and seeds: Algorithm 1's ``n``, ``alpha``, ``patch``, ``mix_prob``, the ``network``,
the variant filters ``teacher_gate`` and ``pixel_filter``, reusing the generated variants (a larger
``n`` than was generated copies the comparison's set to ``DIR/ablations/n/synthetic/foldK`` and adds
the missing variants there: an ablation writes only under ``ablations/``); and the generator's image-to-image
``strength`` and ``mask_strength`` (new variants from the run's models) and ``condition`` (``edges`` or ``edges+mask``:
new diffusion models per fold, then their variants). For ``network`` the ``none`` baseline is
trained with each backbone too (the paper's Fig. 7; for ``diffboost+classic``, ``classic``). Runs go to
``DIR/ablations/<param>/<value>/<strategy>/seed<s>/foldK`` (every seed of ``compare.seeds``);
``DIR/ablations/<param>.json`` (``<param>_<strategy>.json`` for another strategy than ``diffboost``)
and ``.png`` hold the table and the plot: mean Dice with a band of ± one std over runs (fold x seed)
against the baseline, and per value the paired gain over the baseline (the strategy without its
variants: ``none`` for ``diffboost``, ``classic`` for ``diffboost+classic``) and over the run's own
setting, each with the corrected repeated k-fold interval of :mod:`diffboost.evaluation.stats`.

The sweep's choice (``chosen`` in the JSON, marked in the report) is the value with the highest
validation Dice, each run's ``best_val_dice`` on its fold's validation part averaged over runs: the
test Dice is shown beside it but never chooses, so the reported folds stay unseen by the selection.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from .config import to_dict
from .runconfig import (GENERATOR_SWEEPS, LAYOUT_SWEEPS, SWEEPABLE, check_strategy, check_values, load_run_config,
                        parse_sweep)
from .utils.atomic import atomic_write_bytes, atomic_write_text
from .utils.lock import locks_folder

__all__ = ["SWEEPABLE", "ablate", "check_sweeps", "check_values", "parse_sweep"]


def _load_run(run_dir: Path):
    from .data.store import PreparedSet

    if not (run_dir / "run.yaml").exists():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no run.yaml); make one with `diffboost run`")
    return load_run_config(run_dir / "run.yaml"), PreparedSet(run_dir / "prepared")


def ablation_stem(param: str, strategy: str = "diffboost") -> str:
    """The file name (without suffix) of a sweep's table and plot in ``DIR/ablations``."""
    return param if strategy == "diffboost" else f"{param}_{strategy.replace('+', '-')}"


def check_sweeps(run_dir: str | Path, sweeps: list[tuple[str, list]], strategy: str = "diffboost") -> None:
    """Check every ``(param, values)`` sweep against a run folder's settings before any of them trains."""
    run_dir = Path(run_dir)
    cfg, ps = _load_run(run_dir)
    for param, values in sweeps:
        try:
            check_strategy(strategy, param)
            check_values(cfg.seg, param, values, ps.size, cfg)
        except ValueError as e:
            raise ValueError(f"{run_dir / 'run.yaml'}: --sweep {e}") from None


def ablation_identity(cfg, ps) -> str:
    """What an ablation's numbers depend on besides its own sweep: the prepared content and every option
    that changes a result (cosmetic ones aside). The report shows only the ablations that match."""
    from .stages import comparable as _comparable
    from .stages import digest as _hash
    from .stages import prepared_fingerprint

    # options added since ablations were first recorded are left out at their defaults (stages.ADDED_DEFAULTS)
    sections = {k: to_dict(getattr(cfg, k)) for k in ("prepare", "model", "train", "generate", "seg")}
    sections["compare"] = {"folds": to_dict(cfg.compare).get("folds"), "seeds": cfg.compare.seed_list(cfg.seg)}
    from .generation.layout import COPY_PASTE
    from .runconfig import layout_kinds
    from .segmentation.config import parse_strategy

    if any(parse_strategy(a)[0] in (COPY_PASTE, *layout_kinds(cfg)) for a in cfg.compare.augs):
        sections["layout"], sections["inpaint"] = to_dict(cfg.layout), to_dict(cfg.inpaint)  # runs without: as before
    return _hash([prepared_fingerprint(ps), _comparable(sections)])


def _own_stage(folder: Path, identity: dict) -> None:
    """A folder an ablation trains into: stamped when new; made from other settings, it is refused
    (nothing is deleted unasked)."""
    from .stages import comparable as _comparable
    from .stages import stamp as _stamp
    from .utils.atomic import read_control

    stamp = folder / "stage.json"
    if stamp.exists():
        old = read_control(stamp).get("identity") or {}
        if _comparable(old) != _comparable(identity):
            changed = sorted(k for k in set(old) | set(identity) if _comparable(old.get(k)) != _comparable(identity.get(k)))
            raise ValueError(f"{folder}: made with other settings ({', '.join(changed)}); remove it to redo this "
                             "ablation with the current ones")
    elif (folder / "model").exists():
        raise ValueError(f"{folder}: made before ablations recorded their settings; remove it to redo it")
    else:
        _stamp(folder, identity)


def _generator_sweep(run_dir: Path, cfg, ps, folds: list[int], param: str, value, progress: bool) -> str:
    """The synthetic sets of a generator sweep value, made (or completed) per fold: variants at another
    ``strength`` or ``mask_strength`` from the run's own diffusion models, or new models fine-tuned with
    another ``condition`` and their variants. Returns the sets' path pattern (``{fold}`` filled in by training)."""
    from .diffusion.train import finetune_fold
    from .generation.generate import generate
    from .stages import prepared_fingerprint

    base = run_dir / "ablations" / param / str(value)
    own_models = param != "condition"  # strength, mask_strength: new variants from the run's models
    gen = dataclasses.replace(cfg.generate, **({param: value} if own_models else {}))
    from .segmentation.config import needs_unlabelled_variants

    if any(needs_unlabelled_variants(a) for a in cfg.compare.augs):  # as `run` makes them
        gen = dataclasses.replace(gen, unlabelled=True)
    for k in folds:
        if own_models:
            model = run_dir / "models" / f"fold{k}" / "model"
            if not model.exists():
                raise FileNotFoundError(f"{model}: no diffusion model for fold {k}; run `diffboost run` first")
        else:
            train = dataclasses.replace(cfg.train, learning_rate=cfg.train.lr_for(cfg.model.kind))
            folder = base / "models" / f"fold{k}"
            model = folder / "model"
            mcfg = dataclasses.replace(cfg.model, image_size=ps.size, condition=value)
            _own_stage(folder, {"prepared": prepared_fingerprint(ps), "fold": k, "model": to_dict(mcfg),
                                "train": to_dict(train)})
            finetune_fold(ps, k, folder, mcfg, train, progress=progress)  # resumes after an interruption
        generate(model, ps, base / "synthetic" / f"fold{k}", k, gen, progress=progress, replace_stale=True)
    return str(base / "synthetic" / "fold{fold}")


def _layout_value(cfg, param: str, value):
    """The run's layout and inpaint options with the swept one set to ``value``."""
    layout, inpaint = cfg.layout, cfg.inpaint
    if param == "placement":
        layout = dataclasses.replace(layout, placement=value)
    elif param == "scale":
        layout = dataclasses.replace(layout, scale=tuple(float(x) for x in value.split("-")))
    else:
        inpaint = dataclasses.replace(inpaint, lesion_strength=value)
    return layout, inpaint


def _is_run_layout(cfg, param: str, value) -> bool:
    layout, inpaint = _layout_value(cfg, param, value)
    return layout == cfg.layout and inpaint == cfg.inpaint


def _layout_sweep(run_dir: Path, cfg, ps, folds: list[int], source: str, param: str, value, progress: bool) -> str:
    """The layout sets of a sweep value (``source``'s kind: copy-paste or drawn by the run's models), made
    per fold under ``ablations/<param>/<value>/``; returns their path pattern."""
    from .generation.inpaint import layout_generate
    from .generation.layout import COPY_PASTE, copy_paste_set

    layout, inpaint = _layout_value(cfg, param, value)
    base = run_dir / "ablations" / param / str(value) / f"synthetic_{source}"
    for k in folds:
        if source == COPY_PASTE:
            copy_paste_set(ps, k, base / f"fold{k}", layout, progress=progress)
        else:
            model = run_dir / "models" / f"fold{k}" / "model"
            if not model.exists():
                raise FileNotFoundError(f"{model}: no diffusion model for fold {k}; run `diffboost run` first")
            layout_generate(model, ps, base / f"fold{k}", k, source, layout, inpaint, progress=progress)
    return str(base / "fold{fold}")


def _gain(runs: list, reference: list | None, ratio: float) -> dict | None:
    """Mean test Dice gain (a fraction) of the finished ``runs`` over the ``reference`` runs of the same
    (fold, seed), with its corrected 95% interval and p (and the interval over fold means); None when
    there is no reference."""
    from .segmentation.compare import paired, read_rows

    if reference is None:
        return None
    p = paired(read_rows(runs), read_rows(reference), ratio)
    return {"mean": p["dice_diff"] / 100, "low": p["ci95"][0] / 100, "high": p["ci95"][1] / 100, "p": p["p"],
            "folds_low": p["ci95_folds"][0] / 100, "folds_high": p["ci95_folds"][1] / 100}


def choose(val_dice: dict[str, float]) -> str | None:
    """The value with the highest validation Dice (the first such in sweep order); None without any."""
    finite = {v: d for v, d in val_dice.items() if d is not None and np.isfinite(d)}
    return max(finite, key=lambda v: finite[v]) if finite else None


@locks_folder("run_dir")
def ablate(run_dir: str | Path, param: str, values: list, progress: bool = True, n_jobs: int | None = None,
           strategy: str = "diffboost") -> dict:
    """Train the sweep of ``strategy`` (``n_jobs`` runs at once; default ``compare.jobs`` of the run) and
    write its table and plot; Dice is the mean over runs (fold x seed) with the std over runs."""
    from .generation.generate import generate
    from .report.figures import ablation_plot
    from .segmentation.jobs import SegJob, run_folder, run_jobs

    run_dir = Path(run_dir)
    cfg, ps = _load_run(run_dir)
    try:
        reference = check_strategy(strategy, param)
    except ValueError as e:
        raise ValueError(f"{run_dir / 'run.yaml'}: {e}") from None
    check_values(cfg.seg, param, values, ps.size, cfg)
    folds = list(cfg.compare.folds) if cfg.compare.folds is not None else list(range(len(ps.folds)))
    more_variants = None  # n above the comparison's: a set of the ablation's own, never the comparison's
    if param == "n" and strategy.startswith("diffboost") and max(values) > cfg.generate.n:
        more_variants = str(run_dir / "ablations" / "n" / "synthetic" / "fold{fold}")
        for k in folds:
            model = run_dir / "models" / f"fold{k}" / "model"
            if not model.exists():
                raise FileNotFoundError(f"{model}: no diffusion model for fold {k}; run `diffboost run` first")
            target = Path(more_variants.format(fold=k))
            if not target.exists():  # start from a copy of the comparison's variants: only the missing are drawn
                shutil.copytree(run_dir / "synthetic" / f"fold{k}", target,
                                ignore=shutil.ignore_patterns("consistency*", "teacher_loss*", "quality*"))
            generate(model, ps, target, k, dataclasses.replace(cfg.generate, n=max(values)), progress=progress)
    strategies = [reference, strategy] if param == "network" else [strategy]
    seeds = cfg.compare.seed_list(cfg.seg)
    jobs, where, default = [], [], {}  # default: the value is the run's own setting
    for v in values:
        for s in strategies:
            if param in GENERATOR_SWEEPS:  # the same segmenter on this value's variants
                own = v == getattr(cfg.model if param == "condition" else cfg.generate, param)
                syn = None if own else _generator_sweep(run_dir, cfg, ps, folds, param, v, progress)
                seg = dataclasses.replace(cfg.seg, aug=s, synthetic=syn)
            elif param in LAYOUT_SWEEPS:  # the same segmenter on this value's layout sets
                from .segmentation.config import parse_strategy

                own = _is_run_layout(cfg, param, v)
                syn = None if own else _layout_sweep(run_dir, cfg, ps, folds, parse_strategy(s)[0], param, v, progress)
                seg = dataclasses.replace(cfg.seg, aug=s, synthetic=syn)
            elif more_variants is not None and v > cfg.generate.n:
                seg = dataclasses.replace(cfg.seg, aug=s, n=v, synthetic=more_variants)
            else:
                seg = dataclasses.replace(cfg.seg, aug=s, **{param: v})
            same_as_compare = seg == dataclasses.replace(cfg.seg, aug=s)
            if s == strategy:
                default[str(v)] = same_as_compare
            for seed in seeds:
                for k in folds:
                    out = run_folder(run_dir / "ablations" / param / str(v), s, k, seed)
                    mine = run_folder(run_dir / "seg", s, k, seed)
                    if same_as_compare and (mine / "summary.json").exists():
                        out = mine  # the comparison trained exactly this one already
                    jobs.append(SegJob(dataclasses.replace(seg, seed=seed), k, out))
                    where.append((s, str(v)))
    summaries = run_jobs(ps, jobs, n_jobs or cfg.compare.jobs, progress=progress, replace_stale=True)
    swept: dict[tuple[str, str], list[SegJob]] = {}  # (strategy, value): its runs, fold x seed
    dice: dict[tuple[str, str], list[float]] = {}
    val: dict[tuple[str, str], list[float]] = {}
    for job, summary, w in zip(jobs, summaries, where):
        swept.setdefault(w, []).append(job)
        dice.setdefault(w, []).append(summary["metrics"]["dice"]["mean"])
        val.setdefault(w, []).append(float(summary.get("best_val_dice", float("nan"))))
    from .evaluation.stats import holdout_ratio

    ratio = holdout_ratio([ps.fold(k) for k in folds])
    results: dict = {"param": param, "values": values, "strategy": strategy, "reference": reference,
                     "folds": folds, "seeds": seeds, "dice": {}, "val_dice": {}, "baseline": None, "gain": {},
                     "test_train_ratio": ratio, "identity": ablation_identity(cfg, ps)}
    for s in strategies:
        for v in values:
            runs = dice[(s, str(v))]
            results["dice"].setdefault(s, {})[str(v)] = {"mean": float(np.mean(runs)), "std": float(np.std(runs)),
                                                          "per_run": runs}
            results["val_dice"].setdefault(s, {})[str(v)] = float(np.mean(val[(s, str(v))]))
    # the sweep's choice: by Dice on each fold's validation part (which chose every checkpoint too), never
    # by the test Dice shown beside it
    results["chosen"] = choose(results["val_dice"][strategy])
    results["chosen_by"] = "validation Dice (mean over runs of best_val_dice, each fold's validation part)"

    def compared_runs(s: str) -> list[SegJob] | None:
        """The comparison's own runs of ``s``; None while one of them is missing."""
        runs = [SegJob(dataclasses.replace(cfg.seg, aug=s, seed=seed), k, run_folder(run_dir / "seg", s, k, seed))
                for seed in seeds for k in folds]
        return runs if all((j.out / f).exists() for j in runs for f in ("metrics.csv", "summary.json")) else None

    ref_runs, own_runs = compared_runs(reference), compared_runs(strategy)
    for v in values:
        mine = swept[(strategy, str(v))]
        # for network, the reference trained with the same backbone
        ref = swept[(reference, str(v))] if param == "network" else ref_runs
        results["gain"][str(v)] = {f"over {reference}": _gain(mine, ref, ratio),
                                   # the run's own setting: no gain over itself
                                   "over the run's setting": None if default[str(v)] else _gain(mine, own_runs, ratio)}
    if param != "network" and ref_runs is not None:
        results["baseline"] = float(np.mean([json.loads((j.out / "summary.json").read_text())["metrics"]["dice"]["mean"]
                                             for j in ref_runs]))
    stem = ablation_stem(param, strategy)
    (run_dir / "ablations").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "ablations" / f"{stem}.json", json.dumps(results, indent=1))
    atomic_write_bytes(run_dir / "ablations" / f"{stem}.png", ablation_plot(results))
    return results
