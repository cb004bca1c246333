"""The configuration of ``diffboost run``: one section per stage (``prepare``, ``pretrain``,
``model``, ``train``, ``generate``, ``seg``, ``compare``, ``ablate``, ``pix2pix``), the presets, the
grammar of ablation sweeps, and the checks that refuse, when a config is loaded, what a run could
only fail on hours later. Saved as ``run.yaml`` beside a run; read by :mod:`diffboost.run` and
:mod:`diffboost.ablate`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config import PrepareConfig, from_dict, read_yaml_mapping, to_dict
from .diffusion.models import ModelConfig
from .diffusion.train import TrainConfig
from .generation.generate import GenerateConfig
from .generation.inpaint import KINDS as LAYOUT_KINDS
from .generation.inpaint import InpaintConfig
from .generation.layout import COPY_PASTE, LayoutConfig
from .generation.pix2pix import Pix2PixConfig
from .segmentation.config import DEFAULT_COMPARE, DIFFUSION_SOURCES, VARIANT_SOURCES, SegConfig, parse_strategy


# ---- ablation sweeps: NAME=V1,V2,... ------------------------------------------------------------

def _float_or_none(text: str) -> float | None:
    """``"none"`` (any case) -> None, else a float: the value of an option that can be off."""
    return None if text.strip().lower() in ("none", "null") else float(text)


def _scale_range(text: str) -> str:
    """``"0.85-1.2"``: a scale range of the layout donors, checked, kept as text (a folder name)."""
    lo, sep, hi = text.strip().partition("-")
    if not sep or not 0 < float(lo) <= float(hi):
        raise ValueError(f"a scale range is LOW-HIGH with 0 < LOW <= HIGH, got {text!r}")
    return f"{float(lo):g}-{float(hi):g}"


SWEEPABLE = {"n": int, "alpha": float, "patch": int, "network": str, "mix_prob": float,
             "teacher_gate": _float_or_none, "pixel_filter": _float_or_none,
             "strength": float, "mask_strength": _float_or_none, "condition": str,
             "placement": str, "scale": _scale_range, "lesion_strength": float,
             "confidence": float, "unlabelled_weight": float, "self_train_keep": _float_or_none}
# sweeps of the generator rather than the segmenter: new variants (strength, mask_strength) or new
# diffusion models (condition) per value, then the diffboost strategy trained on them
GENERATOR_SWEEPS = ("strength", "mask_strength", "condition")
# sweeps of the semi-supervised learners' options (a strategy with fixmatch or self-train)
SEMI_SWEEPS = ("confidence", "unlabelled_weight", "self_train_keep")
# sweeps of the layout variants (new lesions in new places): new sets per value of the placement rule, the
# donors' scale range (layout:) or the new lesion's strength (inpaint:, diffboost-layout only)
LAYOUT_SWEEPS = ("placement", "scale", "lesion_strength")


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


def check_strategy(strategy: str, param: str) -> str:
    """The strategy a sweep of ``param`` varies must mix variants (Algorithm 1); a sweep of the generator
    needs diffusion variants. Returns what its gain is measured against: the strategy without its
    variants (``diffboost`` -> ``none``, ``diffboost+classic`` -> ``classic``). A semi-supervised learner's
    option needs that learner, and is measured against the strategy without it."""
    from .segmentation.config import SEMI_OPTIONS, semi_of, supervised_part

    source, classical = parse_strategy(strategy)
    if param in SEMI_SWEEPS:
        if param not in SEMI_OPTIONS.get(semi_of(strategy), ()):
            raise ValueError(f"--sweep {param} varies a semi-supervised learner that {strategy!r} does not use "
                             f"(e.g. fixmatch+classic, self-train+classic)")
        return supervised_part(strategy)
    if source is None:
        raise ValueError(f"ablate strategy {strategy!r} has no variants to mix: use {', '.join(VARIANT_SOURCES)} "
                         "or SOURCE+CLASSICAL (e.g. diffboost+classic)")
    if param in GENERATOR_SWEEPS and source != "diffboost":
        raise ValueError(f"--sweep {param} varies the diffusion generator: it needs a diffboost strategy, not {strategy!r}")
    layout_sources = (COPY_PASTE, *LAYOUT_KINDS) if param != "lesion_strength" else ("diffboost-layout",)
    if param in LAYOUT_SWEEPS and source not in layout_sources:
        raise ValueError(f"--sweep {param} varies the layout variants: it needs a strategy of "
                         f"{', '.join(layout_sources)}, not {strategy!r}")
    return classical


def check_values(seg: SegConfig, param: str, values: list, size: int, cfg: "RunConfig | None" = None) -> None:
    """Refuse, before any training, a swept value that cannot train with the other settings of
    ``seg`` at ``size`` pixels (e.g. a network that cannot take the widths), or a generator value the
    run's diffusion training cannot serve (a strength above its timestep cap, an unknown condition)."""
    from .diffusion.models import CONDITIONS
    from .segmentation.networks import check_network

    for v in values:
        try:
            if param == "strength":
                cap = cfg.train.max_timestep_fraction if cfg is not None else 1.0
                if not 0 < v <= cap:
                    raise ValueError(f"strength must be in (0, {cap:g}]: the diffusion models were trained on "
                                     f"timesteps up to {cap:g} T (train.max_timestep_fraction)")
                held = cfg.generate.mask_strength if cfg is not None else None
                if held is not None and v < held:
                    raise ValueError(f"strength must be at least generate.mask_strength ({held:g}), which "
                                     "holds the lesion to a lower strength than the rest")
            elif param == "mask_strength":  # GenerateConfig's own check, against the run's strength
                dataclasses.replace(cfg.generate if cfg is not None else GenerateConfig(), mask_strength=v)
            elif param == "placement":
                LayoutConfig(placement=v)
            elif param == "scale":
                LayoutConfig(scale=[float(x) for x in v.split("-")])
            elif param == "lesion_strength":
                dataclasses.replace(cfg.inpaint if cfg is not None else InpaintConfig(), lesion_strength=v)
                cap = cfg.train.max_timestep_fraction if cfg is not None else 1.0
                if v > cap:
                    raise ValueError(f"lesion_strength must be at most {cap:g}: the diffusion models were trained "
                                     f"on timesteps up to {cap:g} T (train.max_timestep_fraction)")
            elif param == "condition":
                if v not in CONDITIONS:
                    raise ValueError(f"condition must be one of {', '.join(CONDITIONS)}")
                if cfg is not None and (cfg.pretrain.corpus or cfg.pretrain.model) and v != cfg.model.condition:
                    raise ValueError("the models are fine-tuned from a pretrained model of another condition")
            else:
                s = dataclasses.replace(seg, **{param: v})
                check_network(s.network, s.channels, s.size or size)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{param}={v}: {e}") from None


