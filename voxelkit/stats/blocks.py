"""Exchangeability blocks for repeated-measures designs (several sessions per subject; Winkler et al. 2015).

Each map belongs to a block (its subject).  With ``method="permute"`` the rows are permuted **within** blocks only
(a subject's sessions are exchangeable with each other under H0, e.g. baseline / placebo / drug, assuming equal
variances and covariances within a subject), never across subjects.  With ``method="flip"`` whole blocks are
sign-flipped (every row of a block gets the same sign: symmetric errors at the block level, e.g. a subject's
several difference maps).  The model should include the subject effects (a categorical ``subject`` covariate:
effect-coded, the nuisance of Freedman-Lane), so that between-subject differences do not enter the residuals
that are permuted.

All ``prod_b (k_b!)`` within-block orders (or ``2^B`` block sign vectors) are used when there are at most
``n_perm`` of them (an exact test); otherwise the identity plus ``n_perm - 1`` distinct random ones.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..io import InputError
from .design import PermutationSet, sign_flips


def block_codes(blocks: Sequence[Any], n: int) -> np.ndarray:
    """Integer block index per row (0 .. B-1, in order of first appearance)."""
    labels = [str(b) for b in blocks]
    if len(labels) != n:
        raise InputError(f"blocks: {len(labels)} labels for {n} maps")
    first: dict[str, int] = {}
    return np.array([first.setdefault(b, len(first)) for b in labels], np.int64)


def n_within_block(codes: np.ndarray) -> int:
    """Number of distinct within-block orders ``prod_b (k_b!)``."""
    return math.prod(math.factorial(int(k)) for k in np.bincount(codes))


def within_block_permutations(codes: np.ndarray, n_perm: int, rng: np.random.Generator) -> PermutationSet:
    """Row orders that only exchange rows of the same block (identity first)."""
    n = codes.size
    members = [np.flatnonzero(codes == b) for b in range(int(codes.max()) + 1)]
    if all(m.size == 1 for m in members):
        raise InputError("blocks: every block has a single map, so no permutation within blocks exists")
    total = n_within_block(codes)
    ident = np.arange(n, dtype=np.int32)
    if total <= n_perm:
        orders = []
        for combo in itertools.product(*[itertools.permutations(m.tolist()) for m in members]):
            o = ident.copy()
            for m, perm in zip(members, combo, strict=True):
                o[m] = perm
            orders.append(o)
        orders = np.array(orders, np.int32)
        # identity first (itertools yields it first, kept explicit)
        return PermutationSet("permute", True, orders=orders)
    got = np.empty((0, n), np.int32)
    while got.shape[0] < n_perm - 1:
        m_draw = n_perm - 1 - got.shape[0] + 16
        draw = np.tile(ident, (m_draw, 1))
        for m in members:
            if m.size > 1:
                draw[:, m] = rng.permuted(np.tile(m.astype(np.int32), (m_draw, 1)), axis=1)
        allr = np.concatenate([got, draw])
        allr = allr[np.any(allr != ident, axis=1)]
        _, first = np.unique(allr, axis=0, return_index=True)
        got = allr[np.sort(first)][: n_perm - 1]
    return PermutationSet("permute", False, orders=np.concatenate([ident[None], got]))


def whole_block_sign_flips(codes: np.ndarray, n_perm: int, rng: np.random.Generator) -> PermutationSet:
    """Sign vectors constant within each block (all ``2^B`` when at most ``n_perm``)."""
    B = int(codes.max()) + 1
    ps = sign_flips(B, n_perm, rng)
    return PermutationSet("flip", ps.exhaustive, signs=np.ascontiguousarray(ps.signs[:, codes]))


def block_permutation_set(method: str, blocks: Sequence[Any], n_perm: int, rng: np.random.Generator
                          ) -> PermutationSet:
    """The permutation set of a design with exchangeability blocks (see the module docstring)."""
    codes = block_codes(blocks, len(blocks))
    if method == "flip":
        return whole_block_sign_flips(codes, n_perm, rng)
    return within_block_permutations(codes, n_perm, rng)


def n_distinct(method: str, blocks: Sequence[Any]) -> int:
    """Number of distinct permutations / sign vectors the blocks allow."""
    codes = block_codes(blocks, len(blocks))
    return 2 ** (int(codes.max()) + 1) if method == "flip" else n_within_block(codes)
