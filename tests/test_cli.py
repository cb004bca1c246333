"""The command line: a thin layer over the API, one clear error line on bad input."""

from __future__ import annotations

import numpy as np
from builders import make_busi, make_msd
from typer.testing import CliRunner

from diffboost.cli import app
from diffboost.data.store import PreparedSet

runner = CliRunner()


def test_prepare_command_and_info(tmp_path):
    src = make_busi(tmp_path / "busi")
    res = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "o"), "--size", "24", "--folds", "2", "-q"])
    assert res.exit_code == 0, res.output
    ps = PreparedSet(tmp_path / "o")
    assert ps.size == 24 and ps.meta["config"]["folds"] == 2
    res = runner.invoke(app, ["info", str(tmp_path / "o")])
    assert res.exit_code == 0 and "US, Breast, benign" in res.output


def test_prepare_command_options_reach_the_config(tmp_path):
    src = make_msd(tmp_path / "t", n=3, channels=2)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("prepare:\n  size: 20\n  slices: all\n  folds: 3\n")
    res = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "o"), "--config", str(cfg),
                              "--channel", "1", "--labels", "1,2", "--window", "0,400", "--organ", "Prostate gland", "-q"])
    assert res.exit_code == 0, res.output
    ps = PreparedSet(tmp_path / "o")
    c = ps.meta["config"]
    assert (c["size"], c["slices"], c["channel"], c["window"]) == (20, "all", 1, [0.0, 400.0])
    assert ps.meta["labels"] == {"0": "background", "1": "PZ+TZ"}
    assert set(np.unique(ps.masks)) == {0, 1}
    assert ps.manifest[0]["prompt"] == "MR, Prostate gland, normal"
    saved = (ps.root / "config.yaml").read_text()
    assert "prepare:" in saved and "channel: 1" in saved


def test_bad_input_gives_one_error_line(tmp_path):
    src = make_busi(tmp_path / "busi")
    (src / "Dataset_BUSI_with_GT" / "benign" / "benign (1)_mask.png").unlink()
    res = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 2
    assert "benign (1).png: image without mask" in " ".join(res.output.split())
    assert "Traceback" not in res.output
    assert not (tmp_path / "o").exists()
    res = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "o"), "--window", "3"])
    assert res.exit_code == 2 and "LOW,HIGH" in res.output


