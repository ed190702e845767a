"""TFCE and cluster null maxima on the device (voxelkit/stats/device_null.py, kernels/stats_tfce.cu,
kernels/stats_clusters.cu) against the host implementations (numba TFCE, cc3d clusters) and against the slow
SciPy references, through the CPU shim on the cupy stand-in."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_shim import fake_cupy
from scipy import ndimage

from voxelkit import backend as vk_backend
from voxelkit.backend import NUMPY
from voxelkit.io import Masker
from voxelkit.stats import Design, device_null, permutation_test
from voxelkit.stats.clusters import batch_cluster_max, cluster_max_reference
from voxelkit.stats.design import one_sample_design
from voxelkit.stats.device_null import DeviceNull, bytes_per_cell, gpu_batch_size
from voxelkit.stats.tfce import make_grid, tfce_max, tfce_reference

pytestmark = pytest.mark.kernels

SHAPE = (9, 8, 7)


def _mask(seed: int = 0) -> np.ndarray:
    """An irregular mask with holes and a detached island (neighbour tables with -1 entries)."""
    rng = np.random.default_rng(seed)
    m = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1.0) > -0.3
    m[0, 0, 0] = True
    m[1, 1, 1] = False
    return m


def _maps(b: int, V: int, mask: np.ndarray, seed: int = 1, ties: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vols = np.stack([ndimage.gaussian_filter(rng.standard_normal(mask.shape), 1.0) for _ in range(b)]) * 3.0
    x = vols[:, mask]
    if ties:
        x = np.round(x, 1)  # many equal values
    x[0] = -np.abs(x[0])     # a map without a positive voxel
    return x.astype(np.float32)


def _ident(x):
    return x


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("two_sided", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_device_tfce_matches_numba_and_reference(fake_gpu, connectivity, two_sided, ties):
    mask = _mask()
    V = int(mask.sum())
    maps = _maps(40, V, mask, ties=ties)
    dn = DeviceNull(fake_gpu, mask, connectivity, 40, None, None, True, 2.0, 0.5, two_sided)
    fake_cupy.LAUNCHES.clear()
    got = dn.batch(fake_gpu.asarray(maps), _ident)["tfce"]
    assert [n for n, _, _ in fake_cupy.LAUNCHES] == ["stats_tfce_max"]
    want = tfce_max(maps, make_grid(mask, connectivity), 2.0, 0.5, two_sided)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    assert (got[0] > 0) if two_sided else (got[0] == 0.0)   # map 0 has no positive voxel
    # independent reference (labelling at every level with scipy.ndimage) for a few maps
    for j in (1, 2, 7):
        vol = np.zeros(mask.shape)
        vol[mask] = maps[j].astype(np.float64)
        ref = tfce_reference(vol, connectivity=connectivity).max()
        if two_sided:
            ref = max(ref, tfce_reference(-vol, connectivity=connectivity).max())
        np.testing.assert_allclose(got[j], ref, rtol=1e-9)


@pytest.mark.parametrize("connectivity", [6, 26])
@pytest.mark.parametrize("two_sided", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_device_clusters_match_cc3d_and_reference(fake_gpu, connectivity, two_sided, dtype):
    mask = _mask(3)
    V = int(mask.sum())
    maps = _maps(33, V, mask, seed=4).astype(dtype)
    thr = 1.2
    dn = DeviceNull(fake_gpu, mask, connectivity, 33, thr, thr, False, 2.0, 0.5, two_sided)
    got = dn.batch(fake_gpu.asarray(maps), _ident)
    st = np.abs(maps) if two_sided else maps
    rows, vox = np.nonzero(st > thr)
    ext, mass = batch_cluster_max(rows, vox, maps[rows, vox], thr, 33, mask, connectivity)
    np.testing.assert_array_equal(got["extent"], ext)
    np.testing.assert_allclose(got["mass"], mass, rtol=1e-12, atol=1e-12)
    assert got["extent"].max() > 5 and (got["extent"] == 0).any() == (ext == 0).any()
    for j in (1, 5, 9):
        vol = np.zeros(mask.shape)
        vol[mask] = maps[j].astype(np.float64)
        e, m = cluster_max_reference(vol, thr, mask, connectivity)
        if two_sided:
            e2, m2 = cluster_max_reference(-vol, thr, mask, connectivity)
            e, m = max(e, e2), max(m, m2)
        assert got["extent"][j] == e
        np.testing.assert_allclose(got["mass"][j], m, rtol=1e-6)


def test_work_arrays_are_reused_across_batches(fake_gpu):
    """Smaller later batches reuse the (poisoned, then used) work arrays of the first: same results."""
    mask = _mask(5)
    V = int(mask.sum())
    maps = _maps(30, V, mask, seed=6)
    dn = DeviceNull(fake_gpu, mask, 26, 30, 1.0, 1.0, True, 2.0, 0.5, True)
    parts = [dn.batch(fake_gpu.asarray(maps[sl]), _ident) for sl in (slice(0, 30), slice(0, 7), slice(7, 30))]
    fresh = DeviceNull(fake_gpu, mask, 26, 30, 1.0, 1.0, True, 2.0, 0.5, True).batch(fake_gpu.asarray(maps), _ident)
    for k in ("extent", "mass", "tfce"):
        np.testing.assert_array_equal(parts[0][k], fresh[k])
        np.testing.assert_array_equal(np.concatenate([parts[1][k], parts[2][k]]), fresh[k])


def _data(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.stack([ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1) for _ in range(n)])
    x[:, 2:5, 2:5, 2:5] += 0.7
    return x.reshape(n, -1)


@pytest.mark.parametrize("kind", ["one_sample", "one_sided", "glm"])
def test_engine_gpu_nulls_on_device_equal_numpy(fake_gpu, monkeypatch, kind):
    """The engine's GPU path with TFCE and clusters: the nulls of the NumPy engine, and no batch of maps is
    copied to the host (only per-permutation maxima, the final counts and small design arrays)."""
    n = 10
    y = _data(n)
    mask = np.ones(SHAPE, bool)
    mask[0, :, :3] = False
    y = y[:, mask.reshape(-1)]
    mk = Masker(mask, np.eye(4))
    if kind == "glm":
        rng = np.random.default_rng(1)
        design = Design(np.c_[np.ones(n), rng.standard_normal(n), rng.standard_normal(n)], [0, 1, 0])
    else:
        design = one_sample_design(n)
    kw = dict(n_perm=50, seed=2, two_sided=kind != "one_sided", cluster_t=2.0, tfce=True, batch_size=16)
    cpu = permutation_test(y, mk, design, device=NUMPY, **kw)
    sizes: list[int] = []
    orig = vk_backend.Backend.to_host

    def to_host(self, a):
        out = orig(self, a)
        if self.is_gpu:
            sizes.append(int(np.asarray(out).size))
        return out

    monkeypatch.setattr(vk_backend.Backend, "to_host", to_host)
    fake_cupy.reset_stats()
    gpu = permutation_test(y, mk, design, device=fake_gpu, **kw)
    names = [name for name, _, _ in fake_cupy.LAUNCHES]
    suffix = "f64" if kind == "glm" else "f32"
    assert names.count("stats_tfce_max") == 4 and names.count(f"stats_cluster_max_{suffix}") == 4
    V = int(mask.sum())
    assert sizes and max(sizes) <= V  # never a (batch x voxels) array: only maxima, counts
    for k in ("h0_max_t", "h0_max_cluster_extent", "h0_max_cluster_mass", "h0_max_tfce"):
        np.testing.assert_allclose(gpu.null[k], cpu.null[k], rtol=1e-5, err_msg=k)
    np.testing.assert_array_equal(gpu.null["h0_max_cluster_extent"], cpu.null["h0_max_cluster_extent"])
    for k in cpu.maps:
        np.testing.assert_allclose(gpu.maps[k], cpu.maps[k], rtol=1e-5, atol=1e-5, err_msg=k)


def _set_free(monkeypatch, nbytes: int) -> None:
    monkeypatch.setattr(device_null, "free_memory", lambda be: int(nbytes))


def test_free_memory_is_the_devices(fake_gpu):
    pool = fake_gpu.xp.get_default_memory_pool()
    cached = pool.total_bytes() - pool.used_bytes()
    assert device_null.free_memory(fake_gpu) == int(fake_gpu.xp.cuda.Device().mem_info[0]) + cached > 0


def test_default_gpu_batch_follows_free_memory(fake_gpu, monkeypatch):
    V = 1000
    per = V * bytes_per_cell(True, True, 4)
    _set_free(monkeypatch, 100 * per)
    assert gpu_batch_size(fake_gpu, V, 10_000, True, True, 4) == 40   # 0.4 x free
    assert gpu_batch_size(fake_gpu, V, 25, True, True, 4) == 25
    _set_free(monkeypatch, 10**15)
    assert gpu_batch_size(fake_gpu, V, 10**6, True, False, 4) == device_null.MAX_GPU_BATCH
    _set_free(monkeypatch, 1)
    assert gpu_batch_size(fake_gpu, V, 100, False, True, 8) == 1
    assert bytes_per_cell(True, True, 8) > bytes_per_cell(True, False, 8) > bytes_per_cell(False, False, 8)


def test_engine_default_gpu_batch_is_the_device_batch(fake_gpu, monkeypatch):
    n = 8
    y = _data(n, 3)
    mk = Masker(np.ones(SHAPE, bool), np.eye(4))
    V = y.shape[1]
    _set_free(monkeypatch, 30 * V * bytes_per_cell(True, False, 4) * 5 // 2)  # 0.4 x that: 30 permutations
    fake_cupy.LAUNCHES.clear()
    res = permutation_test(y, mk, one_sample_design(n), device=fake_gpu, n_perm=100, seed=1, tfce=True,
                           cluster_p=None)
    names = [name for name, _, _ in fake_cupy.LAUNCHES]
    assert names.count("stats_tfce_max") == 4   # 100 permutations in batches of 30
    cpu = permutation_test(y, mk, one_sample_design(n), device=NUMPY, n_perm=100, seed=1, tfce=True, cluster_p=None)
    np.testing.assert_allclose(res.null["h0_max_tfce"], cpu.null["h0_max_tfce"], rtol=1e-5)
