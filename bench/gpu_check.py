#!/usr/bin/env python
"""One prepared check of voxelkit's GPU path on a CUDA machine (offline; sized for under 6 minutes on an H100/H200,
enforced by ``--budget-s``).

    python bench/gpu_check.py                      # full check, writes gpu_check.json, prints a table
    python bench/gpu_check.py --quick              # smaller sizes (200,000-voxel fits, 2,000 flips)
    python bench/gpu_check.py --out run.json --skip-numpy
    python bench/gpu_check.py --dry-run            # CI: the cupy stand-in (CPU shim), tiny sizes

Steps (each recorded in the JSON file, which is rewritten atomically after every step):

1. ``tests``: the kernel tests (``-m kernels``: NVRTC, the model kernels, the statistics kernels) and
   ``tests/test_gpu_end_to_end.py`` run by pytest against **real CuPy**: ``VOXELKIT_TEST_REAL_CUPY=1`` makes the
   ``fake_gpu`` fixture (tests/conftest.py) yield the real-CuPy backend instead of the stand-in;
2. ``models``: every model of ``voxelkit.models.MODELS`` fitted on the GPU and with NumPy on the same simulated
   TACs; parameters compared within rtol 2e-4 / atol 2e-5 (the tolerances of tests/test_gpu_end_to_end.py);
3. ``paired``: a paired test (12 subjects, two-sided, clusters at p < 0.001 and TFCE) on the GPU and with
   NumPy; maps within rtol 1e-4 / atol 1e-5, nulls likewise (the tolerances of the end-to-end paired test);
4. ``timings``: 1 M-voxel SRTM and MRTM2 fits, and the 2 mm MNI brain (235,000 voxels, 12 subjects) with
   10,000 sign flips for max-T, clusters and TFCE, on the GPU and with NumPy on the same machine (NumPy with
   fewer voxels / flips, scaled linearly: the output says which);
5. ``roofline``: every kernel launch of a short extra pass timed on the device, divided by the bound of
   bench/roofline.py (measured / bound).

The pass criterion of steps 2 and 3 is a fraction: at least 99.9 % of the values (99 % of null-distribution
entries) within tolerance, and at least 99.9 % equal status codes.  A GPU's BLAS sums in another order than
NumPy's, so a voxel at a decision boundary (basis grid choice, cluster-forming threshold) may fall on the other
side; on the stand-in everything is equal.  Exit status 0 when every step passes, 1 otherwise, 2 for bad options.

Needs numpy, scipy, nibabel, cupy, pytest (for step 1) and voxelkit's own dependencies; no network.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
TESTS = REPO / "tests"
for _p in (str(BENCH), str(REPO)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import roofline  # noqa: E402  (bench/roofline.py)

REAL_CUPY_ENV = "VOXELKIT_TEST_REAL_CUPY"
MODEL_OPTIONS: dict[str, dict[str, Any]] = {
    "logan": {"tstar": 20.0, "k2prime": 0.1},
    "mrtm2": {"k2prime": 0.1},
    "srtm2": {"k2prime": 0.1},
    "lpntpet2": {"k2prime": 0.1},
}
TOL_MODEL = {"rtol": 2e-4, "atol": 2e-5, "min_fraction": 0.999, "min_status_agreement": 0.999}
TOL_STATS = {"rtol": 1e-4, "atol": 1e-5, "min_fraction_maps": 0.999, "min_fraction_null": 0.99}

#: sizes per mode: comparison voxels, paired (mask shape, flips), timing sizes and NumPy reductions
SIZES: dict[str, dict[str, Any]] = {
    "full": {"compare_voxels": 20_000, "paired_shape": (24, 28, 24), "paired_perm": 2000,
             "fit_voxels": 1_000_000, "fit_voxels_numpy": 100_000, "brain_voxels": 235_000,
             "brain_shape": (91, 109, 91), "flips": 10_000,
             "flips_numpy": {"maxt": 1000, "clusters": 500, "tfce": 100}, "roofline_voxels": 200_000},
    "quick": {"compare_voxels": 5_000, "paired_shape": (16, 18, 16), "paired_perm": 500,
              "fit_voxels": 200_000, "fit_voxels_numpy": 20_000, "brain_voxels": 235_000,
              "brain_shape": (91, 109, 91), "flips": 2000,
              "flips_numpy": {"maxt": 200, "clusters": 100, "tfce": 20}, "roofline_voxels": 50_000},
    "dry-run": {"compare_voxels": 300, "paired_shape": (9, 10, 8), "paired_perm": 64,
                "fit_voxels": 2000, "fit_voxels_numpy": 1000, "brain_voxels": 1500,
                "brain_shape": (16, 18, 16), "flips": 48,
                "flips_numpy": {"maxt": 24, "clusters": 24, "tfce": 12}, "roofline_voxels": 500},
}
#: pytest selection of the tests step
TEST_FILES = ("test_kernels_nvrtc.py", "test_models_*.py", "test_stats_gpu.py", "test_stats_device_null.py",
              "test_gpu_end_to_end.py")
DRY_RUN_K = "test_paired_stats_gpu_path_equals_numpy or test_work_arrays_are_reused"


class CheckError(Exception):
    """Bad command line (exit 2, one line)."""


# --------------------------------------------------------------------------------------------- options
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="gpu_check.py",
        description="Prepared check of voxelkit's GPU path: kernel tests on real CuPy, every model and the paired "
                    "test GPU vs NumPy, timings (1 M-voxel SRTM/MRTM2, MNI brain with 10,000 sign flips) and a "
                    "roofline comparison.  Writes one JSON file and prints a table.")
    ap.add_argument("--out", default="gpu_check.json", help="JSON file to write (default: gpu_check.json)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (200,000-voxel fits, 2,000 sign flips)")
    ap.add_argument("--skip-numpy", action="store_true", help="no NumPy timings (comparisons still run)")
    ap.add_argument("--skip-tests", action="store_true", help="do not run the pytest step")
    ap.add_argument("--backend", choices=("cupy", "fake"), default="cupy",
                    help="cupy: the real GPU (default); fake: the test stand-in (CPU shim, tiny sizes)")
    ap.add_argument("--dry-run", action="store_true", help="same as --backend fake (CI: exercises the script)")
    ap.add_argument("--budget-s", type=float, default=330.0,
                    help="wall-clock budget in seconds (default 330): steps that would start after it are "
                         "recorded as skipped (failed)")
    ap.add_argument("--card", choices=("auto", *sorted(roofline.CARDS)), default="auto",
                    help="peak numbers for the roofline bound (auto: from the device name)")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.backend = "fake"
    if not args.budget_s > 0:
        raise CheckError(f"--budget-s {args.budget_s:g}: must be > 0 seconds")
    args.mode = "dry-run" if args.backend == "fake" else ("quick" if args.quick else "full")
    out = Path(args.out)
    if out.is_dir():
        raise CheckError(f"--out {out}: is a folder, give a file name")
    if not out.parent.is_dir():
        raise CheckError(f"--out {out}: folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise CheckError(f"--out {out}: folder {out.parent} is not writable")
    args.out = out
    return args


# --------------------------------------------------------------------------------------------- backend
def get_gpu_backend(kind: str):
    """The backend under test: real CuPy, or the stand-in (kernels through the CPU shim)."""
    from voxelkit import backend  # noqa: PLC0415

    if kind == "fake":
        if str(TESTS) not in sys.path:
            sys.path.insert(0, str(TESTS))
        from cuda_shim import fake_cupy  # noqa: PLC0415

        fake_cupy.install()
    backend.reset_probe()
    return backend.get_backend("gpu")


def sync(be) -> None:
    be.xp.cuda.runtime.deviceSynchronize()


@contextlib.contextmanager
def timed_launches(be, records: list[dict]):
    """Time every ``Backend.launch`` on the device (synchronised before and after) and record its scalar
    arguments by parameter name (bench/roofline.py reads them)."""
    from voxelkit import backend  # noqa: PLC0415

    params = roofline.kernel_params()
    orig = backend.Backend.launch

    def launch(self, kernel, n_items, args, block=backend.DEFAULT_BLOCK):
        name = str(getattr(kernel, "name", kernel))
        sync(self)
        t0 = time.perf_counter()
        orig(self, kernel, n_items, args, block)
        sync(self)
        dt = time.perf_counter() - t0
        dims = roofline.dims_from_args(params.get(name, []), args)
        if name.startswith("stats_cluster_max") and n_items > 0:
            dims["q"] = float(self.xp.count_nonzero(args[1])) / max(1, int(args[1].size))
        records.append({"kernel": name, "n_items": int(n_items), "seconds": dt, "dims": dims})

    backend.Backend.launch = launch
    try:
        yield records
    finally:
        backend.Backend.launch = orig


# --------------------------------------------------------------------------------------------- data
def frames():
    from voxelkit.simulate.kinetics import carfentanil_frames  # noqa: PLC0415

    return carfentanil_frames()


def simulated_tacs(n: int, seed: int = 0, noise: float = 0.03) -> tuple[np.ndarray, np.ndarray, Any]:
    """SRTM TACs (BPND 0-3, R1 0.7-1.3, k2' 0.1/min) with multiplicative noise: (n x F float32, reference, frames).
    Large ``n`` tiles a 20,000-voxel block with fresh noise (the simulation itself is not what is timed)."""
    from voxelkit.simulate.kinetics import srtm_tacs  # noqa: PLC0415

    fr = frames()
    rng = np.random.default_rng(seed)
    m = min(n, 20_000)
    ct, cr = srtm_tacs(fr, rng.uniform(0.7, 1.3, m), rng.uniform(0.0, 3.0, m), dtype=np.float32)
    reps = -(-n // m)
    ct = np.tile(ct, (reps, 1))[:n]
    ct *= (1.0 + noise * rng.standard_normal(ct.shape)).astype(np.float32)
    return np.ascontiguousarray(ct, np.float32), cr, fr


def brain_mask(shape: tuple[int, int, int], n_vox: int) -> np.ndarray:
    """An ellipsoidal "brain" of exactly ``n_vox`` voxels in ``shape`` (the 2 mm MNI grid is 91 x 109 x 91)."""
    c = [np.linspace(-1.0, 1.0, s) for s in shape]
    x, y, z = np.meshgrid(*c, indexing="ij")
    r = (x / 0.8) ** 2 + (y / 0.85) ** 2 + ((z + 0.1) / 0.75) ** 2
    order = np.argsort(r.ravel(), kind="stable")
    mask = np.zeros(r.size, bool)
    mask[order[:n_vox]] = True
    return mask.reshape(shape)


def subject_maps(mask: np.ndarray, n: int = 12, seed: int = 3, effect: float = 0.6) -> np.ndarray:
    """``n`` smooth noise maps (FWHM ~ 2.4 voxels) with an effect blob, (n x V) over ``mask``."""
    from scipy import ndimage  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    shp = mask.shape
    blob = np.zeros(shp)
    sl = tuple(slice(s // 2 - max(1, s // 10), s // 2 + max(1, s // 10)) for s in shp)
    blob[sl] = effect
    out = np.empty((n, int(mask.sum())))
    for i in range(n):
        v = ndimage.gaussian_filter(rng.standard_normal(shp), 1.0)
        out[i] = (v / v.std() + blob)[mask]
    return out


# --------------------------------------------------------------------------------------------- comparisons
def within(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> tuple[float, float, int]:
    """(fraction of entries with |a - b| <= atol + rtol |b| (NaN equal NaN), max |a - b| over finite pairs,
    number of entries)."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        return 0.0, float("inf"), max(a.size, b.size)
    both_nan = np.isnan(a) & np.isnan(b)
    fin = np.isfinite(a) & np.isfinite(b)
    same_inf = np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))
    with np.errstate(invalid="ignore"):
        ok = both_nan | same_inf | (fin & (np.abs(a - b) <= atol + rtol * np.abs(b)))
    diff = float(np.abs(a[fin] - b[fin]).max()) if fin.any() else 0.0
    return (float(ok.mean()) if a.size else 1.0), diff, int(a.size)


