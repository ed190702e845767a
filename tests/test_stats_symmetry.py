"""Exact sign-flip enumeration: the engine computes half of the maps (the map of -s is minus the map of s) and
gives the same nulls, counts and p-value maps as computing every map (``engine._SYMMETRY = False``), bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from voxelkit.io import Masker
from voxelkit.stats import Design, engine, permutation_test
from voxelkit.stats.blocks import block_permutation_set
from voxelkit.stats.contrasts import FDesign
from voxelkit.stats.design import make_permutation_set, one_sample_design, permutations, sign_flips
from voxelkit.stats.distributed import chunk_rows

SHAPE = (8, 9, 7)


def _data(n: int, seed: int, effect: float = 0.6, shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 1.0) for _ in range(n)])
    x /= x.std()
    x[:, 2:5, 3:6, 2:5] += effect        # a positive blob
    x[:, 5:7, 1:3, 3:6] -= 0.8 * effect  # and a negative one: both tails matter
    return x.reshape(n, -1)


def _mask(shape=SHAPE) -> np.ndarray:
    m = np.ones(shape, bool)
    m[0, 0, :] = False
    m[-1, :, 0] = False
    return m


class Counting:
    """Counts the permutation rows whose maps the engine computes (via ``engine._perm_rows``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.rows = 0
        orig = engine._perm_rows

        def counted(prep, perms, sl):
            G = orig(prep, perms, sl)
            self.rows += G.shape[0] // prep.Q.shape[1]
            return G

        monkeypatch.setattr(engine, "_perm_rows", counted)


def _both(monkeypatch: pytest.MonkeyPatch, fn):
    """(result with the symmetry, result computing every map, maps computed with, maps computed without)."""
    cnt = Counting(monkeypatch)
    monkeypatch.setattr(engine, "_SYMMETRY", True)
    a = fn()
    n_sym = cnt.rows
    cnt.rows = 0
    monkeypatch.setattr(engine, "_SYMMETRY", False)
    b = fn()
    return a, b, n_sym, cnt.rows


def _assert_engine_equal(a, b, nulls=("h0_max_t", "h0_max_tfce", "h0_max_extent", "h0_max_mass")) -> None:
    """Two engine results: exceedance counts and the named null distributions identical, bit for bit."""
    np.testing.assert_array_equal(a.count, b.count)
    for k in nulls:
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)


def _assert_same(a, b) -> None:
    assert set(a.null) == set(b.null) and set(a.maps) == set(b.maps)
    for k in a.null:
        x, y = np.asarray(a.null[k]), np.asarray(b.null[k])
        np.testing.assert_array_equal(x, y, err_msg=k)                       # same order, bit for bit
        if x.ndim == 1 and x.size > 2:
            np.testing.assert_array_equal(np.sort(x), np.sort(y), err_msg=k)  # (so the same multiset)
    for k in a.maps:
        np.testing.assert_array_equal(a.maps[k], b.maps[k], err_msg=k)
    assert [c["size_voxels"] for c in a.clusters] == [c["size_voxels"] for c in b.clusters]


def test_exact_enumeration_is_mirrored_and_random_sets_are_not():
    ex = sign_flips(9, 10000, np.random.default_rng(0))
    assert ex.exhaustive and ex.n_perm == 512 and ex.mirrored
    np.testing.assert_array_equal(ex.signs[::-1], -ex.signs)
    rnd = sign_flips(12, 1000, np.random.default_rng(0))
    assert not rnd.exhaustive and not rnd.mirrored
    assert not permutations(5, 1000, np.random.default_rng(0)).mirrored   # orders, not signs
    blk = block_permutation_set("flip", [0, 0, 1, 1, 2, 2, 3, 3], 1000, np.random.default_rng(0))
    assert blk.exhaustive and blk.mirrored and blk.n_perm == 16
    assert not block_permutation_set("permute", [0, 0, 1, 1, 2, 2], 1000, np.random.default_rng(0)).mirrored
    # a distributed task's chunk (led by identity rows) is not mirrored: it computes every map it holds
    sub, _ = chunk_rows(ex, 128, 256, 64)
    assert not sub.mirrored


