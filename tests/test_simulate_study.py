"""The crossover study writer: BIDS layout, planted truth, kinetics consistency, noise, determinism, CLI."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from voxelkit.frames import FrameTiming
from voxelkit.io import read_tac_table  # noqa: F401  (import check: io is the project's TSV reader)
from voxelkit.simulate.kinetics import FengInput, decay_factor, one_tissue_tac, srtm_tacs
from voxelkit.simulate.phantom import build_phantom
from voxelkit.simulate.study import (
    BASE_SCALE_PER_MBQ,
    SimulationConfig,
    _gauss_unit_factor,
    plan_study,
    simulate_study,
)

DERIV = Path("derivatives") / "voxelkit-sim"
SPACE = "MNI152NLin2009cAsym"

#: BIDS-PET REQUIRED sidecar fields (bids-specification src/schema/rules/sidecars/pet.yaml).
PET_REQUIRED = (
    "Manufacturer", "ManufacturersModelName", "Units", "TracerName", "TracerRadionuclide",
    "InjectedRadioactivity", "InjectedRadioactivityUnits", "InjectedMass", "InjectedMassUnits",
    "SpecificRadioactivity", "SpecificRadioactivityUnits", "ModeOfAdministration", "TimeZero", "ScanStart",
    "InjectionStart", "FrameTimesStart", "FrameDuration", "AcquisitionMode", "ImageDecayCorrected",
    "ImageDecayCorrectionTime", "ReconMethodName", "ReconMethodParameterLabels", "ReconFilterType",
    "AttenuationCorrection",
)
PET_NAME = re.compile(r"^sub-(?P<sub>[a-zA-Z0-9]+)_ses-(?P<ses>[a-zA-Z0-9]+)_pet\.(nii\.gz|json)$")


def read_tsv(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    head = lines[0].split("\t")
    return [dict(zip(head, ln.split("\t"), strict=True)) for ln in lines[1:] if ln]


def load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def noiseless(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "noiseless"
    return simulate_study(out, preset="test", noise=0.0, bp_session_sd=0.0, seed=3)


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "noisy"
    t0 = time.perf_counter()
    res = simulate_study(out, preset="test", bp_session_sd=0.0, seed=3)
    res.wall = time.perf_counter() - t0
    return res


def test_test_preset_is_fast(noisy):
    assert noisy.config.resolution == 4 and noisy.config.n_subjects == 4
    assert noisy.wall < 60.0  # a few seconds on an idle 2-core machine


def test_bids_layout_and_required_fields(noisy):
    root = noisy.root
    desc = json.loads((root / "dataset_description.json").read_text())
    assert desc["Name"] and desc["BIDSVersion"] and desc["DatasetType"] == "raw"
    assert (root / "README").exists() and (root / "participants.json").exists()
    parts = read_tsv(root / "participants.tsv")
    ids = [p["participant_id"] for p in parts]
    assert ids == [f"sub-{i:02d}" for i in range(1, 5)]
    assert sorted(p.name for p in root.glob("sub-*")) == ids
    for col in ("sex", "age", "neuroticism", "il1b", "il1ra", "pain_anakinra", "pain_placebo"):
        assert col in parts[0]
    pets = sorted(root.glob("sub-*/ses-*/pet/*"))
    assert len(pets) == 16
    for p in pets:
        m = PET_NAME.match(p.name)
        assert m, p.name
        assert p.parent.parent.name == f"ses-{m['ses']}" and p.parent.parent.parent.name == f"sub-{m['sub']}"
        assert m["ses"] in ("anakinra", "placebo")
    for p in root.glob("sub-*/ses-*/pet/*_pet.nii.gz"):
        meta = json.loads(p.with_name(p.name.replace(".nii.gz", ".json")).read_text())
        missing = [k for k in PET_REQUIRED if k not in meta]
        assert not missing, (p.name, missing)
        if "none" not in meta["ReconMethodParameterLabels"]:
            assert len(meta["ReconMethodParameterUnits"]) == len(meta["ReconMethodParameterLabels"])
            assert len(meta["ReconMethodParameterValues"]) == len(meta["ReconMethodParameterLabels"])
        if meta["ReconFilterType"] != "none":
            assert "ReconFilterSize" in meta
        assert meta["TracerRadionuclide"] == "C11" and meta["ImageDecayCorrected"] is True
        assert re.fullmatch(r"\d\d:\d\d:\d\d", meta["TimeZero"])
        img = nib.load(str(p))
        frames = FrameTiming.from_bids_dict(meta)
        assert img.ndim == 4 and img.shape[3] == frames.n_frames
        assert frames.end[-1] == 5400.0


@pytest.mark.skipif(shutil.which("bids-validator-deno") is None, reason="bids-validator-deno not installed")
def test_bids_validator(noisy):
    for d in (noisy.root, noisy.root / DERIV):
        r = subprocess.run(["bids-validator-deno", str(d)], capture_output=True, text=True, timeout=600)
        assert "[ERROR]" not in r.stdout, r.stdout[-3000:]


def _truth(res, sub: str, ses: str, desc: str) -> np.ndarray:
    d = res.root / DERIV / f"sub-{sub}" / f"ses-{ses}" / "pet"
    suffix = "mask" if desc == "effect" else "mimap"
    return load(d / f"sub-{sub}_ses-{ses}_space-{SPACE}_desc-{desc}_{suffix}.nii.gz")


def test_planted_effect_exactly_where_configured(noiseless):
    res = noiseless
    deriv = res.root / DERIV
    effect = load(deriv / f"space-{SPACE}_res-4_desc-effect_mask.nii.gz").astype(bool)
    brain = load(deriv / f"space-{SPACE}_res-4_desc-brain_mask.nii.gz").astype(bool)
    atlas = load(deriv / f"space-{SPACE}_atlas-carfentanil_res-4_dseg.nii.gz")
    lut = read_tsv(deriv / f"space-{SPACE}_atlas-carfentanil_res-4_dseg.tsv")
    eff_labels = [int(r["index"]) for r in lut if r["effect"] == "1"]
    assert sorted(r["name"] for r in lut if r["effect"] == "1") == sorted(res.config.effect_regions)
    assert np.array_equal(effect, np.isin(atlas, eff_labels))
    for i in range(1, 5):
        sub = f"{i:02d}"
        a = _truth(res, sub, "anakinra", "truebpnd")
        p = _truth(res, sub, "placebo", "truebpnd")
        assert np.array_equal(_truth(res, sub, "anakinra", "effect").astype(bool), effect)
        assert not _truth(res, sub, "placebo", "effect").any()
        pos = brain & (p > 0)
        ratio = a[pos] / p[pos]
        inside = effect[pos]
        assert np.allclose(ratio[inside], 1 - res.config.effect, rtol=1e-6)
        assert np.allclose(ratio[~inside], 1.0, rtol=1e-6)
        assert np.array_equal(_truth(res, sub, "anakinra", "truer1"), _truth(res, sub, "placebo", "truer1"))


def test_challenge_truth(noiseless):
    res = noiseless
    rows = read_tsv(res.root / DERIV / "truth.tsv")
    chal = load(res.root / DERIV / f"space-{SPACE}_res-4_desc-challenge_mask.nii.gz").astype(bool)
    for row in rows:
        sub, ses = row["participant_id"][4:], row["session"]
        base = _truth(res, sub, ses, "truebpnd")
        during = _truth(res, sub, ses, "truebpndchallenge")
        d = float(row["displacement"])
        assert 0 < d < 0.9
        pos = base > 0
        assert np.allclose(during[pos & chal] / base[pos & chal], 1 - d, rtol=1e-5)
        assert np.array_equal(during[~chal], base[~chal])


def test_noiseless_images_follow_the_kinetics(noiseless):
    res = noiseless
    cfg = res.config
    sim = json.loads((res.root / DERIV / "simulation.json").read_text())
    rows = {(r["participant_id"], r["session"]): r for r in read_tsv(res.root / DERIV / "truth.tsv")}
    ref_mask = load(res.root / DERIV / f"space-{SPACE}_res-4_desc-reference_mask.nii.gz").astype(bool)
    sub, ses = "02", "anakinra"
    pet = res.root / f"sub-{sub}" / f"ses-{ses}" / "pet" / f"sub-{sub}_ses-{ses}_pet.nii.gz"
    data = load(pet)
    frames = FrameTiming.from_bids_json(pet.with_name(pet.name.replace(".nii.gz", ".json")))
    scale = float(rows[(f"sub-{sub}", ses)]["input_scale"])
    inp = FengInput(**sim["input"]).scaled(scale)
    r1 = _truth(res, sub, ses, "truer1")
    bp = _truth(res, sub, ses, "truebpnd")
    bpc = _truth(res, sub, ses, "truebpndchallenge")
    brain = r1 > 0
    segs = np.stack([bp[brain], bpc[brain], bp[brain]], axis=1)
    tis, ref = srtm_tacs(frames, r1[brain], segs, k1prime=cfg.k1prime, k2prime=cfg.k2prime, inp=inp,
                         switch_min=list(cfg.challenge_window_min))
    got = data[brain]
    assert np.allclose(got, tis, rtol=2e-6, atol=1e-6 * tis.max())
    assert np.allclose(data[ref_mask].mean(axis=0), one_tissue_tac(frames, cfg.k1prime, cfg.k2prime, inp),
                       rtol=1e-5, atol=1e-6 * ref.max())
    assert 5.0 < ref.max() < 30.0  # kBq/mL, plausible carfentanil reference peak


def test_noise_follows_counts_and_is_correlated(noisy, noiseless):
    cfg = noisy.config
    rows = {(r["participant_id"], r["session"]): r for r in read_tsv(noisy.root / DERIV / "truth.tsv")}
    sim = json.loads((noisy.root / DERIV / "simulation.json").read_text())
    frames = FrameTiming.from_bids_dict(sim["frames"])
    dec = decay_factor(frames)
    ref_nominal = one_tissue_tac(frames, cfg.k1prime, cfg.k2prime,
                                 FengInput(**sim["input"]).scaled(BASE_SCALE_PER_MBQ * cfg.injected_mbq))[-1]
    noise_k = cfg.noise * math.sqrt(ref_nominal * dec[-1] * frames.duration_min[-1]) * (2.0 / 4.0) ** 1.5
    zs, corr = [], []
    for (pid, ses) in rows:
        sub = pid[4:]
        rel = Path(f"sub-{sub}") / f"ses-{ses}" / "pet" / f"sub-{sub}_ses-{ses}_pet.nii.gz"
        a, b = load(noisy.root / rel), load(noiseless.root / rel)
        brain = b[..., -1] > 0
        sd = noise_k * np.sqrt(b[..., 3:] / (dec * frames.duration_min)[3:])
        zs.append(((a - b)[..., 3:][brain] / sd[brain]).ravel())
        diff = a - b
        inner = brain[1:] & brain[:-1]
        corr.append(np.corrcoef(diff[1:][inner][:, -1], diff[:-1][inner][:, -1])[0, 1])
    z = np.concatenate(zs)
    assert abs(z.std() - 1.0) < 0.05 and abs(z.mean()) < 0.05
    sig = cfg.fwhm_mm / (math.sqrt(8 * math.log(2)) * cfg.resolution)
    expected = math.exp(-1.0 / (4 * sig * sig))  # neighbour correlation of Gaussian-smoothed white noise
    assert abs(np.mean(corr) - expected) < 0.1
    assert _gauss_unit_factor(0) == 1.0


def test_deterministic_and_independent_of_jobs(tmp_path, noisy):
    a = simulate_study(tmp_path / "a", preset="test", n_subjects=2, seed=7)
    b = simulate_study(tmp_path / "b", preset="test", n_subjects=2, seed=7, n_jobs=2)
    files = sorted(p.relative_to(a.root) for p in a.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b.root) for p in b.root.rglob("*") if p.is_file())
    for rel in files:
        if rel.name.endswith(".nii.gz"):
            assert np.array_equal(load(a.root / rel), load(b.root / rel)), rel
        elif rel.name.endswith((".json", ".tsv")):
            assert (a.root / rel).read_text() == (b.root / rel).read_text(), rel
    rel = Path("sub-01/ses-placebo/pet/sub-01_ses-placebo_pet.nii.gz")
    assert not np.array_equal(load(a.root / rel), load(noisy.root / rel))  # another seed


def test_overwrite_guard(tmp_path):
    out = tmp_path / "ds"
    simulate_study(out, preset="test", n_subjects=1, noise=0)
    with pytest.raises(FileExistsError, match="not empty"):
        simulate_study(out, preset="test", n_subjects=1)
    with pytest.raises(ValueError, match="no region"):  # bad config fails before anything is deleted
        simulate_study(out, preset="test", n_subjects=1, overwrite=True, effect_regions=("nowhere",))
    assert (out / "sub-01").exists()
    simulate_study(out, preset="test", n_subjects=1, overwrite=True, sessions=("anakinra", "placebo"))
    other = tmp_path / "mine"
    other.mkdir()
    (other / "precious.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a dataset written by voxelkit"):
        simulate_study(other, preset="test", n_subjects=1, overwrite=True)
    assert (other / "precious.txt").read_text() == "keep"


def test_cli(tmp_path, capsys):
    from voxelkit.cli import main

    out = tmp_path / "cli"
    rc = main(["simulate", "-o", str(out), "--preset", "test", "--n-subjects", "2", "--noise", "0",
               "--effect", "0.1", "--seed", "2"])
    assert rc == 0
    text = capsys.readouterr().out
    assert str(out) in text and "BPND x 0.9 in thalamus" in text
    assert main(["simulate", "-o", str(out), "--preset", "test"]) == 2
    cfg = json.loads((out / DERIV / "simulation.json").read_text())
    assert cfg["n_subjects"] == 2 and cfg["effect"] == 0.1 and cfg["seed"] == 2 and cfg["noise"] == 0


# ---- design only (no images): cheap -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def ph4():
    return build_phantom(4)


def test_balanced_crossover_and_covariate_links(ph4):
    cfg = SimulationConfig(n_subjects=40, resolution=4, activation_links={"il1b": 0.8}, challenge_sd=0.05,
                      pain_link=-0.9)
    parts, scans, switch = plan_study(cfg, ph4)
    orders = [p["session_order"] for p in parts]
    assert orders.count("anakinra-placebo") == orders.count("placebo-anakinra") == 20
    assert np.array_equal(switch, [45.0, 65.0])
    il1b = np.array([p["il1b"] for p in parts])
    disp = np.array([[s.displacement for s in scans if s.subject == f"{i + 1:02d}" and s.session == "placebo"][0]
                     for i in range(40)])
    assert np.corrcoef(il1b, disp)[0, 1] > 0.5
    pain = np.array([p["pain_placebo"] for p in parts])
    assert np.corrcoef(pain, disp)[0, 1] < -0.5


def test_between_design_with_baseline_and_effect_on_challenge(ph4):
    cfg = SimulationConfig(n_subjects=2, resolution=4, challenge="between", baseline_session=True)
    _, scans, switch = plan_study(cfg, ph4)
    assert switch.size == 0 and [s.session for s in scans][0] == "baseline"
    base = [s for s in scans if s.session == "baseline"]
    assert all(s.bp_segments.shape[1] == 1 and s.displacement == 0 and not s.challenged for s in base)
    cfg = SimulationConfig(n_subjects=2, resolution=4, effect_on="challenge", bp_session_sd=0.0, effect=0.2)
    _, scans, _ = plan_study(cfg, ph4)
    eff = ph4.mask(list(cfg.effect_regions))[ph4.brain]
    chal = ph4.mask(list(cfg.challenge_regions))[ph4.brain]
    for s in scans:
        b, d = s.bp_segments[:, 0], s.bp_segments[:, 1]
        pos = b > 0
        f = np.where(chal, 1 - s.displacement, 1.0) * np.where(eff & s.drug, 0.8, 1.0)
        assert np.allclose(d[pos], (b * f)[pos])
        assert np.array_equal(s.bp_segments[:, 2], b)


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="effect"):
        simulate_study(tmp_path / "x", preset="test", effect=1.5)
    with pytest.raises(TypeError, match="unknown option"):
        simulate_study(tmp_path / "x", preset="test", n_subject=3)
    with pytest.raises(ValueError, match="preset"):
        simulate_study(tmp_path / "x", preset="huge")


def test_wide_kernel_noise_is_gaussian_with_unit_variance(tmp_path):
    """FWHM 12 mm at 4 mm (kernel sd >= 1 voxel): uniform white noise smoothed to a Gaussian field."""
    kw = {"preset": "test", "n_subjects": 1, "seed": 4, "fwhm_mm": 12.0, "challenge": "none"}
    a = simulate_study(tmp_path / "a", **kw)
    b = simulate_study(tmp_path / "b", noise=0.0, **kw)
    cfg = a.config
    sim = json.loads((a.root / DERIV / "simulation.json").read_text())
    frames = FrameTiming.from_bids_dict(sim["frames"])
    dec = decay_factor(frames)
    ref_nominal = one_tissue_tac(frames, cfg.k1prime, cfg.k2prime,
                                 FengInput(**sim["input"]).scaled(BASE_SCALE_PER_MBQ * cfg.injected_mbq))[-1]
    noise_k = cfg.noise * math.sqrt(ref_nominal * dec[-1] * frames.duration_min[-1]) * (2.0 / 4.0) ** 1.5
    zs = []
    for rel in sorted(p.relative_to(a.root) for p in a.root.glob("sub-*/ses-*/pet/*_pet.nii.gz")):
        x, y = load(a.root / rel), load(b.root / rel)
        brain = y[..., -1] > 0
        sd = noise_k * np.sqrt(y[..., 3:] / (dec * frames.duration_min)[3:])
        zs.append(((x - y)[..., 3:][brain] / sd[brain]).ravel())
    z = np.concatenate(zs)
    assert abs(z.std() - 1.0) < 0.05
    kurt = np.mean((z - z.mean()) ** 4) / z.var() ** 2 - 3.0
    assert abs(kurt) < 0.1


def test_old_simulation_class_names_are_deprecated_aliases(caplog):
    """simulate.study.StudyConfig / StudyResult (names the pipeline's classes also had) are now
    SimulationConfig / SimulationResult; the old names work for one release with a DEPRECATED warning."""
    import logging

    from voxelkit.simulate import study

    caplog.set_level(logging.WARNING)
    assert study.StudyConfig is study.SimulationConfig and study.StudyResult is study.SimulationResult
    assert caplog.text.count("DEPRECATED") == 2
    with pytest.raises(AttributeError):
        study.NoSuchName  # noqa: B018
