"""Inputs that used to give silent wrong answers or tracebacks: duplicate TSV columns, probabilistic masks,
truncated / unreadable / directory inputs, the affine-mismatch message, Ctrl-C."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_models_mrtm import SIMREF, truth_tacs

from voxelkit import api
from voxelkit.cli import main
from voxelkit.io import InputError, check_same_space, mask_from_values, read_tac_table, read_tsv
from voxelkit.stats.io import read_design_table

AFF = np.diag([2.0, 2.0, 2.0, 1.0])


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _one_line_exit2(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


# ---------------------------------------------------------------------------------------------------------
# duplicate column names
# ---------------------------------------------------------------------------------------------------------
def _dup_tacs(tmp: Path) -> Path:
    src = (SIMREF / "hukw_1_tacs.tsv").read_text().splitlines()
    hdr = src[0].split("\t")
    hdr[hdr.index("ROI3")] = "ROI1"
    bad = tmp / "dup_tacs.tsv"
    bad.write_text("\n".join(["\t".join(hdr), *src[1:]]) + "\n")
    return bad


def test_duplicate_tac_columns_are_refused(tmp_path: Path, capsys) -> None:
    bad = _dup_tacs(tmp_path)
    with pytest.raises(InputError, match="dup_tacs.tsv: duplicate column name.*ROI1"):
        read_tac_table(bad)
    rc = main(["fit-tacs", str(bad), "--ref", "Reference", "--model", "mrtm", "-q"])
    _one_line_exit2(rc, capsys.readouterr().err, "dup_tacs.tsv", "ROI1", "duplicate")


def test_duplicate_design_columns_are_refused(tmp_path: Path) -> None:
    design = tmp_path / "design.tsv"
    design.write_text("map\tage\tage\nsub-01.nii.gz\t30\t31\n")
    with pytest.raises(InputError, match="design.tsv: duplicate column name.*age"):
        read_design_table(design)
    assert read_tsv(SIMREF / "hukw_1_tacs.tsv")["ROI1"]  # a normal table still reads


# ---------------------------------------------------------------------------------------------------------
# fractional masks
# ---------------------------------------------------------------------------------------------------------
def _prob_study(tmp: Path, ref_values: np.ndarray) -> dict[str, Path]:
    """Tissue in z=0; a probabilistic reference in z=1..3 whose voxels >= 0.5 hold the true reference TAC and
    whose voxels below 0.5 hold twice it (spill-over from a higher-binding neighbour)."""
    ct, cr, bp, _, fr = truth_tacs(n=30, seed=2)
    shape = (6, 5, 4)
    data = np.zeros(shape + (fr.n_frames,), np.float32)
    data[:, :, 0] = ct[:30].reshape(6, 5, -1)
    prob = np.zeros(shape, np.float32)
    prob[:, :, 1:] = ref_values.reshape(6, 5, 3)
    inside = prob >= 0.5
    data[inside] = cr
    data[(prob > 0) & ~inside] = 2.0 * cr
    brain = np.zeros(shape, np.uint8)
    brain[:, :, 0] = 1
    paths = {"pet": tmp / "sub-01_pet.nii.gz", "ref": tmp / "ref_prob.nii.gz", "brain": tmp / "brain.nii.gz"}
    nib.save(nib.Nifti1Image(data, AFF), paths["pet"])
    nib.save(nib.Nifti1Image(prob, AFF), paths["ref"])
    nib.save(nib.Nifti1Image(brain, AFF), paths["brain"])
    (tmp / "sub-01_pet.json").write_text(json.dumps(fr.to_bids_dict()))
    return paths


def test_probabilistic_reference_mask_uses_voxels_at_or_above_half(tmp_path: Path, caplog) -> None:
    rng = np.random.default_rng(0)
    vals = rng.choice([0.0, 0.1, 0.3, 0.49, 0.5, 0.7, 1.0], size=90).astype(np.float32)
    p = _prob_study(tmp_path, vals)
    ct, cr, bp, _, fr = truth_tacs(n=30, seed=2)
    with caplog.at_level(logging.INFO, logger="voxelkit"):
        f = api.fit(p["pet"], reference=p["ref"], model="mrtm", mask=p["brain"], integration="frame_average",
                    device="cpu")
    n_in = int((vals >= 0.5).sum())
    assert f.info["reference_mask"]["n_voxels"] == n_in and f.info["reference_mask"]["threshold"] == 0.5
    assert f"{n_in} voxels" in f.info["reference"] and f"{n_in} at or above the threshold 0.5" in caplog.text
    np.testing.assert_allclose(f.inputs[1], cr, rtol=1e-6)  # only the >= 0.5 voxels were averaged
    np.testing.assert_allclose(f.bp_nd, bp[:30], atol=1e-3)
    # > 0 would mix in the spill-over voxels: a different reference TAC (so the test can fail)
    g = api.fit(p["pet"], reference=p["ref"], model="mrtm", mask=p["brain"], mask_threshold=0.05, device="cpu")
    assert g.info["reference_mask"]["n_voxels"] == int((vals > 0).sum())
    assert np.abs(g.inputs[1] - cr).max() > 0.1 * cr.max()


def test_binary_and_integer_masks_are_unchanged(tmp_path: Path) -> None:
    data = np.zeros((3, 3, 3), np.int16)
    data[0, 0, 0], data[1, 1, 1], data[2, 2, 2] = 1, 7, -2
    m, info = mask_from_values(data, "labels.nii.gz", threshold=0.9)
    assert m.sum() == 3 and info["rule"] == "non-zero" and info["threshold"] is None
    fl = data.astype(np.float32)
    assert mask_from_values(fl, "x")[0].sum() == 3
    with pytest.raises(InputError, match="pct.nii.gz.*outside \\[0, 1\\]"):
        mask_from_values(np.array([[[0.0, 50.5, 100.0]]]), "pct.nii.gz")


def test_small_reference_region_is_warned_about(tmp_path: Path, caplog) -> None:
    vals = np.zeros(90, np.float32)
    vals[:5] = 0.9
    vals[5:40] = 0.2
    p = _prob_study(tmp_path, vals)
    with caplog.at_level(logging.WARNING, logger="voxelkit"):
        api.fit(p["pet"], reference=p["ref"], model="mrtm", mask=p["brain"], device="cpu")
    assert "has only 5 voxels" in caplog.text and "ref_prob.nii.gz" in caplog.text


def test_cli_mask_threshold_and_empty_fractional_mask(tmp_path: Path, capsys) -> None:
    vals = np.full(90, 0.3, np.float32)
    vals[:40] = 0.6
    p = _prob_study(tmp_path, vals)
    out = tmp_path / "out"
    base = ["fit", str(p["pet"]), "--ref-mask", str(p["ref"]), "--mask", str(p["brain"]), "--model", "mrtm",
            "--device", "cpu", "-q"]
    rc = main([*base, "-o", str(out), "--mask-threshold", "0.7"])
    _one_line_exit2(rc, capsys.readouterr().err, "ref_prob.nii.gz", "empty", "0.7")
    assert not out.exists()
    assert main([*base, "-o", str(out)]) == 0
    info = json.loads((out / "fit.json").read_text())["Info"]
    assert info["reference_mask"]["n_voxels"] == 40 and info["mask_threshold"] == 0.5


# ---------------------------------------------------------------------------------------------------------
# unreadable inputs: one line, exit 2; InputError from the API
# ---------------------------------------------------------------------------------------------------------
def _small_study(tmp: Path) -> dict[str, Path]:
    ct, cr, _, _, fr = truth_tacs(n=10, seed=1)
    shape = (5, 2, 2)
    data = np.zeros(shape + (fr.n_frames,), np.float32)
    data[:, :, 0] = ct[:10].reshape(5, 2, -1)
    data[:, :, 1] = cr
    ref = np.zeros(shape, np.uint8)
    ref[:, :, 1] = 1
    p = {"pet": tmp / "sub-01_pet.nii.gz", "ref": tmp / "ref.nii.gz"}
    nib.save(nib.Nifti1Image(data, AFF), p["pet"])
    nib.save(nib.Nifti1Image(ref, AFF), p["ref"])
    (tmp / "sub-01_pet.json").write_text(json.dumps(fr.to_bids_dict()))
    return p


def test_truncated_nifti_is_an_input_error(tmp_path: Path, capsys) -> None:
    p = _small_study(tmp_path)
    raw = gzip.decompress(p["pet"].read_bytes())
    bad = tmp_path / "sub-02_pet.nii.gz"
    bad.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
    (tmp_path / "sub-02_pet.json").write_text((tmp_path / "sub-01_pet.json").read_text())
    with pytest.raises(InputError, match="sub-02_pet.nii.gz"):
        api.fit(bad, reference=p["ref"], model="mrtm", device="cpu")
    rc = main(["fit", str(bad), "--ref-mask", str(p["ref"]), "-o", str(tmp_path / "o"), "--model", "mrtm", "-q"])
    _one_line_exit2(rc, capsys.readouterr().err, "sub-02_pet.nii.gz")
    assert not (tmp_path / "o").exists()


def test_directory_where_a_file_is_expected(tmp_path: Path, capsys) -> None:
    p = _small_study(tmp_path)
    d = tmp_path / "adir"
    d.mkdir()
    rc = main(["fit-tacs", str(d), "--ref", "Reference", "--model", "mrtm", "-q"])
    _one_line_exit2(rc, capsys.readouterr().err, "adir", "is a directory")
    rc = main(["fit", str(p["pet"]), "--ref-mask", str(d), "-o", str(tmp_path / "o"), "--model", "mrtm", "-q"])
    _one_line_exit2(rc, capsys.readouterr().err, "adir", "is a directory")
    with pytest.raises(InputError, match="is a directory"):
        api.fit(p["pet"], reference=d, model="mrtm")


def test_unreadable_input_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    """Tests run as root (chmod does not stop root), so the OS refusal is simulated where nibabel opens it."""
    p = _small_study(tmp_path)
    real_load = nib.load

    def deny(path, *a, **k):
        if Path(path).name == "ref.nii.gz":
            raise PermissionError(13, "Permission denied", str(path))
        return real_load(path, *a, **k)

    monkeypatch.setattr("voxelkit.io.nib.load", deny)
    with pytest.raises(InputError, match="ref.nii.gz: cannot read image: permission denied"):
        api.fit(p["pet"], reference=p["ref"], model="mrtm")
    rc = main(["fit", str(p["pet"]), "--ref-mask", str(p["ref"]), "-o", str(tmp_path / "o"), "--model", "mrtm",
               "-q"])
    _one_line_exit2(rc, capsys.readouterr().err, "ref.nii.gz", "permission denied")
    # a table that cannot be opened
    tsv = tmp_path / "t.tsv"
    tsv.write_text((SIMREF / "hukw_1_tacs.tsv").read_text())
    real_open = Path.open

    def deny_open(self, *a, **k):
        if self.name == "t.tsv":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *a, **k)

    monkeypatch.setattr(Path, "open", deny_open)
    rc = main(["fit-tacs", str(tsv), "--ref", "Reference", "--model", "mrtm", "-q"])
    _one_line_exit2(rc, capsys.readouterr().err, "t.tsv", "permission denied")


def test_affine_mismatch_is_one_line_with_details_in_the_debug_log(tmp_path: Path, caplog) -> None:
    p = _small_study(tmp_path)
    other = nib.Nifti1Image(np.ones((5, 2, 2), np.uint8), np.diag([3.0, 2.0, 2.0, 1.0]))
    img = nib.load(p["pet"])
    with caplog.at_level(logging.DEBUG, logger="voxelkit"), pytest.raises(InputError) as ei:
        check_same_space(img, other, "sub-01_pet.nii.gz", "shifted.nii.gz")
    msg = str(ei.value)
    assert "\n" not in msg and "affine mismatch" in msg and "shifted.nii.gz" in msg and "--verbose" in msg
    assert "affine of shifted.nii.gz" in caplog.text and "3." in caplog.text


def test_cli_prints_any_multi_line_error_as_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    p = _small_study(tmp_path)

    def multi(*a, **k):
        raise InputError("first line names the file\nsecond\nthird\nfourth")

    monkeypatch.setattr(api, "fit", multi)
    rc = main(["fit", str(p["pet"]), "--ref-mask", str(p["ref"]), "-o", str(tmp_path / "o"), "--model", "mrtm",
               "-q"])
    _one_line_exit2(rc, capsys.readouterr().err, "first line names the file")


def test_ctrl_c_exits_130_with_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    p = _small_study(tmp_path)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "fit", interrupted)
    rc = main(["fit", str(p["pet"]), "--ref-mask", str(p["ref"]), "-o", str(tmp_path / "o"), "--model", "mrtm",
               "-q"])
    err = capsys.readouterr().err
    assert rc == 130 and len(err.strip().splitlines()) == 1 and "interrupted" in err, err
    assert not (tmp_path / "o").exists()


def test_inputs_are_never_changed(tmp_path: Path) -> None:
    p = _small_study(tmp_path)
    before = {k: _sha(v) for k, v in p.items()}
    assert main(["fit", str(p["pet"]), "--ref-mask", str(p["ref"]), "-o", str(tmp_path), "--model", "mrtm", "-q",
                 "--overwrite"]) == 0
    assert {k: _sha(v) for k, v in p.items()} == before
