"""Learning curves: every strategy at every label budget, on the same folds and seeds.

``learning_curve(prepared, budgets=["0.1", "0.25", "1"], ...)`` runs :func:`~.compare.compare` on the
prepared set at each budget (:func:`~diffboost.data.preparation.with_budget`: the same test folds, each
fold keeping the labels of the budget's share of its training + validation part), then writes
``OUT/compare/learning_curve.{json,md}``:

- per strategy and budget: the mean Dice over the runs (fold x seed) with its corrected repeated k-fold
  95% interval (the bands of the plot), and the labelled images a fold trains + validates on;
- per budget: each strategy's gain over ``none`` and over ``classic`` with the corrected interval, Holm
  over the comparisons of that budget (the budget's own Table II);
- **labels saved**: the smallest budget at which a strategy reaches the reference (``classic`` with every
  label) on the curve, interpolated linearly in labelled images between the budgets run, with the
  interval where the difference's 95% interval crosses 0 (its upper bound first, then its lower bound).

Test folds are the same at every budget, so a strategy at a budget and the reference at 100% are paired
by (fold, seed). A semi-supervised strategy (fixmatch, self-train) runs at the budgets that leave it
unlabelled images only (every label: none), its cells elsewhere empty.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data.folds import parse_budget
from ..data.store import PreparedSet
from ..evaluation.stats import corrected_interval, holdout_ratio, holm
from .compare import _interval, compare, run_dice, run_stats
from .config import SegConfig, uses_unlabelled

FULL = "1"


def budget_name(budget: str) -> str:
    """A budget as a folder name and a table column: ``0.1``, ``25%`` -> ``0.25``, ``30`` -> ``30img``."""
    kind, value = parse_budget(budget) or ("fraction", 1.0)
    return f"{int(value)}img" if kind == "images" else f"{value:g}"


def budget_label(name: str) -> str:
    """A budget's folder name for a reader: ``0.1`` -> ``10%``, ``30img`` -> ``30 images``."""
    return name.replace("img", " images") if name.endswith("img") else f"{100 * float(name):g}%"


def learning_curve(prepared: str | Path | PreparedSet, budgets, strategies, cfg: SegConfig | None = None,
                   out: str | Path | None = None, folds: list[int] | None = None, seeds: list[int] | None = None,
                   jobs: int = 1, progress: bool = True, replace_stale: bool = False,
                   reference: str = "classic") -> dict:
    """Compare ``strategies`` at every budget (every label: ``OUT/seg``, ``OUT/compare``; a budget B:
    ``OUT/budgets/B/{prepared,seg,compare}``); write and return the learning curve."""
    from ..data.preparation import with_budget

    ps = prepared if isinstance(prepared, PreparedSet) else PreparedSet(prepared)
    out = Path(out) if out else ps.root.parent
    names = [budget_name(b) for b in budgets]  # checks every budget before any work
    if len(set(names)) != len(names):
        raise ValueError(f"budgets {list(budgets)}: two of them are the same budget")
    cfg = cfg or SegConfig()
    seeds = list(dict.fromkeys(seeds)) if seeds else [cfg.seed]
    folds = list(range(len(ps.folds))) if folds is None else list(folds)
    per_budget: dict[str, dict] = {}
    sets: dict[str, PreparedSet] = {}
    for b, name in zip(budgets, names):
        if name == FULL:
            sets[name], root = ps, out
        else:
            root = out / "budgets" / name
            sets[name] = with_budget(ps, b, root / "prepared")
        # a semi-supervised strategy needs unlabelled training images: with every label there are none
        here = [s for s in strategies if not uses_unlabelled(s) or all(sets[name].fold(k).unlabelled for k in folds)]
        per_budget[name] = compare(sets[name], here, cfg, root, folds, progress, replace_stale, seeds, jobs)
        per_budget[name]["root"] = str(root)
        per_budget[name]["strategies"] = here
    curve = summarise_curve(per_budget, sets, strategies, cfg, seeds, folds, reference, holdout_ratio(
        [ps.fold(k) for k in folds]))
    from ..utils.atomic import atomic_write_text

    (out / "compare").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare" / "learning_curve.json", json.dumps(curve, indent=1))
    atomic_write_text(out / "compare" / "learning_curve.md", curve_markdown(curve))
    return curve


def summarise_curve(per_budget: dict, sets: dict, strategies, cfg, seeds, folds, reference: str,
                    ratio: float) -> dict:
    order = sorted(per_budget, key=lambda n: np.mean([len(sets[n].fold(k).train) + len(sets[n].fold(k).val)
                                                      for k in folds]))
    labelled = {n: float(np.mean([len(sets[n].fold(k).train) + len(sets[n].fold(k).val) for k in folds])) for n in order}
    runs = {n: {s: run_dice(Path(per_budget[n]["root"]) / "seg", s, folds, seeds)
                for s in per_budget[n].get("strategies", strategies)} for n in order}
    dice = {}
    for s in strategies:
        dice[s] = {}
        for n in order:  # None: the strategy did not run at this budget (a semi-supervised one with every label)
            iv = corrected_interval(runs[n][s], ratio) if s in runs[n] else None
            dice[s][n] = None if iv is None else {"mean": iv.mean, "low": iv.low, "high": iv.high}
    gains: dict[str, dict] = {}
    for n in order:  # each strategy vs none and vs the reference at the same budget; Holm within the budget
        family = {}
        for s in strategies:
            for ref in dict.fromkeys(("none", reference)):
                if s not in (ref, "none") and ref in runs[n] and s in runs[n]:  # none vs X is X vs none
                    family[f"{s} vs {ref}"] = run_stats(runs[n][s], runs[n][ref], ratio)
        for name, p in holm({k: d["p"] for k, d in family.items()}).items():
            family[name]["p_holm"] = p
        gains[n] = {k: {"dice_diff": d["dice_diff"], "ci95": d["ci95"], "p_holm": d["p_holm"], "runs": d["runs"]}
                    for k, d in family.items()}
    full = order[-1]
    saved = {}
    if reference in strategies:
        ref_runs = runs[full][reference]
        for s in strategies:
            diffs = [(labelled[n], run_stats(runs[n][s], ref_runs, ratio)) for n in order if s in runs[n]]
            saved[s] = labels_saved(diffs, labelled[full])
    return {"budgets": order, "labelled_images": labelled, "reference": f"{reference} with every label" if full == FULL else f"{reference} at budget {full}",
            "dice": dice, "gains": gains, "labels_saved": saved, "folds": folds, "seeds": seeds,
            "test_train_ratio": ratio, "steps_per_epoch": cfg.steps_per_epoch, "epochs": cfg.epochs}