# ---- the run config --------------------------------------------------------------------------------

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
    corpus: str | None = None  # a RadImageNet-style corpus to pretrain on first, inside the run
    # or a model `diffboost pretrain` made already (its model/ folder): every fold is fine-tuned from it
    model: str | None = None
    steps: int = 20000
    max_timestep_fraction: float = 1.0  # pretraining covers every noise level: its model serves any fine-tuning
    # a corpus holding cases of the task (same file, same bytes, same prepared image, or a near-duplicate:
    # thumbnail correlation >= near_duplicate_threshold; null = not looked for) is refused: it leaks the
    # test folds into the model; true lets it through and the report says so
    allow_task_overlap: bool = False
    near_duplicate_threshold: float | None = 0.92

    def __post_init__(self):
        if self.corpus and self.model:
            raise ValueError("pretrain: give a corpus to pretrain on or a pretrained model to start from, not both")
        self.max_timestep_fraction = float(self.max_timestep_fraction)
        if not 0 < self.max_timestep_fraction <= 1:
            raise ValueError(f"pretrain.max_timestep_fraction must be in (0, 1], got {self.max_timestep_fraction}")
        if self.near_duplicate_threshold is not None and not 0 < float(self.near_duplicate_threshold) <= 1:
            raise ValueError(f"pretrain.near_duplicate_threshold must be in (0, 1] or null, "
                             f"got {self.near_duplicate_threshold}")


