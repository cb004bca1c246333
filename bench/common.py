"""Shared helpers of the benchmarks: timing, tables, JSON output, real-data paths."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DIFFBOOST_SHARED_DATA", REPO.parent / "shared" / "data"))


def need(path: Path) -> Path:
    if not path.exists():
        print(f"SKIP: {path} not found (benchmarks on real data need ../shared/data)")
        sys.exit(0)
    return path


def timed(fn, repeat: int = 1):
    """Best wall time of ``repeat`` calls (seconds) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def report(name: str, rows: list[dict], extra: dict | None = None, out_dir: Path | None = None) -> Path:
    """Print a Markdown table and write ``bench/results/NAME.json``."""
    cols = list(rows[0]) if rows else []
    print(f"\n## {name}\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    out_dir = out_dir or REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    from diffboost.utils.environment import environment

    path.write_text(json.dumps({"name": name, "rows": rows, **(extra or {}), "environment": environment()}, indent=1))
    print(f"\nwritten {path}")
    return path


def protocol(cfg):
    """A run config as the benchmarks' recorded runs trained: the segmenter under bf16 autocast, which every
    preset said before ``precision: auto`` (bf16 only where the CPU has it natively; elsewhere fp32, about
    10x faster there, and other runs than the archived ones)."""
    import dataclasses

    cfg.seg = dataclasses.replace(cfg.seg, precision="bf16")
    return cfg


def bench_preset(name: str = "cpu"):
    """:func:`protocol` of a preset."""
    from diffboost.runconfig import preset

    return protocol(preset(name))


def write_results(name: str, payload: dict, md: str) -> Path:
    """``bench/results/NAME.json`` (``name`` first, then ``payload``; what JSON cannot hold, as text) and the
    table ``NAME.md``."""
    path = REPO / "bench" / "results" / f"{name}.json"
    path.write_text(json.dumps({"name": name, **payload}, indent=1, default=str))
    path.with_suffix(".md").write_text(md)
    print(f"written {path}")
    return path


def final_rule_seg(steps_per_epoch: int = 25):
    """The `cpu` preset segmenter as ``bench_final_checkpoint.py`` trains it: the learning curve's optimiser
    steps, seed 0, and nnU-Net's checkpoint rule (``min_val_cases`` above any validation part: the last
    epoch is kept)."""
    import dataclasses

    return dataclasses.replace(bench_preset("cpu").seg, steps_per_epoch=steps_per_epoch, seed=0, min_val_cases=10**6)


# ---- the records of finished segmentation runs, kept in bench/results/ (their weights are not) ----

RECORDS = ("run.json", "summary.json", "metrics.csv", "config.yaml", "log.csv")  # what makes a finished run reusable


def _copy_records(run: Path, dest: Path) -> None:
    """A finished run's records, and its self-training teacher's (``teacher/``) where it has one."""
    import shutil

    for sub in (run, run / "teacher"):
        if (sub / "summary.json").exists():
            (dest / sub.relative_to(run)).mkdir(parents=True, exist_ok=True)
            for name in RECORDS:
                if (sub / name).exists():
                    shutil.copy2(sub / name, dest / sub.relative_to(run) / name)


def archive_runs(out: Path, keep: Path) -> int:
    """Copy the records of every finished segmentation run under ``out`` (not its weights) to ``keep``, so
    that a later session without ``bench/work`` reuses them instead of training them again."""
    n = 0
    for summary in out.rglob("seed*/fold*/summary.json"):
        _copy_records(summary.parent, keep / summary.parent.relative_to(out))
        n += 1
    return n


def restore_runs(keep: Path, out: Path) -> int:
    """Put archived run records back where the learning curve looks for them (runs already there stay)."""
    n = 0
    for summary in keep.rglob("seed*/fold*/summary.json") if keep.is_dir() else ():
        dest = out / summary.parent.relative_to(keep)
        if not (dest / "run.json").exists():
            _copy_records(summary.parent, dest)
            n += 1
    return n


def copy_teachers(seg_root: Path, strategies, folds, seeds) -> int:
    """A self-training strategy's teacher trains exactly as the fold's run of its supervised part did (same
    settings, same identity): copy that finished run into ``RUN/teacher`` so that it is not trained again."""
    import shutil

    from diffboost.segmentation.config import semi_of, supervised_part
    from diffboost.segmentation.jobs import run_folder

    n = 0
    for s in [s for s in strategies if semi_of(s) == "self-train"]:
        for seed in seeds:
            for k in folds:
                src = run_folder(seg_root, supervised_part(s), k, seed)
                dest = run_folder(seg_root, s, k, seed) / "teacher"
                if (src / "model").exists() and (src / "summary.json").exists() and not dest.exists():
                    shutil.copytree(src, dest)
                    n += 1
    return n


def checkpoint_rule(runs: dict, ratio: float) -> dict | None:
    """The checkpoint rule on finished runs ``{(fold, seed): run folder}``: test Dice of the checkpoint chosen
    on the validation part against the last epoch's, on the runs whose ``summary.json`` records both
    (``last_epoch_metrics``), with the corrected interval of last − chosen. None when no run records it."""
    from diffboost.segmentation.compare import run_stats

    chosen, last = recorded_dice(runs)
    if not chosen:
        return None
    d = run_stats(last, chosen, ratio)
    return {"runs": len(chosen), "chosen": 100 * sum(chosen.values()) / len(chosen),
            "last_epoch": 100 * sum(last.values()) / len(last), "last_minus_chosen": d["dice_diff"], "ci95": d["ci95"]}


def recorded_dice(runs: dict) -> tuple[dict, dict]:
    """``({key: test Dice of the chosen checkpoint}, {key: of the last epoch})`` of the finished runs
    ``{key: run folder}`` whose ``summary.json`` records both (``last_epoch_metrics``)."""
    chosen, last = {}, {}
    for key, folder in runs.items():
        path = Path(folder) / "summary.json"
        s = json.loads(path.read_text()) if path.exists() else {}
        if (s.get("last_epoch_metrics") or {}).get("dice") is not None:
            chosen[key], last[key] = s["metrics"]["dice"]["mean"], s["last_epoch_metrics"]["dice"]
    return chosen, last


def diff_cell(d: dict | None) -> str:
    """A difference and its interval as a table cell: ``+1.23 [-0.45, +2.91]``, or ``–`` without one."""
    return "–" if not d else f"{d['dice_diff']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"


def budget_suffix(budget: str) -> str:
    """``""`` at the default budget (0.1), else ``_<budget>``: a table at another budget is named for it."""
    return "" if float(budget) == 0.1 else f"_{budget}"


def folds_suffix(folds: list[int], n_folds: int) -> str:
    """``""`` when every fold ran, else ``_foldsA-B-...``: a partial table is named for its folds."""
    return "" if list(folds) == list(range(n_folds)) else "_folds" + "-".join(map(str, folds))


BUDGET_DATA = {"busi": "BUSI", "ddti": "DDTI", "busbra": "BUS-BRA"}


def budget_set(data: str, budget: str, first: str):
    """``bench_budgets.py --data DATA``'s prepared set at ``budget`` (the same partitions and folds), with the
    archived run records put back: ``(its folder, the records' folder, the budget's folder, PreparedSet)``.
    Exits naming ``first`` (the benches to run before) when that prepared set is missing."""
    from diffboost.data.preparation import with_budget
    from diffboost.data.store import PreparedSet
    from diffboost.segmentation.curves import budget_name

    need(SHARED_DATA / BUDGET_DATA[data])
    base = REPO / "bench" / "work" / f"budgets_{data}"
    if not (base / "prepared" / "dataset.json").exists():
        raise SystemExit(f"{base / 'prepared'}: run {first} first (its partitions and folds are these)")
    keep = REPO / "bench" / "results" / f"budgets_{data}_runs"
    print(f"restored {restore_runs(keep, base)} finished run(s) from {keep}")
    root = base / "budgets" / budget_name(budget)
    return base, keep, root, with_budget(PreparedSet(base / "prepared"), budget, root / "prepared")


def fold_generator(job: tuple) -> str:
    """Fine-tune (or resume) fold k's generator with the `cpu` preset and draw its variants, in one torch
    thread: ``job = (prepared, root, k, every, target_style)``. ``every`` trains on the fold's unlabelled
    images too ("no mask" condition, ``mask_dropout`` 0.1); the variants go to ``ROOT/synthetic/foldK``
    (labelled and unlabelled images: the strong views) or, with ``target_style``, to
    ``ROOT/synthetic_diffboost-target/foldK`` (the labelled source images in the target's scanner styles)."""
    import dataclasses

    import torch

    from diffboost.data.store import PreparedSet
    from diffboost.diffusion.train import finetune_fold
    from diffboost.generation.generate import generate
    from diffboost.runconfig import preset

    torch.set_num_threads(1)
    prepared, root, k, every, target_style = job
    cfg = preset("cpu")
    train = dataclasses.replace(cfg.train, unlabelled=every, mask_dropout=0.1 if every else 0.0)
    ps = PreparedSet(prepared)
    model_dir = Path(root) / "models" / f"fold{k}"
    finetune_fold(ps, k, model_dir, cfg.model, train, progress=False)  # or resume, or keep a finished one
    gen = dataclasses.replace(cfg.generate, unlabelled=not target_style, target_style=target_style)
    generate(model_dir / "model", ps, Path(root) / ("synthetic_diffboost-target" if target_style else "synthetic")
             / f"fold{k}", k, gen, progress=False)
    return str(model_dir)
