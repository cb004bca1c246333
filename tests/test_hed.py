"""The HED network: architecture compatible with the BSDS500 weight file, safe loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from diffboost.conditioning.hed import HED, HEDEdgeDetector, load_hed_weights


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return HED().eval()


def test_key_names_match_the_bsds500_file(net):
    keys = set(net.state_dict())
    for k in ("netVggOne.0.weight", "netVggTwo.1.weight", "netVggFiv.5.weight", "netScoreOne.weight",
              "netScoreFiv.weight", "netCombine.0.weight"):
        assert k in keys
    assert net.netScoreFou.in_channels == 512 and net.netCombine[0].in_channels == 5


def test_detector_shapes_and_range(net):
    det = HEDEdgeDetector(model=net)
    img = np.linspace(-1, 1, 64 * 48, dtype=np.float32).reshape(64, 48)
    e = det(img)
    assert e.shape == (64, 48) and e.dtype == np.float32 and 0 <= e.min() and e.max() <= 1
    batch = det(np.stack([img, -img, img * 0]))
    assert batch.shape == (3, 64, 48)
    np.testing.assert_allclose(batch[0], e, atol=1e-5)


def test_safetensors_and_pth_round_trip(net, tmp_path):
    x = torch.randn(1, 3, 32, 32)
    ref = net(x)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "hed.safetensors")
    torch.save({"module" + k[3:]: v for k, v in net.state_dict().items()}, tmp_path / "hed.pth")  # old names
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, tmp_path / "ddp.pth")
    for f in ("hed.safetensors", "hed.pth", "ddp.pth"):
        m = load_hed_weights(tmp_path / f)
        torch.testing.assert_close(m(x), ref)
    det = HEDEdgeDetector(weights=tmp_path / "hed.safetensors")
    assert det(np.zeros((16, 16), np.float32)).shape == (16, 16)


def test_wrong_files_are_named(net, tmp_path):
    state = dict(net.state_dict())
    state.pop("netCombine.0.weight")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "broken.safetensors")
    with pytest.raises(ValueError, match=r"broken\.safetensors.*missing.*netCombine"):
        load_hed_weights(tmp_path / "broken.safetensors")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_hed_weights(tmp_path / "nope.pth")
    # a pickle with arbitrary objects is refused (weights_only loading)
    torch.save({"x": object()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"evil\.pth: cannot read HED weights safely"):
        load_hed_weights(tmp_path / "evil.pth")


def test_prepare_with_hed(tmp_path, net):
    from builders import make_busi

    from diffboost.config import PrepareConfig
    from diffboost.data.preparation import prepare

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "hed.safetensors")
    cfg = PrepareConfig(size=32, folds=2, edges="hed", hed_weights=str(tmp_path / "hed.safetensors"))
    ps = prepare(make_busi(tmp_path / "b"), tmp_path / "o", cfg, progress=False)
    det = HEDEdgeDetector(model=net)
    expected = det(np.asarray(ps.images[0], np.float32))
    np.testing.assert_allclose(np.asarray(ps.edges[0]) / 255.0, expected, atol=1 / 255 + 1e-3)
