"""Basis functions and the theta3 grid of the basis-function SRTM/SRTM2 (see :mod:`voxelkit.models.srtm` for the
model, its conventions and assumptions).  Times in **minutes**, rates in **1/min**."""

from __future__ import annotations

import numpy as np

from ..frames import FrameTiming
from ..io import InputError

#: default highest BPND the default grid must reach
DEFAULT_BP_MAX = 5.0
#: default number of basis functions
DEFAULT_N_BASIS = 150
#: k2 (1/min) assumed as the lowest plausible value when no k2' is given
DEFAULT_K2_LOW = 0.03
#: how the reference curve between frame mid-times is modelled (see :func:`reference_knots`)
INPUT_MODELS = ("frame_mean", "mid_linear")


# ------------------------------------------------------------------------------------------------------------
# basis functions
# ------------------------------------------------------------------------------------------------------------
def reference_knots(reference: np.ndarray, frames: FrameTiming,
                    input_model: str = "frame_mean") -> tuple[np.ndarray, np.ndarray]:
    """Knot times (min) and values of the piecewise-linear reference curve used for the convolution.

    The curve is linear between (0, 0) at injection and knots at the frame mid-times, and constant after the
    last mid-time.  ``input_model="frame_mean"`` (default) chooses the knot values so that the curve's mean
    over every frame equals the measured frame value (a small, diagonally dominant linear system: exact
    frame means, less peak flattening than interpolating the frame values); ``"mid_linear"`` puts the
    measured frame values at the mid-times (kinfitr's convention).  The returned knots also include every
    frame start and end, so frame integrals of the curve are exact."""
    ref = np.asarray(reference, float).reshape(-1)
    mids = frames.mid_min
    xk = np.concatenate([[0.0], mids])
    t = np.unique(np.concatenate([xk, frames.start_min, frames.end_min]))
    t = t[t >= 0.0]
    if input_model == "mid_linear":
        return t, np.interp(t, xk, np.concatenate([[0.0], ref]))
    if input_model != "frame_mean":
        raise InputError(f"unknown input_model {input_model!r}: choose frame_mean or mid_linear")
    hats = np.empty((t.size, mids.size))  # value at t of the hat function of mid-time knot k
    for k in range(mids.size):
        unit = np.zeros(mids.size + 1)
        unit[k + 1] = 1.0
        hats[:, k] = np.interp(t, xk, unit)
    cum = np.concatenate([np.zeros((1, mids.size)),
                          np.cumsum(0.5 * (hats[1:] + hats[:-1]) * np.diff(t)[:, None], axis=0)])
    i0 = np.searchsorted(t, frames.start_min)
    i1 = np.searchsorted(t, frames.end_min)
    a = (cum[i1] - cum[i0]) / frames.duration_min[:, None]  # frame means of the hats (F x F)
    try:
        v = np.linalg.solve(a, ref)
    except np.linalg.LinAlgError:
        v = np.linalg.lstsq(a, ref, rcond=None)[0]
    return t, hats @ v


def conv_exp_knots(t: np.ndarray, c: np.ndarray, thetas: np.ndarray) -> np.ndarray:
    """Exact ``y(t_k) = int_0^t_k c(s) exp(-theta (t_k - s)) ds`` for a piecewise-linear ``c`` (knots ``t``,
    minutes) and every rate ``thetas`` (1/min, > 0).  Returns (K, n) in activity x min."""
    thetas = np.asarray(thetas, dtype=float).reshape(-1)
    y = np.zeros((t.size, thetas.size))
    cur = np.zeros(thetas.size)
    for k in range(1, t.size):
        h = t[k] - t[k - 1]
        if h <= 0:
            y[k] = cur
            continue
        slope = (c[k] - c[k - 1]) / h
        x = thetas * h
        em1 = np.expm1(-x)  # exp(-x) - 1
        e1 = -em1 / thetas  # int_0^h exp(-theta (h - u)) du
        # int_0^h u exp(-theta (h - u)) du = (x - (1 - exp(-x))) / theta^2, series for small x
        small = x < 1e-3
        xs = np.where(small, x, 0.0)
        e2 = np.where(small, h * h * (0.5 - xs / 6.0 + xs * xs / 24.0), (x + em1) / (thetas * thetas))
        cur = cur * (em1 + 1.0) + c[k - 1] * e1 + slope * e2
        y[k] = cur
    return y


def basis_functions(reference: np.ndarray, frames: FrameTiming, thetas: np.ndarray,
                    input_model: str = "frame_mean") -> np.ndarray:
    """Frame averages of ``Cr (x) exp(-theta t)`` (activity x min), shape (F, n), for rates ``thetas`` (1/min).

    Exact for the piecewise-linear reference of :func:`reference_knots`: with ``y' = Cr - theta y``, the
    frame integral is ``int y = (int Cr - [y(end) - y(start)]) / theta``."""
    thetas = np.asarray(thetas, dtype=float).reshape(-1)
    if thetas.size and not (np.all(np.isfinite(thetas)) and np.all(thetas > 0)):
        raise ValueError("basis-function rates must be finite and positive (1/min)")
    t, c = reference_knots(reference, frames, input_model)
    y = conv_exp_knots(t, c, thetas)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (c[1:] + c[:-1]) * np.diff(t))])  # exact for linear c
    i0 = np.searchsorted(t, frames.start_min)
    i1 = np.searchsorted(t, frames.end_min)
    # knots are unique floats; frame bounds are knots exactly
    icr = (cum[i1] - cum[i0])[:, None]
    dy = y[i1] - y[i0]
    return (icr - dy) / (thetas[None, :] * frames.duration_min[:, None])


def theta_grid(theta3_range: tuple[float, float] | None = None, n_basis: int = DEFAULT_N_BASIS,
               bp_max: float = DEFAULT_BP_MAX, k2prime: float | None = None) -> np.ndarray:
    """Log-spaced theta3 (= k2a) grid, 1/min.

    Default range: ``[k2_low / (1 + bp_max), max(1, 4 k2')]`` with ``k2_low = 0.5 k2'`` (k2' given) or
    0.03/min; i.e. [0.005, 1.0]/min for the defaults."""
    if theta3_range is None:
        k2_low = 0.5 * k2prime if k2prime is not None else DEFAULT_K2_LOW
        hi = max(1.0, 4.0 * k2prime) if k2prime is not None else 1.0
        theta3_range = (k2_low / (1.0 + bp_max), hi)
    lo, hi = (float(v) for v in theta3_range)
    return np.geomspace(lo, hi, int(n_basis))
