"""The study report: content, self-containment, determinism, missing pieces, and rendering in headless Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from voxelkit.report import write_report

SHAPE = (20, 24, 20)
CONDITIONS = ["anakinra", "placebo"]
REGIONS = ["thalamus", "insula", "caudate"]


def _affine() -> np.ndarray:
    """2 mm voxels, the grid centred near the MNI origin."""
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [-19.0, -40.0, -12.0]
    return aff


def _save(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), _affine()), path)


def _qc(subject: str, session: str, rng: np.random.Generator) -> dict:
    start = np.concatenate([np.arange(0, 60, 10), np.arange(60, 600, 60), np.arange(600, 3600, 300)])
    dur = np.diff(np.append(start, 3600))
    t = (start + dur / 2) / 60.0
    ref = 10 * t * np.exp(-t / 8)
    voxels = []
    for i, (label, bp) in enumerate([("thalamus", 2.7), ("insula", 1.4), ("white matter", 0.2)]):
        fitted = ref * (1 + bp * (1 - np.exp(-t / 15)))
        tac = fitted + rng.normal(0, 0.3, t.size)
        voxels.append({"index": 100 + i, "ijk": [10, 12, 9 + i], "label": label, "tac": tac.tolist(),
                       "fitted": None if i == 2 else fitted.tolist(), "params": {"bp_nd": bp, "r1": 1.0}})
    bp = rng.gamma(4, 0.4, 3000)
    r1 = rng.normal(1, 0.1, 3000)
    hist = {k: {"edges": np.histogram(v, 30)[1].tolist(), "counts": np.histogram(v, 30)[0].tolist()}
            for k, v in (("bp_nd", bp), ("r1", r1))}
    return {"subject": subject, "session": session, "phase": None, "model": "srtm",
            "frames": {"start_s": start.tolist(), "duration_s": dur.tolist()},
            "reference_tac": ref.tolist(), "reference_desc": "mean of 812 voxels in cerebellar grey matter",
            "example_voxels": voxels, "status_counts": {"ok": 2990, "nonpositive": 3, "grid_edge": 7},
            "histograms": hist, "n_voxels": 3000, "fit_seconds": 0.4, "backend": "numpy"}


def _release_qc(qc: dict, session: str, rng: np.random.Generator) -> dict:
    """What voxelkit.pipeline.run stores for an lp-ntPET fit: examples with the fit without the release term,
    release/t_d histograms and the BP(t) curve per region (``release_curves``)."""
    t_fr = (np.asarray(qc["frames"]["start_s"]) + np.asarray(qc["frames"]["duration_s"]) / 2) / 60.0
    for v in qc["example_voxels"]:
        fit = np.asarray(v["fitted"] if v["fitted"] is not None else v["tac"], float)
        v["fitted"] = fit.tolist()
        v["fitted_without_release"] = (fit * (1 + 0.15 * (t_fr > 45) * (1 - np.exp(-(t_fr - 45) / 10)))).tolist()
        v["params"] = {"bp_nd": v["params"]["bp_nd"], "release": 0.12, "t_d": 46.0, "f_stat": 9.0}
    rel, td = rng.normal(0.1, 0.05, 3000), rng.normal(50, 3, 3000)
    qc["histograms"].update({k: {"edges": np.histogram(v, 30)[1].tolist(), "counts": np.histogram(v, 30)[0].tolist()}
                             for k, v in (("release", rel), ("t_d", td))})
    qc["model"] = "lpntpet2"
    t = np.arange(0, 60.5, 0.5)
    occ = (0.2 if session == "anakinra" else 0.1) * np.clip((t - 45) / 10, 0, 1) \
        * np.exp(-np.clip(t - 55, 0, None) / 10)
    qc["release_curves"] = {"t_min": t.tolist(), "regions": {
        r: {"bp_t": ((1.0 + i) * (1 - occ)).tolist(), "n_voxels": 50, "release": float(occ.max()), "t_d": 45.0}
        for i, r in enumerate(REGIONS)}}
    return qc


def make_output_dir(out: Path, n_subjects: int = 2, release: bool = False) -> Path:
    """A small pipeline output directory following voxelkit/pipeline/layout.py, with the files as
    voxelkit.pipeline.run and voxelkit.stats write them (study.json = StudyConfig.to_dict(), provenance.json,
    group/stats/ from PermutationResult.save).  ``release``: as ``voxelkit run --contrast release`` writes it
    (lpntpet2 maps incl. release and t_d, QC records with release curves, roi_values with a quantity column,
    an atlas look-up with an effect column)."""
    from voxelkit.pipeline import layout

    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    subjects = [f"{i:02d}" for i in range(1, n_subjects + 1)]
    model = "lpntpet2" if release else "srtm"
    lut = "/data/atlas.tsv"
    if release:
        lut = str(out.parent / "atlas.tsv")
        Path(lut).write_text("index\tname\teffect\n1\tthalamus\t1\n2\tinsula\t1\n3\tcaudate\t0\n")
    study = {"bids_dir": "/data/anakinra-study", "output_dir": str(out), "conditions": CONDITIONS,
             "ref_mask": "/data/ref.nii.gz", "brain_mask": None, "atlas": "/data/atlas.nii.gz",
             "atlas_labels": lut, "model": model,
             "model_options": {"challenge_window": [45, 60], "k2prime": "median"} if release else {"k2prime": 0.1},
             "windows": None, "contrast": "release" if release else "bp_nd", "smoothing_fwhm": 6.0, "covariates": [],
             "n_perm": 500, "cluster_p": 0.001, "tfce": True, "two_sided": True, "seed": 7, "on_missing": "drop",
             "jobs": 1, "device": None, "report": True}
    (out / "study.json").write_text(json.dumps(study))
    (out / "provenance.json").write_text(json.dumps({
        "voxelkit": "0.1.0", "command": ["voxelkit", "run", "study.toml"], "settings": study, "seed": 7,
        "backend": {"name": "numpy", "reason": "no CUDA device"},
        "versions": {"numpy": np.__version__, "nibabel": nib.__version__},
        "inputs": [{"path": f"/data/sub-{s}/ses-{c}/pet/sub-{s}_ses-{c}_pet.nii.gz", "sha256": f"{i:064x}",
                    "bytes": 1000 + i}
                   for i, (s, c) in enumerate((s, c) for s in subjects for c in CONDITIONS)],
        "subjects": subjects, "dropped_subjects": {"99": "no placebo session"},
        "fits": {"fitted": 2 * n_subjects, "reused": 0}, "seconds": {"fit": 3.2, "stats": 5.1}}))
    brain = np.zeros(SHAPE, bool)
    brain[3:17, 3:21, 3:17] = True
    for s in subjects:
        for c in CONDITIONS:
            _save(layout.map_path(out, s, c, model, "bp_nd"), np.where(brain, rng.gamma(4, 0.4, SHAPE), 0))
            qc = layout.qc_path(out, s, c, model)
            rec = _qc(s, c, rng)
            if release:
                rec = _release_qc(rec, c, rng)
                drug = 0.1 if c == "anakinra" else 0.0
                _save(layout.map_path(out, s, c, model, "release"),
                      np.where(brain, rng.normal(0.1 + drug, 0.05, SHAPE), np.nan))
                _save(layout.map_path(out, s, c, model, "t_d"), np.where(brain, rng.normal(48, 2, SHAPE), np.nan))
            qc.write_text(json.dumps(rec))
    t = np.where(brain, rng.normal(0, 1, SHAPE), 0)
    t[8:12, 10:14, 8:12] += 6.0
    t[4:6, 16:18, 4:6] -= 5.0
    sig_pos = np.zeros(SHAPE)
    sig_pos[8:12, 10:14, 8:12] = 2.69897  # p = 0.002
    sig_neg = sig_pos.copy()
    sig_neg[4:6, 16:18, 4:6] = -1.30103  # p = 0.05 exactly: significant (p <= 0.05)
    maps = {"t": t, "logp_uncorrected": np.where(brain, 1.5, 0), "logp_fwe_voxel": np.where(brain, 0.2, 0),
            "logp_fwe_cluster_extent": np.where(sig_pos > 0, 1.0, 0),  # p = 0.1: nothing significant
            "logp_fwe_cluster_mass": sig_pos, "tfce": np.sign(t) * np.abs(t) ** 2 * 10, "logp_fwe_tfce": sig_neg}
    clusters = [
        {"cluster_id": "1", "sign": "+", "size_voxels": 64, "size_mm3": 512.0, "mass": 210.5, "peak_t": 8.91,
         "peak_x": 0.0, "peak_y": -16.0, "peak_z": 6.0, "p_fwe_extent": 0.1, "p_fwe_mass": 0.002, "region": "thalamus"},
        {"cluster_id": "1a", "sign": "", "size_voxels": "", "size_mm3": "", "mass": "", "peak_t": 7.5, "peak_x": 4.0,
         "peak_y": -12.0, "peak_z": 6.0, "p_fwe_extent": "", "p_fwe_mass": "", "region": "thalamus"},
        {"cluster_id": "2", "sign": "-", "size_voxels": 8, "size_mm3": 64.0, "mass": 21.3, "peak_t": -6.02,
         "peak_x": -12.0, "peak_y": -8.0, "peak_z": -4.0, "p_fwe_extent": 0.4, "p_fwe_mass": 0.31, "region": "n/a"}]
    null = {"h0_max_t": rng.gumbel(4, 0.5, 500), "h0_max_cluster_extent": rng.gamma(2, 20, 500),
            "h0_max_cluster_mass": rng.gamma(2, 30, 500), "h0_max_tfce": rng.gumbel(300, 40, 500),
            "sign_flips": rng.choice([-1, 1], (500, n_subjects)), "cluster_threshold_t": np.array(3.4),
            "two_sided": np.array(True)}
    settings = {"test": "paired", "n_perm": 500, "two_sided": True, "design_matrix": [[1.0]] * n_subjects,
                "tfce": True, "tfce_H": 2.0, "cluster_p": 0.001, "cluster_threshold_t": 3.4, "connectivity": 26}
    save_stats(layout.stats_dir(out), maps, brain, null, clusters, settings)
    roi = layout.roi_dir(out)
    roi.mkdir(parents=True, exist_ok=True)
    lines = ["subject\tcondition\tphase\tregion" + ("\tquantity" if release else "") + "\tvalue"]
    for s in subjects:
        for r_i, r in enumerate(REGIONS):
            base = 1.0 + r_i + rng.normal(0, 0.2)
            for c in CONDITIONS:
                q = "\tbp_nd" if release else ""
                lines.append(f"{s}\t{c}\tn/a\t{r}{q}\t{base * (0.92 if c == 'anakinra' else 1.0):.4f}")
                if release:
                    lines.append(f"{s}\t{c}\tn/a\t{r}\trelease\t{0.2 if c == 'anakinra' else 0.1:.4f}")
    (roi / "roi_values.tsv").write_text("\n".join(lines) + "\n")
    (roi / "roi_tests.tsv").write_text(
        "region\tn\tmean_a\tmean_b\tmean_diff\tt\tp\tp_fdr\n"
        "thalamus\t2\t1.84\t2.0\t-0.16\t-5.1\t0.004\t0.012\n"
        "insula\t2\t2.7\t2.9\t-0.2\t-2.2\t0.06\t0.09\n"
        "caudate\t2\t3.6\t3.7\t-0.1\t-0.9\t0.4\t0.4\n")
    write_run_manifest(out)
    return out


def write_run_manifest(out: Path) -> None:
    """The run folder's manifest, as voxelkit run writes it: every file below ``out`` (the stats folder has its
    own manifest too)."""
    from voxelkit.io import derivatives as dv

    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != dv.MANIFEST_NAME)
    (out / dv.MANIFEST_NAME).write_text(json.dumps({"command": "run", "written": written}))


def save_stats(folder: Path, maps: dict[str, np.ndarray], brain: np.ndarray, null: dict[str, np.ndarray],
               clusters: list[dict], settings: dict) -> dict[str, Path]:
    """``folder`` as voxelkit stats writes it (PermutationResult.save: maps, cluster table, nulls, stats.json with
    the decisions, manifest) from 3-D maps."""
    from voxelkit.io import Masker
    from voxelkit.stats.result import PermutationResult

    masker = Masker(brain, _affine())
    res = PermutationResult({k: v[brain].astype(np.float32) for k, v in maps.items()}, masker, null, clusters,
                            settings, analysed=np.ones(int(brain.sum()), bool))
    return res.save(folder, overwrite=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = make_output_dir(tmp_path_factory.mktemp("study") / "derivatives" / "voxelkit", n_subjects=3)
    return write_report(out)


@pytest.fixture(scope="module")
def release_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = make_output_dir(tmp_path_factory.mktemp("release") / "derivatives" / "voxelkit", n_subjects=3,
                          release=True)
    return write_report(out)


def _section(text: str, sid: str) -> str:
    i = text.index(f'id="{sid}"')
    i = text.rindex("<", 0, i)
    return text[i:text.index("</section>", i)]


def test_report_release_section(release_report: Path, report: Path) -> None:
    text = html.unescape(release_report.read_text(encoding="utf-8"))
    assert "could not be rendered" not in text
    sec = _section(text, "release")
    assert "Release and onset maps (mean over subjects)" in sec
    assert sec.count("<img ") == 2 + 1 + 1 + 2  # release and t_D maps, regional release, BP(t), 2 voxel panels
    assert "BP(t) of the planted regions" in sec and "Regions: the planted regions (atlas look-up column effect" in sec
    assert "dashed: the same fit without the release term" in sec
    assert "anakinra − placebo" in sec and "challenge window 45–60 min" in sec
    # the effect sentence names the quantity and its unit (the fixture's ROI tests: thalamus significant)
    assert "The peak release (lp-ntPET: fractional receptor occupancy by the released neurotransmitter) lower " \
           "under anakinra than under placebo by 0.16 (fraction of receptors) in thalamus" in text
    # the BPND figure of the ROI section uses the bp_nd rows only; the release rows have their own figure
    assert "Regional release by condition (paired)" in sec
    # the bp_nd report has no release section
    assert 'id="release"' not in report.read_text(encoding="utf-8")


def test_report_release_planted_regions_choice(release_report: Path) -> None:
    from voxelkit.report.report import _Report

    rep = _Report(release_report.parent)
    rep.design()
    assert rep.planted_regions(["thalamus", "insula", "caudate"])[0] == ["thalamus", "insula"]
    rep.study["atlas_labels"] = "/nonexistent.tsv"
    assert rep.planted_regions(["thalamus", "insula", "caudate"])[0] == ["thalamus", "insula", "caudate"]


def test_map_slices_and_bp_curves_figures() -> None:
    from voxelkit.report import figures

    vol = np.full((8, 8, 6), np.nan)
    vol[2:6, 2:6, 1:5] = 0.1
    a = figures.map_slices([("a", vol), ("b", vol * 2)], "t", "release", 0.0, 0.3)
    assert a[:8] == b"\x89PNG\r\n\x1a\n" and a != figures.map_slices([("a", vol), ("b", vol * 3)], "t", "r", 0, 0.3)
    t = np.arange(0, 10.0)
    c = figures.bp_curves({"thalamus": {"anakinra": {"mean": (2 - 0.1 * t).tolist(), "subjects": []}}}, t,
                          ["anakinra", "placebo"], [4, 8])
    assert c[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_content(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert report.name == "report.html"
    for expected in ("Study report: anakinra-study", "anakinra − placebo (bp_nd)", "srtm (k2prime=0.1)",
                     "Input checksums (6 files)", "no placebo session", "thalamus", "clusters.tsv", "h0_max_t",
                     "h0_max_cluster_mass", "sub-01_ses-placebo_model-srtm", "mean BPND of 6 scans",
                     "No voxel is FWE-significant at p ≤ 0.05 with voxel (max-T)", "p_fdr", "mean of 812 voxels",
                     "stats.json", "TFCE + cluster + voxel, two-sided", "Key results",
                     "1 FWE-significant cluster(s)", "1 region(s) with p_fdr &lt; 0.05"):
        assert expected in text, expected
    for absent in ("could not be rendered", "not computed", "not available", "sign_flips", "Problems"):
        assert absent not in text, absent
    # t: glass + axial slices; TFCE and cluster mass (significant) x (glass + sections); ROI; QC overview + 6
    # scans; nulls.  Cluster extent (p = 0.1) and voxel FWE have nothing significant.
    assert text.count("<img ") == 2 + 4 + 1 + 1 + 6 + 1
    assert "No voxel is FWE-significant at p ≤ 0.05 with cluster extent" in text
    # TFCE: 64 voxels at p = 0.002 and 8 at p = 0.05 exactly (float32 map): all 72 significant
    assert re.search(r'<td>TFCE</td><td>logp_fwe_tfce.nii.gz</td><td class="num">72</td>', text)
    assert text.count("<details>") >= 6  # 6 scans: collapsed per-scan sections


def test_null_table_comes_from_the_decisions_record(report: Path) -> None:
    """Critical values, observed maxima and their p come from stats.json's decisions (voxelkit.stats.inference:
    fwe_threshold of the null, its identity row 0, fwe_p), not from a copy in the report."""
    from voxelkit.io import derivatives as dv
    from voxelkit.report.html import fmt_value
    from voxelkit.stats.inference import fwe_p, fwe_threshold

    stats = dv.stats_dir(report.parent)
    rec = json.loads((stats / dv.STATS_SETTINGS).read_text())["decisions"]["nulls"]
    with np.load(stats / dv.STATS_NULL) as z:
        null = np.asarray(z["h0_max_t"], float)
    assert rec["h0_max_t"]["fwe_critical_value"] == pytest.approx(fwe_threshold(null, 0.05), rel=1e-12)
    assert rec["h0_max_t"]["observed_max"] == null[0]
    assert rec["h0_max_t"]["p_fwe_observed_max"] == pytest.approx(fwe_p(null[:1], null)[0])
    text = _section(report.read_text(encoding="utf-8"), "nulls")
    row = re.search(r"<td>h0_max_t</td>(.*?)</tr>", text).group(1)
    assert f">{fmt_value(rec['h0_max_t']['fwe_critical_value'])}<" in row
    assert f">{fmt_value(float(null[0]))}<" in row
    assert set(rec) == {"h0_max_t", "h0_max_tfce", "h0_max_cluster_extent", "h0_max_cluster_mass"}


def test_report_self_contained(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    srcs = re.findall(r"""<img\b[^>]*\bsrc\s*=\s*["']([^"']*)""", text, flags=re.I)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    refs = re.findall(r"""\b(?:src|href|action|poster|data)\s*=\s*["']([^"']*)""", text, flags=re.I)
    assert not [r for r in refs if not (r.startswith(("#", "data:")))], "external or relative reference"
    assert not re.search(r"https?://", text.replace("http://www.w3.org", "")), "URL in the report"
    assert "<script" not in text.lower() and "<link" not in text.lower() and "@import" not in text
    assert "url(" not in text


def test_report_deterministic(report: Path, tmp_path: Path) -> None:
    again = write_report(report.parent, tmp_path / "again.html")
    assert again == tmp_path / "again.html"
    assert again.read_bytes() == report.read_bytes()


def test_report_missing_pieces(tmp_path: Path) -> None:
    from voxelkit.io import InputError

    with pytest.raises(InputError, match="no such output directory"):
        write_report(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    text = write_report(empty).read_text(encoding="utf-8")
    assert text.count("not computed") >= 6
    assert "<img" not in text
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "study.json").write_text(json.dumps({"subjects": ["01"], "model": "logan"}))
    (partial / "roi").mkdir()
    (partial / "roi" / "roi_tests.tsv").write_text("region\tn\tt\tp\nthalamus\t1\tn/a\tn/a\n")
    bad = partial / "sub-01" / "ses-a" / "pet"
    bad.mkdir(parents=True)
    (bad / "sub-01_ses-a_model-logan_qc.json").write_text("{not json")
    (bad / "sub-01_ses-b_model-logan_qc.json").write_text(json.dumps({"model": "logan"}))
    # written by an older voxelkit (no manifest): the per-scan QC is not recorded, said so, nothing guessed
    text = html.unescape(write_report(partial, tmp_path / "r.html").read_text(encoding="utf-8"))
    assert "logan" in text and "thalamus" in text and "unreadable" not in text
    assert "Per-scan QC (*_qc.json) (no voxelkit_manifest.json): not recorded (written by an older voxelkit); " \
           "rerun voxelkit run" in text
    write_run_manifest(partial)
    text = write_report(partial, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "logan" in text and "unreadable" in text and "thalamus" in text
    assert "could not be rendered" not in text


@pytest.mark.slow
def test_report_speed_20_scans(tmp_path: Path) -> None:
    """A 10-subject, 20-scan study reports in well under 10 s of CPU (imports excluded; CPU time, so a busy
    machine does not make the test flaky)."""
    import time

    import nilearn.plotting  # noqa: F401  (import cost excluded)

    out = make_output_dir(tmp_path / "derivatives" / "voxelkit", n_subjects=10)
    t0 = time.process_time()
    text = write_report(out).read_text(encoding="utf-8")
    cpu = time.process_time() - t0
    assert text.count("<details>") >= 20
    assert cpu < 10.0, f"report took {cpu:.1f} s of CPU"


def test_report_odd_stats(tmp_path: Path) -> None:
    """No t map (a -log10 p map is shown instead), an empty cluster table, a null file without null distributions,
    no stats.json (decisions not recorded); a stray .npz that the manifest does not list is not read."""
    from voxelkit.io import derivatives as dv

    stats = dv.stats_dir(tmp_path)
    lp = np.zeros(SHAPE)
    lp[8:12, 10:14, 8:12] = 0.9
    _save(stats / dv.stats_map_name("logp_fwe_voxel"), lp)
    (stats / dv.STATS_CLUSTERS).write_text("cluster_id\tsize_voxels\tp_fwe_mass\n")
    np.savez(stats / dv.STATS_NULL, weights=np.ones(3))
    np.savez(stats / "other.npz", h0_max_t=np.ones(30))
    (stats / dv.MANIFEST_NAME).write_text(json.dumps({"command": "stats paired", "written": [
        dv.stats_map_name("logp_fwe_voxel"), dv.STATS_CLUSTERS, dv.STATS_NULL]}))
    text = html.unescape(write_report(tmp_path).read_text(encoding="utf-8"))
    assert "t map: not computed; showing logp_fwe_voxel instead" in text
    assert "No clusters (the table is empty)" in text
    assert f"No null distribution found in {dv.STATS_NULL} (arrays: weights)" in text and "other.npz" not in text
    assert "No voxel is FWE-significant" in text and "could not be rendered" not in text
    assert "Significance counts (stats.json key 'decisions'): not recorded (written by an older voxelkit)" in text
    assert text.count("<img ") == 2


def test_report_roi_phases(tmp_path: Path) -> None:
    """Time windows: ROI values per phase get one panel per region and phase."""
    roi = tmp_path / "roi"
    roi.mkdir()
    lines = ["subject\tcondition\tphase\tregion\tvalue"]
    for s in ("01", "02"):
        for c in ("placebo", "anakinra"):
            for ph in ("baseline", "challenge"):
                lines.append(f"{s}\t{c}\t{ph}\tthalamus\t{2.0 if ph == 'baseline' else 1.8}")
    (roi / "roi_values.tsv").write_text("\n".join(lines) + "\n")
    (tmp_path / "study.json").write_text(json.dumps({"conditions": ["anakinra", "placebo"]}))
    text = write_report(tmp_path).read_text(encoding="utf-8")
    assert text.count("<img ") == 1 and "2 subjects" in text


# ------------------------------------------------------------------------------------------ headless Chromium

CHECK_SCRIPT = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  window.__errors.push(t && t !== window && t.tagName
    ? 'resource: ' + t.tagName + ' ' + String(t.currentSrc || t.src || t.href || '').slice(-80)
    : 'error: ' + e.message);
}, true);
window.addEventListener('unhandledrejection', function (e) { window.__errors.push('rejection: ' + e.reason); });
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var res = performance.getEntriesByType('resource').map(function (r) { return r.name; })
    .filter(function (n) { return n.indexOf('data:') !== 0; });
  var nav = document.querySelector('nav.toc');
  var out = {ok: ok, total: imgs.length, errors: window.__errors, resources: res,
             toc: nav ? getComputedStyle(nav).position : null,
             sections: document.querySelectorAll('main section').length};
  var pre = document.createElement('pre');
  pre.id = 'report-check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium() -> str:
    exe = os.environ.get("VOXELKIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    reason = "headless Chromium not found (Debian package `chromium`; .ci/run installs it)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)


