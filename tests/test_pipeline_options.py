"""Study-file and ``voxelkit run`` options: k2' as a number / "median" / mask file / atlas region name (one
resolver), and every inference setting of :class:`voxelkit.stats.settings.Inference` (one definition)."""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import voxelkit
from voxelkit.io import InputError, Masker
from voxelkit.pipeline import StudyConfig, contrast_maps, fit_scans, group_stats, layout, load_study_file
from voxelkit.stats.settings import Inference

N_SUBJECTS = 6
DERIV = "derivatives/voxelkit-sim"


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    from voxelkit.simulate.study import simulate_study

    root = tmp_path_factory.mktemp("options") / "bids"
    simulate_study(root, preset="test", n_subjects=N_SUBJECTS, effect=0.15, noise=0.05, seed=5, challenge="none")
    return root


def _deriv(study: Path, pattern: str) -> Path:
    (hit,) = sorted((study / DERIV).glob(pattern))
    return hit


def _toml(path: Path, study: Path, out: Path, body: str, model: str = "mrtm2", head: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'bids_dir = "{study}"\noutput_dir = "{out}"\nmodel = "{model}"\nreport = false\n{head}'
                    f"{body}\n")
    return path


def _thalamus_mask(study: Path, where: Path) -> Path:
    atlas = nib.load(str(_deriv(study, "*_dseg.nii.gz")))
    names = {r.split("\t")[1]: int(r.split("\t")[0]) for r in
             _deriv(study, "*_dseg.tsv").read_text().splitlines()[1:]}
    mask = (np.asarray(atlas.dataobj) == names["thalamus"]).astype(np.uint8)
    where.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(mask, atlas.affine), str(where))
    return where


def test_k2prime_mask_file_region_name_alias_and_api_agree(study: Path, tmp_path: Path, caplog) -> None:
    """k2prime = "masks/thal.nii.gz" (relative to the study file), k2prime = "thalamus" (atlas region) and the
    deprecated k2prime_mask give the same k2' per scan as voxelkit.fit(..., k2prime=<mask file>)."""
    sdir = tmp_path / "studydir"
    mask = _thalamus_mask(study, sdir / "masks" / "thal.nii.gz")
    atlas, lut = _deriv(study, "*_dseg.nii.gz"), _deriv(study, "*_dseg.tsv")
    by_path = load_study_file(_toml(sdir / "a.toml", study, tmp_path / "a", '[model_options]\nk2prime = '
                                    '"masks/thal.nii.gz"'))
    assert by_path.model_options["k2prime"] == str(mask)
    by_name = load_study_file(_toml(sdir / "b.toml", study, tmp_path / "b", '[model_options]\nk2prime = "thalamus"',
                                    head=f'atlas = "{atlas}"\natlas_labels = "{lut}"\n'))
    with caplog.at_level(logging.WARNING, logger="voxelkit"):
        alias = load_study_file(_toml(sdir / "c.toml", study, tmp_path / "c", '[model_options]\nk2prime_mask = '
                                      '"masks/thal.nii.gz"'))
    assert any("DEPRECATED" in r.getMessage() and "k2prime_mask" in r.getMessage() for r in caplog.records)
    assert alias.model_options == by_path.model_options  # the alias is the same setting

    fa, fb = fit_scans(by_path), fit_scans(by_name)
    assert set(fa.k2prime) == set(fb.k2prime) and len(fa.k2prime) == 2 * N_SUBJECTS
    for key, rec in fa.k2prime.items():
        assert rec["value"] > 0 and rec["value"] == pytest.approx(fb.k2prime[key]["value"], rel=1e-9), key
    # the API (an independent path: voxelkit.fit reads the files itself)
    pet = study / "sub-01" / "ses-anakinra" / "pet" / "sub-01_ses-anakinra_pet.nii.gz"
    ref = voxelkit.fit(pet, reference=str(_deriv(study, "*desc-reference_mask.nii.gz")), model="mrtm2",
                       mask=str(_deriv(study, "*desc-brain_mask.nii.gz")), k2prime=str(mask))
    assert fa.k2prime["sub-01_ses-anakinra"]["value"] == pytest.approx(ref.info["k2prime"], rel=1e-6)
    bp = np.asarray(nib.load(str(layout.map_path(fa.output_dir, "01", "anakinra", "mrtm2", "bp_nd"))).dataobj)
    np.testing.assert_allclose(bp, np.asarray(ref.map("bp_nd").dataobj), rtol=1e-5, atol=1e-6, equal_nan=True)
    # the k2' region's file is an input of the fits' cache key and of provenance
    rec = json.loads(layout.fit_record_path(fb.output_dir, "01", "anakinra", "mrtm2").read_text())
    assert "k2prime_region" in rec["inputs"]


