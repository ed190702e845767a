"""``voxelkit run``: a BIDS-PET crossover study -> per-scan parametric maps -> contrast maps -> permutation
inference -> ROI tables -> provenance and an HTML report.  Layout of the outputs: :mod:`.layout`."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
import warnings
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .. import __version__
from ..backend import get_backend
from ..conform import conform_to
from ..conform import notes as conform_notes
from ..io import (
    DynamicPET,
    InputError,
    Masker,
    check_same_space,
    load_image,
    load_mask,
    load_pet,
    write_json,
    write_tsv,
)
from ..io.derivatives import (
    ATLAS_GLOB,
    BIDS_PARTICIPANTS,
    BRAIN_MASK_GLOB,
    DATASET_DESCRIPTION,
    JSON_EXT,
    PROVENANCE,
    REFERENCE_MASK_GLOB,
    STUDY_RECORD,
    contrast_roi_tests_path,
    contrast_roi_values_path,
    contrast_stats_dir,
    lookup_of,
)
from ..models.status import Status
from ..outputs import LOCK_NAME, MANIFEST_NAME, FolderLock, OutputFolder, read_manifest
from . import layout
from .bids import Pairing, Scan, discover_scans, find_derivative, pair_scans, read_participants, scan_frames, scan_table
from .config import StudyConfig, k2prime_source

log = logging.getLogger("voxelkit")


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class StudyResult:
    """What ``run_study`` produced (paths and the main numbers)."""

    config: StudyConfig
    output_dir: Path
    subjects: list[str]
    dropped: dict[str, str]
    fitted: int = 0
    reused: int = 0
    stats: Any = None
    roi_tests: list[dict[str, Any]] = field(default_factory=list)
    report: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    failed_scans: list[dict[str, Any]] = field(default_factory=list)  #: fits where most voxels failed
    k2prime: dict[str, Any] = field(default_factory=dict)  #: per scan: the k2' estimated once (1/min)
    roi: Any = None  #: the RoiTables (values and tests) of :func:`roi_tables`
    #: named contrasts (``contrasts``): label -> {"conditions": (A, B), "stats": PermutationResult, "roi":
    #: RoiTables, "stats_dir": Path}; ``stats`` and ``roi`` above are then None
    contrasts: dict[str, dict[str, Any]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)  #: what :func:`provenance` wrote
    fits: Any = field(default=None, repr=False)  #: the :class:`ScanFits` (per-scan maps in memory)


class _Checksums:
    """sha256 of input files, computed once per run."""

    def __init__(self) -> None:
        self._cache: dict[Path, str] = {}

    def __call__(self, path: Path | None) -> str | None:
        if path is None:
            return None
        path = Path(path).resolve()
        if path not in self._cache:
            self._cache[path] = sha256(path)
        return self._cache[path]

    def table(self) -> list[dict[str, Any]]:
        return [{"path": str(p), "sha256": h, "bytes": p.stat().st_size} for p, h in sorted(self._cache.items())]


def _check_output_dir(cfg: StudyConfig) -> Path:
    out = Path(cfg.output_dir).resolve()
    bids = cfg.bids_dir.resolve()
    if out == bids:
        raise InputError(f"output directory {out} is the BIDS dataset itself: choose e.g. {bids}/derivatives/voxelkit")
    try:
        rel = out.relative_to(bids)
    except ValueError:
        rel = None
    if rel is not None and rel.parts and rel.parts[0].startswith("sub-"):
        raise InputError(f"output directory {out} is inside the raw data ({rel.parts[0]}): use derivatives/")
    return out


def _discover_derivatives(cfg: StudyConfig) -> None:
    """Fill in masks and atlas left unset from ``derivatives/*/`` (as ``voxelkit simulate`` writes them)."""
    if cfg.ref_mask is None:
        cfg.ref_mask = find_derivative(cfg.bids_dir, REFERENCE_MASK_GLOB)
        if cfg.ref_mask is None:
            raise InputError("a reference region mask is required (ref_mask / --ref-mask); none found under "
                             f"{cfg.bids_dir}/derivatives/*/ as {REFERENCE_MASK_GLOB}")
        log.info("reference region mask: %s (found in derivatives)", cfg.ref_mask)
    if cfg.brain_mask is None:
        cfg.brain_mask = find_derivative(cfg.bids_dir, BRAIN_MASK_GLOB)
        if cfg.brain_mask is not None:
            log.info("brain mask: %s (found in derivatives)", cfg.brain_mask)
    if cfg.atlas is None:
        cfg.atlas = find_derivative(cfg.bids_dir, ATLAS_GLOB)
        if cfg.atlas is not None:
            log.info("label atlas: %s (found in derivatives)", cfg.atlas)
    if cfg.atlas is not None and cfg.atlas_labels is None:
        tsv = lookup_of(cfg.atlas)
        cfg.atlas_labels = tsv if tsv.exists() else None


def _load_dynamic(scan: Scan, header: Any = None) -> DynamicPET:
    """The scan's 4-D data (float32) with its frame timing; ``header``: the image opened at validation (its data
    is read now, through the same file handle: the file is opened once per run)."""
    dpet = load_pet(load_image(scan.pet) if header is None else header, frames=scan_frames(scan))  # the checks
    img = dpet.image
    mem = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine, img.header)
    return DynamicPET(mem, dpet.frames, str(scan.pet))


def _qc_record(result: Any, scan: Scan, phase: str | None, cfg: StudyConfig, ref_tac: np.ndarray,
               ref_desc: str, labels: np.ndarray | None, names: dict[int, str]) -> dict[str, Any]:
    """Reference TAC, a few voxel TACs with fitted curves, histograms and status counts for the report."""
    release = is_release_model(cfg.model)
    # usable voxels: ok, or a status whose values the model keeps (lp-ntPET grid_edge)
    ok = np.isin(result.status, (int(Status.OK), *result.kept_statuses)) & np.isfinite(result.bp_nd)
    if release:  # lp-ntPET: examples ranked by the release F statistic
        ok &= np.isfinite(result.params["f_stat"])
    ok = np.flatnonzero(ok)
    examples = []
    if ok.size:
        key = result.params["f_stat"] if release else result.bp_nd
        order = ok[np.argsort(key[ok], kind="stable")]
        for q in (0.1, 0.5, 0.9, 0.99):
            idx = int(order[min(order.size - 1, int(q * order.size))])
            if any(e["index"] == idx for e in examples):
                continue
            without = None
            try:
                if release:
                    from ..models.lpntpet import fitted_curves  # noqa: PLC0415

                    with_r, wo = fitted_curves(result, idx)
                    fitted, without = np.asarray(with_r, float).tolist(), np.asarray(wo, float).tolist()
                else:
                    fitted = np.asarray(result.fitted(idx), dtype=float).tolist()
            except (NotImplementedError, ValueError):
                fitted = None
            ijk = np.argwhere(result.masker.mask)[idx].tolist()
            lab = int(labels[tuple(ijk)]) if labels is not None else 0
            ex = {"index": idx, "ijk": ijk, "label": names.get(lab, ""),
                  "tac": np.asarray(result.inputs[0][idx], dtype=float).tolist(), "fitted": fitted,
                  "params": {k: float(v[idx]) for k, v in result.params.items()}}
            if release:
                ex["fitted_without_release"] = without
            examples.append(ex)
    hists = {}
    for k, v in result.params.items():
        vals = v[ok] if ok.size else v[:0]
        vals = vals[np.isfinite(vals)]
        if vals.size:
            lo, hi = np.percentile(vals, [0.5, 99.5])
            if hi <= lo:
                hi = lo + 1e-6
            counts, edges = np.histogram(np.clip(vals, lo, hi), bins=40, range=(lo, hi))
            hists[k] = {"edges": edges.tolist(), "counts": counts.tolist()}
    return {"subject": scan.subject, "session": scan.session, "phase": phase, "model": cfg.model,
            "frames": {"start_s": result.frames.start.tolist(), "duration_s": result.frames.duration.tolist()},
            "used_frames": np.flatnonzero(result.used_frames).tolist(),
            "reference_tac": np.asarray(ref_tac, dtype=float).tolist(), "reference_desc": ref_desc,
            "example_voxels": examples, "status_counts": result.status_counts(), "histograms": hists,
            "n_voxels": result.n, "fit_seconds": result.seconds, "backend": result.backend,
            **({"release_curves": release_curves(result, labels, names)} if release else {})}


#: Time step (minutes) of the BP(t) curves stored in the QC record of an lp-ntPET fit.
BP_CURVE_STEP_MIN = 0.5


def is_release_model(model: str | None) -> bool:
    """Whether ``model`` is an lp-ntPET model (release over time)."""
    from .config import RELEASE_MODELS  # noqa: PLC0415

    return model is not None and model.lower() in RELEASE_MODELS


