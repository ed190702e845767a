"""``voxelkit run`` on Dask (``--scheduler dask | tcp://HOST:PORT``): the same per-scan maps and null
distributions as threads, resume, the permutation batches as tasks, and the errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

distributed = pytest.importorskip("distributed")  # in the test extra: CI has it

from voxelkit.backend import NUMPY  # noqa: E402
from voxelkit.cli import main  # noqa: E402
from voxelkit.io import InputError  # noqa: E402
from voxelkit.pipeline import StudyConfig, layout, run_study  # noqa: E402
from voxelkit.pipeline.scheduler import check_spec, make_scheduler  # noqa: E402
from voxelkit.stats import engine  # noqa: E402
from voxelkit.stats.design import Design, make_permutation_set, one_sample_design  # noqa: E402
from voxelkit.stats.distributed import chunk_rows, run_distributed, split_permutations  # noqa: E402

N_SUBJECTS = 8  # 2^8 = 256 flips > n_perm: random flips, several permutation tasks


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    from voxelkit.simulate.study import simulate_study

    root = tmp_path_factory.mktemp("dask_study") / "bids"
    simulate_study(root, preset="test", n_subjects=N_SUBJECTS, effect=0.15, noise=0.05, seed=3, challenge="none")
    return root


def _cfg(bids: Path, out: Path, **kw) -> StudyConfig:
    base = dict(bids_dir=bids, output_dir=out, model="mrtm", n_perm=200, cluster_p=0.01, tfce=True, seed=1,
                smoothing_fwhm=4.0, report=False)
    base.update(kw)
    return StudyConfig(**base)


@pytest.fixture(scope="module")
def reference(study: Path, tmp_path_factory) -> Path:
    """The study run on threads (today's behaviour): what every scheduler must reproduce."""
    out = tmp_path_factory.mktemp("threads") / "out"
    res = run_study(_cfg(study, out, jobs=2), progress=False)
    assert res.fitted == 2 * N_SUBJECTS
    return out


@pytest.fixture(scope="module")
def cluster():
    """A 2-worker LocalCluster in this process (fast to start; the tcp test below uses real processes)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        yield c


def _maps(out: Path, subjects: list[str]) -> dict[str, np.ndarray]:
    got = {}
    for sub in subjects:
        for cond in ("anakinra", "placebo"):
            for param in ("bp_nd", "r1", "status"):
                path = layout.map_path(out, sub, cond, "mrtm", param)
                got[f"{sub}/{cond}/{param}"] = np.asarray(nib.load(str(path)).dataobj)
    return got


def _assert_same_results(a: Path, b: Path) -> None:
    subjects = sorted(p.name.removeprefix("sub-") for p in a.glob("sub-*") if p.is_dir())
    assert len(subjects) == N_SUBJECTS
    ma, mb = _maps(a, subjects), _maps(b, subjects)
    for k in ma:
        np.testing.assert_array_equal(ma[k], mb[k], err_msg=k)
    na = np.load(layout.stats_dir(a) / "null_distributions.npz")
    nb = np.load(layout.stats_dir(b) / "null_distributions.npz")
    assert sorted(na.files) == sorted(nb.files)
    for k in na.files:
        np.testing.assert_array_equal(na[k], nb[k], err_msg=k)
    for name in ("t", "logp_fwe_voxel", "logp_uncorrected", "logp_fwe_tfce", "logp_fwe_cluster_mass"):
        ta = np.asarray(nib.load(str(layout.stats_dir(a) / f"{name}.nii.gz")).dataobj)
        tb = np.asarray(nib.load(str(layout.stats_dir(b) / f"{name}.nii.gz")).dataobj)
        np.testing.assert_array_equal(ta, tb, err_msg=name)


def _written(out: Path) -> set[str]:
    return set(json.loads((out / "voxelkit_manifest.json").read_text())["written"])


def test_local_cluster_same_maps_nulls_and_resume(study: Path, reference: Path, cluster, tmp_path: Path):
    out = tmp_path / "out"
    cfg = _cfg(study, out, scheduler=cluster.scheduler_address)
    res = run_study(cfg, progress=False)
    assert (res.fitted, res.reused) == (2 * N_SUBJECTS, 0)
    _assert_same_results(reference, out)
    stats = json.loads((layout.stats_dir(out) / "stats.json").read_text())
    assert stats["scheduler"]["tasks"] > 1  # the permutations really ran as several tasks
    # the files the workers wrote are in the manifest, as with threads
    assert _written(out) == _written(reference)
    prov = json.loads((out / "provenance.json").read_text())
    assert sum(i["path"].endswith("_pet.nii.gz") for i in prov["inputs"]) == 2 * N_SUBJECTS

    # resume: everything reused; an interrupted fit (no record) is redone on a worker, and only that one
    res2 = run_study(cfg, progress=False)
    assert (res2.fitted, res2.reused) == (0, 2 * N_SUBJECTS)
    sub = res.subjects[0]
    layout.fit_record_path(out, sub, "placebo", "mrtm").unlink()
    before = layout.map_path(out, sub, "anakinra", "mrtm", "bp_nd").stat().st_mtime_ns
    res3 = run_study(cfg, progress=False)
    assert (res3.fitted, res3.reused) == (1, 2 * N_SUBJECTS - 1)
    assert layout.map_path(out, sub, "anakinra", "mrtm", "bp_nd").stat().st_mtime_ns == before
    _assert_same_results(reference, out)
    # a run on threads reuses what the cluster fitted (same cache key)
    res4 = run_study(_cfg(study, out), progress=False)
    assert (res4.fitted, res4.reused) == (0, 2 * N_SUBJECTS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dask_cli() -> list[str]:
    exe = Path(sys.executable).with_name("dask")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "dask"]


def test_cli_on_scheduler_and_worker_processes(study: Path, reference: Path, tmp_path: Path):
    """``dask scheduler`` + ``dask worker`` processes on 127.0.0.1; ``voxelkit run --scheduler tcp://...``."""
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    # the workers' environment as this process's: BLAS initialised with other thread settings (OMP_NUM_THREADS=1)
    # rounds the observed statistic's last bit differently
    env = dict(os.environ)
    logs = [(tmp_path / "scheduler.log").open("w"), (tmp_path / "worker.log").open("w")]
    procs = []
    try:
        procs.append(subprocess.Popen([*_dask_cli(), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                       "--dashboard-address", ":0", "--no-show"], stdout=logs[0],
                                      stderr=subprocess.STDOUT, env=env))
        procs.append(subprocess.Popen([*_dask_cli(), "worker", addr, "--nworkers", "2", "--nthreads", "1",
                                       "--no-dashboard"], stdout=logs[1],
                                      stderr=subprocess.STDOUT, env=env, cwd=tmp_path))
        with distributed.Client(addr, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "voxelkit", "run", str(study), "-o", str(out), "--model", "mrtm",
               "--n-perm", "200", "--cluster-p", "0.01", "--seed", "1", "--smoothing-fwhm", "4", "--no-report",
               "--scheduler", addr, "--quiet"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)  # the reference's environment
        assert proc.returncode == 0, proc.stderr[-3000:]
        _assert_same_results(reference, out)
        stats = json.loads((layout.stats_dir(out) / "stats.json").read_text())
        assert stats["scheduler"] == {"name": addr, "tasks": stats["scheduler"]["tasks"]}
        assert stats["scheduler"]["tasks"] > 1
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in logs:
            f.close()


def _same_engine_result(a: engine.EngineResult, b: engine.EngineResult, float64_rtol: float = 0.0) -> None:
    for name in ("t", "count", "h0_max_t", "tfce", "h0_max_tfce", "h0_max_extent", "h0_max_mass"):
        x, y = getattr(a, name), getattr(b, name)
        if x is None:
            assert y is None, name
        elif float64_rtol and name in ("h0_max_t", "h0_max_mass"):
            np.testing.assert_allclose(x, y, rtol=float64_rtol, atol=0, err_msg=name)
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)


