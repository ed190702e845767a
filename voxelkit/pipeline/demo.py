"""``voxelkit demo``: simulate a small crossover study with a planted anakinra effect, run the whole pipeline
on it, and say which planted regions were found at what FWE level.

Designs (``design``): ``scan`` (a whole-scan BPND change, fitted with ``model`` over the whole scan: the demo as
it always was) and ``release`` (the study's finding: pain-induced release in both sessions, enhanced by the drug
during the challenge; see :mod:`voxelkit.simulate.study`), on a bolus-plus-infusion study, analysed by
:data:`RELEASE_ANALYSIS` (``analysis``): ``release`` (default: lp-ntPET fitted to every whole scan,
``contrast = "release"``, the paired test on the per-subject release maps; the summary adds planted vs found
release difference, drug - placebo, per planted region) or ``activation`` (windowed activation with the default
combination of :func:`voxelkit.models.activation.default_activation`; planted vs found activation difference).

The FWE table's cells: ``p=0.002 89%`` = the smallest FWE p in the region and the share of its voxels with
FWE p < 0.05 (``p=0.31``: no voxel below 0.05; ``-``: p = 1).  With ``n_perm`` >= 2^n (default 1024 with 10
subjects) the test uses all 2^n sign flips exactly."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..io import InputError, read_rows
from ..io.derivatives import stats_map_name
from ..simulate.options import DEMO_DEFAULT_DESIGN
from ..simulate.study import OCCUPANCY_TABLE, SIMULATION_RECORD, TRUE_PEAK_OCCUPANCY_SUFFIX, TRUTH_TABLE
from . import layout
from .config import StudyConfig
from .run import StudyResult, run_study

log = logging.getLogger("voxelkit")

#: The design ``voxelkit demo`` runs without ``--design``: defined in voxelkit/simulate/options.py
#: (DEMO_DEFAULT_DESIGN, light for the CLI); flip it there.
DEFAULT_DESIGN = DEMO_DEFAULT_DESIGN
#: How the release design is analysed without ``analysis``: "release" (lp-ntPET release contrast) or
#: "activation" (windowed).
RELEASE_ANALYSIS = "release"
#: Analyses of the release design.
RELEASE_ANALYSES = ("release", "activation")
#: Permutations of the demo: 2^10 = all sign flips of the default 10 subjects (an exact test).
DEMO_N_PERM = 1024
#: Noise of the release demo (COV of a 2 mm reference voxel in the last frame; the simulator's default is 0.1):
#: low, so that 10 subjects show what the release contrast finds (at 0.1 nothing is found at n = 10).
DEMO_RELEASE_NOISE = 0.03
#: Protocol and challenge window (minutes) of the release demo unless given.
RELEASE_PROTOCOL = "bolus-infusion"
RELEASE_CHALLENGE_WINDOW = (45.0, 90.0)

#: FWE maps the summary looks at, in the order it reports them.
FWE_MAPS = ("logp_fwe_tfce", "logp_fwe_cluster_extent", "logp_fwe_cluster_mass", "logp_fwe_voxel")


@dataclass
class RegionFinding:
    region: str
    planted: bool
    n_voxels: int
    best: dict[str, float]  # map -> smallest FWE p in the region (1.0 if none)
    frac_sig: dict[str, float]  # map -> fraction of the region's voxels with FWE p < alpha


def region_findings(out: Path, atlas: Path, atlas_tsv: Path, alpha: float = 0.05, *, stats: Any = None,
                    labels: np.ndarray | None = None) -> list[RegionFinding]:
    """Smallest FWE p and fraction of significant voxels per atlas region, for every FWE map present.

    ``stats`` (the run's :class:`~voxelkit.stats.PermutationResult`) and ``labels`` (the atlas on its grid) are
    used from memory when given; otherwise the maps are read from ``out``'s ``group/stats`` folder."""
    if labels is None:
        labels = np.asarray(nib.load(str(atlas)).dataobj).astype(int)
    rows = read_rows(atlas_tsv, what="atlas look-up table")
    if stats is not None:
        maps = {m: np.abs(np.asarray(stats.image(m).dataobj, dtype=float)) for m in FWE_MAPS if m in stats.maps}
    else:
        sdir = layout.stats_dir(out)
        maps = {m: np.abs(np.asarray(nib.load(str(sdir / stats_map_name(m))).dataobj, dtype=float))
                for m in FWE_MAPS if (sdir / stats_map_name(m)).exists()}
    found = []
    for r in rows:
        k = int(r["index"])
        reg = labels == k
        if k <= 0 or not reg.any() or r.get("reference") == "1":
            continue
        best, frac = {}, {}
        for m, v in maps.items():
            vals = v[reg]
            vals = vals[np.isfinite(vals)]
            best[m] = float(10 ** -vals.max()) if vals.size else 1.0
            frac[m] = float((vals > -np.log10(alpha)).mean()) if vals.size else 0.0
        found.append(RegionFinding(r["name"], r.get("effect") == "1", int(reg.sum()), best, frac))
    return found


def _findings(result: StudyResult) -> list[RegionFinding]:
    """:func:`region_findings` of a run, from the objects it holds in memory."""
    cfg, fits = result.config, result.fits
    labels = fits.labels if fits is not None and fits.labels is not None else None
    return region_findings(result.output_dir, cfg.atlas, cfg.atlas_labels, stats=result.stats, labels=labels)


def _scan_map(result: StudyResult, sub: str, ses: str, param: str, phase: str | None = None) -> np.ndarray:
    """A fitted per-scan map of the run (3-D float): from memory (``result.fits``) when it holds it, else read."""
    fits = result.fits
    if fits is not None:
        if param == "bp_nd" and (sub, ses, phase) in fits.bp_nd:
            return np.asarray(fits.bp_nd[(sub, ses, phase)], dtype=float)
        if param == result.config.contrast and phase is None and (sub, ses) in fits.maps:
            return np.asarray(fits.maps[(sub, ses)], dtype=float)
    path = layout.map_path(result.output_dir, sub, ses, result.config.model, param, phase)
    return np.asarray(nib.load(str(path)).dataobj, dtype=float)


def findings_legend(alpha: float = 0.05) -> str:
    """What a cell of :func:`format_findings` means."""
    return (f"cells: smallest FWE p in the region, share of its voxels with FWE p < {alpha:g} "
            f"(e.g. 'p=0.002 89%'); 'p=0.31': no voxel below {alpha:g}; '-': p = 1")


def format_findings(findings: list[RegionFinding], alpha: float = 0.05) -> str:
    lines = [findings_legend(alpha)]
    maps = [m for m in FWE_MAPS if findings and m in findings[0].best]
    short = {"logp_fwe_tfce": "TFCE", "logp_fwe_cluster_extent": "cluster extent",
             "logp_fwe_cluster_mass": "cluster mass", "logp_fwe_voxel": "voxel max-T"}
    header = f"{'region':<22}{'planted':>8}" + "".join(f"{short[m]:>16}" for m in maps)
    lines.append(header)
    for f in sorted(findings, key=lambda f: (not f.planted, f.region)):
        cells = "".join(f"{_pcell(f.best[m], f.frac_sig[m], alpha):>16}" for m in maps)
        lines.append(f"{f.region:<22}{'yes' if f.planted else 'no':>8}{cells}")
    planted = [f for f in findings if f.planted]
    hit = [f for f in planted if any(f.best[m] < alpha for m in ("logp_fwe_tfce", "logp_fwe_cluster_extent",
                                                                  "logp_fwe_cluster_mass") if m in f.best)]
    other = [f for f in findings if not f.planted and any(v < alpha for v in f.best.values())]
    lines.append(f"planted regions detected (cluster or TFCE FWE p < {alpha:g}): {len(hit)} of {len(planted)}"
                 + (f" ({', '.join(f.region for f in hit)})" if hit else ""))
    desc = [f"{f.region} ({100 * max(f.frac_sig.values()):.1f}% of its voxels)" for f in other]
    lines.append(f"regions without a planted effect with voxels at FWE p < {alpha:g}: "
                 + (", ".join(desc) if desc else "none")
                 + (" -- small fractions are clusters extending from planted regions (smoothing, resolution)"
                    if desc else ""))
    return "\n".join(lines)


def _pcell(p: float, frac: float, alpha: float) -> str:
    if p >= alpha:
        return f"p={p:.2f}" if p < 1 else "-"
    return f"p={p:.3f} {100 * frac:.0f}%"


def run_demo(outdir: str | Path, *, n_subjects: int = 10, resolution: float = 3, effect: float = 0.08,
             noise: float | None = None, seed: int = 0, n_perm: int = DEMO_N_PERM, model: str | None = None,
             smoothing_fwhm: float = 4.0, overwrite: bool = False, device: str | None = None,
             progress: bool = True, design: str | None = None, sim_options: dict[str, Any] | None = None,
             analysis: str | None = None) -> tuple[StudyResult, str, Any]:
    """Simulate (``outdir/bids``), analyse (``outdir/bids/derivatives/voxelkit``) and summarise.

    ``design``: "scan" or "release" (None: :data:`DEFAULT_DESIGN`).  ``analysis`` (release design): "release"
    or "activation" (None: :data:`RELEASE_ANALYSIS`).  ``model``: the kinetic model (None: srtm for the scan
    design; for the release design the release contrast's default (lpntpet2) or the default activation
    combination).  ``sim_options``: further :class:`voxelkit.simulate.study.SimulationConfig` fields (protocol,
    kbol, challenge_window_min, ...)."""
    from ..simulate.study import simulate_study  # noqa: PLC0415

    design = design or DEFAULT_DESIGN
    if design not in ("scan", "release"):
        raise InputError(f"--design must be 'scan' or 'release', got {design!r}")
    analysis = analysis or RELEASE_ANALYSIS
    if analysis not in RELEASE_ANALYSES:
        raise InputError(f"--analysis must be one of {', '.join(RELEASE_ANALYSES)}, got {analysis!r}")
    outdir = Path(outdir)
    bids = outdir / "bids"
    if noise is None and design == "release":
        from ..simulate.study import SimulationConfig as SimConfig  # noqa: PLC0415

        noise = DEMO_RELEASE_NOISE
        log.warning("release demo: noise %g (a low-noise study, so that the 10-subject demo shows what the "
                    "release contrast finds; at the simulator's default %g single-voxel lp-ntPET release is "
                    "dominated by noise and nothing is found at n = 10: see the README's power table; "
                    "--noise sets it)", DEMO_RELEASE_NOISE, SimConfig.__dataclass_fields__["noise"].default)
    extra: dict[str, Any] = {} if noise is None else {"noise": noise}
    extra.update(sim_options or {})
    if design == "scan":
        sim = simulate_study(bids, preset="demo", n_subjects=n_subjects, resolution=resolution, effect=effect,
                             seed=seed, overwrite=overwrite, **extra)
        cfg = StudyConfig(bids_dir=bids, model=model or "srtm", n_perm=n_perm, seed=seed,
                          smoothing_fwhm=smoothing_fwhm, device=device)
        result = run_study(cfg, progress=progress)  # finds the simulator's masks and atlas in derivatives/
        atlas, atlas_tsv = result.config.atlas, result.config.atlas_labels
        text = format_findings(_findings(result)) if atlas and atlas_tsv else ""
        return result, text, sim
    return _run_release_demo(bids, n_subjects=n_subjects, resolution=resolution, effect=effect, seed=seed,
                             n_perm=n_perm, model=model, smoothing_fwhm=smoothing_fwhm, overwrite=overwrite,
                             device=device, progress=progress, sim_options=extra, analysis=analysis)


def _run_release_demo(bids: Path, *, n_subjects: int, resolution: float, effect: float, seed: int, n_perm: int,
                      model: str | None, smoothing_fwhm: float, overwrite: bool, device: str | None, progress: bool,
                      sim_options: dict[str, Any], analysis: str = RELEASE_ANALYSIS) -> tuple[StudyResult, str, Any]:
    from ..models.activation import check_activation, default_activation, default_windows  # noqa: PLC0415
    from ..simulate.study import SimulationConfig as SimConfig  # noqa: PLC0415
    from ..simulate.study import simulate_study  # noqa: PLC0415

    opts = {k: v for k, v in sim_options.items() if k != "design"}
    if opts.get("kbol") is None:
        opts.setdefault("protocol", RELEASE_PROTOCOL)
    opts.setdefault("challenge_window_min", RELEASE_CHALLENGE_WINDOW)
    probe = SimConfig(**{**opts, "design": "release"})
    probe.validate()  # bad settings fail before anything is written
    protocol = probe.protocol_name
    if analysis == "release":
        return _run_release_contrast_demo(bids, probe, opts, n_subjects=n_subjects, resolution=resolution,
                                          effect=effect, seed=seed, n_perm=n_perm, model=model,
                                          smoothing_fwhm=smoothing_fwhm, overwrite=overwrite, device=device,
                                          progress=progress)
    end = float(probe.scan_frames().end_min[-1])
    windows = default_windows(float(probe.challenge_window_min[0]), end)
    # k2' of the default combination: the simulator's high-binding regions (desc-highbinding_mask)
    mask_placeholder = "<the simulator's high-binding mask>"  # replaced by its path once simulated
    if model is None:
        model, model_options = default_activation(protocol, windows, k2prime_mask=mask_placeholder)
    else:
        model_options = {}
    # raises InputError for a refused combination (before anything is written)
    warnings = check_activation(model, model_options, protocol, windows, probe.kbol_min)
    sim = simulate_study(bids, preset="demo", n_subjects=n_subjects, resolution=resolution, effect=effect,
                         seed=seed, overwrite=overwrite, design="release", **opts)
    if model_options.get("k2prime_mask") == mask_placeholder:  # the activation table's name: k2prime = IMG here
        files = json.loads((Path(sim.derivatives) / SIMULATION_RECORD).read_text())["files"]
        model_options = {("k2prime" if k == "k2prime_mask" else k): v for k, v in model_options.items()}
        model_options["k2prime"] = str(Path(sim.derivatives) / files["highbinding_mask"])
    cfg = StudyConfig(bids_dir=bids, model=model, model_options=model_options, windows=windows,
                      contrast="activation", n_perm=n_perm, seed=seed, smoothing_fwhm=smoothing_fwhm, device=device)
    result = run_study(cfg, progress=progress)
    atlas, atlas_tsv = result.config.atlas, result.config.atlas_labels
    lines = [f"analysis: activation = BPND(baseline {windows['baseline'][0]:g}-{windows['baseline'][1]:g} min) - "
             f"BPND(challenge {windows['challenge'][0]:g}-{windows['challenge'][1]:g} min), model {model}"
             + (f" ({', '.join(f'{k}={_short(v)}' for k, v in model_options.items())})" if model_options else "")
             + f", {cfg.conditions[0]} - {cfg.conditions[1]}"]
    lines += [f"warning: {w}" for w in warnings]
    if atlas and atlas_tsv:
        lines.append(format_findings(_findings(result)))
        lines.append(format_planted_found(planted_vs_found(result, sim, model, model_options, windows)))
    return result, "\n".join(lines), sim


def _run_release_contrast_demo(bids: Path, probe: Any, opts: dict[str, Any], *, n_subjects: int, resolution: float,
                               effect: float, seed: int, n_perm: int, model: str | None, smoothing_fwhm: float,
                               overwrite: bool, device: str | None, progress: bool) -> tuple[StudyResult, str, Any]:
    """The release design analysed by the release contrast: lp-ntPET on every whole scan (challenge window of
    the simulation centring the release grid), paired test of the ``release`` maps, planted vs found."""
    from ..simulate.study import simulate_study  # noqa: PLC0415
    from .config import RELEASE_MODELS  # noqa: PLC0415

    on, off = probe.challenge_window_min
    end = float(probe.scan_frames().end_min[-1])
    model_options: dict[str, Any] = {"challenge_window": [float(on), float(end if off is None else off)]}
    if model is not None and model.lower() not in RELEASE_MODELS:
        raise InputError(f"--model {model} is refused for the release contrast: it needs an lp-ntPET model "
                         f"({', '.join(RELEASE_MODELS)}); --analysis activation analyses by windows")
    if model is not None and model.lower() == "lpntpet2":
        model_options.update(k2prime="median", k2prime_window=[0.0, float(on)])
    # settings checked before anything is written (StudyConfig raises InputError on bad ones)
    StudyConfig(bids_dir=bids, model=model, model_options=dict(model_options), contrast="release")
    sim = simulate_study(bids, preset="demo", n_subjects=n_subjects, resolution=resolution, effect=effect,
                         seed=seed, overwrite=overwrite, design="release", **opts)
    cfg = StudyConfig(bids_dir=bids, model=model, model_options=model_options, contrast="release", n_perm=n_perm,
                      seed=seed, smoothing_fwhm=smoothing_fwhm, device=device)
    result = run_study(cfg, progress=progress)
    rc = result.config
    lines = [f"analysis: release = lp-ntPET peak release (1 - BP(t_P)/BP_0) of every whole scan, model {rc.model}"
             + (f" ({', '.join(f'{k}={_short(v)}' for k, v in rc.model_options.items())})" if rc.model_options
                else "") + f", {rc.conditions[0]} - {rc.conditions[1]}"]
    if rc.model_choice:
        lines.append(f"model not given: {rc.model_choice['model']} ({rc.model_choice['reason']})")
    atlas, atlas_tsv = rc.atlas, rc.atlas_labels
    if atlas and atlas_tsv:
        lines.append(format_findings(_findings(result)))
        lines.append(format_planted_found(planted_vs_found_release(result, sim), quantity="release"))
    roi_tests = getattr(result, "roi_tests", None) or []
    if roi_tests:
        sig = [f"{r['region']} ({r['mean_diff']:+.3f}, q={r['p_fdr']:.3f})" for r in roi_tests
               if np.isfinite(r.get("p_fdr", np.nan)) and r["p_fdr"] < 0.05]
        lines.append("regions with ROI paired t-test FDR q < 0.05 (region mean release, drug - placebo): "
                     + (", ".join(sig) if sig else "none"))
    return result, "\n".join(lines), sim


def planted_vs_found_release(result: StudyResult, sim: Any) -> list[dict[str, Any]]:
    """Per planted region: the true and the estimated mean release difference (drug - placebo) over subjects.

    True release of a scan and region = the region mean of the simulator's peak occupancy map
    (``desc-truepeakoccupancy``: ``1 - BP(t_P)/BP``); found = the region mean of the fitted ``release`` map
    (before smoothing)."""
    cfg = result.config
    deriv = Path(sim.derivatives)
    labels = np.asarray(nib.load(str(cfg.atlas)).dataobj).astype(int)
    lookup = {int(r["index"]): r for r in _read_tsv(cfg.atlas_labels)}
    drug, placebo = cfg.conditions
    truth: dict[tuple[str, str], np.ndarray] = {}
    found: dict[tuple[str, str], np.ndarray] = {}
    for sub in result.subjects:
        for ses in (drug, placebo):
            tp = sorted((deriv / f"sub-{sub}" / f"ses-{ses}" / "pet").glob(f"*{TRUE_PEAK_OCCUPANCY_SUFFIX}"))
            if not tp:
                raise InputError(f"{deriv}: no true peak occupancy map of sub-{sub} ses-{ses} (release design?)")
            truth[(sub, ses)] = np.asarray(nib.load(str(tp[0])).dataobj, dtype=float)
            found[(sub, ses)] = _scan_map(result, sub, ses, "release")
    rows = []
    for idx, r in sorted(lookup.items()):
        if r.get("effect") != "1":
            continue
        reg = labels == idx
        td = [float(np.mean(truth[(s, drug)][reg]) - np.mean(truth[(s, placebo)][reg])) for s in result.subjects]
        fd = [float(np.nanmean(found[(s, drug)][reg]) - np.nanmean(found[(s, placebo)][reg])) for s in result.subjects]
        rows.append({"region": r["name"], "planted": float(np.mean(td)), "found": float(np.mean(fd)),
                     "found_sd": float(np.std(fd, ddof=1)) if len(fd) > 1 else 0.0, "n": len(fd)})
    return rows


def planted_vs_found(result: StudyResult, sim: Any, model: str, model_options: dict[str, Any],
                     windows: dict[str, tuple[float, float]]) -> list[dict[str, Any]]:
    """Per planted region: the true and the estimated mean activation difference (drug - placebo) over subjects.

    True activation of a scan and region = true window BPND (baseline) - true window BPND (challenge), each the
    time average of the true BPND(t) (``occupancy.tsv`` x ``truth.tsv``) over the frames the model fits in that
    window (:func:`voxelkit.models.activation.true_window_bp`).  Found = the region mean of the fitted
    activation maps (before smoothing)."""
    from ..frames import FrameTiming  # noqa: PLC0415
    from ..models import get_model  # noqa: PLC0415
    from ..models.activation import true_window_bp  # noqa: PLC0415
    from .run import _build_check_model  # noqa: PLC0415

    cfg = result.config
    deriv = Path(sim.derivatives)
    meta = json.loads((deriv / SIMULATION_RECORD).read_text())
    frames = FrameTiming.from_bids_dict(meta["frames"])
    # the model of each window as the run built it (a k2' region replaced by a placeholder: frames only)
    used = {w: _build_check_model(cfg, w).used_frames(frames) if cfg.windows and w in cfg.windows
            else get_model(model, window=tuple(windows[w]), **model_options).used_frames(frames)
            for w in ("baseline", "challenge")}
    truth = {(r["participant_id"], r["session"]): r for r in _read_tsv(deriv / TRUTH_TABLE)}
    occ: dict[tuple[str, str], list[dict[str, str]]] = {}
    for r in _read_tsv(deriv / OCCUPANCY_TABLE):
        occ.setdefault((r["participant_id"], r["session"]), []).append(r)
    labels = np.asarray(nib.load(str(cfg.atlas)).dataobj).astype(int)
    lookup = {int(r["index"]): r for r in _read_tsv(cfg.atlas_labels)}
    drug, placebo = cfg.conditions
    rows = []
    for idx, r in sorted(lookup.items()):
        if r.get("effect") != "1":
            continue
        name = r["name"]
        reg = labels == idx
        true_d, found_d = [], []
        for sub in result.subjects:
            pid = f"sub-{sub}"
            acts_true, acts_found = {}, {}
            for ses in (drug, placebo):
                seg_rows = occ[(pid, ses)]
                edges = np.array([float(x["time_start_min"]) for x in seg_rows][1:])
                bp0 = float(truth[(pid, ses)][f"bpnd_{name}"])
                segs = bp0 * (1.0 - np.array([[float(x[name]) for x in seg_rows]]))
                acts_true[ses] = float(true_window_bp(frames, used["baseline"], segs, edges)[0]
                                       - true_window_bp(frames, used["challenge"], segs, edges)[0])
                maps = {w: _scan_map(result, sub, ses, "bp_nd", w) for w in ("baseline", "challenge")}
                vals = (maps["baseline"] - maps["challenge"])[reg]
                acts_found[ses] = float(np.nanmean(vals))
            true_d.append(acts_true[drug] - acts_true[placebo])
            found_d.append(acts_found[drug] - acts_found[placebo])
        rows.append({"region": name, "planted": float(np.mean(true_d)), "found": float(np.mean(found_d)),
                     "found_sd": float(np.std(found_d, ddof=1)) if len(found_d) > 1 else 0.0, "n": len(found_d)})
    return rows


def _short(v: Any) -> str:
    return Path(v).name if isinstance(v, str) and "/" in v else str(v)


def format_planted_found(rows: list[dict[str, Any]], quantity: str = "activation") -> str:
    head = ("release difference (drug - placebo), mean over subjects: planted (true peak occupancy) vs found "
            "(lp-ntPET release, region mean)" if quantity == "release" else
            "activation difference (drug - placebo), mean over subjects: planted (true window BPND) vs found")
    lines = [head, f"{'region':<22}{'planted':>10}{'found':>10}{'sd':>8}"]
    for r in rows:
        lines.append(f"{r['region']:<22}{r['planted']:>10.4f}{r['found']:>10.4f}{r['found_sd']:>8.3f}")
    return "\n".join(lines)


def _read_tsv(path: Path) -> list[dict[str, str]]:
    return read_rows(path)  # the one TSV reader (voxelkit.io.tables)
