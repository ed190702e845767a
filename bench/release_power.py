"""Power and validity of the release study's voxelwise analyses over simulated studies (issue 10, item 5).

For each seed a bolus-plus-infusion release study is simulated (``voxelkit.simulate``, ``design="release"``:
the pain challenge lowers BPND with an lp-ntPET time course in the challenge regions in BOTH sessions, and in
the anakinra session the drug adds ``--effect`` of extra reduction in the planted regions during the challenge
only) and analysed with two methods, each through the Python API as the study would do it:

(a) ``activation``: windowed activation with the default combination
    (:func:`voxelkit.models.activation.default_activation` / :func:`~voxelkit.models.activation.default_windows`:
    MRTM2, k2' from an MRTM fit of the mean TAC of the simulator's high-binding mask over the baseline window;
    windows 0-45 / 60-90 min), ``activation = BPND(baseline) - BPND(challenge)`` per scan;
(b) ``release``: ``lpntpet2`` (lp-ntPET, MRTM2 form) with the same k2' source (high-binding mask, baseline
    window), ``challenge_window`` = the simulated challenge, weights ``counts`` (the simulator's noise variance
    follows the counts: inverse variances), the ``release`` map per scan.

Per scan: ``voxelkit.fit`` inside the simulator's brain mask with its reference region (occipital cortex).  Per
subject: the map of the anakinra scan minus the placebo scan, smoothed within the brain mask
(``voxelkit.pipeline.run.smooth_in_mask``, ``--smoothing-fwhm``), then the paired sign-flip test
(``voxelkit.stats.permutation_test`` with the paired design, exactly what ``voxelkit.stats.paired`` and
``voxelkit run`` do): ``--n-perm`` flips, cluster-forming threshold p ``--cluster-p``, cluster mass FWE and
TFCE FWE, two-sided by default (as ``voxelkit run``; ``--one-sided`` tests drug > placebo).

**Detection rule**: a planted region is detected in a seed when at least one voxel inside the region (its atlas
label, among the analysed voxels) has FWE p < 0.05 on the map (cluster mass or TFCE).  For a null seed
(``effect`` 0, challenge in both sessions) a **family-wise false positive** is any voxel in the brain mask with
FWE p < 0.05.

Results are written per seed (``<out>/seeds/<kind>-<seed>.json``, atomic; finished seeds are skipped on a rerun)
and summarised from whatever finished (``--summarise``): ``<out>/summary.json`` and ``<out>/summary.md``.

    nice -n 10 python bench/release_power.py --seeds 20 --null-seeds 100 --out /tmp/release_power
    python bench/release_power.py --out /tmp/release_power --summarise
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

PLANTED = ("thalamus", "insula", "nucleus_accumbens", "anterior_cingulate", "caudate")
METHODS = ("activation", "release")
INFERENCES = {"cluster_mass": "logp_fwe_cluster_mass", "tfce": "logp_fwe_tfce"}
ALPHA = 0.05
#: Offset of the null seeds' simulator seeds (planted and null studies never share a seed).
NULL_SEED_OFFSET = 100_000


# ------------------------------------------------------------------------------------------------------------
# detection rule
# ------------------------------------------------------------------------------------------------------------
#: Relative tolerance of "p < alpha": the maps store -log10(p) in float32, so a permutation p of exactly alpha
#: (25 of 500 flips) comes back as alpha (1 +- 1e-7); it must not count as significant.
P_RTOL = 1e-5


def is_significant(p: float | np.ndarray, alpha: float = ALPHA) -> Any:
    """``p < alpha`` for p-values read back from -log10(p) maps (see :data:`P_RTOL`)."""
    return np.asarray(p) < alpha * (1.0 - P_RTOL)


def region_min_p(logp: np.ndarray, labels: np.ndarray, analysed: np.ndarray, index: int) -> float:
    """Smallest FWE p of the voxels of atlas label ``index`` among the ``analysed`` ones.  ``logp`` holds
    -log10(p) (signed by the sign of t for two-sided tests; the sign is ignored), ``labels`` the atlas label per
    voxel, all arrays over the same voxels.  1.0 when the region holds no analysed voxel."""
    sel = (labels == index) & analysed
    if not sel.any():
        return 1.0
    return float(10.0 ** -np.abs(logp[sel]).max())


def detected(logp: np.ndarray, labels: np.ndarray, analysed: np.ndarray, index: int, alpha: float = ALPHA) -> bool:
    """The detection rule: some analysed voxel inside the region has FWE p < ``alpha``."""
    return bool(is_significant(region_min_p(logp, labels, analysed, index), alpha))


def any_significant(logp: np.ndarray, analysed: np.ndarray, alpha: float = ALPHA) -> bool:
    """Family-wise false positive rule (null studies): some analysed voxel of the brain has FWE p < ``alpha``."""
    return bool(analysed.any() and is_significant(10.0 ** -np.abs(logp[analysed]).max(), alpha))


def binom_range(n: int, p: float = 0.05, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` range of the observed rate k/n when the true rate is ``p`` (binomial quantiles):
    an FWE rate inside it is consistent with nominal ``p``."""
    from scipy.stats import binom  # noqa: PLC0415

    lo = binom.ppf((1 - level) / 2, n, p)
    hi = binom.ppf(1 - (1 - level) / 2, n, p)
    return float(lo) / n, float(hi) / n


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact confidence interval of a binomial proportion k/n."""
    from scipy.stats import beta  # noqa: PLC0415

    a = (1 - level) / 2
    lo = float(beta.ppf(a, k, n - k + 1)) if k > 0 else 0.0
    hi = float(beta.ppf(1 - a, k + 1, n - k)) if k < n else 1.0
    return lo, hi


# ------------------------------------------------------------------------------------------------------------
# one seed
# ------------------------------------------------------------------------------------------------------------
def analysis_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that defines the analysis (stored in each seed's file; summaries only pool equal ones)."""
    return {"subjects": args.subjects, "voxel_mm": args.voxel_mm, "noise": args.noise, "kbol_min": args.kbol,
            "challenge_window_min": list(args.challenge_window), "smoothing_fwhm_mm": args.smoothing_fwhm,
            "n_perm": args.n_perm, "cluster_p": args.cluster_p, "two_sided": not args.one_sided,
            "release_weights": args.release_weights, "methods": list(args.methods)}


