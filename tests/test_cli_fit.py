"""``voxelkit fit`` and ``voxelkit fit-tacs`` end to end (in-process through ``voxelkit.cli.main``)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_models_mrtm import SIMREF, truth_tacs

from voxelkit.cli import main


def write_study(tmp: Path, n_frames_json: int | None = None, nan_ref: bool = False) -> dict[str, Path]:
    """A 6x5x4 4-D image of noiseless SRTM TACs (BPND 0-4), a 2-voxel-thick reference slab, a brain mask."""
    ct, cr, _, _, fr = truth_tacs(n=90, seed=3)
    shape = (6, 5, 4)
    data = np.zeros(shape + (fr.n_frames,), dtype=np.float32)
    brain = np.zeros(shape, dtype=np.uint8)
    brain[:, :, :3] = 1
    data[brain.astype(bool)] = ct[: int(brain.sum())]
    ref = np.zeros(shape, dtype=np.uint8)
    ref[:, :, 3] = 1
    data[:, :, 3] = cr
    if nan_ref:
        data[:, :, 3, 4] = np.nan
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    paths = {"pet": tmp / "sub-01_pet.nii.gz", "ref": tmp / "ref.nii.gz", "brain": tmp / "brain.nii.gz",
             "hb": tmp / "hb.nii.gz"}
    nib.save(nib.Nifti1Image(data, aff), paths["pet"])
    nib.save(nib.Nifti1Image(ref, aff), paths["ref"])
    nib.save(nib.Nifti1Image(brain, aff), paths["brain"])
    hb = np.zeros(shape, dtype=np.uint8)
    hb[0, 0, 0] = 1
    nib.save(nib.Nifti1Image(hb, aff), paths["hb"])
    meta = fr.to_bids_dict()
    if n_frames_json is not None:
        meta = {k: v[:n_frames_json] for k, v in meta.items()}
    (tmp / "sub-01_pet.json").write_text(json.dumps(meta))
    return paths


def test_fit_writes_maps_and_sidecar(tmp_path: Path) -> None:
    p = write_study(tmp_path)
    out = tmp_path / "out"
    rc = main(["fit", str(p["pet"]), "--ref-mask", str(p["ref"]), "--mask", str(p["brain"]), "-o", str(out),
               "--model", "logan", "--tstar", "30", "--k2prime", "0.1", "--device", "cpu", "-q"])
    assert rc == 0
    for name in ("bp_nd", "dvr", "wrss", "status"):
        assert (out / f"{name}.nii.gz").exists() and (out / f"{name}.json").exists()
    meta = json.loads((out / "fit.json").read_text())
    assert meta["Model"] == "logan" and "wrss" in meta["Parameters"]
    bp = np.asarray(nib.load(out / "bp_nd.nii.gz").dataobj)
    assert np.isfinite(bp[:, :, :3]).all() and np.isnan(bp[:, :, 3]).all()
    # existing outputs are not overwritten without --overwrite
    args = ["fit", str(p["pet"]), "--ref-mask", str(p["ref"]), "--mask", str(p["brain"]), "-o", str(out),
            "--model", "mrtm", "--device", "cpu", "-q"]
    assert main(args) == 2
    assert json.loads((out / "fit.json").read_text())["Model"] == "logan"
    assert main([*args, "--overwrite"]) == 0
    assert json.loads((out / "fit.json").read_text())["Model"] == "mrtm"


def test_fit_mrtm2_with_k2prime_mask_reaches_sidecar(tmp_path: Path) -> None:
    p = write_study(tmp_path)
    out = tmp_path / "o2"
    rc = main(["fit", str(p["pet"]), "--ref-mask", str(p["ref"]), "--mask", str(p["brain"]), "-o", str(out),
               "--model", "mrtm2", "--k2prime-mask", str(p["hb"]), "--integration", "frame_average",
               "--device", "cpu", "-q"])
    assert rc == 0
    info = json.loads((out / "fit.json").read_text())["Info"]
    assert "hb.nii.gz" in info["k2prime_source"] and info["k2prime"] == pytest.approx(0.1, abs=2e-3)


@pytest.mark.parametrize("case, match", [
    ("frames", "frame count mismatch"),
    ("empty_ref", "empty"),
    ("affine", "does not overlap the PET field of view"),  # another grid that overlaps is resampled (conform)
    ("nan_ref", "non-finite"),
    ("mrtm2_no_k2p", "needs k2'"),
])
def test_fit_errors_name_the_file(tmp_path: Path, capsys, case: str, match: str) -> None:
    p = write_study(tmp_path, n_frames_json=20 if case == "frames" else None, nan_ref=case == "nan_ref")
    ref = p["ref"]
    if case == "empty_ref":
        ref = tmp_path / "empty.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((6, 5, 4), np.uint8), np.diag([2.0, 2.0, 2.0, 1.0])), ref)
    if case == "affine":
        ref = tmp_path / "shifted.nii.gz"
        nib.save(nib.Nifti1Image(np.ones((6, 5, 4), np.uint8), nib.affines.from_matvec(np.diag([3.0, 2.0, 2.0]),
                                                                                      [500.0, 0.0, 0.0])), ref)
    model = "mrtm2" if case == "mrtm2_no_k2p" else "mrtm"
    rc = main(["fit", str(p["pet"]), "--ref-mask", str(ref), "-o", str(tmp_path / "x"), "--model", model,
               "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and match in err, err
    if case in ("frames",):
        assert "sub-01_pet" in err
    if case in ("empty_ref", "affine", "nan_ref"):
        assert Path(ref).name in err


def test_fit_tacs_rows_and_overwrite(tmp_path: Path, capsys) -> None:
    tacs = SIMREF / "hukw_1_tacs.tsv"
    rc = main(["fit-tacs", str(tacs), "--ref", "Reference", "--weights", "kinfitr_weight", "--model", "mrtm2",
               "--k2prime-region", "ROI1", "-q"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    header = out[0].split("\t")
    assert header[:2] == ["region", "bp_nd"] and {"r1", "k2", "k2prime", "wrss", "status"} <= set(header)
    rows = {line.split("\t")[0]: line.split("\t") for line in out[1:]}
    assert set(rows) == {"ROI1", "ROI2", "ROI3"}
    assert float(rows["ROI2"][1]) == pytest.approx(0.808238253648889, abs=1e-5)  # kinfitr 0.9.1 mrtm2
    target = tmp_path / "res.tsv"
    args = ["fit-tacs", str(tacs), "--ref", "Reference", "--model", "mrtm", "-o", str(target), "-q"]
    assert main(args) == 0 and target.exists()
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


@pytest.mark.parametrize("extra, match", [
    (["--model", "mrtm", "--k2prime-region", "ROI1"], "only applies"),
    (["--model", "mrtm2"], "needs k2'"),
    (["--model", "mrtm", "--tstar", "10"], "tstar"),
    (["--model", "mrtm", "--weights", "bogus"], "bogus"),
    (["--model", "mrtm2", "--k2prime", "0.1", "--k2prime-region", "ROI1"], "only one source"),
])
def test_fit_tacs_option_errors(tmp_path: Path, capsys, extra: list[str], match: str) -> None:
    rc = main(["fit-tacs", str(SIMREF / "hukw_1_tacs.tsv"), "--ref", "Reference", *extra, "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and match in err, err


def test_fit_tacs_nan_reference_names_the_file(tmp_path: Path, capsys) -> None:
    src = (SIMREF / "hukw_1_tacs.tsv").read_text().splitlines()
    hdr = src[0].split("\t")
    cols = src[3].split("\t")
    cols[hdr.index("Reference")] = "n/a"
    src[3] = "\t".join(cols)
    bad = tmp_path / "bad_tacs.tsv"
    bad.write_text("\n".join(src) + "\n")
    rc = main(["fit-tacs", str(bad), "--ref", "Reference", "--model", "mrtm", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "bad_tacs.tsv" in err and "non-finite" in err


def test_fit_beside_the_input_and_k2prime_median(tmp_path: Path) -> None:
    """Writing into the input's folder needs --overwrite (the folder is not empty) and never touches the inputs;
    MRTM2 with k2' = median of MRTM."""
    p = write_study(tmp_path)
    rc = main(["fit", str(p["pet"]), "--ref-mask", str(p["ref"]), "--mask", str(p["brain"]), "-o", str(tmp_path),
               "--model", "mrtm2", "--k2prime", "median", "--integration", "frame_average", "--device", "cpu", "-q",
               "--overwrite"])
    assert rc == 0 and p["pet"].exists()
    meta = json.loads((tmp_path / "fit.json").read_text())
    assert meta["Info"]["k2prime_source"].startswith("median")
    assert meta["Info"]["k2prime"] == pytest.approx(0.1, abs=2e-3)
    bp = np.asarray(nib.load(tmp_path / "bp_nd.nii.gz").dataobj)
    assert np.isfinite(bp[:, :, :3]).all()
