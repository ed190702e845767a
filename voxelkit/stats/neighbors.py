"""Voxel adjacency on a 3-D mask: 6-, 18- or 26-connectivity as offset lists and neighbour tables."""

from __future__ import annotations

import numpy as np

CONNECTIVITIES = (6, 18, 26)
#: Default connectivity: 26 (faces, edges and corners), as FSL randomise/cluster and SPM use; nilearn uses 6.
DEFAULT_CONNECTIVITY = 26


def check_connectivity(connectivity: int) -> int:
    c = int(connectivity)
    if c not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    return c


def offsets(connectivity: int) -> np.ndarray:
    """(K, 3) integer offsets of the neighbours: |d|_1 <= 1 (6), <= 2 (18) or any (26)."""
    c = check_connectivity(connectivity)
    rank = {6: 1, 18: 2, 26: 3}[c]
    g = np.stack(np.meshgrid(*([np.arange(-1, 2)] * 3), indexing="ij"), -1).reshape(-1, 3)
    l1 = np.abs(g).sum(1)
    return g[(l1 >= 1) & (l1 <= rank)]


def structure(connectivity: int) -> np.ndarray:
    """The 3x3x3 boolean structuring element (``scipy.ndimage.generate_binary_structure``)."""
    from scipy import ndimage  # noqa: PLC0415

    return ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[check_connectivity(connectivity)])


def neighbor_table(mask: np.ndarray, connectivity: int = DEFAULT_CONNECTIVITY) -> np.ndarray:
    """(V, K) int32: for each in-mask voxel (C order) the indices of its in-mask neighbours, -1 for none."""
    mask = np.asarray(mask, bool)
    idx = np.full(tuple(s + 2 for s in mask.shape), -1, np.int32)
    idx[1:-1, 1:-1, 1:-1][mask] = np.arange(int(mask.sum()), dtype=np.int32)
    coords = np.argwhere(mask) + 1
    off = offsets(connectivity)
    nb = coords[:, None, :] + off[None, :, :]
    return np.ascontiguousarray(idx[nb[..., 0], nb[..., 1], nb[..., 2]], dtype=np.int32)