@pytest.mark.parametrize("body, model, match", [
    ('k2prime = "masks/missing.nii.gz"', "mrtm2", "no such mask file"),
    ('k2prime = "thalamuss"', "mrtm2", "no such region"),
    ('k2prime = "thalamus"', "srtm", "only applies to models"),
    ('k2prime = "masks/thal.nii.gz"\nk2prime_mask = "masks/thal.nii.gz"', "mrtm2", "not both"),
])
def test_bad_k2prime_in_study_file_names_file_and_key(study: Path, tmp_path: Path, body: str, model: str,
                                                       match: str) -> None:
    _thalamus_mask(study, tmp_path / "masks" / "thal.nii.gz")
    atlas, lut = _deriv(study, "*_dseg.nii.gz"), _deriv(study, "*_dseg.tsv")
    toml = _toml(tmp_path / "my_study.toml", study, tmp_path / "out", f"[model_options]\n{body}", model=model,
                 head=f'atlas = "{atlas}"\natlas_labels = "{lut}"\n')
    with pytest.raises(InputError) as ei:
        load_study_file(toml)
    msg = str(ei.value)
    assert "my_study.toml" in msg and "k2prime" in msg and match in msg and "\n" not in msg, msg
    assert not (tmp_path / "out").exists()


def test_region_name_without_atlas_is_refused_before_any_fit(study: Path, tmp_path: Path) -> None:
    """A region name and an atlas found only later (derivatives): refused by validation, before any fit."""
    bids = tmp_path / "bids"
    import shutil

    shutil.copytree(study, bids, ignore=shutil.ignore_patterns("*_dseg.*"))
    cfg = load_study_file(_toml(tmp_path / "s.toml", bids, tmp_path / "out", '[model_options]\nk2prime = "thalamus"'))
    with pytest.raises(InputError, match=r"s\.toml \[model_options\]: option 'k2prime'.*no atlas"):
        fit_scans(cfg)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("sub-*"))