@dataclass
class AblateConfig:
    """Sweeps run after the comparison (``diffboost ablate``), e.g. ``["alpha=0,0.5,1", "n=1,3"]``, of
    one strategy with variants (``diffboost``, ``diffboost+classic``, ``mix-classic``)."""
    sweeps: tuple[str, ...] = ()
    strategy: str = "diffboost"

    def __post_init__(self):
        self.sweeps = tuple(self.sweeps)
        for s in self.sweeps:  # a typo fails now, not after hours of training
            check_strategy(self.strategy, parse_sweep(s)[0])


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
    # new lesions in new places: donors, transforms, placement rule (copy-paste, copy-paste-harmonize and
    # diffboost-layout variants share them), and how the diffusion model draws them
    layout: LayoutConfig = field(default_factory=LayoutConfig)
    inpaint: InpaintConfig = field(default_factory=InpaintConfig)

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
             "ablate": AblateConfig, "pix2pix": Pix2PixConfig, "layout": LayoutConfig, "inpaint": InpaintConfig}


def generates_variants(cfg: RunConfig) -> bool:
    """Whether `run` fine-tunes diffusion models: a strategy whose variants the model draws is compared."""
    return any(parse_strategy(a)[0] in DIFFUSION_SOURCES for a in cfg.compare.augs)


def layout_kinds(cfg: RunConfig) -> list[str]:
    """The diffusion-drawn layout sets `run` makes (``diffboost-layout``, ``copy-paste-harmonize``)."""
    return [k for k in LAYOUT_KINDS if any(parse_strategy(a)[0] == k for a in cfg.compare.augs)]


def check_run_config(cfg: RunConfig) -> None:
    """Refuse, when the config is loaded, what `run` could only fail on hours later: a strategy whose
    synthetic sets `run` does not make (only the diffusion model's), a segmentation network that
    cannot take the widths or the working size, an ablation value that cannot train, a semi-supervised
    strategy without unlabelled images."""
    from .segmentation.config import IN_MEMORY, needs_unlabelled_variants, uses_unlabelled
    from .segmentation.networks import check_network

    for a in cfg.compare.augs:
        source, _ = parse_strategy(a)
        if source not in (None, *IN_MEMORY, COPY_PASTE, *DIFFUSION_SOURCES):  # mix-classic, histmatch: in memory
            raise ValueError(f"compare.augs: {a!r} needs {source} synthetic sets, which `diffboost run` does not "
                             f"make (it generates the diffusion model's only); remove it here, make them with "
                             f"`diffboost {source} train` and `diffboost {source} generate` per fold, then run "
                             f"`diffboost compare --augs ...,{a}`")
        if uses_unlabelled(a) and not cfg.prepare.unlabelled and cfg.prepare.budget is None and not cfg.prepare.target:
            raise ValueError(f"compare.augs: {a!r} learns from unlabelled images, and this run has none: give "
                             "prepare.unlabelled (folders of images without labels; --unlabelled), a label "
                             "prepare.budget (e.g. 0.1) or another site's prepare.target, or remove it")
        if needs_unlabelled_variants(a) and not (cfg.train.unlabelled or cfg.train.mask_dropout > 0):
            raise ValueError(f"compare.augs: {a!r} trains on variants of unlabelled images, drawn with the 'no mask' "
                             "condition: the generator must learn it (train.unlabelled: true, or train.mask_dropout > 0)")
        if parse_strategy(a)[0] == "diffboost-target" and not (cfg.prepare.target and cfg.train.unlabelled):
            raise ValueError(f"compare.augs: {a!r} redraws the source's images in the target site's style, which the "
                             "generator learns from the target's unlabelled images: it needs prepare.target (another "
                             "site's labelled set) and train.unlabelled: true")
    size = cfg.seg.size or cfg.prepare.size
    try:
        check_network(cfg.seg.network, cfg.seg.channels, size)
    except ValueError as e:
        raise ValueError(f"seg: {e}") from None
    if generates_variants(cfg):  # generation would refuse it after fine-tuning
        try:
            check_values(cfg.seg, "strength", [cfg.generate.strength], size, cfg)
        except ValueError as e:
            raise ValueError(f"generate.{e}") from None
    for text in cfg.ablate.sweeps:
        name, values = parse_sweep(text)
        try:
            check_values(cfg.seg, name, values, size, cfg)
        except ValueError as e:
            raise ValueError(f"ablate.sweeps: {e}") from None


