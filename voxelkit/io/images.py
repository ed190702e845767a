"""Images: loading, checking and putting voxel vectors back into 3-D/4-D images.

Internally data are 2-D: (voxels x frames) float32 for dynamic PET, (voxels,) for maps.  A :class:`Masker`
remembers the 3-D mask, shape and affine so that maps can be put back into images.

:func:`check_img` is the one entry point for an image argument: a path (NIfTI, or ECAT7 ``.v`` through
:mod:`voxelkit.ecat`), a nibabel image, or an ``(array, affine)`` pair (affine 4 x 4, in mm).  Masks and atlases
on another grid or in another voxel order are conformed to the PET grid by :mod:`voxelkit.conform`.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..errors import InputError
from ..frames import FrameTiming

#: What an image argument may be: a path, a nibabel image, or an ``(array, affine)`` pair (see :func:`check_img`).
ImageLike = str | Path | nib.spatialimages.SpatialImage | tuple[np.ndarray, np.ndarray]

log = logging.getLogger("voxelkit")

#: Default threshold of fractional (probabilistic, 0-1) masks: voxels with a value >= this are inside.
DEFAULT_MASK_THRESHOLD = 0.5
#: A reference region with fewer voxels than this gets a warning (its mean TAC is noisy).
MIN_REFERENCE_VOXELS = 20


def image_name(img: ImageLike) -> str:
    """How messages name an image: its path, its file name, or ``<in-memory ... of shape ...>``."""
    if isinstance(img, str | Path):
        return str(img)
    if isinstance(img, tuple):
        shape = getattr(img[0], "shape", None) if img else None
        return f"<in-memory array of shape {tuple(shape) if shape is not None else '?'}>"
    fname = img.get_filename() if hasattr(img, "get_filename") else None
    return fname or f"<in-memory image of shape {img.shape}>"


def _is_pair(img: Any) -> bool:
    return isinstance(img, tuple) and len(img) == 2 and not isinstance(img[0], str | Path)


def _image_from_pair(img: tuple[Any, Any], name: str) -> nib.Nifti1Image:
    data, affine = img
    try:
        data = np.asarray(data)
        affine = np.asarray(affine, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: (array, affine) pair cannot be read as arrays ({_one_line(exc)})") from None
    if data.dtype.kind not in "biuf":
        raise InputError(f"{name}: the array of an (array, affine) pair must be numeric, got dtype {data.dtype}")
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError(f"{name}: the affine of an (array, affine) pair must be a finite 4 x 4 matrix, got "
                         f"shape {affine.shape}")
    if data.dtype == bool:
        data = data.astype(np.uint8)
    elif data.dtype.kind in "iu" and data.dtype.itemsize > 4:
        data = data.astype(np.int32 if data.dtype.kind == "i" else np.uint32)
    img_out = nib.Nifti1Image(data, affine)
    img_out.header.set_xyzt_units("mm", "sec")
    return img_out


def check_img(img: Any, *, ndim: int | None = None, name: str | None = None) -> nib.spatialimages.SpatialImage:
    """The one entry point for an image argument: a path (NIfTI; ECAT7 ``.v`` through :mod:`voxelkit.ecat`),
    a nibabel image, or an ``(array, affine)`` pair (a 3-D/4-D numeric array and its 4 x 4 voxel-to-world
    affine in mm).  Returns a nibabel image (a path is opened lazily: data are read on first use).

    ``ndim`` (3 or 4): the number of dimensions required; a 4-D image with one volume counts as 3-D.  ``name``:
    how messages name the image (default: its path or ``<in-memory ...>``).  Anything else is an
    :class:`InputError` with one line naming the image and the problem."""
    label = name or (image_name(img) if isinstance(img, str | Path | tuple) or hasattr(img, "shape") else "image")
    if isinstance(img, str | Path):
        out = _load_path(Path(img))
    elif _is_pair(img):
        out = _image_from_pair(img, label)
    elif hasattr(img, "affine") and hasattr(img, "shape"):
        out = img
    else:
        raise InputError(f"{label}: expected an image path, a nibabel image or an (array, affine) pair, got "
                         f"{type(img).__name__}")
    if ndim is not None:
        shape = tuple(out.shape)
        ok = len(shape) == ndim or (ndim == 3 and len(shape) == 4 and shape[3] == 1)
        if not ok:
            raise InputError(f"{label}: expected a {ndim}-D image, got shape {shape}")
    return out


def load_image(img: ImageLike) -> nib.spatialimages.SpatialImage:
    """A nibabel image from a path, an image or an ``(array, affine)`` pair (:func:`check_img` without a
    dimension check)."""
    return check_img(img)


def _load_path(path: Path) -> nib.spatialimages.SpatialImage:
    check_input_file(path, "image")
    if path.name.lower().endswith(".v"):  # ECAT7: nibabel.load does not open it (frames: voxelkit.ecat)
        from ..ecat import load_ecat  # noqa: PLC0415 - ecat imports io

        return load_ecat(path)
    try:
        return nib.load(str(path))
    except PermissionError:
        raise InputError(f"{path}: cannot read image: permission denied") from None
    except Exception as exc:
        raise InputError(f"{path}: cannot read image ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def check_input_file(path: str | Path, what: str = "file") -> Path:
    """Raise :class:`InputError` unless ``path`` is an existing file (not a directory)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; expected the {what} file")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    return path


