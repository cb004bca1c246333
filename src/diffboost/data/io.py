"""Reading images, masks and volumes from disk, with one clear error per bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
ALL_SUFFIXES = IMAGE_SUFFIXES + NIFTI_SUFFIXES

# ITU-R BT.601 luma weights: the usual RGB -> grey conversion (PIL's "L" mode uses the same).
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def split_suffix(path: str | Path) -> tuple[str, str]:
    """Return (stem, suffix) treating ``.nii.gz`` as one suffix."""
    name = Path(path).name
    low = name.lower()
    for suf in NIFTI_SUFFIXES + IMAGE_SUFFIXES:
        if low.endswith(suf):
            return name[: -len(suf)], suf
    p = Path(name)
    return p.stem, p.suffix.lower()


def is_nifti(path: str | Path) -> bool:
    return split_suffix(path)[1] in NIFTI_SUFFIXES


def read_image_2d(path: str | Path) -> np.ndarray:
    """Read a 2D image file as float32 grey ``[H, W]`` in its native intensity units.

    RGB(A) images are converted to grey with BT.601 weights (alpha ignored); 16-bit and float
    TIFFs keep their range.
    """
    path = Path(path)
    try:
        if split_suffix(path)[1] in (".tif", ".tiff"):
            import tifffile

            arr = np.asarray(tifffile.imread(path))
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                if im.mode == "CMYK":  # not RGB: PIL's own conversion, not RGB weights on C, M, Y
                    im = im.convert("RGB")
                if im.mode in ("LA", "La", "PA"):  # grey + alpha: the grey channel
                    im = im.getchannel(0)
                arr = np.asarray(im)
                if arr.ndim == 3 and arr.shape[-1] == 4:  # RGBA: fully transparent pixels are background
                    arr = np.where(arr[..., 3:4] == 0, 0, arr)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except Exception as e:  # PIL / tifffile raise many types on corrupt files
        raise DataError(path, f"cannot read image ({type(e).__name__}: {e})") from None
    if arr.size == 0 or 0 in arr.shape:
        raise DataError(path, f"empty image (shape {arr.shape})")
    arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].astype(np.float32) @ _LUMA
    if arr.ndim != 2:
        raise DataError(path, f"expected a 2D grey or RGB image, got an array of shape {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise DataError(path, "image contains NaN or Inf values")
    return arr


def read_nifti(path: str | Path, canonical: bool = True) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read a NIfTI file; return ``(array, spacing)`` with spacing in mm per axis.

    With ``canonical`` the volume is reoriented to the closest RAS+ orientation so that slicing
    along an axis means the same for every case.
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    try:
        img = nib.load(str(path))
        if canonical and img.ndim >= 3:
            img = nib.as_closest_canonical(img)
        arr = np.asarray(img.dataobj)
        zooms = tuple(float(z) for z in img.header.get_zooms())
    except Exception as e:
        raise DataError(path, f"cannot read NIfTI ({type(e).__name__}: {e})") from None
    if arr.size == 0 or 0 in arr.shape:
        raise DataError(path, f"empty volume (shape {arr.shape})")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        n = int((~np.isfinite(arr)).sum())
        raise DataError(path, f"volume contains {n} NaN/Inf values")
    spacing = zooms[: min(arr.ndim, 3)]
    if any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise DataError(path, f"invalid voxel spacing {spacing} (pixdim in the header)")
    if arr.ndim == 3 and arr.shape[2] == 1:  # a 2D image stored as (X, Y, 1): a 2D case, not 1-pixel strips
        arr, spacing = arr[..., 0], spacing[:2]
    return arr, spacing


def nifti_affine(path: str | Path) -> np.ndarray:
    """The voxel-to-world affine of a NIfTI file, after the same reorientation :func:`read_nifti` applies."""
    import nibabel as nib

    img = nib.load(str(path))
    if img.ndim >= 3:
        img = nib.as_closest_canonical(img)
    return np.asarray(img.affine, np.float64)


def check_same_grid(image: str | Path, label: str | Path) -> None:
    """A NIfTI label must lie on its image's grid: the same affine (orientation, spacing, origin)."""
    a, b = nifti_affine(image), nifti_affine(label)
    if not np.allclose(a, b, atol=1e-3, rtol=1e-4):
        raise DataError(label, f"its affine (orientation / position / spacing) differs from its image's ({Path(image).name}): "
                               "a flipped, shifted or resampled label; resample it onto the image grid")


def read_any(path: str | Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read a 2D image (spacing 1 px) or a NIfTI volume (spacing in mm)."""
    if is_nifti(path):
        return read_nifti(path)
    arr = read_image_2d(path)
    return arr, (1.0, 1.0)


def binary_from_grey(arr: np.ndarray) -> np.ndarray:
    """Foreground = value > 0 (1-bit, 8-bit and grey-converted RGB(A) masks alike)."""
    return (arr > 0).astype(np.uint8)
