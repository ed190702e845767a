"""Tail approximation of FWE p-values (PALM's ``-accel tail``; Winkler et al. 2016, Knijnenburg et al. 2009).

With a few hundred permutations the empirical FWE p of a large statistic is coarse (no p below 1/N, and few null
maxima near p = 0.001-0.01).  The upper tail of each null distribution of maxima (max t, max cluster extent / mass,
max TFCE) is modelled by a generalized Pareto distribution (GPD): with ``u`` a threshold between the ``k``-th and
``(k+1)``-th largest of the N null maxima (identity included),

    p(x) = k / N * (1 - F_GPD(x - u; xi, sigma))    for x > u,

with (xi, sigma) the maximum-likelihood fit to the k exceedances ``y - u`` (``scipy.stats.genpareto.fit`` with the
location fixed at 0).  ``k`` starts at ``min(250, N // 4)`` (Knijnenburg et al.) and goes down by 10 until the fit
passes an Anderson-Darling goodness-of-fit test at level 0.05 (p-value by parametric bootstrap: samples drawn
from the fitted GPD and refitted, so the estimated parameters are accounted for; a fitted shape below -0.5,
where the likelihood is irregular, counts as a poor fit), and no further than 30 exceedances.  Where no ``k``
fits, the plain permutation p is kept for that statistic and a warning says so (``stats.json``: ``tail_fits``).
The approximation replaces the empirical p only where that is at most ``p_threshold`` (default 0.1, PALM's) and
the statistic is above ``u``; elsewhere the empirical p is kept.  A statistic beyond a fitted finite upper end
point (xi < 0) gets ``P_FLOOR``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from .inference import fwe_p

log = logging.getLogger("voxelkit")

ACCEL = ("tail",)
MAX_EXCEED = 250
MIN_EXCEED = 30
STEP = 10
AD_ALPHA = 0.05
N_BOOT = 49
MIN_XI = -0.5  # below: the GPD likelihood is irregular (unbounded for xi < -1; Smith 1985), fit refused
P_THRESHOLD = 0.1
P_FLOOR = 1e-12


@dataclass
class TailFit:
    """One GPD tail fit of a null distribution of maxima (``ok`` False: the plain permutation p is used)."""

    ok: bool
    n_null: int
    n_exceed: int = 0
    threshold: float = float("nan")
    shape_xi: float = float("nan")
    scale: float = float("nan")
    ad_statistic: float = float("nan")
    ad_p: float = float("nan")
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def anderson_darling(z: np.ndarray, xi: float, scale: float) -> float:
    """Anderson-Darling statistic A^2 of the exceedances ``z`` against GPD(xi, scale) (location 0)."""
    from scipy.stats import genpareto  # noqa: PLC0415

    z = np.sort(np.asarray(z, np.float64), axis=-1)
    n = z.shape[-1]
    F = np.clip(genpareto.cdf(z, xi, loc=0.0, scale=scale), 1e-300, 1 - 1e-16)
    i = np.arange(1, n + 1)
    return float(-n - np.sum((2 * i - 1) * (np.log(F) + np.log1p(-F[..., ::-1])), axis=-1) / n)


def _fit(z: np.ndarray) -> tuple[float, float]:
    from scipy.stats import genpareto  # noqa: PLC0415

    xi, _, scale = genpareto.fit(z, floc=0.0)
    return float(xi), float(scale)


def ad_pvalue(z: np.ndarray, xi: float, scale: float, rng: np.random.Generator,
              n_boot: int = N_BOOT) -> tuple[float, float]:
    """(A^2, bootstrap p) of the fitted exceedances: the statistic of ``n_boot`` samples drawn from the fitted GPD,
    each refitted by maximum likelihood (accounts for the estimated parameters)."""
    from scipy.stats import genpareto  # noqa: PLC0415

    a2 = anderson_darling(z, xi, scale)
    sims = genpareto.rvs(xi, loc=0.0, scale=scale, size=(n_boot, z.size), random_state=rng)
    n_ge = 0
    for s in sims:
        bxi, bsc = _fit(s)
        n_ge += anderson_darling(s, bxi, bsc) >= a2
    return a2, (1.0 + n_ge) / (n_boot + 1.0)


def fit_tail(null: np.ndarray, seed: int | None = 0, *, max_exceed: int = MAX_EXCEED, min_exceed: int = MIN_EXCEED,
             step: int = STEP, alpha: float = AD_ALPHA, n_boot: int = N_BOOT) -> TailFit:
    """Fit a GPD to the upper tail of the null maxima ``null`` (identity included), see the module docstring."""
    y = np.sort(np.asarray(null, np.float64)[np.isfinite(null)])[::-1]
    N = int(np.asarray(null).size)
    rng = np.random.default_rng(seed)
    k0 = k = min(max_exceed, y.size // 4)
    if k < min_exceed:
        return TailFit(False, N, reason=f"too few permutations for a tail fit ({N}: at least {4 * min_exceed} "
                                        "needed)")
    last = TailFit(False, N)
    detail = "ties at every threshold"
    while k >= min_exceed:
        if y[k - 1] <= y[k]:  # ties at the threshold: the exceedances would include zeros
            k -= 1
            continue
        u = 0.5 * (y[k - 1] + y[k])
        z = y[:k] - u
        try:
            xi, scale = _fit(z)
        except (ValueError, FloatingPointError, RuntimeError) as exc:  # pragma: no cover - scipy fit failure
            last, detail = TailFit(False, N, k, float(u)), f"GPD fit failed: {exc}"
            k -= step
            continue
        if xi < MIN_XI:
            last, detail = TailFit(False, N, k, float(u), xi, scale), f"shape {xi:.3g} < {MIN_XI}"
            k -= step
            continue
        a2, p_ad = ad_pvalue(z, xi, scale, rng, n_boot)
        fit = TailFit(p_ad >= alpha, N, k, float(u), xi, scale, a2, p_ad)
        if fit.ok:
            return fit
        last, detail = fit, f"Anderson-Darling p = {p_ad:.3g}"
        k -= step
    last.reason = (f"no acceptable GPD fit with {k0} down to {min_exceed} exceedances (needs Anderson-Darling "
                   f"p >= {alpha:g} and shape >= {MIN_XI}); last tried: {last.n_exceed} exceedances, {detail}")
    return last


def tail_fwe_p(stat: np.ndarray, null: np.ndarray, fit: TailFit, p_threshold: float = P_THRESHOLD) -> np.ndarray:
    """FWE p of ``stat``: the empirical :func:`fwe_p`, replaced by the GPD tail where it is <= ``p_threshold``
    and the statistic exceeds the fit's threshold (unchanged when ``fit.ok`` is False)."""
    from scipy.stats import genpareto  # noqa: PLC0415

    s = np.asarray(stat, np.float64)
    p = fwe_p(s, null)
    if not fit.ok:
        return p
    use = (p <= p_threshold) & (s > fit.threshold)
    if np.any(use):
        sf = genpareto.sf(s[use] - fit.threshold, fit.shape_xi, loc=0.0, scale=fit.scale)
        p = p.copy()
        p[use] = np.maximum(fit.n_exceed / fit.n_null * sf, P_FLOOR)
    return p


