"""Masks and atlases on the PET grid: reoriented when only the voxel order differs, resampled by nearest
neighbour from another grid, refused only outside the field of view (voxelkit.conform and its io/pipeline wiring)."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from voxelkit import conform
from voxelkit.conform import conform_to
from voxelkit.io import InputError, load_mask

SHAPE = (10, 12, 8)


@pytest.fixture(autouse=True)
def _fresh():
    conform.clear()
    yield
    conform.clear()


def _pet_affine(vox: float = 2.0) -> np.ndarray:
    aff = np.diag([vox, vox, vox, 1.0])
    aff[:3, 3] = [-9.0, -11.0, -7.0]
    return aff


def _labels(shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 5, size=shape).astype(np.int16)


def _pet(tmp_path: Path) -> nib.Nifti1Image:
    img = nib.Nifti1Image(np.ones((*SHAPE, 3), np.float32), _pet_affine())
    nib.save(img, str(tmp_path / "pet.nii.gz"))
    return nib.load(str(tmp_path / "pet.nii.gz"))


def _world(img: nib.Nifti1Image, ijk: np.ndarray) -> np.ndarray:
    return nib.affines.apply_affine(img.affine, ijk)


def test_same_grid_unchanged(tmp_path: Path):
    pet = _pet(tmp_path)
    lab = _labels()
    out, note = conform_to(nib.Nifti1Image(lab, pet.affine), pet, "labels")
    np.testing.assert_array_equal(out, lab)
    assert note == ""


@pytest.mark.parametrize("order", ["flip_x", "lps", "permute"])
def test_other_voxel_order_is_reoriented(tmp_path: Path, order: str, caplog):
    pet = _pet(tmp_path)
    lab = _labels()
    # the same world voxels stored in another order: check voxel by voxel through world coordinates
    if order == "flip_x":
        data, ornt = lab[::-1], [[0, -1], [1, 1], [2, 1]]
    elif order == "lps":
        data, ornt = lab[::-1, ::-1], [[0, -1], [1, -1], [2, 1]]
    else:
        data, ornt = np.transpose(lab, (2, 0, 1)), [[1, 1], [2, 1], [0, 1]]
    src = nib.Nifti1Image(lab, pet.affine).as_reoriented(np.asarray(ornt))
    np.testing.assert_array_equal(np.asarray(src.dataobj), data)
    path = tmp_path / "atlas.nii.gz"
    nib.save(src, str(path))
    with caplog.at_level(logging.INFO, logger="voxelkit"):
        out, note = conform_to(path, pet, "labels")
    np.testing.assert_array_equal(out, lab)
    assert "reoriented" in note and "no interpolation" in note and "reoriented" in caplog.text
    # independent check: world coordinate of each source voxel maps to the same label in the output
    ijk = np.argwhere(data >= 0)[::37]
    back = np.rint(nib.affines.apply_affine(np.linalg.inv(pet.affine), _world(src, ijk))).astype(int)
    np.testing.assert_array_equal(out[tuple(back.T)], data[tuple(ijk.T)])


def test_fine_atlas_resampled_nearest(tmp_path: Path, caplog):
    pet = _pet(tmp_path)
    # a 1 mm atlas covering the PET field of view: label = the 2 mm voxel it belongs to (blocks of 2x2x2)
    coarse = _labels()
    fine = np.repeat(np.repeat(np.repeat(coarse, 2, 0), 2, 1), 2, 2)
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    aff[:3, 3] = _pet_affine()[:3, 3] - 0.5  # 1 mm voxel centres at +-0.5 mm around each 2 mm centre
    path = tmp_path / "atlas_1mm.nii.gz"
    nib.save(nib.Nifti1Image(fine, aff), str(path))
    with caplog.at_level(logging.INFO, logger="voxelkit"):
        out, note = conform_to(path, pet, "labels", name="atlas_1mm")
    np.testing.assert_array_equal(out, coarse)
    assert set(np.unique(out)) <= set(np.unique(fine))  # labels stay labels (nearest neighbour)
    assert "resampled" in note and "nearest" in note and "nilearn" in note
    assert conform.notes()["atlas_1mm"] == note and "atlas_1mm: resampled" in caplog.text


def test_partial_overlap_noted_and_no_overlap_refused(tmp_path: Path):
    pet = _pet(tmp_path)
    m = np.zeros(SHAPE, np.uint8)
    m[2:6, 2:6, 2:6] = 1
    aff = _pet_affine()
    aff[0, 3] += 2 * 6  # shifted by 6 voxels: part of the mask leaves the field of view
    out, note = conform_to(nib.Nifti1Image(m, aff), pet, "mask", name="shifted")
    assert "50.0 % of its non-zero voxels lie outside the PET field of view" in note
    ref = np.zeros(SHAPE, np.uint8)
    ref[8:10, 2:6, 2:6] = 1
    np.testing.assert_array_equal(out != 0, ref != 0)
    far = _pet_affine()
    far[:3, 3] += 500.0
    path = tmp_path / "far_mask.nii.gz"
    nib.save(nib.Nifti1Image(m, far), str(path))
    with pytest.raises(InputError, match="far_mask.nii.gz: does not overlap the PET field of view"):
        conform_to(path, pet, "mask", name=str(path))
    with pytest.raises(InputError, match="far_mask.nii.gz: does not overlap"):
        load_mask(path, pet, "pet.nii.gz", "brain mask")


def test_load_mask_uses_conform(tmp_path: Path):
    pet = _pet(tmp_path)
    m = np.zeros(SHAPE, np.uint8)
    m[1:4, 2:9, 3:5] = 1
    path = tmp_path / "mask_lps.nii.gz"
    nib.save(nib.Nifti1Image(m, pet.affine).as_reoriented(np.asarray([[0, -1], [1, -1], [2, 1]])), str(path))
    got = load_mask(path, pet, "pet.nii.gz", "brain mask")
    np.testing.assert_array_equal(got, m != 0)
    assert got.dtype == bool


def test_study_with_reoriented_masks_and_fine_atlas(tmp_path: Path):
    """voxelkit run: brain and reference masks stored in LPS order and a 2x finer atlas give the statistics and
    ROI tests of the study run with the masks on the PET grid; provenance says what was done."""
    import json
    import shutil

    from voxelkit.pipeline import StudyConfig, layout, run_study
    from voxelkit.simulate.study import simulate_study

    bids = tmp_path / "bids"
    simulate_study(bids, preset="test", n_subjects=6, effect=0.15, noise=0.05, seed=3, challenge="none")
    sim = bids / "derivatives" / "voxelkit-sim"
    brain, ref = next(sim.glob("*desc-brain_mask.nii.gz")), next(sim.glob("*desc-reference_mask.nii.gz"))
    atlas = next(sim.glob("*_dseg.nii.gz"))
    lut = atlas.with_name(atlas.name.replace(".nii.gz", ".tsv"))
    other = tmp_path / "other"
    other.mkdir()
    lps = np.asarray([[0, -1], [1, -1], [2, 1]])
    for src in (brain, ref):
        nib.save(nib.load(str(src)).as_reoriented(lps), str(other / src.name))
    a = nib.load(str(atlas))
    lab = np.asarray(a.dataobj)
    fine = np.repeat(np.repeat(np.repeat(lab, 2, 0), 2, 1), 2, 2)
    aff = a.affine.copy()
    aff[:3, :3] /= 2
    aff[:3, 3] = nib.affines.apply_affine(a.affine, [-0.25, -0.25, -0.25])
    nib.save(nib.Nifti1Image(fine, aff), str(other / "atlas_fine_dseg.nii.gz"))
    shutil.copy(lut, other / "atlas_fine_dseg.tsv")

    common = dict(bids_dir=bids, model="mrtm", n_perm=64, cluster_p=0.01, tfce=False, seed=1, report=False,
                  atlas_labels=lut)
    run_study(StudyConfig(output_dir=tmp_path / "o_ref", brain_mask=brain, ref_mask=ref, atlas=atlas, **common),
              progress=False)
    conform.clear()
    run_study(StudyConfig(output_dir=tmp_path / "o", brain_mask=other / brain.name, ref_mask=other / ref.name,
                          atlas=other / "atlas_fine_dseg.nii.gz", **common), progress=False)
    for name in ("t.nii.gz",):
        np.testing.assert_array_equal(np.asarray(nib.load(str(layout.stats_dir(tmp_path / "o") / name)).dataobj),
                                      np.asarray(nib.load(str(layout.stats_dir(tmp_path / "o_ref") / name)).dataobj))
    assert (layout.roi_dir(tmp_path / "o") / "roi_tests.tsv").read_text() == \
        (layout.roi_dir(tmp_path / "o_ref") / "roi_tests.tsv").read_text()
    prov = json.loads((tmp_path / "o" / "provenance.json").read_text())
    notes = prov["spatial_conform"]
    assert "reoriented" in notes[str(other / brain.name)] and "reoriented" in notes[str(other / ref.name)]
    assert "nearest neighbour" in notes[str(other / "atlas_fine_dseg.nii.gz")]
