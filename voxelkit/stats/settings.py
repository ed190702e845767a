"""The one definition of the inference settings: :class:`Inference`.

The same object, with the same defaults, is behind

- the Python API (the keyword defaults of :func:`voxelkit.stats.permutation_test`, and through it of ``paired``,
  ``one_sample``, ``two_sample`` and ``glm``),
- ``voxelkit stats`` (its argparse defaults and help texts are generated from :data:`DEFAULTS`), and
- the study file's ``[inference]`` table of ``voxelkit run`` (:meth:`Inference.from_mapping`).

Defaults (and why):

- ``two_sided = True``: a drug may raise or lower binding; a one-sided test chosen after seeing the data is not
  valid, and nilearn (``two_sided_test=True``) and MNE (``tail=0``) test both tails by default.  p-value maps are
  then signed by the sign of t.
- ``tfce = True`` (H = 2, E = 0.5, Smith and Nichols 2009): no cluster-forming threshold to choose, and FSL's
  recommended statistic; the exact (step-free) TFCE here costs about as much as the max-T null.
- ``cluster_p = 0.001``: cluster extent and mass FWE at a cluster-forming p of 0.001; CDT p = 0.01 gives
  inflated familywise error for cluster extent with parametric methods (Eklund et al. 2016) and uninformative
  large clusters.  ``None`` (CLI ``--no-clusters``; study file ``cluster_p = false``) forms no clusters.
- ``n_perm = 5000``: the Monte-Carlo standard error of a p of 0.05 is then 0.003 (about 1/40 of alpha).
- ``connectivity = 26``: faces, edges and corners, as FSL and SPM (nilearn uses 6).
- ``seed = 0``: the same command gives the same result; the seed is recorded in ``stats.json``.

These were the defaults of ``voxelkit run`` already; ``voxelkit stats`` and the Python API used to default to
one-sided tests without TFCE or clusters (pass ``two_sided=False, tfce=False, cluster_p=None`` / ``--one-sided
--no-tfce --no-clusters`` for the old behaviour).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..io import InputError

ACCEL = ("tail",)
DTYPES = ("auto", "float32", "float64")
CONNECTIVITIES = (6, 18, 26)


class _DefaultP(float):
    """The default cluster-forming p (a float that remembers it was not given): giving ``cluster_t`` alone then
    replaces it instead of being refused as a second threshold."""


#: Field -> (CLI flag, meaning with units) for error messages and help texts.
FLAGS: dict[str, tuple[str, str]] = {
    "n_perm": ("--n-perm", "permutations including the identity (all 2^n sign flips are used when 2^n <= N)"),
    "two_sided": ("--two-sided/--one-sided", "test both tails (maps signed by the sign of t)"),
    "tfce": ("--tfce/--no-tfce", "exact TFCE with FWE p from the max-TFCE null"),
    "tfce_H": ("--tfce-h", "TFCE height exponent H"),
    "tfce_E": ("--tfce-e", "TFCE extent exponent E"),
    "cluster_p": ("--cluster-p", "cluster-forming threshold as an uncorrected p (halved two-sided)"),
    "cluster_t": ("--cluster-t", "cluster-forming threshold in t units"),
    "connectivity": ("--connectivity", "voxel connectivity of clusters and TFCE (6, 18 or 26)"),
    "seed": ("--seed", "random seed of the permutations"),
    "batch_size": ("--batch-size", "permutations per batch (memory bound)"),
    "dtype": ("--dtype", "working precision of the permutation products"),
    "variance_smoothing": ("--variance-smoothing", "FWHM in mm of the variance smoothing (pseudo-t)"),
    "accel": ("--accel", "'tail': generalized Pareto tail approximation of the FWE p-values"),
}


@dataclass(frozen=True)
class Inference:
    """Settings of a permutation test (units: mm for ``variance_smoothing``; TFCE extent in voxels).

    ``cluster_p`` / ``cluster_t``: the cluster-forming threshold as an uncorrected parametric p or in t units
    (at most one of them; ``cluster_t`` given alone replaces the default ``cluster_p``); both None: no clusters.
    Invalid values raise :class:`voxelkit.io.InputError` naming the Python argument and the CLI flag.
    """

    n_perm: int = 5000
    two_sided: bool = True
    tfce: bool = True
    tfce_H: float = 2.0
    tfce_E: float = 0.5
    cluster_p: float | None = _DefaultP(0.001)
    cluster_t: float | None = None
    connectivity: int = 26
    seed: int | None = 0
    batch_size: int | None = None
    dtype: str = "auto"
    variance_smoothing: float | None = None
    accel: str | None = None

    def __post_init__(self) -> None:
        def bad(name: str, rule: str, value: object) -> InputError:
            return InputError(f"{name} ({FLAGS[name][0]}) must be {rule}, got {value!r}")

        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        if self.cluster_t is not None and isinstance(self.cluster_p, _DefaultP):
            put("cluster_p", None)
        if self.cluster_p is not None and self.cluster_t is not None:
            raise InputError("give the cluster-forming threshold as cluster_p (--cluster-p) or cluster_t "
                             "(--cluster-t), not both")
        for name in ("two_sided", "tfce"):
            if not isinstance(getattr(self, name), bool | np.bool_):
                raise bad(name, "true or false", getattr(self, name))
            put(name, bool(getattr(self, name)))
        if isinstance(self.n_perm, bool) or not _is_int(self.n_perm) or self.n_perm < 1:
            raise bad("n_perm", ">= 1", self.n_perm)
        put("n_perm", int(self.n_perm))
        if self.cluster_p is not None:
            if not _is_real(self.cluster_p) or not 0 < self.cluster_p < 1:
                raise bad("cluster_p", "in (0, 1)", self.cluster_p)
            if not isinstance(self.cluster_p, _DefaultP):
                put("cluster_p", float(self.cluster_p))
        if self.cluster_t is not None:
            if not _is_real(self.cluster_t) or not (math.isfinite(self.cluster_t) and self.cluster_t > 0):
                raise bad("cluster_t", "a finite t > 0", self.cluster_t)
            put("cluster_t", float(self.cluster_t))
        for name in ("tfce_H", "tfce_E"):
            v = getattr(self, name)
            if not _is_real(v) or not (math.isfinite(v) and v > 0):
                raise bad(name, "> 0", v)
            put(name, float(v))
        if _is_int(self.connectivity) and not isinstance(self.connectivity, bool):
            put("connectivity", int(self.connectivity))
        if self.connectivity not in CONNECTIVITIES:
            raise bad("connectivity", "6, 18 or 26", self.connectivity)
        if self.seed is not None:
            if isinstance(self.seed, bool) or not _is_int(self.seed) or self.seed < 0:
                raise bad("seed", "an integer >= 0", self.seed)
            put("seed", int(self.seed))
        if self.batch_size is not None:
            if isinstance(self.batch_size, bool) or not _is_int(self.batch_size) or self.batch_size < 1:
                raise bad("batch_size", ">= 1", self.batch_size)
            put("batch_size", int(self.batch_size))
        if self.dtype not in DTYPES:
            raise bad("dtype", " or ".join(DTYPES), self.dtype)
        if self.variance_smoothing is not None:
            v = self.variance_smoothing
            if not _is_real(v) or not (math.isfinite(v) and v >= 0):
                raise bad("variance_smoothing", "a FWHM in mm >= 0", v)
            put("variance_smoothing", float(v))
        if self.accel is not None and self.accel not in ACCEL:
            raise bad("accel", " or ".join(repr(a) for a in ACCEL) + " or None", self.accel)

    @property
    def clusters(self) -> bool:
        """Whether clusters are formed (a cluster-forming threshold is set)."""
        return self.cluster_p is not None or self.cluster_t is not None

    def replace(self, **changes: Any) -> Inference:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def as_kwargs(self) -> dict[str, Any]:
        """The settings as keyword arguments of :func:`voxelkit.stats.permutation_test` (and ``paired`` ...)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if d["cluster_p"] is not None:
            d["cluster_p"] = float(d["cluster_p"])
        return d

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able record of every setting (as written to ``stats.json`` under ``inference``)."""
        return self.as_kwargs()

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any], source: str, *, base: Inference | None = None) -> Inference:
        """Settings from a mapping such as a study file's ``[inference]`` table: keys are the field names
        (``n_perm``, ``two_sided``, ``tfce``, ``tfce_H``, ``tfce_E``, ``cluster_p``, ``cluster_t``,
        ``connectivity``, ``seed``, ``batch_size``, ``dtype``, ``variance_smoothing``, ``accel``); missing keys keep
        ``base``'s values (default: :data:`DEFAULTS`).  ``false`` or ``"none"`` turns an optional setting off
        (``cluster_p = false``: no clusters), as TOML has no null.  An unknown key or a bad value raises
        :class:`~voxelkit.io.InputError` naming ``source``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"{source}: unknown inference setting(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(known))}")
        optional = {"cluster_p", "cluster_t", "seed", "batch_size", "variance_smoothing", "accel"}
        vals = {}
        for k, v in d.items():
            if k in optional and (v is False or (isinstance(v, str) and v.lower() == "none")):
                v = None
            vals[k] = v
        start = base or DEFAULTS
        try:
            return dataclasses.replace(start, **vals)
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from None


