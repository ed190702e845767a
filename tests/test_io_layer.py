"""The I/O layer (issue 11): one ``check_img``, one TSV reader, every output name from
:mod:`voxelkit.io.derivatives`, alphanumeric BIDS labels, old names through the manifest, one set of error
classes."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import voxelkit
from voxelkit.io import derivatives as dv
from voxelkit.io import tables

ROOT = Path(voxelkit.__file__).resolve().parent
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
LABEL = re.compile(r"^[A-Za-z0-9]+$")


# ----------------------------------------------------------------------------------------------- errors

def test_errors_are_the_same_classes_from_every_import_path() -> None:
    from voxelkit import backend, errors, frames, io, outputs
    from voxelkit.io import images

    assert io.InputError is errors.InputError is images.InputError is tables.InputError is dv.InputError
    assert outputs.InputError is errors.InputError
    assert frames.FrameError is errors.FrameError
    assert backend.BackendError is errors.BackendError
    assert issubclass(errors.InputError, ValueError) and issubclass(errors.FrameError, ValueError)
    assert issubclass(errors.BackendError, RuntimeError)
    # raised by one module, caught under the other's name
    with pytest.raises(io.InputError):
        images.check_input_file("/nonexistent/file.nii.gz")
    with pytest.raises(frames.FrameError):
        frames.FrameTiming.from_start_end(np.array([0.0, 60.0]), np.array([60.0, 30.0]))


def test_every_old_io_name_still_imports() -> None:
    """The names ``voxelkit/io.py`` had (before it became a package) and the ``voxelkit.outputs`` names."""
    old = ["DEFAULT_MASK_THRESHOLD", "DynamicPET", "FrameTiming", "ImageLike", "InputError",
           "MIN_REFERENCE_VOXELS", "Masker", "TACTable", "check_input_file", "check_same_space", "image_data",
           "image_name", "load_image", "load_mask", "load_pet", "mask_from_values", "read_tac_table", "read_tsv",
           "sidecar_path", "write_image", "write_json", "write_tsv", "nib"]
    io = importlib.import_module("voxelkit.io")
    assert not [n for n in old if not hasattr(io, n)]
    assert not (ROOT / "io.py").exists()
    outputs = importlib.import_module("voxelkit.outputs")
    for n in ("OutputFolder", "FolderLock", "MANIFEST_NAME", "LOCK_NAME", "check_not_input", "read_manifest"):
        assert getattr(outputs, n) is getattr(dv, n)
    layout = importlib.import_module("voxelkit.pipeline.layout")
    for n in ("map_path", "qc_path", "fit_record_path", "contrast_path", "stats_dir", "roi_dir", "report_path",
              "scan_dir", "scan_stem"):
        assert getattr(layout, n) is getattr(dv, n)


# --------------------------------------------------------------------------------------------- check_img

def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


def test_check_img_accepts_path_image_and_pair(tmp_path: Path) -> None:
    from voxelkit.io import check_img, load_image, load_mask

    data = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    img = nib.Nifti1Image(data, AFFINE)
    path = tmp_path / "m.nii.gz"
    nib.save(img, str(path))
    for arg in (path, str(path), img, (data, AFFINE)):
        out = check_img(arg, ndim=3)
        np.testing.assert_array_equal(np.asarray(out.dataobj), data)
        np.testing.assert_array_equal(out.affine, AFFINE)
    # a bool or int64 array pair becomes a NIfTI-compatible dtype
    assert check_img((data > 0.5, AFFINE)).get_data_dtype() == np.uint8
    assert np.asarray(check_img((np.arange(120).reshape(4, 5, 6), AFFINE)).dataobj).max() == 119
    # 4-D with one volume counts as 3-D; load_image and load_mask take the pair too
    assert check_img((data[..., None], AFFINE), ndim=3).shape == (4, 5, 6, 1)
    assert load_image((data, AFFINE)).shape == (4, 5, 6)
    m = load_mask((data > 0.5, AFFINE), img, "ref")
    np.testing.assert_array_equal(m, data > 0.5)


@pytest.mark.parametrize("bad, match", [
    (3, "expected an image path, a nibabel image or an \\(array, affine\\) pair, got int"),
    ([1, 2, 3], "got list"),
    ({"a": 1}, "got dict"),
    ((np.zeros((3, 3, 3)),), "got tuple"),
    ((np.zeros((3, 3, 3)), np.eye(3)), "affine .* must be a finite 4 x 4 matrix"),
    ((np.zeros((3, 3, 3)), np.full((4, 4), np.nan)), "finite 4 x 4"),
    ((np.array([["a"]], dtype=object), AFFINE), "must be numeric"),
    ("/nonexistent/x.nii.gz", "/nonexistent/x.nii.gz: no such file"),
])
def test_check_img_rejects_other_input_with_one_line(bad, match) -> None:
    from voxelkit.io import InputError, check_img

    with pytest.raises(InputError, match=match) as exc:
        check_img(bad)
    _one_line(exc)


def test_check_img_dimension_check_names_the_image() -> None:
    from voxelkit.io import InputError, check_img

    with pytest.raises(InputError, match="pet: expected a 4-D image, got shape \\(3, 3, 3\\)") as exc:
        check_img((np.zeros((3, 3, 3)), AFFINE), ndim=4, name="pet")
    _one_line(exc)
    with pytest.raises(InputError, match="expected a 3-D image, got shape \\(3, 3, 3, 2\\)"):
        check_img((np.zeros((3, 3, 3, 2)), AFFINE), ndim=3)


# -------------------------------------------------------------------------------------- the TSV reader

def test_no_csv_reader_outside_io_tables() -> None:
    """Every TSV file is read by voxelkit/io/tables.py (no second csv reader anywhere in the package)."""
    hits = []
    for p in sorted(ROOT.rglob("*.py")):
        if p == ROOT / "io" / "tables.py":
            continue
        text = p.read_text()
        for pat in ("csv.reader", "csv.DictReader", "import csv", "from csv"):
            if pat in text:
                hits.append(f"{p.relative_to(ROOT)}: {pat}")
    assert not hits, hits


def test_read_table_is_strict(tmp_path: Path) -> None:
    from voxelkit.io import InputError, read_table

    p = tmp_path / "t.tsv"
    p.write_text("a\tb\ta\n1\t2\t3\n")
    with pytest.raises(InputError, match="t.tsv: duplicate column name\\(s\\) a in the header") as e:
        read_table(p)
    _one_line(e)
    p.write_text("a\tb\n1\t2\n\n3\n")
    with pytest.raises(InputError, match="t.tsv: line 4 has 1 fields, header has 2"):
        read_table(p)
    p.write_text("a\tb\n")
    with pytest.raises(InputError, match="needs a header and at least one row"):
        read_table(p)
    assert read_table(p, min_rows=0).records() == []
    p.write_text("id\tx\n sub-01 \t 1.5\nsub-02\tn/a\nsub-01\t3\n")
    t = read_table(p)
    assert t.column("id") == ["sub-01", "sub-02", "sub-01"]  # stripped
    np.testing.assert_array_equal(t.floats("x"), [1.5, np.nan, 3.0])
    with pytest.raises(InputError, match="t.tsv: id 'sub-01' appears twice \\(lines 2 and 4\\)"):
        t.index_by("id")
    p.write_text("id\tx\nsub-01\tabc\n")
    with pytest.raises(InputError, match="t.tsv: line 2, column 'x': 'abc' is not a number"):
        read_table(p).floats("x")
    with pytest.raises(InputError, match="line 2, column 'x': 'abc' is not an integer"):
        read_table(p).ints("x")
    with pytest.raises(InputError, match="missing column 'y'; columns are id, x"):
        read_table(p, require=("y",))
    assert p.read_text() == "id\tx\nsub-01\tabc\n"  # the input is left as it was


def test_participants_and_sessions_use_the_strict_reader(tmp_path: Path) -> None:
    from voxelkit.io import InputError
    from voxelkit.pipeline.bids import read_participants, read_sessions_tsv

    (tmp_path / "participants.tsv").write_text("participant_id\tage\nsub-01\t30\nsub-02 \t 41\n")
    assert read_participants(tmp_path) == {"01": {"participant_id": "sub-01", "age": "30"},
                                           "02": {"participant_id": "sub-02", "age": "41"}}
    (tmp_path / "participants.tsv").write_text("participant_id\tage\nsub-01\t30\nsub-01\t41\n")
    with pytest.raises(InputError, match="participants.tsv: participant_id 'sub-01' appears twice"):
        read_participants(tmp_path)
    (tmp_path / "participants.tsv").write_text("participant_id\tage\tage\nsub-01\t30\t31\n")
    with pytest.raises(InputError, match="duplicate column name"):
        read_participants(tmp_path)
    (tmp_path / "participants.tsv").write_text("subject\tage\n01\t30\n")
    with pytest.raises(InputError, match="no participant_id column"):
        read_participants(tmp_path)
    d = tmp_path / "sub-01"
    d.mkdir()
    (d / "sub-01_sessions.tsv").write_text("session_id\tdrug\nses-a\tanakinra\nses-b\tplacebo\n")
    assert read_sessions_tsv(tmp_path, "01") == {"a": {"session_id": "ses-a", "drug": "anakinra"},
                                                 "b": {"session_id": "ses-b", "drug": "placebo"}}
    (d / "sub-01_sessions.tsv").write_text("session_id\tdrug\nses-a\tanakinra\nses-a\tplacebo\n")
    with pytest.raises(InputError, match="session_id 'ses-a' appears twice"):
        read_sessions_tsv(tmp_path, "01")


def test_lookup_tables(tmp_path: Path) -> None:
    from voxelkit.io import InputError, read_lookup
    from voxelkit.stats.io import read_lookup as stats_read_lookup

    assert stats_read_lookup is read_lookup
    p = tmp_path / "lut.tsv"
    p.write_text("index\tname\teffect\n1\tleft thing\t0\n2\tright thing\t1\n")
    assert read_lookup(p) == {1: "left thing", 2: "right thing"}
    p.write_text("# comment\nlabel region\n1 left thing\n2\tright\n")
    assert read_lookup(p) == {1: "left thing", 2: "right"}
    p.write_text("index\tname\n1\ta\n1\tb\n")
    with pytest.raises(InputError, match="lut.tsv: index 1 appears twice \\(lines 2 and 3\\)"):
        read_lookup(p)
    p.write_text("1 a\nfoo bar\n")
    with pytest.raises(InputError, match="lut.tsv: line 2: expected 'index name'"):
        read_lookup(p)
    p.write_text("index\tname\n1.5\ta\n")
    with pytest.raises(InputError, match="line 2, column 'index': '1.5' is not an integer"):
        read_lookup(p)


def test_report_and_demo_readers_are_the_one_reader(tmp_path: Path) -> None:
    from voxelkit.io import InputError
    from voxelkit.pipeline import demo
    from voxelkit.report import report

    p = tmp_path / "clusters.tsv"
    p.write_text("cluster_id\tsize_voxels\tpeak_t\tregion\n1\t12\t4.5\tleft\n2\t3\tn/a\t\n")
    header, rows = report.read_tsv(p)
    assert header == ["cluster_id", "size_voxels", "peak_t", "region"]
    assert rows[0] == [1, 12, 4.5, "left"] and rows[1][:2] == [2, 3] and np.isnan(rows[1][2])
    assert demo._read_tsv(p)[0] == {"cluster_id": "1", "size_voxels": "12", "peak_t": "4.5", "region": "left"}
    p.write_text("a\ta\n1\t2\n")
    for reader in (report.read_tsv, demo._read_tsv):
        with pytest.raises(InputError, match="duplicate column"):
            reader(p)
    p.write_text("")
    assert report.read_tsv(p) == ([], [])


# ------------------------------------------------------------------------------------- BIDS labels

def test_bids_labels_are_alphanumeric() -> None:
    from voxelkit.models import MODELS
    from voxelkit.pipeline.config import CONTRASTS

    for name, label in dv.PARAM_LABELS.items():
        assert LABEL.match(label), (name, label)
        assert dv.param_from_label(label) == name
    assert len(set(dv.PARAM_LABELS.values())) == len(dv.PARAM_LABELS)
    for model in MODELS:
        for p in dv.fit_map_names(dv.model_params(model)):
            assert LABEL.match(dv.bids_label(p)), (model, p)
            for key, lab in dv.entity_labels(dv.map_name("01", "anakinra", model, p, "baseline")):
                assert LABEL.match(lab), (key, lab)
    for q in CONTRASTS:
        assert LABEL.match(dv.contrast_label(q, "anakinra", "placebo"))
    assert dv.bids_label("bp_nd") == "BPND" and dv.bids_label("r1") == "R1" and dv.bids_label("t_peak") == "tPeak"
    assert dv.contrast_label("bp_nd", "anakinra", "placebo") == "BPNDanakinraMinusPlacebo"
    assert dv.map_path(Path("o"), "01", "a", "mrtm", "bp_nd").name == "sub-01_ses-a_model-mrtm_meas-BPND_mimap.nii.gz"
    with pytest.raises(dv.InputError, match="not a valid BIDS label"):
        dv.contrast_path(Path("o"), "01", "bp nd")


def test_legacy_names_round_trip() -> None:
    new = "sub-01/ses-a/pet/sub-01_ses-a_desc-baseline_model-mrtm_meas-BPND_mimap.nii.gz"
    assert dv.legacy_name(new) == "sub-01/ses-a/pet/sub-01_ses-a_desc-baseline_model-mrtm_meas-bp_nd_mimap.nii.gz"
    assert dv.legacy_name("group/sub-01_desc-BPNDanakinraMinusPlacebo_mimap.nii.gz") == \
        "group/sub-01_desc-bp_ndanakinraminusplacebo_mimap.nii.gz"
    assert dv.legacy_name("group/sub-01_desc-activationanakinraMinusPlacebo_mimap.nii.gz") == \
        "group/sub-01_desc-activationanakinraminusplacebo_mimap.nii.gz"
    assert dv.contrast_path(Path("o"), "01", "activationanakinraminusplacebo").name == \
        "sub-01_desc-activationanakinraMinusPlacebo_mimap.nii.gz"
    assert dv.legacy_name("group/stats/t.nii.gz") == "group/stats/t.nii.gz"
    assert dv.legacy_name("bp_nd.nii.gz") == "bp_nd.nii.gz"
    # the old contrast label given to contrast_path names the new file
    assert dv.contrast_path(Path("o"), "01", "bp_ndanakinraminusplacebo") == \
        dv.contrast_path(Path("o"), "01", dv.contrast_label("bp_nd", "anakinra", "placebo"))
    for model in ("mrtm", "srtm2", "lpntpet"):
        for p in dv.fit_map_names(dv.model_params(model)):
            rel = str(dv.map_path(Path("."), "01", "a", model, p))
            assert dv.legacy_name(rel) == rel.replace(f"meas-{dv.bids_label(p)}_", f"meas-{p}_")


def test_old_name_lookup_through_the_manifest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    folder = dv.OutputFolder(out, "run", resumable=True)
    new = dv.map_path(out, "01", "anakinra", "mrtm", "bp_nd")
    con = dv.contrast_path(out, "01", dv.contrast_label("bp_nd", "anakinra", "Placebo"))
    for p in (new, con):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
        folder.record(p)
    folder.write_manifest()
    doc = dv.read_manifest(out)
    rel_new, rel_con = str(new.relative_to(out)), str(con.relative_to(out))
    assert {"name": rel_con, "old_name": "group/sub-01_desc-bp_ndanakinraminusplacebo_mimap.nii.gz"} in doc["outputs"]
    assert {"name": rel_new, "old_name": rel_new.replace("meas-BPND", "meas-bp_nd")} in doc["outputs"]
    assert [e["name"] for e in doc["outputs"]] == doc["written"]
    old = rel_new.replace("meas-BPND", "meas-bp_nd")
    assert dv.resolve_output(out, old) == new
    assert dv.resolve_output(out, rel_new) == new
    # a capitalised condition label: the old name matches without regard to case
    assert dv.resolve_output(out, "group/sub-01_desc-bp_ndanakinraminusPlacebo_mimap.nii.gz") == con
    with pytest.raises(dv.InputError, match="no output group/nothing.nii.gz"):
        dv.resolve_output(out, "group/nothing.nii.gz")
    # a folder written before the renaming: asking for the new name finds the old file
    legacy = tmp_path / "legacy"
    (legacy / Path(old).parent).mkdir(parents=True)
    (legacy / old).write_bytes(b"y")
    assert dv.resolve_output(legacy, rel_new) == legacy / old
    assert dv.find_scan_maps(legacy, "bp_nd") == [legacy / old]


# ------------------------------------------------------------------------ every written name is listed

@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    from voxelkit.simulate.study import simulate_study

    root = tmp_path_factory.mktemp("iolayer") / "bids"
    simulate_study(root, preset="test", n_subjects=6, effect=0.2, noise=0.05, seed=3, challenge="none")
    return root


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_fit_writes_exactly_the_listed_names(study: Path, tmp_path: Path) -> None:
    from voxelkit.cli import main
    from voxelkit.cli.fit import _planned_outputs
    from voxelkit.pipeline.bids import find_derivative

    pet = study / "sub-01" / "ses-anakinra" / "pet" / "sub-01_ses-anakinra_pet.nii.gz"
    ref = find_derivative(study, "*desc-reference_mask.nii.gz")
    out = tmp_path / "fit"
    assert main(["fit", str(pet), "--ref-mask", str(ref), "-o", str(out), "--model", "mrtm", "--prefix", "s1_",
                 "--quiet"]) == 0
    listed = dv.model_fit_outputs("mrtm", "s1_")
    assert _files(out) == {*listed, dv.MANIFEST_NAME}
    assert [str(p) for p in _planned_outputs("mrtm", out, "s1_")] == [str(out / n) for n in listed]
    manifest = dv.read_manifest(out)
    assert sorted(manifest["written"]) == sorted(listed)
    side = json.loads((out / dv.fit_sidecar_name("s1_")).read_text())
    assert set(dv.FIT_SIDECAR_KEYS) <= set(side) <= {*dv.FIT_SIDECAR_KEYS, *dv.FIT_SIDECAR_OPTIONAL_KEYS}
    m = json.loads((out / dv.fit_map_sidecar_name("bp_nd", "s1_")).read_text())
    assert m[dv.MAP_SIDECAR_KEY] == "bp_nd" and set(m) - {dv.MAP_SIDECAR_KEY} == set(side)


def test_stats_writes_exactly_the_listed_names(tmp_path: Path) -> None:
    from voxelkit.stats import paired

    rng = np.random.default_rng(2)
    shape = (6, 6, 6)
    a = [(rng.normal(1.0, 0.3, shape).astype(np.float32), AFFINE) for _ in range(6)]  # (array, affine) pairs
    b = [(rng.normal(0.0, 0.3, shape).astype(np.float32), AFFINE) for _ in range(6)]
    res = paired(a, b, n_perm=32, cluster_t=2.0, seed=1)
    out = tmp_path / "stats"
    res.save(out)
    listed = dv.stats_outputs(res.maps, has_clusters=True)
    assert _files(out) == {*listed, dv.MANIFEST_NAME}
    assert set(listed) <= set(dv.stats_output_names())
    assert set(res.maps) <= set(dv.STATS_MAP_NAMES)
    header = (out / dv.STATS_CLUSTERS).read_text().splitlines()[0].split("\t")
    assert header == dv.STATS_CLUSTER_COLUMNS


def test_run_writes_exactly_the_listed_names(study: Path, tmp_path: Path) -> None:
    from voxelkit.pipeline import StudyConfig, run_study

    out = tmp_path / "run"
    cfg = StudyConfig(bids_dir=study, output_dir=out, model="mrtm", n_perm=32, cluster_p=0.01, tfce=False, seed=1,
                      smoothing_fwhm=4.0, report=True)
    run_study(cfg, progress=False)
    subjects = [f"0{i}" for i in range(1, 7)]
    params = dv.model_params("mrtm")
    expected = {dv.DATASET_DESCRIPTION, dv.STUDY_RECORD, dv.PROVENANCE, dv.REPORT, dv.MANIFEST_NAME,
                str(dv.roi_values_path(Path("."))), str(dv.roi_tests_path(Path(".")))}
    for sub in subjects:
        for ses in ("anakinra", "placebo"):
            expected |= set(dv.scan_outputs(sub, ses, "mrtm", params))
        expected.add(str(dv.contrast_path(Path("."), sub, dv.contrast_label("bp_nd", "anakinra", "placebo"))))
    sdir = dv.stats_dir(Path("."))
    stats_files = _files(out / sdir)
    stats_maps = [m for m in dv.STATS_MAP_NAMES if dv.stats_map_name(m) in stats_files]
    expected |= {str(sdir / n) for n in [*dv.stats_outputs(stats_maps, dv.STATS_CLUSTERS in stats_files),
                                         dv.MANIFEST_NAME]}
    got = _files(out)
    assert got == expected, (sorted(got - expected), sorted(expected - got))
    # every entity label of every file voxelkit run wrote is alphanumeric
    for rel in got:
        for part in Path(rel).parts:
            for key, lab in dv.entity_labels(part):
                assert LABEL.match(lab), (rel, key, lab)
    # the manifest lists every output with its old name, and old names find the new files
    doc = dv.read_manifest(out)
    assert sorted(e["name"] for e in doc["outputs"]) == sorted(got - {dv.MANIFEST_NAME})
    olds = {e["old_name"]: e["name"] for e in doc["outputs"] if e["old_name"] != e["name"]}
    assert "sub-01/ses-anakinra/pet/sub-01_ses-anakinra_model-mrtm_meas-bp_nd_mimap.nii.gz" in olds
    assert "group/sub-01_desc-bp_ndanakinraminusplacebo_mimap.nii.gz" in olds
    for old, new in olds.items():
        assert dv.resolve_output(out, old) == out / new
    assert dv.find_scan_maps(out, "bp_nd") == sorted(out / dv.map_path(Path("."), s, c, "mrtm", "bp_nd")
                                                      for s in subjects for c in ("anakinra", "placebo"))


def test_fit_accepts_array_affine_pairs(study: Path) -> None:
    """``voxelkit.fit((data4d, affine), reference=(mask3d, affine), frames=...)`` gives the same maps as paths."""
    from voxelkit.frames import FrameTiming
    from voxelkit.pipeline.bids import find_derivative

    pet = study / "sub-02" / "ses-placebo" / "pet" / "sub-02_ses-placebo_pet.nii.gz"
    ref = find_derivative(study, "*desc-reference_mask.nii.gz")
    img = nib.load(str(pet))
    frames = FrameTiming.from_bids_json(pet.with_name(pet.name.replace(".nii.gz", ".json")))
    refm = np.asarray(nib.load(str(ref)).dataobj) > 0
    by_path = voxelkit.fit(str(pet), reference=str(ref), model="mrtm")
    by_pair = voxelkit.fit((np.asarray(img.dataobj, np.float32), img.affine), reference=(refm, img.affine),
                           frames=frames, model="mrtm")
    assert by_pair.n == by_path.n
    np.testing.assert_array_equal(by_pair.bp_nd, by_path.bp_nd)


def test_multi_contrast_stats_write_exactly_the_listed_names(tmp_path: Path) -> None:
    from voxelkit.io import Masker
    from voxelkit.stats.contrasts import make_specs, run_contrasts
    from voxelkit.stats.design import Design

    rng = np.random.default_rng(4)
    shape = (6, 6, 6)
    n = 12
    X = np.c_[np.ones(n), rng.standard_normal(n), rng.standard_normal(n)]
    y = rng.standard_normal((n, int(np.prod(shape)))) + 0.8 * X[:, 1:2]
    names = ["intercept", "a", "b"]
    specs = make_specs(names, ["a"], [["a", "b"]])
    res = run_contrasts(y, Masker(np.ones(shape, bool), AFFINE), Design(X, [0, 1.0, 0], names=names), specs,
                        n_perm=24, seed=1, cluster_t=2.0, tfce=False, device="cpu")
    out = tmp_path / "glm"
    res.save(out)
    listed = {dv.STATS_MASK, dv.STATS_SETTINGS, dv.MANIFEST_NAME}
    for sp in specs:
        listed |= set(dv.stats_contrast_outputs(sp.label, res[sp.label].maps, True, sp.kind))
    assert _files(out) == listed
    assert dv.stats_contrast_map_name("f1", "t", "F") == "f1_f.nii.gz"
