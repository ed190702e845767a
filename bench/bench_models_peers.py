"""voxelkit's batched fits against the conventional per-voxel approach, in the same run.

Peers (written here, as open tools do it): a per-voxel least-squares loop for the linear models (Logan,
MRTM with ``numpy.linalg.lstsq`` per voxel) and a per-voxel nonlinear SRTM fit (``scipy.optimize.curve_fit``,
as kinfitr / many scripts do with ``minpack.lm``).  The peers run on a subset and are reported in voxels/s.

Run: ``python -m pytest bench/bench_models_peers.py -p no:cacheprovider``
"""

from __future__ import annotations

import numpy as np
import pytest
from bench_models_linear import synthetic

from voxelkit.frames import integration_matrix
from voxelkit.models import get_model

N_PEER_LINEAR = 2_000
N_PEER_SRTM = 50


@pytest.fixture(scope="module")
def data():
    return synthetic()


def _rate(benchmark, n: int, label: str) -> float:
    rate = n / benchmark.stats.stats.min
    benchmark.extra_info["voxels_per_s_best"] = rate
    print(f"\n{label}: {rate:,.0f} voxels/s (best of {benchmark.stats.stats.rounds})")
    return rate


@pytest.mark.parametrize("model", ["logan", "mrtm"])
def test_voxelkit_batched(benchmark, data, model):
    ct, cr, fr = data
    opts = {"tstar": 20.0, "k2prime": 0.1} if model == "logan" else {}
    mdl = get_model(model, device="cpu", **opts)
    benchmark.pedantic(mdl.fit, args=(ct, cr, fr), kwargs={"keep_inputs": False}, rounds=10, iterations=1)
    _rate(benchmark, ct.shape[0], f"voxelkit {model}")


def _peer_linear(ct: np.ndarray, cr: np.ndarray, fr, model: str) -> np.ndarray:
    m = integration_matrix(fr)
    icr = m @ cr
    used = fr.start_min >= 20.0 if model == "logan" else np.ones(fr.n_frames, bool)
    out = np.empty(ct.shape[0])
    for i in range(ct.shape[0]):  # the per-voxel loop of conventional tools
        c = ct[i].astype(float)
        ic = m @ c
        if model == "logan":
            a = np.column_stack([((icr + cr / 0.1) / c)[used], np.ones(used.sum())])
            out[i] = np.linalg.lstsq(a, (ic / c)[used], rcond=None)[0][0] - 1
        else:
            a = np.column_stack([icr, ic, cr])
            g = np.linalg.lstsq(a, c, rcond=None)[0]
            out[i] = -g[0] / g[1] - 1
    return out


@pytest.mark.parametrize("model", ["logan", "mrtm"])
def test_peer_per_voxel_lstsq(benchmark, data, model):
    ct, cr, fr = data
    sub = ct[:N_PEER_LINEAR]
    bp = benchmark.pedantic(_peer_linear, args=(sub, cr, fr, model), rounds=3, iterations=1)
    _rate(benchmark, sub.shape[0], f"per-voxel lstsq {model}")
    ref = get_model(model, device="cpu", **({"tstar": 20.0, "k2prime": 0.1} if model == "logan" else {}))
    np.testing.assert_allclose(bp, ref.fit(sub, cr, fr).bp_nd, rtol=1e-3, atol=1e-3)  # same answer


def test_voxelkit_srtm(benchmark, data):
    ct, cr, fr = data
    mdl = get_model("srtm", device="cpu", n_basis=100)
    benchmark.pedantic(mdl.fit, args=(ct, cr, fr), kwargs={"keep_inputs": False}, rounds=5, iterations=1)
    _rate(benchmark, ct.shape[0], "voxelkit srtm (100 basis functions)")


def _peer_srtm(ct: np.ndarray, cr: np.ndarray, fr) -> np.ndarray:
    from scipy.optimize import curve_fit

    t = fr.mid_min
    tt = np.linspace(0, t[-1], 2000)
    crf = np.interp(tt, np.concatenate([[0.0], t]), np.concatenate([[0.0], cr]))
    dt = tt[1] - tt[0]

    def model(_, r1, k2, bp):
        k2a = k2 / (1 + bp)
        conv = np.convolve(crf, np.exp(-k2a * tt))[: tt.size] * dt
        return np.interp(t, tt, r1 * crf + (k2 - r1 * k2a) * conv)

    out = np.empty(ct.shape[0])
    for i in range(ct.shape[0]):
        p, _ = curve_fit(model, t, ct[i], p0=(1.0, 0.1, 1.0), bounds=([0, 0.001, -0.5], [5, 1, 10]))
        out[i] = p[2]
    return out


def test_peer_per_voxel_curve_fit_srtm(benchmark, data):
    ct, cr, fr = data
    sub = ct[:N_PEER_SRTM]
    benchmark.pedantic(_peer_srtm, args=(sub, cr, fr), rounds=1, iterations=1)
    _rate(benchmark, sub.shape[0], "per-voxel curve_fit srtm")
