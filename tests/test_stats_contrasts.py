"""F contrasts and several contrasts at once: F equals a direct OLS reference on every Freedman-Lane permutation,
a one-row F is t^2, FWE across contrasts takes the max over contrasts, CLI names, CuPy stand-in."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from voxelkit.backend import NUMPY
from voxelkit.cli import main
from voxelkit.io import InputError, Masker
from voxelkit.stats import Design, fwe_p, glm, permutation_test
from voxelkit.stats.contrasts import FDesign, make_specs, run_contrasts

SHAPE = (8, 9, 7)
AFF = np.diag([2.0, 2.0, 2.0, 1.0])


def _setup(n=12, seed=0):
    rng = np.random.default_rng(seed)
    y = np.stack([ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1) for _ in range(n)]).reshape(n, -1)
    X = np.c_[np.ones(n), rng.standard_normal(n), rng.standard_normal(n), rng.standard_normal(n)]
    y = y + 0.6 * X[:, 1:2] * np.linspace(0, 1, y.shape[1])[None]
    return y, X


def _ref_F(y, X, C, orders):
    """Direct Freedman-Lane F: permute reduced-model residuals, refit the full model, F test of C b = 0."""
    n = X.shape[0]
    Z = X @ np.linalg.svd(C)[2][C.shape[0]:].T
    Hz = Z @ np.linalg.pinv(Z)
    iXX = np.linalg.inv(X.T @ X)
    out = []
    for o in orders:
        ys = Hz @ y + (y - Hz @ y)[o]
        b = iXX @ X.T @ ys
        s2 = ((ys - X @ b) ** 2).sum(0) / (n - X.shape[1])
        Cb = C @ b
        out.append(np.einsum("iv,ij,jv->v", Cb, np.linalg.inv(C @ iXX @ C.T), Cb) / C.shape[0] / s2)
    return np.array(out)


def test_f_equals_direct_reference():
    y, X = _setup()
    C = np.array([[0, 1.0, 0, 0], [0, 0, 1.0, 0]])
    mk = Masker(np.ones(SHAPE, bool), AFF)
    r = permutation_test(y, mk, FDesign(X, C), n_perm=40, seed=3, cluster_p=0.01, device=NUMPY)
    ref = _ref_F(y, X, C, r.null["permutations"])
    np.testing.assert_allclose(r.maps["t"], ref[0], rtol=1e-5)
    np.testing.assert_allclose(r.null["h0_max_t"], ref.max(axis=1), rtol=1e-8)
    p_unc = (ref >= ref[0] * (1 - 1e-9)).mean(axis=0)
    np.testing.assert_allclose(r.maps["logp_uncorrected"], -np.log10(p_unc), rtol=1e-5, atol=1e-6)
    from scipy.special import fdtri

    assert r.settings["cluster_threshold_t"] == pytest.approx(fdtri(2, 8, 0.99))
    assert r.settings["f_rank"] == 2


def test_one_row_f_is_t_squared():
    y, X = _setup(seed=1)
    mk = Masker(np.ones(SHAPE, bool), AFF)
    kw = dict(n_perm=60, seed=4, device=NUMPY, tfce=True)
    rt = permutation_test(y, mk, Design(X, [0, 0, 1.0, 0]), two_sided=True, **kw)
    rf = permutation_test(y, mk, FDesign(X, [[0, 0, 1.0, 0]]), **kw)
    np.testing.assert_allclose(rf.maps["t"], rt.maps["t"].astype(np.float64) ** 2, rtol=1e-4)
    np.testing.assert_allclose(rf.null["h0_max_t"], rt.null["h0_max_t"] ** 2, rtol=1e-8)
    np.testing.assert_allclose(rf.maps["logp_fwe_voxel"], np.abs(rt.maps["logp_fwe_voxel"]), atol=1e-6)


def test_bad_f_contrasts():
    y, X = _setup()
    mk = Masker(np.ones(SHAPE, bool), AFF)
    with pytest.raises(InputError, match="linearly dependent"):
        FDesign(X, [[0, 1.0, 0, 0], [0, 2.0, 0, 0]])
    with pytest.raises(InputError, match="columns"):
        FDesign(X, [[0, 1.0, 0]])
    # F has no sides: two_sided (the default) does not apply, the upper tail is tested
    f2 = permutation_test(y, mk, FDesign(X, [[0, 1.0, 0, 0]]), n_perm=40, two_sided=True, tfce=False)
    f1 = permutation_test(y, mk, FDesign(X, [[0, 1.0, 0, 0]]), n_perm=40, two_sided=False, tfce=False)
    assert f2.settings["two_sided"] is False
    for m in f1.maps:
        np.testing.assert_array_equal(f2.maps[m], f1.maps[m])
    with pytest.raises(InputError, match="one scale"):
        run_contrasts(y, mk, Design(X, [0, 1.0, 0, 0]), make_specs(["a", "b", "c", "d"], ["b"], [["c", "d"]]),
                      fwe_across_contrasts=True, n_perm=40)


@pytest.mark.parametrize("two_sided", [False, True])
def test_multi_contrast_and_fwe_across(two_sided):
    y, X = _setup(seed=2)
    mk = Masker(np.ones(SHAPE, bool), AFF)
    names = ["intercept", "a", "b", "c"]
    specs = make_specs(names, ["a", [0, 0, 1, -1]], [])
    kw = dict(n_perm=80, seed=5, two_sided=two_sided, tfce=True, cluster_t=2.0, device=NUMPY)
    base = Design(X, [0, 1.0, 0, 0], names=names)
    plain = run_contrasts(y, mk, base, specs, **kw)
    single = permutation_test(y, mk, Design(X, [0, 0, 1.0, -1.0], names=names), **kw)
    for k in single.maps:  # each contrast on its own equals a single-contrast run
        np.testing.assert_allclose(plain["c2"].maps[k], single.maps[k], rtol=1e-6, atol=1e-6, err_msg=k)
    across = run_contrasts(y, mk, base, specs, fwe_across_contrasts=True, **kw)
    nulls = np.stack([plain[c].null["h0_max_t"] for c in ("c1", "c2")])
    np.testing.assert_array_equal(across["c1"].null["h0_max_t_across_contrasts"], nulls.max(axis=0))
    for c in ("c1", "c2"):
        t = plain[c].maps["t"].astype(np.float64)
        stat = np.abs(t) if two_sided else t
        lp = -np.log10(fwe_p(stat, nulls.max(axis=0)))
        np.testing.assert_allclose(np.abs(across[c].maps["logp_fwe_voxel"]), lp, rtol=1e-5, atol=1e-6)
        # corrected over more tests: never smaller p than within the contrast alone
        assert np.all(np.abs(across[c].maps["logp_fwe_voxel"]) <= np.abs(plain[c].maps["logp_fwe_voxel"]) + 1e-6)
        assert np.all(np.abs(across[c].maps["logp_fwe_tfce"]) <= np.abs(plain[c].maps["logp_fwe_tfce"]) + 1e-6)
        assert np.all(np.abs(across[c].maps["logp_fwe_cluster_mass"])
                      <= np.abs(plain[c].maps["logp_fwe_cluster_mass"]) + 1e-6)
    assert across.settings["fwe_across_contrasts"] and len(across.settings["contrasts"]) == 2


@pytest.mark.kernels
def test_f_gpu_matches_numpy(fake_gpu):
    y, X = _setup(seed=3)
    mk = Masker(np.ones(SHAPE, bool), AFF)
    d = FDesign(X, [[0, 1.0, 0, 0], [0, 0, 0, 1.0]])
    kw = dict(n_perm=50, seed=2, cluster_t=3.0, tfce=True, batch_size=16)
    cpu = permutation_test(y, mk, d, device=NUMPY, **kw)
    gpu = permutation_test(y, mk, d, device=fake_gpu, **kw)
    assert gpu.settings["backend"] == "cupy"
    for k in cpu.maps:
        np.testing.assert_allclose(gpu.maps[k], cpu.maps[k], rtol=1e-5, atol=1e-5, err_msg=k)
    for k in ("h0_max_t", "h0_max_tfce", "h0_max_cluster_extent", "h0_max_cluster_mass"):
        np.testing.assert_allclose(gpu.null[k], cpu.null[k], rtol=1e-6, err_msg=k)


def _study(folder, n=12):
    y, X = _setup(n=n, seed=6)
    lines = ["map\ta\tb\tc"]
    for i in range(n):
        p = folder / f"m{i}.nii.gz"
        nib.save(nib.Nifti1Image((y[i].reshape(SHAPE) + 5).astype(np.float32), AFF), str(p))
        lines.append(f"{p.name}\t{X[i, 1]:.6f}\t{X[i, 2]:.6f}\t{X[i, 3]:.6f}")
    (folder / "design.tsv").write_text("\n".join(lines) + "\n")
    return folder / "design.tsv"


def test_cli_names_and_api(tmp_path, capsys):
    design = _study(tmp_path)
    out = tmp_path / "multi"
    assert main(["stats", "glm", "--design", str(design), "--contrast", "a", "--contrast", "0", "0", "1", "-1",
                 "--f-contrast", "b", "c", "--n-perm", "60", "--cluster-t", "2.5", "--quiet", "-o", str(out)]) == 0
    files = {p.name for p in out.iterdir()}
    for lab, stat in (("c1", "t"), ("c2", "t"), ("f1", "f")):
        assert {f"{lab}_{stat}.nii.gz", f"{lab}_logp_fwe_voxel.nii.gz", f"{lab}_null_distributions.npz",
                f"{lab}_clusters.tsv"} <= files
    assert "mask.nii.gz" in files and "stats.json" in files and "t.nii.gz" not in files
    s = json.loads((out / "stats.json").read_text())
    assert [c["label"] for c in s["contrasts"]] == ["c1", "c2", "f1"]
    assert s["contrasts"][2]["kind"] == "F" and s["outputs"]["f1"][0] == "f1_f.nii.gz"
    # the F map on disk is the API's F
    res = glm([str(tmp_path / f"m{i}.nii.gz") for i in range(12)],
              {k: [float(x) for x in col] for k, col in zip("abc", np.loadtxt(design, skiprows=1,
                                                                                usecols=(1, 2, 3)).T, strict=True)},
              None, f_contrasts=[["b", "c"]], more_contrasts=(), n_perm=60, cluster_t=2.5)
    f_disk = np.asarray(nib.load(str(out / "f1_f.nii.gz")).dataobj)
    np.testing.assert_allclose(f_disk.ravel(), res["f1"].maps["t"], rtol=1e-5)
    # one contrast: names unchanged
    one = tmp_path / "one"
    assert main(["stats", "glm", "--design", str(design), "--contrast", "a", "--n-perm", "60", "--quiet",
                 "-o", str(one)]) == 0
    assert (one / "t.nii.gz").exists() and not (one / "c1_t.nii.gz").exists()
    # mixed t and F across contrasts: one-line error, exit 2, nothing written
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert main(["stats", "glm", "--design", str(design), "--contrast", "a", "--f-contrast", "b", "c",
                 "--fwe-across-contrasts", "--n-perm", "60", "--quiet", "-o", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--fwe-across-contrasts" in err[0]
    assert not bad.exists() or not any(bad.iterdir())
