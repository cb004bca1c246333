"""What pretraining on the shared radiology corpus gives a task (issue: stage 1 for real).

Four parts, each resumable (finished models and runs in ``bench/work`` are reused), one thread per job:

    python bench/bench_pretrain.py pretrain                 # the cpu preset's model on ../shared/data/corpus
    python bench/bench_pretrain.py table1 --data busi       # Table I on fold 0, scratch vs pretrained
    python bench/bench_pretrain.py table2 --data busi       # Table II, fine-tuned from it vs from scratch
    python bench/bench_pretrain.py pretrain --size 64       # the same at 64 px, for hippocampus's 64 px slices
    python bench/bench_pretrain.py summary                  # item 3's tables over the data sets with both records

``pretrain``: ``diffboost pretrain ../shared/data/corpus --preset cpu`` (128 px, the cpu preset's
``edges+mask`` model, Min-SNR-5, every noise level, ``pretrain.steps``); records its CPU time and the
loss curve (mean MSE per 500 steps) in ``bench/results/pretrain_corpus.json`` (``pretrain_corpus64.json`` at
64 px). A task fine-tunes from the model at the size it is prepared at (hippocampus: 64 px, see
``configs/hippocampus_cpu.yaml``): a model is refused at another size.

``table1``: on one fold, the cpu preset's model fine-tuned on the fold's training images for the same
steps (a) from scratch and (b) from the pretrained model, both over every noise level (Table I draws
from noise); with ``--equal-time`` also (c) from scratch for the fine-tune steps plus the pretraining's
steps (the same CPU time, pretraining counted: a step costs the same in both). Pix2Pix beside them. Each
model generates every held-out test image of the fold from its edges + mask and prompt; per image
MAE, MSE, RMSE, SSIM, MS-SSIM. The pretrained - scratch difference per image (and with ``--equal-time``
pretrained - scratch at the same CPU time) has a t-interval over the test images: one model each, so it
counts the images' variation, not the training's.

``table2``: ``diffboost run --preset cpu --init <pretrained model>`` (the data set's config of
``configs/`` laid over the preset, strategies none, diffboost, diffboost+classic; classic, which no diffusion
model touches, is the record's), against
the from-scratch run of the same protocol (the committed record ``bench/results/run_<data>_cpu_table.json``
when it exists, else run here too). Reports each strategy's Dice in both, the paired pretrained -
scratch gain per strategy with the corrected repeated k-fold interval, both arms' ``diffboost+classic -
classic``, whether ``none`` and ``classic`` (which no diffusion model touches) came out identical in
both (they must: the same code, folds and seeds), and the teacher's label consistency of the variants.
Writes ``bench/results/pretrain_table2_<data>.json``.

With ``--equal-time`` also (b): a third arm from scratch fine-tuned for the preset's steps plus the
pretraining's (``bench/work/run_<data>_cpu_scratch<steps>``), against the pretrained arm and the record
(``same_cpu_time`` in the JSON). Its ``none`` trains again unless copied in (a moved run is reused).

``summary``: item 3's tables over the data sets that have both a Table I and a Table II record: Table I
per model, the variants' label consistency, and Table II's Dice (with the same-CPU-time arm where it
ran), in ``bench/results/pretrain_summary_{table1,consistency,dice}.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import REPO, SHARED_DATA, need, protocol, report

WORK = REPO / "bench" / "work"
PRETRAINED = WORK / "pretrain_corpus128"  # the cpu preset's size; another size has its own folder
# data name -> (folder under ../shared/data, YAML of configs/ laid over the preset, scratch record name)
SOURCES = {"busi": ("BUSI", None, "run_busi_cpu"),
           "ddti": ("DDTI", None, "run_ddti_cpu"),
           "hippocampus": ("MSD/Task04_Hippocampus", REPO / "configs" / "hippocampus_cpu.yaml", "run_hippocampus_cpu")}
STRATEGIES = ["none", "classic", "diffboost", "diffboost+classic"]
# what the pretrained arm trains: classic is the same in both arms (no diffusion model touches it), so it is
# taken from the from-scratch record, once none has shown that the record's runs are reproduced exactly
ARM = ["none", "diffboost", "diffboost+classic"]


def pretrained_folder(size: int) -> Path:
    return PRETRAINED if size == 128 else WORK / f"pretrain_corpus{size}"


def task_size(data: str) -> int:
    """The size the data set is prepared at in its run (hippocampus: 64 px), which its pretrained model must have."""
    from diffboost.runconfig import load_run_config

    _, overlay, _ = SOURCES[data]
    return load_run_config(overlay, "cpu").prepare.size


def pretrain_model(size: int = 128, progress: bool = True) -> Path:
    """The cpu preset's model pretrained on the corpus at ``size`` px (reused when finished, resumed when
    interrupted): the same recipe and steps at every size."""
    import dataclasses

    from diffboost.diffusion.pretrain import pretrain, pretraining_configs
    from diffboost.runconfig import preset

    cfg = preset("cpu")
    mcfg, tcfg = pretraining_configs(cfg.model, dataclasses.replace(cfg.train, steps=cfg.pretrain.steps,
                                                                    checkpoint_every=500, validate_every=1000),
                                     size, cfg.pretrain.max_timestep_fraction)
    return pretrain(need(SHARED_DATA / "corpus"), pretrained_folder(size), mcfg, tcfg, size=size, progress=progress)


def cmd_pretrain(args) -> None:
    folder = pretrained_folder(args.size)
    model = pretrain_model(args.size)
    info = json.loads((model / "training.json").read_text())
    rows = []
    lines = (folder / "loss.csv").read_text().splitlines()[1:]
    steps, mse = np.array([[float(v) for v in ln.split(",")[:2]] for ln in lines]).T
    for end in range(500, int(steps.max()) + 1, 500):
        sel = (steps > end - 500) & (steps <= end)
        rows.append({"steps": end, "mean mse": round(float(mse[sel].mean()), 4)})
    ps_meta = json.loads((folder / "prepared" / "dataset.json").read_text())
    guard = {data: leak_guard(data, model) for data in SOURCES}
    report("pretrain_corpus" + ("" if args.size == 128 else str(args.size)), rows, {
        "leak_guard": guard,
        "command": f"diffboost pretrain ../shared/data/corpus --out {folder.relative_to(REPO)} --preset cpu"
                   + ("" if args.size == 128 else f" --size {args.size}"),
        "corpus_images": ps_meta["num_samples"], "prompts": ps_meta["prompts"], "size": ps_meta["size"],
        "steps": info["steps_done"], "training_seconds_last_call": info["seconds"],
        "training_seconds_all_calls": _training_seconds(folder), "threads": 1,
        "model": str(model.relative_to(REPO))})


def leak_guard(data: str, model: Path) -> dict:
    """The leak guard of the pretrained model against a task (every case, all folds): what it finds at
    the default threshold, and the corpus's highest thumbnail correlation with any task image."""
    from diffboost.data.duplicates import BLOCK, thumbnails
    from diffboost.data.store import PreparedSet
    from diffboost.diffusion.pretrain import check_init_corpus

    task = _prepared(data)
    t0 = time.perf_counter()
    found = check_init_corpus(model, task, allow=True)
    seconds = time.perf_counter() - t0
    corpus = PreparedSet(model.parent / "prepared")
    images = np.asarray(task.images, np.float32)
    informative = images.reshape(len(images), -1).std(1) > 1e-3
    tt = thumbnails(images[informative])
    best = max(float((thumbnails(corpus.images[i : i + BLOCK]) @ tt.T).max()) for i in range(0, len(corpus), BLOCK))
    return {"task_images": int(informative.sum()), "found": len(found), "highest_correlation": round(best, 3),
            "seconds": round(seconds, 1)}