def image_data(img: nib.spatialimages.SpatialImage, name: str, dtype: Any = None) -> np.ndarray:
    """The voxel data of ``img`` (read now: nibabel loads lazily); a truncated or unreadable file is an
    :class:`InputError` naming ``name``."""
    try:
        return np.asarray(img.dataobj, dtype=dtype) if dtype is not None else np.asarray(img.dataobj)
    except PermissionError:
        raise InputError(f"{name}: cannot read image data: permission denied") from None
    except (EOFError, OSError, zlib.error, ValueError) as exc:
        raise InputError(f"{name}: cannot read image data (truncated or corrupt file? {_one_line(exc)})") from None


def sidecar_path(img_path: str | Path) -> Path:
    """``sub-01_pet.nii.gz`` -> ``sub-01_pet.json``."""
    p = Path(img_path)
    name = p.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return p.with_name(name[: -len(ext)] + ".json")
    return p.with_suffix(".json")


def check_same_space(ref: nib.spatialimages.SpatialImage, other: nib.spatialimages.SpatialImage,
                     ref_name: str, other_name: str, atol: float = 1e-3) -> None:
    """Raise if the spatial shape or affine of ``other`` differs from ``ref``; the message prints both."""
    if tuple(ref.shape[:3]) != tuple(other.shape[:3]):
        raise InputError(f"shape mismatch: {other_name} has shape {tuple(other.shape[:3])} but "
                         f"{ref_name} has {tuple(ref.shape[:3])}")
    if not np.allclose(ref.affine, other.affine, atol=atol):
        diff = float(np.abs(np.asarray(ref.affine) - np.asarray(other.affine)).max())
        log.debug("affine of %s:\n%s", other_name, np.array2string(np.asarray(other.affine), precision=4))
        log.debug("affine of %s:\n%s", ref_name, np.array2string(np.asarray(ref.affine), precision=4))
        raise InputError(f"affine mismatch between {other_name} and {ref_name} (largest difference {diff:.4g}; "
                         "the affines are printed with --verbose): the images are not on the same grid")


@dataclass
class DynamicPET:
    """A 4-D PET image with its frame timing."""

    image: nib.spatialimages.SpatialImage
    frames: FrameTiming
    name: str

    @property
    def shape3d(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape[:3])

    @property
    def affine(self) -> np.ndarray:
        return self.image.affine

    def data(self) -> np.ndarray:
        """The 4-D data, float32 (read now; a truncated file is an :class:`InputError` naming it)."""
        return image_data(self.image, self.name, np.float32)


def load_pet(pet: ImageLike | DynamicPET, frames: FrameTiming | None = None,
             sidecar: str | Path | None = None) -> DynamicPET:
    """Load a 4-D PET image and its frame timing (explicit ``frames``, a sidecar path, or the BIDS sidecar
    beside the image), checking that the frame count matches the 4th dimension."""
    if isinstance(pet, DynamicPET):
        if frames is not None:
            frames.check_count(pet.frames.n_frames, pet.name)
            return DynamicPET(pet.image, frames, pet.name)
        return pet
    img = load_image(pet)
    name = image_name(pet)
    if img.ndim != 4:
        raise InputError(f"{name}: expected a 4-D dynamic image, got shape {img.shape}")
    if frames is None:
        if sidecar is None:
            if not isinstance(pet, str | Path):
                raise InputError(f"{name}: frame timing needed (pass frames=FrameTiming(...) or a sidecar)")
            sidecar = sidecar_path(pet)
            if not Path(sidecar).exists() and Path(pet).name.lower().endswith(".v"):
                from ..ecat import ecat_frames  # noqa: PLC0415 - ECAT7: frame times from the subheaders

                sidecar = None
                frames = ecat_frames(pet)
            elif not Path(sidecar).exists():
                raise InputError(f"{name}: no frame timing: BIDS sidecar {sidecar} not found "
                                 "(give frame times explicitly)")
        if frames is None:
            frames = FrameTiming.from_bids_json(sidecar)
    frames.check_count(int(img.shape[3]), name)
    return DynamicPET(img, frames, name)


