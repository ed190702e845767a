"""Tail approximation (accel="tail"): the GPD MLE, p-values against the true tail and against an exhaustive
permutation reference, fallback where the fit is poor, CLI / stats.json, CuPy stand-in."""

from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage, optimize, stats

from voxelkit.backend import NUMPY
from voxelkit.cli import main
from voxelkit.io import InputError, Masker
from voxelkit.stats import fwe_p, permutation_test
from voxelkit.stats.design import one_sample_design
from voxelkit.stats.tail import TailFit, anderson_darling, fit_tail, tail_fwe_p

SHAPE = (8, 9, 7)
AFF = np.diag([2.0, 2.0, 2.0, 1.0])


def test_fit_is_the_mle_and_matches_a_known_tail():
    rng = np.random.default_rng(11)
    xi, scale = -0.15, 0.4
    null = stats.genpareto.rvs(xi, scale=scale, size=2000, random_state=rng) + 3.0
    fit = fit_tail(null, seed=0)
    assert fit.ok and fit.n_exceed == 250 and fit.n_null == 2000
    # the estimate maximises the GPD likelihood of the exceedances (independent optimiser)
    z = np.sort(null)[::-1][:fit.n_exceed] - fit.threshold

    def nll(th):
        return -np.sum(stats.genpareto.logpdf(z, th[0], loc=0, scale=np.exp(th[1])))

    best = optimize.minimize(nll, [0.0, np.log(z.mean())], method="Nelder-Mead",
                             options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000})
    assert nll([fit.shape_xi, np.log(fit.scale)]) <= best.fun + 1e-6
    # p = k/N * GPD survival beyond the threshold
    p_true = np.array([0.001, 0.002, 0.005, 0.01, 0.02, 0.05])
    x = 3.0 + stats.genpareto.isf(p_true, xi, scale=scale)
    p = tail_fwe_p(x, null, fit)
    np.testing.assert_allclose(p, 250 / 2000 * stats.genpareto.sf(x - fit.threshold, fit.shape_xi,
                                                                  scale=fit.scale), rtol=1e-12)
    # accuracy against the true tail, over independent samples of 2000 (the fit's own sampling error is ~25 %
    # at p = 0.001, ~6 % at 0.05): median relative error within 30 % over p in [0.001, 0.05] (20 % from
    # p = 0.01), and on average below the empirical estimate's
    err, err_emp = [], []
    for seed in range(8):
        nl = stats.genpareto.rvs(xi, scale=scale, size=2000, random_state=np.random.default_rng(100 + seed)) + 3
        f = fit_tail(nl, seed=0)
        assert f.ok
        err.append(np.abs(tail_fwe_p(x, nl, f) / p_true - 1))
        err_emp.append(np.abs(fwe_p(x, nl) / p_true - 1))
    med = np.median(err, axis=0)
    assert np.all(med < 0.3) and np.all(med[3:] < 0.2)
    assert np.mean(err) < np.mean(err_emp)
    # the empirical p is kept above the p threshold (0.1)
    x_low = 3.0 + stats.genpareto.isf(0.3, xi, scale=scale)
    assert tail_fwe_p(np.array([x_low]), null, fit)[0] == fwe_p(np.array([x_low]), null)[0]


def test_anderson_darling_statistic():
    # A^2 of a sample against its own distribution matches scipy's (exponential = GPD with xi = 0)
    rng = np.random.default_rng(2)
    z = rng.exponential(2.0, 200)
    ours = anderson_darling(z, 0.0, 2.0)
    ref = stats.goodness_of_fit(stats.expon, z, known_params={"loc": 0, "scale": 2.0}, statistic="ad",
                                n_mc_samples=9, random_state=0).statistic
    assert ours == pytest.approx(ref, rel=1e-9)


def test_poor_fit_falls_back(caplog):
    rng = np.random.default_rng(3)
    # a tail made of two tight clumps (not a GPD shape at any number of exceedances)
    null = np.r_[rng.normal(0, 1, 375), 6 + 1e-3 * rng.random(100), 12 + 1e-3 * rng.random(25)]
    fit = fit_tail(null, seed=0)
    assert not fit.ok and "no acceptable GPD fit" in fit.reason
    x = np.array([6.0005, 12.0005, 13.0])
    np.testing.assert_array_equal(tail_fwe_p(x, null, fit), fwe_p(x, null))
    assert not fit_tail(np.arange(50.0)).ok  # too few permutations


def _data(n, seed=0, effect=0.7):
    rng = np.random.default_rng(seed)
    x = np.stack([ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1.0) for _ in range(n)])
    x /= x.std()
    x[:, 2:5, 2:6, 2:5] += effect * np.linspace(0.3, 1.2, 4)[None, None, :, None]
    return x.reshape(n, -1)


