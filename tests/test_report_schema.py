"""What the report reads: the decisions record of the statistics (no re-thresholding), the files the manifests
list (no globbing), names from voxelkit.io.derivatives (no spelled file names), exact keys (no key search)."""

from __future__ import annotations

import ast
import html
import json
import math
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from voxelkit.io import Masker
from voxelkit.io import derivatives as dv
from voxelkit.report import write_report
from voxelkit.stats import decisions as dec
from voxelkit.stats.inference import logp
from voxelkit.stats.result import PermutationResult

SHAPE = (10, 10, 8)
REPORT_DIR = Path(__file__).resolve().parents[1] / "voxelkit" / "report"


def _affine() -> np.ndarray:
    return np.diag([2.0, 2.0, 2.0, 1.0])


def _result(p_fwe: np.ndarray | None = None, clusters: list[dict] | None = None) -> PermutationResult:
    """A small result as voxelkit.stats.assemble makes it: float32 maps over the mask, signed -log10 p maps."""
    mask = np.zeros(SHAPE, bool)
    mask[1:9, 1:9, 1:7] = True
    masker = Masker(mask, _affine())
    v = masker.n_voxels
    rng = np.random.default_rng(1)
    t = rng.normal(0, 1, v)
    t[:6] = [5.0, -5.0, 5.0, -5.0, 5.0, -5.0]
    p = np.full(v, 0.5) if p_fwe is None else p_fwe
    sign = np.sign(t)
    maps = {"t": t.astype(np.float32), "logp_uncorrected": logp(np.full(v, 0.3), sign).astype(np.float32),
            "logp_fwe_voxel": logp(p, sign).astype(np.float32), "logp_fwe_tfce": logp(p, sign).astype(np.float32)}
    null = {"h0_max_t": np.r_[6.0, rng.gumbel(3, 0.5, 99)], "h0_max_tfce": np.r_[60.0, rng.gumbel(30, 5, 99)],
            "two_sided": np.array(True)}
    settings = {"test": "paired", "n_perm": 100, "two_sided": True, "connectivity": 6, "cluster_p": None,
                "cluster_threshold_t": None, "tfce": True}
    if clusters is not None:
        settings.update(cluster_p=0.01, cluster_threshold_t=3.0)
        null.update(h0_max_cluster_extent=np.r_[40.0, rng.gamma(2, 5, 99)],
                    h0_max_cluster_mass=np.r_[90.0, rng.gamma(2, 9, 99)])
        maps["logp_fwe_cluster_extent"] = maps["logp_fwe_voxel"].copy()
        maps["logp_fwe_cluster_mass"] = maps["logp_fwe_voxel"].copy()
    return PermutationResult(maps, masker, null, clusters or [], settings, analysed=np.ones(v, bool))


def _counts(text: str) -> dict[str, tuple[int, int, int]]:
    """(significant, positive, negative) per method of the report's FWE table."""
    out = {}
    for label, rest in re.findall(r"<tr[^>]*><td>([^<]+)</td><td>logp_[a-z_]+\.nii\.gz</td>(.*?)</tr>", text):
        cells = re.findall(r"<td[^>]*>([^<]*)</td>", rest)
        if all(c.isdigit() for c in cells[:3]):
            out[label] = (int(cells[0]), int(cells[1]), int(cells[2]))
    return out


# ------------------------------------------------------------------------------ (a) decisions, not re-thresholds

