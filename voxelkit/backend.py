"""Array-module selection (NumPy or CuPy), host/device transfers and CUDA kernel loading.

This is the only module that imports ``cupy``, and only inside functions.  Everything else receives a
:class:`Backend` and uses ``backend.xp`` as its array module, so the same code runs on both.

Device choice: ``device="auto" | "cpu" | "gpu"`` or the environment variable ``VOXELKIT_DEVICE``.
``auto`` uses the GPU when CuPy imports and a device answers, else NumPy, and logs which in one line ("no usable
GPU: NumPy backend"; the probe's reason with ``--verbose``, in ``voxelkit info`` and in provenance).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("voxelkit")

DEVICES = ("auto", "cpu", "gpu")
ENV_DEVICE = "VOXELKIT_DEVICE"
#: Threads per block for one-item-per-thread kernels.
DEFAULT_BLOCK = 256


from .errors import BackendError  # noqa: E402 - defined in voxelkit.errors, re-exported here


@dataclass(frozen=True)
class GpuProbe:
    """Result of looking for a usable CUDA device (cached per process)."""

    available: bool
    reason: str
    name: str | None = None
    total_memory: int | None = None
    free_memory: int | None = None
    cupy_version: str | None = None


@dataclass(frozen=True)
class Backend:
    """The array module and what goes with it.

    Attributes
    ----------
    name : ``"numpy"`` or ``"cupy"``.
    xp : the array module (``numpy`` or ``cupy``).
    reason : why this backend was chosen (one human-readable line).
    """

    name: str
    xp: Any
    reason: str
    probe: GpuProbe | None = field(default=None, compare=False)

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy"

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        """Host (or device) array to this backend's array, optionally cast to ``dtype``."""
        if self.is_gpu:
            return self.xp.asarray(a, dtype=dtype)
        return np.asarray(a, dtype=dtype)

    def to_host(self, a: Any) -> np.ndarray:
        """This backend's array to a NumPy array (explicit device-to-host copy on the GPU)."""
        if self.is_gpu and not isinstance(a, np.ndarray | np.generic):
            return self.xp.asnumpy(a)
        return np.asarray(a)

    def kernel(self, module: str, name: str) -> Any:
        """The compiled ``RawKernel`` ``name`` from ``kernels/<module>.cu`` (compiled once per process)."""
        if not self.is_gpu:
            raise BackendError("CUDA kernels are only available on the cupy backend")
        return _raw_module(self.xp, module).get_function(name)

    def launch(self, kernel: Any, n_items: int, args: tuple, block: int = DEFAULT_BLOCK) -> None:
        """Launch a one-item-per-thread ``kernel`` over ``n_items`` work items (1-D grid)."""
        if n_items <= 0:
            return
        grid = (int(n_items) + block - 1) // block
        kernel((grid,), (block,), args)


NUMPY = Backend("numpy", np, "NumPy backend")


