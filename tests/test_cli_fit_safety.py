"""``voxelkit fit`` / ``fit-tacs``: safe defaults (no all-NaN maps with exit 0), QC of failed fits, and safe writes
(OutputFolder: non-empty folders, stale maps of another model, inputs never replaced)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_cli_fit import write_study
from test_models_mrtm import SIMREF

from voxelkit import api
from voxelkit.cli import main
from voxelkit.io import InputError
from voxelkit.outputs import MANIFEST_NAME


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _one_line_exit2(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


def _zero_first_frame(p: dict[str, Path]) -> None:
    """The tracer has not arrived in the first frame (0-10 s): zero activity there, as in real scans."""
    img = nib.load(p["pet"])
    data = np.asarray(img.dataobj).copy()
    data[..., 0] = 0.0
    nib.save(nib.Nifti1Image(data, img.affine), p["pet"])


def _base(p: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["fit", str(p["pet"]), "--ref-mask", str(p["ref"]), "--mask", str(p["brain"]), "-o", str(out),
            "--device", "cpu", "-q", *extra]


# ---------------------------------------------------------------------------------------------------------
# defaults and QC
# ---------------------------------------------------------------------------------------------------------
def test_default_fit_refuses_and_names_tstar(tmp_path: Path, capsys) -> None:
    p = write_study(tmp_path)
    _zero_first_frame(p)
    out = tmp_path / "out"
    rc = main(["fit", str(p["pet"]), "--ref-mask", str(p["ref"]), "-o", str(out)])
    _one_line_exit2(rc, capsys.readouterr().err, "logan needs --tstar MIN")
    assert not out.exists()
    with pytest.raises(InputError, match="logan needs --tstar"):
        api.fit(p["pet"], reference=p["ref"])
    # with t* the default model gives a valid map
    assert main(_base(p, out, "--tstar", "30")) == 0
    bp = np.asarray(nib.load(out / "bp_nd.nii.gz").dataobj)
    assert np.isfinite(bp[:, :, :3]).all()


def test_mostly_failed_fit_warns_loudly_and_strict_refuses(tmp_path: Path, capsys) -> None:
    p = write_study(tmp_path)
    _zero_first_frame(p)
    out = tmp_path / "out"
    argv = [a for a in _base(p, out, "--model", "logan", "--tstar", "0") if a != "-q"]
    proc = subprocess.run([sys.executable, "-m", "voxelkit", *argv], capture_output=True, text=True, timeout=120)
    err = proc.stderr  # the real CLI's stderr (pytest's log capture would swallow it in-process)
    assert proc.returncode == 0, err
    n = 6 * 5 * 3
    assert f"{n} of {n} voxels failed (100.0 %, mostly nonpositive)" in err and "t* too early" in err, err
    qc = json.loads((out / "fit.json").read_text())["QC"]
    assert qc["flagged"] and qc["n_failed"] == n and qc["main_cause"] == "nonpositive"
    out2 = tmp_path / "strict"
    rc = main(_base(p, out2, "--model", "logan", "--tstar", "0", "--strict"))
    _one_line_exit2(rc, capsys.readouterr().err, "--strict", "nonpositive")
    assert not out2.exists() or not any(out2.iterdir())


def test_qc_summary_on_the_fit_object(tmp_path: Path) -> None:
    p = write_study(tmp_path)
    _zero_first_frame(p)
    good = api.fit(p["pet"], reference=p["ref"], model="mrtm", mask=p["brain"], device="cpu").qc()
    assert (good["n"], good["n_failed"], good["share"], good["flagged"], good["main_cause"]) == (90, 0, 0.0,
                                                                                               False, None)
    bad = api.fit(p["pet"], reference=p["ref"], model="logan", tstar=0, mask=p["brain"], device="cpu").qc()
    assert bad["flagged"] and bad["share"] == 1.0 and bad["main_cause"] == "nonpositive"
    assert "tstar" in bad["likely_cause"] and "90 of 90" in bad["message"]
    # another cause: a theta3 grid far too narrow for the data
    srtm = api.fit(p["pet"], reference=p["ref"], model="srtm", mask=p["brain"], device="cpu",
                   theta3_range=(0.05, 0.06), n_basis=5).qc()
    assert srtm["flagged"] and srtm["main_cause"] == "grid_edge" and "theta3" in srtm["likely_cause"]


# ---------------------------------------------------------------------------------------------------------
# output folder
# ---------------------------------------------------------------------------------------------------------
def test_stale_maps_of_another_model_are_removed_with_overwrite(tmp_path: Path, capsys) -> None:
    p = write_study(tmp_path)
    out = tmp_path / "out"
    assert main(_base(p, out, "--model", "srtm")) == 0
    assert (out / "theta3.nii.gz").exists() and (out / MANIFEST_NAME).exists()
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert "theta3.nii.gz" in manifest["written"] and manifest["command"] == "fit"
    (out / "notes.txt").write_text("mine")  # not voxelkit's: never removed
    rc = main(_base(p, out, "--model", "logan", "--tstar", "30"))
    _one_line_exit2(rc, capsys.readouterr().err, "not empty", "--overwrite")
    assert json.loads((out / "fit.json").read_text())["Model"] == "srtm"
    assert main(_base(p, out, "--model", "logan", "--tstar", "30", "--overwrite")) == 0
    assert not (out / "theta3.nii.gz").exists() and not (out / "theta3.json").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "fit.json").read_text())["Model"] == "logan"
    written = set(json.loads((out / MANIFEST_NAME).read_text())["written"])
    assert {f.name for f in out.iterdir()} == written | {MANIFEST_NAME, "notes.txt"}


def test_writing_beside_the_input_needs_overwrite_and_keeps_inputs(tmp_path: Path, capsys) -> None:
    p = write_study(tmp_path)
    before = {k: _sha(v) for k, v in p.items()}
    before["json"] = _sha(tmp_path / "sub-01_pet.json")
    rc = main(_base(p, tmp_path, "--model", "mrtm"))
    _one_line_exit2(rc, capsys.readouterr().err, "not empty")
    assert main(_base(p, tmp_path, "--model", "mrtm", "--overwrite")) == 0
    assert main(_base(p, tmp_path, "--model", "logan", "--tstar", "30", "--overwrite")) == 0
    after = {k: _sha(v) for k, v in p.items()}
    after["json"] = _sha(tmp_path / "sub-01_pet.json")
    assert after == before
    assert not (tmp_path / "r1.nii.gz").exists()  # the MRTM map went with the MRTM manifest


def test_an_output_named_like_an_input_is_refused(tmp_path: Path, capsys) -> None:
    p = write_study(tmp_path)
    ref_as_map = tmp_path / "bp_nd.nii.gz"
    ref_as_map.write_bytes(p["ref"].read_bytes())
    sha = _sha(ref_as_map)
    rc = main(["fit", str(p["pet"]), "--ref-mask", str(ref_as_map), "--mask", str(p["brain"]), "-o",
               str(tmp_path), "--model", "mrtm", "--overwrite", "--device", "cpu", "-q"])
    _one_line_exit2(rc, capsys.readouterr().err, "bp_nd.nii.gz", "input")
    assert _sha(ref_as_map) == sha


def test_output_path_that_is_a_file_or_unwritable(tmp_path: Path, capsys, monkeypatch) -> None:
    p = write_study(tmp_path)
    afile = tmp_path / "out.txt"
    afile.write_text("x")
    rc = main(_base(p, afile, "--model", "mrtm"))
    _one_line_exit2(rc, capsys.readouterr().err, "out.txt", "existing file")
    rc = main(_base(p, afile / "sub", "--model", "mrtm"))
    _one_line_exit2(rc, capsys.readouterr().err, "out.txt")
    assert afile.read_text() == "x"

    import tempfile  # root ignores permission bits: simulate the OS refusal where the write test happens

    real = tempfile.NamedTemporaryFile

    def refuse(*a, **k):
        if "ro" in Path(str(k.get("dir", ""))).name:
            raise PermissionError(13, "Permission denied")
        return real(*a, **k)

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    ro = tmp_path / "ro"
    ro.mkdir()
    rc = main(_base(p, ro, "--model", "mrtm"))
    _one_line_exit2(rc, capsys.readouterr().err, "ro", "not writable")
    assert not any(ro.iterdir())


def test_model_fit_save_writes_a_manifest_and_refuses_a_full_folder(tmp_path: Path) -> None:
    p = write_study(tmp_path)
    f = api.fit(p["pet"], reference=p["ref"], model="mrtm", mask=p["brain"], device="cpu")
    out = tmp_path / "api"
    written = f.save(out, prefix="x_", inputs=[p["pet"]])
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert sorted(manifest["written"]) == sorted(w.name for w in written) == sorted(f.planned_outputs("x_"))
    with pytest.raises(InputError, match="not empty"):
        f.save(out)


# ---------------------------------------------------------------------------------------------------------
# fit-tacs
# ---------------------------------------------------------------------------------------------------------
def test_fit_tacs_never_overwrites_its_input(tmp_path: Path, capsys) -> None:
    tsv = tmp_path / "tacs.tsv"
    tsv.write_text((SIMREF / "hukw_1_tacs.tsv").read_text())
    sha = _sha(tsv)
    for extra in ([], ["--overwrite"]):
        rc = main(["fit-tacs", str(tsv), "--ref", "Reference", "--model", "mrtm", "-o", str(tsv), "-q", *extra])
        _one_line_exit2(rc, capsys.readouterr().err, "tacs.tsv", "input")
    assert _sha(tsv) == sha
    rc = main(["fit-tacs", str(tsv), "--ref", "Reference", "--model", "mrtm", "-o", str(tmp_path), "-q"])
    _one_line_exit2(rc, capsys.readouterr().err, "existing folder")
    res = tmp_path / "res.tsv"
    assert main(["fit-tacs", str(tsv), "--ref", "Reference", "--model", "mrtm", "-o", str(res), "-q"]) == 0
    assert res.read_text().startswith("region\tbp_nd")
