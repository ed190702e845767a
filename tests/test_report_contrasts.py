"""The report of a study with named contrasts (``voxelkit run --conditions A B C --contrasts A-B ...``): one
report.html with the design and per-scan QC once and, per contrast in the order named, its own key results, maps,
clusters, ROI tables and null distributions, from the contrast's own records (group/stats-<LABEL>/stats.json
decisions, roi/desc-<LABEL>_roi_*.tsv); the run's in-memory report equals ``voxelkit report OUT``."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pytest

from voxelkit.io import derivatives as dv
from voxelkit.report import write_report

N_SUBJECTS = 6
CONDITIONS = ("anakinra", "placebo", "baseline")
#: placebo - baseline = placebo - anakinra (ses-baseline is a copy of ses-anakinra): the same maps as the first
#: contrast with the sign of t turned, so a section showing the other contrast's record is seen
CONTRASTS = ["anakinra-placebo", "placebo-baseline"]
LABELS = ["BPNDanakinraMinusPlacebo", "BPNDplaceboMinusBaseline"]
HEADINGS = ["anakinra − placebo", "placebo − baseline"]
FWE_LABELS = {"logp_fwe_tfce": "TFCE", "logp_fwe_cluster_mass": "cluster mass",
              "logp_fwe_cluster_extent": "cluster extent", "logp_fwe_voxel": "voxel (max-T)"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    from voxelkit.pipeline import StudyConfig, run_study
    from voxelkit.simulate.study import simulate_study

    root = tmp_path_factory.mktemp("contrasts")
    bids = root / "bids"
    simulate_study(bids, preset="test", n_subjects=N_SUBJECTS, effect=0.2, noise=0.05, seed=3, challenge="none")
    for sub in sorted(p for p in bids.iterdir() if p.name.startswith("sub-")):
        src, dst = sub / "ses-anakinra", sub / "ses-baseline"
        shutil.copytree(src, dst)
        for f in sorted(dst.rglob("*ses-anakinra*")):
            f.rename(f.with_name(f.name.replace("ses-anakinra", "ses-baseline")))
    cfg = StudyConfig(bids_dir=bids, output_dir=root / "run", conditions=CONDITIONS, contrasts=CONTRASTS,
                      model="mrtm", n_perm=64, cluster_p=0.01, tfce=True, seed=1, smoothing_fwhm=4.0, report=True)
    return root / "run", run_study(cfg, progress=False)


def _section(text: str, sid: str) -> str:
    i = text.index(f'<section id="{sid}"')
    return text[i:text.index("</section>", i)]


def _counts(text: str) -> dict[str, tuple[int, int, int]]:
    """(significant, positive, negative) per method of a maps section's FWE table (the schema test's parser)."""
    from test_report_schema import _counts as counts  # noqa: PLC0415

    return counts(text)


def _decisions(out: Path, label: str) -> dict:
    return json.loads((dv.contrast_stats_dir(out, label) / dv.STATS_SETTINGS).read_text())[dv.STATS_DECISIONS_KEY]


def test_one_report_with_a_part_per_contrast_from_its_own_records(run: tuple[Path, object]) -> None:
    out, result = run
    assert result.report == dv.report_path(out) and result.report.is_file()
    assert dv.REPORT in json.loads((out / dv.MANIFEST_NAME).read_text())["written"]
    text = html.unescape(result.report.read_text(encoding="utf-8"))
    assert "could not be rendered" not in text and "not recorded" not in text
    # the design and the per-scan QC once; the parts of the contrasts in the order named
    assert text.count('<section id="design"') == 1 and text.count('<section id="qc"') == 1
    starts = [text.index(f'<section id="{label}-maps"') for label in LABELS]
    assert starts == sorted(starts) and text.index('<section id="qc"') < starts[0]
    assert f"contrast: {HEADINGS[0]}, {HEADINGS[1]} (bp_nd)" in text
    summary = _section(text, "summary")
    heads = [summary.index(f'<h3 id="{label}-summary">{h}</h3>') for label, h in zip(LABELS, HEADINGS, strict=True)]
    assert heads == sorted(heads)
    blocks = [summary[i:j] for i, j in zip(heads, [*heads[1:], len(summary)], strict=True)]
    signs = []
    for label, heading, block in zip(LABELS, HEADINGS, blocks, strict=True):
        for part in ("maps", "clusters", "roi", "nulls"):
            assert f"<h2>{heading}: " in _section(text, f"{label}-{part}"), (label, part)
        maps = _section(text, f"{label}-maps")
        rec = _decisions(out, label)
        counts = _counts(maps)
        assert set(counts) == set(FWE_LABELS.values())
        for name, method in FWE_LABELS.items():
            m = rec["maps"][name]
            assert counts[method] == (m["significant_voxels"], m["positive"], m["negative"]), (label, method)
        signs.append(counts["TFCE"][1:])
        # the contrast's own files: its statistics folder, its ROI tables (columns of its two conditions)
        assert f"{dv.GROUP_DIR}/{dv.contrast_stats_dir(out, label).name}/{dv.STATS_SETTINGS}" in text
        a, b = heading.split(" − ")
        roi = _section(text, f"{label}-roi")
        assert f"<th class=\"num\">mean_{a}</th>" in roi and f"<th class=\"num\">mean_{b}</th>" in roi
        # its key results line names its two conditions
        assert f"under {a} than under {b}" in block or f"between {a} and {b}" in block, block[:600]
    assert rec["maps"]["logp_fwe_tfce"]["significant_voxels"] > 0
    # placebo - baseline is anakinra - placebo with t turned: the same counts, the signs swapped
    assert signs[1] == signs[0][::-1] and signs[0][0] != signs[0][1]


def test_report_from_disk_equals_the_run_report_and_a_stray_stats_folder_is_not_shown(
        run: tuple[Path, object], tmp_path: Path) -> None:
    out, _ = run
    stray = "BPNDbaselineMinusPlacebo"  # a valid contrast label the study does not name
    shutil.copytree(dv.contrast_stats_dir(out, LABELS[0]), dv.contrast_stats_dir(out, stray))
    try:
        disk = write_report(out, tmp_path / "disk.html").read_text(encoding="utf-8")
    finally:
        shutil.rmtree(dv.contrast_stats_dir(out, stray))
    mem = dv.report_path(out).read_text(encoding="utf-8")
    assert stray not in disk and "baseline − placebo" not in disk
    # byte for byte, except cluster-table numbers: in memory at full precision, on disk with 6 digits
    for sid in ["summary", *(f"{label}-clusters" for label in LABELS)]:
        a, b = _section(disk, sid), _section(mem, sid)
        assert re.sub(r'(<td class="num">)[^<]*', r"\1", a) == re.sub(r'(<td class="num">)[^<]*', r"\1", b), sid
        disk, mem = disk.replace(a, ""), mem.replace(b, "")
    assert mem == disk


def test_cli_report_rebuilds_it(run: tuple[Path, object], tmp_path: Path) -> None:
    from voxelkit.cli import main

    out, _ = run
    dest = tmp_path / "cli.html"
    assert main(["report", str(out), "--html", str(dest)]) == 0
    text = dest.read_text(encoding="utf-8")
    assert all(f'<section id="{label}-maps"' in text for label in LABELS)
    assert text == write_report(out, tmp_path / "again.html").read_text(encoding="utf-8")


def test_contrast_report_renders_in_chromium(run: tuple[Path, object], tmp_path: Path) -> None:
    from test_report import _check_in_chromium, _chromium

    exe = _chromium()
    out, _ = run
    text = dv.report_path(out).read_text(encoding="utf-8")
    res = _check_in_chromium(exe, text, tmp_path)
    assert res["total"] == text.count("<img ") > 0 and res["ok"] == res["total"], res
    assert res["errors"] == [] and res["resources"] == [], res
    assert res["sections"] >= 3 + 4 * len(LABELS)


def test_in_memory_report_reads_no_statistics_or_roi_file_again(run: tuple[Path, object], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The call voxelkit run makes (the PermutationResult and RoiTables of each contrast in memory) reads none
    of the contrasts' statistics maps, null distributions or ROI tables, and gives the run's report."""
    import nibabel as nib
    import numpy as np

    from voxelkit.report import report as report_module

    out, result = run
    guarded = [str(dv.contrast_stats_dir(out, label)) for label in LABELS]
    roi = str(dv.roi_dir(out))

    def refusing(load, banned):
        def check(path, *a, **k):
            assert not any(str(path).startswith(b) for b in banned), f"read again: {path}"
            return load(path, *a, **k)
        return check

    monkeypatch.setattr(nib, "load", refusing(nib.load, guarded))
    monkeypatch.setattr(np, "load", refusing(np.load, guarded))
    monkeypatch.setattr(report_module, "read_tsv", refusing(report_module.read_tsv, [roi]))
    written = dv.read_manifest(out)["written"]
    bp_nd = [result.fits.bp_nd[k] for k in sorted(result.fits.bp_nd, key=str)]
    mem = write_report(out, tmp_path / "mem.html", study=result.config, provenance=result.provenance,
                       written=written, bp_nd=bp_nd, contrasts=result.contrasts).read_text(encoding="utf-8")
    assert mem == dv.report_path(out).read_text(encoding="utf-8")


