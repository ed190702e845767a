"""Accuracy of the tail approximation (``accel="tail"``) against a reference null on the same data.

One simulated 16-subject study (smooth noise in bench/null_fwe.py's brain mask, 2 mm voxels, plus a weak blob) is
tested once with every one of its 2^16 = 65,536 sign flips (max-T, cluster extent and mass at CDT p = 0.01, TFCE,
one-sided).  That exhaustive enumeration *is* the permutation distribution, so the reference FWE p has no Monte
Carlo error (the issue asked for a 20,000-permutation reference, whose own relative error at p = 0.001 is 22 %;
``--n-ref 20000`` gives that one).  Runs of 500 permutations are then drawn from it (the identity plus 499
distinct random flips: what ``permutation_test(..., n_perm=500, accel="tail")`` draws with another seed), and for
statistic values whose reference FWE p is 0.001 ... 0.05 the tail-approximated p (:func:`voxelkit.stats.tail.
fit_tail` + :func:`tail_fwe_p`) and the plain p of each run are compared with the reference: relative error
``|p / p_ref - 1|``, median and 90th percentile over the runs.  ``binomial SE`` is the relative standard error
``sqrt((1 - p) / (p N))`` of any unbiased estimate that counts exceedances among N = 500 permutations (the plain p),
for comparison; ``ref SE`` that of the reference (0 for the exhaustive one).

    python bench/tail_accuracy.py                    # exhaustive reference (65,536 flips), 40 runs of 500
    python bench/tail_accuracy.py --n-ref 20000      # the issue's 20,000-flip reference, 20 disjoint runs of 500
    python bench/tail_accuracy.py --runs 100 --no-tfce
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from voxelkit.backend import NUMPY
from voxelkit.io import Masker
from voxelkit.stats import fwe_p, permutation_test
from voxelkit.stats.design import one_sample_design
from voxelkit.stats.tail import fit_tail, tail_fwe_p

sys.path.insert(0, str(Path(__file__).resolve().parent))
from null_fwe import brain_mask  # noqa: E402

P_REF = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)
NULLS = {"max_t": "h0_max_t", "extent": "h0_max_cluster_extent", "mass": "h0_max_cluster_mass",
         "tfce": "h0_max_tfce"}


def alternative_p(x: np.ndarray, null: np.ndarray) -> dict[str, np.ndarray]:
    """FWE p of ``x`` from other models of the null maxima (not voxelkit's): GEV and Gumbel maximum-likelihood fits
    to all N maxima, and a GPD on the top N/2 (threshold between the k-th and (k+1)-th largest)."""
    import warnings  # noqa: PLC0415

    from scipy import stats  # noqa: PLC0415

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c, loc, sc = stats.genextreme.fit(null)
        out["gev"] = stats.genextreme.sf(x, c, loc, sc)
        loc, sc = stats.gumbel_r.fit(null)
        out["gumbel"] = stats.gumbel_r.sf(x, loc, sc)
        y = np.sort(null)[::-1]
        k = null.size // 2
        u = 0.5 * (y[k - 1] + y[k])
        xi, _, s = stats.genpareto.fit(y[:k] - u, floc=0.0)
        out["gpd_k=N/2"] = np.where(x > u, k / null.size * stats.genpareto.sf(x - u, xi, 0.0, s), np.nan)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16, help="subjects (default 16; 2^n must exceed --n-ref)")
    ap.add_argument("--n-ref", type=int, default=65536,
                    help="reference permutations (default 65536 = 2^16: every sign flip, the exact distribution; "
                         "fewer: random flips, cut into disjoint runs)")
    ap.add_argument("--n-perm", type=int, default=500, help="permutations per approximated run (default 500)")
    ap.add_argument("--runs", type=int, default=40,
                    help="runs of --n-perm permutations (default 40; with a random reference at most "
                         "(n_ref - 1) / (n_perm - 1) disjoint ones)")
    ap.add_argument("--shape", type=int, nargs=3, default=[32, 38, 32])
    ap.add_argument("--no-tfce", action="store_true")
    ap.add_argument("--max-exceed", type=int, default=250, help="initial number of exceedances cap (default 250)")
    ap.add_argument("--alternatives", action="store_true",
                    help="also fit, to the same runs, a GEV and a Gumbel to all N maxima and a GPD on a fixed "
                         "k = N/2 (median error and median ratio p / p_ref; not used by voxelkit)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("-o", "--output", default="tail_accuracy.json")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    shape = tuple(args.shape)
    mask = brain_mask(shape)
    sig = 8.0 / 2.0 / np.sqrt(8 * np.log(2))
    g = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    blob = np.exp(-((g[0] - shape[0] * 0.35) ** 2 + (g[1] - shape[1] * 0.5) ** 2 + (g[2] - shape[2] * 0.5) ** 2)
                  / (2 * 3.0 ** 2))
    y = np.empty((args.n, int(mask.sum())))
    for i in range(args.n):
        e = ndimage.gaussian_filter(rng.standard_normal(shape), sig)
        y[i] = (e / e.std() + 0.5 * blob)[mask]
    mk = Masker(mask, np.diag([2.0, 2.0, 2.0, 1.0]))
    t0 = time.perf_counter()
    ref = permutation_test(y, mk, one_sample_design(args.n), n_perm=args.n_ref, seed=args.seed, cluster_p=0.01,
                           tfce=not args.no_tfce, device=NUMPY, two_sided=False)
    t_ref = time.perf_counter() - t0
    print(f"{int(mask.sum())} voxels, n = {args.n}: reference {ref.settings['n_perm']} flips in {t_ref:.1f} s; "
          f"{args.runs} runs of {args.n_perm}", flush=True)
    kinds = [k for k in NULLS if not (k == "tfce" and args.no_tfce)]
    exact = bool(ref.settings.get("exhaustive"))
    if not exact:
        args.runs = min(args.runs, (ref.settings["n_perm"] - 1) // (args.n_perm - 1))
    out = {"settings": vars(args), "n_voxels": int(mask.sum()), "reference_seconds": t_ref,
           "reference_exhaustive": exact, "rows": []}
    per = args.n_perm - 1
    print(f"reference: {'exhaustive (the exact permutation distribution)' if exact else 'random flips'}")
    print(f"{'null':7s} {'p_ref':>6s} {'ref SE':>7s} {'binom SE':>9s} {'tail med':>9s} {'tail p90':>9s} "
          f"{'plain med':>10s} {'plain p90':>10s} {'fits ok':>8s}")
    draw = np.random.default_rng(args.seed + 1)
    for kind in kinds:
        full = ref.null[NULLS[kind]]
        N = full.size
        srt = np.sort(full)[::-1]
        x = np.array([srt[int(round(p * N)) - 1] for p in P_REF])
        p_ref = fwe_p(x, full)
        errs_t, errs_p, n_ok, alt = [], [], 0, {}
        t1 = time.perf_counter()
        for j in range(args.runs):
            if exact:   # distinct random flips of the enumeration (row 0 is the identity)
                pick = 1 + draw.choice(N - 1, per, replace=False)
            else:       # disjoint cuts of the random reference
                pick = np.arange(1 + j * per, 1 + (j + 1) * per)
            null = np.r_[full[0], full[pick]]
            fit = fit_tail(null, seed=j, max_exceed=args.max_exceed)
            n_ok += fit.ok
            errs_t.append(np.abs(tail_fwe_p(x, null, fit) / p_ref - 1))
            errs_p.append(np.abs(fwe_p(x, null) / p_ref - 1))
            if args.alternatives:
                for name, q in alternative_p(x, null).items():
                    alt.setdefault(name, []).append(q)
        errs_t, errs_p = np.array(errs_t), np.array(errs_p)
        if args.alternatives:
            for name, q in alt.items():
                ratio = np.array(q) / p_ref
                print(f"  {kind} {name:11s} median error " + " ".join(f"{v:5.2f}" for v in
                      np.nanmedian(np.abs(ratio - 1), axis=0)) + "   median ratio " +
                      " ".join(f"{v:5.2f}" for v in np.nanmedian(ratio, axis=0)), flush=True)
                out.setdefault("alternatives", {}).setdefault(kind, {})[name] = {
                    "median_error": np.nanmedian(np.abs(ratio - 1), axis=0).tolist(),
                    "median_ratio": np.nanmedian(ratio, axis=0).tolist()}
        for i, p in enumerate(p_ref):
            row = {"null": kind, "p_ref": float(p),
                   "ref_rel_se": 0.0 if exact else float(np.sqrt((1 - p) / (p * N))),
                   "binomial_rel_se": float(np.sqrt((1 - p) / (p * args.n_perm))),
                   "tail_median": float(np.median(errs_t[:, i])), "tail_p90": float(np.quantile(errs_t[:, i], .9)),
                   "plain_median": float(np.median(errs_p[:, i])),
                   "plain_p90": float(np.quantile(errs_p[:, i], .9)), "fits_ok": n_ok / args.runs,
                   "fit_seconds": (time.perf_counter() - t1) / args.runs}
            out["rows"].append(row)
            print(f"{kind:7s} {p:6.3f} {row['ref_rel_se']:7.2f} {row['binomial_rel_se']:9.2f} "
                  f"{row['tail_median']:9.2f} {row['tail_p90']:9.2f} "
                  f"{row['plain_median']:10.2f} {row['plain_p90']:10.2f} {row['fits_ok']:8.2f}", flush=True)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