def _run_chromium(exe: str, args: list[str], profile: Path) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-default-apps", "--mute-audio", "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def _check_in_chromium(exe: str, text: str, tmp: Path) -> dict:
    """Open ``text`` (with the check script injected) in headless Chromium; the script's findings as a dict."""
    checked = tmp / "checked.html"
    checked.write_text(text.replace("<head>", "<head>\n" + CHECK_SCRIPT, 1), encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="vk-chromium-") as profile:
        proc = _run_chromium(exe, ["--virtual-time-budget=5000", "--window-size=1400,1000", "--dump-dom",
                                   checked.as_uri()], Path(profile))
    m = re.search(r'<pre id="report-check">(.*?)</pre>', proc.stdout, flags=re.S)
    assert m, f"no check output from Chromium (rc={proc.returncode}):\n{proc.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1)))


def test_chromium_check_detects_failures(tmp_path: Path) -> None:
    """Negative control: the harness sees an undecodable image, a missing file and a script error."""
    exe = _chromium()
    bad = ('<!DOCTYPE html><html><head><title>x</title></head><body>'
           '<img src="data:image/png;base64,AAAA" alt="broken"><img src="missing.png" alt="missing">'
           '<script>undefined_function();</script></body></html>')
    res = _check_in_chromium(exe, bad, tmp_path)
    assert res["total"] == 2 and res["ok"] == 0, res
    assert any("undefined_function" in e for e in res["errors"]), res
    assert any(e.startswith("resource: IMG") and "missing.png" in e for e in res["errors"]), res


