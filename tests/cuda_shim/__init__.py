"""Test-only tools that verify voxelkit's CUDA kernels on a machine without a GPU.

* :mod:`cuda_shim.nvrtc_check`: compile a ``.cu`` with NVRTC (CuPy's compiler and options) for every
  supported architecture; warnings fail.
* :mod:`cuda_shim.build` + ``shim.h``: build the same source as host C++ (g++), run kernels through ctypes.
* :mod:`cuda_shim.fake_cupy`: a ``cupy`` stand-in whose ``RawModule`` runs kernels through the shim.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

__all__ = ["in_ci", "require_kernel_tools", "sanitizer_env", "selftest_source", "SELFTEST_CU"]

SELFTEST_CU = Path(__file__).resolve().parent / "selftest.cu"
TESTS_DIR = SELFTEST_CU.parent.parent
REPO = TESTS_DIR.parent


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



def sanitizer_env() -> dict[str, str]:
    """Environment for a Python subprocess that builds and loads shim libraries with ASan + UBSan.

    libasan (and libubsan) are preloaded, leak checks are off (CPython keeps memory until exit), the first
    error aborts the process, and ``VOXELKIT_SHIM_SANITIZE=1`` makes every shim build a sanitized one.
    Skips (fails in CI) when g++ or its sanitizer runtimes are missing.
    """
    require_kernel_tools(nvrtc=False, gxx=True)
    from . import build  # noqa: PLC0415

    cxx = build.compiler() or "g++"
    libs = []
    for lib in ("libasan.so", "libubsan.so"):
        path = subprocess.run([cxx, f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
        if not os.path.isabs(path) or not os.path.exists(path):
            _missing(f"{lib} not found by {cxx} (install the gcc sanitizer runtimes, e.g. libasan8 libubsan1)")
        libs.append(path)
    env = dict(os.environ)
    env.update(
        LD_PRELOAD=":".join(libs),
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
        VOXELKIT_SHIM_SANITIZE="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(TESTS_DIR), str(REPO), env.get("PYTHONPATH", "")) if p),
    )
    return env
