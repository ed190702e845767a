"""Every output name comes from :mod:`voxelkit.io.derivatives`, the result objects do no I/O (issue 11).

- a scan of ``voxelkit/`` (outside ``io/`` and ``simulate/``, which writes a simulated *input* dataset) for string
  literals that spell a file name (``x.nii.gz``, ``*.npz``, f-string parts such as ``{name}.nii.gz``);
- the models package and :mod:`voxelkit.stats.result` write nothing themselves: ``ModelFit.save`` and the stats
  results' ``save`` delegate to :mod:`voxelkit.io.writers` (imported inside the method);
- the writers write what the result objects hold, under the listed names, and nothing half-way.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_cli_fit import write_study

import voxelkit
from voxelkit.io import InputError, writers
from voxelkit.io import derivatives as dv

ROOT = Path(voxelkit.__file__).resolve().parent
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])

# ------------------------------------------------------------------------------ no spelled output names

_EXT = r"\.(?:nii\.gz|nii|tsv|json|npz|html|csv|png|svg)"
#: A plain string that is a file name or glob: a stem, then an ending (a bare ".json" is an extension test).
_PLAIN = re.compile(rf"^[\w*\-/{{}}.]*[\w*]{_EXT}$")
#: A literal part of an f-string that ends a file name (``f"{name}.nii.gz"``, ``f"{label}_clusters.tsv"``).
_PART = re.compile(rf"^[\w*\-/.]*{_EXT}$")
#: Keyword arguments whose strings are help text, not names.
_TEXT_KEYWORDS = {"help", "description", "metavar", "epilog", "usage"}
#: Folders that may spell names: the I/O layer (where the names live) and the simulator (its own input dataset).
_EXEMPT = ("io", "simulate")

#: Spellings that stay, with the reason.
ALLOWED: dict[str, set[str]] = {
    "bigfit.py": {"zarr.json"},  # the metadata file of a Zarr v3 *input* store (the format's name, not ours)
    "cli/batch.py": {"*_tacs.tsv"},  # the default input glob, shown in --help (the parser imports no io)
}


def spelled_names(source: str) -> list[tuple[int, str]]:
    """``(line, text)`` of every string literal in ``source`` that spells a file name (docstrings and help text
    left out)."""
    tree = ast.parse(source)
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                skip.add(id(first.value))
        if isinstance(node, ast.keyword) and node.arg in _TEXT_KEYWORDS:
            skip |= {id(m) for m in ast.walk(node.value)}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.JoinedStr):
            for v in node.values:
                skip.add(id(v))
                if isinstance(v, ast.Constant) and isinstance(v.value, str) and _PART.match(v.value):
                    found.append((node.lineno, v.value))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _PLAIN.match(node.value):
            found.append((node.lineno, node.value))
    return found


def test_the_scanner_finds_spelled_names() -> None:
    src = '''
"""Writes x.nii.gz (a docstring: not a name)."""
a = "mask.nii.gz"
b = f"{name}.nii.gz"
c = f"{label}_null_distributions.npz"
d = sorted(folder.glob("*cluster*.tsv"))
e = path.suffix == ".json"
f = f"{path}: not a .json file"
parser.add_argument("-o", metavar="OUT.tsv", help="writes out.tsv")
'''
    assert [t for _, t in spelled_names(src)] == ["mask.nii.gz", ".nii.gz", "_null_distributions.npz",
                                                    "*cluster*.tsv"]


def test_no_output_name_is_spelled_outside_io() -> None:
    new: list[str] = []
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT).as_posix()
        if rel.split("/")[0] in _EXEMPT:
            continue
        ok = ALLOWED.get(rel, set())
        new += [f"voxelkit/{rel}:{line}: {text!r}" for line, text in spelled_names(p.read_text()) if text not in ok]
    assert not new, "file names spelled outside voxelkit.io.derivatives (use its names):\n" + "\n".join(new)


def test_cli_fit_and_stats_take_their_names_from_derivatives() -> None:
    for rel in ("cli/fit.py", "cli/stats.py", "api.py", "models/base.py", "stats/result.py"):
        assert spelled_names((ROOT / rel).read_text()) == [], rel


# ------------------------------------------------------------------------- the result objects do no I/O

#: Calls that write a file.
_WRITE_ATTRS = {"save", "to_filename", "write_text", "write_bytes", "dump", "savez", "savez_compressed",
                "savetxt", "tofile"}
_WRITE_FUNCS = {"write_image", "write_json", "write_tsv", "write_null", "write_fit", "write_stats",
                "write_fit_maps", "write_text_atomic", "save_null"}


def _io_calls(source: str) -> list[str]:
    """Writing calls in ``source`` (``nib.save``, ``json.dump``, ``open(..., "w")``, the io writers ...), and
    module-level imports of the writers."""
    tree = ast.parse(source)
    bad: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr in _WRITE_ATTRS and not (
                    isinstance(f.value, ast.Name) and f.value.id == "self"):
                bad.append(f"line {node.lineno}: .{f.attr}(")
            elif isinstance(f, ast.Name) and f.id in _WRITE_FUNCS - {"write_fit", "write_stats"}:
                bad.append(f"line {node.lineno}: {f.id}(")
            elif isinstance(f, ast.Name) and f.id == "open":
                modes = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
                modes += [k.value.value for k in node.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)]
                if any(set(str(m)) & set("wax+") for m in modes):
                    bad.append(f"line {node.lineno}: open(..., {modes[0]!r})")
    for node in tree.body:  # module level: no writer imported (the delegates import inside the method)
        if isinstance(node, ast.ImportFrom):
            names = {a.name for a in node.names}
            if (node.module or "").endswith("writers") or names & _WRITE_FUNCS:
                bad.append(f"line {node.lineno}: imports {', '.join(sorted(names))} from {node.module}")
        if isinstance(node, ast.Import) and any(a.name.startswith("nibabel") for a in node.names):
            bad.append(f"line {node.lineno}: imports nibabel")
    return bad


def test_the_io_call_check_finds_writes() -> None:
    src = '''
import nibabel as nib
from ..io import write_json
from ..io.writers import write_fit
def f(img, p):
    nib.save(img, p)
    json.dump({}, open(p, "w"))
    Path(p).write_text("x")
    np.savez_compressed(p, a=1)
    write_image(img, p)
    open(p).read()
'''
    assert len(_io_calls(src)) == 9


def test_models_and_stats_results_write_nothing_themselves() -> None:
    files = [*sorted((ROOT / "models").glob("*.py")), ROOT / "stats" / "result.py"]
    bad = {p.relative_to(ROOT).as_posix(): c for p in files if (c := _io_calls(p.read_text()))}
    assert not bad, bad
    # the save methods delegate to the io layer (imported inside the method)
    for rel, fn in (("models/base.py", "write_fit"), ("stats/result.py", "write_stats")):
        text = (ROOT / rel).read_text()
        assert f"from ..io.writers import {fn}  # noqa: PLC0415" in text and f"return {fn}(self, outdir" in text


# ------------------------------------------------------------------------------------------ the writers

def _digest(folder: Path) -> dict[str, str]:
    out = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            b = f.read_bytes()
            if f.name == dv.MANIFEST_NAME:
                doc = json.loads(b)
                doc.pop("time")
                b = json.dumps(doc, sort_keys=True).encode()
            out[str(f.relative_to(folder))] = hashlib.sha256(b).hexdigest()
    return out


@pytest.fixture(scope="module")
def image_fit(tmp_path_factory):
    p = write_study(tmp_path_factory.mktemp("writers"))
    fit = voxelkit.fit(str(p["pet"]), reference=str(p["ref"]), model="mrtm2", mask=str(p["brain"]),
                       k2prime=str(p["hb"]), device="cpu")
    return fit, p


def test_write_fit_writes_what_the_fit_holds(image_fit, tmp_path: Path) -> None:
    fit, p = image_fit
    out = tmp_path / "w"
    written = writers.write_fit(fit, out, prefix="a_", inputs=[p["pet"]])
    names = dv.model_fit_outputs("mrtm2", "a_")
    assert [w.name for w in written] == [n for k in dv.fit_map_names(fit.params) for n in
                                         (dv.fit_map_name(k, "a_"), dv.fit_map_sidecar_name(k, "a_"))] + \
        [dv.fit_sidecar_name("a_")]
    assert set(_digest(out)) == {*names, dv.MANIFEST_NAME}
    brain = np.asarray(nib.load(p["brain"]).dataobj).astype(bool)
    meta = json.loads(json.dumps(fit.sidecar(), default=dv._json_default))
    for k in dv.fit_map_names(fit.params):
        data = np.asarray(nib.load(out / dv.fit_map_name(k, "a_")).dataobj)
        np.testing.assert_array_equal(data[brain], fit.status if k == dv.STATUS_MAP else fit.params[k])
        assert json.loads((out / dv.fit_map_sidecar_name(k, "a_")).read_text()) == {**meta, dv.MAP_SIDECAR_KEY: k}
    assert json.loads((out / dv.fit_sidecar_name("a_")).read_text()) == meta
    manifest = dv.read_manifest(out)
    assert manifest["command"] == "fit" and manifest["model"] == "mrtm2" and manifest["prefix"] == "a_"
    assert manifest["written"] == [w.name for w in written]
    # ModelFit.save is the same writer: the same bytes
    fit.save(tmp_path / "s", prefix="a_", inputs=[p["pet"]])
    assert _digest(tmp_path / "s") == _digest(out)


def test_the_fit_sidecar_keys_are_the_schema(image_fit) -> None:
    fit, _ = image_fit
    keys = list(fit.sidecar())
    assert keys[: len(dv.FIT_SIDECAR_KEYS)] == list(dv.FIT_SIDECAR_KEYS)
    assert set(keys[len(dv.FIT_SIDECAR_KEYS):]) <= set(dv.FIT_SIDECAR_OPTIONAL_KEYS)


def test_write_fit_refuses_a_fit_without_images_before_touching_the_folder(tmp_path: Path) -> None:
    from test_models_mrtm import truth_tacs

    from voxelkit.models import get_model

    ct, cr, _, _, fr = truth_tacs(n=4)
    fit = get_model("mrtm").fit(ct, cr, fr)
    with pytest.raises(ValueError, match="masker"):
        writers.write_fit(fit, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_write_fit_failing_midway_names_the_folder_and_lists_what_was_written(image_fit, tmp_path: Path,
                                                                             monkeypatch) -> None:
    fit, _ = image_fit
    real = writers.write_image
    calls = []

    def flaky(img, path, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(img, path, **kw)

    monkeypatch.setattr(writers, "write_image", flaky)
    out = tmp_path / "full"
    with pytest.raises(InputError, match=r"full: cannot write the outputs \(No space left on device\)"):
        writers.write_fit(fit, out)
    listed = dv.read_manifest(out)["written"]
    assert listed[:2] == [dv.fit_map_name("bp_nd"), dv.fit_map_sidecar_name("bp_nd")]
    assert all((out / w).exists() for w in listed[:2])  # what is listed and exists is removed by --overwrite
    monkeypatch.setattr(writers, "write_image", real)
    writers.write_fit(fit, out, overwrite=True)
    assert set(_digest(out)) == {*fit.planned_outputs(), dv.MANIFEST_NAME}


def test_write_fit_maps_writes_a_bids_layout_with_extra_sidecar_keys(image_fit, tmp_path: Path) -> None:
    """The building block for ``voxelkit run``: maps and sidecars at given paths inside a folder."""
    fit, p = image_fit
    folder = dv.OutputFolder(tmp_path / "run", "run", inputs=[p["pet"]], resumable=True)
    rel = {k: dv.map_path(Path("."), "01", "a", "mrtm2", k) for k in ("bp_nd", dv.STATUS_MAP)}
    written = writers.write_fit_maps(fit, rel, folder=folder, extra={"Sources": [str(p["pet"])]})
    assert [str(w.relative_to(folder.path)) for w in written] == folder.written == \
        [str(q) for k in rel for q in (rel[k], dv.sidecar_of(rel[k]))]
    side = json.loads((folder.path / dv.sidecar_of(rel["bp_nd"])).read_text())
    assert side["Sources"] == [str(p["pet"])] and side[dv.MAP_SIDECAR_KEY] == "bp_nd" and side["Model"] == "mrtm2"
    img = nib.load(folder.path / rel[dv.STATUS_MAP])
    assert img.get_data_dtype() == np.uint8
    sha = hashlib.sha256(Path(p["pet"]).read_bytes()).hexdigest()
    with pytest.raises(InputError, match="would overwrite the input"):
        writers.write_fit_maps(fit, {"bp_nd": p["pet"]}, folder=dv.OutputFolder(Path(p["pet"]).parent, "run",
                                                                               inputs=[p["pet"]], overwrite=True))
    assert hashlib.sha256(Path(p["pet"]).read_bytes()).hexdigest() == sha


@pytest.fixture(scope="module")
def perm_result():
    from voxelkit.stats import paired

    rng = np.random.default_rng(2)
    shape = (6, 6, 6)
    a = [(rng.normal(1.0, 0.3, shape).astype(np.float32), AFFINE) for _ in range(6)]
    b = [(rng.normal(0.0, 0.3, shape).astype(np.float32), AFFINE) for _ in range(6)]
    return paired(a, b, n_perm=32, cluster_t=2.0, seed=1, device="cpu")


def test_write_stats_writes_what_the_result_holds(perm_result, tmp_path: Path) -> None:
    res = perm_result
    res.save(tmp_path / "s")  # save may complete the in-memory record first (stats.json "decisions")
    out = tmp_path / "w"
    paths = writers.write_stats(res, out)
    assert set(_digest(out)) == {*dv.stats_outputs(res.maps, True), dv.MANIFEST_NAME}
    assert list(paths) == [*res.maps, "mask", "null", "clusters", "json"]
    for name in res.maps:
        data = np.asarray(nib.load(paths[name]).dataobj)
        np.testing.assert_array_equal(data[res.masker.mask], res.maps[name].astype(data.dtype))
    mask = np.asarray(nib.load(out / dv.STATS_MASK).dataobj)
    assert mask.dtype == np.uint8 and (mask[res.masker.mask] == res.analysed).all() and mask.sum() == res.analysed.sum()
    with np.load(out / dv.STATS_NULL) as z:
        assert set(z.files) == {k for k, v in res.null.items() if v is not None}
        for k in z.files:
            np.testing.assert_array_equal(z[k], res.null[k])
    assert json.loads((out / dv.STATS_SETTINGS).read_text()) == json.loads(json.dumps(res.settings,
                                                                                        default=dv._json_default))
    assert (out / dv.STATS_CLUSTERS).read_text().splitlines()[0].split("\t") == dv.STATS_CLUSTER_COLUMNS
    assert dv.read_manifest(out)["command"] == "stats paired"
    assert _digest(tmp_path / "s") == _digest(out)  # save is this writer


def test_write_stats_refuses_an_output_that_is_an_input_before_writing(perm_result, tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    t_input = out / dv.stats_map_name("t")
    t_input.write_bytes(b"an input map")
    folder = dv.OutputFolder(out, "stats paired", overwrite=True, inputs=[t_input])
    with pytest.raises(InputError, match="would overwrite the input"):
        writers.write_stats(perm_result, folder)
    assert sorted(q.name for q in out.iterdir()) == [dv.stats_map_name("t")]
    assert t_input.read_bytes() == b"an input map"


def test_bids_input_names_are_the_bids_spellings() -> None:
    """The input names of a BIDS dataset, given once in io.derivatives for the readers (BIDS 1.9 spellings)."""
    assert dv.BIDS_PARTICIPANTS == "participants.tsv" and dv.BIDS_DESCRIPTION == dv.DATASET_DESCRIPTION
    assert dv.bids_sessions_name("01") == "sub-01_sessions.tsv"
    here = Path("sub-01/ses-a/pet/sub-01_ses-a_pet.json")
    assert here.match(dv.BIDS_PET_SIDECAR_GLOB) and not here.with_name("x_pet.nii.gz").match(dv.BIDS_PET_SIDECAR_GLOB)
    for glob, name in ((dv.REFERENCE_MASK_GLOB, "sub-01_desc-reference_mask.nii.gz"),
                       (dv.BRAIN_MASK_GLOB, "space-MNI_desc-brain_mask.nii.gz"), (dv.ATLAS_GLOB, "atlas_dseg.nii.gz")):
        assert Path(name).match(glob)
    for name in (dv.fit_map_name("bp_nd"), dv.stats_map_name("t"), dv.stats_contrast_map_name("c1", "t")):
        assert name.endswith(dv.NIFTI_EXT) and dv.sidecar_of(name).name.endswith(dv.JSON_EXT)


@pytest.mark.parametrize("name", ["c2_t.nii.gz", "f1_f.nii.gz", "c1_logp_fwe_voxel.nii.gz"])
def test_stats_glm_refuses_an_input_named_like_a_contrast_output_before_any_work(tmp_path: Path, capsys,
                                                                                 monkeypatch, name: str) -> None:
    """Several contrasts write ``c1_...``, ``f1_...``: an input at one of those paths is refused by the CLI before
    the maps are read or permuted (exit 2, one line naming it), with or without --overwrite; nothing changes."""
    from voxelkit.cli import main
    from voxelkit.stats import api as stats_api

    rng = np.random.default_rng(0)
    out = tmp_path / "out"
    out.mkdir()
    lines = ["map\ta\tb\tc"]
    for i in range(8):
        p = (out / name) if i == 0 else tmp_path / f"m{i}.nii.gz"
        nib.save(nib.Nifti1Image(rng.standard_normal((4, 4, 3)).astype(np.float32) + 5, AFFINE), str(p))
        lines.append(f"{p}\t{rng.standard_normal():.4f}\t{rng.standard_normal():.4f}\t{rng.standard_normal():.4f}")
    design = tmp_path / "design.tsv"
    design.write_text("\n".join(lines) + "\n")
    before = {q.name: q.read_bytes() for q in out.iterdir()}

    def no_work(*a, **k):
        raise AssertionError("the permutation test ran")

    monkeypatch.setattr(stats_api, "glm", no_work)
    for extra in ([], ["--overwrite"]):
        capsys.readouterr()
        rc = main(["stats", "glm", "--design", str(design), "--contrast", "a", "--contrast", "b", "--f-contrast",
                   "b", "c", "--n-perm", "20", "--quiet", "-o", str(out), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and name in err[0] and "input" in err[0], err
        assert {q.name: q.read_bytes() for q in out.iterdir()} == before
