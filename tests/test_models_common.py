"""Options shared by the models (weights, window, integration rules, wrss) and regression values on real TACs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_models_mrtm import SIMREF, truth_tacs

from voxelkit.frames import FrameTiming
from voxelkit.io import InputError, read_tac_table
from voxelkit.models import Status, get_model
from voxelkit.models.base import (
    WEIGHT_SCHEMES,
    decay_factor,
    frame_weights,
    model_integration,
    model_integration_matrix,
)
from voxelkit.models.logan import Logan
from voxelkit.models.mrtm import MRTM, MRTM2

DATA = Path(__file__).resolve().parent / "data"


# ---------------------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------------------
def test_weight_schemes_follow_kinfitr_formulas() -> None:
    t = read_tac_table(SIMREF / "hukw_1_tacs.tsv")
    fr, ref = t.frames, t.columns["Reference"]
    d = fr.duration_min
    act = np.maximum(np.clip(ref, 0, None), 0.01 * ref.max())
    lam = np.log(2) / 20.364
    dec = np.exp(-lam * fr.start_min) * (1 - np.exp(-lam * d)) / (lam * d)  # kinfitr decay_uncorrect factor
    expected = {
        "none": np.ones_like(d),
        "duration": d,  # kinfitr method 7
        "sqrt_duration": np.sqrt(d),  # 4
        "duration_activity": d / act,  # 6
        "duration_uncorrected_activity": d / (act * dec),  # 1
        "sqrt_duration_uncorrected_activity": np.sqrt(d * act * dec),  # 2
        "counts": d * dec / act,
    }
    assert set(expected) == set(WEIGHT_SCHEMES)
    for name, e in expected.items():
        w = frame_weights(name, fr, ref)
        np.testing.assert_allclose(w, e / e.max(), rtol=1e-12, err_msg=name)
        assert w.max() == pytest.approx(1.0)
    np.testing.assert_allclose(decay_factor(fr, None), 1.0)
    f18 = frame_weights("counts", fr, ref, half_life_min=109.77)
    assert not np.allclose(f18, expected["counts"] / expected["counts"].max())


def test_user_weights_and_errors() -> None:
    fr = FrameTiming.uniform(5, 60.0)
    np.testing.assert_array_equal(frame_weights([1, 2, 3, 4, 5], fr, np.ones(5)), [1, 2, 3, 4, 5])
    for bad, match in (([1, 2], "2 values"), ([1, -1, 1, 1, 1], "non-negative"), ([0] * 5, "all zero")):
        with pytest.raises(InputError, match=match):
            frame_weights(bad, fr, np.ones(5))
    with pytest.raises(InputError, match="unknown weighting"):
        MRTM(weights="poisson")


def test_weights_change_the_fit_as_weighted_least_squares() -> None:
    """MRTM with weights equals numpy's lstsq on sqrt(w)-scaled rows, with integrals over all frames."""
    t = read_tac_table(SIMREF / "ybnx_1_tacs.tsv")
    fr, ref, roi = t.frames, t.columns["Reference"], t.columns["ROI2"]
    for integration in ("trapezoid", "frame_average"):
        for window in (None, (10.0, 80.0)):
            m = MRTM(weights="duration", window=window, integration=integration)
            f = m.fit(roi, ref, fr)
            integ = m.integration_matrix(fr)
            used = f.used_frames
            w = frame_weights("duration", fr, ref)[used]
            x = np.stack([integ @ ref, integ @ roi, ref], axis=1)[used]
            y = roi[used]
            g, *_ = np.linalg.lstsq(x * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)
            assert f.bp_nd[0] == pytest.approx(-g[0] / g[1] - 1, rel=1e-5)
            assert f.r1[0] == pytest.approx(g[2], rel=1e-5)
            assert f.k2prime[0] == pytest.approx(g[0] / g[2], rel=1e-5)
            assert f.wrss[0] == pytest.approx(np.sum(w * (y - x @ g) ** 2), rel=1e-4)


