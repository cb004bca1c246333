"""``diffboost run``: data to evidence in one command.

prepare -> (pretrain, when a corpus is given) -> per fold: fine-tune, generate -> compare -> label
consistency (each fold's ``none`` segmenter checks its variants; before the other strategies train
when ``seg.teacher_gate`` / ``seg.pixel_filter`` read it) -> report, with one config (every stage's
options, YAML sections) saved as ``DIR/run.yaml``.

Re-running continues where a run stopped (diffusion training resumes from its last checkpoint,
generation completes missing variants, segmentation resumes at its last epoch, finished folds are
reused). Each stage records what it was made from in ``stage.json``; a stage whose inputs or
options changed is redone and so is everything downstream of it, nothing else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config import PrepareConfig, from_dict, read_yaml_mapping, save_yaml, to_dict
from .diffusion.models import ModelConfig
from .diffusion.train import TrainConfig
from .generation.pix2pix import Pix2PixConfig
from .generation.generate import GenerateConfig
from .segmentation.config import DEFAULT_COMPARE, SegConfig, parse_strategy


@dataclass
class CompareConfig:
    augs: tuple[str, ...] = DEFAULT_COMPARE
    folds: tuple[int, ...] | None = None  # None = every fold of the prepared set
    seeds: tuple[int, ...] | None = None  # every strategy trains once per seed and fold; None = (seg.seed,)
    jobs: int = 1  # segmentation runs at once (local processes; one torch thread each on a CPU)

    def __post_init__(self):
        self.augs = tuple(self.augs)
        self.folds = tuple(int(k) for k in self.folds) if self.folds is not None else None
        self.seeds = tuple(dict.fromkeys(int(k) for k in self.seeds)) if self.seeds is not None else None
        if self.seeds is not None and not self.seeds:
            raise ValueError("compare.seeds must name at least one seed (or be null for seg.seed)")
        if self.jobs < 1:
            raise ValueError(f"compare.jobs must be at least 1, got {self.jobs}")

    def seed_list(self, seg: SegConfig) -> list[int]:
        return list(self.seeds) if self.seeds else [seg.seed]


@dataclass
class PretrainConfig:
    corpus: str | None = None  # a RadImageNet-style corpus; None = fine-tune from scratch
    steps: int = 20000
    # a corpus holding cases of the task (same file, same bytes or same prepared image) is refused: it
    # leaks the test folds into the model; true lets it through and the report says so
    allow_task_overlap: bool = False


@dataclass
class AblateConfig:
    """Sweeps run after the comparison (``diffboost ablate``), e.g. ``["alpha=0,0.5,1", "n=1,3"]``."""
    sweeps: tuple[str, ...] = ()

    def __post_init__(self):
        from .ablate import parse_sweep

        self.sweeps = tuple(self.sweeps)
        for s in self.sweeps:  # a typo fails now, not after hours of training
            parse_sweep(s)


@dataclass
class RunConfig:
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    seg: SegConfig = field(default_factory=SegConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    ablate: AblateConfig = field(default_factory=AblateConfig)
    # read by `diffboost pix2pix train --config`; `run` itself does not train Pix2Pix
    pix2pix: Pix2PixConfig = field(default_factory=Pix2PixConfig)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown config section(s): {', '.join(unknown)}")
        cfg = cls(**{name: from_dict(section, data.get(name) or {}) for name, section in _SECTIONS.items()})
        check_run_config(cfg)
        return cfg


_SECTIONS = {"prepare": PrepareConfig, "pretrain": PretrainConfig, "model": ModelConfig, "train": TrainConfig,
             "generate": GenerateConfig, "seg": SegConfig, "compare": CompareConfig,
             "ablate": AblateConfig, "pix2pix": Pix2PixConfig}


def check_run_config(cfg: RunConfig) -> None:
    """Refuse, when the config is loaded, what `run` could only fail on hours later: a strategy whose
    synthetic sets `run` does not make (only the diffusion model's), a segmentation network that
    cannot take the widths or the working size, an ablation value that cannot train."""
    from .ablate import check_values, parse_sweep
    from .segmentation.networks import check_network

    for a in cfg.compare.augs:
        source, _ = parse_strategy(a)
        if source not in (None, "diffboost", "mix-classic"):  # mix-classic makes its variants in memory
            raise ValueError(f"compare.augs: {a!r} needs {source} synthetic sets, which `diffboost run` does not "
                             f"make (it generates the diffusion model's only); remove it here, make them with "
                             f"`diffboost {source} train` and `diffboost {source} generate` per fold, then run "
                             f"`diffboost compare --augs ...,{a}`")
    size = cfg.seg.size or cfg.prepare.size
    try:
        check_network(cfg.seg.network, cfg.seg.channels, size)
    except ValueError as e:
        raise ValueError(f"seg: {e}") from None
    for text in cfg.ablate.sweeps:
        name, values = parse_sweep(text)
        try:
            check_values(cfg.seg, name, values, size)
        except ValueError as e:
            raise ValueError(f"ablate.sweeps: {e}") from None


# Presets: what differs from the defaults. ``cpu`` is the setting measured on real BUSI on 2 cores
# (bench/bench_seg_compare.py); ``demo`` finishes on the built-in phantoms in minutes; ``gpu`` follows
# the paper (384 px, the paper's AttentionUNet, bf16).
PRESETS: dict[str, dict] = {
    "demo": {"prepare": {"size": 64},
             "model": {"channels": [16, 32, 64], "attention": [False, True, True]},
             "train": {"steps": 300, "batch_size": 8, "checkpoint_every": 100, "validate_every": 300,
                       "snr_gamma": 5.0, "max_timestep_fraction": 0.6},
             "generate": {"n": 2, "steps": 10, "strength": 0.5},
             "seg": {"channels": [8, 16, 32, 64], "epochs": 8, "batch_size": 8, "precision": "bf16", "val_every": 1},
             "ablate": {"sweeps": ["alpha=0,0.3,0.6,1", "n=1,2", "patch=4,16,64", "network=attention_unet,unet,res_unet"]}},
    "cpu": {"prepare": {"size": 128},
            # image-to-image at strength 0.5 from a model trained with Min-SNR-5 on t < 0.6 T
            # (bench/bench_diffusion_training.py: variants keep the lesion; from noise they lose it)
            "train": {"steps": 2500, "batch_size": 8, "snr_gamma": 5.0, "max_timestep_fraction": 0.6},
            "generate": {"n": 3, "steps": 15, "strength": 0.5},
            "seg": {"network": "res_unet", "channels": [16, 32, 64, 128, 256], "epochs": 30, "batch_size": 16,
                    "precision": "bf16", "channels_last": True},
            "compare": {"augs": ["none", "mirror", "resolution", "classic", "diffboost", "mix-classic",
                                 "diffboost+classic"],
                        "seeds": [0, 1], "jobs": 2}},
    "gpu": {"prepare": {"size": 384},
            "model": {"channels": [64, 128, 256, 512], "attention": [False, True, True, True], "layers_per_block": 2},
            "train": {"steps": 20000, "batch_size": 32, "mixed_precision": "bf16"},
            "generate": {"n": 10, "steps": 20, "batch_size": 64},
            "seg": {"epochs": 100, "batch_size": 8, "precision": "bf16"},
            "compare": {"seeds": [0, 1, 2]}},
}


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return RunConfig.from_dict(PRESETS[name])


def load_run_config(path: str | Path | None, preset_name: str = "cpu") -> RunConfig:
    """The preset, with the sections of a YAML file laid over it option by option."""
    base = to_dict(preset(preset_name))
    if path is None:
        return RunConfig.from_dict(base)
    path = Path(path)
    data = read_yaml_mapping(path)
    for section, values in data.items():
        if section not in base:
            raise ValueError(f"{path}: unknown section {section!r}; known: {', '.join(base)}")
        if not isinstance(values, dict):
            raise ValueError(f"{path}: section {section!r} must be a mapping")
        base[section].update(values)
    try:
        return RunConfig.from_dict(base)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _fresh(folder: Path, identity: dict) -> bool:
    """True when ``folder`` was made from ``identity``; otherwise it is removed (stale) -> False."""
    stamp = folder / "stage.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("identity") == identity:
        return True
    if folder.exists():
        shutil.rmtree(folder)
    return False


def _stamp(folder: Path, identity: dict) -> None:
    """Record what ``folder`` is made from (each stage's own files record its wall time)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stage.json").write_text(json.dumps({"identity": identity}, indent=1))


def run(data: str | Path, out: str | Path, cfg: RunConfig | None = None, progress: bool = True) -> Path:
    """Run every stage into ``out``; return the report's path."""
    from .ablate import ablate, parse_sweep
    from .data.preparation import prepare
    from .data.store import PreparedSet
    from .diffusion.train import train_diffusion
    from .evaluation.consistency import consistency_for_run
    from .generation.generate import generate
    from .report import write_report
    from .segmentation.compare import compare

    cfg = cfg or preset("cpu")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "run.yaml")
    # the learning rate the model kind trains with (sd15: 1e-5), so a stage's identity names it
    train = dataclasses.replace(cfg.train, learning_rate=cfg.train.lr_for(cfg.model.kind))
    times: dict[str, float] = {}

    t0 = time.perf_counter()
    prep_id = {"source": str(Path(data).resolve()), "prepare": to_dict(cfg.prepare)}
    if not _fresh(out / "prepared", prep_id) or not (out / "prepared" / "dataset.json").exists():
        for stale in ("pretrain", "models", "synthetic", "seg", "compare"):  # all of it depends on the data
            shutil.rmtree(out / stale, ignore_errors=True)
        shutil.rmtree(out / "prepared", ignore_errors=True)
        prepare(data, out / "prepared", cfg.prepare, progress=progress)
        _stamp(out / "prepared", prep_id)
    ps = PreparedSet(out / "prepared")
    times["prepare"] = time.perf_counter() - t0
    upstream = _hash(prep_id)

    init = None
    if cfg.pretrain.corpus:
        from .data.overlap import check_task_overlap, overlap_error
        from .utils.atomic import recover_artifact

        t0 = time.perf_counter()
        pre_id = {"corpus": cfg.pretrain.corpus, "steps": cfg.pretrain.steps, "model": to_dict(cfg.model),
                  "train": to_dict(train), "size": ps.size}
        pre = out / "pretrain"
        if not _fresh(pre, pre_id):
            _stamp(pre, pre_id)  # before training: an interrupted pretraining resumes
        recover_artifact(pre / "model")  # a kill while the model was swapped in leaves it aside
        overlap_record = pre / "task_overlap.json"  # the report shows it
        if not (pre / "model").exists():
            corpus = prepare(cfg.pretrain.corpus, out / "pretrain_corpus", dataclasses.replace(cfg.prepare, format="corpus"),
                             overwrite=True, progress=progress)
            check_task_overlap(corpus, ps, cfg.pretrain.allow_task_overlap, record=overlap_record)
            tcfg = dataclasses.replace(train, steps=cfg.pretrain.steps, condition="edges")
            train_diffusion(corpus, pre, [r["index"] for r in corpus.manifest], dataclasses.replace(cfg.model, image_size=ps.size),
                            tcfg, resume="latest" if (pre / "checkpoints").exists() else None, progress=progress)
        elif overlap_record.exists():  # pretrained already: what its check found must still be allowed
            found = json.loads(overlap_record.read_text())
            if found["files"] and not cfg.pretrain.allow_task_overlap:
                raise overlap_error(found["corpus"], found["task"], found["files"])
        init = pre / "model"
        upstream = _hash([upstream, pre_id])
        times["pretrain"] = time.perf_counter() - t0

    folds = list(cfg.compare.folds) if cfg.compare.folds is not None else list(range(len(ps.folds)))
    needs_synthetic = any(parse_strategy(a)[0] == "diffboost" for a in cfg.compare.augs)
    for k in folds if needs_synthetic else []:
        f = ps.fold(k)
        t0 = time.perf_counter()
        model_dir = out / "models" / f"fold{k}"
        ft_id = {"upstream": upstream, "fold": k, "model": to_dict(cfg.model), "train": to_dict(train)}
        if not _fresh(model_dir, ft_id):  # new, or made from other inputs: start over
            shutil.rmtree(out / "synthetic" / f"fold{k}", ignore_errors=True)
            _stamp(model_dir, ft_id)  # before training: an interrupted fine-tuning resumes
        if not (model_dir / "model").exists():
            train_diffusion(ps, model_dir, ps.indices(f.train, training=True),
                            dataclasses.replace(cfg.model, image_size=ps.size), train, init=init,
                            resume="latest" if (model_dir / "checkpoints").exists() else None,
                            val_indices=ps.indices(f.val, training=True), progress=progress)
        times[f"fine-tune fold{k}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # other or more variants make the segmenters trained on them stale: train_seg sees it
        generate(model_dir / "model", ps, out / "synthetic" / f"fold{k}", k, cfg.generate, progress=progress,
                 replace_stale=True)
        times[f"generate fold{k}"] = time.perf_counter() - t0

    # label consistency: each fold's `none` segmenter (first seed) checks its synthetic set. The teacher
    # filters read its files while the diffboost runs train: then `none` trains first (reused below)
    seeds = cfg.compare.seed_list(cfg.seg)
    filters = getattr(cfg.seg, "teacher_gate", None) is not None or getattr(cfg.seg, "pixel_filter", None) is not None
    swept = any(parse_sweep(s)[0] in ("teacher_gate", "pixel_filter") for s in cfg.ablate.sweeps)
    teacher_first = needs_synthetic and (filters or (swept and "none" not in cfg.compare.augs))
    if teacher_first:
        t0 = time.perf_counter()
        compare(ps, ["none"], cfg.seg, out, folds, progress=progress, replace_stale=True,
                seeds=seeds if "none" in cfg.compare.augs else seeds[:1], jobs=cfg.compare.jobs)
        times["compare none (teacher)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        consistency_for_run(out, folds, seeds[0], prepared=ps, progress=progress)
        times["label consistency"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    compare(ps, cfg.compare.augs, cfg.seg, out, folds, progress=progress, replace_stale=True,
            seeds=seeds, jobs=cfg.compare.jobs)
    times["compare"] = time.perf_counter() - t0
    if needs_synthetic and not teacher_first:  # folds without a `none` run are skipped
        t0 = time.perf_counter()
        consistency_for_run(out, folds, seeds[0], prepared=ps, progress=progress)
        times["label consistency"] = time.perf_counter() - t0
    if cfg.ablate.sweeps and not needs_synthetic:
        print("ablate: skipped, the sweeps vary the diffboost strategy and it is not among compare.augs")
    for sweep in cfg.ablate.sweeps if needs_synthetic else ():  # reuses variants and finished runs
        name, values = parse_sweep(sweep)
        t0 = time.perf_counter()
        ablate(out, name, values, progress=progress)
        times[f"ablate {name}"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = write_report(out)
    times["report"] = time.perf_counter() - t0
    (out / "times.json").write_text(json.dumps({k: round(v, 1) for k, v in times.items()}, indent=1))
    return report


def config_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