def _training_seconds(folder: Path) -> float:
    """Wall time of a training over all its calls: the loss log's images/s per logged interval."""
    total, last = 0.0, 0
    for ln in (folder / "loss.csv").read_text().splitlines()[1:]:
        step, _, _, ips, *_ = ln.split(",")
        step, ips = int(step), float(ips)
        if ips > 0:
            total += (step - last) * 8 / ips  # batch 8 (the cpu preset's)
        last = step
    return round(total, 1)


def _fine_tuned(ps, fold: int, out: Path, steps: int, init: Path | None) -> Path:
    """The cpu preset's model fine-tuned on the fold's training images over every noise level."""
    import dataclasses

    from diffboost.diffusion.train import finished_training, train_diffusion
    from diffboost.runconfig import preset

    if finished_training(out / "model"):
        return out / "model"
    cfg = preset("cpu")
    tcfg = dataclasses.replace(cfg.train, steps=steps, max_timestep_fraction=1.0)
    f = ps.fold(fold)
    return train_diffusion(ps, out, ps.indices(f.train, training=True), cfg.model, tcfg, init=init,
                           resume="latest" if (out / "checkpoints").exists() else None,
                           val_indices=ps.indices(f.val, training=True))


def _prepared(data: str):
    from diffboost.config import PrepareConfig
    from diffboost.data.preparation import prepare
    from diffboost.data.store import PreparedSet
    from diffboost.runconfig import load_run_config

    folder, overlay, _ = SOURCES[data]
    prep = WORK / "pretrain_eval" / data / "prepared"
    if (prep / "dataset.json").exists():
        return PreparedSet(prep)
    cfg = load_run_config(overlay, "cpu").prepare
    return prepare(need(SHARED_DATA / folder), prep, cfg if overlay else PrepareConfig(size=cfg.size))


