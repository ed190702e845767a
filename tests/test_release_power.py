"""bench/release_power.py: the detection rule on hand-made maps, the binomial range, and one tiny seed of each
kind end to end with a well-formed summary (recomputed identically by --summarise)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "release_power.py"


def _load():
    spec = importlib.util.spec_from_file_location("release_power", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["release_power"] = mod
    spec.loader.exec_module(mod)
    return mod


rp = _load()


def test_detection_rule_hand_made():
    # 8 voxels: labels 3 (voxels 0-2), 4 (3-5), 0 (6-7); -log10 p maps, two-sided maps are signed
    labels = np.array([3, 3, 3, 4, 4, 4, 0, 0])
    analysed = np.ones(8, bool)
    logp = np.array([0.1, 2.0, 0.5, 1.0, 1.2, 0.0, 0.0, 0.0])  # region 3: p = 0.01; region 4: best p = 0.063
    assert rp.detected(logp, labels, analysed, 3)
    assert not rp.detected(logp, labels, analysed, 4)
    assert rp.region_min_p(logp, labels, analysed, 3) == pytest.approx(0.01)
    assert rp.region_min_p(logp, labels, analysed, 4) == pytest.approx(10 ** -1.2)
    # the sign (direction of t) does not matter
    assert rp.detected(-logp, labels, analysed, 3)
    # p exactly 0.05 is not < 0.05
    edge = np.zeros(8)
    edge[4] = -math.log10(0.05)
    assert not rp.detected(edge, labels, analysed, 4)
    edge[4] = -math.log10(0.0499)
    assert rp.detected(edge, labels, analysed, 4)
    # permutation p-values stored as float32 -log10(p): 25/500 = 0.05 is not significant, 24/500 is
    for k, sig in ((25, False), (24, True), (26, False)):
        edge[4] = np.float32(-math.log10(k / 500))
        assert rp.detected(edge.astype(np.float32), labels, analysed, 4) is sig
    # a significant voxel that was not analysed does not count; an absent region is never detected
    excl = analysed.copy()
    excl[1] = False
    assert not rp.detected(logp, labels, excl, 3)
    assert not rp.detected(logp, labels, analysed, 9)
    assert rp.region_min_p(logp, labels, analysed, 9) == 1.0
    # family-wise false positive: any analysed brain voxel
    assert rp.any_significant(logp, analysed)
    assert not rp.any_significant(logp, excl & (labels != 4) & (np.arange(8) != 1))
    quiet = np.full(8, 1.0)  # p = 0.1 everywhere
    assert not rp.any_significant(quiet, analysed)
    quiet[7] = -1.5  # p = 0.03, negative t, outside every planted region
    assert rp.any_significant(quiet, analysed)


def _binom_range_bruteforce(n: int, p: float) -> tuple[float, float]:
    pmf = [math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(n + 1)]
    cdf = np.cumsum(pmf)
    lo = int(np.argmax(cdf >= 0.025))
    hi = int(np.argmax(cdf >= 0.975))
    return lo / n, hi / n


@pytest.mark.parametrize("n", [20, 100, 137])
def test_binomial_range_matches_bruteforce(n):
    assert rp.binom_range(n) == pytest.approx(_binom_range_bruteforce(n, 0.05))


def test_binomial_range_of_100_seeds():
    assert rp.binom_range(100) == pytest.approx((0.01, 0.10))  # 2.5 % and 97.5 % quantiles of Bin(100, 0.05)


def test_clopper_pearson_covers():
    lo, hi = rp.clopper_pearson(5, 100)
    assert 0.0 < lo < 0.05 < hi < 0.15
    assert rp.clopper_pearson(0, 10)[0] == 0.0
    assert rp.clopper_pearson(10, 10)[1] == 1.0


def test_job_order_interleaves_both_kinds():
    order = rp.job_order(2, 10)
    assert sorted(s for k, s in order if k == "planted") == [0, 1]
    assert sorted(s for k, s in order if k == "null") == list(range(10))
    first_half = order[: len(order) // 2]
    assert {k for k, _ in first_half} == {"planted", "null"}


def test_bad_option_is_one_line_exit_2(tmp_path):
    out = tmp_path / "o"
    for bad in (["--subjects", "3"], ["--effect", "1.5"], ["--seeds", "x"]):
        p = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *bad], capture_output=True, text=True)
        assert p.returncode == 2, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("release_power:"), p.stderr
        assert bad[0] in lines[0] or "argument" in lines[0]
    assert not out.exists()


def test_one_tiny_seed_end_to_end(tmp_path):
    out = tmp_path / "rp"
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--seeds", "1", "--null-seeds", "1", "--subjects", "6",
           "--voxel-mm", "8", "--n-perm", "64", "--smoothing-fwhm", "8"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    files = sorted((out / "seeds").glob("*.json"))
    assert [f.name for f in files] == ["null-0000.json", "planted-0000-e0.08.json"]
    assert not (out / "work").exists()  # the simulated studies are removed
    planted = json.loads(files[1].read_text())
    assert planted["kind"] == "planted" and planted["effect"] == 0.08 and planted["n_subjects"] == 6
    assert planted["activation_model"]["model"] == "mrtm2"
    assert planted["activation_model"]["windows"] == {"baseline": [0.0, 45.0], "challenge": [60.0, 90.0]}
    assert planted["release_model"]["model"] == "lpntpet2"
    for m in ("activation", "release"):
        rec = planted["methods"][m]
        assert rec["n_perm"] == 64 and rec["n_voxels_analysed"] > 0
        for inf in ("cluster_mass", "tfce"):
            d = rec["inference"][inf]
            assert set(d["region_min_p"]) == set(planted["region_voxels"])
            assert all(0 < v <= 1 for v in d["region_min_p"].values())
            assert d["brain_min_p"] <= min(d["region_min_p"].values()) + 1e-12
            assert d["any_significant"] == bool(rp.is_significant(d["brain_min_p"]))
            assert (d["n_significant_voxels"] > 0) == d["any_significant"]
    summary = json.loads((out / "summary.json").read_text())
    (g,) = summary["groups"]
    assert g["settings"]["subjects"] == 6 and g["settings"]["two_sided"] is True
    det = g["planted"]["0.08"]
    assert det["n_seeds"] == 1
    for m in ("activation", "release"):
        for inf in ("cluster_mass", "tfce"):
            vals = det["detection"][m][inf]
            assert set(vals) == set(planted["region_voxels"])
            for reg, v in vals.items():  # one seed: the fraction is exactly the rule applied to that seed
                assert v == float(rp.is_significant(planted["methods"][m]["inference"][inf]["region_min_p"][reg]))
    null = g["null"]
    assert null["n_seeds"] == 1
    assert null["binomial_95_range_of_5pct"] == pytest.approx(list(rp.binom_range(1)))
    nrec = json.loads(files[0].read_text())
    for m in ("activation", "release"):
        for inf in ("cluster_mass", "tfce"):
            assert null["fwe"][m][inf]["k"] == int(nrec["methods"][m]["inference"][inf]["any_significant"])
    md = (out / "summary.md").read_text()
    assert "| lp-ntPET release | tfce |" in md and "binomial 95 % range" in md
    # --summarise recomputes the same summary from the finished seeds; a rerun skips finished seeds
    before = (out / "summary.json").read_text()
    (out / "summary.json").unlink()
    p = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--summarise"], capture_output=True,
                       text=True)
    assert p.returncode == 0 and (out / "summary.json").read_text() == before
    mtimes = [f.stat().st_mtime_ns for f in files]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0
    assert [f.stat().st_mtime_ns for f in files] == mtimes
