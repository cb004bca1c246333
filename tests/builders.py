"""Small datasets written by the tests, in each supported layout."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from PIL import Image


def disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def save_png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def gradient_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A noisy linear ramp from 40 to 200 whose direction turns 50 degrees per seed, so the images of
    different seeds are distinct cases to the near-duplicate check."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    a = np.deg2rad(50.0 * seed)
    ramp = np.cos(a) * xx / max(w - 1, 1) + np.sin(a) * yy / max(h - 1, 1)
    base = 40 + 160 * (ramp - ramp.min()) / max(np.ptp(ramp), 1e-9)
    return np.clip(base + rng.normal(0, 10, (h, w)), 0, 255).astype(np.uint8)


def make_busi(root: Path) -> Path:
    """Three classes; an RGB image; 1-bit, 8-bit and RGBA masks; a two-lesion case."""
    base = root / "Dataset_BUSI_with_GT"
    h, w = 60, 80
    # benign (1): grey image, 8-bit mask
    save_png(base / "benign" / "benign (1).png", gradient_image(h, w, 1))
    save_png(base / "benign" / "benign (1)_mask.png", disk(h, w, 30, 40, 10).astype(np.uint8) * 255)
    # benign (2): RGB image, 1-bit mask + second lesion in _mask_1 (RGBA)
    rgb = np.stack([gradient_image(h, w, 2)] * 3, -1)
    rgb[5:10, 5:10] = [255, 0, 0]  # a colour overlay, as in some BUSI images
    save_png(base / "benign" / "benign (2).png", rgb)
    Image.fromarray(disk(h, w, 20, 20, 6)).convert("1").save(base / "benign" / "benign (2)_mask.png")
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[disk(h, w, 40, 60, 8)] = [255, 255, 255, 255]
    save_png(base / "benign" / "benign (2)_mask_1.png", rgba)
    # malignant (1)
    save_png(base / "malignant" / "malignant (1).png", gradient_image(h, w, 3))
    save_png(base / "malignant" / "malignant (1)_mask.png", disk(h, w, 25, 35, 12).astype(np.uint8) * 255)
    # normal (1): empty mask is valid
    save_png(base / "normal" / "normal (1).png", gradient_image(h, w, 4))
    save_png(base / "normal" / "normal (1)_mask.png", np.zeros((h, w), np.uint8))
    return root


def save_nifti(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(arr, np.diag([*spacing[:3], 1.0]))
    img.header.set_zooms(tuple(spacing[:3]) + tuple([1.0] * (arr.ndim - 3)))
    nib.save(img, str(path))
    return path


def volume_pair(shape=(24, 20, 8), seed: int = 0, labels=(1, 2)):
    rng = np.random.default_rng(seed)
    img = rng.normal(100, 20, shape).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    lab[6:12, 5:15, 2:6] = labels[0]
    lab[12:18, 5:15, 3:5] = labels[1]
    img[lab > 0] += 60
    return img, lab


def make_msd(root: Path, n: int = 4, channels: int = 1, spacing=(0.5, 0.5, 3.0)) -> Path:
    modality = {str(i): name for i, name in enumerate(["T2", "ADC", "X"][:channels])}
    entries = []
    for i in range(n):
        img, lab = volume_pair(seed=i)
        if channels > 1:
            img = np.stack([img + 10 * c for c in range(channels)], -1)
        save_nifti(root / "imagesTr" / f"prostate_{i:02d}.nii.gz", img, spacing)
        save_nifti(root / "labelsTr" / f"prostate_{i:02d}.nii.gz", lab, spacing)
        entries.append({"image": f"./imagesTr/prostate_{i:02d}.nii.gz", "label": f"./labelsTr/prostate_{i:02d}.nii.gz"})
    meta = {"name": "Prostate", "modality": modality, "labels": {"0": "background", "1": "PZ", "2": "TZ"},
            "numTraining": n, "training": entries, "test": []}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def make_nnunet(root: Path, n: int = 3, ending: str = ".nii.gz") -> Path:
    for i in range(n):
        case = f"case_{i:03d}"
        if ending == ".png":
            img = gradient_image(40, 50, i)
            lab = disk(40, 50, 20, 25, 8).astype(np.uint8)
            save_png(root / "imagesTr" / f"{case}_0000.png", img)
            save_png(root / "labelsTr" / f"{case}.png", lab)
        else:
            img, lab = volume_pair(seed=i)
            save_nifti(root / "imagesTr" / f"{case}_0000{ending}", img)
            save_nifti(root / "labelsTr" / f"{case}{ending}", lab)
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1, "tumour": 2},
            "numTraining": n, "file_ending": ending}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def make_folders(root: Path, n: int = 3, mask_dir: str = "masks") -> Path:
    for i in range(n):
        save_png(root / "images" / f"img{i}.png", gradient_image(30, 40, i))
        save_png(root / mask_dir / f"img{i}_mask.png", disk(30, 40, 15, 20, 6).astype(np.uint8) * 255)
    return root


def make_busbra(root: Path) -> Path:
    """BUS-BRA's public layout in small: Images/bus_ID.png, Masks/mask_ID.png (0/255), bus_data.csv with
    ID,Case,...,Device columns; ID is CASE-SIDE, several images per case (patient)."""
    rows = [("0002-l", 2, "fibroadenoma", "benign", 4, "GE Logiq 7"), ("0002-r", 2, "fibroadenoma", "benign", 4, "GE Logiq 7"),
            ("0006-s", 6, "invasive ductal carcinoma", "malignant", 4, "GE Logiq 5"),
            ("0010-l", 10, "cyst", "benign", 2, "Toshiba Aplio 300"), ("0010-r", 10, "cyst", "benign", 3, "Toshiba Aplio 300"),
            ("0011-s", 11, "invasive lobular carcinoma", "malignant", 5, "GE Logiq 5"),
            ("0012-l", 12, "fibroadenoma", "benign", 3, "U-Systems"), ("0012-r", 12, "papilloma", "malignant", 4, "U-Systems"),
            ("0013-s", 13, "cyst", "benign", 2, "GE Logiq 7")]
    lines = ["ID,Case,Histology,Pathology,BIRADS,Device,Width,Height,Side,BBOX"]
    for i, (ident, case, hist, path, birads, device) in enumerate(rows):
        save_png(root / "Images" / f"bus_{ident}.png", gradient_image(40, 48, i))
        save_png(root / "Masks" / f"mask_{ident}.png", disk(40, 48, 20, 14 + 2 * i, 6).astype(np.uint8) * 255)
        lines.append(f'bus_{ident},{case},{hist},{path},{birads},{device} @10-14MHz,48,40,left,"[1,2,3,4]"')
    (root / "bus_data.csv").write_text("\n".join(lines) + "\n")
    return root


def make_corpus(root: Path) -> Path:
    for j, (mod, organ, cat) in enumerate([("CT", "Abdomen", "Arterial_Pathology"), ("MR", "Hip", "normal")]):
        for i in range(2):  # four distinct images (no near-duplicates)
            save_png(root / mod / organ / cat / f"{i}.png", gradient_image(32, 32, 2 * j + i))
    return root


def prepared_with_variants(root: Path, phantoms: Path, folds=(0, 1), n: int = 2, steps: int = 2,
                           unlabelled: list[str] | None = None):
    """Phantoms prepared at 32 px (with ``unlabelled`` folders of images without a label), a tiny (untrained)
    diffusion model saved in ``root/model``, and variants really generated by it into ``root/synthetic/foldK``
    for each of ``folds``."""
    import torch

    from diffboost.config import PrepareConfig
    from diffboost.data.preparation import prepare
    from diffboost.diffusion.models import ModelConfig
    from diffboost.diffusion.train import new_pipeline
    from diffboost.generation import GenerateConfig, generate

    ps = prepare(phantoms, root / "prepared", PrepareConfig(size=32, folds=3, unlabelled=unlabelled), progress=False)
    torch.manual_seed(0)
    new_pipeline(ModelConfig(image_size=32, channels=(8, 16, 32), attention=(False, True, True))).save_pretrained(root / "model")
    for k in folds:
        generate(root / "model", ps, root / "synthetic" / f"fold{k}", k, GenerateConfig(n=n, steps=steps, batch_size=8),
                 progress=False)
    return ps


class Recorder(torch.nn.Module):
    """Wraps a network and keeps a copy of every input it is given."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.inputs = net, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.net(x)


