"""Significance decisions of a permutation test, made once, in memory, from the result's own statistics.

:func:`decisions` turns a :class:`~voxelkit.stats.result.PermutationResult` into a JSON-able record -- per
-log10 p map the number of significant voxels (p <= alpha; positive and negative sides by the sign of the
statistic), the significant clusters of the cluster table by extent and by mass, the FWE critical value and the
observed maximum of every null distribution, and the connectivity and cluster-forming threshold that were used.
:func:`record_decisions` stores it in the result's settings (``stats.json`` key :data:`DECISIONS_KEY`), before
anything is written, so that a reader (the report, user code) never re-thresholds values read back from disk:
maps are float32 and the cluster table has 6 significant digits, so a p of exactly alpha (or one just above it)
can read back on the wrong side.

Where the p-values are given in float64 (``p_values``, as the engine computed them) the decision is
``p <= alpha`` on them.  Otherwise it is made on the in-memory -log10 p map in the map's own precision:
``|map| >= -log10(alpha)`` rounded to the map's dtype, which counts every p <= alpha (round-to-nearest is
monotone, so p = alpha gives exactly the rounded cut) and can only also count a p within half a float32 step
above alpha (relative 1.4e-7: never a permutation p = k/N for N below 10^8).  The record says which
(``decided_on``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..io.derivatives import STATS_DECISIONS_KEY, STATS_DECISIONS_KEYS
from .clusters import label_clusters
from .inference import fwe_p, logp

#: The settings key (``stats.json``) of the record, and the record's keys (voxelkit.io.derivatives).
DECISIONS_KEY = STATS_DECISIONS_KEY
RECORD_KEYS = STATS_DECISIONS_KEYS
#: The significance level of the record unless one is given.
ALPHA = 0.05
#: -log10 p maps a permutation test writes, and the inference each belongs to.
P_MAPS = {"logp_uncorrected": "uncorrected", "logp_fdr": "fdr", "logp_fwe_voxel": "voxel",
          "logp_fwe_cluster_extent": "cluster_extent", "logp_fwe_cluster_mass": "cluster_mass",
          "logp_fwe_tfce": "tfce"}
#: Null distributions (``PermutationResult.null`` keys) and the name :meth:`PermutationResult.fwe_threshold` takes.
NULLS = {"h0_max_t": "t", "h0_max_tfce": "tfce", "h0_max_cluster_extent": "cluster_extent",
         "h0_max_cluster_mass": "cluster_mass"}
#: Cluster-table p columns by cluster inference.
CLUSTER_P = {"cluster_extent": "p_fwe_extent", "cluster_mass": "p_fwe_mass"}
#: What ``decided_on`` says.
DECIDED_ON_P = "p (float64, as computed)"
DECIDED_ON_MAP = "-log10 p map in memory (its dtype): |map| >= -log10(alpha) rounded to that dtype"


def significant(logp_map: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Voxels of a (signed) -log10 p map with p <= ``alpha``, decided in the map's own precision (see the module
    docstring); non-finite values are not significant."""
    m = np.asarray(logp_map)
    dtype = m.dtype if np.issubdtype(m.dtype, np.floating) else np.dtype(np.float64)
    cut = dtype.type(logp(np.array([alpha]))[0])
    with np.errstate(invalid="ignore"):
        return np.isfinite(m) & (np.abs(m.astype(dtype, copy=False)) >= cut)


def _map_record(result: Any, name: str, sig: np.ndarray, connectivity: int) -> dict[str, Any]:
    t = np.asarray(result.maps["t"]) if "t" in result.maps else None
    rec: dict[str, Any] = {"inference": P_MAPS[name], "significant_voxels": int(np.count_nonzero(sig))}
    if t is not None:
        rec["positive"] = int(np.count_nonzero(sig & (t > 0)))
        rec["negative"] = int(np.count_nonzero(sig & (t < 0)))
    masker = result.masker
    sig3d = np.zeros(masker.shape, bool)
    sig3d[masker.mask] = sig
    if sig3d.any():
        _, ext, _ = label_clusters(sig3d.astype(np.float64), 0.5, masker.mask, connectivity)
        rec["connected_sets"] = int(ext.size - 1)
    else:
        rec["connected_sets"] = 0
    return rec


def _cluster_record(clusters: list[dict], alpha: float) -> dict[str, Any]:
    heads = [r for r in clusters if isinstance(r.get("size_voxels"), (int, np.integer))]
    out: dict[str, Any] = {"n_clusters": len(heads)}
    for inference, col in CLUSTER_P.items():
        ids = [str(r["cluster_id"]) for r in heads
               if isinstance(r.get(col), (float, int, np.floating)) and np.isfinite(r[col]) and r[col] <= alpha]
        out[inference] = {"significant": len(ids), "cluster_ids": ids}
    return out