def step_models(be, sizes: dict) -> dict:
    from voxelkit.models import MODELS, get_model  # noqa: PLC0415

    ct, cr, fr = simulated_tacs(sizes["compare_voxels"], seed=1)
    out: dict[str, Any] = {"voxels": int(ct.shape[0]), "frames": int(fr.n_frames), "tolerance": TOL_MODEL,
                           "models": {}}
    all_ok = True
    for name in MODELS:
        opts = dict(MODEL_OPTIONS.get(name, {}))
        rec: dict[str, Any] = {"options": opts}
        try:
            cpu = get_model(name, device="cpu", **opts).fit(ct, cr, fr)
            t0 = time.perf_counter()
            gpu = get_model(name, device=be, **opts).fit(ct, cr, fr)
            rec["gpu_s"] = time.perf_counter() - t0
            rec["backend"] = gpu.backend
            agree = float(np.mean(np.asarray(gpu.status) == np.asarray(cpu.status)))
            both = (np.asarray(cpu.status) == 0) & (np.asarray(gpu.status) == 0)
            params = {}
            ok = agree >= TOL_MODEL["min_status_agreement"] and gpu.backend == "cupy"
            for k in cpu.params:
                frac, diff, n = within(np.asarray(gpu.params[k])[both], np.asarray(cpu.params[k])[both],
                                       TOL_MODEL["rtol"], TOL_MODEL["atol"])
                params[k] = {"fraction_within": frac, "max_abs_diff": diff}
                ok = ok and frac >= TOL_MODEL["min_fraction"]
            rec.update(status_agreement=agree, params=params, ok=bool(ok))
        except Exception as exc:  # one model's failure must not hide the others'
            rec.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        all_ok = all_ok and rec["ok"]
        out["models"][name] = rec
    out["ok"] = bool(all_ok)
    return out


