"""The Python API: ``fit`` (4-D image -> parametric maps) and ``fit_tacs`` (regional TAC table -> rows)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .frames import FrameTiming
from .io import (
    DEFAULT_MASK_THRESHOLD,
    MIN_REFERENCE_VOXELS,
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

log = logging.getLogger("voxelkit")

#: Models that take a k2' region (``k2prime_region`` for fit_tacs, ``k2prime_mask`` for fit).
K2PRIME_REGION_MODELS = ("mrtm2", "srtm2", "lpntpet2")


def region_mean_tac(pet: DynamicPET, data: np.ndarray, mask: Any, what: str, *,
                    mask_threshold: float | None = None,
                    info: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Mean TAC over the finite voxels of a mask image (checked against the PET's space), the 3-D mask and a
    description.  Fractional masks: voxels ``>= mask_threshold`` (default 0.5; see
    :func:`voxelkit.io.mask_from_values`).  ``info`` (if given) receives the rule and voxel counts.
    Raises :class:`InputError` naming the mask file when nothing usable is inside."""
    where = str(mask) if isinstance(mask, str | Path) else f"{what} image"
    desc: dict[str, Any] = {}
    m = load_mask(mask, pet.image, pet.name, what=what, threshold=mask_threshold, info=desc)
    tac = data[m].astype(np.float64)
    finite_rows = np.isfinite(tac).all(axis=1)
    if not finite_rows.any():
        raise InputError(f"{where}: every {what} voxel has non-finite values in {pet.name}")
    tac = tac[finite_rows].mean(axis=0)
    if not (tac > 0).any():
        raise InputError(f"{where}: the {what} has no positive activity in {pet.name}")
    desc["n_used"] = int(finite_rows.sum())
    if info is not None:
        info.update(desc)
    return tac, m, f"mean of {int(finite_rows.sum())} voxels in {where}"


def reference_tac(pet: DynamicPET, data: np.ndarray, reference: Any, *, mask_threshold: float | None = None,
                  info: dict[str, Any] | None = None) -> tuple[np.ndarray, str]:
    """The reference TAC: the mean over a reference mask image (fractional masks: voxels ``>= mask_threshold``,
    default 0.5), or a given TAC (one value per frame).  A region of fewer than
    :data:`voxelkit.io.MIN_REFERENCE_VOXELS` voxels gets a warning.  ``info`` receives the mask's rule and
    voxel count (``n_voxels``, ``rule``, ``threshold``, ``file``)."""
    if isinstance(reference, str | Path) or hasattr(reference, "affine"):
        desc: dict[str, Any] = {}
        tac, _, text = region_mean_tac(pet, data, reference, "reference region mask", mask_threshold=mask_threshold,
                                       info=desc)
        if desc["n_used"] < MIN_REFERENCE_VOXELS:
            log.warning("WARNING: the reference region %s has only %d voxels (fewer than %d): its mean TAC is "
                        "noisy and every BPND depends on it", desc["file"], desc["n_used"], MIN_REFERENCE_VOXELS)
        if info is not None:
            info.update(desc)
        return tac, text
    tac = np.asarray(reference, dtype=float).reshape(-1)
    pet.frames.check_count(tac.size, "the reference TAC")
    if not np.isfinite(tac).all():
        raise InputError(f"the given reference TAC has non-finite values at frames "
                         f"{np.flatnonzero(~np.isfinite(tac)).tolist()}")
    return tac, "given TAC"


def _check_k2prime_region(model: str, given: bool, option: str) -> None:
    if given and model.lower() not in K2PRIME_REGION_MODELS:
        raise InputError(f"{option} only applies to models {', '.join(K2PRIME_REGION_MODELS)} (k2' from a "
                         f"high-binding region), not {model!r}")