def _null_record(result: Any, key: str, alpha: float) -> dict[str, Any]:
    null = np.asarray(result.null[key], np.float64).ravel()
    fin = null[np.isfinite(null)]
    rec: dict[str, Any] = {"n": int(fin.size), "fwe_critical_value": result.fwe_threshold(NULLS[key], alpha)}
    if fin.size and np.isfinite(null[0]):  # row 0 is the identity: the observed maximum
        rec["observed_max"] = float(null[0])
        rec["p_fwe_observed_max"] = float(fwe_p(np.array([null[0]]), fin)[0])
    return rec


def decisions(result: Any, alpha: float = ALPHA, *, p_values: Mapping[str, np.ndarray] | None = None
              ) -> dict[str, Any]:
    """The decisions record of ``result`` (a :class:`~voxelkit.stats.result.PermutationResult`) at ``alpha``.

    ``p_values``: map name -> the unsigned float64 p of every mask voxel (C order, as the maps), as computed by
    the engine; a map without one is decided on the in-memory -log10 p map (:func:`significant`).  Connected sets
    of significant voxels use the connectivity the test used (``settings["connectivity"]``).
    """
    settings = result.settings
    connectivity = int(settings.get("connectivity") or 26)
    p_values = dict(p_values or {})
    maps: dict[str, Any] = {}
    used_p = []
    for name in P_MAPS:
        if name not in result.maps:
            continue
        if name in p_values:
            p = np.asarray(p_values[name], np.float64)
            with np.errstate(invalid="ignore"):
                sig = np.isfinite(p) & (p <= alpha)
            used_p.append(name)
        else:
            sig = significant(result.maps[name], alpha)
        maps[name] = {**_map_record(result, name, sig, connectivity),
                      "decided_on": DECIDED_ON_P if name in p_values else DECIDED_ON_MAP}
    thr = settings.get("cluster_threshold_t")
    rec: dict[str, Any] = {
        "alpha": float(alpha), "rule": "significant: p <= alpha", "two_sided": settings.get("two_sided"),
        "connectivity": connectivity, "cluster_forming_p": settings.get("cluster_p"),
        "cluster_threshold_t": None if thr is None else float(thr), "maps": maps,
        "clusters": _cluster_record(result.clusters, alpha) if thr is not None else None,
        "nulls": {k: _null_record(result, k, alpha) for k in NULLS if k in result.null},
    }
    return rec


def p_over_mask(p: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Float64 p of the analysed voxels ``valid`` (bool over the mask) spread over the mask, 1 where not analysed:
    the ``p_values`` :func:`record_decisions` takes."""
    out = np.ones(valid.size, np.float64)
    out[valid] = p
    return out


def record_decisions(result: Any, alpha: float = ALPHA, *, p_values: Mapping[str, np.ndarray] | None = None,
                     keep_exact: bool = False) -> dict[str, Any]:
    """Store :func:`decisions` in ``result.settings[DECISIONS_KEY]`` and return it.  ``keep_exact``: the entries
    of a record already there that were decided on float64 p (given by the engine) are kept, not replaced by
    decisions on the map (whoever changes a map after recording records again, with its p)."""
    old = result.settings.get(DECISIONS_KEY)
    rec = decisions(result, alpha, p_values=p_values)
    if keep_exact and isinstance(old, dict) and old.get("alpha") == alpha:
        for name, m in (old.get("maps") or {}).items():
            if name in rec["maps"] and name not in (p_values or {}) and m.get("decided_on") == DECIDED_ON_P:
                rec["maps"][name] = m
    result.settings[DECISIONS_KEY] = rec
    return rec


def ensure_decisions(result: Any, alpha: float = ALPHA) -> dict[str, Any]:
    """The decisions record ``result`` holds (made where its p-values were computed: ``stats.api.assemble``, and
    again by whoever replaced a map), or, for a result built another way, one made now on its maps.  For a
    :class:`~voxelkit.stats.result.MultiContrastResult` (``results``: label -> result) each contrast's record,
    collected by label in ``result.settings[DECISIONS_KEY]``."""
    if hasattr(result, "results"):
        rec = {label: ensure_decisions(r, alpha) for label, r in result.results.items()}
        result.settings[DECISIONS_KEY] = rec
        return rec
    old = result.settings.get(DECISIONS_KEY)
    if isinstance(old, dict) and old.get("alpha") == alpha:
        return old
    return record_decisions(result, alpha)