class TailInference:
    """FWE p-value functions per null distribution (``accel=None``: plain :func:`fwe_p`; ``"tail"``: GPD tail),
    with the fits kept for the sidecar (``fits``: name -> :class:`TailFit`)."""

    def __init__(self, accel: str | None, seed: int | None = 0, p_threshold: float = P_THRESHOLD):
        if accel is not None and accel not in ACCEL:
            from ..io import InputError  # noqa: PLC0415

            raise InputError(f"accel must be one of {', '.join(ACCEL)} (or None), got {accel!r}")
        self.accel = accel
        self.seed = seed
        self.p_threshold = p_threshold
        self.fits: dict[str, TailFit] = {}

    def pfun(self, name: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """A function ``(stat, null) -> FWE p`` for the null distribution ``name`` (fitted once, on first use)."""
        if self.accel is None:
            return fwe_p

        def p(stat: np.ndarray, null: np.ndarray) -> np.ndarray:
            if name not in self.fits:
                fit = fit_tail(null, self.seed)
                self.fits[name] = fit
                if not fit.ok:
                    log.warning("voxelkit stats: tail approximation not used for %s (%s); plain permutation "
                                "p-values kept", name, fit.reason)
            return tail_fwe_p(stat, null, self.fits[name], self.p_threshold)

        return p

    def settings(self) -> dict:
        """Sidecar entries (``accel``, ``tail_fits``, ``tail_p_threshold``)."""
        if self.accel is None:
            return {"accel": None}
        return {"accel": self.accel, "tail_p_threshold": self.p_threshold,
                "tail_method": "generalized Pareto MLE (scipy.stats.genpareto) on the top k of the null maxima, "
                               "k from min(250, N/4) down by 10 until an Anderson-Darling test (parametric "
                               "bootstrap, 49 samples; shape >= -0.5) passes at 0.05; plain p kept where no k fits",
                "tail_fits": {k: v.as_dict() for k, v in self.fits.items()}}
