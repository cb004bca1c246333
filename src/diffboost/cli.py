"""The ``diffboost`` command line: one verb per stage, each a thin call into the Python API."""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="DiffBoost: text + edge guided diffusion augmentation for medical image segmentation.")
# soft_wrap: a message is never broken into lines of the console's width (80 columns when stderr is a
# file or a pipe), so a path in it stays whole in logs; a terminal wraps long lines by itself
console = Console(stderr=True, soft_wrap=True)


def friendly_errors(fn):
    """Turn expected failures (bad input, bad options) into one red line and exit code 2.

    KeyError, IndexError and the like are programming errors: they keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .data.store import HiddenLabel
        from .errors import ControlFileError, DataError
        from .stages import StaleStage
        from .utils.lock import FolderBusy, LockError

        try:
            return fn(*args, **kwargs)
        except (DataError, FileExistsError, FileNotFoundError, ValueError, FolderBusy, LockError, ControlFileError,
                StaleStage, HiddenLabel) as e:
            console.print(f"[bold red]error:[/] {_escape(str(e))}")
            raise typer.Exit(2) from None

    return wrapper


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _parse_pair(text: Optional[str], name: str) -> Optional[tuple[float, float]]:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--{name} expects two numbers 'LOW,HIGH', got {text!r}") from None
    return lo, hi


@app.command()
@friendly_errors
def prepare(
    source: Path = typer.Argument(..., help="Dataset folder: BUSI, DDTI, BUS-BRA, images/+masks/, MSD task, nnU-Net raw, or a modality/organ/category corpus."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the prepared set to."),
    config: Optional[Path] = typer.Option(None, help="YAML config (its 'prepare:' section); options given here override it."),
    format: Optional[str] = typer.Option(None, "--format", help="auto | busi | ddti | busbra | folders | msd | nnunet | corpus"),
    size: Optional[int] = typer.Option(None, help="Square working size in pixels (default 128)."),
    slices: Optional[str] = typer.Option(None, help="3D: slices used for training: foreground (paper) | all. Every slice is stored for whole-volume evaluation."),
    axis: Optional[int] = typer.Option(None, help="3D: slicing axis (default: the through-plane axis)."),
    channel: Optional[int] = typer.Option(None, help="4D volumes: channel to use (e.g. prostate T2 = 0)."),
    labels: Optional[str] = typer.Option(None, help="Label map: '1,2' merges into 1, '2' selects 2, '1=1,2=2' maps explicitly."),
    window: Optional[str] = typer.Option(None, help="Fixed intensity window 'LOW,HIGH' (e.g. CT '-160,240') instead of percentiles."),
    percentiles: Optional[str] = typer.Option(None, help="Per-image clipping percentiles 'LOW,HIGH' (default 0.5,99.5)."),
    edges: Optional[str] = typer.Option(None, help="soft (no weights needed) | hed (needs --hed-weights)."),
    hed_weights: Optional[str] = typer.Option(None, help="Local BSDS500 HED weights (.pth or .safetensors)."),
    prompt: Optional[str] = typer.Option(None, help="Prompt template or free text; fields {modality} {organ} {category}."),
    modality: Optional[str] = typer.Option(None, help="Override the prompt's modality (e.g. MR)."),
    organ: Optional[str] = typer.Option(None, help="Override the prompt's organ (e.g. Prostate)."),
    category: Optional[str] = typer.Option(None, help="Override the prompt's category (default: the class, else 'normal')."),
    folds: Optional[int] = typer.Option(None, help="Number of case-wise folds (default 3)."),
    val_fraction: Optional[float] = typer.Option(None, help="Part of each training fold kept for validation (default 0.2)."),
    seed: Optional[int] = typer.Option(None, help="Seed of the fold split."),
    repeats: Optional[int] = typer.Option(None, help="Repeated k-fold: this many partitions into --folds folds, each seeded "
                                                     "on its own (default 1); every stage and compare run over partition x fold."),
    budget: Optional[str] = typer.Option(None, help="Label budget: keep the labels of this share of each fold's training + "
                                                    "validation part ('0.1', '25%'), or of N images ('30'); the rest become "
                                                    "unlabelled. Nested: a smaller budget's labels are inside a larger one's."),
    unlabelled: Optional[list[Path]] = typer.Option(None, "--unlabelled", help="A folder of images without labels (any layout "
                                                    "prepare reads, its masks unread, or plain images); repeatable. They train "
                                                    "only the stages that say so, never validate or test."),
    target: Optional[Path] = typer.Option(None, "--target", help="Cross-site: a labelled set of another site (any layout). Its cases "
                                                "make the test folds; every source case trains; a fold's other target cases "
                                                "train as unlabelled images, their labels hidden."),
    duplicates: Optional[float] = typer.Option(None, help="Near-duplicate threshold (2D thumbnail correlation, default 0.92): each group stays in one fold. 1 = exact copies only."),
    no_duplicates: bool = typer.Option(False, "--no-duplicates", help="Do not look for near-duplicates."),
    image_dir: Optional[str] = typer.Option(None, help="Folders layouts: the image folder (default: images/, image/, imgs/ or cropped/, in any case)."),
    mask_dir: Optional[str] = typer.Option(None, help="Folders layouts: the mask folder (default: masks/, labels/, mask/ or label/, in any case)."),
    mask_pattern: Optional[str] = typer.Option(None, help="Folders layouts: the mask's file stem for an image, a template of {stem} (the image's "
                                                          "stem) and {id} (the stem without its first '_' token), e.g. 'mask_{id}' or '{stem}_gt'. "
                                                          "Default: STEM, STEM_mask, STEM_seg, STEM_label(s), mask_STEM or mask_ID."),
    case_pattern: Optional[str] = typer.Option(None, help="Regex on the file stem whose group 'case' (or first group) names the patient: "
                                                          "its images stay in one fold (DDTI: '^(?P<case>[^_]+)_')."),
    categories: Optional[str] = typer.Option(None, help="CSV of NAME,CATEGORY rows, or FILE:COLUMN (a CSV with a header whose ID column, else "
                                                        "its first, names the image; e.g. bus_data.csv:Pathology): the category goes into the prompt."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable or inconsistent files with a warning (listed in dataset.json)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Read a dataset and write a prepared 2D set: arrays, manifest, prompts, edges, folds, preview."""
    from .config import PrepareConfig, PromptConfig, load_section
    from .data.labels import parse_label_map
    from .data.preparation import prepare as run_prepare

    cfg = load_section(config, "prepare", PrepareConfig) if config else PrepareConfig()
    updates = {
        "format": format, "size": size, "slices": slices, "axis": axis, "channel": channel,
        "label_map": parse_label_map(labels), "window": _parse_pair(window, "window"),
        "percentiles": _parse_pair(percentiles, "percentiles"), "edges": edges, "hed_weights": hed_weights,
        "folds": folds, "val_fraction": val_fraction, "seed": seed, "duplicates": duplicates,
        "image_dir": image_dir, "mask_dir": mask_dir, "case_pattern": case_pattern, "categories": categories,
        "mask_pattern": mask_pattern, "repeats": repeats, "budget": budget,
        "unlabelled": [str(u) for u in unlabelled] if unlabelled else None,
        "target": str(target) if target else None,
    }
    values = {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}
    values.update({k: v for k, v in updates.items() if v is not None})
    if hed_weights and edges is None:
        values["edges"] = "hed"
    if skip_bad:
        values["skip_bad"] = True
    if no_duplicates:
        values["duplicates"] = None
    p = cfg.prompt
    values["prompt"] = PromptConfig(
        template=prompt or p.template, modality=modality or p.modality,
        organ=organ or p.organ, category=category or p.category,
    )
    cfg = PrepareConfig(**values)
    ps = run_prepare(source, out, cfg, overwrite=overwrite, progress=not quiet)
    _print_summary(ps)


