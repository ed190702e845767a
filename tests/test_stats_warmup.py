"""TFCE kernels on a fresh install (issue 13 item 6): one compiled specialisation per kernel, ``voxelkit stats
warmup`` writes them to numba's cache where ``$NUMBA_CACHE_DIR`` says, a later run only loads them, and the
background warm-up does not change any result."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from voxelkit.stats import paired
from voxelkit.stats import tfce as T

SHAPE = (7, 8, 6)
AFF = np.diag([2.0, 2.0, 2.0, 1.0])

# run a voxelkit command in a fresh process and report numba's cache hits / misses of the TFCE kernels
PROBE = r"""
import json, sys
from voxelkit.cli import main
rc = main(sys.argv[1:])
from voxelkit.stats import tfce
st = {k.py_func.__name__: [sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values()),
                           len(k.signatures)] for k in tfce.kernels()}
print("PROBE" + json.dumps({"rc": rc, "kernels": st, "cache_dir": tfce.cache_dir()}))
"""


def _probe(args, cache):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True, timeout=600)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("PROBE")]
    assert line, out.stderr
    return json.loads(line[0][5:]), out.stdout


@pytest.fixture
def pairs(tmp_path):
    rng = np.random.default_rng(7)
    blob = np.zeros(SHAPE)
    blob[2:5, 2:6, 1:4] = 1.0
    a, b = [], []
    for i in range(8):
        for cond, files, eff in (("a", a, 0.8), ("b", b, 0.0)):
            p = tmp_path / f"{cond}{i}.nii.gz"
            x = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1.0) + eff * blob + 3
            nib.save(nib.Nifti1Image(x.astype(np.float32), AFF), str(p))
            files.append(str(p))
    return tmp_path, a, b


def test_fresh_cache_compiled_once_where_numba_cache_dir_says_then_only_loaded(pairs, tmp_path):
    _, a, b = pairs
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    # a fresh install: voxelkit stats warmup compiles every kernel the engine uses, one signature each
    st, stdout = _probe(["stats", "warmup"], cache)
    assert st["rc"] == 0 and str(cache) in stdout and st["cache_dir"].startswith(str(cache))
    k = st["kernels"]
    for name in ("_max_rows_f32", "_tfce_rows"):
        assert k[name][1] == 1 and k[name][2] == 1, (name, k[name])      # compiled (a miss), one signature
    for name in ("_max_pass", "_tfce_pass", "_radix_sort"):
        assert k[name][2] == 1, (name, k[name])                          # callees: one specialisation each
    files = sorted(p.name for p in cache.rglob("*") if p.is_file())
    for name in ("_max_rows_f32", "_tfce_rows", "_max_pass", "_tfce_pass", "_radix_sort"):
        assert any(f.startswith(f"tfce.{name}-") and f.endswith(".nbi") for f in files), (name, files)
    # a TFCE run afterwards only loads them (cache hits, no compile)
    out = tmp_path / "o"
    st2, _ = _probe(["stats", "paired", "--a", *a, "--b", *b, "--n-perm", "40", "-q", "--device", "cpu",
                     "--no-clusters", "-o", str(out)], cache)
    assert st2["rc"] == 0
    k2 = st2["kernels"]
    assert k2["_max_rows_f32"][:2] == [1, 0] and k2["_tfce_rows"][:2] == [1, 0], k2
    assert sum(v[1] for v in k2.values()) == 0, k2


def test_warm_up_does_not_change_results(pairs, tmp_path):
    _, a, b = pairs
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    # cold: the kernels compile in the background thread while the maps are read, during the run
    args = ["stats", "paired", "--a", *a, "--b", *b, "--n-perm", "60", "-q", "--device", "cpu", "--no-clusters"]
    st, _ = _probe([*args, "-o", str(tmp_path / "cold")], cache)
    assert st["rc"] == 0 and st["kernels"]["_max_rows_f32"][1] == 1            # it did compile
    # in this process (kernels compiled or loaded without the CLI's warm-up), the same test
    ref = paired(a, b, n_perm=60, device="cpu", cluster_p=None)
    for m in ("t", "tfce", "logp_fwe_tfce", "logp_uncorrected", "logp_fwe_voxel"):
        np.testing.assert_array_equal(nib.load(str(tmp_path / "cold" / f"{m}.nii.gz")).get_fdata(),
                                      ref.image(m).get_fdata(), err_msg=m)
    null = np.load(tmp_path / "cold" / "null_distributions.npz")
    np.testing.assert_array_equal(null["h0_max_tfce"], ref.null["h0_max_tfce"])
    # and the observed TFCE equals the independent exact reference (positive and negative parts)
    t3 = ref.image("t").get_fdata()
    want = T.tfce_reference(t3) - T.tfce_reference(-t3)
    np.testing.assert_allclose(ref.image("tfce").get_fdata(), want, rtol=1e-5, atol=1e-4)


def test_size_weights_equal_powers():
    w = T._size_pow(50, 0.5)
    np.testing.assert_allclose(w, np.sqrt(np.arange(51.0)), rtol=1e-15)
    assert w[0] == 0.0 and w.dtype == np.float64
