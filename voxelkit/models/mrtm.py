"""Ichise's multilinear reference tissue models MRTM (three parameters) and MRTM2 (two parameters, k2' fixed).

Ichise M, Liow JS, Lu JQ, et al. (2003) J Cereb Blood Flow Metab 23:1096-1112.  From SRTM
(``dCt/dt = R1 dCr/dt + k2 Cr - k2a Ct`` with ``k2 = R1 k2'``, ``k2a = k2 / (1 + BPND)``), integrating from
injection gives the operational equations, fitted by weighted linear least squares over the fitted frames::

    MRTM :  Ct(t) = g1 int_0^t Cr + g2 int_0^t Ct + g3 Cr(t)
            g1 = k2,  g2 = -k2a,  g3 = R1     ->  BPND = -(g1/g2) - 1,  R1 = g3,  k2 = g1,  k2' = g1/g3
    MRTM2:  Ct(t) = g1 (int_0^t Cr + Cr(t)/k2') + g2 int_0^t Ct
            g1 = k2,  g2 = -k2a               ->  BPND = -(g1/g2) - 1,  k2 = g1,  R1 = g1/k2'

(as kinfitr's ``mrtm1``/``mrtm2``).  Times in minutes, k2, k2', k2a in 1/min, R1 unitless, ``wrss`` in
(activity unit)^2 x weight.  Integrals run from injection to each frame's mid-time over **all** frames (the
``integration`` rule, default the trapezoid with a zero at injection, as kinfitr); the regression uses only
the frames inside ``window``.

Solution.  The columns ``int Cr`` and ``Cr`` are the same for every voxel, only ``int Ct`` differs, so the
3x3 (2x2) normal equations are solved by block elimination (Frisch-Waugh): the shared columns' weighted Gram
matrix is inverted once per scan, every voxel needs seven weighted sums (2p of them linear in its TAC: one
``einsum`` with precomputed vectors; the quadratic ones accumulated in a loop over frames vectorized over
voxels, with the running-integral recurrence) and one division.  NumPy and the CUDA kernel
(``kernels/mrtm.cu``, one voxel per thread) do the same arithmetic in float64 with the same status rules.

With the default trapezoid rule on frame-average data the operational equation is only approximately
satisfied; on an uneven 90-min schedule this biases BPND by up to about -0.01 at BPND 4 (MRTM).  The
``frame_average`` rule (frame averages of the running integral, see
:func:`voxelkit.models.base.model_integration`) removes it (< 0.0005 in the truth tests).

Status: NaN/inf in a TAC -> ``nonfinite_input``; ``int Ct`` (numerically) in the span of the shared columns
(e.g. an all-zero voxel) or a non-finite BPND -> ``singular``; both with NaN parameters.  A fit with
``k2a <= 0``, ``k2 <= 0`` or (MRTM) ``R1 <= 0`` keeps its values but gets ``implausible``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..backend import Backend
from ..frames import FrameTiming
from ..io import InputError
from .base import Prepared, ReferenceModel, check_window, needed_frames, parse_k2prime, running_integrals
from .k2prime import estimate_k2prime, mean_tac, record_k2prime, region_k2prime
from .status import Status

log = logging.getLogger("voxelkit")

#: Relative tolerance under which the voxel's ``int Ct`` column counts as lying in the span of the shared
#: columns (``singular``): residual sum of squares of ``int Ct`` <= RTOL x its total sum of squares.
SINGULAR_RTOL = 1e-10

#: Sub-chunk (voxels) of the array-module path: the (frames x voxels) float64 block and ~12 voxel vectors.
NUMPY_BLOCK = 32768


def _shared_design(prep: Prepared, columns: list[np.ndarray], integ: np.ndarray, scheme: str) -> dict[str, Any]:
    """Precompute everything the per-voxel solve needs from the shared regressors ``columns`` (each (F,)).

    Returns ``extra`` entries: ``used_idx``, ``n_needed``, ``mu`` (n_used x n_needed integration rows),
    ``wu`` (weights of used frames), ``vy``/``vx`` ((n_needed, p): TAC -> ``X_s' W y`` / ``X_s' W int Ct``),
    ``gram_inv`` (p x p), ``xs`` (p, F) shared columns."""
    used_idx = np.flatnonzero(prep.used)
    n_needed = needed_frames(prep.used, scheme)
    w = prep.weights
    wu = w[used_idx]
    xs = np.stack(columns)  # (p, F)
    xsu = xs[:, used_idx]  # (p, n_used)
    gram = (xsu * wu) @ xsu.T
    scale = np.sqrt(np.diag(gram))
    if not (np.all(np.isfinite(gram)) and np.all(scale > 0)):
        raise InputError("the reference TAC gives a singular design in the fitted frames (zero or non-finite "
                         "reference there?)")
    corr = gram / np.outer(scale, scale)
    if np.linalg.det(corr) < 1e-12:
        raise InputError("the reference TAC gives a singular design in the fitted frames (int Cr and Cr are "
                         "collinear: too few frames or a degenerate reference TAC?)")
    gram_inv = np.linalg.inv(gram)
    mu = integ[np.ix_(used_idx, np.arange(n_needed))]  # (n_used, n_needed)
    wx = (xsu * wu).T  # (n_used, p)
    vy = np.zeros((n_needed, xs.shape[0]))
    vy[used_idx] = wx
    vx = mu.T @ wx
    return {"used_idx": used_idx, "n_needed": n_needed, "mu": mu, "wu": wu, "vy": vy, "vx": vx,
            "gram_inv": gram_inv, "xs": xs}


def mrtm_sums_xp(xp: Any, ct: Any, co: dict[str, Any]) -> tuple[Any, ...]:
    """Per-voxel weighted sums of a block ``ct`` (n_needed x n: frames x voxels, float64, finite).

    Returns ``sy``, ``sx`` (lists of p arrays (n,): X_s'W y, X_s'W I), ``sii`` = I'WI, ``siy`` = I'Wy,
    ``syy`` = y'Wy, with ``I`` the running integral of the voxel's TAC at the used frames.  A loop over frames
    vectorized over voxels (the same recurrence and order of operations as ``kernels/mrtm.cu``): with voxels
    contiguous per frame this is several times faster than a (voxels x frames) @ (frames x frames) product.
    ``co`` holds host scalars per frame: ``a``, ``b``, ``cm``, ``c0``, ``cp`` (:func:`model_integration`),
    ``w`` (weights), ``used`` (bool), ``xs`` (p, F) shared columns, ``v`` (n_needed, 2p) the vectors giving
    the linear terms (see :func:`_shared_design`)."""
    n = ct.shape[1]
    w, used, xs = co["w"], co["used"], co["xs"]
    p = xs.shape[0]
    zeros = lambda: xp.zeros(n, dtype=xp.float64)  # noqa: E731
    sii, siy, syy = zeros(), zeros(), zeros()
    # the linear terms X_s'W y and X_s'W I are linear in the TAC: one einsum (no BLAS: OpenBLAS threads are
    # slow for such thin products on a busy machine)
    lin = xp.einsum("fk,fn->kn", co["v"][:ct.shape[0]], ct)
    sy = [lin[k] for k in range(p)]
    sx = [lin[p + k] for k in range(p)]
    t = xp.empty(n, dtype=xp.float64)
    u = xp.empty(n, dtype=xp.float64)
    coefs = tuple(co[k] for k in ("a", "b", "cm", "c0", "cp"))
    for j, integ in running_integrals(xp, ct, coefs):
        cj = ct[j]
        if not used[j] or w[j] == 0.0:
            continue
        xp.multiply(integ, w[j], out=t)  # w I
        xp.multiply(t, integ, out=u)
        sii += u
        xp.multiply(t, cj, out=u)
        siy += u
        xp.multiply(cj, w[j], out=t)
        t *= cj
        syy += t
    return sy, sx, sii, siy, syy


def mrtm_solve_xp(xp: Any, sy: Any, sx: Any, sii: Any, siy: Any, syy: Any,
                  gram_inv: np.ndarray) -> tuple[Any, Any, Any, Any]:
    """Block-eliminated weighted least squares (``sy``, ``sx``: lists of p arrays).

    Returns the shared-column coefficients ``gs`` (list of p arrays (n,)), the ``int Ct`` coefficient ``g2``
    (n,), the weighted residual sum of squares and an ``ok`` flag.  ``gram_inv`` (p x p, host) is the inverse
    weighted Gram matrix of the shared columns; the tiny products with it are written out (p <= 2)."""
    p = gram_inv.shape[0]
    sxs, sys_ = sx, sy
    gsx = [sum(float(gram_inv[k, m]) * sxs[m] for m in range(p)) for k in range(p)]  # G X_s'W I
    gsy = [sum(float(gram_inv[k, m]) * sys_[m] for m in range(p)) for k in range(p)]
    den = sii - sum(gsx[k] * sxs[k] for k in range(p))  # ||I - P I||_W^2
    num = siy - sum(gsx[k] * sys_[k] for k in range(p))  # <I - P I, y>_W
    ok = den > SINGULAR_RTOL * sii
    g2 = num / xp.where(ok, den, 1.0)
    gs = [gsy[k] - g2 * gsx[k] for k in range(p)]
    rss = (syy - sum(gsy[k] * sys_[k] for k in range(p))) - g2 * num
    return gs, g2, xp.maximum(rss, 0.0), ok


class _MRTMBase(ReferenceModel):
    """Shared machinery of MRTM and MRTM2 (subclasses define the shared columns and the parameters)."""

    n_shared: int = 2

    def _shared_columns(self, reference: np.ndarray, integ: np.ndarray, prep: Prepared) -> list[np.ndarray]:
        raise NotImplementedError

    def _prepare(self, reference: np.ndarray, frames: FrameTiming) -> Prepared:
        prep = super()._prepare(reference, frames)
        prep.extra["integ"] = self.integration_matrix(frames)
        return prep

    def _build(self, prep: Prepared) -> None:
        integ = prep.extra["integ"]
        prep.extra.update(_shared_design(prep, self._shared_columns(prep.reference, integ, prep), integ,
                                         self.integration))

    def _prepare_tacs(self, tacs: np.ndarray, prep: Prepared, names: list[str] | None) -> None:
        self._build(prep)

    def _fit_chunk(self, be: Backend, tacs: Any, prep: Prepared) -> tuple[dict[str, Any], Any]:
        if be.is_gpu:
            return self._fit_chunk_kernel(be, tacs, prep)
        return self._fit_chunk_xp(be, tacs, prep)

    # -- array-module path ----------------------------------------------------------------------------------
    def _fit_chunk_xp(self, be: Backend, tacs: Any, prep: Prepared) -> tuple[dict[str, Any], Any]:
        xp = be.xp
        ex = prep.extra
        a, b = self.integration_coefficients(prep.frames)
        cm, c0, cp = self.integration_local(prep.frames)
        v = prep.on_device(be, "mrtm_xp", lambda: {"v": np.concatenate([ex["vy"], ex["vx"]], axis=1)})["v"]
        co = {"a": a, "b": b, "cm": cm, "c0": c0, "cp": cp, "w": prep.weights, "used": prep.used, "xs": ex["xs"],
              "v": v}
        n_needed = ex["n_needed"]
        n = tacs.shape[0]
        out = {k: xp.empty(n, dtype=xp.float32) for k in self.param_names}
        status = xp.empty(n, dtype=xp.uint8)
        for s in range(0, n, NUMPY_BLOCK):
            sl = slice(s, min(n, s + NUMPY_BLOCK))
            ct = xp.ascontiguousarray(tacs[sl, :n_needed].T, dtype=xp.float64)  # frames x voxels
            finite = xp.isfinite(ct.sum(axis=0))  # NaN/inf anywhere in the voxel's frames
            if not bool(finite.all()):
                ct = xp.where(finite[None, :], ct, 0.0)
            sy, sx, sii, siy, syy = mrtm_sums_xp(xp, ct, co)
            gs, g2, rss, ok = mrtm_solve_xp(xp, sy, sx, sii, siy, syy, ex["gram_inv"])
            p, st = self._params_xp(xp, gs, g2, rss, ok, finite, prep)
            for k in self.param_names:
                out[k][sl] = p[k]
            status[sl] = st
        return out, status

    def _status_xp(self, xp: Any, ok: Any, finite: Any, bp: Any, implausible: Any) -> Any:
        st = xp.where(implausible, np.uint8(Status.IMPLAUSIBLE), np.uint8(Status.OK)).astype(xp.uint8)
        st = xp.where(ok & xp.isfinite(bp), st, np.uint8(Status.SINGULAR))
        return xp.where(finite, st, np.uint8(Status.NONFINITE_INPUT)).astype(xp.uint8)

    def _params_xp(self, xp: Any, gs: Any, g2: Any, rss: Any, ok: Any, finite: Any,
                   prep: Prepared) -> tuple[dict[str, Any], Any]:
        raise NotImplementedError

    # -- CUDA path ----------------------------------------------------------------------------------------------
    def _fit_chunk_kernel(self, be: Backend, tacs: Any, prep: Prepared) -> tuple[dict[str, Any], Any]:
        xp = be.xp
        ex = prep.extra
        n, f = tacs.shape
        p = ex["xs"].shape[0]

        def build() -> dict[str, np.ndarray]:
            ca, cb = self.integration_coefficients(prep.frames)
            cm, c0, cp = self.integration_local(prep.frames)
            xs = np.zeros((2, f))
            xs[:p] = ex["xs"]
            gram_inv = np.zeros((2, 2))
            gram_inv[:p, :p] = ex["gram_inv"]
            out = {k: np.asarray(v, dtype=np.float64) for k, v in (("ca", ca), ("cb", cb), ("cm", cm), ("c0", c0),
                                                                  ("cp", cp), ("x0", xs[0]), ("x1", xs[1]),
                                                                  ("w", prep.weights),
                                                                  ("gram_inv", gram_inv.reshape(-1)))}
            out["used"] = prep.used.astype(np.uint8)
            return out

        c = prep.on_device(be, "mrtm", build)  # once per scan and backend, not per chunk
        out = {k: xp.empty(n, dtype=np.float32) for k in ("bp_nd", "r1", "k2", "k2prime", "wrss")}
        status = xp.empty(n, dtype=np.uint8)
        k2p_fixed = float(ex.get("k2prime_used", 0.0) or 0.0)
        kern = be.kernel("mrtm", "mrtm_fit")
        be.launch(kern, n, (tacs, c["ca"], c["cb"], c["cm"], c["c0"], c["cp"], c["x0"], c["x1"], c["w"],
                            c["used"], c["gram_inv"], np.int32(n),
                            np.int32(f), np.int32(ex["n_needed"]), np.int32(p), np.float64(k2p_fixed),
                            out["bp_nd"], out["r1"], out["k2"], out["k2prime"], out["wrss"], status))
        return {k: out[k] for k in self.param_names}, status

    # -- fitted curves ------------------------------------------------------------------------------------------
    def predict(self, params: dict[str, np.ndarray], reference: np.ndarray, frames: FrameTiming) -> np.ndarray:
        """Model TACs (k x F, activity) implied by ``bp_nd``, ``r1``, ``k2`` and the reference TAC.

        Solves the discretised operational equation ``Ct = k2 int Cr + R1 Cr - k2a int Ct`` exactly for
        ``Ct`` (a lower-triangular system, since the running integral uses only frames up to each one), with
        the same integration rule as the fit: the curve the model predicts from the reference alone, over
        all frames (also those outside the window).  NaN parameters give NaN curves."""
        if self.integration == "frame_average":  # the local term looks one frame ahead: full solve
            integ = self.integration_matrix(frames)
            ref = np.asarray(reference, dtype=float).reshape(-1)
            bp, r1, k2 = (np.asarray(params[k], dtype=float).reshape(-1) for k in ("bp_nd", "r1", "k2"))
            g2 = -k2 / (1.0 + bp)
            rhs = k2[:, None] * (integ @ ref)[None, :] + r1[:, None] * ref[None, :]
            a = np.eye(ref.size)[None] - g2[:, None, None] * integ[None]
            bad = ~np.isfinite(rhs).all(axis=1) | ~np.isfinite(g2)
            a[bad] = np.eye(ref.size)
            out = np.linalg.solve(a, np.where(bad[:, None], 0.0, rhs)[..., None])[..., 0]
            out[bad] = np.nan
            return out
        integ = self.integration_matrix(frames)
        ref = np.asarray(reference, dtype=float).reshape(-1)
        bp = np.asarray(params["bp_nd"], dtype=float).reshape(-1)
        r1 = np.asarray(params["r1"], dtype=float).reshape(-1)
        k2 = np.asarray(params["k2"], dtype=float).reshape(-1)
        g2 = -k2 / (1.0 + bp)
        rhs = k2[:, None] * (integ @ ref)[None, :] + r1[:, None] * ref[None, :]
        out = np.empty_like(rhs)
        for i in range(ref.size):  # forward substitution over frames (vectorized over TACs)
            acc = rhs[:, i] + g2 * (out[:, :i] @ integ[i, :i])
            out[:, i] = acc / (1.0 - g2 * integ[i, i])
        return out


class MRTM(_MRTMBase):
    """MRTM (Ichise 2003), three parameters; outputs ``bp_nd``, ``r1``, ``k2`` (1/min), ``k2prime`` (1/min),
    ``wrss`` and a status code per TAC.

    Parameters: ``window``, ``weights``, ``integration``, ``half_life_min``, ``device``, ``chunk_voxels``
    (see :class:`~voxelkit.models.base.ReferenceModel`).
    """

    name = "mrtm"
    param_names = ("bp_nd", "r1", "k2", "k2prime", "wrss")
    n_regressors = 3

    def _shared_columns(self, reference: np.ndarray, integ: np.ndarray, prep: Prepared) -> list[np.ndarray]:
        return [integ @ reference, reference]

    def _params_xp(self, xp: Any, gs: Any, g2: Any, rss: Any, ok: Any, finite: Any,
                   prep: Prepared) -> tuple[dict[str, Any], Any]:
        g1, g3 = gs
        g2s = xp.where(g2 != 0, g2, 1.0)
        bp = xp.where(g2 != 0, -(g1 / g2s) - 1.0, xp.inf)
        g3s = xp.where(g3 != 0, g3, 1.0)
        k2p = xp.where(g3 != 0, g1 / g3s, xp.nan)
        implausible = (g2 >= 0) | (g1 <= 0) | (g3 <= 0)
        st = self._status_xp(xp, ok, finite, bp, implausible)
        good = (st == Status.OK) | (st == Status.IMPLAUSIBLE)
        nan = xp.float64(np.nan)
        out = {"bp_nd": xp.where(good, bp, nan), "r1": xp.where(good, g3, nan), "k2": xp.where(good, g1, nan),
               "k2prime": xp.where(good, k2p, nan), "wrss": xp.where(good, rss, nan)}
        return {k: v.astype(xp.float32) for k, v in out.items()}, st


class MRTM2(_MRTMBase):
    """MRTM2 (Ichise 2003), two parameters with k2' fixed; outputs ``bp_nd``, ``r1``, ``k2`` (1/min),
    ``k2prime`` (the k2' used, 1/min), ``wrss`` and a status code per TAC.

    Exactly one source of k2' (1/min):

    k2prime : a number (1/min), or ``"median"``: the median k2' of a first MRTM pass over the TACs being fitted,
        taken over the fitted TACs whose tissue/reference ratio (over the k2' frames) is at or above its
        ``k2prime_bp_quantile`` quantile (see :mod:`voxelkit.models.k2prime`: selecting on the first pass's own
        noisy BPND, as before this release, biased k2' low by up to 40 % on noisy voxels).
    k2prime_region : a boolean mask over the TACs (n,): k2' from an MRTM fit of the mean of its finite TACs
        (a high-binding region).  ``k2prime_mask`` is accepted as another name for it (as SRTM2 calls it).
    k2prime_tac : a TAC (F,) of a high-binding region: k2' from its MRTM fit.
    k2prime_name : description of where ``k2prime_region``/``k2prime_tac`` came from (for ``fit.info``).

    k2prime_window : ``(start, end)`` minutes: the frames (mid-time rule) the MRTM fit of the k2' source uses.
        Default None: **all frames of the scan**, also when ``window`` restricts the MRTM2 fit itself: k2'
        belongs to the scan (a per-window k2' from a short early window is biased), so every window of a scan
        uses the same k2'.

    Which source was used, its value, the frames it came from (``k2prime_window_min``, None = all frames) and
    details go to ``fit.info`` (``k2prime_source``, ``k2prime``...), and from there to the JSON sidecar.  The
    MRTM fit of the k2' source uses the same weights and integration rule.
    """

    name = "mrtm2"
    param_names = ("bp_nd", "r1", "k2", "k2prime", "wrss")
    n_regressors = 2

    def __init__(self, *, k2prime: float | str | None = None, k2prime_region: np.ndarray | None = None,
                 k2prime_tac: np.ndarray | None = None, k2prime_name: str | None = None,
                 k2prime_bp_quantile: float = 0.9, k2prime_mask: np.ndarray | None = None,
                 k2prime_window: tuple[float | None, float | None] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k2prime_window = check_window(k2prime_window, "k2prime_window")
        if k2prime_mask is not None:  # the name SRTM2 uses
            if k2prime_region is not None:
                raise InputError("mrtm2: give k2prime_region or k2prime_mask, not both")
            k2prime_region = np.asarray(k2prime_mask, dtype=bool)
        given = [k for k, v in (("k2prime", k2prime), ("k2prime_region", k2prime_region),
                                ("k2prime_tac", k2prime_tac)) if v is not None]
        if not given:
            raise InputError("mrtm2 needs k2' (1/min): give k2prime=<value> (--k2prime K), k2prime='median' "
                             "(--k2prime median: from an MRTM fit of the data), a high-binding region "
                             "(k2prime_region / --k2prime-region COLUMN / "
                             "--k2prime-mask IMG) or its TAC (k2prime_tac)")
        if len(given) > 1:
            raise InputError(f"mrtm2: give only one source of k2', got {', '.join(given)}")
        k2prime = parse_k2prime(k2prime, allow_median=True)
        if not 0.0 <= float(k2prime_bp_quantile) < 1.0:
            raise InputError(f"k2prime_bp_quantile must be in [0, 1), got {k2prime_bp_quantile}")
        self.k2prime = k2prime if isinstance(k2prime, str) or k2prime is None else float(k2prime)
        if self.k2prime_window is not None and isinstance(self.k2prime, float):
            raise InputError("mrtm2: k2prime_window (--k2prime-window) only applies when k2' is estimated "
                             "(k2prime='median' or a k2' region), not with a given k2prime")
        self.k2prime_region = None if k2prime_region is None else np.asarray(k2prime_region)
        if self.k2prime_region is not None and self.k2prime_region.dtype != bool:
            raise InputError("k2prime_region must be a boolean mask over the TACs (use k2prime_tac for a TAC)")
        self.k2prime_tac = None if k2prime_tac is None else np.asarray(k2prime_tac, dtype=float).reshape(-1)
        self.k2prime_name = k2prime_name
        self.k2prime_bp_quantile = float(k2prime_bp_quantile)

    def options(self) -> dict[str, Any]:
        out = {**super().options(), "k2prime": self.k2prime}
        if self.k2prime == "median":
            out["k2prime_bp_quantile"] = self.k2prime_bp_quantile
        if not isinstance(self.k2prime, float):
            out["k2prime_window"] = list(self.k2prime_window) if self.k2prime_window else None
        return out

    def _mrtm(self) -> MRTM:
        """The MRTM that estimates k2': over ``k2prime_window`` (default all frames), not the fit's window."""
        m = MRTM(window=self.k2prime_window, weights=self.weights, device=self.device,
                 chunk_voxels=self.chunk_voxels, integration=self.integration, half_life_min=self.half_life_min)
        m.quiet = True
        return m

    def _k2prime_from_tac(self, tac: np.ndarray, prep: Prepared, what: str) -> tuple[float, dict[str, Any]]:
        return region_k2prime(self._mrtm(), tac, prep.reference, prep.frames, what, "mrtm2")

    def _prepare_tacs(self, tacs: np.ndarray, prep: Prepared, names: list[str] | None) -> None:
        info: dict[str, Any] = {}
        if isinstance(self.k2prime, float):
            k2p = self.k2prime
            info["k2prime_source"] = "given"
        elif self.k2prime_tac is not None:
            prep.frames.check_count(self.k2prime_tac.size, "the k2prime region TAC")
            what = self.k2prime_name or "the k2' region TAC"
            if not np.isfinite(self.k2prime_tac).all():
                raise InputError(f"mrtm2: {what} has non-finite values")
            k2p, extra = self._k2prime_from_tac(self.k2prime_tac, prep, what)
            info.update(k2prime_source=f"MRTM fit of {what}", **extra)
        elif self.k2prime_region is not None:
            mask = self.k2prime_region.reshape(-1)
            if mask.size != tacs.shape[0]:
                raise InputError(f"k2prime_region: mask has {mask.size} entries for {tacs.shape[0]} TACs")
            sel = mask & np.isfinite(tacs).all(axis=1)
            what = self.k2prime_name or "the k2' region mask"
            if not sel.any():
                raise InputError(f"mrtm2: {what} selects no TAC with finite values")
            n_sel = int(sel.sum())
            k2p, extra = self._k2prime_from_tac(mean_tac(tacs, sel), prep, f"{what} (mean of {n_sel} TACs)")
            info.update(k2prime_source=f"MRTM fit of the mean TAC of {what}", k2prime_region_n=n_sel, **extra)
        else:
            k2p, extra = self._k2prime_median(tacs, prep, names)
            info.update(extra)
        info["k2prime"] = k2p
        if info["k2prime_source"] != "given":
            record_k2prime(self.name, k2p, info, self.k2prime_window, prep.frames, self.quiet)
        prep.extra["k2prime_used"] = k2p
        prep.extra["info"] = info
        self._build(prep)

    def _k2prime_median(self, tacs: np.ndarray, prep: Prepared,
                        names: list[str] | None) -> tuple[float, dict[str, Any]]:
        """k2' (1/min) by the ``"median"`` rule: MRTM fit of the mean TAC of the well-fitted high-BPND TACs of a
        first MRTM pass (see :mod:`voxelkit.models.k2prime`)."""
        return estimate_k2prime(self._mrtm(), tacs, prep.reference, prep.frames, self.k2prime_bp_quantile, names,
                                self.name)

    def _shared_columns(self, reference: np.ndarray, integ: np.ndarray, prep: Prepared) -> list[np.ndarray]:
        return [integ @ reference + reference / prep.extra["k2prime_used"]]

    def _info(self, prep: Prepared) -> dict[str, Any]:
        return dict(prep.extra.get("info", {}))

    def _params_xp(self, xp: Any, gs: Any, g2: Any, rss: Any, ok: Any, finite: Any,
                   prep: Prepared) -> tuple[dict[str, Any], Any]:
        k2p = float(prep.extra["k2prime_used"])
        g1 = gs[0]
        g2s = xp.where(g2 != 0, g2, 1.0)
        bp = xp.where(g2 != 0, -(g1 / g2s) - 1.0, xp.inf)
        implausible = (g2 >= 0) | (g1 <= 0)
        st = self._status_xp(xp, ok, finite, bp, implausible)
        good = (st == Status.OK) | (st == Status.IMPLAUSIBLE)
        nan = xp.float64(np.nan)
        out = {"bp_nd": xp.where(good, bp, nan), "r1": xp.where(good, g1 / k2p, nan), "k2": xp.where(good, g1, nan),
               "k2prime": xp.where(good, k2p, nan), "wrss": xp.where(good, rss, nan)}
        return {k: v.astype(xp.float32) for k, v in out.items()}, st


__all__ = ["MRTM", "MRTM2"]
