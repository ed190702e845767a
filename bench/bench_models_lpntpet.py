"""Speed of lp-ntPET on the NumPy path: 100,000 voxels x 28 frames, the default grid around a 45-85 min challenge
(>= 300 basis functions on the coarse grid, refined on the fine grid), fit only.  Target (issue 10): >= 50,000
voxels/s on a 2-core machine, checked on the default fit (with the per-scan calibration of p_eff).

Run: ``python -m pytest bench/bench_models_lpntpet.py -p no:cacheprovider -s``
"""

from __future__ import annotations

import numpy as np
import pytest

from voxelkit.frames import FrameTiming
from voxelkit.models import get_model
from voxelkit.models.lpntpet import release_shape
from voxelkit.simulate.kinetics import srtm_tacs

N_VOXELS = 100_000
N_FRAMES = 28
MIN_BASIS = 300
TARGET_VOXELS_PER_S = 50_000
CHALLENGE = (45.0, 85.0)


def frames28() -> FrameTiming:
    """28 frames, 85 min: 4x15 s, 4x30 s, 4x60 s, 4x120 s, 2x300 s, 10x360 s."""
    d = np.repeat([15.0, 30.0, 60.0, 120.0, 300.0, 360.0], [4, 4, 4, 4, 2, 10])
    return FrameTiming(np.concatenate([[0.0], np.cumsum(d)[:-1]]), d)


def synthetic(n: int = N_VOXELS, seed: int = 0) -> tuple[np.ndarray, np.ndarray, FrameTiming]:
    """Exact TACs of 400 kinetic types (BPND 0.5-4, R1 0.7-1.3, k2' = 0.1/min; half with a release of 0-30 %
    from 50 min peaking at 60 min), tiled to ``n`` voxels with 2 % noise."""
    fr = frames28()
    rng = np.random.default_rng(seed)
    m = 400
    r1 = rng.uniform(0.7, 1.3, m)
    bp0 = rng.uniform(0.5, 4.0, m)
    rel = np.where(np.arange(m) % 2 == 0, rng.uniform(0.0, 0.3, m), 0.0)
    k2 = 0.1 * r1
    k2a = k2 / (1 + bp0)
    gamma = k2 / (1 + (1 - rel) * bp0) - k2a
    sw = np.arange(50.0, fr.end_min[-1], 0.5)
    h = release_shape(sw + 0.25, 50.0, 60.0, 1.0)
    bp = np.concatenate([bp0[:, None], k2[:, None] / (k2a[:, None] + gamma[:, None] * h[None, :]) - 1.0], axis=1)
    ct, cr = srtm_tacs(fr, r1, bp, k2prime=0.1, switch_min=sw)
    ct = np.tile(ct, (-(-n // m), 1))[:n]
    ct *= 1.0 + 0.02 * rng.standard_normal(ct.shape)
    return ct.astype(np.float32), cr, fr


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, FrameTiming]:
    return synthetic()


CASES = {
    "lpntpet-default": ("lpntpet", {}),
    "lpntpet-given-p_eff": ("lpntpet", {"p_eff": 6.0}),
    "lpntpet2-default": ("lpntpet2", {"k2prime": 0.1}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bench_lpntpet_numpy(benchmark, data, case: str) -> None:
    ct, cr, fr = data
    assert ct.shape[1] == N_FRAMES
    name, opts = CASES[case]
    model = get_model(name, device="cpu", challenge_window=CHALLENGE, **opts)
    result = benchmark.pedantic(model.fit, args=(ct, cr, fr), kwargs={"keep_inputs": False}, rounds=3,
                                iterations=1, warmup_rounds=1)
    assert result.n == N_VOXELS and np.isin(result.status, (0, 5)).mean() > 0.8  # ok or grid edge
    n_basis = result.info["n_basis"]
    assert n_basis >= MIN_BASIS
    # best round = the machine's speed; the median also holds time stolen by other processes on a busy
    # shared 2-core machine.  Both are recorded; the target is checked on the best.
    st = benchmark.stats.stats
    rate, rate_median = N_VOXELS / st.min, N_VOXELS / st.median
    benchmark.extra_info.update(voxels_per_s_best=rate, voxels_per_s_median=rate_median, n_basis=n_basis,
                                n_basis_fine=result.info["n_basis_fine"])
    print(f"\n{case}: {n_basis} basis functions ({result.info['n_basis_fine']} fine), {rate:,.0f} voxels/s best, "
          f"{rate_median:,.0f} median ({st.rounds} rounds)")
    assert rate >= TARGET_VOXELS_PER_S, f"{case}: {rate:.3g} voxels/s < {TARGET_VOXELS_PER_S:.3g}"
