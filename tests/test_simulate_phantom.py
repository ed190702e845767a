"""The digital carfentanil phantom: regions, values, labels."""

from __future__ import annotations

import numpy as np
import pytest

from voxelkit.simulate.phantom import REFERENCE, Region, build_phantom, default_regions


@pytest.fixture(scope="module")
def ph4():
    return build_phantom(4)


def test_regions_values_and_labels(ph4):
    names = [r.name for r in default_regions()]
    assert ph4.names[1:1 + len(names)] == names
    assert ph4.names[0] == "background"
    assert ph4.labels[~ph4.brain].max() == 0 and ph4.labels[ph4.brain].min() >= 1
    for reg in default_regions():
        m = ph4.mask(reg.name)
        assert m.sum() >= 10, reg.name
        assert np.allclose(ph4.bp_nd[m], reg.bp_nd) and np.allclose(ph4.r1[m], reg.r1)
        # bilateral: voxels on both sides of the midline
        x = (np.argwhere(m) @ ph4.affine[:3, :3].T + ph4.affine[:3, 3])[:, 0]
        assert (x > 0).any() and (x < 0).any(), reg.name
    ref = ph4.reference_mask
    assert ph4.reference == REFERENCE and ref.any()
    assert np.all(ph4.bp_nd[ref] == 0) and np.all(ph4.r1[ref] == 1)
    bp = {r["name"]: r["bp_nd"] for r in ph4.lookup_rows()}
    assert 2.5 <= bp["thalamus"] <= 3.0 and 1.0 <= bp["insula"] <= 1.5 and bp["white_matter"] < 0.35
    assert 0.5 <= bp["grey_matter_other"] <= 1.0


def test_unknown_region_and_custom_regions(ph4):
    with pytest.raises(ValueError, match="no region"):
        ph4.mask("hippocampus")
    regs = (*default_regions(), Region("hotspot", (30.0, -40.0, 50.0), (8.0, 8.0, 8.0), 4.0, 1.2, False, "brain"))
    ph = build_phantom(4, regs)
    m = ph.mask("hotspot")
    assert m.any() and np.all(ph.bp_nd[m] == 4.0)
    x = (np.argwhere(m) @ ph.affine[:3, :3].T + ph.affine[:3, 3])[:, 0]
    assert np.all(x > 0)  # not mirrored
    with pytest.raises(ValueError, match="empty"):
        build_phantom(4, (*default_regions(), Region("outside", (0.0, 0.0, 300.0), (5.0, 5.0, 5.0), 1.0)))
    with pytest.raises(ValueError, match="reference"):
        build_phantom(4, default_regions()[1:])


def test_2mm_grid():
    ph = build_phantom(2)
    assert ph.shape == (99, 117, 95)
    assert np.allclose(np.diag(ph.affine)[:3], 2.0)
    assert 150_000 < ph.brain.sum() < 300_000
