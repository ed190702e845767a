"""Where the work of ``voxelkit run`` runs: threads in this process (default) or a Dask cluster.

``--scheduler threads`` (default): per-scan fits on ``--jobs`` threads, permutations in this process (today's
behaviour).  ``--scheduler dask``: a local ``distributed.LocalCluster`` of ``--workers N`` worker processes
(default: the CPUs of this machine) started for the run and stopped after it.  ``--scheduler tcp://HOST:PORT``
(or any Dask address: ``tls://``, ``ucx://``...): an existing cluster (e.g. started by dask-jobqueue on SLURM);
its workers must see the same files at the same paths (a shared file system) and have voxelkit installed.

On Dask each per-scan fit is one task (:func:`fit_scan_task`, whose arguments are the :class:`StudyConfig` and
the :class:`Scan`): the worker reads the scan, fits it and writes its maps and fit record exactly as a thread
does, so the cache and resume work the same way, and the client records the written files in the folder's
manifest as each task finishes.  The permutation batches run as tasks over the residualised data scattered
once to every worker (:mod:`voxelkit.stats.distributed`); only the per-permutation maxima and the voxelwise
exceedance counts come back.  Results are identical to ``threads`` (same seed, same maps, same nulls).

Dask is optional: ``pip install "voxelkit[dask]"``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..io import InputError
from ..threads import n_cpus

log = logging.getLogger("voxelkit")

#: Schemes of a Dask scheduler address accepted by ``--scheduler``.
DASK_SCHEMES = ("tcp://", "tls://", "ucx://", "inproc://", "ws://", "wss://")
#: Seconds to wait for an existing cluster to answer.
CONNECT_TIMEOUT_S = 20


def check_spec(spec: str | None, workers: int | None = None) -> str:
    """The scheduler spec, checked: ``threads``, ``dask`` or a Dask address (``tcp://HOST:PORT``).  ``workers``
    applies to ``dask`` only.  Raises :class:`InputError` (one line naming the option)."""
    spec = "threads" if spec is None else str(spec).strip()
    if spec not in ("threads", "dask") and not spec.startswith(DASK_SCHEMES):
        raise InputError(f"--scheduler: {spec!r} is not 'threads', 'dask' or a Dask scheduler address "
                         "(tcp://HOST:PORT)")
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InputError(f"--workers must be a whole number >= 1, got {workers!r}")
        if spec != "dask":
            raise InputError(f"--workers {workers}: applies to --scheduler dask only (threads: use --jobs; an "
                             "existing cluster has its own workers)")
    return spec


class Scheduler:
    """Runs independent tasks: :meth:`map` (ordered results), :meth:`scatter` + :meth:`submit` for tasks over
    shared data.  The base class is the thread scheduler (``jobs`` threads; 1: in the calling thread)."""

    name = "threads"
    distributed = False

    def __init__(self, jobs: int = 1) -> None:
        self.jobs = max(1, int(jobs or 1))

    @property
    def n_workers(self) -> int:
        """Parallel slots (threads, or Dask worker threads over all workers)."""
        return self.jobs

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *args: Any,
            on_done: Callable[[int, Any], None] | None = None) -> list[Any]:
        """``[fn(item, *args) for item in items]`` in order; ``on_done(index, result)`` as each finishes (in the
        calling thread)."""
        items = list(items)
        out: list[Any] = [None] * len(items)
        if self.jobs > 1 and len(items) > 1:
            from concurrent.futures import ThreadPoolExecutor, as_completed  # noqa: PLC0415

            with ThreadPoolExecutor(max_workers=self.jobs) as pool:
                futs = {pool.submit(fn, item, *args): i for i, item in enumerate(items)}
                for f in as_completed(futs):
                    i = futs[f]
                    out[i] = f.result()
                    if on_done is not None:
                        on_done(i, out[i])
            return out
        for i, item in enumerate(items):
            out[i] = fn(item, *args)
            if on_done is not None:
                on_done(i, out[i])
        return out

    def scatter(self, obj: Any) -> Any:
        """A handle to ``obj`` for :meth:`submit` (threads: the object itself)."""
        return obj

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` (a Dask future on a cluster; here: the result)."""
        return fn(*args)

    def as_completed(self, futures: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """``(index, result)`` of :meth:`submit` results as they finish."""
        yield from enumerate(futures)

    def close(self) -> None:
        """Release the workers (threads: nothing)."""

    def describe(self) -> dict[str, Any]:
        return {"scheduler": self.name, "workers": self.n_workers}

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class DaskScheduler(Scheduler):
    """Tasks on a Dask cluster through a ``distributed.Client`` (closed, with a cluster it started, on
    :meth:`close`)."""

    distributed = True

    def __init__(self, client: Any, cluster: Any = None, name: str = "dask") -> None:
        super().__init__(1)
        self.client = client
        self.cluster = cluster
        self.name = name

    @property
    def n_workers(self) -> int:
        try:
            info = self.client.nthreads()
        except Exception:  # pragma: no cover - a closing client
            return 1
        return max(1, int(sum(info.values())))

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *args: Any,
            on_done: Callable[[int, Any], None] | None = None) -> list[Any]:
        items = list(items)
        futs = [self.client.submit(fn, item, *args, pure=False) for item in items]
        out: list[Any] = [None] * len(items)
        for i, res in self.as_completed(futs):
            out[i] = res
            if on_done is not None:
                on_done(i, res)
        return out

    def scatter(self, obj: Any) -> Any:
        """Send ``obj`` once to every worker (``broadcast=True``); returns its future."""
        return self.client.scatter(obj, broadcast=True, hash=False)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.client.submit(fn, *args, pure=False)

    def as_completed(self, futures: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        from distributed import as_completed  # noqa: PLC0415

        index = {f.key: i for i, f in enumerate(futures)}
        try:
            for fut in as_completed(list(futures)):
                yield index[fut.key], fut.result()  # a task's exception is raised here, as it was raised
        finally:
            for f in futures:
                f.cancel()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close()

    def describe(self) -> dict[str, Any]:
        return {"scheduler": self.name, "workers": self.n_workers,
                "address": getattr(getattr(self.client, "scheduler", None), "address", None)}


#: Environment variables that set how many threads BLAS starts with.
BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def worker_environ() -> dict[str, Any]:
    """The environment a local cluster's nanny gives its workers: Dask's defaults, except that the BLAS thread
    variables are this process's (Dask sets them to 1; OpenBLAS initialised single-threaded rounds some float64
    products differently in the last bit, and the results would then differ from ``threads``).  voxelkit limits
    BLAS to one thread itself where it matters (the permutation engine)."""
    import dask  # noqa: PLC0415

    env = {k: v for k, v in (dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {}).items()
           if k not in BLAS_THREAD_VARIABLES}
    env.update({k: os.environ[k] for k in BLAS_THREAD_VARIABLES if k in os.environ})
    return env


def _import_distributed(spec: str) -> Any:
    try:
        import distributed  # noqa: PLC0415
    except ImportError:
        raise InputError(f"--scheduler {spec}: Dask is not installed; install it with pip install "
                         "\"voxelkit[dask]\" (or pip install \"dask[distributed]\")") from None
    return distributed


def make_scheduler(spec: str | None = "threads", workers: int | None = None, *, jobs: int = 1,
                   processes: bool = True) -> Scheduler:
    """The scheduler for ``spec``: ``threads`` (``jobs`` threads), ``dask`` (a local cluster of ``workers``
    single-threaded worker processes, default one per CPU; ``processes=False``: worker threads in this process)
    or the address of an existing Dask scheduler.  Use it as a context manager (or call ``close()``)."""
    spec = check_spec(spec, workers)
    if spec == "threads":
        return Scheduler(jobs)
    distributed = _import_distributed(spec)
    if spec == "dask":
        n = workers or n_cpus()
        import dask  # noqa: PLC0415

        with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}):
            cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=processes,
                                               dashboard_address=None, silence_logs=logging.ERROR)
        try:
            client = distributed.Client(cluster)
        except Exception:
            cluster.close()
            raise
        log.info("dask: local cluster of %d worker%s (%s)", n, "s" * (n != 1), cluster.scheduler_address)
        return DaskScheduler(client, cluster, "dask")
    try:
        client = distributed.Client(spec, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise InputError(f"--scheduler {spec}: cannot connect to the Dask scheduler ({exc})") from None
    sched = DaskScheduler(client, None, spec)
    if not client.nthreads():
        with contextlib.suppress(Exception):
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
    if not client.nthreads():
        sched.close()
        raise InputError(f"--scheduler {spec}: the Dask scheduler has no workers")
    log.info("dask: connected to %s (%d worker threads)", spec, sched.n_workers)
    return sched


# -- the scheduler of the running study -----------------------------------------------------------------------
_CURRENT: contextvars.ContextVar[Scheduler | None] = contextvars.ContextVar("voxelkit_scheduler", default=None)


class _Lazy:
    """The study's scheduler, made on first use (a local cluster starts only once there is work for it)."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.sched: Scheduler | None = None

    def get(self) -> Scheduler:
        if self.sched is None:
            cfg = self.cfg
            self.sched = make_scheduler(getattr(cfg, "scheduler", "threads"), getattr(cfg, "workers", None),
                                        jobs=getattr(cfg, "jobs", 1))
        return self.sched


_CURRENT: contextvars.ContextVar[_Lazy | None] = contextvars.ContextVar("voxelkit_scheduler", default=None)


@contextlib.contextmanager
def study_scheduler(cfg: Any) -> Iterator[None]:
    """For the duration of a run, :func:`current_scheduler` gives the scheduler of ``cfg`` (``cfg.scheduler``,
    ``cfg.workers``, ``cfg.jobs``), made on first use; a local cluster is stopped on leaving."""
    lazy = _Lazy(cfg)
    token = _CURRENT.set(lazy)
    try:
        yield
    finally:
        _CURRENT.reset(token)
        if lazy.sched is not None:
            lazy.sched.close()


def current_scheduler() -> Scheduler | None:
    """The scheduler of the study being run (None outside :func:`study_scheduler`)."""
    lazy = _CURRENT.get()
    return None if lazy is None else lazy.get()


def study_permutation_test(default: Callable[..., Any]) -> Callable[..., Any]:
    """The permutation test for the current study: ``default`` (:func:`voxelkit.stats.permutation_test`, in this
    process) unless the study runs on Dask, then :func:`voxelkit.stats.distributed.permutation_test` on its
    scheduler (same arguments, same results)."""
    sched = current_scheduler()
    if sched is None or not sched.distributed:
        return default
    import functools  # noqa: PLC0415

    from ..stats.distributed import permutation_test  # noqa: PLC0415

    return functools.partial(permutation_test, scheduler=sched)


# -- per-scan fits as tasks --------------------------------------------------------------------------------------
class _Recorder:
    """Collects the paths a fit writes (stands for the OutputFolder on a worker; the client records them)."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def record(self, path: str | Path) -> None:
        self.paths.append(str(path))


def fit_scan_task(scan: Any, cfg: Any, first_pet: str | None = None) -> tuple[Any, list[str], dict[str, str]]:
    """One per-scan fit, run on a worker: what :func:`voxelkit.pipeline.run._fit_scan` does in a thread (read
    the scan, reuse or redo each phase's fit, write maps, QC and the fit record last).  ``first_pet``: the
    study's first PET image, whose grid the brain mask and atlas are read on (as the client's validation
    did).  Returns the scan's ``_ScanFits``, the paths written (for the client's manifest) and the input
    checksums computed (path -> sha256, for the provenance)."""
    from ..io import load_image, load_mask  # noqa: PLC0415
    from .run import _check_output_dir, _Checksums, _fit_scan, _read_atlas  # noqa: PLC0415

    out = _check_output_dir(cfg)
    first = load_image(first_pet or scan.pet)  # header only
    threshold = cfg.model_options.get("mask_threshold")
    brain = (load_mask(cfg.brain_mask, first, str(first_pet or scan.pet), "brain mask", threshold=threshold),
             first) if cfg.brain_mask is not None else None
    labels, names = _read_atlas(cfg, first)
    sums = _Checksums()
    rec = _Recorder()
    res = _fit_scan(scan, cfg, out, sums, brain, (labels, names), rec)  # type: ignore[arg-type]
    return res, rec.paths, {str(p): h for p, h in sums._cache.items()}


def _absolute(cfg: Any, todo: list[Any], first_pet: str | None) -> tuple[Any, list[Any], str | None]:
    """``cfg``, the scans and the first image with absolute paths (for workers in other directories)."""
    import copy  # noqa: PLC0415
    import dataclasses  # noqa: PLC0415

    cfg = copy.copy(cfg)  # no __post_init__ again: the settings were checked
    for name in ("bids_dir", "output_dir", "ref_mask", "brain_mask", "atlas", "atlas_labels", "input_derivatives"):
        val = getattr(cfg, name, None)
        if val is not None:
            setattr(cfg, name, Path(val).resolve())
    todo = [dataclasses.replace(s, pet=Path(s.pet).resolve(), sidecar=Path(s.sidecar).resolve()) for s in todo]
    return cfg, todo, str(Path(first_pet).resolve()) if first_pet else None


def fit_scans(sched: Scheduler, cfg: Any, todo: Iterable[Any], sums: Any, folder: Any,
              first_pet: str | None = None) -> list[Any]:
    """Every scan of ``todo`` fitted as a task of ``sched`` (:func:`fit_scan_task`), in order; the files each
    task wrote are recorded in ``folder`` and its manifest written as the task finishes; the input checksums
    join ``sums`` (provenance)."""
    todo = list(todo)
    if sched.name != "dask":  # a remote cluster: its workers do not share this process's working directory
        cfg, todo, first_pet = _absolute(cfg, todo, first_pet)

    def done(_i: int, result: tuple[Any, list[str], dict[str, str]]) -> None:
        _, paths, checksums = result
        for p in paths:
            folder.record(p)
        folder.write_manifest(complete=False)
        for p, h in checksums.items():
            sums._cache.setdefault(Path(p), h)

    results = sched.map(fit_scan_task, todo, cfg, first_pet, on_done=done)
    return [r[0] for r in results]
