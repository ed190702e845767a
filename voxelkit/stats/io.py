"""Stats-specific input/output: stacking maps, design tables, atlas look-up tables, null distributions.

Tables are read by the one TSV reader, :mod:`voxelkit.io.tables` (``read_lookup`` is re-exported from there)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from ..io import ImageLike, InputError, Masker, check_same_space, image_data, image_name, load_image, load_mask
from ..io.tables import read_lookup, read_tsv  # noqa: F401 - read_lookup: the look-up table reader, re-exported

log = logging.getLogger("voxelkit")


def _data3d(img: nib.spatialimages.SpatialImage, name: str) -> np.ndarray:
    data = image_data(img, name, np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{name}: expected a 3-D map, got shape {data.shape}")
    return data


def _read_all(imgs: list, names: list[str]) -> list[np.ndarray]:
    """Every map's data, read in threads when there are several (zlib releases the GIL while inflating: 30
    .nii.gz maps of 76,800 voxels in 0.044 s instead of 0.063 s on 2 cores); the first failing map, in order,
    raises."""
    if len(imgs) < 4:
        return [_data3d(img, name) for img, name in zip(imgs, names, strict=True)]
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    from ..threads import n_cpus  # noqa: PLC0415

    with ThreadPoolExecutor(min(n_cpus(), 8)) as pool:
        return list(pool.map(_data3d, imgs, names))


def load_maps(images: Sequence[ImageLike], mask: ImageLike | None = None,
              what: str = "map") -> tuple[np.ndarray, Masker, list[str]]:
    """Stack 3-D maps into an (n maps x V in-mask voxels) float64 array.

    All maps must share the first map's shape and affine (the odd one is named).  Without ``mask`` the mask is
    every voxel that is finite in all maps and non-zero in at least one.  With a mask, it must be in the same
    space and overlap the data (voxels that are non-zero in some map).
    """
    if len(images) == 0:
        raise InputError(f"no {what}s given")
    imgs = [load_image(i) for i in images]
    names = [image_name(i) for i in images]
    ref, ref_name = imgs[0], names[0]
    for img, name in zip(imgs[1:], names[1:], strict=True):
        check_same_space(ref, img, ref_name, name)
    data = np.stack(_read_all(imgs, names))
    support = np.any(np.isfinite(data) & (data != 0), axis=0)
    if mask is None:
        m = support & np.all(np.isfinite(data), axis=0)
        if not m.any():
            raise InputError(f"the {what}s have no voxel that is finite in all maps and non-zero in one")
    else:
        mname = image_name(mask)
        m = load_mask(mask, ref, ref_name)
        if not (m & support).any():
            raise InputError(f"{mname}: mask does not overlap the data (all {what}s are zero or NaN inside it)")
    masker = Masker(m, np.asarray(ref.affine, np.float64), getattr(ref, "header", None))
    return data[:, m].astype(np.float64), masker, names


#: Design-table columns that label the rows (subjects) rather than hold covariates.
ID_COLUMNS = ("participant_id", "subject")


def read_design_table(path: str | Path, map_column: str = "map", map_column_b: str | None = None,
                      ) -> tuple[list[Path], list[Path] | None, dict[str, list[str]], list[str]]:
    """Read a design table: one row per map, a column naming the map file (relative paths are taken relative
    to the table's folder), an optional second map column (then each row's data are map - map_b), and covariate
    columns, returned as strings for :func:`voxelkit.stats.covariates.code_covariates` (which codes numeric and
    categorical columns and rejects ``n/a``).

    Returns ``(maps, maps_b, columns, labels)``: ``columns`` maps every other column (in file order) to its
    values; ``labels`` names each row for messages (the ``participant_id`` or ``subject`` column when there is
    one, else ``line N (map file name)``).
    """
    path = Path(path)
    cols = read_tsv(path)
    for col in (map_column, map_column_b):
        if col is not None and col not in cols:
            raise InputError(f"{path}: no column {col!r}; columns are {', '.join(cols)}")
    if map_column_b is not None and map_column_b == map_column:
        raise InputError(f"{path}: the map column and the second map column are both {map_column!r}")

    def resolve(v: str) -> Path:
        p = Path(v)
        return p if p.is_absolute() else path.parent / p

    raw_maps = cols.pop(map_column)
    maps = [resolve(v) for v in raw_maps]
    maps_b = [resolve(v) for v in cols.pop(map_column_b)] if map_column_b else None
    id_col = next((c for c in ID_COLUMNS if c in cols), None)
    if id_col is not None:
        labels = list(cols[id_col])
    else:
        labels = [f"line {i + 2} ({Path(v).name})" for i, v in enumerate(raw_maps)]
    return maps, maps_b, cols, labels


def save_null(path: str | Path, **arrays: np.ndarray) -> Path:
    """Write the null distributions as a compressed ``.npz`` (:func:`voxelkit.io.writers.write_null`)."""
    from ..io.writers import write_null  # noqa: PLC0415

    return write_null(path, **arrays)


def load_null(path: str | Path) -> dict[str, np.ndarray]:
    """Read a null-distribution file written by :func:`save_null`."""
    with np.load(path) as f:
        return {k: f[k] for k in f.files}