@pytest.mark.parametrize("two_sided", [True, False])
@pytest.mark.parametrize("dtype", ["auto", "float64"])
def test_one_sample_tfce_clusters_same_as_every_map(monkeypatch, two_sided, dtype):
    n = 9
    mask = _mask()
    Y = _data(n, 1)[:, mask.ravel()]
    mk = Masker(mask, np.diag([2.0, 2.0, 2.0, 1.0]))

    def fn():
        return permutation_test(Y, mk, one_sample_design(n), n_perm=10000, two_sided=two_sided, cluster_p=0.01,
                                tfce=True, dtype=dtype, batch_size=64)

    a, b, n_sym, n_all = _both(monkeypatch, fn)
    assert a.settings["exhaustive"] and a.settings["n_perm"] == 512
    assert n_all == 512 and n_sym == 257      # half of the maps and the identity's partner
    _assert_same(a, b)
    if not two_sided:  # the one-sided nulls really use the other tail: not the |t| ones
        assert np.any(a.null["h0_max_t"] != np.abs(a.null["h0_max_t"][::-1]))
        assert np.any(a.null["h0_max_tfce"] > 0) and np.any(a.null["h0_max_cluster_mass"] > 0)


@pytest.mark.parametrize("two_sided", [True, False])
def test_paired_variance_smoothing_same_as_every_map(monkeypatch, two_sided):
    n = 8
    mask = _mask()
    Y = _data(n, 2)[:, mask.ravel()]
    mk = Masker(mask, np.diag([2.0, 2.0, 2.0, 1.0]))

    def fn():
        return permutation_test(Y, mk, one_sample_design(n, kind="paired"), n_perm=5000, two_sided=two_sided,
                                cluster_p=0.01, tfce=True, variance_smoothing=6.0)

    a, b, n_sym, n_all = _both(monkeypatch, fn)
    assert (n_sym, n_all) == (129, 256)
    _assert_same(a, b)


@pytest.mark.parametrize("two_sided", [True, False])
def test_glm_with_covariates_sign_flipping_same_as_every_map(monkeypatch, two_sided):
    n = 10
    rng = np.random.default_rng(3)
    mask = _mask()
    Y = _data(n, 3)[:, mask.ravel()]
    age = rng.normal(40, 10, n)
    sex = np.r_[np.ones(5), -np.ones(5)]
    X = np.c_[np.ones(n), age - age.mean(), sex]
    Y = Y + 0.05 * (age - age.mean())[:, None]
    mk = Masker(mask, np.diag([2.0, 2.0, 2.0, 1.0]))

    def fn():  # Freedman-Lane sign flipping of the residuals on the covariates (the nuisance space)
        return permutation_test(Y, mk, Design(X, np.array([1.0, 0.0, 0.0]), method="flip"), n_perm=2000,
                                two_sided=two_sided, cluster_p=0.01, tfce=True)

    a, b, n_sym, n_all = _both(monkeypatch, fn)
    assert a.settings["exhaustive"] and (n_sym, n_all) == (513, 1024)
    _assert_same(a, b)


def test_f_contrast_same_as_every_map(monkeypatch):
    n = 9
    rng = np.random.default_rng(4)
    mask = _mask()
    Y = _data(n, 4)[:, mask.ravel()]
    X = np.c_[np.ones(n), rng.standard_normal(n), rng.standard_normal(n)]
    mk = Masker(mask, np.diag([2.0, 2.0, 2.0, 1.0]))
    C = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])

    def fn():  # F is even in the sign vector: each computed map gives its partner the same values
        return permutation_test(Y, mk, FDesign(X, C, method="flip"), n_perm=1000, cluster_p=0.01, tfce=True)

    a, b, n_sym, n_all = _both(monkeypatch, fn)
    assert (n_sym, n_all) == (257, 512)
    _assert_same(a, b)


def test_whole_block_flips_same_as_every_map(monkeypatch):
    blocks = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]
    n = len(blocks)
    mask = _mask()
    Y = _data(n, 5)[:, mask.ravel()]
    mk = Masker(mask, np.diag([2.0, 2.0, 2.0, 1.0]))
    d = Design(np.ones((n, 1)), np.array([1.0]), method="flip", blocks=blocks)

    def fn():
        return permutation_test(Y, mk, d, n_perm=1000, two_sided=False, cluster_p=0.01, tfce=True)

    a, b, n_sym, n_all = _both(monkeypatch, fn)
    assert (n_sym, n_all) == (129, 256)
    _assert_same(a, b)


