"""The shape every kinetic model shares: configuration at construction, ``fit(tacs, reference, frames)``
returning a :class:`ModelFit` of per-voxel (or per-region) parameter arrays and status codes.

Conventions: frame times in seconds inside :class:`~voxelkit.frames.FrameTiming`; model times, t*, windows
in **minutes**; rate constants (k2', k2, theta3) in **1/min**.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .. import __version__
from ..backend import Backend, chunks, get_backend
from ..frames import INTEGRATION_SCHEMES, FrameTiming, integration_coefficients, integration_matrix
from ..io import InputError, Masker, write_image, write_json
from .status import Status

#: Weighting schemes accepted by every model (or pass an array of per-frame weights).
WEIGHT_SCHEMES = ("none", "duration", "duration_activity")


@dataclass
class Prepared:
    """Per-scan quantities computed once on the host and shared by all voxel chunks."""

    frames: FrameTiming
    used: np.ndarray  #: bool (F,), frames entering the regression
    weights: np.ndarray  #: float64 (F,), zero for unused frames
    reference: np.ndarray  #: float64 (F,), reference TAC
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelFit:
    """Parameters of one model fitted to many TACs (voxels or regions).

    ``params`` maps parameter names (``bp_nd``, ``dvr``, ``r1``, ``k2``, ``k2prime``, ...) to float32 arrays of
    shape (n,); ``status`` holds a :class:`~voxelkit.models.status.Status` code per TAC.  Attribute access works
    for parameters: ``fit.bp_nd``.
    """

    model: str
    params: dict[str, np.ndarray]
    status: np.ndarray
    frames: FrameTiming
    used_frames: np.ndarray
    options: dict[str, Any]
    backend: str
    masker: Masker | None = None
    names: list[str] | None = None
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    model_obj: Any = field(default=None, repr=False)
    inputs: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def __getattr__(self, name: str) -> np.ndarray:
        params = self.__dict__.get("params", {})
        if name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__} of model {self.__dict__.get('model')!r} has no "
                             f"attribute {name!r} (parameters: {', '.join(params)})")

    @property
    def n(self) -> int:
        return int(self.status.shape[0])

    @property
    def n_failed(self) -> int:
        return int((self.status != Status.OK).sum())

    def status_counts(self) -> dict[str, int]:
        codes, counts = np.unique(self.status, return_counts=True)
        return {Status(int(c)).name.lower(): int(k) for c, k in zip(codes, counts, strict=True)}

    def fitted(self, index: int | np.ndarray | slice | str) -> np.ndarray:
        """Model-predicted TAC(s) for the given voxel/region index (or region name), over all frames."""
        if self.model_obj is None or self.inputs is None:
            raise ValueError("this fit holds no inputs; fit with keep_inputs=True")
        if isinstance(index, str):
            if not self.names or index not in self.names:
                raise KeyError(f"no region {index!r}")
            index = self.names.index(index)
        params = {k: np.atleast_1d(v[index]) for k, v in self.params.items()}
        out = self.model_obj.predict(params, self.inputs[1], self.frames)
        return out[0] if np.ndim(index) == 0 and not isinstance(index, slice) else out

    def sidecar(self) -> dict[str, Any]:
        return {
            "Model": self.model,
            "Options": self.options,
            "Parameters": list(self.params),
            "StatusCodes": Status.describe(),
            "StatusCounts": self.status_counts(),
            "FrameTimesStart": self.frames.start.tolist(),
            "FrameDuration": self.frames.duration.tolist(),
            "FramesUsed": np.flatnonzero(self.used_frames).tolist(),
            "Units": {"time": "min", "rate constants": "1/min", "FrameTimesStart": "s", "FrameDuration": "s"},
            "Backend": self.backend,
            "FitSeconds": round(self.seconds, 4),
            "Software": {"voxelkit": __version__, "numpy": np.__version__},
            **({"Info": self.info} if self.info else {}),
        }

    def to_images(self) -> dict[str, Any]:
        """Parameter and status maps as NIfTI images (needs a masker: fits from images have one)."""
        if self.masker is None:
            raise ValueError("this fit has no masker (it was not fitted from images)")
        imgs = {k: self.masker.to_image(v) for k, v in self.params.items()}
        imgs["status"] = self.masker.to_image(self.status, fill=255, dtype=np.uint8)
        return imgs

    def save(self, outdir: str | Path, prefix: str = "", overwrite: bool = False) -> list[Path]:
        """Write ``<prefix><param>.nii.gz`` maps with JSON sidecars and ``<prefix>fit.json``.

        Refuses to overwrite existing files unless ``overwrite``."""
        outdir = Path(outdir)
        imgs = self.to_images()
        targets = {k: outdir / f"{prefix}{k}.nii.gz" for k in imgs}
        if not overwrite:
            existing = [str(p) for p in targets.values() if p.exists()]
            if existing:
                raise FileExistsError(f"output exists (use overwrite): {', '.join(existing)}")
        meta = self.sidecar()
        written = []
        for k, img in imgs.items():
            written.append(write_image(img, targets[k]))
            write_json({**meta, "Description": k}, outdir / f"{prefix}{k}.json")
        written.append(write_json(meta, outdir / f"{prefix}fit.json"))
        return written

    def rows(self) -> list[dict[str, Any]]:
        """One dict per TAC: ``region``, the parameters, ``status``."""
        names = self.names or [str(i) for i in range(self.n)]
        out = []
        for i, name in enumerate(names):
            row: dict[str, Any] = {"region": name}
            row.update({k: float(v[i]) for k, v in self.params.items()})
            row["status"] = Status(int(self.status[i])).name.lower()
            out.append(row)
        return out


def frame_weights(scheme: str | np.ndarray | None, frames: FrameTiming, reference: np.ndarray,
                  half_life_min: float | None = 20.364) -> np.ndarray:
    """Per-frame regression weights (not normalised to a sum).

    ``none``: all ones.  ``duration``: frame duration (min).  ``duration_activity``: duration over
    decay-corrected activity of the reference (a count-based variance model: var ~ C * exp(lambda t) / d).
    An array gives the weights directly (one per frame).
    """
    n = frames.n_frames
    if scheme is None or (isinstance(scheme, str) and scheme == "none"):
        return np.ones(n)
    if isinstance(scheme, str):
        if scheme == "duration":
            return frames.duration_min.copy()
        if scheme == "duration_activity":
            lam = np.log(2) / half_life_min if half_life_min else 0.0
            act = np.clip(np.abs(reference), 1e-12, None) * np.exp(lam * frames.mid_min)
            w = frames.duration_min / act
            return w / w.max()
        raise InputError(f"unknown weighting scheme {scheme!r}: choose one of {', '.join(WEIGHT_SCHEMES)} "
                         "or give one weight per frame")
    w = np.asarray(scheme, dtype=float).reshape(-1)
    if w.size != n:
        raise InputError(f"weights: {w.size} values for {n} frames")
    if not np.isfinite(w).all() or (w < 0).any():
        raise InputError("weights must be finite and non-negative")
    return w


class ReferenceModel:
    """Base class of reference-tissue models.

    Subclasses set ``name``, ``param_names`` and ``n_regressors``, and implement ``_fit_chunk`` (backend
    arrays in, backend arrays out) and optionally ``_prepare`` and ``predict``.
    """

    name: ClassVar[str] = "base"
    param_names: ClassVar[tuple[str, ...]] = ()
    n_regressors: ClassVar[int] = 1

    def __init__(self, *, window: tuple[float | None, float | None] | None = None,
                 weights: str | np.ndarray | None = "none", device: str | Backend | None = None,
                 chunk_voxels: int = 131072, integration: str = "trapezoid") -> None:
        self.window = tuple(window) if window is not None else None
        self.weights = weights
        self.device = device
        self.chunk_voxels = int(chunk_voxels)
        if integration not in INTEGRATION_SCHEMES:
            raise InputError(f"unknown integration {integration!r}: choose one of {', '.join(INTEGRATION_SCHEMES)}")
        self.integration = integration

    # -- configuration -------------------------------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        w = self.weights if isinstance(self.weights, str) or self.weights is None else "user array"
        return {"window_min": list(self.window) if self.window else None, "weights": w,
                "integration": self.integration}

    def used_frames(self, frames: FrameTiming) -> np.ndarray:
        if self.window is None:
            return np.ones(frames.n_frames, dtype=bool)
        return frames.window_mask(*self.window)

    def _prepare(self, reference: np.ndarray, frames: FrameTiming) -> Prepared:
        used = self.used_frames(frames)
        w = frame_weights(self.weights, frames, reference) * used
        return Prepared(frames, used, w, reference)

    # -- fitting ---------------------------------------------------------------------------------------------
    def fit(self, tacs: np.ndarray, reference: np.ndarray, frames: FrameTiming, *,
            names: list[str] | None = None, masker: Masker | None = None,
            keep_inputs: bool = True) -> ModelFit:
        """Fit TACs ``tacs`` (n x F, activity) given the reference TAC (F,) and frame timing."""
        t0 = time.perf_counter()
        be = get_backend(self.device)
        tacs = np.asarray(tacs)
        if tacs.ndim == 1:
            tacs = tacs[None, :]
        if tacs.ndim != 2:
            raise InputError(f"TACs must be (n, frames), got shape {tacs.shape}")
        reference = np.asarray(reference, dtype=float).reshape(-1)
        frames.check_count(tacs.shape[1], "the TAC array")
        frames.check_count(reference.size, "the reference TAC")
        if not np.isfinite(reference).all():
            bad = np.flatnonzero(~np.isfinite(reference))
            raise InputError(f"reference TAC has non-finite values at frames {bad.tolist()}")
        if not (reference > 0).any():
            raise InputError("reference TAC is zero or negative everywhere (empty reference region?)")
        prep = self._prepare(reference, frames)
        if int(prep.used.sum()) < self.n_regressors + 1:
            raise InputError(f"{self.name}: only {int(prep.used.sum())} frames in the fitted range, need at "
                             f"least {self.n_regressors + 1} (check t*/window)")
        n = tacs.shape[0]
        params = {k: np.empty(n, dtype=np.float32) for k in self.param_names}
        status = np.empty(n, dtype=np.uint8)
        for sl in chunks(n, self.chunk_voxels):
            chunk = be.asarray(np.ascontiguousarray(tacs[sl], dtype=np.float32))
            p, st = self._fit_chunk(be, chunk, prep)
            for k in self.param_names:
                params[k][sl] = be.to_host(p[k])
            status[sl] = be.to_host(st)
        fit = ModelFit(self.name, params, status, frames, prep.used, self.options(), be.name,
                       masker=masker, names=names, info=self._info(prep),
                       model_obj=self, inputs=(tacs, reference) if keep_inputs else None)
        fit.seconds = time.perf_counter() - t0
        return fit

    def _info(self, prep: Prepared) -> dict[str, Any]:
        return {}

    def _fit_chunk(self, be: Backend, tacs: Any, prep: Prepared) -> tuple[dict[str, Any], Any]:
        raise NotImplementedError

    def predict(self, params: dict[str, np.ndarray], reference: np.ndarray, frames: FrameTiming) -> np.ndarray:
        raise NotImplementedError(f"{self.name} has no fitted-curve prediction")

    # -- helpers for subclasses -------------------------------------------------------------------------------
    def integration_matrix(self, frames: FrameTiming) -> np.ndarray:
        """Running integral to each frame mid-time (minutes), see :func:`voxelkit.frames.integration_matrix`."""
        return integration_matrix(frames, self.integration)

    def integration_coefficients(self, frames: FrameTiming) -> tuple[np.ndarray, np.ndarray]:
        return integration_coefficients(frames, self.integration)
