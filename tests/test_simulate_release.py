"""The release design of the simulator (lp-ntPET time course), protocols, truth files, CLI knobs, the demo."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from voxelkit.frames import FrameTiming
from voxelkit.simulate.kinetics import FengInput, feng_input
from voxelkit.simulate.phantom import build_phantom
from voxelkit.simulate.study import (
    SimulationConfig,
    plan_study,
    release_bp,
    release_shape,
    release_steps,
    simulate_study,
)

DERIV = Path("derivatives") / "voxelkit-sim"
SPACE = "MNI152NLin2009cAsym"


def read_tsv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def ph4():
    return build_phantom(4)


@pytest.fixture(scope="module")
def release_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("rel") / "ds"
    return simulate_study(out, preset="test", n_subjects=2, noise=0.0, bp_session_sd=0.0, seed=5, design="release",
                          protocol="bolus-infusion", kbol=70.0, challenge_window_min=(40.0, 80.0),
                          release_peak_min=8.0, release_alpha=1.5, effect=0.2)


# ---- the time course ---------------------------------------------------------------------------------------
def test_release_shape_is_lpntpet_gamma_variate():
    t = np.array([10.0, 40.0, 44.0, 48.0, 60.0, 79.9, 80.0, 85.0])
    h = release_shape(t, 40.0, 48.0, 1.5, stop_min=80.0)
    tau = np.clip((t - 40.0) / 8.0, 0.0, None)
    ref = np.where((t > 40.0) & (t < 80.0), tau ** 1.5 * np.exp(1.5 * (1.0 - tau)), 0.0)
    assert np.allclose(h, ref, rtol=1e-12, atol=0)
    assert h[3] == pytest.approx(1.0) and h[0] == 0.0 and h[-1] == 0.0 and h[-2] == 0.0


def test_release_bp_reaches_the_planted_peak_occupancy():
    bp = np.array([0.0, 0.8, 2.8])
    peak = np.array([0.0, 0.1, 0.28])
    seg = release_bp(bp, peak, np.array([0.0, 0.5, 1.0]))
    assert np.allclose(seg[:, 0], bp) and np.allclose(seg[:, 2], bp * (1.0 - peak))
    # efflux k2a(t) = k2a + gamma h(t) is linear in h (lp-ntPET): 1/(1+BP) is linear in h
    inv = 1.0 / (1.0 + seg)
    assert np.allclose(inv[:, 1], 0.5 * (inv[:, 0] + inv[:, 2]))


def test_release_steps_cover_the_challenge_window():
    cfg = SimulationConfig(design="release", challenge_window_min=(45.0, 70.0), release_step_min=0.5)
    sw, h = release_steps(cfg)
    assert sw[0] == 45.0 and sw[-1] == 70.0 and np.allclose(np.diff(sw), 0.5)
    assert h.size == sw.size + 1 and h[0] == 0.0 and h[-1] == 0.0
    mids = sw[:-1] + 0.25
    assert np.allclose(h[1:-1], release_shape(mids, 45.0, 55.0, 1.0))
    cfg = SimulationConfig(design="release", challenge_window_min=(45.0, 90.0))  # to the end of the scan
    sw, h = release_steps(cfg)
    assert sw[-1] < 90.0 and h.size == sw.size + 1 and h[-1] > 0


def test_release_plan_both_sessions_challenged_drug_adds_effect(ph4):
    cfg = SimulationConfig(n_subjects=3, resolution=4, design="release", effect=0.2, bp_session_sd=0.0)
    _, scans, switch = plan_study(cfg, ph4)
    eff = ph4.mask(list(cfg.effect_regions))[ph4.brain]
    chal = ph4.mask(list(cfg.challenge_regions))[ph4.brain]
    ref = ph4.reference_mask[ph4.brain]
    assert cfg.effect_when == "challenge"
    for s in scans:
        assert s.bp_segments is None and s.challenged and s.h_steps.size == switch.size + 1
        expected = np.where(chal, s.displacement, 0.0)
        expected = np.where(eff & s.drug, 1.0 - (1.0 - expected) * 0.8, expected)
        assert np.allclose(s.peak_occ[~ref], expected[~ref]) and np.all(s.peak_occ[ref] == 0)
        seg = s.segments()
        assert np.allclose(seg[:, 0], s.bp_base)  # before the onset: no release
        outside = ~chal & ~ref
        assert np.allclose(seg[outside], s.bp_base[outside, None])  # nothing changes outside


# ---- images follow the kinetics --------------------------------------------------------------------------
def _ode_tac(frames: FrameTiming, inp: FengInput, k1: float, k2: float, bp_of_t) -> np.ndarray:
    """Frame averages of dC/dt = K1 Cp - k2a(t) C with k2a(t) = k2 / (1 + BP(t)), by an adaptive ODE solver."""
    def rhs(t, y):
        return [k1 * float(feng_input(t, inp)) - k2 / (1.0 + bp_of_t(t)) * y[0], y[0]]

    sol = solve_ivp(rhs, (0.0, frames.end_min[-1]), [0.0, 0.0], method="LSODA", rtol=1e-9, atol=1e-12,
                    dense_output=True, max_step=0.05)
    integ = sol.sol(np.concatenate([frames.start_min, frames.end_min]))[1]
    n = frames.n_frames
    return (integ[n:] - integ[:n]) / frames.duration_min


def test_noiseless_release_images_follow_an_independent_ode(release_study):
    res = release_study
    cfg = res.config
    sim = json.loads((res.root / DERIV / "simulation.json").read_text())
    assert sim["design"] == "release" and sim["protocol"] == "bolus-infusion" and sim["kbol"] == 70.0
    assert sim["effect_on"] == "challenge" and sim["release"]["peak_min"] == 48.0
    rows = {(r["participant_id"], r["session"]): r for r in read_tsv(res.root / DERIV / "truth.tsv")}
    sub, ses = "01", "anakinra"
    pet = res.root / f"sub-{sub}" / f"ses-{ses}" / "pet" / f"sub-{sub}_ses-{ses}_pet.nii.gz"
    side = json.loads(pet.with_name(pet.name.replace(".nii.gz", ".json")).read_text())
    assert side["ModeOfAdministration"] == "bolus-infusion"
    frames = FrameTiming.from_bids_dict(side)
    inp = FengInput(**sim["input"]).scaled(float(rows[(f"sub-{sub}", ses)]["input_scale"]))
    data = load(pet)
    tdir = res.root / DERIV / f"sub-{sub}" / f"ses-{ses}" / "pet"
    pre = f"sub-{sub}_ses-{ses}_space-{SPACE}"
    bp0 = load(tdir / f"{pre}_desc-truebpnd_mimap.nii.gz")
    peak = load(tdir / f"{pre}_desc-truepeakoccupancy_mimap.nii.gz")
    r1 = load(tdir / f"{pre}_desc-truer1_mimap.nii.gz")
    bppk = load(tdir / f"{pre}_desc-truebpndpeak_mimap.nii.gz")
    assert np.allclose(bppk, bp0 * (1 - peak), atol=1e-6)
    vox = np.unravel_index(np.argmax(np.where(peak > 0, bp0, 0)), bp0.shape)  # high binding, with release
    b, p, r = float(bp0[vox]), float(peak[vox]), float(r1[vox])
    assert p == pytest.approx(1 - (1 - float(rows[(f"sub-{sub}", ses)]["displacement"])) * 0.8, rel=1e-5)
    g = 1.0 / (1.0 + b * (1.0 - p)) - 1.0 / (1.0 + b)

    def bp_of_t(t):
        return 1.0 / (1.0 / (1.0 + b) + g * float(release_shape(t, 40.0, 48.0, 1.5, 80.0))) - 1.0

    ref = _ode_tac(frames, inp, cfg.k1prime * r, cfg.k2prime * r, bp_of_t)
    got = data[vox].astype(float)
    # the staircase (0.5 min steps) against the continuous time course: within 0.1 % of the peak
    assert np.abs(got - ref).max() < 1e-3 * ref.max()
    assert np.abs(got - ref)[frames.start_min < 40].max() < 1e-5 * ref.max()  # exact before the onset
    # and the release is visible: without it the TAC is different by far more
    no_rel = _ode_tac(frames, inp, cfg.k1prime * r, cfg.k2prime * r, lambda t: b)
    assert np.abs(no_rel - ref).max() > 20 * np.abs(got - ref).max()


def test_occupancy_file_is_the_true_curve(release_study):
    res = release_study
    occ = read_tsv(res.root / DERIV / "occupancy.tsv")
    truth = {(r["participant_id"], r["session"]): r for r in read_tsv(res.root / DERIV / "truth.tsv")}
    keys = {(r["participant_id"], r["session"]) for r in occ}
    assert keys == set(truth)
    for key in keys:
        rows = [r for r in occ if (r["participant_id"], r["session"]) == key]
        t0 = np.array([float(r["time_start_min"]) for r in rows])
        t1 = np.array([float(r["time_end_min"]) for r in rows])
        assert t0[0] == 0 and t1[-1] == 90 and np.allclose(t0[1:], t1[:-1]) and t0[1] == 40.0
        disp = float(truth[key]["displacement"])
        drug = truth[key]["drug"] == "1"
        for region in ("thalamus", "amygdala", "grey_matter_other"):
            o = np.array([float(r[region]) for r in rows])
            if region == "grey_matter_other":
                assert np.all(o == 0)
                continue
            pk = 1 - (1 - disp) * (0.8 if drug and region == "thalamus" else 1.0)
            bp = float(truth[key][f"bpnd_{region}"])
            mid = 0.5 * (t0 + t1)
            g = 1 / (1 + bp * (1 - pk)) - 1 / (1 + bp)
            expect = 1 - (1 / (1 / (1 + bp) + g * release_shape(mid, 40.0, 48.0, 1.5, 80.0)) - 1) / bp
            assert np.allclose(o, expect, atol=1e-6), (key, region)
            assert o.max() == pytest.approx(pk, abs=2e-3)  # the step holding the peak


def test_scan_design_writes_step_occupancy(tmp_path):
    res = simulate_study(tmp_path / "s", preset="test", n_subjects=1, noise=0.0, bp_session_sd=0.0)
    occ = read_tsv(res.root / DERIV / "occupancy.tsv")
    assert [(float(r["time_start_min"]), float(r["time_end_min"])) for r in occ[:3]] == [(0, 45), (45, 65),
                                                                                         (65, 90)]
    truth = {(r["participant_id"], r["session"]): r for r in read_tsv(res.root / DERIV / "truth.tsv")}
    for r in occ:
        disp = float(truth[(r["participant_id"], r["session"])]["displacement"])
        want = disp if float(r["time_start_min"]) == 45 else 0.0  # scan design: the drug is not in the occupancy
        assert float(r["amygdala"]) == pytest.approx(want, abs=2e-6)
    sim = json.loads((res.root / DERIV / "simulation.json").read_text())
    assert sim["design"] == "scan" and sim["effect_on"] == "scan" and sim["protocol"] == "bolus"
    assert sim["kbol"] is None


def test_protocol_default_kbol(ph4, tmp_path):
    cfg = SimulationConfig(protocol="bolus-infusion")
    assert cfg.kbol_min == 80.0 and cfg.protocol_name == "bolus-infusion"
    assert SimulationConfig(kbol=40.0).protocol_name == "bolus-infusion"
    assert SimulationConfig().kbol_min is None and SimulationConfig().protocol_name == "bolus"


@pytest.mark.parametrize("kw, match", [
    ({"challenge_window_min": (45.0, 120.0)}, r"--challenge-window.*outside the scan"),
    ({"challenge_window_min": (95.0, 100.0)}, r"--challenge-window.*outside the scan"),
    ({"challenge_window_min": (60.0, 50.0)}, r"--challenge-window.*increasing"),
    ({"protocol": "bolus", "kbol": 60.0}, r"--kbol"),
    ({"protocol": "infusion"}, r"--protocol"),
    ({"design": "release", "challenge_window_min": (45.0, 50.0)}, r"--release-peak"),
    ({"design": "release", "challenge": "between"}, r"design 'release' needs challenge 'within'"),
    ({"design": "release", "effect_on": "scan"}, r"contradicts"),
    ({"design": "step"}, r"--design"),
])
def test_bad_settings_fail_before_writing(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        simulate_study(tmp_path / "x", preset="test", n_subjects=1, **kw)
    assert not (tmp_path / "x").exists()


# ---- command line ----------------------------------------------------------------------------------------
def test_cli_release_knobs_and_summary_once(tmp_path, capsys, caplog):
    from voxelkit.cli import main

    out = tmp_path / "cli"
    caplog.set_level(logging.INFO)  # what the CLI shows by default (logging to stderr at INFO)
    rc = main(["simulate", "-o", str(out), "--preset", "test", "--n-subjects", "1", "--noise", "0", "--design",
               "release", "--protocol", "bolus-infusion", "--kbol", "60", "--challenge-window", "40", "85",
               "--release-peak", "6", "--release-alpha", "2", "--displacement", "0.15", "--jobs", "1"])
    assert rc == 0
    cap = capsys.readouterr()
    assert (cap.out + cap.err + caplog.text).count("wrote 2 PET scans") == 1  # the summary once
    assert "onset 40, peak 46 min" in cap.out and "Kbol 60 min" in cap.out
    sim = json.loads((out / DERIV / "simulation.json").read_text())
    assert sim["design"] == "release" and sim["kbol"] == 60.0 and sim["challenge_window_min"] == [40.0, 85.0]
    assert sim["release_peak_min"] == 6.0 and sim["release_alpha"] == 2.0 and sim["challenge_displacement"] == 0.15
    assert (out / DERIV / "occupancy.tsv").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--challenge-window", "45", "120"], "--challenge-window"),
    (["--protocol", "bolus", "--kbol", "60"], "--kbol"),
    (["--design", "release", "--challenge-window", "45", "50"], "--release-peak"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, capsys, argv, needle):
    from voxelkit.cli import main

    out = tmp_path / "bad"
    rc = main(["simulate", "-o", str(out), "--preset", "test", "--n-subjects", "1", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and len(err.splitlines()) == 1
    assert not out.exists()


# ---- demo ------------------------------------------------------------------------------------------------
def test_demo_scan_design_is_todays_demo(monkeypatch, tmp_path):
    """--design scan simulates and analyses exactly as before (same simulate_study and StudyConfig calls)."""
    import voxelkit.pipeline.demo as demo
    import voxelkit.simulate.study as study

    calls = {}

    class Sim:
        def summary(self):
            return "sim"

    def fake_sim(outdir, **kw):
        calls["sim"] = (Path(outdir), kw)
        return Sim()

    def fake_run(cfg, progress=True):
        calls["cfg"] = cfg

        class R:
            config = cfg
            output_dir = tmp_path
        return R()

    monkeypatch.setattr(study, "simulate_study", fake_sim)
    monkeypatch.setattr(demo, "run_study", fake_run)
    demo.run_demo(tmp_path / "d", design="scan", n_subjects=7, seed=2, n_perm=99)
    assert calls["sim"] == (tmp_path / "d" / "bids", {"preset": "demo", "n_subjects": 7, "resolution": 3,
                                                     "effect": 0.08, "seed": 2, "overwrite": False})
    cfg = calls["cfg"]
    assert cfg.model == "srtm" and cfg.contrast == "bp_nd" and cfg.windows is None and cfg.n_perm == 99
    assert demo.DEFAULT_DESIGN in ("scan", "release")


def test_demo_release_planted_vs_found(tmp_path, capsys, caplog):
    from voxelkit.cli import main

    caplog.set_level(logging.INFO)
    out = tmp_path / "demo"
    rc = main(["demo", "-o", str(out), "--design", "release", "--analysis", "activation", "--n-subjects", "6",
               "--resolution", "4", "--n-perm", "32", "--noise", "0", "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert (cap.out + cap.err + caplog.text).count("wrote 12 PET scans") == 1  # the simulation summary once
    assert "model mrtm2 (k2prime=space-MNI152NLin2009cAsym_res-4_desc-highbinding_mask.nii.gz, " \
           "k2prime_window=[0.0, 45.0])" in cap.out
    assert "warning:" not in cap.out  # the default combination at Kbol 80: "ok" in the table
    lines = cap.out.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("activation difference"))
    found = {ln.split()[0]: (float(ln.split()[1]), float(ln.split()[2])) for ln in lines[i + 2:i + 7]}
    assert set(found) == {"thalamus", "insula", "nucleus_accumbens", "anterior_cingulate", "caudate"}
    for region, (planted, est) in found.items():
        assert planted > 0.02 and abs(est - planted) <= 0.05 * planted, region  # noiseless: within 5 %
    sim = json.loads((out / "bids" / DERIV / "simulation.json").read_text())
    assert sim["design"] == "release" and sim["protocol"] == "bolus-infusion"


def test_demo_release_refused_combination_writes_nothing(tmp_path, capsys):
    from voxelkit.cli import main

    out = tmp_path / "demo"
    rc = main(["demo", "-o", str(out), "--design", "release", "--analysis", "activation", "--model", "srtm",
               "--protocol", "bolus", "--n-subjects", "5", "--resolution", "4", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "refused" in err and len(err.splitlines()) == 1
    assert not out.exists()
