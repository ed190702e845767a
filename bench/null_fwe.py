"""Null simulation: family-wise error rates of voxelkit's permutation inference under H0.

Smooth noise (Gaussian, or skewed: a log-normal transform of the smooth Gaussian field, centred to mean 0) in a
brain-shaped (ellipsoid) mask; one-sample / paired sign-flip test of mean > 0 with n subjects; each repetition
draws new data and new sign flips.  Sign flipping assumes symmetric errors: the skewed (right-skewed) noise
shows what happens when that fails, on both tails (``--tail greater`` / ``--tail less``).  A family-wise error
is counted when the observed maximum statistic (max t, max cluster extent, max cluster mass at CDT p = 0.01 and
p = 0.001, max TFCE) has FWE p <= alpha.  The nominal rate is alpha = 0.05; the binomial 95 % range for R
repetitions is printed with the observed rates.

    python bench/null_fwe.py                                   # n = 10 and 20, Gaussian and skewed, 1000 reps
    python bench/null_fwe.py --reps 200 --n-perm 200 --n 10    # smaller

Output: one line per (noise, n) with the FWE rate of each method (running rates every --report-every
repetitions), and a JSON file with everything.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage, stats

from voxelkit.backend import NUMPY
from voxelkit.io import Masker
from voxelkit.stats import permutation_test
from voxelkit.stats.design import one_sample_design
from voxelkit.stats.inference import fwe_p

METHODS = ("max_t", "extent_p01", "mass_p01", "extent_p001", "mass_p001", "tfce")


def brain_mask(shape: tuple[int, int, int]) -> np.ndarray:
    """An ellipsoid filling most of the box, with two 'ventricle' holes: a crude brain shape."""
    g = np.meshgrid(*[(np.arange(s) - (s - 1) / 2) / (s / 2 - 1.5) for s in shape], indexing="ij")
    r2 = g[0] ** 2 + g[1] ** 2 + (1.15 * g[2]) ** 2
    vent = ((np.abs(g[0]) - 0.18) ** 2 / 0.01 + g[1] ** 2 / 0.12 + (g[2] - 0.1) ** 2 / 0.03) < 1
    return (r2 < 1) & ~vent


def noise(rng: np.random.Generator, n: int, shape: tuple[int, int, int], fwhm_vox: float, kind: str,
          skew_sigma: float = 0.5) -> np.ndarray:
    sigma = fwhm_vox / np.sqrt(8 * np.log(2))
    out = np.empty((n, *shape))
    for i in range(n):
        g = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
        g /= g.std()
        # log-normal exp(s g) - exp(s^2/2): mean 0; skewness 1.75 for s = 0.5, 6.2 for s = 1
        out[i] = g if kind == "gaussian" else np.exp(skew_sigma * g) - np.exp(skew_sigma ** 2 / 2)
    return out


def one_rep(rng: np.random.Generator, n: int, mask: np.ndarray, fwhm: float, kind: str, n_perm: int,
            alpha: float, two_sided: bool, connectivity: int, tail: str = "greater",
            skew_sigma: float = 0.5, variance_smoothing: float | None = None,
            accel: str | None = None) -> dict[str, bool]:
    y = noise(rng, n, mask.shape, fwhm, kind, skew_sigma)[:, mask]
    if tail == "less":  # test mean < 0: for right-skewed noise this is the tail where sign flipping is liberal
        y = -y
    mk = Masker(mask, np.diag([2.0, 2.0, 2.0, 1.0]))  # 2 mm voxels (variance smoothing FWHM is in mm)
    seed = int(rng.integers(2 ** 31))
    kw = dict(n_perm=n_perm, seed=seed, two_sided=two_sided, connectivity=connectivity, device=NUMPY,
              variance_smoothing=variance_smoothing, accel=accel)
    r1 = permutation_test(y, mk, one_sample_design(n), cluster_p=0.01, tfce=True, **kw)
    r2 = permutation_test(y, mk, one_sample_design(n), cluster_p=0.001, tfce=False, **kw)

    def err(null: np.ndarray) -> bool:
        return bool(fwe_p(np.array([null[0]]), null)[0] <= alpha)

    if accel is not None:  # the FWE p of the observed maxima as the maps report them (tail approximation)
        lim = -np.log10(alpha) - 1e-9
        top = {m: float(np.max(np.abs(r.maps[k]), initial=0.0)) >= lim for m, (r, k) in {
            "max_t": (r1, "logp_fwe_voxel"), "extent_p01": (r1, "logp_fwe_cluster_extent"),
            "mass_p01": (r1, "logp_fwe_cluster_mass"), "extent_p001": (r2, "logp_fwe_cluster_extent"),
            "mass_p001": (r2, "logp_fwe_cluster_mass"), "tfce": (r1, "logp_fwe_tfce")}.items()}
        return top

    return {"max_t": err(r1.null["h0_max_t"]), "extent_p01": err(r1.null["h0_max_cluster_extent"]),
            "mass_p01": err(r1.null["h0_max_cluster_mass"]), "extent_p001": err(r2.null["h0_max_cluster_extent"]),
            "mass_p001": err(r2.null["h0_max_cluster_mass"]), "tfce": err(r1.null["h0_max_tfce"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[10, 20], help="subjects (default 10 20)")
    ap.add_argument("--noise", nargs="+", default=["gaussian", "skewed"], choices=["gaussian", "skewed"])
    ap.add_argument("--reps", type=int, default=1000, help="repetitions per setting (default 1000)")
    ap.add_argument("--n-perm", type=int, default=500, help="sign flips per repetition (default 500)")
    ap.add_argument("--shape", type=int, nargs=3, default=[32, 38, 32], help="volume (default 32 38 32)")
    ap.add_argument("--fwhm", type=float, default=3.0, help="smoothness FWHM in voxels (default 3)")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--two-sided", action="store_true")
    ap.add_argument("--tail", choices=["greater", "less"], nargs="+", default=["greater"],
                    help="one-sided alternative(s) (skewed noise is right-skewed: 'less' is the liberal tail)")
    ap.add_argument("--skew-sigma", type=float, default=0.5,
                    help="log-normal sigma of the skewed noise (0.5: skewness 1.75; 1: skewness 6.2)")
    ap.add_argument("--connectivity", type=int, default=26, choices=(6, 18, 26))
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--variance-smoothing", type=float, default=None, metavar="MM",
                    help="variance smoothing FWHM in mm (voxels are 2 mm here; default: plain t)")
    ap.add_argument("--accel", choices=["tail"], default=None, help="tail approximation of the FWE p-values")
    ap.add_argument("--report-every", type=int, default=50, help="print running rates every N repetitions")
    ap.add_argument("-o", "--output", default="null_fwe.json", help="JSON file for the results")
    args = ap.parse_args()
    mask = brain_mask(tuple(args.shape))
    lo, hi = stats.binom.interval(0.95, args.reps, args.alpha)
    print(f"mask: {int(mask.sum())} voxels in {tuple(args.shape)}, FWHM {args.fwhm} voxels, {args.n_perm} flips, "
          f"{args.reps} repetitions; binomial 95% range of the FWE rate: [{lo / args.reps:.3f}, {hi / args.reps:.3f}]",
          flush=True)
    print(f"{'noise':9s} {'n':>3s} " + " ".join(f"{m:>11s}" for m in METHODS) + "   time", flush=True)
    results = {"settings": vars(args), "n_voxels": int(mask.sum()), "binomial_95": [lo / args.reps, hi / args.reps],
               "rates": {}}
    for kind, tail, n in [(k, t, n) for k in args.noise for t in args.tail for n in args.n]:
        label = kind if tail == "greater" else f"{kind}-"
        rng = np.random.default_rng([args.seed, n, 0 if kind == "gaussian" else 1, 0 if tail == "greater" else 1])
        t0 = time.perf_counter()
        hits = {m: 0 for m in METHODS}
        for rep in range(1, args.reps + 1):
            for m, e in one_rep(rng, n, mask, args.fwhm, kind, args.n_perm, args.alpha, args.two_sided,
                                args.connectivity, tail, args.skew_sigma, args.variance_smoothing,
                                args.accel).items():
                hits[m] += e
            if rep % args.report_every == 0 or rep == args.reps:
                rates = {m: hits[m] / rep for m in METHODS}
                results["rates"][f"{kind}_{tail}_n{n}"] = {**rates, "reps": rep}
                done = "" if rep == args.reps else f" (partial: {rep} reps)"
                print(f"{label:9s} {n:3d} " + " ".join(f"{rates[m]:11.3f}" for m in METHODS)
                      + f"   {time.perf_counter() - t0:.0f} s{done}", flush=True)
                Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
