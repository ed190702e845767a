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


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch):
    """A ``Backend`` on the CuPy stand-in (kernels run through the CPU shim); restores everything after."""
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
