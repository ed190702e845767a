"""The GPU code path end to end (images in, maps out) on the cupy stand-in, against the NumPy path.

Each fit goes through ``voxelkit.fit`` with ``device=<fake GPU backend>``: host-to-device transfers, chunking,
kernel launches through the CPU shim, device-to-host copies, and must give the NumPy path's maps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import voxelkit

MODELS = {
    "logan": {"tstar": 20.0, "k2prime": 0.1},
    "mrtm": {},
    "mrtm2": {"k2prime": 0.1},
    "srtm": {},
    "srtm2": {"k2prime": 0.1},
}


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> tuple[Path, Path, Path]:
    from voxelkit.simulate.study import simulate_study

    root = tmp_path_factory.mktemp("gpu") / "bids"
    res = simulate_study(root, preset="test", n_subjects=5, noise=0.05, seed=11, challenge="none")
    deriv = res.derivatives
    ref = next(deriv.glob("*desc-reference_mask.nii.gz"))
    brain = next(deriv.glob("*desc-brain_mask.nii.gz"))
    return res.pet_files[0], ref, brain


@pytest.mark.kernels
@pytest.mark.parametrize("model", list(MODELS))
def test_fit_image_gpu_path_equals_numpy(fake_gpu, scan, model):
    from cuda_shim import fake_cupy

    pet, ref, brain = scan
    cpu = voxelkit.fit(pet, reference=ref, model=model, mask=brain, device="cpu", **MODELS[model])
    fake_cupy.LAUNCHES.clear()
    gpu = voxelkit.fit(pet, reference=ref, model=model, mask=brain, device=fake_gpu, chunk_voxels=4099,
                       **MODELS[model])
    assert gpu.backend == "cupy" and cpu.backend == "numpy"
    assert fake_cupy.LAUNCHES, "the GPU path launched no kernel"
    assert cpu.n > 4099  # several chunks, the last one partial
    np.testing.assert_array_equal(gpu.status, cpu.status)
    for k in cpu.params:
        np.testing.assert_allclose(gpu.params[k], cpu.params[k], rtol=2e-4, atol=2e-5, equal_nan=True, err_msg=k)
    ok = cpu.status == 0
    assert ok.mean() > 0.9 and np.isfinite(cpu.bp_nd[ok]).all()


@pytest.mark.kernels
def test_paired_stats_gpu_path_equals_numpy(fake_gpu, tmp_path):
    from voxelkit.io import Masker
    from voxelkit.stats import one_sample_design, permutation_test

    rng = np.random.default_rng(5)
    mask = np.zeros((12, 14, 10), bool)
    mask[2:10, 2:12, 2:8] = True
    masker = Masker(mask, np.diag([2.0, 2.0, 2.0, 1.0]))
    d = rng.standard_normal((8, masker.n_voxels))
    d[:, :60] += 1.0
    kw = dict(n_perm=256, two_sided=True, cluster_p=0.01, tfce=True, seed=2)
    cpu = permutation_test(d, masker, one_sample_design(8, kind="paired"), device="cpu", **kw)
    gpu = permutation_test(d, masker, one_sample_design(8, kind="paired"), device=fake_gpu, **kw)
    for name in cpu.maps:
        np.testing.assert_allclose(gpu.maps[name], cpu.maps[name], rtol=1e-4, atol=1e-5, err_msg=name)
    for key in cpu.null:
        np.testing.assert_allclose(gpu.null[key], cpu.null[key], rtol=1e-4, atol=1e-5, err_msg=key)