def step_paired(be, sizes: dict) -> dict:
    from voxelkit.io import Masker  # noqa: PLC0415
    from voxelkit.stats import one_sample_design, permutation_test  # noqa: PLC0415

    shp = sizes["paired_shape"]
    mask = brain_mask(shp, int(0.55 * np.prod(shp)))
    masker = Masker(mask, np.diag([2.0, 2.0, 2.0, 1.0]))
    d = subject_maps(mask, 12, seed=5)
    kw = dict(n_perm=sizes["paired_perm"], two_sided=True, cluster_p=0.001, tfce=True, seed=2)
    design = one_sample_design(12, kind="paired")
    t0 = time.perf_counter()
    cpu = permutation_test(d, masker, design, device="cpu", **kw)
    t1 = time.perf_counter()
    gpu = permutation_test(d, masker, design, device=be, **kw)
    t2 = time.perf_counter()
    res: dict[str, Any] = {"voxels": int(mask.sum()), "subjects": 12, "n_perm": kw["n_perm"],
                           "numpy_s": t1 - t0, "gpu_s": t2 - t1, "tolerance": TOL_STATS, "maps": {}, "null": {}}
    ok = gpu.settings.get("backend") == "cupy"
    for k in cpu.maps:
        frac, diff, _ = within(gpu.maps[k], cpu.maps[k], TOL_STATS["rtol"], TOL_STATS["atol"])
        res["maps"][k] = {"fraction_within": frac, "max_abs_diff": diff}
        ok = ok and frac >= TOL_STATS["min_fraction_maps"]
    for k in cpu.null:
        frac, diff, _ = within(gpu.null[k], cpu.null[k], TOL_STATS["rtol"], TOL_STATS["atol"])
        res["null"][k] = {"fraction_within": frac, "max_abs_diff": diff}
        ok = ok and frac >= TOL_STATS["min_fraction_null"]
    res["ok"] = bool(ok)
    return res


