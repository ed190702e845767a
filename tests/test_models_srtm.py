"""Basis-function SRTM / SRTM2: exact basis functions, truth recovery, kinfitr agreement, grid edges, k2'
estimation, fitted curves, status codes, and the GPU kernels against the NumPy path."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from voxelkit.api import fit_tacs
from voxelkit.frames import FrameTiming
from voxelkit.io import InputError, read_tac_table
from voxelkit.models import Status, get_model
from voxelkit.models.srtm import SRTM, SRTM2, basis_functions, reference_knots, theta_grid

SIMREF = Path(__file__).resolve().parent / "data" / "kinfitr_simref"


def uneven_frames() -> FrameTiming:
    """90-min schedule, short frames first (10 s) and long ones later (6 min); seconds."""
    d = np.repeat([10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 360.0], [6, 3, 2, 2, 2, 3, 12])
    return FrameTiming(np.concatenate([[0.0], np.cumsum(d)[:-1]]), d)


def truth_params(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    bp = np.concatenate([[0.0, 4.0, 4.0, 0.0], rng.uniform(0.0, 4.0, n - 4)])
    r1 = np.concatenate([[0.6, 0.6, 1.4, 1.4], rng.uniform(0.6, 1.4, n - 4)])
    return bp, r1


def simulated(n: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, FrameTiming]:
    """Noiseless SRTM-consistent frame averages from voxelkit.simulate (exact ODE propagation), k2' = 0.1/min."""
    from voxelkit.simulate.kinetics import srtm_tacs  # noqa: PLC0415

    bp, r1 = truth_params(n, seed)
    fr = uneven_frames()
    ct, cr = srtm_tacs(fr, r1, bp, k2prime=0.1)
    return ct, cr, bp, r1, fr


# -------- an independent truth: smooth input, brute-force convolution on a 0.05-s grid ------------------
DT = 1.0 / 1200.0  # minutes; every frame boundary of uneven_frames() is on this grid


def _input(t: np.ndarray) -> np.ndarray:
    return 40.0 * t * np.exp(-t / 0.6) + 8.0 * (np.exp(-0.03 * t) - np.exp(-1.5 * t))


def _frame_means(fr: FrameTiming, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (c[1:] + c[:-1]) * DT)])
    i0 = np.rint(fr.start_min / DT).astype(int)
    i1 = np.rint(fr.end_min / DT).astype(int)
    return (cum[i1] - cum[i0]) / fr.duration_min


