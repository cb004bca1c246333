"""Self-training inside nnU-Net: the ``self-train`` strategy's pseudo-labels, for an exported dataset.

The nnU-Net maintainers' recipe for unlabelled images is to predict them with a trained model and train
again on the predictions. :func:`add_pseudo_labels` does it the way the ``self-train`` strategy does
(:mod:`diffboost.segmentation.semisup`):

1. ``diffboost export --fold K`` wrote fold K alone, its images without a label in ``imagesUnlabelled/``.
   One fold, because nnU-Net's predictor takes every trained fold of a dataset unless told otherwise,
   and the other folds' models learnt from fold K's test cases: with one split there is no other fold;
2. its model predicts them: ``nnUNetv2_predict -i imagesUnlabelled -o PRED -d ID -c 2d -f 0
   --save_probabilities`` (``PRED/NAME.npz`` holds the class probabilities);
3. :func:`add_pseudo_labels` keeps the ``keep`` share of the images the model is most confident on (the mean
   confidence over the pixels it calls foreground, over all pixels when it calls none:
   :func:`~diffboost.segmentation.semisup.image_confidence`), writes them to ``imagesTr``/``labelsTr`` as
   ``NAME_pseudo_fK`` with the pixels at or under ``confidence`` set to nnU-Net's ``ignore`` label (they
   leave nnU-Net's loss, as uncertain pixels leave ``self-train``'s), and adds them to the training list;
4. plan and preprocess again (the labels changed), copy ``splits_final.json``, train again.

Everything is read and checked before anything is written; ``diffboost_export.json`` records what was added.
Files ``*_pseudo_f*`` that an interrupted call left (no record names them) are replaced. Probabilities are
read from ``.npz`` without pickle; nnU-Net's ``.pkl`` files are never opened.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from ..segmentation.semisup import image_confidence
from ..utils.atomic import atomic_write_text


def _reader_writer(meta: dict, example: Path):
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    return determine_reader_writer_from_dataset_json(meta, str(example), verbose=False)()


def add_pseudo_labels(dataset: str | Path, predictions: str | Path, fold: int = 0, keep: float = 0.5,
                      confidence: float = 0.95) -> dict:
    """Add the pseudo-labelled images of the one-fold nnU-Net ``dataset`` (``export --fold K``) to its
    split ``fold`` (nnU-Net's fold number: 0); returns what was added."""
    dataset, predictions = Path(dataset), Path(predictions)
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep:g}")
    if not 0 <= confidence < 1:
        raise ValueError(f"confidence must be in [0, 1), got {confidence:g}")
    info_file = dataset / "diffboost_export.json"
    if not info_file.exists():
        raise FileNotFoundError(f"{dataset}: not a dataset written by `diffboost export` (no diffboost_export.json)")
    meta = json.loads((dataset / "dataset.json").read_text())
    info = json.loads(info_file.read_text())
    splits = json.loads((dataset / "splits_final.json").read_text())
    if info.get("format", "nnunet") != "nnunet":
        raise ValueError(f"{dataset}: an MSD export; pseudo-labels are added to nnU-Net v2 datasets (export --to nnunet)")
    if len(splits) != 1 or info.get("fold") is None:
        raise ValueError(f"{dataset}: holds {len(splits)} folds, and nnU-Net's predictor takes every trained fold "
                         "unless told otherwise (their models learnt from each other's test cases); export one fold "
                         "for self-training: diffboost export --fold K")
    if fold != 0:
        raise ValueError(f"{dataset / 'splits_final.json'}: holds one split, nnU-Net's fold 0, not {fold}")
    if str(fold) in info.get("pseudo_labels", {}):
        raise ValueError(f"{dataset}: fold {fold} already trains on pseudo-labels; export again to start over")
    names = [u["name"] for u in info.get("unlabelled_images", [])]
    if not names:
        raise ValueError(f"{dataset}: holds no images without a label (imagesUnlabelled); prepare them with --unlabelled")
    ending = meta["file_ending"]
    needed = [dataset / "imagesUnlabelled" / f"{n}_0000{ending}" for n in names] + [
        p for n in names for p in (predictions / f"{n}{ending}", predictions / f"{n}.npz")]
    missing = [p for p in needed if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: missing ({len(missing)} file(s) in all); predict imagesUnlabelled "
                                f"with the fold's model and --save_probabilities into {predictions}")
    rw = _reader_writer(meta, predictions / f"{names[0]}{ending}")

    def read(n: str):
        seg, props = rw.read_seg(str(predictions / f"{n}{ending}"))
        with np.load(predictions / f"{n}.npz", allow_pickle=False) as z:
            probs = np.asarray(z["probabilities"], np.float32)
        if probs.shape[1:] != seg.shape[1:] or probs.shape[0] < 2:
            raise ValueError(f"{predictions / f'{n}.npz'}: probabilities of shape {probs.shape} do not match the "
                             f"segmentation {predictions / f'{n}{ending}'} of shape {seg.shape[1:]}")
        return seg[0].astype(np.int64), probs.max(0), props

    scores = []  # one pass to score (one image in memory at a time), another to write the kept ones
    for n in names:
        lab, conf, _ = read(n)
        scores.append(float(image_confidence(torch.from_numpy(lab)[None], torch.from_numpy(conf)[None])[0]))
    n_keep = max(1, round(keep * len(names)))
    chosen = sorted(np.argsort(-np.asarray(scores), kind="stable")[:n_keep].tolist())
    mine = f"_pseudo_f{fold}"  # an interrupted call's files and list entries (no record names them)
    for d in ("imagesTr", "labelsTr"):
        for old in (dataset / d).glob(f"*{mine}*{ending}"):
            old.unlink()
    train = [n for n in splits[fold]["train"] if not n.endswith(mine)]
    label_ids = {k: v for k, v in meta["labels"].items()}
    ignore = label_ids.get("ignore", max(int(v) for v in label_ids.values()) + 1)
    added, ignored = [], []
    for i in chosen:
        lab, conf, props = read(names[i])
        lab[conf <= confidence] = ignore
        new = f"{names[i]}_pseudo_f{fold}"
        shutil.copyfile(dataset / "imagesUnlabelled" / f"{names[i]}_0000{ending}", dataset / "imagesTr" / f"{new}_0000{ending}")
        rw.write_seg(lab.astype(np.uint8 if ignore < 255 else np.uint16), str(dataset / "labelsTr" / f"{new}{ending}"), props)
        added.append(new)
        ignored.append(float((conf <= confidence).mean()))
    splits[fold]["train"] = train + added
    meta["labels"] = {**label_ids, "ignore": ignore}
    meta["numTraining"] = len(list((dataset / "labelsTr").glob(f"*{ending}")))
    record = {"predictions": str(predictions.resolve()), "keep": keep, "confidence": confidence, "ignore_label": ignore,
              "images": len(names), "added": added, "image_confidence": dict(zip(names, scores)),
              "ignored_pixel_share": dict(zip(added, ignored))}
    info["pseudo_labels"] = {**info.get("pseudo_labels", {}), str(fold): record}
    atomic_write_text(dataset / "splits_final.json", json.dumps(splits, indent=1))
    atomic_write_text(dataset / "dataset.json", json.dumps(meta, indent=1))
    atomic_write_text(info_file, json.dumps(info, indent=1))
    return record
