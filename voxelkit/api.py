"""The Python API: ``fit`` (4-D image -> parametric maps) and ``fit_tacs`` (regional TAC table -> rows).

One vocabulary with the CLI and the sidecars: ``reference=`` (a mask image or a TAC / a column name),
``k2prime=`` (a number in 1/min, ``"median"``, a high-binding region: mask image for ``fit``, column name for
``fit_tacs``; resolved by :func:`voxelkit.models.k2prime.resolve_k2prime`), ``mask=`` and model options named as
the model constructors name them (:mod:`voxelkit.models.options`).  Images may be paths, nibabel images or
``(array, affine)`` pairs; masks also 3-D boolean arrays on the PET's grid.

Deprecated (one release; a warning is logged): ``fit(k2prime_mask=...)`` -> ``k2prime=``;
``fit_tacs(ref=...)`` -> ``reference=``; ``fit_tacs(k2prime_region=...)`` -> ``k2prime=``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .backend import get_backend
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
from .models.k2prime import K2PRIME_ESTIMATING_MODELS, resolve_k2prime

log = logging.getLogger("voxelkit")

#: Models that take a k2' region (kept for callers of the old name).
K2PRIME_REGION_MODELS = K2PRIME_ESTIMATING_MODELS


#: Deprecated keywords already warned about in this process (each is logged once, not once per scan).
_WARNED: set[str] = set()


def _deprecated(old: str, new: str) -> None:
    if old in _WARNED:
        return
    _WARNED.add(old)
    log.warning("DEPRECATED: %s is deprecated and will be removed in the next release; use %s", old, new)


def _take_alias(options: dict[str, Any], old: str, new: str, value: Any, hint: str) -> Any:
    """``value`` of keyword ``new``, or (deprecated) of ``old`` from ``options``; both given is an error."""
    if old not in options:
        return value
    alias = options.pop(old)
    _deprecated(f"{old}=", hint)
    if alias is None:
        return value
    if value is not None:
        raise InputError(f"give only one source of k2' ({new}=), not both {new} and {old}"
                         if new == "k2prime" else f"give {new}= only (not both {new} and {old})")
    return alias


def _mask_image(mask: Any, like: nib.spatialimages.SpatialImage) -> Any:
    """A 3-D array mask on the PET's grid as an image with the PET's affine; anything else unchanged."""
    if isinstance(mask, np.ndarray) and mask.ndim == 3:
        if mask.shape != tuple(like.shape[:3]):
            raise InputError(f"mask array has shape {mask.shape}, the PET image {tuple(like.shape[:3])}")
        return nib.Nifti1Image(np.asarray(mask).astype(np.uint8 if mask.dtype == bool else np.float32), like.affine)
    return mask


def _is_mask_like(value: Any) -> bool:
    return (isinstance(value, str | Path) or hasattr(value, "affine")
            or (isinstance(value, tuple) and len(value) == 2)
            or (isinstance(value, np.ndarray) and value.ndim == 3))


def region_mean_tac(pet: DynamicPET, data: np.ndarray, mask: Any, what: str, *,
                    mask_threshold: float | None = None,
                    info: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Mean TAC over the finite voxels of a mask image (checked against the PET's space), the 3-D mask and a
    description.  Fractional masks: voxels ``>= mask_threshold`` (default 0.5; see
    :func:`voxelkit.io.mask_from_values`).  ``info`` (if given) receives the rule and voxel counts.
    Raises :class:`InputError` naming the mask file when nothing usable is inside."""
    fname = mask.get_filename() if hasattr(mask, "get_filename") else None  # an image read once, named by its file
    where = str(mask) if isinstance(mask, str | Path) else (fname or f"{what} image")
    desc: dict[str, Any] = {}
    m = load_mask(_mask_image(mask, pet.image), pet.image, pet.name, what=what, threshold=mask_threshold, info=desc)
    tac, desc["n_used"] = mean_of_finite_rows(data[m], where, what, pet.name)
    if info is not None:
        info.update(desc)
    return tac, m, f"mean of {desc['n_used']} voxels in {where}"