# --------------------------------------------------------------------------------------------- timings
def _fit_time(model: str, device: Any, ct: np.ndarray, cr: np.ndarray, fr: Any, be=None) -> float:
    from voxelkit.models import get_model  # noqa: PLC0415

    m = get_model(model, device=device, **MODEL_OPTIONS.get(model, {}))
    t0 = time.perf_counter()
    m.fit(ct, cr, fr)
    if be is not None:
        sync(be)
    return time.perf_counter() - t0


def _engine_setup(sizes: dict) -> tuple[Any, Any, np.ndarray, float]:
    from scipy import stats as sst  # noqa: PLC0415

    from voxelkit.stats import engine  # noqa: PLC0415
    from voxelkit.stats.design import one_sample_design  # noqa: PLC0415

    mask = brain_mask(sizes["brain_shape"], sizes["brain_voxels"])
    Y = subject_maps(mask, 12, seed=7)
    prep = engine.prepare(Y, one_sample_design(12, kind="paired"))
    mask_valid = np.zeros(mask.shape, bool)
    mask_valid[mask] = prep.valid
    cluster_t = float(sst.t.isf(0.001 / 2, prep.df))
    return prep, mask, mask_valid, cluster_t


def random_flips(n_sub: int, n_flips: int, seed: int = 0):
    """``n_flips`` random sign flips (row 0 the identity; drawn with repetition: 12 subjects have only 4,096
    distinct flips, the engine's own sign_flips would use all of them exactly)."""
    from voxelkit.stats.design import PermutationSet  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    signs = (1 - 2 * rng.integers(0, 2, size=(n_flips, n_sub))).astype(np.int8)
    signs[0] = 1
    return PermutationSet("flip", False, signs=signs)


