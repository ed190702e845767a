"""The shape every kinetic model shares: configuration at construction, ``fit(tacs, reference, frames)``
returning a :class:`ModelFit` of per-voxel (or per-region) parameter arrays and status codes.

Conventions: frame times in seconds inside :class:`~voxelkit.frames.FrameTiming`; model times, t*, windows
in **minutes**; rate constants (k2', k2, theta3) in **1/min**.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .. import __version__
from ..backend import Backend, chunks, get_backend
from ..constants import C11_HALF_LIFE_MIN as _C11_HALF_LIFE_MIN
from ..frames import INTEGRATION_SCHEMES, FrameTiming, integration_coefficients, integration_matrix
from ..io import InputError, Masker
from ..io.derivatives import STATUS_MAP, fit_map_names, fit_outputs
from .status import Status

log = logging.getLogger("voxelkit")

#: Share of failed TACs (status != ok) above which a fit is flagged by :meth:`ModelFit.qc` (and warned about).
QC_MAX_FAILED_SHARE = 0.5

#: The likely cause of each failure status, for the QC message (option names as on the command line).
LIKELY_CAUSE: dict[int, str] = {
    int(Status.TOO_FEW_FRAMES): "too few frames in the fitted range: check --window / --tstar / --end",
    int(Status.SINGULAR): "flat, zero or collinear TACs: voxels outside the brain (give --mask) or too few "
                          "frames in the fitted range (check --window)",
    int(Status.NONFINITE_INPUT): "NaN/inf in the TACs: check the image and the brain mask (--mask)",
    int(Status.NONPOSITIVE): "zero or negative activity in fitted frames: t* too early (Logan includes frames "
                             "before the tracer arrives: raise --tstar) or voxels outside the brain (give --mask)",
    int(Status.GRID_EDGE): "best basis function at the edge of the theta3 grid: widen --theta3-range / raise "
                           "--bp-max, and check that frame times are seconds",
    int(Status.IMPLAUSIBLE): "implausible parameters (negative k2, R1 or BPND < -1): noisy TACs, a wrong "
                             "reference region or a wrong frame schedule",
}

#: Weighting schemes accepted by every model (or pass an array of per-frame weights).  Activity-based schemes
#: use the reference TAC (a large, low-noise region, as kinfitr advises) and are scaled to a maximum of 1.
#: kinfitr ``weights_create`` method numbers in brackets:
#:
#: - ``none``: all frames weigh 1.
#: - ``duration``: frame duration [7].
#: - ``sqrt_duration``: square root of the duration [4].
#: - ``duration_activity``: duration over decay-corrected activity [6].
#: - ``duration_uncorrected_activity``: duration over decay-uncorrected activity [1].
#: - ``sqrt_duration_uncorrected_activity``: sqrt(duration x decay-uncorrected activity) [2, kinfitr's default].
#: - ``counts``: the Poisson inverse variance of decay-corrected frame values,
#:   duration x decay factor / decay-corrected activity (var(C) ~ C / (duration x decay factor)).
WEIGHT_SCHEMES = ("none", "duration", "sqrt_duration", "duration_activity", "duration_uncorrected_activity",
                  "sqrt_duration_uncorrected_activity", "counts")

#: Running-integral rules accepted by the models: those of :data:`voxelkit.frames.INTEGRATION_SCHEMES` plus
#: ``frame_average`` (see :func:`model_integration`).
MODEL_INTEGRATION_SCHEMES = (*INTEGRATION_SCHEMES, "frame_average")

#: Half-life of carbon-11, minutes (the default for decay handling in activity-based weights); the one definition
#: is :data:`voxelkit.constants.C11_HALF_LIFE_MIN`, which the simulator uses too.
C11_HALF_LIFE_MIN = _C11_HALF_LIFE_MIN


def option_units(options: dict[str, Any]) -> dict[str, str]:
    """Units of the options in ``options`` (from :mod:`voxelkit.models.options`): minutes, 1/min, fraction."""
    from .options import SPECS  # noqa: PLC0415

    units = {"half_life_min": "min", "min_rise": "min"}
    return {k: (SPECS[k].unit if k in SPECS else units[k]) for k in options
            if (k in SPECS and SPECS[k].unit) or k in units}


@dataclass
class Prepared:
    """Per-scan quantities computed once on the host and shared by all voxel chunks."""

    frames: FrameTiming
    used: np.ndarray  #: bool (F,), frames entering the regression
    weights: np.ndarray  #: float64 (F,), zero for unused frames
    reference: np.ndarray  #: float64 (F,), reference TAC
    extra: dict[str, Any] = field(default_factory=dict)
    #: per-scan constants already on a backend's device: (backend id, name) -> {key: device array}
    device_cache: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict, repr=False)

    def on_device(self, be: Backend, name: str, build: Any) -> dict[str, Any]:
        """Per-scan constants on ``be``: ``build()`` (a dict of host arrays of the exact dtypes the kernels take)
        uploaded **once per scan and backend**, not once per voxel chunk; later calls return the same arrays."""
        key = (id(be), name)
        if key not in self.device_cache:
            self.device_cache[key] = {k: be.asarray(np.ascontiguousarray(v)) for k, v in build().items()}
        return self.device_cache[key]


def status_qc(counts: dict[str, int], *, model: str = "", kept: tuple[int, ...] = (),
              causes: dict[int, str] | None = None, what: str = "voxels",
              max_failed_share: float = QC_MAX_FAILED_SHARE) -> dict[str, Any]:
    """The one QC rule, from status counts (status name -> count, as :meth:`ModelFit.status_counts`): a TAC failed
    when its status is neither ``ok`` nor one of ``kept`` (codes whose values the model keeps); ``flagged`` when
    the failed share exceeds ``max_failed_share``; ``main_cause`` the commonest failed status and ``likely_cause``
    its cause (``causes`` override :data:`LIKELY_CAUSE`).  Used by :meth:`ModelFit.qc` and, for fits reused from
    their records, by the study pipeline."""
    usable = {"ok", *(Status(int(k)).name.lower() for k in kept)}
    n = int(sum(counts.values()))
    failed = {k: int(v) for k, v in counts.items() if k not in usable and v}
    n_failed = int(sum(failed.values()))
    share = n_failed / n if n else 1.0
    main_name = max(failed, key=lambda k: (failed[k], -int(Status[k.upper()]))) if failed else None
    table = {**LIKELY_CAUSE, **(causes or {})}
    cause = table.get(int(Status[main_name.upper()]), "") if main_name is not None else ""
    flagged = bool(share > max_failed_share)
    if flagged:
        msg = (f"{model}: {n_failed} of {n} {what} failed ({100 * share:.1f} %, mostly {main_name}): "
               f"likely cause: {cause}")
    else:
        msg = f"{model}: {n - n_failed} of {n} {what} fitted ok ({100 * (1 - share):.1f} %)"
    return {"n": n, "n_ok": n - n_failed, "n_failed": n_failed, "share": share, "flagged": flagged,
            "max_failed_share": max_failed_share, "main_cause": main_name, "likely_cause": cause or None,
            "status_counts": dict(counts), "message": msg}


@dataclass
class ModelFit:
    """Parameters of one model fitted to many TACs (voxels or regions).

    ``params`` maps parameter names (``bp_nd``, ``dvr``, ``r1``, ``k2``, ``k2prime``, ...) to float32 arrays of
    shape (n,); ``status`` holds a :class:`~voxelkit.models.status.Status` code per TAC.  Every parameter is also
    an attribute (``fit.bp_nd`` is ``fit.params["bp_nd"]``) and is listed by ``dir(fit)``; a name that is not a
    parameter raises :class:`AttributeError` naming the parameters (and the closest one).  ``fit.map(name)`` is
    the parameter (or ``"status"``) as a 3-D image in the PET's space (fits from images).
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
        import difflib  # noqa: PLC0415

        close = difflib.get_close_matches(name, list(params), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise AttributeError(f"{type(self).__name__} of model {self.__dict__.get('model')!r} has no "
                             f"attribute {name!r} (parameters: {', '.join(params)}{hint})")

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self.__dict__.get("params", {})})

    def map(self, name: str) -> Any:
        """Parameter ``name`` (or ``"status"``) as a 3-D nibabel image in the PET's space (voxels outside the
        brain mask: NaN; status outside: 255).  Needs a fit from images (it has a masker)."""
        if self.masker is None:
            raise ValueError("this fit has no masker (it was not fitted from images): use fit.params[name]")
        if name == STATUS_MAP:
            return self.masker.to_image(self.status, fill=255, dtype=np.uint8)
        if name not in self.params:
            raise KeyError(f"no parameter {name!r} in this {self.model} fit (parameters: {', '.join(self.params)}, "
                           "status)")
        return self.masker.to_image(self.params[name])

    @property
    def n(self) -> int:
        return int(self.status.shape[0])

    @property
    def n_failed(self) -> int:
        return int((self.status != Status.OK).sum())

    def status_counts(self) -> dict[str, int]:
        counts = np.bincount(np.asarray(self.status, dtype=np.uint8).ravel(), minlength=1)  # O(n), no sort
        return {Status(int(c)).name.lower(): int(counts[c]) for c in np.flatnonzero(counts)}

    def qc(self, max_failed_share: float = QC_MAX_FAILED_SHARE) -> dict[str, Any]:
        """QC summary of the fit (:func:`status_qc` of its status counts): ``n`` TACs, ``n_ok``, ``n_failed``
        (status neither ok nor one the model keeps, any cause), ``share`` (n_failed / n), ``flagged`` (share >
        ``max_failed_share``: most TACs failed, the scan should not enter a group analysis unchecked),
        ``main_cause`` (the commonest failure status, or None), ``likely_cause`` and a one-line ``message``."""
        return status_qc(self.status_counts(), model=self.model, kept=self.kept_statuses,
                         causes=getattr(self.model_obj, "likely_causes", {}), what=self._what(),
                         max_failed_share=max_failed_share)

    @property
    def kept_statuses(self) -> tuple[int, ...]:
        """Statuses besides ``ok`` whose values are usable (from the model class; e.g. lp-ntPET ``grid_edge``)."""
        return tuple(getattr(self.model_obj, "kept_statuses", ()))

    def _what(self) -> str:
        return "voxels" if self.masker is not None else "TACs"

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
            "QC": self.qc(),
            "FrameTimesStart": self.frames.start.tolist(),
            "FrameDuration": self.frames.duration.tolist(),
            "FrameTimesFrom": "injection",
            "InjectionOffset": float(self.frames.injection_offset_s),
            "FramesUsed": np.flatnonzero(self.used_frames).tolist(),
            "Units": {"time": "min", "rate constants": "1/min", "FrameTimesStart": "s", "FrameDuration": "s",
                      "InjectionOffset": "s", **option_units(self.options)},
            "Backend": self.backend,
            "FitSeconds": round(self.seconds, 4),
            "Software": {"voxelkit": __version__, "numpy": np.__version__},
            **({"Info": self.info} if self.info else {}),
        }

    def to_images(self) -> dict[str, Any]:
        """Parameter and status maps as NIfTI images (needs a masker: fits from images have one)."""
        if self.masker is None:
            raise ValueError("this fit has no masker (it was not fitted from images)")
        return {k: self.map(k) for k in fit_map_names(self.params)}

    def planned_outputs(self, prefix: str = "") -> list[str]:
        """File names :meth:`save` writes: a map and a JSON per parameter and for ``status``, and ``fit.json``."""
        return fit_outputs(self.params, prefix)

    def save(self, outdir: str | Path, prefix: str = "", overwrite: bool = False,
             inputs: Iterable[str | Path | None] = ()) -> list[Path]:
        """Write the maps, their sidecars, ``<prefix>fit.json`` and the folder's manifest: a convenience for
        :func:`voxelkit.io.writers.write_fit` (see there: a non-empty ``outdir`` is refused unless ``overwrite``,
        an input is never removed or overwritten).  The fit itself does no I/O."""
        from ..io.writers import write_fit  # noqa: PLC0415 - the writers live in the I/O layer

        return write_fit(self, outdir, prefix=prefix, overwrite=overwrite, inputs=inputs)

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


