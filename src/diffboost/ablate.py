"""``diffboost ablate DIR --sweep n=1,3,5``: the paper's ablations on a finished run folder.

Sweeps the augmentation ratio ``n``, ``alpha``, the ``patch`` size or the ``network`` of the
``diffboost`` strategy with every other option as in ``DIR/run.yaml``, on the same folds and seeds,
reusing the generated variants (a larger ``n`` than was generated only adds the missing ones). For
``network`` the ``none`` baseline is trained with each backbone too (the paper's Fig. 7). Runs go to
``DIR/ablations/<param>/<value>/<strategy>/foldK``; ``DIR/ablations/<param>.json`` and ``.png`` hold
the table and the plot (mean Dice with a band of ± one std over folds, against the baseline).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from .utils.atomic import atomic_write_bytes, atomic_write_text

SWEEPABLE = {"n": int, "alpha": float, "patch": int, "network": str}


def parse_sweep(text: str) -> tuple[str, list]:
    """``"alpha=0,0.2,1"`` -> ("alpha", [0.0, 0.2, 1.0])."""
    name, _, values = text.partition("=")
    name = name.strip()
    if name not in SWEEPABLE or not values.strip():
        raise ValueError(f"--sweep expects NAME=V1,V2,... with NAME one of {', '.join(SWEEPABLE)}, got {text!r}")
    try:
        return name, [SWEEPABLE[name](v.strip()) for v in values.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--sweep {name}: cannot read the values {values!r}") from None


def ablate(run_dir: str | Path, param: str, values: list, progress: bool = True) -> dict:
    from .data.store import PreparedSet
    from .generation.generate import generate
    from .run import load_run_config
    from .segmentation.trainer import train_seg

    run_dir = Path(run_dir)
    if not (run_dir / "run.yaml").exists():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no run.yaml); make one with `diffboost run`")
    cfg = load_run_config(run_dir / "run.yaml")
    ps = PreparedSet(run_dir / "prepared")
    folds = list(cfg.compare.folds) if cfg.compare.folds is not None else list(range(len(ps.folds)))
    if param == "n":  # reuse what exists: generation only adds the missing variants
        for k in folds:
            model = run_dir / "models" / f"fold{k}" / "model"
            if not model.exists():
                raise FileNotFoundError(f"{model}: no diffusion model for fold {k}; run `diffboost run` first")
            generate(model, ps, run_dir / "synthetic" / f"fold{k}", k,
                     dataclasses.replace(cfg.generate, n=max(max(values), cfg.generate.n)), progress=progress)
    strategies = ["none", "diffboost"] if param == "network" else ["diffboost"]
    results: dict = {"param": param, "values": values, "folds": folds, "dice": {}, "baseline": None}
    for v in values:
        for s in strategies:
            seg = dataclasses.replace(cfg.seg, aug=s, **{param: v})
            means = []
            same_as_compare = seg == dataclasses.replace(cfg.seg, aug=s)
            for k in folds:
                out = run_dir / "ablations" / param / str(v) / s / f"fold{k}"
                if same_as_compare and (run_dir / "seg" / s / f"fold{k}" / "summary.json").exists():
                    out = run_dir / "seg" / s / f"fold{k}"  # the comparison trained exactly this one already
                means.append(train_seg(ps, k, seg, out, progress=progress, replace_stale=True)["metrics"]["dice"]["mean"])
            results["dice"].setdefault(s, {})[str(v)] = {"mean": float(np.mean(means)), "std": float(np.std(means)),
                                                          "per_fold": means}
    if param != "network":
        base = [json.loads((run_dir / "seg" / "none" / f"fold{k}" / "summary.json").read_text())["metrics"]["dice"]["mean"]
                for k in folds if (run_dir / "seg" / "none" / f"fold{k}" / "summary.json").exists()]
        results["baseline"] = float(np.mean(base)) if len(base) == len(folds) else None
    (run_dir / "ablations").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "ablations" / f"{param}.json", json.dumps(results, indent=1))
    atomic_write_bytes(run_dir / "ablations" / f"{param}.png", plot(results))
    return results


def plot(results: dict) -> bytes:
    """Fig. 6 / 7 style: mean Dice per value with a ± std band over folds, and the baseline's level."""
    from .report.figures import _plt, _png

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    values = [str(v) for v in results["values"]]
    x = np.arange(len(values)) if results["param"] == "network" else np.asarray(results["values"], float)
    for s, per in results["dice"].items():
        m = np.array([per[v]["mean"] for v in values]) * 100
        sd = np.array([per[v]["std"] for v in values]) * 100
        ax.plot(x, m, marker="o", label=s)
        ax.fill_between(x, m - sd, m + sd, alpha=0.2)
    if results.get("baseline") is not None:
        ax.axhline(results["baseline"] * 100, color="grey", ls="--", label="none (baseline)")
    if results["param"] == "network":
        ax.set_xticks(x, values, rotation=20)
    ax.set(xlabel=results["param"], ylabel="Dice (%)", title=f"ablation: {results['param']} (mean ± std over folds)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)
