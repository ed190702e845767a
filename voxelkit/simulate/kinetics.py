"""Exact tracer kinetics for simulation: Feng input, one-tissue reference, SRTM-consistent tissue.

Units: kinetic times and rate constants in **minutes** (``K1`` in mL/min/mL, ``k2``, ``k2prime`` in 1/min);
frame timing as :class:`voxelkit.frames.FrameTiming` (**seconds**); activity in the unit of the input
(kBq/mL by default).  All curves are returned as **frame averages** (exact integrals over each frame divided
by the frame duration), never mid-frame samples.

Method.  Feng's input is a sum of exponentials (times ``t`` for the first term), so input, reference
compartment and tissue form one linear ODE system ``x' = A x``.  It is propagated exactly between frame
boundaries with matrix exponentials (``scipy.linalg.expm``), which also gives the running integrals.  The
voxel-specific rate ``k2a = R1 k2' / (1 + BPND)`` enters only through ``Y_a = C_R (*) exp(-a t)``: its exact
frame integrals and their derivatives in ``a`` are tabulated on a fine grid of ``log a`` and evaluated per voxel
by cubic Hermite interpolation (relative error ~1e-9), so ~200k voxels cost a few array passes.

SRTM-consistent tissue (Lammertsma & Hume 1996):
``C_T = R1 C_R + (k2 - R1 k2a) * C_R (*) exp(-k2a t)`` with ``k2 = R1 k2'`` and ``k2a = k2 / (1 + BPND)``.
This equals a one-tissue model with ``K1 = R1 K1'`` and efflux ``k2a`` driven by the same plasma input.

Time-varying BPND (activation, e.g. endogenous opioid release during a pain challenge): BPND is piecewise
constant between ``switch_min`` times, i.e. the one-tissue efflux rate ``k2a(t)`` switches at those times while
``K1`` stays the same.  ``C_T`` is continuous; after a switch at ``t_m`` the old state decays with the new
rate: ``C_T(t) = R1 C_R + R1 (k2' - a_m) Y_{a_m}(t) + D_m exp(-a_m (t - t_m))``.  A smooth displacement can
be approximated by several steps (see :func:`challenge_bp_nd`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..constants import C11_HALF_LIFE_MIN  # the one C-11 half-life (minutes), shared with the models
from ..frames import FrameTiming

__all__ = [
    "C11_HALF_LIFE_MIN",
    "FengInput",
    "SRTMTable",
    "carfentanil_frames",
    "challenge_bp_nd",
    "decay_factor",
    "feng_input",
    "frame_average",
    "one_tissue_tac",
    "srtm_tacs",
]


# --------------------------------------------------------------------------------------------------------------
# input function
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FengInput:
    """Feng et al. (1993, model 2) arterial plasma input, optionally bolus-plus-infusion.

    ``Cp(t) = scale * [(a1 u - a2 - a3) exp(lam1 u) + a2 exp(lam2 u) + a3 exp(lam3 u)]``, ``u = t - delay``,
    zero before ``delay``.  Defaults are Feng's published FDG shape (a1 = 851.1225 /min, a2 = 21.8798,
    a3 = 20.8113, lam1 = -4.13391, lam2 = -0.01043, lam3 = -0.11910 /min) with ``scale`` converting to the
    activity unit (kBq/mL).  ``kbol`` (minutes) makes a bolus-plus-infusion (Carson): a constant infusion from
    ``delay`` on, whose rate per minute is ``1/kbol`` of the bolus, i.e. ``Cp += (1/kbol) * integral of the bolus
    curve`` (then the bolus equals ``kbol`` minutes of infusion).  Times in minutes.
    """

    a1: float = 851.1225
    a2: float = 21.8798
    a3: float = 20.8113
    lam1: float = -4.13391
    lam2: float = -0.01043
    lam3: float = -0.11910
    delay: float = 0.0
    scale: float = 1.0
    kbol: float | None = None

    def __post_init__(self) -> None:
        for name in ("lam1", "lam2", "lam3"):
            if not getattr(self, name) <= 0:
                raise ValueError(f"FengInput.{name} must be <= 0 (a decaying exponential), got "
                                 f"{getattr(self, name)}")
        if self.delay < 0:
            raise ValueError(f"FengInput.delay must be >= 0 minutes, got {self.delay}")
        if self.kbol is not None and not self.kbol > 0:
            raise ValueError(f"FengInput.kbol must be > 0 minutes or None, got {self.kbol}")

    def scaled(self, factor: float) -> FengInput:
        """The same shape with ``scale`` multiplied by ``factor`` (e.g. another injected dose)."""
        return replace(self, scale=self.scale * factor)

    # state space: s = [e1, t e1, e2, e3] with e_i = exp(lam_i u); with infusion also their integrals
    def _system(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(A, x0, c): ``s' = A s``, ``s(delay) = x0``, ``Cp = c @ s`` (kBq/mL)."""
        lam = (self.lam1, self.lam2, self.lam3)
        a = np.zeros((4, 4))
        a[0, 0] = lam[0]
        a[1, 1] = lam[0]
        a[1, 0] = 1.0
        a[2, 2] = lam[1]
        a[3, 3] = lam[2]
        x0 = np.array([1.0, 0.0, 1.0, 1.0])
        c = self.scale * np.array([-(self.a2 + self.a3), self.a1, self.a2, self.a3])
        if self.kbol is None:
            return a, x0, c
        big = np.zeros((8, 8))
        big[:4, :4] = a
        big[4:, :4] = np.eye(4)
        return big, np.concatenate([x0, np.zeros(4)]), np.concatenate([c, c / self.kbol])

    def __call__(self, t_min) -> np.ndarray:
        """Plasma activity at times ``t_min`` (minutes), kBq/mL."""
        return feng_input(t_min, self)


