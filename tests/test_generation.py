"""Generation of synthetic variants: seeds, manifest, resume, sharding across processes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from diffboost.diffusion.models import ModelConfig
from diffboost.diffusion.train import new_pipeline
from diffboost.generation import GenerateConfig, SyntheticSet, generate, variant_seed

TINY = dict(image_size=32, channels=(8, 16, 32), attention=(False, True, True))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from diffboost.config import PrepareConfig
    from diffboost.data.phantoms import generate_phantoms
    from diffboost.data.preparation import prepare

    root = tmp_path_factory.mktemp("gen")
    ps = prepare(generate_phantoms(root / "src", n=9, seed=2), root / "prepared",
                 PrepareConfig(size=32, folds=3), progress=False)
    torch.manual_seed(0)
    new_pipeline(ModelConfig(**TINY)).save_pretrained(root / "model")
    return root, ps


def test_variants_manifest_and_labels(setup, tmp_path):
    root, ps = setup
    cfg = GenerateConfig(n=3, steps=3, batch_size=4, texts=("", "enhanced contrast"))
    syn = generate(root / "model", ps, tmp_path / "syn", fold=1, cfg=cfg, progress=False)
    train = ps.indices(ps.fold(1).train, training=True)
    assert len(syn) == 3 * len(train) and syn.images.shape == (len(syn), 32, 32)
    assert set(syn.by_real) == set(train)  # training images only: never the fold's test or val part
    test_cases = set(ps.fold(1).test) | set(ps.fold(1).val)
    assert not {r["case_id"] for r in syn.manifest} & test_cases
    r = syn.manifest[4]
    real = ps.manifest[r["real_index"]]
    assert (r["case_id"], r["prompt"]) == (real["case_id"], real["prompt"])
    assert r["text"] == cfg.texts[r["variant"] % 2]
    assert r["seed"] == variant_seed(0, real["case_id"], real["slice_index"], r["variant"])
    assert (r["sampler"], r["steps"], r["guidance"]) == ("dpm++", 3, 3.0) and len(r["model_hash"]) == 16
    assert (syn.root / "preview.png").exists() and not (syn.root / ".work").exists()
    assert np.abs(np.asarray(syn.images, np.float32)).max() <= 1.0


def test_subsets_regenerate_identically_and_resume_adds_only_missing(setup, tmp_path, monkeypatch):
    root, ps = setup
    from diffboost.diffusion.pipeline import DiffBoostPipeline

    base = generate(root / "model", ps, tmp_path / "a", 0, GenerateConfig(n=2, steps=3, batch_size=5), progress=False)
    base_images, base_rows = np.array(base.images, np.float32), list(base.manifest)
    calls = []
    real_call = DiffBoostPipeline.__call__

    def counting(self, prompts, *a, **k):
        calls.append(len(prompts))
        return real_call(self, prompts, *a, **k)

    monkeypatch.setattr(DiffBoostPipeline, "__call__", counting)
    # asking for n=3 in the same folder computes only the batches that hold new variants
    more = generate(root / "model", ps, tmp_path / "a", 0, GenerateConfig(n=3, steps=3, batch_size=5), progress=False)
    n_train = len(ps.indices(ps.fold(0).train, training=True))
    assert len(more) == 3 * n_train and sum(calls) < 3 * n_train
    a = {(r["real_index"], r["variant"]): base_images[r["index"]] for r in base_rows}
    for r in more.manifest:
        if (r["real_index"], r["variant"]) in a:
            np.testing.assert_allclose(more.images[r["index"]], a[(r["real_index"], r["variant"])], atol=1e-3)
    # a different batch size regenerates the same images (seed per image and variant)
    other = generate(root / "model", ps, tmp_path / "b", 0, GenerateConfig(n=2, steps=3, batch_size=3), progress=False)
    # (batched convolutions may differ in the last bits with the batch size; an untrained model
    # can amplify that over the sampling steps, so compare on average and loosely at worst)
    diff = np.abs(np.asarray(other.images, np.float32) - base_images)
    assert diff.mean() < 1e-3 and diff.max() < 0.05
    with pytest.raises(ValueError, match="other settings"):
        generate(root / "model", ps, tmp_path / "a", 0, GenerateConfig(n=2, steps=4), progress=False)


@pytest.mark.slow
def test_two_processes_give_the_same_images(setup, tmp_path):
    root, ps = setup
    args = [str(root / "model"), str(ps.root), "--fold", "0", "-n", "2", "--steps", "2", "--batch-size", "3", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "diffboost.cli", "generate", *args, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu",
                          "-m", "diffboost.cli", "generate", *args, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = SyntheticSet(tmp_path / "one"), SyntheticSet(tmp_path / "two")
    assert [r["seed"] for r in a.manifest] == [r["seed"] for r in b.manifest]
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))


def test_a_complete_set_is_left_as_it_is(setup, tmp_path, monkeypatch):
    root, ps = setup
    cfg = GenerateConfig(n=1, steps=2, batch_size=8)
    generate(root / "model", ps, tmp_path / "s", 2, cfg, progress=False)
    meta = (tmp_path / "s" / "generation.json").read_bytes()
    from diffboost.diffusion.pipeline import DiffBoostPipeline

    monkeypatch.setattr(DiffBoostPipeline, "from_pretrained", lambda *a, **k: pytest.fail("loaded the model again"))
    generate(root / "model", ps, tmp_path / "s", 2, cfg, progress=False)
    assert (tmp_path / "s" / "generation.json").read_bytes() == meta  # its timing is not overwritten


def test_img2img_variants_strength_in_identity_and_older_sets(setup, tmp_path):
    import json

    from diffboost.diffusion.pipeline import DiffBoostPipeline

    root, ps = setup
    cfg = GenerateConfig(n=1, steps=4, batch_size=8, strength=0.5)
    syn = generate(root / "model", ps, tmp_path / "i2i", 0, cfg, progress=False)
    assert json.loads((syn.root / "generation.json").read_text())["identity"]["strength"] == 0.5
    r = syn.manifest[1]
    # variant i: the real image noised with the noise of its variant seed, its own prompt and condition
    pipe = DiffBoostPipeline.from_pretrained(root / "model")
    ri = r["real_index"]
    ref = pipe([r["prompt"]], np.asarray(ps.conditions[ri : ri + 1], np.float32) / 255.0, [r["seed"]],
               augment=[r["text"]], steps=4, images=np.asarray(ps.images[ri : ri + 1], np.float32), strength=0.5)
    np.testing.assert_allclose(np.asarray(syn.images[1], np.float32), ref[0], atol=2e-3)
    with pytest.raises(ValueError, match="strength"):
        generate(root / "model", ps, tmp_path / "i2i", 0, GenerateConfig(n=1, steps=4, batch_size=8), progress=False)
    # a set written before strength existed counts as strength 1
    old = generate(root / "model", ps, tmp_path / "old", 0, GenerateConfig(n=1, steps=2, batch_size=8), progress=False)
    meta = json.loads((old.root / "generation.json").read_text())
    del meta["identity"]["strength"]
    (old.root / "generation.json").write_text(json.dumps(meta))
    generate(root / "model", ps, tmp_path / "old", 0, GenerateConfig(n=1, steps=2, batch_size=8), progress=False)
    with pytest.raises(ValueError, match="strength"):
        generate(root / "model", ps, tmp_path / "old", 0, GenerateConfig(n=1, steps=2, batch_size=8, strength=0.5),
                 progress=False)
    with pytest.raises(ValueError, match="runs no denoising step"):
        GenerateConfig(steps=4, strength=0.2)


def test_mask_strength_holds_the_labelled_region(setup, tmp_path):
    import json

    from diffboost.generation.generate import keep_region

    root, ps = setup
    m = np.zeros((2, 64, 64), np.uint8)
    m[0, 20:30, 20:30] = 1
    region = keep_region(m)
    assert (region[0][m[0] > 0] == 1).all() and region[0, 19, 25] > 0.5 and region[0, 5, 5] == 0
    assert not region[1].any()  # an empty mask holds nothing
    cfg = GenerateConfig(n=1, steps=4, batch_size=8, strength=0.5)
    plain = generate(root / "model", ps, tmp_path / "plain", 0, cfg, progress=False)
    held = generate(root / "model", ps, tmp_path / "held", 0, GenerateConfig(**{**cfg.__dict__, "mask_strength": 0.0}),
                    progress=False)
    assert json.loads((held.root / "generation.json").read_text())["identity"]["mask_strength"] == 0.0
    real = np.asarray(ps.images[[r["real_index"] for r in held.manifest]], np.float32)
    fg = np.asarray(ps.masks[[r["real_index"] for r in held.manifest]]) > 0
    assert fg.any()
    err = lambda s: np.abs(np.asarray(s.images, np.float32) - real)[fg].mean()
    assert err(held) < 0.01 < err(plain)  # the lesion is the real one (float16 storage)
    with pytest.raises(ValueError, match="mask_strength must be in"):
        GenerateConfig(steps=4, strength=0.5, mask_strength=0.8)


def test_a_capped_model_refuses_a_higher_strength(setup, tmp_path):
    import json
    import shutil

    root, ps = setup
    shutil.copytree(root / "model", tmp_path / "m")
    (tmp_path / "m" / "training.json").write_text(json.dumps({"max_timestep_fraction": 0.6}))
    with pytest.raises(ValueError, match="up to 0.6"):
        generate(tmp_path / "m", ps, tmp_path / "s", 0, GenerateConfig(n=1, steps=4), progress=False)
    syn = generate(tmp_path / "m", ps, tmp_path / "s", 0, GenerateConfig(n=1, steps=4, strength=0.5), progress=False)
    assert len(syn) > 0


def test_an_edges_plus_mask_model_gets_the_real_mask(setup, tmp_path, monkeypatch):
    from diffboost.diffusion.pipeline import DiffBoostPipeline

    root, ps = setup
    torch.manual_seed(0)
    new_pipeline(ModelConfig(condition="edges+mask", mask_channels=1, **TINY)).save_pretrained(tmp_path / "m")
    seen = []
    real_call = DiffBoostPipeline.__call__

    def recording(self, prompts, conditions, seeds, **k):
        seen.append((np.asarray(conditions).copy(), k["masks"]))
        return real_call(self, prompts, conditions, seeds, **k)

    monkeypatch.setattr(DiffBoostPipeline, "__call__", recording)
    syn = generate(tmp_path / "m", ps, tmp_path / "s", 0, GenerateConfig(n=1, steps=2, batch_size=64), progress=False)
    (cond, masks), = seen
    real = [r["real_index"] for r in syn.manifest]
    np.testing.assert_array_equal(masks[:, 0], np.asarray(ps.masks[real]) == 1)
    assert masks.shape == (len(real), 1, 32, 32) and masks.sum() > 0