def _paired(a: np.ndarray, b: np.ndarray) -> dict:
    from scipy import stats

    d = np.asarray(a, float) - np.asarray(b, float)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return {"diff": float(d.mean()), "ci95": [float(d.mean() - half), float(d.mean() + half)], "images": len(d)}


def cmd_table1(args) -> None:
    from diffboost.evaluation.fidelity import (FIDELITY_METRICS, diffusion_rows, held_out_images, image_fidelity,
                                               pix2pix_row)
    from diffboost.generation.pix2pix import Pix2PixConfig, train_pix2pix

    ps = _prepared(args.data)
    work = WORK / "pretrain_eval" / args.data
    pre = pretrain_model(task_size(args.data), progress=False)
    pre_steps = _pretrain_steps(pre)
    models = {"scratch": (work / f"scratch{args.steps}", None),
              "pretrained": (work / f"pretrained{args.steps}", pre)}
    if args.equal_time:
        models["scratch, same CPU time"] = (work / f"scratch{args.steps + pre_steps}", None)
    t0 = {}
    for name, (out, init) in models.items():
        t = time.perf_counter()
        steps = args.steps + (pre_steps if "same CPU time" in name else 0)
        models[name] = _fine_tuned(ps, args.fold, out, steps, init)
        t0[name] = round(time.perf_counter() - t, 1)
    p2p = train_pix2pix(ps, args.fold, work / "pix2pix" / f"fold{args.fold}", Pix2PixConfig(steps=args.pix2pix_steps))
    idx = held_out_images(ps, args.fold, args.limit)
    real = (np.asarray(ps.images[np.asarray(idx)], np.float32) + 1) / 2
    per_image, rows = {}, []
    for name, model in models.items():
        r, outs = diffusion_rows(model, ps, idx, [(args.sampler, args.sampler_steps)])
        per_image[name] = image_fidelity(real, next(iter(outs.values())))
        rows.append({"model": name, **{m: round(r[0][m]["mean"], 4) for m in FIDELITY_METRICS},
                     **{f"{m} std": round(r[0][m]["std"], 4) for m in FIDELITY_METRICS}})
    r, _ = pix2pix_row(p2p, ps, idx)
    rows.append({"model": "Pix2Pix", **{m: round(r[m]["mean"], 4) for m in FIDELITY_METRICS},
                 **{f"{m} std": round(r[m]["std"], 4) for m in FIDELITY_METRICS}})
    pairs = [(a, "scratch") for a in per_image if a != "scratch"]
    if args.equal_time:  # (b): pretraining counted, the pretrained model against the longer scratch one
        pairs.append(("pretrained", "scratch, same CPU time"))
    diffs = {f"{a} - {b}": {m: _paired(per_image[a][m], per_image[b][m]) for m in FIDELITY_METRICS} for a, b in pairs}
    for k, v in diffs.items():
        print(f"{k}: " + ", ".join(f"{m} {_ci(d, 4)}" for m, d in v.items()))
    report(f"pretrain_table1_{args.data}", rows, {
        "fold": args.fold, "test_images": len(idx), "limit": args.limit, "fine_tune_steps": args.steps, "pretrain_steps": pre_steps,
        "sampler": f"{args.sampler} {args.sampler_steps}", "pix2pix_steps": args.pix2pix_steps,
        "paired_differences_over_test_images": diffs, "seconds_this_call": t0,
        "training_seconds": {name: _training_seconds(Path(m).parent) for name, m in models.items()}, "threads": 1,
        "command": f"python bench/bench_pretrain.py table1 --data {args.data} --fold {args.fold} --steps {args.steps}"
                   + (" --equal-time" if args.equal_time else "") + (f" --limit {args.limit}" if args.limit else "")})


