"""Supra-threshold clusters: per-permutation maximum extent and mass (cc3d), and the observed clusters.

Clusters are connected components (6/18/26-connectivity) of ``stat > threshold`` (strict, as nilearn).  The
**extent** is the number of voxels; the **mass** is the sum of ``stat - threshold`` over the cluster (the
supra-threshold excess, as nilearn and Bullmore et al. 1999; FSL's ``-C`` uses the same idea).  For two-sided
tests positive and negative clusters are formed separately (on ``t`` and ``-t``) and the null distribution is the
maximum over both signs.

A batch of B maps is labelled with one ``cc3d.connected_components`` call: the B volumes are stacked along the
first axis with an empty slab between them, so no component can join two permutations.
"""

from __future__ import annotations

import cc3d
import numpy as np

from .neighbors import check_connectivity, structure


def batch_cluster_max(rows: np.ndarray, vox: np.ndarray, tvals: np.ndarray, threshold: float, n_rows: int,
                      mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest cluster extent (voxels) and mass per map from the supra-threshold voxels of a batch of maps.

    Parameters
    ----------
    rows, vox : permutation (row) and in-mask voxel index (C order of ``mask``) of every supra-threshold voxel.
    tvals : their statistic values; ``|t| > threshold``.  Positive and negative voxels form separate clusters
        (two-sided tests); the mass adds ``|t| - threshold``.
    n_rows : number of maps in the batch.
    mask : 3-D bool mask; connectivity : 6, 18 or 26.

    Returns
    -------
    (max_extent, max_mass) : float64 arrays of shape (n_rows,), 0 where a map has no supra-threshold voxel.

    The maps are stacked along the first axis with an empty slab between them and labelled with one
    ``cc3d.connected_components`` call (positive voxels as label 1, negative as 2: cc3d never joins different
    labels), so a batch costs one pass over ``n_rows`` volumes plus work proportional to the supra voxels.
    """
    max_ext = np.zeros(n_rows)
    max_mass = np.zeros(n_rows)
    if rows.size == 0:
        return max_ext, max_mass
    X, Y, Z = mask.shape
    stride = (X + 1) * Y * Z
    lin = _linear_index(mask)
    pos = rows.astype(np.int64) * stride + lin[vox]
    vol = np.zeros(n_rows * stride, np.uint8)
    vol[pos] = np.where(tvals > 0, 1, 2).astype(np.uint8)
    labels = cc3d.connected_components(vol.reshape(n_rows * (X + 1), Y, Z),
                                       connectivity=check_connectivity(connectivity))
    lab = labels.reshape(-1)[pos].astype(np.int64)
    n_lab = int(lab.max()) + 1
    ext = np.bincount(lab, minlength=n_lab).astype(np.float64)
    mass = np.bincount(lab, weights=np.abs(tvals).astype(np.float64) - threshold, minlength=n_lab)
    row_of = np.zeros(n_lab, np.int64)
    row_of[lab] = rows
    np.maximum.at(max_ext, row_of[1:], ext[1:])
    np.maximum.at(max_mass, row_of[1:], mass[1:])
    return max_ext, max_mass


_LIN_CACHE: dict[tuple, np.ndarray] = {}


def _linear_index(mask: np.ndarray) -> np.ndarray:
    """C-order linear index of each in-mask voxel inside an (X+1, Y, Z) slab (cached per mask)."""
    key = (mask.shape, hash(np.packbits(mask).tobytes()))
    if key not in _LIN_CACHE:
        X, Y, Z = mask.shape
        idx = np.arange(X * Y * Z, dtype=np.int64).reshape(X, Y, Z)
        _LIN_CACHE.clear()
        _LIN_CACHE[key] = idx[mask]  # the slab's first X planes have the same C-order indices
    return _LIN_CACHE[key]


def label_clusters(stat3d: np.ndarray, threshold: float, mask: np.ndarray,
                   connectivity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label ``stat3d > threshold`` inside ``mask``.

    Returns (labels 3-D int32 with 0 = background, extent per label (index 0 unused), mass per label).
    """
    supra = (stat3d > threshold) & mask
    labels = cc3d.connected_components(supra.astype(np.uint8), connectivity=check_connectivity(connectivity))
    labels = labels.astype(np.int32)
    n = int(labels.max()) + 1
    ext = np.bincount(labels[supra], minlength=n).astype(np.float64)
    mass = np.bincount(labels[supra], weights=(stat3d[supra] - threshold).astype(np.float64), minlength=n)
    return labels, ext, mass


def cluster_max_reference(stat3d: np.ndarray, threshold: float, mask: np.ndarray,
                          connectivity: int) -> tuple[float, float]:
    """Slow reference (tests): largest extent and mass of ``stat3d > threshold`` with ``scipy.ndimage.label``."""
    from scipy import ndimage  # noqa: PLC0415

    supra = (stat3d > threshold) & mask
    lab, n = ndimage.label(supra, structure=structure(connectivity))
    if n == 0:
        return 0.0, 0.0
    best_e = best_m = 0.0
    for i in range(1, n + 1):
        sel = lab == i
        best_e = max(best_e, float(sel.sum()))
        best_m = max(best_m, float((stat3d[sel] - threshold).sum()))
    return best_e, best_m


def local_maxima(stat3d: np.ndarray, labels: np.ndarray, label: int, affine: np.ndarray,
                 min_distance_mm: float = 8.0, max_peaks: int = 4) -> list[tuple[int, int, int]]:
    """Voxel indices of up to ``max_peaks`` local maxima (26-neighbourhood) of ``stat3d`` in cluster ``label``,
    highest first, at least ``min_distance_mm`` apart (the first is the cluster's peak)."""
    from scipy import ndimage  # noqa: PLC0415

    sel = labels == label
    vals = np.where(sel, stat3d, -np.inf)
    sl = ndimage.find_objects(sel.astype(np.int32))[0]
    sub = vals[sl]
    is_max = (sub == ndimage.maximum_filter(sub, size=3, mode="constant", cval=-np.inf)) & np.isfinite(sub)
    cand = np.argwhere(is_max) + np.array([s.start for s in sl])
    if cand.size == 0:
        cand = np.argwhere(sel)
    order = np.argsort(-stat3d[tuple(cand.T)], kind="stable")
    cand = cand[order]
    world = cand @ affine[:3, :3].T + affine[:3, 3]
    picked: list[int] = []
    for i in range(len(cand)):
        if len(picked) >= max_peaks:
            break
        if all(np.linalg.norm(world[i] - world[j]) >= min_distance_mm for j in picked):
            picked.append(i)
    return [tuple(int(x) for x in cand[i]) for i in picked]