STAT_CASES = {
    "maxt": {},
    "clusters": {"cluster": True},
    "tfce": {"tfce": True},
}


def _engine_time(prep, mask_valid, be, case: str, n_flips: int, cluster_t: float) -> float:
    from voxelkit.stats import engine  # noqa: PLC0415

    c = STAT_CASES[case]
    cfg = engine.EngineConfig(two_sided=True, cluster_t=cluster_t if c.get("cluster") else None,
                              tfce=bool(c.get("tfce")), connectivity=26)
    perms = random_flips(prep.E.shape[0], n_flips)
    t0 = time.perf_counter()
    engine.run(prep, perms, mask_valid, be, cfg)
    if be.is_gpu:
        sync(be)
    dt = time.perf_counter() - t0
    if be.is_gpu:
        be.xp.get_default_memory_pool().free_all_blocks()  # the next run sizes its batch from the free memory
    return dt


def step_timings(be, sizes: dict, skip_numpy: bool, deadline: float = float("inf")) -> dict:
    from voxelkit.backend import NUMPY  # noqa: PLC0415

    rows: list[dict] = []
    # warm-ups (kernel compilation, numba cache, cuBLAS handles) are not timed
    ct, cr, fr = simulated_tacs(sizes["fit_voxels"], seed=2)
    for model in ("srtm", "mrtm2"):
        _fit_time(model, be, ct[:2000], cr, fr, be)
        g = _fit_time(model, be, ct, cr, fr, be)
        row = {"name": f"{model} fit", "size": f"{ct.shape[0]:,} voxels x {fr.n_frames} frames", "gpu_s": g}
        if not skip_numpy:
            nn = min(ct.shape[0], sizes["fit_voxels_numpy"])
            t = _fit_time(model, "cpu", ct[:nn], cr, fr)
            row.update(numpy_s=t * ct.shape[0] / nn, numpy_measured=f"{nn:,} voxels in {t:.2f} s, scaled x"
                       f"{ct.shape[0] / nn:g}")
        rows.append(row)
    del ct
    prep, mask, mask_valid, cluster_t = _engine_setup(sizes)
    V = int(mask_valid.sum())
    from voxelkit.stats.tfce import warm_up  # noqa: PLC0415

    warm_up()
    skipped = []
    for case in STAT_CASES:
        if time.perf_counter() > deadline:
            skipped.append(case)
            continue
        _engine_time(prep, mask_valid, be, case, 8, cluster_t)  # compile the kernels
        n = sizes["flips"]
        g = _engine_time(prep, mask_valid, be, case, n, cluster_t)
        row = {"name": f"paired {case}", "size": f"{V:,} voxels, 12 subjects, {n:,} sign flips", "gpu_s": g}
        if case == "clusters":
            row["size"] += f", |t| > {cluster_t:.2f} (p < 0.001), 26-connectivity"
        if not skip_numpy:
            nn = min(n, sizes["flips_numpy"][case])
            _engine_time(prep, mask_valid, NUMPY, case, 4, cluster_t)
            t = _engine_time(prep, mask_valid, NUMPY, case, nn, cluster_t)
            row.update(numpy_s=t * n / nn, numpy_measured=f"{nn:,} flips in {t:.2f} s, scaled x{n / nn:g}")
        rows.append(row)
    for r in rows:
        if "numpy_s" in r and r["gpu_s"] > 0:
            r["speedup"] = r["numpy_s"] / r["gpu_s"]
    out = {"rows": rows, "ok": not skipped, "numpy_threads": _cpus()}
    if skipped:
        out["error"] = f"time budget: skipped {', '.join(skipped)}"
    return out


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def step_roofline(be, sizes: dict, card: roofline.Card) -> dict:
    """A short pass with every launch timed: each model on ``roofline_voxels`` voxels, one batch of the paired
    test with clusters and TFCE (float32) and one GLM batch with clusters (float64)."""
    from voxelkit.models import MODELS  # noqa: PLC0415
    from voxelkit.stats import engine  # noqa: PLC0415
    from voxelkit.stats.design import Design  # noqa: PLC0415

    ct, cr, fr = simulated_tacs(sizes["roofline_voxels"], seed=4)
    prep, mask, mask_valid, cluster_t = _engine_setup(sizes)
    B = min(sizes["flips"], 1024)
    perms = random_flips(12, B)
    rng = np.random.default_rng(0)
    design = Design(np.c_[np.ones(12), rng.standard_normal(12)], [0, 1])
    prep_glm = engine.prepare(subject_maps(mask, 12, seed=8), design)
    records: list[dict] = []
    errors = []
    with timed_launches(be, records):
        for name in MODELS:
            try:
                _fit_time(name, be, ct, cr, fr, be)
            except Exception as exc:
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
        cfg = engine.EngineConfig(two_sided=True, cluster_t=cluster_t, tfce=True, batch_size=B)
        engine.run(prep, perms, mask_valid, be, cfg)
        cfg64 = engine.EngineConfig(two_sided=True, cluster_t=cluster_t, batch_size=min(B, 512))
        engine.run(prep_glm, random_flips(12, min(B, 512)), mask_valid, be, cfg64)
    agg: dict[str, dict] = {}
    for r in records:
        b = roofline.bound_seconds(r["kernel"], r["dims"], card)
        a = agg.setdefault(r["kernel"], {"kernel": r["kernel"], "launches": 0, "items": 0, "measured_s": 0.0,
                                         "bound_s": 0.0, "bytes": 0.0, "flops": 0.0, "limit": b["limit"],
                                         "specific_model": b["specific"]})
        a["launches"] += 1
        a["items"] += r["n_items"]
        a["measured_s"] += r["seconds"]
        a["bound_s"] += b["bound_s"]
        a["bytes"] += b["bytes"]
        a["flops"] += b["flops"]
    for a in agg.values():
        a["measured_over_bound"] = a["measured_s"] / a["bound_s"] if a["bound_s"] > 0 else None
        a["achieved_GBps"] = a["bytes"] / a["measured_s"] / 1e9 if a["measured_s"] > 0 else None
    missing = sorted(set(roofline.kernel_params()) - set(agg))
    return {"card": card.__dict__, "kernels": sorted(agg.values(), key=lambda a: a["kernel"]),
            "not_launched": missing, "errors": errors, "ok": not errors}