def release_curves(result: Any, labels: np.ndarray | None, names: dict[int, str]) -> dict[str, Any]:
    """Per atlas region, the mean over its voxels (status ok or grid_edge, finite parameters) of
    ``BP(t) = k2 / (k2a + gamma h(t)) - 1`` from the fitted k2, k2a, gamma, t_D, t_P, alpha of an lp-ntPET fit,
    on a grid of :data:`BP_CURVE_STEP_MIN` minutes over the scan; also the region's mean ``release``, ``t_d``
    and voxel count.  Times in minutes, BP unitless."""
    from ..models.lpntpet import release_shape  # noqa: PLC0415

    end = float(result.frames.end_min[-1])
    t = np.arange(0.0, end + 1e-9, BP_CURVE_STEP_MIN)
    out: dict[str, Any] = {"t_min": t.tolist(), "regions": {}}
    if labels is None:
        return out
    p = result.params
    lab = labels[result.masker.mask]
    good = np.isin(result.status, (Status.OK, Status.GRID_EDGE))
    for k in ("k2", "k2a", "gamma"):
        good &= np.isfinite(p[k])
    # voxels share the grid's basis functions: h(t) once per distinct (t_D, t_P, alpha)
    shape = np.stack([p["t_d"], p["t_p"], p["alpha"]], axis=1).astype(float)
    has_all = good & np.isfinite(shape).all(axis=1)
    uniq, inv = np.unique(shape[has_all], axis=0, return_inverse=True)
    h_u = release_shape(t[None, :], uniq[:, :1], uniq[:, 1:2], uniq[:, 2:3]) if uniq.size else np.zeros((0, t.size))
    row = np.full(shape.shape[0], -1)
    row[has_all] = np.asarray(inv).reshape(-1)
    active = np.flatnonzero(h_u.any(axis=0)) if h_u.size else np.zeros(0, int)  # times after the first onset
    for k in sorted(names):
        sel = np.flatnonzero(good & (lab == k))
        if k <= 0 or not sel.size:
            continue
        k2, k2a = p["k2"][sel].astype(float), p["k2a"][sel].astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            bp0 = k2 / k2a - 1.0  # BP(t) where h = 0 (before every onset)
            fin0 = np.isfinite(bp0)
            curve = np.full(t.size, float(bp0[fin0].mean()) if fin0.any() else np.nan)
            if active.size:
                h = np.zeros((sel.size, active.size))
                has = row[sel] >= 0
                h[has] = h_u[row[sel][has]][:, active]
                bp = k2[:, None] / (k2a[:, None] + p["gamma"][sel].astype(float)[:, None] * h) - 1.0
                fin = np.isfinite(bp)
                n_fin = fin.sum(axis=0)
                curve[active] = np.where(n_fin > 0, np.where(fin, bp, 0.0).sum(axis=0) / np.maximum(n_fin, 1), np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out["regions"][names[k]] = {"bp_t": curve.round(6).tolist(), "n_voxels": int(sel.size),
                                        "release": float(np.nanmean(p["release"][sel])),
                                        "t_d": float(np.nanmean(p["t_d"][sel]))}
    return out


def scan_failure(counts: dict[str, int], qc: dict[str, Any] | None = None,
                 model: str | None = None) -> dict[str, Any] | None:
    """None for a usable fit; else ``n_voxels``, ``n_failed``, ``share``, ``main_status`` and ``likely_cause`` of
    a fit flagged by the models' QC rule (:func:`voxelkit.models.base.status_qc`: more than half of the voxels
    failed; statuses the model keeps, such as lp-ntPET's ``grid_edge``, are not failures).  ``counts``: status
    name -> voxel count, as ``ModelFit.status_counts()``; ``qc``: ``ModelFit.qc()``, whose likely cause is used.
    Such a scan is reported and its subject left out of the group test unless ``keep_failed_scans``."""
    from ..models import model_class  # noqa: PLC0415
    from ..models.base import status_qc  # noqa: PLC0415

    cls = model_class(model) if model is not None else None
    q = status_qc(counts, kept=getattr(cls, "kept_statuses", ()), causes=getattr(cls, "likely_causes", {}))
    if q["n"] == 0 or not q["flagged"]:
        return None
    cause = (qc.get("likely_cause") if isinstance(qc, dict) else None) or q["likely_cause"] or q["main_cause"]
    return {"n_voxels": q["n"], "n_failed": q["n_failed"], "share": round(q["share"], 4),
            "main_status": q["main_cause"], "likely_cause": str(cause)}


def _fit_qc(result: Any) -> dict[str, Any]:
    """The fit's QC summary (``ModelFit.qc()``) as a JSON-ready dict."""
    return json.loads(json.dumps(result.qc(), default=str))


def _describe_scan(subject: str, session: str, phase: str | None) -> str:
    return f"sub-{subject} ses-{session}" + (f" ({phase} window)" if phase else "")


def k2prime_estimated(cfg: StudyConfig) -> bool:
    """Whether the model estimates k2' from the data (MRTM2/SRTM2 without a numeric ``k2prime``: ``"median"``,
    or a k2' region mask)."""
    from ..models.k2prime import K2PRIME_ESTIMATING_MODELS  # noqa: PLC0415

    if cfg.model.lower() not in K2PRIME_ESTIMATING_MODELS:
        return False
    k = cfg.model_options.get("k2prime")
    return not (isinstance(k, int | float) and not isinstance(k, bool))


def _k2prime_record(info: dict[str, Any], cfg: StudyConfig) -> dict[str, Any] | None:
    """The k2' (1/min) a fit estimated, from ``fit.info``, with where it came from (JSON-ready)."""
    if info.get("k2prime") is None:
        return None
    kw = info["k2prime_window_min"] if "k2prime_window_min" in info else cfg.model_options.get("k2prime_window")
    frames = (f"frames with mid-time in [{float(kw[0]):g}, {float(kw[1]):g}) min (k2prime_window)" if kw
              else "all frames of the scan")
    rec: dict[str, Any] = {"value": float(info["k2prime"]), "unit": "1/min",
                           "source": str(info.get("k2prime_source", "")), "frames": frames,
                           "k2prime_window_min": [float(kw[0]), float(kw[1])] if kw else None}
    for k, v in info.items():
        if k.startswith("k2prime_") and k != "k2prime_source" and isinstance(v, int | float | str | bool):
            rec[k] = v
    return rec


@dataclass
class _ScanFits:
    """What fitting one scan gave: counts, the failed fits, and the scan's k2' (when estimated)."""

    fitted: int = 0
    reused: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    k2prime: dict[str, Any] | None = None
    #: (param, phase) -> 3-D float32 map of the fits done now (the later stages take them from here, not disk)
    maps: dict[tuple[str, str | None], np.ndarray] = field(default_factory=dict)


def _read_record(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) else None


def _note_failure(res: _ScanFits, scan: Scan, phase: str | None, counts: dict[str, int],
                  qc: dict[str, Any] | None, model: str | None = None) -> None:
    bad = scan_failure(counts, qc, model)
    if bad is None:
        return
    res.failures.append({"subject": scan.subject, "session": scan.session, "phase": phase, **bad})
    log.warning("WARNING: %s: the fit failed in %d of %d voxels (%.0f %%), mostly %s; likely cause: %s",
                _describe_scan(scan.subject, scan.session, phase), bad["n_failed"], bad["n_voxels"],
                100 * bad["share"], bad["main_status"], bad["likely_cause"])


def _fit_scan(scan: Scan, cfg: StudyConfig, out: Path, sums: _Checksums, brain: tuple[np.ndarray, Any] | None,
              atlas: tuple[np.ndarray | None, dict[int, str]], folder: OutputFolder | None = None, *,
              ref: Any = None, header: Any = None, keep: tuple[str, ...] = (), k2_region: Any = None) -> _ScanFits:
    """Fit every phase of one scan unless a finished fit with the same inputs and settings exists.

    ``ref``: the reference mask already read (an in-memory image on the PET grid; default: read ``cfg.ref_mask``);
    ``header``: the scan's image already opened at validation (its data is read once, here); ``keep``: the
    parameters whose fitted maps are returned in memory (``_ScanFits.maps``); ``k2_region``: the k2' region
    (``k2prime`` = mask file or atlas region) read once (:func:`_k2prime_region`; default: read here).

    With windows and an estimated k2' (MRTM2/SRTM2 ``k2prime="median"`` or a k2' mask), k2' is estimated once per
    scan (by the first window's fit, from all frames or the model's ``k2prime_window``) and that value (1/min) is
    used in every window."""
    from ..api import fit, reference_tac  # noqa: PLC0415

    inputs = {"pet": sums(scan.pet), "sidecar": sums(scan.sidecar), "ref_mask": sums(cfg.ref_mask),
              "brain_mask": sums(cfg.brain_mask)}
    k2_file = k2prime_region_file(cfg)
    if k2_file is not None:  # the k2' region's file (mask, or the atlas holding the named region)
        inputs["k2prime_region"] = sums(k2_file)
    settings = cfg.fit_settings()
    res = _ScanFits()
    todo = []
    for phase in cfg.phases:
        rec = _read_record(layout.fit_record_path(out, scan.subject, scan.session, cfg.model, phase))
        if rec is not None and rec.get("inputs") == inputs and rec.get("settings") == settings \
                and all(Path(p).exists() for p in rec.get("outputs", [])) \
                and layout.map_path(out, scan.subject, scan.session, cfg.model, "bp_nd", phase).exists():
            res.reused += 1
            _note_failure(res, scan, phase, rec.get("status_counts", {}), rec.get("qc"), cfg.model)
            if rec.get("k2prime"):
                res.k2prime = rec["k2prime"]
            continue
        todo.append(phase)
    if not todo:
        return res
    dpet = _load_dynamic(scan, header)
    ref_info: dict[str, Any] = {}
    ref_tac, ref_desc = reference_tac(dpet, dpet.data(), cfg.ref_mask if ref is None else ref,
                                      mask_threshold=cfg.model_options.get("mask_threshold"), info=ref_info)
    if brain is not None:
        check_same_space(brain[1], dpet.image, str(brain[1].get_filename()), scan.pet.name)
    labels, names = atlas
    brain_img = cfg.brain_mask
    if brain is not None:
        # the brain mask read (thresholded, on the PET grid) once per run at validation, not again for every fit
        brain_img = nib.Nifti1Image(brain[0].astype(np.uint8), dpet.affine)
        brain_img.set_filename(str(cfg.brain_mask))
    estimated = k2prime_estimated(cfg)
    # k2' belongs to the scan: with windows, the first window's fit estimates it (the model uses all frames, or
    # k2prime_window, whatever the fit's window) and that value (1/min) is given to every other window
    per_scan = res.k2prime if estimated and cfg.windows else None
    if k2_region is None and k2_file is not None:  # a Dask worker: the region read here
        k2_region = _k2prime_region(cfg, dpet.image, labels, names)
    sdir = layout.scan_dir(out, scan.subject, scan.session)
    for phase in todo:
        opts = dict(cfg.model_options)
        if phase is not None:
            opts["window"] = cfg.windows[phase]
        if per_scan is not None:
            opts.pop("k2prime_window", None)
            opts["k2prime"] = per_scan["value"]
        elif k2_region is not None:  # k2prime = mask file or atlas region name: the image read once
            opts["k2prime"] = k2_region
        result = fit(dpet, reference=ref_tac, model=cfg.model, mask=brain_img, device=cfg.device, **opts)
        k2rec = per_scan if per_scan is not None else (_k2prime_record(result.info, cfg) if estimated else None)
        if estimated and cfg.windows and per_scan is None and k2rec is not None:
            per_scan = k2rec
            log.info("%s: k2' = %.5g/min (%s, %s), used in every window", _describe_scan(scan.subject,
                     scan.session, None), k2rec["value"], k2rec["source"], k2rec["frames"])
        result.info.update(reference=ref_desc, pet=str(scan.pet), phase=phase)
        if ref_info:
            result.info["reference_mask"] = ref_info
        if k2rec is not None:
            result.info.update(k2prime=k2rec["value"], k2prime_source=k2rec["source"],
                               k2prime_frames=k2rec["frames"], k2prime_window_min=k2rec.get("k2prime_window_min"),
                               k2prime_per_scan=True)
            res.k2prime = k2rec
        written = []
        imgs = result.to_images()
        meta = result.sidecar()
        for param, img in imgs.items():
            if param in keep:
                res.maps[(param, phase)] = np.asarray(img.dataobj, dtype=np.float32)
            path = layout.map_path(out, scan.subject, scan.session, cfg.model, param, phase)
            side = layout.sidecar_of(path)
            if folder is not None:
                folder.record(path)
                folder.record(side)
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(img, str(path))
            write_json({**meta, "Description": param, "Sources": [str(scan.pet)]}, side)
            written.append(str(path))
        counts = result.status_counts()
        qc = _fit_qc(result)
        qc_path = layout.qc_path(out, scan.subject, scan.session, cfg.model, phase)
        rec_path = layout.fit_record_path(out, scan.subject, scan.session, cfg.model, phase)
        if folder is not None:
            folder.record(qc_path)
            folder.record(rec_path)
        write_json(_qc_record(result, scan, phase, cfg, ref_tac, ref_desc, labels, names), qc_path)
        # The record is written last: an interrupted fit is redone on the next run.
        write_json({"inputs": inputs, "settings": settings, "outputs": written, "voxelkit": __version__,
                    "seconds": result.seconds, "status_counts": counts, "k2prime": k2rec, "qc": qc,
                    "failure": scan_failure(counts, qc, cfg.model)}, rec_path)
        res.fitted += 1
        _note_failure(res, scan, phase, counts, qc, cfg.model)
        log.debug("fitted %s (%s) in %.2f s into %s", scan.pet.name, phase or "whole scan", result.seconds, sdir)
    return res


def smooth_in_mask(vol: np.ndarray, mask: np.ndarray, affine: np.ndarray, fwhm_mm: float) -> np.ndarray:
    """Gaussian smoothing (FWHM in mm) normalised within ``mask`` so that edges are not pulled to zero."""
    if fwhm_mm <= 0:
        return vol
    from scipy.ndimage import gaussian_filter  # noqa: PLC0415

    vox = nib.affines.voxel_sizes(affine)
    sigma = fwhm_mm / np.sqrt(8 * np.log(2)) / vox
    m = (mask & np.isfinite(vol)).astype(np.float64)
    num = gaussian_filter(np.where(m > 0, vol, 0.0).astype(np.float64), sigma, mode="constant")
    den = gaussian_filter(m, sigma, mode="constant")
    out = np.full(vol.shape, np.nan, dtype=np.float32)
    good = mask & (den > 1e-6)
    out[good] = (num[good] / den[good]).astype(np.float32)
    return out


def _scan_value_map(out: Path, cfg: StudyConfig, subject: str, session: str,
                    load: Any = None) -> np.ndarray:
    """The per-scan quantity the contrast is built from: BPND, baseline BPND - challenge BPND, or the lp-ntPET
    ``release`` map (peak fractional occupancy by the released neurotransmitter, whole-scan fit).
    ``load(phase, param)``: where the maps come from (default: read from ``out``)."""
    if load is None:
        def load(phase: str | None, param: str = "bp_nd") -> np.ndarray:
            path = layout.map_path(out, subject, session, cfg.model, param, phase)
            return np.asarray(load_image(path).dataobj, dtype=np.float32)

    if cfg.contrast == "release":
        return load(None, "release")
    if cfg.contrast == "activation":
        return load("baseline", "bp_nd") - load("challenge", "bp_nd")
    if cfg.windows:
        # whole-scan contrast on windowed fits: use the first window (documented)
        return load(cfg.phases[0], "bp_nd")
    return load(None, "bp_nd")


def _read_atlas(cfg: StudyConfig, like: Any) -> tuple[np.ndarray | None, dict[int, str]]:
    if cfg.atlas is None:
        return None, {}
    labels = conform_to(cfg.atlas, like, "labels", name=str(cfg.atlas))[0].astype(np.int32)
    names: dict[int, str] = {}
    if cfg.atlas_labels is not None:
        from ..stats.io import read_lookup  # noqa: PLC0415

        names = read_lookup(cfg.atlas_labels)
    for lab in np.unique(labels):
        if lab > 0 and int(lab) not in names:
            names[int(lab)] = f"label_{int(lab)}"
    return labels, names


@dataclass
class RoiTables:
    """What :func:`roi_tables` gives: the rows of ``roi_values.tsv`` (mean BPND, and for ``contrast = "release"``
    the mean release, per subject, condition, phase and region; unitless) and of ``roi_tests.tsv`` (a paired t
    test per region with BH-FDR q), and the paths written (empty without an atlas)."""

    values: list[dict[str, Any]] = field(default_factory=list)
    tests: list[dict[str, Any]] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)


