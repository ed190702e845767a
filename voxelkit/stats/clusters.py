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
from scipy import ndimage

from .neighbors import check_connectivity, structure


def batch_cluster_max(supra: np.ndarray, excess: np.ndarray, mask: np.ndarray,
                      connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest cluster extent (voxels) and mass per row.

    Parameters
    ----------
    supra : (B, V) bool, supra-threshold voxels of each map (V = in-mask voxels, C order of ``mask``).
    excess : 1-D float, ``stat - threshold`` at ``supra`` in row-major order (``stat[supra] - thr``).
    mask : 3-D bool mask.
    connectivity : 6, 18 or 26.

    Returns
    -------
    (max_extent, max_mass) : float64 arrays of shape (B,), 0 where a map has no supra-threshold voxel.
    """
    B = supra.shape[0]
    max_ext = np.zeros(B)
    max_mass = np.zeros(B)
    if not supra.any():
        return max_ext, max_mass
    X, Y, Z = mask.shape
    vol = np.zeros((B, X + 1, Y, Z), np.uint8)
    vol[:, :X][:, mask] = supra
    labels = cc3d.connected_components(vol.reshape(B * (X + 1), Y, Z), connectivity=check_connectivity(connectivity))
    lab = labels.reshape(B, X + 1, Y, Z)[:, :X][:, mask][supra]
    rows = np.nonzero(supra)[0]
    n_lab = int(lab.max()) + 1
    ext = np.bincount(lab, minlength=n_lab).astype(np.float64)
    mass = np.bincount(lab, weights=np.asarray(excess, np.float64), minlength=n_lab)
    row_of = np.zeros(n_lab, np.int64)
    row_of[lab] = rows
    np.maximum.at(max_ext, row_of[1:], ext[1:])
    np.maximum.at(max_mass, row_of[1:], mass[1:])
    return max_ext, max_mass


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
