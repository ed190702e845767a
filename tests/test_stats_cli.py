"""voxelkit stats: input checks with clear errors, outputs on disk, CLI for paired / one-sample / glm."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage, stats

from voxelkit.cli import main
from voxelkit.io import InputError
from voxelkit.stats import MAP_NAMES, glm, load_null, one_sample, paired

SHAPE = (8, 9, 7)
AFF = np.diag([2.0, 2.0, 2.0, 1.0])


def _write(folder, name, data, aff=AFF):
    p = folder / name
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), aff), str(p))
    return str(p)


@pytest.fixture
def pairs(tmp_path):
    rng = np.random.default_rng(0)
    a, b = [], []
    for i in range(7):
        x = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1) + 2
        x[2:5, 2:5, 2:5] += 0.8
        a.append(_write(tmp_path, f"a{i}.nii.gz", x))
        b.append(_write(tmp_path, f"b{i}.nii.gz", ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1) + 2))
    return tmp_path, a, b


def test_input_errors(pairs):
    folder, a, b = pairs
    with pytest.raises(InputError, match="pairs incomplete"):
        paired(a, b[:-1])
    with pytest.raises(InputError, match="at least 5.*1/16"):
        paired(a[:4], b[:4])
    odd = _write(folder, "odd.nii.gz", np.zeros((8, 9, 6)))
    with pytest.raises(InputError, match="odd.nii.gz"):
        paired(a, [*b[:-1], odd])
    shifted = AFF.copy()
    shifted[0, 3] = 5
    odd2 = _write(folder, "odd2.nii.gz", np.ones(SHAPE), shifted)
    with pytest.raises(InputError, match="affine mismatch.*odd2"):
        one_sample([*a[:-1], odd2])
    m = np.zeros(SHAPE)
    empty_mask = _write(folder, "empty.nii.gz", m)
    with pytest.raises(InputError, match="empty"):
        paired(a, b, mask=empty_mask)
    zeros = [_write(folder, f"z{i}.nii.gz", np.where(np.arange(np.prod(SHAPE)).reshape(SHAPE) > 5, 1.0, 0))
             for i in range(6)]
    m[0, 0, 0] = 1
    corner = _write(folder, "corner.nii.gz", m)
    with pytest.raises(InputError, match="does not overlap"):
        one_sample(zeros, mask=corner)
    with pytest.raises(InputError, match="no such file"):
        one_sample([*a[:-1], str(folder / "missing.nii.gz")])
    with pytest.raises(InputError, match="contrast has 2 entries"):
        glm(a, {"x": np.arange(7.0), "y": np.arange(7.0) ** 2}, [0, 1])
    with pytest.raises(InputError, match="not a design column"):
        glm(a, {"x": np.arange(7.0)}, "age")


def test_paired_cli_outputs(pairs, capsys):
    folder, a, b = pairs
    out = folder / "out"
    rc = main(["stats", "paired", "--a", *a, "--b", *b, "--n-perm", "100", "--cluster-p", "0.01", "--tfce",
               "--two-sided", "--seed", "3", "--quiet", "--device", "cpu", "-o", str(out)])
    assert rc == 0
    for name in MAP_NAMES:
        img = nib.load(str(out / f"{name}.nii.gz"))
        assert img.shape == SHAPE and np.allclose(img.affine, AFF)
    t = nib.load(str(out / "t.nii.gz")).get_fdata()
    A = np.stack([nib.load(p).get_fdata() for p in a])
    B = np.stack([nib.load(p).get_fdata() for p in b])
    np.testing.assert_allclose(t, stats.ttest_rel(A, B).statistic, rtol=1e-4, atol=1e-4)
    meta = json.loads((out / "stats.json").read_text())
    assert meta["seed"] == 3 and meta["n_perm"] == 100 and meta["two_sided"] and meta["connectivity"] == 26
    assert meta["test"] == "paired" and meta["cluster_p"] == 0.01
    null = load_null(out / "null_distributions.npz")
    assert null["h0_max_t"].shape == (100,) and null["sign_flips"].shape == (100, 7)
    header = (out / "clusters.tsv").read_text().splitlines()[0].split("\t")
    assert header[:5] == ["cluster_id", "sign", "size_voxels", "size_mm3", "mass"]
    lp = nib.load(str(out / "logp_fwe_voxel.nii.gz")).get_fdata()
    assert np.all(np.sign(lp[lp != 0]) == np.sign(t[lp != 0]))  # signed for two-sided


def test_cli_errors_one_line(pairs, capsys):
    folder, a, b = pairs
    rc = main(["stats", "paired", "--a", *a, "--b", *b[:-1], "-q", "-o", str(folder / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "pairs incomplete" in err and "Traceback" not in err


def test_glm_cli_design_tsv_and_atlas(pairs):
    folder, a, b = pairs
    rng = np.random.default_rng(1)
    pain = rng.standard_normal(7)
    age = rng.uniform(20, 60, 7)
    lines = ["map\tmap_b\tpain\tage\tsex"] + [
        f"{a[i].split('/')[-1]}\t{b[i].split('/')[-1]}\t{pain[i]:.4f}\t{age[i]:.1f}\t{i % 2}" for i in range(7)]
    (folder / "design.tsv").write_text("\n".join(lines) + "\n")
    atlas = np.zeros(SHAPE)
    atlas[:4] = 1
    atlas[4:] = 2
    _write(folder, "atlas.nii.gz", atlas)
    (folder / "lut.tsv").write_text("index\tname\n1\tleft thing\n2\tright thing\n")
    out = folder / "glm"
    rc = main(["stats", "glm", "--design", str(folder / "design.tsv"), "--map-column-b", "map_b", "--contrast",
               "pain", "--covariates", "pain", "age", "--n-perm", "50", "--cluster-t", "1.5", "--quiet",
               "--atlas", str(folder / "atlas.nii.gz"), "--atlas-lookup", str(folder / "lut.tsv"), "-o", str(out)])
    assert rc == 0
    meta = json.loads((out / "stats.json").read_text())
    assert meta["design_columns"] == ["intercept", "pain", "age"] and meta["contrast"] == [0, 1, 0]
    assert meta["method"] == "permute" and meta["df"] == 4
    rows = (out / "clusters.tsv").read_text().splitlines()
    assert len(rows) > 1 and any(("left thing" in r) or ("right thing" in r) for r in rows[1:])
    # the same through the API, contrast as a vector
    A = [nib.load(p) for p in a]
    r = glm(A, {"pain": pain, "age": np.round(age, 1)}, [0, 1, 0], imgs_b=b, n_perm=50)
    np.testing.assert_allclose(r.image("t").get_fdata(), nib.load(str(out / "t.nii.gz")).get_fdata(), atol=1e-3)


def test_one_and_two_sample_cli(pairs):
    folder, a, b = pairs
    rc = main(["stats", "one-sample", "--maps", *a, "--n-perm", "50", "--quiet", "-o", str(folder / "one")])
    assert rc == 0
    A = np.stack([nib.load(p).get_fdata() for p in a])
    B = np.stack([nib.load(p).get_fdata() for p in b])
    t1 = nib.load(str(folder / "one" / "t.nii.gz")).get_fdata()
    np.testing.assert_allclose(t1, stats.ttest_1samp(A, 0).statistic, rtol=1e-4, atol=1e-4)
    rc = main(["stats", "two-sample", "--a", *a, "--b", *b, "--n-perm", "50", "--quiet", "--two-sided",
               "-o", str(folder / "two")])
    assert rc == 0
    t2 = nib.load(str(folder / "two" / "t.nii.gz")).get_fdata()
    np.testing.assert_allclose(t2, stats.ttest_ind(A, B).statistic, rtol=1e-4, atol=1e-4)
    meta = json.loads((folder / "two" / "stats.json").read_text())
    assert meta["test"] == "two_sample" and meta["method"] == "permute" and meta["df"] == 12
    assert "permutations" in load_null(folder / "two" / "null_distributions.npz")