def test_p_of_exactly_alpha_is_decided_on_the_float64_p_and_the_report_shows_the_record(tmp_path: Path) -> None:
    """p = 0.05 exactly is significant (p <= alpha) and p = 0.05 (1 + 1e-9) is not, although both have the same
    float32 -log10 p in the map: only the float64 p the statistics hold can tell them apart.  The report's counts
    are the record's, read from disk or in memory."""
    a = 0.05
    p = np.array([a, a * (1 + 1e-9), 0.04, 0.2, a, 0.5])
    res = _result(p_fwe=np.r_[p, np.full(_result().masker.n_voxels - p.size, 0.9)])
    lp = res.maps["logp_fwe_voxel"]
    assert lp[0] == -lp[1]  # the same float32 magnitude: the map alone cannot separate them
    assert float(np.float32(-math.log10(a))) > -math.log10(a)  # ... and its cut rounds up: the map counts both
    full = np.r_[p, np.full(lp.size - p.size, 0.9)]
    rec = dec.record_decisions(res, p_values={"logp_fwe_voxel": full})
    truth = full <= a
    assert truth.sum() == 3  # voxels 0 (p = 0.05 exactly), 2 and 4
    voxel = rec["maps"]["logp_fwe_voxel"]
    assert voxel["significant_voxels"] == 3 and voxel["decided_on"] == dec.DECIDED_ON_P
    t = res.maps["t"]
    assert (voxel["positive"], voxel["negative"]) == (int((truth & (t > 0)).sum()), int((truth & (t < 0)).sum()))
    tfce = rec["maps"]["logp_fwe_tfce"]  # no float64 p given: decided on the map, in its precision
    assert tfce["decided_on"] == dec.DECIDED_ON_MAP and tfce["significant_voxels"] == 4

    out = tmp_path / "run"
    res.save(dv.stats_dir(out))  # keeps the record made from float64 p
    saved = json.loads((dv.stats_dir(out) / dv.STATS_SETTINGS).read_text())[dv.STATS_DECISIONS_KEY]
    assert saved["maps"]["logp_fwe_voxel"]["significant_voxels"] == 3
    assert tuple(saved) == dv.STATS_DECISIONS_KEYS
    for kwargs in ({}, {"stats": res}):
        text = html.unescape(write_report(out, tmp_path / "r.html", **kwargs).read_text(encoding="utf-8"))
        counts = _counts(text)
        for name, label in (("logp_fwe_voxel", "voxel (max-T)"), ("logp_fwe_tfce", "TFCE")):
            m = saved["maps"][name]
            assert counts[label] == (m["significant_voxels"], m["positive"], m["negative"]), (kwargs, label)
        assert counts["voxel (max-T)"][0] == 3


def test_map_rule_counts_p_of_exactly_alpha_where_a_float64_cut_would_not() -> None:
    """Without float64 p the decision is made in the map's precision: a p of exactly alpha is significant even
    where float32 rounds -log10(alpha) down (alpha = 0.025), which a float64 cut would flip."""
    for a in (0.025, 0.02, 0.05, 0.01):
        m = np.array([logp(np.array([a]))[0], -logp(np.array([a]))[0]], np.float32)
        assert dec.significant(m, a).all(), a
        assert not dec.significant(np.float32([logp(np.array([a * 1.001]))[0]]), a).any()
    m32 = np.float32(logp(np.array([0.025]))[0])
    assert float(m32) < -math.log10(0.025)  # the float32 round-off that flips a float64 comparison


def test_decisions_use_the_stats_functions_and_the_tests_connectivity() -> None:
    from voxelkit.stats.clusters import label_clusters
    from voxelkit.stats.inference import fwe_threshold

    res = _result()
    mask = res.masker.mask
    lp = np.zeros(res.masker.n_voxels)
    idx = np.flatnonzero(mask.ravel())
    # two voxels that touch by an edge only: one set at 18/26-connectivity, two at 6
    vol = np.zeros(SHAPE)
    vol[3, 3, 3] = vol[4, 4, 3] = 3.0
    lp[:] = vol.ravel()[idx]
    res.maps["logp_fwe_tfce"] = lp.astype(np.float32)
    for conn, sets in ((6, 2), (26, 1)):
        res.settings["connectivity"] = conn
        rec = dec.decisions(res)
        assert rec["connectivity"] == conn and rec["maps"]["logp_fwe_tfce"]["connected_sets"] == sets
        assert label_clusters(vol, 0.5, mask, conn)[1].size - 1 == sets
    assert rec["nulls"]["h0_max_t"]["fwe_critical_value"] == fwe_threshold(res.null["h0_max_t"], 0.05)
    assert rec["nulls"]["h0_max_t"]["observed_max"] == 6.0


