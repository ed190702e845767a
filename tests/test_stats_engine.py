"""voxelkit.stats: t statistics, exact/brute-force permutation p-values (max-T, clusters, TFCE), GLM."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, stats

from voxelkit.io import Masker
from voxelkit.stats import Design, fdr_bh, fwe_p, fwe_threshold, permutation_test
from voxelkit.stats.clusters import cluster_max_reference
from voxelkit.stats.design import one_sample_design, two_sample_design
from voxelkit.stats.tfce import tfce_reference

SHAPE = (9, 10, 8)


def _smooth(rng, n, shape=SHAPE, sigma=1.0, effect=0.0):
    x = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sigma) for _ in range(n)])
    x /= x.std()
    if effect:
        x[:, 2:5, 3:6, 2:5] += effect
    return x


def _masker(shape=SHAPE, mask=None):
    m = np.ones(shape, bool) if mask is None else mask
    return Masker(m, np.diag([2.0, 2.0, 2.0, 1.0]))


def test_t_equals_scipy_one_sample_and_paired():
    rng = np.random.default_rng(0)
    a = _smooth(rng, 8, effect=0.5)
    b = _smooth(rng, 8)
    mk = _masker()
    r = permutation_test((a - b).reshape(8, -1), mk, one_sample_design(8), n_perm=50)
    ref = stats.ttest_rel(a.reshape(8, -1), b.reshape(8, -1)).statistic
    np.testing.assert_allclose(r.maps["t"], ref, rtol=1e-5, atol=1e-5)
    r1 = permutation_test(a.reshape(8, -1), mk, one_sample_design(8), n_perm=50)
    np.testing.assert_allclose(r1.maps["t"], stats.ttest_1samp(a.reshape(8, -1), 0).statistic, rtol=1e-5)


def test_t_equals_scipy_two_sample_and_ols_glm():
    rng = np.random.default_rng(1)
    y = _smooth(rng, 12).reshape(12, -1)
    mk = _masker()
    r = permutation_test(y, mk, two_sample_design(5, 7), n_perm=50)
    np.testing.assert_allclose(r.maps["t"], stats.ttest_ind(y[:5], y[5:]).statistic, rtol=1e-5, atol=1e-5)
    # OLS GLM with two covariates, contrast on the second
    X = np.c_[np.ones(12), rng.standard_normal(12), rng.standard_normal(12)]
    c = np.array([0.0, 0.0, 1.0])
    r = permutation_test(y, mk, Design(X, c), n_perm=50)
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    res = y - X @ beta
    s2 = (res ** 2).sum(0) / (12 - 3)
    t = (c @ beta) / np.sqrt(s2 * (c @ np.linalg.inv(X.T @ X) @ c))
    np.testing.assert_allclose(r.maps["t"], t, rtol=1e-5, atol=1e-6)


def _brute_force_sign_flip(d, signs, two_sided, mask, thr=None, tfce=False, conn=26):
    """Per-permutation t maps with scipy, then max-T / cluster / TFCE maxima, all slow and independent."""
    out = {"max_t": [], "ext": [], "mass": [], "tfce": []}
    for s in signs:
        t = stats.ttest_1samp(d * s[:, None], 0).statistic
        t3 = np.zeros(mask.shape)
        t3[mask] = t
        out["max_t"].append(np.abs(t).max() if two_sided else t.max())
        if thr is not None:
            e = m = 0.0
            for sg in ((1, -1) if two_sided else (1,)):
                ee, mm = cluster_max_reference(sg * t3, thr, mask, conn)
                e, m = max(e, ee), max(m, mm)
            out["ext"].append(e)
            out["mass"].append(m)
        if tfce:
            tf = tfce_reference(np.where(mask, t3, 0), connectivity=conn)
            if two_sided:
                tf = np.maximum(tf, tfce_reference(np.where(mask, -t3, 0), connectivity=conn))
            out["tfce"].append(tf.max())
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize("two_sided", [False, True])
def test_exhaustive_exact_p_and_brute_force_nulls(two_sided):
    rng = np.random.default_rng(2)
    shape = (7, 6, 5)
    mask = np.ones(shape, bool)
    mask[0, 0, :] = False
    d = _smooth(rng, 6, shape=shape, effect=0.8)[:, mask]
    r = permutation_test(d, _masker(shape, mask), one_sample_design(6), n_perm=100, two_sided=two_sided,
                         cluster_t=2.0, tfce=True, connectivity=6)
    assert r.settings["exhaustive"] and r.settings["n_perm"] == 64
    signs = r.null["sign_flips"].astype(float)
    assert np.all(signs[0] == 1) and len(np.unique(signs, axis=0)) == 64
    # exact uncorrected p: fraction of all 64 flips with t >= observed
    tp = np.stack([stats.ttest_1samp(d * s[:, None], 0).statistic for s in signs])
    t0 = tp[0]
    st, s0 = (np.abs(tp), np.abs(t0)) if two_sided else (tp, t0)
    p_exact = (st >= s0 - 1e-9).mean(0)
    p_vk = 10 ** -np.abs(r.maps["logp_uncorrected"])
    np.testing.assert_allclose(p_vk, p_exact, rtol=1e-5)
    bf = _brute_force_sign_flip(d, signs, two_sided, mask, thr=2.0, tfce=True, conn=6)
    np.testing.assert_allclose(r.null["h0_max_t"], bf["max_t"], rtol=1e-5)
    np.testing.assert_allclose(r.null["h0_max_cluster_extent"], bf["ext"])
    np.testing.assert_allclose(r.null["h0_max_cluster_mass"], bf["mass"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(r.null["h0_max_tfce"], bf["tfce"], rtol=1e-4)
    # FWE voxel p equals the brute-force fraction of max-T >= |t|
    p_fwe = (bf["max_t"][None, :] >= (np.abs(t0) if two_sided else t0)[:, None] - 1e-6).mean(1)
    np.testing.assert_allclose(10 ** -np.abs(r.maps["logp_fwe_voxel"]), p_fwe, rtol=1e-6)
    # TFCE FWE p
    tf_obs = np.abs(r.maps["tfce"])
    p_tf = (bf["tfce"][None, :] >= tf_obs[:, None] * (1 - 1e-6)).mean(1)
    np.testing.assert_allclose(10 ** -np.abs(r.maps["logp_fwe_tfce"]), p_tf, rtol=1e-6)


def test_random_flips_brute_force_clusters_26():
    rng = np.random.default_rng(3)
    d = _smooth(rng, 10, effect=0.6).reshape(10, -1)
    mask = np.ones(SHAPE, bool)
    r = permutation_test(d, _masker(), one_sample_design(10), n_perm=60, cluster_p=0.01, tfce=True, seed=5,
                         two_sided=True, batch_size=16)
    signs = r.null["sign_flips"].astype(float)
    assert not r.settings["exhaustive"] and signs.shape == (60, 10)
    assert len(np.unique(signs, axis=0)) == 60 and np.all(signs[0] == 1)
    thr = r.settings["cluster_threshold_t"]
    assert thr == pytest.approx(stats.t.isf(0.005, 9))
    bf = _brute_force_sign_flip(d, signs, True, mask, thr=thr, tfce=True, conn=26)
    np.testing.assert_allclose(r.null["h0_max_t"], bf["max_t"], rtol=1e-5)
    np.testing.assert_allclose(r.null["h0_max_cluster_extent"], bf["ext"])
    np.testing.assert_allclose(r.null["h0_max_cluster_mass"], bf["mass"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(r.null["h0_max_tfce"], bf["tfce"], rtol=1e-4)
    # the cluster table's p-values come from the same null
    rows = [c for c in r.clusters if c["sign"]]
    assert rows and rows[0]["p_fwe_extent"] == pytest.approx(fwe_p(np.array([rows[0]["size_voxels"]]),
                                                                   bf["ext"])[0])
    # same seed, same result; other seed, other flips
    r2 = permutation_test(d, _masker(), one_sample_design(10), n_perm=60, seed=5, two_sided=True)
    np.testing.assert_array_equal(r2.null["sign_flips"], r.null["sign_flips"])
    r3 = permutation_test(d, _masker(), one_sample_design(10), n_perm=60, seed=6, two_sided=True)
    assert not np.array_equal(r3.null["sign_flips"], r.null["sign_flips"])


def test_freedman_lane_glm_brute_force():
    rng = np.random.default_rng(4)
    n = 11
    y = _smooth(rng, n).reshape(n, -1) + 3.0
    X = np.c_[np.ones(n), rng.standard_normal(n), rng.integers(0, 2, n)]
    c = np.array([0.0, 1.0, 0.0])
    y += 0.5 * X[:, 2:3]  # nuisance effect
    d = Design(X, c, method="permute", kind="glm")
    r = permutation_test(y, _masker(), d, n_perm=40, seed=1, two_sided=True, cluster_t=2.5)
    orders = r.null["permutations"]
    Z = X[:, [0, 2]]
    Hz = Z @ np.linalg.pinv(Z)
    Rz = np.eye(n) - Hz
    mask = np.ones(SHAPE, bool)
    maxt, ext = [], []
    for o in orders:
        ys = (Rz @ y)[o] + Hz @ y
        beta = np.linalg.lstsq(X, ys, rcond=None)[0]
        res = ys - X @ beta
        t = (c @ beta) / np.sqrt((res ** 2).sum(0) / (n - 3) * (c @ np.linalg.inv(X.T @ X) @ c))
        maxt.append(np.abs(t).max())
        t3 = t.reshape(SHAPE)
        ext.append(max(cluster_max_reference(t3, 2.5, mask, 26)[0], cluster_max_reference(-t3, 2.5, mask, 26)[0]))
    np.testing.assert_allclose(r.null["h0_max_t"], maxt, rtol=1e-8)
    np.testing.assert_allclose(r.null["h0_max_cluster_extent"], ext)
    # sign-flip variant runs and gives the same observed t
    r2 = permutation_test(y, _masker(), Design(X, c, method="flip"), n_perm=40, seed=1)
    np.testing.assert_allclose(r2.maps["t"], r.maps["t"], rtol=1e-6)


def test_constant_and_nonfinite_voxels_excluded():
    rng = np.random.default_rng(5)
    d = _smooth(rng, 8, effect=0.5).reshape(8, -1)
    ref = permutation_test(d, _masker(), one_sample_design(8), n_perm=64, seed=0, cluster_t=2.0)
    bad = d.copy()
    bad[:, 0] = 1.5          # constant
    bad[:, 5] = 0.0          # all zero
    bad[3, 7] = np.nan       # non-finite in one subject
    r = permutation_test(bad, _masker(), one_sample_design(8), n_perm=64, seed=0, cluster_t=2.0)
    assert r.settings["n_voxels_excluded_constant"] == 2
    assert r.settings["n_voxels_excluded_nonfinite"] == 1
    keep = np.ones(d.shape[1], bool)
    keep[[0, 5, 7]] = False
    assert np.all(r.maps["t"][~keep] == 0) and np.all(np.isfinite(r.maps["t"]))
    np.testing.assert_allclose(r.maps["t"][keep], ref.maps["t"][keep], rtol=1e-6)
    for k in ("logp_uncorrected", "logp_fwe_voxel"):
        assert np.all(np.isfinite(r.maps[k]))
    assert not r.analysed[[0, 5, 7]].any()


def test_fdr_and_thresholds():
    rng = np.random.default_rng(6)
    p = rng.random(500) ** 3
    np.testing.assert_allclose(fdr_bh(p), stats.false_discovery_control(p), rtol=1e-12)
    null = rng.standard_normal(1000)
    null[0] = 10
    thr = fwe_threshold(null, 0.05)
    assert fwe_p(np.array([thr]), null)[0] <= 0.05
    k_th = np.sort(null)[::-1][50]  # the 51st largest null maximum: p = 51/1000
    assert thr > k_th and fwe_p(np.array([k_th]), null)[0] == pytest.approx(0.051)


def test_min_p_is_one_over_n_perm_and_identity_counted():
    rng = np.random.default_rng(7)
    d = _smooth(rng, 12, effect=3.0).reshape(12, -1)
    r = permutation_test(d, _masker(), one_sample_design(12), n_perm=200, seed=0, tfce=True, cluster_t=3)
    for k in ("logp_uncorrected", "logp_fwe_voxel", "logp_fwe_tfce", "logp_fwe_cluster_extent"):
        assert r.maps[k].max() <= -np.log10(1 / 200) + 1e-5
    # the identity's entries of the nulls are the observed maxima
    assert r.null["h0_max_t"][0] == pytest.approx(r.maps["t"].max(), rel=1e-6)
    assert r.null["h0_max_tfce"][0] == pytest.approx(r.maps["tfce"].max(), rel=1e-6)
    assert r.null["h0_max_cluster_extent"][0] == max(c["size_voxels"] for c in r.clusters if c["sign"])
    assert r.maps["logp_fwe_voxel"].max() == pytest.approx(-np.log10((r.null["h0_max_t"] >= r.null[
        "h0_max_t"][0] * (1 - 1e-9)).mean()), rel=1e-5)


def test_tfce_null_same_with_one_or_more_threads():
    """The TFCE null and map do not depend on the thread count, bit for bit (rows are independent; the float32
    t maps themselves depend on the batch shape, so the batch size is fixed per comparison)."""
    from voxelkit.backend import get_backend
    from voxelkit.stats import engine

    rng = np.random.default_rng(11)
    d = _smooth(rng, 10, effect=0.5).reshape(10, -1)
    design = one_sample_design(10)
    prep = engine.prepare(d, design)
    from voxelkit.stats.design import make_permutation_set

    perms = make_permutation_set(design, 40, 3)
    mask = np.ones(SHAPE, bool)
    for bs in (None, 7):
        res = [engine.run(prep, perms, mask, get_backend("cpu"),
                          engine.EngineConfig(two_sided=True, tfce=True, threads=nt, batch_size=bs))
               for nt in (1, 2, 3)]
        for r in res[1:]:
            assert np.array_equal(r.h0_max_tfce, res[0].h0_max_tfce)
            assert np.array_equal(r.tfce, res[0].tfce)


def test_batch_parallel_threads_bit_identical():
    """Without TFCE the host runs whole batches in parallel threads, each adding its exceedance counts into its
    own array: max-T, cluster nulls and counts must not depend on the thread count or the batch size (random
    flips, and the exact enumeration with its sign-flip symmetry, one- and two-sided)."""
    from voxelkit.backend import get_backend
    from voxelkit.stats import engine
    from voxelkit.stats.design import make_permutation_set

    rng = np.random.default_rng(12)
    d = _smooth(rng, 10, effect=0.5).reshape(10, -1)
    design = one_sample_design(10)
    prep = engine.prepare(d, design)
    mask = np.ones(SHAPE, bool)
    for n_perm in (90, 10 ** 6):   # random flips; all 1,024 (exact, mirrored)
        perms = make_permutation_set(design, n_perm, 5)
        for two_sided in (True, False):
            runs = [engine.run(prep, perms, mask, get_backend("cpu"),
                               engine.EngineConfig(two_sided=two_sided, cluster_t=2.5, threads=nt, batch_size=bs))
                    for nt, bs in ((1, None), (2, None), (2, 7), (3, 16))]
            for r in runs[1:]:
                assert np.array_equal(r.count, runs[0].count)
                assert np.array_equal(r.h0_max_t, runs[0].h0_max_t)
                assert np.array_equal(r.h0_max_extent, runs[0].h0_max_extent)
                assert np.array_equal(r.h0_max_mass, runs[0].h0_max_mass)
            assert runs[0].count.sum() > 0 and runs[0].h0_max_extent.max() > 0


def test_tfce_warmup_keeps_gc_state():
    import gc

    from voxelkit.stats import engine

    before = gc.isenabled()
    engine.start_tfce_warmup()
    engine._warmup.join()
    assert gc.isenabled() == before
