"""Stage 1 as a user runs it: ``diffboost pretrain`` streams the corpus to disk, resumes without
preparing it again, refuses other options on a finished folder; its model is what ``finetune --init``
and ``run --init`` start from (label channels resized to the task's), never trained again by ``run``,
and refused when its corpus holds a near-duplicate of a task image."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from builders import make_corpus, make_msd, save_png
from PIL import Image
from typer.testing import CliRunner

from diffboost.cli import app
from diffboost.config import PrepareConfig
from diffboost.data.preparation import prepare
from diffboost.data.store import PreparedSet
from diffboost.errors import DataError

runner = CliRunner()
TINY = "model:\n  channels: [8, 16, 32]\n  attention: [false, true, true]\n  condition: edges+mask\n" \
       "train:\n  steps: 2\n  batch_size: 2\n  warmup_steps: 0\n  checkpoint_every: 1\n"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny edges+mask model pretrained through the CLI on a four-image corpus (32 px)."""
    root = tmp_path_factory.mktemp("pre")
    (root / "c.yaml").write_text(TINY)
    corpus = make_corpus(root / "radimagenet")
    res = runner.invoke(app, ["pretrain", str(corpus), "--out", str(root / "pre"), "--size", "32",
                              "--config", str(root / "c.yaml"), "-q"])
    assert res.exit_code == 0, res.output
    return root, corpus, root / "pre" / "model"


def test_pretraining_records_its_corpus_and_resumes_without_preparing_again(pretrained, monkeypatch):
    import diffboost.data.preparation as preparation

    root, corpus, model = pretrained
    record = json.loads((model / "corpus.json").read_text())
    assert record["samples"] == 4 and record["prepared"] == str((root / "pre" / "prepared").resolve())
    assert json.loads((model / "diffboost_model.json").read_text())["model"]["mask_channels"] == 1
    cfg = (root / "pre" / "config.yaml").read_text()
    assert "condition: edges\n" in cfg and "max_timestep_fraction: 1.0" in cfg
    # a kill before the model was written: the same command resumes from the last checkpoint
    shutil.rmtree(model)
    prepared = []
    monkeypatch.setattr(preparation, "prepare", lambda *a, **k: prepared.append(a))
    res = runner.invoke(app, ["pretrain", str(corpus), "--out", str(root / "pre"), "--size", "32",
                              "--config", str(root / "c.yaml"), "-q"])
    assert res.exit_code == 0, res.output
    assert prepared == [] and (model / "corpus.json").exists()
    assert json.loads((model / "training.json").read_text())["steps_done"] == 2
    # other options on the same folder are refused, nothing deleted
    res = runner.invoke(app, ["pretrain", str(corpus), "--out", str(root / "pre"), "--size", "32",
                              "--config", str(root / "c.yaml"), "--steps", "3", "-q"])
    assert res.exit_code == 2 and "other inputs or options" in " ".join(res.output.split())
    assert (model / "corpus.json").exists()


def test_pretrain_preset_takes_the_presets_model_and_pretraining_options(tmp_path):
    corpus = make_corpus(tmp_path / "radimagenet")
    res = runner.invoke(app, ["pretrain", str(corpus), "--out", str(tmp_path / "p"), "--preset", "demo",
                              "--size", "32", "--steps", "1", "--batch-size", "2", "-q"])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "p" / "model" / "diffboost_model.json").read_text())["model"]
    assert saved["channels"] == [16, 32, 64] and saved["image_size"] == 32  # demo's model
    cfg = (tmp_path / "p" / "config.yaml").read_text()
    assert "snr_gamma: 5.0" in cfg and "max_timestep_fraction: 1.0" in cfg  # demo's loss, every noise level


def test_prepare_streams_a_corpus_and_compares_no_pairs(tmp_path, monkeypatch):
    import diffboost.data.duplicates as duplicates

    corpus = make_corpus(tmp_path / "radimagenet")
    monkeypatch.setattr(duplicates, "near_duplicate_groups", lambda *a, **k: pytest.fail("N x N on a corpus"))
    ps = prepare(corpus, tmp_path / "prep", PrepareConfig(size=32, format="corpus"), progress=False)
    assert "unlabelled corpus" in ps.meta["near_duplicates"]["note"]
    assert not list(ps.root.glob("*.raw"))
    images = np.load(ps.root / "images.npy")
    assert images.shape == (4, 32, 32) and images.dtype == np.float16
    # the streamed arrays hold what the reader gave, in manifest order
    first = np.asarray(Image.open(corpus / "CT" / "Abdomen" / "Arterial_Pathology" / "0.png"), np.float32)
    row = next(r for r in ps.manifest if r["source_image"].endswith("Arterial_Pathology/0.png"))
    assert np.corrcoef(images[row["index"]].ravel(), np.asarray(Image.fromarray(first).resize((32, 32))).ravel())[0, 1] > 0.95


