"""Non-invasive (reference-tissue) Logan graphical analysis (Logan et al. 1996, J Cereb Blood Flow Metab).

For frames from t* on, the Logan plot is linear::

    int_0^t Ct / Ct(t) = DVR * (int_0^t Cr + Cr(t) / k2') / Ct(t) + b

BPND = DVR - 1.  With no k2' the ``Cr/k2'`` term is dropped (Logan's approximation for large k2').
Outputs ``bp_nd``, ``dvr``, ``intercept`` (minutes) and ``wrss``: the weighted residual sum of squares of the
Logan-plot regression itself, ``sum w (y - DVR x - b)^2`` in minutes^2 (not a residual of the TACs: the plot
has no fitted TAC, so Logan has no ``predict``).

Time window: the integrals always start at injection and use all frames (the window and t* only choose the
regression frames), so ``window``/``tstar``/``end`` are all valid together; the fitted frames are those that
start at or after ``max(t*, window start)`` and end by ``min(end, window end)``.
Integrals run to each frame's mid-time; ``integration`` chooses the rule (see
:func:`voxelkit.frames.integration_coefficients`): ``trapezoid`` on mid-times with a point (0, 0) at
injection (default; kinfitr's ``refLogan``), ``trapezoid_first_mid`` (TPCCLIB's ``logan``), or ``frames``
(activity held over each frame; kinfitr's ``refLogan(dur=...)``).  Times in minutes, k2' in 1/min.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import Backend
from ..frames import FrameTiming
from ..io import InputError
from .base import Prepared, ReferenceModel, needed_frames
from .status import Status


class Logan(ReferenceModel):
    """Reference Logan plot.

    Parameters
    ----------
    tstar : minutes; frames starting at or after t* enter the regression (default 0: all frames).
    k2prime : reference-region efflux rate, 1/min (None: drop the ``Cr/k2'`` term).
    end : minutes; frames ending after it are not used (None: to the end of the scan).
    window, weights, device, chunk_voxels, integration : see :class:`ReferenceModel`.
    """

    name = "logan"
    param_names = ("bp_nd", "dvr", "intercept", "wrss")
    n_regressors = 2

    def __init__(self, *, tstar: float = 0.0, k2prime: float | None = None, end: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(k2prime, str):
            try:
                k2prime = float(k2prime)
            except ValueError:
                raise InputError(f"logan: k2prime must be a rate in 1/min, got {k2prime!r}") from None
        if k2prime is not None and not (np.isfinite(k2prime) and k2prime > 0):
            raise InputError(f"k2prime must be a positive rate in 1/min, got {k2prime}")
        self.tstar = float(tstar or 0.0)
        self.k2prime = None if k2prime is None else float(k2prime)
        self.end = end

    def options(self) -> dict[str, Any]:
        return {**super().options(), "tstar_min": self.tstar, "k2prime_per_min": self.k2prime,
                "end_min": self.end}

    def used_frames(self, frames: FrameTiming) -> np.ndarray:
        used = super().used_frames(frames)
        used &= frames.start_min >= self.tstar - 1e-9
        if self.end is not None:
            used &= frames.end_min <= self.end + 1e-9
        return used

    def _prepare(self, reference: np.ndarray, frames: FrameTiming) -> Prepared:
        prep = super()._prepare(reference, frames)
        m = self.integration_matrix(frames)
        ref_term = m @ reference
        if self.k2prime is not None:
            ref_term = ref_term + reference / self.k2prime
        prep.extra.update(integ=m, ref_term=ref_term, n_needed=needed_frames(prep.used, self.integration))
        return prep

    def _fit_chunk(self, be: Backend, tacs: Any, prep: Prepared) -> tuple[dict[str, Any], Any]:
        if be.is_gpu:
            return self._fit_chunk_kernel(be, tacs, prep)
        return logan_xp(be.xp, tacs, prep)

    def _fit_chunk_kernel(self, be: Backend, tacs: Any, prep: Prepared) -> tuple[dict[str, Any], Any]:
        xp = be.xp
        n, f = tacs.shape
        ca, cb = self.integration_coefficients(prep.frames)
        ca, cb = be.asarray(ca, dtype=np.float64), be.asarray(cb, dtype=np.float64)
        cm, c0, cp = (be.asarray(v, dtype=np.float64) for v in self.integration_local(prep.frames))
        ref_term = be.asarray(prep.extra["ref_term"], dtype=np.float64)
        w = be.asarray(prep.weights, dtype=np.float64)
        used = be.asarray(prep.used.astype(np.uint8))
        out = {k: xp.empty(n, dtype=np.float32) for k in self.param_names}
        status = xp.empty(n, dtype=np.uint8)
        kern = be.kernel("logan", "logan_fit")
        be.launch(kern, n, (tacs, ca, cb, cm, c0, cp, ref_term, w, used, np.int32(n), np.int32(f),
                            np.int32(prep.extra["n_needed"]), out["bp_nd"], out["dvr"], out["intercept"], out["wrss"],
                            status))
        return out, status


def weighted_line(xp: Any, x: Any, y: Any, w: Any, with_rss: bool = False) -> tuple[Any, ...]:
    """Per-row weighted least-squares line ``y = slope * x + intercept``.

    ``x``, ``y`` (n, m); ``w`` (m,) or (n, m).  Returns slope, intercept and the flag ``ok`` (determinant not
    negligible), plus the weighted residual sum of squares if ``with_rss``."""
    sw = xp.sum(w * xp.ones_like(x), axis=1)
    sx = xp.sum(w * x, axis=1)
    sy = xp.sum(w * y, axis=1)
    sxx = xp.sum(w * x * x, axis=1)
    sxy = xp.sum(w * x * y, axis=1)
    det = sw * sxx - sx * sx
    scale = sw * sxx
    ok = xp.abs(det) > 1e-12 * xp.where(scale > 0, scale, 1.0)
    safe = xp.where(ok, det, 1.0)
    slope = (sw * sxy - sx * sy) / safe
    intercept = (sxx * sy - sx * sxy) / safe
    if not with_rss:
        return slope, intercept, ok
    syy = xp.sum(w * y * y, axis=1)
    rss = xp.maximum(syy - slope * sxy - intercept * sy, 0.0)
    return slope, intercept, ok, rss


def logan_xp(xp: Any, tacs: Any, prep: Prepared) -> tuple[dict[str, Any], Any]:
    """Vectorized Logan fit of a chunk (n x F float32, any array module)."""
    used = np.flatnonzero(prep.used)
    n_needed = prep.extra["n_needed"]
    c = tacs[:, :n_needed].astype(xp.float64)
    integ = xp.asarray(prep.extra["integ"][np.ix_(used, np.arange(n_needed))])
    finite = xp.all(xp.isfinite(c), axis=1)
    c = xp.where(finite[:, None], c, 0.0)
    int_c = c @ integ.T  # (n, n_used)
    cu = c[:, used]
    positive = xp.all(cu > 0, axis=1)
    cu_safe = xp.where(cu > 0, cu, 1.0)
    y = int_c / cu_safe
    x = xp.asarray(prep.extra["ref_term"][used])[None, :] / cu_safe
    w = xp.asarray(prep.weights[used])
    slope, intercept, ok, rss = weighted_line(xp, x, y, w, with_rss=True)
    status = xp.full(c.shape[0], int(Status.OK), dtype=xp.uint8)
    status = xp.where(ok, status, np.uint8(Status.SINGULAR))
    status = xp.where(positive, status, np.uint8(Status.NONPOSITIVE))
    status = xp.where(finite, status, np.uint8(Status.NONFINITE_INPUT))
    good = status == Status.OK
    nan = xp.float64(np.nan)
    dvr = xp.where(good, slope, nan)
    out = {"bp_nd": (dvr - 1.0).astype(xp.float32), "dvr": dvr.astype(xp.float32),
           "intercept": xp.where(good, intercept, nan).astype(xp.float32),
           "wrss": xp.where(good, rss, nan).astype(xp.float32)}
    return out, status.astype(xp.uint8)
