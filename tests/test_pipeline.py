"""The study pipeline (``voxelkit run`` / ``run_study``) on a small simulated crossover study."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from voxelkit.io import InputError
from voxelkit.pipeline import StudyConfig, layout, load_study_file, run_study
from voxelkit.pipeline.demo import format_findings, region_findings

N_SUBJECTS = 6


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    from voxelkit.simulate.study import simulate_study

    root = tmp_path_factory.mktemp("study") / "bids"
    simulate_study(root, preset="test", n_subjects=N_SUBJECTS, effect=0.15, noise=0.05, seed=3, challenge="none")
    return root


def _tree_digest(root: Path) -> dict[str, str]:
    ours = ("derivatives", "voxelkit")
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).parts[:2] != ours}


def _cfg(bids: Path, out: Path, **kw) -> StudyConfig:
    base = dict(bids_dir=bids, output_dir=out, model="mrtm", n_perm=64, cluster_p=0.01, tfce=True, seed=1,
                smoothing_fwhm=4.0, report=False)
    base.update(kw)
    return StudyConfig(**base)


def test_run_writes_layout_and_reuses_fits(study: Path, tmp_path: Path):
    before = _tree_digest(study)
    out = tmp_path / "out"
    res = run_study(_cfg(study, out), progress=False)
    assert res.fitted == 2 * N_SUBJECTS and res.reused == 0
    assert len(res.subjects) == N_SUBJECTS
    sub = res.subjects[0]
    for cond in ("anakinra", "placebo"):
        for param in ("bp_nd", "r1", "status"):
            assert layout.map_path(out, sub, cond, "mrtm", param).exists()
        qc = json.loads(layout.qc_path(out, sub, cond, "mrtm").read_text())
        assert qc["status_counts"] and len(qc["reference_tac"]) == len(qc["frames"]["start_s"])
        assert qc["example_voxels"] and qc["example_voxels"][0]["fitted"] is not None
    stats = layout.stats_dir(out)
    for name in ("t", "logp_fwe_voxel", "logp_fwe_tfce", "logp_fwe_cluster_extent", "logp_fwe_cluster_mass"):
        assert (stats / f"{name}.nii.gz").exists(), name
    assert (stats / "null_distributions.npz").exists()
    roi = (layout.roi_dir(out) / "roi_tests.tsv").read_text().splitlines()
    assert roi[0].startswith("region\tn\tquantity")
    assert not any(line.startswith("occipital") for line in roi[1:])  # the reference region is not tested
    prov = json.loads((out / "provenance.json").read_text())
    pets = [i for i in prov["inputs"] if i["path"].endswith("_pet.nii.gz")]
    assert len(pets) == 2 * N_SUBJECTS
    p0 = Path(pets[0]["path"])
    assert pets[0]["sha256"] == hashlib.sha256(p0.read_bytes()).hexdigest()
    assert prov["seed"] == 1 and prov["backend"]["name"] == "numpy"
    # inputs untouched
    assert _tree_digest(study) == before

    # second run: everything reused, same statistics
    t1 = np.asarray(nib.load(str(stats / "t.nii.gz")).dataobj)
    res2 = run_study(_cfg(study, out), progress=False)
    assert res2.fitted == 0 and res2.reused == 2 * N_SUBJECTS
    np.testing.assert_array_equal(np.asarray(nib.load(str(stats / "t.nii.gz")).dataobj), t1)

    # an interrupted fit (no record) is redone, and only that one
    layout.fit_record_path(out, sub, "placebo", "mrtm").unlink()
    res3 = run_study(_cfg(study, out), progress=False)
    assert (res3.fitted, res3.reused) == (1, 2 * N_SUBJECTS - 1)

    # other model settings: refit everything (two scans at a time), same subjects
    res4 = run_study(_cfg(study, out, model_options={"integration": "frame_average"}, jobs=2), progress=False)
    assert res4.fitted == 2 * N_SUBJECTS and res4.subjects == res.subjects


def test_planted_effect_found(study: Path, tmp_path: Path):
    out = tmp_path / "out"
    res = run_study(_cfg(study, out, model="srtm", n_perm=64), progress=False)
    findings = region_findings(out, res.config.atlas, res.config.atlas_labels)
    planted = [f for f in findings if f.planted]
    assert planted, "the simulator's atlas marks planted regions"
    # a 15 % effect at low noise: most planted regions reach FWE p < 0.05 with TFCE (exact test, 2^6 flips)
    hit = [f for f in planted if f.best["logp_fwe_tfce"] < 0.05]
    assert len(hit) >= len(planted) - 1, format_findings(findings)
    text = format_findings(findings)
    assert "planted regions detected" in text


def test_unpaired_subject_dropped_or_stops(study: Path, tmp_path: Path):
    bids = tmp_path / "bids"
    shutil.copytree(study, bids, ignore=shutil.ignore_patterns("voxelkit"))
    victim = sorted(bids.glob("sub-*/ses-placebo"))[0]
    shutil.rmtree(victim)
    sub = victim.parent.name.removeprefix("sub-")
    with pytest.raises(InputError, match=f"sub-{sub}: missing ses-placebo"):
        run_study(_cfg(bids, tmp_path / "o1", on_missing="stop"), progress=False)
    # 5 subjects: a two-sided test cannot reach p < 0.05 (2/32), so one-sided
    res = run_study(_cfg(bids, tmp_path / "o2", n_perm=32, two_sided=False), progress=False)
    assert sub in res.dropped and sub not in res.subjects
    assert len(res.subjects) == N_SUBJECTS - 1


def test_bad_settings_are_clear_errors(study: Path, tmp_path: Path):
    with pytest.raises(InputError, match="BIDS dataset itself"):
        run_study(_cfg(study, study), progress=False)
    with pytest.raises(InputError, match="inside the raw data"):
        run_study(_cfg(study, study / "sub-01" / "out"), progress=False)
    with pytest.raises(InputError, match="windows 'baseline' and 'challenge'"):
        _cfg(study, tmp_path, contrast="activation")
    with pytest.raises(InputError, match="no scan has session ses-drug"):
        run_study(_cfg(study, tmp_path / "o", conditions=("drug", "placebo")), progress=False)
    toml = tmp_path / "study.toml"
    toml.write_text(f'bids_dir = "{study}"\nmodle = "srtm"\n')
    with pytest.raises(InputError, match="unknown setting"):
        load_study_file(toml)


def test_activation_contrast_with_windows(study: Path, tmp_path: Path):
    out = tmp_path / "out"
    res = run_study(_cfg(study, out, model="mrtm", contrast="activation", n_perm=32, tfce=False,
                         windows={"baseline": (0, 45), "challenge": (45, 90)}), progress=False)
    sub = res.subjects[0]
    for phase in ("baseline", "challenge"):
        assert layout.map_path(out, sub, "anakinra", "mrtm", "bp_nd", phase).exists()
    roi = (layout.roi_dir(out) / "roi_values.tsv").read_text()
    assert "\tbaseline\t" in roi and "\tchallenge\t" in roi


def test_cli_run_with_study_file(study: Path, tmp_path: Path):
    toml = tmp_path / "study.toml"
    out = tmp_path / "cli-out"
    toml.write_text(f'bids_dir = "{study}"\noutput_dir = "{out}"\nmodel = "logan"\nsmoothing_fwhm = 0\n'
                    "report = false\n[model_options]\ntstar = 30\n[inference]\nn_perm = 32\ntfce = false\n")
    proc = subprocess.run([sys.executable, "-m", "voxelkit", "run", "--study", str(toml), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"subjects: {N_SUBJECTS} paired" in proc.stdout
    assert (layout.stats_dir(out) / "t.nii.gz").exists()
    bad = subprocess.run([sys.executable, "-m", "voxelkit", "run", str(tmp_path / "nope"), "--quiet"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "nope: not a directory" in bad.stderr and "Traceback" not in bad.stderr
