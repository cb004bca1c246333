"""Pretraining must not see the task's own cases (its test folds would leak into the diffusion model):
a corpus holding them (same file, same bytes, same prepared image) is refused by name, unless
``pretrain.allow_task_overlap`` / ``--allow-task-overlap`` lets it through, which the report then shows."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from builders import gradient_image, save_png
from PIL import Image
from typer.testing import CliRunner

from diffboost.config import PrepareConfig
from diffboost.data.overlap import check_task_overlap, task_overlap
from diffboost.data.preparation import prepare
from diffboost.errors import DataError

runner = CliRunner()


@pytest.fixture(scope="module")
def sets(tmp_path_factory, phantom_root):
    """The phantom task prepared at 32 px, and a corpus holding three of its images (a copy, the same
    pixels saved again with other compression, a link to the task's file) among unrelated images."""
    root = tmp_path_factory.mktemp("overlap")
    base = phantom_root / "Dataset_BUSI_with_GT"
    corpus = root / "corpus"
    for i in range(3):
        save_png(corpus / "CT" / "Abdomen" / "normal" / f"{i}.png", gradient_image(40, 40, i))
    shared = corpus / "US" / "Breast" / "benign"
    shared.mkdir(parents=True)
    shutil.copy(base / "benign" / "benign (1).png", shared / "copy.png")
    Image.open(base / "malignant" / "malignant (1).png").save(shared / "resaved.png", compress_level=0)
    os.symlink(base / "normal" / "normal (1).png", shared / "link.png")
    assert (shared / "resaved.png").read_bytes() != (base / "malignant" / "malignant (1).png").read_bytes()
    task = prepare(phantom_root, root / "task", PrepareConfig(size=32, folds=3), progress=False)
    prepared = prepare(corpus, root / "corpus_prepared", PrepareConfig(size=32, format="corpus"), progress=False)
    return corpus, task, prepared


def test_task_cases_in_the_corpus_are_found_by_path_bytes_and_image(sets):
    corpus, task, prepared = sets
    found = {Path(f["corpus"]).name: f for f in task_overlap(prepared, task)}
    assert set(found) == {"copy.png", "resaved.png", "normal (1).png"}  # the link resolves to the task's file
    assert found["normal (1).png"]["by"] == "same path"
    assert found["copy.png"]["by"] == "same file bytes" and found["copy.png"]["task"].endswith("benign (1).png")
    assert found["resaved.png"]["by"] == "same prepared image"
    assert found["resaved.png"]["task"].endswith("malignant (1).png")


def test_an_overlapping_corpus_is_refused_by_name_unless_allowed(sets, tmp_path):
    corpus, task, prepared = sets
    with pytest.raises(DataError) as err:
        check_task_overlap(prepared, task, record=tmp_path / "rec.json")
    msg = str(err.value)
    assert msg.startswith(f"{corpus.resolve()}: the pretraining corpus holds 3 file(s) of the task being evaluated")
    for name in ("copy.png (same file bytes as", "resaved.png (same prepared image as", "normal (1).png",
                 "allow_task_overlap"):
        assert name in msg
    assert json.loads((tmp_path / "rec.json").read_text())["allowed"] is False
    files = check_task_overlap(prepared, task, allow=True, record=tmp_path / "rec.json")
    assert len(files) == 3 and json.loads((tmp_path / "rec.json").read_text())["allowed"] is True
    # a corpus without the task's images passes
    shutil.copytree(corpus / "CT", tmp_path / "unrelated" / "CT")
    clean = prepare(tmp_path / "unrelated", tmp_path / "clean", PrepareConfig(size=32, format="corpus"), progress=False)
    assert check_task_overlap(clean, task) == []


class _Stop(Exception):
    pass


def test_run_refuses_the_overlap_and_the_flag_lets_it_through_into_the_report(sets, phantom_root, tmp_path,
                                                                               monkeypatch):
    import diffboost.diffusion.train as dtrain
    from diffboost.report import write_report
    from diffboost.run import RunConfig, run

    corpus = sets[0]
    data = {"prepare": {"size": 32}, "pretrain": {"corpus": str(corpus), "steps": 2}, "compare": {"augs": ["none"]}}
    started = []

    def train(prepared, out, indices, *a, **k):
        started.append(len(indices))
        raise _Stop  # pretraining itself is not what this test is about

    monkeypatch.setattr(dtrain, "train_diffusion", train)
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"holds 3 file\(s\) of the task being evaluated.*copy\.png"):
        run(phantom_root, out, RunConfig.from_dict(data), progress=False)
    assert started == []  # refused before any training
    data["pretrain"]["allow_task_overlap"] = True
    with pytest.raises(_Stop):
        run(phantom_root, out, RunConfig.from_dict(data), progress=False)
    assert started == [6]  # the whole corpus, the task's three images included
    record = json.loads((out / "pretrain" / "task_overlap.json").read_text())
    assert record["allowed"] is True and len(record["files"]) == 3
    write_report(out)
    md = (out / "report.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| pretraining corpus |"))
    assert "HOLDS 3 file(s) of the task" in line and "allow_task_overlap: true" in line
    assert "pretrain_task_overlap" in json.loads((out / "provenance.json").read_text())


def test_cli_pretrain_refuses_a_task_set_and_a_corpus_holding_task_cases(sets, tmp_path):
    from diffboost.cli import app

    corpus, task, _ = sets
    res = runner.invoke(app, ["pretrain", str(task.root), "--out", str(tmp_path / "a"), "--steps", "1", "-q"])
    assert res.exit_code == 2, res.output
    assert "is a task's prepared set" in " ".join(res.output.split())
    res = runner.invoke(app, ["pretrain", str(corpus), "--task", str(task.root), "--out", str(tmp_path / "b"),
                              "--size", "32", "--steps", "1", "-q"])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "holds 3 file(s) of the task being evaluated" in text and "copy.png" in text
    assert "--allow-task-overlap" in text
    assert not (tmp_path / "b" / "model").exists()