def model_integration(frames: FrameTiming, scheme: str = "trapezoid") -> tuple[np.ndarray, ...]:
    """Coefficients of a running integral ``I`` of frame values ``C`` (minutes): a causal recurrence
    ``R[i] = R[i-1] + a[i] C[i-1] + b[i] C[i]`` (``R[0] = b[0] C[0]``) plus a local term,
    ``I[i] = R[i] + cm[i] C[i-1] + c0[i] C[i] + cp[i] C[i+1]``.  Returns ``(a, b, cm, c0, cp)``.

    ``trapezoid``, ``trapezoid_first_mid``, ``frames``: see :func:`voxelkit.frames.integration_coefficients`
    (no local term).  ``frame_average``: the **frame average** of the running integral, which is what the
    operational equations of MRTM/MRTM2 need when ``C`` are frame averages: earlier frames contribute exactly
    ``duration x value`` (gaps count as zero), the frame itself ``d C / 2 - s d^2 / 12`` where ``s`` is the
    curve's slope in the frame (central difference of the neighbouring frame values over their mid-times,
    one-sided at the ends).  Exact for curves that are linear within each frame; it removes most of the
    discretisation bias of the trapezoid rule on uneven schedules (see the MRTM truth tests).
    """
    n = frames.n_frames
    cm, c0, cp = np.zeros(n), np.zeros(n), np.zeros(n)
    if scheme != "frame_average":
        a, b = integration_coefficients(frames, scheme)
        return a, b, cm, c0, cp
    a, b = integration_coefficients(frames, "frames")
    if n > 1:
        d, mid = frames.duration_min, frames.mid_min
        lo = np.maximum(np.arange(n) - 1, 0)
        hi = np.minimum(np.arange(n) + 1, n - 1)
        k = d * d / 12.0 / (mid[hi] - mid[lo])
        for arr, idx, sign in ((cp, hi, -1.0), (cm, lo, 1.0)):
            inner = idx != np.arange(n)
            arr[inner] += sign * k[inner]
        c0[0] += k[0]
        c0[-1] -= k[-1]
    return a, b, cm, c0, cp