@pytest.mark.parametrize("two_sided", [True, False])
def test_engine_counts_and_nulls_equal_every_map(monkeypatch, two_sided):
    """The engine's own result: exceedance counts and every null, against the computation of every map, and the
    one-sided partner values against the map of -s computed directly."""
    n = 8
    mask = _mask()
    Y = _data(n, 6)[:, mask.ravel()]
    d = one_sample_design(n)
    prep = engine.prepare(Y, d)
    perms = make_permutation_set(d, 10000, 0)
    cfg = engine.EngineConfig(two_sided=two_sided, cluster_t=2.5, tfce=True, batch_size=32)
    monkeypatch.setattr(engine, "_SYMMETRY", True)
    a = engine.run(prep, perms, mask, engine._host_backend(), cfg)
    monkeypatch.setattr(engine, "_SYMMETRY", False)
    b = engine.run(prep, perms, mask, engine._host_backend(), cfg)
    assert (a.extra["maps_computed"], a.extra["sign_flip_symmetry"]) == (129, True)
    assert (b.extra["maps_computed"], b.extra["sign_flip_symmetry"]) == (256, False)
    _assert_engine_equal(a, b)
    # the uncorrected p counts the flips with (|)t(|) >= the observed one: check against explicit t maps
    t = np.stack([engine.PreparedDesign.t_from_U(prep, prep.Q.T @ (s[:, None] * prep.E)) for s in perms.signs])
    st = np.abs(t) if two_sided else t
    ref = (st >= st[0] - 1e-6 * (1 + np.abs(st[0]))).sum(axis=0)
    np.testing.assert_array_equal(a.count, ref)


def test_random_flips_unchanged(monkeypatch):
    """Random (non-exact) flips are computed one map each, as before."""
    n = 12
    mask = _mask()
    Y = _data(n, 7)[:, mask.ravel()]
    mk = Masker(mask, np.diag([2.0, 2.0, 2.0, 1.0]))

    def fn():
        return permutation_test(Y, mk, one_sample_design(n), n_perm=300, two_sided=True, tfce=True, seed=3)

    a, b, n_sym, n_all = _both(monkeypatch, fn)
    assert not a.settings["exhaustive"] and n_sym == n_all == 300
    _assert_same(a, b)


@pytest.mark.parametrize("connectivity", [6, 26])
def test_tfce_of_minus_t_is_the_other_tail_bit_for_bit_with_ties(connectivity):
    """max TFCE of -t equals the negative tail of t exactly, also with many tied values (the radix sort's tie
    order is symmetric); and the tails agree with the exact reference."""
    from voxelkit.stats.tfce import make_grid, tfce_max, tfce_max_tails, tfce_reference

    rng = np.random.default_rng(8)
    mask = _mask()
    grid = make_grid(mask, connectivity)
    sm = ndimage.gaussian_filter(rng.standard_normal((40, *mask.shape)), (0, 1.2, 1.2, 1.2))[:, mask]
    maps = np.round(sm / sm.std() * 4) / 4            # values on a 0.25 grid: many ties
    maps = np.concatenate([maps, np.round(sm / sm.std() * 40) / 40]).astype(np.float32)
    tails = tfce_max_tails(maps, grid, negative=True)
    flipped = tfce_max_tails(-maps, grid, negative=True)
    np.testing.assert_array_equal(flipped[:, 0], tails[:, 1])
    np.testing.assert_array_equal(flipped[:, 1], tails[:, 0])
    np.testing.assert_array_equal(tfce_max(maps, grid, two_sided=True), tfce_max(-maps, grid, two_sided=True))
    np.testing.assert_array_equal(tfce_max(maps, grid), tails[:, 0])
    np.testing.assert_array_equal(tfce_max_tails(maps, grid, negative=False)[:, 1], 0.0)
    for r in (0, 1, 45):
        vol = np.zeros(mask.shape)
        vol[mask] = maps[r]
        ref_pos = tfce_reference(np.where(mask, vol, 0), connectivity=connectivity).max()
        ref_neg = tfce_reference(np.where(mask, -vol, 0), connectivity=connectivity).max()
        np.testing.assert_allclose(tails[r], [ref_pos, ref_neg], rtol=1e-10)