# --------------------------------------------------------------------------------------------- tests step
def step_tests(kind: str, quick_k: str | None, timeout_s: float = 300.0) -> dict:
    try:
        import pytest  # noqa: F401, PLC0415
    except ImportError:
        return {"ok": False, "error": "pytest is not importable (bring its wheel, see README: GPU check)"}
    files = []
    for pat in TEST_FILES:
        files.extend(sorted(str(p) for p in TESTS.glob(pat)))
    env = dict(os.environ)
    if kind == "cupy":
        env[REAL_CUPY_ENV] = "1"
    else:
        env.pop(REAL_CUPY_ENV, None)
    with tempfile.TemporaryDirectory(prefix="vk_gpu_check_") as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", *files, "-m", "kernels and not sanitizer_subprocess", "-q",
               "-p", "no:cacheprovider", "-rfE", f"--junitxml={xml}"]
        if quick_k:
            cmd += ["-k", quick_k]
        t0 = time.perf_counter()
        try:
            res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"pytest did not finish in {timeout_s:.0f} s (time budget)"}
        elapsed = time.perf_counter() - t0
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        failed: list[str] = []
        if xml.is_file():
            root = ET.parse(xml).getroot()
            suites = [root] if root.tag == "testsuite" else list(root)
            for s in suites:
                for k in counts:
                    counts[k] += int(s.get(k, 0))
                for case in s.iter("testcase"):
                    if case.find("failure") is not None or case.find("error") is not None:
                        failed.append(f"{case.get('classname')}::{case.get('name')}")
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    ok = res.returncode == 0 and counts["passed"] > 0 and not failed
    return {"ok": bool(ok), "backend": "real CuPy" if kind == "cupy" else "stand-in", "returncode": res.returncode,
            "seconds": elapsed, **counts, "failed": failed[:50], "selection": quick_k or "-m kernels",
            "tail": (res.stdout + res.stderr)[-3000:] if not ok else ""}