def _pretrain_steps(pre: Path) -> int:
    """Steps the pretrained model was trained for: the same CPU time as that many fine-tune steps."""
    return json.loads((pre / "training.json").read_text())["steps_done"]


def _fine_tune_steps(data: str) -> int:
    from diffboost.runconfig import load_run_config

    return load_run_config(SOURCES[data][1], "cpu").train.steps


def _arm(data: str, out: Path, init: Path | None, augs: list[str],
         steps: int | None = None) -> tuple[dict, dict, dict | None]:
    """Run (or reuse) one arm (fine-tuned for ``steps``, the preset's by default); its table, provenance and
    pooled label consistency."""
    import dataclasses

    from bench_run import consistency_record

    from diffboost.run import load_run_config, run

    folder, overlay, _ = SOURCES[data]
    cfg = protocol(load_run_config(overlay, "cpu"))
    cfg.compare = dataclasses.replace(cfg.compare, augs=tuple(augs))
    if init is not None:
        cfg.pretrain = dataclasses.replace(cfg.pretrain, model=str(init))
    if steps is not None:
        cfg.train = dataclasses.replace(cfg.train, steps=steps)
    run(need(SHARED_DATA / folder), out, cfg)
    table = json.loads((out / "compare" / "table.json").read_text())
    prov = json.loads((out / "provenance.json").read_text())
    return table, prov, consistency_record(out)


def _reused(out: Path, strategies: list[str]) -> dict:
    """Per strategy, the arm's segmentation runs trained in another run folder and reused here (a run is
    reused when its settings and data are the same; it records the prepared set it was trained on)."""
    found = {}
    for s in strategies:
        runs = (out / "seg" / s).glob("seed*/fold*/run.json")
        trained_on = [Path(json.loads(r.read_text())["prepared"]) for r in runs]
        other = [p for p in trained_on if not p.resolve().is_relative_to(out.resolve())]
        if other:
            found[s] = {"runs": len(other), "trained_in": sorted({str(p.parent) for p in other})}
    return found


def _pooled(cons: dict | None) -> float | None:
    """A run's label consistency pooled over its folds, as the tables show it (None without a record)."""
    return None if cons is None else round(cons["pooled"]["consistency"], 3)


def _consistency_by_fold(scratch: dict | None, pretrained: dict | None) -> dict | None:
    """Pretrained - scratch label consistency paired by fold (each fold's own `none` teacher checks both
    arms' variants of the same images), a t-interval over the folds: one fine-tuned model per fold and
    arm, so it counts the variation between the folds' models."""
    if not scratch or not pretrained:
        return None
    folds = sorted(set(scratch["folds"]) & set(pretrained["folds"]))
    if len(folds) < 2:
        return None
    a = [pretrained["folds"][f]["overall"]["consistency"] for f in folds]
    b = [scratch["folds"][f]["overall"]["consistency"] for f in folds]
    paired = _paired(np.array(a), np.array(b))
    del paired["images"]
    return {**paired, "folds": folds, "per_fold": [round(x - y, 4) for x, y in zip(a, b)]}