@pytest.mark.parametrize("which", ["report", "release_report"])
def test_report_renders_in_chromium(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    report = request.getfixturevalue(which)
    exe = _chromium()
    text = report.read_text(encoding="utf-8")
    res = _check_in_chromium(exe, text, tmp_path)
    assert res["total"] == text.count("<img ") > 0
    assert res["ok"] == res["total"], res  # every image decoded (also inside collapsed <details>)
    assert res["errors"] == [], res
    assert res["resources"] == [], res  # nothing fetched: self-contained
    assert res["toc"] == "sticky"
    assert res["sections"] >= 6


@pytest.mark.parametrize("which", ["report", "release_report"])
def test_report_screenshot(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The unmodified report renders to a non-blank screenshot (set VOXELKIT_REPORT_SHOT=path to keep it)."""
    report = request.getfixturevalue(which)
    exe = _chromium()
    shot = Path(os.environ.get("VOXELKIT_REPORT_SHOT") or tmp_path / "report.png")
    with tempfile.TemporaryDirectory(prefix="vk-chromium-") as profile:
        proc = _run_chromium(exe, ["--virtual-time-budget=3000", f"--screenshot={shot}", "--window-size=1400,3000",
                                   report.as_uri()], Path(profile))
    assert shot.is_file() and shot.stat().st_size > 20_000, proc.stderr[-2000:]


def test_report_release_section_screenshot_not_blank(release_report: Path, tmp_path: Path) -> None:
    """The release section alone (the report's head and that section) renders with content: maps, curves and
    TAC panels (VOXELKIT_REPORT_SHOT_DIR=dir keeps report_release.png for a human look)."""
    exe = _chromium()
    text = release_report.read_text(encoding="utf-8")
    head = text[:text.index(">", text.index("<body")) + 1]
    page = tmp_path / "release_only.html"
    page.write_text(head + "<main>" + _section(text, "release") + "</section></main></body></html>", encoding="utf-8")
    folder = Path(os.environ.get("VOXELKIT_REPORT_SHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    shot = folder / "report_release.png"
    with tempfile.TemporaryDirectory(prefix="vk-chromium-") as profile:
        proc = _run_chromium(exe, ["--virtual-time-budget=3000", f"--screenshot={shot}", "--window-size=1200,2600",
                                   page.as_uri()], Path(profile))
    assert shot.is_file(), proc.stderr[-2000:]
    ink, spread = _png_stats(shot)
    assert ink > 0.05 and spread > 0.05, (ink, spread)


# ------------------------------------------------------------------------------- what a reader needs to see

@pytest.fixture(scope="module")
def reader_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture study with a BIDS dataset beside it (dataset Name, sidecar Units) and ROI tests as the
    pipeline writes them (mean_<condition>, pct_change), one region with a baseline BPND about 0."""
    root = tmp_path_factory.mktemp("reader")
    bids = root / "bids"
    (bids / "sub-01" / "ses-anakinra" / "pet").mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "IL-1 blockade and MOR availability",
                                                               "BIDSVersion": "1.9.0"}))
    (bids / "sub-01" / "ses-anakinra" / "pet" / "sub-01_ses-anakinra_pet.json").write_text(
        json.dumps({"Units": "kBq/mL", "FrameTimesStart": [0], "FrameDuration": [60]}))
    out = make_output_dir(bids / "derivatives" / "voxelkit", n_subjects=3)
    study = json.loads((out / "study.json").read_text())
    study["bids_dir"] = str(bids)
    (out / "study.json").write_text(json.dumps(study))
    # the scans used, as voxelkit run records them (pipeline.bids.scan_table): the report takes Units from there
    prov = json.loads((out / "provenance.json").read_text())
    pet = bids / "sub-01" / "ses-anakinra" / "pet"
    prov["scans"] = [{"subject": "01", "condition": "anakinra", "session": "anakinra",
                      "pet": str(pet / "sub-01_ses-anakinra_pet.nii.gz"),
                      "sidecar": str(pet / "sub-01_ses-anakinra_pet.json")}]
    (out / "provenance.json").write_text(json.dumps(prov))
    (out / "roi" / "roi_tests.tsv").write_text(
        "region\tn\tquantity\tmean_anakinra\tmean_placebo\tmean_diff\tpct_change\tt\tp\tp_fdr\n"
        "thalamus\t3\tbp_nd\t1.84\t2.0\t-0.16\t-8.0\t-5.1\t0.004\t0.012\n"
        "insula\t3\tbp_nd\t2.686\t2.9\t-0.214\t-7.379\t-4.2\t0.006\t0.012\n"
        "caudate\t3\tbp_nd\t3.6\t3.7\t-0.1\t-2.7\t-0.9\t0.4\t0.4\n"
        "csf\t3\tbp_nd\t0.0116\t0.003\t0.0086\t288.0\t0.5\t0.6\t0.6\n")
    return write_report(out)