def test_cli_run_k2prime_and_inference_flags(study: Path, tmp_path: Path, capsys, caplog) -> None:
    from voxelkit.cli import build_parser, main
    from voxelkit.cli.run import study_overrides

    parser = build_parser()
    mask = _thalamus_mask(study, tmp_path / "thal.nii.gz")
    with caplog.at_level(logging.WARNING, logger="voxelkit"):
        args = parser.parse_args(["run", str(study), "--model", "mrtm2", "--k2prime-mask", str(mask)])
        old = StudyConfig(bids_dir=args.bids_dir, **study_overrides(args))
    assert old.model_options == {"k2prime": str(mask)} and "DEPRECATED" in caplog.text
    args = parser.parse_args(["run", str(study), "--model", "mrtm2", "--k2prime", str(mask)])
    assert StudyConfig(bids_dir=args.bids_dir, **study_overrides(args)).model_options == old.model_options
    args = parser.parse_args(["run", str(study), "--model", "mrtm2", "--k2prime", "thalamus", "--variance-smoothing",
                              "6", "--connectivity", "6", "--accel", "tail", "--cluster-t", "3.1", "--tfce-h", "2.5",
                              "--one-sided", "--n-perm", "100", "--dtype", "float64", "--batch-size", "50"])
    cfg = StudyConfig(bids_dir=args.bids_dir, **study_overrides(args))
    inf = cfg.inference()
    assert (inf.variance_smoothing, inf.connectivity, inf.accel, inf.cluster_t, inf.cluster_p, inf.tfce_H,
            inf.two_sided, inf.n_perm, inf.dtype, inf.batch_size) == (6.0, 6, "tail", 3.1, None, 2.5, False, 100,
                                                                     "float64", 50)
    assert cfg.model_options["k2prime"] == "thalamus"
    # flags not given keep the study file's values; given ones win
    toml = _toml(tmp_path / "s.toml", study, tmp_path / "out", "[inference]\nvariance_smoothing = 4\nn_perm = 64\n"
                 "cluster_p = 0.01", model="mrtm")
    args = parser.parse_args(["run", "--study", str(toml), "--no-clusters", "--seed", "3"])
    cfg = load_study_file(toml, **study_overrides(args))
    assert (cfg.variance_smoothing, cfg.n_perm, cfg.cluster_p, cfg.cluster_t, cfg.seed) == (4.0, 64, None, None, 3)
    # a missing k2' mask on the command line: one line, exit 2, nothing written
    rc = main(["run", str(study), "-o", str(tmp_path / "cli"), "--model", "mrtm2", "--k2prime",
               str(tmp_path / "nope.nii.gz"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "nope.nii.gz" in err and "k2prime" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "cli").exists()


def test_every_inference_setting_is_a_study_key_and_a_run_flag() -> None:
    from voxelkit.cli import build_parser
    from voxelkit.pipeline.config import INFERENCE_KEYS

    names = {f.name for f in fields(Inference)}
    assert set(INFERENCE_KEYS) == names and names <= {f.name for f in fields(StudyConfig)}
    run = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "run")[1]
    dests = {a.dest for a in run._actions}
    assert names <= dests, names - dests
    cfg = StudyConfig(bids_dir="x", variance_smoothing=6, connectivity=18, accel="tail")
    assert cfg.inference() == Inference(variance_smoothing=6.0, connectivity=18, accel="tail")
    assert {k: cfg.to_dict()[k] for k in names} == Inference(variance_smoothing=6.0, connectivity=18,
                                                              accel="tail").to_dict()


@pytest.mark.parametrize("body, match", [
    ("bogus = 1", "unknown inference setting(s) bogus"),
    ('model = "srtm"', "unknown inference setting(s) model"),
    ("connectivity = 7", "connectivity (--connectivity) must be 6, 18 or 26"),
    ("variance_smoothing = -1", "variance_smoothing"),
])
def test_bad_inference_key_names_the_file(tmp_path: Path, body: str, match: str) -> None:
    toml = tmp_path / "my_study.toml"
    toml.write_text(f'bids_dir = "{tmp_path}"\n[inference]\n{body}\n')
    with pytest.raises(InputError) as ei:
        load_study_file(toml)
    msg = str(ei.value)
    assert "my_study.toml [inference]" in msg and match in msg and "\n" not in msg, msg


def test_variance_smoothing_from_study_file_equals_permutation_test(study: Path, tmp_path: Path) -> None:
    """[inference] variance_smoothing = 6 gives the t map of voxelkit.stats.permutation_test(variance_smoothing=6)
    on the same contrast maps (and not the plain t map); study.json and stats.json record it."""
    from voxelkit.stats import one_sample_design, permutation_test

    toml = _toml(tmp_path / "s.toml", study, tmp_path / "out", "smoothing_fwhm = 4\n[inference]\n"
                 "variance_smoothing = 6\nn_perm = 64\ntfce = false\ncluster_p = false\nseed = 2", model="mrtm")
    cfg = load_study_file(toml)
    fits = fit_scans(cfg)
    a, b, mask, affine = contrast_maps(cfg, fits)
    res = group_stats(cfg, a, b, mask, affine, fits=fits)
    masker = Masker(mask, affine)
    diff = np.stack([masker.transform(x) for x in a]).astype(np.float64) - \
        np.stack([masker.transform(x) for x in b]).astype(np.float64)
    kw = dict(n_perm=64, tfce=False, cluster_p=None, seed=2)
    ref = permutation_test(diff, masker, one_sample_design(len(a), kind="paired"), variance_smoothing=6, **kw)
    plain = permutation_test(diff, masker, one_sample_design(len(a), kind="paired"), **kw)
    np.testing.assert_allclose(res.maps["t"], ref.maps["t"], rtol=1e-6, atol=1e-9, equal_nan=True)
    assert not np.allclose(res.maps["t"], plain.maps["t"], equal_nan=True)
    stats = json.loads((layout.stats_dir(cfg.output_dir) / "stats.json").read_text())
    assert stats["variance_smoothing_fwhm_mm"] == 6.0
    from voxelkit.pipeline import provenance

    provenance(cfg, fits, res)
    assert json.loads((cfg.output_dir / "study.json").read_text())["variance_smoothing"] == 6.0


# --------------------------------------------------------------------------------------------------------------
# named contrasts over more than two conditions (issue 13 item 4)
# --------------------------------------------------------------------------------------------------------------
def _with_third_session(study: Path, root: Path, label: str = "baseline") -> Path:
    """The study with a third session per subject: a copy of ses-placebo named ses-<label>."""
    import shutil

    shutil.copytree(study, root)
    for sub in sorted(root.glob("sub-*")):
        src, dst = sub / "ses-placebo", sub / f"ses-{label}"
        shutil.copytree(src, dst)
        for f in dst.rglob("*ses-placebo*"):
            f.rename(f.with_name(f.name.replace("ses-placebo", f"ses-{label}")))
    return root


def test_named_contrasts_fit_once_and_equal_two_condition_runs(study: Path, tmp_path: Path) -> None:
    from voxelkit.pipeline import run_study

    bids = _with_third_session(study, tmp_path / "bids3")
    common = dict(model="mrtm", n_perm=64, tfce=False, cluster_p=0.01, seed=1, smoothing_fwhm=4.0, report=False)
    cfg = StudyConfig(bids_dir=bids, output_dir=tmp_path / "multi", conditions=("anakinra", "placebo", "baseline"),
                      contrasts=["anakinra-placebo", "anakinra-baseline"], **common)
    res = run_study(cfg, progress=False)
    assert res.fitted == 3 * N_SUBJECTS and res.reused == 0  # every scan of the three conditions fitted once
    assert list(res.contrasts) == ["BPNDanakinraMinusPlacebo", "BPNDanakinraMinusBaseline"]
    ref = run_study(StudyConfig(bids_dir=study, output_dir=tmp_path / "pair", **common), progress=False)
    for label, c in res.contrasts.items():
        assert (c["stats_dir"] / "t.nii.gz").exists() and c["stats_dir"].name == f"stats-{label}"
        # ses-baseline is a copy of ses-placebo: both contrasts equal the plain anakinra - placebo run
        np.testing.assert_array_equal(c["stats"].maps["t"], ref.stats.maps["t"])
        # the same regional tests (columns mean_<A>, mean_<B> named after the contrast's conditions)
        assert json.dumps([list(r.values()) for r in c["roi"].tests]) == \
            json.dumps([list(r.values()) for r in ref.roi_tests])
        assert f"mean_{c['conditions'][1]}" in c["roi"].tests[0]
        assert (tmp_path / "multi" / "roi" / f"desc-{label}_roi_tests.tsv").exists()
    manifest = json.loads((tmp_path / "multi" / "voxelkit_manifest.json").read_text())
    assert manifest["complete"] and "group/stats-BPNDanakinraMinusBaseline/t.nii.gz" in manifest["written"]
    again = run_study(cfg, progress=False)
    assert again.fitted == 0 and again.reused == 3 * N_SUBJECTS


@pytest.mark.parametrize("conditions, contrasts, match", [
    (("a", "b", "c"), [], "name the contrasts"),
    (("a", "b", "c"), ["a-d"], "contrast 'a-d'"),
    (("a", "b", "c"), ["a-a"], "contrast 'a-a'"),
    (("a", "b"), ["a-b", "a-b"], "named twice"),
])
def test_bad_named_contrasts_are_one_line(conditions, contrasts, match) -> None:
    with pytest.raises(InputError, match=match) as ei:
        StudyConfig(bids_dir="x", conditions=conditions, contrasts=contrasts)
    assert "\n" not in str(ei.value)


def test_cli_conditions_and_contrasts() -> None:
    from voxelkit.cli import build_parser
    from voxelkit.cli.run import study_overrides

    args = build_parser().parse_args(["run", "bids", "--conditions", "anakinra", "placebo", "baseline",
                                      "--contrasts", "anakinra-placebo", "anakinra-baseline"])
    cfg = StudyConfig(bids_dir=args.bids_dir, **study_overrides(args))
    assert cfg.contrast_pairs() == [("anakinra", "placebo"), ("anakinra", "baseline")]
    assert cfg.for_contrast("anakinra", "baseline").conditions == ("anakinra", "baseline")


def test_one_vocabulary_aliases_on_the_command_line_and_in_the_study_file(tmp_path):
    """--reference (= --ref-mask / --ref), --atlas-lookup / --atlas-labels in run and stats, --quantity
    (= --contrast) and the study file's quantity key: the same settings under the names of the other layers."""
    import argparse

    from voxelkit.cli import build_parser
    from voxelkit.io import InputError
    from voxelkit.pipeline import load_study_file

    parser = build_parser()
    a = parser.parse_args(["run", "bids", "--reference", "occ.nii.gz", "--atlas-lookup", "lut.tsv",
                           "--quantity", "release"])
    b = parser.parse_args(["run", "bids", "--ref-mask", "occ.nii.gz", "--atlas-labels", "lut.tsv",
                           "--contrast", "release"])
    assert (a.ref_mask, a.atlas_labels, a.contrast) == (b.ref_mask, b.atlas_labels, b.contrast) \
        == ("occ.nii.gz", "lut.tsv", "release")
    f = parser.parse_args(["fit", "pet.nii.gz", "--reference", "occ.nii.gz", "-o", "out"])
    assert f.ref_mask == "occ.nii.gz"
    t = parser.parse_args(["fit-tacs", "tacs.tsv", "--reference", "Occ", "--model", "mrtm"])
    assert t.ref == "Occ"
    s = parser.parse_args(["stats", "paired", "--a", "a.nii", "--b", "b.nii", "--atlas", "at.nii",
                           "--atlas-labels", "lut.tsv", "-o", "o"])
    assert s.atlas_lookup == "lut.tsv"
    assert isinstance(a, argparse.Namespace)
    bids = tmp_path / "bids"
    bids.mkdir()
    study = tmp_path / "s.toml"
    study.write_text('bids_dir = "bids"\nquantity = "bp_nd"\n')
    cfg = load_study_file(study)
    assert cfg.contrast == cfg.quantity == "bp_nd"
    study.write_text('bids_dir = "bids"\nquantity = "bp_nd"\ncontrast = "bp_nd"\n')
    with pytest.raises(InputError, match="quantity or contrast"):
        load_study_file(study)