def model_integration_matrix(frames: FrameTiming, scheme: str = "trapezoid") -> np.ndarray:
    """Matrix ``M`` (F x F, minutes) with ``M @ C`` the running integral of :func:`model_integration`."""
    if scheme != "frame_average":
        return integration_matrix(frames, scheme)
    m = integration_matrix(frames, "frames")
    _, _, cm, c0, cp = model_integration(frames, scheme)
    n = frames.n_frames
    idx = np.arange(n)
    m[idx, idx] += c0
    m[idx[1:], idx[:-1]] += cm[1:]
    m[idx[:-1], idx[1:]] += cp[:-1]
    return m


def needed_frames(used: np.ndarray, scheme: str) -> int:
    """Number of leading frames a fit reads: up to the last used frame (and one more for ``frame_average``,
    whose local slope term looks one frame ahead)."""
    last = int(np.flatnonzero(used)[-1]) if used.any() else 0
    return min(used.size, last + (2 if scheme == "frame_average" else 1))


def decay_factor(frames: FrameTiming, half_life_min: float | None) -> np.ndarray:
    """Frame-average decay factor relative to injection (<= 1; 1 when ``half_life_min`` is None or 0):
    decay-uncorrected activity = decay-corrected activity x this factor.  Exact integral of exp(-lambda t)
    over each frame (kinfitr's ``decay_uncorrect``).  ``half_life_min`` in minutes."""
    if not half_life_min:
        return np.ones(frames.n_frames)
    lam = np.log(2.0) / float(half_life_min)
    d = frames.duration_min
    return np.exp(-lam * frames.start_min) * (-np.expm1(-lam * d)) / (lam * d)


