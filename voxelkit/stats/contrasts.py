"""F contrasts and several contrasts in one run, with optional FWE correction across contrasts (PALM's -corrcon).

An **F contrast** is a matrix ``C`` (s x p) of s estimable rows; the statistic is
``F = (C b)' [C (M'M)^+ C']^-1 (C b) / s / sigma^2`` on (s, n - rank M) degrees of freedom (F = t^2 for one row).
Its nuisance space is ``M null(C)`` (Freedman-Lane as for t contrasts).  F is non-negative and has no sides.

**Several contrasts** (t and/or F) are tested on the same data with the same permutations (the same seed,
number of maps and method give the same flips / orders).  Each contrast has its own maps and null distributions of
maxima.  With ``fwe_across_contrasts=True`` the null of each statistic (max t, max TFCE, max cluster extent /
mass) is the maximum over the contrasts in each permutation, so the FWE p-values control the error over all
voxels *and* contrasts; this needs statistics on the same scale: all t contrasts (same sidedness) or all F
contrasts of the same rank.  Two-sided t tests stay as they are (max |t|).

Outputs: a single contrast keeps the plain names (``t.nii.gz`` ...).  Several contrasts write every file with the
contrast's label as prefix, ``c1_t.nii.gz``, ``c1_logp_fwe_voxel.nii.gz``, ``f1_f.nii.gz``, ... (t contrasts
``c1, c2, ...`` in the order given, F contrasts ``f1, f2, ...``; the map ``t`` of an F contrast is named ``f``), one
``mask.nii.gz``, ``<label>_null_distributions.npz``, ``<label>_clusters.tsv`` and one ``stats.json`` listing the
contrasts and their files.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..io import InputError, Masker
from ..io.derivatives import stats_contrast_label
from .decisions import p_over_mask, record_decisions
from .design import Design, _null_space
from .inference import logp
from .result import MultiContrastResult, cluster_table

__all__ = ["ContrastSpec", "FDesign", "MultiContrastResult", "make_specs", "run_contrasts"]

log = logging.getLogger("voxelkit")

NULL_KEYS = ("h0_max_t", "h0_max_tfce", "h0_max_cluster_extent", "h0_max_cluster_mass")


@dataclass
class FDesign(Design):
    """A design with an F contrast: ``contrast`` is an (s, p) matrix of estimable, linearly independent rows."""

    def __post_init__(self) -> None:
        self.matrix = np.atleast_2d(np.asarray(self.matrix, np.float64))
        C = np.atleast_2d(np.asarray(self.contrast, np.float64))
        n, p = self.matrix.shape
        if C.shape[1] != p:
            raise InputError(f"F contrast has {C.shape[1]} columns but the design has {p} "
                             f"({', '.join(self.names) or 'unnamed'})")
        if not np.all(np.isfinite(self.matrix)):
            raise InputError("design matrix has non-finite entries (missing covariate values?)")
        if np.linalg.matrix_rank(C) < C.shape[0]:
            raise InputError(f"F contrast rows are linearly dependent (rank {np.linalg.matrix_rank(C)} < "
                             f"{C.shape[0]} rows)")
        pinv = np.linalg.pinv(self.matrix)
        if not np.allclose(C @ pinv @ self.matrix, C, atol=1e-8):
            raise InputError("F contrast is not estimable with this design (collinear regressors?)")
        self.contrast = C
        if not self.names:
            self.names = [f"x{i}" for i in range(p)]

    @property
    def f_rank(self) -> int:
        return int(self.contrast.shape[0])

    def nuisance(self) -> np.ndarray:
        """(n, q) basis of ``M null(C)``."""
        Z = self.matrix @ _null_space(self.contrast)
        if Z.shape[1] == 0:
            return Z
        u, s, _ = np.linalg.svd(Z, full_matrices=False)
        return u[:, s > 1e-10 * max(1.0, s.max(initial=0.0))]


@dataclass
class ContrastSpec:
    """One contrast of a multi-contrast run: label (``c1``, ``f1``), kind (``"t"`` / ``"F"``), weights (p,) for
    t or (s, p) for F, and the text the user gave."""

    label: str
    kind: str
    weights: np.ndarray
    text: str


def _column(token: str, names: Sequence[str]) -> int:
    if token in names:
        return names.index(token)
    coded = [nm for nm in names if nm.startswith(f"{token}[")]
    if len(coded) == 1:
        return names.index(coded[0])
    more = f" ({token!r} is coded as {', '.join(coded)}: name the coded columns)" if coded else ""
    raise InputError(f"contrast {token!r} is not a design column; columns are {', '.join(names)}{more}")


def t_weights(spec: str | Sequence[Any], names: Sequence[str]) -> np.ndarray:
    """A t contrast from a column name or one weight per design column."""
    if isinstance(spec, str):
        spec = [spec]
    spec = list(spec)
    try:
        w = np.array([float(x) for x in spec])
    except (TypeError, ValueError):
        if len(spec) != 1:
            raise InputError(f"contrast {' '.join(map(str, spec))!r}: give one column name or one weight per "
                             f"design column ({', '.join(names)})") from None
        w = np.zeros(len(names))
        w[_column(str(spec[0]), names)] = 1.0
        return w
    if w.size != len(names):
        raise InputError(f"contrast has {w.size} weights but the design has {len(names)} columns "
                         f"({', '.join(names)})")
    return w


def f_weights(spec: str | Sequence[Any], names: Sequence[str]) -> np.ndarray:
    """An F contrast: column names (one row per named coefficient), or weights, p per row (a multiple of p
    numbers, or an (s, p) array)."""
    a = np.asarray(spec, dtype=object)
    if a.ndim == 2:
        return np.asarray(a, np.float64)
    toks = [spec] if isinstance(spec, str) else list(spec)
    try:
        w = np.array([float(x) for x in toks])
    except (TypeError, ValueError):
        C = np.zeros((len(toks), len(names)))
        for i, tok in enumerate(toks):
            C[i, _column(str(tok), names)] = 1.0
        return C
    p = len(names)
    if w.size == 0 or w.size % p:
        raise InputError(f"F contrast has {w.size} weights: give p = {p} per row ({', '.join(names)})")
    return w.reshape(-1, p)


def make_specs(names: Sequence[str], t_contrasts: Sequence[Any], f_contrasts: Sequence[Any]) -> list[ContrastSpec]:
    specs = [ContrastSpec(stats_contrast_label(i, "t"), "t", t_weights(c, names), _text(c))
             for i, c in enumerate(t_contrasts)]
    specs += [ContrastSpec(stats_contrast_label(i, "F"), "F", f_weights(c, names), _text(c))
              for i, c in enumerate(f_contrasts)]
    if not specs:
        raise InputError("no contrast given")
    return specs


def _text(c: Any) -> str:
    if isinstance(c, str):
        return c
    a = np.asarray(c, dtype=object)
    return "; ".join(" ".join(str(x) for x in row) for row in np.atleast_2d(a))


def run_contrasts(Y: np.ndarray, masker: Masker, base: Design, specs: Sequence[ContrastSpec], *,
                  fwe_across_contrasts: bool = False, extra_settings: dict | None = None,
                  inputs: Sequence[str] = (), **kwargs: Any) -> MultiContrastResult:
    """Test every contrast of ``specs`` on the model ``base.matrix`` (same permutations), see the module docstring.
    Keyword arguments as :func:`voxelkit.stats.permutation_test`."""
    from .api import permutation_test  # noqa: PLC0415
    from .settings import DEFAULTS  # noqa: PLC0415
    from .tail import TailInference  # noqa: PLC0415

    two_sided = bool(kwargs.get("two_sided", DEFAULTS.two_sided))  # of the t contrasts; F has no sides
    if fwe_across_contrasts:
        kinds = {(sp.kind, sp.weights.shape[0] if sp.kind == "F" else 1) for sp in specs}
        if len(kinds) > 1:
            raise InputError("fwe_across_contrasts (--fwe-across-contrasts) needs statistics on one scale: all t "
                             "contrasts, or all F contrasts with the same number of rows")
    if any(sp.kind == "F" for sp in specs):
        if all(sp.kind == "F" for sp in specs):
            two_sided = False
        if kwargs.get("variance_smoothing") is not None:
            raise InputError("variance_smoothing (--variance-smoothing) is not available with F contrasts")
    results: dict[str, Any] = {}
    for sp in specs:
        if sp.kind == "t":
            d = Design(base.matrix, sp.weights, method=base.method, names=list(base.names), kind="glm",
                       blocks=base.blocks)
        else:
            d = FDesign(base.matrix, sp.weights, method=base.method, names=list(base.names), kind="glm",
                        blocks=base.blocks)
        extra = {**(extra_settings or {}), "contrast_label": sp.label, "contrast_kind": sp.kind,
                 "contrast_text": sp.text}
        results[sp.label] = permutation_test(Y, masker, d, inputs=inputs, extra_settings=extra, **kwargs)
    first = results[specs[0].label]
    perm_key = "sign_flips" if "sign_flips" in first.null else "permutations"
    for sp in specs[1:]:
        if not np.array_equal(results[sp.label].null[perm_key], first.null[perm_key]):  # pragma: no cover
            raise RuntimeError("contrasts were run with different permutations")
    settings: dict[str, Any] = {
        "voxelkit_version": first.settings.get("voxelkit_version"), "test": "glm", "n_contrasts": len(specs),
        **{k: first.settings.get(k) for k in ("n_maps", "n_voxels_analysed", "n_perm", "exhaustive", "seed",
                                              "method", "permutation_scheme")},
        "fwe_across_contrasts": bool(fwe_across_contrasts),
        "contrasts": [{"label": sp.label, "kind": sp.kind, "text": sp.text, "weights": sp.weights,
                       "settings": results[sp.label].settings} for sp in specs],
    }
    if fwe_across_contrasts:
        tail = TailInference(kwargs.get("accel"), kwargs.get("seed", 0))
        across = {}
        for key in NULL_KEYS:
            if all(key in r.null for r in results.values()):
                across[key] = np.max(np.stack([r.null[key] for r in results.values()]), axis=0)
        for sp in specs:
            r = results[sp.label]
            valid = r.analysed
            sign = np.sign(r.maps["t"][valid]) if two_sided else None
            stat = r.maps["t"][valid].astype(np.float64)
            stat = np.abs(stat) if two_sided else stat

            def full(v: np.ndarray, valid=valid) -> np.ndarray:
                out = np.zeros(valid.size, np.float32)
                out[valid] = v
                return out

            # the observed statistic in float64 from the identity entries is not kept per voxel: the saved
            # float32 map is used, with fwe_p's relative tie tolerance
            exact = {"logp_fwe_voxel": tail.pfun("h0_max_t")(stat, across["h0_max_t"])}
            r.maps["logp_fwe_voxel"] = full(logp(exact["logp_fwe_voxel"], sign))
            if "h0_max_tfce" in across and "tfce" in r.maps:
                tf = np.abs(r.maps["tfce"][valid].astype(np.float64))
                exact["logp_fwe_tfce"] = tail.pfun("h0_max_tfce")(tf, across["h0_max_tfce"])
                r.maps["logp_fwe_tfce"] = full(logp(exact["logp_fwe_tfce"], sign))
            thr = r.settings.get("cluster_threshold_t")
            if thr is not None and "h0_max_cluster_extent" in across:
                mask3d = masker.mask.copy()
                mask3d[masker.mask] = valid
                t3d = np.zeros(masker.shape)
                t3d[masker.mask] = r.maps["t"]
                lp_e, lp_m, rows = cluster_table(
                    t3d, mask3d, thr, two_sided, r.settings["connectivity"], across["h0_max_cluster_extent"],
                    across["h0_max_cluster_mass"], masker.affine, None, tail.pfun("h0_max_cluster_extent"),
                    tail.pfun("h0_max_cluster_mass"))
                r.maps["logp_fwe_cluster_extent"] = lp_e[masker.mask].astype(np.float32)
                r.maps["logp_fwe_cluster_mass"] = lp_m[masker.mask].astype(np.float32)
                regions = {row["cluster_id"]: row.get("region") for row in r.clusters}
                for row in rows:
                    row["region"] = regions.get(row["cluster_id"], row["region"])
                r.clusters = rows
            for key, v in across.items():
                r.null[f"{key}_across_contrasts"] = v
            r.settings["fwe_across_contrasts"] = True
            # the replaced FWE maps decided again
            record_decisions(r, p_values={k: p_over_mask(p, valid) for k, p in exact.items()}, keep_exact=True)
        settings["fwe_across_contrasts_rule"] = ("null of each statistic = max over the contrasts in each "
                                                 "permutation (PALM -corrcon)")
        settings.update({k: v for k, v in tail.settings().items() if k != "accel"} if tail.accel else {})
    return MultiContrastResult(results, list(specs), settings)
