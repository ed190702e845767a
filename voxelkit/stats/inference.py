"""p-values from permutation counts and null maxima, Benjamini-Hochberg FDR, -log10 transforms."""

from __future__ import annotations

import numpy as np


def fwe_p(stat: np.ndarray, null_max: np.ndarray, rtol: float = 1e-9) -> np.ndarray:
    """FWE-corrected p: fraction of the null maxima (identity included) >= ``stat`` (within ``rtol``)."""
    null = np.sort(np.asarray(null_max, np.float64))
    s = np.asarray(stat, np.float64)
    thr = s - rtol * np.maximum(1.0, np.abs(s))
    n_ge = null.size - np.searchsorted(null, thr, side="left")
    return np.maximum(n_ge, 1) / null.size


def fwe_threshold(null_max: np.ndarray, alpha: float = 0.05) -> float:
    """Smallest statistic value whose FWE p (:func:`fwe_p`) is <= ``alpha``: just above the
    (floor(alpha N) + 1)-th largest null maximum.  Use with the saved null distributions to re-threshold."""
    null = np.sort(np.asarray(null_max, np.float64))[::-1]
    k = int(np.floor(alpha * null.size + 1e-9))
    if k >= null.size:
        return float("-inf")
    v = float(null[k])
    return v + 2e-9 * max(1.0, abs(v))  # just above null[k], beyond fwe_p's tie tolerance


def fdr_bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q), monotone, capped at 1."""
    p = np.asarray(p, np.float64)
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out


def logp(p: np.ndarray, sign: np.ndarray | None = None) -> np.ndarray:
    """-log10(p), multiplied by ``sign`` (signed maps for two-sided tests)."""
    lp = -np.log10(np.clip(np.asarray(p, np.float64), 1e-300, 1.0))
    lp = np.where(lp == 0, 0.0, lp)  # no -0.0
    return lp if sign is None else lp * np.sign(sign)
