"""Whole-process benchmark: ``voxelkit stats paired`` against scripts running nilearn's ``permuted_ols`` and
MNE-Python's ``permutation_t_test`` / ``permutation_cluster_1samp_test``.

Both processes load the same 15 pairs of NIfTI maps (40 x 48 x 40 = 76,800 voxels, all in the mask), test the
paired difference two-sided, and write nothing voxelkit-specific that nilearn does not also compute.  Three
settings (the issue's): voxel max-T with 10,000 permutations; cluster extent/mass at p < 0.001 with 5,000; TFCE
with 200.  nilearn uses 6-connectivity for clusters and TFCE, so voxelkit is run with ``--connectivity 6`` too
(the 26-connectivity default is timed separately).  Process start-up and imports are included on both sides.

    python -m pytest bench/bench_stats.py -p no:cacheprovider                      # pytest-benchmark, 1 round
    python bench/bench_stats.py                                                     # one run each, a table
    python bench/bench_stats.py --only maxt                                         # one setting

nilearn takes 20-40 s per setting on 2 cores, so each benchmark runs one round.

MNE-Python (``pip install mne``, in the ``bench`` extra): max-T with ``permutation_t_test`` (two-sided, ``tail=0``);
clusters with ``permutation_cluster_1samp_test`` at the same t threshold (p < 0.001 two-sided on 14 df) on the
grid's 6-connectivity lattice (``combine_adjacency``); TFCE with the same function and ``threshold=dict(start=0,
step=0.2)`` (MNE integrates TFCE numerically in steps; voxelkit's TFCE is exact).  ``permutation_t_test`` holds
all permutations' statistics at once (about 24 GB for 10,000 x 76,800); ``--mne-maxt-chunk K`` runs it in calls of
K permutations (same work, bounded memory) on machines with less free memory.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (40, 48, 40)
N_SUBJECTS = 15
SETTINGS = {
    "maxt": {"n_perm": 10000, "cluster_p": None, "tfce": False},
    "cluster": {"n_perm": 5000, "cluster_p": 0.001, "tfce": False},
    "tfce": {"n_perm": 200, "cluster_p": None, "tfce": True},
}

NILEARN_SCRIPT = r'''
import sys, numpy as np, nibabel as nib
from nilearn.maskers import NiftiMasker
from nilearn.mass_univariate import permuted_ols
n_perm, cluster_p, tfce, n = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
files = sys.argv[5:]
a, b = files[:n], files[n:]
mask = nib.Nifti1Image(np.ones(nib.load(a[0]).shape, np.uint8), nib.load(a[0]).affine)
masker = NiftiMasker(mask).fit()
d = masker.transform(a) - masker.transform(b)
out = permuted_ols(np.ones((n, 1)), d, model_intercept=False, n_perm=n_perm, two_sided_test=True,
                   random_state=0, n_jobs=1, masker=masker, tfce=tfce,
                   threshold=None if cluster_p == "none" else float(cluster_p), output_type="dict")
np.savez("{out}", **{k: v for k, v in out.items()})
'''

MNE_SCRIPT = r'''
import sys, numpy as np, nibabel as nib
from scipy.special import stdtrit
import mne
n_perm, cluster_p, tfce = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
chunk, n = int(sys.argv[4]), int(sys.argv[5])
files = sys.argv[6:]
a, b = files[:n], files[n:]
d = np.stack([np.asarray(nib.load(f).dataobj, np.float64).ravel() for f in a]) - \
    np.stack([np.asarray(nib.load(f).dataobj, np.float64).ravel() for f in b])
shape = nib.load(a[0]).shape
if cluster_p == "none" and not tfce:
    h0 = []
    done = 0
    while done < n_perm:
        k = min(chunk or n_perm, n_perm - done)
        t_obs, p, H0 = mne.stats.permutation_t_test(d, n_permutations=k, tail=0, n_jobs=1, seed=done, verbose=False)
        h0.append(H0)
        done += k
    np.savez("{out}", t=t_obs, h0=np.concatenate(h0))
else:
    adj = mne.stats.combine_adjacency(*shape)
    thr = dict(start=0, step=0.2) if tfce else float(stdtrit(n - 1, 1 - float(cluster_p) / 2))
    t_obs, clusters, p, H0 = mne.stats.permutation_cluster_1samp_test(
        d, threshold=thr, n_permutations=n_perm, tail=0, adjacency=adj, n_jobs=1, seed=0, out_type="indices",
        verbose=False)
    np.savez("{out}", t=t_obs, h0=H0, p=p)
'''


def make_data(folder: Path, seed: int = 0) -> tuple[list[str], list[str]]:
    """15 subjects' A and B maps: smooth noise (FWHM ~ 2.4 voxels) plus a small effect blob in A."""
    import nibabel as nib  # noqa: PLC0415
    from scipy import ndimage  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [-40, -56, -30]
    xx, yy, zz = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    blob = np.exp(-((xx - 12) ** 2 + (yy - 20) ** 2 + (zz - 18) ** 2) / (2 * 3.0 ** 2))
    a_files, b_files = [], []
    for i in range(N_SUBJECTS):
        for cond, files in (("A", a_files), ("B", b_files)):
            x = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1.0)
            x = 2.0 + x / x.std() * 0.2 + (0.15 * blob if cond == "A" else 0)
            p = folder / f"sub-{i + 1:02d}_{cond}.nii.gz"
            nib.save(nib.Nifti1Image(x.astype(np.float32), aff), str(p))
            files.append(str(p))
    return a_files, b_files