def test_cluster_decisions_from_the_float64_cluster_p() -> None:
    """A cluster with p_fwe_mass = 0.05 (1 + 1e-7) is not significant although the table's 6 digits read 0.05."""
    from voxelkit.io.tables import write_tsv

    rows = [{"cluster_id": "1", "sign": "+", "size_voxels": 30, "p_fwe_extent": 0.05, "p_fwe_mass": 0.05 * (1 + 1e-7)},
            {"cluster_id": "1a", "sign": "", "size_voxels": "", "p_fwe_extent": "", "p_fwe_mass": ""},
            {"cluster_id": "2", "sign": "-", "size_voxels": 5, "p_fwe_extent": 0.3, "p_fwe_mass": 0.01}]
    rec = dec.decisions(_result(clusters=rows))["clusters"]
    assert rec["cluster_extent"] == {"significant": 1, "cluster_ids": ["1"]}
    assert rec["cluster_mass"] == {"significant": 1, "cluster_ids": ["2"]}
    assert "1\t+\t30\t0.05\t0.05\n" in write_tsv(rows, None)  # what a re-reader would have seen


# ------------------------------------------------------------------------------ (b) the manifest, not globbing

def test_cluster_table_from_the_manifest_and_a_stray_table_is_not_read(tmp_path: Path) -> None:
    rows = [{"cluster_id": "1", "sign": "+", "size_voxels": 30, "size_mm3": 240.0, "mass": 50.0, "peak_t": 5.0,
             "peak_x": 0.0, "peak_y": 0.0, "peak_z": 0.0, "p_fwe_extent": 0.01, "p_fwe_mass": 0.02,
             "region": "listedregion"}]
    res = _result(clusters=rows)
    out = tmp_path / "run"
    stats = dv.stats_dir(out)
    res.save(stats)
    assert dv.STATS_CLUSTERS in dv.read_manifest(stats)["written"]
    (stats / "foo_clusters.tsv").write_text("cluster_id\tsize_voxels\tp_fwe_mass\tregion\n99\t7\t0.001\tstrayregion\n")
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.float32) * 9, _affine()), stats / "foo_logp_fwe_tfce.nii.gz")
    np.savez(stats / "foo_null.npz", h0_max_t=np.ones(50))
    text = html.unescape(write_report(out).read_text(encoding="utf-8"))
    assert "listedregion" in text and f"<h3>{dv.STATS_CLUSTERS}</h3>" in text
    for stray in ("strayregion", "foo_clusters", "foo_logp_fwe_tfce", "foo_null"):
        assert stray not in text, stray
    assert "extent + mass" in text  # which inference, from the decisions record
    # the table is gone from the manifest (an interrupted write): not shown, although the file is there
    man = json.loads((stats / dv.MANIFEST_NAME).read_text())
    man["written"].remove(dv.STATS_CLUSTERS)
    (stats / dv.MANIFEST_NAME).write_text(json.dumps(man))
    text = html.unescape(write_report(out).read_text(encoding="utf-8"))
    assert "listedregion" not in text and "Cluster table: not computed" in text


