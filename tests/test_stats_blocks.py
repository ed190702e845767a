"""Exchangeability blocks (repeated measures): within-block permutations reproduce the exact paired test with two
sessions, equal a brute-force Freedman-Lane reference with three sessions, whole-block sign flips, CLI."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from voxelkit.backend import NUMPY
from voxelkit.cli import main
from voxelkit.io import Masker
from voxelkit.stats import Design, permutation_test
from voxelkit.stats.blocks import block_codes, block_permutation_set, n_within_block
from voxelkit.stats.design import make_permutation_set, one_sample_design

SHAPE = (7, 8, 6)
AFF = np.diag([2.0, 2.0, 2.0, 1.0])


def _maps(n, seed, subj_sd=1.0, n_subj=None, k=1):
    rng = np.random.default_rng(seed)
    y = np.stack([ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1) for _ in range(n)]).reshape(n, -1)
    if n_subj:  # large subject effects shared by a subject's sessions
        subj = rng.normal(0, subj_sd, (n_subj, y.shape[1]))
        y = y + np.repeat(subj, k, axis=0)
    return y


def _subject_dummies(n_subj, k):
    D = np.kron(np.eye(n_subj), np.ones((k, 1)))
    return D[:, 1:] - D[:, 1:].mean(axis=0)


def test_block_sets():
    rng = np.random.default_rng(0)
    blocks = ["s1", "s1", "s1", "s2", "s2", "s2", "s3", "s3"]
    codes = block_codes(blocks, 8)
    ps = block_permutation_set("permute", blocks, 500, rng)
    assert ps.exhaustive and ps.n_perm == n_within_block(codes) == 6 * 6 * 2
    np.testing.assert_array_equal(ps.orders[0], np.arange(8))
    assert np.all(codes[ps.orders] == codes[None, :])          # rows only move within their block
    assert np.unique(ps.orders, axis=0).shape[0] == ps.n_perm    # all distinct
    rnd = block_permutation_set("permute", blocks, 50, rng)
    assert not rnd.exhaustive and rnd.n_perm == 50 and np.all(codes[rnd.orders] == codes[None, :])
    assert np.unique(rnd.orders, axis=0).shape[0] == 50
    fl = block_permutation_set("flip", blocks, 500, rng)
    assert fl.exhaustive and fl.n_perm == 8
    for b in range(3):   # one sign per block
        assert np.all(fl.signs[:, codes == b] == fl.signs[:, codes == b][:, :1])


def test_two_sessions_equal_exact_paired_test():
    n_subj = 7
    y = _maps(2 * n_subj, 1, n_subj=n_subj, k=2)
    y[0::2] += 0.08   # session A (rows 0, 2, 4, ...) higher
    cond = np.tile([1.0, 0.0], n_subj)
    X = np.c_[np.ones(2 * n_subj), cond - cond.mean(), _subject_dummies(n_subj, 2)]
    c = np.zeros(X.shape[1])
    c[1] = 1
    blocks = np.repeat(np.arange(n_subj), 2)
    mk = Masker(np.ones(SHAPE, bool), AFF)
    r = permutation_test(y, mk, Design(X, c, blocks=list(blocks)), n_perm=1000, two_sided=True, device=NUMPY)
    assert r.settings["exhaustive"] and r.settings["n_perm"] == 2 ** n_subj
    d = y[0::2] - y[1::2]
    ref = permutation_test(d, mk, one_sample_design(n_subj), n_perm=1000, two_sided=True, device=NUMPY,
                           dtype="float64")
    np.testing.assert_allclose(r.maps["t"], ref.maps["t"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.sort(r.null["h0_max_t"]), np.sort(ref.null["h0_max_t"]), rtol=1e-6)
    # (voxels with a near-perfect fit, |t| > 6, are left out: there 1 - |U|^2 in the GLM path loses digits and
    # the exact tie between a flip and its mirror image can break by one count)
    ok = np.abs(ref.maps["t"]) < 6
    assert ok.mean() > 0.9
    for k in ("logp_uncorrected", "logp_fwe_voxel"):
        np.testing.assert_allclose(r.maps[k][ok], ref.maps[k][ok], rtol=1e-5, atol=1e-6, err_msg=k)


def test_three_sessions_equal_brute_force():
    n_subj, k = 4, 3   # 6^4 = 1296 within-subject orders: exact test
    n = n_subj * k
    y = _maps(n, 2, n_subj=n_subj, k=k)
    sess = np.tile(np.arange(k), n_subj)
    y[sess == 2] += 0.5
    X = np.c_[np.ones(n), (sess == 1) - 1 / 3, (sess == 2) - 1 / 3, _subject_dummies(n_subj, k)]
    c = np.zeros(X.shape[1])
    c[2] = 1.0   # session 3 vs baseline
    blocks = list(np.repeat(np.arange(n_subj), k))
    mk = Masker(np.ones(SHAPE, bool), AFF)
    r = permutation_test(y, mk, Design(X, c, blocks=blocks), n_perm=2000, device=NUMPY, two_sided=False)
    orders = r.null["permutations"]
    assert r.settings["exhaustive"] and orders.shape[0] == 1296
    # brute force: Freedman-Lane (permute reduced-model residuals within subjects, refit) for every order
    Z = X @ np.linalg.svd(c[None, :])[2][1:].T
    Hz = Z @ np.linalg.pinv(Z)
    iXX = np.linalg.pinv(X.T @ X)
    Rz = y - Hz @ y
    ts = []
    for o in orders:
        ys = Hz @ y + Rz[o]
        b = iXX @ X.T @ ys
        s2 = ((ys - X @ b) ** 2).sum(0) / (n - np.linalg.matrix_rank(X))
        ts.append((c @ b) / np.sqrt(s2 * (c @ iXX @ c)))
    ts = np.array(ts)
    np.testing.assert_allclose(r.maps["t"], ts[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.null["h0_max_t"], ts.max(axis=1), rtol=1e-8)
    p_unc = (ts >= ts[0] - 1e-9).mean(axis=0)
    np.testing.assert_allclose(r.maps["logp_uncorrected"], -np.log10(p_unc), rtol=1e-5, atol=1e-6)


@pytest.mark.kernels
def test_gpu_matches_numpy(fake_gpu):
    n_subj, k = 6, 3
    n = n_subj * k
    y = _maps(n, 3, n_subj=n_subj, k=k)
    sess = np.tile(np.arange(k), n_subj)
    X = np.c_[np.ones(n), (sess == 1) - 1 / 3, (sess == 2) - 1 / 3, _subject_dummies(n_subj, k)]
    d = Design(X, np.r_[0, 1.0, -1.0, np.zeros(n_subj - 1)], blocks=list(np.repeat(np.arange(n_subj), k)))
    kw = dict(n_perm=64, seed=1, two_sided=True, cluster_t=2.0, tfce=True, batch_size=20)
    cpu = permutation_test(y, Masker(np.ones(SHAPE, bool), AFF), d, device=NUMPY, **kw)
    gpu = permutation_test(y, Masker(np.ones(SHAPE, bool), AFF), d, device=fake_gpu, **kw)
    for key in cpu.maps:
        np.testing.assert_allclose(gpu.maps[key], cpu.maps[key], rtol=1e-5, atol=1e-5, err_msg=key)
    np.testing.assert_array_equal(make_permutation_set(d, 64, 1).orders, cpu.null["permutations"])


def test_cli_blocks(tmp_path, capsys):
    n_subj, k = 6, 3
    y = _maps(n_subj * k, 4, n_subj=n_subj, k=k)
    lines = ["map\tsubject\tdrug\tplacebo"]
    for i in range(n_subj * k):
        s, j = divmod(i, k)
        p = tmp_path / f"sub{s}_ses{j}.nii.gz"
        nib.save(nib.Nifti1Image((y[i].reshape(SHAPE) + 5).astype(np.float32), AFF), str(p))
        lines.append(f"{p.name}\tsub-{s}\t{int(j == 2)}\t{int(j == 1)}")
    (tmp_path / "design.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(["stats", "glm", "--design", str(tmp_path / "design.tsv"), "--blocks", "subject",
                 "--contrast", "drug", "--contrast", "placebo", "--f-contrast", "drug", "placebo", "--n-perm", "200",
                 "--quiet", "-o", str(out)]) == 0
    s = json.loads((out / "stats.json").read_text())
    c1 = s["contrasts"][0]["settings"]
    assert c1["exchangeability_blocks"] == n_subj and "within-block" in c1["permutation_scheme"]
    assert any(col.startswith("block[") for col in c1["design_columns"])
    orders = np.load(out / "c1_null_distributions.npz")["permutations"]
    codes = np.repeat(np.arange(n_subj), k)
    assert np.all(codes[orders] == codes[None, :])
    capsys.readouterr()
    assert main(["stats", "glm", "--design", str(tmp_path / "design.tsv"), "--blocks", "nosuch",
                 "--contrast", "drug", "--quiet", "-o", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--blocks" in err[0]