def run_seed(kind: str, seed: int, effect: float, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Simulate one study (``kind`` "planted" with ``effect`` or "null" with 0) and analyse it by every method."""
    import nibabel as nib  # noqa: PLC0415

    from voxelkit import fit  # noqa: PLC0415
    from voxelkit.io import DynamicPET, Masker, load_pet  # noqa: PLC0415
    from voxelkit.models.activation import default_activation, default_windows  # noqa: PLC0415
    from voxelkit.pipeline.run import smooth_in_mask  # noqa: PLC0415
    from voxelkit.simulate.study import simulate_study  # noqa: PLC0415
    from voxelkit.stats import one_sample_design, permutation_test  # noqa: PLC0415

    t0 = time.perf_counter()
    sim_seed = seed + (NULL_SEED_OFFSET if kind == "null" else 0)
    root = work / f"{kind}-{seed}"
    if root.exists():
        shutil.rmtree(root)
    extra = {} if args.noise is None else {"noise": args.noise}
    sim = simulate_study(root, n_subjects=args.subjects, resolution=args.voxel_mm, effect=effect, seed=sim_seed,
                         design="release", protocol="bolus-infusion", kbol=args.kbol,
                         challenge_window_min=tuple(args.challenge_window), **extra)
    t_sim = time.perf_counter() - t0
    deriv = Path(sim.derivatives)
    files = json.loads((deriv / "simulation.json").read_text())["files"]

    def img(name: str) -> Any:
        return nib.load(str(deriv / files[name]))

    brain_img, ref_img, hb_img = img("brain_mask"), img("reference_mask"), img("highbinding_mask")
    brain = np.asarray(brain_img.dataobj) > 0
    atlas = np.rint(np.asarray(img("atlas").dataobj)).astype(int)
    lookup = {int(r["index"]): r["name"] for r in _read_tsv(deriv / files["lookup"])}
    index = {v: k for k, v in lookup.items()}
    end = float(sim.config.scan_frames().end_min[-1])
    windows = default_windows(float(args.challenge_window[0]), end)
    act_model, act_opts = default_activation("bolus-infusion", windows, k2prime_mask=hb_img)
    rel_opts = {"k2prime_mask": hb_img, "k2prime_window": list(windows["baseline"]),
                "challenge_window": tuple(args.challenge_window), "weights": args.release_weights,
                "p_eff": args.p_eff}

    maps: dict[str, dict[tuple[str, str], np.ndarray]] = {m: {} for m in args.methods}
    t_fit = {m: 0.0 for m in args.methods}
    for pet in sim.pet_files:
        sub, ses = pet.name.split("_")[:2]
        dp = load_pet(pet)
        mem = DynamicPET(nib.Nifti1Image(dp.data(), dp.affine), dp.frames, dp.name)  # read the file once
        if "activation" in args.methods:
            t1 = time.perf_counter()
            bp = {}
            for w in ("baseline", "challenge"):
                r = fit(mem, ref_img, act_model, brain_img, device="cpu", window=windows[w], **act_opts)
                bp[w] = _map3d(r, "bp_nd")
            maps["activation"][(sub, ses)] = bp["baseline"] - bp["challenge"]
            t_fit["activation"] += time.perf_counter() - t1
        if "release" in args.methods:
            t1 = time.perf_counter()
            r = fit(mem, ref_img, "lpntpet2", brain_img, device="cpu", **rel_opts)
            maps["release"][(sub, ses)] = _map3d(r, "release")
            t_fit["release"] += time.perf_counter() - t1
    shutil.rmtree(root)

    subjects = sorted({k[0] for k in next(iter(maps.values()))})
    masker = Masker(brain, brain_img.affine)
    labels_v = masker.transform(atlas)
    out: dict[str, Any] = {"kind": kind, "seed": seed, "simulator_seed": sim_seed, "effect": effect,
                           "settings": analysis_settings(args), "n_subjects": len(subjects),
                           "n_voxels_brain": int(brain.sum()),
                           "region_voxels": {r: int((atlas[brain] == index[r]).sum()) for r in PLANTED if r in index},
                           "activation_model": {"model": act_model, "windows": windows,
                                                "options": {k: (v if not hasattr(v, "affine") else
                                                                "simulator high-binding mask")
                                                            for k, v in act_opts.items()}},
                           "release_model": {"model": "lpntpet2", "options": {
                               k: (v if not hasattr(v, "affine") else "simulator high-binding mask")
                               for k, v in rel_opts.items()}},
                           "methods": {}, "seconds": {"simulate": round(t_sim, 2)}}
    for m in args.methods:
        t1 = time.perf_counter()
        diffs, raw_means = [], {r: [] for r in PLANTED if r in index}
        for s in subjects:
            raw = maps[m][(s, "ses-anakinra")] - maps[m][(s, "ses-placebo")]
            for r in raw_means:
                v = raw[(atlas == index[r]) & brain]
                raw_means[r].append(float(np.nanmean(v)) if np.isfinite(v).any() else float("nan"))
            a = smooth_in_mask(maps[m][(s, "ses-anakinra")], brain, brain_img.affine, args.smoothing_fwhm)
            b = smooth_in_mask(maps[m][(s, "ses-placebo")], brain, brain_img.affine, args.smoothing_fwhm)
            diffs.append(masker.transform(a).astype(np.float64) - masker.transform(b).astype(np.float64))
        D = np.stack(diffs)
        res = permutation_test(D, masker, one_sample_design(len(subjects), kind="paired"), n_perm=args.n_perm,
                               two_sided=not args.one_sided, cluster_p=args.cluster_p, tfce=True, seed=seed,
                               device="cpu")
        analysed = np.asarray(res.analysed, bool)
        rec: dict[str, Any] = {"n_voxels_analysed": int(analysed.sum()), "n_perm": int(res.settings["n_perm"]),
                               "cluster_threshold_t": res.settings["cluster_threshold_t"],
                               "region_mean_difference": {r: float(np.nanmean(v)) for r, v in raw_means.items()},
                               "region_t": {r: _paired_t(v) for r, v in raw_means.items()},
                               "region_peak_t": {r: _peak(res.maps["t"], labels_v, analysed, index[r])
                                                 for r in raw_means},
                               "fwe_voxel_t_threshold": float(res.settings["fwe_threshold_t_0.05"]),
                               "inference": {}}
        for inf, key in INFERENCES.items():
            lp = res.maps[key]
            rec["inference"][inf] = {
                "region_min_p": {r: region_min_p(lp, labels_v, analysed, index[r]) for r in PLANTED if r in index},
                "brain_min_p": float(10.0 ** -np.abs(lp[analysed]).max()) if analysed.any() else 1.0,
                "any_significant": any_significant(lp, analysed),
                "n_significant_voxels": int(is_significant(10.0 ** -np.abs(lp[analysed])).sum()),
                "n_significant_outside_planted": int((is_significant(10.0 ** -np.abs(lp)) & analysed
                                                      & ~np.isin(labels_v, [index[r] for r in PLANTED
                                                                            if r in index])).sum())}
        out["methods"][m] = rec
        out["seconds"][f"fit_{m}"] = round(t_fit[m], 2)
        out["seconds"][f"stats_{m}"] = round(time.perf_counter() - t1, 2)
    out["seconds"]["total"] = round(time.perf_counter() - t0, 2)
    return out


def _peak(t: np.ndarray, labels: np.ndarray, analysed: np.ndarray, index: int) -> float:
    """Largest t (signed: drug > placebo positive) among the analysed voxels of a region (NaN if none)."""
    sel = (labels == index) & analysed
    return float(t[sel].max()) if sel.any() else float("nan")


def _paired_t(values: list[float]) -> float:
    """One-sample t of the per-subject region mean differences (NaN subjects left out)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size < 2 or not v.std(ddof=1) > 0:
        return float("nan")
    return float(v.mean() / (v.std(ddof=1) / math.sqrt(v.size)))


def _map3d(result: Any, name: str) -> np.ndarray:
    """A parametric map of a ``voxelkit.fit`` result as a 3-D float32 array (NaN outside the fitted voxels)."""
    mask = result.masker.mask
    vol = np.full(mask.shape, np.nan, dtype=np.float32)
    vol[mask] = np.asarray(result.params[name], dtype=np.float32)
    return vol


def _read_tsv(path: Path) -> list[dict[str, str]]:
    import csv  # noqa: PLC0415

    with path.open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


# ------------------------------------------------------------------------------------------------------------
# summary
# ------------------------------------------------------------------------------------------------------------
def load_results(out: Path) -> list[dict[str, Any]]:
    rows = []
    for p in sorted((out / "seeds").glob("*.json")):
        try:
            rows.append(json.loads(p.read_text()))
        except (OSError, ValueError):  # a file being written by a running job is skipped
            continue
    return rows


def summarise(out: Path) -> dict[str, Any]:
    """Detection fractions per planted region, method and inference, and the null FWE rate with its binomial
    range, from every finished seed under ``out``.  Writes ``summary.json`` and ``summary.md``."""
    rows = load_results(out)
    groups: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = json.dumps(r["settings"], sort_keys=True)
        g = groups.setdefault(key, {"settings": r["settings"], "planted": {}, "null": []})
        if r["kind"] == "null":
            g["null"].append(r)
        else:
            g["planted"].setdefault(f"{r['effect']:g}", []).append(r)
    summary: dict[str, Any] = {"rule": "a planted region is detected when some voxel inside it has FWE p < 0.05; a "
                                       "null seed is a family-wise false positive when some voxel of the brain "
                                       "mask has FWE p < 0.05", "groups": []}
    for g in groups.values():
        methods = g["settings"]["methods"]
        res: dict[str, Any] = {"settings": g["settings"], "planted": {}, "null": {}}
        for eff, rr in sorted(g["planted"].items()):
            d: dict[str, Any] = {"n_seeds": len(rr), "seeds": sorted(x["seed"] for x in rr), "detection": {},
                                 "region_mean_difference": {},
                                 "seconds_per_seed": float(np.mean([x["seconds"]["total"] for x in rr]))}
            for m in methods:
                d["detection"][m] = {inf: {reg: float(np.mean([is_significant(x["methods"][m]["inference"][inf]
                                                                              ["region_min_p"][reg]) for x in rr]))
                                           for reg in PLANTED if reg in rr[0]["region_voxels"]}
                                     for inf in INFERENCES}
                d["region_mean_difference"][m] = {reg: float(np.nanmean([x["methods"][m]["region_mean_difference"]
                                                                         [reg] for x in rr]))
                                                  for reg in PLANTED if reg in rr[0]["region_voxels"]}
                if all("region_t" in x["methods"][m] for x in rr):
                    d.setdefault("region_mean_t", {})[m] = {
                        reg: float(np.nanmean([x["methods"][m]["region_t"][reg] for x in rr]))
                        for reg in PLANTED if reg in rr[0]["region_voxels"]}
                if all("region_peak_t" in x["methods"][m] for x in rr):
                    d.setdefault("region_peak_t", {})[m] = {
                        reg: float(np.nanmean([x["methods"][m]["region_peak_t"][reg] for x in rr]))
                        for reg in PLANTED if reg in rr[0]["region_voxels"]}
                    d.setdefault("fwe_voxel_t_threshold", {})[m] = float(np.mean(
                        [x["methods"][m]["fwe_voxel_t_threshold"] for x in rr]))
            res["planted"][eff] = d
        nn = g["null"]
        if nn:
            n = len(nn)
            lo, hi = binom_range(n)
            res["null"] = {"n_seeds": n, "binomial_95_range_of_5pct": [lo, hi], "fwe": {},
                           "seconds_per_seed": float(np.mean([x["seconds"]["total"] for x in nn]))}
            for m in methods:
                res["null"]["fwe"][m] = {}
                for inf in INFERENCES:
                    k = int(sum(bool(is_significant(x["methods"][m]["inference"][inf]["brain_min_p"])) for x in nn))
                    ci = clopper_pearson(k, n)
                    pmax = np.array([x["methods"][m]["inference"][inf]["brain_min_p"] for x in nn], float)
                    res["null"]["fwe"][m][inf] = {"k": k, "rate": k / n, "clopper_pearson_95": list(ci),
                                                  "inside_range": bool(lo - 1e-12 <= k / n <= hi + 1e-12),
                                                  "fraction_p_max_below_0.10": float(np.mean(pmax < 0.1)),
                                                  "median_p_max": float(np.median(pmax)),
                                                  "ks_uniform_p": _ks_uniform(pmax)}
        summary["groups"].append(res)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "summary.json", json.dumps(summary, indent=1))
    _atomic_write(out / "summary.md", format_summary(summary))
    return summary