def test_one_named_contrast_shows_what_the_two_condition_report_shows(tmp_path: Path) -> None:
    """A folder of the lp-ntPET release design as a named contrast (its statistics in group/stats-<LABEL>/, its
    ROI tables in roi/desc-<LABEL>_*) renders each part as the two-condition report does, headed by the
    contrast."""
    from test_report import make_output_dir, write_run_manifest

    out = make_output_dir(tmp_path / "derivatives" / "voxelkit", n_subjects=2, release=True)
    plain = html.unescape(write_report(out, tmp_path / "plain.html").read_text(encoding="utf-8"))
    label = dv.contrast_label("release", "anakinra", "placebo")
    dv.stats_dir(out).rename(dv.contrast_stats_dir(out, label))
    (dv.roi_dir(out) / dv.ROI_VALUES).rename(dv.contrast_roi_values_path(out, label))
    (dv.roi_dir(out) / dv.ROI_TESTS).rename(dv.contrast_roi_tests_path(out, label))
    study = json.loads((out / dv.STUDY_RECORD).read_text())
    study["contrasts"] = ["anakinra-placebo"]
    (out / dv.STUDY_RECORD).write_text(json.dumps(study))
    (out / dv.MANIFEST_NAME).unlink()
    write_run_manifest(out)
    named = html.unescape(write_report(out, tmp_path / "named.html").read_text(encoding="utf-8"))
    assert "could not be rendered" not in named and "not computed" not in _section(named, f"{label}-roi")
    for sid, title in (("maps", "Statistical maps"), ("clusters", "Clusters"), ("release", "Release (lp-ntPET)"),
                       ("roi", "Regions of interest"), ("nulls", "Null distributions")):
        a = _section(plain, sid)
        b = _section(named, f"{label}-{sid}").replace(f'id="{label}-', 'id="')
        assert b == a.replace(f"<h2>{title}</h2>", f"<h2>anakinra − placebo: {title}</h2>"), sid