def test_block_wise_grouping_equals_the_whole_matrix(monkeypatch):
    import diffboost.data.duplicates as duplicates

    rng = np.random.default_rng(0)
    base = rng.normal(size=(9, 32, 32)).astype(np.float32)
    images = np.concatenate([base, base[[0, 0, 4]] + rng.normal(0, 0.1, (3, 32, 32)).astype(np.float32)])
    ids = [f"c{i}" for i in range(len(images))]
    whole = duplicates.near_duplicate_groups(ids, images, 0.9)
    monkeypatch.setattr(duplicates, "BLOCK", 4)
    assert duplicates.near_duplicate_groups(ids, images, 0.9) == whole == [["c0", "c10", "c9"], ["c11", "c4"]]


def _recropped(src, dst):
    """The image re-cropped by a few pixels, rescaled and re-exported as JPEG: no byte or pixel match."""
    img = Image.open(src).convert("L")
    w, h = img.size
    img.crop((3, 2, w - 2, h - 4)).resize((int(w * 1.3), int(h * 1.3))).save(dst, quality=90)


@pytest.fixture(scope="module")
def task(tmp_path_factory, phantom_root):
    return prepare(phantom_root, tmp_path_factory.mktemp("task") / "prepared", PrepareConfig(size=32, folds=3),
                   progress=False)


def test_a_corpus_holding_a_recropped_task_image_is_refused_naming_the_pair(task, phantom_root, tmp_path):
    from diffboost.data.overlap import check_task_overlap, task_overlap

    corpus = make_corpus(tmp_path / "radimagenet")
    src = phantom_root / "Dataset_BUSI_with_GT" / "malignant" / "malignant (2).png"
    (corpus / "US" / "Breast" / "malignant").mkdir(parents=True)
    _recropped(src, corpus / "US" / "Breast" / "malignant" / "x.jpg")
    cps = prepare(corpus, tmp_path / "cp", PrepareConfig(size=32, format="corpus"), progress=False)
    found = task_overlap(cps, task)
    assert [(f["by"], f["task"]) for f in found] == [("near-duplicate", str(src))]
    assert found[0]["correlation"] >= 0.92
    assert task_overlap(cps, task, threshold=None) == []  # no path, byte or pixel match: only the new check sees it
    with pytest.raises(DataError) as err:
        check_task_overlap(cps, task, record=tmp_path / "rec.json")
    msg = str(err.value)
    assert "holds 1 file(s) of the task being evaluated" in msg and "1 of them near-duplicates" in msg
    assert "x.jpg (near-duplicate of" in msg and "malignant (2).png" in msg
    assert json.loads((tmp_path / "rec.json").read_text())["near_duplicates"] == 1


