"""HED network: layout compatible with the BSDS500 weight file, safe loading, detector behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from diffboost.conditioning.hed import BGR_MEAN, HED, HEDEdgeDetector, load_hed_weights

# The parameter layout of sniklaus/pytorch-hed `network-bsds500` (run.py: netVggOne..netVggFiv as
# Sequentials whose stages 2-5 start with a MaxPool, netScoreOne..Fiv 1x1 convs, netCombine =
# Sequential(Conv2d(5, 1, 1), Sigmoid)), written out independently of the implementation.
_CONVS = {
    "netVggOne.0": (64, 3, 3, 3), "netVggOne.2": (64, 64, 3, 3),
    "netVggTwo.1": (128, 64, 3, 3), "netVggTwo.3": (128, 128, 3, 3),
    "netVggThr.1": (256, 128, 3, 3), "netVggThr.3": (256, 256, 3, 3), "netVggThr.5": (256, 256, 3, 3),
    "netVggFou.1": (512, 256, 3, 3), "netVggFou.3": (512, 512, 3, 3), "netVggFou.5": (512, 512, 3, 3),
    "netVggFiv.1": (512, 512, 3, 3), "netVggFiv.3": (512, 512, 3, 3), "netVggFiv.5": (512, 512, 3, 3),
    "netScoreOne": (1, 64, 1, 1), "netScoreTwo": (1, 128, 1, 1), "netScoreThr": (1, 256, 1, 1),
    "netScoreFou": (1, 512, 1, 1), "netScoreFiv": (1, 512, 1, 1),
    "netCombine.0": (1, 5, 1, 1),
}
BSDS500_SHAPES = {f"{k}.weight": s for k, s in _CONVS.items()}
BSDS500_SHAPES |= {f"{k}.bias": (s[0],) for k, s in _CONVS.items()}


@pytest.fixture(scope="module")
def net() -> HED:
    torch.manual_seed(0)
    return HED().eval().requires_grad_(False)


def _state(net: HED) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def _ramp(h: int = 32, w: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.where((x - w / 2) ** 2 + (y - h / 2) ** 2 < (h / 4) ** 2, 0.8, -0.6).astype(np.float32)


def test_state_dict_matches_the_bsds500_file_layout(net):
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes == BSDS500_SHAPES
    for key in ("netVggOne.0.weight", "netScoreOne.weight", "netScoreFiv.weight", "netCombine.0.weight"):
        assert key in shapes


def test_network_output_shape_and_range(net):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 50, 37) * 80.0  # odd sizes: side outputs must be resized to the input
    with torch.inference_mode():
        y = net(x)
    assert y.shape == (2, 1, 50, 37)
    assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
    with pytest.raises(ValueError, match="at least 16"):
        net(torch.zeros(1, 3, 8, 64))


def test_detector_2d_and_batched(net):
    det = HEDEdgeDetector(model=net)
    big = det(_ramp(64, 64))
    assert big.shape == (64, 64) and big.dtype == np.float32
    assert 0.0 <= big.min() and big.max() <= 1.0
    img = _ramp()
    e = det(img)
    assert e.shape == (32, 32) and e.dtype == np.float32
    batch = np.stack([img, -img, np.zeros_like(img), img])
    eb = det(batch)
    assert eb.shape == (4, 32, 32) and eb.dtype == np.float32
    assert 0.0 <= eb.min() and eb.max() <= 1.0
    np.testing.assert_allclose(eb[0], e, atol=1e-5)
    np.testing.assert_allclose(eb[3], e, atol=1e-5)
    # internal batching does not change results
    small = HEDEdgeDetector(model=net, batch_size=3)(batch)
    np.testing.assert_allclose(small, eb, atol=1e-5)
    assert det(np.zeros((0, 32, 32), np.float32)).shape == (0, 32, 32)
    with pytest.raises(ValueError, match="shape"):
        det(np.zeros((1, 1, 32, 32), np.float32))


class _Spy(nn.Module):
    """Records what the detector feeds the network."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.clone()
        return torch.full_like(x[:, :1], 0.25)


def test_detector_preprocessing_is_bgr_255_minus_mean():
    spy = _Spy()
    img = np.array([[-1.0, 0.0], [1.0, 3.0]], np.float32)  # 3.0 is clipped to 1.0
    out = HEDEdgeDetector(model=spy)(img)  # type: ignore[arg-type]
    assert out.shape == (2, 2) and np.all(out == 0.25)
    grey = np.array([[0.0, 127.5], [255.0, 255.0]], np.float32)
    expected = np.stack([grey - m for m in BGR_MEAN])[None]
    np.testing.assert_allclose(spy.seen.numpy(), expected, rtol=0, atol=1e-4)


