"""``voxelkit stats``: voxelwise permutation inference (one-sample, paired, two-sample, GLM).

Examples::

    voxelkit stats paired --a A1.nii.gz A2.nii.gz ... --b B1.nii.gz B2.nii.gz ... \\
        --n-perm 5000 --cluster-p 0.001 --tfce --two-sided --seed 0 -o OUTDIR
    voxelkit stats one-sample --maps D1.nii.gz ... -o OUTDIR
    voxelkit stats two-sample --a G1_*.nii.gz --b G2_*.nii.gz -o OUTDIR
    voxelkit stats glm --design design.tsv --contrast pain --covariates pain age sex -o OUTDIR

The design TSV of ``glm`` has one row per map: a column ``map`` (file path, relative to the TSV's folder; see
``--map-column``), optionally a second map column (``--map-column-b``: the data are then map - map_b, e.g. a BPND
change), and numeric covariate columns (0/1 for categories such as sex or crossover order).  An intercept is added
unless ``--no-intercept``.  ``--contrast`` is a column name (test its slope) or a vector over the design columns
[intercept, covariates...] such as ``"0 1 0 0"``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from . import CliError

log = logging.getLogger("voxelkit")


GLM_DESCRIPTION = """GLM with covariates and one t contrast, tested by Freedman-Lane permutation (or sign flipping of
the residuals with --sign-flip).

