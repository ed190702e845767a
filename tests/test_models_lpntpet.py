"""lp-ntPET (voxelkit.models.lpntpet): truth recovery on exact simulations with a release time course, the F
test's voxelwise false-positive rate, fitted curves, options and bad input, status codes, and the CUDA path
(kernels/lpntpet.cu through the CPU shim and the cupy stand-in) against the NumPy path."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from voxelkit.frames import FrameTiming
from voxelkit.io import InputError
from voxelkit.models import MODELS, Status, get_model
from voxelkit.models.lpntpet import LpntPET, LpntPET2, fitted_curves, release_basis, release_shape
from voxelkit.simulate.kinetics import FengInput, carfentanil_frames, srtm_tacs

K2P = 0.1
CW = (45.0, 90.0)


def release_tacs(r1, bp0, release, td: float, tp: float, alpha: float, *, frames: FrameTiming | None = None,
                 step: float = 0.25, kbol: float | None = None) -> tuple[np.ndarray, np.ndarray, FrameTiming]:
    """Exact frame-average TACs (voxelkit.simulate.kinetics) whose efflux follows lp-ntPET's
    ``k2a(t) = k2a + gamma h(t)`` with gamma set so that the peak occupancy 1 - BP(t_P)/BP0 is ``release``:
    BPND piecewise constant in ``step``-minute pieces (value at each piece's middle) from the onset on."""
    fr = frames or carfentanil_frames()
    r1, bp0, rel = (np.asarray(v, dtype=float).reshape(-1) for v in (r1, bp0, release))
    k2 = r1 * K2P
    k2a = k2 / (1.0 + bp0)
    gamma = k2 / (1.0 + (1.0 - rel) * bp0) - k2a
    sw = np.arange(td, fr.end_min[-1], step)
    h = release_shape(sw + 0.5 * step, td, tp, alpha)
    bp = np.concatenate([bp0[:, None], k2[:, None] / (k2a[:, None] + gamma[:, None] * h[None, :]) - 1.0], axis=1)
    ct, cr = srtm_tacs(fr, r1, bp, k2prime=K2P, switch_min=sw, inp=FengInput(kbol=kbol) if kbol else None)
    return ct, cr, fr


R1 = np.array([1.0, 0.7, 1.3, 1.0, 1.0, 0.8])
BP0 = np.array([3.0, 1.5, 4.0, 2.0, 3.0, 1.0])
REL = np.array([0.2, 0.1, 0.3, 0.05, 0.0, 0.0])
#: (t_D, t_P, alpha) of the release, all off the default grid but one
CASES = [(47.3, 61.7, 1.5), (45.0, 55.0, 1.0), (52.0, 65.0, 3.0), (50.5, 70.0, 0.7), (48.0, 52.5, 2.0)]


def _onset_tolerance(fr: FrameTiming, td: float) -> float:
    """'within one frame or 2 min': the duration of the frame holding the true onset, at least 2 min."""
    i = int(np.searchsorted(fr.end_min, td))
    return max(2.0, float(fr.duration_min[min(i, fr.n_frames - 1)]))


def test_registered() -> None:
    assert MODELS["lpntpet"].endswith(":LpntPET") and MODELS["lpntpet2"].endswith(":LpntPET2")
    assert isinstance(get_model("lpntpet"), LpntPET) and isinstance(get_model("lpntpet2", k2prime=0.1), LpntPET2)
    for k in ("bp_nd", "gamma", "t_d", "t_p", "alpha", "release", "f_stat", "wrss"):
        assert k in LpntPET.param_names


# ---------------------------------------------------------------------------------------------------------
# basis
# ---------------------------------------------------------------------------------------------------------
def test_release_shape_and_frame_means() -> None:
    t = np.array([40.0, 50.0, 55.0, 60.0, 80.0])
    h = release_shape(t, 50.0, 60.0, 2.0)
    assert h[0] == 0.0 and h[1] == 0.0 and h[3] == pytest.approx(1.0)
    assert h[2] == pytest.approx(0.25 * np.exp(1.0))  # tau = 0.5: 0.5^2 e^(2 * 0.5)
    assert h[4] == pytest.approx(9.0 * np.exp(-4.0))  # tau = 3: 3^2 e^(2 * -2)
    fr = carfentanil_frames()
    hm = release_basis(fr, np.array([50.0]), np.array([60.0]), np.array([2.0]))[0]
    for i in (20, 23, 25):  # brute-force frame means (fine midpoint rule)
        s, e = fr.start_min[i], fr.end_min[i]
        tt = s + (np.arange(4000) + 0.5) / 4000 * (e - s)
        assert hm[i] == pytest.approx(release_shape(tt, 50.0, 60.0, 2.0).mean(), rel=2e-3, abs=1e-6)
    assert (hm[fr.end_min <= 50.0] == 0).all()


def test_default_grid_is_around_the_challenge_and_refines() -> None:
    fr = carfentanil_frames()
    m = LpntPET(challenge_window=CW)
    td, tp, al, edge, _ = m.grid(fr)
    assert td.min() == 40.0 and td.max() <= 67.5 and tp.max() <= 90.0 and (tp >= td + m.min_rise - 1e-9).all()
    assert td.size >= 300 and set(al) == {0.5, 1.0, 2.0, 4.0}
    tdf, tpf, alf, _, _ = m.grid(fr, fine=True)
    assert tdf.size > 4 * td.size and np.allclose(np.diff(np.unique(tdf)), 1.0)
    nb = m.neighbours(fr)
    assert nb.shape == (td.size, 27)
    # the first neighbour is the coarse point itself on the fine grid
    assert np.allclose(tdf[nb[:, 0]], td) and np.allclose(tpf[nb[:, 0]], tp) and np.allclose(alf[nb[:, 0]], al)
    # without a challenge window: the middle of the scan
    td2, tp2, *_ = LpntPET().grid(fr)
    assert td2.min() == pytest.approx(22.5) and td2.max() <= 67.5 + 1e-9 and tp2.max() <= 90.0


# ---------------------------------------------------------------------------------------------------------
# truth recovery (noiseless)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["lpntpet", "lpntpet2"])
@pytest.mark.parametrize("case", CASES, ids=[f"td{c[0]}-tp{c[1]}-a{c[2]}" for c in CASES])
def test_truth_recovery_noiseless(model: str, case: tuple[float, float, float]) -> None:
    td, tp, al = case
    ct, cr, fr = release_tacs(R1, BP0, REL, td, tp, al)
    opts = {"challenge_window": CW, "k2prime": K2P} if model == "lpntpet2" else {"challenge_window": CW}
    f = get_model(model, device="cpu", **opts).fit(ct, cr, fr)
    rel = REL > 0
    assert np.abs(f.t_d[rel] - td).max() <= _onset_tolerance(fr, td)
    assert np.abs(f.t_p[rel] - tp).max() <= 3.0
    np.testing.assert_allclose(f.release[rel], REL[rel], rtol=0.10)
    np.testing.assert_allclose(f.bp_nd, BP0, atol=0.02)
    assert np.abs(f.release[~rel]).max() <= 0.01
    # release is the definition applied to the fitted parameters
    k2, k2a, g = (f.params[k].astype(float) for k in ("k2", "k2a", "gamma"))
    np.testing.assert_allclose(f.release, 1 - (k2 / (k2a + g) - 1) / (k2 / k2a - 1), rtol=1e-4, atol=1e-6)
    assert (f.status[rel] != Status.SINGULAR).all() and (f.status != Status.IMPLAUSIBLE).all()
    assert f.info["p_eff_source"].startswith("nominal (noiseless")


def test_truth_recovery_bolus_infusion() -> None:
    ct, cr, fr = release_tacs(R1, BP0, REL, 47.3, 61.7, 1.5, kbol=60.0)
    f = get_model("lpntpet", device="cpu", challenge_window=CW).fit(ct, cr, fr)
    rel = REL > 0
    assert np.abs(f.t_d[rel] - 47.3).max() <= _onset_tolerance(fr, 47.3)
    assert np.abs(f.t_p[rel] - 61.7).max() <= 3.0
    np.testing.assert_allclose(f.release[rel], REL[rel], rtol=0.10)
    np.testing.assert_allclose(f.bp_nd, BP0, atol=0.02)
    assert np.abs(f.release[~rel]).max() <= 0.01


def test_refinement_improves_on_the_coarse_grid() -> None:
    ct, cr, fr = release_tacs(R1, BP0, REL, 50.5, 70.0, 0.7)
    fine = get_model("lpntpet", device="cpu", challenge_window=CW).fit(ct, cr, fr)
    coarse = get_model("lpntpet", device="cpu", challenge_window=CW, refine=False).fit(ct, cr, fr)
    assert set(np.unique(coarse.t_d[:4])) <= set(np.arange(40.0, 68.0, 2.0))
    assert fine.wrss[:4].sum() < coarse.wrss[:4].sum()
    assert np.abs(fine.bp_nd - BP0).max() < np.abs(coarse.bp_nd - BP0).max()


def test_fitted_curves_with_and_without_release() -> None:
    ct, cr, fr = release_tacs(R1, BP0, REL, 47.3, 61.7, 1.5)
    f = get_model("lpntpet", device="cpu", challenge_window=CW).fit(ct, cr, fr)
    full = f.fitted(np.arange(6))
    np.testing.assert_allclose(full, ct, rtol=2e-3, atol=2e-3 * ct.max())
    with_r, without = fitted_curves(f, 0)
    np.testing.assert_allclose(with_r, full[0])
    before = fr.end_min <= 44.0
    np.testing.assert_allclose(without[before], with_r[before], rtol=1e-5)  # frame_average looks ahead
    late = fr.mid_min > 60.0
    assert (without[late] > with_r[late] * 1.01).all()  # the release lowers the TAC
    w1, w2 = fitted_curves(f, np.arange(2))
    assert w1.shape == w2.shape == (2, fr.n_frames)


def test_chunking_and_blocks_do_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    import voxelkit.models.lpntpet as mod

    ct, cr, fr = release_tacs(np.tile(R1, 40), np.tile(BP0, 40), np.tile(REL, 40), 47.3, 61.7, 1.5)
    ct = ct * (1 + 0.02 * np.random.default_rng(0).standard_normal(ct.shape))
    a = get_model("lpntpet", device="cpu", challenge_window=CW, p_eff=6.0).fit(ct, cr, fr)
    monkeypatch.setattr(mod, "BLOCK_VOXELS", 7)
    b = get_model("lpntpet", device="cpu", challenge_window=CW, p_eff=6.0, chunk_voxels=50).fit(ct, cr, fr)
    np.testing.assert_array_equal(a.status, b.status)
    for k in a.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_nonnegative_gamma() -> None:
    ct, cr, fr = release_tacs(R1, BP0, REL, 47.3, 61.7, 1.5)
    rng = np.random.default_rng(3)
    noisy = np.tile(ct, (50, 1)) * (1 + 0.03 * rng.standard_normal((300, ct.shape[1])))
    f = get_model("lpntpet", device="cpu", challenge_window=CW, nonnegative=True, p_eff=6.0).fit(noisy, cr, fr)
    free = get_model("lpntpet", device="cpu", challenge_window=CW, p_eff=6.0).fit(noisy, cr, fr)
    ok = f.status != Status.SINGULAR
    assert (f.gamma[ok] >= 0).all() and (free.gamma < 0).any()
    none = ok & (f.gamma == 0)
    assert none.any()
    assert (f.release[none] == 0).all() and (f.f_stat[none] == 0).all() and np.isnan(f.t_d[none]).all()
    # where the free fit already has gamma > 0 the constrained fit is the same
    pos = ok & (free.gamma > 0) & (f.gamma > 0)
    np.testing.assert_allclose(f.release[pos], free.release[pos], rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# F test: calibrated effective parameter count, voxelwise false-positive rate
# ---------------------------------------------------------------------------------------------------------
def _null_study(n: int, seed: int, release: float = 0.0) -> tuple[np.ndarray, np.ndarray, FrameTiming,
                                                                   np.ndarray]:
    """n noisy TACs (BPND 1-4, R1 0.8-1.2) with Gaussian noise whose variance is inversely proportional to the
    frame duration (1% of the peak at the 6-min frames); returns the inverse-variance frame weights too."""
    rng = np.random.default_rng(seed)
    m = 200
    r1 = rng.uniform(0.8, 1.2, m)
    bp0 = rng.uniform(1.0, 4.0, m)
    ct, cr, fr = release_tacs(r1, bp0, np.full(m, release), 48.0, 60.0, 1.0)
    ct = np.tile(ct, (-(-n // m), 1))[:n]
    rel_sd = np.sqrt(fr.duration_min.max() / fr.duration_min)
    sd = 0.01 * ct.max(axis=1, keepdims=True) * rel_sd[None, :]
    noisy = (ct + sd * rng.standard_normal(ct.shape)).astype(np.float32)
    return noisy, cr, fr, 1.0 / rel_sd**2


#: voxelwise false-positive rates measured by the null tests (printed; quoted in the README)
NULL_N = 6000


def _share_above(f) -> float:
    ok = (f.status == Status.OK) | (f.status == Status.GRID_EDGE)
    return float((f.f_stat[ok] >= f.info["f_threshold"]).mean())


def test_false_positive_rate_is_nominal_with_inverse_variance_weights() -> None:
    noisy, cr, fr, w = _null_study(NULL_N, seed=11)
    f = get_model("lpntpet", device="cpu", challenge_window=CW, weights=w).fit(noisy, cr, fr)
    share = _share_above(f)
    se = np.sqrt(0.05 * 0.95 / NULL_N)
    print(f"\nnull, inverse-variance weights: p_eff {f.info['p_eff']:.2f}, F threshold {f.info['f_threshold']:.3f}, "
          f"share above {share:.4f} (calibration {f.info['calibration_fpr']:.4f})")
    assert share <= 0.05 + 3 * se  # at most nominal (within sampling error) ...
    assert share >= 0.05 - 6 * se  # ... and not trivially conservative: the calibration does its job
    assert f.info["p0"] + 1 < f.info["p_eff"] <= f.info["p0"] + 6
    # the nominal parameter count (p0 + 4) or one extra parameter (p0 + 1) would not be right
    from voxelkit.models.lpntpet import _f_crit

    ok = (f.status == Status.OK) | (f.status == Status.GRID_EDGE)
    q = f.f_stat[ok] * (f.info["p_eff"] - 3) / (f.info["n_obs"] - f.info["p_eff"])
    naive = (q * (f.info["n_obs"] - 4) >= _f_crit(0.05, 4.0, 3, f.info["n_obs"])).mean()
    assert naive > 0.05 + 5 * se


def test_false_positive_rate_at_most_nominal_without_weights() -> None:
    noisy, cr, fr, _ = _null_study(NULL_N, seed=12)
    f = get_model("lpntpet2", device="cpu", challenge_window=CW, k2prime=K2P).fit(noisy, cr, fr)
    share = _share_above(f)
    print(f"\nnull, lpntpet2, no weights (heteroscedastic noise): p_eff {f.info['p_eff']:.2f}, "
          f"share above {share:.4f}")
    assert share <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / NULL_N)


def test_release_is_detected_and_estimated_with_noise() -> None:
    noisy, cr, fr, w = _null_study(2000, seed=13, release=0.2)
    f = get_model("lpntpet", device="cpu", challenge_window=CW, weights=w).fit(noisy, cr, fr)
    assert _share_above(f) > 0.7
    # with noise the search over shapes trades peak height against width: the median is ~20 % high at this
    # noise level (quoted in the README); the onset is unbiased
    print(f"\nrelease 0.2, 1 % noise: median release {np.median(f.release):.3f}, IQR "
          f"{np.quantile(f.release, 0.25):.3f}-{np.quantile(f.release, 0.75):.3f}, median t_d {np.median(f.t_d):.1f}")
    assert np.median(f.release) == pytest.approx(0.2, abs=0.06)
    assert np.median(f.t_d) == pytest.approx(48.0, abs=6.0)
    null, *_ = _null_study(2000, seed=13)
    g = get_model("lpntpet", device="cpu", challenge_window=CW, weights=w).fit(null, cr, fr)
    assert abs(float(np.median(g.release))) < 0.03  # estimates kept, centred on 0 without release


def test_given_p_eff_and_threshold() -> None:
    noisy, cr, fr, w = _null_study(400, seed=14)
    f = get_model("lpntpet", device="cpu", challenge_window=CW, weights=w, p_eff=5.5, f_alpha=0.01).fit(
        noisy, cr, fr)
    from scipy.stats import f as fdist

    assert f.info["p_eff"] == 5.5 and f.info["p_eff_source"] == "given"
    assert f.info["f_threshold"] == pytest.approx(fdist.ppf(0.99, 2.5, 30 - 5.5))


# ---------------------------------------------------------------------------------------------------------
# status codes, options, bad input, log line
# ---------------------------------------------------------------------------------------------------------
def test_status_codes() -> None:
    ct, cr, fr = release_tacs(R1, BP0, REL, 47.3, 61.7, 1.5)
    ct = np.concatenate([ct, ct[:3]])
    ct[6, 4] = np.nan
    ct[7] = 0.0
    ct[8] = -ct[8]
    f = get_model("lpntpet", device="cpu", challenge_window=CW).fit(ct, cr, fr)
    assert f.status[6] == Status.NONFINITE_INPUT and f.status[7] == Status.SINGULAR
    assert f.status[8] == Status.IMPLAUSIBLE and np.isfinite(f.bp_nd[8])
    for k in f.params:
        assert np.isnan(f.params[k][[6, 7]]).all(), k


def test_grid_edge_status() -> None:
    ct, cr, fr = release_tacs(R1, BP0, REL, 47.3, 61.7, 1.5)
    rng = np.random.default_rng(0)
    ct = ct * (1 + 0.002 * rng.standard_normal(ct.shape))
    # the grid's onsets start after the true onset: the fit sits on the first onset, flagged
    f = get_model("lpntpet", device="cpu", td_range=(52.0, 70.0), tp_range=(55.0, 88.0), p_eff=6.0).fit(ct, cr, fr)
    sig = REL > 0
    assert (f.status[sig] == Status.GRID_EDGE).all() and (f.t_d[sig] == 52.0).all()
    assert np.isfinite(f.release[sig]).all()


def test_options_in_sidecar_and_info() -> None:
    ct, cr, fr = release_tacs(R1, BP0, REL, 47.3, 61.7, 1.5)
    f = get_model("lpntpet2", device="cpu", k2prime="median", td_range=(44, 56), tp_range=(50, 80), td_step=3,
                  tp_step=5, alphas=(1, 2)).fit(ct, cr, fr)
    side = f.sidecar()
    assert side["Options"]["alphas"] == [1.0, 2.0] and side["Options"]["td_range"] == [44.0, 56.0]
    assert side["Info"]["k2prime_source"].startswith("median")
    from voxelkit.models.mrtm import MRTM2

    # the same rule as MRTM2 (the release in the data biases MRTM's k2')
    m2 = MRTM2(k2prime="median", integration="frame_average").fit(ct, cr, fr)
    assert f.info["k2prime"] == pytest.approx(m2.info["k2prime"], rel=1e-6)
    assert f.info["td_grid_min"] == [44.0, 56.0] and f.info["n_basis"] > 0
    assert np.isin(np.unique(f.alpha[np.isfinite(f.alpha)]), np.float32([1.0, np.sqrt(2.0), 2.0])).all()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"td_range": (85.0, 88.0), "tp_range": (87.0, 90.0)}, r"^td_range: onset 85 min has fewer than 2 fitted"),
    ({"window": (None, 60.0), "td_range": (55.0, 58.0), "tp_range": (57.0, 60.0)}, r"^td_range: onset 5\d"),
    ({"window": (70.0, None)}, r"^lpntpet: only \d+ frames in the fitted range, need at least 8"),
    ({"alphas": (-1.0,)}, "^alphas must be positive"),
    ({"td_range": (50.0, 40.0)}, "^td_range must be"),
    ({"challenge_window": (60.0, 50.0)}, "^challenge_window must be"),
    ({"p_eff": 2.0}, "^p_eff must be a number above 3"),
    ({"f_alpha": 0.7}, "^f_alpha must be in"),
    ({"td_step": 0.0}, "^td_step must be a positive"),
    ({"td_range": (60.0, 70.0), "tp_range": (40.0, 50.0)}, "^tp_range 40-50 min has no peak"),
])
def test_bad_input_one_line_errors(kwargs: dict, match: str) -> None:
    ct, cr, fr = release_tacs(R1[:2], BP0[:2], REL[:2], 47.3, 61.7, 1.5)
    with pytest.raises(InputError, match=match) as exc:
        get_model("lpntpet", device="cpu", **kwargs).fit(ct, cr, fr)
    assert "\n" not in str(exc.value)