def _same_weights(model: torch.nn.Module, net: HED) -> bool:
    a, b = model.state_dict(), net.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_safetensors_and_torch_save_round_trip(net, tmp_path):
    state = _state(net)
    save_file(state, str(tmp_path / "hed.safetensors"))
    torch.save(state, tmp_path / "hed.pth")
    torch.manual_seed(2)
    x = torch.randn(1, 3, 32, 48) * 50.0
    with torch.inference_mode():
        ref = net(x)
        for name in ("hed.safetensors", "hed.pth"):
            model = load_hed_weights(tmp_path / name)
            assert isinstance(model, HED) and not model.training
            assert not any(p.requires_grad for p in model.parameters())
            assert torch.equal(model(x), ref), name
    assert _same_weights(HEDEdgeDetector(weights=tmp_path / "hed.pth").model, net)


def test_prefixed_and_legacy_names_load(net, tmp_path):
    state = _state(net)
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "ddp.pt")
    # the originally hosted conversion names its modules moduleVggOne, moduleScoreOne, ...
    torch.save({"module" + k[len("net"):]: v for k, v in state.items()}, tmp_path / "legacy.pth")
    torch.save({"state_dict": state}, tmp_path / "wrapped.pth")
    for name in ("ddp.pt", "legacy.pth", "wrapped.pth"):
        assert _same_weights(load_hed_weights(tmp_path / name), net), name


def test_wrong_keys_and_shapes_name_the_file(net, tmp_path):
    state = _state(net)
    missing = {k: v for k, v in state.items() if k != "netCombine.0.weight"}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match=r"missing\.safetensors.*missing keys: netCombine\.0\.weight"):
        load_hed_weights(tmp_path / "missing.safetensors")

    renamed = dict(state)
    renamed["netScoreSix.weight"] = renamed.pop("netScoreFiv.weight")
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(ValueError, match=r"renamed\.pth") as info:
        load_hed_weights(tmp_path / "renamed.pth")
    assert "netScoreFiv.weight" in str(info.value) and "netScoreSix.weight" in str(info.value)

    reshaped = dict(state)
    reshaped["netScoreOne.weight"] = torch.zeros(1, 32, 1, 1)
    torch.save(reshaped, tmp_path / "reshaped.pt")
    with pytest.raises(ValueError, match=r"reshaped\.pt.*wrong shapes: netScoreOne\.weight"):
        load_hed_weights(tmp_path / "reshaped.pt")

    # a different network: many missing keys, only five listed
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other\.pth") as info:
        load_hed_weights(tmp_path / "other.pth")
    msg = str(info.value)
    assert f"(+{len(BSDS500_SHAPES) - 5} more)" in msg and "unexpected keys: conv.weight" in msg


def test_unsafe_or_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        load_hed_weights(tmp_path / "nope.pth")
    torch.save({"x": object()}, tmp_path / "evil.pth")  # needs full unpickling: refused
    with pytest.raises(ValueError, match=r"evil\.pth.*weights_only"):
        load_hed_weights(tmp_path / "evil.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"junk\.safetensors"):
        load_hed_weights(tmp_path / "junk.safetensors")
    torch.save({"netVggOne.0.weight": [1, 2]}, tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"list\.pth.*not a tensor"):
        load_hed_weights(tmp_path / "list.pth")


def test_detector_arguments(net, tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        HEDEdgeDetector()
    with pytest.raises(ValueError, match="exactly one"):
        HEDEdgeDetector(weights=tmp_path / "a.pth", model=net)
    with pytest.raises(ValueError, match="batch_size"):
        HEDEdgeDetector(model=net, batch_size=0)
    with pytest.raises(FileNotFoundError, match=r"absent\.safetensors"):
        HEDEdgeDetector(weights=tmp_path / "absent.safetensors")


def test_prepare_with_hed(tmp_path, net):
    from builders import make_busi

    from diffboost.config import PrepareConfig
    from diffboost.data.preparation import prepare

    save_file(_state(net), str(tmp_path / "hed.safetensors"))
    cfg = PrepareConfig(size=32, folds=2, edges="hed", hed_weights=str(tmp_path / "hed.safetensors"))
    ps = prepare(make_busi(tmp_path / "b"), tmp_path / "o", cfg, progress=False)
    expected = HEDEdgeDetector(model=net)(np.asarray(ps.images[0], np.float32))
    np.testing.assert_allclose(np.asarray(ps.edges[0]) / 255.0, expected, atol=1 / 255 + 1e-3)