def add_inference_arguments(g: Any, *, defaults: Inference | None = None) -> None:
    """The inference flags, one per :class:`Inference` field (flag names and meanings: :data:`FLAGS`), added to
    ``g`` (an argparse parser or group): ``--n-perm``, ``--cluster-p`` / ``--cluster-t`` / ``--no-clusters``,
    ``--connectivity``, ``--tfce`` / ``--no-tfce``, ``--tfce-h``, ``--tfce-e``, ``--two-sided`` / ``--one-sided``,
    ``--variance-smoothing``, ``--accel``, ``--seed``, ``--batch-size``, ``--dtype``.  ``defaults``: the values a
    flag not given takes (e.g. :data:`DEFAULTS`; the help then shows them); None: every default is None, so that
    :func:`inference_overrides` passes on only the flags given (``voxelkit run``: a study file's ``[inference]``
    keeps its values)."""
    D = defaults  # noqa: N806

    def dflt(name: str) -> Any:
        return getattr(D, name) if D is not None else None

    def shown(name: str) -> str:
        if D is None:
            return f" (default {_shown(getattr(DEFAULTS, name))})"
        return f" (default {_shown(getattr(D, name))})"

    g.add_argument("--n-perm", type=int, default=dflt("n_perm"), metavar="N", help=FLAGS["n_perm"][1] + shown("n_perm"))
    thr = g.add_mutually_exclusive_group()
    thr.add_argument("--cluster-p", type=float, default=None, metavar="P",
                     help=FLAGS["cluster_p"][1] + ": cluster extent and mass FWE" + shown("cluster_p"))
    thr.add_argument("--cluster-t", type=float, default=None, metavar="T", help=FLAGS["cluster_t"][1])
    thr.add_argument("--no-clusters", action="store_true", default=None, help="form no clusters (max-T and TFCE only)")
    g.add_argument("--connectivity", type=int, choices=CONNECTIVITIES, default=dflt("connectivity"),
                   help=FLAGS["connectivity"][1] + shown("connectivity") + ", as FSL; nilearn uses 6")
    tf = g.add_mutually_exclusive_group()
    tf.add_argument("--tfce", dest="tfce", action="store_true", default=None, help=FLAGS["tfce"][1] + shown("tfce"))
    tf.add_argument("--no-tfce", dest="tfce", action="store_false", help="no TFCE")
    g.add_argument("--tfce-h", dest="tfce_H", type=float, default=dflt("tfce_H"), metavar="H",
                   help=FLAGS["tfce_H"][1] + shown("tfce_H"))
    g.add_argument("--tfce-e", dest="tfce_E", type=float, default=dflt("tfce_E"), metavar="E",
                   help=FLAGS["tfce_E"][1] + shown("tfce_E"))
    sides = g.add_mutually_exclusive_group()
    sides.add_argument("--two-sided", dest="two_sided", action="store_true", default=None,
                       help=FLAGS["two_sided"][1] + shown("two_sided"))
    sides.add_argument("--one-sided", dest="two_sided", action="store_false",
                       help="one-sided test of t > 0 (A > B; swap A and B for the other tail)")
    g.add_argument("--variance-smoothing", type=float, default=dflt("variance_smoothing"), metavar="MM",
                   help=FLAGS["variance_smoothing"][1] + ": the variance image smoothed within the mask before "
                        "forming t, in every permutation alike (randomise -v takes sigma, this FWHM)")
    g.add_argument("--accel", choices=ACCEL, default=dflt("accel"), help=FLAGS["accel"][1] + " (PALM's -accel tail; "
                   "the plain p is kept where the fit is poor)")
    g.add_argument("--seed", type=int, default=dflt("seed"), help=FLAGS["seed"][1] + shown("seed"))
    g.add_argument("--batch-size", type=int, default=dflt("batch_size"), metavar="N", help=FLAGS["batch_size"][1])
    g.add_argument("--dtype", choices=DTYPES, default=dflt("dtype"), help=FLAGS["dtype"][1] + shown("dtype"))


def _shown(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "on" if v else "off"
    return f"{float(v):g}" if isinstance(v, float) else str(v)


def inference_overrides(args: Any) -> dict[str, Any]:
    """The :class:`Inference` fields given on the command line (flags of :func:`add_inference_arguments` with
    ``defaults=None``), for a study's ``[inference]`` table: ``--no-clusters`` gives ``cluster_p = False`` (no
    clusters); a cluster-forming threshold given one way turns the other off (the command line wins over a
    study file's)."""
    out: dict[str, Any] = {}
    for f in fields(Inference):
        v = getattr(args, f.name, None)
        if v is not None:
            out[f.name] = v
    if getattr(args, "no_clusters", None):
        out["cluster_p"], out["cluster_t"] = False, False
    elif "cluster_t" in out:
        out["cluster_p"] = False
    elif "cluster_p" in out:
        out["cluster_t"] = False
    return out


def _is_int(v: Any) -> bool:
    try:
        return int(v) == v
    except (TypeError, ValueError, OverflowError):
        return False


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


#: The defaults: one place for the API, ``voxelkit stats`` and the study file.
DEFAULTS = Inference()
