"""The diffusion model: save/load, ControlNet start, samplers, training that resumes exactly,
image-to-image, the mask condition, Min-SNR weighting and the timestep cap."""

from __future__ import annotations

import dataclasses
import json

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

    def interrupt_after_first(acc, out, step, limit, *token):
        real_save(acc, out, step, limit, *token)
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
    """A from-scratch model learns what "enhanced contrast" and "low contrast" mean (about 40 s)."""
    from diffboost.config import PrepareConfig
    from diffboost.data.phantoms import generate_phantoms
    from diffboost.data.preparation import prepare

    ps = prepare(generate_phantoms(tmp_path / "src", n=24, seed=11), tmp_path / "p",
                 PrepareConfig(size=32, folds=2), progress=False)
    tcfg = TrainConfig(steps=400, batch_size=16, learning_rate=1e-3, warmup_steps=20, ema_decay=0.99,
                       phrases=("enhanced contrast", "low contrast"), phrase_prob=0.6, checkpoint_every=10_000)
    model = train_diffusion(ps, tmp_path / "run", list(range(len(ps))),  # three levels: a third of four's time
                            ModelConfig(image_size=32, channels=(16, 32, 64), attention=(False, True, True)), tcfg,
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
    model = train_diffusion(tiny_set, tmp_path / "b", list(range(len(tiny_set))), ModelConfig(**TINY),
                            TrainConfig(steps=1000, batch_size=2, max_minutes=0.0), progress=False)
    info = json.loads((model / "training.json").read_text())
    assert info["steps_done"] < 1000 and (model / "unet" / "config.json").exists()


# ---- image-to-image (SDEdit) ------------------------------------------------------------------

def _todays_sampling(pipe, prompts, cond, seeds, sampler, steps, guidance):
    """The from-noise sampling loop as it was before image-to-image existed, written out."""
    from diffboost.diffusion.pipeline import make_scheduler, noise_for_seeds

    sched = make_scheduler(sampler, pipe.scheduler.config)
    sched.set_timesteps(steps)
    x = noise_for_seeds(seeds, pipe.model_shape(cond.shape[-1])) * sched.init_noise_sigma
    c = pipe.encode_condition(torch.from_numpy(cond)[:, None])
    states, mask = pipe.text_states(prompts)
    ns, nm = pipe.text_encoder([""] * len(prompts))
    states, mask, c = torch.cat([ns, states]), torch.cat([nm, mask]), torch.cat([c, c])
    with torch.inference_mode():
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([x, x]), t)
            eu, ec = pipe.denoiser(inp, t.expand(inp.shape[0]), states, mask, c, 1.0).chunk(2)
            x = sched.step(eu + guidance * (ec - eu), t, x).prev_sample
    return pipe.decode(x).clamp(-1, 1)[:, 0].float().numpy()


@pytest.mark.parametrize("sampler", ["dpm++", "euler"])
def test_strength_one_is_todays_generation_bit_for_bit(tiny_set, sampler):
    torch.manual_seed(0)
    pipe = new_pipeline(ModelConfig(**TINY))
    prompts, cond = _inputs(tiny_set)
    real = np.asarray(tiny_set.images[:3], np.float32)
    ref = _todays_sampling(pipe, prompts, cond, [4, 5, 6], sampler, 4, 3.0)
    out = pipe(prompts, cond, seeds=[4, 5, 6], sampler=sampler, steps=4, guidance=3.0, images=real, strength=1.0)
    assert np.array_equal(out, ref)


class _Spy:
    """Records the denoiser's inputs (timestep, model input) around the real denoiser."""

    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, []

    def __call__(self, x, t, *a, **k):
        self.calls.append((t.clone(), x.clone()))
        return self.denoiser(x, t, *a, **k)


