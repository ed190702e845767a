"""Safe writes of ``voxelkit stats`` (issue 9, item 9), CLI flag names in messages, and the smallest attainable
p-value check (sign flipping / permutation)."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest

from voxelkit.cli import main
from voxelkit.io import InputError, Masker
from voxelkit.outputs import MANIFEST_NAME
from voxelkit.stats import one_sample, one_sample_design, paired, permutation_test, smallest_p, two_sample_design

SHAPE = (6, 7, 5)
AFF = np.diag([2.0, 2.0, 2.0, 1.0])
N = 7


def _write(path, data):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), AFF), str(path))
    return str(path)


@pytest.fixture
def maps(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "maps"
    src.mkdir()
    a = [_write(src / f"a{i}.nii.gz", rng.uniform(1, 2, SHAPE) + 0.5) for i in range(N)]
    b = [_write(src / f"b{i}.nii.gz", rng.uniform(1, 2, SHAPE)) for i in range(N)]
    return tmp_path, a, b


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _paired(a, b, out, *extra):
    return main(["stats", "paired", "--a", *a, "--b", *b, "--n-perm", "64", "-q", "--device", "cpu", *extra,
                "-o", str(out)])


def test_overwrite_removes_stale_tfce_and_clusters(maps, capsys):
    tmp, a, b = maps
    out = tmp / "D"
    assert _paired(a, b, out, "--tfce", "--cluster-p", "0.01") == 0
    first = _snapshot(out)
    assert {"tfce.nii.gz", "logp_fwe_tfce.nii.gz", "clusters.tsv", "logp_fwe_cluster_extent.nii.gz",
            MANIFEST_NAME} <= set(first)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["command"] == "stats paired" and set(manifest["written"]) == set(first) - {MANIFEST_NAME}
    # a user file in the folder is not ours: it stays
    (out / "notes.txt").write_text("mine\n")
    # without --overwrite: refused, one line, nothing changed
    capsys.readouterr()
    assert _paired(a, b, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0] and "--overwrite" in err[0]
    assert _snapshot(out) == {**first, "notes.txt": _snapshot(out)["notes.txt"]}
    # with --overwrite and without TFCE / clusters: the stale maps and table are gone
    assert _paired(a, b, out, "--overwrite", "--no-tfce", "--no-clusters") == 0
    now = _snapshot(out)
    for stale in ("tfce.nii.gz", "logp_fwe_tfce.nii.gz", "clusters.tsv", "logp_fwe_cluster_extent.nii.gz",
                  "logp_fwe_cluster_mass.nii.gz"):
        assert stale not in now
    assert "notes.txt" in now and "t.nii.gz" in now
    meta = json.loads((out / "stats.json").read_text())
    assert meta["tfce"] is False and meta["cluster_threshold_t"] is None
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert set(manifest["written"]) == set(now) - {MANIFEST_NAME, "notes.txt"}


@pytest.mark.parametrize("overwrite", [False, True])
def test_input_named_like_an_output_is_refused_and_unchanged(maps, capsys, overwrite):
    tmp, a, b = maps
    out = tmp / "D"
    assert _paired(a, b, out) == 0                      # D holds earlier results, t.nii.gz among them
    (out / "t.nii.gz").write_bytes((tmp / "maps" / "b0.nii.gz").read_bytes())   # the user's map named t.nii.gz
    before = _snapshot(out)
    b_in = [str(out / "t.nii.gz"), *b[1:]]
    capsys.readouterr()
    rc = _paired(a, b_in, out, *(["--overwrite"] if overwrite else []))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "t.nii.gz" in err[0] and "input" in err[0], err
    assert _snapshot(out) == before                     # nothing removed, nothing written, the input unchanged


def test_non_empty_folder_without_overwrite_writes_nothing(maps, capsys):
    tmp, a, b = maps
    out = tmp / "D"
    out.mkdir()
    (out / "other.nii.gz").write_bytes(b"not ours")
    for design in (["paired", "--a", *a, "--b", *b], ["one-sample", "--maps", *a],
                   ["two-sample", "--a", *a, "--b", *b]):
        rc = main(["stats", *design, "--n-perm", "64", "-q", "-o", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and str(out) in err[0] and "--overwrite" in err[0]
        assert sorted(p.name for p in out.iterdir()) == ["other.nii.gz"]


def test_save_api_refuses_non_empty_and_keeps_inputs(maps):
    tmp, a, b = maps
    res = paired(a, b, n_perm=64, device="cpu", tfce=False, cluster_p=None)
    paths = res.save(tmp / "R")
    assert set(paths) == {"t", "logp_uncorrected", "logp_fdr", "logp_fwe_voxel", "mask", "null", "json"}
    assert all(p.is_file() for p in paths.values()) and (tmp / "R" / MANIFEST_NAME).is_file()
    with pytest.raises(InputError, match="not empty"):
        res.save(tmp / "R")
    assert set(res.save(tmp / "R", overwrite=True)) == set(paths)
    # saving into the folder of the inputs with a name clash: the result's own input images are protected
    src = tmp / "maps"
    r2 = one_sample([*a[:-1], _write(src / "t.nii.gz", np.ones(SHAPE))], n_perm=64, device="cpu")
    before = _snapshot(src)
    with pytest.raises(InputError, match=r"t\.nii\.gz.*input"):
        r2.save(src, overwrite=True)
    assert _snapshot(src) == before


def test_cli_messages_name_flags(maps, capsys):
    tmp, a, b = maps
    assert _paired(a, b, tmp / "x", "--n-perm", "0") == 2
    err = capsys.readouterr().err
    assert "--n-perm" in err and len(err.strip().splitlines()) == 1
    assert _paired(a, b, tmp / "y", "--cluster-p", "1.5") == 2
    err = capsys.readouterr().err
    assert "--cluster-p" in err and len(err.strip().splitlines()) == 1
    assert _paired(a, b, tmp / "z", "--n-perm", "10") == 2      # smallest p 1/10 > 0.05
    err = capsys.readouterr().err
    assert "--n-perm" in err and "0.1" in err and not (tmp / "z").exists()


@pytest.mark.parametrize("args, flag", [(["--tfce", "--tfce-h", "-1"], "--tfce-h"), (["--seed", "-2"], "--seed"),
                                        (["--batch-size", "0"], "--batch-size"),
                                        (["--cluster-t", "-1"], "--cluster-t")])
def test_cli_setting_errors_name_the_flag(maps, capsys, args, flag):
    tmp, a, b = maps
    assert _paired(a, b, tmp / "o", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and "Traceback" not in err[0], err
    assert not (tmp / "o").exists()


def test_api_setting_errors_name_argument_and_flag():
    d = np.random.default_rng(2).standard_normal((8, 10))
    with pytest.raises(InputError, match=r"n_perm \(--n-perm\) must be >= 1, got 0"):
        permutation_test(d, _masker(10), one_sample_design(8), n_perm=0)
    with pytest.raises(InputError, match=r"cluster_p \(--cluster-p\) must be in \(0, 1\)"):
        permutation_test(d, _masker(10), one_sample_design(8), n_perm=64, cluster_p=2.0)


def test_smallest_p_values():
    assert smallest_p(5, "flip", True, 5000) == 2 / 32
    assert smallest_p(5, "flip", False, 5000) == 1 / 32
    assert smallest_p(4, "flip", False, 5000) == 1 / 16
    assert smallest_p(20, "flip", True, 5000) == 1 / 5000      # random subset: 1 / n_perm
    assert smallest_p(8, "flip", False, 100) == 1 / 100
    assert smallest_p(6, "permute", False, 5000) == 1 / 720    # continuous regressor: every order distinct
    assert smallest_p(6, "permute", False, 5000, group_sizes=[3, 3]) == 1 / 20
    assert smallest_p(6, "permute", True, 5000, group_sizes=[3, 3]) == 2 / 20
    assert smallest_p(7, "permute", True, 5000, group_sizes=[3, 4]) == 1 / 35


def _masker(v):
    return Masker(np.ones((v, 1, 1), bool), np.eye(4))


@pytest.mark.parametrize("two_sided", [False, True])
def test_smallest_p_is_what_the_engine_attains(two_sided):
    """With every map positive, the identity is the most extreme flip: the engine's smallest p is smallest_p."""
    rng = np.random.default_rng(1)
    d = rng.uniform(0.5, 1.5, (7, 4))
    r = permutation_test(d, _masker(4), one_sample_design(7), n_perm=1000, two_sided=two_sided, seed=0)
    p_min = 10 ** -np.abs(r.maps["logp_uncorrected"]).max()
    assert p_min == pytest.approx(smallest_p(7, "flip", two_sided, 1000))
    # two-sample 4 + 4, perfectly separated groups, exhaustive permutations
    y = np.r_[rng.uniform(1, 2, (4, 3)), rng.uniform(0, 1, (4, 3))]
    r = permutation_test(y, _masker(3), two_sample_design(4, 4), n_perm=50000, two_sided=two_sided, seed=0)
    p_min = 10 ** -np.abs(r.maps["logp_uncorrected"]).max()
    assert p_min == pytest.approx(smallest_p(8, "permute", two_sided, 50000, group_sizes=[4, 4]))


def test_permutation_test_refuses_unattainable_p():
    d = np.random.default_rng(2).standard_normal((5, 10))
    with pytest.raises(InputError, match=r"n = 5 maps, two-sided sign flipping: the smallest attainable p is "
                                         r"0\.0625 > 0\.05"):
        permutation_test(d, _masker(10), one_sample_design(5), two_sided=True)
    permutation_test(d, _masker(10), one_sample_design(5), two_sided=False, n_perm=64)   # 1/32: fine
    y = np.random.default_rng(3).standard_normal((6, 10))
    with pytest.raises(InputError, match=r"n = 6 maps, two-sided permutation: .* 0\.1 > 0\.05"):
        permutation_test(y, _masker(10), two_sample_design(3, 3), two_sided=True)