# --------------------------------------------------------------------------------------------- output
def write_json(path: Path, report: dict) -> None:
    """Write ``report`` atomically (voxelkit's one atomic writer, :func:`voxelkit.io.derivatives.write_text_atomic`);
    values JSON does not know are written as text (a report must never fail to be written)."""
    from voxelkit.io.derivatives import write_text_atomic  # noqa: PLC0415

    write_text_atomic(path, json.dumps(report, indent=2, default=_jsonable) + "\n")


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return str(x)


def _fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1e3:.3g} ms" if x < 1 else f"{x:.3g} s"


def render_table(report: dict) -> str:
    """The human-readable summary (also stored in the JSON as ``table``)."""
    lines = [f"voxelkit GPU check ({report['mode']}, backend {report['backend']}, device "
             f"{report['device'].get('name')})", ""]
    st = report["steps"]
    if "tests" in st:
        t = st["tests"]
        lines.append(f"tests ({t.get('backend', '?')}): {'PASS' if t['ok'] else 'FAIL'}  "
                     f"{t.get('passed', 0)} passed, {t.get('failures', 0)} failed, {t.get('errors', 0)} errors, "
                     f"{t.get('skipped', 0)} skipped in {t.get('seconds', 0):.0f} s" + (
                         f"  [{t['error']}]" if "error" in t else ""))
        for f in t.get("failed", [])[:10]:
            lines.append(f"    failed: {f}")
    if "models" in st:
        m = st["models"]
        lines += ["", f"models GPU vs NumPy ({m.get('voxels', 0):,} voxels; rtol {TOL_MODEL['rtol']}, atol "
                  f"{TOL_MODEL['atol']}): {'PASS' if m['ok'] else 'FAIL'}",
                  "| model | status agreement | worst parameter (fraction within) | max abs diff | ok |",
                  "|---|---|---|---|---|"]
        for name, r in m.get("models", {}).items():
            if "error" in r:
                lines.append(f"| {name} | - | {r['error'][:80]} | - | FAIL |")
                continue
            worst = min(r["params"].items(), key=lambda kv: kv[1]["fraction_within"])
            lines.append(f"| {name} | {r['status_agreement']:.5f} | {worst[0]} ({worst[1]['fraction_within']:.5f}) | "
                         f"{max(p['max_abs_diff'] for p in r['params'].values()):.3g} | "
                         f"{'ok' if r['ok'] else 'FAIL'} |")
    if "paired" in st:
        p = st["paired"]
        if "error" in p:
            lines += ["", f"paired test GPU vs NumPy: FAIL [{p['error']}]"]
        else:
            worst_m = min(p["maps"].values(), key=lambda v: v["fraction_within"])["fraction_within"]
            worst_n = min(p["null"].values(), key=lambda v: v["fraction_within"])["fraction_within"]
            lines += ["", f"paired test GPU vs NumPy ({p['voxels']:,} voxels, {p['n_perm']:,} flips, clusters + "
                      f"TFCE): {'PASS' if p['ok'] else 'FAIL'}  maps within tolerance {worst_m:.5f}, nulls "
                      f"{worst_n:.5f}"]
    if "timings" in st and "rows" in st["timings"]:
        lines += ["", "timings (GPU beside NumPy on this machine; NumPy scaled from fewer voxels/flips where "
                  "said)", "| run | size | GPU | NumPy | speed-up | NumPy measured |", "|---|---|---|---|---|---|"]
        for r in st["timings"]["rows"]:
            sp = f"{r['speedup']:.1f}x" if "speedup" in r else "-"
            lines.append(f"| {r['name']} | {r['size']} | {_fmt_s(r['gpu_s'])} | {_fmt_s(r.get('numpy_s'))} | {sp} | "
                         f"{r.get('numpy_measured', 'skipped')} |")
    if "roofline" in st and "kernels" in st["roofline"]:
        rf = st["roofline"]
        lines += ["", f"roofline ({rf['card']['name']}; bounds from bench/roofline.py)",
                  "| kernel | launches | items | measured | bound | measured / bound | limit | GB/s |",
                  "|---|---|---|---|---|---|---|---|"]
        for a in rf["kernels"]:
            ratio = a["measured_over_bound"]
            gbs = a["achieved_GBps"]
            lines.append(f"| `{a['kernel']}` | {a['launches']} | {a['items']:,} | {_fmt_s(a['measured_s'])} | "
                         f"{_fmt_s(a['bound_s'])} | {'-' if ratio is None else f'{ratio:.1f}'} | {a['limit']}"
                         f"{'' if a['specific_model'] else ' (generic)'} | {'-' if gbs is None else f'{gbs:.0f}'} |")
        if rf.get("not_launched"):
            lines.append(f"not launched: {', '.join(rf['not_launched'])}")
    for name, s in st.items():
        if "error" in s and name not in ("tests", "paired"):
            lines.append(f"{name}: FAIL [{s['error']}]")
    lines += ["", f"overall: {'PASS' if report['ok'] else 'FAIL'} in {report['elapsed_s']:.0f} s -> {report['out']}"]
    return "\n".join(lines)


