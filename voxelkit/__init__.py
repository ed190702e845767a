"""voxelkit: voxelwise PET kinetic modelling and permutation statistics on NumPy or CuPy."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "fit", "fit_tacs", "get_backend"]


def __getattr__(name: str):
    # Lazy attributes keep ``import voxelkit`` (and the CLI start-up) cheap.
    if name in ("fit", "fit_tacs"):
        from . import api

        return getattr(api, name)
    if name == "get_backend":
        from .backend import get_backend

        return get_backend
    raise AttributeError(f"module 'voxelkit' has no attribute {name!r}")