def test_folder_of_an_older_voxelkit_is_said_not_recorded(tmp_path: Path) -> None:
    """No manifest in group/stats (and none in the run folder), or a stats.json without decisions: the report says
    so and what to rerun; it does not guess and does not fail."""
    out = tmp_path / "run"
    stats = dv.stats_dir(out)
    res = _result()
    res.save(stats)
    (stats / dv.MANIFEST_NAME).unlink()
    text = html.unescape(write_report(out).read_text(encoding="utf-8"))
    assert "could not be rendered" not in text
    assert "not recorded (written by an older voxelkit); rerun voxelkit run" in text
    assert "<img" not in text  # no map shown: which maps exist is not known
    # manifest present, stats.json written before the decisions existed
    out = tmp_path / "run2"
    stats = dv.stats_dir(out)
    _result().save(stats)
    doc = json.loads((stats / dv.STATS_SETTINGS).read_text())
    del doc[dv.STATS_DECISIONS_KEY]
    (stats / dv.STATS_SETTINGS).write_text(json.dumps(doc))
    text = html.unescape(write_report(out).read_text(encoding="utf-8"))
    assert "could not be rendered" not in text
    assert "Significance counts (stats.json key 'decisions'): not recorded (written by an older voxelkit)" in text
    assert "Critical values and observed maxima (stats.json key 'decisions'): not recorded" in text
    assert _counts(text) == {}  # no count is made up
    assert "<td>TFCE</td><td>logp_fwe_tfce.nii.gz</td><td>not recorded</td>" in text


