"""``diffboost run``: data to evidence in one command.

prepare -> (pretrain, when a corpus is given) -> per fold: fine-tune, generate -> compare -> label
consistency (each fold's ``none`` segmenter checks its variants; before the other strategies train
when ``seg.teacher_gate`` / ``seg.pixel_filter`` read it) -> report, with one config (every stage's
options, YAML sections) saved as ``DIR/run.yaml``.

Re-running continues where a run stopped (diffusion training resumes from its last checkpoint,
generation completes missing variants, segmentation resumes at its last epoch, finished folds are
reused). Each stage records what it was made from (:mod:`diffboost.stages`: contents, not paths); a
stage whose inputs or options changed is refused with the reason, and nothing is deleted, unless
``redo`` names it (then it and everything downstream of it is redone, nothing else).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from .config import save_yaml, to_dict
from .stages import StaleStage, digest, stamp
from .utils.atomic import write_control
from .utils.lock import locks_folder
from .runconfig import (PRESETS, AblateConfig, CompareConfig, PretrainConfig, RunConfig, config_yaml,
                        generates_variants, load_run_config, preset)

__all__ = ["PRESETS", "AblateConfig", "CompareConfig", "PretrainConfig", "RunConfig", "config_yaml",
           "load_run_config", "preset", "run"]


# the digest a run of before identity version 2 recorded as a stage's upstream: the same function
_hash = digest


# prepare options added after runs were made: left out of the identity while unset, so that a run made
# before they existed keeps its identity (and its stages) exactly
LATER_PREPARE_OPTIONS = ("image_dir", "mask_dir", "case_pattern", "categories", "mask_pattern", "repeats", "budget",
                         "unlabelled", "target")


def prepare_identity(prepare) -> dict:
    d = to_dict(prepare)
    for k in LATER_PREPARE_OPTIONS:
        if d.get(k) is None:
            d.pop(k, None)
    if d.get("unlabelled"):  # places, not content: the source fingerprint holds their files
        d["unlabelled"] = len(d["unlabelled"])
    if d.get("target"):
        d["target"] = True
    return d


@locks_folder("out")
def run(data: str | Path, out: str | Path, cfg: RunConfig | None = None, progress: bool = True,
        redo=(), overwrite: bool = False) -> Path:
    """Run every stage into ``out``; return the report's path. A stage made from other inputs or options
    than now is refused (:class:`~diffboost.stages.StaleStage`, nothing deleted) unless ``redo`` names it
    or an earlier stage (``prepare``, ``pretrain``, ``finetune``, ``generate``, ``seg``, ``all``), or
    ``overwrite``; see :mod:`diffboost.stages`."""
    from .stages import STAGES, check_stage, listing_fingerprint, prepared_fingerprint, redo_set, source_fingerprint
    from .ablate import ablate
    from .data.preparation import prepare
    from .data.store import PreparedSet
    from .diffusion.train import finetune_fold
    from .evaluation.consistency import consistency_for_run
    from .generation.generate import generate
    from .report import write_report
    from .generation.inpaint import layout_generate
    from .generation.layout import COPY_PASTE, copy_paste_set
    from .runconfig import layout_kinds, parse_sweep
    from .segmentation.compare import compare
    from .segmentation.config import needs_unlabelled_variants, parse_strategy
    from .segmentation.jobs import barrier, distributed

    cfg = cfg or preset("cpu")
    out = Path(out)
    # under `accelerate launch` every process runs this function: the main one alone prepares, stamps,
    # removes stale stages and writes the report; all of them train, generate and compare (each does
    # its share) and meet at a barrier before they read what the main process wrote
    main = distributed()[0] == 0
    progress = progress and main
    redo = set(STAGES) if overwrite else redo_set(redo)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    # the learning rate the model kind trains with (sd15: 1e-5), so a stage's identity names it
    train = dataclasses.replace(cfg.train, learning_rate=cfg.train.lr_for(cfg.model.kind))
    times: dict[str, float] = {}

    t0 = time.perf_counter()
    legacy_prep = {"source": str(Path(data).resolve()), "prepare": prepare_identity(cfg.prepare)}
    if main:
        # identities of content: the source files' hash, not where they are (a moved run or data folder
        # is reused; a mask fixed in place is not)
        from .data.readers import detect_format

        prepared_as = prepare_identity(cfg.prepare)
        if prepared_as.get("format") == "auto":  # `auto` and the format it detects are the same preparation
            prepared_as["format"] = detect_format(data)
        prep_id = {"source": source_fingerprint(data, cfg.prepare), "prepare": prepared_as}
        fresh = check_stage(out / "prepared", "prepare", prep_id, redo, legacy_prep)
        if fresh and not (out / "prepared" / "dataset.json").exists():
            raise StaleStage(f"{out / 'prepared'}: stamped but without dataset.json; rerun with --redo prepare")
        if not fresh:
            if "prepare" in redo:  # asked for: everything made from the old data goes with it
                for stale in ("pretrain", "models", "synthetic", "seg", "compare", "ablations"):
                    shutil.rmtree(out / stale, ignore_errors=True)
            prepare(data, out / "prepared", cfg.prepare, progress=progress)
            stamp(out / "prepared", prep_id)
    barrier()
    ps = PreparedSet(out / "prepared")
    times["prepare"] = time.perf_counter() - t0
    upstream, legacy_upstream = prepared_fingerprint(ps), _hash(legacy_prep)

    init = None
    if cfg.pretrain.corpus:
        from .data.overlap import check_task_overlap, overlap_error
        from .data.readers.corpus import corpus_files
        from .diffusion.pretrain import CORPUS_RECORD, prepared_corpus, pretrain, pretraining_configs
        from .utils.atomic import recover_artifact

        t0 = time.perf_counter()
        legacy_pre = {"corpus": cfg.pretrain.corpus, "steps": cfg.pretrain.steps, "model": to_dict(cfg.model),
                      "train": to_dict(train), "size": ps.size}
        pre_id = {**legacy_pre, "corpus": listing_fingerprint(corpus_files(Path(cfg.pretrain.corpus))),
                  "max_timestep_fraction": cfg.pretrain.max_timestep_fraction}
        pre = out / "pretrain"
        if main and not check_stage(pre, "pretrain", pre_id, redo, legacy_pre):
            stamp(pre, pre_id)  # before training: an interrupted pretraining resumes
        if main:
            save_yaml(cfg, out / "run.yaml")  # the checks so far passed: what the pretraining runs with
            recover_artifact(pre / "model")  # a kill while the model was swapped in leaves it aside
        barrier()
        overlap_record = pre / "task_overlap.json"  # the report shows it
        if not (pre / "model" / CORPUS_RECORD).exists():
            if main:  # prepared once, outside the stage folder; a resumed pretraining reuses it
                prepared_corpus(cfg.pretrain.corpus, out / "pretrain_corpus", ps.size, progress, cfg.prepare)
            barrier()
            corpus = prepared_corpus(cfg.pretrain.corpus, out / "pretrain_corpus", ps.size, False, cfg.prepare)
            check_task_overlap(corpus, ps, cfg.pretrain.allow_task_overlap, record=overlap_record if main else None,
                               threshold=cfg.pretrain.near_duplicate_threshold)
            mcfg, tcfg = pretraining_configs(cfg.model, dataclasses.replace(train, steps=cfg.pretrain.steps), ps.size,
                                             cfg.pretrain.max_timestep_fraction)
            pretrain(corpus.root, pre, mcfg, tcfg, progress=progress)
        elif overlap_record.exists():  # pretrained already: what its check found must still be allowed
            found = json.loads(overlap_record.read_text())
            if found["files"] and not cfg.pretrain.allow_task_overlap:
                raise overlap_error(found["corpus"], found["task"], found["files"])
        init = pre / "model"
        upstream, legacy_upstream = digest([upstream, pre_id]), _hash([legacy_upstream, legacy_pre])
        times["pretrain"] = time.perf_counter() - t0
    elif cfg.pretrain.model:  # a model `diffboost pretrain` made: checked, never trained again
        from .diffusion.pipeline import model_hash
        from .diffusion.pretrain import check_init_corpus, check_init_model

        init = Path(cfg.pretrain.model).expanduser()
        check_init_model(init, cfg.model, ps.size)
        if main:  # its corpus must hold no case of the task; the record is what the report shows
            (out / "pretrain").mkdir(exist_ok=True)
            check_init_corpus(init, ps, cfg.pretrain.allow_task_overlap, record=out / "pretrain" / "task_overlap.json",
                              threshold=cfg.pretrain.near_duplicate_threshold)
        barrier()
        upstream = legacy_upstream = digest([upstream, {"init": model_hash(init)}])

    folds = list(cfg.compare.folds) if cfg.compare.folds is not None else list(range(len(ps.folds)))
    needs_model = generates_variants(cfg)  # a strategy whose variants the diffusion model draws
    needs_synthetic = any(parse_strategy(a)[0] == "diffboost" for a in cfg.compare.augs)  # same-layout variants
    if main:  # every fold's fine-tuning checked before any trains: a refusal comes before the hours of work
        for k in folds if needs_model else []:
            ft_id = {"upstream": upstream, "fold": k, "model": to_dict(cfg.model), "train": to_dict(train)}
            if not check_stage(out / "models" / f"fold{k}", "finetune", ft_id, redo,
                               {**ft_id, "upstream": legacy_upstream}):
                stamp(out / "models" / f"fold{k}", ft_id)  # before training: an interrupted fine-tuning resumes
        save_yaml(cfg, out / "run.yaml")  # after the checks: a refused resume leaves the old run.yaml
    barrier()
    for k in folds if needs_model else []:
        t0 = time.perf_counter()
        model_dir = out / "models" / f"fold{k}"
        finetune_fold(ps, k, model_dir, cfg.model, train, init=init, progress=progress)  # or resume, or keep
        times[f"fine-tune fold{k}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # other or more variants make the segmenters trained on them stale: train_seg sees it
        if needs_synthetic:
            gen = cfg.generate  # variants of the unlabelled images too, when a strategy trains on them
            if any(needs_unlabelled_variants(a) for a in cfg.compare.augs):
                gen = dataclasses.replace(gen, unlabelled=True)
            generate(model_dir / "model", ps, out / "synthetic" / f"fold{k}", k, gen, progress=progress,
                     replace_stale="generate" in redo)
            times[f"generate fold{k}"] = time.perf_counter() - t0
        if any(parse_strategy(a)[0] == "diffboost-target" for a in cfg.compare.augs):  # a cross-site set
            t0 = time.perf_counter()
            generate(model_dir / "model", ps, out / "synthetic_diffboost-target" / f"fold{k}", k,
                     dataclasses.replace(cfg.generate, target_style=True), progress=progress,
                     replace_stale="generate" in redo)
            times[f"generate target style fold{k}"] = time.perf_counter() - t0
        for kind in layout_kinds(cfg):  # new lesions in new places, drawn by the model
            t0 = time.perf_counter()
            if main:
                layout_generate(model_dir / "model", ps, out / f"synthetic_{kind}" / f"fold{k}", k, kind, cfg.layout,
                                cfg.inpaint, progress=progress)
            barrier()
            times[f"{kind} fold{k}"] = time.perf_counter() - t0

    if any(parse_strategy(a)[0] == COPY_PASTE for a in cfg.compare.augs):  # no model: made (or reused) here
        t0 = time.perf_counter()
        for k in folds:
            if main:
                copy_paste_set(ps, k, out / f"synthetic_{COPY_PASTE}" / f"fold{k}", cfg.layout, progress=progress)
        barrier()
        times["copy-paste"] = time.perf_counter() - t0

    # label consistency: each fold's `none` segmenter (first seed) checks its synthetic set. The teacher
    # filters read its files while the diffboost runs train: then `none` trains first (reused below)
    seeds = cfg.compare.seed_list(cfg.seg)
    filters = getattr(cfg.seg, "teacher_gate", None) is not None or getattr(cfg.seg, "pixel_filter", None) is not None
    swept = any(parse_sweep(s)[0] in ("teacher_gate", "pixel_filter") for s in cfg.ablate.sweeps)
    teacher_first = needs_synthetic and (filters or (swept and "none" not in cfg.compare.augs))
    if teacher_first:
        t0 = time.perf_counter()
        compare(ps, ["none"], cfg.seg, out, folds, progress=progress, replace_stale="seg" in redo,
                seeds=seeds if "none" in cfg.compare.augs else seeds[:1], jobs=cfg.compare.jobs)
        times["compare none (teacher)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        consistency_for_run(out, folds, seeds[0], prepared=ps, progress=progress)  # the main process computes
        times["label consistency"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    compare(ps, cfg.compare.augs, cfg.seg, out, folds, progress=progress, replace_stale="seg" in redo,
            seeds=seeds, jobs=cfg.compare.jobs)
    times["compare"] = time.perf_counter() - t0
    layouts = any(parse_strategy(a)[0] in (COPY_PASTE, *layout_kinds(cfg)) for a in cfg.compare.augs)
    if (needs_synthetic or layouts) and not teacher_first:  # folds without a `none` run are skipped
        t0 = time.perf_counter()
        consistency_for_run(out, folds, seeds[0], prepared=ps, progress=progress)  # the main process computes
        times["label consistency"] = time.perf_counter() - t0
    if cfg.ablate.sweeps and not needs_synthetic and main:
        print("ablate: skipped, the sweeps vary a diffboost strategy and none is among compare.augs")
    for sweep in cfg.ablate.sweeps if needs_synthetic else ():  # reuses variants and finished runs
        name, values = parse_sweep(sweep)
        t0 = time.perf_counter()
        ablate(out, name, values, progress=progress, strategy=cfg.ablate.strategy)
        times[f"ablate {name}"] = time.perf_counter() - t0
    report = out / "report.html"
    barrier()
    if main:
        def save_times() -> dict:
            rounded = {k: round(v, 1) for k, v in times.items()}
            write_control(out / "times.json", rounded)
            return rounded

        save_times()  # before the report, which shows them
        t0 = time.perf_counter()
        report = write_report(out)
        times["report"] = time.perf_counter() - t0
        seconds = save_times()
        with open(out / "run_calls.jsonl", "a") as f:  # every finished call: a resumed run's stages add up
            f.write(json.dumps({"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": seconds}) + "\n")
    barrier()
    return report