def mask_from_values(data: np.ndarray, name: str, what: str = "mask",
                     threshold: float | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The boolean mask of a 3-D array by the one mask rule, and a description.

    - **fractional** masks (float values in [0, 1], some strictly between 0 and 1: probabilistic or
      interpolated masks): voxels with a value ``>= threshold`` (default :data:`DEFAULT_MASK_THRESHOLD`, 0.5);
    - **binary / integer** masks (every finite value a whole number): every non-zero voxel (the threshold does
      not apply);
    - other values (fractions outside [0, 1]) are an :class:`InputError`.  NaN counts as outside.
    """
    thr = DEFAULT_MASK_THRESHOLD if threshold is None else float(threshold)
    if not 0.0 < thr <= 1.0:
        raise InputError(f"mask_threshold (--mask-threshold) must be in (0, 1], got {threshold}")
    finite = np.isfinite(data)
    vals = np.asarray(data[finite], dtype=np.float64)
    whole = bool(np.all(vals == np.round(vals)))
    if whole:
        m = finite & (np.nan_to_num(data) != 0)
        info = {"rule": "non-zero", "threshold": None}
    else:
        if vals.min() < 0 or vals.max() > 1:
            raise InputError(f"{name}: {what} has fractional values outside [0, 1] ({vals.min():.4g} to "
                             f"{vals.max():.4g}): give a binary/integer mask or probabilities in [0, 1]")
        m = finite & (np.nan_to_num(data) >= thr - 1e-7)
        info = {"rule": f"fractional, >= {thr:g}", "threshold": thr,
                "n_nonzero": int((finite & (np.nan_to_num(data) > 0)).sum())}
    info["n_voxels"] = int(m.sum())
    info["file"] = name
    return m, info


def load_mask(mask: ImageLike, like: nib.spatialimages.SpatialImage, like_name: str,
              what: str = "mask", threshold: float | None = None,
              info: dict[str, Any] | None = None) -> np.ndarray:
    """A boolean 3-D mask from an image, checked against the space of ``like``, by the rule of
    :func:`mask_from_values` (fractional masks: ``>= threshold``, default 0.5; binary/integer: non-zero).
    The voxel count and rule are logged and, if ``info`` is given, stored in it."""
    img = load_image(mask)
    name = image_name(mask)
    if tuple(img.shape[:3]) == tuple(like.shape[:3]) and np.allclose(img.affine, like.affine, atol=1e-3):
        data = image_data(img, name)
    else:  # another voxel order (reoriented) or another grid (nearest neighbour); refused outside the FOV
        from ..conform import conform_to  # noqa: PLC0415 - conform imports io

        data, _ = conform_to(mask, like, "mask", name)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{name}: {what} must be 3-D, got shape {data.shape}")
    m, desc = mask_from_values(data, name, what, threshold)
    if not m.any():
        extra = f" at or above {desc['threshold']:g}" if desc["threshold"] is not None else " non-zero"
        raise InputError(f"{name}: {what} is empty (no voxel{extra})")
    if desc["threshold"] is not None:
        log.info("%s %s: %d voxels (fractional mask: %d voxels > 0, %d at or above the threshold %g)", what,
                 name, desc["n_voxels"], desc["n_nonzero"], desc["n_voxels"], desc["threshold"])
    else:
        log.info("%s %s: %d voxels (non-zero)", what, name, desc["n_voxels"])
    if info is not None:
        info.update(desc)
    return m


@dataclass
class Masker:
    """Maps between 3-D images and vectors over in-mask voxels (C order of the mask)."""

    mask: np.ndarray
    affine: np.ndarray
    header: Any = None

    @property
    def n_voxels(self) -> int:
        return int(self.mask.sum())

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mask.shape)

    def transform(self, data: np.ndarray) -> np.ndarray:
        """(X, Y, Z[, F]) array -> (V[, F]) array over in-mask voxels."""
        return np.asarray(data)[self.mask]

    def inverse(self, values: np.ndarray, fill: float = np.nan, dtype=np.float32) -> np.ndarray:
        """(V[, k]) values -> (X, Y, Z[, k]) array, ``fill`` outside the mask."""
        values = np.asarray(values)
        out = np.full(self.mask.shape + values.shape[1:], fill, dtype=dtype)
        out[self.mask] = values
        return out

    def to_image(self, values: np.ndarray, fill: float = np.nan, dtype=np.float32) -> nib.Nifti1Image:
        img = nib.Nifti1Image(self.inverse(values, fill, dtype), self.affine)
        img.header.set_xyzt_units("mm", "sec")
        return img


def write_image(img: nib.Nifti1Image, path: str | Path, overwrite: bool = True) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path}: exists and overwrite=False")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path
