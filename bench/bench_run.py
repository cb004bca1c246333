"""`diffboost run` end to end on real data with a preset: wall time per stage and Table II.

Runs the one command a user runs (prepare -> fine-tune and generate per fold -> compare -> report)
into a run folder, or summarises a folder that such a run (also `diffboost run` from the shell)
finished: a finished run is only re-checked, not recomputed. Writes
``bench/results/run_<data>_<preset>.json`` with the stage times (from each stage's own record,
so they survive a resumed run) and the Table II rows.

    python bench/bench_run.py --data busi --preset cpu                  # about 2 h on 2 cores
    python bench/bench_run.py --data busi --preset cpu --out /work/runs/busi_cpu
    python bench/bench_run.py --data hippocampus --preset cpu           # with configs/hippocampus_cpu.yaml
    python bench/bench_run.py --data ddti --preset cpu                  # thyroid nodules as downloaded
    python bench/bench_run.py --data busi-5fold --preset cpu --out runs/busi5   # configs/busi_cpu_5fold.yaml

Each data set runs with the YAML of ``configs/`` named in SOURCES laid over the preset (the same
as ``diffboost run --config``), so the shell command and this script train the same models.

Beside it, the run's own records: ``run_<data>_<preset>_table.md|json`` (the report's Table II),
``_times.json`` (each stage's own record), ``_provenance.json``, ``_consistency.json`` (the teacher's
label consistency per fold, and pooled over folds overall and per augmentation text) and
``_ablation_<name>.json`` for each ablation in the run folder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import REPO, SHARED_DATA, need, protocol, report

# data name -> (folder under ../shared/data, YAML laid over the preset or None)
SOURCES = {"busi": ("BUSI", None),
           "busi-5fold": ("BUSI", REPO / "configs" / "busi_cpu_5fold.yaml"),
           "ddti": ("DDTI", None),
           "hippocampus": ("MSD/Task04_Hippocampus", REPO / "configs" / "hippocampus_cpu.yaml")}


def _row(name: str, e: dict) -> dict:
    """One Table II row: overlap in %, distances in the table's unit, the gain over none with its interval."""
    def r(v, scale=1.0):
        return None if v is None else round(v * scale, 2)
    gain, lesion = e.get("vs_none") or {}, e.get("lesion") or {}
    ci = gain.get("ci95") or [None, None]
    folds = gain.get("ci95_folds") or [None, None]
    return {"strategy": name, "dice": r(e["dice"]["mean"], 100), "precision": r(e["precision"]["mean"], 100),
            "recall": r(e["recall"]["mean"], 100), "hd95": r(e["hd95"]["mean"]), "assd": r(e["assd"]["mean"]),
            "lesion dice": r(lesion.get("dice", {}).get("mean"), 100),
            "lesion hd95": r(lesion.get("hd95", {}).get("mean")),
            "fp rate empty %": r((e.get("empty") or {}).get("fp_rate"), 100),
            "dDice vs none": r(gain.get("dice_diff")), "corrected ci95 low": r(ci[0]), "corrected ci95 high": r(ci[1]),
            "fold-means ci95 low": r(folds[0]), "fold-means ci95 high": r(folds[1]), "p holm": gain.get("p_holm")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=list(SOURCES), default="busi")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="run folder (default bench/work/run_<data>_<preset>)")
    args = ap.parse_args()
    from diffboost.run import load_run_config, run

    folder, overlay = SOURCES[args.data]
    src = need(SHARED_DATA / folder)
    out = args.out or REPO / "bench" / "work" / f"run_{args.data}_{args.preset}"
    t0 = time.perf_counter()
    run(src, out, protocol(load_run_config(overlay, args.preset)))
    this_call = time.perf_counter() - t0

    prov = json.loads((out / "provenance.json").read_text())
    table = json.loads((out / "compare" / "table.json").read_text())
    rows = [_row(s, e) for s, e in table["table"].items()]
    stages = prov["wall_seconds"]  # each stage's own record (segmentation: summed over its runs)
    clock: dict[str, float] = {}  # wall clock per stage, added up over every finished `run` call
    for line in (out / "run_calls.jsonl").read_text().splitlines():
        for k, v in json.loads(line)["seconds"].items():
            clock[k] = clock.get(k, 0.0) + v
    print("\nwall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in clock.items())
          + f"; total {sum(clock.values()):.0f} s = {sum(clock.values()) / 3600:.2f} h")
    shell = (f"diffboost run --data ../shared/data/{folder} --preset {args.preset}"
             + (f" --config {overlay.relative_to(REPO)}" if overlay else ""))
    md = (f"# `diffboost run --preset {args.preset}` on {args.data}\n\n"
          f"Command: `python bench/bench_run.py --data {args.data} --preset {args.preset}` "
          f"(the same models as `{shell}`)\n\n"
          + "Wall clock per stage, over every `run` call that finished (a stage reused by a later call adds "
          "only its check):\n\n| stage | seconds |\n|---|---|\n" + "".join(f"| {k} | {v:.0f} |\n" for k, v in clock.items())
          + f"| total | {sum(clock.values()):.0f} |\n\nEach stage's own record (segmentation summed over its runs): "
          + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()) + "\n\n" + (out / "compare" / "table.md").read_text())
    (REPO / "bench" / "results" / f"run_{args.data}_{args.preset}.md").write_text(md)
    report(f"run_{args.data}_{args.preset}", rows, {
        "preset": args.preset, "run_folder": str(out), "wall_clock_seconds_per_stage": clock,
        "wall_clock_seconds_total": round(sum(clock.values()), 1), "stage_records_seconds": stages,
        "seconds_of_this_call": round(this_call, 1),
        "command": shell, "overlay": None if overlay is None else str(overlay.relative_to(REPO)),
        "contrasts": table.get("contrasts"), "seeds": table.get("seeds"), "unit": table.get("unit"), "data": prov["data"], "folds": prov["folds"], "versions": prov["versions"]})
    for p in copy_records(out, f"run_{args.data}_{args.preset}", prov):
        print(f"written {p}")