def ensure_bytecode() -> None:
    """Compile voxelkit's modules to bytecode, as ``pip install`` does at install time (the peers' site-packages
    have theirs).  In an editable install run with PYTHONDONTWRITEBYTECODE=1 (as on our CI machines), every
    voxelkit process would otherwise compile its ~60 modules from source (~50 ms of a 0.8 s run)."""
    import compileall  # noqa: PLC0415

    import voxelkit  # noqa: PLC0415

    compileall.compile_dir(str(Path(voxelkit.__file__).parent), quiet=1)


def median_of(fn, rounds: int) -> tuple[float, float]:
    """(median, min) seconds of ``rounds`` calls of ``fn``."""
    times = sorted(fn() for _ in range(max(1, rounds)))
    return float(np.median(times)), times[0]


def run_nilearn(folder: Path, a: list[str], b: list[str], setting: str) -> float:
    s = SETTINGS[setting]
    script = folder / "nilearn_permuted_ols.py"
    script.write_text(NILEARN_SCRIPT.replace("{out}", str(folder / f"nilearn_{setting}.npz")))
    cmd = [sys.executable, str(script), str(s["n_perm"]), str(s["cluster_p"] or "none"),
           "1" if s["tfce"] else "0", str(len(a)), *a, *b]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def run_mne(folder: Path, a: list[str], b: list[str], setting: str, maxt_chunk: int = 0) -> float:
    """Whole-process seconds of the MNE-Python script for ``setting``."""
    s = SETTINGS[setting]
    script = folder / "mne_stats.py"
    script.write_text(MNE_SCRIPT.replace("{out}", str(folder / f"mne_{setting}.npz")))
    cmd = [sys.executable, str(script), str(s["n_perm"]), str(s["cluster_p"] or "none"), "1" if s["tfce"] else "0",
           str(maxt_chunk), str(len(a)), *a, *b]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def run_voxelkit(folder: Path, a: list[str], b: list[str], setting: str, connectivity: int = 6,
                 env: dict | None = None) -> float:
    """Whole-process seconds of ``voxelkit stats paired`` for ``setting`` (``env``: the process environment, e.g.
    ``NUMBA_CACHE_DIR`` of a fresh install)."""
    s = SETTINGS[setting]
    cmd = [sys.executable, "-m", "voxelkit", "stats", "paired", "--a", *a, "--b", *b, "--n-perm",
           str(s["n_perm"]), "--two-sided", "--seed", "0", "--quiet", "--device", "cpu",
           "--connectivity", str(connectivity), "--overwrite", "-o", str(folder / f"voxelkit_{setting}_{connectivity}")]
    # TFCE and clusters at p < 0.001 are the defaults: switch off what the setting does not time
    cmd += ["--cluster-p", str(s["cluster_p"])] if s["cluster_p"] else ["--no-clusters"]
    cmd += ["--tfce"] if s["tfce"] else ["--no-tfce"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------- pytest-benchmark
try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:
    @pytest.fixture(scope="module")
    def data(tmp_path_factory):
        folder = tmp_path_factory.mktemp("bench_stats")
        a, b = make_data(folder)
        ensure_bytecode()
        # warm the numba cache and the OS file cache outside the timings
        run_voxelkit(folder, a, b, "tfce")
        return folder, a, b

    @pytest.mark.parametrize("setting", list(SETTINGS))
    @pytest.mark.parametrize("tool", ["voxelkit", "nilearn", "mne"])
    def test_bench_stats(benchmark, data, tool, setting):
        folder, a, b = data
        if tool == "mne":
            pytest.importorskip("mne")
        fn = {"voxelkit": run_voxelkit, "nilearn": run_nilearn, "mne": run_mne}[tool]
        benchmark.group = f"stats paired {setting}"
        benchmark.pedantic(fn, args=(folder, a, b, setting), rounds=1, iterations=1, warmup_rounds=0)


# the TFCE setting through the Python API (voxelkit.stats.paired), as a user's script runs it
API_SCRIPT = r'''
import sys
from voxelkit.stats import paired
n = int(sys.argv[1])
files = sys.argv[2:]
paired(files[:n], files[n:], n_perm=200, two_sided=True, cluster_p=None, tfce=True, connectivity=26, device="cpu",
       seed=0)
'''


def run_voxelkit_api(folder: Path, a: list[str], b: list[str], env: dict | None = None) -> float:
    """Whole-process seconds of a Python script running the TFCE setting with ``voxelkit.stats.paired`` (26-conn.,
    nothing written)."""
    cmd = [sys.executable, "-c", API_SCRIPT, str(len(a)), *a, *b]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


def cold_start(folder: Path, a: list[str], b: list[str], reps: int, api: bool = False) -> None:
    """First run after installation vs warm runs (whole process, the TFCE setting; ``api``: through the Python
    API instead of the CLI)."""
    import os  # noqa: PLC0415

    for r in range(reps):
        env = {**os.environ, "NUMBA_CACHE_DIR": str(folder / f"numba-cache-{'api' if api else 'cli'}-{r}")}

        def one(env=env) -> float:
            return run_voxelkit_api(folder, a, b, env) if api else run_voxelkit(folder, a, b, "tfce", 26, env=env)

        cold = one()
        warm = [one() for _ in range(2)]
        print(f"{'API' if api else 'CLI'}: fresh cache {cold:.2f} s, warm {warm[0]:.2f} s and {warm[1]:.2f} s: "
              f"first run {100 * (cold / min(warm) - 1):+.0f} % vs warm", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=list(SETTINGS), nargs="*", default=list(SETTINGS))
    ap.add_argument("--skip-nilearn", action="store_true")
    ap.add_argument("--skip-mne", action="store_true")
    ap.add_argument("--mne-maxt-chunk", type=int, default=0,
                    help="run MNE's permutation_t_test in calls of this many permutations (memory; 0: one call)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="voxelkit runs per setting; the table gives their median (peers: one run each, 15-40 s)")
    ap.add_argument("--cold-start", type=int, default=0, metavar="REPS",
                    help="instead: time the TFCE setting (26-connectivity) on a fresh numba cache (NUMBA_CACHE_DIR "
                         "set to an empty folder: a fresh install) and then twice warm, REPS times")
    ap.add_argument("--cold-start-api", type=int, default=0, metavar="REPS",
                    help="as --cold-start, through the Python API (voxelkit.stats.paired in a script)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        a, b = make_data(folder)
        ensure_bytecode()
        if args.cold_start or args.cold_start_api:
            if args.cold_start:
                cold_start(folder, a, b, args.cold_start)
            if args.cold_start_api:
                cold_start(folder, a, b, args.cold_start_api, api=True)
            return
        run_voxelkit(folder, a, b, "tfce")  # warm-up (numba cache)
        print(f"voxelkit: median (min) of {args.rounds} runs; peers: one run each")
        print(f"{'setting':10s} {'nilearn s':>10s} {'MNE s':>8s} {'voxelkit(6) s':>15s} {'voxelkit(26) s':>15s} "
              f"{'vs nilearn':>11s} {'vs MNE':>7s}")
        for setting in args.only:
            tv6, tv6_min = median_of(lambda setting=setting: run_voxelkit(folder, a, b, setting, 6), args.rounds)
            tv26, _ = median_of(lambda setting=setting: run_voxelkit(folder, a, b, setting, 26), args.rounds)
            tn = float("nan") if args.skip_nilearn else run_nilearn(folder, a, b, setting)
            tm = float("nan") if args.skip_mne else run_mne(folder, a, b, setting, args.mne_maxt_chunk)
            print(f"{setting:10s} {tn:10.2f} {tm:8.2f} {tv6:8.2f} ({tv6_min:.2f}) {tv26:15.2f} {tn / tv6:10.1f}x "
                  f"{tm / tv6:6.1f}x", flush=True)


if __name__ == "__main__":
    main()
