"""``fit-tacs`` and ``fit-tacs-batch`` on REAL PETPrep TACs: OpenNeuro ds004869 ([11C]MC1, CC0), copied into
tests/data/ds004869/ (see tests/data/README.md).  MRTM is checked against an independent least-squares fit
written here; the batch table against single-file fits."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data" / "ds004869"
PETPREP = DATA / "derivatives" / "petprep"
REF = "Left-Cerebellum-Cortex"
TACS = sorted(PETPREP.glob("sub-*/ses-*/pet/*_desc-preproc_seg-gtm_tacs.tsv"))


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "voxelkit", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def _read(text_or_path) -> list[dict[str, str]]:
    text = Path(text_or_path).read_text() if isinstance(text_or_path, Path) else text_or_path
    return list(csv.DictReader(text.splitlines(), delimiter="\t"))


def _table(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    rows = _read(path)
    start = np.array([float(r["frame_start"]) for r in rows])
    end = np.array([float(r["frame_end"]) for r in rows])
    cols = {k: np.array([float(r[k]) for r in rows]) for k in rows[0] if k not in ("frame_start", "frame_end")}
    return start, end, cols


def test_the_copied_data_is_what_the_readme_says():
    assert len(TACS) == 5
    frames = set()
    for tsv in TACS:
        sub, ses = tsv.parts[-4], tsv.parts[-3]
        side = json.loads((DATA / sub / ses / "pet" / f"{sub}_{ses}_pet.json").read_text())
        start, end, cols = _table(tsv)
        np.testing.assert_allclose(start, side["FrameTimesStart"])
        np.testing.assert_allclose(end - start, side["FrameDuration"])
        assert REF in cols and 107 <= len(cols) <= 109
        frames.add(len(start))
    assert frames == {27, 33}  # two frame schedules in one dataset


def _mrtm_reference(start: np.ndarray, end: np.ndarray, ct: np.ndarray, cr: np.ndarray) -> float:
    """Ichise's MRTM by ordinary least squares; integrals by the trapezoid rule on frame mid-times from a zero at
    injection; times in minutes; BPND = -g1/g2 - 1."""
    t = np.concatenate([[0.0], (start + end) / 2 / 60.0])

    def integral(y: np.ndarray) -> np.ndarray:
        yy = np.concatenate([[0.0], y])
        return np.concatenate([[0.0], np.cumsum(np.diff(t) * (yy[1:] + yy[:-1]) / 2)])[1:]

    x = np.column_stack([integral(cr), integral(ct), cr])
    g, *_ = np.linalg.lstsq(x, ct, rcond=None)
    return -g[0] / g[1] - 1.0


@pytest.mark.parametrize("tsv", [TACS[0], TACS[-2]], ids=lambda p: p.name[:16])
def test_fit_tacs_mrtm_matches_independent_fit(tsv: Path):
    proc = _cli("fit-tacs", str(tsv), "--ref", REF, "--model", "mrtm", "--device", "cpu", "--quiet")
    assert proc.returncode == 0, proc.stderr
    rows = {r["region"]: r for r in _read(proc.stdout)}
    start, end, cols = _table(tsv)
    assert set(rows) == set(cols) - {REF}
    checked = 0
    for region, r in rows.items():
        expected = _mrtm_reference(start, end, cols[region], cols[REF])
        got = float(r["bp_nd"]) if r["bp_nd"] != "n/a" else np.nan
        if np.isfinite(got):
            assert got == pytest.approx(expected, rel=1e-4, abs=1e-5), region  # 6 digits in the TSV
            checked += 1
    assert checked >= 100
    # plausibility on real data: white matter and cortex bind more than the ventricles (CSF)
    assert float(rows["Left-Cerebral-White-Matter"]["bp_nd"]) > float(rows["Left-Lateral-Ventricle"]["bp_nd"])


def test_batch_table_equals_single_fits(tmp_path: Path):
    out = tmp_path / "all.tsv"
    proc = _cli("fit-tacs-batch", str(PETPREP), "--ref", REF, "--model", "mrtm", "-o", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    rows = _read(out)
    assert list(rows[0])[:5] == ["subject", "session", "file", "frames", "region"]
    n_expected = sum(len(_table(t)[2]) - 1 for t in TACS)
    assert len(rows) == n_expected
    assert {(r["subject"], r["session"]) for r in rows} == {("01", "baseline"), ("01", "blocked"),
                                                           ("03", "baseline"), ("11", "test"), ("27", "retest")}
    assert {r["frames"] for r in rows if r["subject"] == "11"} == {"27"}
    # varying region sets: sub-03 has no Left-vessel
    assert not any(r["region"] == "Left-vessel" for r in rows if r["subject"] == "03")
    assert any(r["region"] == "Left-vessel" for r in rows if r["subject"] == "01")
    single = _read(_cli("fit-tacs", str(TACS[0]), "--ref", REF, "--model", "mrtm", "--quiet").stdout)
    batch = [r for r in rows if r["file"] == str(TACS[0].relative_to(PETPREP))]
    assert [{k: v for k, v in r.items() if k not in ("subject", "session", "file", "frames")} for r in batch] == single

    # an existing output is kept without --overwrite; a missing reference column stops before writing
    before = out.read_text()
    again = _cli("fit-tacs-batch", str(PETPREP), "--ref", REF, "--model", "mrtm", "-o", str(out))
    assert again.returncode == 2 and "use --overwrite" in again.stderr
    bad_out = tmp_path / "bad.tsv"
    bad = _cli("fit-tacs-batch", str(PETPREP), "--ref", "Cerebellum", "--model", "mrtm", "-o", str(bad_out))
    assert bad.returncode == 2 and "no reference column 'Cerebellum'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not bad_out.exists() and out.read_text() == before


def test_batch_regions_subset_and_no_tables(tmp_path: Path):
    out = tmp_path / "sub.tsv"
    proc = _cli("fit-tacs-batch", str(PETPREP), "--ref", REF, "--model", "logan", "--tstar", "30",
                "--k2prime", "0.05", "--regions", "Left-Putamen", "Left-vessel", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = _read(out)
    assert len(rows) == 2 * 5 - 1 and "no column Left-vessel (skipped)" in proc.stderr
    empty = _cli("fit-tacs-batch", str(tmp_path), "--ref", REF, "-o", str(tmp_path / "x.tsv"))
    assert empty.returncode == 2 and "no sub-*/[ses-*/]pet/*_tacs.tsv found" in empty.stderr


def test_fit_tacs_honours_voxelkit_device():
    from voxelkit.backend import probe_gpu

    proc = _cli("fit-tacs", str(TACS[0]), "--ref", REF, "--model", "mrtm", "--quiet",
                env={"VOXELKIT_DEVICE": "gpu"})
    if probe_gpu().available:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == 2 and "device 'gpu' requested but no usable GPU" in proc.stderr
