"""Host threads: the CPUs this process may use, and the BLAS thread limit for skinny products (one place for
the models, the statistics engine and the pipeline's scheduler)."""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    try:
        from threadpoolctl import ThreadpoolController  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        return None
    return ThreadpoolController()


def blas_single_thread() -> contextlib.AbstractContextManager:
    """Limit host BLAS to one thread inside the ``with`` block.

    The products in the voxel fits (chunk x frames x basis) and the permutation engine (subjects x permutation
    batch x voxel block) are skinny; a multi-threaded OpenBLAS on them was 5-20x slower on a loaded 2-core
    machine (measured 0.1-0.4 vs 2-3 million voxels/s for SRTM; 8 s vs 0.76 s for 10,000 sign flips x 76,800
    voxels).  threadpoolctl comes with nilearn/scikit-learn; without it, nothing changes."""
    ctl = _blas_controller()
    if ctl is None:  # pragma: no cover
        return contextlib.nullcontext()
    return ctl.limit(limits=1, user_api="blas")


__all__ = ["blas_single_thread"]


def n_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