def kernel_dir() -> Path:
    """Folder holding the ``*.cu`` kernel sources (inside an installed wheel or a source checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_kernels", here.parent / "kernels"):
        if candidate.is_dir() and any(candidate.glob("*.cu")):
            return candidate
    raise FileNotFoundError(
        f"voxelkit kernel sources not found (looked in {here / '_kernels'} and {here.parent / 'kernels'})"
    )


def kernel_source(module: str) -> str:
    """The CUDA C++ source of ``kernels/<module>.cu``."""
    path = kernel_dir() / f"{module}.cu"
    if not path.is_file():
        raise FileNotFoundError(f"no kernel source {path}")
    return path.read_text()


#: NVRTC options voxelkit passes; CuPy itself adds ``-ftz=true`` and ``--device-as-default-execution-space``.
NVRTC_OPTIONS = ("--std=c++14",)


@functools.cache
def _raw_module_cached(xp_id: int, module: str) -> Any:
    xp = _XP_BY_ID[xp_id]
    return xp.RawModule(code=kernel_source(module), options=NVRTC_OPTIONS)


_XP_BY_ID: dict[int, Any] = {}


def _raw_module(xp: Any, module: str) -> Any:
    _XP_BY_ID[id(xp)] = xp
    return _raw_module_cached(id(xp), module)


def _probe_gpu_uncached() -> GpuProbe:
    try:
        import cupy  # noqa: PLC0415
    except Exception as exc:  # ImportError, or a broken CUDA install
        return GpuProbe(False, f"cupy is not importable ({type(exc).__name__}: {exc})")
    version = getattr(cupy, "__version__", None)
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
        if count < 1:
            return GpuProbe(False, "cupy found no CUDA device", cupy_version=version)
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props.get("name", b"")
        name = name.decode() if isinstance(name, bytes) else str(name)
        free, total = cupy.cuda.Device(0).mem_info
    except Exception as exc:  # CUDARuntimeError: no driver, no device...
        return GpuProbe(False, f"cupy cannot use a GPU ({type(exc).__name__}: {exc})", cupy_version=version)
    return GpuProbe(True, f"CUDA device 0: {name}", name, int(total), int(free), version)


@functools.lru_cache(maxsize=1)
def probe_gpu() -> GpuProbe:
    """Look once per process for a usable GPU; the answer and its reason are cached."""
    return _probe_gpu_uncached()


def reset_probe() -> None:
    """Forget the cached GPU probe and compiled modules (tests swap ``cupy`` for a stand-in)."""
    probe_gpu.cache_clear()
    _raw_module_cached.cache_clear()
    _XP_BY_ID.clear()


#: ``auto`` keeps a problem of fewer independent items than this (e.g. regional TACs of a table) on the CPU:
#: the GPU start-up (CuPy import, context, kernel load: about a second) costs more than the fit itself.
AUTO_GPU_MIN_ITEMS = 10_000


def get_backend(device: str | Backend | None = None, *, n_items: int | None = None) -> Backend:
    """Choose the backend.

    Parameters
    ----------
    device : ``"auto"``, ``"cpu"``, ``"gpu"``, an existing :class:`Backend`, or None (then the environment
        variable ``VOXELKIT_DEVICE``, default ``"auto"``).
    n_items : the number of independent items (voxels, TACs) when the caller knows it: ``auto`` picks the CPU
        below :data:`AUTO_GPU_MIN_ITEMS` (``gpu`` is always the GPU).
    """
    if isinstance(device, Backend):
        return device
    if device is None:
        device = os.environ.get(ENV_DEVICE, "auto") or "auto"
    device = str(device).lower()
    if device not in DEVICES:
        raise BackendError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")
    if device == "cpu" or (device == "auto" and n_items is not None and n_items < AUTO_GPU_MIN_ITEMS):
        return NUMPY
    probe = probe_gpu()
    if probe.available:
        import cupy  # noqa: PLC0415

        backend = Backend("cupy", cupy, f"GPU backend (CuPy {probe.cupy_version}, {probe.name})", probe)
        if device == "auto":
            _log_once(backend)
        return backend
    if device == "gpu":
        raise BackendError(f"device 'gpu' requested but no usable GPU: {probe.reason}")
    backend = Backend("numpy", np, f"NumPy backend ({probe.reason})", probe)
    _log_once(backend)
    return backend


_LOGGED: set[str] = set()


def _log_once(backend: Backend) -> None:
    """Say which backend ``auto`` picked, once per process: one short line (INFO); without a usable GPU the
    reason (e.g. ``cudaErrorInsufficientDriver``) only with ``--verbose`` (DEBUG), in ``voxelkit info`` and in
    provenance (``Backend.reason``)."""
    if backend.reason in _LOGGED:
        return
    _LOGGED.add(backend.reason)
    if backend.is_gpu:
        log.info("voxelkit backend: %s", backend.reason)
        return
    log.info("no usable GPU: NumPy backend")
    if backend.probe is not None:
        log.debug("GPU probe: %s", backend.probe.reason)


def chunks(n: int, size: int) -> list[slice]:
    """Slices covering ``range(n)`` in pieces of at most ``size``."""
    size = max(1, int(size))
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]