def roi_tables(cfg: StudyConfig, fits: ScanFits, *, label: str | None = None) -> RoiTables:
    """Mean BPND per atlas region, condition, phase and subject, and a paired test of the contrast quantity per
    region (BH-FDR), from the maps ``fits`` (:func:`fit_scans`) holds in memory (no image is read); written to
    ``roi/`` of the output folder as by :func:`run_study`.  Regions mostly inside the reference mask (BPND ~ 0 by
    construction) are not tested.  Without an atlas: empty tables, nothing written.  ``label`` (a named contrast's
    :func:`~voxelkit.io.derivatives.contrast_label`): the tables go to ``roi/desc-<label>_roi_*.tsv``."""
    return _run_stage(fits, _roi_tables, cfg, fits, label)


def _roi_tables(cfg: StudyConfig, fits: ScanFits, label: str | None = None) -> RoiTables:
    labels, names, brain, out = fits.labels, fits.names, fits.mask, fits.output_dir
    if labels is None:
        return RoiTables()
    from scipy import stats as sps  # noqa: PLC0415

    pairing = fits.pairing
    rows = []
    per_cond: dict[tuple[str, str], np.ndarray] = {}
    ref = fits.ref_mask if fits.ref_mask is not None else np.zeros_like(brain)
    # regions mostly inside the reference mask have BPND ~ 0 by construction: no test there
    region_ids = [k for k in sorted(names) if k > 0 and (labels == k).any() and (ref[labels == k]).mean() < 0.5]
    masks = {k: (labels == k) & brain for k in region_ids}
    for sub in pairing.subjects:
        for cond in cfg.conditions:
            value_map = fits.maps.get((sub, cond))
            for phase in cfg.phases:
                vol = fits.bp_nd.get((sub, cond, phase))  # read once (or kept from the fit) by fit_scans
                if vol is None:
                    path = layout.map_path(out, sub, cond, cfg.model, "bp_nd", phase)
                    vol = np.asarray(load_image(path).dataobj, dtype=np.float32)
                for k in region_ids:
                    v = vol[masks[k]]
                    v = v[np.isfinite(v)]
                    rows.append({"subject": sub, "condition": cond, "phase": phase or "n/a", "region": names[k],
                                 "quantity": "bp_nd", "value": float(v.mean()) if v.size else float("nan"),
                                 "n_voxels": int(v.size)})
            vol = value_map if value_map is not None else _scan_value_map(out, cfg, sub, cond)
            if cfg.contrast == "release":  # mean release per region (the contrast's quantity), beside BPND
                for k in region_ids:
                    v = vol[masks[k]]
                    v = v[np.isfinite(v)]
                    rows.append({"subject": sub, "condition": cond, "phase": "n/a", "region": names[k],
                                 "quantity": "release", "value": float(v.mean()) if v.size else float("nan"),
                                 "n_voxels": int(v.size)})
            with warnings.catch_warnings():  # a region all NaN (a failed scan kept) gives NaN, said in the log
                warnings.simplefilter("ignore", RuntimeWarning)
                per_cond[(sub, cond)] = np.array([np.nanmean(vol[masks[k]]) if masks[k].any() else np.nan
                                                  for k in region_ids])
    values_path, tests_path = (layout.roi_values_path(out), layout.roi_tests_path(out)) if label is None else \
        (contrast_roi_values_path(out, label), contrast_roi_tests_path(out, label))
    if fits.folder is not None:
        fits.folder.record(values_path)
        fits.folder.record(tests_path)
    write_tsv(rows, values_path)
    a = np.stack([per_cond[(s, cfg.conditions[0])] for s in pairing.subjects])
    b = np.stack([per_cond[(s, cfg.conditions[1])] for s in pairing.subjects])
    tests = []
    with np.errstate(all="ignore"):
        t, p = sps.ttest_rel(a, b, axis=0, nan_policy="omit")
    t, p = np.asarray(t, float), np.asarray(p, float)
    p_fdr = _fdr(p)
    for j, k in enumerate(region_ids):
        ma, mb = float(np.nanmean(a[:, j])), float(np.nanmean(b[:, j]))
        tests.append({"region": names[k], "n": int(np.isfinite(a[:, j] - b[:, j]).sum()), "quantity": cfg.contrast,
                      f"mean_{cfg.conditions[0]}": ma, f"mean_{cfg.conditions[1]}": mb, "mean_diff": ma - mb,
                      # n/a at BPND ~ 0, and for release (already a fraction of the receptors)
                      "pct_change": 100.0 * (ma - mb) / mb if abs(mb) >= 0.1 and cfg.contrast != "release"
                      else float("nan"),
                      "t": float(t[j]), "p": float(p[j]), "p_fdr": float(p_fdr[j])})
    write_tsv(tests, tests_path)
    return RoiTables(rows, tests, {"values": values_path, "tests": tests_path})


