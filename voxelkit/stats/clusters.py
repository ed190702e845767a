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

    Sparse maps (supra-threshold voxels under 0.5 % of the batch's voxels, e.g. null maps at a cluster-forming
    p of 0.001) are labelled with work proportional to their supra-threshold voxels (:func:`_batch_sparse`);
    denser ones with one ``cc3d`` pass over the stacked batch (:func:`_batch_dense`).  Both sum extent and mass
    per component in the input order, so they agree bit for bit (measured on 128 maps of 76,800 voxels: at
    p < 0.001, 0.15 % supra, sparse 4-10x faster; at 4 % supra, dense 5x faster).
    """
    max_ext = np.zeros(n_rows)
    max_mass = np.zeros(n_rows)
    if rows.size == 0:
        return max_ext, max_mass
    if rows.size * SPARSE_FRACTION < n_rows * int(mask.sum()):
        return _batch_sparse(rows, vox, tvals, threshold, mask, connectivity, max_ext, max_mass)
    return _batch_dense(rows, vox, tvals, threshold, mask, connectivity, max_ext, max_mass)


#: Labelling of a batch is sparse when fewer than 1/SPARSE_FRACTION of its voxels exceed the threshold.
SPARSE_FRACTION = 200


def _batch_sparse(rows: np.ndarray, vox: np.ndarray, tvals: np.ndarray, threshold: float, mask: np.ndarray,
                  connectivity: int, max_ext: np.ndarray, max_mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`batch_cluster_max` with work proportional to the supra-threshold voxels: each voxel gets a key on
    the zero-padded grid of its map and sign (positive and negative voxels in separate key ranges, so they never
    join), neighbours are found by binary search of ``key + offset`` among the sorted keys (half of the offsets:
    adjacency is symmetric), and the components of that graph come from :func:`_components`."""
    lin, offs, size = _padded_grid(mask, connectivity)
    key = (2 * rows.astype(np.int64) + (tvals < 0)) * size + lin[vox]
    order = np.argsort(key, kind="stable")
    sk = key[order]
    n = sk.size
    src, dst = [], []
    for off in offs:
        nb = sk + off
        j = np.searchsorted(sk, nb)
        np.minimum(j, n - 1, out=j)
        hit = np.flatnonzero(sk[j] == nb)
        src.append(hit)
        dst.append(j[hit])
    lab_sorted = _components(n, np.concatenate(src), np.concatenate(dst))
    lab = np.empty(n, np.int64)
    lab[order] = lab_sorted
    ext = np.bincount(lab, minlength=n).astype(np.float64)
    mass = np.bincount(lab, weights=np.abs(tvals).astype(np.float64) - threshold, minlength=n)
    row_of = np.zeros(n, np.int64)
    row_of[lab] = rows
    np.maximum.at(max_ext, row_of, ext)
    np.maximum.at(max_mass, row_of, mass)
    return max_ext, max_mass


def _batch_dense(rows: np.ndarray, vox: np.ndarray, tvals: np.ndarray, threshold: float, mask: np.ndarray,
                 connectivity: int, max_ext: np.ndarray, max_mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`batch_cluster_max` by one ``cc3d.connected_components`` call: the maps are stacked along the first
    axis with an empty slab between them (positive voxels as label 1, negative as 2: cc3d never joins different
    labels), so a batch costs one pass over ``n_rows`` volumes plus work proportional to the supra voxels."""
    n_rows = max_ext.size
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


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of the graph on nodes 0..n-1 with edges (i, j): each node's label is the smallest
    node of its component.  Vectorised hooking and pointer jumping (Shiloach-Vishkin): every unresolved edge
    hooks the larger of its two roots under the smaller, then all labels jump to their roots; repeated until
    both ends of every edge have the same label (a few rounds for the small clusters of a null map)."""
    lab = np.arange(n, dtype=np.int64)
    while i.size:
        li = lab[i]
        lj = lab[j]
        open_ = np.flatnonzero(li != lj)
        if open_.size == 0:
            break
        i, j, li, lj = i[open_], j[open_], li[open_], lj[open_]
        np.minimum.at(lab, np.maximum(li, lj), np.minimum(li, lj))
        while True:
            nxt = lab[lab]
            if np.array_equal(nxt, lab):
                break
            lab = nxt
    return lab


_GRID_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray, int]] = {}


def _padded_grid(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Linear index of each in-mask voxel on the mask's grid padded by one plane on every side, the positive
    neighbour offsets (half of the 6 / 18 / 26, as linear steps: padding means no step wraps around an edge) and
    the padded grid's size (cached per mask and connectivity)."""
    from .neighbors import offsets  # noqa: PLC0415

    key = (mask.shape, hash(np.packbits(mask).tobytes()), int(connectivity))
    if key not in _GRID_CACHE:
        shp = tuple(s + 2 for s in mask.shape)
        idx = np.arange(int(np.prod(shp)), dtype=np.int64).reshape(shp)
        lin = np.ascontiguousarray(idx[1:-1, 1:-1, 1:-1][mask])
        steps = offsets(check_connectivity(connectivity)) @ np.array([shp[1] * shp[2], shp[2], 1], np.int64)
        _GRID_CACHE.clear()
        _GRID_CACHE[key] = (lin, np.sort(steps[steps > 0]), int(np.prod(shp)))
    return _GRID_CACHE[key]


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
    sel = labels == label
    where = np.argwhere(sel)
    lo = where.min(axis=0)
    sl = tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, where.max(axis=0), strict=True))  # bounding box
    sub = np.where(sel[sl], stat3d[sl], -np.inf)
    is_max = (sub == _max_filter3(sub)) & np.isfinite(sub)
    cand = np.argwhere(is_max) + lo
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


def _max_filter3(a: np.ndarray) -> np.ndarray:
    """Maximum over each voxel's 3x3x3 neighbourhood, -inf outside the array (as
    ``scipy.ndimage.maximum_filter(a, size=3, mode="constant", cval=-inf)``; separable: one pass per axis, and
    no SciPy import in the cluster table's path)."""
    out = np.asarray(a, np.float64)
    for ax in range(out.ndim):
        p = np.pad(out, [(1, 1) if k == ax else (0, 0) for k in range(out.ndim)], constant_values=-np.inf)
        n = out.shape[ax]
        take = [slice(None)] * out.ndim

        def part(start: int, p=p, take=take, ax=ax, n=n) -> np.ndarray:
            take[ax] = slice(start, start + n)
            return p[tuple(take)]

        out = np.maximum(np.maximum(part(0), part(1)), part(2))
    return out
