"""The bring-your-own Stable Diffusion 1.5 route, with tiny random components built here."""

from __future__ import annotations

import json
import string

import numpy as np
import pytest
import torch


def _tiny_clip_tokenizer(folder):
    from transformers import CLIPTokenizer

    chars = list(string.ascii_lowercase + string.digits + ",.")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """A Stable-Diffusion-shaped folder with tiny random weights (no download)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = tmp_path_factory.mktemp("sd")
    torch.manual_seed(0)
    tok = _tiny_clip_tokenizer(root / "tok")
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=16, projection_dim=32))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                cross_attention_dim=32, attention_head_dim=4, norm_num_groups=32)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 64), latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=32, sample_size=32)
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root / "sd15")
    return root / "sd15"


def test_sd15_trains_only_the_controlnet_and_round_trips(tiny_sd, tmp_path):
    from diffboost.config import PrepareConfig
    from diffboost.data.phantoms import generate_phantoms
    from diffboost.data.preparation import prepare
    from diffboost.diffusion.models import ModelConfig
    from diffboost.diffusion.pipeline import DiffBoostPipeline
    from diffboost.diffusion.train import TrainConfig, train_diffusion

    ps = prepare(generate_phantoms(tmp_path / "src", n=4, seed=1), tmp_path / "p", PrepareConfig(size=32, folds=2),
                 progress=False)
    cfg = ModelConfig(kind="sd15", pretrained=str(tiny_sd), image_size=32)
    model = train_diffusion(ps, tmp_path / "run", list(range(len(ps))), cfg,
                            TrainConfig(steps=2, batch_size=2, warmup_steps=0, learning_rate=1e-3), progress=False)
    from safetensors.torch import load_file

    base = load_file(str(tiny_sd / "unet" / "diffusion_pytorch_model.safetensors"))
    after = load_file(str(model / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(base[k], after[k]) for k in base)  # the SD UNet stayed locked
    cn = load_file(str(model / "controlnet" / "diffusion_pytorch_model.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in cn.items() if k.startswith(("controlnet_down_blocks", "controlnet_mid_block")))  # the ControlNet trained
    pipe = DiffBoostPipeline.from_pretrained(model)
    cond = np.asarray(ps.conditions[:2], np.float32) / 255.0
    a = pipe(["US, Breast, benign"] * 2, cond, seeds=[1, 2], steps=3, sampler="ddim")
    b = DiffBoostPipeline.from_pretrained(model)(["US, Breast, benign"] * 2, cond, seeds=[1, 2], steps=3, sampler="ddim")
    assert a.shape == (2, 32, 32) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_sd15_errors(tmp_path):
    from diffboost.diffusion.models import ModelConfig
    from diffboost.diffusion.sd15 import load_sd15

    with pytest.raises(ValueError, match="--pretrained"):
        load_sd15(ModelConfig(kind="sd15"))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_sd15(ModelConfig(kind="sd15", pretrained=str(tmp_path / "none")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a diffusers Stable Diffusion folder"):
        load_sd15(ModelConfig(kind="sd15", pretrained=str(tmp_path / "empty")))


def test_sd15_fine_tunes_at_its_own_learning_rate_by_default(tiny_sd, tmp_path, monkeypatch):
    import yaml

    from diffboost.config import PrepareConfig
    from diffboost.data.phantoms import generate_phantoms
    from diffboost.data.preparation import prepare
    from diffboost.diffusion.models import ModelConfig
    from diffboost.diffusion.train import TrainConfig, train_diffusion

    lrs = []

    class Recording(torch.optim.AdamW):
        def __init__(self, params, lr, **kw):
            lrs.append(lr)
            super().__init__(params, lr=lr, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    ps = prepare(generate_phantoms(tmp_path / "src", n=4, seed=1), tmp_path / "p", PrepareConfig(size=32, folds=2),
                 progress=False)
    cfg = ModelConfig(kind="sd15", pretrained=str(tiny_sd), image_size=32)
    train_diffusion(ps, tmp_path / "run", list(range(len(ps))), cfg, TrainConfig(steps=1, batch_size=2, warmup_steps=0),
                    progress=False)
    assert lrs == [1e-5]  # the ControlNet's rate, not the small model's 3e-4
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["learning_rate"] == 1e-5


def test_sd15_mask_condition_and_img2img(tiny_sd, tmp_path, monkeypatch):
    """edges+mask: the ControlNet takes edge map + label channels; img2img encodes the real image
    with the VAE and runs int(strength x steps) steps from its noised latents."""
    from diffboost.config import PrepareConfig
    from diffboost.data.phantoms import generate_phantoms
    from diffboost.data.preparation import prepare
    from diffboost.diffusion.models import ModelConfig
    from diffboost.diffusion.pipeline import DiffBoostPipeline
    from diffboost.diffusion.train import TrainConfig, train_diffusion

    ps = prepare(generate_phantoms(tmp_path / "src", n=4, seed=1), tmp_path / "p", PrepareConfig(size=32, folds=2),
                 progress=False)
    cfg = ModelConfig(kind="sd15", pretrained=str(tiny_sd), image_size=32, condition="edges+mask")
    model = train_diffusion(ps, tmp_path / "run", list(range(len(ps))), cfg,
                            TrainConfig(steps=2, batch_size=2, warmup_steps=0, learning_rate=1e-3), progress=False)
    pipe = DiffBoostPipeline.from_pretrained(model)
    assert (pipe.config.condition, pipe.config.mask_channels) == ("edges+mask", 1)
    assert pipe.denoiser.controlnet.config.conditioning_channels == 2
    cond = np.asarray(ps.conditions[:2], np.float32) / 255.0
    masks = np.asarray(ps.masks[:2])
    real = np.asarray(ps.images[:2], np.float32)
    calls = {"vae": 0, "denoiser": 0}
    real_encode, real_forward = pipe.vae.encode, pipe.denoiser.forward

    def encode(x):
        calls["vae"] += 1
        return real_encode(x)

    def forward(*a, **k):
        calls["denoiser"] += 1
        return real_forward(*a, **k)

    monkeypatch.setattr(pipe.vae, "encode", encode)
    monkeypatch.setattr(pipe.denoiser, "forward", forward)
    kw = dict(seeds=[1, 2], steps=4, sampler="ddim", images=real, strength=0.5)
    a = pipe(["US, Breast, benign"] * 2, cond, masks=masks, **kw)
    assert calls == {"vae": 1, "denoiser": 2} and a.shape == (2, 32, 32) and np.isfinite(a).all()
    cn = pipe.denoiser.controlnet
    with torch.no_grad():  # two steps barely move the zero convolutions: give them weights
        for m in [*cn.controlnet_down_blocks, cn.controlnet_mid_block, cn.controlnet_cond_embedding.conv_out]:
            m.weight.normal_(0, 0.2)
    a = pipe(["US, Breast, benign"] * 2, cond, masks=masks, **kw)
    b = pipe(["US, Breast, benign"] * 2, cond, masks=1 - masks, **kw)
    assert np.abs(a - b).mean() > 1e-3  # the ControlNet reads the mask channel
    # a held region works on latents too (the region pooled to the latent grid); it moves the output
    keep = (masks > 0).astype(np.float32)
    held = pipe(["US, Breast, benign"] * 2, cond, masks=masks, keep=keep, keep_strength=0.0, **kw)
    assert held.shape == a.shape and np.isfinite(held).all() and np.abs(held - a).mean() > 1e-4


def test_sd15_loads_no_pickled_weights_unless_allowed(tiny_sd, tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    from diffboost.diffusion.models import ModelConfig
    from diffboost.diffusion.sd15 import load_sd15

    pickled = tmp_path / "sd15_bin"
    StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None, requires_safety_checker=False,
                                            local_files_only=True).save_pretrained(pickled, safe_serialization=False)
    assert not list((pickled / "unet").glob("*.safetensors")) and list((pickled / "unet").glob("*.bin"))
    monkeypatch.delenv("DIFFBOOST_ALLOW_PICKLE", raising=False)
    with pytest.raises(ValueError, match="no .safetensors weights"):
        load_sd15(ModelConfig(kind="sd15", pretrained=str(pickled), image_size=32))
    monkeypatch.setenv("DIFFBOOST_ALLOW_PICKLE", "1")  # the user's explicit choice for a file they trust
    assert load_sd15(ModelConfig(kind="sd15", pretrained=str(pickled), image_size=32)).vae is not None
