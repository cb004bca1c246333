"""The evidence of a finished comparison, recomputed with the intervals that count what varies.

For each run record ``bench/results/run_<data>_cpu_table.json`` (the per-run Dice of every strategy,
written by ``bench/bench_run.py``) and its ``_provenance.json`` (the fold sizes), every gain of
Table II (each strategy vs ``none``) and every contrast (``diffboost`` vs ``mix-classic``,
``diffboost+classic`` vs ``classic``, ``diffboost`` vs ``classic``) with

- the interval the README used to report: Student's t over the fold x seed runs as if independent;
- the corrected repeated k-fold t-test (``diffboost.evaluation.stats.corrected_interval``: each fold's
  seeds averaged, var x (1/k + n_test/n_train), t with k - 1 degrees of freedom), the headline now;
- the plain t-interval over the fold means beside it;
- the corrected test's p, Holm-adjusted over every comparison of the table;

and the protocol's power: the smallest difference it resolves, the half-width of the corrected
interval of ``diffboost+classic`` - ``classic``. The record's ablations (``<record>_ablation_*.json``)
get the same: each value's gain over the swept strategy's baseline and over the run's setting, and
the value that test Dice would have picked (these records were made before sweeps kept validation
Dice, so none of them can say which value validation Dice chooses). Reads records only (seconds):

    python bench/bench_intervals.py                  # busi and hippocampus
    python bench/bench_intervals.py --records run_busi_cpu run_busi-5fold_cpu

Writes ``bench/results/intervals_<record>.json``.
"""

from __future__ import annotations

import argparse
import json

from common import REPO, report

from diffboost.evaluation.stats import holdout_ratio
from diffboost.segmentation.compare import CONTRASTS, holm_family, run_stats


def _runs(entry: dict) -> dict:
    """``dice_runs`` ("fold0/seed1" -> Dice) as ``{(fold, seed): Dice}``."""
    out = {}
    for key, v in entry["dice_runs"].items():
        fold, seed = key.split("/")
        out[(int(fold[4:]), int(seed[4:]))] = v
    return out


def evidence(record: str) -> tuple[list[dict], dict]:
    res = REPO / "bench" / "results"
    table = json.loads((res / f"{record}_table.json").read_text())
    folds = json.loads((res / f"{record}_provenance.json").read_text())["folds"]
    ratio = holdout_ratio(folds)
    runs = {s: _runs(e) for s, e in table["table"].items()}
    rows_table = {s: {"vs_none": run_stats(runs[s], runs["none"], ratio)} for s in runs if s != "none"}
    pairs = {f"{a} vs {b}": run_stats(runs[a], runs[b], ratio) for a, b in CONTRASTS if a in runs and b in runs}
    holm_family(rows_table, pairs)
    items = [(f"{s} vs none", e["vs_none"]) for s, e in rows_table.items()] + list(pairs.items())
    rows = []
    for name, d in items:
        naive = d["descriptive"]["ci95_runs_uncorrected"]
        rows.append({"comparison": name, "dDice": round(d["dice_diff"], 2),
                     "t over runs (as reported)": f"[{naive[0]:+.2f}, {naive[1]:+.2f}]",
                     "corrected 95% CI": f"[{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]",
                     "over fold means": f"[{d['ci95_folds'][0]:+.2f}, {d['ci95_folds'][1]:+.2f}]",
                     "p": round(d["p"], 4), "p Holm": round(d["p_holm"], 4),
                     "corrected CI excludes 0": bool(d["ci95"][0] > 0 or d["ci95"][1] < 0)})
    power = pairs.get("diffboost+classic vs classic")
    projected = {}
    if power is not None:
        diffs = {k: 100 * (runs["diffboost+classic"][k] - runs["classic"][k]) for k in runs["classic"]}
        projected = {f"{k} folds x {r} seeds": projected_half_width(diffs, k, r) for k, r in ((3, 2), (5, 1), (5, 2))}
    extra = {"record": record, "folds": len(folds), "seeds": table.get("seeds"), "test_train_ratio": ratio,
             "resolvable_difference": None if power is None else (power["ci95"][1] - power["ci95"][0]) / 2,
             "projected_resolvable_difference": projected,
             "comparisons": dict(items)}
    return rows, extra