def feng_input(t_min, params: FengInput | None = None, **kwargs) -> np.ndarray:
    """Feng input ``Cp(t)`` at times ``t_min`` (minutes), in the unit of ``scale`` (kBq/mL).

    Give a :class:`FengInput` or its fields as keywords (``a1, a2, a3, lam1, lam2, lam3, delay, scale,
    kbol``).  Exact closed form for the bolus; with ``kbol`` the infusion part is integrated exactly too.
    """
    p = params if params is not None else FengInput(**kwargs)
    if params is not None and kwargs:
        p = replace(params, **kwargs)
    t = np.asarray(t_min, dtype=float)
    u = np.maximum(t - p.delay, 0.0)
    lam = np.array([p.lam1, p.lam2, p.lam3])
    amp = np.array([-(p.a2 + p.a3), p.a2, p.a3])
    e = np.exp(lam[:, None] * u.reshape(-1)[None, :])
    cp = p.a1 * u.reshape(-1) * e[0] + amp @ e
    if p.kbol is not None:
        # integral_0^u of each term: exp: phi(lam, u) = (exp(lam u) - 1)/lam ; t exp(lam1 t): closed form
        uu = u.reshape(-1)
        ints = np.empty_like(e)
        for i in range(3):
            ints[i] = _int_exp(lam[i], uu)
        l1 = lam[0]
        if l1 == 0:
            int_te = 0.5 * uu**2
        else:
            int_te = (uu * np.exp(l1 * uu)) / l1 - _int_exp(l1, uu) / l1
        cp = cp + (p.a1 * int_te + amp @ ints) / p.kbol
    return (p.scale * cp * (t.reshape(-1) >= p.delay)).reshape(t.shape)


def _int_exp(lam: float, u: np.ndarray) -> np.ndarray:
    """``integral_0^u exp(lam s) ds`` (stable for lam -> 0)."""
    if lam == 0:
        return u.copy()
    return np.expm1(lam * u) / lam


# --------------------------------------------------------------------------------------------------------------
# frames and helpers
# --------------------------------------------------------------------------------------------------------------
def carfentanil_frames() -> FrameTiming:
    """Default 90-min [11C]carfentanil schedule, 30 frames (seconds):
    6x10, 3x20, 2x30, 2x60, 2x120, 3x180, 12x360 s."""
    durations = np.repeat([10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 360.0], [6, 3, 2, 2, 2, 3, 12])
    start = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    return FrameTiming(start, durations, source="carfentanil_frames()")