def test_permutation_tasks_equal_engine_on_worker_processes():
    """The batches as tasks on a local cluster of 2 worker processes (pickled data, scattered once) give the
    engine's own nulls and counts, bit for bit; sign flips with TFCE and clusters, and a permutation GLM."""
    rng = np.random.default_rng(0)
    mask = np.ones((9, 10, 7), bool)
    mask[0, 0, :] = False
    n = 12
    Y = rng.normal(0.3, 1.0, (n, int(mask.sum())))
    glm = Design(np.column_stack([np.ones(n), rng.normal(size=n)]), np.array([0.0, 1.0]), method="permute",
                 kind="glm")
    # sign flips (float32 products, as voxelkit run): bit for bit.  A float64 GLM in another process: a few
    # maxima may differ in the last bit (measured: 1 of 257 by 4e-16), counts and observed maps are the same
    cases = [(one_sample_design(n), engine.EngineConfig(two_sided=True, tfce=True, cluster_t=2.0), 0.0),
             (glm, engine.EngineConfig(cluster_t=2.5, batch_size=50), 1e-14)]
    with make_scheduler("dask", 2) as sched:
        assert sched.n_workers == 2
        for design, cfg, rtol in cases:
            prep = engine.prepare(Y, design)
            perms = make_permutation_set(design, 257, 7)  # 4 x 64 + 1: the last batch has one row
            ref = engine.run(prep, perms, mask, NUMPY, cfg)
            for n_chunks in (2, 5):
                got = run_distributed(prep, perms, mask, NUMPY, cfg, scheduler=sched, n_chunks=n_chunks)
                assert got.extra["distributed_tasks"] > 1
                _same_engine_result(ref, got, rtol)