def test_lpntpet2_needs_a_k2prime_source() -> None:
    with pytest.raises(InputError, match="^lpntpet2 needs k2'"):
        get_model("lpntpet2")
    with pytest.raises(InputError, match="only one source"):
        get_model("lpntpet2", k2prime=0.1, k2prime_tac=np.ones(30))


def test_fit_log_line_reports_voxels_and_seconds(caplog: pytest.LogCaptureFixture) -> None:
    ct, cr, fr = release_tacs(R1, BP0, REL, 47.3, 61.7, 1.5)
    with caplog.at_level(logging.INFO, logger="voxelkit"):
        f = get_model("lpntpet", device="cpu", challenge_window=CW).fit(ct, cr, fr)
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("lpntpet: 6 voxels in ")]
    assert line and " s on numpy" in line[0] and "above the F threshold" in line[0]
    assert f.seconds > 0


def test_cli_fit_tacs_lpntpet(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from voxelkit.cli import main
    from voxelkit.io import read_tsv

    ct, cr, fr = release_tacs(R1, BP0, REL, 47.3, 61.7, 1.5)
    rows = ["\t".join(["frame_start", "frame_end", "ref"] + [f"r{i}" for i in range(6)])]
    for j in range(fr.n_frames):
        rows.append("\t".join(f"{v:.10g}" for v in [fr.start[j], fr.end[j], cr[j], *ct[:, j]]))
    table = tmp_path / "tacs.tsv"
    table.write_text("\n".join(rows) + "\n")
    before = table.read_bytes()
    out = tmp_path / "out.tsv"
    assert main(["fit-tacs", str(table), "--ref", "ref", "--model", "lpntpet", "--challenge-window", "45", "90",
                 "--alphas", "0.5", "1", "2", "4", "--weights", "duration", "-o", str(out), "-q"]) == 0
    res = read_tsv(out)
    assert "release" in res and "t_d" in res and len(res["release"]) == 6
    np.testing.assert_allclose(np.float64(res["release"][:4]), REL[:4], rtol=0.1)
    capsys.readouterr()
    for extra, what in ((["--window", "70", "90"], "frames in the fitted range"),
                        (["--td-range", "85", "88", "--tp-range", "87", "90"], "td_range: onset 85 min"),
                        (["--alphas", "-1"], "alphas")):
        bad = tmp_path / "bad.tsv"
        rc = main(["fit-tacs", str(table), "--ref", "ref", "--model", "lpntpet", *extra, "-o", str(bad), "-q"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and not bad.exists() and what in err and len(err.splitlines()) == 1, err
    assert table.read_bytes() == before
    # lpntpet2 with k2' from a region column (voxelkit.api: the k2' region models)
    out2 = tmp_path / "out2.tsv"
    assert main(["fit-tacs", str(table), "--ref", "ref", "--model", "lpntpet2", "--k2prime-region", "r4",
                 "--challenge-window", "45", "90", "-o", str(out2), "-q"]) == 0
    res2 = read_tsv(out2)
    np.testing.assert_allclose(np.float64(res2["k2prime"]), K2P, rtol=0.02)  # r4 has no release
    np.testing.assert_allclose(np.float64(res2["release"][:4]), REL[:4], rtol=0.1)


def test_cli_fit_image_writes_release_maps(tmp_path: Path) -> None:
    import json

    import nibabel as nib

    from voxelkit.cli import main

    ct, cr, fr = release_tacs(np.tile(R1, 4), np.tile(BP0, 4), np.tile(REL, 4), 47.3, 61.7, 1.5)
    shape = (4, 3, 3)
    data = np.zeros(shape + (fr.n_frames,), dtype=np.float32)
    brain = np.zeros(shape, dtype=np.uint8)
    brain[:, :, :2] = 1
    data[brain.astype(bool)] = ct
    ref = np.zeros(shape, dtype=np.uint8)
    ref[:, :, 2] = 1
    data[:, :, 2] = cr
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    for name, img in (("pet", data), ("ref", ref), ("brain", brain)):
        nib.save(nib.Nifti1Image(img, aff), tmp_path / f"{name}.nii.gz")
    (tmp_path / "pet.json").write_text(json.dumps(fr.to_bids_dict()))
    out = tmp_path / "maps"
    rc = main(["fit", str(tmp_path / "pet.nii.gz"), "--ref-mask", str(tmp_path / "ref.nii.gz"), "--mask",
               str(tmp_path / "brain.nii.gz"), "-o", str(out), "--model", "lpntpet", "--challenge-window", "45", "90",
               "--device", "cpu", "-q"])
    assert rc == 0
    for k in ("bp_nd", "gamma", "t_d", "t_p", "alpha", "release", "f_stat", "wrss", "status"):
        assert (out / f"{k}.nii.gz").exists(), k
    rel = np.asarray(nib.load(out / "release.nii.gz").dataobj)[brain.astype(bool)]
    np.testing.assert_allclose(rel, np.tile(REL, 4), rtol=0.1, atol=0.01)
    meta = json.loads((out / "fit.json").read_text())
    assert meta["Model"] == "lpntpet" and "f_threshold" in meta["Info"] and "p_eff" in meta["Info"]


# ---------------------------------------------------------------------------------------------------------
# CUDA path (kernels/lpntpet.cu through the CPU shim, cupy stand-in) == NumPy path
# ---------------------------------------------------------------------------------------------------------
def _edge_block(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, FrameTiming]:
    ct, cr, fr = release_tacs(np.tile(R1, 4), np.tile(BP0, 4), np.tile(REL, 4), 47.3, 61.7, 1.5)
    rng = np.random.default_rng(seed)
    reps = -(-n // ct.shape[0])
    ct = np.tile(ct, (reps, 1))[:n]
    ct = (ct * (1.0 + 0.02 * rng.standard_normal(ct.shape))).astype(np.float32)
    if n >= 8:
        ct[1, 3] = np.nan
        ct[2] = 0.0
        ct[4, -1] = -np.inf
        ct[5] = -ct[5]
    return ct, cr, fr


def _compare(fa, fb, rtol: float = 1e-5) -> None:
    np.testing.assert_array_equal(fa.status, fb.status)
    for k in fa.params:
        a, b = fa.params[k], fb.params[k]
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=k)
        ok = np.isfinite(a)
        scale = np.abs(a[ok]).max() if ok.any() else 1.0
        np.testing.assert_allclose(b[ok], a[ok], rtol=rtol, atol=rtol * scale * 1e-2, err_msg=k)


@pytest.mark.kernels
@pytest.mark.parametrize("n", [1, 100, 1500])
@pytest.mark.parametrize("integration", ["frame_average", "trapezoid"])
def test_kernel_matches_numpy(fake_gpu, n: int, integration: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import voxelkit.models.lpntpet as mod

    monkeypatch.setattr(mod, "GPU_BLOCK_VOXELS", 333)  # several blocks per chunk on the GPU path too
    ct, cr, fr = _edge_block(n)
    w = np.linspace(0.5, 1.0, fr.n_frames)
    cases = [("lpntpet", {}), ("lpntpet2", {"k2prime": K2P}),
             ("lpntpet", {"window": (2.0, 85.0), "nonnegative": True, "weights": w})]
    for name, kw in cases:
        opts = dict(challenge_window=CW, integration=integration, p_eff=6.0, **kw)
        f_np = get_model(name, device="cpu", **opts).fit(ct, cr, fr)
        f_gpu = get_model(name, device=fake_gpu, **opts).fit(ct, cr, fr)
        assert f_gpu.backend == "cupy"
        _compare(f_np, f_gpu)


@pytest.mark.kernels
def test_kernel_calibration_and_median_k2prime_match_numpy(fake_gpu) -> None:
    from cuda_shim import fake_cupy

    ct, cr, fr = _edge_block(600)
    for name, kw in (("lpntpet", {}), ("lpntpet2", {"k2prime": "median"})):
        f_np = get_model(name, device="cpu", challenge_window=CW, **kw).fit(ct, cr, fr)
        fake_cupy.reset_stats()
        f_gpu = get_model(name, device=fake_gpu, challenge_window=CW, **kw).fit(ct, cr, fr)
        assert f_gpu.info["p_eff"] == pytest.approx(f_np.info["p_eff"], abs=1e-9)
        assert any(k == "lpntpet_fit" for k, _, _ in fake_cupy.LAUNCHES)
        _compare(f_np, f_gpu)