def _fdr(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q over the finite p-values (NaN stays NaN)."""
    from ..stats.inference import fdr_bh  # noqa: PLC0415

    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = fdr_bh(p[ok])
    return out


def _code_covariates(cfg: StudyConfig, subjects: list[str]) -> Any:
    """The covariates of ``subjects`` from ``participants.tsv``, coded by :func:`voxelkit.stats.code_covariates`
    (numeric mean-centred, categorical effect-coded then centred); None without covariates."""
    if not cfg.covariates:
        return None
    from ..stats.covariates import code_covariates  # noqa: PLC0415

    src = cfg.bids_dir / BIDS_PARTICIPANTS
    parts = read_participants(cfg.bids_dir)
    if not parts:
        raise InputError(f"{src}: missing or empty, but covariates (--covariates {' '.join(cfg.covariates)}) are "
                         "read from it")
    return code_covariates(parts, cfg.covariates, subjects, str(src))


def _check_readable(path: Path, what: str) -> None:
    """One line for a path that is a directory, missing or unreadable (read one byte)."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p}: is a directory, but {what} must be a file")
    if not p.exists():
        raise InputError(f"{p}: no such file ({what})")
    try:
        with p.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise InputError(f"{p}: cannot read {what} ({exc.strerror or exc})") from None


def _min_subjects_message(n: int, pairing: Pairing, extra: str = "") -> str:
    from ..stats.design import MIN_SUBJECTS  # noqa: PLC0415

    dropped = f"; dropped: {'; '.join(f'sub-{k}: {v}' for k, v in pairing.dropped.items())}" if pairing.dropped \
        else ""
    return (f"{n} subject(s) with both conditions{extra}: at least {MIN_SUBJECTS} are needed for sign-flip "
            f"inference (with 4 there are only 2^4 = 16 sign flips and no p below 0.0625){dropped}")


def _check_group_size(cfg: StudyConfig, pairing: Pairing, extra: str = "") -> None:
    """n >= MIN_SUBJECTS and a smallest attainable p <= 0.05 for the chosen sidedness and n_perm."""
    from ..stats.design import MIN_SUBJECTS  # noqa: PLC0415

    n = len(pairing.subjects)
    if n < MIN_SUBJECTS:
        raise InputError(_min_subjects_message(n, pairing, extra))
    from ..stats.design import check_attainable  # noqa: PLC0415

    try:
        check_attainable(n, "flip", cfg.two_sided, cfg.n_perm)
    except InputError as exc:
        msg = str(exc).replace("a one-sided test", "a one-sided test (--one-sided)").replace("more maps",
                                                                                               "more subjects")
        raise InputError(f"{n} paired subjects{extra}: {msg}") from None


@dataclass
class _Plan:
    """What validation before the first fit established (read once, used by the run)."""

    first: Any  #: header-only image of the first scan (grid of every map)
    brain: tuple[np.ndarray, Any] | None  #: brain mask (3-D bool) and its image
    labels: np.ndarray | None
    names: dict[int, str]
    covariates: Any  #: CodedCovariates or None
    ref: Any = None  #: the reference mask read once: an in-memory image on the PET grid named by its file
    headers: dict[Path, Any] = field(default_factory=dict)  #: PET file -> image opened lazily (data not read)
    k2prime_region: Any = None  #: k2' region (mask / atlas region) read once: an in-memory image, or None


def validate_study(cfg: StudyConfig, pairing: Pairing) -> _Plan:
    """Every cheap check, before the first fit: each scan's header and frame timing, windows, every mask against
    every scan's grid (headers only), the model options, covariates for every subject, n >= MIN_SUBJECTS and the
    smallest attainable p.  Raises :class:`InputError` (one line) on the first problem; reads no PET data."""
    if len(pairing.subjects) < 2:
        raise InputError(f"only {len(pairing.subjects)} subject(s) with both conditions: nothing to compare")
    scans = [pairing.scans[(s, c)] for s in pairing.subjects for c in cfg.conditions]
    for scan in scans:
        _check_readable(scan.sidecar, "a PET sidecar")
    protocol = scan_protocol(scans)
    if cfg.contrast == "activation":
        _check_activation(cfg, protocol)
    if cfg.model_choice and cfg.model_choice.get("rule", "").endswith("default_release"):
        _align_k2prime_window(cfg, scan_frames(scans[0]))
    check_model = _build_check_model(cfg, None)
    headers = []
    for scan in scans:
        _check_readable(scan.pet, "a PET image")
        img = load_image(scan.pet)  # header only: nibabel reads data lazily (the fit reads it through this image)
        if len(img.shape) != 4:
            raise InputError(f"{scan.pet}: expected a 4-D dynamic image, got shape {img.shape}")
        frames = scan_frames(scan)
        frames.check_count(int(img.shape[3]), str(scan.pet))
        _check_scan_windows(cfg, check_model, frames, scan)
        headers.append((scan, img))
    first = headers[0][1]
    masks = [("--ref-mask", "the reference region mask", cfg.ref_mask), ("--mask", "the brain mask", cfg.brain_mask),
             ("--atlas", "the atlas", cfg.atlas),
             ("--k2prime", "the k2' region mask", k2prime_region_file(cfg) if k2prime_source(cfg.model_options)[0]
              == "mask" else None)]
    for scan, pimg in headers[1:]:
        check_same_space(first, pimg, str(headers[0][0].pet), str(scan.pet))
    for flag, what, path in masks:
        if path is None:
            continue
        _check_readable(Path(path), f"{what} ({flag})")
    # each mask read once, here: same grid, or reoriented / resampled by nearest neighbour (logged, in
    # provenance); refused outside the FOV.  The fits and the ROI tables use these in-memory copies.
    threshold = cfg.model_options.get("mask_threshold")  # fractional masks: the same rule as the fits
    ref = _read_mask_once(cfg.ref_mask, first)
    load_mask(ref, first, str(scans[0].pet), "reference region mask", threshold=threshold)
    brain = (load_mask(_read_mask_once(cfg.brain_mask, first), first, str(scans[0].pet), "brain mask",
                       threshold=threshold), first) if cfg.brain_mask is not None else None
    if cfg.atlas_labels is not None:
        _check_readable(cfg.atlas_labels, "the atlas look-up table (--atlas-labels)")
    labels, names = _read_atlas(cfg, first)
    k2_region = _k2prime_region(cfg, first, labels, names)
    _check_model_options(cfg)
    covariates = _code_covariates(cfg, pairing.subjects)
    _check_group_size(cfg, pairing)
    lazy = {scan.pet: img for scan, img in headers if nib.is_proxy(img.dataobj)}  # ECAT is read whole: not kept
    return _Plan(first, brain, labels, names, covariates, ref=ref, headers=lazy, k2prime_region=k2_region)


def k2prime_region_file(cfg: StudyConfig) -> Path | None:
    """The file the study's k2' region comes from: the ``k2prime`` mask image, or the atlas holding the named
    region (``k2prime = "thalamus"``); None when k2' is a number, ``"median"`` or not given."""
    kind, value = k2prime_source(cfg.model_options)
    if kind == "mask":
        return Path(value)
    if kind == "region":
        return cfg.atlas
    return None