@pytest.mark.parametrize("sampler", ["ddim", "dpm++", "unipc", "euler"])
def test_img2img_noises_the_image_to_the_first_kept_timestep(tiny_set, sampler):
    """Like diffusers' img2img: int(strength x steps) steps run, starting from the real image noised to
    the first of the last timesteps: sqrt(abar_t) x0 + sqrt(1 - abar_t) noise(seed), whatever the sampler."""
    from diffboost.diffusion.models import to_model_space
    from diffboost.diffusion.pipeline import make_scheduler, noise_for_seeds

    torch.manual_seed(0)
    pipe = new_pipeline(ModelConfig(**TINY))
    prompts, cond = _inputs(tiny_set)
    real = np.asarray(tiny_set.images[:3], np.float32)
    spy = _Spy(pipe.denoiser)
    pipe.denoiser = spy
    steps, strength = 10, 0.45
    out = pipe(prompts, cond, seeds=[7, 8, 9], sampler=sampler, steps=steps, guidance=1.0, images=real,
               strength=strength)
    sched = make_scheduler(sampler, pipe.scheduler.config)
    sched.set_timesteps(steps)
    kept = sched.timesteps[steps - 4:]  # int(0.45 x 10) = 4 steps
    assert len(spy.calls) == 4
    assert [float(t[0]) for t, _ in spy.calls] == [float(t) for t in kept]
    abar = pipe.scheduler.alphas_cumprod[int(kept[0])]
    z0 = to_model_space(torch.from_numpy(real)[:, None], pipe.config.pixel_shuffle)
    start = abar.sqrt() * z0 + (1 - abar).sqrt() * noise_for_seeds([7, 8, 9], pipe.model_shape(32))
    torch.testing.assert_close(spy.calls[0][1], start, atol=1e-5, rtol=1e-4)
    # a variant depends on its own seed only, not on its batch
    pipe.denoiser = spy.denoiser
    one = pipe(prompts[1:2], cond[1:2], seeds=[8], sampler=sampler, steps=steps, guidance=1.0, images=real[1:2],
               strength=strength)
    np.testing.assert_allclose(out[1], one[0], atol=1e-4)


def test_img2img_keeps_more_of_the_image_at_lower_strength(tiny_set):
    torch.manual_seed(0)
    pipe = new_pipeline(ModelConfig(**TINY))
    prompts, cond = _inputs(tiny_set)
    real = np.asarray(tiny_set.images[:3], np.float32)
    err = [np.abs(pipe(prompts, cond, seeds=[1, 2, 3], steps=10, images=real, strength=s) - real).mean()
           for s in (0.2, 0.5, 1.0)]
    assert err[0] < err[1] < err[2]


@pytest.mark.parametrize("sampler", ["dpm++", "ddim"])
def test_a_held_region_changes_less_and_nothing_else_moves(tiny_set, sampler):
    """keep_strength < strength holds the region to the real image's noising path: at 0 it ends as the
    real pixels; at strength it is plain image-to-image, bit for bit; in between it changes less."""
    torch.manual_seed(0)
    pipe = new_pipeline(ModelConfig(**TINY))
    prompts, cond = _inputs(tiny_set)
    real = np.asarray(tiny_set.images[:3], np.float32)
    keep = np.zeros((3, 32, 32), np.float32)
    keep[:, 8:20, 10:24] = 1
    run = dict(seeds=[1, 2, 3], sampler=sampler, steps=10, images=real, strength=0.6)
    plain = pipe(prompts, cond, **run)
    assert np.array_equal(pipe(prompts, cond, keep=keep, keep_strength=0.6, **run), plain)
    held = {ks: pipe(prompts, cond, keep=keep, keep_strength=ks, **run) for ks in (0.0, 0.3)}
    inside = keep > 0
    np.testing.assert_allclose(held[0.0][inside], np.clip(real[inside], -1, 1), atol=1e-5)
    err = {k: np.abs(v - real)[inside].mean() for k, v in {**held, 0.6: plain}.items()}
    assert err[0.0] < err[0.3] < err[0.6]
    assert np.abs(held[0.3] - plain)[~inside].mean() < np.abs(held[0.3] - plain)[inside].mean()
    with pytest.raises(ValueError, match="keep_strength must be in"):
        pipe(prompts, cond, seeds=[1, 2, 3], steps=10, keep=keep, keep_strength=0.3)  # from noise


