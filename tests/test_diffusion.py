"""The diffusion model: save/load, ControlNet start, samplers, training that resumes exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffboost.diffusion.models import ModelConfig
from diffboost.diffusion.pipeline import DiffBoostPipeline, model_hash
from diffboost.diffusion.train import TrainConfig, new_pipeline, train_diffusion

TINY = dict(image_size=32, channels=(8, 16, 32), attention=(False, True, True))


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    from diffboost.config import PrepareConfig
    from diffboost.data.phantoms import generate_phantoms
    from diffboost.data.preparation import prepare

    root = tmp_path_factory.mktemp("diff")
    src = generate_phantoms(root / "src", n=9, seed=5)
    return prepare(src, root / "prepared", PrepareConfig(size=32, folds=3), progress=False)


def _inputs(ps, k=3):
    cond = np.asarray(ps.conditions[:k], np.float32) / 255.0
    return [ps.manifest[i]["prompt"] for i in range(k)], cond


@pytest.mark.parametrize("control", ["concat", "controlnet"])
def test_save_load_sample_round_trip(tmp_path, tiny_set, control):
    torch.manual_seed(0)
    pipe = new_pipeline(ModelConfig(control=control, **TINY))
    prompts, cond = _inputs(tiny_set)
    a = pipe(prompts, cond, seeds=[1, 2, 3], steps=4)
    pipe.save_pretrained(tmp_path / "m")
    for part in ["unet"] + (["controlnet"] if control == "controlnet" else []):
        assert (tmp_path / "m" / part / "diffusion_pytorch_model.safetensors").exists()
        assert (tmp_path / "m" / part / "config.json").exists()
    b = DiffBoostPipeline.from_pretrained(tmp_path / "m")(prompts, cond, seeds=[1, 2, 3], steps=4)
    assert a.shape == (3, 32, 32) and a.min() >= -1 and a.max() <= 1
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert len(model_hash(tmp_path / "m")) == 16


def test_controlnet_starts_as_a_no_op(tiny_set):
    pipe = new_pipeline(ModelConfig(control="controlnet", **TINY))
    d = pipe.denoiser.eval()
    x = torch.randn(2, 4, 16, 16)
    t = torch.tensor([10, 500])
    states, mask = pipe.text_encoder(["US, Breast, benign", ""])
    cond = torch.rand(2, 4, 16, 16)
    with torch.no_grad():
        with_cn = d(x, t, states, mask, cond)
        plain = d.unet(x, t, encoder_hidden_states=states, encoder_attention_mask=mask.float()).sample
    torch.testing.assert_close(with_cn, plain)


@pytest.mark.parametrize("sampler", ["ddim", "dpm++", "unipc", "euler"])
def test_samplers_and_batch_independence(tiny_set, sampler):
    torch.manual_seed(0)
    pipe = new_pipeline(ModelConfig(**TINY))
    prompts, cond = _inputs(tiny_set)
    both = pipe(prompts, cond, seeds=[7, 8, 9], sampler=sampler, steps=4, guidance=2.0)
    one = pipe(prompts[1:2], cond[1:2], seeds=[8], sampler=sampler, steps=4, guidance=2.0)
    np.testing.assert_allclose(both[1], one[0], atol=1e-4)  # a sample does not depend on its batch
    assert not np.allclose(both[0], both[2])


def test_text_blend_option(tiny_set):
    from diffboost.diffusion.pipeline import PUBLIC_BLEND

    pipe = new_pipeline(ModelConfig(**TINY))
    s, m = pipe.text_states(["US, Breast, benign"], ["enhanced contrast"], blend=PUBLIC_BLEND)
    sp, _ = pipe.text_encoder(["US, Breast, benign" + PUBLIC_BLEND["prompt_suffix"]])
    sa, _ = pipe.text_encoder(["enhanced contrast"])
    sb, _ = pipe.text_encoder([PUBLIC_BLEND["base_text"]])
    torch.testing.assert_close(s, 0.045 * sp + 0.005 * sa + 0.95 * sb)


def _params(model_dir):
    from safetensors.torch import load_file

    return load_file(str(model_dir / "unet" / "diffusion_pytorch_model.safetensors"))


def test_training_resumes_exactly(tmp_path, tiny_set, monkeypatch):
    import diffboost.diffusion.train as T

    f = tiny_set.fold(0)
    idx = tiny_set.indices(f.train, training=True)
    tcfg = TrainConfig(steps=6, batch_size=4, checkpoint_every=3, validate_every=3, log_every=1, warmup_steps=2)
    mcfg = ModelConfig(**TINY)
    full = train_diffusion(tiny_set, tmp_path / "full", idx, mcfg, tcfg, progress=False,
                           val_indices=tiny_set.indices(f.val, training=True))
    assert (tmp_path / "full" / "samples" / "step_0000006.png").exists()
    real_save = T._save_checkpoint

    def interrupt_after_first(acc, out, step, limit):
        real_save(acc, out, step, limit)
        if step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(T, "_save_checkpoint", interrupt_after_first)
    with pytest.raises(KeyboardInterrupt):
        train_diffusion(tiny_set, tmp_path / "cut", idx, mcfg, tcfg, progress=False)
    monkeypatch.setattr(T, "_save_checkpoint", real_save)
    assert not (tmp_path / "cut" / "model").exists()
    resumed = train_diffusion(tiny_set, tmp_path / "cut", idx, mcfg, tcfg, resume="latest", progress=False)
    a, b = _params(full), _params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit-for-bit
    log = (tmp_path / "cut" / "loss.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in log[1:]] == ["1", "2", "3", "4", "5", "6"]
    assert (tmp_path / "full" / "loss.csv").read_text() .splitlines()[1:][-1].split(",")[1] == log[-1].split(",")[1]
    ckpts = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert ckpts == ["step_0000003", "step_0000006"]


def test_checkpoint_limit_and_fine_tune_from_init(tmp_path, tiny_set):
    idx = list(range(len(tiny_set)))
    tcfg = TrainConfig(steps=4, batch_size=2, checkpoint_every=1, checkpoints_limit=2, log_every=2)
    m1 = train_diffusion(tiny_set, tmp_path / "pre", idx, ModelConfig(**TINY), tcfg, progress=False)
    assert sorted(p.name for p in (tmp_path / "pre" / "checkpoints").iterdir()) == ["step_0000003", "step_0000004"]
    m2 = train_diffusion(tiny_set, tmp_path / "ft", idx[:3], train_cfg=TrainConfig(steps=2, batch_size=2, warmup_steps=0),
                         init=m1, progress=False)
    before, after = _params(m1), _params(m2)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained, starting from m1
    assert DiffBoostPipeline.from_pretrained(m2).config.channels == TINY["channels"]


@pytest.mark.slow
def test_augmentation_phrases_move_images_the_way_they_say(tmp_path):
    """A from-scratch model learns what "enhanced contrast" and "low contrast" mean (about 1 min)."""
    from diffboost.config import PrepareConfig
    from diffboost.data.phantoms import generate_phantoms
    from diffboost.data.preparation import prepare

    ps = prepare(generate_phantoms(tmp_path / "src", n=24, seed=11), tmp_path / "p",
                 PrepareConfig(size=32, folds=2), progress=False)
    tcfg = TrainConfig(steps=400, batch_size=16, learning_rate=1e-3, warmup_steps=20, ema_decay=0.99,
                       phrases=("enhanced contrast", "low contrast"), phrase_prob=0.6, checkpoint_every=10_000)
    model = train_diffusion(ps, tmp_path / "run", list(range(len(ps))), ModelConfig(image_size=32), tcfg,
                            progress=False)
    pipe = DiffBoostPipeline.from_pretrained(model)
    cond = np.asarray(ps.conditions[:8], np.float32) / 255.0
    prompts = [ps.manifest[i]["prompt"] for i in range(8)]
    std = {t: pipe(prompts, cond, seeds=list(range(8)), augment=[t] * 8, steps=20, guidance=2.0).std(axis=(1, 2))
           for t in ("", "enhanced contrast", "low contrast")}
    real_std = np.asarray(ps.images[:8], np.float32).std(axis=(1, 2)).mean()
    assert 0.5 * real_std < std[""].mean() < 1.5 * real_std  # plain samples look like the data, not noise
    assert (std["enhanced contrast"] > std[""]).mean() >= 7 / 8 and std["enhanced contrast"].mean() > 1.2 * std[""].mean()
    assert (std["low contrast"] < std[""]).mean() >= 7 / 8 and std["low contrast"].mean() < 0.85 * std[""].mean()


def test_time_budget_stops_and_saves(tmp_path, tiny_set):
    import json

    model = train_diffusion(tiny_set, tmp_path / "b", list(range(len(tiny_set))), ModelConfig(**TINY),
                            TrainConfig(steps=1000, batch_size=2, max_minutes=0.0), progress=False)
    info = json.loads((model / "training.json").read_text())
    assert info["steps_done"] < 1000 and (model / "unet" / "config.json").exists()
