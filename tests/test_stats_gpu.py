"""The CuPy path of the permutation engine (on the cupy stand-in) gives the NumPy path's results."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_shim import fake_cupy
from scipy import ndimage

from voxelkit.backend import NUMPY
from voxelkit.io import Masker
from voxelkit.stats import Design, permutation_test
from voxelkit.stats.design import one_sample_design

SHAPE = (8, 9, 7)


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = np.stack([ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1) for _ in range(n)])
    x[:, 2:5, 2:5, 2:5] += 0.7
    return x.reshape(n, -1)


@pytest.mark.kernels
@pytest.mark.parametrize("kind", ["one_sample", "glm"])
def test_gpu_path_matches_numpy(fake_gpu, kind):
    n = 10
    y = _data(n)
    mk = Masker(np.ones(SHAPE, bool), np.eye(4))
    if kind == "one_sample":
        design = one_sample_design(n)
    else:
        rng = np.random.default_rng(1)
        design = Design(np.c_[np.ones(n), rng.standard_normal(n), rng.standard_normal(n)], [0, 1, 0])
    kw = dict(n_perm=64, seed=2, two_sided=True, cluster_t=2.0, tfce=True, batch_size=20)
    cpu = permutation_test(y, mk, design, device=NUMPY, **kw)
    fake_cupy.reset_stats()
    gpu = permutation_test(y, mk, design, device=fake_gpu, **kw)
    assert gpu.settings["backend"] == "cupy"
    # the fused exceedance-count kernel ran once per batch (64 permutations in batches of 20)
    names = [name for name, _, _ in fake_cupy.LAUNCHES]
    kernel = "stats_exceed_count_" + ("f32" if kind == "one_sample" else "f64")
    assert names.count(kernel) == 4
    for k in cpu.maps:
        np.testing.assert_allclose(gpu.maps[k], cpu.maps[k], rtol=1e-5, atol=1e-5, err_msg=k)
    for k in ("h0_max_t", "h0_max_cluster_extent", "h0_max_cluster_mass", "h0_max_tfce"):
        np.testing.assert_allclose(gpu.null[k], cpu.null[k], rtol=1e-5, err_msg=k)
