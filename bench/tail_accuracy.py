"""Accuracy of the tail approximation (``accel="tail"``) against a 20,000-permutation reference on the same data.

One simulated 16-subject study (2^16 = 65,536 sign flips, so 20,000 distinct random ones exist; with 12 subjects
there are only 4,096) (smooth noise in bench/null_fwe.py's brain mask, 2 mm voxels, plus a weak blob) is
tested once with 20,000 sign flips (max-T, cluster extent and mass at CDT p = 0.01, TFCE).  Its null distributions
of maxima are the reference.  They are then cut into independent runs of 500 permutations each (the identity plus
499 of the reference's random flips: exactly what ``permutation_test(..., n_perm=500, accel="tail")`` would draw
with another seed), and for statistic values whose reference FWE p is 0.001 ... 0.05 the tail-approximated p
(:func:`voxelkit.stats.tail.fit_tail` + :func:`tail_fwe_p`) and the plain p of each run are compared with the
reference: relative error ``|p / p_ref - 1|``, median and 90th percentile over the runs.  The reference's own
relative standard error ``sqrt((1 - p) / (p N))`` is printed alongside (at p = 0.001 with N = 20,000 it is 22 %).

    python bench/tail_accuracy.py                    # 20,000 reference flips, 20 runs of 500
    python bench/tail_accuracy.py --runs 40 --no-tfce
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16, help="subjects (default 16; 2^n must exceed --n-ref)")
    ap.add_argument("--n-ref", type=int, default=20000, help="reference permutations (default 20000)")
    ap.add_argument("--n-perm", type=int, default=500, help="permutations per approximated run (default 500)")
    ap.add_argument("--runs", type=int, default=20, help="independent runs cut from the reference (default 20)")
    ap.add_argument("--shape", type=int, nargs=3, default=[32, 38, 32])
    ap.add_argument("--no-tfce", action="store_true")
    ap.add_argument("--max-exceed", type=int, default=250, help="initial number of exceedances cap (default 250)")
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
    args.runs = min(args.runs, (ref.settings["n_perm"] - 1) // (args.n_perm - 1))
    out = {"settings": vars(args), "n_voxels": int(mask.sum()), "reference_seconds": t_ref, "rows": []}
    per = args.n_perm - 1
    print(f"{'null':7s} {'p_ref':>6s} {'ref SE':>7s} {'tail med':>9s} {'tail p90':>9s} {'plain med':>10s} "
          f"{'plain p90':>10s} {'fits ok':>8s}")
    for kind in kinds:
        full = ref.null[NULLS[kind]]
        N = full.size
        srt = np.sort(full)[::-1]
        x = np.array([srt[int(round(p * N)) - 1] for p in P_REF])
        p_ref = fwe_p(x, full)
        errs_t, errs_p, n_ok = [], [], 0
        t1 = time.perf_counter()
        for j in range(args.runs):
            null = np.r_[full[0], full[1 + j * per:1 + (j + 1) * per]]
            fit = fit_tail(null, seed=j, max_exceed=args.max_exceed)
            n_ok += fit.ok
            errs_t.append(np.abs(tail_fwe_p(x, null, fit) / p_ref - 1))
            errs_p.append(np.abs(fwe_p(x, null) / p_ref - 1))
        errs_t, errs_p = np.array(errs_t), np.array(errs_p)
        for i, p in enumerate(p_ref):
            row = {"null": kind, "p_ref": float(p), "ref_rel_se": float(np.sqrt((1 - p) / (p * N))),
                   "tail_median": float(np.median(errs_t[:, i])), "tail_p90": float(np.quantile(errs_t[:, i], .9)),
                   "plain_median": float(np.median(errs_p[:, i])),
                   "plain_p90": float(np.quantile(errs_p[:, i], .9)), "fits_ok": n_ok / args.runs,
                   "fit_seconds": (time.perf_counter() - t1) / args.runs}
            out["rows"].append(row)
            print(f"{kind:7s} {p:6.3f} {row['ref_rel_se']:7.2f} {row['tail_median']:9.2f} {row['tail_p90']:9.2f} "
                  f"{row['plain_median']:10.2f} {row['plain_p90']:10.2f} {row['fits_ok']:8.2f}", flush=True)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
