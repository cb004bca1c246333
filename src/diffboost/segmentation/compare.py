"""Every strategy on the same folds and seeds, and the paper's Table II with the statistics a
reader needs to trust it.

``compare`` trains ``seg/<strategy>/seed<s>/fold<k>/`` for each strategy, seed and fold (finished
runs are reused; ``jobs`` runs them in parallel, see :mod:`.jobs`), then writes into ``compare/``:

    cases.csv    every test case of every fold and seed under every strategy (the per-case rows)
    table.csv    strategy x metric: mean and std over all test cases of all folds and seeds
    table.md     Table II (all cases, best per column in bold) and the lesion / empty-case table
    table.json   everything, with per-fold and per-run means and the paired statistics below

Statistics, each strategy against ``none`` (and the contrasts in :data:`CONTRASTS`):

- the Dice difference in points, averaged over runs (fold x seed, paired: same folds, same seeds)
  with the corrected repeated k-fold t-test's 95% interval and p-value (seeds averaged within a
  fold, variance x (1/k + n_test/n_train), see :mod:`diffboost.evaluation.stats`), and beside it the
  plain t-interval over the fold means;
- Holm's correction over every comparison of the table (the ``vs none`` rows and the contrasts);
- descriptive only, never a claim: the naive t-interval over runs and a paired Wilcoxon test over
  test cases, which ignore that runs share folds and training data;
- lesion metrics: Dice / HD95 / ASSD over the cases whose reference is not empty, and the
  false-positive rate on empty references (normal images; for volumes, the slices without
  foreground): the share predicted with any foreground.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..data.store import PreparedSet
from ..evaluation.metrics import HIGHER_IS_BETTER, METRICS, detection_summary
from ..evaluation.stats import corrected_interval, fold_interval, holdout_ratio, holm, run_interval, wilcoxon_p
from ..utils.atomic import atomic_write_text
from .config import DEFAULT_COMPARE, SegConfig, parse_strategy
from .jobs import SegJob, run_folder, run_jobs

HEADERS = {"dice": "Dice", "precision": "Precision", "recall": "Recall", "hd95": "HD95", "assd": "ASSD"}
LESION_METRICS = ("dice", "hd95", "assd")
# (strategy, reference) pairs reported besides "x vs none" when both were compared
CONTRASTS = (("diffboost", "mix-classic"), ("diffboost+classic", "classic"), ("diffboost", "classic"))


def compare(prepared: str | Path | PreparedSet, strategies=DEFAULT_COMPARE, cfg: SegConfig | None = None,
            out: str | Path | None = None, folds: list[int] | None = None, progress: bool = True,
            replace_stale: bool = False, seeds: list[int] | None = None, jobs: int = 1) -> dict:
    """Run (or reuse) every strategy on every fold and seed; write and return the comparison tables.
    ``seeds`` default to ``[cfg.seed]``."""
    cfg = cfg or SegConfig()
    ps = prepared if isinstance(prepared, PreparedSet) else PreparedSet(prepared)
    out = Path(out) if out else ps.root.parent
    strategies = list(dict.fromkeys(strategies))
    for s in strategies:
        parse_strategy(s)
    folds = list(range(len(ps.folds))) if folds is None else list(folds)
    seeds = list(dict.fromkeys(seeds)) if seeds else [cfg.seed]
    for k in folds:
        ps.fold(k)
    todo = [SegJob(dataclasses.replace(cfg, aug=s, seed=seed), k, run_folder(out / "seg", s, k, seed))
            for s in strategies for seed in seeds for k in folds]
    summaries = run_jobs(ps, todo, jobs, progress=progress, replace_stale=replace_stale)
    rows = read_rows(todo)
    unit = ps.meta.get("spacing_unit") or ("mm" if ps.meta.get("is_3d") else "px")
    return write_tables(rows, strategies, out / "compare", unit=unit,
                        test_train_ratio=holdout_ratio([ps.fold(k) for k in folds]),
                        extra={"folds": folds, "seeds": seeds, "config": cfg.identity(),
                               "prepared": str(ps.root.resolve()),
                               "train_seconds": {f"{j.cfg.aug}/seed{j.cfg.seed}/fold{j.fold}": s["train_seconds"]
                                                 for j, s in zip(todo, summaries)}})


def read_rows(jobs: list[SegJob]) -> list[dict]:
    """The per-case rows of finished runs, each with its seed."""
    rows = []
    for j in jobs:
        with open(j.out / "metrics.csv", newline="") as fh:
            rows += [{**r, "seed": j.cfg.seed} for r in csv.DictReader(fh)]
    return rows


def run_dice(seg_root: str | Path, strategy: str, folds, seeds, finished_only: bool = False) -> dict:
    """``{(fold, seed): mean test Dice}`` of the runs ``SEG_ROOT/<strategy>/seed<s>/fold<k>`` (where
    :func:`compare` puts them); ``finished_only`` leaves out the runs without test metrics (else they fail)."""
    jobs = [SegJob(SegConfig(seed=s), k, run_folder(seg_root, strategy, k, s)) for s in seeds for k in folds]
    return run_means(read_rows([j for j in jobs if not finished_only or (j.out / "metrics.csv").exists()]))


# ---- statistics ---------------------------------------------------------------------------------

def _run_key(r: dict) -> tuple[int, int]:
    return int(r["fold"]), int(r.get("seed", 0))


def _mean_std(values) -> dict:
    v = np.asarray(list(values), np.float64)
    return {"mean": float(v.mean()) if len(v) else float("nan"), "std": float(v.std()) if len(v) else float("nan")}


def _empty_counts(r: dict) -> tuple[int, int]:
    """(empty references, of which predicted with foreground): slices for volumes, the case for 2D."""
    if r.get("empty_slices") not in (None, ""):
        return int(r["empty_slices"]), int(r["fp_slices"])
    empty = int(r["reference_empty"])
    return empty, int(empty and not int(r["prediction_empty"]))


def run_means(rows: list[dict]) -> dict:
    """``{(fold, seed): mean Dice}`` of per-case rows (:func:`read_rows`): a run's mean over its test cases,
    the unit the corrected interval counts."""
    return _mean_dice(rows, _run_key)


def _mean_dice(rows: list[dict], key) -> dict:
    """``key(row) -> mean Dice`` of the rows sharing that key."""
    groups = defaultdict(list)
    for r in rows:
        groups[key(r)].append(float(r["dice"]))
    return {k: float(np.mean(v)) for k, v in groups.items()}


def paired(rows_a: list[dict], rows_b: list[dict], test_train_ratio: float | None = None) -> dict:
    """Strategy A against B on the runs and cases both have: the mean Dice difference in points over
    runs (fold x seed) with its corrected 95% interval (``ci95``, :func:`~diffboost.evaluation.stats.corrected_interval`)
    and its p-value, the t-interval over the fold means beside it (``ci95_folds``), the relative gain,
    and, descriptive only, the naive interval over runs and the per-case Wilcoxon p.
    ``test_train_ratio``: n_test / n_train of the folds; None takes it from the rows (every fold present)."""
    ratio = rows_ratio(rows_a + rows_b) if test_train_ratio is None else float(test_train_ratio)
    stats = run_stats(run_means(rows_a), run_means(rows_b), ratio)
    case = lambda r: (r["fold"], r["case_id"])  # noqa: E731  (a case's Dice averaged over seeds)
    case_a, case_b = _mean_dice(rows_a, case), _mean_dice(rows_b, case)
    cases = sorted(set(case_a) & set(case_b))
    a = [case_a[c] for c in cases]
    b = [case_b[c] for c in cases]
    base = float(np.mean(b)) if b else float("nan")
    stats["descriptive"]["wilcoxon_cases_p"] = wilcoxon_p(a, b)
    return {**stats, "relative": (float(np.mean(a)) - base) / base if b and base > 0 else float("nan"),
            "cases": len(cases)}


def run_stats(run_a: dict, run_b: dict, test_train_ratio: float) -> dict:
    """The statistics of two strategies' mean Dice per run, ``{(fold, seed): dice}`` (fractions), on the
    runs both have: the difference in points with its corrected interval and p, the interval over
    fold means, and the naive interval over runs (descriptive)."""
    keys = sorted(set(run_a) & set(run_b))
    diffs = {k: 100 * (run_a[k] - run_b[k]) for k in keys}
    ratio = float(test_train_ratio)
    if not np.isfinite(ratio) and len({k for k, _ in keys}) > 1:
        raise ValueError(f"the folds' n_test / n_train is needed for the corrected interval, got {test_train_ratio}")
    corrected = corrected_interval(diffs, ratio if np.isfinite(ratio) else 0.0)  # one fold: unbounded anyway
    by_fold, naive = fold_interval(diffs), run_interval(list(diffs.values()))
    return {"dice_diff": corrected.mean, "ci95": [corrected.low, corrected.high], "p": corrected.p,
            "df": corrected.df, "ci95_folds": [by_fold.low, by_fold.high], "test_train_ratio": ratio,
            "runs": len(keys), "folds": len({k for k, _ in keys}), "per_run": [diffs[k] for k in keys],
            "descriptive": {"ci95_runs_uncorrected": [naive.low, naive.high]}}


def rows_ratio(rows: list[dict]) -> float:
    """n_test / n_train from per-case rows that hold every fold's test cases (their union is the data
    set); nan with fewer than two folds."""
    by_fold: dict[int, set] = defaultdict(set)
    for r in rows:
        by_fold[int(r["fold"])].add(r["case_id"])
    total = len(set().union(*by_fold.values())) if by_fold else 0
    if len(by_fold) < 2:
        return float("nan")
    return holdout_ratio([{"test": len(c), "train": total - len(c), "val": 0} for c in by_fold.values()])


def summarise(rows: list[dict], strategies: list[str], test_train_ratio: float | None = None) -> dict:
    """strategy -> all-case metrics (mean, std, per fold), lesion metrics, false-positive rate on
    empty references, Dice per run and per fold, and the paired statistics against ``none``."""
    table: dict = {}
    by = {s: [r for r in rows if r["strategy"] == s] for s in strategies}
    for s, rs in by.items():
        if not rs:
            continue
        folds = sorted({int(r["fold"]) for r in rs})
        entry: dict = {"cases": len(rs)}
        for m in METRICS:
            v = np.array([float(r[m]) for r in rs])
            entry[m] = {"mean": float(v.mean()), "std": float(v.std()),
                        "per_fold": {str(k): float(np.mean([float(r[m]) for r in rs if int(r["fold"]) == k]))
                                     for k in folds}}
        entry["dice_runs"] = {f"fold{k}/seed{sd}": v for (k, sd), v in sorted(run_means(rs).items())}
        entry["dice_folds"] = _mean_std(entry["dice"]["per_fold"].values())
        lesion = [r for r in rs if not int(r["reference_empty"])]
        entry["lesion"] = {"cases": len(lesion), **{m: _mean_std(float(r[m]) for r in lesion) for m in LESION_METRICS}}
        counts = np.array([_empty_counts(r) for r in rs]).reshape(-1, 2)
        n_empty, n_fp = int(counts[:, 0].sum()), int(counts[:, 1].sum())
        entry["empty"] = {"references": n_empty, "false_positives": n_fp,
                          "fp_rate": n_fp / n_empty if n_empty else float("nan")}
        detection = detection_summary(rs)
        if detection is not None:  # runs evaluated before lesion-wise detection existed have none
            entry["detection"] = detection
        table[s] = entry
    base = by.get("none")
    if base:
        for s, rs in by.items():
            if s != "none" and rs:
                table[s]["vs_none"] = paired(rs, base, test_train_ratio)
    return table


def contrasts(rows: list[dict], strategies: list[str], test_train_ratio: float | None = None) -> dict:
    """The pairs of :data:`CONTRASTS` whose two strategies were both compared: ``"A vs B" -> paired``."""
    by = {s: [r for r in rows if r["strategy"] == s] for s in strategies}
    return {f"{a} vs {b}": paired(by[a], by[b], test_train_ratio) for a, b in CONTRASTS if by.get(a) and by.get(b)}


def holm_family(table: dict, pairs: dict) -> None:
    """Holm's correction over every comparison of one table (each strategy vs ``none`` and each
    contrast), written into each as ``p_holm``."""
    family = {f"{s} vs none": e["vs_none"] for s, e in table.items() if "vs_none" in e}
    family.update(pairs)
    for name, p in holm({k: d["p"] for k, d in family.items()}).items():
        family[name]["p_holm"] = p


# ---- tables -------------------------------------------------------------------------------------

def _interval(lo: float, hi: float) -> str:
    return "[−∞, +∞]" if not np.isfinite(lo) else f"[{lo:+.2f}, {hi:+.2f}]"


def _ci(d: dict) -> str:
    """``+4.19 [-0.96, +9.34]``: the difference with its corrected interval."""
    return f"{d['dice_diff']:+.2f} {_interval(*d['ci95'])}"


def _p(d: dict) -> str:
    return f"{d.get('p_holm', d['p']):.3g}"


def _best(values: dict, higher: bool) -> float | None:
    vals = [v for v in values.values() if np.isfinite(v)]
    return (max if higher else min)(vals) if vals else None


def table_cells(table: dict, unit: str = "px") -> tuple[list[str], list[list[tuple[str, bool]]]]:
    """Table II's header and rows as text cells with a "best in its column" flag: mean ± std over all
    test cases per metric (region metrics in %), Dice mean ± std over folds, the Dice difference to
    ``none`` in points with its corrected 95% interval, the t-interval over fold means, and the
    corrected test's p-value, Holm-adjusted over the table.
    Rendered by :func:`markdown_table` and by the HTML report."""
    best = {m: _best({s: e[m]["mean"] for s, e in table.items()}, HIGHER_IS_BETTER[m]) for m in METRICS}
    heads = ["strategy"] + [f"{HEADERS[m]} {'↑' if HIGHER_IS_BETTER[m] else '↓'}"
                            + (f" ({unit})" if m in ("hd95", "assd") else "") for m in METRICS]
    heads += ["Dice over folds", "ΔDice vs none [corrected 95% CI]", "95% CI over fold means", "p (corrected, Holm)"]
    rows = []
    for s, e in table.items():
        cells = [(s, False)]
        for m in METRICS:
            scale = 100.0 if HIGHER_IS_BETTER[m] else 1.0
            cells.append((f"{e[m]['mean'] * scale:.2f} ± {e[m]['std'] * scale:.2f}",
                          best[m] is not None and bool(np.isclose(e[m]["mean"], best[m]))))
        folds = e.get("dice_folds")
        cells.append(("—" if not folds else f"{folds['mean'] * 100:.2f} ± {folds['std'] * 100:.2f}", False))
        vs = e.get("vs_none")
        cells.append(("—" if vs is None else _ci(vs), False))
        cells.append(("—" if vs is None else _interval(*vs["ci95_folds"]), False))
        cells.append(("—" if vs is None else _p(vs), False))
        rows.append(cells)
    return heads, rows


def lesion_cells(table: dict, unit: str = "px") -> tuple[list[str], list[list[tuple[str, bool]]]]:
    """Lesion cases (non-empty reference) and empty references: Dice / HD95 / ASSD over lesion cases
    (mean ± std) and the false-positive rate on empty references, best per column flagged."""
    heads = ["strategy", "lesion Dice ↑", f"lesion HD95 ↓ ({unit})", f"lesion ASSD ↓ ({unit})",
             "FP rate on empty ↓", "lesion cases / empty references"]
    best = {m: _best({s: e["lesion"][m]["mean"] for s, e in table.items() if "lesion" in e}, HIGHER_IS_BETTER[m])
            for m in LESION_METRICS}
    best_fp = _best({s: e["empty"]["fp_rate"] for s, e in table.items() if "empty" in e}, False)
    rows = []
    for s, e in table.items():
        if "lesion" not in e:
            continue
        cells = [(s, False)]
        for m in LESION_METRICS:
            v = e["lesion"][m]
            scale = 100.0 if HIGHER_IS_BETTER[m] else 1.0
            cells.append(("—" if not np.isfinite(v["mean"]) else f"{v['mean'] * scale:.2f} ± {v['std'] * scale:.2f}",
                          best[m] is not None and np.isfinite(v["mean"]) and bool(np.isclose(v["mean"], best[m]))))
        fp = e["empty"]["fp_rate"]
        cells.append(("—" if not np.isfinite(fp) else f"{fp * 100:.1f}%",
                      best_fp is not None and np.isfinite(fp) and bool(np.isclose(fp, best_fp))))
        cells.append((f"{e['lesion']['cases']} / {e['empty']['references']}", False))
        rows.append(cells)
    return heads, rows


def contrast_lines(result: dict) -> list[str]:
    """One sentence per contrast (and for ``diffboost`` vs ``none``): the difference with its interval."""
    lines = []
    vs = result["table"].get("diffboost", {}).get("vs_none")
    items = ([("diffboost vs none", vs)] if vs else []) + list(result.get("contrasts", {}).items())
    for name, d in items:
        lines.append(f"{name}: {_ci(d)} Dice points (mean over {d['runs']} runs, {d.get('folds', '?')} folds; corrected "
                     f"95% interval), over fold means {_interval(*d['ci95_folds'])}, p {d['p']:.3g} (Holm {_p(d)}).")
    return lines


STATS_NOTE = ("ΔDice: difference to `none` in Dice points, mean over runs (fold x seed), with the 95% interval of "
              "the corrected repeated k-fold t-test (each fold's seeds averaged, the variance of the fold means x "
              "(1/k + n_test/n_train), t with k − 1 degrees of freedom: runs that share a fold or training data are "
              "not independent); beside it the plain t-interval over the fold means. p: the corrected test's, "
              "Holm-adjusted over every comparison of the table.")


def _md(heads: list[str], rows: list[list[tuple[str, bool]]]) -> str:
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(f"**{t}**" if best else t for t, best in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def markdown_table(table: dict, unit: str = "px") -> str:
    """Table II in Markdown, best per column in bold."""
    return _md(*table_cells(table, unit))


def markdown_tables(result: dict) -> str:
    """Table II, the lesion / empty-case table and the contrasts, as Markdown."""
    unit = result.get("unit", "px")
    folds, seeds = result.get("folds", []), result.get("seeds", [])
    where = "mm" if unit == "mm" else "pixels of the original image"
    text = [markdown_table(result["table"], unit),
            f"All test cases of {len(folds)} folds x {len(seeds)} seeds; mean ± std over cases; Dice, Precision, "
            f"Recall in %; HD95 and ASSD in {where}. Dice over folds: mean ± std of the fold means. {STATS_NOTE} "
            "Empty references "
            "are scored as defined in `diffboost.evaluation.metrics`, never dropped.\n",
            _md(*lesion_cells(result["table"], unit)),
            "Lesion metrics over the cases with a non-empty reference; FP rate: the share of empty references "
            "(normal images; for volumes, slices without foreground) predicted with any foreground.\n"]
    detection = detection_cells(result["table"])
    if detection is not None:
        text += [_md(*detection), DETECTION_NOTE + "\n"]
    lines = contrast_lines(result)
    if lines:
        text.append("\n".join(f"- {x}" for x in lines) + "\n")
    return "\n".join(text)


DETECTION_NOTE = ("Lesion-wise detection: reference lesions are the connected components of the reference (all "
                  "test cases of all folds and seeds); one is found when the prediction covers at least 10% of it; "
                  "recall by size tercile (pixels or voxels of the original grid) of the pooled reference lesions; "
                  "false lesions: predicted components touching no reference lesion, per image.")


def detection_cells(table: dict) -> tuple[list[str], list[list[tuple[str, bool]]]] | None:
    """Lesion recall (overall and by size tercile) and false lesions per image, best per column flagged;
    None when no strategy has detection results."""
    have = {s: e["detection"] for s, e in table.items() if e.get("detection")}
    if not have:
        return None
    first = next(iter(have.values()))
    cuts = first.get("size_terciles")
    names = ["small", "medium", "large"] if cuts else []
    heads = (["strategy", "lesion recall ↑"]
             + ([f"recall, small (≤ {cuts[0]:.0f}) ↑", "recall, medium ↑", f"recall, large (> {cuts[1]:.0f}) ↑"]
                if cuts else []) + ["false lesions / image ↓", "reference lesions"])

    def column(values: dict, higher: bool) -> dict:
        top = _best(values, higher)
        return {k: top is not None and v == top for k, v in values.items()}

    best = {"recall": column({s: d["recall"] for s, d in have.items()}, True),
            "false": column({s: d["false_lesions_per_image"] for s, d in have.items()}, False),
            **{n: column({s: d.get("recall_by_size", {}).get(n, float("nan")) for s, d in have.items()}, True)
               for n in names}}
    rows = []
    for s, d in have.items():
        by = d.get("recall_by_size", {})
        rows.append([(s, False), (f"{100 * d['recall']:.1f}", best["recall"][s])]
                    + [(f"{100 * by.get(n, float('nan')):.1f}", best[n][s]) for n in names]
                    + [(f"{d['false_lesions_per_image']:.2f}", best["false"][s]), (str(d["lesions"]), False)])
    return heads, rows


def write_tables(rows: list[dict], strategies: list[str], out: Path, unit: str = "px",
                 extra: dict | None = None, test_train_ratio: float | None = None) -> dict:
    """Write ``out/{cases.csv, table.csv, table.md, table.json}`` and return the result;
    ``test_train_ratio``: n_test / n_train of the folds (None: from the rows, see :func:`paired`)."""
    out.mkdir(parents=True, exist_ok=True)
    table = summarise(rows, strategies, test_train_ratio)
    pairs = contrasts(rows, strategies, test_train_ratio)
    holm_family(table, pairs)
    buf = io.StringIO()
    if rows:
        fields = list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(buf, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(out / "cases.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["strategy", "cases"] + [f"{m}_{k}" for m in METRICS for k in ("mean", "std")]
               + [f"lesion_{m}_mean" for m in LESION_METRICS] + ["fp_rate_empty", "dice_diff_vs_none", "ci95_low",
                                                                 "ci95_high", "ci95_folds_low", "ci95_folds_high",
                                                                 "p_holm_vs_none"])
    for s, e in table.items():
        vs = e.get("vs_none") or {}
        w.writerow([s, e["cases"]] + [f"{e[m][k]:.6g}" for m in METRICS for k in ("mean", "std")]
                   + [f"{e['lesion'][m]['mean']:.6g}" for m in LESION_METRICS] + [f"{e['empty']['fp_rate']:.6g}"]
                   + ([f"{v:.6g}" for v in (vs["dice_diff"], *vs["ci95"], *vs["ci95_folds"], vs["p_holm"])]
                      if vs else [""] * 6))
    atomic_write_text(out / "table.csv", buf.getvalue())
    result = {"unit": unit, "table": table, "contrasts": pairs, **(extra or {})}
    result.setdefault("folds", sorted({int(r["fold"]) for r in rows}))
    result.setdefault("seeds", sorted({int(r.get("seed", 0)) for r in rows}))
    atomic_write_text(out / "table.md", markdown_tables(result))
    atomic_write_text(out / "table.json", json.dumps(result, indent=1))
    return result
