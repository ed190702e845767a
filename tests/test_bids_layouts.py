"""BIDS-PET layouts real studies use: visit-numbered sessions with the drug in sessions.tsv, several
reconstructions per session, a subject without a session level, and PETPrep-preprocessed images.

Each layout is built from one small simulated crossover study; the reference is ``voxelkit run`` on the plain
``ses-<condition>`` layout of the same images, whose statistics the other layouts must reproduce exactly."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from voxelkit.io import InputError
from voxelkit.pipeline import StudyConfig, layout, run_study
from voxelkit.pipeline.bids import Scan, find_scans, parse_filters, select_scans

N_SUBJECTS = 6
CONDS = ("anakinra", "placebo")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    from voxelkit.simulate.study import simulate_study

    root = tmp_path_factory.mktemp("layouts") / "bids"
    simulate_study(root, preset="test", n_subjects=N_SUBJECTS, effect=0.15, noise=0.05, seed=3, challenge="none")
    return root


def _cfg(bids: Path, out: Path, **kw) -> StudyConfig:
    base = dict(bids_dir=bids, output_dir=out, model="mrtm", n_perm=64, cluster_p=0.01, tfce=False, seed=1,
                report=False)
    base.update(kw)
    return StudyConfig(**base)


@pytest.fixture(scope="module")
def reference_t(study: Path, tmp_path_factory) -> np.ndarray:
    out = tmp_path_factory.mktemp("ref") / "out"
    run_study(_cfg(study, out), progress=False)
    return _t(out)


def _t(out: Path) -> np.ndarray:
    return np.asarray(nib.load(str(layout.stats_dir(out) / "t.nii.gz")).dataobj)


def _copy(study: Path, dest: Path) -> Path:
    shutil.copytree(study, dest, ignore=shutil.ignore_patterns("voxelkit"))
    return dest


def _visit_layout(study: Path, dest: Path) -> Path:
    """ses-1/ses-2 by visit order (participants.tsv session_order), the drug in sub-XX_sessions.tsv."""
    bids = _copy(study, dest)
    orders = {}
    for line in (bids / "participants.tsv").read_text().splitlines()[1:]:
        cells = line.split("\t")
        orders[cells[0].removeprefix("sub-")] = cells[7].split("-")
    for sub, order in orders.items():
        rows = ["session_id\tacq_time\tdrug\tpain"]
        for visit, cond in enumerate(order, start=1):
            src = bids / f"sub-{sub}" / f"ses-{cond}"
            dst = bids / f"sub-{sub}" / f"ses-{visit}"
            src.rename(dst)
            for f in sorted((dst / "pet").iterdir()):
                f.rename(f.with_name(f.name.replace(f"_ses-{cond}_", f"_ses-{visit}_")))
            rows.append(f"ses-{visit}\t2024-0{visit}-1{visit}T09:00:00\t{cond}\t{30 + visit}")
        (bids / f"sub-{sub}" / f"sub-{sub}_sessions.tsv").write_text("\n".join(rows) + "\n")
    return bids


def test_sessions_tsv_condition_column(study: Path, reference_t: np.ndarray, tmp_path: Path, caplog):
    bids = _visit_layout(study, tmp_path / "visits")
    assert not list(bids.glob("sub-*/ses-anakinra"))
    res = run_study(_cfg(bids, tmp_path / "o1", condition_column="drug"), progress=False)
    assert len(res.subjects) == N_SUBJECTS
    np.testing.assert_array_equal(_t(tmp_path / "o1"), reference_t)
    prov = json.loads((tmp_path / "o1" / "provenance.json").read_text())
    row = next(r for r in prov["scans"] if r["subject"] == "01" and r["condition"] == "anakinra")
    assert row["session"] in ("1", "2") and f"ses-{row['session']}" in row["pet"]

    # the column found by itself: the condition values occur only in 'drug'
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="voxelkit"):
        run_study(_cfg(bids, tmp_path / "o2"), progress=False)
    np.testing.assert_array_equal(_t(tmp_path / "o2"), reference_t)
    assert "found in column 'drug'" in caplog.text

    # visit labels as conditions: runs (a period contrast) but warns about the drug column
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="voxelkit"):
        run_study(_cfg(bids, tmp_path / "o3", conditions=("1", "2")), progress=False)
    warn = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("--condition-column drug" in w and "anakinra" in w for w in warn), warn
    assert not any("'pain'" in w or "'acq_time'" in w for w in warn), warn


def test_sessions_tsv_errors(study: Path, tmp_path: Path):
    bids = _visit_layout(study, tmp_path / "visits")
    with pytest.raises(InputError, match="no column 'treatment'"):
        run_study(_cfg(bids, tmp_path / "o", condition_column="treatment"), progress=False)
    with pytest.raises(InputError, match="no sub-XX_sessions.tsv column holds both 'drug' and 'placebo'"):
        run_study(_cfg(bids, tmp_path / "o", conditions=("drug", "placebo")), progress=False)
    tsv = bids / "sub-02" / "sub-02_sessions.tsv"
    tsv.write_text(tsv.read_text().replace("\tplacebo\t", "\tanakinra\t"))
    with pytest.raises(InputError, match=r"sub-02_sessions.tsv: ses-\d and ses-\d both have drug=anakinra"):
        run_study(_cfg(bids, tmp_path / "o", condition_column="drug"), progress=False)
    assert not (tmp_path / "o" / "group").exists()


def test_subject_without_session_level_is_reported(study: Path, tmp_path: Path, caplog):
    bids = _copy(study, tmp_path / "noses")
    sub = bids / "sub-03"
    shutil.move(str(sub / "ses-anakinra" / "pet"), str(sub / "pet"))
    shutil.rmtree(sub / "ses-placebo")
    with pytest.raises(InputError, match=r"sub-03: PET data without a ses- level \(sub-03/pet/"):
        find_scans(bids)
    shutil.rmtree(sub / "pet")
    with caplog.at_level(logging.WARNING, logger="voxelkit"):
        scans = find_scans(bids)
    assert "sub-03 has no PET file under ses-*/pet/" in caplog.text
    shutil.rmtree(sub / "ses-anakinra")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="voxelkit"):
        find_scans(bids)
    assert "sub-03 has no ses-* folder" in caplog.text
    assert {s.subject for s in scans} == {"01", "02", "04", "05", "06"}


def _two_recs(study: Path, dest: Path) -> Path:
    """Every session holds rec-acdyn (the dynamic scan) and rec-acstat (one summed frame)."""
    bids = _copy(study, dest)
    for pet in sorted(bids.glob("sub-*/ses-*/pet/*_pet.nii.gz")):
        side = pet.with_name(pet.name.replace(".nii.gz", ".json"))
        stem = pet.name.removesuffix("_pet.nii.gz")
        dyn = pet.with_name(f"{stem}_rec-acdyn_pet.nii.gz")
        pet.rename(dyn)
        side.rename(dyn.with_name(dyn.name.replace(".nii.gz", ".json")))
        img = nib.load(str(dyn))
        meta = json.loads(dyn.with_name(dyn.name.replace(".nii.gz", ".json")).read_text())
        stat = np.asarray(img.dataobj, dtype=np.float32)[..., -3:].mean(axis=3)
        spath = pet.with_name(f"{stem}_rec-acstat_pet.nii.gz")
        nib.save(nib.Nifti1Image(stat, img.affine), str(spath))
        start = meta["FrameTimesStart"][-3]
        meta.update(FrameTimesStart=[start], FrameDuration=[sum(meta["FrameDuration"][-3:])])
        spath.with_name(spath.name.replace(".nii.gz", ".json")).write_text(json.dumps(meta))
    return bids


def test_dynamic_reconstruction_chosen_or_filtered(study: Path, reference_t: np.ndarray, tmp_path: Path, caplog):
    bids = _two_recs(study, tmp_path / "recs")
    scans = find_scans(bids)
    assert len(scans) == 4 * N_SUBJECTS and dict(scans[0].entities)["rec"] in ("acdyn", "acstat")
    with caplog.at_level(logging.INFO, logger="voxelkit"):
        chosen = select_scans(scans)
    assert all(s.entity("rec") == "acdyn" for s in chosen) and len(chosen) == 2 * N_SUBJECTS
    assert "using the dynamic scan" in caplog.text and "(1 frame)" in caplog.text
    assert [s.pet for s in select_scans(scans, {"rec": "acstat"})] == sorted(
        s.pet for s in scans if s.entity("rec") == "acstat")
    with pytest.raises(InputError, match="--filter rec=osem matches no PET scan; rec values present: acdyn, acstat"):
        select_scans(scans, {"rec": "osem"})
    # the whole study: automatic choice, and the explicit filter, give the reference statistics
    run_study(_cfg(bids, tmp_path / "o1"), progress=False)
    np.testing.assert_array_equal(_t(tmp_path / "o1"), reference_t)
    run_study(_cfg(bids, tmp_path / "o2", filters={"rec": "acdyn"}), progress=False)
    np.testing.assert_array_equal(_t(tmp_path / "o2"), reference_t)


def test_two_dynamic_candidates_need_a_filter(study: Path, tmp_path: Path):
    bids = _copy(study, tmp_path / "runs")
    pet = sorted(bids.glob("sub-01/ses-anakinra/pet/*_pet.nii.gz"))[0]
    side = pet.with_name(pet.name.replace(".nii.gz", ".json"))
    for run in ("1", "2"):
        shutil.copy(pet, pet.with_name(pet.name.replace("_pet.", f"_run-{run}_pet.")))
        shutil.copy(side, side.with_name(side.name.replace("_pet.", f"_run-{run}_pet.")))
    pet.unlink()
    side.unlink()
    scans = find_scans(bids)
    with pytest.raises(InputError, match=r"sub-01 ses-anakinra: 2 PET scans and not exactly one dynamic.*"
                                         r"--filter run=\.\.\."):
        select_scans(scans)
    kept = select_scans(scans, {"run": "2"})
    assert [s.entity("run") for s in kept if s.subject == "01"] == ["2"]
    assert len(kept) == 1  # the other subjects have no run entity: the filter keeps only matching files


def test_frame_count_from_header_without_sidecar_field(tmp_path: Path):
    from voxelkit.pipeline.bids import n_frames

    img = tmp_path / "sub-01_ses-1_pet.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 7), np.float32), np.eye(4)), str(img))
    side = tmp_path / "sub-01_ses-1_pet.json"
    side.write_text("{}")
    assert n_frames(Scan("01", "1", img, side)) == 7
    side.write_text(json.dumps({"FrameDuration": [60, 60, 120]}))
    assert n_frames(Scan("01", "1", img, side)) == 3


def test_parse_filters():
    assert parse_filters(["rec=acdyn", "trc=rec-11CPS13".replace("rec-", ""), "run=run-2"]) == {
        "rec": "acdyn", "trc": "11CPS13", "run": "2"}
    with pytest.raises(InputError, match="expected KEY=VALUE"):
        parse_filters(["rec"])
    with pytest.raises(InputError, match="unknown BIDS entity 'foo'"):
        parse_filters(["foo=1"])


def _petprep(study: Path, dest: Path, timing_in_derivative: bool) -> tuple[Path, Path]:
    """A raw dataset plus derivatives/petprep with *_space-MNI152NLin2009cAsym_desc-preproc_pet images."""
    bids = _copy(study, dest)
    deriv = bids / "derivatives" / "petprep"
    for pet in sorted(bids.glob("sub-*/ses-*/pet/*_pet.nii.gz")):
        rel = pet.parent.relative_to(bids)
        stem = pet.name.removesuffix("_pet.nii.gz")
        res = "_res-2" if timing_in_derivative else ""  # PETPrep may add a res- entity
        out = deriv / rel / f"{stem}_space-MNI152NLin2009cAsym{res}_desc-preproc_pet.nii.gz"
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(pet, out)
        meta = json.loads(pet.with_name(f"{stem}_pet.json").read_text())
        dmeta = {"SpatialReference": "MNI152NLin2009cAsym"}
        if timing_in_derivative:
            dmeta.update(FrameTimesStart=meta["FrameTimesStart"], FrameDuration=meta["FrameDuration"])
        out.with_name(out.name.replace(".nii.gz", ".json")).write_text(json.dumps(dmeta))
        # the raw image is replaced by garbage: the derivative must be the one that is read
        img = nib.load(str(pet))
        nib.save(nib.Nifti1Image(np.ones(img.shape, np.float32), img.affine), str(pet))
    return bids, deriv


@pytest.mark.parametrize("timing_in_derivative", [False, True])
def test_input_derivatives(study: Path, reference_t: np.ndarray, tmp_path: Path, timing_in_derivative: bool):
    bids, deriv = _petprep(study, tmp_path / "pp", timing_in_derivative)
    res = run_study(_cfg(bids, tmp_path / "o", input_derivatives=deriv, space="MNI152NLin2009cAsym"),
                    progress=False)
    np.testing.assert_array_equal(_t(tmp_path / "o"), reference_t)
    prov = json.loads((tmp_path / "o" / "provenance.json").read_text())
    assert all("desc-preproc_pet" in r["pet"] for r in prov["scans"])
    sidecars = {Path(r["sidecar"]).parts[-5] for r in prov["scans"]}
    assert sidecars == ({"petprep"} if timing_in_derivative else {"pp"})
    assert len(res.subjects) == N_SUBJECTS
    with pytest.raises(InputError, match="no \\*_space-T1w_desc-preproc_pet.nii.gz.*spaces present: "
                                         "MNI152NLin2009cAsym"):
        run_study(_cfg(bids, tmp_path / "o2", input_derivatives=deriv, space="T1w"), progress=False)


def test_cli_visit_layout_and_bad_filter(study: Path, reference_t: np.ndarray, tmp_path: Path):
    bids = _visit_layout(study, tmp_path / "visits")
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "voxelkit", "run", str(bids), "-o", str(out), "--condition-column", "drug",
           "--conditions", "anakinra", "placebo", "--model", "mrtm", "--n-perm", "64", "--cluster-p", "0.01",
           "--no-tfce", "--seed", "1", "--no-report", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"subjects: {N_SUBJECTS} paired" in proc.stdout
    assert "\r" not in proc.stderr  # no progress bars when stderr is not a terminal (log files)
    np.testing.assert_array_equal(_t(out), reference_t)
    bad = subprocess.run([*cmd[:-1], "cpu", "--filter", "rec"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--filter 'rec': expected KEY=VALUE" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