def test_finetune_init_checks_the_models_corpus_and_resizes_its_label_channels(pretrained, tmp_path):
    root, corpus, model = pretrained
    msd = make_msd(tmp_path / "msd", n=4)  # two foreground labels
    res = runner.invoke(app, ["prepare", str(msd), "--out", str(tmp_path / "prep"), "--size", "32", "--folds", "2", "-q"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["finetune", str(tmp_path / "prep"), "--fold", "0", "--init", str(model),
                              "--config", str(root / "c.yaml"), "-q"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "models" / "fold0"
    assert json.loads((run / "model" / "training.json").read_text())["init_adapted"] == {"mask_channels": [1, 2]}
    assert json.loads((run / "model" / "diffboost_model.json").read_text())["model"]["mask_channels"] == 2
    assert json.loads((run / "task_overlap.json").read_text())["files"] == []
    # the corpus moved away: it cannot be checked, so the model is refused unless allowed
    moved = tmp_path / "elsewhere"
    shutil.copytree(model, moved)
    rec = json.loads((moved / "corpus.json").read_text())
    (moved / "corpus.json").write_text(json.dumps({**rec, "prepared": str(tmp_path / "gone")}))
    res = runner.invoke(app, ["finetune", str(tmp_path / "prep"), "--fold", "1", "--init", str(moved),
                              "--config", str(root / "c.yaml"), "-q"])
    assert res.exit_code == 2 and "cannot be checked for cases of the task" in " ".join(res.output.split())


@pytest.mark.parametrize("control", ["concat", "controlnet"])
def test_added_label_channels_start_at_zero_weight(control):
    from diffboost.diffusion.models import ModelConfig, set_mask_channels
    from diffboost.diffusion.train import new_pipeline

    torch.manual_seed(0)
    pipe = new_pipeline(ModelConfig(image_size=32, channels=(8, 16), attention=(False, True), control=control,
                                    condition="edges+mask", mask_channels=1))
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 500])
    states, mask = pipe.text_encoder(["US, Breast, benign", ""])
    edges, labels = torch.rand(2, 1, 32, 32), (torch.rand(2, 2, 32, 32) > 0.5).float()
    with torch.no_grad():
        before = pipe.denoiser(x, t, states, mask, pipe.encode_condition(edges, labels[:, :1]))
        assert set_mask_channels(pipe, 2) and pipe.config.mask_channels == 2
        after = pipe.denoiser(x, t, states, mask, pipe.encode_condition(edges, labels))
    assert torch.allclose(before, after, atol=1e-6)  # the new channel is read only once fine-tuning teaches it
    assert not set_mask_channels(pipe, 2)


def _stop(*a, **k):
    raise KeyboardInterrupt


def test_run_init_reuses_the_model_and_refuses_a_leaky_or_other_one(pretrained, task, phantom_root, tmp_path,
                                                                    monkeypatch):
    import diffboost.diffusion.train as dtrain
    from diffboost.run import RunConfig, run

    root, corpus, model = pretrained
    seen = []

    def train(prepared, out, indices, *a, init=None, **k):
        seen.append(init)
        raise KeyboardInterrupt  # what happens after the start is not this test's business

    monkeypatch.setattr(dtrain, "train_diffusion", train)
    base = {"prepare": {"size": 32}, "model": {"channels": [8, 16, 32], "attention": [False, True, True],
                                               "condition": "edges+mask"},
            "pretrain": {"model": str(model)}, "compare": {"augs": ["none", "diffboost"], "folds": [0]}}
    with pytest.raises(KeyboardInterrupt):
        run(phantom_root, tmp_path / "r", RunConfig.from_dict(base), progress=False)
    assert seen == [model]  # fine-tuning starts from it; nothing is pretrained
    assert json.loads((tmp_path / "r" / "pretrain" / "task_overlap.json").read_text())["files"] == []
    # another architecture than the run's is refused before any training
    other = {**base, "model": {**base["model"], "channels": [8, 16, 64]}}
    with pytest.raises(ValueError, match=r"differs from the run's model in channels"):
        run(phantom_root, tmp_path / "r2", RunConfig.from_dict(other), progress=False)
    # a model whose corpus holds a re-cropped task image is refused by name
    leaky = make_corpus(tmp_path / "leaky")
    (leaky / "US" / "Breast" / "benign").mkdir(parents=True)
    _recropped(phantom_root / "Dataset_BUSI_with_GT" / "benign" / "benign (3).png", leaky / "US" / "Breast" / "benign" / "y.png")
    lp = prepare(leaky, tmp_path / "leaky_prepared", PrepareConfig(size=32, format="corpus"), progress=False)
    shutil.copytree(model, tmp_path / "leaky_model")
    rec = json.loads((model / "corpus.json").read_text())
    (tmp_path / "leaky_model" / "corpus.json").write_text(json.dumps({**rec, "prepared": str(lp.root)}))
    seen.clear()
    with pytest.raises(DataError, match=r"near-duplicate of .*benign \(3\)\.png"):
        run(phantom_root, tmp_path / "r3", RunConfig.from_dict({**base, "pretrain": {"model": str(tmp_path / "leaky_model")}}),
            progress=False)
    assert seen == []
    with pytest.raises(ValueError, match="not both"):
        RunConfig.from_dict({**base, "pretrain": {"model": str(model), "corpus": str(corpus)}})
