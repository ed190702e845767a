"""Basis-function simplified reference tissue models: SRTM (Gunn et al. 1997) and SRTM2 (Wu and Carson 2002).

SRTM (Lammertsma and Hume 1996) written as in Gunn et al. (1997, NeuroImage 6:279)::

    Ct(t) = R1 Cr(t) + (k2 - R1 theta3) [Cr (x) exp(-theta3 t)](t),     theta3 = k2a = k2 / (1 + BPND)

For each theta3 of a log-spaced grid the basis function ``B = Cr (x) exp(-theta3 t)`` is computed once per
scan; every TAC is then a two-parameter weighted linear least-squares fit per basis function, and the basis
function with the least weighted residual wins.  All TACs against all basis functions is one matrix product:
the regressors are orthonormalised per basis function (weighted Gram-Schmidt of ``B`` against ``Cr``), so
that the residual of basis ``j`` is ``sum(w Ct^2) - c0^2 - q_j^2`` with ``[c0, q_1..q_n] = (w Ct) @ Z``: the
best basis is the one with the largest ``|q_j|``, found without forming any other (voxels x basis) array.

SRTM2 (Wu and Carson 2002, J Cereb Blood Flow Metab 22:1440) fixes the reference efflux rate k2' for all
TACs::

    Ct(t) = R1 [Cr(t) + (k2' - k2a) Cr (x) exp(-k2a t)](t),   k2 = R1 k2',   BPND = R1 k2' / k2a - 1

so each basis function (one per k2a) is a one-parameter fit.  k2' is given, estimated by SRTM on the mean
TAC of a high-binding region (``k2prime_tac`` / ``k2prime_mask``), or estimated from a first SRTM pass over all
TACs (``"median"``: median k2' = k2/R1 over the TACs of highest tissue/reference ratio, see
:mod:`voxelkit.models.k2prime`).  ``fit.info["k2prime_source"]`` and ``k2prime_method`` say which.

Layout: this module holds the models; :mod:`voxelkit.models.srtm_basis` the basis functions and the grid,
:mod:`voxelkit.models.srtm_select` the choice of the best basis function and its refinement (both re-exported
here).

Conventions and assumptions (times in **minutes**, rates in **1/min**):

- The reference TAC is taken as piecewise linear with knots at (0, 0) at injection and at the frame
  mid-times, and constant after the last mid-time.  ``input_model="frame_mean"`` (default) solves for knot
  values whose frame means equal the measured frame values; ``"mid_linear"`` puts the measured values at the
  mid-times (kinfitr's convention; kinfitr also samples the model at mid-times instead of averaging).  On
  noiseless simulations with a sharp input peak and 10-s early frames, ``mid_linear`` biases BPND by up to
  ~0.015 at BPND 4, ``frame_mean`` by < 0.001; on kinfitr's simref curves ``mid_linear`` reproduces kinfitr
  more closely (median |dBPND| 0.001 vs 0.006).  The convolution with ``exp(-theta t)`` of that curve is
  computed *exactly* (closed form per linear segment) and then averaged exactly over each frame
  ``[start, end]`` (``mean_frame(B) = (int Cr - [B(end) - B(start)]) / (theta d)``), so uneven frame
  schedules (short early frames, long late ones) need no assumption of even sampling.
- The ``R1 Cr`` term uses the measured reference frame values.
- Time window (``window=(start, end)`` minutes): only frames inside enter the regression; the convolution
  always runs from injection, using the whole reference curve.  This is valid only if the kinetics were
  stationary over the whole scan up to the window's end: a change of binding during the scan (for example a
  challenge in a bolus-plus-infusion study) violates SRTM's model for every frame after the change, so
  SRTM/SRTM2 on a late window after a challenge are *not* valid separate estimates of the challenged state.
- Grid: ``theta3_range=(min, max)`` (1/min) and ``n_basis`` log-spaced values.  By default
  ``min = k2_low / (1 + bp_max)`` with ``k2_low = 0.5 k2'`` if ``k2prime`` is given, else 0.03/min, and
  ``max = max(1.0, 4 k2')`` (1/min); with the defaults (``bp_max=5``, no k2') the grid is [0.005, 1.0]/min,
  which reaches BPND 5 for k2 down to 0.03/min (for k2' = 0.1/min and BPND = 3, theta3 = 0.025/min).
- Choice and refinement: the float32 product only picks the best grid point.  Around it, the projections
  at 5 grid points (a stencil) and ``sum(w Ct^2)`` are recomputed in float64; with ``refine=True`` (default)
  a quartic in log(theta3) through the stencil is maximised (in |q|, i.e. least residual) by Newton steps
  from the parabola through the best point and its neighbours, and the linear parameters are interpolated
  with the same quartic weights.  This removes the grid quantisation (a 3.6% theta3 step would otherwise
  mean BPND errors up to ~0.05 at BPND 4): noiseless BPND errors are then ~1e-3, set by how well the
  piecewise-linear reference represents the true input, not by the grid.  ``wrss`` is the weighted residual
  sum of squares at the refined parameters.
- Status: TACs whose best basis function is the first or last grid point get ``GRID_EDGE`` and keep their
  (grid-point, unrefined) values: the true theta3 may lie outside the grid; widen ``theta3_range``.
  ``IMPLAUSIBLE`` (values kept): R1 <= 0 or k2 <= 0.  ``NONFINITE_INPUT`` (NaN values): NaN/inf in a fitted
  frame.  ``NONPOSITIVE`` (NaN values): the TAC has no positive projection on the reference curve
  (``sum(w Ct Cr) <= 0``, e.g. an all-zero voxel).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..backend import Backend
from ..frames import FrameTiming
from ..io import InputError
from ..threads import blas_single_thread
from .base import ModelFit, Prepared, ReferenceModel, check_window, parse_k2prime
from .k2prime import estimate_k2prime, mean_tac, record_k2prime, region_k2prime
from .srtm_basis import (  # noqa: F401 - re-exported: the basis and grid live in srtm_basis
    DEFAULT_BP_MAX,
    DEFAULT_K2_LOW,
    DEFAULT_N_BASIS,
    INPUT_MODELS,
    basis_functions,
    conv_exp_knots,
    reference_knots,
    theta_grid,
)
from .srtm_select import (  # noqa: F401 - re-exported: the selection and refinement live in srtm_select
    BLOCK_VOXELS,
    M5,
    NEWTON_STEPS,
    best_basis,
    srtm2_select_xp,
    srtm_select_xp,
)

log = logging.getLogger("voxelkit")

#: default chunk of voxels sent to the backend (the NumPy path then works in blocks of BLOCK_VOXELS for the
#: products, so only (chunk x 5) and (chunk x frames) float64 temporaries exist per chunk)
DEFAULT_CHUNK = 16384


# ------------------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------------------
class _BasisModel(ReferenceModel):
    """Shared configuration of SRTM and SRTM2 (grid, refinement)."""

    n_regressors = 2

    def __init__(self, *, theta3_range: tuple[float, float] | None = None, n_basis: int = DEFAULT_N_BASIS,
                 bp_max: float = DEFAULT_BP_MAX, k2prime: float | str | None = None, refine: bool = True,
                 input_model: str = "frame_mean", **kwargs: Any) -> None:
        kwargs.setdefault("chunk_voxels", DEFAULT_CHUNK)
        if kwargs.get("integration", "trapezoid") != "trapezoid":
            raise InputError(f"{self.name}: option integration={kwargs['integration']!r} does not apply (SRTM "
                             "convolves the reference exactly; see input_model)")
        super().__init__(**kwargs)
        k2prime = parse_k2prime(k2prime, allow_median=True)
        if k2prime == "median":
            k2prime = None  # SRTM estimates k2' per TAC; the grid then uses its wide default
        if int(n_basis) < 5:
            raise InputError(f"n_basis must be at least 5, got {n_basis}")
        if not (np.isfinite(bp_max) and bp_max > 0):
            raise InputError(f"bp_max must be positive, got {bp_max}")
        if theta3_range is not None:
            lo, hi = (float(v) for v in theta3_range)
            if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo < hi):
                raise InputError(f"theta3_range must be (min, max) with 0 < min < max (1/min), got {theta3_range}")
            theta3_range = (lo, hi)
        self.theta3_range = theta3_range
        self.n_basis = int(n_basis)
        self.bp_max = float(bp_max)
        self.k2prime = None if k2prime is None else float(k2prime)
        self.refine = bool(refine)
        if input_model not in INPUT_MODELS:
            raise InputError(f"unknown input_model {input_model!r}: choose one of {', '.join(INPUT_MODELS)}")
        self.input_model = input_model

    def fit(self, tacs: np.ndarray, reference: np.ndarray, frames: FrameTiming, **kwargs: Any) -> ModelFit:
        """As :meth:`ReferenceModel.fit` (TACs n x F, reference F, frame timing), host BLAS on one thread."""
        with blas_single_thread():
            return super().fit(tacs, reference, frames, **kwargs)

    def grid(self, k2prime: float | None = None) -> np.ndarray:
        """The theta3 / k2a grid (1/min)."""
        return theta_grid(self.theta3_range, self.n_basis, self.bp_max,
                          self.k2prime if k2prime is None else k2prime)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "theta3_range": list(self.theta3_range) if self.theta3_range else None,
                "n_basis": self.n_basis, "bp_max": self.bp_max, "refine": self.refine,
                "input_model": self.input_model, "k2prime": self.k2prime}

    def _common(self, reference: np.ndarray, frames: FrameTiming, thetas: np.ndarray) -> Prepared:
        prep = ReferenceModel._prepare(self, reference, frames)
        used = np.flatnonzero(prep.used)
        wu = prep.weights[used]
        if not (wu > 0).sum() >= self.n_regressors + 1:
            raise InputError(f"{self.name}: fewer than {self.n_regressors + 1} frames with positive weight "
                             "in the fitted range")
        basis = basis_functions(reference, frames, thetas, self.input_model)
        cr = np.asarray(reference, float)[used]
        gamma = float(np.sqrt(np.sum(wu * cr * cr)))
        if not gamma > 0:
            raise InputError(f"{self.name}: the reference TAC is zero on every weighted frame in the fitted range")
        prep.extra.update(used_idx=used, all_used=bool(used.size == frames.n_frames), wu=wu,
                          wu32=wu.astype(np.float32), basis=basis, thetas=thetas, cr_u=cr, gamma=gamma,
                          e0=cr / gamma, log_step=float(np.log(thetas[1] / thetas[0])))
        return prep

    def _info(self, prep: Prepared) -> dict[str, Any]:
        th = prep.extra["thetas"]
        return {"theta_grid_per_min": [float(th[0]), float(th[-1])], "n_basis": int(th.size),
                "log_step": prep.extra["log_step"]}

    @staticmethod
    def _constants(be: Backend, prep: Prepared) -> dict[str, Any]:
        """The per-scan arrays the device path reads, uploaded once per scan and backend (see
        :meth:`Prepared.on_device`); ``xnorm`` and ``alpha``/``beta`` only where the model has them."""
        ex = prep.extra

        def build() -> dict[str, np.ndarray]:
            out = {"z32": ex["z32"], "m5": np.asarray(M5, dtype=np.float64), "used_idx": ex["used_idx"]}
            for k in ("wu", "zt", "thetas", "alpha", "beta", "xnorm"):
                if k in ex:
                    out[k] = np.asarray(ex[k], dtype=np.float64)
            return out

        return prep.on_device(be, "srtm", build)

    @classmethod
    def _fitted_frames(cls, be: Backend, tacs: Any, prep: Prepared) -> Any:
        """The chunk's fitted frames (a contiguous window is a slice, otherwise an index array on the device)."""
        if prep.extra["all_used"]:
            return tacs
        idx = prep.extra["used_idx"]
        if idx[-1] - idx[0] + 1 == idx.size:
            return be.xp.ascontiguousarray(tacs[:, int(idx[0]):int(idx[-1]) + 1])
        return tacs[:, cls._constants(be, prep)["used_idx"]]