def test_chunks_cover_every_permutation_once_in_the_same_batch_positions():
    for n_perm, batch, n_chunks in ((257, 64, 4), (500, 64, 3), (129, 64, 8), (1000, 1, 3), (66, 64, 2)):
        perms = make_permutation_set(one_sample_design(12), n_perm, 0)
        ranges = split_permutations(perms, n_chunks, batch)
        assert len(ranges) <= n_chunks
        own = []
        for a, b in ranges:
            sub, lead = chunk_rows(perms, a, b, batch)
            assert a % batch == 0 and lead == (1 if a == 0 else batch)
            assert (sub.signs[:lead] == 1).all()  # led by the identity
            own.append(sub.signs[lead:])
            # row i of the task is in the same position of its batch as in the single-process run
            assert (sub.n_perm - (b - a)) % batch == 0 or a == 0
        np.testing.assert_array_equal(np.concatenate([perms.signs[:1], *own]), perms.signs)


def test_bad_scheduler_settings_are_one_line_errors(study: Path, tmp_path: Path, capsys):
    with pytest.raises(InputError, match="--scheduler: 'spark' is not"):
        check_spec("spark")
    with pytest.raises(InputError, match="--workers 3: applies to --scheduler dask only"):
        StudyConfig(bids_dir=study, scheduler="threads", workers=3)
    with pytest.raises(InputError, match="--workers must be a whole number"):
        check_spec("dask", 0)
    port = _free_port()  # nothing listens there
    t0 = time.perf_counter()
    from voxelkit.pipeline import scheduler as sch

    old = sch.CONNECT_TIMEOUT_S
    sch.CONNECT_TIMEOUT_S = 2
    try:
        with pytest.raises(InputError, match=f"--scheduler tcp://127.0.0.1:{port}: cannot connect"):
            make_scheduler(f"tcp://127.0.0.1:{port}")
    finally:
        sch.CONNECT_TIMEOUT_S = old
    assert time.perf_counter() - t0 < 30
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["run", str(study), "-o", str(out), "--scheduler", "spark"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--scheduler" in lines[0] and "spark" in lines[0], lines
    assert not out.exists()  # nothing written
