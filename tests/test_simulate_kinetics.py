"""Exactness of the simulation kinetics: frame averages vs brute-force numerical references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from voxelkit.frames import FrameTiming
from voxelkit.simulate.kinetics import (
    FengInput,
    SRTMTable,
    carfentanil_frames,
    challenge_bp_nd,
    decay_factor,
    feng_input,
    frame_average,
    one_tissue_tac,
    srtm_tacs,
)

INP = FengInput(delay=0.25, scale=0.5)


def analytic_1tcm(t: np.ndarray, K1: float, k2: float, p: FengInput = INP) -> np.ndarray:
    """Closed-form K1 Cp (*) exp(-k2 t) for the Feng bolus (independent of the propagation code)."""
    u = np.maximum(t - p.delay, 0.0)
    out = np.zeros_like(u)
    for amp, lam in ((-(p.a2 + p.a3), p.lam1), (p.a2, p.lam2), (p.a3, p.lam3)):
        out += amp * (np.exp(lam * u) - np.exp(-k2 * u)) / (k2 + lam)
    c = p.lam1 + k2
    out += p.a1 * np.exp(-k2 * u) * (u * np.exp(c * u) / c - np.expm1(c * u) / c**2)
    return p.scale * K1 * out


def rel_err(x: np.ndarray, ref: np.ndarray) -> float:
    keep = np.abs(ref) > 1e-12 * np.abs(ref).max()
    assert np.all(np.abs(x[~keep]) < 1e-9 * np.abs(ref).max())
    return float(np.max(np.abs(x[keep] - ref[keep]) / np.abs(ref[keep])))


def test_frames_schedule():
    f = carfentanil_frames()
    assert f.end[-1] == 5400.0 and f.start[0] == 0.0
    assert np.all(np.diff(f.duration) >= 0) and f.duration[0] < f.duration[-1]
    assert np.allclose(f.start[1:], f.end[:-1])


def test_feng_closed_form_and_infusion():
    t = np.linspace(0, 90, 20001)
    cp = feng_input(t, INP)
    assert cp[t < INP.delay].max() == 0.0 and cp.max() > 0
    bi = FengInput(delay=0.25, scale=0.5, kbol=30.0)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (cp[1:] + cp[:-1]) * np.diff(t))])
    assert np.allclose(feng_input(t, bi), cp + cum / 30.0, rtol=1e-5, atol=1e-6 * cp.max())


def test_reference_tac_matches_analytic_1tcm():
    f = carfentanil_frames()
    ref = one_tissue_tac(f, 0.1, 0.1, INP)
    brute = frame_average(f, lambda t: analytic_1tcm(t, 0.1, 0.1))
    assert rel_err(ref, brute) < 1e-6


@pytest.mark.parametrize("frames", [carfentanil_frames(),
                                    FrameTiming([0, 7, 31, 100, 400, 1300, 2000], [7, 24, 60, 250, 900, 650, 3000])])
def test_srtm_equals_one_tissue_with_k2a(frames):
    """SRTM-consistent tissue is a 1TCM with K1 = R1 K1' and k2a = R1 k2'/(1+BPND); uneven and gapped frames."""
    r1 = np.array([1.0, 0.6, 1.25, 0.9, 0.3])
    bp = np.array([0.0, 0.25, 3.0, 1.5, 5.0])
    tis, ref = srtm_tacs(frames, r1, bp, inp=INP)
    assert rel_err(tis[0], ref) < 1e-7  # R1 = 1, BPND = 0 is the reference
    for i in range(r1.size):
        brute = frame_average(frames, lambda t, i=i: analytic_1tcm(t, r1[i] * 0.1, r1[i] * 0.1 / (1 + bp[i])))
        assert rel_err(tis[i], brute) < 1e-6


def test_srtm_operational_equation():
    """Ct = R1 Cr + k2 int(Cr) - k2a int(Ct) holds (checked on integrals up to frame ends, fine grid)."""
    f = carfentanil_frames()
    r1, bp = 0.8, 2.0
    k2, k2a = r1 * 0.1, r1 * 0.1 / 3.0
    t = np.linspace(0, 90, 90 * 600 + 1)
    cr = analytic_1tcm(t, 0.1, 0.1)
    ct = analytic_1tcm(t, r1 * 0.1, k2a)
    icr = np.concatenate([[0], np.cumsum(0.5 * (cr[1:] + cr[:-1]) * np.diff(t))])
    ict = np.concatenate([[0], np.cumsum(0.5 * (ct[1:] + ct[:-1]) * np.diff(t))])
    assert np.allclose(ct, r1 * cr + k2 * icr - k2a * ict, atol=1e-4 * ct.max())
    tis, _ = srtm_tacs(f, [r1], [bp], inp=INP)
    brute = frame_average(f, lambda s: analytic_1tcm(s, r1 * 0.1, k2a))
    assert rel_err(tis[0], brute) < 1e-6


def test_time_varying_bp_matches_ode():
    f = carfentanil_frames()
    r1 = np.array([1.0, 0.7, 1.1])
    bp = np.array([0.5, 2.0, 3.0])
    segs, sw = challenge_bp_nd(bp, 0.25, on_min=35.0, off_min=62.5)
    tv, _ = srtm_tacs(f, r1, segs, inp=INP, switch_min=sw)
    for i in range(r1.size):
        def rhs(t, y, i=i):
            b = segs[i, np.searchsorted(sw, t, side="right")]
            return [r1[i] * 0.1 * feng_input(np.array([t]), INP)[0] - r1[i] * 0.1 / (1 + b) * y[0]]
        sol = solve_ivp(rhs, (0, 90), [0.0], dense_output=True, rtol=1e-11, atol=1e-13, method="DOP853",
                        max_step=0.1)
        brute = frame_average(f, lambda t, sol=sol: sol.sol(t)[0], n_sub=200)
        assert rel_err(tv[i], brute) < 1e-5
    const, _ = srtm_tacs(f, r1, bp, inp=INP)
    before = f.end_min <= 35.0
    assert np.allclose(tv[:, before], const[:, before], rtol=1e-9)
    assert np.all(tv[:, ~before] > const[:, ~before] * 0)  # finite, positive
    assert np.all(tv[:, f.start_min >= 40] < const[:, f.start_min >= 40])  # displacement lowers activity


def test_table_reuse_scale_and_interpolation_accuracy():
    f = carfentanil_frames()
    table = SRTMTable(f, INP, 0.1, 0.1, a_min=0.005, a_max=0.3)
    rng = np.random.default_rng(1)
    r1 = rng.uniform(0.4, 1.5, 50)
    bp = rng.uniform(0.0, 4.0, 50)
    a = table.tacs(r1, bp, scale=2.0)
    b, _ = srtm_tacs(f, r1, bp, inp=INP.scaled(2.0))
    assert np.allclose(a, b, rtol=1e-8, atol=0)
    with pytest.raises(ValueError, match="outside the table range"):
        table.tacs([1.0], [-0.9])


def test_bolus_infusion_tissue():
    f = carfentanil_frames()
    bi = FengInput(delay=0.25, scale=0.5, kbol=40.0)
    tis, ref = srtm_tacs(f, [1.0, 1.0], [0.0, 2.0], inp=bi)
    assert rel_err(tis[0], ref) < 1e-7
    brute = frame_average(f, lambda t: analytic_1tcm(t, 0.1, 0.1, INP))
    assert np.all(ref[f.start_min > 1] > brute[f.start_min > 1])  # infusion adds activity


def test_decay_factor():
    f = carfentanil_frames()
    d = decay_factor(f)
    brute = frame_average(f, lambda t: 0.5 ** (t / 20.364))  # C-11 half-life, minutes
    assert rel_err(d, brute) < 1e-9


def test_vectorized_speed():
    import time

    f = carfentanil_frames()
    rng = np.random.default_rng(0)
    r1 = rng.uniform(0.5, 1.3, 50_000)
    bp = rng.uniform(0.0, 3.5, 50_000)
    t0 = time.perf_counter()
    tis, _ = srtm_tacs(f, r1, bp, inp=INP, dtype=np.float32)
    assert time.perf_counter() - t0 < 5.0
    assert tis.shape == (50_000, f.n_frames) and tis.dtype == np.float32