class SRTM(_BasisModel):
    """Basis-function SRTM (Gunn et al. 1997).

    Parameters (keyword-only)
    -------------------------
    theta3_range : (min, max) of the theta3 grid, 1/min (default from ``k2prime`` and ``bp_max``, see module).
    n_basis : number of log-spaced basis functions (default 150).
    bp_max : highest BPND the default grid must reach (default 5).
    k2prime : expected reference efflux rate k2', 1/min; only used to choose the default grid.
    refine : refine theta3 between grid points (quartic through 5 grid points + Newton; default True).
    input_model : ``frame_mean`` (default: reference knots chosen so the piecewise-linear curve keeps every
        frame mean) or ``mid_linear`` (frame values at mid-times, kinfitr's convention); see module docstring.
    window, weights, device, chunk_voxels, half_life_min : see :class:`~voxelkit.models.base.ReferenceModel`.

    Outputs: ``bp_nd``, ``r1`` (unitless), ``k2``, ``k2prime`` (= k2/R1), ``theta3`` (1/min), ``wrss``.
    """

    name = "srtm"
    param_names = ("bp_nd", "r1", "k2", "k2prime", "theta3", "wrss")

    def _prepare(self, reference: np.ndarray, frames: FrameTiming) -> Prepared:
        thetas = self.grid()
        prep = self._common(reference, frames, thetas)
        ex = prep.extra
        wu, e0 = ex["wu"], ex["e0"]
        bu = ex["basis"][ex["used_idx"]]
        alpha = (wu * e0) @ bu  # (n,) <B_j, e0>_w
        resid = bu - e0[:, None] * alpha[None, :]
        beta = np.sqrt(np.sum(wu[:, None] * resid * resid, axis=0))
        bnorm = np.sqrt(np.sum(wu[:, None] * bu * bu, axis=0))
        bad = ~(beta > 1e-7 * bnorm)
        if bad.any():
            raise InputError(f"srtm: basis functions for theta3 >= {thetas[np.argmax(bad)]:.4g}/min are "
                             "indistinguishable from the reference curve on these frames; lower theta3_range")
        z = np.empty((wu.size, thetas.size + 1))
        z[:, 0] = wu * e0
        z[:, 1:] = wu[:, None] * resid / beta[None, :]
        ex.update(z=z, z32=np.ascontiguousarray(z, dtype=np.float32), zt=np.ascontiguousarray(z.T), alpha=alpha,
                  beta=beta)
        return prep

    def _fit_chunk(self, be: Backend, tacs: Any, prep: Prepared) -> tuple[dict[str, Any], Any]:
        xp = be.xp
        ex = prep.extra
        y = self._fitted_frames(be, tacs, prep)
        if be.is_gpu:
            p = y @ self._constants(be, prep)["z32"]  # (V, n+1) float32: c0, q_1..q_n
            return self._select_kernel(be, y, p, prep)
        best = best_basis(xp, y, ex["z32"], signed=False)
        return srtm_select_xp(xp, best, y, prep, self.refine)

    def _select_kernel(self, be: Backend, y: Any, p: Any, prep: Prepared) -> tuple[dict[str, Any], Any]:
        xp = be.xp
        ex = prep.extra
        y = xp.ascontiguousarray(y)
        n, f = y.shape
        nb = int(ex["thetas"].size)
        out = {k: xp.empty(n, dtype=np.float32) for k in self.param_names}
        status = xp.empty(n, dtype=np.uint8)
        kern = be.kernel("srtm", "srtm_select")
        c = self._constants(be, prep)
        be.launch(kern, n, (y, c["wu"], xp.ascontiguousarray(p), c["zt"], c["thetas"], c["alpha"], c["beta"],
                            c["m5"], np.float64(ex["gamma"]),
                            np.float64(ex["log_step"]), np.int32(n), np.int32(f), np.int32(nb),
                            np.int32(1 if self.refine else 0), out["bp_nd"], out["r1"], out["k2"],
                            out["k2prime"], out["theta3"], out["wrss"], status))
        return out, status

    def predict(self, params: dict[str, np.ndarray], reference: np.ndarray, frames: FrameTiming) -> np.ndarray:
        """Fitted TACs (n x F) from ``r1``, ``k2`` and ``theta3`` (1/min), frame averages."""
        r1 = np.asarray(params["r1"], float).reshape(-1)
        k2 = np.asarray(params["k2"], float).reshape(-1)
        th = np.asarray(params["theta3"], float).reshape(-1)
        return _predict(reference, frames, r1, k2 - r1 * th, th, self.input_model)


