"""How much does choosing the checkpoint on a small validation part pick noise? From the records of finished
runs (``log.csv``: validation Dice per epoch), without training anything and without test data:

- the epoch each run chose, and how far the best validation Dice lies above the last epoch's
  (``max − last``, in points). With a large validation part this gap bounds what selection can gain; with
  a small one it is mostly the noise that selection rides on;
- the runs that also record their last epoch's test Dice (``summary.json``: ``last_epoch_metrics``) are
  counted, but their test numbers are left to the benchmarks that own them (a rule is not chosen on test folds).

    python bench/bench_checkpoint_rule.py                       # BUSI, DDTI and BUS-BRA learning-curve records
    python bench/bench_checkpoint_rule.py --records bench/results/budgets_busi_runs

Reads the archived records in ``bench/results/budgets_<data>_runs/`` (what ``bench_budgets.py`` and the
semi-supervised benches keep), one thread, seconds. Writes ``bench/results/checkpoint_rule.{json,md}``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from common import REPO, write_results


def _budget(run: Path, records: Path) -> str:
    parts = run.relative_to(records).parts
    return f"{float(parts[1]):.0%}" if parts[0] == "budgets" else "100%"


def gaps(records: Path) -> list[dict]:
    """One row per finished run under ``records``: data, budget, strategy, validation cases, chosen epoch,
    epochs, max − last validation Dice (points)."""
    rows = []
    for log in sorted(records.rglob("seed*/fold*/log.csv")):
        run = log.parent
        if not (run / "summary.json").exists() or run.parents[2].name != "seg":
            continue  # unfinished, or another protocol (seg_2x: the convergence check's twice the steps)
        with log.open(newline="") as fh:
            val = [float(r["val_dice"]) for r in csv.DictReader(fh) if r["val_dice"]]
        if not val:
            continue  # no validation part: the last epoch was kept
        s = json.loads((run / "summary.json").read_text())
        rows.append({"records": records.name, "budget": _budget(run, records), "strategy": s["strategy"],
                     "validation_cases": s.get("validation_cases"), "chosen_epoch": s["best_epoch"],
                     "epochs": s["epochs"], "gap": 100 * (max(val) - val[-1]),
                     "last_epoch_recorded": bool(s.get("last_epoch_metrics"))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=Path, nargs="*", default=[REPO / "bench" / "results" / f"budgets_{d}_runs"
                                                                  for d in ("busi", "ddti", "busbra")])
    args = ap.parse_args()
    rows = [r for rec in args.records if rec.is_dir() for r in gaps(rec)]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["records"], r["budget"], r["strategy"]), []).append(r)
    table = []
    for (rec, budget, strategy), g in sorted(groups.items(), key=lambda kv: (kv[0][0], float(kv[0][1][:-1]), kv[0][2])):
        table.append({"records": rec, "budget": budget, "strategy": strategy, "runs": len(g),
                      "validation_cases": statistics.median(r["validation_cases"] for r in g),
                      "chosen_epoch_median": statistics.median(r["chosen_epoch"] for r in g),
                      "chosen_in_first_third": sum(r["chosen_epoch"] < r["epochs"] / 3 for r in g),
                      "gap_mean": statistics.mean(r["gap"] for r in g),
                      "last_epoch_recorded": sum(r["last_epoch_recorded"] for r in g)})
    lines = ["Checkpoint choice on the validation part, per data set, budget and strategy (records of finished runs; "
             "no test data): median validation cases, median chosen epoch (of 30), runs that chose an epoch in the "
             "first third, and the mean of best − last validation Dice (points).", "",
             "| records | budget | strategy | runs | val cases | chosen epoch | in first third | best − last val |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {t['records']} | {t['budget']} | {t['strategy']} | {t['runs']} | {t['validation_cases']:g} | "
              f"{t['chosen_epoch_median']:g} | {t['chosen_in_first_third']} | {t['gap_mean']:.2f} |" for t in table]
    md = "\n".join(lines) + "\n"
    print(md)
    write_results("checkpoint_rule", {"records": [str(r) for r in args.records], "table": table, "runs": rows,
                                      "threads": 1}, md)


if __name__ == "__main__":
    main()
