"""``diffboost report DIR``: ``report.md`` (figures beside it in ``figures/``) and a self-contained
``report.html`` (figures embedded) from what a run folder holds. Parts whose inputs are missing are
left out with a note, so a report can be made at any point of a run."""

from __future__ import annotations

import base64
import csv
import html
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from ..data.store import PreparedSet
from ..utils.atomic import atomic_write_bytes, atomic_write_text
from . import figures

def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("diffboost", "torch", "monai", "diffusers", "accelerate", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


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
    seg = _seg_seconds((run / "seg").glob("*/fold*/summary.json"))
    if seg:
        times.append(("segmentation (all strategies and folds)", seg))
    for d in sorted(p for p in (run / "ablations").glob("*") if p.is_dir()):
        times.append((f"ablation {d.name}", _seg_seconds(d.glob("*/*/fold*/summary.json"))))
    return times


def _seg_seconds(summaries) -> float:
    """Training + evaluation time of the segmentation runs whose ``summary.json`` files are given."""
    total = 0.0
    for p in summaries:
        s = json.loads(p.read_text())
        total += s.get("train_seconds", 0.0) + s.get("eval_seconds", 0.0)
    return total


def _table(result: dict) -> tuple[str, str]:
    """Table II as Markdown and as HTML (best per column in bold)."""
    from ..segmentation.compare import markdown_table, table_cells

    table, unit = result["table"], result.get("unit", "px")
    heads, rows = table_cells(table, unit)
    htm = ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in heads) + "</tr>"
           + "".join("<tr>" + "".join(f"<td><b>{html.escape(t)}</b></td>" if best else f"<td>{html.escape(t)}</td>"
                                      for t, best in r) + "</tr>" for r in rows) + "</table>"
           + f"<p>Dice, Precision, Recall in %; HD95, ASSD in {'mm' if unit == 'mm' else 'pixels of the original image'}.</p>")
    return markdown_table(table, unit), htm


def _md_rows(head: list[str], body: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *("| " + " | ".join(r) + " |" for r in body)])


def _html_rows(head: list[str], body: list[list[str]], cls: str = "") -> str:
    return (f"<table{f' class={cls!r}' if cls else ''}><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body) + "</table>")


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
                       f"generation {cfg.get('generate', {}).get('seed', '?')}, segmentation {seg.get('seed', '?')}"]]
    wall = prov["wall_seconds"]
    times = [[k, f"{v:,.1f}", f"{v / 60:.1f}"] for k, v in wall.items()]
    times.append(["total", f"{sum(wall.values()):,.1f}", f"{sum(wall.values()) / 60:.1f}"])
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
        base, syn = result["table"].get("none"), result["table"].get("diffboost")
        gain = ""
        if base and syn:
            gain = (f"DiffBoost Dice {syn['dice']['mean'] * 100:.2f} vs no augmentation "
                    f"{base['dice']['mean'] * 100:.2f} ({syn.get('dice_gain_vs_none', 0) * 100:+.1f}% relative, "
                    f"paired Wilcoxon p = {syn.get('wilcoxon_p_vs_none', 1):.3g}).")
        rows = list(csv.DictReader(open(run / "compare" / "cases.csv")))
        add("Table II: segmentation with each augmentation strategy",
            md + "\n" + gain, htm + f"<p>{html.escape(gain)}</p>",
            figures.boxplots(rows, strategies, result.get("unit", "px")), "boxplots")
    else:
        add("Table II", "No comparison yet (run `diffboost compare`).")
    syn_root = next(iter(sorted((run / "synthetic").glob("fold*/generation.json"))), None)
    if syn_root is not None:
        from ..generation.generate import SyntheticSet
        from ..segmentation.patchmix import default_patch

        syn = SyntheticSet(syn_root.parent)
        add("Synthetic variants (Fig. 3)", f"Real image, its condition (edges + mask boundary), the mask outline and "
            f"variants of {syn.root.name} with their augmentation texts; the real mask outlined on each variant.",
            fig=figures.variants(ps, syn), fig_name="variants")
        ri = max(syn.by_real, key=lambda i: ps.manifest[i]["foreground_pixels"])
        add("Algorithm 1 mixing (Fig. 4)", f"The mixed input m·real + (1−m)·synthetic for alpha from 0 (all synthetic) "
            f"to 1 (all real), patch {default_patch(ps.size)} px, one fixed draw of the grid.",
            fig=figures.alpha_strip(np.asarray(ps.images[ri], np.float32),
                                    np.asarray(syn.images[syn.by_real[ri][0]], np.float32), default_patch(ps.size)),
            fig_name="alpha_strip")
    else:
        add("Synthetic variants", "No synthetic set yet (run `diffboost generate`).")
    shown = [s for s in ("none", "diffboost") if s in strategies] or strategies[:2]
    best_classical = None
    if result:
        classical = [s for s in strategies if s not in ("none",) and not s.startswith(("diffboost", "pix2pix"))]
        if classical:
            best_classical = max(classical, key=lambda s: result["table"][s]["dice"]["mean"])
            shown = list(dict.fromkeys(["none", best_classical, *shown]))
    ov = figures.overlays(ps, run / "seg", shown)
    if ov is not None:
        add("Segmentations (Fig. 5)", "The same test cases of fold 0: reference outline in green, prediction in red, "
            f"under {', '.join(shown)}.", fig=ov, fig_name="overlays")
    cv = figures.curves(run, shown)
    if cv is not None:
        add("Training curves", "Diffusion fine-tuning loss per fold; validation Dice per epoch (fold 0), which "
            "chooses each segmenter's checkpoint.", fig=cv, fig_name="curves")
    for f in sorted((run / "ablations").glob("*.json")):
        ab = json.loads(f.read_text())
        head = [ab["param"], *(f"{s} Dice (mean ± std over folds)" for s in ab["dice"])]
        body = [[str(v), *(f"{d[str(v)]['mean'] * 100:.2f} ± {d[str(v)]['std'] * 100:.2f}" for d in ab["dice"].values())]
                for v in ab["values"]]
        note = f"Baseline (none): {ab['baseline'] * 100:.2f}." if ab.get("baseline") is not None else ""
        add(f"Ablation: {ab['param']}", _md_rows(head, body) + (f"\n\n{note}" if note else ""),
            _html_rows(head, body) + (f"<p>{html.escape(note)}</p>" if note else ""),
            f.with_suffix(".png").read_bytes() if f.with_suffix(".png").exists() else None, f"ablation_{ab['param']}")
    prov = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": _versions(),
            "data": {k: ps.meta.get(k) for k in ("source", "format", "size", "num_cases", "num_samples",
                                                 "num_training_samples", "cases_per_category")},
            "folds": [{"train": len(f.train), "val": len(f.val), "test": len(f.test)} for f in ps.folds],
            "wall_seconds": {k: round(v, 1) for k, v in _stage_times(run, ps)}}
    if result:
        prov["segmentation_config"] = result.get("config")
    if (run / "times.json").exists():
        prov["wall_seconds_of_the_last_run_call"] = json.loads((run / "times.json").read_text())
    if (run / "run.yaml").exists():
        prov["run_config"] = yaml.safe_load((run / "run.yaml").read_text())
    atomic_write_text(run / "provenance.json", json.dumps(prov, indent=1, default=str))
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

