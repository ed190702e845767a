"""lp-ntPET: the linearised parametric neurotransmitter PET model (Normandin et al. 2012, J Cereb Blood Flow
Metab 32:1465; Kim et al. 2014, Hum Brain Mapp 35:5320), voxelwise, by basis functions.

Model (times in **minutes**, rates in **1/min**).  MRTM extended by a time-varying efflux
``k2a(t) = k2a + gamma h(t)`` (transient displacement of the tracer by a released neurotransmitter)::

    Ct(t) = R1 Cr(t) + k2 int_0^t Cr - k2a int_0^t Ct - gamma int_0^t Ct(u) h(u) du
    h(t)  = tau^alpha exp(alpha (1 - tau)),  tau = (t - t_D) / (t_P - t_D)  for t >= t_D;  0 before t_D

``h`` rises from 0 at the onset ``t_D`` to 1 at the peak ``t_P`` and decays afterwards; ``alpha`` sets its
sharpness.  ``LpntPET2`` (``--model lpntpet2``) is the MRTM2 form: k2' fixed, ``R1 Cr + k2 int Cr`` replaced by
``k2 (int Cr + Cr / k2')``, with the k2' sources of :class:`~voxelkit.models.mrtm.MRTM2` (a number,
``"median"``, a high-binding region mask or TAC).

Outputs per TAC: ``bp_nd`` = k2/k2a - 1 (binding before the release), ``r1``, ``k2``, ``k2prime`` (= k2/R1;
the fixed k2' for lpntpet2), ``k2a`` (1/min), ``gamma`` (1/min), ``t_d``, ``t_p`` (minutes), ``alpha``,
``release`` = 1 - BP(t_P)/BP_0 with ``BP(t) = k2 / (k2a + gamma h(t)) - 1`` (the peak fractional occupancy of
the receptors by the released neurotransmitter), ``f_stat`` (the F statistic of the release term against
MRTM/MRTM2 without it, see below), ``wrss`` (weighted residual sum of squares of the full model) and a status.

Fit.  For every basis function (t_D, t_P, alpha) of a grid the model is linear in its 4 (lpntpet2: 3)
coefficients, fitted by weighted least squares over the fitted frames; the basis function with the least
weighted RSS wins.  The release regressor ``int Ct h_j`` depends on the voxel's own TAC, so the normal
equations need voxel x basis cross-products.  With ``A = W - W S (S'WS)^-1 S'W`` (the shared columns ``S``
projected out, Frisch-Waugh), ``K = Mu' A Mu`` (``Mu``: integration rows of the fitted frames) and ``D_j`` the
diagonal of h_j, they are quadratic forms in the TAC ``y``::

    e_j = y' D_j Mu' A y_u,   b_j = y' D_j K y,   c_j = y' D_j K D_j y,   a = y' K y,   d = y' Mu' A y_u

computed with matrix products over blocks of voxels and all basis functions (float32): ``e`` and ``b`` as
``(y o (y Z')) @ H'``, ``c`` as the products ``y_f y_g`` (f <= g, only the frames where some h_j is non-zero)
times ``(2 - delta_fg) K_fg h_jf h_jg``.  The release term's explained sum of squares given MRTM is
``(e_j - b_j d / a)^2 / (c_j - b_j^2 / a)``; its largest value picks the basis function.  With ``refine=True``
(default) the 27 neighbours of the chosen coarse basis function on the fine grid (half the onset and peak steps,
geometric midpoints between alphas) compete next, from the same products gathered per voxel.  For the chosen one
the whole fit is recomputed in float64 (NumPy: :func:`_final_xp`; CUDA: ``kernels/lpntpet.cu``, one voxel per
thread, the same arithmetic), which gives the parameters, ``wrss`` and the F statistic.

Discretisation.  Running integrals use the model's ``integration`` rule (default here ``frame_average``, which
removes most of the trapezoid rule's bias on frame-average data, see
:func:`voxelkit.models.base.model_integration`; with ``trapezoid`` the release is off by up to ~40 % in the
noiseless tests);
``h_j`` enters as its frame means (midpoint rule on 32 sub-intervals per frame), ``int Ct h`` as the running
integral of the frame values ``Ct h_j``.

Grid (minutes).  ``td_range``/``tp_range`` (first, last onset/peak), ``td_step``/``tp_step`` and ``alphas``; only
pairs with ``t_P >= t_D + min_rise`` are kept.  Defaults: with ``challenge_window=(s, e)``, onsets
``[s - 5, s + (e - s)/2]`` in 2-min steps and peaks ``[s + 1, min(e + 10, scan end)]`` in 3-min steps; without
it, onsets in the middle half of the scan ``[T/4, 3T/4]`` and peaks ``[T/4 + 1, T]`` with ~16 values each; alphas
``(0.5, 1, 2, 4)``; ``min_rise`` 2 min.  Every onset needs at least :data:`MIN_FRAMES_AFTER_ONSET` fitted frames
ending after it (else a one-line error naming ``td_range``).

F test (Liu and Morris 2020, IEEE Trans Med Imaging).  ``F = ((RSS0 - RSS1) / (p_eff - p0)) /
(RSS1 / (n - p_eff))`` with ``RSS0`` the weighted RSS of MRTM (lpntpet2: MRTM2) without the release term
(``p0`` = 3, lpntpet2: 2), ``n`` the fitted frames with positive weight.  Because the basis search adapts
t_D, t_P and alpha to the noise, ``p_eff`` is larger than ``p0 + 1``; it is calibrated per scan by a null
simulation (``p_eff=None``, default): up to :data:`CAL_SAMPLE` TACs are drawn from the data (seed 0) and fitted;
their fitted curves without the release term (forward-solved) plus Gaussian noise with variance
``sigma_v^2 / w_f`` (``sigma_v^2`` = the TAC's MRTM residual RSS0 / (n - p0); the F test's own noise model, exact
when the weights are inverse variances; frames without weight get the TAC's own residuals with random signs)
give :data:`CAL_TACS` null TACs, which are fitted like the data.  ``p_eff`` is the smallest value on a 0.01 grid
(from p0 + 0.05) for which at most ``f_alpha - 2 SE`` of these null TACs exceed ``F_{1-f_alpha}(p_eff - p0,
n - p_eff)`` (``f_alpha`` default 0.05; SE = sqrt(f_alpha (1 - f_alpha) / n_cal), the calibration's own sampling
error, so that the rate on the data is at most nominal).  That critical value is the documented threshold,
``fit.info["f_threshold"]`` (with ``p_eff``, the calibration's rate and the number of TACs above it).  Noiseless
data (residual RMS < 1e-3 of the signal's) skip the calibration (``p_eff = p0 + 4``; F is then meaningless).
With unweighted fits of heteroscedastic data the test is conservative (see the README).

Release estimates are kept for every voxel, whether or not its F passes (group statistics need the
estimates, not a thresholded map): with the default ``nonnegative=False`` gamma is unconstrained, so a voxel
without release has ``release`` scattered around 0 (negative = binding rose).  With ``nonnegative=True`` only
basis functions with gamma > 0 compete; a voxel where none has gamma > 0 gets the MRTM fit with
``gamma = release = f_stat = 0`` and NaN ``t_d``/``t_p``/``alpha``.

Status: ``nonfinite_input`` / ``singular`` (NaN values) as MRTM; ``implausible`` (values kept): k2a <= 0,
k2 <= 0, R1 <= 0 or k2a + gamma <= 0; ``grid_edge`` (values kept): the release term passes the F threshold
and the chosen basis function lies on an edge of the grid (first/last onset, last peak): widen the grid.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..backend import Backend, chunks
from ..frames import FrameTiming
from ..io import InputError
from ..threads import blas_single_thread
from .base import ModelFit, Prepared, ReferenceModel, needed_frames
from .mrtm import MRTM2
from .status import Status

log = logging.getLogger("voxelkit")

#: default sharpness values of the release basis
DEFAULT_ALPHAS = (0.5, 1.0, 2.0, 4.0)
#: default shortest rise time t_P - t_D (minutes)
DEFAULT_MIN_RISE = 2.0
#: fitted frames that must end after every onset of the grid
MIN_FRAMES_AFTER_ONSET = 2
#: sub-intervals per frame for the frame means of h
H_SUBSAMPLES = 32
#: voxels per block of the float32 products (the (block x basis) arrays stay in the L2 cache)
BLOCK_VOXELS = 1024
#: voxels per block on the GPU (fewer, larger launches; ~0.5 GB of temporaries at 600 basis functions)
GPU_BLOCK_VOXELS = 32768
#: default chunk of voxels sent to the backend
DEFAULT_CHUNK = 32768
#: relative tolerance of the singularity checks (as MRTM)
SINGULAR_RTOL = 1e-10
#: TACs of the null simulation that calibrates p_eff
CAL_TACS = 8192
#: relative residual RMS below which data count as noiseless (no calibration, p_eff = p0 + 4)
NOISELESS_RTOL = 1e-3
#: noise of the calibration's null TACs: "gaussian" (variance sigma^2 / weight) or "wild" (own residuals)
CAL_NOISE = "gaussian"
#: factor on the calibration's noise level (sigma_v from MRTM's RSS0 / (n - p0))
CAL_SIGMA_SCALE = 1.0
#: voxels drawn from the data for the calibration (each repeated with new random signs up to CAL_TACS)
CAL_SAMPLE = 4096

PARAM_NAMES = ("bp_nd", "r1", "k2", "k2prime", "k2a", "gamma", "t_d", "t_p", "alpha", "release", "f_stat", "wrss")


# ------------------------------------------------------------------------------------------------------------
# basis
# ------------------------------------------------------------------------------------------------------------
def release_shape(t_min: np.ndarray, t_d: np.ndarray, t_p: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``h(t) = tau^alpha exp(alpha (1 - tau))``, ``tau = (t - t_D)/(t_P - t_D)``, 0 before t_D; broadcasts.
    Times in minutes."""
    t = np.asarray(t_min, dtype=float)
    tau = np.maximum((t - t_d) / (t_p - t_d), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(tau > 0, np.exp(alpha * (np.log(np.where(tau > 0, tau, 1.0)) + 1.0 - tau)), 0.0)
    return out


def release_basis(frames: FrameTiming, td: np.ndarray, tp: np.ndarray, alpha: np.ndarray,
                  n_frames: int | None = None) -> np.ndarray:
    """Frame means of h for each basis function: (J, n_frames) (midpoint rule, :data:`H_SUBSAMPLES` per frame)."""
    n = frames.n_frames if n_frames is None else int(n_frames)
    td, tp, alpha = (np.asarray(v, dtype=float).reshape(-1) for v in (td, tp, alpha))
    out = np.zeros((td.size, n))
    if td.size == 0:
        return out
    live = np.flatnonzero(frames.end_min[:n] > td.min())  # frames where some h is non-zero
    s, d = frames.start_min[live], frames.duration_min[live]
    u = (np.arange(H_SUBSAMPLES) + 0.5) / H_SUBSAMPLES
    t = s[:, None] + d[:, None] * u[None, :]  # (n_live, S)
    h = release_shape(t[None], td[:, None, None], tp[:, None, None], alpha[:, None, None])
    out[:, live] = h.mean(axis=2)
    return out


def _steps(lo: float, hi: float, step: float) -> np.ndarray:
    n = int(np.floor((hi - lo) / step + 1e-9)) + 1
    return lo + step * np.arange(max(n, 1))


def _halve(axis: np.ndarray) -> np.ndarray:
    """The axis with the midpoints between its values added (one value stays one value)."""
    if axis.size < 2:
        return axis
    out = np.empty(2 * axis.size - 1)
    out[0::2] = axis
    out[1::2] = 0.5 * (axis[1:] + axis[:-1])
    return out


def _range(value: Any, name: str) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be (first, last) in minutes, got {value!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo <= hi):
        raise InputError(f"{name} must be (first, last) minutes with 0 <= first <= last, got {value!r}")
    return lo, hi


# ------------------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------------------
class LpntPET(ReferenceModel):
    """lp-ntPET (MRTM form: R1, k2, k2a, gamma and the release basis).  See the module docstring.

    Parameters (keyword-only; minutes)
    ---------------------------------
    challenge_window : (start, end) of the challenge, minutes: centres the default grid.
    td_range, tp_range : (first, last) onset / peak time of the grid, minutes.
    td_step, tp_step : grid steps, minutes (defaults 2 and 3 with a challenge window, else ~1/16 of the range).
    alphas : sharpness values (default 0.5, 1, 2, 4).
    min_rise : shortest t_P - t_D kept, minutes (default 2).
    p_eff : effective parameter count of the F test; None (default): calibrated per scan by null simulation.
    f_alpha : nominal voxelwise false-positive rate of the F threshold (default 0.05).
    nonnegative : only gamma > 0 competes (default False: unconstrained, estimates kept signed).
    refine : after the coarse grid, choose among the 27 neighbours of the best basis function on the fine grid
        (half the onset and peak steps, geometric midpoints between alphas); default True.
    window, weights, integration (default ``frame_average``), half_life_min, device, chunk_voxels: see
    :class:`~voxelkit.models.base.ReferenceModel`.
    """

    name = "lpntpet"
    param_names = PARAM_NAMES
    #: grid_edge keeps its values (the release term passed F with the chosen basis function on the grid's edge)
    kept_statuses = (int(Status.GRID_EDGE),)
    likely_causes = {int(Status.GRID_EDGE): "release onset/peak at the edge of the grid: widen --td-range / "
                                            "--tp-range (values are kept)"}
    #: linear coefficients + the three basis parameters (t_D, t_P, alpha)
    n_regressors = 7
    n_shared = 2

    def __init__(self, *, challenge_window: tuple[float, float] | None = None,
                 td_range: tuple[float, float] | None = None, tp_range: tuple[float, float] | None = None,
                 td_step: float | None = None, tp_step: float | None = None,
                 alphas: tuple[float, ...] | None = None, min_rise: float = DEFAULT_MIN_RISE,
                 p_eff: float | None = None, f_alpha: float = 0.05, nonnegative: bool = False,
                 refine: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("integration", "frame_average")
        kwargs.setdefault("chunk_voxels", DEFAULT_CHUNK)
        super().__init__(**kwargs)
        self.challenge_window = _range(challenge_window, "challenge_window")
        if self.challenge_window is not None and not self.challenge_window[0] < self.challenge_window[1]:
            raise InputError(f"challenge_window start must be before its end, got {challenge_window}")
        self.td_range = _range(td_range, "td_range")
        self.tp_range = _range(tp_range, "tp_range")
        for nm, v in (("td_step", td_step), ("tp_step", tp_step)):
            if v is not None and not (np.isfinite(v) and v > 0):
                raise InputError(f"{nm} must be a positive number of minutes, got {v}")
        self.td_step = None if td_step is None else float(td_step)
        self.tp_step = None if tp_step is None else float(tp_step)
        al = DEFAULT_ALPHAS if alphas is None else tuple(float(a) for a in np.atleast_1d(alphas))
        if not al or not all(np.isfinite(a) and a > 0 for a in al):
            raise InputError(f"alphas must be positive numbers, got {alphas!r}")
        self.alphas = tuple(sorted(set(al)))
        if not (np.isfinite(min_rise) and min_rise > 0):
            raise InputError(f"min_rise must be a positive number of minutes, got {min_rise}")
        self.min_rise = float(min_rise)
        if p_eff is not None and not (np.isfinite(p_eff) and p_eff > self.n_shared + 1):
            raise InputError(f"p_eff must be a number above {self.n_shared + 1} (the parameters without the "
                             f"release term), got {p_eff}")
        self.p_eff = None if p_eff is None else float(p_eff)
        if not 0 < float(f_alpha) < 0.5:
            raise InputError(f"f_alpha must be in (0, 0.5), got {f_alpha}")
        self.f_alpha = float(f_alpha)
        self.nonnegative = bool(nonnegative)
        self.refine = bool(refine)

    @property
    def p0(self) -> int:
        """Coefficients of the model without the release term (MRTM 3, MRTM2 2)."""
        return self.n_shared + 1

    # -- configuration -------------------------------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        lst = lambda v: None if v is None else [float(x) for x in v]  # noqa: E731
        return {**super().options(), "challenge_window": lst(self.challenge_window),
                "td_range": lst(self.td_range), "tp_range": lst(self.tp_range), "td_step": self.td_step,
                "tp_step": self.tp_step, "alphas": list(self.alphas), "min_rise": self.min_rise,
                "p_eff": self.p_eff, "f_alpha": self.f_alpha, "nonnegative": self.nonnegative,
                "refine": self.refine}

    def grid_axes(self, frames: FrameTiming, used: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                                      np.ndarray]:
        """The coarse grid's onset and peak times (minutes) and alphas (before pairing, see :meth:`grid`)."""
        used = np.ones(frames.n_frames, bool) if used is None else used
        t_end = float(frames.end_min[np.flatnonzero(used)[-1]])
        cw = self.challenge_window
        if self.td_range is not None:
            td_lo, td_hi = self.td_range
        elif cw is not None:
            td_lo, td_hi = max(0.0, cw[0] - 5.0), cw[0] + 0.5 * (cw[1] - cw[0])
        else:
            td_lo, td_hi = 0.25 * t_end, 0.75 * t_end
        if self.tp_range is not None:
            tp_lo, tp_hi = self.tp_range
        elif cw is not None:
            tp_lo, tp_hi = cw[0] + 1.0, min(cw[1] + 10.0, t_end)
        else:
            tp_lo, tp_hi = 0.25 * t_end + 1.0, t_end
        td_step = self.td_step or (2.0 if cw is not None else max((td_hi - td_lo) / 15.0, 0.5))
        tp_step = self.tp_step or (3.0 if cw is not None else max((tp_hi - tp_lo) / 15.0, 0.5))
        return _steps(td_lo, td_hi, td_step), _steps(tp_lo, tp_hi, tp_step), np.asarray(self.alphas)

    def grid(self, frames: FrameTiming, used: np.ndarray | None = None,
             fine: bool = False) -> tuple[np.ndarray, ...]:
        """The basis grid: ``(t_d, t_p, alpha)`` arrays (J,) in minutes, the edge flag of each (bool) and the
        (n_td, n_tp, n_alpha) array of flat indices (-1: pair not kept).  ``fine``: the refinement grid (half
        the onset and peak steps, alphas with their geometric midpoints added)."""
        tds, tps, als = self.grid_axes(frames, used)
        if fine:
            tds = _halve(tds)
            tps = _halve(tps)
            als = np.sort(np.concatenate([als, np.sqrt(als[1:] * als[:-1])]))
        tdg, tpg = np.meshgrid(tds, tps, indexing="ij")
        keep = tpg >= tdg + self.min_rise - 1e-9
        if not keep.any():
            raise InputError(f"tp_range {tps[0]:g}-{tps[-1]:g} min has no peak at least min_rise {self.min_rise:g} "
                             f"min after an onset of td_range {tds[0]:g}-{tds[-1]:g} min")
        # edges: first/last onset, last peak (not the shortest rise or the extreme alphas: rise and sharpness
        # are often poorly determined at the frame durations of a challenge, and their extremes are answers)
        edge2 = np.isclose(tdg, tds[0]) | np.isclose(tdg, tds[-1]) | np.isclose(tpg, tps[-1])
        lookup = np.full(keep.shape + (als.size,), -1, dtype=np.int64)
        n_pairs = int(keep.sum())
        lookup[keep] = np.arange(n_pairs)[:, None] * als.size + np.arange(als.size)[None, :]
        td, tp, e2 = tdg[keep], tpg[keep], edge2[keep]
        return (np.repeat(td, als.size), np.repeat(tp, als.size), np.tile(als, td.size),
                np.repeat(e2, als.size), lookup)

    def neighbours(self, frames: FrameTiming, used: np.ndarray | None = None) -> np.ndarray:
        """(J_coarse, 27) indices into the fine grid: each coarse basis function and its fine neighbours
        (onset, peak and alpha one fine step either way; missing ones repeat the centre)."""
        *_, lk_c = self.grid(frames, used)
        *_, lk_f = self.grid(frames, used, fine=True)
        ci = np.argwhere(lk_c >= 0)  # (J, 3) axis indices, in flat-index order
        ci = ci[np.argsort(lk_c[tuple(ci.T)])]
        off = np.stack(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1], indexing="ij"), axis=-1).reshape(-1, 3)
        off = off[np.argsort(np.abs(off).sum(axis=1), kind="stable")]  # centre first
        nb = 2 * ci[:, None, :] + off[None, :, :]
        inside = np.all((nb >= 0) & (nb < np.asarray(lk_f.shape)), axis=2)
        nbc = np.where(inside[..., None], nb, 0)
        idx = np.where(inside, lk_f[nbc[..., 0], nbc[..., 1], nbc[..., 2]], -1)
        return np.where(idx >= 0, idx, idx[:, :1]).astype(np.int64)

    # -- shared columns (MRTM form) ------------------------------------------------------------------------
    def _shared_columns(self, reference: np.ndarray, integ: np.ndarray, prep: Prepared) -> list[np.ndarray]:
        return [integ @ reference, reference]

    def _k2prime_fixed(self, prep: Prepared) -> float:
        return 0.0

    # -- per-scan design -----------------------------------------------------------------------------------
    def _prepare_tacs(self, tacs: np.ndarray, prep: Prepared, names: list[str] | None) -> None:
        self._build(prep)
        ex = prep.extra
        if self.p_eff is not None:
            ex.update(p_eff=self.p_eff, cal={"p_eff_source": "given"})
        else:
            p_eff, cal = self._calibrate(tacs, prep)
            ex.update(p_eff=p_eff, cal=cal)
        ex["f_threshold"] = _f_crit(self.f_alpha, ex["p_eff"], self.p0, ex["n_obs"])

    def _build(self, prep: Prepared) -> None:
        frames, used = prep.frames, prep.used
        integ = self.integration_matrix(frames)
        used_idx = np.flatnonzero(used)
        n_needed = needed_frames(used, self.integration)
        w = prep.weights
        wu = w[used_idx]
        n_obs = int((wu > 0).sum())
        if n_obs < self.n_regressors + 1:
            raise InputError(f"{self.name}: only {n_obs} fitted frames with positive weight, need at least "
                             f"{self.n_regressors + 1} (the model's {self.n_regressors} parameters + 1; check window "
                             "and weights)")
        cols = self._shared_columns(prep.reference, integ, prep)
        xs = np.stack(cols)  # (p, F)
        su = xs[:, used_idx].T  # (F_u, p)
        gram = (su * wu[:, None]).T @ su
        scale = np.sqrt(np.diag(gram))
        if not (np.all(np.isfinite(gram)) and np.all(scale > 0)) or \
                np.linalg.det(gram / np.outer(scale, scale)) < 1e-12:
            raise InputError(f"{self.name}: the reference TAC gives a singular design in the fitted frames "
                             "(zero, non-finite or degenerate reference there?)")
        gram_inv = np.linalg.inv(gram)
        td_c, tp_c, al_c, _, _ = self.grid(frames, used)
        if self.refine:
            td, tp, al, edge, _ = self.grid(frames, used, fine=True)
            nbr = self.neighbours(frames, used)
        else:
            td, tp, al, edge = td_c, tp_c, al_c, self.grid(frames, used)[3]
            nbr = None
        # every onset needs fitted frames after it
        end_used = frames.end_min[used_idx][wu > 0]
        after = (end_used[None, :] > td[:, None] + 1e-9).sum(axis=1)
        if (after < MIN_FRAMES_AFTER_ONSET).any():
            bad = float(td[np.argmax(after < MIN_FRAMES_AFTER_ONSET)])
            raise InputError(f"td_range: onset {bad:g} min has fewer than {MIN_FRAMES_AFTER_ONSET} fitted frames "
                             f"after it (the last fitted frame ends at {end_used[-1]:g} min); lower td_range or "
                             "widen the window")
        h = release_basis(frames, td, tp, al, n_needed)  # (J, F_n): the grid reported (fine with refine)
        hc = release_basis(frames, td_c, tp_c, al_c, n_needed) if self.refine else h  # coarse: the GEMMs
        mu = integ[np.ix_(used_idx, np.arange(n_needed))]  # (F_u, F_n)
        a_proj = np.diag(wu) - (wu[:, None] * su) @ gram_inv @ (su * wu[:, None]).T  # (F_u, F_u)
        sel = np.zeros((used_idx.size, n_needed))
        sel[np.arange(used_idx.size), used_idx] = 1.0
        k_ii = mu.T @ a_proj @ mu  # (F_n, F_n)
        k_ii = 0.5 * (k_ii + k_ii.T)
        z_e = mu.T @ a_proj @ sel  # (F_n, F_n): e_j = y' D_j z_e y
        act = np.flatnonzero((h != 0).any(axis=0) | (hc != 0).any(axis=0))
        fa = act.size
        fi, gi = np.triu_indices(fa)
        coef = np.where(fi == gi, 1.0, 2.0) * k_ii[np.ix_(act, act)][fi, gi]
        cm = coef[:, None] * hc[:, act[fi]].T * hc[:, act[gi]].T  # (P, J)
        zcat = np.concatenate([z_e[act], k_ii[act]], axis=0).T  # (F_n, 2 F_a)
        if nbr is not None:
            prep.extra.update(nbr=nbr, cmf32=np.ascontiguousarray((coef[:, None] * h[:, act[fi]].T
                                                                   * h[:, act[gi]].T).T, dtype=np.float32),
                              hf32=np.ascontiguousarray(h[:, act], dtype=np.float32))
        ca, cb = self.integration_coefficients(frames)
        cmi, c0, cp = self.integration_local(frames)
        prep.extra.update(
            integ=integ, used_idx=used_idx, n_needed=n_needed, n_obs=n_obs, wu=wu, xs=xs, su=su, gram_inv=gram_inv,
            td=td, tp=tp, al=al, edge=edge, h=h, mu=mu, act=act, fi=fi, gi=gi,
            k_ii=k_ii, z_e=z_e,
            cm32=np.ascontiguousarray(cm, dtype=np.float32), zcat32=np.ascontiguousarray(zcat, dtype=np.float32),
            ht32=np.ascontiguousarray(hc[:, act].T, dtype=np.float32), n_coarse=int(td_c.size),
            coefs=(ca, cb, cmi, c0, cp), k2p=self._k2prime_fixed(prep))

    # -- calibration of p_eff ------------------------------------------------------------------------------
    def _calibrate(self, tacs: np.ndarray, prep: Prepared) -> tuple[float, dict[str, Any]]:
        """p_eff by a null simulation from the data (see the module docstring)."""
        ex = prep.extra
        p0, n_obs = self.p0, ex["n_obs"]
        nominal = float(p0 + 4)
        rng = np.random.default_rng(0)
        n = tacs.shape[0]
        idx = np.sort(rng.choice(n, size=min(n, CAL_SAMPLE), replace=False))
        y = np.asarray(tacs[idx], dtype=np.float64)
        finite = np.isfinite(y[:, :ex["n_needed"]]).all(axis=1)
        y = y[finite]
        info: dict[str, Any] = {"p_eff_source": f"calibrated (null simulation, {CAL_NOISE} noise)"}
        if y.shape[0] == 0:
            return nominal, {"p_eff_source": "nominal (no finite TAC to calibrate on)"}
        be = self._backend()
        par, st = self._fit_host(be, y, prep, p_eff=p0 + 1.0, f_thr=np.inf)
        ok = (st == Status.OK) | (st == Status.GRID_EDGE)
        if not ok.any():
            return nominal, {"p_eff_source": "nominal (no TAC fitted well enough to calibrate on)"}
        y, par = y[ok], {k: v[ok] for k, v in par.items()}
        base = self._predict_arrays(par, prep.reference, prep.frames, release=False)
        resid = y - self._predict_arrays(par, prep.reference, prep.frames, release=True)
        uidx = ex["used_idx"]
        sig = np.sqrt(np.mean(resid[:, uidx] ** 2))
        if not sig > NOISELESS_RTOL * np.sqrt(np.mean(y[:, uidx] ** 2)):
            return nominal, {"p_eff_source": "nominal (noiseless data: no residuals to calibrate on)"}
        reps = -(-CAL_TACS // y.shape[0])
        yb = np.repeat(base, reps, axis=0)[:CAL_TACS]
        if CAL_NOISE == "wild":
            resid *= np.sqrt(n_obs / max(n_obs - p0 - 1, 1))
            rb = np.repeat(resid, reps, axis=0)[:CAL_TACS]
            yb = yb + rb * rng.choice([-1.0, 1.0], size=rb.shape)
        else:  # Gaussian, variance sigma_v^2 / w_f (the F test's own noise model), sigma_v^2 = RSS0 / (n - p0)
            rss0 = par["wrss"].astype(np.float64) * (1.0 + par["f_stat"].astype(np.float64) / (n_obs - p0 - 1.0))
            sig_v = CAL_SIGMA_SCALE * np.sqrt(np.maximum(rss0, 0.0) / (n_obs - p0))
            w = prep.weights[:yb.shape[1]]
            scale = np.where(w > 0, 1.0 / np.sqrt(np.where(w > 0, w, 1.0)), 0.0)
            noise = np.repeat(sig_v, reps)[:CAL_TACS, None] * scale[None, :] * rng.standard_normal(yb.shape)
            wild = np.repeat(resid, reps, axis=0)[:CAL_TACS] * rng.choice([-1.0, 1.0], size=yb.shape)
            yb = yb + np.where(w[None, :] > 0, noise, wild)  # frames without weight: their own residuals
        parb, stb = self._fit_host(be, yb, prep, p_eff=p0 + 1.0, f_thr=np.inf)
        okb = ((stb == Status.OK) | (stb == Status.GRID_EDGE)) & np.isfinite(parb["f_stat"])
        q = parb["f_stat"][okb].astype(np.float64) / (n_obs - p0 - 1.0)  # (RSS0 - RSS1) / RSS1
        grid = np.arange(p0 + 0.05, n_obs - 1.0 + 1e-9, 0.01)
        qcrit = _f_ppf(1.0 - self.f_alpha, grid - p0, n_obs - grid) * (grid - p0) / (n_obs - grid)
        exceed = (q[None, :] > qcrit[:, None]).mean(axis=1)
        # conservative by the calibration's own sampling error: its rate must be 2 standard errors below f_alpha
        target = self.f_alpha - 2.0 * np.sqrt(self.f_alpha * (1.0 - self.f_alpha) / max(q.size, 1))
        hit = np.flatnonzero(exceed <= target)
        p_eff = float(grid[hit[0]]) if hit.size else float(grid[-1])
        info.update(calibration_target_fpr=float(target), calibration_tacs=int(q.size),
                    calibration_voxels=int(y.shape[0]),
                    calibration_fpr=float(exceed[hit[0]] if hit.size else exceed[-1]),
                    calibration_fpr_nominal_p=float(exceed[np.argmin(np.abs(grid - nominal))])
                    if nominal <= grid[-1] else None)
        return p_eff, info

    def _backend(self) -> Backend:
        from ..backend import get_backend  # noqa: PLC0415

        return get_backend(self.device)

    def _fit_host(self, be: Backend, y: np.ndarray, prep: Prepared, p_eff: float,
                  f_thr: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
        params = {k: np.empty(y.shape[0], dtype=np.float32) for k in self.param_names}
        status = np.empty(y.shape[0], dtype=np.uint8)
        for sl in chunks(y.shape[0], self.chunk_voxels):
            chunk = be.asarray(np.ascontiguousarray(y[sl], dtype=np.float32))
            p, st = self._fit_chunk_with(be, chunk, prep, p_eff, f_thr)
            for k in self.param_names:
                params[k][sl] = be.to_host(p[k])
            status[sl] = be.to_host(st)
        return params, status

    # -- fitting -------------------------------------------------------------------------------------------
    def fit(self, tacs: np.ndarray, reference: np.ndarray, frames: FrameTiming, **kwargs: Any) -> ModelFit:
        """As :meth:`ReferenceModel.fit` (TACs n x F, reference F, frame timing), host BLAS on one thread; logs
        voxels, seconds and how many pass the F threshold."""
        with blas_single_thread():
            fit = super().fit(tacs, reference, frames, **kwargs)
        ok = (fit.status == Status.OK) | (fit.status == Status.GRID_EDGE)
        thr = fit.info.get("f_threshold", np.inf)
        n_sig = int((ok & (fit.f_stat >= thr)).sum())
        fit.info["n_above_f_threshold"] = n_sig
        log.info("%s: %d voxels in %.2f s on %s (%d basis functions); %d above the F threshold %.3g "
                 "(p_eff %.2f)", self.name, fit.n, fit.seconds, fit.backend, int(fit.info.get("n_basis", 0)), n_sig,
                 thr, fit.info.get("p_eff", np.nan))
        return fit

    def _info(self, prep: Prepared) -> dict[str, Any]:
        ex = prep.extra
        return {**ex.get("info", {}), **ex.get("cal", {}), "p_eff": ex.get("p_eff"), "p0": self.p0,
                "n_obs": ex.get("n_obs"), "f_alpha": self.f_alpha, "f_threshold": ex.get("f_threshold"),
                "n_basis": int(ex["n_coarse"]), "n_basis_fine": int(ex["td"].size) if self.refine else None,
                "td_grid_min": [float(ex["td"].min()), float(ex["td"].max())],
                "tp_grid_min": [float(ex["tp"].min()), float(ex["tp"].max())], "alphas": list(self.alphas),
                "active_frames": int(ex["act"].size)}

    def _fit_chunk(self, be: Backend, tacs: Any, prep: Prepared) -> tuple[dict[str, Any], Any]:
        ex = prep.extra
        return self._fit_chunk_with(be, tacs, prep, ex["p_eff"], ex["f_threshold"])

    def _fit_chunk_with(self, be: Backend, tacs: Any, prep: Prepared, p_eff: float,
                        f_thr: float) -> tuple[dict[str, Any], Any]:
        xp = be.xp
        ex = prep.extra
        n = tacs.shape[0]
        nn = ex["n_needed"]
        best = xp.empty(n, dtype=xp.int32)
        d32 = {k: be.asarray(ex[k]) for k in ("zcat32", "ht32", "cm32", "cmf32", "hf32", "nbr") if k in ex}
        d64 = {k: be.asarray(ex[k], dtype=np.float64) for k in ("k_ii", "z_e")}
        act, fi, gi = (be.asarray(ex[k]) for k in ("act", "fi", "gi"))
        for sl in chunks(n, GPU_BLOCK_VOXELS if be.is_gpu else BLOCK_VOXELS):
            y = tacs[sl, :nn]
            best[sl] = select_basis(xp, y, d32, d64, act, fi, gi, self.nonnegative)
        if be.is_gpu:
            return self._final_kernel(be, tacs, best, prep, p_eff, f_thr)
        return _final_xp(xp, tacs[:, :nn], best, prep, self, p_eff, f_thr)

    def _final_kernel(self, be: Backend, tacs: Any, best: Any, prep: Prepared, p_eff: float,
                      f_thr: float) -> tuple[dict[str, Any], Any]:
        xp = be.xp
        ex = prep.extra
        n, f = tacs.shape
        p = ex["xs"].shape[0]
        xs = np.zeros((2, f))
        xs[:p] = ex["xs"]
        ginv = np.zeros((2, 2))
        ginv[:p, :p] = ex["gram_inv"]
        d = lambda a: be.asarray(np.ascontiguousarray(a, dtype=np.float64))  # noqa: E731
        ca, cb, cm, c0, cp = ex["coefs"]
        out = {k: xp.empty(n, dtype=np.float32) for k in self.param_names}
        status = xp.empty(n, dtype=np.uint8)
        kern = be.kernel("lpntpet", "lpntpet_fit")
        be.launch(kern, n, (xp.ascontiguousarray(tacs), best, d(ex["h"]), d(ca), d(cb), d(cm), d(c0), d(cp),
                            d(xs[0]), d(xs[1]), d(prep.weights), be.asarray(prep.used.astype(np.uint8)),
                            d(ginv.reshape(-1)), be.asarray(ex["edge"].astype(np.uint8)), d(ex["td"]), d(ex["tp"]),
                            d(ex["al"]), np.int32(n), np.int32(f), np.int32(ex["n_needed"]), np.int32(p),
                            np.int32(1 if self.nonnegative else 0), np.float64(ex["k2p"]), np.float64(ex["n_obs"]),
                            np.float64(self.p0), np.float64(p_eff), np.float64(f_thr),
                            *(out[k] for k in self.param_names), status))
        return out, status

    # -- fitted curves ---------------------------------------------------------------------------------------
    def predict(self, params: dict[str, np.ndarray], reference: np.ndarray, frames: FrameTiming) -> np.ndarray:
        """Model TACs (k x F, activity) with the release term: the discretised operational equation solved for
        Ct from the reference (same integration rule and frame means of h as the fit), over all frames."""
        return self._predict_arrays(params, reference, frames, release=True)

    def predict_without_release(self, params: dict[str, np.ndarray], reference: np.ndarray,
                                frames: FrameTiming) -> np.ndarray:
        """The same fit's curves with gamma = 0 (what the TAC would be without the release)."""
        return self._predict_arrays(params, reference, frames, release=False)

    def _predict_arrays(self, params: dict[str, np.ndarray], reference: np.ndarray, frames: FrameTiming,
                        release: bool) -> np.ndarray:
        integ = self.integration_matrix(frames)
        ref = np.asarray(reference, dtype=float).reshape(-1)
        get = lambda k: np.asarray(params[k], dtype=float).reshape(-1)  # noqa: E731
        r1, k2, k2a = get("r1"), get("k2"), get("k2a")
        gam = get("gamma") if release else np.zeros_like(k2)
        td, tp, al = get("t_d"), get("t_p"), get("alpha")
        has = release & np.isfinite(td) & (gam != 0)
        h = np.zeros((k2.size, ref.size))
        if has.any():
            h[has] = release_basis(frames, td[has], tp[has], al[has])
        rhs = k2[:, None] * (integ @ ref)[None, :] + r1[:, None] * ref[None, :]
        # (1 + k2a M + gamma M diag(h)) Ct = rhs, one (F x F) system per TAC; few temporaries
        coef = gam[:, None] * h
        coef += k2a[:, None]
        a = integ[None, :, :] * coef[:, None, :]
        diag = np.arange(ref.size)
        a[:, diag, diag] += 1.0
        bad = ~(np.isfinite(rhs).all(axis=1) & np.isfinite(coef).all(axis=1))
        a[bad] = np.eye(ref.size)
        out = np.linalg.solve(a, np.where(bad[:, None], 0.0, rhs)[..., None])[..., 0]
        out[bad] = np.nan
        return out


def fitted_curves(fit: ModelFit, index: int | np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
    """QC curves of an lp-ntPET fit (kept inputs): the fitted TAC(s) with the release term and the same fit with
    gamma = 0, over all frames."""
    if fit.inputs is None or not isinstance(fit.model_obj, LpntPET):
        raise ValueError("fitted_curves needs an lp-ntPET fit with kept inputs")
    params = {k: np.atleast_1d(v[index]) for k, v in fit.params.items()}
    m = fit.model_obj
    with_r = m.predict(params, fit.inputs[1], fit.frames)
    without = m.predict_without_release(params, fit.inputs[1], fit.frames)
    if np.ndim(index) == 0 and not isinstance(index, slice):
        return with_r[0], without[0]
    return with_r, without


class LpntPET2(LpntPET):
    """lp-ntPET, MRTM2 form: k2' fixed (k2, k2a, gamma and the release basis).

    k2' sources as :class:`~voxelkit.models.mrtm.MRTM2`: ``k2prime`` (1/min or ``"median"``), ``k2prime_region``
    / ``k2prime_mask`` (boolean mask over the TACs), ``k2prime_tac`` (a TAC), ``k2prime_name``,
    ``k2prime_bp_quantile``, ``k2prime_window`` (frames for the k2' estimate, minutes), estimated exactly as
    MRTM2 does (same weights and integration rule)
    (a release in the data also affects those MRTM fits: prefer a k2' from a region or a scan without
    challenge).  All other options as :class:`LpntPET`."""

    name = "lpntpet2"
    n_regressors = 6
    n_shared = 1

    def __init__(self, *, k2prime: float | str | None = None, k2prime_region: np.ndarray | None = None,
                 k2prime_tac: np.ndarray | None = None, k2prime_name: str | None = None,
                 k2prime_bp_quantile: float = 0.9, k2prime_mask: np.ndarray | None = None,
                 k2prime_window: tuple[float | None, float | None] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        base = {k: kwargs[k] for k in ("window", "weights", "device", "integration", "half_life_min")
                if k in kwargs}
        base.setdefault("integration", self.integration)
        if k2prime_window is not None:
            base["k2prime_window"] = k2prime_window
        try:
            self._mrtm2 = MRTM2(k2prime=k2prime, k2prime_region=k2prime_region, k2prime_tac=k2prime_tac,
                                k2prime_name=k2prime_name, k2prime_bp_quantile=k2prime_bp_quantile,
                                k2prime_mask=k2prime_mask, **base)
        except InputError as exc:
            raise InputError(str(exc).replace("mrtm2", "lpntpet2")) from None

    def options(self) -> dict[str, Any]:
        m = self._mrtm2.options()
        return {**super().options(), **{k: v for k, v in m.items() if k.startswith("k2prime")}}

    def _prepare_tacs(self, tacs: np.ndarray, prep: Prepared, names: list[str] | None) -> None:
        m = self._mrtm2
        p2 = m._prepare(prep.reference, prep.frames)
        try:
            m._prepare_tacs(tacs, p2, names)
        except InputError as exc:
            raise InputError(str(exc).replace("mrtm2", "lpntpet2")) from None
        prep.extra["k2prime_used"] = float(p2.extra["k2prime_used"])
        prep.extra["info"] = dict(p2.extra.get("info", {}))
        super()._prepare_tacs(tacs, prep, names)

    def _shared_columns(self, reference: np.ndarray, integ: np.ndarray, prep: Prepared) -> list[np.ndarray]:
        return [integ @ reference + reference / prep.extra["k2prime_used"]]

    def _k2prime_fixed(self, prep: Prepared) -> float:
        return float(prep.extra["k2prime_used"])


# ------------------------------------------------------------------------------------------------------------
# NumPy / CuPy array-module code (the same math as kernels/lpntpet.cu)
# ------------------------------------------------------------------------------------------------------------
def _f_ppf(q: float, d1: Any, d2: Any) -> Any:
    """Quantile ``q`` of the F distribution with (d1, d2) degrees of freedom (scipy.special, no scipy.stats)."""
    from scipy.special import betaincinv  # noqa: PLC0415

    x = betaincinv(0.5 * np.asarray(d1, float), 0.5 * np.asarray(d2, float), q)
    return (np.asarray(d2, float) * x) / (np.asarray(d1, float) * (1.0 - x))


def _f_crit(alpha: float, p_eff: float, p0: int, n_obs: int) -> float:
    """The F threshold: quantile 1 - alpha of F(p_eff - p0, n_obs - p_eff)."""
    if not p_eff < n_obs:
        return float("inf")
    return float(_f_ppf(1.0 - alpha, p_eff - p0, n_obs - p_eff))


def _criterion(xp: Any, e: Any, b: Any, c: Any, ra: Any, dv: Any, nonnegative: bool) -> Any:
    """Explained sum of squares of the release term given MRTM, ``(e - b d/a)^2 / (c - b^2/a)`` (V x K, float32),
    0 where degenerate (``c - b^2/a <= 1e-6 c``) or, with ``nonnegative``, where gamma would be <= 0 (``e' >= 0``).
    ``ra`` = 1/a and ``dv`` = d (V x 1).  Overwrites ``e``, ``b`` and ``c`` (fewer passes over V x K arrays)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        r = b * ra  # b / a
        xp.multiply(b, r, out=b)  # b^2 / a
        xp.multiply(r, dv, out=r)  # b d / a
        xp.subtract(e, r, out=e)  # e'
        xp.subtract(c, b, out=b)  # c' = c - b^2 / a
        xp.multiply(c, xp.float32(1e-6), out=c)
        bad = b <= c
        if nonnegative:  # gamma = -(e'/c') > 0  <=>  e' < 0
            bad |= e >= 0
        xp.multiply(e, e, out=r)
        xp.divide(r, b, out=r)
        return xp.where(bad, xp.float32(0.0), r)


def select_basis(xp: Any, y: Any, d32: dict[str, Any], d64: dict[str, Any], act: Any, fi: Any, gi: Any,
                 nonnegative: bool) -> Any:
    """Best basis index (int32, V) for a block of TACs ``y`` (V x F_n, float32): the largest explained sum of
    squares of the release term given MRTM, ``(e - b d/a)^2 / (c - b^2/a)``, from float32 products (see the
    module docstring); -1 where no basis function qualifies (degenerate, or none with gamma > 0 when
    ``nonnegative``).  Non-finite TACs give an arbitrary index (their status is set later)."""
    v = y.shape[0]
    y = xp.where(xp.isfinite(y), y, xp.float32(0.0))
    zz = y @ d32["zcat32"]  # (V, 2 F_a)
    fa = act.shape[0]
    ya = y[:, act]
    st = xp.concatenate([ya * zz[:, :fa], ya * zz[:, fa:]], axis=0)  # (2V, F_a)
    eb = st @ d32["ht32"]  # (2V, J)
    e, b = eb[:v], eb[v:]
    c = (ya[:, fi] * ya[:, gi]) @ d32["cm32"]  # (V, J)
    y64 = y.astype(xp.float64)
    a = xp.sum((y64 @ d64["k_ii"]) * y64, axis=1)
    d = xp.sum((y64 @ d64["z_e"].T) * y64, axis=1)
    ra = xp.where(a > 0, 1.0 / xp.where(a > 0, a, 1.0), 0.0).astype(xp.float32)[:, None]
    dv = d.astype(xp.float32)[:, None]
    crit = _criterion(xp, e, b, c, ra, dv, nonnegative)
    best = xp.argmax(crit, axis=1)
    top = xp.take_along_axis(crit, best[:, None], axis=1)[:, 0]
    if "nbr" in d32:  # refinement: the fine neighbours of the best coarse basis function (gathered products)
        nb = d32["nbr"][best]  # (V, K)
        hf = d32["hf32"][nb]  # (V, K, F_a)
        e = (hf @ (ya * zz[:, :fa])[:, :, None])[:, :, 0]  # batched (K x F_a) @ (F_a,) per voxel
        b = (hf @ (ya * zz[:, fa:])[:, :, None])[:, :, 0]
        c = (d32["cmf32"][nb] @ (ya[:, fi] * ya[:, gi])[:, :, None])[:, :, 0]
        crit = _criterion(xp, e, b, c, ra, dv, nonnegative)
        k = xp.argmax(crit, axis=1)
        best = xp.take_along_axis(nb, k[:, None], axis=1)[:, 0]
        top = xp.minimum(top, xp.take_along_axis(crit, k[:, None], axis=1)[:, 0])  # 0: either stage found none
    return xp.where(top > 0, best, -1).astype(xp.int32)


def _final_xp(xp: Any, y32: Any, best: Any, prep: Prepared, model: LpntPET, p_eff: float,
              f_thr: float) -> tuple[dict[str, Any], Any]:
    """Float64 fit of every TAC at its chosen basis function ``best`` (-1: no release term): parameters, wrss,
    F statistic and status (the arithmetic of ``kernels/lpntpet.cu``)."""
    ex = prep.extra
    n = y32.shape[0]
    uidx = xp.asarray(ex["used_idx"])
    wu = xp.asarray(ex["wu"])
    su = xp.asarray(ex["su"])
    gi = xp.asarray(ex["gram_inv"])
    mu = xp.asarray(ex["mu"])
    y = y32.astype(xp.float64)
    finite = xp.isfinite(y).all(axis=1)
    y = xp.where(finite[:, None], y, 0.0)
    has = best >= 0
    bj = xp.where(has, best, 0)
    h = xp.asarray(ex["h"])[bj] * has[:, None]
    yu = y[:, uidx]
    iu = y @ mu.T
    ru = (y * h) @ mu.T
    sy, si, sr = ((x * wu) @ su for x in (yu, iu, ru))  # (V, p)

    def ip(x1: Any, s1: Any, x2: Any, s2: Any) -> Any:
        return xp.sum(x1 * x2 * wu, axis=1) - xp.sum((s1 @ gi) * s2, axis=1)

    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        a = ip(iu, si, iu, si)
        bb = ip(iu, si, ru, sr)
        c = ip(ru, sr, ru, sr)
        d = ip(iu, si, yu, sy)
        e = ip(ru, sr, yu, sy)
        yy = ip(yu, sy, yu, sy)
        ii_raw = xp.sum(iu * iu * wu, axis=1)
        rr_raw = xp.sum(ru * ru * wu, axis=1)
        ok = a > SINGULAR_RTOL * ii_raw
        a_s = xp.where(ok, a, 1.0)
        g0 = d / a_s  # MRTM's int Ct coefficient
        rss0 = xp.maximum(yy - g0 * d, 0.0)
        cres = c - bb * bb / a_s
        eres = e - bb * d / a_s
        rel = has & (cres > SINGULAR_RTOL * rr_raw)
        c_s = xp.where(rel, cres, 1.0)
        g_r = xp.where(rel, eres / c_s, 0.0)
        if model.nonnegative:
            rel = rel & (g_r < 0)
            g_r = xp.where(rel, g_r, 0.0)
        g_i = g0 - g_r * bb / a_s
        rss1 = xp.maximum(xp.where(rel, rss0 - g_r * eres, rss0), 0.0)
        rhs = sy - si * g_i[:, None] - sr * g_r[:, None]
        gs = rhs @ gi  # (V, p) shared coefficients (gram_inv symmetric)
        k2a = -g_i
        gamma = -g_r
        k2 = gs[:, 0]
        k2p = ex["k2p"]
        if gs.shape[1] > 1:
            r1 = gs[:, 1]
            k2prime = k2 / r1
        else:
            r1 = k2 / k2p
            k2prime = xp.full(n, k2p)
        bp = k2 / k2a - 1.0
        bp_p = k2 / (k2a + gamma) - 1.0
        release = xp.where(rel, 1.0 - bp_p / bp, 0.0)
        n_obs, p0 = float(ex["n_obs"]), float(model.p0)
        fstat = xp.where(rel, ((rss0 - rss1) / (p_eff - p0)) / (rss1 / (n_obs - p_eff)), 0.0)
        nan = xp.float64(np.nan)
        td = xp.where(rel, xp.asarray(ex["td"])[bj], nan)
        tp = xp.where(rel, xp.asarray(ex["tp"])[bj], nan)
        al = xp.where(rel, xp.asarray(ex["al"])[bj], nan)
        if not model.nonnegative:  # the chosen basis function is reported even with gamma = 0 by degeneracy
            td = xp.where(has, xp.asarray(ex["td"])[bj], nan)
            tp = xp.where(has, xp.asarray(ex["tp"])[bj], nan)
            al = xp.where(has, xp.asarray(ex["al"])[bj], nan)
        edge = xp.asarray(ex["edge"])[bj] & rel & (fstat >= f_thr)
        implausible = (k2a <= 0) | (k2 <= 0) | (r1 <= 0) | (k2a + gamma <= 0)
        st = xp.where(implausible, np.uint8(Status.IMPLAUSIBLE),
                      xp.where(edge, np.uint8(Status.GRID_EDGE), np.uint8(Status.OK)))
        st = xp.where(ok & xp.isfinite(bp), st, np.uint8(Status.SINGULAR))
        st = xp.where(finite, st, np.uint8(Status.NONFINITE_INPUT)).astype(xp.uint8)
        good = (st == Status.OK) | (st == Status.IMPLAUSIBLE) | (st == Status.GRID_EDGE)
        vals = {"bp_nd": bp, "r1": r1, "k2": k2, "k2prime": k2prime, "k2a": k2a, "gamma": gamma, "t_d": td,
                "t_p": tp, "alpha": al, "release": release, "f_stat": fstat, "wrss": rss1}
        out = {k: xp.where(good, vals[k], nan).astype(xp.float32) for k in model.param_names}
    return out, st


__all__ = ["LpntPET", "LpntPET2", "fitted_curves", "release_basis", "release_shape", "select_basis"]
