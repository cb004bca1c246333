"""`diffboost run`: every stage in one call, resumable, recomputing only what a changed option touches;
the report; the config presets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from diffboost.data.store import PreparedSet
from diffboost.run import PRESETS, RunConfig, load_run_config, preset, run

TINY = {"prepare": {"size": 32},
        "model": {"channels": [8, 16, 32], "attention": [False, True, True]},
        "train": {"steps": 6, "batch_size": 4, "checkpoint_every": 3, "validate_every": 6, "warmup_steps": 1},
        "generate": {"n": 1, "steps": 2, "batch_size": 8},
        "seg": {"channels": [8, 16, 32], "epochs": 1, "batch_size": 4},
        "compare": {"augs": ["none", "mirror", "diffboost"], "folds": [0, 1]},
        "ablate": {"sweeps": []}}


def _cfg(**changes) -> RunConfig:
    data = json.loads(json.dumps(TINY))
    for section, values in changes.items():
        data[section].update(values)
    return RunConfig.from_dict(data)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, phantom_root):
    out = tmp_path_factory.mktemp("run") / "busi"
    report = run(phantom_root, out, _cfg(), progress=False)
    return out, report


def test_run_writes_every_stage_and_a_readable_report(first_run):
    out, report = first_run
    for p in ("prepared/dataset.json", "models/fold0/model", "models/fold1/model", "synthetic/fold0/images.npy",
              "seg/none/seed0/fold0/summary.json", "seg/diffboost/seed0/fold1/summary.json", "compare/table.md", "run.yaml"):
        assert (out / p).exists(), p
    assert not (out / "models" / "fold2").exists()  # only the folds asked for
    md = (out / "report.md").read_text()
    for title in ("Table II", "Per fold", "Synthetic variants (Fig. 3)", "Algorithm 1 mixing (Fig. 4)", "Segmentations (Fig. 5)",
                  "Training curves", "Provenance"):
        assert f"## {title}" in md
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["versions"]["diffboost"] and prov["machine"]["cpu"] and "commit" in prov
    assert set(prov["wall_seconds"]) >= {"prepare", "fine-tune fold0", "generate fold1",
                                         "segmentation (6 runs, summed)"}  # 3 strategies x 2 folds
    assert all(v > 0 for k, v in prov["wall_seconds"].items() if k != "prepare")
    assert "| fine-tune fold0 | " in md and "| total (segmentation runs summed) | " in md  # time per stage, readable
    assert "| compare, wall clock of the last `run` call | " in md
    calls = [json.loads(line) for line in (out / "run_calls.jsonl").read_text().splitlines()]
    assert len(calls) == 1 and set(calls[0]["seconds"]) >= {"prepare", "fine-tune fold0", "compare", "report"}
    page = report.read_text()
    assert page.count("data:image/png;base64,") == 6 and "<table>" in page  # self-contained
    assert "lesion Dice" in md and "FP rate on empty" in md and "ΔDice vs none [corrected 95% CI]" in md and "95% CI over fold means" in md
    for fig in ("boxplots", "boxplots_per_fold", "variants", "alpha_strip", "overlays", "curves"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000
    saved = load_run_config(out / "run.yaml", "cpu")
    assert saved == _cfg()  # the saved config reproduces the run


def test_a_changed_option_recomputes_only_what_depends_on_it(first_run, phantom_root, monkeypatch):
    out, _ = first_run
    import diffboost.diffusion.train as dtrain
    import diffboost.segmentation.trainer as strainer

    trained = []
    real_epoch = strainer._train_epoch
    monkeypatch.setattr(dtrain, "train_diffusion", lambda *a, **k: pytest.fail("retrained the diffusion model"))
    monkeypatch.setattr(strainer, "_train_epoch", lambda *a, **k: trained.append(a[4].aug) or real_epoch(*a, **k))
    run(phantom_root, out, _cfg(), progress=False)
    assert trained == []  # nothing changed: nothing retrained
    assert len((out / "run_calls.jsonl").read_text().splitlines()) == 2  # each finished call is recorded
    # more variants: the diffboost runs trained on the old set are refused, named, until asked to redo them
    with pytest.raises(ValueError, match=r"synthetic_variants.*--redo seg"):
        run(phantom_root, out, _cfg(generate={"n": 2}), progress=False)
    assert trained == [] and (out / "seg" / "diffboost" / "seed0" / "fold0" / "summary.json").exists()  # nothing deleted
    run(phantom_root, out, _cfg(generate={"n": 2}), progress=False, redo=["seg"])
    assert sorted(set(trained)) == ["diffboost"] and len(trained) == 2  # new variants: only diffboost, per fold
    assert json.loads((out / "synthetic" / "fold0" / "generation.json").read_text())["n"] == 2
    trained.clear()
    run(phantom_root, out, _cfg(generate={"n": 2}, seg={"epochs": 2}), progress=False, redo=["seg"])
    assert sorted(trained) == sorted(["none", "mirror", "diffboost"] * 2 * 2)  # 3 strategies x 2 folds x 2 epochs
    # a changed diffusion option: refused with the stage and the option named, nothing deleted
    from diffboost.stages import StaleStage

    with pytest.raises(StaleStage, match=r"finetune stage .*\(train changed\).*--redo finetune"):
        run(phantom_root, out, _cfg(generate={"n": 2}, seg={"epochs": 2}, train={"steps": 7}), progress=False)
    assert (out / "models" / "fold0" / "model").exists()


def test_shipped_configs_load_over_the_cpu_preset():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert files, "configs/ holds the YAML files the README's benchmark commands use"
    for f in files:
        overlay = yaml.safe_load(f.read_text())
        cfg = load_run_config(f, "cpu")
        for section, values in overlay.items():  # every option of the file reached the config
            for key, value in values.items():
                got = getattr(getattr(cfg, section), key)
                assert (list(got) if isinstance(got, tuple) else got) == value, (f.name, section, key)
    hippo = load_run_config(files[[f.name for f in files].index("hippocampus_cpu.yaml")], "cpu")
    assert hippo.prepare.size == 64 and hippo.model.condition == preset("cpu").model.condition


def test_presets_and_config_files(tmp_path):
    from diffboost.cli import app

    assert set(PRESETS) == {"demo", "cpu", "gpu"}
    assert preset("gpu").prepare.size == 384 and {preset(n).seg.precision for n in PRESETS} == {"auto"}
    r = CliRunner().invoke(app, ["config", "--preset", "cpu"])
    assert r.exit_code == 0
    f = tmp_path / "run.yaml"
    data = yaml.safe_load(r.output)
    data["seg"]["epochs"] = 3
    f.write_text(yaml.safe_dump(data))
    cfg = load_run_config(f, "demo")
    assert cfg.seg.epochs == 3 and cfg.prepare.size == 128  # the file's values win over the preset's
    assert cfg.compare.seeds == (0, 1) and "classic" in cfg.compare.augs and "diffboost+classic" in cfg.compare.augs
    f.write_text("seg:\n  epochz: 3\n")
    with pytest.raises(ValueError, match="run.yaml.*epochz"):
        load_run_config(f)
    f.write_text("segmentation:\n  epochs: 3\n")
    with pytest.raises(ValueError, match="unknown section 'segmentation'"):
        load_run_config(f)


def test_config_prints_every_section_a_verb_reads(tmp_path, monkeypatch):
    from diffboost.cli import app
    from diffboost.config import PrepareConfig, load_section
    from diffboost.diffusion.models import ModelConfig
    from diffboost.diffusion.train import TrainConfig
    from diffboost.generation.pix2pix import Pix2PixConfig
    from diffboost.generation.generate import GenerateConfig
    from diffboost.segmentation import SegConfig

    r = CliRunner().invoke(app, ["config", "--preset", "cpu"])
    assert r.exit_code == 0, r.output
    f = tmp_path / "all.yaml"
    f.write_text(r.output)
    cfg = preset("cpu")
    # the section each verb's --config reads: prepare; pretrain/finetune; generate; train-seg/compare; pix2pix train
    verbs = {"prepare": PrepareConfig, "model": ModelConfig, "train": TrainConfig, "generate": GenerateConfig,
             "seg": SegConfig, "pix2pix": Pix2PixConfig}
    assert set(verbs) <= set(yaml.safe_load(r.output))
    for section, cls in verbs.items():
        assert load_section(f, section, cls) == getattr(cfg, section), section
    assert load_run_config(f, "demo") == cfg  # and `run --config` takes the same file
    # `pix2pix train --config` really reads its section
    import diffboost.generation.pix2pix as p2p

    data = yaml.safe_load(r.output)
    data["pix2pix"].update(steps=7, l1_weight=50.0)
    f.write_text(yaml.safe_dump(data))
    seen = []
    monkeypatch.setattr(p2p, "train_pix2pix", lambda ps, fold, out, c, progress=True: seen.append(c) or out)
    monkeypatch.setattr("diffboost.data.store.PreparedSet.__init__", lambda self, root: None)
    r = CliRunner().invoke(app, ["pix2pix", "train", str(tmp_path), "--config", str(f), "-q"])
    assert r.exit_code == 0, r.output
    assert (seen[0].steps, seen[0].l1_weight) == (7, 50.0)


def test_a_strategy_run_cannot_make_is_refused_when_the_config_loads(phantom_root, tmp_path):
    from diffboost.cli import app

    f = tmp_path / "p2p.yaml"
    f.write_text("compare:\n  augs: [none, diffboost, pix2pix+mirror]\n")
    with pytest.raises(ValueError, match=r"p2p.yaml: compare.augs: 'pix2pix\+mirror' needs pix2pix synthetic sets, "
                                         r"which `diffboost run` does not make"):
        load_run_config(f)
    with pytest.raises(ValueError, match="compare.augs: 'pix2pix'"):
        _cfg(compare={"augs": ["none", "pix2pix"]})
    r = CliRunner().invoke(app, ["run", "--data", str(phantom_root), "--out", str(tmp_path / "r"), "--config", str(f)])
    assert r.exit_code == 2 and "diffboost pix2pix generate" in r.output
    assert not (tmp_path / "r").exists()  # refused before anything ran


def test_sd15_gets_its_own_learning_rate_unless_one_is_set(tmp_path, monkeypatch):
    import diffboost.run as run_module
    from diffboost.cli import app
    from diffboost.diffusion.train import TrainConfig

    assert TrainConfig().lr_for("small") == 3e-4 and TrainConfig().lr_for("sd15") == 1e-5
    assert TrainConfig(learning_rate=2e-5).lr_for("sd15") == 2e-5
    assert TrainConfig(learning_rate="1e-5").learning_rate == 1e-5  # YAML reads 1e-5 as text
    with pytest.raises(ValueError, match="learning_rate must be positive"):
        TrainConfig(learning_rate=0)
    sd = tmp_path / "sd15"
    (sd / "unet").mkdir(parents=True)
    (sd / "model_index.json").write_text("{}")
    seen = []
    monkeypatch.setattr(run_module, "run", lambda data, out, cfg, progress=True, **k: seen.append(cfg) or out / "report.html")
    for extra, lr in (([], 1e-5), (["--config", str(tmp_path / "lr.yaml")], 2e-5)):
        (tmp_path / "lr.yaml").write_text("train:\n  learning_rate: 2.0e-5\n")
        r = CliRunner().invoke(app, ["run", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--preset", "gpu",
                                     "--pretrained", str(sd), *extra])
        assert r.exit_code == 0, r.output
        cfg = seen[-1]
        assert cfg.model.kind == "sd15" and cfg.train.lr_for(cfg.model.kind) == lr


def test_runs_killed_in_fine_tuning_and_in_generation_finish_equal_to_an_uninterrupted_one(
        phantom_root, tmp_path, monkeypatch):
    import numpy as np
    from safetensors.torch import load_file

    import diffboost.diffusion.train as dtrain
    from diffboost.diffusion.pipeline import DiffBoostPipeline

    cfg = _cfg(generate={"batch_size": 2}, compare={"augs": ["none", "diffboost"], "folds": [0]})
    run(phantom_root, tmp_path / "a", cfg, progress=False)
    b = tmp_path / "b"
    real_save = dtrain._save_checkpoint

    def stop_after_first_checkpoint(acc, out, step, limit, *token):
        real_save(acc, out, step, limit, *token)
        raise KeyboardInterrupt

    monkeypatch.setattr(dtrain, "_save_checkpoint", stop_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run(phantom_root, b, cfg, progress=False)
    monkeypatch.undo()
    assert (b / "models" / "fold0" / "checkpoints").exists() and not (b / "models" / "fold0" / "model").exists()
    real_call, batches = DiffBoostPipeline.__call__, []

    def stop_in_second_batch(self, *a, **k):
        if "control_scale" in k:  # generation (not the training's validation grid)
            batches.append(1)
            if len(batches) == 2:
                raise KeyboardInterrupt
        return real_call(self, *a, **k)

    monkeypatch.setattr(DiffBoostPipeline, "__call__", stop_in_second_batch)
    with pytest.raises(KeyboardInterrupt):
        run(phantom_root, b, cfg, progress=False)
    monkeypatch.undo()
    assert (b / "synthetic" / "fold0" / ".work").exists() and not (b / "synthetic" / "fold0" / "images.npy").exists()
    run(phantom_root, b, cfg, progress=False)
    a = tmp_path / "a"
    wa = load_file(str(a / "models/fold0/model/unet/diffusion_pytorch_model.safetensors"))
    wb = load_file(str(b / "models/fold0/model/unet/diffusion_pytorch_model.safetensors"))
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)
    assert np.array_equal(np.load(a / "synthetic/fold0/images.npy"), np.load(b / "synthetic/fold0/images.npy"))
    for s in ("none", "diffboost"):
        assert (a / f"seg/{s}/seed0/fold0/metrics.csv").read_text() == (b / f"seg/{s}/seed0/fold0/metrics.csv").read_text()


def test_ablation_sweeps_reuse_variants_and_reach_the_report(first_run, phantom_root):
    from diffboost.ablate import ablate, parse_sweep
    from diffboost.report import write_report

    out, _ = first_run
    assert parse_sweep("alpha=0,0.5") == ("alpha", [0.0, 0.5])
    with pytest.raises(ValueError, match="NAME=V1"):
        parse_sweep("beta=1")
    with pytest.raises(ValueError, match="NAME=V1"):  # a typo in a run config fails before any training
        _cfg(ablate={"sweeps": ["alhpa=0,1"]})
    # sweeps in the run config run after the comparison (as `make demo` does); the run is otherwise unchanged
    run(phantom_root, out, _cfg(generate={"n": 2}, ablate={"sweeps": ["alpha=0,0.6"]}), progress=False, redo=["seg"])
    res = json.loads((out / "ablations" / "alpha.json").read_text())
    assert set(res["dice"]["diffboost"]) == {"0.0", "0.6"} and res["baseline"] is not None
    # alpha = 0.6 is the comparison's own setting: its runs are reused, not trained again
    assert not (out / "ablations" / "alpha" / "0.6").exists() and (out / "ablations" / "alpha" / "0.0").exists()
    assert res["dice"]["diffboost"]["0.6"]["per_run"] == [
        json.loads((out / "seg" / "diffboost" / "seed0" / f"fold{k}" / "summary.json").read_text())["metrics"]["dice"]["mean"]
        for k in (0, 1)]
    # each value's gain is paired over the same runs
    def dice(s, k):
        return json.loads((out / "seg" / s / "seed0" / f"fold{k}" / "summary.json").read_text())["metrics"]["dice"]["mean"]

    assert res["gain"]["0.6"]["over the run's setting"] is None  # the run's own setting: its own runs
    assert res["gain"]["0.0"]["over the run's setting"]["mean"] == pytest.approx(
        np.mean([res["dice"]["diffboost"]["0.0"]["per_run"][k] - dice("diffboost", k) for k in (0, 1)]))
    assert res["gain"]["0.0"]["over none"]["mean"] == pytest.approx(
        np.mean([res["dice"]["diffboost"]["0.0"]["per_run"][k] - dice("none", k) for k in (0, 1)]))
    # the sweep chooses by validation Dice (each run's best_val_dice), never by the test Dice beside it
    def val(v, k):
        folder = out / ("seg" if v == "0.6" else "ablations/alpha/0.0") / "diffboost" / "seed0" / f"fold{k}"
        return json.loads((folder / "summary.json").read_text())["best_val_dice"]

    assert res["val_dice"]["diffboost"] == pytest.approx({v: np.mean([val(v, k) for k in (0, 1)]) for v in ("0.0", "0.6")})
    assert res["chosen"] == max(("0.0", "0.6"), key=lambda v: res["val_dice"]["diffboost"][v])
    # another strategy with variants: diffboost+mirror is measured against mirror, in a file of its own
    with pytest.raises(ValueError, match="no variants to mix"):
        ablate(out, "alpha", [0.0], progress=False, strategy="mirror")
    with pytest.raises(ValueError, match="varies the diffusion generator"):
        ablate(out, "strength", [0.5], progress=False, strategy="mix-classic")
    res_m = ablate(out, "alpha", [0.0], progress=False, strategy="diffboost+mirror")
    assert res_m["reference"] == "mirror" and res_m["baseline"] == pytest.approx(np.mean([dice("mirror", k) for k in (0, 1)]))
    assert res_m["gain"]["0.0"]["over the run's setting"] is None  # the comparison has no diffboost+mirror
    assert json.loads((out / "ablations" / "alpha_diffboost-mirror.json").read_text())["strategy"] == "diffboost+mirror"
    assert (out / "ablations" / "alpha" / "0.0" / "diffboost+mirror" / "seed0" / "fold1" / "summary.json").exists()
    comparison_set = (out / "synthetic" / "fold0" / "images.npy").read_bytes()
    before = json.loads((out / "synthetic" / "fold0" / "generation.json").read_text())["num_variants"]
    res_n = ablate(out, "n", [1, 3], progress=False)
    grown = out / "ablations" / "n" / "synthetic" / "fold0"
    after = json.loads((grown / "generation.json").read_text())["num_variants"]
    assert after == before // 2 * 3  # n = 3 added the third variant of each image, in the ablation's own set
    assert set(res_n["dice"]["diffboost"]) == {"1", "3"}
    # the comparison is untouched: its set as it was, and its diffboost runs still current (reused, not retrained)
    assert (out / "synthetic" / "fold0" / "images.npy").read_bytes() == comparison_set
    from diffboost.data.store import PreparedSet
    from diffboost.segmentation.trainer import train_seg

    seg = dataclasses.replace(load_run_config(out / "run.yaml").seg, aug="diffboost")
    folder = out / "seg" / "diffboost" / "seed0" / "fold0"
    done = (folder / "summary.json").read_text()
    train_seg(PreparedSet(out / "prepared"), 0, seg, folder, progress=False)
    assert (folder / "summary.json").read_text() == done
    write_report(out)
    md = (out / "report.md").read_text()
    assert "## Ablation: alpha" in md and "## Ablation: n" in md and (out / "figures" / "ablation_n.png").exists()
    assert "## Ablation: alpha (diffboost+mirror)" in md and "ΔDice over mirror" in md
    assert f"{res['chosen']} (chosen)" in md and "validation Dice" in md
    # the report is titled after its data set, whatever the ablations are called
    name = Path(json.loads((out / "prepared" / "dataset.json").read_text())["source"]).name
    page = (out / "report.html").read_text()
    assert md.startswith(f"# DiffBoost report: {name}\n")
    assert f"<title>DiffBoost report: {name}</title>" in page and f"<h1>DiffBoost report: {name}</h1>" in page
    # ablations made from other settings than the run has now are not shown; a cosmetic change hides nothing
    kept = (out / "run.yaml").read_text()
    try:
        changed = yaml.safe_load(kept)
        changed["train"]["log_every"] = changed["train"]["log_every"] + 1
        (out / "run.yaml").write_text(yaml.safe_dump(changed))
        write_report(out)
        assert "## Ablation: alpha" in (out / "report.md").read_text()
        changed["seg"]["epochs"] += 1
        (out / "run.yaml").write_text(yaml.safe_dump(changed))
        write_report(out)
        md = (out / "report.md").read_text()
        assert "## Ablations not shown" in md and "alpha.json" in md and "## Ablation: alpha" not in md
    finally:
        (out / "run.yaml").write_text(kept)


def test_generator_sweeps_make_their_own_variants(first_run):
    """strength: new variants from the run's own models; condition: new models per fold, then variants;
    the run's own value reuses the comparison's runs; impossible values are refused before training."""
    from diffboost.ablate import ablate
    from diffboost.generation import SyntheticSet

    out, _ = first_run
    res = ablate(out, "strength", [0.5, 1.0], progress=False)
    assert set(res["dice"]["diffboost"]) == {"0.5", "1.0"}
    syn = SyntheticSet(out / "ablations" / "strength" / "0.5" / "synthetic" / "fold0")
    assert syn.meta["identity"]["strength"] == 0.5 and not (out / "ablations" / "strength" / "1.0").exists()
    own = SyntheticSet(out / "synthetic" / "fold0")
    same = [r for r in syn.manifest if r["variant"] == 0][:2]
    assert all(not np.array_equal(syn.images[r["index"]], own.images[own.by_real[r["real_index"]][0]]) for r in same)
    run_json = json.loads((out / "ablations" / "strength" / "0.5" / "diffboost" / "seed0" / "fold1" / "run.json").read_text())
    assert run_json["synthetic"].endswith("strength/0.5/synthetic/fold1")  # trained on this value's variants
    res = ablate(out, "condition", ["edges+mask"], progress=False)
    model = out / "ablations" / "condition" / "edges+mask" / "models" / "fold1" / "model"
    assert json.loads((model / "diffboost_model.json").read_text())["model"]["condition"] == "edges+mask"
    assert res["dice"]["diffboost"]["edges+mask"]["per_run"]
    with pytest.raises(ValueError, match=r"^ablate.sweeps: strength=0.8: strength must be in \(0, 0.6\]"):
        _cfg(train={"max_timestep_fraction": 0.6}, generate={"strength": 0.5}, ablate={"sweeps": ["strength=0.5,0.8"]})
    # the run's own strength too, when the config loads rather than after fine-tuning
    with pytest.raises(ValueError, match=r"^generate.strength=0.8: strength must be in \(0, 0.6\]"):
        _cfg(train={"max_timestep_fraction": 0.6}, generate={"strength": 0.8})
    assert _cfg(train={"max_timestep_fraction": 0.6}, generate={"strength": 0.8},  # nothing generates
                compare={"augs": ["none", "mirror"]}).generate.strength == 0.8
    with pytest.raises(ValueError, match="condition must be one of"):
        _cfg(ablate={"sweeps": ["condition=mask"]})
    with pytest.raises(ValueError, match="mask_strength must be in"):  # the run generates from noise
        _cfg(ablate={"sweeps": ["mask_strength=0.2"]})
    with pytest.raises(ValueError, match="at least generate.mask_strength"):
        _cfg(generate={"strength": 0.5, "mask_strength": 0.3}, ablate={"sweeps": ["strength=0.2,0.5"]})
    with pytest.raises(ValueError, match="varies the diffusion generator"):  # refused when the config loads
        _cfg(ablate={"sweeps": ["strength=0.5"], "strategy": "mix-classic"})


def test_run_command_with_a_config_file(phantom_root, tmp_path):
    from diffboost.cli import app

    cfg = json.loads(json.dumps(TINY))
    cfg["compare"] = {"augs": ["none", "gamma"], "folds": [2]}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(app, ["run", "--data", str(phantom_root), "--out", str(tmp_path / "r"), "--preset", "demo",
                                 "--config", str(tmp_path / "tiny.yaml"), "-q"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "r" / "report.html").exists() and not (tmp_path / "r" / "models").exists()  # no diffboost asked
    assert yaml.safe_load((tmp_path / "r" / "run.yaml").read_text())["compare"]["augs"] == ["none", "gamma"]
    r = CliRunner().invoke(app, ["run", "--data", str(phantom_root), "--out", str(tmp_path / "r"), "--preset", "fast"])
    assert r.exit_code == 2 and "unknown preset 'fast'" in r.output


def test_run_under_accelerate_launch_shares_the_work_and_a_serial_rerun_accepts_it(phantom_root, tmp_path, monkeypatch):
    """Two processes of `accelerate launch ... run`: one prepared set, one model and one synthetic set per
    fold (trained and generated together), the segmentation runs shared; a serial rerun of the
    segmentation on the same folder reuses the diffusion stages and gives the same Table II."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None:
        pytest.skip("accelerate's launcher is not installed beside this Python")
    cfg = json.loads(json.dumps(TINY))
    cfg["compare"] = {"augs": ["none", "diffboost"], "folds": [0], "seeds": [0, 1]}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "launched"
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "diffboost.cli", "run", "--data", str(phantom_root), "--out", str(out),
           "--preset", "demo", "--config", str(tmp_path / "tiny.yaml"), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0, said[-4000:]
    assert "process 1/2 trains 2 of 4 runs" in said and "process 2/2 trains 2 of 4 runs" in said, said[-2000:]
    assert (out / "report.html").exists() and (out / "models" / "fold0" / "model").exists()
    ps = PreparedSet(out / "prepared")
    n_train = len(ps.indices(ps.fold(0).train, training=True))
    assert np.load(out / "synthetic" / "fold0" / "images.npy", mmap_mode="r").shape[0] == n_train  # n = 1, all made
    launched = json.loads((out / "compare" / "table.json").read_text())["table"]

    shutil.rmtree(out / "seg")
    shutil.rmtree(out / "compare")
    import diffboost.diffusion.train as dtrain

    monkeypatch.setattr(dtrain, "train_diffusion", lambda *a, **k: pytest.fail("the diffusion model was not reused"))
    run(phantom_root, out, load_run_config(tmp_path / "tiny.yaml", "demo"), progress=False)
    serial = json.loads((out / "compare" / "table.json").read_text())["table"]
    for strategy in ("none", "diffboost"):
        assert serial[strategy]["dice_runs"] == launched[strategy]["dice_runs"], strategy
