"""Speed paths of the permutation engine (issue 13 item 5) against independent references: the fused one-sample
block (reused buffers, in-place |.|, uint8 counts), sparse cluster labelling of null maps, the t quantile without
SciPy and the cluster table's local maxima without scipy.ndimage."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.special import stdtrit

from voxelkit.backend import NUMPY
from voxelkit.io import Masker
from voxelkit.stats import Design, permutation_test
from voxelkit.stats import clusters as C
from voxelkit.stats.inference import t_isf, t_sf

SHAPE = (9, 10, 8)
AFF = np.diag([2.0, 2.0, 2.0, 1.0])


@pytest.mark.parametrize("df", [1, 2, 5, 11, 14, 30, 200, 5000])
def test_t_quantile_equals_scipy(df):
    for p in (0.45, 0.2, 0.05, 0.01, 0.005, 0.001, 1e-4, 1e-6, 1e-9, 1e-12):
        want = -float(stdtrit(df, p))          # lower-tail form: no 1 - p rounding
        np.testing.assert_allclose(t_isf(p, df), want, rtol=1e-9)
        np.testing.assert_allclose(t_sf(t_isf(p, df), df), p, rtol=1e-9)
        if p >= 1e-6:   # 1 - p is exact enough
            np.testing.assert_allclose(t_isf(1 - p, df), -want, rtol=1e-7)
    assert t_isf(0.5, df) == 0.0
    with pytest.raises(ValueError):
        t_isf(0.0, df)


def _smooth_maps(n, mask, seed):
    rng = np.random.default_rng(seed)
    maps = np.stack([ndimage.gaussian_filter(rng.standard_normal(mask.shape), 1.0)[mask] for _ in range(n)])
    return maps / maps.std()


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("thr", [2.8, 1.5])
def test_sparse_and_dense_cluster_labelling_agree_with_reference(connectivity, thr):
    mask = np.ones(SHAPE, bool)
    mask[0] = False
    mask[:, :, -1] = False
    mask[4, 3:6, :] = False
    maps = _smooth_maps(24, mask, seed=connectivity)
    rows, vox = np.nonzero(np.abs(maps) > thr)
    tv = maps[rows, vox]
    out = [f(rows, vox, tv, thr, mask, connectivity, np.zeros(24), np.zeros(24))
           for f in (C._batch_sparse, C._batch_dense)]
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])                 # same summation order: bit for bit
    ext, mass = C.batch_cluster_max(rows, vox, tv, thr, 24, mask, connectivity)
    np.testing.assert_array_equal(ext, out[0][0])
    for j in range(0, 24, 5):
        vol = np.zeros(mask.shape)
        vol[mask] = maps[j]
        e1, m1 = C.cluster_max_reference(vol, thr, mask, connectivity)
        e2, m2 = C.cluster_max_reference(-vol, thr, mask, connectivity)
        assert ext[j] == max(e1, e2)
        np.testing.assert_allclose(mass[j], max(m1, m2), rtol=1e-12)
    assert ext.max() > 3


def test_components_equal_scipy_connected_components():
    rng = np.random.default_rng(5)
    for n, m in ((1, 0), (50, 30), (400, 380), (1000, 2500)):
        i = rng.integers(0, n, m)
        j = rng.integers(0, n, m)
        lab = C._components(n, i, j)
        k, ref = connected_components(coo_matrix((np.ones(m), (i, j)), shape=(n, n)), directed=False)
        assert len(np.unique(lab)) == k
        # same partition: a bijection between the two labellings, and each label is its component's smallest node
        pairs = np.unique(np.c_[lab, ref], axis=0)
        assert len(pairs) == k
        assert np.all(lab <= np.arange(n)) and np.all(lab[lab] == lab)


def test_max_filter_and_local_maxima_equal_ndimage():
    rng = np.random.default_rng(2)
    for shp in ((6, 7, 5), (1, 3, 1), (4, 1, 6)):
        a = rng.standard_normal(shp)
        a[a < -1] = -np.inf
        np.testing.assert_array_equal(C._max_filter3(a), ndimage.maximum_filter(a, size=3, mode="constant",
                                                                             cval=-np.inf))
    stat = ndimage.gaussian_filter(rng.standard_normal((14, 15, 12)), 1.2) * 6
    labels, ext, _ = C.label_clusters(stat, 1.0, np.ones(stat.shape, bool), 26)
    for k in range(1, min(len(ext), 6)):
        sel = labels == k
        vals = np.where(sel, stat, -np.inf)
        sl = ndimage.find_objects(sel.astype(np.int32))[0]
        sub = vals[sl]
        is_max = (sub == ndimage.maximum_filter(sub, size=3, mode="constant", cval=-np.inf)) & np.isfinite(sub)
        cand = np.argwhere(is_max) + np.array([s.start for s in sl])
        best = tuple(int(x) for x in cand[np.argmax(stat[tuple(cand.T)])])
        peaks = C.local_maxima(stat, labels, k, AFF)
        assert peaks[0] == best and all(sel[p] for p in peaks)
        assert {tuple(int(x) for x in c) for c in cand} >= set(peaks)


@pytest.mark.parametrize("two_sided", [False, True])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_one_sample_block_equals_brute_force(two_sided, sign):
    """Counts, max-T and cluster maxima of the fused one-sample path against plain float64 NumPy over every flip
    (the contrast sign -1 exercises the sign folded into the flip rows)."""
    mask = np.ones(SHAPE, bool)
    n = 9
    rng = np.random.default_rng(11)
    y3 = np.stack([ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1.0) for _ in range(n)]) + 0.3
    y = y3[:, mask]
    d = Design(np.ones((n, 1)), np.array([sign]), method="flip", kind="one_sample")
    r = permutation_test(y, Masker(mask, AFF), d, n_perm=2 ** n, two_sided=two_sided, tfce=False, cluster_t=2.5,
                         batch_size=50, device=NUMPY)
    flips = r.null["sign_flips"].astype(np.float64)
    assert flips.shape[0] == 2 ** n
    ys = flips[:, :, None] * y[None]
    t = sign * ys.mean(1) / (ys.std(1, ddof=1) / np.sqrt(n))
    st = np.abs(t) if two_sided else t
    np.testing.assert_allclose(r.maps["t"], t[0], rtol=1e-6)
    np.testing.assert_allclose(r.null["h0_max_t"], st.max(1), rtol=1e-5, atol=1e-5)   # float32 products
    p_unc = (st >= st[0] - 1e-5 * np.abs(st[0])).mean(0)
    np.testing.assert_allclose(10 ** -np.abs(r.maps["logp_uncorrected"]), p_unc, rtol=1e-5)
    ext = np.zeros(len(t))
    for k in range(len(t)):
        vol = np.zeros(SHAPE)
        vol[mask] = t[k]
        e = C.cluster_max_reference(vol, 2.5, mask, 26)[0]
        if two_sided:
            e = max(e, C.cluster_max_reference(-vol, 2.5, mask, 26)[0])
        ext[k] = e
    np.testing.assert_array_equal(r.null["h0_max_cluster_extent"], ext)