def test_report_does_not_reread_maps_it_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the result in memory (as voxelkit run can pass it) no statistics file is read."""
    res = _result(p_fwe=np.full(_result().masker.n_voxels, 0.01))
    out = tmp_path / "run"
    res.save(dv.stats_dir(out))
    on_disk = _counts(html.unescape(write_report(out, tmp_path / "disk.html").read_text(encoding="utf-8")))

    stats = str(dv.stats_dir(out))

    def refusing(load):
        def guarded(path, *a, **k):
            assert stats not in str(path), f"read again: {path}"
            return load(path, *a, **k)
        return guarded

    monkeypatch.setattr(nib, "load", refusing(nib.load))
    monkeypatch.setattr(np, "load", refusing(np.load))
    study = {"conditions": ["drug", "placebo"], "contrast": "bp_nd", "two_sided": True}
    text = html.unescape(write_report(out, tmp_path / "mem.html", stats=res, study=study,
                                      provenance={"subjects": ["01", "02"]},
                                      bp_nd=[np.ones(SHAPE), np.ones(SHAPE) * 3]).read_text(encoding="utf-8"))
    assert _counts(text) == on_disk and on_disk["TFCE"][0] == res.masker.n_voxels
    assert "drug − placebo" in text and "could not be rendered" not in text
    assert "Slices are shown on the mean BPND of 2 scans" in text  # the maps given, not a file


# ------------------------------------------------------------------------ (c) names and keys, not spellings

def _string_literals(tree: ast.AST) -> list[tuple[int, str]]:
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


@pytest.mark.parametrize("path", sorted(REPORT_DIR.glob("*.py")) + [REPORT_DIR.parent / "cli" / "report.py"],
                         ids=lambda p: p.name)
def test_report_spells_no_output_name_and_guesses_no_key(path: Path) -> None:
    src = path.read_text(encoding="utf-8")
    for banned in ("find_key", "LOGP_TOL", "def critical_value", ".glob(", "glob.glob", "os.listdir", "os.scandir"):
        assert banned not in src, f"{path.name}: {banned}"
    assert not re.search(r"re\.(search|match|fullmatch)\([^)]*logp", src), f"{path.name}: a regex finds a map"
    bad = [(line, s) for line, s in _string_literals(ast.parse(src))
           if re.search(r"\.(nii|tsv|json|npz|html)\b", s)]
    assert not bad, f"{path.name}: file names spelled instead of taken from voxelkit.io.derivatives: {bad}"


def test_the_grep_test_catches_a_spelled_name() -> None:
    """Negative control: the literal check sees a spelled name in code, not in a docstring."""
    tree = ast.parse('"""A docstring naming stats.json."""\nx = "clusters.tsv"\ny = f"{a}.nii.gz"\n')
    found = [s for _, s in _string_literals(tree) if re.search(r"\.(nii|tsv|json|npz|html)\b", s)]
    assert found == ["clusters.tsv", ".nii.gz"]


# ------------------------------------------------------------------------------ end to end: voxelkit run

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    from voxelkit.pipeline import StudyConfig, run_study
    from voxelkit.simulate.study import simulate_study

    root = tmp_path_factory.mktemp("schema")
    simulate_study(root / "bids", preset="test", n_subjects=6, effect=0.2, noise=0.05, seed=3, challenge="none")
    cfg = StudyConfig(bids_dir=root / "bids", output_dir=root / "run", model="mrtm", n_perm=64, cluster_p=0.01,
                      tfce=True, seed=1, smoothing_fwhm=4.0, report=True)
    return root / "run", run_study(cfg, progress=False)


def test_run_report_counts_are_the_stats_decisions(run_dir: tuple[Path, object], tmp_path: Path) -> None:
    out, result = run_dir
    settings = json.loads((dv.stats_dir(out) / dv.STATS_SETTINGS).read_text())
    rec = settings[dv.STATS_DECISIONS_KEY]
    assert tuple(rec) == dv.STATS_DECISIONS_KEYS and rec["connectivity"] == settings["connectivity"]
    labels = {"logp_fwe_tfce": "TFCE", "logp_fwe_cluster_mass": "cluster mass",
              "logp_fwe_cluster_extent": "cluster extent", "logp_fwe_voxel": "voxel (max-T)"}
    for report in (out / dv.REPORT, write_report(out, tmp_path / "again.html")):  # in the run, and standalone
        text = html.unescape(report.read_text(encoding="utf-8"))
        assert "not recorded" not in text and "could not be rendered" not in text
        counts = _counts(text)
        for name, label in labels.items():
            m = rec["maps"][name]
            assert counts[label] == (m["significant_voxels"], m["positive"], m["negative"]), label
        assert rec["maps"]["logp_fwe_tfce"]["significant_voxels"] > 0
    # the records the report reads have the keys it reads them by
    prov = json.loads((out / dv.PROVENANCE).read_text())
    assert tuple(prov) == dv.PROVENANCE_KEYS
    study = json.loads((out / dv.STUDY_RECORD).read_text())
    from voxelkit.pipeline.config import StudyConfig

    assert set(study) >= {f for f in StudyConfig.__dataclass_fields__}


def test_multi_contrast_stats_json_records_decisions_per_contrast(tmp_path: Path) -> None:
    """Several contrasts (FWE across contrasts: maps replaced after the engine) get one record each, made from
    the final maps when saved."""
    from scipy import ndimage

    from voxelkit.backend import NUMPY
    from voxelkit.stats import Design
    from voxelkit.stats.contrasts import make_specs, run_contrasts

    rng = np.random.default_rng(0)
    shape = (8, 9, 7)
    n = 12
    y = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 1) for _ in range(n)]).reshape(n, -1)
    X = np.c_[np.ones(n), rng.standard_normal(n), rng.standard_normal(n), rng.standard_normal(n)]
    y = y + 0.8 * X[:, 1:2] * np.linspace(0, 1, y.shape[1])[None]
    mk = Masker(np.ones(shape, bool), np.diag([2.0, 2.0, 2.0, 1.0]))
    res = run_contrasts(y, mk, Design(X, [0, 1.0, 0, 0]), make_specs(["a", "b", "c", "d"], ["b", [0, 0, 1, -1]], []),
                        fwe_across_contrasts=True, n_perm=60, cluster_p=0.05, device=NUMPY, seed=2)
    res.save(tmp_path / "glm")
    saved = json.loads((tmp_path / "glm" / dv.STATS_SETTINGS).read_text())[dv.STATS_DECISIONS_KEY]
    assert set(saved) == set(res.results) and len(saved) == 2
    from voxelkit.stats.inference import fwe_p

    for label, r in res.results.items():
        on_maps = json.loads(json.dumps(dec.decisions(r)))
        assert set(saved[label]) == set(on_maps) and saved[label]["nulls"] == on_maps["nulls"]
        for name, m in saved[label]["maps"].items():
            assert m["significant_voxels"] == int(dec.significant(r.maps[name]).sum())
        # the replaced FWE map was decided again, on its float64 p against the null across contrasts
        fwe = saved[label]["maps"]["logp_fwe_voxel"]
        assert fwe["decided_on"] == dec.DECIDED_ON_P
        stat = np.abs(r.maps["t"].astype(np.float64)) if r.settings["two_sided"] else r.maps["t"].astype(np.float64)
        p = fwe_p(stat, r.null["h0_max_t_across_contrasts"])
        assert fwe["significant_voxels"] == int((p <= 0.05).sum())
    assert any(m["significant_voxels"] for m in saved["c1"]["maps"].values())


def test_run_report_from_memory_equals_the_report_from_disk(run_dir: tuple[Path, object], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The call voxelkit run can make (everything it holds in memory) gives the report that the folder gives, and
    reads no statistics map again."""
    out, result = run_dir
    disk = write_report(out, tmp_path / "disk.html").read_bytes()
    written = dv.read_manifest(out)["written"]
    stats = str(dv.stats_dir(out))
    load = nib.load

    def guarded(path, *a, **k):
        assert stats not in str(path), f"read again: {path}"
        return load(path, *a, **k)

    monkeypatch.setattr(nib, "load", guarded)
    mem = write_report(out, tmp_path / "mem.html", study=result.config, provenance=result.provenance,
                       stats=result.stats, written=written).read_bytes()
    # byte for byte, except cluster-table numbers: in memory at full precision, on disk with 6 digits
    # (e.g. 0.95175 -> 0.9518 shown, in memory 0.951749 -> 0.9517)
    disk_text, mem_text = disk.decode(), mem.decode()
    for sid in ("summary", "clusters"):
        a, b = _section_of(disk_text, sid), _section_of(mem_text, sid)
        assert re.sub(r'(<td class="num">)[^<]*', r"\1", a) == re.sub(r'(<td class="num">)[^<]*', r"\1", b)
        disk_text, mem_text = disk_text.replace(a, ""), mem_text.replace(b, "")
    assert mem_text == disk_text


