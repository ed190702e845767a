"""Images <-> voxel matrices, masks, TAC tables and output writing.

Internally data are 2-D: (voxels x frames) float32 for dynamic PET, (voxels,) for maps.  A :class:`Masker`
remembers the 3-D mask, shape and affine so that maps can be put back into images.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .frames import FrameTiming

ImageLike = str | Path | nib.spatialimages.SpatialImage


class InputError(ValueError):
    """Bad user input; the message names the file and the problem."""


def image_name(img: ImageLike) -> str:
    if isinstance(img, str | Path):
        return str(img)
    fname = img.get_filename() if hasattr(img, "get_filename") else None
    return fname or f"<in-memory image of shape {img.shape}>"


def load_image(img: ImageLike) -> nib.spatialimages.SpatialImage:
    """A nibabel image from a path or an image (nilearn's "Niimg-like", without the import cost)."""
    if isinstance(img, str | Path):
        path = Path(img)
        if not path.exists():
            raise InputError(f"{path}: no such file")
        try:
            return nib.load(str(path))
        except Exception as exc:
            raise InputError(f"{path}: cannot read image ({exc})") from exc
    if hasattr(img, "affine") and hasattr(img, "shape"):
        return img
    raise InputError(f"expected an image path or a nibabel image, got {type(img).__name__}")


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
        raise InputError(f"affine mismatch between {other_name} and {ref_name}:\n"
                         f"{other_name}:\n{np.array2string(other.affine, precision=4)}\n"
                         f"{ref_name}:\n{np.array2string(ref.affine, precision=4)}")


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
        return np.asarray(self.image.dataobj, dtype=np.float32)


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
            if not Path(sidecar).exists():
                raise InputError(f"{name}: no frame timing: BIDS sidecar {sidecar} not found "
                                 "(give frame times explicitly)")
        frames = FrameTiming.from_bids_json(sidecar)
    frames.check_count(int(img.shape[3]), name)
    return DynamicPET(img, frames, name)


def load_mask(mask: ImageLike, like: nib.spatialimages.SpatialImage, like_name: str,
              what: str = "mask") -> np.ndarray:
    """A boolean 3-D mask from an image, checked against the space of ``like``."""
    img = load_image(mask)
    name = image_name(mask)
    check_same_space(like, img, like_name, name)
    data = np.asarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{name}: {what} must be 3-D, got shape {data.shape}")
    m = np.isfinite(data) & (data != 0)
    if not m.any():
        raise InputError(f"{name}: {what} is empty (no non-zero voxel)")
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


def write_json(obj: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@dataclass
class TACTable:
    """Regional time-activity curves: frame timing plus one curve per column (any activity unit)."""

    frames: FrameTiming
    columns: dict[str, np.ndarray]
    source: str = "<table>"

    def column(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise InputError(f"{self.source}: no column {name!r}; columns are {', '.join(self.columns)}")
        return self.columns[name]


def read_tsv(path: str | Path, rows_desc: str = "row") -> dict[str, list[str]]:
    """A tab-separated table as {column: values (stripped strings)} in header order; blank lines are skipped.
    Errors name the file (and the line whose field count differs from the header)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    with path.open(newline="") as fh:
        rows = [r for r in csv.reader(fh, delimiter="\t") if r and any(c.strip() for c in r)]
    if len(rows) < 2:
        raise InputError(f"{path}: needs a header and at least one {rows_desc}")
    header = [h.strip() for h in rows[0]]
    cols: dict[str, list[str]] = {h: [] for h in header}
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise InputError(f"{path}: line {lineno} has {len(row)} fields, header has {len(header)}")
        for h, v in zip(header, row, strict=True):
            cols[h].append(v.strip())
    return cols


def read_tac_table(path: str | Path) -> TACTable:
    """Read a TSV with ``frame_start`` and ``frame_end`` (seconds) and one column per region."""
    path = Path(path)
    cols = read_tsv(path, "frame row")
    for need in ("frame_start", "frame_end"):
        if need not in cols:
            raise InputError(f"{path}: missing column {need!r} (BIDS-PET derivatives TAC table); "
                             f"columns are {', '.join(cols)}")
    data: dict[str, list[float]] = {h: [] for h in cols}
    for k in range(len(cols["frame_start"])):  # row by row, so the first bad cell is the one reported
        for h, vals in cols.items():
            v = vals[k]
            try:
                data[h].append(float(v) if v.lower() not in ("n/a", "na", "nan", "") else np.nan)
            except ValueError as exc:
                raise InputError(f"{path}: line {k + 2}, column {h!r}: {v!r} is not a number") from exc
    arrays = {h: np.asarray(v, dtype=float) for h, v in data.items()}
    frames = FrameTiming.from_start_end(arrays.pop("frame_start"), arrays.pop("frame_end"), source=str(path))
    return TACTable(frames, arrays, str(path))


def write_tsv(rows: list[dict], path: str | Path | None, columns: list[str] | None = None) -> str:
    """Write rows as TSV (``path`` None: return the text only)."""
    if columns is None:
        columns = []
        for r in rows:
            columns.extend(k for k in r if k not in columns)
    lines = ["\t".join(columns)]
    for r in rows:
        lines.append("\t".join(_fmt(r.get(c, "n/a")) for c in columns))
    text = "\n".join(lines) + "\n"
    if path is not None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return text


def _fmt(v: Any) -> str:
    if isinstance(v, float | np.floating):
        return "n/a" if not np.isfinite(v) else f"{float(v):.6g}"
    return str(v)