def _ks_uniform(p: np.ndarray) -> float:
    """Kolmogorov-Smirnov p of the FWE p-values of the brain maximum against U(0, 1) (their null distribution
    for an exact test, up to the permutation grid)."""
    from scipy.stats import kstest  # noqa: PLC0415

    return float(kstest(p, "uniform").pvalue) if p.size else float("nan")


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"Rule: {summary['rule']}.", ""]
    names = {"activation": "activation (MRTM2 windows)", "release": "lp-ntPET release"}
    for g in summary["groups"]:
        s = g["settings"]
        lines.append(f"Settings: {s['subjects']} subjects, {s['voxel_mm']:g} mm voxels, smoothing "
                     f"{s['smoothing_fwhm_mm']:g} mm, {s['n_perm']} sign flips, CDT p {s['cluster_p']:g}, "
                     f"{'two' if s['two_sided'] else 'one'}-sided, Kbol {s['kbol_min']:g} min, challenge "
                     f"{s['challenge_window_min'][0]:g}-{s['challenge_window_min'][1]:g} min")
        lines.append("")
        for eff, d in g["planted"].items():
            regs = list(next(iter(d["detection"].values()))["tfce"])
            lines.append(f"Effect {float(eff) * 100:g} %: {d['n_seeds']} seeds "
                         f"({d['seconds_per_seed']:.0f} s per seed); fraction of seeds detecting each region")
            lines.append("")
            lines.append("| method | inference | " + " | ".join(regs) + " |")
            lines.append("|---|---|" + "---|" * len(regs))
            for m, dd in d["detection"].items():
                for inf, v in dd.items():
                    lines.append(f"| {names.get(m, m)} | {inf.replace('_', ' ')} | "
                                 + " | ".join(f"{v[r]:.2f}" for r in regs) + " |")
            lines.append("")
            lines.append("Mean over seeds of the region mean (unsmoothed) anakinra - placebo difference:")
            lines.append("")
            lines.append("| method | " + " | ".join(regs) + " |")
            lines.append("|---|" + "---|" * len(regs))
            for m, v in d["region_mean_difference"].items():
                lines.append(f"| {names.get(m, m)} | " + " | ".join(f"{v[r]:+.4f}" for r in regs) + " |")
            lines.append("")
            if d.get("region_peak_t"):
                lines.append("Mean over seeds of the peak voxel t inside each region (smoothed maps; voxel-level "
                             "FWE threshold of t in brackets):")
                lines.append("")
                lines.append("| method | " + " | ".join(regs) + " |")
                lines.append("|---|" + "---|" * len(regs))
                for m, v in d["region_peak_t"].items():
                    lines.append(f"| {names.get(m, m)} ({d['fwe_voxel_t_threshold'][m]:.2f}) | "
                                 + " | ".join(f"{v[r]:.2f}" for r in regs) + " |")
                lines.append("")
            if d.get("region_mean_t"):
                lines.append("Mean over seeds of the paired t of the region means (ROI-level test, unsmoothed):")
                lines.append("")
                lines.append("| method | " + " | ".join(regs) + " |")
                lines.append("|---|" + "---|" * len(regs))
                for m, v in d["region_mean_t"].items():
                    lines.append(f"| {names.get(m, m)} | " + " | ".join(f"{v[r]:.2f}" for r in regs) + " |")
                lines.append("")
        if g["null"]:
            nl = g["null"]
            lo, hi = nl["binomial_95_range_of_5pct"]
            lines.append(f"Null (challenge in both sessions, no drug effect): {nl['n_seeds']} seeds "
                         f"({nl['seconds_per_seed']:.0f} s per seed); family-wise false positives (any brain voxel "
                         f"FWE p < 0.05); binomial 95 % range of a 5 % rate over {nl['n_seeds']} seeds: "
                         f"{lo * 100:.1f}-{hi * 100:.1f} %")
            lines.append("")
            lines.append("| method | inference | false positives | rate | 95 % CI (Clopper-Pearson) | in range | "
                         "FWE p of the brain max: < 0.10 / median / KS p vs uniform |")
            lines.append("|---|---|---|---|---|---|---|")
            for m, dd in nl["fwe"].items():
                for inf, v in dd.items():
                    lines.append(f"| {names.get(m, m)} | {inf.replace('_', ' ')} | {v['k']}/{nl['n_seeds']} | "
                                 f"{v['rate'] * 100:.1f} % | {v['clopper_pearson_95'][0] * 100:.1f}-"
                                 f"{v['clopper_pearson_95'][1] * 100:.1f} % | {'yes' if v['inside_range'] else 'NO'} | "
                                 f"{v['fraction_p_max_below_0.10'] * 100:.0f} % / {v['median_p_max']:.2f} / "
                                 f"{v['ks_uniform_p']:.2f} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------------------
def job_order(n_planted: int, n_null: int, first: int = 0) -> list[tuple[str, int]]:
    """Planted and null seeds interleaved in proportion, so that a run cut short has both kinds."""
    jobs = [("planted", first + i, (i + 0.5) / max(n_planted, 1)) for i in range(n_planted)]
    jobs += [("null", first + i, (i + 0.5) / max(n_null, 1)) for i in range(n_null)]
    jobs.sort(key=lambda j: (j[2], j[0] == "null"))
    return [(k, s) for k, s, _ in jobs]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"release_power: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = _Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/release_power", help="results folder (default /tmp/release_power)")
    ap.add_argument("--seeds", type=int, default=20, help="planted-effect studies (default 20)")
    ap.add_argument("--null-seeds", type=int, default=100, help="null studies, no drug effect (default 100)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--subjects", type=int, default=12, help="subjects per study (default 12)")
    ap.add_argument("--effect", type=float, default=0.08, help="drug-enhanced extra reduction (default 0.08)")
    ap.add_argument("--voxel-mm", type=float, default=5.0, help="simulated voxel size in mm (default 5)")
    ap.add_argument("--noise", type=float, default=None, help="simulator noise (default: the simulator's)")
    ap.add_argument("--kbol", type=float, default=80.0, help="bolus-plus-infusion Kbol, minutes (default 80)")
    ap.add_argument("--challenge-window", type=float, nargs=2, default=(45.0, 90.0), metavar=("START", "END"),
                    help="pain challenge, minutes (default 45 90)")
    ap.add_argument("--smoothing-fwhm", type=float, default=6.0, help="smoothing before statistics, mm (default 6)")
    ap.add_argument("--n-perm", type=int, default=500, help="sign flips (default 500)")
    ap.add_argument("--cluster-p", type=float, default=0.001, help="cluster-forming p (default 0.001)")
    ap.add_argument("--one-sided", action="store_true", help="test anakinra > placebo only (default two-sided)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--release-weights", default="counts", help="frame weights of lpntpet2 (default counts)")
    ap.add_argument("--p-eff", type=float, default=5.0,
                    help="lpntpet2 F-test parameter count given (skips the per-scan calibration; the release "
                         "maps do not depend on it; default 5.0)")
    ap.add_argument("--summarise", action="store_true", help="only summarise the finished seeds under --out")
    args = ap.parse_args(argv)
    for name in ("seeds", "null_seeds"):
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.subjects < 5:
        ap.error("--subjects must be >= 5 (the paired test needs at least 5 pairs)")
    if not 0 <= args.effect < 1:
        ap.error("--effect must be in [0, 1)")
    if not args.voxel_mm > 0:
        ap.error("--voxel-mm must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import logging  # noqa: PLC0415

    logging.getLogger("voxelkit").setLevel(logging.ERROR)  # per-scan window notes would flood the log
    out = Path(args.out)
    if args.summarise:
        summarise(out)
        print((out / "summary.md").read_text(), end="")
        return 0
    seeds_dir = out / "seeds"
    seeds_dir.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    settings = analysis_settings(args)
    t_all = time.perf_counter()
    done = 0
    for kind, seed in job_order(args.seeds, args.null_seeds, args.first_seed):
        effect = args.effect if kind == "planted" else 0.0
        tag = f"{kind}-{seed:04d}" + (f"-e{effect:g}" if kind == "planted" else "")
        path = seeds_dir / f"{tag}.json"
        if path.exists():
            try:
                if json.loads(path.read_text()).get("settings") == settings:
                    continue
            except (OSError, ValueError):
                pass
        rec = run_seed(kind, seed, effect, args, work)
        _atomic_write(path, json.dumps(rec, indent=1))
        done += 1
        print(f"{tag}: {rec['seconds']['total']:.1f} s ({json.dumps(rec['seconds'])}); elapsed "
              f"{time.perf_counter() - t_all:.0f} s", file=sys.stderr, flush=True)
        summarise(out)
    summarise(out)
    print((out / "summary.md").read_text(), end="")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