# Presets: what differs from the defaults. ``cpu`` is the setting measured on real BUSI on 2 cores
# (bench/bench_seg_compare.py); ``demo`` finishes on the built-in phantoms in minutes; ``gpu`` follows
# the paper (384 px, the paper's AttentionUNet). Every preset's segmenter trains in bf16 where the device has
# it natively, else fp32 (precision: auto).
PRESETS: dict[str, dict] = {
    "demo": {"prepare": {"size": 64},
             "model": {"channels": [16, 32, 64], "attention": [False, True, True]},
             "train": {"steps": 300, "batch_size": 8, "checkpoint_every": 100, "validate_every": 300,
                       "snr_gamma": 5.0, "max_timestep_fraction": 0.6},
             "generate": {"n": 2, "steps": 10, "strength": 0.5},
             "seg": {"channels": [8, 16, 32, 64], "epochs": 8, "batch_size": 8, "precision": "auto", "val_every": 1},
             "ablate": {"sweeps": ["alpha=0,0.3,0.6,1", "n=1,2", "patch=4,16,64", "network=attention_unet,unet,res_unet",
                                  "strength=0.3,0.5"]}},
    "cpu": {"prepare": {"size": 128},
            # image-to-image at strength 0.3 from a model trained with Min-SNR-5 on t < 0.6 T, conditioned
            # on the filled mask as well as the edges. Where each came from (docs/evidence.md, "Where each
            # preset default came from"): the condition, Min-SNR and the cap from variants of BUSI fold 0's
            # test images (bench/bench_diffusion_training.py: variants keep the lesion; from noise they lose
            # it); strength 0.3 from the BUSI strength ablation, on its TEST folds (before ablate chose by
            # validation Dice), confirmed on hippocampus test folds. Under the corrected intervals 0.15, 0.3
            # and 0.5 segment alike on both; 0.3 keeps the label better than 0.5 (teacher consistency 0.82
            # vs 0.70 on BUSI, 0.97 vs 0.93 on hippocampus)
            "model": {"condition": "edges+mask"},
            # `diffboost pretrain --preset cpu`: 5000 steps on the shared corpus, about 50 min on one core
            "pretrain": {"steps": 5000},
            "train": {"steps": 2500, "batch_size": 8, "snr_gamma": 5.0, "max_timestep_fraction": 0.6},
            "generate": {"n": 3, "steps": 15, "strength": 0.3},
            "seg": {"network": "res_unet", "channels": [16, 32, 64, 128, 256], "epochs": 30, "batch_size": 16,
                    "precision": "auto", "channels_last": True},
            "compare": {"augs": ["none", "mirror", "resolution", "classic", "diffboost", "mix-classic",
                                 "diffboost+classic"],
                        "seeds": [0, 1], "jobs": 2}},
    "gpu": {"prepare": {"size": 384},
            "model": {"channels": [64, 128, 256, 512], "attention": [False, True, True, True], "layers_per_block": 2},
            "train": {"steps": 20000, "batch_size": 32, "mixed_precision": "bf16"},
            "generate": {"n": 10, "steps": 20, "batch_size": 64},
            "seg": {"epochs": 100, "batch_size": 8, "precision": "auto"},
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


def config_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
