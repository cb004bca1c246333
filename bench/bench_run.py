"""`diffboost run` end to end on real data with a preset: wall time per stage and Table II.

Runs the one command a user runs (prepare -> fine-tune and generate per fold -> compare -> report)
into a run folder, or summarises a folder that such a run (also `diffboost run` from the shell)
finished: a finished run is only re-checked, not recomputed. Writes
``bench/results/run_<data>_<preset>.json`` with the stage times (from each stage's own record,
so they survive a resumed run) and the Table II rows.

    python bench/bench_run.py --data busi --preset cpu                  # about 2 h on 2 cores
    python bench/bench_run.py --data busi --preset cpu --out /work/runs/busi_cpu
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import REPO, SHARED_DATA, need, report

SOURCES = {"busi": "BUSI"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=list(SOURCES), default="busi")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="run folder (default bench/work/run_<data>_<preset>)")
    args = ap.parse_args()
    from diffboost.run import preset, run

    src = need(SHARED_DATA / SOURCES[args.data])
    out = args.out or REPO / "bench" / "work" / f"run_{args.data}_{args.preset}"
    t0 = time.perf_counter()
    run(src, out, preset(args.preset))
    this_call = time.perf_counter() - t0

    prov = json.loads((out / "provenance.json").read_text())
    table = json.loads((out / "compare" / "table.json").read_text())
    rows = [{"strategy": s, **{m: round(e[m]["mean"] * (100 if m in ("dice", "precision", "recall") else 1), 2)
                               for m in ("dice", "precision", "recall", "hd95", "assd")},
             "dice_gain_vs_none_%": None if e.get("dice_gain_vs_none") is None else round(e["dice_gain_vs_none"] * 100, 1),
             "wilcoxon_p": e.get("wilcoxon_p_vs_none")}
            for s, e in table["table"].items()]
    stages = prov["wall_seconds"]
    print("\nwall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in stages.items())
          + f"; total {sum(stages.values()):.0f} s = {sum(stages.values()) / 3600:.2f} h")
    md = (f"# `diffboost run --preset {args.preset}` on {args.data}\n\n"
          f"Command: `python bench/bench_run.py --data {args.data} --preset {args.preset}`\n\n"
          + "| stage | seconds |\n|---|---|\n" + "".join(f"| {k} | {v:.0f} |\n" for k, v in stages.items())
          + f"| total | {sum(stages.values()):.0f} |\n\n" + (out / "compare" / "table.md").read_text())
    (REPO / "bench" / "results" / f"run_{args.data}_{args.preset}.md").write_text(md)
    report(f"run_{args.data}_{args.preset}", rows, {
        "preset": args.preset, "run_folder": str(out), "wall_seconds_per_stage": stages,
        "wall_seconds_total": round(sum(stages.values()), 1), "seconds_of_this_call": round(this_call, 1),
        "unit": table.get("unit"), "data": prov["data"], "folds": prov["folds"], "versions": prov["versions"]})


if __name__ == "__main__":
    main()
