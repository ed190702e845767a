"""TFCE kernels on a fresh install (issue 13 item 6): one compiled specialisation per kernel, ``voxelkit stats
warmup`` writes them to numba's cache where ``$NUMBA_CACHE_DIR`` says, a later run only loads them, the first
import of the engine compiles them in the background when the cache is cold (and only then), and the background
warm-up does not change any result."""

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


# import the engine in a fresh process (the Python API's path) and report what the import started
IMPORT_PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
from voxelkit.stats import engine
t_import = time.perf_counter() - t0
th = engine._warmup
info = {"started": th is not None, "daemon": bool(th is not None and th.daemon),
        "numba_imported_by_import": "numba" in sys.modules and th is None, "import_s": t_import}
if th is not None and "join" in sys.argv[1:]:
    th.join()
    info["cold_after"] = engine.tfce_cache_cold()
if "dirs" in sys.argv[1:]:
    from voxelkit.stats import tfce
    info["numba_dir"] = tfce.cache_dir()
    info["our_dir"] = engine._numba_cache_dir(tfce.__file__)
if "run" in sys.argv[1:]:
    import numpy as np
    from voxelkit.stats import paired
    a, b, out = sys.argv[2], sys.argv[3], sys.argv[4]
    r = paired(a.split(","), b.split(","), n_perm=60, device="cpu", cluster_p=None)
    np.savez(out, h0_max_tfce=r.null["h0_max_tfce"], tfce=r.maps["tfce"], t=r.maps["t"])
print("PROBE" + json.dumps(info))
"""


def _import_probe(cache, *args, **env_extra):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), **env_extra}
    for k in [k for k, v in env_extra.items() if v is None]:
        env.pop(k)
    out = subprocess.run([sys.executable, "-c", IMPORT_PROBE, *args], env=env, capture_output=True, text=True,
                         timeout=600)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("PROBE")]
    assert out.returncode == 0 and line, out.stderr
    return json.loads(line[0][5:]), out


def test_first_import_compiles_in_background_on_a_cold_cache_only(tmp_path):
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    st, out = _import_probe(cache, "join")
    assert st["started"] and st["daemon"], st            # cold: a daemon thread compiles
    assert st["cold_after"] is False, st                 # ... and fills numba's cache
    assert out.stderr == "" and out.stdout.count("\n") == 1, (out.stdout, out.stderr)   # no output
    files = sorted(p.name for p in cache.rglob("*.nbi"))
    for name in T_ENTRY:
        assert any(f.startswith(f"tfce.{name}-") for f in files), files
    # warm: nothing starts, numba is not even imported by the engine's import
    st2, _ = _import_probe(cache)
    assert not st2["started"] and not st2["numba_imported_by_import"], st2


T_ENTRY = ("_max_rows_f32", "_tfce_rows")


def test_no_background_compile_with_jit_disabled_or_opted_out(tmp_path):
    for env in ({"NUMBA_DISABLE_JIT": "1"}, {"VOXELKIT_TFCE_PRECOMPILE": "0"}):
        cache = tmp_path / f"c{len(env)}{next(iter(env))}"
        cache.mkdir()
        st, _ = _import_probe(cache, **env)
        assert not st["started"], (env, st)
        assert not any(cache.rglob("*.nbi")), env


def test_exit_during_background_compile_is_clean(tmp_path):
    """A process that imports the engine on a cold cache and ends at once neither waits for the compilation nor
    prints anything (daemon thread); a later process still finds the cache cold or complete, never broken."""
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", "import voxelkit.stats.engine"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and out.stderr == "" and out.stdout == "", out
    st, _ = _import_probe(cache, "join")   # completes the compile (or only loads what is there)
    assert st["cold_after"] is False, st


def test_cache_check_reads_numba_index_stamps(tmp_path, monkeypatch):
    """tfce_cache_cold: cold without index files, or with index files of another source (stamp); warm when every
    entry kernel's index holds the SHA-256 of tfce.py; the folder follows NUMBA_CACHE_DIR as numba's does."""
    import hashlib

    from voxelkit.stats import engine

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    folder = engine._numba_cache_dir(T.__file__)
    assert os.path.dirname(folder) == str(tmp_path)
    os.makedirs(folder)
    assert engine.tfce_cache_cold()
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}{sys.abiflags}"
    stamp = hashlib.sha256(open(T.__file__, "rb").read()).digest()
    for name in T_ENTRY:
        with open(os.path.join(folder, f"tfce.{name}-12.{tag}.nbi"), "wb") as f:
            f.write(b"header" + hashlib.sha256(b"an older tfce.py").digest())
    assert engine.tfce_cache_cold()                       # stale: another source's stamp
    with open(os.path.join(folder, f"tfce.{T_ENTRY[0]}-99.{tag}.nbi"), "wb") as f:
        f.write(b"header" + stamp)
    assert engine.tfce_cache_cold()                       # one kernel fresh, the other not
    with open(os.path.join(folder, f"tfce.{T_ENTRY[1]}-99.{tag}.nbi"), "wb") as f:
        f.write(b"header" + stamp)
    assert not engine.tfce_cache_cold()


def test_background_compile_on_import_does_not_change_results(pairs, tmp_path):
    _, a, b = pairs
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    out = tmp_path / "cold.npz"
    st, _ = _import_probe(cache, "run", ",".join(a), ",".join(b), str(out))
    assert st["started"]
    ref = paired(a, b, n_perm=60, device="cpu", cluster_p=None)
    got = np.load(out)
    np.testing.assert_array_equal(got["h0_max_tfce"], ref.null["h0_max_tfce"])
    np.testing.assert_array_equal(got["tfce"], ref.maps["tfce"])
    np.testing.assert_array_equal(got["t"], ref.maps["t"])


def test_cache_folder_is_the_one_numba_uses(tmp_path):
    """The engine's cache check looks where numba's locator writes: under NUMBA_CACHE_DIR, and without it (here
    the source tree's __pycache__ or the per-user cache)."""
    st, _ = _import_probe(tmp_path, "dirs")
    assert st["numba_dir"] == st["our_dir"] and st["our_dir"].startswith(str(tmp_path)), st
    st, _ = _import_probe(tmp_path, "dirs", NUMBA_CACHE_DIR=None)
    assert st["numba_dir"] == st["our_dir"], st


def test_cli_without_tfce_compiles_no_tfce_kernels_on_a_fresh_install(pairs, tmp_path):
    """`voxelkit stats ... --no-tfce` on a cold cache: the engine's import starts no background compile (the
    opt-out is set for that import only); with TFCE (the default) the kernels land in the cache."""
    _, a, b = pairs
    for flags, expect in ((["--no-tfce"], False), ([], True)):
        cache = tmp_path / f"cache{len(flags)}"
        cache.mkdir()
        env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
        env.pop("VOXELKIT_TFCE_PRECOMPILE", None)
        cmd = [sys.executable, "-m", "voxelkit", "stats", "paired", "--a", *a, "--b", *b, "--n-perm", "40",
               "--no-clusters", "-q", *flags, "-o", str(tmp_path / f"out{len(flags)}")]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        assert any(cache.rglob("tfce.*.nbi")) is expect, (flags, sorted(p.name for p in cache.rglob("*")))