def fine_grid_truth(fr: FrameTiming, r1: np.ndarray, bp: np.ndarray,
                    k2prime: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Frame means of SRTM TACs computed by trapezoid convolution (FFT) on a fine grid: no code shared with
    voxelkit.models.srtm or voxelkit.simulate."""
    from scipy.signal import fftconvolve  # noqa: PLC0415

    t = np.arange(0.0, fr.end_min[-1] + DT / 2, DT)
    cr = _input(t)
    out = []
    for a, b in zip(r1, bp, strict=True):
        k2 = a * k2prime
        th = k2 / (1.0 + b)
        kern = np.exp(-th * t)
        conv = fftconvolve(cr, kern)[: t.size] * DT - 0.5 * DT * (cr * kern[0] + cr[0] * kern)
        out.append(_frame_means(fr, t, a * cr + (k2 - a * th) * conv))
    return np.array(out), _frame_means(fr, t, cr)


# ---------------------------------------------------------------------------------------------------------
# basis functions
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("input_model", ["frame_mean", "mid_linear"])
def test_basis_functions_are_exact_frame_means(input_model: str) -> None:
    fr = uneven_frames()
    cr = _frame_means(fr, np.arange(0.0, 90.0 + DT / 2, DT), _input(np.arange(0.0, 90.0 + DT / 2, DT)))
    thetas = np.array([0.004, 0.03, 0.2, 1.5])
    b = basis_functions(cr, fr, thetas, input_model)
    # brute force on the same piecewise-linear curve: 0.05-s grid, trapezoid convolution, frame means
    knots_t, knots_c = reference_knots(cr, fr, input_model)
    t = np.arange(0.0, 90.0 + DT / 2, DT)
    c = np.interp(t, knots_t, knots_c)
    from scipy.signal import fftconvolve  # noqa: PLC0415

    for j, th in enumerate(thetas):
        kern = np.exp(-th * t)
        conv = fftconvolve(c, kern)[: t.size] * DT - 0.5 * DT * (c * kern[0] + c[0] * kern)
        ref = _frame_means(fr, t, conv)
        np.testing.assert_allclose(b[:, j], ref, rtol=2e-5, atol=1e-6 * ref.max())


def test_frame_mean_reconstruction_keeps_the_frame_means() -> None:
    fr = uneven_frames()
    t = np.arange(0.0, 90.0 + DT / 2, DT)
    cr = _frame_means(fr, t, _input(t))
    kt, kc = reference_knots(cr, fr, "frame_mean")
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (kc[1:] + kc[:-1]) * np.diff(kt))])
    means = (cum[np.searchsorted(kt, fr.end_min)] - cum[np.searchsorted(kt, fr.start_min)]) / fr.duration_min
    np.testing.assert_allclose(means, cr, rtol=1e-10)
    # the reconstructed peak is closer to the true one than linear interpolation of the frame values
    kt2, kc2 = reference_knots(cr, fr, "mid_linear")
    true_peak = _input(t).max()
    assert abs(kc.max() - true_peak) < abs(kc2.max() - true_peak)


def test_default_grid_reaches_high_bpnd() -> None:
    g = theta_grid()
    assert g[0] <= 0.005 + 1e-12 and g[-1] >= 1.0 and g.size >= 100
    assert np.allclose(np.diff(np.log(g)), np.log(g[1] / g[0]))
    # k2' = 0.1/min: BPND 4 at R1 = 0.6 needs theta3 = 0.012/min, BPND 3 at R1 = 1 needs 0.025/min
    for k2p in (None, 0.1):
        g = theta_grid(k2prime=k2p)
        assert g[0] < 0.012 and g[-1] > 0.25
    assert theta_grid(k2prime=0.1, bp_max=9)[0] <= 0.05 / 10 + 1e-12
    assert np.isclose(theta_grid((0.02, 0.5), 50)[0], 0.02) and theta_grid((0.02, 0.5), 50).size == 50


# ---------------------------------------------------------------------------------------------------------
# truth
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["srtm", "srtm2"])
def test_truth_recovery_simulate(model: str) -> None:
    ct, cr, bp, r1, fr = simulated()
    opts = {"k2prime": 0.1} if model == "srtm2" else {}
    f = get_model(model, **opts).fit(ct, cr, fr)
    assert np.all(f.status == Status.OK), f.status_counts()
    assert np.abs(f.bp_nd - bp).max() < 0.005
    assert np.abs(f.r1 - r1).max() < 1e-3
    np.testing.assert_allclose(f.k2, 0.1 * r1, rtol=0.02)  # k2 (and k2') are the least determined
    if model == "srtm":
        np.testing.assert_allclose(f.k2prime, 0.1, rtol=0.02)
        np.testing.assert_allclose(f.theta3, 0.1 * r1 / (1 + bp), rtol=0.02)
    else:
        np.testing.assert_allclose(f.k2a, 0.1 * r1 / (1 + bp), rtol=0.02)


@pytest.mark.parametrize("model", ["srtm", "srtm2"])
def test_truth_recovery_independent_fine_grid(model: str) -> None:
    fr = uneven_frames()
    bp, r1 = truth_params(24, seed=3)
    ct, cr = fine_grid_truth(fr, r1, bp)
    opts = {"k2prime": 0.1} if model == "srtm2" else {}
    f = get_model(model, **opts).fit(ct, cr, fr)
    assert np.all(f.status == Status.OK)
    assert np.abs(f.bp_nd - bp).max() < 0.005
    assert np.abs(f.r1 - r1).max() < 1e-3


def test_refinement_removes_grid_quantisation() -> None:
    ct, cr, bp, _, fr = simulated(40)
    coarse = np.abs(SRTM(refine=False).fit(ct, cr, fr).bp_nd - bp).max()
    fine = np.abs(SRTM().fit(ct, cr, fr).bp_nd - bp).max()
    assert coarse > 0.01 and fine < 0.005


def test_window_uses_only_its_frames_with_convolution_from_injection() -> None:
    ct, cr, bp, _, fr = simulated(30)
    f = SRTM(window=(0.0, 60.0)).fit(ct, cr, fr)
    assert f.used_frames.sum() < fr.n_frames and f.used_frames[0]
    assert np.abs(f.bp_nd - bp).max() < 0.01
    late = ct.copy()
    late[:, ~f.used_frames] = np.nan  # frames outside the window do not matter
    g = SRTM(window=(0.0, 60.0)).fit(late, cr, fr)
    np.testing.assert_array_equal(g.status, f.status)
    np.testing.assert_allclose(g.bp_nd, f.bp_nd, rtol=1e-6)


def test_fitted_curves_equal_noiseless_data() -> None:
    ct, cr, _, _, fr = simulated(20)
    for m in (SRTM(), SRTM2(k2prime=0.1)):
        f = m.fit(ct, cr, fr)
        pred = f.fitted(np.arange(20))
        assert pred.shape == ct.shape
        assert np.abs(pred - ct).max() < 1e-3 * ct.max()
        np.testing.assert_allclose(f.fitted(3), pred[3])
        assert np.all(f.wrss < 1e-6 * (ct**2).sum(axis=1))


def test_chunking_does_not_change_results() -> None:
    ct, cr, _, _, fr = simulated(50)
    a = SRTM().fit(ct, cr, fr)
    b = SRTM(chunk_voxels=7).fit(ct, cr, fr)
    np.testing.assert_array_equal(a.status, b.status)
    floor = 1e-6 * float(np.max((ct * ct).sum(axis=1)))  # wrss is yy - |projection|^2 from float32 products
    for k in a.params:  # float32 matrix products round differently for other chunk shapes
        atol = {"bp_nd": 1e-3, "wrss": floor}.get(k, 1e-5)
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=2e-4, atol=atol, err_msg=k)


# ---------------------------------------------------------------------------------------------------------
# kinfitr 0.9.1 (bounded nonlinear SRTM) on its simref curves
# ---------------------------------------------------------------------------------------------------------
def simref_expected() -> list[dict[str, str]]:
    with (SIMREF / "simref_expected_kinfitr_0.9.1_BPND.tsv").open() as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.mark.parametrize(("input_model", "med_tol", "max_tol"), [("frame_mean", 0.01, 0.05),
                                                                 ("mid_linear", 0.002, 0.005)])
def test_srtm_matches_kinfitr_on_simref(input_model: str, med_tol: float, max_tol: float) -> None:
    d_bp, d_r1, d_k2 = [], [], []
    for row in simref_expected():
        t = read_tac_table(SIMREF / f"{row['PET']}_tacs.tsv")
        f = SRTM(weights=t.columns["kinfitr_weight"], input_model=input_model).fit(
            t.columns[row["roi"]], t.columns["Reference"], t.frames)
        assert f.status[0] == Status.OK
        d_bp.append(f.bp_nd[0] - float(row["srtm_bp"]))
        d_r1.append(f.r1[0] - float(row["srtm_R1"]))
        d_k2.append(f.k2[0] - float(row["srtm_k2"]))
    assert len(d_bp) == 60
    d_bp = np.abs(d_bp)
    assert np.median(d_bp) <= med_tol and d_bp.max() <= max_tol, (np.median(d_bp), d_bp.max())
    assert np.median(np.abs(d_r1)) <= 0.005 and np.max(np.abs(d_r1)) <= 0.03
    assert np.median(np.abs(d_k2)) <= 0.002


def test_fit_tacs_srtm_and_srtm2_region_k2prime() -> None:
    path = SIMREF / "hukw_1_tacs.tsv"
    f = fit_tacs(path, "Reference", model="srtm", weights="kinfitr_weight")
    assert f.names == ["ROI1", "ROI2", "ROI3"]
    rows = f.rows()
    assert {"region", "bp_nd", "r1", "k2", "k2prime", "theta3", "wrss", "status"} <= set(rows[0])
    g = fit_tacs(path, "Reference", model="srtm2", weights="kinfitr_weight", k2prime_region="ROI1")
    assert "SRTM fit" in g.info["k2prime_source"]
    assert np.isclose(g.info["k2prime"], f.k2prime[0], rtol=1e-4)
    assert np.allclose(g.k2prime, g.info["k2prime"], rtol=1e-6)
    assert np.abs(g.bp_nd - f.bp_nd).max() < 0.05


# ---------------------------------------------------------------------------------------------------------
# grid edges, k2' estimation, status codes, options
# ---------------------------------------------------------------------------------------------------------
def test_grid_edge_flagged_and_values_kept() -> None:
    ct, cr, bp, _, fr = simulated(40)
    f = SRTM(theta3_range=(0.061, 0.6), n_basis=60).fit(ct, cr, fr)
    edge = f.status == Status.GRID_EDGE
    need = 0.1 * truth_params(40)[1] / (1 + bp) < 0.061  # true theta3 below the grid
    np.testing.assert_array_equal(edge, need)
    assert np.isfinite(f.bp_nd[edge]).all() and np.allclose(f.theta3[edge], 0.061, rtol=1e-6)
    assert (f.bp_nd[edge] < bp[edge]).all()  # clipped: BPND underestimated
    g = SRTM2(k2prime=0.1, theta3_range=(0.061, 0.6), n_basis=60).fit(ct, cr, fr)
    np.testing.assert_array_equal(g.status == Status.GRID_EDGE, need)
    assert (SRTM().fit(ct, cr, fr).status == Status.OK).all()  # the default grid covers BPND 4


def test_srtm2_estimates_k2prime_from_voxels_and_region() -> None:
    ct, cr, bp, _, fr = simulated(200)
    rng = np.random.default_rng(5)
    noisy = ct * (1 + 0.01 * rng.standard_normal(ct.shape))
    f = SRTM2().fit(noisy, cr, fr)
    assert f.info["k2prime_source"].startswith("median")
    assert abs(f.info["k2prime"] - 0.1) < 0.005
    assert np.allclose(f.k2prime[f.status == Status.OK], f.info["k2prime"])
    assert np.median(np.abs(f.bp_nd - bp)) < 0.1
    mask = bp > 3.0
    g = SRTM2(k2prime_mask=mask).fit(noisy, cr, fr)
    assert g.info["k2prime_source"].startswith("SRTM fit of the mean TAC")
    assert g.info["k2prime_region_n"] == int(mask.sum())
    assert abs(g.info["k2prime"] - 0.1) < 0.005
    h = SRTM2(k2prime="median").fit(noisy, cr, fr)
    assert h.info["k2prime"] == f.info["k2prime"]
    assert SRTM2(k2prime=0.1).fit(ct, cr, fr).info["k2prime_source"] == "given"


def _status_block(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, FrameTiming]:
    """Noisy TACs plus NaN, inf, all-zero, negative and implausible (R1 < 0) rows."""
    ct, cr, _, _, fr = simulated(max(n, 8), seed)
    ct = ct[:n] if n >= 8 else ct[:8]
    rng = np.random.default_rng(seed)
    ct = ct * (1 + 0.02 * rng.standard_normal(ct.shape))
    if ct.shape[0] >= 8:
        ct[1, 5] = np.nan
        ct[2, -1] = np.inf
        ct[3] = 0.0
        ct[4] = -ct[4]
        ct[5] = -0.3 * cr + 3.0 * basis_functions(cr, fr, np.array([0.05]))[:, 0]
    return ct[:n], cr, fr


def test_status_codes() -> None:
    ct, cr, fr = _status_block(10)
    for m in (SRTM(), SRTM2(k2prime=0.1)):
        f = m.fit(ct, cr, fr)
        assert f.status[1] == Status.NONFINITE_INPUT and f.status[2] == Status.NONFINITE_INPUT
        assert f.status[3] == Status.NONPOSITIVE and f.status[4] == Status.NONPOSITIVE
        for i in (1, 2, 3, 4):
            assert all(np.isnan(v[i]) for v in f.params.values())
        if m.name == "srtm":  # R1 = -0.3: kept, flagged
            assert f.status[5] == Status.IMPLAUSIBLE and np.isclose(f.r1[5], -0.3, atol=0.01)
        assert (f.status[[0, 6, 7, 8, 9]] == Status.OK).all()


def test_option_errors() -> None:
    with pytest.raises(InputError, match="theta3_range"):
        SRTM(theta3_range=(0.5, 0.1))
    with pytest.raises(InputError, match="n_basis"):
        SRTM(n_basis=2)
    with pytest.raises(InputError, match="input_model"):
        SRTM(input_model="spline")
    with pytest.raises(InputError, match="k2prime"):
        SRTM2(k2prime=-1.0)
    with pytest.raises(InputError, match="not both"):
        SRTM2(k2prime=0.1, k2prime_mask=np.ones(3, bool))
    with pytest.raises(InputError, match="does not take"):
        get_model("srtm", tstar=10.0)
    with pytest.raises(InputError, match="does not apply"):
        SRTM2(integration="frames")
    ct, cr, _, _, fr = simulated(5)
    with pytest.raises(InputError, match="entries"):
        SRTM2(k2prime_mask=np.ones(4, bool)).fit(ct, cr, fr)


# ---------------------------------------------------------------------------------------------------------
# GPU path (cupy stand-in + kernels through the CPU shim) == NumPy path
# ---------------------------------------------------------------------------------------------------------
def _edge_tacs(n: int) -> tuple[np.ndarray, np.ndarray, FrameTiming]:
    if n <= 1000:
        return _status_block(n)
    ct, cr, fr = _status_block(1000)
    reps = -(-n // 1000)
    rng = np.random.default_rng(7)
    big = np.tile(ct, (reps, 1))[:n] * (1 + 0.01 * rng.standard_normal((n, ct.shape[1])))
    return big, cr, fr


def _compare(a, b, ct: np.ndarray) -> None:
    np.testing.assert_array_equal(a.status, b.status)
    yy = np.nan_to_num((ct.astype(float) ** 2).sum(axis=1), posinf=0.0)
    for k in a.params:
        x, y = a.params[k], b.params[k]
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y))
        ok = ~np.isnan(x)
        scale = 1e-6 * max(1.0, float(np.abs(x[ok]).max())) if ok.any() else 0.0
        if k == "wrss":  # yy - |projection|^2: NumPy sums yy in float32, the kernel in double
            scale = 1e-6 * float(yy.max())
        np.testing.assert_allclose(y[ok], x[ok], rtol=2e-5, atol=scale, err_msg=k)


@pytest.mark.kernels
@pytest.mark.parametrize("n", [1, 100, 257, 70_000])
@pytest.mark.parametrize("model", ["srtm", "srtm2"])
def test_srtm_kernel_matches_numpy(fake_gpu, model: str, n: int) -> None:
    ct, cr, fr = _edge_tacs(n)
    opts = dict(weights="duration", window=(None, 80.0), n_basis=120)
    if model == "srtm2":
        opts["k2prime"] = 0.1
    f_np = get_model(model, device="cpu", **opts).fit(ct, cr, fr)
    f_gpu = get_model(model, device=fake_gpu, **opts).fit(ct, cr, fr)
    assert f_gpu.backend == "cupy"
    _compare(f_np, f_gpu, ct)


@pytest.mark.kernels
@pytest.mark.parametrize("refine", [True, False])
def test_srtm_kernel_refine_and_edges(fake_gpu, refine: bool) -> None:
    ct, cr, _, _, fr = simulated(300)
    for model, extra in (("srtm", {}), ("srtm2", {"k2prime": 0.1})):
        opts = dict(theta3_range=(0.02, 0.5), n_basis=40, refine=refine, **extra)
        f_np = get_model(model, device="cpu", **opts).fit(ct, cr, fr)
        f_gpu = get_model(model, device=fake_gpu, **opts).fit(ct, cr, fr)
        assert (f_np.status == Status.GRID_EDGE).any()
        _compare(f_np, f_gpu, ct)


# ---------------------------------------------------------------------------------------------------------
# regression values on real TACs (plausible, recorded to notice changes)
# ---------------------------------------------------------------------------------------------------------
# Produced once (this commit's code) with voxelkit.api.fit_tacs on the tests/data tables, default options (no
# weights, 150 basis functions on [0.005, 1]/min, frame_mean input): per region (SRTM BPND, SRTM R1, SRTM k2'
# [1/min], SRTM2 BPND with k2' from an SRTM fit of the named high-binding column).  Plausible, and within
# ~0.01-0.02 of MRTM/MRTM2 on the same curves (tests/test_models_common.py): amyloid-positive PiB cortex BPND
# ~1, NRU SB086 high-binding/putamen ~3, thalamus/occipital ~0.5-0.6; k2' 0.04-0.06 (PiB), 0.06 (NRU).
REAL = {
    "gaain_pib/AD06_mergedROIs_noPVC_kBqcc.tsv": ("cerebellum", "amyloidcomp", 0.04087, {
        "frontal": (0.991907, 0.941529, 0.03757, 0.931124),
        "cingulate": (1.21534, 0.92864, 0.039525, 1.182655),
        "amyloidcomp": (1.056094, 0.92594, 0.04087, 1.056094),
        "whitematter": (0.80587, 0.700969, 0.052428, 1.032548)}),
    "gaain_pib/AD07_mergedROIs_noPVC_kBqcc.tsv": ("cerebellum", "amyloidcomp", 0.052744, {
        "frontal": (0.99665, 0.89242, 0.047452, 0.929326),
        "cingulate": (1.18329, 0.914856, 0.052296, 1.176842),
        "amyloidcomp": (1.019807, 0.844774, 0.052744, 1.019807),
        "whitematter": (0.910118, 0.723317, 0.058276, 0.985786)}),
    "nru_SB086/SB086_nonPVE_tacs_Bqml.tsv": ("Total_cb", "HighBinding", 0.063164, {
        "HighBinding": (3.079789, 1.025102, 0.063164, 3.07979),
        "Total_th": (0.599441, 1.075918, 0.094743, 0.640031),
        "Total_put": (3.169415, 1.059798, 0.0572, 3.010204),
        "Total_occ": (0.532328, 1.095624, 0.082627, 0.556623)}),
}


@pytest.mark.parametrize("name", list(REAL))
def test_regression_values_on_real_tacs(name: str) -> None:
    ref, hb, k2p, expected = REAL[name]
    path = SIMREF.parent / name
    regions = list(expected)
    a = fit_tacs(path, ref, "srtm", regions=regions)
    b = fit_tacs(path, ref, "srtm2", regions=regions, k2prime_region=hb)
    assert b.info["k2prime"] == pytest.approx(k2p, abs=1e-4)
    assert (a.status == Status.OK).all() and (b.status == Status.OK).all()
    for i, reg in enumerate(regions):
        got = (a.bp_nd[i], a.r1[i], a.k2prime[i], b.bp_nd[i])
        np.testing.assert_allclose(got, expected[reg], atol=2e-4, err_msg=f"{name} {reg}")


# ---------------------------------------------------------------------------------------------------------
# images end to end (CLI)
# ---------------------------------------------------------------------------------------------------------
def test_cli_fit_srtm_and_srtm2_maps(tmp_path: Path) -> None:
    import json  # noqa: PLC0415

    import nibabel as nib  # noqa: PLC0415
    from test_cli_fit import write_study  # noqa: PLC0415
    from test_models_mrtm import truth_tacs  # noqa: PLC0415

    from voxelkit.cli import main  # noqa: PLC0415

    p = write_study(tmp_path)
    _, _, bp_true, _, _ = truth_tacs(n=90, seed=3)
    brain = np.asarray(nib.load(p["brain"]).dataobj).astype(bool)
    out = tmp_path / "srtm"
    rc = main(["fit", str(p["pet"]), "--ref-mask", str(p["ref"]), "--mask", str(p["brain"]), "-o", str(out),
               "--model", "srtm", "--theta3-range", "0.004", "1.0", "--n-basis", "120", "--bp-max", "6",
               "--device", "cpu", "-q"])
    assert rc == 0
    for name in ("bp_nd", "r1", "k2", "k2prime", "theta3", "wrss", "status"):
        assert (out / f"{name}.nii.gz").exists()
    meta = json.loads((out / "fit.json").read_text())
    assert meta["Options"]["n_basis"] == 120 and meta["Info"]["theta_grid_per_min"] == [0.004, 1.0]
    bp = np.asarray(nib.load(out / "bp_nd.nii.gz").dataobj)[brain]
    np.testing.assert_allclose(bp, bp_true[: brain.sum()], atol=0.005)
    out2 = tmp_path / "srtm2"
    rc = main(["fit", str(p["pet"]), "--ref-mask", str(p["ref"]), "--mask", str(p["brain"]), "-o", str(out2),
               "--model", "srtm2", "--k2prime-mask", str(p["hb"]), "--device", "cpu", "-q"])
    assert rc == 0
    info = json.loads((out2 / "fit.json").read_text())["Info"]
    assert info["k2prime_source"].startswith("SRTM fit") and info["k2prime"] == pytest.approx(0.1, abs=2e-3)
    bp2 = np.asarray(nib.load(out2 / "bp_nd.nii.gz").dataobj)[brain]
    np.testing.assert_allclose(bp2, bp_true[: brain.sum()], atol=0.02)
