"""``voxelkit run``: a BIDS-PET crossover study -> per-scan parametric maps -> contrast maps -> permutation
inference -> ROI tables -> provenance and an HTML report.  Layout of the outputs: :mod:`.layout`."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .. import __version__
from ..backend import get_backend
from ..frames import FrameTiming
from ..io import DynamicPET, InputError, Masker, check_same_space, load_image, load_mask, write_json, write_tsv
from ..models.status import Status
from . import layout
from .bids import Pairing, Scan, find_derivative, find_scans, pair_scans, read_participants
from .config import StudyConfig

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
        cfg.ref_mask = find_derivative(cfg.bids_dir, "*desc-reference_mask.nii.gz")
        if cfg.ref_mask is None:
            raise InputError("a reference region mask is required (ref_mask / --ref-mask); none found under "
                             f"{cfg.bids_dir}/derivatives/*/ as *desc-reference_mask.nii.gz")
        log.info("reference region mask: %s (found in derivatives)", cfg.ref_mask)
    if cfg.brain_mask is None:
        cfg.brain_mask = find_derivative(cfg.bids_dir, "*desc-brain_mask.nii.gz")
        if cfg.brain_mask is not None:
            log.info("brain mask: %s (found in derivatives)", cfg.brain_mask)
    if cfg.atlas is None:
        cfg.atlas = find_derivative(cfg.bids_dir, "*_dseg.nii.gz")
        if cfg.atlas is not None:
            log.info("label atlas: %s (found in derivatives)", cfg.atlas)
    if cfg.atlas is not None and cfg.atlas_labels is None:
        tsv = cfg.atlas.with_name(cfg.atlas.name.replace(".nii.gz", ".tsv"))
        cfg.atlas_labels = tsv if tsv.exists() else None


def _load_dynamic(scan: Scan) -> DynamicPET:
    img = load_image(scan.pet)
    if img.ndim != 4:
        raise InputError(f"{scan.pet}: expected a 4-D dynamic image, got shape {img.shape}")
    frames = FrameTiming.from_bids_json(scan.sidecar)
    frames.check_count(int(img.shape[3]), str(scan.pet))
    data = np.asarray(img.dataobj, dtype=np.float32)
    mem = nib.Nifti1Image(data, img.affine, img.header)
    return DynamicPET(mem, frames, str(scan.pet))


def _qc_record(result: Any, scan: Scan, phase: str | None, cfg: StudyConfig, ref_tac: np.ndarray,
               ref_desc: str, labels: np.ndarray | None, names: dict[int, str]) -> dict[str, Any]:
    """Reference TAC, a few voxel TACs with fitted curves, histograms and status counts for the report."""
    ok = np.flatnonzero((result.status == Status.OK) & np.isfinite(result.bp_nd))
    examples = []
    if ok.size:
        order = ok[np.argsort(result.bp_nd[ok], kind="stable")]
        for q in (0.1, 0.5, 0.9, 0.99):
            idx = int(order[min(order.size - 1, int(q * order.size))])
            if any(e["index"] == idx for e in examples):
                continue
            try:
                fitted = np.asarray(result.fitted(idx), dtype=float).tolist()
            except (NotImplementedError, ValueError):
                fitted = None
            ijk = np.argwhere(result.masker.mask)[idx].tolist()
            lab = int(labels[tuple(ijk)]) if labels is not None else 0
            examples.append({"index": idx, "ijk": ijk, "label": names.get(lab, ""),
                             "tac": np.asarray(result.inputs[0][idx], dtype=float).tolist(), "fitted": fitted,
                             "params": {k: float(v[idx]) for k, v in result.params.items()}})
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
            "n_voxels": result.n, "fit_seconds": result.seconds, "backend": result.backend}


def _fit_scan(scan: Scan, cfg: StudyConfig, out: Path, sums: _Checksums, brain: tuple[np.ndarray, Any] | None,
              atlas: tuple[np.ndarray | None, dict[int, str]]) -> tuple[int, int]:
    """Fit every phase of one scan unless a finished fit with the same inputs and settings exists.
    Returns (fitted, reused) counts."""
    from ..api import fit, reference_tac  # noqa: PLC0415

    inputs = {"pet": sums(scan.pet), "sidecar": sums(scan.sidecar), "ref_mask": sums(cfg.ref_mask),
              "brain_mask": sums(cfg.brain_mask)}
    settings = cfg.fit_settings()
    todo = []
    for phase in cfg.phases:
        rec_path = layout.fit_record_path(out, scan.subject, scan.session, cfg.model, phase)
        if rec_path.exists():
            try:
                rec = json.loads(rec_path.read_text())
            except json.JSONDecodeError:
                rec = {}
            outputs_ok = all(Path(p).exists() for p in rec.get("outputs", []))
            if rec.get("inputs") == inputs and rec.get("settings") == settings and outputs_ok:
                continue
        todo.append(phase)
    if not todo:
        return 0, len(cfg.phases)
    dpet = _load_dynamic(scan)
    ref_tac, ref_desc = reference_tac(dpet, dpet.data(), cfg.ref_mask)
    if brain is not None:
        check_same_space(brain[1], dpet.image, str(cfg.brain_mask), scan.pet.name)
    labels, names = atlas
    for phase in todo:
        opts = dict(cfg.model_options)
        if phase is not None:
            opts["window"] = cfg.windows[phase]
        result = fit(dpet, reference=ref_tac, model=cfg.model, mask=cfg.brain_mask, device=cfg.device, **opts)
        result.info.update(reference=ref_desc, pet=str(scan.pet), phase=phase)
        sdir = layout.scan_dir(out, scan.subject, scan.session)
        written = []
        imgs = result.to_images()
        meta = result.sidecar()
        for param, img in imgs.items():
            path = layout.map_path(out, scan.subject, scan.session, cfg.model, param, phase)
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(img, str(path))
            write_json({**meta, "Description": param, "Sources": [str(scan.pet)]},
                       path.with_name(path.name.replace(".nii.gz", ".json")))
            written.append(str(path))
        write_json(_qc_record(result, scan, phase, cfg, ref_tac, ref_desc, labels, names),
                   layout.qc_path(out, scan.subject, scan.session, cfg.model, phase))
        # The record is written last: an interrupted fit is redone on the next run.
        write_json({"inputs": inputs, "settings": settings, "outputs": written, "voxelkit": __version__,
                    "seconds": result.seconds, "status_counts": result.status_counts()},
                   layout.fit_record_path(out, scan.subject, scan.session, cfg.model, phase))
        log.debug("fitted %s (%s) in %.2f s into %s", scan.pet.name, phase or "whole scan", result.seconds, sdir)
    return len(todo), len(cfg.phases) - len(todo)


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


def _scan_value_map(out: Path, cfg: StudyConfig, subject: str, session: str) -> np.ndarray:
    """The per-scan quantity the contrast is built from: BPND, or baseline BPND - challenge BPND."""
    def load(phase: str | None) -> np.ndarray:
        path = layout.map_path(out, subject, session, cfg.model, "bp_nd", phase)
        return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)

    if cfg.contrast == "activation":
        return load("baseline") - load("challenge")
    if cfg.windows:
        # whole-scan contrast on windowed fits: use the first window (documented)
        return load(cfg.phases[0])
    return load(None)


def _read_atlas(cfg: StudyConfig, like: Any) -> tuple[np.ndarray | None, dict[int, str]]:
    if cfg.atlas is None:
        return None, {}
    img = load_image(cfg.atlas)
    check_same_space(like, img, "the PET images", str(cfg.atlas))
    labels = np.asarray(img.dataobj).astype(np.int32)
    names: dict[int, str] = {}
    if cfg.atlas_labels is not None:
        from ..stats.io import read_lookup  # noqa: PLC0415

        names = read_lookup(cfg.atlas_labels)
    for lab in np.unique(labels):
        if lab > 0 and int(lab) not in names:
            names[int(lab)] = f"label_{int(lab)}"
    return labels, names


def _roi_tables(out: Path, cfg: StudyConfig, pairing: Pairing, labels: np.ndarray | None,
                names: dict[int, str], brain: np.ndarray) -> list[dict[str, Any]]:
    """Mean BPND per region, condition, phase and subject, and a paired test per region (BH-FDR)."""
    if labels is None:
        return []
    from scipy import stats as sps  # noqa: PLC0415

    rows = []
    per_cond: dict[tuple[str, str], np.ndarray] = {}
    ref = np.asarray(load_image(cfg.ref_mask).dataobj) != 0 if cfg.ref_mask is not None else np.zeros_like(brain)
    # regions mostly inside the reference mask have BPND ~ 0 by construction: no test there
    region_ids = [k for k in sorted(names) if k > 0 and (labels == k).any() and (ref[labels == k]).mean() < 0.5]
    masks = {k: (labels == k) & brain for k in region_ids}
    for sub in pairing.subjects:
        for cond in cfg.conditions:
            for phase in cfg.phases:
                path = layout.map_path(out, sub, cond, cfg.model, "bp_nd", phase)
                vol = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
                for k in region_ids:
                    v = vol[masks[k]]
                    v = v[np.isfinite(v)]
                    rows.append({"subject": sub, "condition": cond, "phase": phase or "n/a", "region": names[k],
                                 "value": float(v.mean()) if v.size else float("nan"), "n_voxels": int(v.size)})
            vol = _scan_value_map(out, cfg, sub, cond)
            per_cond[(sub, cond)] = np.array([np.nanmean(vol[masks[k]]) if masks[k].any() else np.nan
                                              for k in region_ids])
    write_tsv(rows, layout.roi_dir(out) / "roi_values.tsv")
    a = np.stack([per_cond[(s, cfg.conditions[0])] for s in pairing.subjects])
    b = np.stack([per_cond[(s, cfg.conditions[1])] for s in pairing.subjects])
    tests = []
    with np.errstate(all="ignore"):
        t, p = sps.ttest_rel(a, b, axis=0, nan_policy="omit")
    t, p = np.asarray(t, float), np.asarray(p, float)
    p_fdr = _bh(p)
    for j, k in enumerate(region_ids):
        ma, mb = float(np.nanmean(a[:, j])), float(np.nanmean(b[:, j]))
        tests.append({"region": names[k], "n": int(np.isfinite(a[:, j] - b[:, j]).sum()), "quantity": cfg.contrast,
                      f"mean_{cfg.conditions[0]}": ma, f"mean_{cfg.conditions[1]}": mb, "mean_diff": ma - mb,
                      "pct_change": 100.0 * (ma - mb) / mb if mb else float("nan"),
                      "t": float(t[j]), "p": float(p[j]), "p_fdr": float(p_fdr[j])})
    write_tsv(tests, layout.roi_dir(out) / "roi_tests.tsv")
    return tests


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (NaN stays NaN)."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if not ok.any():
        return out
    q = p[ok]
    order = np.argsort(q)
    ranked = q[order] * q.size / np.arange(1, q.size + 1)
    adj = np.minimum.accumulate(ranked[::-1])[::-1]
    res = np.empty_like(q)
    res[order] = np.clip(adj, 0, 1)
    out[ok] = res
    return out


def _design_covariates(cfg: StudyConfig, subjects: list[str]) -> dict[str, np.ndarray]:
    if not cfg.covariates:
        return {}
    parts = read_participants(cfg.bids_dir)
    covs = {}
    for c in cfg.covariates:
        vals = []
        for s in subjects:
            row = parts.get(s)
            if row is None or c not in row:
                raise InputError(f"{cfg.bids_dir / 'participants.tsv'}: no value of {c!r} for sub-{s}")
            vals.append(row[c])
        try:
            covs[c] = np.asarray([float(v) for v in vals])
        except ValueError:
            levels = sorted(set(vals))
            if len(levels) != 2:
                raise InputError(f"covariate {c!r} is categorical with {len(levels)} levels; only two-level "
                                 "categorical covariates are coded automatically") from None
            covs[c] = np.asarray([1.0 if v == levels[1] else 0.0 for v in vals])
    return covs


def run_study(cfg: StudyConfig, *, progress: bool = True) -> StudyResult:
    """Run the whole study; re-running with the same inputs and settings reuses finished per-scan fits."""
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out = _check_output_dir(cfg)
    scans = find_scans(cfg.bids_dir)
    _discover_derivatives(cfg)
    pairing = pair_scans(scans, cfg.conditions, cfg.on_missing)
    if len(pairing.subjects) < 2:
        raise InputError(f"only {len(pairing.subjects)} subject(s) with both conditions: nothing to compare")
    backend = get_backend(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    write_json({"Name": "voxelkit outputs", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "voxelkit", "Version": __version__}]}, out / "dataset_description.json")
    write_json(cfg.to_dict(), out / "study.json")
    sums = _Checksums()

    first = load_image(pairing.scans[(pairing.subjects[0], cfg.conditions[0])].pet)
    brain_img = load_image(cfg.brain_mask) if cfg.brain_mask is not None else None
    brain = (load_mask(cfg.brain_mask, first, str(first.get_filename()), "brain mask"), brain_img) \
        if cfg.brain_mask is not None else None
    labels, names = _read_atlas(cfg, first)

    # 1. per-scan fits (cached)
    t0 = time.perf_counter()
    todo = [pairing.scans[(s, c)] for s in pairing.subjects for c in cfg.conditions]
    fitted = reused = 0

    def fit_one(scan: Scan) -> tuple[int, int]:
        return _fit_scan(scan, cfg, out, sums, brain, (labels, names))

    if cfg.jobs > 1 and len(todo) > 1:
        # threads: NumPy's array work and zlib release the GIL; each scan writes only its own files
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        with ThreadPoolExecutor(max_workers=cfg.jobs) as pool:
            counts = list(_progress(pool.map(fit_one, todo), "fitting scans", progress, total=len(todo)))
    else:
        counts = [fit_one(scan) for scan in _progress(todo, "fitting scans", progress)]
    for f, r in counts:
        fitted += f
        reused += r
    timings["fit"] = time.perf_counter() - t0
    log.info("per-scan fits: %d fitted, %d reused from %s", fitted, reused, out)

    # 2. contrast maps
    t0 = time.perf_counter()
    affine = first.affine
    if brain is not None:
        brain_mask = brain[0]
    else:
        first_map = layout.map_path(out, pairing.subjects[0], cfg.conditions[0], cfg.model, "bp_nd", cfg.phases[0])
        brain_mask = np.isfinite(np.asarray(nib.load(str(first_map)).dataobj))
    maps_a, maps_b = [], []
    for sub in pairing.subjects:
        va = smooth_in_mask(_scan_value_map(out, cfg, sub, cfg.conditions[0]), brain_mask, affine, cfg.smoothing_fwhm)
        vb = smooth_in_mask(_scan_value_map(out, cfg, sub, cfg.conditions[1]), brain_mask, affine, cfg.smoothing_fwhm)
        maps_a.append(va)
        maps_b.append(vb)
        cpath = layout.contrast_path(out, sub, f"{cfg.contrast}{cfg.conditions[0]}minus{cfg.conditions[1]}")
        cpath.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image((va - vb).astype(np.float32), affine), str(cpath))
    timings["contrast"] = time.perf_counter() - t0

    # 3. inference
    t0 = time.perf_counter()
    covs = _design_covariates(cfg, pairing.subjects)
    stats_result = run_group_stats(cfg, maps_a, maps_b, brain_mask, affine, covs, labels, names, out,
                                   backend=backend, progress=progress)
    timings["stats"] = time.perf_counter() - t0

    # 4. ROI tables
    t0 = time.perf_counter()
    roi_tests = _roi_tables(out, cfg, pairing, labels, names, brain_mask)
    timings["roi"] = time.perf_counter() - t0

    result = StudyResult(cfg, out, pairing.subjects, pairing.dropped, fitted, reused, stats_result, roi_tests)
    for p in (cfg.ref_mask, cfg.brain_mask, cfg.atlas, cfg.atlas_labels, cfg.bids_dir / "participants.tsv"):
        if p is not None and Path(p).exists():
            sums(Path(p))
    timings["total_before_report"] = time.perf_counter() - t_start
    provenance = {
        "voxelkit": __version__, "command": sys.argv, "settings": cfg.to_dict(), "seed": cfg.seed,
        "backend": {"name": backend.name, "reason": backend.reason}, "versions": _versions(),
        "inputs": sums.table(), "subjects": pairing.subjects, "dropped_subjects": pairing.dropped,
        "fits": {"fitted": fitted, "reused": reused}, "seconds": {k: round(v, 3) for k, v in timings.items()},
    }
    write_json(provenance, out / "provenance.json")

    # 5. report
    if cfg.report:
        t0 = time.perf_counter()
        from ..report import write_report  # noqa: PLC0415

        result.report = write_report(out, layout.report_path(out))
        timings["report"] = time.perf_counter() - t0
    result.seconds = timings
    return result


def run_group_stats(cfg: StudyConfig, maps_a: list[np.ndarray], maps_b: list[np.ndarray], mask: np.ndarray,
                    affine: np.ndarray, covariates: dict[str, np.ndarray], labels: np.ndarray | None,
                    names: dict[int, str], out: Path, *, backend: Any, progress: bool) -> Any:
    """Paired permutation inference on A - B (with covariates: a GLM of the differences)."""
    from ..stats import Design, one_sample_design, permutation_test  # noqa: PLC0415

    masker = Masker(mask, affine)
    a = np.stack([masker.transform(m) for m in maps_a]).astype(np.float64)
    b = np.stack([masker.transform(m) for m in maps_b]).astype(np.float64)
    diff = a - b
    n = diff.shape[0]
    if covariates:
        names_x = ["intercept", *covariates]
        x = np.column_stack([np.ones(n), *[covariates[k] for k in covariates]])
        c = np.zeros(x.shape[1])
        c[0] = 1.0
        # Freedman-Lane with sign flips: the drug effect (intercept of the differences) adjusted for covariates
        design = Design(x, c, method="flip", names=names_x, kind="glm")
    else:
        design = one_sample_design(n, kind="paired")
    atlas_img = nib.Nifti1Image(labels.astype(np.int32), affine) if labels is not None else None
    res = permutation_test(diff, masker, design, n_perm=cfg.n_perm, two_sided=cfg.two_sided,
                           cluster_p=cfg.cluster_p, tfce=cfg.tfce, seed=cfg.seed, device=backend,
                           progress=progress, atlas=atlas_img, atlas_lookup=names or None,
                           extra_settings={"contrast": f"{cfg.contrast}: {cfg.conditions[0]} - {cfg.conditions[1]}",
                                           "smoothing_fwhm_mm": cfg.smoothing_fwhm})
    res.save(layout.stats_dir(out))
    return res


def _progress(items, desc: str, enabled: bool, total: int | None = None):
    if not enabled:
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