def decay_factor(frames: FrameTiming, half_life_min: float = C11_HALF_LIFE_MIN) -> np.ndarray:
    """Frame-average decay factor (<= 1) relative to injection: multiply decay-corrected activity by it to
    get the activity the scanner saw.  Exact integral of ``exp(-lambda t)`` over each frame."""
    lam = np.log(2.0) / half_life_min
    t0, d = frames.start_min, frames.duration_min
    return np.exp(-lam * t0) * (-np.expm1(-lam * d)) / (lam * d)


def frame_average(frames: FrameTiming, func, n_sub: int = 2000) -> np.ndarray:
    """Brute-force frame averages of a callable ``func(t_min)`` by composite Simpson on ``n_sub`` (even)
    sub-intervals per frame: a slow numerical reference for tests."""
    n_sub += n_sub % 2
    out = np.empty(frames.n_frames)
    w = np.ones(n_sub + 1)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    for i, (s, e) in enumerate(zip(frames.start_min, frames.end_min, strict=True)):
        t = np.linspace(s, e, n_sub + 1)
        out[i] = (w @ func(t)) / (3.0 * n_sub)
    return out


def challenge_bp_nd(bp_nd, displacement, on_min: float, off_min: float | None = None,
                    ramp_min: float = 0.0, n_steps: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """BPND segments for a challenge lowering BPND by the fraction ``displacement`` from ``on_min`` to
    ``off_min`` (minutes; None = until the end).  With ``ramp_min > 0`` the change is spread over
    ``n_steps`` equal steps in ``ramp_min`` minutes (a staircase approximation of a smooth displacement).

    Returns ``(bp_segments (V, S), switch_min (S-1,))`` for :func:`srtm_tacs`.
    """
    bp = np.asarray(bp_nd, dtype=float).reshape(-1)
    disp = np.broadcast_to(np.asarray(displacement, dtype=float), bp.shape)
    n_steps = max(1, int(n_steps)) if ramp_min > 0 else 1
    fracs = np.arange(1, n_steps + 1) / n_steps
    on_times = on_min + (fracs - 1.0 / n_steps) * ramp_min if n_steps > 1 else np.array([on_min])
    segs = [bp] + [bp * (1.0 - f * disp) for f in fracs]
    switches = list(on_times)
    if off_min is not None:
        off_times = off_min + (fracs - 1.0 / n_steps) * ramp_min if n_steps > 1 else np.array([off_min])
        for f, t in zip(fracs, off_times, strict=True):
            segs.append(bp * (1.0 - (1.0 - f) * disp))
            switches.append(t)
    return np.stack(segs, axis=1), np.asarray(switches, dtype=float)


# --------------------------------------------------------------------------------------------------------------
# exact propagation
# --------------------------------------------------------------------------------------------------------------
def _boundaries(frames: FrameTiming, extra_min) -> np.ndarray:
    pts = np.concatenate([[0.0], frames.start_min, frames.end_min, np.asarray(extra_min, float).reshape(-1)])
    pts = np.unique(np.round(pts, 10))
    return pts


def _propagate(a_sys: np.ndarray, x0: np.ndarray, t0: float, points: np.ndarray) -> np.ndarray:
    """States at ``points`` (minutes) of ``x' = A x`` (A: (..., n, n)) started at ``x(t0) = x0``; zero before
    ``t0``.  Returns (..., P, n)."""
    batch = a_sys.shape[:-2]
    n = a_sys.shape[-1]
    out = np.zeros(batch + (points.size, n))
    after = points >= t0
    if not after.any():
        return out
    idx = np.flatnonzero(after)
    times = points[idx]
    steps = np.diff(np.concatenate([[t0], times]))
    # one expm per distinct step length (frame schedules repeat durations)
    keys = np.round(steps, 9)
    uniq, inv = np.unique(keys, return_inverse=True)
    mats = expm_batch(uniq[:, None, None] * a_sys[..., None, :, :])  # (..., U, n, n)
    x = np.broadcast_to(x0, batch + (n,)).copy()
    for j, i in enumerate(idx):
        x = np.einsum("...ij,...j->...i", mats[..., inv[j], :, :], x)
        out[..., i, :] = x
    return out


def expm_batch(m: np.ndarray) -> np.ndarray:
    """Matrix exponentials of a stack (..., n, n): scaling and squaring with a degree-18 Taylor series,
    batched over the stack (much faster than a loop of ``scipy.linalg.expm`` for many small matrices)."""
    m = np.asarray(m, dtype=float)
    shape = m.shape
    n = shape[-1]
    flat = m.reshape(-1, n, n)
    out = np.empty_like(flat)
    norms = np.abs(flat).sum(axis=-2).max(axis=-1)  # 1-norm
    s_all = np.maximum(0, np.ceil(np.log2(np.maximum(norms, 1e-300) / 0.5))).astype(int)
    eye = np.eye(n)
    for s in np.unique(s_all):
        sel = s_all == s
        x = flat[sel] / (2.0**s)
        e = np.broadcast_to(eye, x.shape).copy()
        for k in range(18, 0, -1):
            e = eye + (x @ e) / k
        for _ in range(s):
            e = e @ e
        out[sel] = e
    return out.reshape(shape)


def _reference_system(inp: FengInput, k1p: float, k2p: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Input states + [C_R, int C_R]; returns (A, x0, index of C_R)."""
    a_in, x0_in, c = inp._system()
    m = a_in.shape[0]
    a = np.zeros((m + 2, m + 2))
    a[:m, :m] = a_in
    a[m, :m] = k1p * c
    a[m, m] = -k2p
    a[m + 1, m] = 1.0
    return a, np.concatenate([x0_in, [0.0, 0.0]]), m


def one_tissue_tac(frames: FrameTiming, K1: float, k2: float, inp: FengInput | None = None) -> np.ndarray:
    """Frame averages (F,) of a one-tissue compartment TAC ``K1 Cp (*) exp(-k2 t)`` (K1 mL/min/mL, k2 1/min),
    exact; the reference region of SRTM."""
    inp = inp or FengInput()
    a, x0, m = _reference_system(inp, K1, k2)
    pts = _boundaries(frames, [inp.delay])
    states = _propagate(a, x0, inp.delay, pts)
    cum = states[:, m + 1]
    return (np.interp(frames.end_min, pts, cum) - np.interp(frames.start_min, pts, cum)) / frames.duration_min


@dataclass
class SRTMTable:
    """Exact tabulation of ``Y_a = C_R (*) exp(-a t)`` for SRTM-consistent tissue on one frame schedule.

    Build once per (input, K1', k2', frames, switch times, range of a); then :meth:`tacs` evaluates any
    number of voxels.  ``a_min``/``a_max`` (1/min) bound ``k2a`` over all voxels and segments; ``step`` is the
    grid spacing in ``log a`` (0.01 gives relative errors < 1e-9).  The table is linear in the input
    ``scale``: :meth:`tacs` accepts a ``scale`` factor for another dose.
    """

    frames: FrameTiming
    inp: FengInput = field(default_factory=FengInput)
    k1prime: float = 0.1
    k2prime: float = 0.1
    switch_min: np.ndarray = field(default_factory=lambda: np.zeros(0))
    a_min: float = 0.002
    a_max: float = 1.0
    step: float = 0.01

    def __post_init__(self) -> None:
        self.switch_min = np.sort(np.asarray(self.switch_min, dtype=float).reshape(-1))
        if not (0 < self.a_min < self.a_max):
            raise ValueError(f"SRTMTable: need 0 < a_min < a_max (1/min), got {self.a_min}, {self.a_max}")
        if self.switch_min.size and self.switch_min[0] <= self.inp.delay:
            raise ValueError("SRTMTable: switch times must come after the input delay")
        f = self.frames
        self.points = _boundaries(f, np.concatenate([[self.inp.delay], self.switch_min]))
        p = self.points
        # interval k = [p[k], p[k+1]]; frame map (K, F): interval inside frame
        mid = 0.5 * (p[:-1] + p[1:])
        self.frame_map = ((mid[:, None] >= f.start_min[None, :]) & (mid[:, None] <= f.end_min[None, :]))
        self.frame_map = self.frame_map.astype(float)
        self.segment = np.searchsorted(self.switch_min, mid, side="right")  # (K,) segment of each interval
        self.switch_idx = np.searchsorted(p, self.switch_min)  # point index of each switch
        # reference part (independent of a)
        a_ref, x0_ref, m = _reference_system(self.inp, self.k1prime, self.k2prime)
        ref = _propagate(a_ref, x0_ref, self.inp.delay, p)
        self.cr_int = np.diff(ref[:, m + 1])  # (K,) integral of C_R over each interval
        # a-dependent part on a grid of log a
        lo, hi = np.log(self.a_min), np.log(self.a_max)
        n = max(4, int(np.ceil((hi - lo) / self.step)) + 1)
        self.u = np.linspace(lo, hi, n)
        self.h = self.u[1] - self.u[0]
        a = np.exp(self.u)
        nn = a_ref.shape[0]
        big = np.zeros((n, nn + 4, nn + 4))
        big[:, :nn, :nn] = a_ref
        # Y' = C_R - a Y ; J' = Y ; Z = dY/da: Z' = -Y - a Z ; W = dJ/da: W' = Z
        big[:, nn, m] = 1.0
        big[:, nn, nn] = -a
        big[:, nn + 1, nn] = 1.0
        big[:, nn + 2, nn] = -1.0
        big[:, nn + 2, nn + 2] = -a
        big[:, nn + 3, nn + 2] = 1.0
        x0 = np.concatenate([x0_ref, np.zeros(4)])
        st = _propagate(big, x0, self.inp.delay, p)  # (n, P, nn+4)
        # interval integrals of Y and their derivative in u = log a (d/du = a d/da)
        self.j_int = np.diff(st[:, :, nn + 1], axis=1)  # (n, K)
        self.dj_int = np.diff(st[:, :, nn + 3], axis=1) * a[:, None]
        self.y_sw = st[:, self.switch_idx, nn]  # (n, S-1) Y at switch times
        self.dy_sw = st[:, self.switch_idx, nn + 2] * a[:, None]

    # ---------------------------------------------------------------------------------------------------------
    def _hermite(self, a: np.ndarray, val: np.ndarray, der: np.ndarray, cols) -> np.ndarray:
        """Cubic Hermite interpolation in log a of table columns ``cols``: (V,) a -> (V, len(cols))."""
        u = np.log(a)
        if u.size and (u.min() < self.u[0] - 1e-12 or u.max() > self.u[-1] + 1e-12):
            raise ValueError(f"k2a outside the table range [{self.a_min:g}, {self.a_max:g}] /min: "
                             f"[{np.exp(u.min()):g}, {np.exp(u.max()):g}]; build SRTMTable with a wider range")
        i = np.clip(((u - self.u[0]) / self.h).astype(np.int64), 0, self.u.size - 2)
        s = ((u - self.u[i]) / self.h)[:, None]
        s2, s3 = s * s, s * s * s
        h00, h10, h01, h11 = 2 * s3 - 3 * s2 + 1, s3 - 2 * s2 + s, -2 * s3 + 3 * s2, s3 - s2
        v0, v1 = val[i][:, cols], val[i + 1][:, cols]
        d0, d1 = der[i][:, cols], der[i + 1][:, cols]
        return h00 * v0 + h01 * v1 + self.h * (h10 * d0 + h11 * d1)

    def reference(self, scale: float = 1.0) -> np.ndarray:
        """Reference-region TAC, frame averages (F,), in the input unit times ``scale``."""
        return scale * (self.cr_int @ self.frame_map) / self.frames.duration_min

    def tacs(self, r1, bp_nd, scale: float = 1.0, dtype=np.float64) -> np.ndarray:
        """Frame-average tissue TACs (V, F).

        ``r1`` (V,) relative delivery K1/K1'; ``bp_nd`` (V,) or (V, S) BPND per segment between the table's
        ``switch_min`` times (S = number of switches + 1).  ``scale`` multiplies the input (dose).  Voxels
        sharing the same parameters (piecewise-constant phantoms) are computed once.
        """
        r1 = np.asarray(r1, dtype=float).reshape(-1)
        bp = np.asarray(bp_nd, dtype=float)
        n_seg = self.switch_min.size + 1
        if bp.ndim == 1:
            bp = np.repeat(bp[:, None], n_seg, axis=1)
        if bp.shape != (r1.size, n_seg):
            raise ValueError(f"bp_nd has shape {bp.shape}; expected ({r1.size},) or ({r1.size}, {n_seg}) for "
                             f"{n_seg - 1} switch time(s)")
        if r1.size > 2048:
            # mixed-radix code of the per-column unique indices: one integer key per voxel
            key = np.zeros(r1.size, dtype=np.int64)
            for col in (r1, *bp.T):
                u, inv_c = np.unique(col, return_inverse=True)
                if u.size * (int(key.max()) + 1) >= 2**62 or u.size > r1.size // 4:
                    key = None
                    break
                key = key * u.size + inv_c.reshape(-1)
            if key is not None:
                _, first, inv = np.unique(key, return_index=True, return_inverse=True)
                if first.size <= r1.size // 4:
                    small = self._tacs(r1[first], bp[first], scale)
                    return small.astype(dtype, copy=False)[inv.reshape(-1)]
        return self._tacs(r1, bp, scale).astype(dtype, copy=False)

    def _tacs(self, r1: np.ndarray, bp: np.ndarray, scale: float) -> np.ndarray:
        n_seg = self.switch_min.size + 1
        k2p = self.k2prime
        a_seg = r1[:, None] * k2p / (1.0 + bp)  # (V, S)
        p = self.points
        out = r1[:, None] * self.cr_int[None, :]  # (V, K) interval integrals of C_T
        d_prev = np.zeros(r1.size)
        for m in range(n_seg):
            cols = np.flatnonzero(self.segment == m)
            am = a_seg[:, m]
            if m > 0:
                k = m - 1
                cols_sw = [k]
                y_new = self._hermite(am, self.y_sw, self.dy_sw, cols_sw)[:, 0]
                y_old = self._hermite(a_seg[:, m - 1], self.y_sw, self.dy_sw, cols_sw)[:, 0]
                t_prev = self.switch_min[k - 1] if k > 0 else self.inp.delay
                d_prev = (r1 * ((k2p - a_seg[:, m - 1]) * y_old - (k2p - am) * y_new)
                          + d_prev * np.exp(-a_seg[:, m - 1] * (self.switch_min[k] - t_prev)))
            if cols.size == 0:
                continue
            j = self._hermite(am, self.j_int, self.dj_int, cols)
            out[:, cols] += (r1 * (k2p - am))[:, None] * j
            if m > 0:
                t_m = self.switch_min[m - 1]
                t0, t1 = p[cols], p[cols + 1]
                decay = np.exp(-am[:, None] * (t0[None, :] - t_m)) * (-np.expm1(-am[:, None] * (t1 - t0)[None, :]))
                out[:, cols] += (d_prev / am)[:, None] * decay
        return scale * (out @ self.frame_map) / self.frames.duration_min[None, :]


def srtm_tacs(frames: FrameTiming, r1, bp_nd, *, k2prime: float = 0.1, k1prime: float = 0.1,
              inp: FengInput | None = None, switch_min=None, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Frame-average SRTM-consistent tissue TACs for many voxels and the reference TAC.

    ``r1`` (V,) = K1/K1'; ``bp_nd`` (V,) or (V, S) with ``switch_min`` (S-1,) times in minutes at which BPND
    switches; ``k1prime`` (mL/min/mL) and ``k2prime`` (1/min) of the reference region; ``inp`` the plasma input
    (default :class:`FengInput`).  Returns ``(tissue (V, F), reference (F,))`` in the input unit (kBq/mL).
    Builds an :class:`SRTMTable` sized to the voxels' ``k2a`` range; reuse a table for many calls.
    """
    inp = inp or FengInput()
    r1 = np.asarray(r1, dtype=float).reshape(-1)
    bp = np.asarray(bp_nd, dtype=float)
    sw = np.zeros(0) if switch_min is None else np.asarray(switch_min, dtype=float).reshape(-1)
    a = (r1.reshape(-1, 1) * k2prime / (1.0 + bp.reshape(r1.size, -1)))
    a_min, a_max = float(a.min()) / 1.05, float(a.max()) * 1.05
    if not (np.isfinite(a_min) and a_min > 0):
        raise ValueError("srtm_tacs: r1 must be > 0 and bp_nd > -1 (k2a = r1 k2' / (1 + bp_nd) > 0)")
    table = SRTMTable(frames, inp, k1prime, k2prime, sw, a_min=a_min, a_max=max(a_max, a_min * 1.5))
    return table.tacs(r1, bp, dtype=dtype), table.reference()