def mean_of_finite_rows(rows: np.ndarray, where: str, what: str, source: str) -> tuple[np.ndarray, int]:
    """The region TAC rule: the float64 mean over the voxels (rows, C order) finite in every frame, and how many
    there were.  Raises :class:`InputError` (naming ``where`` and ``source``) when none is finite or the mean has
    no positive frame.  Used by :func:`region_mean_tac` and by the chunked fits (:mod:`voxelkit.bigfit`)."""
    rows = np.asarray(rows, dtype=np.float64)
    finite = np.isfinite(rows).all(axis=1)
    if not finite.any():
        raise InputError(f"{where}: every {what} voxel has non-finite values in {source}")
    tac = rows[finite].mean(axis=0)
    if not (tac > 0).any():
        raise InputError(f"{where}: the {what} has no positive activity in {source}")
    return tac, int(finite.sum())


def reference_tac(pet: DynamicPET, data: np.ndarray, reference: Any, *, mask_threshold: float | None = None,
                  info: dict[str, Any] | None = None) -> tuple[np.ndarray, str]:
    """The reference TAC: the mean over a reference mask (path, image, ``(array, affine)`` or 3-D array on the
    PET's grid; fractional masks: voxels ``>= mask_threshold``, default 0.5), or a given TAC (one value per
    frame).  A region of fewer than :data:`voxelkit.io.MIN_REFERENCE_VOXELS` voxels gets a warning.  ``info``
    receives the mask's rule and voxel count (``n_voxels``, ``rule``, ``threshold``, ``file``)."""
    if _is_mask_like(reference):
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


def fit(pet: ImageLike | DynamicPET, reference: Any, model: str = "logan", mask: Any = None, *,
        frames: FrameTiming | None = None, device: str | None = None, k2prime: Any = None,
        chunked: bool | None = None, **options: Any) -> ModelFit:
    """Fit ``model`` to every voxel of a dynamic PET image.

    Parameters
    ----------
    pet : 4-D image: a path, a nibabel image or ``(array, affine)``; frame times from its BIDS sidecar unless
        ``frames`` is given (required for arrays).
    reference : reference-region mask (path, image, ``(array, affine)`` or 3-D boolean array on the PET's grid;
        its mean TAC is used) or a TAC (one value per frame).
    model : ``logan``, ``mrtm``, ``mrtm2``, ``srtm``, ``srtm2``, ``ratio``, ``lpntpet``, ``lpntpet2``
        (``voxelkit.models.MODELS``).
    mask : brain mask (image, path, ``(array, affine)`` or 3-D boolean array); default all voxels whose signal is
        finite and non-zero in some frame.
    k2prime : reference efflux rate k2' (1/min), ``"median"`` (estimated from the voxels; see
        :mod:`voxelkit.models.k2prime`), or a high-binding region's mask (path, image, 3-D array): k2' from one
        fit of its mean TAC (MRTM for MRTM2/lp-ntPET2, SRTM for SRTM2).  ``k2prime_mask=`` is a deprecated alias.
    mask_threshold : fractional (0-1) masks (reference, brain, k2' region): voxels ``>= mask_threshold`` are
        inside (default 0.5); binary/integer masks: every non-zero voxel.  Voxel counts go to ``fit.info``.
    options : model options (``tstar`` minutes, ``window`` (start, end) minutes, ``k2prime_window`` (start, end)
        minutes, ``weights``, ``integration``...; see :mod:`voxelkit.models.options`).
    chunked : fit in z-slabs with bounded memory (:func:`voxelkit.bigfit.fit_chunked`); default (None): by itself
        for a ``.zarr`` store or an uncompressed ``.nii`` over 1 GiB when the model fits voxels independently.

    ``fit.map("bp_nd")`` is a 3-D image in the PET's space; ``fit.params`` the per-voxel arrays.  ``fit.info``
    records the reference (``reference``, ``reference_mask``: rule and voxel count), the brain mask, the k2'
    estimate (``k2prime``, ``k2prime_source``, ``k2prime_method``), the injection offset and the PET file;
    ``fit.qc()`` summarises how many voxels failed.
    """
    k2prime = _take_alias(options, "k2prime_mask", "k2prime", k2prime, "k2prime=<mask image>")
    if chunked or (chunked is None and isinstance(pet, str | Path)):
        from . import bigfit  # noqa: PLC0415

        if chunked or bigfit.is_zarr(pet) or (bigfit.is_independent(model, k2prime) and bigfit.should_chunk(pet)):
            if k2prime is not None:
                options["k2prime"] = k2prime
            return bigfit.fit_chunked(pet, reference, model, mask, frames=frames, device=device, **options)
    mask_threshold = options.pop("mask_threshold", None)
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
        m = load_mask(_mask_image(mask, dpet.image), dpet.image, dpet.name, what="brain mask",
                      threshold=mask_threshold, info=bm)
        extra_info["brain_mask"] = bm
    masker = Masker(m, dpet.affine)

    def region(value: Any) -> tuple[np.ndarray, str, dict[str, Any]]:
        if not _is_mask_like(value):
            raise InputError(f"k2prime: expected a rate in 1/min, 'median' or a high-binding region's mask image, "
                             f"got {type(value).__name__}")
        km: dict[str, Any] = {}
        tac, _, desc = region_mean_tac(dpet, data, value, "k2' region mask", mask_threshold=mask_threshold, info=km)
        return tac, desc, {"k2prime_mask": km}

    k2_kwargs, k2_info = resolve_k2prime(k2prime, model, region)
    extra_info.update(k2_info)
    mdl = get_model(model, device=device, **options, **k2_kwargs)
    tacs = masker.transform(data)
    result = mdl.fit(tacs, ref_tac, dpet.frames, masker=masker)
    result.info.update(reference=ref_desc, pet=dpet.name, injection_offset_s=dpet.frames.injection_offset_s,
                       mask_threshold=DEFAULT_MASK_THRESHOLD if mask_threshold is None else float(mask_threshold),
                       **extra_info)
    return result


