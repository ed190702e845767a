"""bench/gpu_check.py (the prepared GPU check) and bench/roofline.py on a machine without a GPU: options,
errors, and a dry run on the cupy stand-in that exercises every step, the comparisons and the JSON/table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_check.py"
sys.path.insert(0, str(REPO / "bench"))

import gpu_check  # noqa: E402
import roofline  # noqa: E402


@pytest.fixture
def restore_cupy(monkeypatch: pytest.MonkeyPatch):
    """gpu_check's fake backend puts the stand-in into sys.modules: undo that after the test."""
    from cuda_shim import fake_cupy

    from voxelkit import backend

    for name in fake_cupy.MODULES:
        had = name in sys.modules
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name))
        if not had:
            del sys.modules[name]
    yield
    backend.reset_probe()


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


def test_help_works():
    res = _run("--help")
    assert res.returncode == 0, res.stderr
    for opt in ("--quick", "--out", "--skip-numpy", "--dry-run", "--backend", "--budget-s"):
        assert opt in res.stdout


@pytest.mark.parametrize("bad", ["missing_dir/x.json", "is_a_dir", "budget"])
def test_bad_options_exit_2_with_one_line(tmp_path, bad):
    if bad == "is_a_dir":
        args = ["--out", str(tmp_path)]
    elif bad == "budget":
        args = ["--budget-s", "-1", "--out", str(tmp_path / "x.json")]
    else:
        args = ["--out", str(tmp_path / bad)]
    res = _run(*args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: --"), res.stderr
    assert res.stdout == ""
    assert list(tmp_path.iterdir()) == []   # nothing written


def test_no_gpu_is_a_failed_check_not_a_crash(tmp_path, monkeypatch):
    """Without a usable GPU the default (real CuPy) backend step fails cleanly: exit 1, JSON says why."""
    out = tmp_path / "r.json"

    def no_gpu(kind):
        raise RuntimeError("simulated: no usable GPU")

    monkeypatch.setattr(gpu_check, "get_gpu_backend", no_gpu)
    assert gpu_check.main(["--out", str(out)]) == 1
    rep = json.loads(out.read_text())
    assert rep["ok"] is False and "simulated: no usable GPU" in rep["steps"]["backend"]["error"]


def test_dry_run_on_the_stand_in(tmp_path):
    from cuda_shim import require_kernel_tools

    from voxelkit.models import MODELS

    require_kernel_tools(nvrtc=False, gxx=True)   # the stand-in runs kernels through g++

    out = tmp_path / "check.json"
    res = _run("--dry-run", "--out", str(out))
    assert res.returncode in (0, 1), res.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert res.returncode == (0 if rep["ok"] else 1)
    assert rep["complete"] and rep["mode"] == "dry-run" and rep["backend"] == "fake"
    assert rep["table"].strip() in res.stdout
    st = rep["steps"]
    assert set(st) == {"tests", "models", "paired", "timings", "roofline"}
    # pytest ran on the stand-in and was parsed from its junit file
    assert st["tests"]["ok"] and st["tests"]["passed"] >= 2 and st["tests"]["backend"] == "stand-in"
    # every registered model was compared; the established ones are equal on the stand-in
    assert set(st["models"]["models"]) == set(MODELS)
    for name in ("logan", "mrtm", "mrtm2", "srtm", "srtm2"):
        r = st["models"]["models"][name]
        assert r["ok"] and r["status_agreement"] == 1.0, (name, r)
        assert all(p["fraction_within"] == 1.0 for p in r["params"].values())
    assert st["paired"]["ok"] and "h0_max_tfce" in st["paired"]["null"]
    names = [r["name"] for r in st["timings"]["rows"]]
    assert names == ["srtm fit", "mrtm2 fit", "paired maxt", "paired clusters", "paired tfce"]
    for r in st["timings"]["rows"]:
        assert r["gpu_s"] > 0 and r["numpy_s"] > 0 and "scaled" in r["numpy_measured"]
    kern = {a["kernel"]: a for a in st["roofline"]["kernels"]}
    for k in ("stats_tfce_max", "stats_cluster_max_f32", "stats_cluster_max_f64", "stats_exceed_count_f32",
              "srtm_select", "mrtm_fit", "logan_fit"):
        assert kern[k]["launches"] >= 1 and kern[k]["measured_over_bound"] > 0, k
    assert "measured / bound" in rep["table"]


def test_skip_numpy_and_budget(tmp_path, restore_cupy):
    """--skip-numpy leaves out the NumPy timings; a tiny budget skips the later steps (recorded, exit 1)."""
    from cuda_shim import require_kernel_tools

    require_kernel_tools(nvrtc=False, gxx=True)
    out = tmp_path / "c.json"
    assert gpu_check.main(["--dry-run", "--skip-tests", "--skip-numpy", "--out", str(out), "--budget-s", "2.5"]) \
        in (0, 1)
    rep = json.loads(out.read_text())
    assert "tests" not in rep["steps"]
    for r in rep["steps"].get("timings", {}).get("rows", []):
        assert "numpy_s" not in r and r["gpu_s"] > 0
    out2 = tmp_path / "d.json"
    assert gpu_check.main(["--dry-run", "--skip-tests", "--out", str(out2), "--budget-s", "1e-9"]) == 1
    rep2 = json.loads(out2.read_text())
    assert all("time budget" in s["error"] for s in rep2["steps"].values())


def test_within_counts_tolerances():
    a = np.array([1.0, 2.0, np.nan, np.inf, 5.0, 1e-6])
    b = np.array([1.0 + 1e-5, 2.1, np.nan, np.inf, 5.0, 0.0])
    frac, diff, n = gpu_check.within(a, b, rtol=1e-4, atol=1e-5)
    # 1: within rtol; 2: off by 0.1; nan==nan; inf==inf; equal; 1e-6 within atol
    assert n == 6 and frac == pytest.approx(5 / 6) and diff == pytest.approx(0.1)
    assert gpu_check.within(a[:2], b[:3], 1e-4, 1e-5)[0] == 0.0   # shape mismatch never passes


def test_paired_comparison_detects_a_wrong_gpu_map(fake_gpu, monkeypatch):
    import voxelkit.stats as vs

    real = vs.permutation_test

    def perturbed(*args, **kw):
        res = real(*args, **kw)
        if kw.get("device") != "cpu":
            res.maps["t"] = res.maps["t"] * 1.01
        return res

    sizes = dict(gpu_check.SIZES["dry-run"])
    ok = gpu_check.step_paired(fake_gpu, sizes)
    assert ok["ok"] and all(v["fraction_within"] == 1.0 for v in ok["maps"].values())
    monkeypatch.setattr(vs, "permutation_test", perturbed)
    bad = gpu_check.step_paired(fake_gpu, sizes)
    assert not bad["ok"] and bad["maps"]["t"]["fraction_within"] < 0.5


def test_roofline_formulas_cover_every_kernel():
    params = roofline.kernel_params()
    assert set(params) >= {"logan_fit", "mrtm_fit", "srtm_select", "srtm2_select", "stats_exceed_count_f32",
                           "stats_tfce_max", "stats_cluster_max_f32", "stats_cluster_max_f64"}
    missing = [k for k in params if not roofline.model_for(k)[1]]
    assert not missing, f"add a cost model to bench/roofline.py MODELS for: {missing}"
    card = roofline.CARDS["H200"]
    for k in params:
        m, _ = roofline.model_for(k)
        b = roofline.bound_seconds(k, m.example, card)
        n = m.items(m.example)
        assert b["bytes"] == pytest.approx(n * m.bytes_(m.example)) and b["flops"] > 0
        peak = card.fp64 if m.precision == "fp64" else card.fp32
        assert b["bound_s"] == pytest.approx(max(b["bytes"] / card.bandwidth, b["flops"] / peak))
    assert roofline.card_for("NVIDIA H200").name.startswith("H200")
    assert roofline.card_for("Tesla V100") is roofline.CARDS["generic"]
    # the scalar arguments of a launch by parameter name (what the check feeds the formulas)
    d = roofline.dims_from_args(params["stats_tfce_max"], (None,) * 7 + (np.int32(5), np.int32(9), np.int32(26),
                                                                       np.float64(2.0), np.int32(1)))
    assert d == {"n_rows": 5, "n_vox": 9, "n_nb": 26, "H": 2, "two_sided": 1}
    table = subprocess.run([sys.executable, str(REPO / "bench" / "roofline.py"), "--card", "H100"],
                           capture_output=True, text=True, check=True).stdout
    for k in params:
        assert f"`{k}`" in table


def test_real_cupy_switch_routes_fake_gpu_to_real_cupy():
    """With VOXELKIT_TEST_REAL_CUPY=1 the ``fake_gpu`` fixture yields the real-CuPy backend: it fails here with
    the probe's reason when there is no usable GPU (and passes on a GPU machine); unset, the stand-in runs."""
    import os

    from voxelkit.backend import _probe_gpu_uncached

    has_gpu = _probe_gpu_uncached().available
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_backend.py", "-k",
           "fake_gpu_backend_roundtrip"]
    env = dict(os.environ, VOXELKIT_TEST_REAL_CUPY="1")
    real = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    if has_gpu:
        assert real.returncode == 0, real.stdout[-2000:]
    else:
        assert real.returncode != 0 and "no usable GPU" in real.stdout, real.stdout[-2000:]
    env.pop("VOXELKIT_TEST_REAL_CUPY")
    fake = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert fake.returncode == 0 and "1 passed" in fake.stdout, fake.stdout[-2000:]
