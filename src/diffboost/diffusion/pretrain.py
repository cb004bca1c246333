"""Stage 1: pretraining on a radiology corpus, and the checks that let a task start from its model.

``pretrain`` prepares the corpus once (streamed to disk: a RadImageNet-size corpus needs no more memory
than a small one), trains the text + edge conditioned model on it with soft edges as the condition
and empty label channels, resumes an interrupted training from its last checkpoint without preparing
the corpus again, and writes ``model/`` (diffusers folders, safetensors + config.json) with
``model/corpus.json``: which corpus it saw, where its prepared copy is, its prompts.

A task fine-tuned from that model must not have its cases in the corpus (its test folds would leak
into the generator of its training data). :func:`check_init_corpus` compares the model's corpus with
the task (same file, same bytes, same prepared image, or a near-duplicate) wherever a task starts from a
pretrained model: ``finetune --init``, ``run --init`` / ``pretrain.model``, ``run --corpus``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..data.duplicates import DEFAULT_THRESHOLD
from ..utils.atomic import write_control
from .models import ModelConfig
from .train import TrainConfig, finished_training

CORPUS_RECORD = "corpus.json"


def pretraining_configs(model_cfg: ModelConfig, train_cfg: TrainConfig, size: int,
                        max_timestep_fraction: float = 1.0) -> tuple[ModelConfig, TrainConfig]:
    """The model and training options pretraining runs with: the task's model at the corpus's working
    size (an ``edges+mask`` model gets one label channel, which fine-tuning resizes to the task's
    labels), trained on soft edges over ``max_timestep_fraction`` of the noise levels."""
    mcfg = dataclasses.replace(model_cfg, image_size=size)
    if mcfg.condition == "edges+mask" and mcfg.mask_channels is None:
        mcfg = dataclasses.replace(mcfg, mask_channels=1)
    tcfg = dataclasses.replace(train_cfg, condition="edges", max_timestep_fraction=max_timestep_fraction)
    return mcfg, tcfg


def prepared_corpus(corpus: str | Path, prepared: Path, size: int, progress: bool = True, prepare_cfg=None):
    """The corpus as a prepared set: ``corpus`` itself when it is one, else prepared once into ``prepared``
    with ``prepare_cfg``'s intensity and edge options (reused as it is on every later call: a resumed
    pretraining does not read the corpus again)."""
    from ..config import PrepareConfig
    from ..data.preparation import prepare
    from ..data.store import PreparedSet

    corpus = Path(corpus)
    if (corpus / "dataset.json").exists() and (corpus / "manifest.csv").exists():
        return PreparedSet(corpus)
    if (prepared / "dataset.json").exists():
        return PreparedSet(prepared)
    cfg = dataclasses.replace(prepare_cfg or PrepareConfig(), size=size, format="corpus")
    return prepare(corpus, prepared, cfg, progress=progress)


def pretrain(corpus: str | Path, out: str | Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
             size: int = 128, prepared: str | Path | None = None, progress: bool = True):
    """Pretrain on ``corpus`` (a RadImageNet-style folder, prepared into ``prepared``, default
    ``out/prepared``, at ``size`` px; or a prepared set) into ``out``; return ``out/model``.
    ``model_cfg`` / ``train_cfg`` are used as given (see :func:`pretraining_configs`).
    An interrupted call resumes from ``out/checkpoints``; a finished one returns its model at once."""
    from . import train  # looked up when called (tests replace the training)

    out = Path(out)
    ps = prepared_corpus(corpus, Path(prepared) if prepared else out / "prepared", size, progress)
    model = out / "model"
    if not finished_training(model) or not (model / CORPUS_RECORD).exists():
        if not finished_training(model):
            train.train_diffusion(ps, out, [r["index"] for r in ps.manifest if r["train"]],
                            dataclasses.replace(model_cfg, image_size=ps.size), train_cfg,
                            resume="latest" if (out / "checkpoints").exists() else None, progress=progress)
        write_control(model / CORPUS_RECORD, {
            "source": ps.meta.get("source"), "prepared": str(ps.root.resolve()), "samples": len(ps),
            "prompts": ps.meta.get("prompts"), "size": ps.size})
    return model


def corpus_of(model: str | Path) -> dict | None:
    """What ``model/corpus.json`` says the model was pretrained on (None: not pretrained by diffboost)."""
    path = Path(model) / CORPUS_RECORD
    return json.loads(path.read_text()) if path.exists() else None


def check_init_corpus(model: str | Path, task, allow: bool = False, record: str | Path | None = None,
                      threshold: float | None = DEFAULT_THRESHOLD) -> list[dict]:
    """Refuse to fine-tune ``task`` (a prepared set) from ``model`` when the corpus the model was
    pretrained on holds cases of the task, any fold (:func:`~diffboost.data.overlap.check_task_overlap`).
    A model whose corpus cannot be read is refused too, unless ``allow``: nothing says it is clean."""
    from ..data.overlap import check_task_overlap
    from ..data.store import PreparedSet
    from ..errors import DataError

    info = corpus_of(model)
    if info is None:
        return []  # a model pretrained elsewhere (e.g. a user's own): nothing recorded to compare
    where = Path(info.get("prepared") or "")
    if not (where / "dataset.json").exists():
        if allow:
            return []
        raise DataError(model, f"its pretraining corpus ({info.get('source')}) was prepared at {where}, which is not "
                               "there any more, so it cannot be checked for cases of the task being fine-tuned "
                               f"({task.meta.get('source', task.root)}). Prepare it there again (diffboost prepare "
                               f"{info.get('source')} --out {where} --format corpus --size {info.get('size')}), or "
                               "allow it with --allow-task-overlap / pretrain.allow_task_overlap: true")
    return check_task_overlap(PreparedSet(where), task, allow, record=record, threshold=threshold)


# what must agree between a pretrained model and the model a run would otherwise train (label channels
# are resized to the task's; sd15's weights paths are where they were read from)
_ARCHITECTURE = ("kind", "control", "pixel_shuffle", "channels", "attention", "layers_per_block", "text_encoder",
                 "max_tokens", "condition")


def check_init_model(model: str | Path, model_cfg: ModelConfig, size: int) -> ModelConfig:
    """The config of the pretrained ``model``, refused when its architecture is not the one the run is
    configured with (``model:``) or it was trained at another size than the task is prepared at."""
    from ..config import from_dict
    from .pipeline import CONFIG_NAME

    meta = Path(model) / CONFIG_NAME
    if not meta.exists():
        raise FileNotFoundError(f"{model}: not a diffboost model folder (no {CONFIG_NAME}); give the model/ folder "
                                "that `diffboost pretrain` wrote")
    saved = from_dict(ModelConfig, json.loads(meta.read_text())["model"])
    differ = [f"{k} {getattr(saved, k)!r} (the run's: {getattr(model_cfg, k)!r})" for k in _ARCHITECTURE
              if getattr(saved, k) != getattr(model_cfg, k)]
    if saved.image_size != size:
        differ.append(f"image_size {saved.image_size} (the task is prepared at {size})")
    if differ:
        raise ValueError(f"{model}: the pretrained model differs from the run's model in " + "; ".join(differ) +
                         ". Set model: (and prepare.size) to match it, or pretrain one with these settings")
    return saved