def _crossing(xs: list[float], ys: list[float]) -> float | None:
    """The smallest x from which the piecewise-linear curve through (xs, ys) stays at or above 0 (a dip
    below 0 at a larger x moves it there): interpolated at the last upward crossing; the first x when the
    curve never falls below 0; None when it ends below 0. An unknown point (nan: one fold) counts as below."""
    ys = [y if np.isfinite(y) or y > 0 else -np.inf for y in ys]  # +inf: reached; -inf, nan: not
    if ys[-1] < 0:
        return None
    k = len(ys) - 1
    while k > 0 and ys[k - 1] >= 0:
        k -= 1
    if k == 0:
        return xs[0]
    x0, y0, x1, y1 = xs[k - 1], ys[k - 1], xs[k], ys[k]
    if not np.isfinite(y0) or not np.isfinite(y1):
        return x1
    return x0 + (x1 - x0) * (0 - y0) / (y1 - y0)


def labels_saved(diffs: list[tuple[float, dict]], full: float) -> dict:
    """``diffs``: (labelled images, strategy − reference stats with ``dice_diff`` and ``ci95``) by budget,
    ascending. The labelled images at which the strategy reaches the reference, and its interval."""
    xs = [x for x, _ in diffs]
    est = _crossing(xs, [d["dice_diff"] for _, d in diffs])
    soonest = _crossing(xs, [d["ci95"][1] for _, d in diffs])  # the difference's upper bound reaches 0 first
    latest = _crossing(xs, [d["ci95"][0] for _, d in diffs])
    share = (lambda v: None if v is None else v / full)
    return {"images": est, "interval": [soonest, latest], "share": share(est),
            "share_interval": [share(soonest), share(latest)],
            "at_first_budget": bool(diffs[0][1]["dice_diff"] >= 0)}


def _pct(v) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{100 * v:.2f}"


def curve_markdown(curve: dict) -> str:
    order = curve["budgets"]
    head = ["strategy"] + [f"{budget_label(n)} ({curve['labelled_images'][n]:.0f} labelled)" for n in order]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s, by in curve["dice"].items():
        lines.append("| " + " | ".join([s] + ["–" if by[n] is None else
                                              f"{_pct(by[n]['mean'])} [{_pct(by[n]['low'])}, {_pct(by[n]['high'])}]"
                                              for n in order]) + " |")
    text = ["Dice (%) per label budget: mean over fold x seed runs, corrected repeated k-fold 95% interval. "
            f"Every budget on the same test folds ({len(curve['folds'])} folds, seeds {curve['seeds']}); "
            + (f"{curve['epochs']} epoch(s) of {curve['steps_per_epoch']} optimiser steps at every budget."
               if curve.get("steps_per_epoch") else f"{curve['epochs']} epoch(s), each one pass over the labelled images "
               "(runs at a smaller budget are shorter)."),
            "", *lines]
    pairs = list(dict.fromkeys(k for n in order for k in curve["gains"][n]))
    if pairs:
        text += ["", "Gains in Dice points at each budget, corrected 95% interval, Holm-adjusted p over the "
                     "comparisons of that budget:", "", "| comparison | " + " | ".join(map(budget_label, order)) + " |",
                 "|---|" + "---|" * len(order)]
        for k in pairs:
            cells = []
            for n in order:
                d = curve["gains"][n].get(k)
                cells.append("–" if d is None else f"{d['dice_diff']:+.2f} {_interval(*d['ci95'])}, p {d['p_holm']:.2g}")
            text.append(f"| {k} | " + " | ".join(cells) + " |")
    if curve["labels_saved"]:
        text += ["", f"Labels saved: the labelled images at which a strategy reaches {curve['reference']} "
                     "(interpolated between budgets; interval: where the difference's corrected 95% interval "
                     "crosses 0).", "", "| strategy | labelled images | share of all | interval (images) |",
                 "|---|---|---|---|"]
        for s, v in curve["labels_saved"].items():
            def img(x):
                return "not reached" if x is None else f"{x:.0f}"
            lo, hi = v["interval"]
            share = "–" if v["share"] is None else f"{100 * v['share']:.0f}%"
            first = " (at or below the smallest budget)" if v["at_first_budget"] else ""
            text.append(f"| {s} | {img(v['images'])}{first} | {share} | [{img(lo)}, {img(hi)}] |")
    return "\n".join(text) + "\n"