def _section_of(text: str, sid: str) -> str:
    i = text.index(f'<section id="{sid}"')
    return text[i:text.index("</section>", i)]


def test_permutation_test_records_decisions_on_its_float64_p() -> None:
    """The engine's result carries the decisions record, made on the float64 p it computed (not on the float32
    maps); the uncorrected count equals an independent brute-force sign-flip p on a tiny problem."""
    import itertools

    from voxelkit.backend import NUMPY
    from voxelkit.stats import one_sample_design, permutation_test

    rng = np.random.default_rng(4)
    n, shape = 7, (4, 4, 3)
    y = rng.standard_normal((n, int(np.prod(shape)))) + np.linspace(0, 1.5, int(np.prod(shape)))[None]
    mk = Masker(np.ones(shape, bool), np.eye(4))
    res = permutation_test(y, mk, one_sample_design(n), n_perm=2 ** n, two_sided=True, tfce=True, cluster_p=None,
                           device=NUMPY)
    rec = res.settings[dec.DECISIONS_KEY]
    for name in ("logp_uncorrected", "logp_fdr", "logp_fwe_voxel", "logp_fwe_tfce"):
        assert rec["maps"][name]["decided_on"] == dec.DECIDED_ON_P, name

    def tstat(v: np.ndarray) -> np.ndarray:
        return v.mean(0) / (v.std(0, ddof=1) / np.sqrt(n))

    t0 = np.abs(tstat(y))
    flips = np.array(list(itertools.product([1.0, -1.0], repeat=n)))
    ge = np.zeros(y.shape[1])
    for s in flips:
        ge += np.abs(tstat(s[:, None] * y)) >= t0 * (1 - 1e-9)
    p = ge / len(flips)
    assert rec["maps"]["logp_uncorrected"]["significant_voxels"] == int((p <= 0.05).sum()) > 0