def projected_half_width(diffs: dict, folds: int, seeds: int) -> float:
    """The corrected half-width another protocol (``folds`` x ``seeds``, n_test/n_train = 1/(folds-1)) would
    get for the same contrast, from the fold and seed variances of these paired differences (one-way
    analysis of variance by fold; the fold variance taken as 0 when the seeds vary more). A projection
    from a few degrees of freedom: it says which protocol to try, not what it will give."""
    import numpy as np
    from scipy.stats import t

    by: dict[int, list[float]] = {}
    for (k, _), d in diffs.items():
        by.setdefault(k, []).append(d)
    r = min(len(v) for v in by.values())
    ms_w = float(np.mean([np.var(v, ddof=1) for v in by.values()])) if r > 1 else 0.0
    fold_means = np.array([np.mean(v) for v in by.values()])
    s_f = max(0.0, float(fold_means.var(ddof=1)) - ms_w / r)
    var_fold_value = s_f + ms_w / seeds
    return float(t.ppf(0.975, folds - 1) * np.sqrt(var_fold_value * (1 / folds + 1 / (folds - 1))))


def ablation_evidence(record: str) -> list[dict]:
    """Each value of each ablation of ``record`` against the baseline and the run's setting (the run's
    own Dice per run from its table), with the corrected interval."""
    res = REPO / "bench" / "results"
    table = json.loads((res / f"{record}_table.json").read_text())
    ratio = holdout_ratio(json.loads((res / f"{record}_provenance.json").read_text())["folds"])
    runs = {s: _runs(e) for s, e in table["table"].items()}
    rows = []
    for f in sorted(res.glob(f"{record}_ablation_*.json")):
        ab = json.loads(f.read_text())
        strategy, reference = ab["strategy"], ab["reference"]
        if ab["param"] == "network":
            continue  # its baseline is trained per backbone, not the table's
        keys = [(k, sd) for sd in ab["seeds"] for k in ab["folds"]]  # the order ablate trained them in
        for v in ab["values"]:
            mine = dict(zip(keys, ab["dice"][strategy][str(v)]["per_run"]))
            over_ref = run_stats(mine, runs[reference], ratio)
            own = ab["gain"][str(v)].get("over the run's setting")
            over_own = None if own is None else run_stats(mine, runs[strategy], ratio)
            rows.append({"ablation": f"{strategy}: {ab['param']} = {v}", "Dice": round(100 * sum(mine.values()) / len(mine), 2),
                         "over baseline": f"{over_ref['dice_diff']:+.2f} [{over_ref['ci95'][0]:+.2f}, {over_ref['ci95'][1]:+.2f}]",
                         "baseline": reference,
                         "over the run's setting": "—" if over_own is None else
                         f"{over_own['dice_diff']:+.2f} [{over_own['ci95'][0]:+.2f}, {over_own['ci95'][1]:+.2f}]",
                         "validation Dice": "not recorded" if "val_dice" not in ab else round(100 * ab["val_dice"][strategy][str(v)], 2)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", nargs="+", default=["run_busi_cpu", "run_hippocampus_cpu"])
    args = ap.parse_args()
    for record in args.records:
        if not (REPO / "bench" / "results" / f"{record}_table.json").exists():
            print(f"SKIP: bench/results/{record}_table.json not found (run bench/bench_run.py first)")
            continue
        rows, extra = evidence(record)
        ablations = ablation_evidence(record)
        report(f"intervals_{record}", rows, {**extra, "ablations": ablations})
        if ablations:
            report(f"intervals_{record}_ablations", ablations, {"record": record})
        print(f"{record}: {extra['folds']} folds x {len(extra['seeds'] or [])} seeds, n_test/n_train "
              f"{extra['test_train_ratio']:.3f}; smallest resolvable difference (half-width of the corrected "
              f"interval of diffboost+classic - classic): {extra['resolvable_difference']:.2f} Dice points; projected "
              + ", ".join(f"{k}: {v:.2f}" for k, v in extra["projected_resolvable_difference"].items()))


if __name__ == "__main__":
    main()
