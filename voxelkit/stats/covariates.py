"""Covariate coding: the one rule that turns covariate columns (``participants.tsv``, a design TSV) into nuisance
design columns, used by ``voxelkit stats glm`` / :func:`voxelkit.stats.glm` and by the study pipeline.

The rule (FSL's "demean EVs" rule):

- a **numeric** column (every value a finite number) becomes one column, mean-centred;
- a **categorical** column (no value is a number, e.g. ``M`` / ``F`` or site names) with ``k`` levels becomes
  ``k - 1`` effect-coded columns (level ``j`` -> +1 in column ``j``, the reference level -- the last level in
  sorted order -- -> -1 in every column, other levels 0), each then mean-centred;
- with ``centre=True`` (the default) every coded column has sample mean 0, so in a model ``[1, Z]`` the
  intercept is the mean of the data (the maps, or the paired differences) **at the sample's average covariate
  values**, which is what a test of "the mean effect, adjusted for covariates" means.  Without centring the
  intercept would be the effect at covariate value 0 (age 0 ...), a different and usually meaningless quantity.
  Centring does not change the t of a slope (a contrast that gives the intercept weight 0).

Values are strings (as read from a TSV).  ``n/a``, ``NA``, ``nan`` and empty strings are missing values, which
are an error: a subject with a missing covariate cannot be modelled.  Other errors (all :class:`InputError`, one
line naming the file ``source``): a column that is not in the table, a column that mixes numbers and text, a
constant covariate, a categorical column with one level per subject (an identifier, not a covariate), a column
that makes the design rank-deficient, and too many columns for the number of subjects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..io import InputError

__all__ = ["MISSING_VALUES", "CodedCovariates", "code_covariates"]

#: Strings (compared case-insensitively, stripped) that mean "no value".
MISSING_VALUES = frozenset({"", "n/a", "na", "nan", "none", "null"})


@dataclass
class CodedCovariates:
    """Nuisance design columns made by :func:`code_covariates`.

    Attributes
    ----------
    matrix : (n subjects, q) float64 coded columns, in ``subjects`` order (q = 0 without covariates).
    names : q column names: a numeric column keeps its name (``age``); a categorical column ``sex`` with levels
        F, M (reference M) gives ``sex[F]``; with levels a, b, c (reference c) ``site[a]``, ``site[b]``.
    description : one human-readable paragraph of the coding, for sidecars and logs.
    columns : per source column a dict (``name``, ``kind`` "numeric" / "categorical", ``coded``: its coded
        column names, ``mean`` (numeric) or ``levels`` / ``reference`` / ``counts`` (categorical)), for JSON.
    groups : source column -> its coded column names (lets a contrast name a categorical column).
    centred : whether the columns are mean-centred.
    """

    matrix: np.ndarray
    names: list[str]
    description: str
    columns: list[dict[str, Any]] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)
    centred: bool = True

    @property
    def n(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def q(self) -> int:
        return int(self.matrix.shape[1])

    def as_dict(self) -> dict[str, Any]:
        """The coding as JSON-ready settings (no matrix)."""
        return {"covariate_coding": self.description, "covariate_columns": self.columns,
                "covariates_centred": self.centred}


def _is_missing(v: str) -> bool:
    return v.strip().lower() in MISSING_VALUES


def _as_number(v: str) -> float | None:
    try:
        x = float(v)
    except ValueError:
        return None
    return x


def _list(subjects: Sequence[str], idx: Sequence[int], values: Sequence[str], limit: int = 5) -> str:
    shown = [f"{subjects[i]} ({values[i]!r})" for i in idx[:limit]]
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return ("subject " if len(idx) == 1 else "subjects ") + ", ".join(shown) + more


def _table_columns(table: Mapping[str, Any], columns: Sequence[str], subjects: Sequence[str],
                   source: str) -> dict[str, list[str]]:
    """Normalise ``table`` (column -> values, or subject -> row) to column -> string values in subjects order."""
    n = len(subjects)
    by_subject = len(table) > 0 and all(isinstance(v, Mapping) for v in table.values())
    if by_subject:
        available: list[str] = []
        for row in table.values():
            available.extend(k for k in row if k not in available)
    else:
        available = list(table)
    for c in columns:
        if c not in available:
            raise InputError(f"{source}: no column {c!r}; columns are {', '.join(map(str, available)) or 'none'}")
    out: dict[str, list[str]] = {}
    if by_subject:
        missing_rows = [s for s in subjects if s not in table]
        if missing_rows:
            raise InputError(f"{source}: no row for subject(s) {', '.join(map(str, missing_rows[:5]))}"
                             f"{' and more' if len(missing_rows) > 5 else ''}")
        for c in columns:
            out[c] = ["" if table[s].get(c) is None else str(table[s].get(c)).strip() for s in subjects]
    else:
        for c in columns:
            vals = ["" if v is None else str(v).strip() for v in table[c]]
            if len(vals) != n:
                raise InputError(f"{source}: column {c!r} has {len(vals)} values for {n} subjects")
            out[c] = vals
    return out


def code_covariates(table: Mapping[str, Sequence[Any]] | Mapping[str, Mapping[str, Any]], columns: Sequence[str],
                    subjects: Sequence[str], source: str, *, centre: bool = True,
                    intercept: bool = True) -> CodedCovariates:
    """Code covariate columns as nuisance design columns (numeric: mean-centred; categorical: effect-coded, k-1
    columns, then mean-centred).

    Parameters
    ----------
    table : either ``{column: values}`` with one value per subject in ``subjects`` order, or ``{subject:
        {column: value}}`` (e.g. ``participants.tsv`` rows keyed by subject label); values are strings (numbers
        are converted with ``str``).
    columns : the covariate columns to code, in this order.
    subjects : subject labels, in the order of the design rows (used to pick rows and to name subjects in
        error messages).
    source : the file the table came from (named in every error message).
    centre : mean-centre every coded column (default).  With an intercept in the model this makes the intercept
        the mean of the data at the sample's average covariate values (FSL's "demean EVs" rule), so that testing
        the intercept of paired differences tests the mean difference adjusted for the covariates.  With
        ``centre=False`` numeric columns are raw and effect-coded columns are not centred: the intercept is then
        the effect at covariate value 0.
    intercept : the model also has an intercept column (used for the rank check and the constant-covariate
        check; without an intercept a constant column is allowed).

    Returns
    -------
    :class:`CodedCovariates` (matrix n x q float64, names, description).

    Raises
    ------
    InputError : (one line naming ``source``) a missing column (the file's columns are listed), a missing value
        (``n/a``, empty: the subjects and values are named), a column mixing numbers and text, a constant
        covariate, a categorical column with as many levels as subjects, a rank-deficient design, or no residual
        degrees of freedom left.
    """
    subjects = [str(s) for s in subjects]
    n = len(subjects)
    columns = list(columns)
    dup = sorted({c for c in columns if columns.count(c) > 1})
    if dup:
        raise InputError(f"{source}: covariate(s) {', '.join(map(repr, dup))} listed more than once")
    if not columns:
        return CodedCovariates(np.zeros((n, 0)), [], "no covariates", [], {}, centre)
    vals = _table_columns(table, columns, subjects, source)

    blocks: list[np.ndarray] = []
    names: list[str] = []
    info: list[dict[str, Any]] = []
    groups: dict[str, list[str]] = {}
    desc: list[str] = []
    for c in columns:
        v = vals[c]
        missing = [i for i, x in enumerate(v) if _is_missing(x)]
        nums = [_as_number(x) for x in v]
        miss = set(missing)
        present = [i for i in range(n) if i not in miss]
        numeric = [i for i in present if nums[i] is not None]
        text = [i for i in present if nums[i] is None]
        if numeric and text:
            if len(numeric) >= len(text):
                raise InputError(f"{source}: column {c!r} is numeric but has non-numbers for "
                                 f"{_list(subjects, text, v)}; give a number for every subject")
            raise InputError(f"{source}: column {c!r} mixes text and numbers (numbers for "
                             f"{_list(subjects, numeric, v)}); use one kind of value per column")
        if missing:
            kind = "numeric" if numeric else "categorical"
            raise InputError(f"{source}: {kind} column {c!r} has a missing value for {_list(subjects, missing, v)}; "
                             "a subject without a covariate value cannot be modelled: fill it in, or leave the "
                             "covariate or the subject out")
        if numeric:
            x = np.array([nums[i] for i in range(n)], np.float64)
            bad = [i for i in range(n) if not np.isfinite(x[i])]
            if bad:
                raise InputError(f"{source}: column {c!r} has non-finite values for {_list(subjects, bad, v)}")
            if intercept and np.ptp(x) == 0:
                raise InputError(f"{source}: covariate {c!r} is constant ({v[0]} for every subject); it cannot "
                                 "be estimated beside the intercept: leave it out")
            mean = float(x.mean())
            col = x - mean if centre else x
            blocks.append(col[:, None])
            names.append(c)
            groups[c] = [c]
            info.append({"name": c, "kind": "numeric", "coded": [c], "mean": mean, "centred": centre})
            desc.append(f"{c}: numeric, " + (f"mean-centred (sample mean {mean:.6g})" if centre else "raw"))
            continue
        levels = sorted(set(v))
        k = len(levels)
        if k == 1:
            if intercept:
                raise InputError(f"{source}: covariate {c!r} is constant ({levels[0]!r} for every subject); it "
                                 "cannot be estimated beside the intercept: leave it out")
        if k == n and n > 2:
            raise InputError(f"{source}: column {c!r} has a different value for each of the {n} subjects (an "
                             "identifier, not a covariate); leave it out")
        ref = levels[-1]
        if k == 1:
            coded = np.ones((n, 1))
            cnames = [f"{c}[{ref}]"]
        else:
            coded = np.zeros((n, k - 1))
            for j, lev in enumerate(levels[:-1]):
                coded[:, j] = [1.0 if x == lev else (-1.0 if x == ref else 0.0) for x in v]
            cnames = [f"{c}[{lev}]" for lev in levels[:-1]]
        if centre:
            coded = coded - coded.mean(axis=0, keepdims=True)
        counts = {lev: v.count(lev) for lev in levels}
        blocks.append(coded)
        names.extend(cnames)
        groups[c] = cnames
        info.append({"name": c, "kind": "categorical", "coded": cnames, "levels": levels, "reference": ref,
                     "counts": counts, "centred": centre})
        desc.append(f"{c}: categorical with levels {', '.join(f'{lev} (n={counts[lev]})' for lev in levels)}, "
                    f"effect-coded in {k - 1} column(s) ({', '.join(cnames)}: +1 for that level, -1 for the "
                    f"reference {ref}, else 0)" + (", mean-centred" if centre else ""))
    Z = np.column_stack(blocks)

    # rank: each source column must add as many independent columns as it has coded columns
    base = np.ones((n, 1)) if intercept else np.zeros((n, 0))
    have = [*(["the intercept"] if intercept else [])]
    cur = base
    for c, blk in zip(columns, blocks, strict=True):
        nxt = np.column_stack([cur, blk])
        norms = np.linalg.norm(nxt, axis=0)
        scaled = nxt / np.where(norms > 0, norms, 1.0)       # unit columns: the rank test ignores units
        if np.linalg.matrix_rank(scaled) < nxt.shape[1]:
            raise InputError(f"{source}: covariate {c!r} makes the design rank-deficient (it is a linear "
                             f"combination of {', '.join(have) or 'itself'}); leave it out")
        cur = nxt
        have.append(repr(c))
    p = cur.shape[1]
    if n - p < 1:
        raise InputError(f"{source}: {n} subjects but {p} design columns ({'intercept + ' if intercept else ''}"
                         f"{Z.shape[1]} covariate columns): no residual degrees of freedom; use fewer covariates")
    rule = ("Every coded column is mean-centred, so the intercept is the mean at the sample's average covariate "
            "values (FSL's demean-EVs rule)." if centre else
            "Columns are not centred: the intercept is the value at covariate value 0.")
    return CodedCovariates(Z.astype(np.float64), names, "; ".join(desc) + ". " + rule, info, groups, centre)