def frame_weights(scheme: str | np.ndarray | None, frames: FrameTiming, reference: np.ndarray,
                  half_life_min: float | None = C11_HALF_LIFE_MIN) -> np.ndarray:
    """Per-frame regression weights (inverse variances up to a common factor), scaled to a maximum of 1.

    ``scheme``: one of :data:`WEIGHT_SCHEMES` (see there; kinfitr's ``weights_create`` methods without its
    minimum-weight rescaling), None (= ``none``), or an array with one non-negative weight per frame (used
    as given).  Activity-based schemes use ``reference`` (decay-corrected activity, any unit) clipped below
    at 1% of its maximum, as kinfitr does; decay-uncorrected activity uses ``half_life_min`` (minutes).
    """
    n = frames.n_frames
    if scheme is None or (isinstance(scheme, str) and scheme == "none"):
        return np.ones(n)
    if isinstance(scheme, str):
        if scheme not in WEIGHT_SCHEMES:
            raise InputError(f"unknown weighting scheme {scheme!r}: choose one of {', '.join(WEIGHT_SCHEMES)} "
                             "or give one weight per frame")
        d = frames.duration_min
        act = np.clip(np.asarray(reference, dtype=float), 0.0, None)
        peak = float(act.max()) if act.size else 0.0
        act = np.maximum(act, 0.01 * peak) if peak > 0 else np.ones(n)
        decay = decay_factor(frames, half_life_min)
        if scheme == "duration":
            w = d.copy()
        elif scheme == "sqrt_duration":
            w = np.sqrt(d)
        elif scheme == "duration_activity":
            w = d / act
        elif scheme == "duration_uncorrected_activity":
            w = d / (act * decay)
        elif scheme == "sqrt_duration_uncorrected_activity":
            w = np.sqrt(d * act * decay)
        else:  # counts
            w = d * decay / act
        return w / w.max()
    w = np.asarray(scheme, dtype=float).reshape(-1)
    if w.size != n:
        raise InputError(f"weights: {w.size} values for {n} frames")
    if not np.isfinite(w).all() or (w < 0).any():
        raise InputError("weights must be finite and non-negative")
    if not (w > 0).any():
        raise InputError("weights are all zero")
    return w


