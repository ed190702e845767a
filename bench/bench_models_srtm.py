"""Speed of basis-function SRTM and SRTM2 on the NumPy path (30,000 voxels x 28 frames, fit only, >= 100 basis
functions).  Target (issue 3): >= 1 million voxels/s per model.

Run: ``python -m pytest bench/bench_models_srtm.py -p no:cacheprovider -s``
"""

from __future__ import annotations

import numpy as np
import pytest

from voxelkit.frames import FrameTiming
from voxelkit.models import get_model

N_VOXELS = 30_000
N_FRAMES = 28
TARGET_VOXELS_PER_S = 1e6


def frames28() -> FrameTiming:
    d = np.repeat([15.0, 30.0, 60.0, 120.0, 300.0], [6, 4, 4, 4, 10])
    return FrameTiming(np.concatenate([[0.0], np.cumsum(d)[:-1]]), d)


def synthetic(n: int = N_VOXELS, seed: int = 0) -> tuple[np.ndarray, np.ndarray, FrameTiming]:
    """SRTM TACs (BPND 0-3, R1 0.7-1.3, k2' = 0.1/min) with 5% noise, built from the model's own basis
    functions at the true k2a (speed only)."""
    from voxelkit.models.srtm import basis_functions  # noqa: PLC0415

    fr = frames28()
    t = fr.mid_min
    rng = np.random.default_rng(seed)
    cr = 10.0 * t * np.exp(-t / 6.0) + 0.5
    bp = rng.uniform(0.0, 3.0, n)
    r1 = rng.uniform(0.7, 1.3, n)
    k2a = 0.1 * r1 / (1.0 + bp)
    grid = np.geomspace(k2a.min(), k2a.max(), 64)
    b = basis_functions(cr, fr, grid)  # (F, 64); nearest grid value per voxel is close enough for speed
    j = np.clip(np.searchsorted(grid, k2a), 0, grid.size - 1)
    ct = r1[:, None] * cr + (0.1 * r1 - r1 * grid[j])[:, None] * b[:, j].T
    ct *= 1.0 + 0.05 * rng.standard_normal(ct.shape)
    return ct.astype(np.float32), cr, fr


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, FrameTiming]:
    return synthetic()


CASES = {
    "srtm-100": ("srtm", {"n_basis": 100}),
    "srtm-150": ("srtm", {"n_basis": 150}),
    "srtm2-100": ("srtm2", {"n_basis": 100, "k2prime": 0.1}),
    "srtm2-150": ("srtm2", {"n_basis": 150, "k2prime": 0.1}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bench_srtm_numpy(benchmark, data, case: str) -> None:
    ct, cr, fr = data
    name, opts = CASES[case]
    model = get_model(name, device="cpu", **opts)
    result = benchmark(model.fit, ct, cr, fr, keep_inputs=False)
    assert result.n == N_VOXELS and (result.status == 0).mean() > 0.8
    # best round = the machine's speed; the median also holds time stolen by other processes on a busy
    # shared 2-core machine.  Both are recorded; the target is checked on the best.
    st = benchmark.stats.stats
    rate, rate_median = N_VOXELS / st.min, N_VOXELS / st.median
    benchmark.extra_info.update(voxels_per_s_best=rate, voxels_per_s_median=rate_median)
    print(f"\n{case}: {rate / 1e6:.2f} million voxels/s best, {rate_median / 1e6:.2f} median ({st.rounds} rounds)")
    assert rate >= TARGET_VOXELS_PER_S, f"{case}: {rate:.3g} voxels/s < {TARGET_VOXELS_PER_S:.3g}"