def test_img2img_errors(tiny_set):
    pipe = new_pipeline(ModelConfig(**TINY))
    prompts, cond = _inputs(tiny_set, 1)
    real = np.asarray(tiny_set.images[:1], np.float32)
    with pytest.raises(ValueError, match="needs the real images"):
        pipe(prompts, cond, seeds=[1], steps=4, strength=0.5)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
            pipe(prompts, cond, seeds=[1], steps=4, images=real, strength=bad)
    with pytest.raises(ValueError, match="runs no denoising step"):
        pipe(prompts, cond, seeds=[1], steps=4, images=real, strength=0.2)


# ---- the mask as a condition --------------------------------------------------------------------

@pytest.mark.parametrize("control", ["concat", "controlnet"])
def test_mask_channel_changes_the_output_and_survives_save_load(tmp_path, tiny_set, control):
    torch.manual_seed(0)
    pipe = new_pipeline(ModelConfig(control=control, condition="edges+mask", mask_channels=1, **TINY))
    p2 = pipe.config.pixel_shuffle ** 2
    if control == "concat":
        assert pipe.denoiser.unet.config.in_channels == 3 * p2  # noisy image + edge map + one label
    else:
        assert pipe.denoiser.controlnet.config.conditioning_channels == 2 * p2
        with torch.no_grad():  # a fresh ControlNet is a no-op: give its zero convolutions weights
            cn = pipe.denoiser.controlnet
            for m in [*cn.controlnet_down_blocks, cn.controlnet_mid_block, cn.controlnet_cond_embedding.conv_out]:
                m.weight.normal_(0, 0.2)
    prompts, cond = _inputs(tiny_set)
    masks = np.asarray(tiny_set.masks[:3])
    other = np.zeros_like(masks)
    other[:, 8:24, 8:24] = 1
    a = pipe(prompts, cond, seeds=[1, 2, 3], steps=3, masks=masks)
    b = pipe(prompts, cond, seeds=[1, 2, 3], steps=3, masks=other)
    assert np.abs(a - b).mean() > 1e-3  # same seeds, another mask -> other images
    empty = pipe(prompts, cond, seeds=[1, 2, 3], steps=3)
    np.testing.assert_array_equal(empty, pipe(prompts, cond, seeds=[1, 2, 3], steps=3, masks=0 * masks))
    pipe.save_pretrained(tmp_path / "m")
    loaded = DiffBoostPipeline.from_pretrained(tmp_path / "m")
    assert (loaded.config.condition, loaded.config.mask_channels) == ("edges+mask", 1)
    np.testing.assert_allclose(loaded(prompts, cond, seeds=[1, 2, 3], steps=3, masks=masks), a, atol=1e-5)


def test_a_model_saved_before_mask_conditions_loads_as_edges(tmp_path, tiny_set):
    from diffboost.diffusion.pipeline import CONFIG_NAME

    new_pipeline(ModelConfig(**TINY)).save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / CONFIG_NAME).read_text())
    for k in ("condition", "mask_channels"):
        del meta["model"][k]
    meta["model"]["patch"] = meta["model"].pop("pixel_shuffle")  # the option's name before it was renamed
    (tmp_path / "m" / CONFIG_NAME).write_text(json.dumps(meta))
    loaded = DiffBoostPipeline.from_pretrained(tmp_path / "m").config
    assert loaded.condition == "edges" and loaded.pixel_shuffle == ModelConfig(**TINY).pixel_shuffle
    with pytest.raises(ValueError, match="condition must be one of"):
        ModelConfig(condition="mask")