def train_tiny(data, epochs=(0,), **options):
    """Epochs of a tiny UNet on ``data``: (the network with its recorded inputs, the labels the loss saw)."""
    from monai.losses import DiceCELoss

    from diffboost.segmentation import SegConfig, parse_strategy
    from diffboost.segmentation.augment import BatchAugmenter
    from diffboost.segmentation.networks import build_network
    from diffboost.segmentation.trainer import _train_epoch

    cfg = SegConfig(network="unet", channels=(4, 8), batch_size=4, **options)
    torch.manual_seed(0)
    net = Recorder(build_network("unet", 2, cfg.channels))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    dice_ce, labels = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True), []

    def loss_fn(logits, y):
        labels.append(y.clone())
        return dice_ce(logits, y)

    augment = BatchAugmenter(parse_strategy(cfg.aug)[1], cfg.aug_prob, cfg.seed)
    for e in epochs:
        _train_epoch(net, opt, loss_fn, data, cfg, augment, cfg.patch or 8, e)
    return net, labels


def make_ddti(root: Path) -> Path:
    """DDTI's public layout in small: cropped/NAME.png, mask/NAME.gif (0/255), diagnosis.csv; NAME is
    CASE_IMAGE or CASE_IMAGE(NODULE), several images per case."""
    from PIL import Image

    names = ["5_1(1)", "5_1(2)", "5_2", "7_1", "7_2", "9_1", "11_1(1)", "11_1(2)", "12_1"]
    diagnosis = ["4a", "4a", "4b", "None", "None", "3", "5", "5", "2"]
    (root / "cropped").mkdir(parents=True)
    (root / "mask").mkdir()
    for i, name in enumerate(names):
        save_png(root / "cropped" / f"{name}.png", gradient_image(40, 40, i))
        Image.fromarray(disk(40, 40, 20, 15 + i, 6).astype(np.uint8) * 255).save(root / "mask" / f"{name}.gif")
    (root / "diagnosis.csv").write_text("".join(f"{n},{d},1\n" for n, d in zip(names, diagnosis)))
    return root
