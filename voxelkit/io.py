"""Images <-> voxel matrices, masks, TAC tables and output writing.

Internally data are 2-D: (voxels x frames) float32 for dynamic PET, (voxels,) for maps.  A :class:`Masker`
remembers the 3-D mask, shape and affine so that maps can be put back into images.
"""

from __future__ import annotations

import csv
import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .frames import FrameTiming

ImageLike = str | Path | nib.spatialimages.SpatialImage

log = logging.getLogger("voxelkit")

#: Default threshold of fractional (probabilistic, 0-1) masks: voxels with a value >= this are inside.
DEFAULT_MASK_THRESHOLD = 0.5
#: A reference region with fewer voxels than this gets a warning (its mean TAC is noisy).
MIN_REFERENCE_VOXELS = 20


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
        check_input_file(path, "image")
        if path.name.lower().endswith(".v"):  # ECAT7: nibabel.load does not open it (frames: voxelkit.ecat)
            from .ecat import load_ecat  # noqa: PLC0415 - ecat imports io

            return load_ecat(path)
        try:
            return nib.load(str(path))
        except PermissionError:
            raise InputError(f"{path}: cannot read image: permission denied") from None
        except Exception as exc:
            raise InputError(f"{path}: cannot read image ({_one_line(exc)})") from None
    if hasattr(img, "affine") and hasattr(img, "shape"):
        return img
    raise InputError(f"expected an image path or a nibabel image, got {type(img).__name__}")


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
                from .ecat import ecat_frames  # noqa: PLC0415 - ECAT7: frame times from the subheaders

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
        from .conform import conform_to  # noqa: PLC0415 - conform imports io

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
    path = check_input_file(path, "table")
    try:
        with path.open(newline="") as fh:
            rows = [r for r in csv.reader(fh, delimiter="\t") if r and any(c.strip() for c in r)]
    except PermissionError:
        raise InputError(f"{path}: cannot read the table: permission denied") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read the table ({_one_line(exc)})") from None
    if len(rows) < 2:
        raise InputError(f"{path}: needs a header and at least one {rows_desc}")
    header = [h.strip() for h in rows[0]]
    seen: set[str] = set()
    dups = [h for h in header if h in seen or seen.add(h)]  # type: ignore[func-returns-value]
    if dups:
        raise InputError(f"{path}: duplicate column name(s) {', '.join(sorted(set(dups)))} in the header; "
                         "every column needs its own name")
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
    frames.check_plausible()
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