@app.command("demo-data")
@friendly_errors
def demo_data(
    out: Path = typer.Argument(..., help="Folder to write the synthetic phantoms to (BUSI layout)."),
    n: int = typer.Option(48, "--n", "-n", help="Number of images."),
    seed: int = typer.Option(0, help="Random seed (same seed, same images)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
):
    """Write SYNTHETIC ultrasound-like phantoms with lesion masks, in the BUSI folder layout."""
    from .data.phantoms import generate_phantoms

    path = generate_phantoms(out, n=n, seed=seed, overwrite=overwrite)
    console.print(f"wrote {n} synthetic phantoms to {path}")


@app.command()
@friendly_errors
def info(prepared: Path = typer.Argument(..., help="A prepared set folder.")):
    """Summarise a prepared set: counts, classes, prompts, folds."""
    from .data.store import PreparedSet

    _print_summary(PreparedSet(prepared))


@app.command()
@friendly_errors
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Run folder."),
    n: int = typer.Option(48, "--n", "-n", help="Number of phantom images."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """The main job on built-in SYNTHETIC phantoms: `diffboost run` with the demo preset, then the report."""
    from .data.phantoms import generate_phantoms
    from .runconfig import preset
    from .run import run as run_all

    src = out / "phantoms"
    if not (src / "README.txt").exists():
        generate_phantoms(src, n=n, seed=0, overwrite=True)
    report = run_all(src, out, preset("demo"), progress=not quiet)
    console.print(f"report: {report} (and {report.with_suffix('.md')})")


def _print_summary(ps) -> None:
    m = ps.meta
    t = Table(title=f"prepared set {ps.root}", show_header=False)
    t.add_row("format", m["format"])
    t.add_row("cases / samples / training samples", f"{m['num_cases']} / {m['num_samples']} / {m['num_training_samples']}")
    t.add_row("size", f"{m['size']} x {m['size']}")
    t.add_row("cases per category", ", ".join(f"{k}: {v}" for k, v in m["cases_per_category"].items()))
    t.add_row("labels", ", ".join(f"{k}={v}" for k, v in m["labels"].items()))
    t.add_row("prompts", "; ".join(m["prompts"][:6]) + (" ..." if len(m["prompts"]) > 6 else ""))
    if m.get("num_unlabelled_cases"):
        t.add_row("labelled / unlabelled cases", f"{m.get('num_labelled_cases')} / {m['num_unlabelled_cases']}")
    if m.get("budget") is not None:
        t.add_row("label budget", f"{m['budget']} of each fold's training + validation labels (the rest hidden)")
    if m.get("cross_site"):
        x = m["cross_site"]
        t.add_row("across sites", f"{x['source_cases']} source cases train; {x['target_cases']} cases of {x['target']} "
                                  "make the test folds (a fold's others train unlabelled)")
    if m.get("derived"):
        t.add_row("derived", m["derived"])
    if ps.folds:
        parts = f" ({m.get('repeats')} partitions)" if (m.get("repeats") or 1) > 1 else ""
        what = "train/val/test" + ("/unlabelled" if any(f.unlabelled for f in ps.folds) else "")
        t.add_row(f"folds{parts} ({what} cases)", ", ".join(
            "/".join(str(len(p)) for p in (f.train, f.val, f.test) + ((f.unlabelled,) if "unlabelled" in what else ()))
            for f in ps.folds))
    dups = m.get("near_duplicates") or {}
    if dups.get("groups"):
        t.add_row("near-duplicate groups (kept in one fold)",
                  f"{len(dups['groups'])} groups, {dups.get('cases_in_groups')} cases (threshold {dups.get('threshold')})")
    t.add_row("skipped files", str(len(m["skipped"])))
    t.add_row("time / peak memory", f"{m['seconds']} s / {m['peak_memory_mb']} MB")
    Console().print(t)
    for s in m["skipped"][:10]:
        console.print(f"[yellow]skipped[/] {_escape(s['file'])}: {_escape(s['problem'])}")



@app.command()
@friendly_errors
def predict(
    seg_run: Path = typer.Argument(..., help="A segmentation run folder (train-seg, compare or run: seg/STRATEGY/seedS/foldK)."),
    source: Path = typer.Argument(..., help="Images to segment: any layout prepare reads (labelled or not) or a plain folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the masks (PNG for PNG/JPG images, NIfTI for NIfTI)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Segment new images with a trained segmenter: one mask per image at its original size and grid."""
    from .segmentation.apply import predict_folder

    folder = predict_folder(seg_run, source, out, overwrite=overwrite, progress=not quiet)
    console.print(f"masks: {folder} (list: {folder / 'predictions.csv'})")


@app.command()
@friendly_errors
def evaluate(
    predictions: Path = typer.Argument(..., help="A `diffboost predict` output folder."),
    source: Path = typer.Argument(..., help="The labelled source the images came from."),
    format: Optional[str] = typer.Option(None, "--format", help="The source's layout when detection fails (as prepare's)."),
    image_dir: Optional[str] = typer.Option(None, help="Folders layouts: the image folder."),
    mask_dir: Optional[str] = typer.Option(None, help="Folders layouts: the mask folder."),
    mask_pattern: Optional[str] = typer.Option(None, help="Folders layouts: the mask's file stem, e.g. 'mask_{id}' or '{stem}_gt' (as prepare's)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Score predicted masks against the source's labels (per-case CSV, summary with lesion rows and FP rate)."""
    from .segmentation.apply import evaluate_folder, summary_markdown

    summary = evaluate_folder(predictions, source, progress=not quiet, layout={
        "format": format, "image_dir": image_dir, "mask_dir": mask_dir, "mask_pattern": mask_pattern})
    typer.echo(summary_markdown(summary))
    console.print(f"per case: {predictions / 'evaluation' / 'cases.csv'}")


# ---- diffusion: pretrain, finetune, generate ---------------------------------------------------

def _stage_cfg(config: Optional[Path], section: str, cls: type, **overrides):
    """A stage's config: the YAML section (or defaults), then the options given on the command line."""
    from .config import load_section

    cfg = load_section(config, section, cls) if config else cls()
    for k, v in overrides.items():
        if v is not None:
            setattr(cfg, k, v)
    cfg.__post_init__()
    return cfg


def _train_cfg(config: Optional[Path], **overrides):
    from .diffusion.train import TrainConfig

    return _stage_cfg(config, "train", TrainConfig, **overrides)


def _model_cfg(config: Optional[Path], **overrides):
    from .diffusion.models import ModelConfig

    return _stage_cfg(config, "model", ModelConfig, **overrides)


@app.command()
@friendly_errors
def pretrain(
    corpus: Path = typer.Argument(..., help="A RadImageNet-style corpus (modality/organ/category/*.png) or a prepared corpus."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (prepared/, checkpoints, samples, loss.csv, model/)."),
    preset: Optional[str] = typer.Option(None, help="Take the model, training options, size and pretraining steps of a "
                                                     "preset (demo | cpu | gpu); --config lays its sections over it."),
    config: Optional[Path] = typer.Option(None, help="YAML config with 'model:' and 'train:' sections (and 'pretrain:', 'prepare:' with --preset)."),
    size: Optional[int] = typer.Option(None, help="Working size when the corpus still has to be prepared (default 128, or the preset's)."),
    control: Optional[str] = typer.Option(None, help="Edge injection: concat (default, cheap) | controlnet."),
    kind: Optional[str] = typer.Option(None, help="small (from scratch) | sd15 (needs --pretrained)."),
    pretrained: Optional[str] = typer.Option(None, help="sd15: local Stable Diffusion 1.5 folder or .safetensors file."),
    steps: Optional[int] = typer.Option(None, help="Optimisation steps."),
    batch_size: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate."),
    mixed_precision: Optional[str] = typer.Option(None, help="no | fp16 | bf16 (GPU)."),
    task: Optional[Path] = typer.Option(None, help="The prepared set the model will be fine-tuned and evaluated on: a corpus holding its cases (same file, bytes, image or a near-duplicate) is refused."),
    allow_task_overlap: bool = typer.Option(False, "--allow-task-overlap", help="Pretrain even on a corpus that holds cases of --task (or on a task's prepared set): leaks its test folds."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo a pretraining that OUT holds with other options or another corpus."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Stage 1: pretrain the text + edge conditioned diffusion model on a radiology corpus (soft edges).
    Interrupted, the same command resumes from the last checkpoint without preparing the corpus again."""
    from .config import to_dict
    from .data.overlap import check_task_overlap
    from .data.readers.corpus import corpus_files
    from .data.store import PreparedSet
    from .diffusion.pretrain import pretrain as run_pretrain
    from .diffusion.pretrain import pretraining_configs, prepared_corpus
    from .stages import StaleStage, check_stage, listing_fingerprint, prepared_fingerprint, stamp

    fraction = 1.0
    if preset:
        from .runconfig import load_run_config

        rc = load_run_config(config, preset)
        base_model, base_train = rc.model, dataclasses.replace(rc.train, steps=rc.pretrain.steps)
        size, fraction = size or rc.prepare.size, rc.pretrain.max_timestep_fraction
        overrides = {"control": control, "kind": kind, "pretrained": pretrained}
        base_model = dataclasses.replace(base_model, **{k: v for k, v in overrides.items() if v is not None})
        overrides = {"steps": steps, "batch_size": batch_size, "learning_rate": lr, "mixed_precision": mixed_precision}
        base_train = dataclasses.replace(base_train, **{k: v for k, v in overrides.items() if v is not None})
    else:
        base_model = _model_cfg(config, control=control, kind=kind, pretrained=pretrained)
        base_train = _train_cfg(config, steps=steps, batch_size=batch_size, learning_rate=lr,
                                mixed_precision=mixed_precision)
        fraction = base_train.max_timestep_fraction  # the config's (default 1: every noise level)
    size = size or 128
    is_prepared = (corpus / "dataset.json").exists() and (corpus / "manifest.csv").exists()
    if is_prepared:
        ps = PreparedSet(corpus)
        if task is None and ps.meta.get("has_masks", True) and not allow_task_overlap:
            raise ValueError(f"{corpus}: is a task's prepared set (masks and case-wise test folds); pretraining on it "
                             "leaks its test folds into the model. Pretrain on a separate corpus (name the task with "
                             "--task to check it), or pass --allow-task-overlap")
    mcfg, tcfg = pretraining_configs(base_model, base_train, PreparedSet(corpus).size if is_prepared else size, fraction)
    what = prepared_fingerprint(PreparedSet(corpus)) if is_prepared else listing_fingerprint(corpus_files(corpus))
    identity = {"corpus": what, "size": mcfg.image_size, "model": to_dict(mcfg), "train": to_dict(tcfg)}
    try:
        if not check_stage(out, "pretrain", identity, {"pretrain"} if overwrite else set()):
            stamp(out, identity)  # before training: an interrupted pretraining resumes
    except StaleStage as e:
        raise StaleStage(str(e).split(" Rerun with")[0] + " Rerun with --overwrite to redo it, or use another --out") from None
    ps = prepared_corpus(corpus, out / "prepared", mcfg.image_size, progress=not quiet)
    if task is not None:
        check_task_overlap(ps, PreparedSet(task), allow_task_overlap, record=out / "task_overlap.json")
    model = run_pretrain(corpus, out, mcfg, tcfg, size=mcfg.image_size, progress=not quiet)
    console.print(f"model: {model}")


@app.command()
@friendly_errors
def finetune(
    prepared: Path = typer.Argument(..., help="A prepared set (diffboost prepare)."),
    fold: int = typer.Option(0, "--fold", "-k", help="Fold whose TRAINING part is used (never its test part)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default PREPARED/../models/foldK)."),
    init: Optional[Path] = typer.Option(None, help="A pretrained model folder to start from."),
    config: Optional[Path] = typer.Option(None, help="YAML config with 'model:' and 'train:' sections."),
    control: Optional[str] = typer.Option(None, help="Edge injection for a new model: concat | controlnet."),
    kind: Optional[str] = typer.Option(None, help="small | sd15."),
    pretrained: Optional[str] = typer.Option(None, help="sd15: local Stable Diffusion 1.5 folder or .safetensors file."),
    steps: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None, "--lr"),
    mixed_precision: Optional[str] = typer.Option(None),
    resume: Optional[str] = typer.Option(None, help="'latest' or a checkpoint folder."),
    unlabelled: bool = typer.Option(False, "--unlabelled", help="Also learn from the fold's unlabelled training images (edges + a 'no mask' condition)."),
    mask_dropout: Optional[float] = typer.Option(None, help="Probability that a labelled image trains with the 'no mask' condition too (e.g. 0.1 with --unlabelled)."),
    allow_task_overlap: bool = typer.Option(False, "--allow-task-overlap", help="Start from a model whose pretraining corpus holds cases of this set (or cannot be checked): leaks its test folds."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Stage 2: fine-tune on the training cases of one fold, condition = edges + mask boundary (with
    --unlabelled, its unlabelled training images too, condition = edges + 'no mask')."""
    from .data.store import PreparedSet
    from .diffusion.pretrain import check_init_corpus
    from .diffusion.train import finetune_indices, train_diffusion

    ps = PreparedSet(prepared).for_fold(fold)
    f = ps.fold(fold)
    out = out or prepared.parent / "models" / f"fold{fold}"
    if init is not None:  # the pretraining corpus must not hold cases of this set (any fold)
        out.mkdir(parents=True, exist_ok=True)
        check_init_corpus(init, ps, allow_task_overlap, record=out / "task_overlap.json")
    mcfg = _model_cfg(config, control=control, kind=kind, pretrained=pretrained, image_size=ps.size)
    tcfg = _train_cfg(config, steps=steps, batch_size=batch_size, learning_rate=lr,
                      mixed_precision=mixed_precision, condition="condition", unlabelled=True if unlabelled else None,
                      mask_dropout=mask_dropout)
    model = train_diffusion(ps, out, finetune_indices(ps, fold, tcfg), mcfg, tcfg, init=init, resume=resume,
                            val_indices=ps.indices(f.val, training=True), progress=not quiet)
    console.print(f"model: {model}")


@app.command()
@friendly_errors
def generate(
    model: Path = typer.Argument(..., help="A model folder (…/model from finetune)."),
    prepared: Path = typer.Argument(..., help="The prepared set the model was fine-tuned on."),
    fold: int = typer.Option(0, "--fold", "-k"),
    n: Optional[int] = typer.Option(None, "-n", help="Variants per training image (default 4, or the config's)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Default PREPARED/../synthetic/foldK."),
    config: Optional[Path] = typer.Option(None, help="YAML config with a 'generate:' section."),
    sampler: Optional[str] = typer.Option(None, help="ddim | dpm++ | unipc | euler."),
    steps: Optional[int] = typer.Option(None),
    guidance: Optional[float] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    texts: Optional[str] = typer.Option(None, help="Augmentation texts separated by '|' ('' = plain prompt); variant i uses text i mod len."),
    blend: bool = typer.Option(False, "--blend", help="The public code's text-embedding blend (see docs)."),
    strength: Optional[float] = typer.Option(None, help="Image-to-image strength in (0, 1]: the real image noised to strength x T, then denoised; 1 = from noise (default)."),
    mask_strength: Optional[float] = typer.Option(None, help="The labelled region's own strength, in [0, strength]: the lesion changes less than its surroundings (default: strength)."),
    unlabelled: bool = typer.Option(False, "--unlabelled", help="Also draw variants of the fold's unlabelled training images (edges + the 'no mask' condition): fixmatch-diffboost's strong views."),
    target_style: bool = typer.Option(False, "--target-style", help="Cross-site sets: draw each labelled image's variants with a target scanner in the prompt (diffboost-target; default folder PREPARED/../synthetic_diffboost-target/foldK)."),
    seed: Optional[int] = typer.Option(None),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Stage 3: n label-preserving synthetic variants of every training image of a fold."""
    from .generation import GenerateConfig
    from .generation import generate as run_generate

    cfg = _stage_cfg(config, "generate", GenerateConfig, n=n, sampler=sampler, steps=steps, guidance=guidance,
                     batch_size=batch_size, seed=seed, blend=True if blend else None, strength=strength,
                     mask_strength=mask_strength, texts=None if texts is None else tuple(t.strip() for t in texts.split("|")),
                     unlabelled=True if unlabelled else None, target_style=True if target_style else None)
    out = out or prepared.parent / ("synthetic_diffboost-target" if cfg.target_style else "synthetic") / f"fold{fold}"
    syn = run_generate(model, prepared, out, fold, cfg, progress=not quiet)
    console.print(f"{len(syn)} synthetic images in {syn.root}; preview: {syn.root / 'preview.png'}")


@app.command()
@friendly_errors
def layout(
    prepared: Path = typer.Argument(..., help="A prepared set (diffboost prepare)."),
    fold: int = typer.Option(0, "--fold", "-k", help="Fold whose TRAINING part gets new lesions (donors from it too)."),
    kind: str = typer.Option("copy-paste", help="copy-paste (no model) | diffboost-layout | copy-paste-harmonize (need --model)."),
    model: Optional[Path] = typer.Option(None, help="The fold's fine-tuned model (…/models/foldK/model) for the drawn kinds."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Default PREPARED/../synthetic_KIND/foldK (where train-seg looks)."),
    config: Optional[Path] = typer.Option(None, help="YAML with 'layout:' (donors, placement) and 'inpaint:' sections."),
    n: Optional[int] = typer.Option(None, "-n", help="Layout variants per training image (default 3, or the config's)."),
    placement: Optional[str] = typer.Option(None, help="uniform | tissue (default) | depth."),
    seed: Optional[int] = typer.Option(None),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """New lesions in new places: a donor lesion of another training image, transformed, placed where
    lesions occur; label = the union. Train on them with --aug copy-paste / diffboost-layout (+classic)."""
    from .generation.inpaint import KINDS, InpaintConfig, layout_generate
    from .generation.layout import COPY_PASTE, LayoutConfig, copy_paste_set

    if kind not in (COPY_PASTE, *KINDS):
        raise ValueError(f"--kind must be one of {COPY_PASTE}, {', '.join(KINDS)}; got {kind!r}")
    cfg = _stage_cfg(config, "layout", LayoutConfig, n=n, placement=placement, seed=seed)
    out = out or prepared.parent / f"synthetic_{kind}" / f"fold{fold}"
    if kind == COPY_PASTE:
        syn = copy_paste_set(prepared, fold, out, cfg, progress=not quiet)
    else:
        if model is None:
            raise ValueError(f"--kind {kind} draws the lesions with the fold's fine-tuned model: give --model")
        syn = layout_generate(model, prepared, out, fold, kind, cfg, _stage_cfg(config, "inpaint", InpaintConfig),
                              progress=not quiet)
    console.print(f"{len(syn)} layout variants in {syn.root} ({syn.meta.get('missing_variants', 0)} given up: no donor "
                  f"fitted); preview: {syn.root / 'preview.png'}")


# ---- segmentation: train-seg, compare -----------------------------------------------------------

def _seg_cfg(config: Optional[Path], channels: Optional[str], **overrides):
    from .segmentation import SegConfig

    if channels is not None:
        try:
            overrides["channels"] = tuple(int(c) for c in channels.split(","))
        except ValueError:
            raise ValueError(f"--channels expects widths like '16,32,64,128,128,256', got {channels!r}") from None
    return _stage_cfg(config, "seg", SegConfig, **overrides)


def _int_list(text: Optional[str], name: str) -> Optional[list[int]]:
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name} expects comma-separated integers, got {text!r}") from None


def _seg_table(summary: dict, title: str) -> None:
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("mean ± std", justify="right")
    for m, v in summary["metrics"].items():
        t.add_row(m, f"{v['mean']:.4f} ± {v['std']:.4f}")
    Console().print(t)


@app.command("train-seg")
@friendly_errors
def train_seg(
    prepared: Path = typer.Argument(..., help="A prepared set (diffboost prepare)."),
    fold: int = typer.Option(0, "--fold", "-k", help="Test fold; its training part trains, its validation part selects the checkpoint."),
    aug: Optional[str] = typer.Option(None, "--aug", help="none | contrast | gamma | brightness | noise | resolution | mirror | rotate | scale | classic (nnU-Net) | deepstack | diffboost | diffboost+CLASSICAL; with unlabelled images also fixmatch+..., fixmatch-diffboost+..., self-train+... ."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default PREPARED/../seg/AUG/foldK)."),
    config: Optional[Path] = typer.Option(None, help="YAML config with a 'seg:' section."),
    network: Optional[str] = typer.Option(None, help="attention_unet | unet | res_unet | resnet50_unet | swin_unetr | basic_unet."),
    channels: Optional[str] = typer.Option(None, help="Network widths, e.g. '16,32,64,128,128,256'."),
    size: Optional[int] = typer.Option(None, help="Working size (default: the prepared set's)."),
    epochs: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None, "--lr"),
    alpha: Optional[float] = typer.Option(None, help="Algorithm 1: probability of a real patch (default 0.6)."),
    patch: Optional[int] = typer.Option(None, help="Algorithm 1: patch size in pixels (default: 64 at 384 px, scaled)."),
    n: Optional[int] = typer.Option(None, "-n", help="Synthetic variants per image to use (default: all)."),
    mix: Optional[str] = typer.Option(None, help="input (paper's Algorithm 1) | output (public code)."),
    mix_prob: Optional[float] = typer.Option(None, help="Algorithm 1: probability that a sample is mixed at all (default 1)."),
    teacher_gate: Optional[float] = typer.Option(None, help="Drop variants whose teacher Dice is below this fraction of the real image's (e.g. 0.8)."),
    pixel_filter: Optional[float] = typer.Option(None, help="Ignore variant pixels whose teacher loss exceeds this multiple of the real images' mean (e.g. 1.25)."),
    confidence: Optional[float] = typer.Option(None, help="fixmatch / self-train: a pseudo-labelled pixel counts when its confidence exceeds this (default 0.95)."),
    unlabelled_weight: Optional[float] = typer.Option(None, help="fixmatch: weight of the unlabelled term (default 1)."),
    self_train_keep: Optional[float] = typer.Option(None, help="self-train: share of the unlabelled images kept, the most confident (default 0.5)."),
    synthetic: Optional[str] = typer.Option(None, help="Synthetic set folder ('{fold}' is filled in); default PREPARED/../synthetic/foldK."),
    seed: Optional[int] = typer.Option(None),
    quality_filter: bool = typer.Option(False, "--quality-filter", help="Drop synthetic variants that fail the quality checks."),
    precision: Optional[str] = typer.Option(None, help="fp32 | bf16 (autocast while training) | auto (bf16 where the device has it natively)."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda | cuda:N (default: cuda when available)."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Stage 4: train one segmenter on one fold and evaluate it on the fold's test cases."""
    from .segmentation import train_seg as run_train_seg

    cfg = _seg_cfg(config, channels, aug=aug, network=network, size=size, epochs=epochs, batch_size=batch_size,
                   learning_rate=lr, alpha=alpha, patch=patch, n=n, mix=mix, synthetic=synthetic, seed=seed,
                   precision=precision, device=device, threads=threads, quality_filter=True if quality_filter else None,
                   mix_prob=mix_prob, teacher_gate=teacher_gate, pixel_filter=pixel_filter, confidence=confidence,
                   unlabelled_weight=unlabelled_weight, self_train_keep=self_train_keep)
    summary = run_train_seg(prepared, fold, cfg, out, progress=not quiet)
    _seg_table(summary, f"{cfg.aug}, fold {fold}: {summary['cases']} test cases (best epoch {summary['best_epoch']})")


@app.command()
@friendly_errors
def compare(
    prepared: Path = typer.Argument(..., help="A prepared set (diffboost prepare)."),
    augs: Optional[str] = typer.Option(None, "--augs", help="Comma-separated strategies (default: none, the 8 classical ones, classic, deepstack, diffboost, diffboost+classic)."),
    folds: Optional[str] = typer.Option(None, help="Comma-separated folds (default: all)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for seg/ and compare/ (default: beside PREPARED)."),
    config: Optional[Path] = typer.Option(None, help="YAML config with a 'seg:' section."),
    network: Optional[str] = typer.Option(None),
    channels: Optional[str] = typer.Option(None),
    size: Optional[int] = typer.Option(None),
    epochs: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None, "--lr"),
    alpha: Optional[float] = typer.Option(None),
    patch: Optional[int] = typer.Option(None),
    n: Optional[int] = typer.Option(None, "-n"),
    mix: Optional[str] = typer.Option(None),
    mix_prob: Optional[float] = typer.Option(None, help="Algorithm 1: probability that a sample is mixed at all."),
    teacher_gate: Optional[float] = typer.Option(None, help="Variant gate: fraction of the teacher's Dice on the real image."),
    pixel_filter: Optional[float] = typer.Option(None, help="Pixel filter: multiple of the teacher's mean loss on real images."),
    confidence: Optional[float] = typer.Option(None, help="fixmatch / self-train: pseudo-label confidence threshold (default 0.95)."),
    unlabelled_weight: Optional[float] = typer.Option(None, help="fixmatch: weight of the unlabelled term (default 1)."),
    self_train_keep: Optional[float] = typer.Option(None, help="self-train: share of the unlabelled images kept (default 0.5)."),
    synthetic: Optional[str] = typer.Option(None),
    seed: Optional[int] = typer.Option(None),
    quality_filter: bool = typer.Option(False, "--quality-filter"),
    precision: Optional[str] = typer.Option(None, help="fp32 | bf16 | auto (bf16 where the device has it natively)."),
    device: Optional[str] = typer.Option(None),
    threads: Optional[int] = typer.Option(None),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds: every strategy trains once per seed and fold (default: --seed)."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Segmentation runs at once, in local processes (one torch thread each on a CPU)."),
    budgets: Optional[str] = typer.Option(None, help="Learning curve: comma-separated label budgets (e.g. 0.1,0.25,1; N = N images); "
                                                     "every strategy at every budget on the same test folds and seeds."),
    steps_per_epoch: Optional[int] = typer.Option(None, help="Optimiser steps per epoch (default: one pass over the labelled "
                                                             "images); set it so that every budget trains as long."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Stage 4: every strategy on the same folds and seeds; writes the paper's Table II (with --budgets,
    one per budget and the learning curve)."""
    from .segmentation import DEFAULT_COMPARE
    from .segmentation import compare as run_compare

    cfg = _seg_cfg(config, channels, network=network, size=size, epochs=epochs, batch_size=batch_size,
                   learning_rate=lr, alpha=alpha, patch=patch, n=n, mix=mix, synthetic=synthetic, seed=seed,
                   precision=precision, device=device, threads=threads, quality_filter=True if quality_filter else None,
                   mix_prob=mix_prob, teacher_gate=teacher_gate, pixel_filter=pixel_filter,
                   steps_per_epoch=steps_per_epoch, confidence=confidence, unlabelled_weight=unlabelled_weight,
                   self_train_keep=self_train_keep)
    strategies = [s.strip() for s in augs.split(",") if s.strip()] if augs else list(DEFAULT_COMPARE)
    fold_list = [int(k) for k in folds.split(",")] if folds else None
    seed_list = _int_list(seeds, "--seeds")
    if budgets:
        from .segmentation.curves import learning_curve

        curve = learning_curve(prepared, [b.strip() for b in budgets.split(",") if b.strip()], strategies, cfg, out,
                               fold_list, seed_list, jobs, progress=not quiet)
        from .segmentation.curves import curve_markdown

        typer.echo(curve_markdown(curve))
        console.print(f"learning curve: {(out or prepared.parent) / 'compare' / 'learning_curve.md'}")
        return
    result = run_compare(prepared, strategies, cfg, out, fold_list, progress=not quiet, seeds=seed_list, jobs=jobs)
    from .segmentation.compare import markdown_tables

    typer.echo(markdown_tables(result))
    console.print(f"tables: {(out or prepared.parent) / 'compare'}")


# ---- export -------------------------------------------------------------------------------------

@app.command()
@friendly_errors
def export(
    source: Path = typer.Argument(..., help="A prepared set, or a run folder with prepared/ and synthetic/foldK."),
    to: str = typer.Option("nnunet", "--to", help="nnunet (v2 raw) | msd."),
    out: Path = typer.Option(Path("."), "--out", "-o", help="Parent folder (e.g. $nnUNet_raw)."),
    dataset_id: int = typer.Option(501, "--dataset-id", help="nnU-Net dataset id / MSD task number."),
    name: str = typer.Option("DiffBoost", "--name", help="Dataset name (letters, digits, _ and -)."),
    file_ending: Optional[str] = typer.Option(None, help="nnunet: .png (2D default) or .nii.gz (3D default)."),
    volumes: str = typer.Option("slices", help="3D sets: slices (one case per slice) | volumes (re-stacked)."),
    n: Optional[int] = typer.Option(None, "-n", help="Variants per image to export (default: all)."),
    synthetic: Optional[str] = typer.Option(None, help="Synthetic set folders ('{fold}' is filled in)."),
    size: str = typer.Option("original", help="original (real cases re-read at their size and spacing, variants "
                                              "resized to them) | working (the prepared size)."),
    fold: Optional[int] = typer.Option(None, "--fold", "-k", help="Export this fold alone (nnU-Net's fold 0): "
                                       "needed at a label budget, which hides other labels in each fold."),
    overwrite: bool = typer.Option(False, "--overwrite"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Export real cases and their synthetic variants as an nnU-Net v2 or MSD raw dataset: splits_final.json
    validates each fold on its validation part (never its test fold, never a synthetic case), the test
    cases go to imagesTs with their labels in labelsTs, images without a label to imagesUnlabelled."""
    from .export import ExportConfig, export_dataset

    cfg = ExportConfig(to=to, dataset_id=dataset_id, name=name, file_ending=file_ending, volumes=volumes, n=n,
                       synthetic=synthetic, size=size, fold=fold)
    path = export_dataset(source, out, cfg, overwrite=overwrite, progress=not quiet)
    import json

    meta = json.loads((path / "dataset.json").read_text())
    blind = len(json.loads((path / "diffboost_export.json").read_text())["unlabelled_images"])
    console.print(f"wrote {meta['numTraining']} cases to {path} (splits_final.json beside dataset.json)"
                  + (f"; {blind} images without a label in imagesUnlabelled" if blind else ""))


# ---- nnU-Net v2 ----------------------------------------------------------------------------------

nnunet_app = typer.Typer(no_args_is_help=True, help="Train nnU-Net v2 with DiffBoost's Algorithm 1 (nnUNetTrainerDiffBoost).")
app.add_typer(nnunet_app, name="nnunet")


def _need_nnunet():
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        raise ValueError("nnU-Net v2 is not installed: pip install 'diffboost[nnunet]'") from None


@nnunet_app.command("train")
@friendly_errors
def nnunet_train(
    dataset: str = typer.Argument(..., help="nnU-Net dataset id or name (exported by `diffboost export`, then planned "
                                            "and preprocessed with nnUNetv2_plan_and_preprocess)."),
    configuration: str = typer.Argument("2d", help="A 2D configuration (2d)."),
    fold: str = typer.Argument("0", help="The fold of splits_final.json (copy the exported one into nnUNet_preprocessed)."),
    device: str = typer.Option("cuda", help="cuda | cpu | mps."),
    alpha: Optional[float] = typer.Option(None, help="Probability that a cell shows the real image (default 0.6)."),
    patch: Optional[int] = typer.Option(None, help="Cell size in pixels (default: 64 px at 384 px, scaled)."),
    mix_prob: Optional[float] = typer.Option(None, help="Share of samples mixed (default 1)."),
    epochs: Optional[int] = typer.Option(None, help="nnU-Net's epochs (default 1000)."),
    iterations: Optional[int] = typer.Option(None, help="Training iterations per epoch (default 250)."),
    val_iterations: Optional[int] = typer.Option(None, help="Validation iterations per epoch (default 50)."),
    resume: bool = typer.Option(False, "--continue", help="Continue from the fold's latest checkpoint."),
):
    """nnU-Net's own training with nnUNetTrainerDiffBoost: each real case mixed patch-wise with one of its
    synthetic variants, before nnU-Net's augmentation; then nnU-Net's validation."""
    _need_nnunet()
    from .integrations.nnunet import MIXING_FILE, train

    out = train(dataset, configuration, fold, device=device, continue_training=resume, epochs=epochs,
                iterations=iterations, val_iterations=val_iterations, alpha=alpha, patch=patch, mix_prob=mix_prob)
    console.print(f"trained {out} (mixing counts in {out / MIXING_FILE})")


@nnunet_app.command("pseudo-label")
@friendly_errors
def nnunet_pseudo_label(
    dataset: Path = typer.Argument(..., help="The exported dataset folder ($nnUNet_raw/DatasetXXX_NAME)."),
    predictions: Path = typer.Argument(..., help="nnUNetv2_predict's output for imagesUnlabelled, with --save_probabilities."),
    fold: int = typer.Option(0, "--fold", "-f", help="The split of splits_final.json (a one-fold export holds one: 0)."),
    keep: float = typer.Option(0.5, help="Share of the images kept, the most confident first (self-train's self_train_keep)."),
    confidence: float = typer.Option(0.95, help="Pixels at or under this confidence get nnU-Net's ignore label (out of the loss)."),
):
    """Self-training in nnU-Net: add the most confident pseudo-labelled images (from imagesUnlabelled) of a
    one-fold export (export --fold K) to its training list, uncertain pixels ignored; then plan, preprocess
    and train it again."""
    _need_nnunet()
    from .integrations.nnunet_selftrain import add_pseudo_labels

    rec = add_pseudo_labels(dataset, predictions, fold, keep=keep, confidence=confidence)
    console.print(f"fold {fold}: {len(rec['added'])} of {rec['images']} images added with pseudo-labels (ignore label "
                  f"{rec['ignore_label']}); plan and preprocess again, then copy splits_final.json")


@nnunet_app.command("trainer-dir")
def nnunet_trainer_dir():
    """Print the folder to put in nnUNet_extTrainer, so that `nnUNetv2_train ... -tr nnUNetTrainerDiffBoost` finds it."""
    from pathlib import Path as _Path

    typer.echo(_Path(__file__).parent / "integrations" / "nnunet_trainers")


# ---- fidelity and the Pix2Pix baseline ----------------------------------------------------------

pix2pix_app = typer.Typer(no_args_is_help=True, help="The Pix2Pix (edge -> image GAN) baseline.")
app.add_typer(pix2pix_app, name="pix2pix")


@pix2pix_app.command("train")
@friendly_errors
def pix2pix_train(
    prepared: Path = typer.Argument(..., help="A prepared set."),
    fold: int = typer.Option(0, "--fold", "-k", help="Fold whose TRAINING part is used."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default PREPARED/../pix2pix/foldK)."),
    config: Optional[Path] = typer.Option(None, help="YAML config with a 'pix2pix:' section."),
    steps: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Train Pix2Pix (U-Net generator, PatchGAN, L1 + adversarial) from conditions to images."""
    from .data.store import PreparedSet
    from .generation.pix2pix import Pix2PixConfig, train_pix2pix

    cfg = _stage_cfg(config, "pix2pix", Pix2PixConfig, steps=steps, batch_size=batch_size)
    ps = PreparedSet(prepared)
    model = train_pix2pix(ps, fold, out or prepared.parent / "pix2pix" / f"fold{fold}", cfg, progress=not quiet)
    console.print(f"model: {model}")


@pix2pix_app.command("generate")
@friendly_errors
def pix2pix_generate(
    model: Path = typer.Argument(..., help="A Pix2Pix model folder (…/model)."),
    prepared: Path = typer.Argument(..., help="The prepared set it was trained on."),
    fold: int = typer.Option(0, "--fold", "-k"),
    n: int = typer.Option(1, "-n", help="Variants per training image (they differ by dropout)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Default PREPARED/../synthetic_pix2pix/foldK."),
    seed: int = typer.Option(0),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Write a synthetic set from Pix2Pix, usable as the `pix2pix` strategy of train-seg / compare."""
    from .data.store import PreparedSet
    from .generation.pix2pix import generate_pix2pix

    syn = generate_pix2pix(model, PreparedSet(prepared), out or prepared.parent / "synthetic_pix2pix" / f"fold{fold}",
                           fold, n=n, seed=seed, progress=not quiet)
    console.print(f"{len(syn)} synthetic images in {syn.root}")


@app.command()
@friendly_errors
def fidelity(
    model: Path = typer.Argument(..., help="A diffusion model folder (…/model from finetune)."),
    prepared: Path = typer.Argument(..., help="The prepared set."),
    fold: int = typer.Option(0, "--fold", "-k", help="Its TEST images are generated and compared."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Default PREPARED/../fidelity/foldK (+ _strengthS, _nomask)."),
    samplers: str = typer.Option("dpm++:20", help="Comma-separated SAMPLER:STEPS settings, e.g. 'dpm++:20,ddim:50'."),
    pix2pix: Optional[Path] = typer.Option(None, help="A Pix2Pix model folder to compare with."),
    guidance: float = typer.Option(3.0),
    limit: Optional[int] = typer.Option(None, help="At most this many test images (spread over the fold)."),
    teacher: Optional[Path] = typer.Option(None, help="A segmenter trained on the fold's training part (e.g. RUN/seg/none/seed0/foldK/model): adds the label consistency of the generated images."),
    strength: float = typer.Option(1.0, help="1: from noise (Table I). Below 1: from each test image noised to this fraction of the timesteps, as `generate` draws variants (a model fine-tuned with train.max_timestep_fraction takes at most that)."),
    no_mask: bool = typer.Option(False, "--no-mask", help="Condition on the edges and the 'no mask' input (a model fine-tuned with train.unlabelled), as the variants of unlabelled images are drawn."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Table I: MAE, MSE, RMSE, SSIM, MS-SSIM of images generated from held-out edges, vs Pix2Pix."""
    from .evaluation.fidelity import fidelity as run_fidelity
    from .evaluation.fidelity import table_markdown

    try:
        settings = [(s.split(":")[0].strip(), int(s.split(":")[1])) for s in samplers.split(",") if s.strip()]
    except (IndexError, ValueError):
        raise ValueError(f"--samplers expects SAMPLER:STEPS[,...], got {samplers!r}") from None
    how = (f"_strength{strength:g}" if strength < 1 else "") + ("_nomask" if no_mask else "")
    out = out or prepared.parent / "fidelity" / f"fold{fold}{how}"
    rows = run_fidelity(model, prepared, fold, out, settings, pix2pix, guidance, limit, progress=not quiet,
                        teacher=teacher, strength=strength, no_mask=no_mask)
    typer.echo(table_markdown(rows))
    console.print(f"tables and grid: {out}")


@app.command()
@friendly_errors
def consistency(
    run_dir: Optional[Path] = typer.Argument(None, help="A run folder: every fold with synthetic/foldK and a teacher seg/none/seed<s>/foldK/model."),
    teacher: Optional[Path] = typer.Option(None, help="A segmenter folder (…/model) to check with instead of the run's none run ('{fold}' is filled in)."),
    synthetic: Optional[str] = typer.Option(None, help="A synthetic set folder instead of RUN_DIR/synthetic/foldK ('{fold}' is filled in); needs --teacher."),
    prepared: Optional[Path] = typer.Option(None, help="The prepared set (default RUN_DIR/prepared, or beside the synthetic set's folder)."),
    folds: Optional[str] = typer.Option(None, help="Comma-separated folds (default: every fold that has a set; with --synthetic, the fold it was made for)."),
    seed: Optional[int] = typer.Option(None, help="Whose none run teaches (default: the run's first segmentation seed)."),
    batch_size: int = typer.Option(32, "--batch-size"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Label consistency: a teacher segmenter checks every synthetic variant against its real mask;
    writes consistency.csv / .json and teacher_loss.npy into each synthetic set."""
    from .data.store import PreparedSet
    from .evaluation.consistency import consistency_for_run, label_consistency

    fold_list = _int_list(folds, "--folds")
    if synthetic is None and teacher is None:
        if run_dir is None:
            raise ValueError("name a run folder, or a synthetic set with --synthetic and a teacher with --teacher")
        results = consistency_for_run(run_dir, fold_list, seed, batch_size=batch_size, progress=not quiet)
        if not results:
            raise FileNotFoundError(f"{run_dir}: no fold has both a synthetic set (synthetic/foldK) and a teacher "
                                    "(seg/none/seed<s>/foldK/model); run `diffboost run` or `diffboost compare "
                                    "--augs none` first")
    else:
        if teacher is None:
            raise ValueError("--synthetic needs --teacher (a segmenter trained on the fold's training part)")
        if synthetic is None and run_dir is None:
            raise ValueError("--teacher needs a run folder or --synthetic (the synthetic set to check)")
        pattern = synthetic or str(run_dir / "synthetic" / "fold{fold}")
        ps = PreparedSet(prepared or (run_dir / "prepared" if run_dir else
                                      Path(pattern.format(fold=0)).parent.parent / "prepared"))
        if fold_list is None and "{fold}" not in pattern:  # one set: the fold it was made for
            from .generation.synthetic import SyntheticSet

            meta = SyntheticSet(pattern).meta
            fold_list = [int(meta.get("fold", meta.get("identity", {}).get("fold", 0)))]
        elif fold_list is None:
            fold_list = [k for k in range(len(ps.folds)) if (Path(pattern.format(fold=k)) / "generation.json").exists()]
        results = {k: label_consistency(str(teacher).format(fold=k), ps, pattern.format(fold=k), k, batch_size,
                                        progress=not quiet) for k in fold_list}
    _consistency_table(results)


def _consistency_table(results: dict[int, dict]) -> None:
    t = Table(title="label consistency: teacher Dice on the variants / on their real images (vs the real masks)")
    for col in ("fold", "group", "variants", "Dice variants (%)", "Dice real (%)", "consistency"):
        t.add_column(col, justify="left" if col == "group" else "right")

    def cell(v, scale=1.0, digits=2):
        return "—" if v is None else f"{v * scale:.{digits}f}"

    for k, s in sorted(results.items()):
        groups = [("overall", s["overall"])] + [(f"text: {g}", d) for g, d in s["per_text"].items()] + \
                 [(f"strength: {g}", d) for g, d in s["per_strength"].items()]
        for name, d in groups:
            t.add_row(str(k), name, str(d["variants"]), cell(d["teacher_dice_variant"], 100),
                      cell(d["teacher_dice_real"], 100), cell(d["consistency"], digits=3))
        t.add_section()
    Console().print(t)
    for k, s in sorted(results.items()):
        console.print(f"fold {k}: teacher {s['teacher']['path']}; teacher CE on real {s['teacher_loss_real_mean']:.4f}; "
                      f"consistency.csv, consistency.json, teacher_loss.npy in {s['synthetic']}")


# ---- the whole pipeline ---------------------------------------------------------------------------

@app.command("run")
@friendly_errors
def run_cmd(
    data: Path = typer.Option(..., "--data", help="Dataset folder (BUSI, MSD, nnU-Net, images/+masks/)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: prepared/, models/, synthetic/, seg/, compare/, report."),
    preset_name: str = typer.Option("cpu", "--preset", help="demo | cpu | gpu."),
    config: Optional[Path] = typer.Option(None, help="YAML with sections prepare/pretrain/model/train/generate/seg/compare, laid over the preset."),
    pretrained: Optional[str] = typer.Option(None, help="A local Stable Diffusion 1.5 folder: use the sd15 model."),
    corpus: Optional[str] = typer.Option(None, help="A radiology corpus to pretrain on first (inside the run)."),
    init: Optional[str] = typer.Option(None, "--init", help="A model `diffboost pretrain` made (its model/ folder): fine-tune every fold from it, without pretraining again (pretrain.model)."),
    allow_task_overlap: bool = typer.Option(False, "--allow-task-overlap", help="Pretrain even when the corpus holds cases of --data (leaks its test folds; the report says so)."),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated segmentation seeds (compare.seeds)."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Segmentation runs at once (compare.jobs); one torch thread each on a CPU."),
    redo: Optional[list[str]] = typer.Option(None, "--redo", help="Redo a stage made from other inputs or options, and every "
                                                                  "later one: prepare | pretrain | finetune | generate | seg | all. "
                                                                  "Without it such a stage is refused and nothing is deleted."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo every stage that does not match (= --redo all)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """prepare -> (pretrain) -> fine-tune and generate per fold -> compare -> report, resumable: finished
    stages are reused; one made from other inputs or options is refused unless --redo names it."""
    from .runconfig import load_run_config
    from .run import run as run_all

    cfg = load_run_config(config, preset_name)
    if pretrained:
        cfg.model = dataclasses.replace(cfg.model, kind="sd15", pretrained=pretrained)  # validated again
    if corpus or init:
        cfg.pretrain = dataclasses.replace(cfg.pretrain, corpus=corpus or cfg.pretrain.corpus,
                                           model=init or cfg.pretrain.model)  # validated again
    if allow_task_overlap:
        cfg.pretrain.allow_task_overlap = True
    if seeds or jobs:
        cfg.compare = dataclasses.replace(cfg.compare, seeds=_int_list(seeds, "--seeds") or cfg.compare.seeds,
                                          jobs=jobs or cfg.compare.jobs)
    report = run_all(data, out, cfg, progress=not quiet, redo=redo or (), overwrite=overwrite)
    console.print(f"report: {report} (and {report.with_suffix('.md')}); config: {out / 'run.yaml'}")


@app.command("config")
@friendly_errors
def config_cmd(preset_name: str = typer.Option("cpu", "--preset", help="demo | cpu | gpu.")):
    """Print a full run config (every stage's options) to edit and pass to `diffboost run --config`."""
    from .runconfig import config_yaml, preset

    typer.echo(config_yaml(preset(preset_name)), nl=False)


@app.command()
@friendly_errors
def report(run_dir: Path = typer.Argument(..., help="A run folder (prepared/, seg/, compare/ ...).")):
    """Write DIR/report.html (self-contained) and DIR/report.md with DIR/figures/."""
    from .report import write_report

    console.print(f"report: {write_report(run_dir)}")


@app.command()
@friendly_errors
def ablate(
    run_dir: Path = typer.Argument(..., help="A run folder made by `diffboost run`."),
    sweep: list[str] = typer.Option(..., "--sweep", help="NAME=V1,V2,... with NAME in n, alpha, patch, network, mix_prob, teacher_gate, pixel_filter, strength, mask_strength, condition; for layout strategies placement, scale (LOW-HIGH), lesion_strength; for fixmatch / self-train confidence, unlabelled_weight, self_train_keep; repeatable."),
    strategy: str = typer.Option("diffboost", "--strategy", help="The strategy swept: diffboost, diffboost+classic, mix-classic, copy-paste+classic, diffboost-layout+classic, ... (its gain is measured over the strategy without variants: none or classic)."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Segmentation runs at once (default: the run's compare.jobs)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Ablations on a finished run (the paper's n, alpha, patch size, backbone; the mixing probability, the teacher's filters, the strength and the condition of the variants); appended to its report."""
    from .ablate import ablate as run_ablate
    from .ablate import check_sweeps
    from .runconfig import parse_sweep
    from .report import write_report

    sweeps = [parse_sweep(text) for text in sweep]
    check_sweeps(run_dir, sweeps, strategy)  # a value that cannot train is refused before any sweep trains
    for name, values in sweeps:
        res = run_ablate(run_dir, name, values, progress=not quiet, n_jobs=jobs, strategy=strategy)
        for s, per in res["dice"].items():
            console.print(f"{name} ({s}) test Dice: " + ", ".join(f"{v}: {d['mean']:.4f}" for v, d in per.items()))
        val = res["val_dice"][strategy]
        console.print(f"{name} ({strategy}) validation Dice: " + ", ".join(f"{v}: {d:.4f}" for v, d in val.items())
                      + f"; chosen by validation Dice: {name}={res['chosen']}")
        for v, g in res["gain"].items():
            shown = [f"{k} {d['mean'] * 100:+.2f} [{d['low'] * 100:+.2f}, {d['high'] * 100:+.2f}]"
                     for k, d in g.items() if d is not None]
            if shown:
                console.print(f"  {name}={v}: ΔDice " + "; ".join(shown))
    console.print(f"report: {write_report(run_dir)}")


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