def cmd_table2(args) -> None:
    from bench_intervals import _runs

    from diffboost.evaluation.stats import holdout_ratio
    from diffboost.segmentation.compare import run_stats

    _, _, record = SOURCES[args.data]
    pre = pretrain_model(task_size(args.data), progress=False)
    res = REPO / "bench" / "results"
    t0 = time.perf_counter()
    table_p, prov_p, cons_p = _arm(args.data, WORK / f"run_{args.data}_cpu_pretrained", pre, ARM)
    reused = _reused(WORK / f"run_{args.data}_cpu_pretrained", ARM)
    for s, r in reused.items():  # "identical runs" then says nothing about reproducibility for that strategy
        print(f"{s}: {r['runs']} runs reused from {', '.join(r['trained_in'])}")
    if (res / f"{record}_table.json").exists():
        table_s = json.loads((res / f"{record}_table.json").read_text())
        cons_s = json.loads((res / f"{record}_consistency.json").read_text()) if (
            res / f"{record}_consistency.json").exists() else None
        scratch_from = f"bench/results/{record}_table.json"
    else:
        table_s, _, cons_s = _arm(args.data, WORK / f"run_{args.data}_cpu", None, STRATEGIES)
        scratch_from = f"bench/work/run_{args.data}_cpu"
    ratio = holdout_ratio(prov_p["folds"])
    runs_p = {s: _runs(e) for s, e in table_p["table"].items()}
    runs_s = {s: _runs(e) for s, e in table_s["table"].items()}
    for s in STRATEGIES:  # what the arm did not train is the record's (identical by construction: see none)
        runs_p.setdefault(s, runs_s[s])
    rows, gains = [], {}
    for s in ARM:
        common = sorted(set(runs_p[s]) & set(runs_s.get(s, {})))
        a = {k: runs_p[s][k] for k in common}
        b = {k: runs_s[s][k] for k in common}
        g = run_stats(a, b, ratio)
        gains[s] = g
        rows.append({"strategy": s, "Dice scratch": round(100 * np.mean(list(b.values())), 2),
                     "Dice pretrained": round(100 * np.mean(list(a.values())), 2),
                     "pretrained - scratch": round(g["dice_diff"], 2),
                     "corrected ci95": f"[{g['ci95'][0]:+.2f}, {g['ci95'][1]:+.2f}]",
                     "identical runs": sum(abs(a[k] - b[k]) < 1e-9 for k in common), "runs": len(common)})
    # the gain over none within each arm, and its difference between the arms (paired by fold and seed):
    # what the record's irreproducibility (none is not retrained bit for bit, see "identical runs") shifts in
    # both arms alike cancels
    within = {s: {k: runs_p[s][k] - runs_p["none"][k] - (runs_s[s][k] - runs_s["none"][k])
                  for k in runs_p["none"] if k in runs_s["none"]} for s in ARM if s != "none"}
    zero = {k: 0.0 for k in runs_p["none"]}
    gain_over_none = {s: run_stats(v, zero, ratio) for s, v in within.items()}
    for s, g in gain_over_none.items():
        print(f"({s} - none) pretrained - (same) scratch: {_ci(g)}")
    over_classic = {arm: run_stats(r["diffboost+classic"], r["classic"], ratio) for arm, r in
                    (("scratch", runs_s), ("pretrained", runs_p))}
    over_none = {arm: run_stats(r["diffboost"], r["none"], ratio) for arm, r in
                 (("scratch", runs_s), ("pretrained", runs_p))}
    for arm in ("scratch", "pretrained"):
        c, n = over_classic[arm], over_none[arm]
        print(f"{arm}: diffboost+classic - classic {_ci(c)}; diffboost - none {_ci(n)}")

    print(f"label consistency: scratch {_pooled(cons_s)}, pretrained {_pooled(cons_p)}")
    by_fold = _consistency_by_fold(cons_s, cons_p)
    if by_fold:
        print(f"label consistency, pretrained - scratch over folds: {_ci(by_fold, 3)}")
    same_time = _same_cpu_time(args.data, pre, runs_p, runs_s, cons_p, ratio) if args.equal_time else None
    report(f"pretrain_table2_{args.data}", rows, {
        "data": args.data, "scratch_from": scratch_from, "pretrained_run": f"bench/work/run_{args.data}_cpu_pretrained",
        "pretrained_model": str(pre.relative_to(REPO)), "folds": len(prov_p["folds"]), "seeds": table_p.get("seeds"),
        "reused_runs": reused, "gain_of_pretraining": gains, "gain_over_none_pretrained_minus_scratch": gain_over_none,
        "diffboost+classic_vs_classic": over_classic, "diffboost_vs_none": over_none,
        "label_consistency": {"scratch": cons_s, "pretrained": cons_p,
                              "pretrained_minus_scratch_over_folds": by_fold},
        "same_cpu_time": same_time, "seconds_this_call": round(time.perf_counter() - t0, 1),
        "command": f"python bench/bench_pretrain.py table2 --data {args.data}"
                   + (" --equal-time" if args.equal_time else "")})


