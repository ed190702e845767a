"""Re-run every kernel test once with the CPU shim built under AddressSanitizer + UBSan.

A kernel that reads or writes out of bounds (a missing ``if (i >= n) return;``, a wrong stride) is silent
on a GPU and usually on the plain CPU build; under ASan it aborts with a report pointing at the kernel line.
The child pytest runs ``-m "kernels and not nvrtc and not sanitizer_subprocess"`` (this test is marked
``sanitizer_subprocess`` so it does not run itself; NVRTC tests do not execute kernel code).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from cuda_shim import sanitizer_env

pytestmark = [pytest.mark.kernels, pytest.mark.sanitizer_subprocess, pytest.mark.slow]

TESTS_DIR = Path(__file__).resolve().parent
MARKER_EXPR = "kernels and not nvrtc and not sanitizer_subprocess"


def test_kernel_tests_pass_under_asan_and_ubsan() -> None:
    env = sanitizer_env()
    cmd = [sys.executable, "-m", "pytest", str(TESTS_DIR), "-m", MARKER_EXPR, "-p", "no:cacheprovider",
           "-q", "-rfEs", "--no-header"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=TESTS_DIR.parent, env=env, capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - t0
    out = res.stdout + "\n" + res.stderr
    tail = out[-6000:]
    assert res.returncode == 0, f"sanitized kernel tests failed (rc={res.returncode}, {elapsed:.0f} s):\n{tail}"
    assert " passed" in res.stdout, tail
    assert "AddressSanitizer" not in out and "runtime error:" not in out, tail
    print(f"sanitized re-run: {res.stdout.strip().splitlines()[-1]} in {elapsed:.1f} s")