# ---------------------------------------------------------------------------------------------------------
# window and integration rules
# ---------------------------------------------------------------------------------------------------------
def test_window_selects_whole_frames_and_errors() -> None:
    fr = FrameTiming.from_start_end([0, 60, 120, 300, 600], [60, 120, 300, 600, 900])
    m = MRTM(window=(1.0, 10.0))
    np.testing.assert_array_equal(m.used_frames(fr), [False, True, True, True, False])
    with pytest.raises(InputError, match="before its end"):
        MRTM(window=(20.0, 10.0))
    ct, cr, _, _, fr2 = truth_tacs(n=5)
    with pytest.raises(InputError, match="frames in the fitted range"):
        MRTM(window=(80.0, 90.0)).fit(ct, cr, fr2)


def test_frame_average_rule_matrix_matches_recurrence_and_is_exact_for_linear_frames() -> None:
    d = np.array([10, 10, 20, 30, 60, 120, 300, 300], float)
    fr = FrameTiming(np.concatenate([[5.0], 5.0 + np.cumsum(d)[:-1]]), d)
    m = model_integration_matrix(fr, "frame_average")
    a, b, cm, c0, cp = model_integration(fr, "frame_average")
    c = np.random.default_rng(0).random(fr.n_frames)
    run, prev, out = 0.0, 0.0, []
    for j in range(c.size):
        run += a[j] * prev + b[j] * c[j]
        nxt = c[j + 1] if j + 1 < c.size else 0.0
        out.append(run + cm[j] * prev + c0[j] * c[j] + cp[j] * nxt)
        prev = c[j]
    np.testing.assert_allclose(m @ c, out, rtol=1e-12)
    # a linear curve C(t) = 2 + 3 t (minutes) from t = 5 s: frame averages -> exact frame averages of the
    # running integral (int_{5s}^t C; nothing before the first frame)
    s, e = fr.start_min, fr.end_min
    avg = 2 + 1.5 * (s + e)
    prim = lambda t: 2 * t + 1.5 * t**2  # noqa: E731
    t0 = s[0]
    exact = [(((2 * e[i] ** 2 / 2 + 1.5 * e[i] ** 3 / 3) - (2 * s[i] ** 2 / 2 + 1.5 * s[i] ** 3 / 3)) / (e[i] - s[i]))
             - prim(t0) for i in range(fr.n_frames)]
    np.testing.assert_allclose(m @ avg, exact, rtol=1e-10)


# ---------------------------------------------------------------------------------------------------------
# outputs shared by all models
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", [Logan(tstar=20.0, k2prime=0.1), MRTM(), MRTM2(k2prime=0.1)])
def test_every_model_reports_bp_nd_wrss_status_and_rows(model) -> None:
    ct, cr, _, _, fr = truth_tacs(n=5)
    f = model.fit(ct * (1 + 0.01 * np.sin(np.arange(fr.n_frames))), cr, fr)
    assert {"bp_nd", "wrss"} <= set(f.params)
    assert (f.status == Status.OK).all() and (f.wrss > 0).all()
    row = f.rows()[0]
    assert row["region"] == "0" and "wrss" in row and row["status"] == "ok"
    side = f.sidecar()
    assert side["Parameters"] == list(f.params) and "wrss" in side["Parameters"]


def test_chunking_does_not_change_results() -> None:
    ct, cr, _, _, fr = truth_tacs(n=50)
    noisy = (ct * (1 + 0.03 * np.random.default_rng(2).standard_normal(ct.shape))).astype(np.float32)
    for cls, kw in ((MRTM, {}), (MRTM2, {"k2prime": 0.1}), (Logan, {"tstar": 20.0})):
        a = cls(**kw).fit(noisy, cr, fr)
        b = cls(chunk_voxels=7, **kw).fit(noisy, cr, fr)
        for k in a.params:
            np.testing.assert_array_equal(a.params[k], b.params[k])