def consistency_record(out: Path) -> dict | None:
    """Label consistency of the run's synthetic sets, and of each ablation's sets that a teacher checked
    (``diffboost consistency --synthetic``), keyed ``param=value``."""
    record = _pooled_consistency(out / "synthetic")
    if record is None:
        return None
    swept = {f"{d.parent.parent.name}={d.parent.name}": _pooled_consistency(d)
             for d in sorted((out / "ablations").glob("*/*/synthetic"))}
    return {**record, "ablations": {k: v for k, v in swept.items() if v is not None}}


def _pooled_consistency(root: Path) -> dict | None:
    """Per fold, and pooled over folds (overall and per text), of the sets ``root/foldK``."""
    from diffboost.evaluation.consistency import LabelConsistency, load_fold_consistencies

    checked = load_fold_consistencies(root)
    if not checked:
        return None
    pooled = LabelConsistency()
    pooled.rows = [r for _, _, rows in checked for r in rows]
    folds = {p.name: {"overall": s["overall"], "per_text": s["per_text"], "teacher": s["teacher"]["path"]}
             for p, s, _ in checked}
    return {"folds": folds, "pooled": pooled.aggregate(), "pooled_per_text": pooled.aggregate("text")}


def copy_records(out: Path, name: str, prov: dict) -> list[Path]:
    """The run's table, stage times, provenance (``prov``, its provenance.json), label consistency and
    ablations, as ``NAME_*`` results."""
    res, written = REPO / "bench" / "results", []

    def put(suffix: str, text: str) -> None:
        (res / f"{name}_{suffix}").write_text(text)
        written.append(res / f"{name}_{suffix}")

    put("table.md", (out / "compare" / "table.md").read_text())
    put("table.json", (out / "compare" / "table.json").read_text())
    put("times.json", json.dumps(prov["wall_seconds"], indent=1))
    put("provenance.json", json.dumps(prov, indent=1))
    record = consistency_record(out)
    if record is not None:
        put("consistency.json", json.dumps(record, indent=1))
    for f in sorted((out / "ablations").glob("*.json")):
        put(f"ablation_{f.name}", f.read_text())
    return written


if __name__ == "__main__":
    main()
