"""Test-only tools that verify voxelkit's CUDA kernels on a machine without a GPU.

* :mod:`cuda_shim.nvrtc_check`: compile a ``.cu`` with NVRTC (CuPy's compiler and options) for every
  supported architecture; warnings fail.
* :mod:`cuda_shim.build` + ``shim.h``: build the same source as host C++ (g++), run kernels through ctypes.
* :mod:`cuda_shim.fake_cupy`: a ``cupy`` stand-in whose ``RawModule`` runs kernels through the shim.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

__all__ = ["in_ci", "require_kernel_tools", "selftest_source", "SELFTEST_CU"]

SELFTEST_CU = Path(__file__).resolve().parent / "selftest.cu"


def in_ci() -> bool:
    """True when the ``CI`` environment variable is set to something other than empty/0/false."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing(reason: str) -> None:
    if in_ci():
        pytest.fail(f"kernel tools missing in CI (kernel tests may not skip there): {reason}", pytrace=False)
    pytest.skip(reason)


def require_kernel_tools(nvrtc: bool = True, gxx: bool = True) -> None:
    """Skip the calling test (fail it in CI) when g++ or NVRTC is not available."""
    if gxx:
        from . import build  # noqa: PLC0415

        if build.compiler() is None:
            _missing(f"no C++ compiler ({os.environ.get(build.ENV_CXX, 'g++')}) on PATH; install g++")
    if nvrtc:
        from . import nvrtc_check  # noqa: PLC0415

        try:
            nvrtc_check.nvrtc()
        except nvrtc_check.NvrtcUnavailable as exc:
            _missing(str(exc))


def selftest_source() -> str:
    return SELFTEST_CU.read_text()