def _same_cpu_time(data: str, pre: Path, runs_p: dict, runs_s: dict, cons_p: dict | None, ratio: float) -> dict:
    """(b): from scratch, fine-tuned for the preset's steps plus the pretraining's (a step costs the same in
    both), so that both arms have spent the same CPU time; against the pretrained arm and the scratch record."""
    from bench_intervals import _runs

    from diffboost.segmentation.compare import run_stats

    steps = _fine_tune_steps(data) + _pretrain_steps(pre)
    out = WORK / f"run_{data}_cpu_scratch{steps}"
    table, _, cons = _arm(data, out, None, ARM, steps=steps)
    runs = {s: _runs(e) for s, e in table["table"].items()}

    def paired(a: dict, b: dict) -> dict:  # on the (fold, seed) runs both have
        common = sorted(set(a) & set(b))
        return run_stats({k: a[k] for k in common}, {k: b[k] for k in common}, ratio)

    head = f"same CPU time ({steps} steps from scratch)"
    rows = []
    for s in ARM:
        p, sc = paired(runs_p[s], runs[s]), paired(runs[s], runs_s[s])
        rows.append({"strategy": s, "Dice": round(100 * np.mean(list(runs[s].values())), 2),
                     "pretrained - this": p, "this - scratch": sc})
        print(f"{head}, {s}: {rows[-1]['Dice']:.2f}; pretrained - this {_ci(p)}; this - scratch {_ci(sc)}")
    over_classic = paired(runs["diffboost+classic"], runs_s["classic"])
    print(f"{head}, diffboost+classic - classic (the record's): {_ci(over_classic)}")
    by_fold = _consistency_by_fold(cons, cons_p)
    if cons:
        print(f"{head}, label consistency {_pooled(cons):.3f}"
              + (f"; pretrained - this over folds {_ci(by_fold, 3)}" if by_fold else ""))
    return {"fine_tune_steps": steps, "run": str(out.relative_to(REPO)), "rows": rows,
            "diffboost+classic_vs_classic": over_classic,
            "label_consistency": cons, "consistency_pretrained_minus_this_over_folds": by_fold,
            "reused_runs": _reused(out, ARM)}


def _ci(d: dict, digits: int = 2) -> str:
    """``diff [lo, hi]`` of a paired difference (``diff``) or of the yardstick's run statistics (``dice_diff``)."""
    lo, hi = d["ci95"]
    return f"{d['diff'] if 'diff' in d else d['dice_diff']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _same_time_columns(same: dict | None) -> dict:
    """Table II's same-CPU-time arm (``table2 --equal-time``) as summary columns, "not run" without it."""
    strategies = ("diffboost", "diffboost+classic")
    if not same:
        return {k: "not run" for s in strategies for k in (f"{s} scratch, same CPU time",
                                                            f"{s}: pretrained - scratch, same CPU time")}
    rows = {r["strategy"]: r for r in same["rows"]}
    return {k: v for s in strategies for k, v in (
        (f"{s} scratch, same CPU time", rows[s]["Dice"]),
        (f"{s}: pretrained - scratch, same CPU time", _ci(rows[s]["pretrained - this"])))}


def _same_time_consistency(same: dict | None) -> dict:
    """The same-CPU-time arm's label consistency (pooled) and pretrained - it by fold, "not run" without it."""
    if not same or not same.get("label_consistency"):
        return {"scratch, same CPU time": "not run", "pretrained - scratch, same CPU time": "not run"}
    by_fold = same["consistency_pretrained_minus_this_over_folds"]
    return {"scratch, same CPU time": _pooled(same["label_consistency"]),
            "pretrained - scratch, same CPU time": _ci(by_fold, 3) if by_fold else "fewer than 2 folds"}