def test_errors_stay_on_one_line_when_output_is_not_a_terminal(tmp_path):
    import os
    import subprocess
    import sys

    deep = tmp_path / ("a_rather_long_folder_name_" * 3) / ("and_another_long_folder_name_" * 3) / "not_prepared"
    deep.mkdir(parents=True)
    assert len(str(deep)) > 160
    res = runner.invoke(app, ["info", str(deep)])
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if "error:" in line]
    assert len(lines) == 1 and f"{deep}: not a prepared set" in lines[0]
    # the real thing: stderr is a pipe (as in CI logs and `2>log`), no COLUMNS set
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "TERM")}
    p = subprocess.run([sys.executable, "-m", "diffboost.cli", "info", str(deep)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 2
    assert p.stderr.splitlines()[0] == f"error: {deep}: not a prepared set (no dataset.json); run `diffboost prepare`"


def test_programming_errors_keep_their_traceback(tmp_path, monkeypatch):
    import diffboost.data.store as store

    def broken(self, root):
        raise KeyError("num_cases")

    monkeypatch.setattr(store.PreparedSet, "__init__", broken)
    res = runner.invoke(app, ["info", str(tmp_path)])
    assert res.exit_code == 1 and isinstance(res.exception, KeyError)  # not exit 2 with a "user error" line
    assert "error:" not in res.output


def test_a_fold_that_does_not_exist_is_named(tmp_path):
    import pytest

    src = make_busi(tmp_path / "busi")
    res = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "o"), "--size", "24", "--folds", "2", "-q"])
    assert res.exit_code == 0, res.output
    ps = PreparedSet(tmp_path / "o")
    for k in (2, 5, -1):
        with pytest.raises(ValueError) as e:
            ps.fold(k)
        assert str(e.value) == f"fold {k} does not exist: {ps.root} has 2 folds (0-1)"
    res = runner.invoke(app, ["train-seg", str(tmp_path / "o"), "--fold", "5", "-q"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"error: fold 5 does not exist: {ps.root} has 2 folds (0-1)" in res.output


def test_unknown_config_key_is_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("prepare:\n  sise: 64\n")
    res = runner.invoke(app, ["prepare", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(cfg)])
    assert res.exit_code == 2 and "sise" in res.output and "c.yaml" in res.output


def test_pretrain_finetune_generate_commands(tmp_path):
    """Stages 1-3 through the CLI on tiny data: corpus -> pretrain -> finetune fold 0 -> generate."""
    from builders import make_corpus

    from diffboost.data.phantoms import generate_phantoms
    from diffboost.generation import SyntheticSet

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  channels: [8, 16, 32]\n  attention: [false, true, true]\n"
                   "train:\n  steps: 2\n  batch_size: 2\n  warmup_steps: 0\n")
    corpus = make_corpus(tmp_path / "radimagenet")
    res = runner.invoke(app, ["pretrain", str(corpus), "--out", str(tmp_path / "pre"), "--size", "32",
                              "--config", str(cfg), "-q"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "pre" / "model" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    pre_cfg = (tmp_path / "pre" / "config.yaml").read_text()
    assert "condition: edges" in pre_cfg  # pretraining conditions on soft edges only

    src = generate_phantoms(tmp_path / "ph", n=6, seed=4)
    res = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "prep"), "--size", "32", "-q"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["finetune", str(tmp_path / "prep"), "--fold", "0", "--init",
                              str(tmp_path / "pre" / "model"), "--config", str(cfg), "-q"])
    assert res.exit_code == 0, res.output
    model = tmp_path / "models" / "fold0" / "model"
    assert "condition: condition" in (tmp_path / "models" / "fold0" / "config.yaml").read_text()
    res = runner.invoke(app, ["generate", str(model), str(tmp_path / "prep"), "--fold", "0", "-n", "2",
                              "--steps", "2", "--texts", "|enhanced contrast", "-q"])
    assert res.exit_code == 0, res.output
    syn = SyntheticSet(tmp_path / "synthetic" / "fold0")
    assert {r["text"] for r in syn.manifest} == {"", "enhanced contrast"}
    ps = PreparedSet(tmp_path / "prep")
    assert {r["case_id"] for r in syn.manifest} <= set(ps.fold(0).train)


def test_stage_flags_reach_the_configs_and_a_config_file_keeps_its_values(tmp_path, monkeypatch):
    """generate: --strength, and the file's n when -n is not given (it used to be overridden by 4);
    train-seg / compare: --mix-prob, --teacher-gate, --pixel-filter."""
    import diffboost.generation as gen_pkg
    import diffboost.segmentation as seg_pkg

    seen = {}

    class NoImages(list):  # what the command prints about: a set's length and folder
        root = tmp_path

    def fake_generate(model, prepared, out, fold, cfg, progress=True):
        seen["generate"] = cfg
        return NoImages()

    monkeypatch.setattr(gen_pkg, "generate", fake_generate)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("generate:\n  n: 2\n  steps: 7\nseg:\n  mix_prob: 0.25\n")
    res = runner.invoke(app, ["generate", str(tmp_path / "m"), str(tmp_path / "p"), "--config", str(cfg),
                              "--strength", "0.5", "-q"])
    assert res.exit_code == 0, res.output
    g = seen["generate"]
    assert (g.n, g.steps, g.strength) == (2, 7, 0.5)
    res = runner.invoke(app, ["generate", str(tmp_path / "m"), str(tmp_path / "p"), "-q"])
    assert res.exit_code == 0 and seen["generate"].n == 4 and seen["generate"].strength == 1.0  # the defaults

    def fake_train(prepared, fold, cfg, out=None, progress=True):
        seen["seg"] = cfg
        return {"metrics": {}, "cases": 0, "best_epoch": 0}

    monkeypatch.setattr(seg_pkg, "train_seg", fake_train)
    res = runner.invoke(app, ["train-seg", str(tmp_path / "p"), "--aug", "diffboost", "--config", str(cfg),
                              "--teacher-gate", "0.8", "--pixel-filter", "1.25", "-q"])
    assert res.exit_code == 0, res.output
    s = seen["seg"]
    assert (s.mix_prob, s.teacher_gate, s.pixel_filter) == (0.25, 0.8, 1.25)
    res = runner.invoke(app, ["train-seg", str(tmp_path / "p"), "--aug", "diffboost", "--mix-prob", "0.5", "-q"])
    assert res.exit_code == 0 and seen["seg"].mix_prob == 0.5 and seen["seg"].teacher_gate is None

    def fake_compare(prepared, strategies, cfg, out, folds, progress=True, seeds=None, jobs=1):
        seen["compare"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(seg_pkg, "compare", fake_compare)
    runner.invoke(app, ["compare", str(tmp_path / "p"), "--augs", "none,diffboost", "--mix-prob", "0.5",
                        "--teacher-gate", "0.9", "--pixel-filter", "2", "-q"])
    c = seen["compare"]
    assert (c.mix_prob, c.teacher_gate, c.pixel_filter) == (0.5, 0.9, 2.0)


def test_ablate_help_names_every_sweep():
    from diffboost.runconfig import SWEEPABLE

    r = CliRunner().invoke(app, ["ablate", "--help"], env={"COLUMNS": "240"})
    assert r.exit_code == 0, r.output
    assert all(name in r.output for name in SWEEPABLE), r.output
