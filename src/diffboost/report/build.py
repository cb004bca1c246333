"""``diffboost report DIR``: ``report.md`` (figures beside it in ``figures/``) and a self-contained
``report.html`` (figures embedded) from what a run folder holds. Parts whose inputs are missing are
left out with a note, so a report can be made at any point of a run."""

from __future__ import annotations

import base64
import csv
import html
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from ..data.store import PreparedSet
from ..generation.synthetic import CONSISTENCY_CSV
from ..utils.atomic import atomic_write_bytes, atomic_write_text, read_control
from ..utils.environment import environment
from . import figures

def _stage_times(run: Path, ps: PreparedSet) -> list[tuple[str, float]]:
    times = [("prepare", float(ps.meta.get("seconds", 0.0)))]
    for p in sorted((run / "models").glob("fold*/loss.csv")):
        info = p.parent / "model" / "training.json"
        seconds = json.loads(info.read_text()).get("seconds") if info.exists() else None
        if seconds is None:  # older runs: from the logged throughput (a row per log_every steps)
            cfg = yaml.safe_load((p.parent / "config.yaml").read_text())["train"]
            rows = list(csv.DictReader(open(p)))
            seconds = sum(cfg["log_every"] * cfg["batch_size"] / float(r["images_per_s"]) for r in rows
                          if float(r["images_per_s"]) > 0)
        times.append((f"fine-tune {p.parent.name}", float(seconds)))
    for p in sorted((run / "synthetic").glob("fold*/generation.json")):
        times.append((f"generate {p.parent.name}", float(json.loads(p.read_text()).get("seconds", 0.0))))
    runs = list((run / "seg").glob("*/seed*/fold*/summary.json"))
    if runs:
        # summed over the runs: with parallel jobs (compare.jobs) the wall time is shorter
        times.append((f"segmentation ({len(runs)} runs, summed)", _seg_seconds(runs)))
    for d in sorted(p for p in (run / "ablations").glob("*") if p.is_dir()):
        times.append((f"ablation {d.name}", _seg_seconds(d.glob("*/*/seed*/fold*/summary.json"))))
    return times


def _seg_seconds(summaries) -> float:
    """Training + evaluation time of the segmentation runs whose ``summary.json`` files are given."""
    total = 0.0
    for p in summaries:
        s = json.loads(p.read_text())
        total += s.get("train_seconds", 0.0) + s.get("eval_seconds", 0.0)
    return total


def _cells_html(heads: list[str], rows: list[list[tuple[str, bool]]]) -> str:
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in heads) + "</tr>"
            + "".join("<tr>" + "".join(f"<td><b>{html.escape(t)}</b></td>" if best else f"<td>{html.escape(t)}</td>"
                                       for t, best in r) + "</tr>" for r in rows) + "</table>")


def _table(result: dict) -> tuple[str, str]:
    """Table II, the lesion / empty-case table and the contrasts, as Markdown and as HTML (best per
    column in bold)."""
    from ..segmentation.compare import (DETECTION_NOTE, STATS_NOTE, contrast_lines, detection_cells, lesion_cells,
                                        markdown_tables, table_cells)

    table, unit = result["table"], result.get("unit", "px")
    where = "mm" if unit == "mm" else "pixels of the original image"
    n_folds, n_seeds = len(result.get("folds", [])), len(result.get("seeds", [0]))
    htm = (_cells_html(*table_cells(table, unit))
           + f"<p>All test cases of {n_folds} folds x {n_seeds} seeds, mean ± std over cases; Dice, Precision, Recall "
           f"in %; HD95, ASSD in {where}. Dice over folds: mean ± std of the fold means. "
           + html.escape(STATS_NOTE.replace("`", "")) + "</p>"
           + "<h3>Lesion cases and empty references</h3>" + _cells_html(*lesion_cells(table, unit))
           + "<p>Lesion metrics over the cases with a non-empty reference; FP rate: the share of empty references "
           "(normal images; for volumes, slices without foreground) predicted with any foreground.</p>")
    detection = detection_cells(table)
    if detection is not None:
        htm += "<h3>Lesion-wise detection</h3>" + _cells_html(*detection) + f"<p>{html.escape(DETECTION_NOTE)}</p>"
    lines = contrast_lines(result)
    if lines:
        htm += "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>"
    return markdown_tables(result), htm


