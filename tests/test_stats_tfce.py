"""Exact TFCE: equals a plain NumPy/SciPy exact reference, is the limit of fine-step integration, has no step."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from voxelkit.stats.neighbors import offsets
from voxelkit.stats.tfce import make_grid, tfce_max, tfce_numeric, tfce_reference, tfce_signed, tfce_volume


def _vol(seed=0, shape=(10, 11, 9), sigma=1.5):
    rng = np.random.default_rng(seed)
    v = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return v / v.std()


@pytest.mark.parametrize("conn", [6, 18, 26])
def test_exact_equals_reference(conn):
    v = _vol(1)
    np.testing.assert_allclose(tfce_volume(v, connectivity=conn), tfce_reference(v, connectivity=conn),
                               rtol=1e-10, atol=1e-10)


def test_other_exponents_ties_and_mask():
    v = np.round(_vol(2), 1)  # many tied values
    mask = np.ones(v.shape, bool)
    mask[:, 5, :] = False     # a wall splitting the volume
    ref = tfce_reference(np.where(mask, v, 0), H=1.5, E=0.8, connectivity=18)
    np.testing.assert_allclose(tfce_volume(v, mask, H=1.5, E=0.8, connectivity=18)[mask], ref[mask], rtol=1e-10)


def test_fine_step_integration_converges_to_exact():
    v = _vol(3)
    exact = tfce_reference(v)
    errs = [np.abs(tfce_numeric(v, dh) - exact).max() for dh in (0.1, 0.01, 0.001)]
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 2e-3 * exact.max()
    # first-order convergence of the midpoint rule with a partial last step: error ~ dh
    assert errs[1] / errs[2] == pytest.approx(10, rel=0.5)


def test_scaling_and_signed_two_sided():
    v = _vol(4)
    # exact TFCE scales as c^(H+1) when the map is scaled by c (no step size involved)
    np.testing.assert_allclose(tfce_volume(2 * v), 8 * tfce_volume(v), rtol=1e-10, atol=1e-12)
    mask = np.ones(v.shape, bool)
    nbr = make_grid(mask, 26)
    s = tfce_signed(v[mask], nbr, two_sided=True)
    np.testing.assert_allclose(s[v[mask] > 0], tfce_reference(v)[mask][v[mask] > 0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(-s[v[mask] < 0], tfce_reference(-v)[mask][v[mask] < 0], rtol=1e-10, atol=1e-12)


def test_single_voxel_closed_form():
    v = np.zeros((3, 3, 3))
    v[1, 1, 1] = 2.0
    # one voxel, extent 1 at all heights: integral_0^2 h^2 dh = 8/3
    assert tfce_volume(v)[1, 1, 1] == pytest.approx(8 / 3)


def test_neighbor_offsets():
    assert [len(offsets(c)) for c in (6, 18, 26)] == [6, 18, 26]
    with pytest.raises(ValueError, match="connectivity"):
        offsets(8)


@pytest.mark.parametrize("conn", [6, 26])
@pytest.mark.parametrize("two_sided", [False, True])
def test_tfce_max_equals_max_of_signed_maps(conn, two_sided):
    """The max-only kernel of the permutation null (radix sort, no per-voxel offsets) equals the max |TFCE| of
    the per-voxel exact maps, for float32 rows (radix-sorted) and float64 rows (NumPy-sorted), with ties."""
    mask = np.ones((10, 11, 9), bool)
    mask[:, 5, :] = False
    rows = np.stack([_vol(s)[mask] for s in range(5)] + [np.round(_vol(9)[mask], 1), np.zeros(mask.sum())])
    grid = make_grid(mask, conn)
    ref = np.abs(tfce_signed(rows, grid, two_sided=two_sided)).max(axis=1)
    for dt in (np.float32, np.float64):
        r = rows.astype(dt)
        want = np.abs(tfce_signed(r, grid, two_sided=two_sided)).max(axis=1)
        np.testing.assert_allclose(tfce_max(r, grid, two_sided=two_sided), want, rtol=1e-12, atol=0)
    np.testing.assert_allclose(tfce_max(rows, grid, two_sided=two_sided), ref, rtol=1e-12, atol=0)
    # one map; other exponents
    np.testing.assert_allclose(tfce_max(rows[0], grid, H=1.5, E=0.8, two_sided=two_sided),
                               np.abs(tfce_signed(rows[0], grid, H=1.5, E=0.8, two_sided=two_sided)).max(),
                               rtol=1e-12)


def test_tfce_threads_bit_identical():
    """Rows split over threads give the same bits as one thread, for the maps and the max-only kernel."""
    from concurrent.futures import ThreadPoolExecutor

    mask = np.ones((10, 11, 9), bool)
    rows = np.stack([_vol(s)[mask] for s in range(9)]).astype(np.float32)
    grid = make_grid(mask, 26)
    m1 = tfce_max(rows, grid, two_sided=True)
    s1 = tfce_signed(rows, grid, two_sided=True)
    with ThreadPoolExecutor(3) as pool:
        for nt in (2, 3):
            assert np.array_equal(tfce_max(rows, grid, two_sided=True, pool=pool, n_threads=nt), m1)
            assert np.array_equal(tfce_signed(rows, grid, two_sided=True, pool=pool, n_threads=nt), s1)
