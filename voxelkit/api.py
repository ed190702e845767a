"""The Python API: ``fit`` (4-D image -> parametric maps) and ``fit_tacs`` (regional TAC table -> rows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .frames import FrameTiming
from .io import (
    DynamicPET,
    ImageLike,
    InputError,
    Masker,
    TACTable,
    load_mask,
    load_pet,
    read_tac_table,
)
from .models import ModelFit, get_model


def reference_tac(pet: DynamicPET, data: np.ndarray, reference: Any) -> tuple[np.ndarray, str]:
    """The reference TAC: the mean over a reference mask image, or a given TAC (one value per frame)."""
    if isinstance(reference, str | Path) or hasattr(reference, "affine"):
        ref_mask = load_mask(reference, pet.image, pet.name, what="reference region mask")
        tac = data[ref_mask].astype(np.float64)
        finite_rows = np.isfinite(tac).all(axis=1)
        if not finite_rows.any():
            raise InputError(f"{reference}: every reference voxel has non-finite values in {pet.name}")
        tac = tac[finite_rows].mean(axis=0)
        where = reference if isinstance(reference, str | Path) else "reference mask image"
        return tac, f"mean of {int(finite_rows.sum())} voxels in {where}"
    tac = np.asarray(reference, dtype=float).reshape(-1)
    pet.frames.check_count(tac.size, "the reference TAC")
    return tac, "given TAC"


def fit(pet: ImageLike | DynamicPET, reference: Any, model: str = "logan", mask: ImageLike | None = None, *,
        frames: FrameTiming | None = None, device: str | None = None, **options: Any) -> ModelFit:
    """Fit ``model`` to every voxel of a dynamic PET image.

    Parameters
    ----------
    pet : 4-D image (path or nibabel image); frame times from its BIDS sidecar unless ``frames`` is given.
    reference : reference-region mask image (its mean TAC is used) or a TAC (one value per frame).
    model : ``logan`` (more in ``voxelkit.models.MODELS``).
    mask : brain mask; default all voxels whose signal is finite and non-zero in some frame.
    options : model options (``tstar`` minutes, ``k2prime`` 1/min, ``window``, ``weights``...).
    """
    dpet = load_pet(pet, frames=frames)
    data = dpet.data()
    ref_tac, ref_desc = reference_tac(dpet, data, reference)
    if mask is None:
        m = np.isfinite(data).all(axis=3) & (np.abs(np.nan_to_num(data)).sum(axis=3) > 0)
        if not m.any():
            raise InputError(f"{dpet.name}: no voxel with finite, non-zero signal")
    else:
        m = load_mask(mask, dpet.image, dpet.name, what="brain mask")
    masker = Masker(m, dpet.affine)
    tacs = masker.transform(data)
    mdl = get_model(model, device=device, **options)
    result = mdl.fit(tacs, ref_tac, dpet.frames, masker=masker)
    result.info.update(reference=ref_desc, pet=dpet.name)
    return result


def fit_tacs(tacs: str | Path | TACTable, ref: str | np.ndarray, model: str = "logan", *,
             regions: list[str] | None = None, weights: str | np.ndarray | None = None,
             device: str | None = "cpu", **options: Any) -> ModelFit:
    """Fit ``model`` to each regional TAC of a TSV table (``frame_start``/``frame_end`` in seconds).

    ``ref`` names the reference column (or is a TAC).  ``weights`` is a scheme name, a column name of the
    table (then that column is not a region), or an array.  Regions default to all other columns."""
    table = tacs if isinstance(tacs, TACTable) else read_tac_table(tacs)
    ref_tac = table.column(ref) if isinstance(ref, str) else np.asarray(ref, dtype=float)
    skip = {ref} if isinstance(ref, str) else set()
    if isinstance(weights, str) and weights in table.columns:
        skip.add(weights)
        weights = table.columns[weights]
    if regions is None:
        regions = [c for c in table.columns if c not in skip]
    if not regions:
        raise InputError(f"{table.source}: no region columns besides the reference")
    arr = np.stack([table.column(r) for r in regions])
    if weights is not None:
        options["weights"] = weights
    mdl = get_model(model, device=device, **options)
    return mdl.fit(arr, ref_tac, table.frames, names=list(regions))