def _k2prime_region(cfg: StudyConfig, like: Any, labels: np.ndarray | None, names: dict[int, str]) -> Any:
    """The study's k2' region read once as an in-memory mask image on the grid of ``like`` (the ``k2prime`` mask
    file, or the atlas region it names); None when k2' is a number, ``"median"`` or not given.  An unknown region,
    or a region name without an atlas, is an :class:`InputError` naming the study file and the key."""
    kind, value = k2prime_source(cfg.model_options)
    where = f"{cfg.study_file} [model_options]" if cfg.study_file is not None else "study settings [model_options]"
    if kind == "mask":
        return _read_mask_once(Path(value), like)
    if kind != "region":
        return None
    if labels is None:
        raise InputError(f"{where}: option 'k2prime' (--k2prime) = {value!r} names an atlas region, but no atlas is "
                         "given or found in derivatives (atlas / --atlas; or give a mask image path)")
    ids = [k for k, n in sorted(names.items()) if n == value]
    if not ids or not (labels == ids[0]).any():
        raise InputError(f"{where}: option 'k2prime' (--k2prime) = {value!r}: no such region in the atlas "
                         f"{cfg.atlas_labels or cfg.atlas}; regions: {', '.join(names[k] for k in sorted(names))}")
    return nib.Nifti1Image((labels == ids[0]).astype(np.uint8), like.affine)


def _read_mask_once(path: Path | None, like: Any) -> Any:
    """The mask (or label) image at ``path`` on the grid of ``like``, read once, as an in-memory image that
    carries the file's name (messages, provenance and the mask rule are as for the file); None for None."""
    if path is None:
        return None
    data, _ = conform_to(path, like, "mask", name=str(path))
    img = nib.Nifti1Image(np.asarray(data), like.affine)
    img.set_filename(str(path))
    return img


def _build_check_model(cfg: StudyConfig, phase: str | None) -> Any:
    """The model of ``phase`` built from the options without data (input masks replaced by placeholders);
    a bad or missing option is a one-line :class:`InputError`."""
    from ..models import get_model  # noqa: PLC0415
    from ..models.options import INPUT_OPTIONS  # noqa: PLC0415

    base = {k: v for k, v in cfg.model_options.items() if k not in INPUT_OPTIONS}
    if k2prime_source(cfg.model_options)[0] in ("mask", "region"):
        del base["k2prime"]  # a region: api.fit gives the model its mean TAC
        if cfg.model.lower() == "mrtm2":
            base["k2prime_tac"] = np.ones(2)  # stands for the region TAC api.fit derives from the mask
        elif cfg.model.lower() == "lpntpet2":
            base["k2prime_mask"] = np.ones(1, dtype=bool)  # stands for the voxels api.fit selects
    if phase is not None:
        base["window"] = cfg.windows[phase]
    try:
        return get_model(cfg.model, **base)
    except ValueError as exc:
        raise InputError(f"model {cfg.model!r}: {exc}") from None


def _check_model_options(cfg: StudyConfig) -> None:
    """Build the model for every phase (no data): bad or missing options fail here, not after fits."""
    for phase in cfg.phases:
        _build_check_model(cfg, phase)


def _align_k2prime_window(cfg: StudyConfig, frames: Any) -> None:
    """The default release model's k2' window ends at the challenge onset; end it at the last frame ending by the
    onset instead (the frames used are the same: a frame belongs to the window holding its mid-time), so that no
    frame straddles its bound."""
    kw = cfg.model_options.get("k2prime_window")
    if not kw:
        return
    ends = np.asarray(frames.end_min, dtype=float)
    before = ends[ends <= float(kw[1]) + 1e-9]
    if before.size and float(before[-1]) > float(kw[0]) and abs(float(before[-1]) - float(kw[1])) > 1e-9:
        mids = (np.asarray(frames.start_min, float) + ends) / 2
        same = np.array_equal(mids < float(kw[1]), mids < float(before[-1]) + 1e-9)
        if same:
            cfg.model_options["k2prime_window"] = [float(kw[0]), float(before[-1])]
            if cfg.model_choice is not None:
                cfg.model_choice["options"] = dict(cfg.model_options)
                cfg.model_choice["reason"] = (f"k2' = median MRTM k2' over the frames before the challenge "
                                              f"({float(kw[0]):g}-{float(before[-1]):g} min)")


def _check_scan_windows(cfg: StudyConfig, model: Any, frames: Any, scan: Scan) -> None:
    """Every window holds enough frames of this scan for the model
    (:func:`voxelkit.models.activation.check_windows`); an lp-ntPET release grid has frames after every onset."""
    from ..models.activation import check_windows  # noqa: PLC0415

    try:
        if cfg.windows:
            check_windows(model, cfg.windows, frames)
        if is_release_model(cfg.model):  # the release grid: every onset needs fitted frames after it
            from ..models.lpntpet import MIN_FRAMES_AFTER_ONSET  # noqa: PLC0415

            used = np.asarray(model.used_frames(frames), bool)
            td = model.grid(frames, used, fine=bool(getattr(model, "refine", False)))[0]
            end_used = np.asarray(frames.end_min, float)[used]
            after = (end_used[None, :] > td[:, None] + 1e-9).sum(axis=1)
            if end_used.size and (after < MIN_FRAMES_AFTER_ONSET).any():
                bad = float(td[np.argmax(after < MIN_FRAMES_AFTER_ONSET)])
                raise InputError(f"td_range: onset {bad:g} min has fewer than {MIN_FRAMES_AFTER_ONSET} fitted "
                                 f"frames after it (the last fitted frame ends at {end_used[-1]:g} min); lower "
                                 "td_range (--td-range) or widen the window")
    except InputError as exc:
        raise InputError(f"{scan.sidecar}: {exc}") from None


@dataclass
class ScanProtocol:
    """How the tracer was given, from the scans' sidecars: ``protocol`` (``bolus`` / ``bolus-infusion`` / None =
    unknown or mixed), ``kbol_min`` (Kbol in minutes when derivable), and where it came from (``source``)."""

    protocol: str | None
    kbol_min: float | None
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "kbol_min": self.kbol_min, "source": self.source}