# ---------------------------------------------------------------------------------------------------------
# regression values on real TACs (plausible, recorded to notice changes)
# ---------------------------------------------------------------------------------------------------------
# Produced once (voxelkit 0.1.0, this commit's code) with voxelkit.api.fit_tacs on the tests/data tables:
# per region (MRTM BPND, MRTM k2' [1/min], MRTM2 BPND with k2' from an MRTM fit of the named high-binding
# column, reference Logan BPND with t* = 35 min and k2' fixed to 0.05 (PiB) / 0.06 (NRU) 1/min); all with the
# default trapezoid integrals and no weights.  Plausible: amyloid-positive PiB cortex BPND ~1 (SUVR ~2),
# white matter high (non-specific), NRU SB086 high-binding/putamen ~3, thalamus/occipital ~0.5-0.6.
REGRESSION = {
    "gaain_pib/AD06_mergedROIs_noPVC_kBqcc.tsv": {
        "k2prime_mrtm2": 0.041256,
        "frontal": (0.987783, 0.037936, 0.929837, 0.878484),
        "cingulate": (1.209695, 0.039947, 1.179193, 1.027214),
        "amyloidcomp": (1.050769, 0.041256, 1.050769, 0.953691),
        "whitematter": (0.800643, 0.052710, 1.019191, 0.758296),
    },
    "gaain_pib/AD07_mergedROIs_noPVC_kBqcc.tsv": {
        "k2prime_mrtm2": 0.052669,
        "frontal": (0.991649, 0.047572, 0.929365, 0.990794),
        "cingulate": (1.180003, 0.052421, 1.176528, 1.183525),
        "amyloidcomp": (1.015187, 0.052669, 1.015187, 1.044118),
        "whitematter": (0.905676, 0.058217, 0.980673, 0.929194),
    },
    "nru_SB086/SB086_nonPVE_tacs_Bqml.tsv": {
        "k2prime_mrtm2": 0.062772,
        "HighBinding": (3.075847, 0.062772, 3.075847, 3.046899),
        "Total_th": (0.599941, 0.093858, 0.630901, 0.573994),
        "Total_put": (3.166134, 0.056863, 2.999405, 3.074039),
        "Total_occ": (0.535227, 0.080520, 0.552107, 0.514017),
    },
}
REFS = {"gaain_pib": ("cerebellum", "amyloidcomp", 0.05), "nru_SB086": ("Total_cb", "HighBinding", 0.06)}


@pytest.mark.parametrize("name", list(REGRESSION))
def test_regression_values_on_real_tacs(name: str) -> None:
    from voxelkit.api import fit_tacs  # noqa: PLC0415

    ref, hb, k2p = REFS[name.split("/")[0]]
    expected = REGRESSION[name]
    regions = [k for k in expected if k != "k2prime_mrtm2"]
    path = DATA / name
    r1 = fit_tacs(path, ref, "mrtm", regions=regions)
    r2 = fit_tacs(path, ref, "mrtm2", regions=regions, k2prime_region=hb)
    r3 = fit_tacs(path, ref, "logan", regions=regions, tstar=35.0, k2prime=k2p)
    assert r2.info["k2prime"] == pytest.approx(expected["k2prime_mrtm2"], abs=1e-4)
    for i, reg in enumerate(regions):
        got = (r1.bp_nd[i], r1.k2prime[i], r2.bp_nd[i], r3.bp_nd[i])
        np.testing.assert_allclose(got, expected[reg], atol=1e-4, err_msg=f"{name} {reg}")
    for f in (r1, r2, r3):
        assert (f.status == Status.OK).all()


def test_get_model_builds_every_linear_model() -> None:
    for name, kw in (("logan", {"tstar": 10.0}), ("mrtm", {}), ("mrtm2", {"k2prime": 0.1})):
        assert get_model(name, **kw).name == name
