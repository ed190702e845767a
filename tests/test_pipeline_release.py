"""``voxelkit run --contrast release`` (lp-ntPET on every whole scan, paired test of the release maps), the
activation wiring of the run's up-front validation (protocol from the sidecars, check_activation, the default
pick, check_windows), the study file form, and the demo's default design."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from voxelkit.io import InputError
from voxelkit.pipeline import StudyConfig, layout, load_study_file, run_study
from voxelkit.simulate.study import simulate_study

DERIV = Path("derivatives") / "voxelkit-sim"
EFFECT_REGIONS = ("thalamus", "insula", "nucleus_accumbens", "anterior_cingulate", "caudate")
NULL_REGIONS = ("grey_matter_other", "white_matter")
CHALLENGE = ["45", "90"]


def _simulate(root: Path, effect: float, seed: int, n_subjects: int = 6) -> Path:
    """A small noiseless bolus-plus-infusion release study (6 mm voxels, challenge 45-90 min, Kbol 80 min)."""
    bids = root / "bids"
    simulate_study(bids, preset="test", n_subjects=n_subjects, resolution=6, noise=0.0, seed=seed,
                   design="release", protocol="bolus-infusion", kbol=80.0, challenge_window_min=(45.0, 90.0),
                   effect=effect)
    return bids


@pytest.fixture(scope="module")
def drug_study(tmp_path_factory) -> Path:
    return _simulate(tmp_path_factory.mktemp("rel"), effect=0.2, seed=2)


@pytest.fixture(scope="module")
def null_study(tmp_path_factory) -> Path:
    return _simulate(tmp_path_factory.mktemp("null"), effect=0.0, seed=4)


def _atlas(bids: Path) -> tuple[np.ndarray, dict[str, int]]:
    d = bids / DERIV
    labels = np.asarray(nib.load(str(next(d.glob("*_dseg.nii.gz")))).dataobj).astype(int)
    with next(d.glob("*_dseg.tsv")).open(newline="") as fh:
        lut = {r["name"]: int(r["index"]) for r in csv.DictReader(fh, delimiter="\t")}
    return labels, lut


def _true_release_difference(bids: Path, subjects: list[str]) -> dict[str, float]:
    """Per region, mean over subjects of (drug - placebo) of the region mean of the simulator's true peak
    occupancy map (desc-truepeakoccupancy = 1 - BP(t_P)/BP): the independent reference."""
    labels, lut = _atlas(bids)
    out = {}
    for name, k in lut.items():
        diffs = []
        for s in subjects:
            vals = {}
            for ses in ("anakinra", "placebo"):
                p = next((bids / DERIV / f"sub-{s}" / f"ses-{ses}" / "pet").glob("*truepeakoccupancy_mimap.nii.gz"))
                vals[ses] = float(np.asarray(nib.load(str(p)).dataobj)[labels == k].mean())
            diffs.append(vals["anakinra"] - vals["placebo"])
        out[name] = float(np.mean(diffs))
    return out


def _run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from voxelkit.cli import main

    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def drug_run(drug_study: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp("relrun") / "out"
    cfg = StudyConfig(bids_dir=drug_study, output_dir=out, contrast="release",
                      model_options={"challenge_window": [45.0, 90.0]}, n_perm=32, tfce=False, smoothing_fwhm=0.0,
                      two_sided=False)
    return run_study(cfg, progress=False)


def test_release_contrast_recovers_the_planted_drug_effect(drug_run, drug_study: Path):
    res = drug_run
    cfg = res.config
    assert cfg.model == "lpntpet2" and cfg.model_options["k2prime"] == "median"
    # the default k2' window: frames before the challenge (ends at the last frame ending by 45 min)
    assert cfg.model_options["k2prime_window"][0] == 0.0 and cfg.model_options["k2prime_window"][1] <= 45.0
    truth = _true_release_difference(drug_study, res.subjects)
    tests = {r["region"]: r for r in res.roi_tests}
    assert all(r["quantity"] == "release" for r in tests.values())
    for region in EFFECT_REGIONS:
        r = tests[region]
        assert truth[region] > 0.1, (region, truth[region])  # 20 % extra release under the drug
        assert r["mean_diff"] > 0 and abs(r["mean_diff"] - truth[region]) <= 0.1 * truth[region], (region, r)
        assert r["p_fdr"] < 0.05
    for region in NULL_REGIONS:  # no release there
        assert abs(tests[region]["mean_diff"]) < 0.01, (region, tests[region])
        assert abs(tests[region]["mean_anakinra"]) < 0.01
    # the per-subject contrast maps are release maps, named by the layout
    out = res.output_dir
    labels, lut = _atlas(drug_study)
    s = res.subjects[0]
    rel_a = np.asarray(nib.load(str(layout.map_path(out, s, "anakinra", "lpntpet2", "release"))).dataobj)
    rel_b = np.asarray(nib.load(str(layout.map_path(out, s, "placebo", "lpntpet2", "release"))).dataobj)
    con = np.asarray(nib.load(str(layout.contrast_path(out, s, "releaseanakinraminusplacebo"))).dataobj)
    brain = np.isfinite(con)
    np.testing.assert_allclose(con[brain], (rel_a - rel_b)[brain], atol=1e-6)
    # the voxelwise test: t > 0 in every effect region
    t = np.asarray(nib.load(str(layout.stats_dir(out) / "t.nii.gz")).dataobj)
    for region in EFFECT_REGIONS:
        assert np.nanmedian(t[labels == lut[region]]) > 2, region


def test_release_roi_values_and_qc_record(drug_run, drug_study: Path):
    out = drug_run.output_dir
    with (out / "roi" / "roi_values.tsv").open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    rel = [r for r in rows if r["quantity"] == "release"]
    bp = [r for r in rows if r["quantity"] == "bp_nd"]
    n = len(drug_run.subjects) * 2
    assert len(rel) == len(bp) and len(rel) % n == 0
    # mean release of a region = mean of the scan's release map over the region's voxels (recomputed here)
    labels, lut = _atlas(drug_study)
    r0 = next(r for r in rel if r["region"] == "thalamus")
    vol = np.asarray(nib.load(str(layout.map_path(out, r0["subject"], r0["condition"], "lpntpet2",
                                                  "release"))).dataobj, dtype=float)
    v = vol[labels == lut["thalamus"]]
    assert float(r0["value"]) == pytest.approx(float(np.nanmean(v)), rel=1e-5)
    # QC: example voxels with the fit with and without the release term; BP(t) per region
    qc = json.loads(layout.qc_path(out, r0["subject"], "anakinra", "lpntpet2").read_text())
    ex = qc["example_voxels"]
    assert ex and all(len(e["fitted"]) == len(e["tac"]) == len(e["fitted_without_release"]) for e in ex)
    rc = qc["release_curves"]
    t = np.asarray(rc["t_min"])
    assert t[0] == 0 and t[-1] == pytest.approx(90.0)
    th = rc["regions"]["thalamus"]
    bpt = np.asarray(th["bp_t"])
    # BP(t) before the challenge is the region's mean bp_nd; it dips during the release (by about `release`)
    bp_map = np.asarray(nib.load(str(layout.map_path(out, r0["subject"], "anakinra", "lpntpet2",
                                                     "bp_nd"))).dataobj, dtype=float)
    assert bpt[t < 40].mean() == pytest.approx(np.nanmean(bp_map[labels == lut["thalamus"]]), rel=0.01)
    dip = 1 - bpt.min() / bpt[t < 40].mean()
    assert dip == pytest.approx(th["release"], abs=0.03) and dip > 0.1
    wm = np.asarray(rc["regions"]["white_matter"]["bp_t"])
    assert np.ptp(wm) < 0.01 * wm.mean()  # no release: flat
    # the report has the release section
    text = (out / "report.html").read_text()
    assert 'id="release"' in text and "BP(t) of the planted regions" in text and "planted regions" in text


def test_release_null_study_finds_nothing(null_study: Path, tmp_path: Path):
    cfg = StudyConfig(bids_dir=null_study, output_dir=tmp_path / "out", contrast="release",
                      model_options={"challenge_window": [45.0, 90.0]}, n_perm=32, tfce=False, smoothing_fwhm=0.0,
                      report=False)
    res = run_study(cfg, progress=False)
    truth = _true_release_difference(null_study, res.subjects)
    for r in res.roi_tests:
        if r["region"] in EFFECT_REGIONS + NULL_REGIONS:
            # no drug effect: the difference is the sessions' own (random) challenge release, recovered
            assert abs(r["mean_diff"] - truth[r["region"]]) < 0.01, r
    for region in EFFECT_REGIONS:
        assert abs(truth[region]) < 0.05
    fwe = np.asarray(nib.load(str(layout.stats_dir(res.output_dir) / "logp_fwe_voxel.nii.gz")).dataobj)
    assert np.nanmax(np.abs(fwe)) < -np.log10(0.05)  # no voxel at FWE p < 0.05


def test_cli_release_and_model_lpntpet(drug_study: Path, tmp_path: Path, capsys):
    out = tmp_path / "o"
    rc, sout, err = _run_cli(["run", str(drug_study), "-o", str(out), "--contrast", "release", "--model", "lpntpet",
                              "--challenge-window", *CHALLENGE, "--n-perm", "32", "--no-tfce", "--no-report",
                              "--smoothing-fwhm", "0", "--quiet"], capsys)
    assert rc == 0, err
    assert "ROI paired tests (release, anakinra - placebo)" in sout
    study = json.loads((out / "study.json").read_text())
    assert study["model"] == "lpntpet" and study["contrast"] == "release" and "model_choice" not in study
    assert layout.map_path(out, "01", "anakinra", "lpntpet", "release").exists()
    assert layout.map_path(out, "01", "anakinra", "lpntpet", "t_d").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--model", "srtm"], "contrast 'release' needs an lp-ntPET model"),
    (["--window", "baseline", "0", "45"], "contrast 'release' fits lp-ntPET to the whole scan"),
    (["--td-range", "86", "89"], "td_range"),
])
def test_cli_release_bad_settings_one_line_before_any_fit(drug_study: Path, tmp_path: Path, capsys, extra, needle):
    out = tmp_path / "o"
    rc, _, err = _run_cli(["run", str(drug_study), "-o", str(out), "--contrast", "release", "--challenge-window",
                           *CHALLENGE, "--n-perm", "32", "--quiet", *extra], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and needle in lines[0], err
    assert not out.exists()  # nothing written


def test_default_release_model_choice():
    from voxelkit.pipeline.config import default_release

    assert default_release({"challenge_window": [45, 90]})[:2] == (
        "lpntpet2", {"challenge_window": [45, 90], "k2prime": "median", "k2prime_window": [0.0, 45.0]})
    assert default_release({"k2prime": 0.1})[:2] == ("lpntpet2", {"k2prime": 0.1})
    assert default_release({})[0] == "lpntpet"
    # contrast bp_nd keeps srtm when no model is given
    assert StudyConfig(bids_dir="x").model == "srtm"


def test_study_file_release(drug_study: Path, tmp_path: Path):
    f = tmp_path / "study.toml"
    f.write_text(f'bids_dir = "{drug_study}"\ncontrast = "release"\n[model_options]\nchallenge_window = [45, 90]\n'
                 "[inference]\nn_perm = 64\n")
    cfg = load_study_file(f)
    assert cfg.contrast == "release" and cfg.model == "lpntpet2" and cfg.n_perm == 64
    assert cfg.model_options == {"challenge_window": [45.0, 90.0], "k2prime": "median", "k2prime_window": [0.0, 45.0]}
    assert cfg.to_dict()["model_choice"]["rule"].endswith("default_release")
    f.write_text(f'bids_dir = "{drug_study}"\ncontrast = "release"\nmodel = "mrtm"\n')
    with pytest.raises(InputError, match="needs an lp-ntPET model"):
        load_study_file(f)
    f.write_text(f'bids_dir = "{drug_study}"\ncontrast = "release"\nmodel = "lpntpet"\n'
                 "[windows]\nbaseline = [0, 45]\nchallenge = [45, 90]\n")
    with pytest.raises(InputError, match="whole scan"):
        load_study_file(f)


# ------------------------------------------------------------------------------------ activation wiring

def test_protocol_and_kbol_from_the_sidecars(drug_study: Path):
    from voxelkit.pipeline.bids import discover_scans
    from voxelkit.pipeline.run import scan_protocol, sidecar_kbol_min

    scans = discover_scans(StudyConfig(bids_dir=drug_study))
    prot = scan_protocol(list(scans) if not isinstance(scans, dict) else list(scans.values()))
    assert prot.protocol == "bolus-infusion" and prot.kbol_min == pytest.approx(80.0, abs=0.05)
    # the formula, independently: bolus activity / infusion activity per minute
    meta = {"InjectedRadioactivity": 300.0, "InfusionRadioactivity": 200.0, "InjectedVolume": 10.0,
            "InfusionSpeed": 0.1, "InfusionSpeedUnits": "mL/min"}
    assert sidecar_kbol_min(meta) == pytest.approx(100.0 / (200.0 / 100.0))
    assert sidecar_kbol_min({"InjectedRadioactivity": 300.0}) is None


def test_activation_refused_combination_exits_2_before_any_fit(drug_study: Path, tmp_path: Path, capsys,
                                                               monkeypatch):
    import voxelkit.api as api

    def no_fit(*a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("a fit ran before the refusal")

    monkeypatch.setattr(api, "fit", no_fit)
    out = tmp_path / "o"
    rc, _, err = _run_cli(["run", str(drug_study), "-o", str(out), "--contrast", "activation", "--model", "logan",
                           "--tstar", "10", "--window", "baseline", "0", "45", "--window", "challenge", "60", "90",
                           "--n-perm", "32", "--quiet"], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert "--model logan with --contrast activation is refused on bolus-infusion studies" in lines[0]
    assert not out.exists()


def test_window_with_too_few_frames_exits_2(drug_study: Path, tmp_path: Path, capsys):
    out = tmp_path / "o"
    rc, _, err = _run_cli(["run", str(drug_study), "-o", str(out), "--contrast", "activation", "--model", "mrtm",
                           "--window", "baseline", "0", "45", "--window", "challenge", "84", "90", "--n-perm", "32",
                           "--quiet"], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert "_pet.json: --window challenge [84, 90] min holds 1 frame(s); model mrtm needs at least" in lines[0]
    assert not out.exists()


def test_activation_default_pick_logged_and_recorded(drug_study: Path, tmp_path: Path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="voxelkit")
    out = tmp_path / "o"
    rc, sout, err = _run_cli(["run", str(drug_study), "-o", str(out), "--contrast", "activation", "--window",
                              "baseline", "0", "45", "--window", "challenge", "60", "90", "--n-perm", "32",
                              "--no-tfce", "--no-report", "--smoothing-fwhm", "0"], capsys)
    assert rc == 0, err
    assert "contrast activation without --model: mrtm2" in caplog.text
    assert "model (not given): mrtm2" in sout
    assert "protocol: bolus-infusion, Kbol 80 min" in sout
    study = json.loads((out / "study.json").read_text())
    prov = json.loads((out / "provenance.json").read_text())
    assert study["model"] == "mrtm2" and study["model_options"]["k2prime"] == "median"
    assert study["model_options"]["k2prime_window"] == [0.0, 45.0]
    assert study["model_choice"]["rule"].endswith("default_activation")
    assert prov["model_choice"] == study["model_choice"]
    chk = prov["activation_check"]
    assert chk["protocol"] == "bolus-infusion" and chk["kbol_min"] == pytest.approx(80.0, abs=0.05)
    # the median k2' rule is warned about by the table (voxel noise biases it), logged and recorded
    assert chk["warnings"] and all(w in caplog.text for w in chk["warnings"])
    assert layout.map_path(out, "01", "anakinra", "mrtm2", "bp_nd", "challenge").exists()
    # ... and shown in the report (never silent)
    import html as _html

    from voxelkit.report import write_report

    page = Path(write_report(out, out / "report.html")).read_text()
    assert all(_html.escape(w) in page for w in chk["warnings"])
    assert "Model not given" in page


# ------------------------------------------------------------------------------------------------- demo

def test_demo_default_design_is_release_analysed_by_the_release_contrast(monkeypatch, tmp_path: Path):
    import voxelkit.pipeline.demo as demo
    import voxelkit.simulate.study as study
    from voxelkit.simulate.options import DEMO_DEFAULT_DESIGN

    assert DEMO_DEFAULT_DESIGN == "release" and demo.DEFAULT_DESIGN == "release"
    assert demo.RELEASE_ANALYSIS == "release" and demo.DEMO_N_PERM == 1024 == 2 ** 10
    calls = {}

    class Sim:
        derivatives = tmp_path

        def summary(self):
            return "sim"

    def fake_sim(outdir, **kw):
        calls["sim"] = kw
        return Sim()

    def fake_run(cfg, progress=True):
        calls["cfg"] = cfg

        class R:
            config = cfg
            output_dir = tmp_path
        return R()

    monkeypatch.setattr(study, "simulate_study", fake_sim)
    monkeypatch.setattr(demo, "run_study", fake_run)
    demo.run_demo(tmp_path / "d")
    cfg = calls["cfg"]
    assert calls["sim"]["design"] == "release" and calls["sim"]["protocol"] == "bolus-infusion"
    assert cfg.contrast == "release" and cfg.model == "lpntpet2" and cfg.n_perm == 1024 and cfg.windows is None
    assert cfg.model_options["challenge_window"] == [45.0, 90.0]
    assert calls["sim"]["noise"] == demo.DEMO_RELEASE_NOISE  # the low-noise release demo, stated in the log
    demo.run_demo(tmp_path / "e", noise=0.1)
    assert calls["sim"]["noise"] == 0.1


def test_demo_cli_default_n_perm_and_legend():
    import argparse

    from voxelkit.cli import demo as cli_demo
    from voxelkit.pipeline.demo import RegionFinding, format_findings

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli_demo.register(sub, argparse.ArgumentParser(add_help=False))
    args = parser.parse_args(["demo"])
    assert args.n_perm == 1024 and args.design is None and args.analysis is None
    text = format_findings([RegionFinding("thalamus", True, 10, {"logp_fwe_tfce": 0.002}, {"logp_fwe_tfce": 0.89})])
    assert "smallest FWE p in the region, share of its voxels with FWE p < 0.05" in text.splitlines()[0]
    assert "p=0.002 89%" in text


def test_demo_release_contrast_planted_vs_found(tmp_path: Path, capsys):
    out = tmp_path / "demo"
    rc, sout, err = _run_cli(["demo", "-o", str(out), "--n-subjects", "6", "--resolution", "6", "--noise", "0",
                              "--n-perm", "32", "--effect", "0.2", "--quiet"], capsys)
    assert rc == 0, err
    assert "analysis: release = lp-ntPET peak release" in sout and "model lpntpet2" in sout
    lines = sout.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("release difference (drug - placebo)"))
    found = {ln.split()[0]: (float(ln.split()[1]), float(ln.split()[2])) for ln in lines[i + 2:i + 7]}
    assert set(found) == set(EFFECT_REGIONS)
    for region, (planted, est) in found.items():
        assert planted > 0.1 and abs(est - planted) <= 0.1 * planted, region  # noiseless: within 10 %
    sim = json.loads((out / "bids" / DERIV / "simulation.json").read_text())
    assert sim["design"] == "release"


def test_demo_release_contrast_refuses_a_non_lpntpet_model(tmp_path: Path, capsys):
    out = tmp_path / "demo"
    rc, _, err = _run_cli(["demo", "-o", str(out), "--model", "srtm", "--n-subjects", "5", "--resolution", "6",
                           "--quiet"], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "needs an lp-ntPET model" in lines[0]
    assert not out.exists()


def test_release_contrast_with_covariates(drug_study: Path, drug_run, tmp_path: Path):
    """Covariates (centred) with the release contrast: the design is [1, Z] and the tested intercept is the mean
    difference at the average covariate values; the release effect stays (t > 2 in the effect regions)."""
    cfg = StudyConfig(bids_dir=drug_study, output_dir=tmp_path / "out", contrast="release", covariates=["age"],
                      model_options={"challenge_window": [45.0, 90.0]}, n_perm=32, tfce=False, smoothing_fwhm=0.0,
                      two_sided=False, report=False)
    res = run_study(cfg, progress=False)
    prov = json.loads((res.output_dir / "provenance.json").read_text())
    assert prov["covariate_coding"]["covariate_columns"] and "age" in json.dumps(prov["covariate_coding"])
    stats = json.loads((layout.stats_dir(res.output_dir) / "stats.json").read_text())
    assert "intercept" in json.dumps(stats) and "age" in json.dumps(stats)
    labels, lut = _atlas(drug_study)
    t = np.asarray(nib.load(str(layout.stats_dir(res.output_dir) / "t.nii.gz")).dataobj)
    t0 = np.asarray(nib.load(str(layout.stats_dir(drug_run.output_dir) / "t.nii.gz")).dataobj)
    for region in EFFECT_REGIONS:
        assert np.nanmedian(t[labels == lut[region]]) > 2, region
    assert not np.allclose(np.nan_to_num(t), np.nan_to_num(t0))  # the covariate entered the model
