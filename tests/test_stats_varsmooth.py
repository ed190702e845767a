"""Variance smoothing (pseudo-t): equals a direct scipy.ndimage reference on every permutation, 0 mm equals the plain
t, the CuPy path (stand-in) equals NumPy, CLI and stats.json."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from voxelkit.backend import NUMPY
from voxelkit.cli import main
from voxelkit.io import Masker
from voxelkit.stats import Design, permutation_test
from voxelkit.stats.design import one_sample_design
from voxelkit.stats.varsmooth import VarianceSmoother, reference_smooth

SHAPE = (9, 10, 8)
AFF = np.diag([2.0, 2.0, 2.5, 1.0])   # anisotropic voxels: the FWHM in mm gives different sigmas per axis


def _mask():
    g = np.meshgrid(*[(np.arange(s) - (s - 1) / 2) / (s / 2) for s in SHAPE], indexing="ij")
    return (g[0] ** 2 + g[1] ** 2 + g[2] ** 2) < 0.9


def _data(n, seed=0, effect=0.6):
    rng = np.random.default_rng(seed)
    x = np.stack([ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1.0) for _ in range(n)])
    # voxel-dependent scale: smoothing must work in data units, not on the normalised residuals
    x *= 1.0 + np.linspace(0, 2, SHAPE[0])[None, :, None, None]
    x[:, 3:6, 3:6, 2:5] += effect
    return x


def test_smoother_equals_scipy_per_map():
    rng = np.random.default_rng(3)
    mask = _mask()
    vals = rng.random((4, int(mask.sum())))
    sm = VarianceSmoother(mask, AFF, 7.0, NUMPY)
    got = sm.smooth(vals)
    for k in range(4):
        v3 = np.zeros(SHAPE)
        v3[mask] = vals[k]
        np.testing.assert_allclose(got[k], reference_smooth(v3, mask, 7.0, AFF)[mask], rtol=1e-12)
    # a constant is unchanged (normalised by the smoothed mask: no edge bias)
    np.testing.assert_allclose(sm.smooth(np.full((1, int(mask.sum())), 3.0)), 3.0, rtol=1e-12)


def _ref_t_flip(d3, signs, mask, fwhm):
    """Direct pseudo-t of each sign-flipped one-sample data set: mean / sqrt(smoothed var / n)."""
    n = d3.shape[0]
    out = []
    for s in signs:
        y = d3 * s[:, None, None, None]
        var = y.var(axis=0, ddof=1)
        vs = reference_smooth(var, mask, fwhm, AFF)
        out.append(y.mean(axis=0)[mask] / np.sqrt(vs[mask] / n))
    return np.array(out)


def _ref_t_glm(y, X, c, orders, mask, fwhm):
    """Direct Freedman-Lane pseudo-t: permute the reduced-model residuals, refit, smooth the variance."""
    n = X.shape[0]
    Z = X @ np.linalg.svd(c[None, :])[2][1:].T
    Hz = Z @ np.linalg.pinv(Z)
    Rz = y - Hz @ y
    out = []
    iXX = np.linalg.inv(X.T @ X)
    for o in orders:
        ys = Hz @ y + Rz[o]
        beta = iXX @ X.T @ ys
        res = ys - X @ beta
        var = (res ** 2).sum(0) / (n - X.shape[1])
        v3 = np.zeros(SHAPE)
        v3[mask] = var
        vs = reference_smooth(v3, mask, fwhm, AFF)[mask]
        out.append((c @ beta) / np.sqrt(vs * (c @ iXX @ c)))
    return np.array(out)


@pytest.mark.parametrize("two_sided", [False, True])
def test_one_sample_equals_direct_reference(two_sided):
    n = 6   # 2^6 = 64 sign flips: exact test, every permutation checked
    mask = _mask()
    d3 = _data(n)
    mk = Masker(mask, AFF)
    r = permutation_test(d3[:, mask], mk, one_sample_design(n), n_perm=64, two_sided=two_sided,
                         variance_smoothing=6.0, device=NUMPY, dtype="float64")
    assert r.settings["exhaustive"] and r.settings["variance_smoothing_fwhm_mm"] == 6.0
    ref = _ref_t_flip(d3, r.null["sign_flips"], mask, 6.0)
    np.testing.assert_allclose(r.maps["t"], ref[0], rtol=1e-5)
    stat = np.abs(ref) if two_sided else ref
    np.testing.assert_allclose(r.null["h0_max_t"], stat.max(axis=1), rtol=1e-9)
    # the default working precision of one-sample tests (float32) agrees to float32 accuracy
    r32 = permutation_test(d3[:, mask], mk, one_sample_design(n), n_perm=64, two_sided=two_sided,
                           variance_smoothing=6.0, device=NUMPY)
    assert r32.settings["dtype"] == "float32"
    np.testing.assert_allclose(r32.null["h0_max_t"], stat.max(axis=1), rtol=1e-5)
    np.testing.assert_allclose(r32.maps["logp_uncorrected"], r.maps["logp_uncorrected"], atol=1e-6)
    p_unc = (stat >= stat[0] - 1e-9).mean(axis=0)
    lp = -np.log10(p_unc) * (np.sign(ref[0]) if two_sided else 1)
    np.testing.assert_allclose(r.maps["logp_uncorrected"], lp, rtol=1e-5, atol=1e-6)
    # and it differs from the plain t (the option is not a no-op)
    plain = permutation_test(d3[:, mask], mk, one_sample_design(n), n_perm=64, two_sided=two_sided, device=NUMPY)
    assert np.max(np.abs(plain.maps["t"] - r.maps["t"])) > 0.1


def test_glm_freedman_lane_equals_direct_reference():
    n = 10
    mask = _mask()
    rng = np.random.default_rng(5)
    X = np.c_[np.ones(n), rng.standard_normal(n), rng.standard_normal(n)]
    c = np.array([0.0, 1.0, 0.0])
    y3 = _data(n, seed=2, effect=0.0) + 0.8 * X[:, 1, None, None, None]
    y = y3[:, mask]
    r = permutation_test(y, Masker(mask, AFF), Design(X, c), n_perm=30, seed=1, variance_smoothing=5.0,
                         cluster_t=2.0, device=NUMPY, two_sided=False)
    ref = _ref_t_glm(y, X, c, r.null["permutations"], mask, 5.0)
    np.testing.assert_allclose(r.maps["t"], ref[0], rtol=1e-6)
    np.testing.assert_allclose(r.null["h0_max_t"], ref.max(axis=1), rtol=1e-8)


@pytest.mark.parametrize("kind", ["one_sample", "glm"])
def test_zero_mm_equals_plain_t(kind):
    n = 8
    mask = _mask()
    y = _data(n, seed=4)[:, mask]
    if kind == "one_sample":
        design = one_sample_design(n)
    else:
        rng = np.random.default_rng(1)
        design = Design(np.c_[np.ones(n), rng.standard_normal(n)], [0, 1])
    kw = dict(n_perm=100, seed=3, two_sided=True, cluster_t=2.5, tfce=True, device=NUMPY, dtype="float64")
    plain = permutation_test(y, Masker(mask, AFF), design, **kw)
    zero = permutation_test(y, Masker(mask, AFF), design, variance_smoothing=0.0, **kw)
    for k in plain.maps:
        np.testing.assert_allclose(zero.maps[k], plain.maps[k], rtol=1e-6, atol=1e-6, err_msg=k)
    for k in ("h0_max_t", "h0_max_cluster_extent", "h0_max_cluster_mass", "h0_max_tfce"):
        np.testing.assert_allclose(zero.null[k], plain.null[k], rtol=1e-6, err_msg=k)


def test_bad_value():
    from voxelkit.io import InputError

    mask = _mask()
    with pytest.raises(InputError, match="variance_smoothing"):
        permutation_test(_data(6)[:, mask], Masker(mask, AFF), one_sample_design(6), n_perm=64,
                         variance_smoothing=-1.0)


@pytest.mark.kernels
@pytest.mark.parametrize("kind", ["one_sample", "glm"])
def test_gpu_path_matches_numpy(fake_gpu, kind):
    n = 9
    mask = _mask()
    y = _data(n, seed=6)[:, mask]
    if kind == "one_sample":
        design = one_sample_design(n)
    else:
        rng = np.random.default_rng(2)
        design = Design(np.c_[np.ones(n), rng.standard_normal(n)], [0, 1])
    kw = dict(n_perm=50, seed=2, two_sided=True, cluster_t=2.0, tfce=True, batch_size=16, variance_smoothing=6.0)
    cpu = permutation_test(y, Masker(mask, AFF), design, device=NUMPY, **kw)
    gpu = permutation_test(y, Masker(mask, AFF), design, device=fake_gpu, **kw)
    assert gpu.settings["backend"] == "cupy"
    for k in cpu.maps:
        np.testing.assert_allclose(gpu.maps[k], cpu.maps[k], rtol=1e-5, atol=1e-5, err_msg=k)
    for k in ("h0_max_t", "h0_max_cluster_extent", "h0_max_cluster_mass", "h0_max_tfce"):
        np.testing.assert_allclose(gpu.null[k], cpu.null[k], rtol=1e-5, err_msg=k)


def test_cli(tmp_path, capsys):
    mask = _mask()
    d3 = _data(7, seed=8)
    files = []
    for i, x in enumerate(d3):
        p = tmp_path / f"d{i}.nii.gz"
        nib.save(nib.Nifti1Image(np.where(mask, x + 5, 0).astype(np.float32), AFF), str(p))
        files.append(str(p))
    out = tmp_path / "out"
    assert main(["stats", "one-sample", "--maps", *files, "--n-perm", "50", "--variance-smoothing", "6",
                 "--quiet", "-o", str(out)]) == 0
    s = json.loads((out / "stats.json").read_text())
    assert s["variance_smoothing_fwhm_mm"] == 6.0 and "pseudo-t" in s["statistic"]
    assert len(s["variance_smoothing_sigma_vox"]) == 3
    bad = tmp_path / "bad"
    capsys.readouterr()
    assert main(["stats", "one-sample", "--maps", *files, "--variance-smoothing", "-2", "--quiet",
                 "-o", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--variance-smoothing" in err[0]
    assert not bad.exists()