def fit(pet: ImageLike | DynamicPET, reference: Any, model: str = "logan", mask: ImageLike | None = None, *,
        frames: FrameTiming | None = None, device: str | None = None, **options: Any) -> ModelFit:
    """Fit ``model`` to every voxel of a dynamic PET image.

    Parameters
    ----------
    pet : 4-D image (path or nibabel image); frame times from its BIDS sidecar unless ``frames`` is given.
    reference : reference-region mask image (its mean TAC is used) or a TAC (one value per frame).
    model : ``logan``, ``mrtm``, ``mrtm2``, ``srtm``, ``srtm2`` (``voxelkit.models.MODELS``).
    mask : brain mask; default all voxels whose signal is finite and non-zero in some frame.
    k2prime_mask : (MRTM2, SRTM2) mask image of a high-binding region: k2' (1/min) from a fit of its mean TAC
        (MRTM2: MRTM fit of the mean over all its finite voxels; SRTM2: of its voxels inside the brain mask).
    mask_threshold : fractional (0-1) masks (reference, brain, k2' region): voxels ``>= mask_threshold`` are
        inside (default 0.5); binary/integer masks: every non-zero voxel.  Voxel counts go to ``fit.info``.
    options : model options (``tstar`` minutes, ``k2prime`` 1/min or ``"median"``, ``window`` (start, end)
        minutes, ``k2prime_window`` (start, end) minutes, ``weights``, ``integration``...; see
        :mod:`voxelkit.models.options`).

    ``fit.info`` records the reference (``reference``, ``reference_mask``: rule and voxel count), the brain
    mask, the k2' estimate (``k2prime``, ``k2prime_source``), the injection offset and the PET file;
    ``fit.qc()`` summarises how many voxels failed.
    """
    k2p_mask_img = options.pop("k2prime_mask", None)
    mask_threshold = options.pop("mask_threshold", None)
    _check_k2prime_region(model, k2p_mask_img is not None, "k2prime_mask (--k2prime-mask)")
    dpet = load_pet(pet, frames=frames)
    data = dpet.data()
    ref_info: dict[str, Any] = {}
    ref_tac, ref_desc = reference_tac(dpet, data, reference, mask_threshold=mask_threshold, info=ref_info)
    extra_info: dict[str, Any] = {}
    if ref_info:
        extra_info["reference_mask"] = ref_info
    if mask is None:
        m = np.isfinite(data).all(axis=3) & (np.abs(np.nan_to_num(data)).sum(axis=3) > 0)
        if not m.any():
            raise InputError(f"{dpet.name}: no voxel with finite, non-zero signal")
        extra_info["brain_mask"] = {"rule": "finite, non-zero signal in some frame", "n_voxels": int(m.sum())}
    else:
        bm: dict[str, Any] = {}
        m = load_mask(mask, dpet.image, dpet.name, what="brain mask", threshold=mask_threshold, info=bm)
        extra_info["brain_mask"] = bm
    masker = Masker(m, dpet.affine)
    tacs = masker.transform(data)
    if k2p_mask_img is not None:
        km: dict[str, Any] = {}
        k2p_tac, k2p_mask3d, k2p_desc = region_mean_tac(dpet, data, k2p_mask_img, "k2' region mask",
                                                        mask_threshold=mask_threshold, info=km)
        extra_info["k2prime_mask"] = km
        if model.lower() == "mrtm2":
            options.update(k2prime_tac=k2p_tac, k2prime_name=k2p_desc)
        else:
            sel = masker.transform(k2p_mask3d)
            if not sel.any():
                raise InputError(f"{k2p_mask_img}: the k2' region mask has no voxel inside the brain mask")
            options["k2prime_mask"] = sel
    mdl = get_model(model, device=device, **options)
    result = mdl.fit(tacs, ref_tac, dpet.frames, masker=masker)
    result.info.update(reference=ref_desc, pet=dpet.name, injection_offset_s=dpet.frames.injection_offset_s,
                       mask_threshold=DEFAULT_MASK_THRESHOLD if mask_threshold is None else float(mask_threshold),
                       **extra_info)
    return result


def fit_tacs(tacs: str | Path | TACTable, ref: str | np.ndarray, model: str = "logan", *,
             regions: list[str] | None = None, weights: str | np.ndarray | None = None,
             device: str | None = "cpu", **options: Any) -> ModelFit:
    """Fit ``model`` to each regional TAC of a TSV table (``frame_start``/``frame_end`` in seconds).

    ``ref`` names the reference column (or is a TAC).  ``weights`` is a scheme name, a column name of the
    table (then that column is not a region), or an array.  Regions default to all other columns.
    ``k2prime_region`` (MRTM2, SRTM2) names the column of a high-binding region whose fit gives k2'
    (MRTM2: MRTM fit of that column; SRTM2: SRTM fit of that region, which must be among the fitted ones)."""
    table = tacs if isinstance(tacs, TACTable) else read_tac_table(tacs)
    k2p_region = options.pop("k2prime_region", None)
    _check_k2prime_region(model, k2p_region is not None, "k2prime_region (--k2prime-region)")
    ref_tac = table.column(ref) if isinstance(ref, str) else np.asarray(ref, dtype=float)
    if not np.isfinite(ref_tac).all():
        what = f"column {ref!r}" if isinstance(ref, str) else "the given reference TAC"
        raise InputError(f"{table.source}: reference {what} has non-finite values at frames "
                         f"{np.flatnonzero(~np.isfinite(ref_tac)).tolist()}")
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
    if isinstance(k2p_region, str):
        col = table.column(k2p_region)
        if model.lower() == "mrtm2":
            options.update(k2prime_tac=col, k2prime_name=f"column {k2p_region!r} of {table.source}")
        else:
            if k2p_region not in regions:
                raise InputError(f"{table.source}: k2' region {k2p_region!r} must be one of the fitted regions")
            options["k2prime_mask"] = np.asarray([r == k2p_region for r in regions])
    elif k2p_region is not None:
        options["k2prime_mask" if model.lower() != "mrtm2" else "k2prime_region"] = np.asarray(k2p_region, bool)
    mdl = get_model(model, device=device, **options)
    result = mdl.fit(arr, ref_tac, table.frames, names=list(regions))
    result.info.update(tacs=table.source)
    return result