def device_info(be) -> dict:
    p = be.probe
    return {"name": getattr(p, "name", None), "total_memory": getattr(p, "total_memory", None),
            "cupy_version": getattr(p, "cupy_version", None), "reason": be.reason}


def run_check(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    import voxelkit  # noqa: PLC0415

    sizes = SIZES[args.mode]
    report: dict[str, Any] = {
        "voxelkit_version": voxelkit.__version__, "created_utc": _dt.datetime.now(_dt.UTC).isoformat(),
        "mode": args.mode, "backend": args.backend, "python": platform.python_version(),
        "numpy": np.__version__, "host": platform.node(), "sizes": sizes, "steps": {}, "complete": False,
        "ok": False, "out": str(args.out), "elapsed_s": 0.0, "device": {},
    }

    def save() -> None:
        report["elapsed_s"] = time.perf_counter() - t_start
        write_json(args.out, report)

    try:
        be = get_gpu_backend(args.backend)
    except Exception as exc:
        report["steps"]["backend"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        report["complete"] = True
        report["table"] = render_table(report)
        save()
        print(render_table(report))
        return 1
    report["device"] = device_info(be)
    card = roofline.CARDS[args.card] if args.card != "auto" else roofline.card_for(report["device"]["name"])
    deadline = t_start + args.budget_s
    steps = []
    if not args.skip_tests:
        steps.append(("tests", lambda: step_tests(args.backend, DRY_RUN_K if args.mode == "dry-run" else None,
                                                  max(30.0, 0.4 * args.budget_s))))
    # the timings leave ~15 % of the budget to the roofline pass
    steps += [("models", lambda: step_models(be, sizes)), ("paired", lambda: step_paired(be, sizes)),
              ("timings", lambda: step_timings(be, sizes, args.skip_numpy, deadline - 0.15 * args.budget_s)),
              ("roofline", lambda: step_roofline(be, sizes, card))]
    for name, fn in steps:
        t0 = time.perf_counter()
        if t0 > deadline:
            report["steps"][name] = {"ok": False, "error": f"time budget of {args.budget_s:g} s used up: skipped",
                                     "step_s": 0.0}
            save()
            continue
        print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
        try:
            res = fn()
        except Exception as exc:
            res = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        res["step_s"] = time.perf_counter() - t0
        report["steps"][name] = res
        print(f"[gpu_check] {name}: {'ok' if res['ok'] else 'FAIL'} ({res['step_s']:.1f} s)", file=sys.stderr,
              flush=True)
        save()
    report["complete"] = True
    report["ok"] = all(s["ok"] for s in report["steps"].values())
    report["elapsed_s"] = time.perf_counter() - t_start
    report["table"] = render_table(report)
    save()
    print(report["table"])
    return 0 if report["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except CheckError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    return run_check(args)


if __name__ == "__main__":
    raise SystemExit(main())
