"""Designs, contrasts and the permutation / sign-flip sets.

A design is a full model ``M`` (n maps x p regressors) and a contrast vector ``c`` (p).  The nuisance space is
``Z = M null(c')`` (the part of the model allowed under H0: c'beta = 0); Freedman-Lane permutes (or sign-flips)
the residuals of ``Y`` on ``Z`` and refits the full model (Winkler et al. 2014).  One-sample / paired tests are
``M = 1``, ``c = [1]`` with sign flipping (no nuisance, so the data themselves are flipped); two-sample tests are
``M = [1, group]``, ``c = [0, 1]`` with permutation (Freedman-Lane with an intercept nuisance = label
permutation of the centred data, which gives the same t as permuting the labels).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..io import InputError

METHODS = ("flip", "permute")
#: Fewer maps than this make sign-flip inference meaningless: with n = 4 there are 2^4 = 16 sign flips, so the
#: smallest attainable one-sided p is 1/16 = 0.0625 > 0.05 (two-sided 2/16).
MIN_SUBJECTS = 5


@dataclass
class Design:
    """A GLM design for permutation inference.

    Attributes
    ----------
    matrix : (n, p) float64 model including any intercept.
    contrast : (p,) float64 contrast vector (one t contrast).
    method : ``"flip"`` (sign flipping, symmetric errors) or ``"permute"`` (exchangeable errors).
    names : regressor names (for the sidecar).
    kind : ``"one_sample"``, ``"paired"``, ``"two_sample"`` or ``"glm"``.
    blocks : optional exchangeability block label per map (e.g. the subject of each session): permutations
        within blocks, or whole-block sign flips (:mod:`voxelkit.stats.blocks`); None: all maps exchangeable.
    """

    matrix: np.ndarray
    contrast: np.ndarray
    method: str = "permute"
    names: list[str] = field(default_factory=list)
    kind: str = "glm"
    blocks: list | None = None

    def __post_init__(self) -> None:
        self.matrix = np.atleast_2d(np.asarray(self.matrix, np.float64))
        self.contrast = np.asarray(self.contrast, np.float64).ravel()
        n, p = self.matrix.shape
        if self.contrast.size != p:
            raise InputError(f"contrast has {self.contrast.size} entries but the design has {p} columns "
                             f"({', '.join(self.names) or 'unnamed'})")
        if not np.any(self.contrast):
            raise InputError("contrast is all zero")
        if not np.all(np.isfinite(self.matrix)):
            raise InputError("design matrix has non-finite entries (missing covariate values?)")
        if self.method not in METHODS:
            raise InputError(f"method must be one of {METHODS}, got {self.method!r}")
        if not self.names:
            self.names = [f"x{i}" for i in range(p)]
        # the contrast must be estimable: c in the row space of M
        pinv = np.linalg.pinv(self.matrix)
        if not np.allclose(self.matrix.T @ (pinv.T @ self.contrast), self.contrast, atol=1e-8):
            raise InputError("contrast is not estimable with this design (collinear regressors?)")

    @property
    def n(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def rank(self) -> int:
        return int(np.linalg.matrix_rank(self.matrix))

    @property
    def df(self) -> int:
        """Residual degrees of freedom ``n - rank(M)``."""
        return self.n - self.rank

    def nuisance(self) -> np.ndarray:
        """(n, q) basis of the nuisance space ``M null(c')`` (q may be 0)."""
        ns = _null_space(self.contrast[None, :])
        Z = self.matrix @ ns
        if Z.shape[1] == 0:
            return Z
        u, s, _ = np.linalg.svd(Z, full_matrices=False)
        return u[:, s > 1e-10 * max(1.0, s.max(initial=0.0))]


def _null_space(a: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the null space of ``a`` (as scipy.linalg.null_space, without importing SciPy)."""
    _, s, vh = np.linalg.svd(a, full_matrices=True)
    rank = int(np.sum(s > max(a.shape) * np.finfo(float).eps * (s.max() if s.size else 0.0)))
    return vh[rank:].T.conj()


def one_sample_design(n: int, kind: str = "one_sample") -> Design:
    """Intercept-only model tested by sign flipping."""
    return Design(np.ones((n, 1)), np.array([1.0]), method="flip", names=["intercept"], kind=kind)


def two_sample_design(n_a: int, n_b: int) -> Design:
    """Group A minus group B (t > 0 when A > B), tested by permuting the group labels."""
    g = np.r_[np.ones(n_a), np.zeros(n_b)]
    return Design(np.c_[np.ones(n_a + n_b), g], np.array([0.0, 1.0]), method="permute",
                  names=["intercept", "group_a"], kind="two_sample")


@dataclass
class PermutationSet:
    """The permutations actually used: row 0 is always the identity.

    ``signs`` (N, n) int8 of +-1 for sign flipping, or ``orders`` (N, n) int32 row orders for permutation
    (permuted data row i = original row ``orders[k, i]``).
    """

    method: str
    exhaustive: bool
    signs: np.ndarray | None = None
    orders: np.ndarray | None = None

    @property
    def n_perm(self) -> int:
        a = self.signs if self.signs is not None else self.orders
        return int(a.shape[0])

    @property
    def mirrored(self) -> bool:
        """True for an exact sign-flip enumeration whose rows come in antithetic pairs: row ``N - 1 - j`` is
        ``-row j`` for every j (:func:`sign_flips` enumerates the codes 0 .. 2^n - 1, and the complement of code
        j is ``2^n - 1 - j``; whole-block flips keep the property).  The statistic map of ``-s`` is then exactly
        minus the map of ``s``, so the engine computes only rows ``0 .. N/2 - 1`` and ``N - 1``
        (:mod:`voxelkit.stats.engine`).  Random flips are never mirrored: an antithetic pair is not two
        independent draws."""
        s = self.signs
        if s is None or not self.exhaustive or s.shape[0] < 4 or s.shape[0] % 2:
            return False
        return bool(np.array_equal(s[::-1], -s))


def sign_flips(n: int, n_perm: int, rng: np.random.Generator) -> PermutationSet:
    """All 2^n sign vectors if 2^n <= n_perm (exact test), else the identity plus n_perm - 1 distinct random
    non-identity flips.  The exact test's row k is the sign vector of code k (bit i set: map i flipped), so rows
    k and 2^n - 1 - k are negations of each other (:attr:`PermutationSet.mirrored`)."""
    if n < 1:
        raise InputError("need at least one map")
    if n < 63 and 2 ** n <= n_perm:
        codes = np.arange(2 ** n, dtype=np.int64)
        exhaustive = True
    elif n < 63:
        total = 2 ** n - 1
        need = n_perm - 1
        got = np.empty(0, np.int64)
        while got.size < need:
            draw = rng.integers(1, total + 1, size=need - got.size + 16, dtype=np.int64)
            # keep first occurrences in draw order (reproducible, no sorting bias)
            allc = np.concatenate([got, draw])
            _, first = np.unique(allc, return_index=True)
            got = allc[np.sort(first)][:need]
        codes = np.concatenate([[0], got])
        exhaustive = False
    else:
        rows = rng.integers(0, 2, size=(n_perm - 1, n), dtype=np.int8)
        rows = rows[np.any(rows != 0, axis=1)]
        _, first = np.unique(rows, axis=0, return_index=True)
        rows = rows[np.sort(first)]
        signs = np.concatenate([np.ones((1, n), np.int8), (1 - 2 * rows).astype(np.int8)])
        return PermutationSet("flip", False, signs=signs)
    bits = (codes[:, None] >> np.arange(n)[None, :]) & 1
    signs = (1 - 2 * bits).astype(np.int8)
    return PermutationSet("flip", exhaustive, signs=signs)


def permutations(n: int, n_perm: int, rng: np.random.Generator) -> PermutationSet:
    """All n! orders if n! <= n_perm, else the identity plus n_perm - 1 distinct random non-identity orders."""
    if math.factorial(n) <= n_perm:
        orders = np.array(list(itertools.permutations(range(n))), np.int32)
        return PermutationSet("permute", True, orders=orders)
    ident = np.arange(n, dtype=np.int32)
    got = np.empty((0, n), np.int32)
    while got.shape[0] < n_perm - 1:
        draw = rng.permuted(np.tile(ident, (n_perm - 1 - got.shape[0] + 16, 1)), axis=1)
        allr = np.concatenate([got, draw])
        allr = allr[np.any(allr != ident, axis=1)]
        _, first = np.unique(allr, axis=0, return_index=True)
        got = allr[np.sort(first)][: n_perm - 1]
    return PermutationSet("permute", False, orders=np.concatenate([ident[None], got]))


def smallest_p(n: int, method: str, two_sided: bool, n_perm: int,
               group_sizes: Sequence[int] | None = None) -> float:
    """Smallest attainable p-value of a sign-flip (``method="flip"``) or permutation (``"permute"``) test of
    ``n`` maps with ``n_perm`` permutations (counting the identity, as :func:`make_permutation_set`).

    The test has ``D`` distinct rearrangements (``2^n`` sign flips; ``n!`` orders, or ``n! / prod(g!)`` label
    assignments for a two-sample test with ``group_sizes`` g) and uses ``N = min(n_perm, all)`` of them.  The
    identity's statistic is reached by ``k`` of the ``D`` (``k = 2`` for a two-sided sign-flip test, whose
    all-flipped vector gives the same |t|, and for a two-sided two-sample test with equal groups; else 1), so the
    smallest p is ``k / D`` for an exact test and ``max(1 / N, k / D)`` (its expected value) for a random subset.
    Example: n = 5, two-sided sign flipping: 2 / 32 = 0.0625, so nothing can reach p < 0.05.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    if n < 1:
        raise InputError(f"need at least one map, got n = {n}")
    if n_perm < 1:
        raise InputError(f"n_perm (--n-perm) must be >= 1, got {n_perm}")
    if n > 170:
        return float(min(1.0, 1.0 / n_perm))
    k = 1
    if method == "flip":
        total = 2 ** n
        k = 2 if two_sided else 1
    else:
        total = math.factorial(n)
        if group_sizes is not None:
            g = [int(x) for x in group_sizes]
            if sum(g) != n or min(g) < 0:
                raise InputError(f"group sizes {g} do not add up to n = {n}")
            for x in g:
                total //= math.factorial(x)
            k = 2 if two_sided and len(g) == 2 and g[0] == g[1] else 1
    p_all = k / total
    return float(min(1.0, max(1.0 / n_perm, p_all)))


def describe_test(method: str, two_sided: bool) -> str:
    """``"two-sided sign flipping"`` and the like, for messages."""
    return f"{'two' if two_sided else 'one'}-sided {'sign flipping' if method == 'flip' else 'permutation'}"


def check_attainable(n: int, method: str, two_sided: bool, n_perm: int, group_sizes: Sequence[int] | None = None,
                     alpha: float = 0.05) -> float:
    """Raise :class:`InputError` when :func:`smallest_p` exceeds ``alpha`` (naming n, the sidedness and the
    minimum p, and what to change); return the smallest p otherwise."""
    p = smallest_p(n, method, two_sided, n_perm, group_sizes)
    if p <= alpha:
        return p
    p_data = smallest_p(n, method, two_sided, 2 ** 62, group_sizes)
    what = describe_test(method, two_sided)
    if p_data > alpha:
        hint = "use more maps" + (" or a one-sided test" if two_sided else "")
        raise InputError(f"n = {n} maps, {what}: the smallest attainable p is {p_data:.4g} > {alpha:g}, so no "
                         f"voxel can be significant; {hint}")
    need = math.ceil(1.0 / alpha - 1e-9)
    raise InputError(f"n_perm (--n-perm) = {n_perm} with n = {n} maps, {what}: the smallest attainable p is "
                     f"{p:.4g} > {alpha:g}; use n_perm >= {need}")


def check_settings(*, n_perm: int, cluster_p: float | None = None, cluster_t: float | None = None,
                   tfce_H: float = 2.0, tfce_E: float = 0.5, seed: int | None = 0,
                   batch_size: int | None = None) -> None:
    """Validate inference settings; messages name the Python argument and the CLI flag (``n_perm (--n-perm)``).
    The rules are those of :class:`voxelkit.stats.settings.Inference` (kept for callers of this function)."""
    from .settings import Inference  # noqa: PLC0415

    Inference(n_perm=n_perm, cluster_p=cluster_p, cluster_t=cluster_t, tfce_H=tfce_H, tfce_E=tfce_E, seed=seed,
              batch_size=batch_size)


def make_permutation_set(design: Design, n_perm: int, seed: int | None) -> PermutationSet:
    """Sign flips or permutations for ``design`` (seeded; ``n_perm`` counts the identity)."""
    if n_perm < 1:
        raise InputError(f"n_perm (--n-perm) must be >= 1, got {n_perm}")
    rng = np.random.default_rng(seed)
    if getattr(design, "blocks", None) is not None:
        from .blocks import block_permutation_set  # noqa: PLC0415

        return block_permutation_set(design.method, design.blocks, n_perm, rng)
    if design.method == "flip":
        return sign_flips(design.n, n_perm, rng)
    return permutations(design.n, n_perm, rng)
