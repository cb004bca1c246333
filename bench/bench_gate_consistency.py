"""Label consistency of the variants the teacher gate keeps, per gate, from a finished run.

    python bench/bench_gate_consistency.py --run runs/busi --name busi_cpu
    python bench/bench_gate_consistency.py --run runs/hippo --name hippocampus_cpu --gates 0.8

Reads each fold's ``synthetic/foldK/consistency.csv`` (written by ``diffboost run``'s teacher check)
and applies the segmenter's own gate rule (``diffboost.segmentation.data.teacher_gate_keep``: keep a
variant whose teacher Dice is at least gate x the teacher Dice on its real image). For each gate it
gives the share of variants kept and their label consistency, pooled over folds and per text.

The kept variants are chosen by the same teacher that scores them, so their consistency is high by
construction: this says how much of the generator's output agrees with the teacher, not that the
generator preserves labels. Writes ``bench/results/gate_consistency_<name>.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True, help="a finished `diffboost run` folder")
    ap.add_argument("--name", required=True, help="result name: bench/results/gate_consistency_<name>.json")
    ap.add_argument("--gates", default="0.5,0.8,0.9", help="comma-separated gate fractions (no gate is always shown)")
    args = ap.parse_args()
    from diffboost.evaluation.consistency import load_fold_consistencies, summarise, text_key
    from diffboost.segmentation.data import teacher_gate_keep

    checked = load_fold_consistencies(args.run / "synthetic")
    if not checked:
        raise SystemExit(f"{args.run / 'synthetic'}: no fold with a consistency.csv (run `diffboost run` first)")
    folds = [p for p, _, _ in checked]
    table = {p.name: rows for p, _, rows in checked}
    every = [r for p in folds for r in table[p.name]]
    texts = sorted({text_key(r["text"]) for r in every}, key=lambda t: (t != "plain", t))

    def pick(rs: list[dict], text: str) -> list[dict]:
        return rs if text == "all" else [r for r in rs if text_key(r["text"]) == text]

    rows = []
    for gate in [None, *(float(g) for g in args.gates.split(","))]:
        kept: list[dict] = []
        for p in folds:
            recs = table[p.name]
            keep = set(range(len(recs))) if gate is None else teacher_gate_keep(p, len(recs), gate)
            kept += [r for r in recs if int(r["variant_index"]) in keep]
        for text in ["all", *texts]:
            n, s = len(pick(every, text)), summarise(pick(kept, text))  # the pooled summary the report gives
            rows.append({"gate": "none" if gate is None else gate, "text": text, "variants": n, "kept": s["variants"],
                         "kept share": round(s["variants"] / n, 3), "consistency of kept": round(s["consistency"], 3)})
    report(f"gate_consistency_{args.name}", rows, {"run": str(args.run), "folds": [p.name for p in folds]})


if __name__ == "__main__":
    main()