def parse_k2prime(value: Any, *, allow_median: bool = False) -> float | str | None:
    """A k2' option (1/min) as given from Python or the command line: None, a positive number, a numeric string,
    or (with ``allow_median``) ``"median"``, returned as ``"median"``."""
    if value is None:
        return None
    if isinstance(value, str):
        if allow_median and value.lower() == "median":
            return "median"
        try:
            value = float(value)
        except ValueError:
            alt = " or 'median'" if allow_median else ""
            raise InputError(f"k2prime must be a rate in 1/min{alt}, got {value!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise InputError(f"k2prime must be a positive rate in 1/min, got {value}")
    return float(value)


def running_integrals(xp: Any, ct: Any, coefs: tuple[np.ndarray, ...]) -> Iterator[tuple[int, Any]]:
    """Yield ``(j, I_j)`` for every frame of a block ``ct`` (frames x voxels, float64): ``I_j`` (voxels,) is each
    voxel's running integral at frame j (minutes x activity), by the recurrence of :func:`model_integration`
    and ``kernels/*.cu`` (same order of operations).  ``I_j`` is a buffer reused for the next frame."""
    a, b, cm, c0, cp = coefs
    n_needed, n = ct.shape
    local = bool(np.any(cm[:n_needed]) or np.any(c0[:n_needed]) or np.any(cp[:n_needed]))
    run = xp.zeros(n, dtype=xp.float64)
    t = xp.empty(n, dtype=xp.float64)
    integ = xp.empty(n, dtype=xp.float64) if local else run
    for j in range(n_needed):
        cj = ct[j]
        if j > 0 and a[j] != 0.0:
            xp.multiply(ct[j - 1], a[j], out=t)
            run += t
        if b[j] != 0.0:
            xp.multiply(cj, b[j], out=t)
            run += t
        if local:
            xp.multiply(cj, c0[j], out=integ)
            integ += run
            if j > 0 and cm[j] != 0.0:
                xp.multiply(ct[j - 1], cm[j], out=t)
                integ += t
            if j + 1 < n_needed and cp[j] != 0.0:
                xp.multiply(ct[j + 1], cp[j], out=t)
                integ += t
        yield j, integ


def check_window(window: Any, what: str = "window") -> tuple[float | None, float | None] | None:
    """A ``(start, end)`` window in minutes (either may be None = open), checked; None stays None."""
    if window is None:
        return None
    try:
        win = tuple(None if v is None else float(v) for v in window)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be (start, end) in minutes, got {window!r}") from None
    if len(win) != 2:
        raise InputError(f"{what} must be (start, end) in minutes, got {window}")
    if win[0] is not None and win[1] is not None and not win[0] < win[1]:
        raise InputError(f"{what} start {win[0]} min must be before its end {win[1]} min")
    return win  # type: ignore[return-value]


class ReferenceModel:
    """Base class of reference-tissue models.

    Subclasses set ``name``, ``param_names`` and ``n_regressors``, and implement ``_fit_chunk`` (backend
    arrays in, backend arrays out) and optionally ``_prepare``, ``_prepare_tacs`` and ``predict``.

    Shared options
    --------------
    window : ``(start, end)`` minutes (either may be None = open): only frames whose **mid-time** lies in
        ``[start, end)`` enter the regression (:meth:`~voxelkit.frames.FrameTiming.window_mask`; the frames
        used are logged, a frame crossing a bound is warned about).  Running integrals always start at
        injection and use **all** frames up to each frame (not only the window's), so a window that does not
        start at 0 is valid for every integral-based model (Logan, MRTM, MRTM2): the operational equations
        hold at every time, and the window only selects which times are fitted.  This is what a
        bolus-plus-infusion study with a baseline and a challenge phase needs (fit each phase separately);
        note that a BPND change inside the scan violates the model's assumptions for the frames after it.
    weights : a scheme of :data:`WEIGHT_SCHEMES`, None (= ``none``) or one weight per frame.  Frames outside
        the window get weight 0.
    half_life_min : radionuclide half-life (minutes) for the decay-uncorrected weighting schemes
        (default carbon-11, 20.364 min; fluorine-18 is 109.77 min).
    device : ``auto``, ``cpu``, ``gpu`` or a :class:`~voxelkit.backend.Backend`.
    chunk_voxels : voxels per chunk sent to the backend (bounds memory).
    integration : running-integral rule (:data:`MODEL_INTEGRATION_SCHEMES`, see :func:`model_integration`).
    """

    name: ClassVar[str] = "base"
    param_names: ClassVar[tuple[str, ...]] = ()
    #: Statuses besides ``ok`` whose values are kept and usable (not failures), e.g. lp-ntPET's ``grid_edge``.
    kept_statuses: ClassVar[tuple[int, ...]] = ()
    #: Model-specific likely causes of a status (override :data:`LIKELY_CAUSE` in the QC message).
    likely_causes: ClassVar[dict[int, str]] = {}
    n_regressors: ClassVar[int] = 1

    def __init__(self, *, window: tuple[float | None, float | None] | None = None,
                 weights: str | np.ndarray | None = "none", device: str | Backend | None = None,
                 chunk_voxels: int = 131072, integration: str = "trapezoid",
                 half_life_min: float | None = C11_HALF_LIFE_MIN) -> None:
        self.window = check_window(window, "window")
        if isinstance(weights, str) and weights not in WEIGHT_SCHEMES:
            raise InputError(f"unknown weighting scheme {weights!r}: choose one of {', '.join(WEIGHT_SCHEMES)} "
                             "or give one weight per frame")
        self.weights = weights
        self.device = device
        self.chunk_voxels = int(chunk_voxels)
        if integration not in MODEL_INTEGRATION_SCHEMES:
            raise InputError(f"unknown integration {integration!r}: choose one of "
                             f"{', '.join(MODEL_INTEGRATION_SCHEMES)}")
        self.integration = integration
        if half_life_min is not None and not (np.isfinite(half_life_min) and half_life_min > 0):
            raise InputError(f"half_life_min must be a positive number of minutes, got {half_life_min}")
        self.half_life_min = half_life_min

    # -- configuration -------------------------------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        """The model's configuration as **constructor keywords** (JSON values; units in :func:`option_units`), so
        that ``get_model(name, **fit.sidecar()["Options"])`` rebuilds an equal model.  Execution settings
        (``device``, ``chunk_voxels``) are left out."""
        w = self.weights if isinstance(self.weights, str) or self.weights is None else \
            [float(x) for x in np.asarray(self.weights, dtype=float).reshape(-1)]
        return {"window": list(self.window) if self.window else None, "weights": w,
                "integration": self.integration, "half_life_min": self.half_life_min}

    def fit_options(self, prep: Prepared) -> dict[str, Any]:
        """:meth:`options` as the sidecar records them after a fit: a k2' that came from a high-binding region
        (``k2prime`` None in :meth:`options`) becomes the value used (1/min; its source is in ``Info``), so the
        sidecar rebuilds a model that reproduces the fit."""
        out = self.options()
        used = prep.extra.get("k2prime_used", prep.extra.get("k2prime"))
        if "k2prime" in out and out["k2prime"] is None and used is not None:
            out["k2prime"] = float(used)
            out.pop("k2prime_window", None)
        return out

    #: Inner models (the k2' pass of MRTM2/SRTM2) set this: no window log, no QC warning.
    quiet: bool = False

    def used_frames(self, frames: FrameTiming) -> np.ndarray:
        if self.window is None:
            return np.ones(frames.n_frames, dtype=bool)
        return frames.window_mask(*self.window)

    def _log_window(self, frames: FrameTiming) -> None:
        if self.window is not None and not self.quiet:
            frames.describe_window(*self.window, what=f"{self.name} window")

    def _prepare(self, reference: np.ndarray, frames: FrameTiming) -> Prepared:
        used = self.used_frames(frames)
        w = frame_weights(self.weights, frames, reference, self.half_life_min) * used
        return Prepared(frames, used, w, reference)

    def _prepare_tacs(self, tacs: np.ndarray, prep: Prepared, names: list[str] | None) -> None:
        """Hook called once with all TACs (host, n x F) before the chunked fit (e.g. to estimate a shared
        k2' from the data).  Default: nothing."""

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
        self._log_window(frames)
        prep = self._prepare(reference, frames)
        if int(prep.used.sum()) < self.n_regressors + 1:
            raise InputError(f"{self.name}: only {int(prep.used.sum())} frames in the fitted range, need at "
                             f"least {self.n_regressors + 1} (check t*/window)")
        self._prepare_tacs(tacs, prep, names)
        n = tacs.shape[0]
        params = {k: np.empty(n, dtype=np.float32) for k in self.param_names}
        status = np.empty(n, dtype=np.uint8)
        for sl in chunks(n, self.chunk_voxels):
            chunk = be.asarray(np.ascontiguousarray(tacs[sl], dtype=np.float32))
            p, st = self._fit_chunk(be, chunk, prep)
            for k in self.param_names:
                params[k][sl] = be.to_host(p[k])
            status[sl] = be.to_host(st)
        fit = ModelFit(self.name, params, status, frames, prep.used, self.fit_options(prep), be.name,
                       masker=masker, names=names, info=self._info(prep),
                       model_obj=self, inputs=(tacs, reference) if keep_inputs else None)
        fit.seconds = time.perf_counter() - t0
        if not self.quiet:
            qc = fit.qc()
            if qc["flagged"]:
                log.warning("WARNING: %s", qc["message"])
        return fit

    def _info(self, prep: Prepared) -> dict[str, Any]:
        return {}

    def _fit_chunk(self, be: Backend, tacs: Any, prep: Prepared) -> tuple[dict[str, Any], Any]:
        raise NotImplementedError

    def predict(self, params: dict[str, np.ndarray], reference: np.ndarray, frames: FrameTiming) -> np.ndarray:
        raise NotImplementedError(f"{self.name} has no fitted-curve prediction")

    # -- helpers for subclasses -------------------------------------------------------------------------------
    def integration_matrix(self, frames: FrameTiming) -> np.ndarray:
        """Running-integral matrix (minutes) of this model's rule, see :func:`model_integration_matrix`."""
        return model_integration_matrix(frames, self.integration)

    def integration_coefficients(self, frames: FrameTiming) -> tuple[np.ndarray, np.ndarray]:
        """Recurrence coefficients ``a``, ``b`` of the causal part (see :func:`model_integration`)."""
        return model_integration(frames, self.integration)[:2]

    def integration_local(self, frames: FrameTiming) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Local-term coefficients ``cm``, ``c0``, ``cp`` (zero except for ``frame_average``)."""
        return model_integration(frames, self.integration)[2:]
