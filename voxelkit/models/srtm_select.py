"""Choice of the best basis function and its refinement (NumPy, or CuPy without the kernel), the same math as
``kernels/srtm.cu``: float32 products pick the grid point; a 5-point stencil, the quartic refinement in
log(theta3) and the parameters are float64 (see :mod:`voxelkit.models.srtm`).  Rates in 1/min."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import chunks
from .base import Prepared
from .status import Status


# ------------------------------------------------------------------------------------------------------------
# vectorized selection (NumPy, or CuPy without the kernel): same math as kernels/srtm.cu
# ------------------------------------------------------------------------------------------------------------
def _status(xp: Any, yy: Any, c0: Any) -> Any:
    finite = xp.isfinite(yy) & xp.isfinite(c0)
    st = xp.zeros(yy.shape[0], dtype=xp.uint8)
    st = xp.where(c0 > 0, st, np.uint8(Status.NONPOSITIVE))
    return xp.where(finite, st, np.uint8(Status.NONFINITE_INPUT)).astype(xp.uint8)


#: quartic through the 5 equally spaced nodes -2..2: coefficients ``a = M5 @ values`` (``a_k`` of t^k)
M5 = np.linalg.inv(np.vander(np.arange(-2.0, 3.0), 5, increasing=True))
#: Newton steps on q'(t) = 0 of the refinement
NEWTON_STEPS = 4


#: voxels per float32 product block in :func:`best_basis` (the block x n_basis projections stay in cache)
BLOCK_VOXELS = 2048


def best_basis(xp: Any, y: Any, z32: np.ndarray, signed: bool) -> Any:
    """Index (V,) of the basis function with the largest projection ``|q_j|`` (SRTM) or ``s_j`` (SRTM2,
    ``signed``): ``(y @ z32)[:, 1:]`` in float32 blocks of :data:`BLOCK_VOXELS` voxels, so the (voxels x basis)
    projections never exist for the whole chunk.  First index on ties (numpy.argmax), as the kernels."""
    z = xp.asarray(z32)
    n = y.shape[0]
    best = xp.empty(n, dtype=xp.int64)
    for sl in chunks(n, BLOCK_VOXELS):
        q = (y[sl] @ z)[:, 1:]
        if not signed:
            q = xp.abs(q, out=q)
        best[sl] = xp.argmax(q, axis=1)
    return best


def _stencil(xp: Any, best: Any, nb: int, y: Any, prep: Prepared) -> tuple[Any, Any, Any, Any, Any]:
    """Stencil of 5 grid points around ``best`` (centre ``c`` = best clipped to [2, nb-3]): the grid indices
    (V, 5), the offset ``tb = best - c``, and in float64 from the TACs ``y`` (V, F): the projection ``c0`` on
    the reference (V,), the projections at the stencil (V, 5) and ``yy = sum(w y^2)`` (V,)."""
    ex = prep.extra
    zt = xp.asarray(ex["zt"])
    c = xp.clip(best, 2, nb - 3)
    idx = c[:, None] + xp.asarray(np.arange(-2, 3))[None, :]
    y64 = y.astype(xp.float64)
    q5 = xp.einsum("vkf,vf->vk", zt[idx + 1], y64)  # 10x faster than broadcasting + sum
    c0 = y64 @ zt[0]
    yy = (y64 * y64) @ xp.asarray(ex["wu"])
    return idx, (best - c).astype(xp.float64), c0, q5, yy


def _powers(xp: Any, t: Any) -> Any:
    return xp.stack([xp.ones_like(t), t, t * t, t * t * t, t * t * t * t], axis=1)


def _refine(xp: Any, q5: Any, tb: Any, use: Any) -> tuple[Any, Any]:
    """Position ``t`` (grid steps from the stencil centre) of the extremum of the quartic through the stencil
    values ``q5`` (V, 5) nearest the best grid point ``tb``, and the (V, 5) weights that interpolate any stencil
    quantity at ``t``.  Start: parabola through the best point and its neighbours; then Newton steps on
    q'(t) = 0, kept inside the stencil [-2, 2]; the start or the grid point wins if the quartic says they are
    better.  ``t = tb`` where not ``use`` (grid edges, no refinement)."""
    m5 = xp.asarray(M5)
    a = q5 @ m5.T  # (V, 5) coefficients
    rows = xp.arange(q5.shape[0])
    j0 = xp.clip(tb + 2.0, 1.0, 3.0).astype(xp.int64)  # grid edges (tb = +-2) are not refined
    s_m = q5[rows, j0 - 1] ** 2
    s_0 = q5[rows, j0] ** 2
    s_p = q5[rows, j0 + 1] ** 2
    d = s_m - 2.0 * s_0 + s_p
    conc = use & (d < 0)
    t0 = tb + xp.clip(xp.where(conc, (s_m - s_p) / xp.where(conc, 2.0 * d, -1.0), 0.0), -0.5, 0.5)
    t = t0
    for _ in range(NEWTON_STEPS):
        d1 = a[:, 1] + t * (2.0 * a[:, 2] + t * (3.0 * a[:, 3] + t * 4.0 * a[:, 4]))
        d2 = 2.0 * a[:, 2] + t * (6.0 * a[:, 3] + t * 12.0 * a[:, 4])
        step = xp.where(d2 != 0, d1 / xp.where(d2 != 0, d2, 1.0), 0.0)
        t = xp.clip(t - step, -2.0, 2.0)  # anywhere inside the stencil: the float32 choice may be one off

    def val(x: Any) -> Any:
        return a[:, 0] + x * (a[:, 1] + x * (a[:, 2] + x * (a[:, 3] + x * a[:, 4])))

    qn, q0 = xp.abs(val(t)), xp.abs(val(t0))
    t = xp.where(qn >= q0, t, t0)
    t = xp.where(xp.maximum(qn, q0) >= xp.abs(q5[rows, j0]), t, tb)  # never worse than the grid point
    t = xp.where(use, t, tb)
    return t, _powers(xp, t) @ m5


def srtm_select_xp(xp: Any, best: Any, y: Any, prep: Prepared, refine: bool = True) -> tuple[dict[str, Any], Any]:
    """SRTM parameters from the best grid index ``best`` (V,) (see :func:`best_basis`) and the fitted frames
    ``y`` (V x F, float32); everything after the choice of the grid point is float64."""
    ex = prep.extra
    nb = int(ex["thetas"].size)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        idx, tb, c0, q5, yy = _stencil(xp, best, nb, y, prep)
        edge = (best == 0) | (best == nb - 1)
        t, w = _refine(xp, q5, tb, ~edge & refine)
        t2_5 = q5 / xp.asarray(ex["beta"])[idx]
        r1_5 = (c0[:, None] - t2_5 * xp.asarray(ex["alpha"])[idx]) / ex["gamma"]
        q = xp.sum(w * q5, axis=1)
        r1 = xp.sum(w * r1_5, axis=1)
        t2 = xp.sum(w * t2_5, axis=1)
        theta3 = xp.asarray(ex["thetas"])[idx[:, 2]] * xp.exp(t * ex["log_step"])
        wrss = xp.maximum(yy - c0 * c0 - q * q, 0.0)
        k2 = t2 + r1 * theta3
        bp = k2 / theta3 - 1.0
        st = _status(xp, yy, c0)
        ok = st == 0
        st = xp.where(ok & edge, np.uint8(Status.GRID_EDGE), st)
        st = xp.where(ok & ((r1 <= 0) | (k2 <= 0)), np.uint8(Status.IMPLAUSIBLE), st)
        bad = (st == Status.NONFINITE_INPUT) | (st == Status.NONPOSITIVE)
        nan = xp.float64(np.nan)
        out = {"bp_nd": bp, "r1": r1, "k2": k2, "k2prime": k2 / r1, "theta3": theta3, "wrss": wrss}
        out = {k: xp.where(bad, nan, v).astype(xp.float32) for k, v in out.items()}
    return out, st.astype(xp.uint8)


def srtm2_select_xp(xp: Any, best: Any, y: Any, prep: Prepared, refine: bool = True) -> tuple[dict[str, Any], Any]:
    """SRTM2 parameters from the best grid index ``best`` (V,) (see :func:`best_basis`) and the fitted frames
    ``y`` (V x F, float32); everything after the choice of the grid point is float64."""
    ex = prep.extra
    nb = int(ex["thetas"].size)
    k2p = ex["k2prime"]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        idx, tb, c0, s5, yy = _stencil(xp, best, nb, y, prep)
        edge = (best == 0) | (best == nb - 1)
        t, w = _refine(xp, s5, tb, ~edge & refine)
        s = xp.sum(w * s5, axis=1)
        r1 = xp.sum(w * (s5 / xp.asarray(ex["xnorm"])[idx]), axis=1)
        k2a = xp.asarray(ex["thetas"])[idx[:, 2]] * xp.exp(t * ex["log_step"])
        wrss = xp.maximum(yy - s * s, 0.0)
        k2 = r1 * k2p
        bp = k2 / k2a - 1.0
        st = _status(xp, yy, c0)
        ok = st == 0
        st = xp.where(ok & edge, np.uint8(Status.GRID_EDGE), st)
        st = xp.where(ok & (r1 <= 0), np.uint8(Status.IMPLAUSIBLE), st)
        bad = (st == Status.NONFINITE_INPUT) | (st == Status.NONPOSITIVE)
        nan = xp.float64(np.nan)
        out = {"bp_nd": bp, "r1": r1, "k2": k2, "k2a": k2a, "k2prime": xp.full(r1.shape, k2p), "wrss": wrss}
        out = {k: xp.where(bad, nan, v).astype(xp.float32) for k, v in out.items()}
    return out, st.astype(xp.uint8)