def sidecar_kbol_min(meta: dict[str, Any]) -> float | None:
    """Kbol (minutes) of a bolus-plus-infusion scan from its BIDS sidecar: the bolus activity over the infusion
    activity per minute, ``(InjectedRadioactivity - InfusionRadioactivity) / (InfusionRadioactivity / T)`` with
    the infusion's duration ``T = InjectedVolume / InfusionSpeed`` (minutes, mL and mL/min), to 0.1 min; None
    when a field is missing or not positive."""
    try:
        total = float(meta["InjectedRadioactivity"])
        inf = float(meta["InfusionRadioactivity"])
        dur = float(meta["InjectedVolume"]) / float(meta["InfusionSpeed"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    if str(meta.get("InfusionSpeedUnits", "mL/min")).lower() not in ("ml/min", "ml.min-1", "ml min-1"):
        return None
    if not (total > inf > 0 and dur > 0):
        return None
    return float(round((total - inf) / (inf / dur), 1))  # 0.1 min: the sidecar activities are rounded


def scan_protocol(scans: list[Scan]) -> ScanProtocol:
    """The protocol of the study from every scan's sidecar ``ModeOfAdministration`` (``bolus``,
    ``bolus-infusion``; BIDS also allows ``infusion``), and Kbol when every bolus-plus-infusion sidecar gives the
    same one (:func:`sidecar_kbol_min`, within 1 min).  Mixed or missing: unknown (None)."""
    from ..models.activation import PROTOCOLS  # noqa: PLC0415

    modes, kbols = set(), []
    for scan in scans:
        meta: dict[str, Any] = {}
        if scan.sidecar.suffix == JSON_EXT:
            try:
                meta = json.loads(scan.sidecar.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise InputError(f"{scan.sidecar}: cannot read JSON sidecar ({exc})") from None
        mode = str(meta.get("ModeOfAdministration", "")).strip().lower().replace(" ", "-").replace("+", "-")
        modes.add(mode or None)
        kbols.append(sidecar_kbol_min(meta) if isinstance(meta, dict) else None)
    if len(modes) != 1 or next(iter(modes)) not in PROTOCOLS:
        return ScanProtocol(None, None, "ModeOfAdministration of the sidecars: "
                            + (", ".join(sorted(str(m) for m in modes)) if modes else "none")
                            + " (unknown or mixed)")
    protocol = next(iter(modes))
    kbol = None
    if protocol == "bolus-infusion" and kbols and all(k is not None for k in kbols) \
            and max(kbols) - min(kbols) <= 1.0:
        kbol = float(np.median(kbols))
    return ScanProtocol(protocol, kbol, "ModeOfAdministration of the sidecars"
                        + (", Kbol from InjectedRadioactivity, InfusionRadioactivity, InjectedVolume / "
                           "InfusionSpeed" if kbol is not None else ""))


def _check_activation(cfg: StudyConfig, protocol: ScanProtocol) -> None:
    """``contrast = "activation"``: without a model, pick :func:`voxelkit.models.activation.default_activation`
    (logged, recorded in ``cfg.model_choice``); then :func:`~voxelkit.models.activation.check_activation` with
    the sidecars' protocol: warnings logged and kept in ``cfg.activation_check``, a refused combination raises
    (one line) before any fit."""
    from ..models.activation import check_activation, default_activation  # noqa: PLC0415
    from ..models.options import validate_model_options  # noqa: PLC0415

    if cfg.model is None:
        kind, k2 = k2prime_source(cfg.model_options)
        model, opts = default_activation(protocol.protocol, cfg.windows,
                                         k2prime_mask=k2 if kind in ("mask", "region") else None)
        if "k2prime_mask" in opts:  # the activation table's name for a k2' region: k2prime in the study settings
            opts["k2prime"] = opts.pop("k2prime_mask")
        merged = {**opts, **cfg.model_options}  # the user's options win, key by key
        merged = validate_model_options(merged, model, "default activation model options")
        cfg.model, cfg.model_options = model, merged
        cfg.model_choice = {"model": model, "options": merged, "rule": "voxelkit.models.activation."
                            "default_activation", "reason": "contrast activation without a model"}
        log.info("contrast activation without --model: %s with %s (voxelkit.models.activation.default_activation)",
                 model, ", ".join(f"{k}={v}" for k, v in merged.items()))
    warns = check_activation(cfg.model, _activation_options(cfg.model_options), protocol.protocol, cfg.windows,
                             protocol.kbol_min)
    for w in warns:
        log.warning("WARNING: %s", w)
    cfg.activation_check = {**protocol.as_dict(), "model": cfg.model, "warnings": warns}


def _activation_options(model_options: dict[str, Any]) -> dict[str, Any]:
    """The options as :mod:`voxelkit.models.activation`'s table reads them: a k2' region (``k2prime`` = mask file or
    atlas region) under its name there, ``k2prime_mask``."""
    if k2prime_source(model_options)[0] not in ("mask", "region"):
        return model_options
    opts = dict(model_options)
    opts["k2prime_mask"] = opts.pop("k2prime")
    return opts


def _check_not_foreign(out: Path) -> None:
    """Refuse a folder that another tool made (its dataset_description.json's GeneratedBy names another tool), or
    a non-empty folder without a voxelkit manifest.  Reads only."""
    if not out.is_dir():
        return
    desc = out / DATASET_DESCRIPTION
    if desc.is_file():
        try:
            doc = json.loads(desc.read_text())
        except (OSError, json.JSONDecodeError):
            doc = None
        gen = doc.get("GeneratedBy") if isinstance(doc, dict) else None
        tools = [str(g.get("Name")) for g in gen if isinstance(g, dict)] if isinstance(gen, list) else []
        if not tools or tools[0] != "voxelkit":
            who = f"made by {', '.join(tools)}" if tools else "not made by voxelkit"
            raise InputError(f"{out}: a derivatives dataset {who} (see its {DATASET_DESCRIPTION}); voxelkit run "
                             f"writes only into folders it created: choose another output folder, e.g. "
                             f"{out.parent / 'voxelkit'}")
    entries = [e.name for e in out.iterdir() if e.name not in (MANIFEST_NAME, LOCK_NAME)]
    if entries and read_manifest(out) is None:
        raise InputError(f"{out}: folder is not empty ({len(entries)} entries) and holds no voxelkit manifest "
                         f"({MANIFEST_NAME}): voxelkit run writes only into an empty folder or its own earlier "
                         "outputs; choose another output folder")


def _input_paths(cfg: StudyConfig, pairing: Pairing) -> list[Path]:
    paths: list[Path] = [p for s in pairing.scans.values() for p in (s.pet, s.sidecar)]
    for p in (cfg.ref_mask, cfg.brain_mask, cfg.atlas, cfg.atlas_labels, k2prime_region_file(cfg),
              cfg.bids_dir / BIDS_PARTICIPANTS):
        if p is not None and Path(p).exists():
            paths.append(Path(p))
    return paths


def _os_error_line(exc: OSError) -> str:
    where = exc.filename or "voxelkit run"
    return f"{where}: {exc.strerror or exc}"


def run_study(cfg: StudyConfig, *, progress: bool = True) -> StudyResult:
    """Run the whole study; re-running with the same inputs and settings reuses finished per-scan fits.

    It only sequences the stages that can also be called alone -- :func:`fit_scans`, :func:`contrast_maps`,
    :func:`group_stats`, :func:`roi_tables`, :func:`provenance` -- under one folder lock, then the report.

    Order: every cheap check first (:func:`validate_study`, nothing written), then the output folder is locked
    (:class:`voxelkit.outputs.FolderLock`) for the whole run, per-scan fits (cached; a fit record is written last),
    failed scans left out, contrasts, statistics, ROI tables, and last ``study.json`` and ``provenance.json``
    beside the results they describe.  Operating-system errors (unreadable input, unwritable output) are one-line
    :class:`InputError`; a KeyboardInterrupt releases the lock and leaves the run resumable."""
    from .scheduler import study_scheduler  # noqa: PLC0415

    try:
        with study_scheduler(cfg):  # threads (default) or a Dask cluster (pipeline.scheduler), made on first use
            return _run_study(cfg, progress)
    except OSError as exc:
        raise InputError(_os_error_line(exc)) from exc


def _run_study(cfg: StudyConfig, progress: bool) -> StudyResult:
    t_start = time.perf_counter()
    out, pairing, plan, backend, folder = _prepare(cfg)
    if cfg.tfce:  # a fresh install: compile the TFCE kernels in the background now, behind the per-scan fits
        import_module("voxelkit.stats.engine").start_cold_compile()  # (a no-op on a warm cache or when started)
    with FolderLock(out, "voxelkit run"):
        folder.write_manifest(complete=False)  # first: an interrupted run stays resumable
        try:
            result = _run_locked(cfg, pairing, plan, folder, backend, progress, t_start)
        finally:
            folder.write_manifest(complete=False)  # what exists so far (the final call below marks it complete)
        folder.write_manifest(complete=True)
    return result


def _prepare(cfg: StudyConfig) -> tuple[Path, Pairing, _Plan, Any, OutputFolder]:
    """Every check before anything is written: output folder, scans, derivatives, pairing, :func:`validate_study`;
    then the backend and the (not yet locked) output folder."""
    out = _check_output_dir(cfg)
    _check_not_foreign(out)
    scans = discover_scans(cfg)
    _discover_derivatives(cfg)
    pairing = pair_scans(scans, cfg.conditions, cfg.on_missing)
    plan = validate_study(cfg, pairing)
    backend = get_backend(cfg.device)
    folder = OutputFolder(out, "run", resumable=True, inputs=_input_paths(cfg, pairing))
    return out, pairing, plan, backend, folder


def _write_json_atomic(obj: dict[str, Any], path: Path, folder: OutputFolder) -> Path:
    folder.record(path)
    return write_json(obj, path, atomic=True)


@dataclass
class ScanFits:
    """What :func:`fit_scans` gives the later stages, in memory: the subjects kept (failed scans left out unless
    ``keep_failed_scans``), every map they need as a 3-D float32 array on the PET grid (kept from the fits done
    now, read once from the cache otherwise), the brain and reference masks, affine, atlas, coded covariates, and
    the fit counts.  BPND unitless; k2' in 1/min."""

    config: StudyConfig
    output_dir: Path
    pairing: Pairing  #: subjects kept for the group test and their scans
    maps: dict[tuple[str, str], np.ndarray]  #: (subject, condition) -> contrast quantity (not smoothed)
    bp_nd: dict[tuple[str, str, str | None], np.ndarray]  #: (subject, condition, phase) -> BPND map
    mask: np.ndarray  #: brain mask (3-D bool)
    affine: np.ndarray
    labels: np.ndarray | None  #: atlas labels on the PET grid
    names: dict[int, str]  #: atlas label -> region name
    covariates: Any  #: CodedCovariates of the kept subjects, or None
    fitted: int = 0
    reused: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    k2prime: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    folder: OutputFolder | None = field(default=None, repr=False)
    backend: Any = field(default=None, repr=False)
    sums: _Checksums | None = field(default=None, repr=False)
    first: Any = field(default=None, repr=False)  #: header-only image of the first scan
    locked: bool = field(default=False, repr=False)  #: True while run_study holds the folder lock
    ref_mask: np.ndarray | None = field(default=None, repr=False)  #: reference mask (non-zero voxels) on the grid

    @property
    def subjects(self) -> list[str]:
        return self.pairing.subjects


def _run_stage(fits: ScanFits, fn: Any, *args: Any, **kw: Any) -> Any:
    """Run a stage on its own (outside run_study): under the folder lock, manifest updated afterwards
    (incomplete: a later run_study finishes it), OS errors as one line."""
    if fits.locked or fits.folder is None:
        return fn(*args, **kw)
    try:
        with FolderLock(fits.output_dir, "voxelkit run"):
            try:
                return fn(*args, **kw)
            finally:
                fits.folder.write_manifest(complete=False)
    except OSError as exc:
        raise InputError(_os_error_line(exc)) from exc


def fit_scans(cfg: StudyConfig, *, progress: bool = False) -> ScanFits:
    """Validate the study (:func:`validate_study`, nothing written before), lock the output folder, run the
    per-scan fits (cached: a finished fit with the same inputs and settings is reused; a fit record is written
    last), leave out subjects with failed scans (unless ``keep_failed_scans``) and read every map the later stages
    need once.  The manifest is left incomplete (a later :func:`run_study` completes it)."""
    from .scheduler import study_scheduler  # noqa: PLC0415

    t_start = time.perf_counter()
    try:
        with study_scheduler(cfg):
            out, pairing, plan, backend, folder = _prepare(cfg)
            with FolderLock(out, "voxelkit run"):
                folder.write_manifest(complete=False)
                try:
                    fits = _fit_scans_locked(cfg, pairing, plan, folder, backend, progress)
                finally:
                    folder.write_manifest(complete=False)
    except OSError as exc:
        raise InputError(_os_error_line(exc)) from exc
    fits.seconds["total"] = time.perf_counter() - t_start
    return fits


def _fit_scans_locked(cfg: StudyConfig, pairing: Pairing, plan: _Plan, folder: OutputFolder, backend: Any,
                      progress: bool) -> ScanFits:
    import threading  # noqa: PLC0415

    out = folder.path.resolve()
    timings: dict[str, float] = {}
    _write_json_atomic({"Name": "voxelkit outputs", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
                        "GeneratedBy": [{"Name": "voxelkit", "Version": __version__}]},
                       out / DATASET_DESCRIPTION, folder)
    sums = _Checksums()
    first, brain, labels, names = plan.first, plan.brain, plan.labels, plan.names

    # per-scan fits (cached)
    t0 = time.perf_counter()
    todo = [pairing.scans[(s, c)] for s in pairing.subjects for c in cfg.conditions]
    manifest_lock = threading.Lock()

    keep = ("bp_nd", "release") if cfg.contrast == "release" else ("bp_nd",)  # the maps the later stages use

    def fit_one(scan: Scan) -> _ScanFits:
        res = _fit_scan(scan, cfg, out, sums, brain, (labels, names), folder, ref=plan.ref,
                        header=plan.headers.get(scan.pet), keep=keep, k2_region=plan.k2prime_region)
        with manifest_lock:
            folder.write_manifest(complete=False)
        return res

    from .scheduler import current_scheduler  # noqa: PLC0415
    from .scheduler import fit_scans as dask_fit_scans  # noqa: PLC0415

    sched = current_scheduler() if cfg.scheduler != "threads" else None
    if sched is not None and sched.distributed:
        # Dask: one task per scan (the worker writes the fits and records); the files join the manifest here
        outcomes = dask_fit_scans(sched, cfg, todo, sums, folder, str(first.get_filename()))
    elif cfg.jobs > 1 and len(todo) > 1:
        # threads: NumPy's array work and zlib release the GIL; each scan writes only its own files
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        with ThreadPoolExecutor(max_workers=cfg.jobs) as pool:
            outcomes = list(_progress(pool.map(fit_one, todo), "fitting scans", progress, total=len(todo)))
    else:
        outcomes = [fit_one(scan) for scan in _progress(todo, "fitting scans", progress)]
    fitted = sum(o.fitted for o in outcomes)
    reused = sum(o.reused for o in outcomes)
    k2prime = {f"sub-{scan.subject}_ses-{scan.session}": o.k2prime for scan, o in zip(todo, outcomes, strict=True)
               if o.k2prime is not None}
    timings["fit"] = time.perf_counter() - t0
    log.info("per-scan fits: %d fitted, %d reused from %s", fitted, reused, out)

    # failed scans: reported (above, per fit) and their subjects left out unless the user keeps them
    failed = [f for o in outcomes for f in o.failures]
    for f in failed:
        f["kept"] = bool(cfg.keep_failed_scans)
    covariates = plan.covariates
    if failed and not cfg.keep_failed_scans:
        bad: dict[str, list[str]] = {}
        for f in failed:
            bad.setdefault(f["subject"], []).append(
                f"{_describe_scan(f['subject'], f['session'], f['phase'])}: {f['n_failed']} of {f['n_voxels']} "
                f"voxels failed ({f['main_status']})")
        dropped = dict(pairing.dropped)
        for sub, why in bad.items():
            dropped[sub] = "failed fit: " + "; ".join(why)
        kept = [s for s in pairing.subjects if s not in bad]
        pairing = Pairing(kept, {k: v for k, v in pairing.scans.items() if k[0] in kept}, dropped)
        log.warning("WARNING: left out of the group test (most voxels failed; keep them with --keep-failed-scans "
                    "or keep_failed_scans = true): %s", "; ".join(f"sub-{s}" for s in bad))
        _check_group_size(cfg, pairing, extra=f" after leaving out {len(bad)} subject(s) with failed scans "
                                                "(--keep-failed-scans keeps them)")
        covariates = _code_covariates(cfg, pairing.subjects)
    elif failed:
        log.warning("WARNING: %d failed scan(s) kept in the group test (keep_failed_scans)", len(failed))

    # every map the later stages use: those just fitted from memory, the reused ones read once
    t0 = time.perf_counter()
    cache: dict[tuple[str, str, str, str | None], np.ndarray] = {}
    for scan, o in zip(todo, outcomes, strict=True):
        for (param, phase), vol in getattr(o, "maps", {}).items():
            cache[(scan.subject, scan.session, param, phase)] = vol

    def reader(sub: str, cond: str) -> Any:
        def load(phase: str | None, param: str = "bp_nd") -> np.ndarray:
            key = (sub, cond, param, phase)
            if key not in cache:
                path = layout.map_path(out, sub, cond, cfg.model, param, phase)
                cache[key] = np.asarray(load_image(path).dataobj, dtype=np.float32)
            return cache[key]
        return load

    maps: dict[tuple[str, str], np.ndarray] = {}
    for sub in pairing.subjects:
        for cond in cfg.conditions:  # every condition (named contrasts use any two)
            maps[(sub, cond)] = _scan_value_map(out, cfg, sub, cond, load=reader(sub, cond))
    if labels is not None:  # the ROI tables: BPND of every phase
        for sub in pairing.subjects:
            for cond in cfg.conditions:
                for phase in cfg.phases:
                    reader(sub, cond)(phase, "bp_nd")
    if brain is not None:
        brain_mask = brain[0]
    else:
        first_map = reader(pairing.subjects[0], cfg.conditions[0])(cfg.phases[0], "bp_nd")
        brain_mask = np.isfinite(first_map)
    kept = set(pairing.subjects)  # the fits of subjects left out (failed scans) are not passed on
    bp_nd = {(s, c, ph): v for (s, c, param, ph), v in cache.items() if param == "bp_nd" and s in kept}
    timings["read_maps"] = time.perf_counter() - t0
    ref_mask = np.asarray(plan.ref.dataobj) != 0 if plan.ref is not None else None
    return ScanFits(cfg, out, pairing, maps, bp_nd, brain_mask, first.affine, labels, names, covariates,
                    fitted=fitted, reused=reused, failed=failed, k2prime=k2prime, seconds=timings, folder=folder,
                    backend=backend, sums=sums, first=first, ref_mask=ref_mask)


def contrast_maps(cfg: StudyConfig, fits: ScanFits) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray,
                                                                np.ndarray]:
    """Per kept subject, the contrast quantity of each condition (``fits.maps``) smoothed within the brain mask
    (``cfg.smoothing_fwhm``, mm), and the per-subject contrast map A - B written to ``sub-*/`` as by
    :func:`run_study`.  Returns ``(maps_a, maps_b, mask, affine)``: lists of 3-D float32 arrays, 3-D bool mask."""
    return _run_stage(fits, _contrast_maps, cfg, fits)


def _contrast_maps(cfg: StudyConfig, fits: ScanFits) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray,
                                                                 np.ndarray]:
    out, affine, brain_mask = fits.output_dir, fits.affine, fits.mask
    maps_a, maps_b = [], []
    for sub in fits.pairing.subjects:
        va = smooth_in_mask(fits.maps[(sub, cfg.conditions[0])], brain_mask, affine, cfg.smoothing_fwhm)
        vb = smooth_in_mask(fits.maps[(sub, cfg.conditions[1])], brain_mask, affine, cfg.smoothing_fwhm)
        maps_a.append(va)
        maps_b.append(vb)
        cpath = layout.contrast_path(out, sub, f"{cfg.contrast}{cfg.conditions[0]}minus{cfg.conditions[1]}")
        if fits.folder is not None:
            fits.folder.record(cpath)
        cpath.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image((va - vb).astype(np.float32), affine), str(cpath))
    return maps_a, maps_b, brain_mask, affine


