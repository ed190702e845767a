"""Permutation batches on a Dask cluster: the same engine (:func:`voxelkit.stats.engine.run`), run per chunk of
the permutation set on the workers, over data scattered once.

The client prepares the data (:func:`voxelkit.stats.engine.prepare`: unit-norm residuals, n x V) and the
permutation set (seeded, :func:`voxelkit.stats.design.make_permutation_set`) exactly as in one process, sends
the prepared data to every worker once (``client.scatter(..., broadcast=True)``) and submits one task per chunk
of permutations.  A chunk that does not start at the identity is led by one batch of identity rows (the engine
treats row 0 as the observed statistic), so that each of its batches holds the same permutations in the same
positions as in one process; the leading rows are dropped from its nulls and their counts (an engine run over
them alone on the worker) from its exceedance counts.  The observed maps, the identity's entries of the nulls
and its counts are computed in this process.  Each task returns only its per-permutation maxima (max t, TFCE,
cluster extent and mass) and the voxelwise exceedance counts; the client concatenates the maxima in permutation
order and sums the counts, so the nulls and p-values are the single-process run's, bit for bit, when the
workers run the same NumPy and BLAS with the same thread settings.

Chunks are whole multiples of the engine's batch size; with ``n_chunks=None`` there are about two per worker
thread.  On a GPU backend the engine runs in this process (one device; nothing to distribute).

An exact sign-flip enumeration is split like any other set: a chunk is not mirrored (its rows are not the
negations of its own rows in reverse order), so each task computes every map it holds, and the assembled result
equals the single-process run (which computes half of the maps, :mod:`voxelkit.stats.engine`) bit for bit.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from ..backend import NUMPY, Backend
from . import engine as _engine
from .design import PermutationSet

log = logging.getLogger("voxelkit")

#: The null arrays of an :class:`~voxelkit.stats.engine.EngineResult` (one value per permutation).
NULL_FIELDS = ("h0_max_t", "h0_max_tfce", "h0_max_extent", "h0_max_mass")


def default_batch_size(cfg: _engine.EngineConfig) -> int:
    """The engine's CPU batch size for ``cfg`` (permutations per matrix product)."""
    return max(1, int(cfg.batch_size or (64 if cfg.tfce else 128 if cfg.cluster_t is not None else 256)))