def _md_html(md: str) -> str:
    """Markdown of paragraphs and pipe tables (what curve_markdown writes) as HTML."""
    out, table = [], []

    def flush():
        if table:
            rows = [[c.strip() for c in line.strip("|").split("|")] for line in table if not set(line) <= set("|-")]
            out.append(_html_rows(rows[0], rows[1:]))
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "".join(out)


def _md_rows(head: list[str], body: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *("| " + " | ".join(r) + " |" for r in body)])


def _html_rows(head: list[str], body: list[list[str]], cls: str = "") -> str:
    return (f"<table{f' class={cls!r}' if cls else ''}><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body) + "</table>")


def _consistency(run: Path) -> tuple[str, str] | None:
    """The teacher's label consistency of each fold's synthetic set (``synthetic/foldK/consistency.*``):
    per fold, per augmentation text and per strength (all folds pooled, and each fold's), as Markdown
    and HTML; None when no set was checked."""
    from ..evaluation.consistency import LabelConsistency, load_fold_consistencies

    checked = [(p.name, summary, rows) for p, summary, rows in load_fold_consistencies(run / "synthetic")]
    if not checked:
        return None

    def num(v, scale: float = 1.0, digits: int = 2) -> str:
        return "—" if v is None or not np.isfinite(v) else f"{v * scale:.{digits}f}"

    def cells(d: dict) -> list[str]:
        return [str(d["variants"]), num(d["teacher_dice_variant"], 100), num(d["teacher_dice_real"], 100),
                num(d["consistency"], digits=3)]

    heads = ["variants", "teacher Dice, variants (%)", "teacher Dice, real (%)", "label consistency"]
    per_fold = [[name, *cells(s["overall"]), num(s.get("teacher_loss_real_mean"), digits=4),
                 "/".join(Path(s["teacher"]["path"]).parts[-4:-1])]
                for name, s, _ in checked]
    pooled = LabelConsistency()
    pooled.rows = [r for _, _, rows in checked for r in rows]
    folds = [name for name, _, _ in checked]
    tables = [("Per fold", ["fold", *heads, "teacher CE on real (mean)", "teacher (seg/...)"], per_fold)]
    for by, key in (("text", "per_text"), ("strength", "per_strength")):
        body = [[g, *cells(d), *(num((s[key].get(g) or {}).get("consistency"), digits=3) for _, s, _ in checked)]
                for g, d in pooled.aggregate(by).items()]
        tables.append((f"Per augmentation {by} (all folds; then each fold's consistency)",
                       [by, *heads, *(f"{f} consistency" for f in folds)], body))
    total = cells(pooled.aggregate())
    intro = ("Each variant is segmented by its fold's `none` segmenter (the teacher, trained on the fold's training "
             "part only) and scored against its real image's mask at the prepared size; label consistency = mean "
             "teacher Dice on the variants / mean teacher Dice on their real images (1: the label fits the variants "
             "as well as the real images; an erased or moved lesion lowers it). An image whose mask and prediction "
             f"are both empty scores 1. Overall, all folds: {total[0]} variants, Dice {total[1]}% on the variants vs "
             f"{total[2]}% on their real images, label consistency {total[3]}. Teacher CE on real: its mean per-pixel "
             "cross-entropy on the real training images (the pixel filter's reference).")
    md = intro + "".join(f"\n\n{title}:\n\n" + _md_rows(h, b) for title, h, b in tables)
    htm = f"<p>{html.escape(intro)}</p>" + "".join(f"<h3>{html.escape(title)}</h3>" + _html_rows(h, b)
                                                   for title, h, b in tables)
    return md, htm


def _pretrain_fact(pre: dict, record: dict | None, head: str | None = None) -> str:
    """The pretraining corpus and whether it holds cases of the task (``pretrain/task_overlap.json``)."""
    head = head or f"{pre.get('corpus')}, {pre.get('steps', '?')} steps; "
    allowed = bool(pre.get("allow_task_overlap"))
    if record is None:
        return head + "not checked for cases of the task" + (" (allow_task_overlap: true)" if allowed else "")
    files = record.get("files") or []
    if not files:
        return head + "holds no case of the task (checked by path, file bytes, prepared image and near-duplicates)" + (
            " (allow_task_overlap: true, nothing to allow)" if allowed else "")
    return (head + f"HOLDS {len(files)} file(s) of the task, let through by pretrain.allow_task_overlap: true: the "
            f"pretrained model has seen its test folds (e.g. {files[0]['corpus']}, {files[0]['by']})")


def _provenance(prov: dict) -> tuple[str, str]:
    """What a reader checks first (versions, data, folds, seeds, wall time per stage) as tables; the full
    configuration below (folded in the HTML). Everything is also in ``provenance.json``."""
    d = prov["data"]
    seg = prov.get("segmentation_config") or {}
    cfg = prov.get("run_config") or {}
    facts = [["created", prov["created"]],
             ["versions", ", ".join(f"{k} {v}" for k, v in prov["versions"].items())],
             ["data", f"{d.get('source')} ({d.get('format')}), {d.get('num_cases')} cases, {d.get('num_samples')} "
                      f"2D samples at {d.get('size')} px"],
             ["cases per category", ", ".join(f"{k}: {v}" for k, v in (d.get("cases_per_category") or {}).items())],
             ["folds (train / val / test cases)", ", ".join(f"{f['train']} / {f['val']} / {f['test']}" for f in prov["folds"])],
             ["seeds", f"folds {cfg.get('prepare', {}).get('seed', '?')}, diffusion {cfg.get('train', {}).get('seed', '?')}, "
                       f"generation {cfg.get('generate', {}).get('seed', '?')}, segmentation "
                       f"{', '.join(map(str, prov.get('segmentation_seeds') or [seg.get('seed', '?')]))}"]]
    dups = d.get("near_duplicates") or {}
    if dups:
        groups = dups.get("groups") or []
        facts.append(["near-duplicate groups (each kept in one fold)",
                      f"{len(groups)} groups, {sum(map(len, groups))} cases, threshold {dups.get('threshold')}"
                      + (f" ({dups['note']})" if dups.get("note") else "")])
    pre = cfg.get("pretrain") or {}
    if pre.get("corpus"):
        facts.append(["pretraining corpus", _pretrain_fact(pre, prov.get("pretrain_task_overlap"))])
    elif pre.get("model"):
        record = prov.get("pretrain_task_overlap")
        corpus = f", pretrained on {record['corpus']}" if record else ""
        facts.append(["fine-tuned from", _pretrain_fact(pre, record, f"the pretrained model {pre['model']}{corpus}; ")])
    wall = prov["wall_seconds"]
    times = [[k, f"{v:,.1f}", f"{v / 60:.1f}"] for k, v in wall.items()]
    times.append(["total (segmentation runs summed)", f"{sum(wall.values()):,.1f}", f"{sum(wall.values()) / 60:.1f}"])
    last = prov.get("wall_seconds_of_the_last_run_call") or {}
    if "compare" in last:  # the runs overlapped: what the comparison took on the clock, when one call ran it
        times.append(["compare, wall clock of the last `run` call", f"{last['compare']:,.1f}", f"{last['compare'] / 60:.1f}"])
    full = yaml.safe_dump({k: prov[k] for k in ("run_config", "segmentation_config", "wall_seconds_of_the_last_run_call")
                           if k in prov}, sort_keys=False)
    md = (_md_rows(["item", "value"], facts) + "\n\nWall time per stage:\n\n" + _md_rows(["stage", "seconds", "minutes"], times)
          + "\n\nConfiguration (`run.yaml`; everything above is also in `provenance.json`):\n\n```yaml\n" + full + "```")
    htm = (_html_rows(["item", "value"], facts, "facts") + "<p>Wall time per stage:</p>" + _html_rows(["stage", "seconds", "minutes"], times)
           + "<details><summary>Configuration (run.yaml; everything above is also in provenance.json)</summary>"
           + f"<pre>{html.escape(full)}</pre></details>")
    return md, htm


def write_report(run: str | Path, title: str | None = None) -> Path:
    """Write ``run/report.md``, ``run/report.html`` and ``run/figures/``; return the HTML path."""
    run = Path(run)
    ps = PreparedSet(run / "prepared")
    figdir = run / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    result = json.loads((run / "compare" / "table.json").read_text()) if (run / "compare" / "table.json").exists() else None
    strategies = list(result["table"]) if result else sorted(p.name for p in (run / "seg").glob("*") if p.is_dir())
    sections: list[tuple[str, str, str, str | None]] = []  # title, markdown, html, figure

    def add(name: str, md: str, htm: str | None = None, fig: bytes | None = None, fig_name: str | None = None):
        if fig is not None:
            atomic_write_bytes(figdir / f"{fig_name}.png", fig)
        sections.append((name, md, htm if htm is not None else f"<p>{html.escape(md)}</p>",
                         fig_name if fig is not None else None))

    if result:
        md, htm = _table(result)
        rows = list(csv.DictReader(open(run / "compare" / "cases.csv")))
        add("Table II: segmentation with each augmentation strategy", md, htm,
            figures.boxplots(rows, strategies, result.get("unit", "px")), "boxplots")
        add("Per fold", "Per-case Dice of each strategy on each test fold (all seeds pooled).",
            fig=figures.fold_boxplots(rows, strategies), fig_name="boxplots_per_fold")
    else:
        add("Table II", "No comparison yet (run `diffboost compare`).")
    if (run / "compare" / "learning_curve.json").exists():
        from ..segmentation.curves import curve_markdown

        curve = json.loads((run / "compare" / "learning_curve.json").read_text())
        md = curve_markdown(curve)
        add("Learning curve: Dice against the number of labels", md, _md_html(md),
            figures.learning_curve(curve), "learning_curve")
    syn_root = next(iter(sorted((run / "synthetic").glob("fold*/generation.json"))), None)
    if syn_root is not None:
        from ..generation.generate import SyntheticSet
        from ..segmentation.patchmix import default_patch

        syn = SyntheticSet(syn_root.parent)
        ratio = (" Over each variant: its teacher Dice ratio (Dice on the variant / on its real image, see Label "
                 "consistency)." if (syn.root / CONSISTENCY_CSV).exists() else "")
        add("Synthetic variants (Fig. 3)", f"Real image, its condition (edges + mask boundary), the mask outline and "
            f"variants of {syn.root.name} with their augmentation texts; the real mask outlined on each variant.{ratio}",
            fig=figures.variants(ps, syn), fig_name="variants")
        bound = syn.bind(ps)  # a labelled image of the fold: an unlabelled one's mask size is not shown
        ri = max((i for i in syn.by_real if bound.label_readable(i)), key=lambda i: ps.manifest[i]["foreground_pixels"])
        add("Algorithm 1 mixing (Fig. 4)", f"The mixed input m·real + (1−m)·synthetic for alpha from 0 (all synthetic) "
            f"to 1 (all real), patch {default_patch(ps.size)} px, one fixed draw of the grid.",
            fig=figures.alpha_strip(np.asarray(ps.images[ri], np.float32),
                                    np.asarray(syn.images[syn.by_real[ri][0]], np.float32), default_patch(ps.size)),
            fig_name="alpha_strip")
    else:
        add("Synthetic variants", "No synthetic set yet (run `diffboost generate`).")
    target_set = next(iter(sorted(run.glob("synthetic_diffboost-target/fold*/generation.json"))), None)
    if target_set is not None:  # cross-site: the source's images as the target's scanners see them
        from ..generation.generate import SyntheticSet

        syn = SyntheticSet(target_set.parent)
        add("Source images in the target's scanner styles", f"Labelled source images of {syn.root.name}, their edges, "
            "and their variants drawn with a target scanner in the prompt (diffboost-target), the source mask outlined: "
            "the label must still fit.", fig=figures.target_styles(ps, syn), fig_name="target_styles")
    for kind_dir in sorted({p.parent.parent for p in run.glob("synthetic_*/fold*/masks.npy")}):  # new lesions
        from ..evaluation.consistency import NEW_LESION_JSON
        from ..generation.generate import SyntheticSet

        sets = sorted(kind_dir.glob("fold*/masks.npy"))
        syn = SyntheticSet(sets[0].parent)
        meta = syn.meta.get("layout") or {}
        kind = kind_dir.name.removeprefix("synthetic_")
        checked = [json.loads((p.parent / NEW_LESION_JSON).read_text()) for p in sets
                   if (p.parent / NEW_LESION_JSON).exists()]
        seen = ""
        if checked:
            dice = [c["teacher_dice_new_lesion"] for c in checked if c.get("teacher_dice_new_lesion") is not None]
            found = [c["found_share"] for c in checked if c.get("found_share") is not None]
            seen = (f" The fold's `none` segmenter (trained on real images only) finds the new lesions with a Dice of "
                    f"{100 * np.mean(dice):.1f}% (within {checked[0]['window_px']} px of them; {100 * np.mean(found):.0f}% "
                    f"of them at Dice ≥ 10%), mean over {len(checked)} fold(s).") if dice else ""
        add(f"New lesions in new places ({kind})",
            f"Variants of {syn.root.name} with labels of their own: a donor lesion of another training image, "
            f"flipped, rotated, scaled {meta.get('scale')} and warped, placed by the '{meta.get('placement')}' rule; "
            f"its label is the union of the real mask and the placed lesion ({syn.meta.get('num_variants')} variants, "
            f"{syn.meta.get('missing_variants', 0)} given up: no donor fitted). Each label outlined on its image.{seen}",
            fig=figures.layout_variants(ps, syn), fig_name=f"layout_variants_{kind}")
    consistency = _consistency(run)
    if consistency is not None:
        add("Label consistency of the variants (teacher check)", *consistency)
    shown = [s for s in ("none", "diffboost") if s in strategies] or strategies[:2]
    best_classical = None
    if result:
        classical = [s for s in strategies if s not in ("none",) and not s.startswith(("diffboost", "pix2pix"))]
        if classical:
            best_classical = max(classical, key=lambda s: result["table"][s]["dice"]["mean"])
            shown = list(dict.fromkeys(["none", best_classical, *shown]))
    seed0 = (result or {}).get("seeds", [0])[0]
    ov = figures.overlays(ps, run / "seg", shown, seed=seed0)
    if ov is not None:
        add("Segmentations (Fig. 5)", f"The same test cases of fold 0 (seed {seed0}): reference outline in green, "
            f"prediction in red, under {', '.join(shown)}.", fig=ov, fig_name="overlays")
    cv = figures.curves(run, shown, seed=seed0)
    if cv is not None:
        add("Training curves", "Diffusion fine-tuning loss per fold; validation Dice per epoch (fold 0), which "
            "chooses each segmenter's checkpoint.", fig=cv, fig_name="curves")
    current, stale = None, []
    if (run / "run.yaml").exists() and list((run / "ablations").glob("*.json")):
        from ..ablate import ablation_identity
        from ..runconfig import load_run_config

        current = ablation_identity(load_run_config(run / "run.yaml"), ps)
    for f in sorted((run / "ablations").glob("*.json")):
        ab = json.loads(f.read_text())
        if ab.get("identity") != current:  # made from other settings or data than the run has now
            stale.append(f.name)
            continue
        strategy, reference = ab.get("strategy", "diffboost"), ab.get("reference", "none")
        gains = ab.get("gain") or {}
        kinds = [g for g in (f"over {reference}", "over the run's setting")
                 if any((gains.get(str(v)) or {}).get(g) for v in ab["values"])]

        def gain(v, g):
            d = (gains.get(str(v)) or {}).get(g)
            return "–" if d is None else f"{d['mean'] * 100:+.2f} [{d['low'] * 100:+.2f}, {d['high'] * 100:+.2f}]"

        val = (ab.get("val_dice") or {}).get(strategy) or {}
        chosen = ab.get("chosen")
        head = [ab["param"], *(f"{s} Dice (mean ± std over runs)" for s in ab["dice"]),
                *([f"{strategy} validation Dice"] if val else []),
                *(f"{strategy} ΔDice {g} [corrected 95% CI]" for g in kinds)]
        body = [[str(v) + (" (chosen)" if str(v) == chosen else ""),
                 *(f"{d[str(v)]['mean'] * 100:.2f} ± {d[str(v)]['std'] * 100:.2f}" for d in ab["dice"].values()),
                 *([f"{val[str(v)] * 100:.2f}"] if val else []), *(gain(v, g) for g in kinds)] for v in ab["values"]]
        sentences = [f"Baseline ({reference}): {ab['baseline'] * 100:.2f}."] if ab.get("baseline") is not None else []
        if chosen is not None:
            sentences.append(f"Chosen: {ab['param']} = {chosen}, by validation Dice (each fold's validation part); "
                             "the test Dice beside it does not choose.")
        elif not val:
            sentences.append("Made before sweeps recorded validation Dice: no value is chosen (rerun `diffboost ablate`).")
        if kinds:
            sentences.append("Gains are paired over the same fold x seed runs, with the corrected repeated k-fold "
                             f"interval (seeds averaged per fold); the run's setting is {strategy} as trained in the "
                             "comparison.")
        note = " ".join(sentences)
        sweep = ab["param"] if strategy == "diffboost" else f"{ab['param']} ({strategy})"
        add(f"Ablation: {sweep}", _md_rows(head, body) + (f"\n\n{note}" if note else ""),
            _html_rows(head, body) + (f"<p>{html.escape(note)}</p>" if note else ""),
            f.with_suffix(".png").read_bytes() if f.with_suffix(".png").exists() else None, f"ablation_{f.stem}")
    if stale:
        add("Ablations not shown", f"{len(stale)} ablation table(s) were made from other settings or data than "
            f"this run has now (or before ablations recorded them): {', '.join(stale)}. Rerun `diffboost ablate` "
            "to bring them up to date.")
    prov = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **environment(),
            "data": {k: ps.meta.get(k) for k in ("source", "format", "size", "num_cases", "num_samples",
                                                 "num_training_samples", "cases_per_category", "near_duplicates")},
            "folds": [{"train": len(f.train), "val": len(f.val), "test": len(f.test)} for f in ps.folds],
            "wall_seconds": {k: round(v, 3) for k, v in _stage_times(run, ps)}}
    if result:
        prov["segmentation_config"] = result.get("config")
        prov["segmentation_seeds"] = result.get("seeds")
    if (run / "times.json").exists():
        prov["wall_seconds_of_the_last_run_call"] = read_control(run / "times.json")
    if (run / "run.yaml").exists():
        prov["run_config"] = yaml.safe_load((run / "run.yaml").read_text())
    if (run / "pretrain" / "task_overlap.json").exists():
        prov["pretrain_task_overlap"] = json.loads((run / "pretrain" / "task_overlap.json").read_text())
    atomic_write_text(run / "provenance.json", json.dumps(prov, indent=1, default=str))
    groups = (ps.meta.get("near_duplicates") or {}).get("groups") or []
    if groups:
        intro = (f"{len(groups)} groups of near-duplicate images ({sum(map(len, groups))} cases; thumbnail correlation "
                 f"≥ {ps.meta['near_duplicates'].get('threshold')}, see `diffboost.data.duplicates`). Each group is kept "
                 "inside one fold, so no image is tested against its own copy.")
        listing = "; ".join(", ".join(g) for g in groups)
        add("Near-duplicate groups", f"{intro}\n\n{listing}",
            f"<p>{html.escape(intro)}</p><details><summary>the groups</summary><p>{html.escape(listing)}</p></details>")
    add("Provenance", *_provenance(prov))
    title = title or f"DiffBoost report: {Path(str(ps.meta.get('source', run))).name}"
    md = [f"# {title}\n"]
    page = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
            "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
            "td:first-child,th:first-child,.facts td,.facts th{text-align:left}img{max-width:100%;border:1px solid #eee}"
            "pre{background:#f6f6f6;padding:8px;font-size:12px;overflow:auto}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>"]
    for name, text, htm, fig in sections:
        md.append(f"## {name}\n\n{text}\n")
        page.append(f"<h2>{html.escape(name)}</h2>{htm}")
        if fig:
            md.append(f"![{name}](figures/{fig}.png)\n")
            data = base64.b64encode((figdir / f"{fig}.png").read_bytes()).decode()
            page.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
    page.append("</body></html>")
    atomic_write_text(run / "report.md", "\n".join(md))
    atomic_write_text(run / "report.html", "\n".join(page))
    return run / "report.html"

