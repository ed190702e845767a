"""``voxelkit info``: versions, and which backend ``auto`` picks and why."""

from __future__ import annotations

import argparse
import platform


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("info", parents=[parent], help="versions, backend choice, GPU name and memory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    from .. import __version__  # noqa: PLC0415
    from ..backend import get_backend, kernel_dir, probe_gpu  # noqa: PLC0415

    print(f"voxelkit {__version__}")
    print(f"python {platform.python_version()} ({platform.machine()}, {platform.system()})")
    for pkg in ("numpy", "scipy", "nibabel", "nilearn", "connected-components-3d", "numba", "cupy-cuda12x",
                "cupy-cuda13x", "cupy", "nvidia-cuda-nvrtc-cu12", "nvidia-cuda-nvrtc"):
        try:
            print(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            if not pkg.startswith(("cupy", "nvidia")):
                print(f"{pkg} not installed")
    probe = probe_gpu()
    try:
        print(f"kernels: {kernel_dir()}")
    except FileNotFoundError as exc:
        print(f"kernels: {exc}")
    if probe.available:
        mem = f"{probe.total_memory / 2**30:.1f} GiB total, {probe.free_memory / 2**30:.1f} GiB free"
        print(f"GPU: {probe.name} ({mem})")
    else:
        print(f"GPU: none usable ({probe.reason})")
    requested = args.device or None
    backend = get_backend(requested if requested != "gpu" or probe.available else "auto")
    print(f"backend (device={requested or 'auto'}): {backend.name}: {backend.reason}")
    return 0