def split_permutations(perms: PermutationSet, n_chunks: int, batch: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of up to ``n_chunks`` consecutive chunks covering all permutations, each a multiple of
    ``batch`` long (the last one may be shorter)."""
    N = perms.n_perm
    n_batches = -(-N // batch)
    per = max(1, -(-n_batches // max(1, n_chunks)))
    return [(s, min(N, s + per * batch)) for s in range(0, N, per * batch)]


def chunk_rows(perms: PermutationSet, start: int, stop: int, batch: int) -> tuple[PermutationSet, int]:
    """The permutation set of the task for rows ``start:stop`` and how many identity rows lead it.

    The engine treats row 0 as the identity, so a chunk that does not start at 0 is led by identity rows --
    ``batch`` of them, one whole batch, so that every later batch of the task holds exactly the permutations
    of one batch of the single-process run, in the same positions (BLAS may round a product's last bit
    differently with the row's position in the batch, or in a one-row batch)."""
    lead = 0 if start == 0 else batch
    rows = np.r_[np.zeros(lead, np.int64), np.arange(start, stop)]
    sub = dataclasses.replace(perms, signs=None if perms.signs is None else perms.signs[rows],
                              orders=None if perms.orders is None else perms.orders[rows])
    return sub, max(lead, 1)


def _worker_config(cfg: _engine.EngineConfig) -> _engine.EngineConfig:
    # one voxel-block thread per task unless the caller chose: the cluster's parallelism is over tasks
    return dataclasses.replace(cfg, threads=cfg.threads or 1)


def chunk_task(prep: _engine.PreparedDesign, mask_valid: np.ndarray, cfg: _engine.EngineConfig,
               perms: PermutationSet, lead: int) -> dict[str, Any]:
    """Run on a worker: the engine over one chunk of permutations led by ``lead`` identity rows (NumPy).
    Returns the null maxima and the exceedance counts of the chunk's own permutations: the leading rows are
    dropped from the maxima, and their counts -- from an engine run over the leading rows alone, the same
    computation in the same batch positions -- taken out of the counts."""
    wcfg = _worker_config(cfg)
    res = _engine.run(prep, perms, mask_valid, NUMPY, wcfg)
    head = dataclasses.replace(perms, signs=None if perms.signs is None else perms.signs[:lead],
                               orders=None if perms.orders is None else perms.orders[:lead])
    light = dataclasses.replace(wcfg, tfce=False, cluster_t=None)  # counts do not depend on TFCE or clusters
    lead_count = _engine.run(prep, head, mask_valid, NUMPY, light).count
    out: dict[str, Any] = {"count": np.asarray(res.count, np.int64) - np.asarray(lead_count, np.int64)}
    for name in NULL_FIELDS:
        arr = getattr(res, name)
        out[name] = None if arr is None else np.asarray(arr)[lead:]
    return out


def observed(prep: _engine.PreparedDesign, perms: PermutationSet, mask_valid: np.ndarray, be: Backend,
             cfg: _engine.EngineConfig) -> _engine.EngineResult:
    """The engine over the identity alone, in this process: the observed maps (t, TFCE), the identity's entries
    of the nulls and its contribution to the exceedance counts -- computed where a single-process run computes
    them, so that they are the same to the last bit (a worker's BLAS, initialised with other thread settings,
    may round the observed t differently)."""
    return _engine.run(prep, chunk_rows(perms, 0, 1, 1)[0], mask_valid, be, cfg)


def run_distributed(prep: _engine.PreparedDesign, perms: PermutationSet, mask_valid: np.ndarray, be: Backend,
                    cfg: _engine.EngineConfig, progress: Callable[[int], None] | None = None, *, scheduler: Any,
                    n_chunks: int | None = None) -> _engine.EngineResult:
    """:func:`voxelkit.stats.engine.run` with the permutation chunks as tasks of ``scheduler`` (a
    :class:`voxelkit.pipeline.scheduler.Scheduler`); same arguments, same result."""
    if be.is_gpu or not getattr(scheduler, "distributed", False):
        return _engine.run(prep, perms, mask_valid, be, cfg, progress)
    batch = default_batch_size(cfg)
    ranges = split_permutations(perms, n_chunks or 2 * scheduler.n_workers, batch)
    if len(ranges) == 1:
        return _engine.run(prep, perms, mask_valid, be, cfg, progress)
    log.info("voxelkit stats: %d permutations in %d tasks on %s", perms.n_perm, len(ranges), scheduler.name)
    prep_f = scheduler.scatter(prep)  # the (n x V) residuals, sent once to every worker
    mask_f = scheduler.scatter(mask_valid)
    wcfg = dataclasses.replace(cfg, batch_size=batch)
    futs = [scheduler.submit(chunk_task, prep_f, mask_f, wcfg, *chunk_rows(perms, a, b, batch)) for a, b in ranges]
    obs = observed(prep, perms, mask_valid, be, cfg)  # meanwhile, here
    parts: list[dict[str, Any]] = [{}] * len(ranges)
    for i, part in scheduler.as_completed(futs):
        parts[i] = part
        if progress is not None:
            progress(ranges[i][1] - ranges[i][0])
    count = np.asarray(obs.count, np.int64).copy()  # the identity's, then every chunk's own permutations'
    for part in parts:
        count += part["count"]
    nulls: dict[str, np.ndarray | None] = {}
    for name in NULL_FIELDS:
        head = getattr(obs, name)
        # row 0 from here; then every chunk's rows without its identity, in permutation order
        nulls[name] = None if head is None else np.concatenate([np.asarray(head)[:1], *(p[name] for p in parts)])
    return _engine.EngineResult(t=obs.t, count=count, tfce=obs.tfce, dtype=obs.dtype,
                                extra={**obs.extra, "batch_size": batch, "distributed_tasks": len(ranges),
                                       "maps_computed": perms.n_perm, "sign_flip_symmetry": False}, **nulls)


def batch_runner(scheduler: Any, n_chunks: int | None = None) -> Callable[..., _engine.EngineResult]:
    """A drop-in for :func:`voxelkit.stats.engine.run` that runs the permutation chunks on ``scheduler``."""

    def runner(prep: _engine.PreparedDesign, perms: PermutationSet, mask_valid: np.ndarray, be: Backend,
               cfg: _engine.EngineConfig, progress: Callable[[int], None] | None = None) -> _engine.EngineResult:
        return run_distributed(prep, perms, mask_valid, be, cfg, progress, scheduler=scheduler, n_chunks=n_chunks)

    return runner


def engine_config(run: Any) -> _engine.EngineConfig:
    """The engine settings of a validated test (:func:`voxelkit.stats.api.validate`), as
    :func:`voxelkit.stats.api.run_engine` builds them."""
    inf = run.inf
    return _engine.EngineConfig(two_sided=inf.two_sided, cluster_t=run.thr_t, tfce=inf.tfce, tfce_H=inf.tfce_H,
                                tfce_E=inf.tfce_E, connectivity=inf.connectivity, batch_size=inf.batch_size,
                                dtype=inf.dtype, variance_smoothing=inf.variance_smoothing,
                                affine=run.masker.affine)


def permutation_test(Y: np.ndarray, masker: Any, design: Any, *, scheduler: Any, device: Any = None,
                     progress: bool = False, atlas: Any = None, atlas_lookup: Any = None, inputs: Any = (),
                     extra_settings: Any = None, n_chunks: int | None = None, **inference: Any) -> Any:
    """:func:`voxelkit.stats.permutation_test` with the permutation batches as tasks of ``scheduler``
    (:func:`run_distributed`): the same checks (:func:`~voxelkit.stats.api.validate`), the same maps, p-values,
    nulls and cluster table (:func:`~voxelkit.stats.api.assemble`); the settings record also names the
    scheduler.  ``inference``: the fields of :class:`voxelkit.stats.settings.Inference`."""
    from .api import assemble, validate  # noqa: PLC0415
    from .settings import Inference  # noqa: PLC0415

    run = validate(Y, masker, design, Inference(**inference), device)
    res = run_distributed(run.prep, run.perms, run.mask3d, run.be, engine_config(run), None, scheduler=scheduler,
                          n_chunks=n_chunks)
    extra = dict(extra_settings or {})
    extra["scheduler"] = {"name": getattr(scheduler, "name", "threads"),
                          "tasks": int(res.extra.get("distributed_tasks", 1))}
    return assemble(run, res, atlas=atlas, atlas_lookup=atlas_lookup, inputs=inputs, extra_settings=extra)
