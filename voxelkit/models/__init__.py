"""Kinetic models.  ``get_model(name, **options)`` builds one by name."""

from __future__ import annotations

import importlib
from typing import Any

from ..io import InputError
from .base import ModelFit, ReferenceModel
from .status import Status

#: name -> "module:Class"
MODELS: dict[str, str] = {
    "logan": "voxelkit.models.logan:Logan",
    "lpntpet": "voxelkit.models.lpntpet:LpntPET",
    "lpntpet2": "voxelkit.models.lpntpet:LpntPET2",
    "mrtm": "voxelkit.models.mrtm:MRTM",
    "mrtm2": "voxelkit.models.mrtm:MRTM2",
    "ratio": "voxelkit.models.ratio:Ratio",
    "srtm": "voxelkit.models.srtm:SRTM",
    "srtm2": "voxelkit.models.srtm:SRTM2",
}


def get_model(name: str, **options: Any) -> ReferenceModel:
    """A model by name (``logan``, ...) configured with ``options`` (units: minutes, 1/min)."""
    key = name.lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(sorted(MODELS))}")
    mod_name, cls_name = MODELS[key].split(":")
    cls = getattr(importlib.import_module(mod_name), cls_name)
    try:
        return cls(**options)
    except TypeError as exc:
        if "unexpected keyword" not in str(exc):
            raise
        bad = str(exc).split("'")[-2] if "'" in str(exc) else str(exc)
        raise InputError(f"model {key!r} does not take option {bad!r}") from exc


__all__ = ["MODELS", "ModelFit", "ReferenceModel", "Status", "get_model"]
