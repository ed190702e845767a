"""Shared fixtures.

Kernel verification (tests/cuda_shim/):

* ``fake_gpu``: installs the CuPy stand-in (``cuda_shim.fake_cupy``) as ``sys.modules["cupy"]``, resets the
  backend's GPU probe and returns ``voxelkit.backend.get_backend("gpu")``, a real :class:`Backend` whose
  ``xp`` is the stand-in, so the GPU code path of voxelkit runs (kernels through the CPU shim).  Everything
  is restored afterwards.  ``fake_cupy.stats()`` counts transfers and launches, ``fake_cupy.LAUNCHES`` logs
  (kernel, grid, block) of every launch.
* ``kernel_tools``: skips (or in CI, where ``CI`` is set, fails) when g++ or NVRTC is missing.
  ``cuda_shim.require_kernel_tools(nvrtc=..., gxx=...)`` does the same from inside a test.

Mark kernel tests ``@pytest.mark.kernels``: ``tests/test_kernels_sanitized.py`` re-runs all of them once
under AddressSanitizer + UBSan.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from cuda_shim import fake_cupy, require_kernel_tools  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "nvrtc: compiles kernels with NVRTC (not re-run under the sanitizer)")
    config.addinivalue_line(
        "markers", "sanitizer_subprocess: starts its own sanitized subprocess (not re-run under the sanitizer)"
    )


@pytest.fixture
def kernel_tools() -> None:
    """Require g++ and NVRTC: skip with the reason, or fail when ``CI`` is set."""
    require_kernel_tools(nvrtc=True, gxx=True)


#: ``VOXELKIT_TEST_REAL_CUPY=1`` (set by bench/gpu_check.py on a CUDA machine): ``fake_gpu`` yields the real-CuPy
#: backend instead of the stand-in (launches are still logged in ``fake_cupy.LAUNCHES``); unset in CI.
REAL_CUPY_ENV = "VOXELKIT_TEST_REAL_CUPY"


def real_cupy_requested() -> bool:
    return os.environ.get(REAL_CUPY_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _real_gpu(monkeypatch: pytest.MonkeyPatch):
    """The real-CuPy ``Backend`` (no GPU: the test fails with the probe's reason), each launch logged."""
    from voxelkit import backend  # noqa: PLC0415

    monkeypatch.delenv(backend.ENV_DEVICE, raising=False)
    backend.reset_probe()
    be = backend.get_backend("gpu")
    orig = backend.Backend.launch

    def launch(self, kernel, n_items, args, block=backend.DEFAULT_BLOCK):
        if n_items > 0:
            grid = (int(n_items) + block - 1) // block
            fake_cupy.LAUNCHES.append((str(getattr(kernel, "name", kernel)), (grid,), (block,)))
        return orig(self, kernel, n_items, args, block)

    monkeypatch.setattr(backend.Backend, "launch", launch)
    fake_cupy.reset_stats()
    try:
        yield be
    finally:
        backend.reset_probe()
        fake_cupy.reset_stats()


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch):
    """A ``Backend`` on the CuPy stand-in (kernels run through the CPU shim); restores everything after."""
    if real_cupy_requested():
        yield from _real_gpu(monkeypatch)
        return
    require_kernel_tools(nvrtc=False, gxx=True)
    from voxelkit import backend  # noqa: PLC0415

    monkeypatch.delenv(backend.ENV_DEVICE, raising=False)
    fake_cupy.install(monkeypatch)
    backend.reset_probe()
    try:
        be = backend.get_backend("gpu")
        assert be.is_gpu and be.xp is fake_cupy.cupy, be.reason
        yield be
    finally:
        backend.reset_probe()
        fake_cupy.reset_stats()
    # monkeypatch restores sys.modules after this fixture's teardown
