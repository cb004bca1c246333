"""Every strategy on the same folds and seeds, and the paper's Table II.

``compare`` trains ``seg/<strategy>/fold<k>/`` for each strategy and fold (finished runs are
reused), then writes into ``compare/``:

    cases.csv    every test case of every fold under every strategy (the per-case rows)
    table.csv    strategy x metric: mean and std over all test cases of all folds
    table.md     the same as Markdown, best value per column in bold, Dice / Precision / Recall in %
    table.json   the same, with per-fold means, the relative Dice gain over ``none`` and a paired
                 Wilcoxon test of each strategy's per-case Dice against ``none``
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import numpy as np

from ..data.store import PreparedSet
from ..evaluation.metrics import HIGHER_IS_BETTER, METRICS
from ..utils.atomic import atomic_write_text
from .config import DEFAULT_COMPARE, SegConfig, parse_strategy
from .trainer import train_seg

HEADERS = {"dice": "Dice", "precision": "Precision", "recall": "Recall", "hd95": "HD95", "assd": "ASSD"}


def compare(prepared: str | Path | PreparedSet, strategies=DEFAULT_COMPARE, cfg: SegConfig | None = None,
            out: str | Path | None = None, folds: list[int] | None = None, progress: bool = True,
            replace_stale: bool = False) -> dict:
    """Run (or reuse) every strategy on every fold; write and return the comparison table."""
    cfg = cfg or SegConfig()
    ps = prepared if isinstance(prepared, PreparedSet) else PreparedSet(prepared)
    out = Path(out) if out else ps.root.parent
    strategies = list(dict.fromkeys(strategies))
    for s in strategies:
        parse_strategy(s)
    folds = list(range(len(ps.folds))) if folds is None else list(folds)
    for k in folds:
        ps.fold(k)
    summaries = []
    for s in strategies:
        for k in folds:
            summaries.append(train_seg(ps, k, dataclasses.replace(cfg, aug=s),
                                       out / "seg" / s / f"fold{k}", progress=progress,
                                       replace_stale=replace_stale))
    rows = []
    for s in strategies:
        for k in folds:
            with open(out / "seg" / s / f"fold{k}" / "metrics.csv", newline="") as fh:
                rows += list(csv.DictReader(fh))
    return write_tables(rows, strategies, out / "compare", unit="mm" if ps.meta.get("is_3d") else "px",
                        extra={"folds": folds, "config": cfg.identity(), "prepared": str(ps.root.resolve()),
                               "train_seconds": {f"{s['strategy']}/fold{s['fold']}": s["train_seconds"]
                                                 for s in summaries}})


def summarise(rows: list[dict], strategies: list[str]) -> dict:
    """strategy -> metric -> {mean, std, per_fold}, plus the Dice gain and Wilcoxon p against ``none``."""
    from scipy.stats import wilcoxon

    table: dict = {}
    by = {s: [r for r in rows if r["strategy"] == s] for s in strategies}
    for s, rs in by.items():
        if not rs:
            continue
        entry: dict = {"cases": len(rs)}
        for m in METRICS:
            v = np.array([float(r[m]) for r in rs])
            folds = sorted({int(r["fold"]) for r in rs})
            entry[m] = {"mean": float(v.mean()), "std": float(v.std()),
                        "per_fold": {str(k): float(np.mean([float(r[m]) for r in rs if int(r["fold"]) == k]))
                                     for k in folds}}
        table[s] = entry
    base = by.get("none")
    if base:
        ref = {(r["fold"], r["case_id"]): float(r["dice"]) for r in base}
        for s, rs in by.items():
            if s == "none" or not rs:
                continue
            paired = [(float(r["dice"]), ref[(r["fold"], r["case_id"])]) for r in rs if (r["fold"], r["case_id"]) in ref]
            a, b = np.array(paired).T if paired else (np.array([]), np.array([]))
            gain = (a.mean() - b.mean()) / b.mean() if len(a) and b.mean() > 0 else float("nan")
            p = float(wilcoxon(a, b).pvalue) if len(a) > 1 and np.any(a != b) else 1.0
            table[s]["dice_gain_vs_none"] = float(gain)
            table[s]["wilcoxon_p_vs_none"] = p
    return table


def table_cells(table: dict, unit: str = "px") -> tuple[list[str], list[list[tuple[str, bool]]]]:
    """Table II's header and rows as text cells with a "best in its column" flag: mean ± std per
    metric (region metrics in %), the Dice gain over ``none`` and the Wilcoxon p. Rendered by
    :func:`markdown_table` and by the HTML report."""
    best = {}
    for m in METRICS:
        vals = {s: e[m]["mean"] for s, e in table.items()}
        if vals:
            best[m] = (max if HIGHER_IS_BETTER[m] else min)(vals.values())
    heads = ["strategy"] + [f"{HEADERS[m]} {'↑' if HIGHER_IS_BETTER[m] else '↓'}"
                            + (f" ({unit})" if m in ("hd95", "assd") else "") for m in METRICS]
    heads += ["Dice gain vs none", "p (Wilcoxon, Dice)"]
    rows = []
    for s, e in table.items():
        cells = [(s, False)]
        for m in METRICS:
            scale = 100.0 if HIGHER_IS_BETTER[m] else 1.0
            cells.append((f"{e[m]['mean'] * scale:.2f} ± {e[m]['std'] * scale:.2f}", bool(np.isclose(e[m]["mean"], best[m]))))
        gain = e.get("dice_gain_vs_none")
        p = e.get("wilcoxon_p_vs_none")
        cells.append(("—" if gain is None else f"{gain * 100:+.1f}%", False))
        cells.append(("—" if p is None else f"{p:.3g}", False))
        rows.append(cells)
    return heads, rows


def markdown_table(table: dict, unit: str = "px") -> str:
    """Table II in Markdown, best per column in bold."""
    heads, rows = table_cells(table, unit)
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(f"**{t}**" if best else t for t, best in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict], strategies: list[str], out: Path, unit: str = "px",
                 extra: dict | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    table = summarise(rows, strategies)
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(out / "cases.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["strategy", "cases"] + [f"{m}_{k}" for m in METRICS for k in ("mean", "std")])
    for s, e in table.items():
        w.writerow([s, e["cases"]] + [f"{e[m][k]:.6g}" for m in METRICS for k in ("mean", "std")])
    atomic_write_text(out / "table.csv", buf.getvalue())
    md = markdown_table(table, unit)
    note = ("\nMean ± std over all test cases of all folds; Dice, Precision, Recall in %; HD95 and ASSD in "
            f"{'mm' if unit == 'mm' else 'pixels of the original image'}. Empty masks are scored as defined "
            "in `diffboost.evaluation.metrics`, never dropped.\n")
    atomic_write_text(out / "table.md", md + note)
    result = {"unit": unit, "table": table, **(extra or {})}
    atomic_write_text(out / "table.json", json.dumps(result, indent=1))
    return result