def test_report_states_the_effect_in_words(reader_report: Path) -> None:
    text = html.unescape(reader_report.read_text(encoding="utf-8"))
    assert "<title>Study report: IL-1 blockade and MOR availability" in text or \
        "Study report: IL-1 blockade and MOR availability" in text
    assert "BPND lower under anakinra than under placebo by 7.4-8.0 % in thalamus and insula (paired t-tests, " \
           "n = 3, p_fdr < 0.05)." in text
    assert "Voxelwise (TFCE, FWE p ≤ 0.05): 72 voxels, 64 with anakinra < placebo, 8 with anakinra > placebo." \
        not in text  # the fixture's TFCE map: 64 positive and 8 negative voxels
    assert re.search(r"Voxelwise \(TFCE, FWE p ≤ 0\.05\): 72 voxels, 8 with anakinra < placebo, 64 with "
                     r"anakinra > placebo\.", text)


def test_report_pct_change_of_zero_baseline_is_na(reader_report: Path) -> None:
    text = html.unescape(reader_report.read_text(encoding="utf-8"))
    assert not re.search(r">288<", re.sub(r'src="data:[^"]*"', "", text))
    assert re.search(r"<td>csf</td>(<td[^>]*>[^<]*</td>){5}<td class=\"num\">n/a</td>", text)
    assert "pct_change is n/a for csf: the mean BPND there is below 0.1 in magnitude" in text
    assert '<td class="num">-8</td>' in text  # other regions keep their percentage (numeric column)


