"""Same workloads on two revisions of voxelkit, interleaved in one run: is a change slower?

Each revision is exported with ``git archive`` into a temporary folder and imported from there
(``PYTHONPATH``) by a fresh worker process per workload and round, so both see the same machine state.
Rounds alternate base / head; the table gives, per workload, the median over rounds of the best of three
in-process calls (seconds, ``time.perf_counter`` around the call only, after one warm-up call in the same
process, so numba compilation and imports are not counted) and head / base.
Workloads use only API present in both revisions:
``voxelkit.models.get_model(...).fit(ct, cr, frames)`` and ``voxelkit.stats.permutation_test``.

Run: ``nice python bench/compare_revisions.py --base d181225 --rounds 5`` (head = the working tree).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: name -> (kind, settings); fits: 200,000 voxels x 28 frames; stats: 15 paired maps on a 40 x 48 x 40 grid
WORKLOADS: dict[str, tuple[str, dict]] = {
    "srtm": ("fit", {"model": "srtm", "options": {}}),
    "srtm2": ("fit", {"model": "srtm2", "options": {"k2prime": 0.1}}),
    "mrtm": ("fit", {"model": "mrtm", "options": {}}),
    "mrtm2": ("fit", {"model": "mrtm2", "options": {"k2prime": 0.1}}),
    "logan": ("fit", {"model": "logan", "options": {"tstar": 20.0, "k2prime": 0.1}}),
    "max-T 5,000 flips": ("stats", {"n_perm": 5000, "cluster_p": None, "tfce": False}),
    "clusters p<0.001 2,000 flips": ("stats", {"n_perm": 2000, "cluster_p": 0.001, "tfce": False}),
    "TFCE 100 flips": ("stats", {"n_perm": 100, "cluster_p": None, "tfce": True}),
}

WORKER = r'''
import json, sys, time
import numpy as np
kind, settings = sys.argv[1], json.loads(sys.argv[2])
if kind == "fit":
    from voxelkit.frames import FrameTiming
    from voxelkit.models import get_model
    d = np.repeat([15.0, 30.0, 60.0, 120.0, 300.0], [6, 4, 4, 4, 10])
    fr = FrameTiming(np.concatenate([[0.0], np.cumsum(d)[:-1]]), d)
    t = fr.mid_min
    rng = np.random.default_rng(0)
    cr = 10.0 * t * np.exp(-t / 6.0) + 0.5
    n = 200000
    bp = rng.uniform(0.0, 3.0, n)[:, None]
    r1 = rng.uniform(0.7, 1.3, n)[:, None]
    # one-tissue reference-tissue TAC by numerical convolution (speed only)
    tt = np.linspace(0, t[-1], 2000)
    crf = np.interp(tt, t, cr)
    k2a = 0.1 * r1 / (1 + bp)
    dt = tt[1] - tt[0]
    conv = np.stack([np.convolve(crf, np.exp(-k * tt))[: tt.size] * dt for k in np.linspace(0.02, 0.1, 16)])
    j = np.clip(((k2a[:, 0] - 0.02) / 0.08 * 15).round().astype(int), 0, 15)
    ct = r1 * crf[None, :] + (0.1 * r1 - r1 * k2a) * conv[j]
    ct = np.stack([np.interp(t, tt, row) for row in ct[:2000]])
    ct = np.tile(ct, (n // 2000, 1)) * (1 + 0.05 * rng.standard_normal((n, t.size)))
    ct = ct.astype(np.float32)
    model = get_model(settings["model"], **settings["options"])
    run = lambda: model.fit(ct, cr, fr)
else:
    from voxelkit import stats
    try:
        from voxelkit.io import Masker
    except ImportError:
        from voxelkit.io.images import Masker
    rng = np.random.default_rng(1)
    shape = (40, 48, 40)
    zz, yy, xx = np.indices(shape)
    mask = ((zz - 20) / 19.0) ** 2 + ((yy - 24) / 23.0) ** 2 + ((xx - 20) / 19.0) ** 2 <= 1.0
    masker = Masker(mask, np.diag([2.0, 2.0, 2.0, 1.0]))
    from scipy.ndimage import gaussian_filter
    vols = np.stack([gaussian_filter(rng.standard_normal(shape), 1.5) for _ in range(15)])
    Y = vols[:, mask].astype(np.float32)
    Y /= Y.std()
    design = stats.one_sample_design(15)
    run = lambda: stats.permutation_test(Y, masker, design, two_sided=True, connectivity=6, seed=0,
                                         device="cpu", **settings)
run()
best = float("inf")
for _ in range(3):
    t0 = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - t0)
print(json.dumps({"seconds": best}))
'''


def export(rev: str, dest: Path) -> Path:
    """``git archive`` of ``voxelkit/`` and ``kernels/`` at ``rev`` into ``dest``; returns ``dest``."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "voxelkit", "kernels"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


#: ``--fixed-malloc``: glibc keeps freed memory instead of returning large blocks to the OS, so that a run's
#: time does not depend on whether earlier allocations moved the dynamic mmap threshold (page faults)
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "1000000000", "MALLOC_TRIM_THRESHOLD_": "2000000000"}


def time_one(tree: Path, kind: str, settings: dict, fixed_malloc: bool = False) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           **(FIXED_MALLOC if fixed_malloc else {})}
    out = subprocess.run([sys.executable, "-c", WORKER, kind, json.dumps(settings)], env=env, check=True,
                         capture_output=True, text=True, cwd=tree).stdout
    return float(json.loads(out.strip().splitlines()[-1])["seconds"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="d181225", help="base revision (default d181225: before issue 11)")
    ap.add_argument("--head", default=None, help="head revision (default: the working tree)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=None, help="workload names (default all)")
    ap.add_argument("--out", default=None, help="JSON file for the timings")
    ap.add_argument("--fixed-malloc", action="store_true",
                    help="workers with glibc's mmap/trim thresholds fixed (allocator state out of the timings)")
    args = ap.parse_args(argv)
    names = args.only or list(WORKLOADS)
    with tempfile.TemporaryDirectory() as tmp:
        base = export(args.base, Path(tmp) / "base")
        head = export(args.head, Path(tmp) / "head") if args.head else ROOT
        times: dict[str, dict[str, list[float]]] = {n: {"base": [], "head": []} for n in names}
        for r in range(args.rounds):
            for n in names:
                kind, settings = WORKLOADS[n]
                order = (("base", base), ("head", head)) if r % 2 == 0 else (("head", head), ("base", base))
                for label, tree in order:
                    times[n][label].append(time_one(tree, kind, settings, args.fixed_malloc))
    print(f"| workload | base {args.base} s | head {args.head or 'working tree'} s | head / base |")
    print("|---|---|---|---|")
    for n in names:
        b, h = statistics.median(times[n]["base"]), statistics.median(times[n]["head"])
        print(f"| {n} | {b:.3f} | {h:.3f} | {h / b:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(times, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