def cmd_summary(args) -> None:
    """Item 3's tables over the data sets that have both records (``pretrain_table1_<data>.json``, fold 0, and
    ``pretrain_table2_<data>.json``, the cpu protocol): Table I per model, the variants' label consistency
    and Table II's Dice."""
    res = REPO / "bench" / "results"
    table1, consistency, dice, missing = [], [], [], []
    vs = {"pretrained": "pretrained - scratch", "scratch, same CPU time": "scratch, same CPU time - scratch"}
    for data in SOURCES:
        t1, t2 = res / f"pretrain_table1_{data}.json", res / f"pretrain_table2_{data}.json"
        if not (t1.exists() and t2.exists()):
            missing.append(data)
            continue
        t1, t2 = json.loads(t1.read_text()), json.loads(t2.read_text())
        diffs = t1["paired_differences_over_test_images"]
        for r in t1["rows"]:
            table1.append({"data": data, "test images": t1["test_images"], "model": r["model"], "MAE": r["mae"],
                           "SSIM": r["ssim"], "MS-SSIM": r["ms_ssim"],
                           "SSIM - scratch": _ci(diffs[vs[r["model"]]]["ssim"], 3) if r["model"] in vs else ""})
        if "pretrained - scratch, same CPU time" in diffs:
            table1.append({"data": data, "test images": t1["test_images"], "model": "pretrained - scratch, same CPU time",
                           **{m: _ci(diffs["pretrained - scratch, same CPU time"][k], 3)
                              for m, k in (("MAE", "mae"), ("SSIM", "ssim"), ("MS-SSIM", "ms_ssim"))},
                           "SSIM - scratch": ""})
        lc = t2["label_consistency"]
        consistency.append({"data": data, "scratch": _pooled(lc["scratch"]), "pretrained": _pooled(lc["pretrained"]),
                            "pretrained - scratch": _ci(lc["pretrained_minus_scratch_over_folds"], 3),
                            **_same_time_consistency(t2.get("same_cpu_time"))})
        record = json.loads((REPO / t2["scratch_from"]).read_text())["table"]
        rows = {r["strategy"]: r for r in t2["rows"]}
        gain = t2["gain_of_pretraining"]
        dice.append({
            "data": data, "none": rows["none"]["Dice scratch"],
            "classic": round(100 * np.mean(list(record["classic"]["dice_runs"].values())), 2),
            **{f"{s} scratch": rows[s]["Dice scratch"] for s in ("diffboost", "diffboost+classic")},
            **{f"{s} pretrained": rows[s]["Dice pretrained"] for s in ("diffboost", "diffboost+classic")},
            **{f"{s}: pretrained - scratch": _ci(gain[s]) for s in ("diffboost", "diffboost+classic")},
            "diffboost+classic - classic, pretrained": _ci(t2["diffboost+classic_vs_classic"]["pretrained"]),
            **_same_time_columns(t2.get("same_cpu_time"))})
    if missing:
        print(f"no Table I and Table II records for {', '.join(missing)}: run table1 and table2 --data for them")
    if not dice:
        raise SystemExit("nothing to summarise")
    command = "python bench/bench_pretrain.py summary"
    report("pretrain_summary_table1", table1, {
        "unit": "generated from noise from fold 0's held-out test images' edges + mask, intensities in [0, 1]; "
                "differences paired over the test images (t-interval: one model each)", "command": command})
    report("pretrain_summary_consistency", consistency, {
        "unit": "the variants' label consistency by each fold's none teacher, pooled; the difference paired by "
                "fold (t-interval over the 3 folds' models)", "command": command})
    report("pretrain_summary_dice", dice, {
        "unit": "Dice x 100, mean over 3 folds x 2 seeds; intervals: corrected repeated k-fold t-test",
        "command": command})


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pretrain")
    p.add_argument("--size", type=int, default=128, help="px; 64 for hippocampus (configs/hippocampus_cpu.yaml)")
    t1 = sub.add_parser("table1")
    t1.add_argument("--data", choices=list(SOURCES), default="busi")
    t1.add_argument("--fold", type=int, default=0)
    t1.add_argument("--steps", type=int, default=2500, help="fine-tune steps (the cpu preset's)")
    t1.add_argument("--equal-time", action="store_true", help="also from scratch for steps + the pretraining's")
    t1.add_argument("--limit", type=int, default=None,
                    help="at most this many test images, evenly spaced (hippocampus's fold has ~2,000 slices)")
    t1.add_argument("--pix2pix-steps", type=int, default=2000)
    t1.add_argument("--sampler", default="dpm++")
    t1.add_argument("--sampler-steps", type=int, default=20)
    t2 = sub.add_parser("table2")
    t2.add_argument("--data", choices=list(SOURCES), default="busi")
    t2.add_argument("--equal-time", action="store_true",
                    help="also from scratch fine-tuned for the preset's steps + the pretraining's (the same CPU time)")
    sub.add_parser("summary")
    args = ap.parse_args()
    {"pretrain": cmd_pretrain, "table1": cmd_table1, "table2": cmd_table2, "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    main()