def test_report_cluster_counts_unambiguous(reader_report: Path) -> None:
    """The fixture's only cluster is significant by mass (p 0.002), not by extent (p 0.1)."""
    text = html.unescape(reader_report.read_text(encoding="utf-8"))
    plain = re.sub(r"<[^>]+>", "", text)
    assert "1 FWE-significant cluster(s) (p ≤ 0.05 by cluster extent or mass): 0 by cluster extent, " \
           "1 by cluster mass" in plain
    assert "mass only" in text
    assert re.search(r'FWE p≤0\.05, cluster mass</div>', text)
    assert "64 voxels in 1 cluster<" in text
    assert " cl<" not in text and " cl," not in text  # no abbreviated cluster counts
    assert "a cluster significant only by mass is not counted under extent" in text


def test_report_units(reader_report: Path) -> None:
    from voxelkit.report import figures

    text = html.unescape(reader_report.read_text(encoding="utf-8"))
    assert "peak x, y, z (mm)" in text and "peak_x (mm)" in text and "size (mm³)" in text
    assert figures.param_label("k2") == "k2 (1/min)" and figures.param_label("k2prime") == "k2prime (1/min)"
    assert figures.activity_label({"activity_unit": "kBq/mL"}) == "activity (kBq/mL)"
    assert figures.activity_label({}) == "activity (image units)"
    # the report passes the sidecar's unit to the TAC panels
    from voxelkit.report.report import _Report

    rep = _Report(reader_report.parent)
    rep.design()
    assert rep.activity_unit() == "kBq/mL"
    # the colour bar names the statistic: the labelled and unlabelled figures differ
    img = nib.Nifti1Image(np.random.default_rng(0).normal(0, 2, SHAPE).astype(np.float32), _affine())
    assert figures.glass_brain(img, "t", 1.0, 5.0, "t") != figures.glass_brain(img, "t", 1.0, 5.0, None)


