"""The CUDA kernel sources ship inside the wheel and are found from an installed package.

Builds a wheel from this checkout (``python -m build --wheel``, falling back to ``pip wheel``), installs it
with ``--no-deps`` into a fresh venv that sees the system site-packages (for numpy & co.), and from a
working directory outside the repository checks that ``voxelkit`` is imported from the venv and that
``kernel_dir()``/``kernel_source()`` find every ``kernels/*.cu``.  Needs the build backend (hatchling),
from PyPI unless it is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_PRELOAD", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def build_wheel(out: Path) -> Path:
    attempts = []
    try:
        import hatchling  # noqa: F401, PLC0415

        # offline and faster when the build backend is already installed
        attempts.append([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(REPO)])
    except ImportError:
        pass
    attempts += [
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(REPO)],
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), str(REPO)],
    ]
    logs = []
    for cmd in attempts:
        res = _run(cmd, cwd=out, env=_clean_env())
        wheels = sorted(out.glob("voxelkit-*.whl"))
        if res.returncode == 0 and wheels:
            return wheels[-1]
        logs.append(f"$ {' '.join(cmd)}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    pytest.fail("could not build a wheel:\n" + "\n".join(logs))


CHECK = """
import json, sys, sysconfig
from pathlib import Path
import voxelkit
from voxelkit import backend
kd = Path(backend.kernel_dir()).resolve()
names = sorted(p.stem for p in kd.glob("*.cu"))
print(json.dumps({
    "voxelkit": str(Path(voxelkit.__file__).resolve()),
    "purelib": str(Path(sysconfig.get_paths()["purelib"]).resolve()),
    "kernel_dir": str(kd),
    "kernels": names,
    "sources": {n: len(backend.kernel_source(n)) for n in names},
}))
"""


def test_wheel_ships_kernels(tmp_path: Path) -> None:
    repo_kernels = sorted(p.stem for p in (REPO / "kernels").glob("*.cu"))
    assert repo_kernels, "kernels/ has no .cu file to ship"
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n for n in zf.namelist() if n.endswith(".cu")}
    assert shipped == {f"voxelkit/_kernels/{k}.cu" for k in repo_kernels}, shipped

    venv = tmp_path / "venv"
    res = _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])
    assert res.returncode == 0, res.stderr
    py = venv / "bin" / "python"
    res = _run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], env=_clean_env())
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    res = _run([str(py), "-c", CHECK], cwd=outside, env=_clean_env())
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    purelib = Path(info["purelib"])
    assert Path(info["voxelkit"]).is_relative_to(purelib), info  # not the checkout
    assert Path(info["kernel_dir"]) == purelib / "voxelkit" / "_kernels", info
    assert info["kernels"] == repo_kernels
    for name in repo_kernels:
        assert info["sources"][name] == len((REPO / "kernels" / f"{name}.cu").read_text()), name
