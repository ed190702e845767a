"""Power gain and null FWE of variance smoothing (pseudo-t) on simulated 12-subject PET studies.

Each repetition simulates n paired-difference maps (smooth Gaussian noise of FWHM --fwhm-noise mm on a 2 mm grid in
a brain-shaped mask, bench/null_fwe.py's), adds a Gaussian blob of peak --effect (in noise SD units) in half of the
studies' design (``--effect 0`` for the null), and tests mean > 0 by sign flipping with max-T FWE (and, with
``--tfce``, TFCE), once with the plain t and once per variance-smoothing FWHM.  The same data and the same flips go
to every statistic.

Reported per statistic: the family-wise error rate under the null (a false positive anywhere, with the binomial 95 %
range), or under the alternative the detection rate (FWE p <= 0.05 somewhere inside the blob's core) and the mean
fraction of the blob's core voxels detected.

    python bench/varsmooth_power.py --reps 200                 # power, n = 12
    python bench/varsmooth_power.py --reps 400 --effect 0      # null FWE
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

try:
    from null_fwe import brain_mask
except ImportError:  # pragma: no cover - run from another folder
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from null_fwe import brain_mask

VOX_MM = 2.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=12, help="subjects (default 12)")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--n-perm", type=int, default=500)
    ap.add_argument("--shape", type=int, nargs=3, default=[32, 38, 32])
    ap.add_argument("--fwhm-noise", type=float, default=8.0, help="noise smoothness FWHM in mm (default 8)")
    ap.add_argument("--effect", type=float, default=0.9, help="blob peak in noise SD units (0: null)")
    ap.add_argument("--blob-sigma", type=float, default=6.0, help="blob Gaussian sigma in mm (default 6)")
    ap.add_argument("--vs", type=float, nargs="+", default=[4.0, 8.0, 12.0], help="variance smoothing FWHMs (mm)")
    ap.add_argument("--tfce", action="store_true", help="also TFCE (slower)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("-o", "--output", default="varsmooth_power.json")
    args = ap.parse_args()
    shape = tuple(args.shape)
    mask = brain_mask(shape)
    aff = np.diag([VOX_MM, VOX_MM, VOX_MM, 1.0])
    mk = Masker(mask, aff)
    g = np.meshgrid(*[np.arange(s) * VOX_MM for s in shape], indexing="ij")
    c = [0.35 * shape[0] * VOX_MM, 0.5 * shape[1] * VOX_MM, 0.55 * shape[2] * VOX_MM]
    blob = np.exp(-sum((gi - ci) ** 2 for gi, ci in zip(g, c, strict=True)) / (2 * args.blob_sigma ** 2))
    core = (blob > 0.5)[mask]
    sigma_vox = args.fwhm_noise / VOX_MM / np.sqrt(8 * np.log(2))
    labels = ["plain"] + [f"vs{v:g}mm" for v in args.vs]
    stats_kinds = ["max_t"] + (["tfce"] if args.tfce else [])
    hits = {(lab, k): 0 for lab in labels for k in stats_kinds}
    frac = {(lab, k): 0.0 for lab in labels for k in stats_kinds}
    rng = np.random.default_rng(args.seed)
    null = args.effect == 0
    lo, hi = stats.binom.interval(0.95, args.reps, 0.05)
    print(f"mask {int(mask.sum())} voxels, n = {args.n}, {args.n_perm} flips, {args.reps} reps, noise FWHM "
          f"{args.fwhm_noise} mm, effect {args.effect} SD; " + (
              f"null: binomial 95% range [{lo / args.reps:.3f}, {hi / args.reps:.3f}]" if null else
              f"blob core {int(core.sum())} voxels"), flush=True)
    t0 = time.perf_counter()
    times = {lab: 0.0 for lab in labels}
    for rep in range(1, args.reps + 1):
        y = np.empty((args.n, int(mask.sum())))
        for i in range(args.n):
            e = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_vox)
            y[i] = (e / e.std() + args.effect * blob)[mask]
        seed = int(rng.integers(2 ** 31))
        for lab, vs in zip(labels, [None, *args.vs], strict=True):
            t1 = time.perf_counter()
            r = permutation_test(y, mk, one_sample_design(args.n), n_perm=args.n_perm, seed=seed, tfce=args.tfce,
                                 variance_smoothing=vs, device=NUMPY, two_sided=False, cluster_p=None)
            times[lab] += time.perf_counter() - t1
            for k in stats_kinds:
                lp = r.maps["logp_fwe_voxel" if k == "max_t" else "logp_fwe_tfce"]
                sig = lp >= -np.log10(0.05) - 1e-9
                if null:
                    hits[(lab, k)] += bool(sig.any())
                else:
                    hits[(lab, k)] += bool(sig[core].any())
                    frac[(lab, k)] += float(sig[core].mean())
        if rep % 50 == 0 or rep == args.reps:
            print(f"  {rep} reps, {time.perf_counter() - t0:.0f} s", flush=True)
    res = {"settings": vars(args), "n_voxels": int(mask.sum()), "rows": []}
    head = "FWE rate" if null else "detection rate   mean fraction of core detected"
    print(f"{'statistic':12s} {'stat':6s} {head}   s/test")
    for lab in labels:
        for k in stats_kinds:
            rate = hits[(lab, k)] / args.reps
            row = {"statistic": lab, "kind": k, "rate": rate, "s_per_test": times[lab] / args.reps}
            if not null:
                row["fraction_detected"] = frac[(lab, k)] / args.reps
            res["rows"].append(row)
            extra = "" if null else f"   {row['fraction_detected']:.3f}"
            print(f"{lab:12s} {k:6s} {rate:.3f}{extra}   {row['s_per_test']:.2f}", flush=True)
    if null:
        res["binomial_95"] = [lo / args.reps, hi / args.reps]
    Path(args.output).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
