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
from .base import Prepared, ReferenceModel, model_integration, needed_frames, parse_k2prime, running_integrals
from .status import Status


class Logan(ReferenceModel):
    """Reference Logan plot.

    Parameters
    ----------
    tstar : minutes; frames starting at or after t* enter the regression.  **Required**: there is no
        default, because the Logan plot is linear only after the tracer has equilibrated (typically 20-40 min for
        [11C] tracers), and t* = 0 includes the frame at injection whose zero activity fails every voxel
        (status ``nonpositive``).  ``tstar=0`` is accepted when given explicitly.
    k2prime : reference-region efflux rate, 1/min (None: drop the ``Cr/k2'`` term).
    end : minutes; frames ending after it are not used (None: to the end of the scan).
    window, weights, device, chunk_voxels, integration : see :class:`ReferenceModel`.
    """

    name = "logan"
    param_names = ("bp_nd", "dvr", "intercept", "wrss")
    n_regressors = 2

    def __init__(self, *, tstar: float | None = None, k2prime: float | None = None, end: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if tstar is None:
            raise InputError("logan needs --tstar MIN (tstar, minutes): the frames from t* on, where the Logan "
                             "plot is linear, enter the regression (typically 20-40 min for [11C] tracers); "
                             "there is no safe default")
        k2prime = parse_k2prime(k2prime)
        try:
            self.tstar = float(tstar)
        except (TypeError, ValueError):
            raise InputError(f"logan: tstar must be a number of minutes, got {tstar!r}") from None
        if not (np.isfinite(self.tstar) and self.tstar >= 0):
            raise InputError(f"logan: tstar must be >= 0 minutes, got {tstar!r}")
        self.k2prime = None if k2prime is None else float(k2prime)
        self.end = end

    def options(self) -> dict[str, Any]:
        return {**super().options(), "tstar": self.tstar, "k2prime": self.k2prime, "end": self.end}

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
        prep.extra.update(integ=m, ref_term=ref_term, n_needed=needed_frames(prep.used, self.integration),
                          coefs=model_integration(frames, self.integration))
        return prep

    def _fit_chunk(self, be: Backend, tacs: Any, prep: Prepared) -> tuple[dict[str, Any], Any]:
        if be.is_gpu:
            return self._fit_chunk_kernel(be, tacs, prep)
        return logan_xp(be.xp, tacs, prep)

    def _fit_chunk_kernel(self, be: Backend, tacs: Any, prep: Prepared) -> tuple[dict[str, Any], Any]:
        xp = be.xp
        n, f = tacs.shape
        def build() -> dict[str, np.ndarray]:
            a, b, cm_, c0_, cp_ = (np.asarray(v, dtype=np.float64) for v in prep.extra["coefs"])
            return {"ca": a, "cb": b, "cm": cm_, "c0": c0_, "cp": cp_,
                    "ref_term": np.asarray(prep.extra["ref_term"], dtype=np.float64),
                    "w": np.asarray(prep.weights, dtype=np.float64), "used": prep.used.astype(np.uint8)}

        c = prep.on_device(be, "logan", build)  # once per scan and backend, not per chunk
        ca, cb, cm, c0, cp, ref_term, w, used = (c[k] for k in ("ca", "cb", "cm", "c0", "cp", "ref_term", "w", "used"))
        out = {k: xp.empty(n, dtype=np.float32) for k in self.param_names}
        status = xp.empty(n, dtype=np.uint8)
        kern = be.kernel("logan", "logan_fit")
        be.launch(kern, n, (tacs, ca, cb, cm, c0, cp, ref_term, w, used, np.int32(n), np.int32(f),
                            np.int32(prep.extra["n_needed"]), out["bp_nd"], out["dvr"], out["intercept"], out["wrss"],
                            status))
        return out, status


#: Voxels per block of the array-module path (a frames x voxels float64 block plus ~12 voxel vectors).
BLOCK = 32768


def logan_sums_xp(xp: Any, ct: Any, prep: Prepared) -> tuple[Any, ...]:
    """Weighted Logan-plot sums of a block ``ct`` (n_needed x n: frames x voxels, float64, finite).

    A loop over frames vectorized over voxels, with the running-integral recurrence of ``kernels/logan.cu``.
    Returns ``sx, sy, sxx, sxy, syy`` (n,) and ``positive`` (activity > 0 in every used frame)."""
    ref_term, w, used = prep.extra["ref_term"], prep.weights, prep.used
    n = ct.shape[1]
    sx, sy, sxx, sxy, syy = (xp.zeros(n, dtype=xp.float64) for _ in range(5))
    positive = xp.ones(n, dtype=bool)
    t = xp.empty(n, dtype=xp.float64)
    x = xp.empty(n, dtype=xp.float64)
    y = xp.empty(n, dtype=xp.float64)
    for j, integ in running_integrals(xp, ct, prep.extra["coefs"]):
        cj = ct[j]
        if not used[j]:
            continue
        pos = cj > 0
        positive &= pos
        xp.divide(1.0, xp.where(pos, cj, 1.0), out=t)  # 1 / Ct
        xp.multiply(t, ref_term[j], out=x)
        xp.multiply(t, integ, out=y)
        wj = float(w[j])
        if wj == 0.0:
            continue
        xp.multiply(x, wj, out=t)  # w x
        sx += t
        sxy += t * y
        t *= x
        sxx += t
        xp.multiply(y, wj, out=t)  # w y
        sy += t
        t *= y
        syy += t
    return sx, sy, sxx, sxy, syy, positive


def logan_xp(xp: Any, tacs: Any, prep: Prepared) -> tuple[dict[str, Any], Any]:
    """Vectorized Logan fit of a chunk (n x F float32, any array module): weighted line through the Logan
    plot of each voxel, with the same sums, tolerances and status rules as ``kernels/logan.cu``."""
    n_needed = prep.extra["n_needed"]
    n = tacs.shape[0]
    sw = float(prep.weights[prep.used].sum())
    out = {k: xp.empty(n, dtype=xp.float32) for k in ("bp_nd", "dvr", "intercept", "wrss")}
    status = xp.empty(n, dtype=xp.uint8)
    nan = xp.float64(np.nan)
    for s in range(0, n, BLOCK):
        sl = slice(s, min(n, s + BLOCK))
        ct = xp.ascontiguousarray(tacs[sl, :n_needed].T, dtype=xp.float64)  # frames x voxels
        finite = xp.isfinite(ct.sum(axis=0))
        if not bool(finite.all()):
            ct = xp.where(finite[None, :], ct, 0.0)
        sx, sy, sxx, sxy, syy, positive = logan_sums_xp(xp, ct, prep)
        det = sw * sxx - sx * sx
        scale = sw * sxx
        ok = xp.abs(det) > 1e-12 * xp.where(scale > 0, scale, 1.0)
        safe = xp.where(ok, det, 1.0)
        slope = (sw * sxy - sx * sy) / safe
        intercept = (sxx * sy - sx * sxy) / safe
        rss = xp.maximum(syy - slope * sxy - intercept * sy, 0.0)
        st = xp.full(ct.shape[1], int(Status.OK), dtype=xp.uint8)
        st = xp.where(ok, st, np.uint8(Status.SINGULAR))
        st = xp.where(positive, st, np.uint8(Status.NONPOSITIVE))
        st = xp.where(finite, st, np.uint8(Status.NONFINITE_INPUT)).astype(xp.uint8)
        good = st == Status.OK
        dvr = xp.where(good, slope, nan)
        out["bp_nd"][sl] = dvr - 1.0
        out["dvr"][sl] = dvr
        out["intercept"][sl] = xp.where(good, intercept, nan)
        out["wrss"][sl] = xp.where(good, rss, nan)
        status[sl] = st
    return out, status