def group_stats(cfg: StudyConfig, a: Any, b: Any, mask: np.ndarray | None = None, affine: np.ndarray | None = None,
                *, fits: ScanFits | None = None, covariates: Any = None, labels: np.ndarray | None = None,
                names: dict[int, str] | None = None, backend: Any = None, progress: bool = False,
                stats_dir: Path | None = None) -> Any:
    """The group test on A - B (``a``, ``b``: per-subject 3-D maps, e.g. from :func:`contrast_maps`), as in
    :func:`run_study`: a paired sign-flip permutation test, or with covariates the centred-covariate GLM
    (:func:`run_group_stats`).  With ``fits`` (from :func:`fit_scans`), the mask, affine, covariates, atlas and
    backend default to its; the statistics are written to ``group/stats/`` of ``cfg.output_dir`` (or
    ``stats_dir``).  Every inference setting of ``cfg`` (:meth:`StudyConfig.inference`) is passed on.  Returns the
    :class:`~voxelkit.stats.PermutationResult`."""
    if fits is not None:
        mask = fits.mask if mask is None else mask
        affine = fits.affine if affine is None else affine
        covariates = fits.covariates if covariates is None else covariates
        labels = fits.labels if labels is None else labels
        names = fits.names if names is None else names
        backend = fits.backend if backend is None else backend
    if mask is None or affine is None:
        raise InputError("group_stats: a brain mask and affine are needed (mask=, affine= or fits=)")
    if backend is None:
        backend = get_backend(cfg.device)
    out = fits.output_dir if fits is not None else _check_output_dir(cfg)

    def call() -> Any:
        return run_group_stats(cfg, list(a), list(b), mask, affine, covariates, labels, names or {}, out,
                               backend=backend, progress=progress, folder=fits.folder if fits is not None else None,
                               stats_dir=stats_dir)

    if fits is None:
        return call()
    return _run_stage(fits, call)


