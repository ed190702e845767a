"""bench/compare_revisions.py: the revision comparison runs end to end (export, workers, table)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("compare_revisions", ROOT / "bench" / "compare_revisions.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compare_revisions_runs_both_trees(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.fail("the project must be a git checkout (CI runs on a clone)")
    mod = _load()
    out = tmp_path / "t.json"
    assert mod.main(["--base", "HEAD", "--head", "HEAD", "--rounds", "1", "--only", "mrtm2", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| mrtm2 |" in table and "head / base" in table
    times = json.loads(out.read_text())
    assert set(times["mrtm2"]) == {"base", "head"}
    assert all(len(v) == 1 and v[0] > 0 for v in times["mrtm2"].values())


def test_compare_revisions_rejects_unknown_revision(tmp_path: Path) -> None:
    mod = _load()
    with pytest.raises(subprocess.CalledProcessError):
        mod.export("no-such-revision-xyz", tmp_path / "x")
