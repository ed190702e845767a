"""Masks and label atlases onto the PET voxel grid.

:func:`conform_to` accepts a mask or atlas that is

- on the PET grid already (returned as is);
- on the same world grid in another voxel order (axes permuted and/or flipped, e.g. RAS vs LPS storage):
  reoriented, which moves voxels without interpolation;
- on another grid (another voxel size, field of view or orientation), e.g. a 1 mm atlas for 2 mm PET:
  resampled by nearest neighbour through ``nilearn.image.resample_img`` (labels stay labels).

It refuses (``InputError``, one line) only an image whose non-zero voxels lie entirely outside the PET field of
view.  Whatever was done is logged once per file and grid and kept for the provenance (:func:`notes`).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import io_orientation, ornt_transform

from .io import ImageLike, InputError, image_data, image_name, load_image

log = logging.getLogger("voxelkit")

KINDS = ("mask", "labels")
_ATOL = 1e-3  # mm, as io.check_same_space

_lock = threading.Lock()
_cache: dict[tuple, tuple[np.ndarray, str]] = {}
_notes: dict[str, str] = {}


def _grid(img: Any) -> str:
    zooms = nib.affines.voxel_sizes(img.affine)
    axcodes = "".join(nib.aff2axcodes(img.affine))
    return f"{'x'.join(str(int(s)) for s in img.shape[:3])} voxels of {' x '.join(f'{z:.3g}' for z in zooms)} mm, " \
           f"{axcodes}"


def _data3d(img: Any, name: str, kind: str) -> np.ndarray:
    data = image_data(img, name)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{name}: a {kind} must be 3-D, got shape {data.shape}")
    return np.asarray(data)


def _same_grid(a: Any, b: Any) -> bool:
    return tuple(a.shape[:3]) == tuple(b.shape[:3]) and np.allclose(a.affine, b.affine, atol=_ATOL)


def _overlap(data: np.ndarray, affine: np.ndarray, like: Any) -> float:
    """Fraction of the non-zero voxels of ``data`` whose centres fall inside the grid of ``like`` (0..1)."""
    ijk = np.argwhere(np.isfinite(data) & (data != 0))
    if ijk.size == 0:
        return 0.0
    vox = nib.affines.apply_affine(np.linalg.inv(like.affine) @ affine, ijk)
    shape = np.asarray(like.shape[:3])
    inside = np.all((vox > -0.5) & (vox < shape - 0.5), axis=1)
    return float(inside.mean())


def conform_to(img: ImageLike, like: Any, kind: str = "mask", name: str | None = None) -> tuple[np.ndarray, str]:
    """The 3-D array of ``img`` on the voxel grid of ``like`` (a PET image, 3-D or 4-D) and a note saying what was
    done ("" when nothing was needed).

    Parameters
    ----------
    img : mask or label atlas (path or nibabel image).
    like : the image whose grid (``shape[:3]``, ``affine``, mm) the result follows.
    kind : ``"mask"`` or ``"labels"``; both are resampled by nearest neighbour (values are never blended).
    name : how errors and notes call ``img`` (default its file name).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    name = name or image_name(img)
    key = None
    if isinstance(img, str | Path) and Path(img).exists():
        st = Path(img).stat()
        key = (str(Path(img).resolve()), st.st_mtime_ns, st.st_size, tuple(like.shape[:3]),
               np.round(np.asarray(like.affine, float), 4).tobytes(), kind)
        with _lock:
            hit = _cache.get(key)
        if hit is not None:
            return hit[0].copy(), hit[1]
    src = load_image(img)
    data = _data3d(src, name, kind)
    if _same_grid(src, like):
        return data, ""
    result = _reorient(src, data, like)
    if result is not None:
        out, how = result
        note = f"{name}: same world grid as the PET in another voxel order: reoriented ({how}), no interpolation"
    else:
        frac = _overlap(data, src.affine, like)
        if frac == 0.0:
            raise InputError(f"{name}: does not overlap the PET field of view (its {_grid(src)}; PET {_grid(like)})")
        out = _resample(src, data, like, kind)
        note = (f"{name}: resampled from {_grid(src)} to the PET grid ({_grid(like)}) by nearest neighbour "
                f"(nilearn.image.resample_img, interpolation='nearest')")
        if frac < 0.999:
            note += f"; {100 * (1 - frac):.1f} % of its non-zero voxels lie outside the PET field of view"
        if not (np.isfinite(out) & (out != 0)).any():
            raise InputError(f"{name}: no non-zero voxel left on the PET grid after resampling ({_grid(src)} -> "
                             f"{_grid(like)})")
    with _lock:
        first = _notes.get(name) != note
        _notes[name] = note
        if key is not None:
            _cache[key] = (out, note)
    if first:
        log.info("%s", note)
    return out.copy() if key is not None else out, note


def _reorient(src: Any, data: np.ndarray, like: Any) -> tuple[np.ndarray, str] | None:
    """``data`` with axes permuted/flipped onto ``like``'s grid when both describe the same world voxels."""
    try:
        tr = ornt_transform(io_orientation(src.affine), io_orientation(like.affine))
    except ValueError:
        return None
    perm = [int(a) for a in tr[:, 0]]
    flips = [int(f) for f in tr[:, 1]]
    if perm == [0, 1, 2] and all(f == 1 for f in flips):
        return None
    new_shape = tuple(int(data.shape[perm.index(k)]) for k in range(3))
    if new_shape != tuple(like.shape[:3]):
        return None
    new_affine = src.affine @ nib.orientations.inv_ornt_aff(tr, data.shape)
    if not np.allclose(new_affine, like.affine, atol=_ATOL):
        return None
    out = nib.orientations.apply_orientation(data, tr)
    axes = "xyz"
    moved = ", ".join(f"axis {i} -> {axes[int(a)]}{'' if f == 1 else ' flipped'}"
                      for i, (a, f) in enumerate(zip(tr[:, 0], tr[:, 1], strict=True)))
    return np.ascontiguousarray(out), moved


def _resample(src: Any, data: np.ndarray, like: Any, kind: str) -> np.ndarray:
    from nilearn.image import resample_img  # noqa: PLC0415 - heavy import, only when needed

    work = data
    if kind == "mask":  # fractional masks keep their values (io.load_mask thresholds them afterwards)
        work = np.nan_to_num(data.astype(np.float32)) if not np.issubdtype(data.dtype, np.integer) else data
    elif not np.issubdtype(data.dtype, np.integer):
        work = np.nan_to_num(data).round().astype(np.int32)
    img = nib.Nifti1Image(work, src.affine)
    res = resample_img(img, target_affine=np.asarray(like.affine), target_shape=tuple(like.shape[:3]),
                       interpolation="nearest", force_resample=True, copy_header=True)
    return np.asarray(res.dataobj)


def notes(names: list[Any] | None = None) -> dict[str, str]:
    """What was done to each mask or atlas so far in this process ({name: note}), for provenance; ``names``
    (paths or names, None entries ignored) restricts it to those."""
    with _lock:
        if names is None:
            return dict(_notes)
        keep = {str(n) for n in names if n is not None}
        return {k: v for k, v in _notes.items() if k in keep}


def clear() -> None:
    """Forget cached results and notes (tests)."""
    with _lock:
        _cache.clear()
        _notes.clear()