def _run_locked(cfg: StudyConfig, pairing: Pairing, plan: _Plan, folder: OutputFolder, backend: Any,
                progress: bool, t_start: float) -> StudyResult:
    """The stages in order under the folder lock: fit_scans -> contrast_maps -> group_stats -> roi_tables ->
    provenance -> report."""
    out = folder.path.resolve()
    fits = _fit_scans_locked(cfg, pairing, plan, folder, backend, progress)
    fits.locked = True
    timings = dict(fits.seconds)

    if cfg.contrasts:  # named contrasts: every scan fitted once above, the paired stages per contrast
        result = StudyResult(cfg, out, fits.pairing.subjects, fits.pairing.dropped, fits.fitted, fits.reused,
                             None, [], failed_scans=fits.failed, k2prime=fits.k2prime, fits=fits)
        stats_result = None
        for a, b in cfg.contrast_pairs():
            sub = cfg.for_contrast(a, b)
            label = layout.contrast_label(cfg.contrast, a, b)
            t0 = time.perf_counter()
            maps_a, maps_b, brain_mask, affine = contrast_maps(sub, fits)
            sdir = contrast_stats_dir(out, label)
            res = group_stats(sub, maps_a, maps_b, brain_mask, affine, fits=fits, progress=progress, stats_dir=sdir)
            roi = roi_tables(sub, fits, label=label)
            timings[f"contrast {a}-{b}"] = time.perf_counter() - t0
            result.contrasts[label] = {"conditions": (a, b), "stats": res, "roi": roi, "stats_dir": sdir}
            log.info("contrast %s - %s: statistics in %s", a, b, sdir)
    else:
        t0 = time.perf_counter()
        maps_a, maps_b, brain_mask, affine = contrast_maps(cfg, fits)
        timings["contrast"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        stats_result = group_stats(cfg, maps_a, maps_b, brain_mask, affine, fits=fits, progress=progress)
        timings["stats"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        roi = roi_tables(cfg, fits)
        timings["roi"] = time.perf_counter() - t0

        result = StudyResult(cfg, out, fits.pairing.subjects, fits.pairing.dropped, fits.fitted, fits.reused,
                             stats_result, roi.tests, failed_scans=fits.failed, k2prime=fits.k2prime, roi=roi,
                             fits=fits)
    _remove_stale(folder)
    timings["total_before_report"] = time.perf_counter() - t_start
    result.provenance = provenance(cfg, fits, stats_result, seconds=timings)

    if cfg.report:  # with named contrasts: one report, a part per contrast (what result.contrasts holds)
        t0 = time.perf_counter()
        from ..report import write_report  # noqa: PLC0415

        folder.record(layout.report_path(out))
        result.report = write_report(out, layout.report_path(out), study=cfg, provenance=result.provenance,
                                     stats=stats_result, written=folder.written,
                                     bp_nd=[fits.bp_nd[k] for k in sorted(fits.bp_nd, key=str)],
                                     contrasts=result.contrasts or None)
        timings["report"] = time.perf_counter() - t0
    result.seconds = timings
    return result


def provenance(cfg: StudyConfig, fits: ScanFits, stats_result: Any = None, *,
               seconds: dict[str, float] | None = None) -> dict[str, Any]:
    """The run's provenance: voxelkit and library versions, command, resolved settings, seed, backend, every
    input file with its sha256 and size, subjects kept and dropped (and why), the scan used per subject and
    condition, spatial conforming notes, failed scans, the k2' estimated per scan (1/min), covariate coding, fit
    counts and stage timings (seconds; default ``fits.seconds``).  Written with the resolved settings as
    ``provenance.json`` and ``study.json`` into the output folder (last, beside the results they describe) and
    returned.  ``stats_result`` (from :func:`group_stats`): its inference settings are recorded."""
    return _run_stage(fits, _provenance, cfg, fits, stats_result, seconds)


def _provenance(cfg: StudyConfig, fits: ScanFits, stats_result: Any, seconds: dict[str, float] | None) -> dict:
    out, pairing, folder = fits.output_dir, fits.pairing, fits.folder
    sums = fits.sums if fits.sums is not None else _Checksums()
    for scan in pairing.scans.values():
        sums(scan.pet)
        sums(scan.sidecar)
    k2_file = k2prime_region_file(cfg)
    for p in (cfg.ref_mask, cfg.brain_mask, cfg.atlas, cfg.atlas_labels, k2_file, cfg.bids_dir / BIDS_PARTICIPANTS):
        if p is not None and Path(p).exists():
            sums(Path(p))
    backend = fits.backend if fits.backend is not None else get_backend(cfg.device)
    timings = dict(fits.seconds if seconds is None else seconds)
    settings = stats_result.settings if stats_result is not None and hasattr(stats_result, "settings") else {}
    record = {
        "voxelkit": __version__, "command": sys.argv, "settings": cfg.to_dict(), "seed": cfg.seed,
        "backend": {"name": backend.name, "reason": backend.reason}, "versions": _versions(),
        "inputs": sums.table(), "subjects": pairing.subjects, "dropped_subjects": pairing.dropped,
        "scans": scan_table(pairing),
        "spatial_conform": conform_notes([cfg.ref_mask, cfg.brain_mask, cfg.atlas,
                                          k2_file if k2prime_source(cfg.model_options)[0] == "mask" else None]),
        "failed_scans": fits.failed, "k2prime_per_scan": fits.k2prime, "model_choice": cfg.model_choice,
        "activation_check": cfg.activation_check,
        "covariate_coding": fits.covariates.as_dict() if fits.covariates is not None else None,
        "inference": settings.get("inference", cfg.inference().to_dict()) if isinstance(settings, dict)
        else cfg.inference().to_dict(),
        "fits": {"fitted": fits.fitted, "reused": fits.reused},
        "seconds": {k: round(v, 3) for k, v in timings.items()},
    }
    # the settings record is written beside the results it describes, at the end (never before validation)
    if folder is not None:
        _write_json_atomic(cfg.to_dict(), out / STUDY_RECORD, folder)
        _write_json_atomic(record, out / PROVENANCE, folder)
    else:
        write_json(cfg.to_dict(), out / STUDY_RECORD, atomic=True)
        write_json(record, out / PROVENANCE, atomic=True)
    return record


def _remove_stale(folder: OutputFolder) -> None:
    """Remove group-level files an earlier run recorded here that this run did not write (a TFCE map after
    switching TFCE off, contrast maps of subjects now left out...).  Per-scan fits (the cache) stay."""
    prev = folder.previous or {}
    root = folder.path.resolve()
    now = set(folder.written)
    for rel in prev.get("written", []):
        if rel in now or rel.startswith("sub-") or rel in (MANIFEST_NAME, LOCK_NAME):
            continue
        f = (root / rel).resolve()
        if root in f.parents and f.is_file() and not folder.is_input(f):
            f.unlink()
            log.info("removed %s (an earlier run's output that this run does not produce)", f)


def run_group_stats(cfg: StudyConfig, maps_a: list[np.ndarray], maps_b: list[np.ndarray], mask: np.ndarray,
                    affine: np.ndarray, covariates: Any, labels: np.ndarray | None,
                    names: dict[int, str], out: Path, *, backend: Any, progress: bool,
                    folder: OutputFolder | None = None, stats_dir: Path | None = None) -> Any:
    """Paired permutation inference on A - B.  With covariates (a :class:`~voxelkit.stats.covariates.
    CodedCovariates`: numeric columns mean-centred, categorical effect-coded and centred), a GLM of the differences
    on ``[1, Z]`` whose intercept -- the mean difference at the sample's average covariate values -- is tested."""
    from ..stats import Design, one_sample_design, permutation_test  # noqa: PLC0415
    from .scheduler import study_permutation_test  # noqa: PLC0415

    permutation_test = study_permutation_test(permutation_test)  # Dask: the permutation batches on the cluster

    masker = Masker(mask, affine)
    a = np.stack([masker.transform(m) for m in maps_a]).astype(np.float64)
    b = np.stack([masker.transform(m) for m in maps_b]).astype(np.float64)
    diff = a - b
    n = diff.shape[0]
    extra: dict[str, Any] = {"contrast": f"{cfg.contrast}: {cfg.conditions[0]} - {cfg.conditions[1]}",
                             "smoothing_fwhm_mm": cfg.smoothing_fwhm}
    if covariates is not None and covariates.q:
        names_x = ["intercept", *covariates.names]
        x = np.column_stack([np.ones(n), covariates.matrix])
        c = np.zeros(x.shape[1])
        c[0] = 1.0
        # Freedman-Lane with sign flips: the drug effect (intercept of the differences, at the average covariate
        # values because the covariates are centred) adjusted for the covariates
        design = Design(x, c, method="flip", names=names_x, kind="glm")
        extra.update(covariates.as_dict())
        extra.update(design_columns=names_x, tested="intercept of the paired differences = mean difference "
                     f"{cfg.conditions[0]} - {cfg.conditions[1]} at the sample's average covariate values")
    else:
        design = one_sample_design(n, kind="paired")
    atlas_img = nib.Nifti1Image(labels.astype(np.int32), affine) if labels is not None else None
    # every inference setting of the study ([inference]: voxelkit.stats.settings.Inference), as given
    res = permutation_test(diff, masker, design, **cfg.inference().as_kwargs(), device=backend,
                           progress=progress, atlas=atlas_img, atlas_lookup=names or None,
                           extra_settings=extra)
    sdir = layout.stats_dir(out) if stats_dir is None else Path(stats_dir)
    paths = res.save(sdir, overwrite=True)
    if folder is not None:
        for p in paths.values():
            folder.record(p)
        if (sdir / MANIFEST_NAME).exists():
            folder.record(sdir / MANIFEST_NAME)
    return res


def _progress(items, desc: str, enabled: bool, total: int | None = None):
    if not enabled or not sys.stderr.isatty():  # progress bars on a terminal only: no \r lines in log files
        return items
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(items, desc=desc, unit="scan", file=sys.stderr, leave=False, total=total)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    out = {}
    for pkg in ("numpy", "scipy", "nibabel", "nilearn", "connected-components-3d", "numba", "matplotlib",
                "cupy-cuda12x", "cupy-cuda13x"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
