"""TFCE and cluster null maxima on the GPU: the batch of permuted maps stays on the device.

The permutation engine (:mod:`voxelkit.stats.engine`) computes a batch of ``b`` permuted statistic maps as one
matrix product on the device.  Without this module the GPU path copies every batch to the host for cc3d
(clusters) and numba (TFCE); with it, only the ``b`` maxima per statistic come back:

* clusters (``kernels/stats_clusters.cu``): the labels (score above the cluster-forming threshold, sign of t)
  are formed with the same array expressions as the NumPy path, then one thread per permutation runs a
  union-find over the labelled voxels with the neighbour table of :func:`voxelkit.stats.neighbors.neighbor_table`;
  the largest extent (voxels) and mass (sum of ``|t| - threshold``) per map are the NumPy path's exactly
  (mass up to the order of a floating-point sum);
* TFCE (``kernels/stats_tfce.cu``): the float32 t maps (as the NumPy path hands them to numba) are sorted per
  row with ``xp.argsort`` on the device, then one thread per permutation runs the max-only exact TFCE of
  :mod:`voxelkit.stats.tfce` (same union-find, same merge order); equal to the numba values to float rounding.

Both kernels take voxel-major (V x b) arrays, so the threads of a warp touch neighbouring addresses whenever
they read the same voxel (cluster kernel) or the same sorted position (TFCE kernel).  The work arrays
(``V x b`` int32 + float64 per statistic) are allocated once per run for the largest batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..backend import Backend
from .neighbors import neighbor_table

#: Threads per block for the one-permutation-per-thread kernels: small blocks spread a batch of a few thousand
#: permutations over all multiprocessors.
NULL_BLOCK = 32
#: Largest default batch on the GPU (permutations per batch = threads per kernel launch).
MAX_GPU_BATCH = 4096
#: Fraction of the free device memory a batch may use.
MEMORY_FRACTION = 0.4


def bytes_per_cell(tfce: bool, clusters: bool, itemsize: int) -> int:
    """Device bytes per (permutation x voxel) of one batch: the score matrix and max/count temporaries, plus
    TFCE (float32 t, int64 argsort order, the sort's temporaries (CuPy's thrust argsort: a copy of the keys,
    segment keys and merge buffers, ~24 bytes), the sorted values and voxels transposed, the int32 forest and
    float64 root values) and clusters (t and labels, transposed, int32 forest, float64 mass)."""
    n = 2 * itemsize + 2
    if tfce:
        n += 4 + 8 + 24 + 4 + 4 + 4 + 8
    if clusters:
        n += 2 * itemsize + 3 + 4 + 8
    return n


def free_memory(be: Backend) -> int:
    """Free device memory in bytes, counting the blocks CuPy's memory pool holds but does not use (2 GiB when
    the device cannot say)."""
    try:
        free = int(be.xp.cuda.Device().mem_info[0])
    except Exception:  # pragma: no cover - a device that cannot say: a conservative batch
        return 2 * 1024**3
    try:
        pool = be.xp.get_default_memory_pool()
        free += max(0, int(pool.total_bytes()) - int(pool.used_bytes()))
    except Exception:  # pragma: no cover - no pool information
        pass
    return free


def gpu_batch_size(be: Backend, n_vox: int, n_perm: int, tfce: bool, clusters: bool, itemsize: int) -> int:
    """Default permutations per batch on the GPU when TFCE or clusters run on the device: as many as fit in
    :data:`MEMORY_FRACTION` of the free device memory (at most :data:`MAX_GPU_BATCH` and ``n_perm``)."""
    free = free_memory(be)
    per_perm = max(1, n_vox) * bytes_per_cell(tfce, clusters, itemsize)
    return int(max(1, min(n_perm, MAX_GPU_BATCH, int(MEMORY_FRACTION * free) // per_perm)))


class DeviceNull:
    """Per-batch TFCE and cluster maxima on the device for one engine run.

    Parameters
    ----------
    be : the GPU backend.
    mask_valid : 3-D bool mask of the analysed voxels (C order = the columns of the batch).
    connectivity : 6, 18 or 26.
    batch_size : the largest batch (work arrays are allocated for it).
    cluster_t : cluster-forming threshold in t units, or None (no clusters).
    thr_score : the same threshold in the engine's score units (``st > thr_score`` selects the voxels).
    tfce, tfce_H, tfce_E, two_sided : as :class:`voxelkit.stats.engine.EngineConfig`.
    """

    def __init__(self, be: Backend, mask_valid: np.ndarray, connectivity: int, batch_size: int,
                 cluster_t: float | None, thr_score: float | None, tfce: bool, tfce_H: float, tfce_E: float,
                 two_sided: bool) -> None:
        xp = be.xp
        self.be = be
        nbr = neighbor_table(mask_valid, connectivity)
        self.n_vox, self.n_nb = nbr.shape
        if self.n_nb > 26:
            raise ValueError(f"the device kernels take at most 26 neighbours, got {self.n_nb}")
        self.nbr = be.asarray(nbr, dtype=np.int32)
        self.cluster_t = None if cluster_t is None else float(cluster_t)
        self.thr_score = thr_score
        self.tfce = bool(tfce)
        self.H = float(tfce_H)
        self.two_sided = bool(two_sided)
        cells = max(1, int(batch_size) * self.n_vox)
        if self.cluster_t is not None:
            self.cl_parent = xp.empty(cells, dtype=np.int32)     # only cells of labelled voxels are read
            self.cl_mass = xp.empty(cells, dtype=np.float64)
        if self.tfce:
            from .tfce import _size_pow  # noqa: PLC0415  (k^E exactly as the numba kernels use it)

            self.sizeE = be.asarray(_size_pow(self.n_vox, float(tfce_E)), dtype=np.float64)
            self.tf_parent = xp.zeros(cells, dtype=np.int32)     # the kernel leaves it all zero again
            self.tf_best = xp.empty(cells, dtype=np.float64)
            self.k_tfce = be.kernel("stats_tfce", "stats_tfce_max")

    def batch(self, sc: Any, to_t: Callable[[Any], Any]) -> dict[str, np.ndarray]:
        """Maxima of one batch: ``sc`` (b x V device array) the engine's scores (t, or the monotone score of the
        one-sample / paired path), ``to_t`` its score-to-t map.  Returns host float64 arrays of shape (b,):
        ``extent`` and ``mass`` (clusters), ``tfce``."""
        be, xp = self.be, self.be.xp
        b, V = sc.shape
        if V != self.n_vox:
            raise ValueError(f"batch has {V} voxels, the mask {self.n_vox}")
        out: dict[str, np.ndarray] = {}
        tv = to_t(sc)
        if self.cluster_t is not None:
            st = xp.abs(sc) if self.two_sided else sc
            # the NumPy path's clusters: voxels with st > thr_score, positive (t > 0) apart from negative
            lab = xp.where(st > self.thr_score, xp.where(tv > 0, np.uint8(1), np.uint8(2)), np.uint8(0))
            labT = xp.ascontiguousarray(lab.T)
            del lab, st
            tT = xp.ascontiguousarray(tv.T)
            ext = xp.empty(b, dtype=np.float64)
            mass = xp.empty(b, dtype=np.float64)
            name = "stats_cluster_max_f32" if tT.dtype == np.float32 else "stats_cluster_max_f64"
            k = be.kernel("stats_clusters", name)
            be.launch(k, b, (tT, labT, self.nbr, self.cl_parent, self.cl_mass, ext, mass, np.int32(b),
                             np.int32(V), np.int32(self.n_nb), np.float64(self.cluster_t)), block=NULL_BLOCK)
            del labT, tT
            out["extent"] = be.to_host(ext)
            out["mass"] = be.to_host(mass)
        if self.tfce:
            t32 = tv.astype(np.float32, copy=False)
            del tv
            order = xp.argsort(t32, axis=1)
            svT = xp.ascontiguousarray(xp.take_along_axis(t32, order, axis=1).T)
            del t32
            sidxT = xp.ascontiguousarray(order.T, dtype=np.int32)
            del order
            res = xp.empty(b, dtype=np.float64)
            be.launch(self.k_tfce, b, (svT, sidxT, self.nbr, self.sizeE, self.tf_parent, self.tf_best, res,
                                       np.int32(b), np.int32(V), np.int32(self.n_nb), np.float64(self.H),
                                       np.int32(1 if self.two_sided else 0)), block=NULL_BLOCK)
            out["tfce"] = be.to_host(res)
        return out
