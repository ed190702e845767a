"""Whole-process benchmark at MNI size: ``voxelkit stats paired`` on a 2 mm MNI152 brain (235,375 voxels in the
mask of nilearn's bundled ``load_mni152_brain_mask(resolution=2)``, 99 x 117 x 95 grid; an ellipsoid of the same
size if nilearn is missing), 12 subjects' paired maps, two-sided, TFCE and clusters at p < 0.001 (the defaults),
26-connectivity, on the CPU.

The issue's target: 10,000 sign flips with TFCE and clusters in under 60 s.  With 12 subjects there are only
2^12 = 4,096 distinct sign flips, so ``--n-perm 10000`` runs the exact test over all 4,096; the engine computes only
2,049 of the maps (the map of the flip -s is minus that of s: :mod:`voxelkit.stats.engine`).  The script reports
that time, the time per 10,000 flips and per 10,000 computed maps (the permutation part scales linearly).
``--subjects 14`` (16,384 flips) runs 10,000 random flips for real (each map computed).

    nice python bench/bench_stats_mni.py                       # 12 subjects, --n-perm 10000 (exact: 4,096)
    nice python bench/bench_stats_mni.py --subjects 14         # 10,000 random flips
    nice python bench/bench_stats_mni.py --n-perm 1000         # the issue's "today" setting

Each subject's maps are smooth Gaussian noise (FWHM 8 mm) inside the mask plus, in condition A, a blob of 0.5
noise SD; the maps are written as NIfTI files first (not timed).  The numba cache is warmed by a short run
first, so the timing excludes the one-off kernel compilation of a fresh install.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def brain_mask() -> tuple[np.ndarray, np.ndarray, str]:
    """The 2 mm MNI152 brain mask (nilearn's bundled copy), or an ellipsoid of about the same volume."""
    try:
        from nilearn.datasets import load_mni152_brain_mask  # noqa: PLC0415

        img = load_mni152_brain_mask(resolution=2)
        return np.asarray(img.dataobj) > 0, img.affine, "nilearn MNI152 brain mask (2 mm)"
    except Exception:  # noqa: BLE001 - nilearn missing or without its data: a stand-in of the same size
        shape = (99, 117, 95)
        g = np.stack(np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in shape], indexing="ij"))
        mask = (g[0] / 36.0) ** 2 + (g[1] / 44.0) ** 2 + (g[2] / 35.4) ** 2 <= 1
        aff = np.diag([2.0, 2.0, 2.0, 1.0])
        aff[:3, 3] = [-98, -134, -72]
        return mask, aff, "ellipsoid stand-in (nilearn not available)"


def make_data(folder: Path, n_subjects: int, seed: int = 0) -> tuple[list[str], list[str], int, str]:
    import nibabel as nib  # noqa: PLC0415
    from scipy import ndimage  # noqa: PLC0415

    mask, aff, what = brain_mask()
    rng = np.random.default_rng(seed)
    sigma = 8.0 / 2.3548 / 2.0  # FWHM 8 mm in 2 mm voxels
    idx = np.argwhere(mask)
    centre = idx[len(idx) // 3]
    xx, yy, zz = np.meshgrid(*[np.arange(s) for s in mask.shape], indexing="ij")
    blob = np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (zz - centre[2]) ** 2) / (2 * 4.0 ** 2))
    a_files, b_files = [], []
    for i in range(n_subjects):
        for cond, files in (("A", a_files), ("B", b_files)):
            x = ndimage.gaussian_filter(rng.standard_normal(mask.shape), sigma)
            x = 2.0 + x / x[mask].std() * 0.2 + (0.1 * blob if cond == "A" else 0.0)
            x[~mask] = 0.0
            p = folder / f"sub-{i + 1:02d}_{cond}.nii.gz"
            nib.save(nib.Nifti1Image(x.astype(np.float32), aff), str(p))
            files.append(str(p))
    mp = folder / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), aff), str(mp))
    return a_files, b_files, int(mask.sum()), what


def run_voxelkit(folder: Path, a: list[str], b: list[str], n_perm: int, out: str,
                 extra: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, all threads) of one ``voxelkit stats paired`` process."""
    cmd = [sys.executable, "-m", "voxelkit", "stats", "paired", "--a", *a, "--b", *b, "--mask",
           str(folder / "mask.nii.gz"), "--n-perm", str(n_perm), "--seed", "0", "--quiet", "--device", "cpu",
           "--overwrite", *extra, "-o", str(folder / out)]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ})
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=12)
    ap.add_argument("--n-perm", type=int, default=10000)
    ap.add_argument("--connectivity", type=int, default=26, choices=(6, 18, 26))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        a, b, n_vox, what = make_data(folder, args.subjects)
        run_voxelkit(folder, a, b, 32, "warm", [])  # numba cache and OS file cache, not timed
        extra = ["--connectivity", str(args.connectivity)]
        secs, cpu = run_voxelkit(folder, a, b, args.n_perm, "run", extra)
        meta = json.loads((folder / "run" / "stats.json").read_text())
        n_done = int(meta["n_perm"])
        # an exact enumeration's maps come in pairs s, -s: the engine computes N/2 + 1 of them
        n_maps = int(meta.get("maps_computed", n_done // 2 + 1 if meta["exhaustive"] else n_done))
        print(f"mask: {what}, {n_vox} voxels; {args.subjects} subjects; two-sided, TFCE, clusters p < "
              f"{meta['cluster_p']}, {meta['connectivity']}-connectivity")
        print(f"--n-perm {args.n_perm}: {n_done} sign flips{' (exact: all of them)' if meta['exhaustive'] else ''}, "
              f"{n_maps} maps computed, in {secs:.1f} s (whole process; {cpu:.1f} s of CPU over all threads), "
              f"{secs / n_done * 1e4:.1f} s per 10,000 flips, {secs / n_maps * 1e4:.1f} s per 10,000 computed maps "
              f"(load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
