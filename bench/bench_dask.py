"""Benchmark: ``voxelkit run`` on threads vs a local Dask cluster of 1 and 2 workers (same study, same results).

Simulates a small crossover study (``--subjects`` x 2 scans, default 12 x 2 = 24 scans, the simulator's "test"
preset at 4 mm) once, then runs the whole study per scheduler into a fresh folder and prints one JSON line per
run with the fit and statistics seconds; the per-scan maps and the null distributions are checked to be
identical to the threads run::

    nice python bench/bench_dask.py                      # threads, dask 1 worker, dask 2 workers
    python bench/bench_dask.py --subjects 8 --n-perm 500
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=12)
    ap.add_argument("--n-perm", type=int, default=1000)
    ap.add_argument("--model", default="srtm")
    ap.add_argument("--dir", default="/tmp/voxelkit_bench_dask")
    args = ap.parse_args(argv)
    from voxelkit.pipeline import StudyConfig, layout, run_study  # noqa: PLC0415
    from voxelkit.simulate.study import simulate_study  # noqa: PLC0415

    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    bids = root / "bids"
    t0 = time.perf_counter()
    simulate_study(bids, preset="test", n_subjects=args.subjects, effect=0.1, noise=0.05, seed=1, challenge="none")
    print(json.dumps({"simulate_s": round(time.perf_counter() - t0, 1), "scans": 2 * args.subjects}), flush=True)
    runs = [("threads", None), ("dask", 1), ("dask", 2)]
    ref_null = None
    for spec, workers in runs:
        out = root / f"out_{spec}_{workers or 1}"
        cfg = StudyConfig(bids_dir=bids, output_dir=out, model=args.model, n_perm=args.n_perm, seed=0,
                          smoothing_fwhm=4.0, report=False, scheduler=spec, workers=workers)
        t0 = time.perf_counter()
        res = run_study(cfg, progress=False)
        wall = time.perf_counter() - t0
        null = np.load(layout.stats_dir(out) / "null_distributions.npz")
        same = None
        if ref_null is None:
            ref_null = {k: null[k] for k in null.files}
        else:
            same = all(np.array_equal(ref_null[k], null[k]) for k in null.files)
        print(json.dumps({"scheduler": spec, "workers": workers or 1, "scans": 2 * len(res.subjects),
                          "wall_s": round(wall, 1), "fit_s": round(res.seconds["fit"], 1),
                          "stats_s": round(res.seconds["stats"], 1), "n_perm": args.n_perm,
                          "nulls_identical_to_threads": same}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