def test_fine_tuning_gives_the_mask_pretraining_an_empty_one(tmp_path, tiny_set, monkeypatch):
    from diffboost.conditioning.edges import mask_boundary

    seen = []
    real_encode = DiffBoostPipeline.encode_condition

    def recording(self, edges, masks=None):
        seen.append((edges.clone(), None if masks is None else masks.clone()))
        return real_encode(self, edges, masks)

    monkeypatch.setattr(DiffBoostPipeline, "encode_condition", recording)
    idx = list(range(len(tiny_set)))
    cfg = ModelConfig(condition="edges+mask", **TINY)  # mask_channels from the set's labels
    tcfg = TrainConfig(steps=2, batch_size=4, warmup_steps=0, checkpoint_every=100)
    model = train_diffusion(tiny_set, tmp_path / "ft", idx, cfg, tcfg, progress=False)
    assert DiffBoostPipeline.from_pretrained(model).config.mask_channels == 1
    assert len(seen) == 2
    for edges, masks in seen:
        assert masks.shape == (4, 1, 32, 32) and masks.sum() > 0
        for e, m in zip(edges[:, 0].numpy(), masks[:, 0].numpy()):  # flipped together with the condition
            assert (e[mask_boundary(m) > 0] == 1).all()
    seen.clear()
    train_diffusion(tiny_set, tmp_path / "pre", idx, ModelConfig(condition="edges+mask", mask_channels=1, **TINY),
                    TrainConfig(steps=1, batch_size=4, condition="edges", checkpoint_every=100), progress=False)
    assert seen[0][1].shape == (4, 1, 32, 32) and seen[0][1].abs().sum() == 0
    with pytest.raises(ValueError, match="foreground label"):
        train_diffusion(tiny_set, tmp_path / "bad", idx, ModelConfig(condition="edges+mask", mask_channels=2, **TINY),
                        tcfg, progress=False)
    with pytest.raises(ValueError, match="needs model.mask_channels"):
        train_diffusion(tiny_set, tmp_path / "bad2", idx, cfg, dataclasses.replace(tcfg, condition="edges"),
                        progress=False)


# ---- Min-SNR-gamma and the timestep cap ---------------------------------------------------------

@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_weights(prediction):
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    from diffboost.diffusion.train import snr_weights

    s = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction)
    t = torch.tensor([0, 50, 200, 500, 900, 999])
    snr = compute_snr(s, t)
    w = snr_weights(s, t, 5.0)
    expected = torch.minimum(snr, torch.full_like(snr, 5.0)) / (snr if prediction == "epsilon" else snr + 1)
    torch.testing.assert_close(w, expected)
    assert w[0] < 1e-2 and (w <= 1).all()  # the nearly noise-free steps no longer dominate


def test_min_snr_loss_and_timestep_cap_in_training(tmp_path, tiny_set, monkeypatch):
    import csv

    from diffusers import DDPMScheduler

    idx = list(range(len(tiny_set)))
    base = dict(steps=3, batch_size=4, warmup_steps=0, checkpoint_every=100, log_every=1)

    def log(run):
        return list(csv.DictReader(open(tmp_path / run / "loss.csv")))

    train_diffusion(tiny_set, tmp_path / "plain", idx, ModelConfig(**TINY), TrainConfig(**base), progress=False)
    ts = []
    real_add = DDPMScheduler.add_noise

    def recording(self, x, noise, t):
        ts.append(t.clone())
        return real_add(self, x, noise, t)

    monkeypatch.setattr(DDPMScheduler, "add_noise", recording)
    train_diffusion(tiny_set, tmp_path / "snr", idx, ModelConfig(**TINY),
                    TrainConfig(snr_gamma=5.0, max_timestep_fraction=0.1, **base), progress=False)
    plain, snr = log("plain"), log("snr")
    assert all(r["loss"] == r["objective"] for r in plain)  # unweighted: the objective is the MSE
    assert all(r["loss"] != r["objective"] for r in snr)  # weighted objective, plain MSE logged beside it
    t = torch.cat(ts)
    assert len(t) == 12 and t.max() < 100  # timesteps only below 0.1 x T
    info = json.loads((tmp_path / "snr" / "model" / "training.json").read_text())
    assert info["max_timestep_fraction"] == 0.1
    with pytest.raises(ValueError, match="snr_gamma"):
        TrainConfig(snr_gamma=0)
    with pytest.raises(ValueError, match="max_timestep_fraction"):
        TrainConfig(max_timestep_fraction=1.5)
