"""Agreement with nilearn's permuted_ols where both define the same quantity.

The random sign flips differ, so max-T / cluster FWE p-values can only agree within Monte Carlo error; the t map
is identical.  (nilearn's TFCE uses 100 threshold steps without the step width, so it is on another scale than
the exact integral and is not compared.)"""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage, stats

from voxelkit.io import Masker
from voxelkit.stats import permutation_test
from voxelkit.stats.design import one_sample_design

SHAPE = (10, 10, 8)


@pytest.mark.slow
def test_against_permuted_ols():
    from nilearn.maskers import NiftiMasker  # noqa: PLC0415
    from nilearn.mass_univariate import permuted_ols  # noqa: PLC0415

    rng = np.random.default_rng(0)
    n = 12
    x = np.stack([ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1.0) for _ in range(n)])
    x /= x.std()
    x[:, 3:6, 3:6, 2:5] += 0.45
    mask = np.ones(SHAPE, bool)
    aff = np.eye(4)
    nmask = NiftiMasker(nib.Nifti1Image(mask.astype(np.uint8), aff)).fit()
    d = x.reshape(n, -1)
    N = 1000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = permuted_ols(np.ones((n, 1)), d, model_intercept=False, n_perm=N - 1, two_sided_test=True,
                           random_state=0, n_jobs=1, masker=nmask, threshold=0.01, output_type="dict")
    ours = permutation_test(d, Masker(mask, aff), one_sample_design(n), n_perm=N, two_sided=True, seed=0,
                            cluster_p=0.01, connectivity=6)
    np.testing.assert_allclose(ours.maps["t"], ref["t"].ravel(), rtol=1e-4, atol=1e-5)
    # FWE voxel p within Monte Carlo error (two independent sets of 1000 flips)
    p_ref = 10 ** -ref["logp_max_t"].ravel()
    p_vk = 10 ** -np.abs(ours.maps["logp_fwe_voxel"])
    se = np.sqrt(2 * np.maximum(p_ref * (1 - p_ref), 1 / N) / N)
    assert np.all(np.abs(p_vk - p_ref) <= 5 * se + 2 / N)
    # null distributions of max |t| and of max cluster size (p < 0.01, 6-connectivity) agree
    assert stats.ks_2samp(ours.null["h0_max_t"][1:], ref["h0_max_t"].ravel()).pvalue > 1e-3
    assert stats.ks_2samp(ours.null["h0_max_cluster_extent"][1:], ref["h0_max_size"].ravel()).pvalue > 1e-3
    assert stats.ks_2samp(ours.null["h0_max_cluster_mass"][1:], ref["h0_max_mass"].ravel()).pvalue > 1e-3
    # same cluster-forming threshold in t units
    assert ours.settings["cluster_threshold_t"] == pytest.approx(stats.t.isf(0.005, n - 1))