def fit_tacs(tacs: str | Path | TACTable, reference: str | np.ndarray | None = None, model: str = "logan", *,
             regions: list[str] | None = None, weights: str | np.ndarray | None = None,
             device: str | None = None, k2prime: Any = None, **options: Any) -> ModelFit:
    """Fit ``model`` to each regional TAC of a TSV table (``frame_start``/``frame_end`` in seconds).

    ``reference`` names the reference column (or is a TAC); ``ref=`` is a deprecated alias.  ``weights`` is a
    scheme name, a column name of the table (then that column is not a region), or an array.  Regions default to
    all other columns.  ``k2prime``: a number (1/min), ``"median"`` (over the fitted regions), or the column name
    of a high-binding region whose fit gives k2' (MRTM for MRTM2/lp-ntPET2, SRTM for SRTM2; the column need not
    be among the fitted regions); ``k2prime_region=`` is a deprecated alias.  ``device``: as in :func:`fit`
    (None: ``$VOXELKIT_DEVICE`` or ``auto``); ``auto`` keeps a table of fewer than
    :data:`voxelkit.backend.AUTO_GPU_MIN_ITEMS` regions on the CPU (:func:`voxelkit.backend.get_backend`)."""
    reference = _take_alias(options, "ref", "reference", reference, "reference=<column>")
    k2prime = _take_alias(options, "k2prime_region", "k2prime", k2prime, "k2prime=<column>")
    if reference is None:
        raise InputError("fit_tacs needs reference= (the reference region's column or TAC)")
    table = tacs if isinstance(tacs, TACTable) else read_tac_table(tacs)
    ref_tac = table.column(reference) if isinstance(reference, str) else np.asarray(reference, dtype=float)
    if not np.isfinite(ref_tac).all():
        what = f"column {reference!r}" if isinstance(reference, str) else "the given reference TAC"
        raise InputError(f"{table.source}: reference {what} has non-finite values at frames "
                         f"{np.flatnonzero(~np.isfinite(ref_tac)).tolist()}")
    skip = {reference} if isinstance(reference, str) else set()
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

    def region(value: Any) -> tuple[np.ndarray, str, dict[str, Any]]:
        if isinstance(value, str):
            return table.column(value), f"column {value!r} of {table.source}", {}
        sel = np.asarray(value)
        if sel.dtype != bool or sel.shape != (len(regions),):
            raise InputError(f"{table.source}: k2prime must be a rate in 1/min, 'median', a column name or a boolean "
                             f"mask over the {len(regions)} fitted regions")
        rows = arr[sel]
        rows = rows[np.isfinite(rows).all(axis=1)]
        if not rows.shape[0]:
            raise InputError(f"{table.source}: the k2' region mask selects no region with finite values")
        names = [r for r, s in zip(regions, sel, strict=True) if s]
        return rows.mean(axis=0), f"mean of regions {', '.join(names)} of {table.source}", {}

    k2_kwargs, k2_info = resolve_k2prime(k2prime, model, region)
    mdl = get_model(model, device=get_backend(device, n_items=arr.shape[0]), **options, **k2_kwargs)
    result = mdl.fit(arr, ref_tac, table.frames, names=list(regions))
    result.info.update(tacs=table.source, **k2_info)
    return result