def _png_stats(path: Path) -> tuple[float, float]:
    """(fraction of non-white pixels, standard deviation of the grey levels) of a PNG."""
    import matplotlib.image as mpimg

    a = mpimg.imread(str(path))[..., :3].astype(float)
    grey = a.mean(axis=2)
    return float((grey < 0.97).mean()), float(grey.std())


def test_report_screenshot_not_blank(reader_report: Path, tmp_path: Path) -> None:
    """Screenshots of the top (title, effect sentence, cards) and of the whole report are not blank; a blank page
    is (negative control).  VOXELKIT_REPORT_SHOT_DIR=dir keeps them for a human look."""
    exe = _chromium()
    keep = os.environ.get("VOXELKIT_REPORT_SHOT_DIR")
    folder = Path(keep) if keep else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    shots = {}
    for name, src, size in (("top", reader_report, "1300,1100"), ("full", reader_report, "1300,6000"),
                            ("blank", blank, "800,600")):
        shot = folder / f"report_{name}.png"
        with tempfile.TemporaryDirectory(prefix="vk-chromium-") as profile:
            proc = _run_chromium(exe, ["--virtual-time-budget=3000", f"--screenshot={shot}",
                                       f"--window-size={size}", src.as_uri()], Path(profile))
        assert shot.is_file(), proc.stderr[-2000:]
        shots[name] = _png_stats(shot)
    assert shots["blank"][0] < 0.001 and shots["blank"][1] < 0.01
    for name in ("top", "full"):
        ink, spread = shots[name]
        assert ink > 0.05 and spread > 0.05, (name, shots[name])
