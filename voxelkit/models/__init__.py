"""Kinetic models.  ``get_model(name, **options)`` builds one by name."""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
from typing import Any

from ..io import InputError
from .base import ModelFit, ReferenceModel
from .status import Status

log = logging.getLogger("voxelkit")

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


#: Option names of sidecars written before this release (unit suffixes) -> the constructor keyword.  Accepted by
#: :func:`get_model` for one release, with a deprecation warning.
LEGACY_OPTION_NAMES: dict[str, str] = {
    "window_min": "window", "tstar_min": "tstar", "end_min": "end", "k2prime_per_min": "k2prime",
    "theta3_range_per_min": "theta3_range", "challenge_window_min": "challenge_window", "td_range_min": "td_range",
    "tp_range_min": "tp_range", "td_step_min": "td_step", "tp_step_min": "tp_step", "min_rise_min": "min_rise",
}

#: Values older sidecars wrote for "the default" (now None, as the constructors take it).
LEGACY_OPTION_VALUES: dict[str, tuple[str, ...]] = {"theta3_range": ("auto",), "p_eff": ("calibrated",)}


def model_class(name: str) -> type[ReferenceModel]:
    """The class of model ``name`` (``logan``, ...; see :data:`MODELS`)."""
    key = name.lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(sorted(MODELS))}")
    mod_name, cls_name = MODELS[key].split(":")
    return getattr(importlib.import_module(mod_name), cls_name)


def model_keywords(cls: type) -> tuple[str, ...]:
    """The keywords a model constructor takes: its own and those it passes on (``**kwargs``) to its bases,
    found by inspecting the ``__init__`` signatures along the class's MRO."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        params = inspect.signature(init).parameters.values()
        for p in params:
            if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in names:
                names.append(p.name)
        if not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
            break
    return tuple(names)


def get_model(name: str, **options: Any) -> ReferenceModel:
    """A model by name (``logan``, ...) configured with ``options`` (units: minutes, 1/min).

    Options are checked against the constructor's keywords (:func:`model_keywords`) before the model is built:
    an unknown one is an :class:`InputError` naming it and the model's options.  A fit's sidecar rebuilds its
    model: ``get_model(side["Model"], **side["Options"])`` (older sidecars' unit-suffixed names such as
    ``tstar_min`` are accepted for one release, with a warning)."""
    cls = model_class(name)
    key = name.lower()
    allowed = model_keywords(cls)
    opts: dict[str, Any] = {}
    for k, v in options.items():
        if k not in allowed and k in LEGACY_OPTION_NAMES and LEGACY_OPTION_NAMES[k] in allowed:
            log.warning("DEPRECATED: model option %r (an older sidecar's name) is now %r", k, LEGACY_OPTION_NAMES[k])
            k = LEGACY_OPTION_NAMES[k]
        if isinstance(v, str) and v in LEGACY_OPTION_VALUES.get(k, ()):  # older sidecars' words for a default
            v = None
        if k not in allowed:
            close = difflib.get_close_matches(k, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(f"model {key!r} does not take option {k!r}{hint}; its options: {', '.join(allowed)}")
        opts[k] = v
    return cls(**opts)


__all__ = ["LEGACY_OPTION_NAMES", "MODELS", "ModelFit", "ReferenceModel", "Status", "get_model", "model_class",
           "model_keywords"]