def test_distributed_chunks_equal_the_symmetric_single_process_run():
    """The Dask path's tasks hold chunks of the permutation set (not mirrored: each computes its maps); the
    assembled nulls and counts equal the single-process run, which uses the symmetry, bit for bit."""
    from voxelkit.pipeline.scheduler import Scheduler
    from voxelkit.stats.distributed import run_distributed

    class InProcess(Scheduler):
        distributed = True
        name = "in-process"

    n = 9
    mask = _mask()
    Y = _data(n, 9)[:, mask.ravel()]
    d = one_sample_design(n)
    prep = engine.prepare(Y, d)
    perms = make_permutation_set(d, 10000, 0)
    be = engine._host_backend()
    for two_sided in (True, False):
        cfg = engine.EngineConfig(two_sided=two_sided, cluster_t=2.5, tfce=True)
        single = engine.run(prep, perms, mask, be, cfg)
        dist = run_distributed(prep, perms, mask, be, cfg, scheduler=InProcess(2), n_chunks=3)
        assert dist.extra["distributed_tasks"] == 3
        _assert_engine_equal(single, dist)
        np.testing.assert_array_equal(single.tfce, dist.tfce)


@pytest.mark.parametrize("two_sided", [True, False])
def test_device_path_computes_every_map_and_gives_the_same_nulls(monkeypatch, fake_gpu, two_sided):
    """On the device (cupy stand-in) the engine keeps computing every map of an exact enumeration (TFCE and
    clusters on the device); its nulls equal the host's symmetric ones to float rounding."""
    n = 8
    mask = _mask()
    Y = _data(n, 10)[:, mask.ravel()]
    mk = Masker(mask, np.diag([2.0, 2.0, 2.0, 1.0]))
    kw = dict(n_perm=1000, two_sided=two_sided, cluster_p=0.01, tfce=True, batch_size=64)
    cnt = Counting(monkeypatch)
    host = permutation_test(Y, mk, one_sample_design(n), device="cpu", **kw)
    assert cnt.rows == 129
    cnt.rows = 0
    dev = permutation_test(Y, mk, one_sample_design(n), device=fake_gpu, **kw)
    assert cnt.rows == 256
    for k in ("h0_max_t", "h0_max_cluster_extent", "h0_max_cluster_mass", "h0_max_tfce"):
        np.testing.assert_allclose(np.asarray(dev.null[k]), np.asarray(host.null[k]), rtol=2e-5, atol=1e-6,
                                   err_msg=k)
    np.testing.assert_array_equal(dev.maps["logp_uncorrected"], host.maps["logp_uncorrected"])


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5, 7, 64, 85, 128, 129, 300])
def test_batch_sizes_float64_one_regressor(monkeypatch, batch_size):
    """Every batch size (one-row batches, a last batch of one row joined to the one before, a single batch)
    gives the full computation's nulls and counts, also in float64 with one regressor (where BLAS rounds a
    one-row product differently)."""
    n = 8
    mask = _mask()
    Y = _data(n, 11)[:, mask.ravel()]
    d = one_sample_design(n)
    prep = engine.prepare(Y, d)
    perms = make_permutation_set(d, 10000, 0)
    rows, batches = engine._computed_rows(perms, batch_size, True)
    assert rows.size == 129 and [i for s in batches for i in range(s.start, s.stop)] == list(range(129))
    # one-row products exactly where the full computation (batches of batch_size over 256 rows) has them
    full_alone = {i for i in range(0, 256, batch_size) if min(256, i + batch_size) - i == 1}
    assert {int(rows[s.start]) for s in batches if s.stop - s.start == 1} == (
        set(range(129)) - {128} | {255} if batch_size == 1 else full_alone)
    res = []
    for sym in (True, False):
        monkeypatch.setattr(engine, "_SYMMETRY", sym)
        cfg = engine.EngineConfig(two_sided=False, cluster_t=2.0, batch_size=batch_size, dtype="float64")
        res.append(engine.run(prep, perms, mask, engine._host_backend(), cfg))
    _assert_engine_equal(res[0], res[1], ("h0_max_t", "h0_max_extent", "h0_max_mass"))