class SRTM2(_BasisModel):
    """Basis-function SRTM2 (Wu and Carson 2002): k2' common to all TACs.

    Parameters (keyword-only)
    -------------------------
    k2prime : reference efflux rate k2', 1/min; or None / ``"median"``: estimated from a first SRTM pass over
        the TACs being fitted: the median k2' = k2/R1 over the fitted TACs whose tissue/reference ratio is at or
        above its ``k2prime_bp_quantile`` quantile (the same rule as MRTM2's ``median``; see
        :mod:`voxelkit.models.k2prime`, which also says why the ratio, not the noisy BPND, selects).
    k2prime_tac : the TAC (F,) of a high-binding region: k2' = k2/R1 of its SRTM fit; ``k2prime_name`` describes
        it (for ``fit.info``).  :func:`voxelkit.fit` / ``fit_tacs`` pass a region this way.
    k2prime_mask : boolean mask over the TAC rows (a high-binding region): k2' = k2/R1 of an SRTM fit of the
        mean of its finite TACs.  ``k2prime_region`` is accepted as another name (as MRTM2 calls it).
    k2prime_bp_quantile : see ``k2prime`` (default 0.9).
    k2prime_window : ``(start, end)`` minutes: the frames (mid-time rule) the SRTM pass that estimates k2' uses.
        Default None: **all frames of the scan**, also when ``window`` restricts the SRTM2 fit itself (k2'
        belongs to the scan; every window of a scan then uses the same k2').
    theta3_range, n_basis, bp_max, refine, input_model : the k2a grid (1/min) and basis, as for :class:`SRTM`
        (the default grid uses the k2' in use).
    window, weights, device, chunk_voxels, half_life_min : see :class:`~voxelkit.models.base.ReferenceModel`.

    Where k2' came from goes to ``fit.info`` (``k2prime_source``, ``k2prime``, details) and the sidecar.
    Outputs: ``bp_nd``, ``r1``, ``k2`` (= R1 k2'), ``k2a`` (1/min), ``k2prime`` (the k2' used), ``wrss``.
    """

    name = "srtm2"
    param_names = ("bp_nd", "r1", "k2", "k2a", "k2prime", "wrss")
    n_regressors = 1

    def __init__(self, *, k2prime: float | str | None = None, k2prime_mask: np.ndarray | None = None,
                 k2prime_region: np.ndarray | None = None, k2prime_bp_quantile: float = 0.9,
                 k2prime_window: tuple[float | None, float | None] | None = None,
                 k2prime_tac: np.ndarray | None = None, k2prime_name: str | None = None, **kwargs: Any) -> None:
        k2prime = parse_k2prime(k2prime, allow_median=True)
        if k2prime == "median":
            k2prime = None
        super().__init__(k2prime=k2prime, **kwargs)
        self.k2prime_window = check_window(k2prime_window, "k2prime_window")
        if self.k2prime_window is not None and self.k2prime is not None:
            raise InputError("srtm2: k2prime_window (--k2prime-window) only applies when k2' is estimated "
                             "(k2prime='median' or a k2' region), not with a given k2prime")
        if k2prime_region is not None:
            if k2prime_mask is not None:
                raise InputError("srtm2: give k2prime_mask or k2prime_region, not both")
            k2prime_mask = k2prime_region
        if k2prime_mask is not None:
            k2prime_mask = np.asarray(k2prime_mask)
            if k2prime_mask.dtype != bool:
                raise InputError("k2prime_mask must be a boolean mask over the TACs")
            if self.k2prime is not None:
                raise InputError("srtm2: give k2prime or k2prime_mask, not both")
            if not k2prime_mask.any():
                raise InputError("k2prime_mask selects no TAC")
        self.k2prime_mask = None if k2prime_mask is None else k2prime_mask.reshape(-1)
        if k2prime_tac is not None and (self.k2prime is not None or self.k2prime_mask is not None):
            raise InputError("srtm2: give only one source of k2' (k2prime, k2prime_mask or k2prime_tac)")
        self.k2prime_tac = None if k2prime_tac is None else np.asarray(k2prime_tac, dtype=float).reshape(-1)
        self.k2prime_name = k2prime_name
        if not 0.0 <= float(k2prime_bp_quantile) < 1.0:
            raise InputError(f"k2prime_bp_quantile must be in [0, 1), got {k2prime_bp_quantile}")
        self.k2prime_bp_quantile = float(k2prime_bp_quantile)

    def options(self) -> dict[str, Any]:
        out = super().options()
        region = self.k2prime_mask is not None or self.k2prime_tac is not None
        out["k2prime"] = self.k2prime if self.k2prime is not None else None if region else "median"
        if self.k2prime is None and not region:
            out["k2prime_bp_quantile"] = self.k2prime_bp_quantile
        if self.k2prime is None:
            out["k2prime_window"] = list(self.k2prime_window) if self.k2prime_window else None
        return out

    def first_pass(self) -> SRTM:
        """The SRTM used to estimate k2' (same grid options, weights, device) over ``k2prime_window``
        (default all frames), not over the fit's ``window``."""
        m = SRTM(theta3_range=self.theta3_range, n_basis=self.n_basis, bp_max=self.bp_max,
                 refine=self.refine, input_model=self.input_model, window=self.k2prime_window, weights=self.weights,
                 device=self.device, chunk_voxels=self.chunk_voxels, integration=self.integration,
                 half_life_min=self.half_life_min)
        m.quiet = True
        return m

    def estimate_k2prime(self, tacs: np.ndarray, reference: np.ndarray, frames: FrameTiming,
                         names: list[str] | None = None) -> tuple[float, dict[str, Any]]:
        """k2' (1/min) from the SRTM pass (see the class docstring), and a description of the source."""
        tacs = np.atleast_2d(np.asarray(tacs))
        srtm = self.first_pass()
        if self.k2prime_tac is not None:
            what = self.k2prime_name or "the k2' region TAC"
            k2p, extra = region_k2prime(srtm, self.k2prime_tac, reference, frames, what, "srtm2")
            return k2p, {"k2prime_source": f"SRTM fit of {what}", **extra}
        if self.k2prime_mask is not None:
            if self.k2prime_mask.size != tacs.shape[0]:
                raise InputError(f"k2prime_mask has {self.k2prime_mask.size} entries for {tacs.shape[0]} TACs")
            sel = self.k2prime_mask & np.isfinite(tacs).all(axis=1)
            if not sel.any():
                raise InputError("srtm2: the k2prime mask selects no TAC with finite values")
            k2p, extra = region_k2prime(srtm, mean_tac(tacs, sel), reference, frames,
                                        "the k2' region's mean TAC", "srtm2")
            return k2p, {"k2prime_source": "SRTM fit of the mean TAC of the k2' region mask",
                         "k2prime_region_n": int(sel.sum()), **extra}
        return estimate_k2prime(srtm, tacs, reference, frames, self.k2prime_bp_quantile, names, self.name)

    def _prepare(self, reference: np.ndarray, frames: FrameTiming) -> Prepared:
        prep = ReferenceModel._prepare(self, reference, frames)
        if self.k2prime is not None:  # everything is known now; else in _prepare_tacs
            self._build(prep, self.k2prime, {"k2prime_source": "given"})
        return prep

    def _prepare_tacs(self, tacs: np.ndarray, prep: Prepared, names: list[str] | None) -> None:
        if "z32" not in prep.extra:
            k2p, info = self.estimate_k2prime(tacs, prep.reference, prep.frames, names)
            record_k2prime(self.name, k2p, info, self.k2prime_window, prep.frames, self.quiet)
            self._build(prep, k2p, info)

    def _build(self, prep: Prepared, k2p: float, info: dict[str, Any]) -> None:
        thetas = self.grid(k2p)
        full = self._common(prep.reference, prep.frames, thetas)
        prep.extra.update(full.extra)
        ex = prep.extra
        wu = ex["wu"]
        bu = ex["basis"][ex["used_idx"]]
        x = ex["cr_u"][:, None] + (k2p - thetas)[None, :] * bu  # (F_u, n) regressor per k2a
        xnorm = np.sqrt(np.sum(wu[:, None] * x * x, axis=0))
        if not (xnorm > 0).all():
            raise InputError("srtm2: a basis regressor is zero on the fitted frames")
        z = np.empty((wu.size, thetas.size + 1))
        z[:, 0] = wu * ex["e0"]
        z[:, 1:] = wu[:, None] * x / xnorm[None, :]
        ex.update(z=z, z32=np.ascontiguousarray(z, dtype=np.float32), zt=np.ascontiguousarray(z.T), xnorm=xnorm,
                  k2prime=float(k2p),
                  info={**info, "k2prime": float(k2p)})

    def _info(self, prep: Prepared) -> dict[str, Any]:
        return {**super()._info(prep), **prep.extra.get("info", {})}

    def _fit_chunk(self, be: Backend, tacs: Any, prep: Prepared) -> tuple[dict[str, Any], Any]:
        xp = be.xp
        ex = prep.extra
        y = self._fitted_frames(be, tacs, prep)
        if be.is_gpu:
            c = self._constants(be, prep)
            p = y @ c["z32"]  # (V, n+1) float32: c0, s_1..s_n
            y = xp.ascontiguousarray(y)
            n, f = y.shape
            out = {k: xp.empty(n, dtype=np.float32) for k in self.param_names}
            status = xp.empty(n, dtype=np.uint8)
            kern = be.kernel("srtm", "srtm2_select")
            be.launch(kern, n, (y, c["wu"], xp.ascontiguousarray(p), c["zt"], c["thetas"], c["xnorm"], c["m5"],
                                np.float64(ex["k2prime"]),
                                np.float64(ex["log_step"]), np.int32(n), np.int32(f),
                                np.int32(ex["thetas"].size), np.int32(1 if self.refine else 0), out["bp_nd"],
                                out["r1"], out["k2"], out["k2a"], out["k2prime"], out["wrss"], status))
            return out, status
        best = best_basis(xp, y, ex["z32"], signed=True)
        return srtm2_select_xp(xp, best, y, prep, self.refine)

    def predict(self, params: dict[str, np.ndarray], reference: np.ndarray, frames: FrameTiming) -> np.ndarray:
        """Fitted TACs (n x F) from ``r1``, ``k2a`` and ``k2prime`` (1/min), frame averages."""
        r1 = np.asarray(params["r1"], float).reshape(-1)
        k2a = np.asarray(params["k2a"], float).reshape(-1)
        k2p = np.asarray(params["k2prime"], float).reshape(-1)
        return _predict(reference, frames, r1, r1 * (k2p - k2a), k2a, self.input_model)


def _predict(reference: np.ndarray, frames: FrameTiming, r1: np.ndarray, theta2: np.ndarray,
             rate: np.ndarray, input_model: str = "frame_mean") -> np.ndarray:
    """``r1 Cr + theta2 * mean_frame(Cr (x) exp(-rate t))`` for each row (NaN where a parameter is not finite)."""
    ref = np.asarray(reference, float).reshape(-1)
    out = np.full((r1.size, ref.size), np.nan)
    ok = np.isfinite(r1) & np.isfinite(theta2) & np.isfinite(rate) & (rate > 0)
    if ok.any():
        b = basis_functions(ref, frames, rate[ok], input_model)  # (F, n_ok)
        out[ok] = r1[ok, None] * ref[None, :] + theta2[ok, None] * b.T
    return out
