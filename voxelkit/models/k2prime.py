"""The reference-region efflux rate k2' (1/min): ONE resolver for every way a user gives it, and the estimator
behind ``k2prime="median"``.

What ``k2prime=`` may be (the same in :func:`voxelkit.fit`, :func:`voxelkit.fit_tacs`, the CLI and the models):

- a positive number (1/min), or a numeric string: used as given;
- ``"median"`` (or its synonym ``"auto"``): estimated from the TACs being fitted (see below);
- a high-binding region: for :func:`voxelkit.fit` a mask image (path, nibabel image or 3-D boolean array in the
  PET's space), for :func:`voxelkit.fit_tacs` a column name of the TAC table; the region's **mean TAC** (over its
  finite voxels) is fitted once by the model's k2' pass (MRTM for MRTM2/lp-ntPET2, SRTM for SRTM2) and k2' =
  k2/R1 of that fit;
- a TAC (one value per frame) of such a region.

:func:`resolve_k2prime` turns any of these into the model keywords (``k2prime`` number/"median", or
``k2prime_tac`` + ``k2prime_name``) given a ``lookup`` that the caller supplies for its context (a mask image ->
its mean TAC; a column name -> the column).  The models never see paths or column names.

``"median"`` (the estimator): a first pass of the k2' model (MRTM for MRTM2/lp-ntPET2, SRTM for SRTM2) over
all TACs, over the k2' frames (``k2prime_window``, default all); of the TACs it could fit (status ok,
implausible or grid edge: not failed), those whose **tissue-to-reference ratio** (duration-weighted means over
the same frames; a low-noise DVR proxy) is at or above its ``k2prime_bp_quantile`` quantile (default 0.9) are
selected, and k2' is the **median of their first-pass k2'** (``k2prime_method = "median_over_ratio_selected"``
in ``fit.info`` and the sidecar's ``Info``).  Until this release the selection used the first pass's own BPND
(plus a low-residual cut): that picks the voxels whose noise raised their BPND, and with it their k2'
estimates are biased (on noisy simulated bolus-infusion voxels, k2' 0.066/min for a true 0.1 and BPND of the
high-binding voxels +18 %; the wave-1 demo finding).  Selecting on the ratio, the same voxels give 0.098-0.100/min
(see ``tests/test_api_contract.py`` and README).  As a cross-check, one fit of the selected TACs' mean TAC is
recorded (``k2prime_mean_tac``); a warning is logged when it differs from the median by more than 10 %, and when
fewer than :data:`MIN_SELECTED` voxels are selected (give a high-binding region then).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..backend import chunks
from ..io import InputError
from .status import Status

if TYPE_CHECKING:
    from ..frames import FrameTiming
    from .base import ModelFit, ReferenceModel

log = logging.getLogger("voxelkit")

#: Models whose k2' may be estimated (``"median"``) or come from a region.
K2PRIME_ESTIMATING_MODELS = ("lpntpet2", "mrtm2", "srtm2")
#: Models that take a given k2' (number) at all.
K2PRIME_NUMBER_MODELS = ("logan", "lpntpet2", "mrtm2", "srtm", "srtm2")
#: Synonyms of the estimator keyword.
MEDIAN_WORDS = ("median", "auto")
#: The method recorded in ``fit.info["k2prime_method"]`` for ``k2prime="median"``.
MEDIAN_METHOD = "median_over_ratio_selected"
#: Relative difference between the median and the mean-TAC cross-check above which a warning is logged.
DISAGREE = 0.10
#: First-pass status codes that leave a TAC out of the selection (no usable fit at all).
FAILED = (int(Status.TOO_FEW_FRAMES), int(Status.SINGULAR), int(Status.NONFINITE_INPUT), int(Status.NONPOSITIVE))
#: Fewer selected high-binding TACs than this: a loud warning (the mean TAC is then noisy).
MIN_SELECTED = 50


def is_median(value: Any) -> bool:
    """True for the estimator keyword (``"median"``, ``"auto"``, any case)."""
    return isinstance(value, str) and value.strip().lower() in MEDIAN_WORDS


#: File-name endings that make a ``k2prime`` text a mask image's path (see :func:`k2prime_kind`).
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".img", ".hdr", ".mgz", ".mgh", ".v")


def k2prime_kind(value: Any) -> str:
    """Which form of ``k2prime`` ``value`` is: ``"none"``, ``"number"`` (1/min), ``"median"``, ``"mask"`` (a mask
    image: a path ending in :data:`IMAGE_SUFFIXES` or holding a folder, a nibabel image, a 3-D array), ``"tac"``
    (a 1-D array) or ``"region"`` (any other text: a region name -- an atlas region for ``voxelkit run``, a TAC
    column for :func:`voxelkit.fit_tacs`)."""
    if value is None:
        return "none"
    if _number(value) is not None:
        return "number"
    if is_median(value):
        return "median"
    if isinstance(value, Path) or hasattr(value, "affine"):
        return "mask"
    if isinstance(value, str):
        text = value.strip()
        return "mask" if text.lower().endswith(IMAGE_SUFFIXES) or "/" in text or "\\" in text else "region"
    arr = np.asarray(value)
    return "tac" if arr.ndim == 1 and arr.dtype != bool else "mask"


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def resolve_k2prime(value: Any, model: str, lookup: Callable[[Any], tuple[np.ndarray, str, dict[str, Any]]] | None,
                    *, what: str = "k2prime") -> tuple[dict[str, Any], dict[str, Any]]:
    """Model keywords and ``fit.info`` entries for a user's ``k2prime`` value (see the module docstring).

    ``lookup(value)`` turns a region (mask image / path / array, or a column name) into ``(tac (F,), description,
    info)``; it is called only for values that are not a number or ``"median"``.  ``what`` names the option in
    errors.  Returns ``({}, {})`` for None.  Raises :class:`InputError` for a value ``model`` does not take."""
    if value is None:
        return {}, {}
    key = model.lower()
    num = _number(value)
    if num is not None:
        if not (np.isfinite(num) and num > 0):
            raise InputError(f"{what} must be a positive rate in 1/min, got {value!r}")
        if key not in K2PRIME_NUMBER_MODELS:
            raise InputError(f"{what} only applies to models {', '.join(K2PRIME_NUMBER_MODELS)}, not {model!r}")
        return {"k2prime": num}, {}
    if is_median(value):
        if key not in (*K2PRIME_ESTIMATING_MODELS, "srtm"):
            raise InputError(f"{what}='median' only applies to models {', '.join(K2PRIME_ESTIMATING_MODELS)} (and "
                             f"srtm, whose grid then uses its wide default), not {model!r}")
        return {"k2prime": "median"}, {}
    if key not in K2PRIME_ESTIMATING_MODELS:
        raise InputError(f"{what} as a high-binding region only applies to models "
                         f"{', '.join(K2PRIME_ESTIMATING_MODELS)} (k2' from a high-binding region), not {model!r}")
    arr = None if isinstance(value, str | Path) or hasattr(value, "affine") else np.asarray(value)
    if arr is not None and arr.ndim == 1 and arr.dtype != bool:  # a TAC given directly
        tac = arr.astype(float)
        if not np.isfinite(tac).all():
            raise InputError(f"{what}: the given k2' region TAC has non-finite values")
        return {"k2prime_tac": tac, "k2prime_name": "given k2' region TAC"}, {}
    if lookup is None:
        raise InputError(f"{what}: expected a rate in 1/min, 'median' or a high-binding region TAC, got {value!r}")
    tac, desc, info = lookup(value)
    return {"k2prime_tac": np.asarray(tac, dtype=float).reshape(-1), "k2prime_name": desc}, info


def select_high_binding(fit: ModelFit, tacs: np.ndarray, reference: np.ndarray, frames: FrameTiming,
                        bp_quantile: float, no_fit: str, block: int = 65536) -> tuple[np.ndarray, dict[str, Any]]:
    """The high-binding TACs (bool (n,)) among those a first pass ``fit`` fitted well (status ok, k2' > 0): those
    whose tissue-to-reference ratio over the first pass's frames (duration-weighted means, a low-noise DVR proxy)
    is at or above its ``bp_quantile`` quantile.  The ratio, not the first pass's BPND, selects: selecting on a
    noisy BPND picks the voxels whose noise raised it, and their mean TAC carries that noise (k2' -40 % on noisy
    bolus-infusion voxels).  ``no_fit``: the error when no TAC is ok."""
    ref = np.asarray(reference, dtype=float).reshape(-1)
    d = frames.duration_min * fit.used_frames
    ratio = np.full(tacs.shape[0], -np.inf)
    for sl in chunks(tacs.shape[0], block):
        ratio[sl] = np.asarray(tacs[sl], dtype=np.float64) @ d
    ratio /= float(ref @ d)
    # every TAC the first pass could fit (implausible or grid-edge values included: excluding TACs by their
    # noisy parameters would condition the selection on the noise again)
    ok = np.isfinite(ratio) & (ratio > 0) & ~np.isin(fit.status, FAILED)
    if not ((fit.status == Status.OK) & ok).any():
        raise InputError(no_fit)
    cut = float(np.quantile(ratio[ok], bp_quantile))
    cand = ok & (ratio >= cut)
    return cand, {"k2prime_bp_quantile": bp_quantile, "k2prime_ratio_threshold": cut,
                  "k2prime_n_used": int(cand.sum()), "k2prime_n_ok": int(ok.sum())}


def mean_tac(tacs: np.ndarray, rows: np.ndarray, block: int = 65536) -> np.ndarray:
    """Mean (float64, (F,)) of the TACs ``tacs[rows]`` (``rows`` bool (n,)), summed in blocks (no copy of all)."""
    acc = np.zeros(tacs.shape[1])
    for sl in chunks(tacs.shape[0], block):
        sel = rows[sl]
        if sel.any():
            acc += np.asarray(tacs[sl][sel], dtype=np.float64).sum(axis=0)
    return acc / max(int(rows.sum()), 1)


def estimate_k2prime(first_pass: ReferenceModel, tacs: np.ndarray, reference: np.ndarray, frames: FrameTiming,
                     bp_quantile: float, names: list[str] | None, model_name: str) -> tuple[float, dict[str, Any]]:
    """k2' (1/min) by the ``"median"`` rule (see the module docstring) with ``first_pass`` (an MRTM or SRTM over
    the k2' frames), and the ``fit.info`` entries describing it."""
    pass_name = first_pass.name.upper()
    f = first_pass.fit(tacs, reference, frames, keep_inputs=False)
    cand, info = select_high_binding(f, tacs, reference, frames, bp_quantile,
                                     f"{model_name}: no TAC gives a usable {pass_name} fit, so k2prime='median' has "
                                     "nothing to estimate k2' from; give k2prime or a high-binding region")
    k_sel = f.params["k2prime"][cand].astype(float)
    k_sel = k_sel[np.isfinite(k_sel) & (k_sel > 0)]
    what = "TACs" if names is not None else "voxels"
    if not k_sel.size:
        raise InputError(f"{model_name}: no high-binding {what} with a positive {pass_name} k2'; give k2prime or a "
                         "high-binding region")
    k2p = float(np.median(k_sel))
    n_used = info["k2prime_n_used"]
    info.update(k2prime_source=f"median of {pass_name} k2' over the high-binding {what} (tissue/reference ratio "
                               f"at or above its {bp_quantile:g} quantile)",
                k2prime_method=MEDIAN_METHOD)
    # cross-check: one fit of the selected TACs' mean TAC (noise averaged out before the fit)
    g = first_pass.fit(mean_tac(tacs, cand)[None, :], reference, frames, keep_inputs=False)
    k_mean = float(g.params["k2prime"][0])
    info["k2prime_mean_tac"] = k_mean if np.isfinite(k_mean) else None
    if names is not None:
        info["k2prime_regions"] = [names[i] for i in np.flatnonzero(cand)]
    if n_used < MIN_SELECTED and names is None:
        log.warning("WARNING: %s: k2prime='median' selected only %d high-binding voxels (fewer than %d): the k2' "
                    "estimate (%.4g/min) is noisy and every BPND depends on it; give a high-binding region "
                    "(k2prime=<mask image>) or a known k2'", model_name, n_used, MIN_SELECTED, k2p)
        info["k2prime_warning"] = f"only {n_used} voxels selected"
    elif np.isfinite(k_mean) and abs(k_mean / k2p - 1.0) > DISAGREE:
        log.warning("WARNING: %s: k2prime='median' gives %.4g/min but the fit of the selected %s' mean TAC gives "
                    "%.4g/min (%.0f %% apart): check the k2' with a high-binding region (k2prime=<mask image>)",
                    model_name, k2p, what, k_mean, 100 * abs(k_mean / k2p - 1.0))
        info["k2prime_warning"] = "median and mean-TAC estimates disagree"
    return k2p, info


def record_k2prime(model_name: str, k2p: float, info: dict[str, Any], window: tuple[Any, Any] | None,
                   frames: FrameTiming, quiet: bool) -> None:
    """Record in ``info`` the frames an estimated k2' came from (``k2prime_window_min``, minutes; None = all) and
    log the estimate (and, unless ``quiet``, which frames the k2' window uses)."""
    info["k2prime_window_min"] = list(window) if window else None
    if window is not None and not quiet:
        frames.describe_window(*window, what=f"{model_name} k2' window")
    log.info("%s: k2' = %.5g/min (%s, from %s)", model_name, k2p, info["k2prime_source"],
             "all frames" if window is None else f"frames in {window[0]}-{window[1]} min")


def region_k2prime(first_pass: ReferenceModel, tac: np.ndarray, reference: np.ndarray, frames: FrameTiming,
                   what: str, model_name: str) -> tuple[float, dict[str, Any]]:
    """k2' (1/min) = k2/R1 of one fit of a high-binding region's TAC ``tac`` (F,) by ``first_pass``."""
    if not np.isfinite(tac).all():
        raise InputError(f"{model_name}: {what} has non-finite values")
    frames.check_count(tac.size, "the k2prime region TAC")
    f = first_pass.fit(np.asarray(tac, dtype=float)[None, :], reference, frames, keep_inputs=False)
    k2p, st = float(f.params["k2prime"][0]), int(f.status[0])
    if st != Status.OK or not (np.isfinite(k2p) and k2p > 0):
        raise InputError(f"{model_name}: the {first_pass.name.upper()} fit of {what} gives no usable k2' (status "
                         f"{Status(st).name.lower()}, k2' = {k2p:.6g}/min, BPND = {float(f.params['bp_nd'][0]):.4g}); "
                         "choose a high-binding region or give k2prime")
    return k2p, {"k2prime_region_bp_nd": float(f.params["bp_nd"][0]), "k2prime_region_r1": float(f.params["r1"][0]),
                 "k2prime_method": "region_tac"}


__all__ = ["IMAGE_SUFFIXES", "K2PRIME_ESTIMATING_MODELS", "MEDIAN_METHOD", "MIN_SELECTED", "estimate_k2prime",
           "is_median", "k2prime_kind", "mean_tac", "record_k2prime", "region_k2prime", "resolve_k2prime",
           "select_high_binding"]