Design TSV: one row per map.  A column 'map' (--map-column) with the file path (relative paths are relative to the
TSV's folder); optionally a second map column (--map-column-b) so that each row's data are map - map_b (e.g. a
BPND change); numeric covariate columns (0/1 for categories such as sex or crossover order; no missing values).
An intercept is added unless --no-intercept.  Design columns: [intercept,] covariates in --covariates order
(default: all non-map columns in file order).  --contrast: one column name (its slope) or one weight per design
column, e.g. --contrast 0 1 0.

Example:
    map                    pain   age   sex
    sub-01_bpnd.nii.gz     3.5    41    1
    sub-02_bpnd.nii.gz     1.0    35    0
    voxelkit stats glm --design design.tsv --contrast pain -o out/
"""


def _common_stats_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inference")
    g.add_argument("--mask", help="mask image (default: voxels finite in all maps and non-zero in one)")
    g.add_argument("--n-perm", type=int, default=5000,
                   help="permutations including the identity (all 2^n sign flips if 2^n <= N; default 5000)")
    thr = g.add_mutually_exclusive_group()
    thr.add_argument("--cluster-p", type=float, default=None,
                     help="cluster-forming threshold as uncorrected p (e.g. 0.001): cluster extent and mass FWE")
    thr.add_argument("--cluster-t", type=float, default=None, help="cluster-forming threshold in t units")
    g.add_argument("--connectivity", type=int, choices=(6, 18, 26), default=26,
                   help="voxel connectivity for clusters and TFCE (default 26, as FSL; nilearn uses 6)")
    g.add_argument("--tfce", action="store_true", help="exact TFCE with FWE p from the max-TFCE null")
    g.add_argument("--tfce-h", type=float, default=2.0, help="TFCE height exponent H (default 2)")
    g.add_argument("--tfce-e", type=float, default=0.5, help="TFCE extent exponent E (default 0.5)")
    g.add_argument("--two-sided", action="store_true", help="two-sided test (maps signed by the sign of t)")
    g.add_argument("--seed", type=int, default=0, help="random seed of the permutations (default 0)")
    g.add_argument("--batch-size", type=int, default=None, help="permutations per batch (memory bound)")
    g.add_argument("--atlas", help="label atlas (same space) for the cluster table's region column")
    g.add_argument("--atlas-lookup", help="atlas look-up table: lines 'index<TAB>name'")
    g.add_argument("-o", "--output", required=True, help="output directory")


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("stats", help="voxelwise permutation tests (max-T, clusters, TFCE)",
                       description="Voxelwise permutation inference with FWE control.")
    ssub = p.add_subparsers(dest="design", metavar="DESIGN")
    p.set_defaults(func=lambda args: (_ for _ in ()).throw(CliError("choose a design: one-sample, paired, "
                                                                    "two-sample or glm")))

    q = ssub.add_parser("paired", parents=[parent], help="paired A - B by sign flipping")
    q.add_argument("--a", nargs="+", required=True, help="condition A maps, one per subject")
    q.add_argument("--b", nargs="+", required=True, help="condition B maps, same subject order")
    _common_stats_options(q)
    q.set_defaults(func=run)

    q = ssub.add_parser("one-sample", parents=[parent], help="mean > 0 by sign flipping")
    q.add_argument("--maps", nargs="+", required=True, help="one map per subject")
    _common_stats_options(q)
    q.set_defaults(func=run)

    q = ssub.add_parser("two-sample", parents=[parent], help="group A > group B by label permutation")
    q.add_argument("--a", nargs="+", required=True, help="group A maps")
    q.add_argument("--b", nargs="+", required=True, help="group B maps")
    _common_stats_options(q)
    q.set_defaults(func=run)

    q = ssub.add_parser("glm", parents=[parent], help="GLM with covariates and a contrast (Freedman-Lane)",
                        description=GLM_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("--design", required=True, help="design TSV: one row per map (see voxelkit stats glm -h)")
    q.add_argument("--contrast", nargs="+", required=True,
                   help="a design column name, or one weight per design column ([intercept,] covariates)")
    q.add_argument("--covariates", nargs="*", default=None,
                   help="covariate columns to use, in this order (default: all columns except the map columns)")
    q.add_argument("--map-column", default="map", help="column with the map paths (default 'map')")
    q.add_argument("--map-column-b", default=None, help="second map column: data = map - map_b")
    q.add_argument("--no-intercept", action="store_true", help="do not add an intercept column")
    q.add_argument("--sign-flip", action="store_true",
                   help="sign-flip the Freedman-Lane residuals (symmetric errors) instead of permuting them")
    _common_stats_options(q)
    q.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..stats import api  # noqa: PLC0415

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise CliError(f"{out}: exists and is not a directory")
    kw = dict(mask=args.mask, n_perm=args.n_perm, two_sided=args.two_sided, cluster_p=args.cluster_p,
              cluster_t=args.cluster_t, tfce=args.tfce, tfce_H=args.tfce_h, tfce_E=args.tfce_e,
              connectivity=args.connectivity, seed=args.seed, device=args.device, batch_size=args.batch_size,
              progress=not args.quiet, atlas=args.atlas, atlas_lookup=args.atlas_lookup)
    if args.atlas_lookup and not args.atlas:
        raise CliError("--atlas-lookup needs --atlas")
    t0 = time.perf_counter()
    if args.design == "paired":
        res = api.paired(args.a, args.b, **kw)
    elif args.design == "one-sample":
        res = api.one_sample(args.maps, **kw)
    elif args.design == "two-sample":
        res = api.two_sample(args.a, args.b, **kw)
    else:
        res = _glm(args, kw)
    paths = res.save(out)
    s = res.settings
    log.info("voxelkit stats %s: %d maps, %d voxels analysed, %d permutations%s in %.1f s -> %s", args.design,
             s["n_maps"], s["n_voxels_analysed"], s["n_perm"], " (exact)" if s["exhaustive"] else "",
             time.perf_counter() - t0, out)
    if res.clusters:
        n_sig = sum(1 for c in res.clusters if c.get("p_fwe_extent") not in ("", None) and c["p_fwe_extent"] <= .05)
        log.info("clusters: %d, %d with extent FWE p <= 0.05 (%s)", sum(1 for c in res.clusters if c["sign"]),
                 n_sig, paths.get("clusters"))
    return 0


def _glm(args: argparse.Namespace, kw: dict) -> object:
    from ..stats import api  # noqa: PLC0415
    from ..stats.io import read_design_tsv  # noqa: PLC0415

    maps, maps_b, covs = read_design_tsv(args.design, args.map_column, args.map_column_b)
    names = list(covs) if args.covariates is None else list(args.covariates)
    for nm in names:
        if nm not in covs:
            raise CliError(f"{args.design}: no covariate column {nm!r}; columns are {', '.join(covs)}")
    if len(args.contrast) == 1:
        try:
            contrast: str | list[float] = [float(args.contrast[0])]
        except ValueError:
            contrast = args.contrast[0]
    else:
        try:
            contrast = [float(x) for x in args.contrast]
        except ValueError as exc:
            raise CliError(f"--contrast: give one column name or numbers ({exc})") from exc
    return api.glm(maps, {k: covs[k] for k in names}, contrast, intercept=not args.no_intercept,
                   method="flip" if args.sign_flip else "permute", imgs_b=maps_b,
                   extra_settings={"design_file": str(args.design)}, **kw)
