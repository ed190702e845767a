"""What a user sees about the backend: one short line without a usable GPU, the reason only with --verbose and
in ``voxelkit info`` (voxelkit.backend._log_once)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.DEBUG if sys.argv[1] == 'v' else logging.INFO, format='%(message)s')
sys.modules['cupy'] = None  # no usable GPU, whatever the machine
from voxelkit.backend import get_backend
for _ in range(3):
    get_backend('auto')
get_backend(None)
"""


def _run(mode: str) -> str:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_no_gpu_said_once_reason_only_when_verbose():
    quiet = _run("i")
    assert quiet.count("no usable GPU: NumPy backend") == 1
    assert "cupy is not importable" not in quiet and "Error" not in quiet
    verbose = _run("v")
    assert verbose.count("no usable GPU: NumPy backend") == 1
    assert verbose.count("GPU probe: cupy is not importable") == 1


def test_info_gives_the_reason():
    proc = subprocess.run([sys.executable, "-m", "voxelkit", "info"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from voxelkit.backend import probe_gpu

    probe = probe_gpu()
    if not probe.available:
        assert f"GPU: none usable ({probe.reason})" in proc.stdout
        assert proc.stderr.count("no usable GPU: NumPy backend") <= 1
