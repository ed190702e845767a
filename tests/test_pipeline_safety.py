"""``voxelkit run`` safety (issue 9): covariate centring, k2' once per scan, failed scans, derivatives that are
not ours, validation before the first fit, the output-folder lock, interrupts and one-line errors."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from voxelkit.io import InputError
from voxelkit.outputs import LOCK_NAME, MANIFEST_NAME
from voxelkit.pipeline import StudyConfig, layout, run_study
from voxelkit.pipeline.bids import read_participants

N_SUBJECTS = 6
CONTRAST = "BPNDanakinraMinusPlacebo"  # layout.contrast_label("bp_nd", "anakinra", "placebo")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    from voxelkit.simulate.study import simulate_study

    root = tmp_path_factory.mktemp("safety") / "bids"
    simulate_study(root, preset="test", n_subjects=N_SUBJECTS, effect=0.15, noise=0.05, seed=5, challenge="none")
    return root


@pytest.fixture(scope="module")
def previous(study: Path, tmp_path_factory) -> Path:
    """A finished run (no covariates) whose folder later tests must leave exactly as it is."""
    out = tmp_path_factory.mktemp("previous") / "out"
    run_study(_cfg(study, out), progress=False)
    return out


def _cfg(bids: Path, out: Path, **kw) -> StudyConfig:
    base = dict(bids_dir=bids, output_dir=out, model="mrtm", n_perm=64, cluster_p=0.01, tfce=False, seed=1,
                smoothing_fwhm=4.0, report=False)
    base.update(kw)
    return StudyConfig(**base)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "voxelkit", "run", *args, "--quiet"], capture_output=True,
                          text=True, timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _t_map(out: Path) -> tuple[np.ndarray, np.ndarray]:
    stats = layout.stats_dir(out)
    t = np.asarray(nib.load(str(stats / "t.nii.gz")).dataobj, dtype=np.float64)
    mask = np.asarray(nib.load(str(stats / "mask.nii.gz")).dataobj) > 0
    return t, mask


def _ols_t(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """t of the first regressor of ``x`` (n, p) for every column of ``y`` (n, V): a plain OLS reference."""
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    df = x.shape[0] - np.linalg.matrix_rank(x)
    sigma2 = (resid ** 2).sum(axis=0) / df
    return beta[0] / np.sqrt(sigma2 * np.linalg.inv(x.T @ x)[0, 0])


# --- item 1: covariates are centred ------------------------------------------------------------------------------

def test_covariate_unrelated_to_effect_leaves_t_map_nearly_unchanged(study: Path, previous: Path, tmp_path: Path):
    out = tmp_path / "cov"
    res = run_study(_cfg(study, out, covariates=["age"]), progress=False)
    t0, mask0 = _t_map(previous)
    t1, mask1 = _t_map(out)
    assert np.array_equal(mask0, mask1)
    subjects = res.subjects
    age = np.array([float(read_participants(study)[s]["age"]) for s in subjects])
    assert np.ptp(age) > 0

    # independent OLS reference: the contrast maps regressed on [1, age - mean(age)], the intercept's t
    y = np.stack([np.asarray(nib.load(str(layout.contrast_path(out, s, CONTRAST))).dataobj, np.float64)[mask1]
                  for s in subjects])
    t_ref = _ols_t(y, np.column_stack([np.ones(len(age)), age - age.mean()]))
    np.testing.assert_allclose(t1[mask1], t_ref, rtol=2e-3, atol=2e-3)

    # the drug effect is planted the same in everyone, age is unrelated: the t map barely moves
    strong = mask0 & (np.abs(t0) > 4)
    assert strong.sum() > 20
    ratio = np.median(np.abs(t1[strong]) / np.abs(t0[strong]))
    assert 0.7 < ratio < 1.5, ratio  # same mean difference; only the residual sd (df 5 -> 4) changes
    assert np.corrcoef(t0[mask0], t1[mask0])[0, 1] > 0.85
    assert (np.sign(t1[strong]) == np.sign(t0[strong])).mean() > 0.97
    # the old design (raw age, intercept = the effect at age 0: ages 20-44 extrapolated to 0) shrinks it
    t_old = _ols_t(y, np.column_stack([np.ones(len(age)), age]))
    assert np.median(np.abs(t_old[strong[mask1]]) / np.abs(t1[strong])) < 0.7

    # the coding is recorded beside the statistics and in the provenance
    stats = json.loads((layout.stats_dir(out) / "stats.json").read_text())
    assert "mean-centred" in stats["covariate_coding"] and stats["design_columns"] == ["intercept", "age"]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["covariate_coding"]["covariate_columns"][0]["mean"] == pytest.approx(age.mean())


# --- item 2: k2' once per scan -----------------------------------------------------------------------------------

def test_k2prime_median_estimated_once_per_scan_with_windows(tmp_path_factory, tmp_path: Path):
    from voxelkit.simulate.study import simulate_study

    bids = tmp_path_factory.mktemp("noiseless") / "bids"
    simulate_study(bids, preset="test", n_subjects=N_SUBJECTS, effect=0.15, noise=0.0, seed=2, challenge="none")
    out = tmp_path / "out"
    windows = {"baseline": (0, 45), "challenge": (45, 90)}
    res = run_study(_cfg(bids, out, model="mrtm2", model_options={"k2prime": "median"}, windows=windows,
                         smoothing_fwhm=0.0), progress=False)
    prov = json.loads((out / "provenance.json").read_text())
    assert len(prov["k2prime_per_scan"]) == 2 * N_SUBJECTS
    for sub in res.subjects:
        for cond in ("anakinra", "placebo"):
            values = []
            for phase in windows:
                side = layout.map_path(out, sub, cond, "mrtm2", "bp_nd", phase).with_suffix("").with_suffix(".json")
                info = json.loads(side.read_text())["Info"]
                assert info["k2prime_per_scan"] is True and info["k2prime_frames"] == "all frames of the scan"
                values.append(info["k2prime"])
                rec = json.loads(layout.fit_record_path(out, sub, cond, "mrtm2", phase).read_text())
                assert rec["k2prime"]["value"] == info["k2prime"]
                k2map = np.asarray(nib.load(str(layout.map_path(out, sub, cond, "mrtm2", "k2prime", phase))).dataobj)
                assert np.allclose(k2map[np.isfinite(k2map)], info["k2prime"], rtol=1e-6)
            assert values[0] == values[1], values  # the same k2' in every window
            assert abs(values[0] - 0.1) < 0.005, values  # the true k2' of the simulation
            assert prov["k2prime_per_scan"][f"sub-{sub}_ses-{cond}"]["value"] == values[0]

    # k2' from a window the user names (k2prime_window, minutes): still one value per scan, in every window
    out2 = tmp_path / "out2"
    res2 = run_study(_cfg(bids, out2, model="mrtm2", model_options={"k2prime": "median", "k2prime_window": [0, 60]},
                          windows=windows, smoothing_fwhm=0.0), progress=False)
    sub = res2.subjects[0]
    infos = [json.loads(layout.map_path(out2, sub, "placebo", "mrtm2", "bp_nd", phase).with_suffix("")
                        .with_suffix(".json").read_text())["Info"] for phase in windows]
    assert infos[0]["k2prime"] == infos[1]["k2prime"] and abs(infos[0]["k2prime"] - 0.1) < 0.01
    assert all(i["k2prime_window_min"] == [0.0, 60.0] and "k2prime_window" in i["k2prime_frames"] for i in infos)


# --- item 3 (issue item 4): a scan where most voxels fail ---------------------------------------------------------

def _break_scan(bids: Path, sub: str, ses: str) -> None:
    """NaN in every brain voxel outside the reference region, in every frame."""
    pet = bids / f"sub-{sub}" / f"ses-{ses}" / "pet" / f"sub-{sub}_ses-{ses}_pet.nii.gz"
    img = nib.load(str(pet))
    data = np.asarray(img.dataobj, dtype=np.float32)
    ref = next((bids / "derivatives" / "voxelkit-sim").glob("*desc-reference_mask.nii.gz"))
    brain = next((bids / "derivatives" / "voxelkit-sim").glob("*desc-brain_mask.nii.gz"))
    sel = (np.asarray(nib.load(str(brain)).dataobj) > 0) & ~(np.asarray(nib.load(str(ref)).dataobj) > 0)
    data[sel] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine, img.header), str(pet))


def test_failed_scan_reported_and_left_out_unless_kept(study: Path, tmp_path: Path, caplog, capsys):
    from voxelkit.cli.run import print_summary

    bids = tmp_path / "bids"
    shutil.copytree(study, bids)
    _break_scan(bids, "02", "placebo")
    with caplog.at_level(logging.WARNING, logger="voxelkit"):
        res = run_study(_cfg(bids, tmp_path / "o1", two_sided=False), progress=False)
    assert "02" not in res.subjects and len(res.subjects) == N_SUBJECTS - 1
    assert res.dropped["02"].startswith("failed fit")
    [f] = res.failed_scans
    assert (f["subject"], f["session"], f["main_status"], f["kept"]) == ("02", "placebo", "nonfinite_input", False)
    assert f["n_failed"] > 0.5 * f["n_voxels"] and "NaN" in f["likely_cause"]
    warned = [r.getMessage() for r in caplog.records if "sub-02 ses-placebo" in r.getMessage()]
    assert any(f"{f['n_failed']} of {f['n_voxels']} voxels" in m for m in warned), warned
    prov = json.loads((tmp_path / "o1" / "provenance.json").read_text())
    assert prov["failed_scans"][0]["subject"] == "02" and "02" in prov["dropped_subjects"]
    print_summary(res)
    assert "FAILED SCAN: sub-02 ses-placebo" in capsys.readouterr().out

    res2 = run_study(_cfg(bids, tmp_path / "o2", two_sided=False, keep_failed_scans=True), progress=False)
    assert "02" in res2.subjects and res2.failed_scans[0]["kept"] is True

    # left out, too few remain (5, two-sided): one line naming the failed scans and the option that keeps them
    with pytest.raises(InputError, match="after leaving out 1 subject.*--keep-failed-scans"):
        run_study(_cfg(bids, tmp_path / "o1"), progress=False)


# --- item 4 (issue item 10): never write into a derivatives dataset voxelkit did not create ----------------------

def test_foreign_derivatives_dataset_is_never_written(study: Path, tmp_path: Path):
    sim = study / "derivatives" / "voxelkit-sim"
    before = _digest(sim)
    line = _one_line_error(_cli(str(study), "-o", str(sim), "--model", "mrtm", "--n-perm", "32"))
    assert "voxelkit-simulate" in line and "dataset_description.json" in line
    assert _digest(sim) == before

    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine\n")
    with pytest.raises(InputError, match="no voxelkit manifest"):
        run_study(_cfg(study, other), progress=False)
    assert sorted(p.name for p in other.iterdir()) == ["todo.txt"]


# --- item 5 (issue item 11): validate before the first fit; records beside their results ---------------------------

def test_missing_covariate_column_fails_before_any_fit(study: Path, previous: Path):
    before = _digest(previous)
    line = _one_line_error(_cli(str(study), "-o", str(previous), "--model", "mrtm", "--covariates", "bmi",
                                "--n-perm", "64", "--no-tfce", "--no-report"))
    assert "participants.tsv" in line and "'bmi'" in line and "age" in line
    assert _digest(previous) == before  # no new file, study.json of the previous run unchanged


def test_too_few_subjects_fail_up_front(study: Path, tmp_path: Path, monkeypatch):
    import voxelkit.api

    bids = tmp_path / "bids"
    shutil.copytree(study, bids)
    for sub in ("05", "06"):
        shutil.rmtree(bids / f"sub-{sub}")  # the size of `voxelkit simulate --preset test`: 4 subjects
    calls = []
    monkeypatch.setattr(voxelkit.api, "fit", lambda *a, **k: calls.append(1))
    out = tmp_path / "out"
    with pytest.raises(InputError, match="4 subject.*at least 5"):
        run_study(_cfg(bids, out), progress=False)
    assert not calls and not out.exists()
    # 5 subjects two-sided: the smallest attainable p is 2/32 > 0.05, also said before any fit
    shutil.copytree(study / "sub-05", bids / "sub-05")
    with pytest.raises(InputError, match="5 paired subjects.*0.0625.*--one-sided"):
        run_study(_cfg(bids, out), progress=False)
    assert not calls and not out.exists()


def test_settings_record_written_with_the_results(study: Path, previous: Path, tmp_path: Path, monkeypatch):
    """A run that fails after its fits leaves the previous study.json and statistics together."""
    import voxelkit.pipeline.run as prun

    out = tmp_path / "out"
    shutil.copytree(previous, out)
    study_json = (out / "study.json").read_text()

    def boom(*a, **k):
        raise InputError("stats failed")

    monkeypatch.setattr(prun, "run_group_stats", boom)
    with pytest.raises(InputError, match="stats failed"):
        run_study(_cfg(study, out, smoothing_fwhm=2.0), progress=False)
    assert (out / "study.json").read_text() == study_json
    assert not (out / LOCK_NAME).exists()


def test_stale_group_outputs_removed(study: Path, previous: Path, tmp_path: Path):
    out = tmp_path / "out"
    shutil.copytree(previous, out)
    run_study(_cfg(study, out, tfce=True), progress=False)
    assert (layout.stats_dir(out) / "logp_fwe_tfce.nii.gz").exists()
    res = run_study(_cfg(study, out, tfce=False), progress=False)
    assert res.reused == 2 * N_SUBJECTS
    assert not (layout.stats_dir(out) / "logp_fwe_tfce.nii.gz").exists()
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["command"] == "run" and manifest["complete"] is True
    assert "study.json" in manifest["written"] and all((out / w).exists() for w in manifest["written"])


# --- item 6 (issue item 12): the output-folder lock ----------------------------------------------------------------

def test_lock_held_by_a_running_process_stops_a_second_run(study: Path, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": "voxelkit run",
              "started": "2026-12-01T09:00:00+00:00"}
    (out / LOCK_NAME).write_text(json.dumps(holder))
    line = _one_line_error(_cli(str(study), "-o", str(out), "--model", "mrtm", "--n-perm", "64"))
    assert f"pid {os.getpid()}" in line and socket.gethostname() in line and "2026-12-01T09:00:00" in line
    assert json.loads((out / LOCK_NAME).read_text()) == holder
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def test_lock_of_a_dead_process_is_taken_over(study: Path, tmp_path: Path, caplog):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": proc.pid, "host": socket.gethostname(),
                                             "command": "voxelkit run", "started": "2026-12-01T08:00:00+00:00"}))
    with caplog.at_level(logging.WARNING, logger="voxelkit"):
        res = run_study(_cfg(study, out), progress=False)
    assert res.fitted == 2 * N_SUBJECTS
    assert any("taking over a lock" in r.getMessage() and str(proc.pid) in r.getMessage() for r in caplog.records)
    assert not (out / LOCK_NAME).exists()


# --- item 7: interrupts and one-line errors ------------------------------------------------------------------------

def test_interrupt_releases_lock_and_run_resumes(study: Path, tmp_path: Path, monkeypatch):
    import voxelkit.api

    real_fit = voxelkit.api.fit
    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_fit(*a, **k)

    out = tmp_path / "out"
    monkeypatch.setattr(voxelkit.api, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study(_cfg(study, out), progress=False)
    monkeypatch.setattr(voxelkit.api, "fit", real_fit)
    assert not (out / LOCK_NAME).exists()
    assert not (out / "study.json").exists() and not (out / "provenance.json").exists()
    records = sorted(out.rglob("*_fit.json"))
    assert len(records) == 2  # the interrupted scan has no record: it is redone
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["complete"] is False and all((out / w).exists() for w in manifest["written"])
    res = run_study(_cfg(study, out), progress=False)
    assert (res.fitted, res.reused) == (2 * N_SUBJECTS - 2, 2)


def test_bad_paths_are_one_line_errors(study: Path, tmp_path: Path, monkeypatch):
    line = _one_line_error(_cli(str(study), "-o", str(tmp_path / "o1"), "--ref-mask", str(tmp_path),
                                "--model", "mrtm"))
    assert "is a directory" in line and "--ref-mask" in line
    assert not (tmp_path / "o1").exists()

    afile = tmp_path / "afile"
    afile.write_text("x")
    line = _one_line_error(_cli(str(study), "-o", str(afile), "--model", "mrtm", "--n-perm", "64"))
    assert "existing file" in line and afile.read_text() == "x"

    # an unreadable input (the tests may run as root, where chmod does not stop reads: simulate EACCES)
    victim = next(study.glob("sub-03/ses-placebo/pet/*_pet.nii.gz"))
    real_open = Path.open

    def guarded(self, *a, **k):
        if self == victim:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *a, **k)

    monkeypatch.setattr(Path, "open", guarded)
    with pytest.raises(InputError, match=r"sub-03_ses-placebo_pet.nii.gz: cannot read a PET image \(Permission"):
        run_study(_cfg(study, tmp_path / "o2"), progress=False)
    assert not (tmp_path / "o2").exists()


def test_keep_failed_scans_from_cli_and_study_file(tmp_path: Path):
    import argparse

    from voxelkit.cli.run import add_study_options, study_overrides
    from voxelkit.pipeline import load_study_file

    p = argparse.ArgumentParser()
    add_study_options(p)
    assert study_overrides(p.parse_args(["--keep-failed-scans"]))["keep_failed_scans"] is True
    assert "keep_failed_scans" not in study_overrides(p.parse_args([]))
    toml = tmp_path / "study.toml"
    toml.write_text('bids_dir = "bids"\nkeep_failed_scans = true\n')
    assert load_study_file(toml).keep_failed_scans is True
    assert StudyConfig(bids_dir=tmp_path).keep_failed_scans is False


def test_fractional_reference_mask_threshold_reaches_the_fits(study: Path, tmp_path: Path):
    """--mask-threshold applies to the reference TAC the pipeline computes; the voxel count is in each sidecar."""
    from scipy.ndimage import binary_dilation

    bids = tmp_path / "bids"
    shutil.copytree(study, bids)
    ref_path = next((bids / "derivatives" / "voxelkit-sim").glob("*desc-reference_mask.nii.gz"))
    img = nib.load(str(ref_path))
    ref = np.asarray(img.dataobj) > 0
    ring = binary_dilation(ref, iterations=2) & ~ref
    frac = np.where(ref, 0.8, np.where(ring, 0.3, 0.0)).astype(np.float32)
    nib.save(nib.Nifti1Image(frac, img.affine), str(ref_path))
    sub = "01"
    counts = {}
    for thr in (0.5, 0.25):
        out = tmp_path / f"o{thr}"
        run_study(_cfg(bids, out, model_options={"mask_threshold": thr}), progress=False)
        side = layout.map_path(out, sub, "placebo", "mrtm", "bp_nd").with_suffix("").with_suffix(".json")
        info = json.loads(side.read_text())["Info"]["reference_mask"]
        assert info["threshold"] == thr
        counts[thr] = info["n_voxels"]
    assert counts[0.5] == int(ref.sum()) and counts[0.25] == int((ref | ring).sum())


def test_brain_mask_read_once_per_run_not_per_fit(study: Path, tmp_path: Path, monkeypatch):
    brain = next((study / "derivatives" / "voxelkit-sim").glob("*desc-brain_mask.nii.gz"))
    real_load = nib.load
    reads = []

    def counting(path, *a, **k):
        if Path(path) == brain:
            reads.append(1)
        return real_load(path, *a, **k)

    monkeypatch.setattr(nib, "load", counting)
    res = run_study(_cfg(study, tmp_path / "out"), progress=False)
    assert res.fitted == 2 * N_SUBJECTS
    assert len(reads) <= 3, len(reads)  # at validation; before: once more for every one of the 12 fits