def test_tail_p_close_to_exhaustive_reference():
    n = 12   # 2^12 = 4096 sign flips: the exact reference null of max t
    y = _data(n)
    mk = Masker(np.ones(SHAPE, bool), AFF)
    ref = permutation_test(y, mk, one_sample_design(n), n_perm=4096, device=NUMPY, two_sided=False, tfce=False,
                           cluster_p=None)
    assert ref.settings["exhaustive"]
    p_ref = np.array([0.002, 0.005, 0.01, 0.02, 0.05])
    x = np.quantile(ref.null["h0_max_t"], 1 - p_ref)
    err_tail, err_plain = [], []
    for seed in (7, 8, 9):
        fast = permutation_test(y, mk, one_sample_design(n), n_perm=500, seed=seed, accel="tail", device=NUMPY,
                                two_sided=False, tfce=False, cluster_p=None)
        fit = TailFit(**fast.settings["tail_fits"]["h0_max_t"])
        assert fit.ok and fast.settings["accel"] == "tail"
        null = fast.null["h0_max_t"]
        # the saved map is the tail p of |t| (or the plain p above 0.1)
        p_map = tail_fwe_p(fast.maps["t"].astype(np.float64), null, fit)
        np.testing.assert_allclose(fast.maps["logp_fwe_voxel"], -np.log10(p_map), rtol=1e-5, atol=1e-6)
        err_tail.append(np.abs(tail_fwe_p(x, null, fit) / p_ref - 1))
        err_plain.append(np.abs(fwe_p(x, null) / p_ref - 1))
        # beyond the reach of 500 permutations the tail still gives p < 1/500 where the plain p cannot
        x_deep = np.quantile(ref.null["h0_max_t"], 1 - 0.001)
        assert tail_fwe_p(np.array([x_deep]), null, fit)[0] < 1 / 500 <= fwe_p(np.array([x_deep]), null)[0]
    err_tail, err_plain = np.array(err_tail), np.array(err_plain)
    assert np.median(err_tail) < 0.25
    # (at p = 0.002 = 1/500 the plain p is floored at 1/500 and matches by construction: compare from 0.005)
    assert np.mean(err_tail[:, 1:]) < np.mean(err_plain[:, 1:])


def test_all_nulls_and_bad_option(caplog):
    n = 10
    y = _data(n, seed=4)
    mk = Masker(np.ones(SHAPE, bool), AFF)
    with caplog.at_level(logging.WARNING, logger="voxelkit"):
        r = permutation_test(y, mk, one_sample_design(n), n_perm=400, seed=1, accel="tail", cluster_t=2.0,
                             tfce=True, two_sided=True, device=NUMPY)
    fits = r.settings["tail_fits"]
    assert set(fits) == {"h0_max_t", "h0_max_cluster_extent", "h0_max_cluster_mass", "h0_max_tfce"}
    for name, f in fits.items():
        fit = TailFit(**f)
        null = r.null[name]
        if not fit.ok:   # the fallback is announced
            assert name in caplog.text
        # the saved maps are the tail p of the saved null
    p = tail_fwe_p(np.abs(r.maps["tfce"]), r.null["h0_max_tfce"], TailFit(**fits["h0_max_tfce"]))
    np.testing.assert_allclose(np.abs(r.maps["logp_fwe_tfce"]), -np.log10(p), rtol=1e-5, atol=1e-6)
    del null
    with pytest.raises(InputError, match="accel"):
        permutation_test(y, mk, one_sample_design(n), n_perm=400, accel="fast")


@pytest.mark.kernels
def test_gpu_same_as_numpy(fake_gpu):
    n = 10
    y = _data(n, seed=5)
    mk = Masker(np.ones(SHAPE, bool), AFF)
    kw = dict(n_perm=300, seed=2, accel="tail", cluster_t=2.0, batch_size=64)
    cpu = permutation_test(y, mk, one_sample_design(n), device=NUMPY, **kw)
    gpu = permutation_test(y, mk, one_sample_design(n), device=fake_gpu, **kw)
    assert gpu.settings["backend"] == "cupy"
    for k in cpu.maps:
        np.testing.assert_allclose(gpu.maps[k], cpu.maps[k], rtol=1e-4, atol=1e-5, err_msg=k)
    assert gpu.settings["tail_fits"]["h0_max_t"]["ok"] == cpu.settings["tail_fits"]["h0_max_t"]["ok"]


def test_cli(tmp_path, capsys):
    y = _data(9, seed=6).reshape(9, *SHAPE)
    files = []
    for i, x in enumerate(y):
        p = tmp_path / f"d{i}.nii.gz"
        nib.save(nib.Nifti1Image((x + 5).astype(np.float32), AFF), str(p))
        files.append(str(p))
    out = tmp_path / "out"
    assert main(["stats", "one-sample", "--maps", *files, "--n-perm", "300", "--accel", "tail", "--quiet",
                 "-o", str(out)]) == 0
    s = json.loads((out / "stats.json").read_text())
    assert s["accel"] == "tail" and "h0_max_t" in s["tail_fits"]
    with pytest.raises(SystemExit) as exc:
        main(["stats", "one-sample", "--maps", *files, "--accel", "bogus", "-o", str(tmp_path / "x")])
    assert exc.value.code == 2
