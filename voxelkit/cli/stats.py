"""``voxelkit stats``: voxelwise permutation inference (one-sample, paired, two-sample, GLM).

Examples::

    voxelkit stats paired --a A1.nii.gz A2.nii.gz ... --b B1.nii.gz B2.nii.gz ... \\
        --n-perm 5000 --cluster-p 0.001 --seed 0 -o OUTDIR      # two-sided, TFCE and clusters: the defaults
    voxelkit stats one-sample --maps D1.nii.gz ... -o OUTDIR
    voxelkit stats two-sample --a G1_*.nii.gz --b G2_*.nii.gz -o OUTDIR
    voxelkit stats glm --design design.tsv --contrast pain --covariates pain age sex -o OUTDIR

The design TSV of ``glm`` has one row per map: a column ``map`` (file path, relative to the TSV's folder; see
``--map-column``), optionally a second map column (``--map-column-b``: the data are then map - map_b, e.g. a BPND
change), and covariate columns: numeric ones are mean-centred, text ones (``M``/``F``, site names) are effect-coded
into k-1 columns ``col[level]`` and mean-centred (FSL's "demean EVs" rule; ``n/a`` is an error).  An intercept is
added unless ``--no-intercept``; because the covariates are centred, it is the mean of the data at the sample's
average covariate values, so ``--contrast intercept`` (e.g. on map - map_b differences) tests the mean effect adjusted
for the covariates.  ``--raw-covariates`` keeps raw values (the intercept is then tested at covariate value 0, with
a warning).  A slope contrast gives the same t either way.  ``--contrast`` is a column name (test its coefficient)
or a vector over the design columns [intercept, covariate columns...] such as ``"0 1 0 0"``.

Inference defaults (two-sided, TFCE, clusters at p < 0.001, 5000 permutations, 26-connectivity, seed 0) are those
of :class:`voxelkit.stats.settings.Inference`, shared with the Python API and the study file of ``voxelkit run``;
``--one-sided``, ``--no-tfce`` and ``--no-clusters`` turn them off (``--two-sided`` and ``--tfce`` are accepted and
change nothing).

Every design writes through :class:`voxelkit.outputs.OutputFolder`: a non-empty ``-o`` folder is refused unless
``--overwrite``, which removes exactly the files the previous voxelkit command recorded in the folder's manifest;
an input is never removed or overwritten (an input whose name is one of the outputs is refused).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from importlib import import_module
from pathlib import Path

from . import CliError

log = logging.getLogger("voxelkit")


GLM_DESCRIPTION = """GLM with covariates and one t contrast, tested by Freedman-Lane permutation (or sign flipping of
the residuals with --sign-flip).

Design TSV: one row per map.  A column 'map' (--map-column) with the file path (relative paths are relative to the
TSV's folder); optionally a second map column (--map-column-b) so that each row's data are map - map_b (e.g. a
BPND change); covariate columns (no missing values: n/a is an error).  A 'participant_id' (or 'subject') column
labels the rows and is not a covariate.

Covariate coding: numeric columns are mean-centred; text columns (M/F, site names) are effect-coded into k-1
columns named col[level] (+1 for that level, -1 for the last level in sorted order, else 0), then mean-centred
(FSL's "demean EVs" rule).  --raw-covariates: no centring.

Intercept: added unless --no-intercept.  With centred covariates the intercept is the mean of the data (the maps,
or map - map_b) at the sample's average covariate values: --contrast intercept tests the mean effect adjusted for
the covariates.  With --raw-covariates it is the value at covariate value 0 (age 0 ...; a warning says so).

Contrast: design columns are [intercept,] the coded covariate columns in --covariates order (default: all
non-map columns in file order).  --contrast: one column name (its coefficient is tested: intercept, pain,
sex[F]; a categorical column's own name works when it has one coded column) or one weight per design column,
e.g. --contrast 0 1 0.  A slope contrast (intercept weight 0) gives the same t with or without centring.

Example:
    map                    pain   age   sex
    sub-01_bpnd.nii.gz     3.5    41    1
    sub-02_bpnd.nii.gz     1.0    35    0
    voxelkit stats glm --design design.tsv --contrast pain -o out/

Several contrasts: repeat --contrast (t) and/or give --f-contrast (F: column names, one row each, or p weights per
row); outputs are then prefixed c1_, c2_, ..., f1_ (an F map is f1_f.nii.gz); --fwe-across-contrasts corrects over
the contrasts too (PALM -corrcon).  Repeated measures: --blocks subject permutes within subjects (subject effects
are added to the model), or with --sign-flip flips whole subjects.
"""


def _common_stats_options(p: argparse.ArgumentParser) -> None:
    """The inference options; their defaults and help come from :data:`voxelkit.stats.settings.DEFAULTS` (the
    one set of defaults shared with the Python API and the study file's ``[inference]`` table)."""
    from ..stats.settings import DEFAULTS as D  # noqa: PLC0415  (light: no numba, no scipy)
    from ..stats.settings import add_inference_arguments  # noqa: PLC0415

    g = p.add_argument_group("inference")
    g.add_argument("--mask", help="mask image (default: voxels finite in all maps and non-zero in one)")
    # every Inference field, from its one definition (shared with voxelkit run and its study file)
    add_inference_arguments(g, defaults=D)
    g.add_argument("--atlas", help="label atlas (same space) for the cluster table's region column")
    g.add_argument("--atlas-lookup", "--atlas-labels",
                   help="atlas look-up table: lines 'index<TAB>name' (--atlas-labels: the same, as in voxelkit run)")
    g.add_argument("-o", "--output", required=True, help="output directory")
    g.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty output folder: first remove exactly the files the previous voxelkit "
                        "command recorded there (never an input)")


def inference_from_args(args: argparse.Namespace, *, f_only: bool = False) -> object:
    """The :class:`voxelkit.stats.settings.Inference` of the parsed options (flags not given keep the defaults;
    ``--no-clusters`` turns clusters off; ``f_only``: only F contrasts, which are tested in the upper tail)."""
    from ..stats.settings import DEFAULTS, inference_overrides  # noqa: PLC0415

    kw = {k: (None if v is False and k in ("cluster_p", "cluster_t") else v)
          for k, v in inference_overrides(args).items()}
    if "two_sided" not in kw and f_only:
        kw["two_sided"] = False
    return DEFAULTS.replace(**kw)


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
    q.add_argument("--contrast", nargs="+", action="append", default=None,
                   help="a design column name, or one weight per design column ([intercept,] covariates); "
                        "repeat for several t contrasts (outputs then prefixed c1_, c2_, ...)")
    q.add_argument("--f-contrast", nargs="+", action="append", default=None,
                   help="an F contrast: design column names (one row each) or p weights per row, e.g. "
                        "'--f-contrast age sex' or '--f-contrast 0 1 0 0 0 1'; repeatable (outputs f1_, f2_, ...)")
    q.add_argument("--blocks", default=None, metavar="COLUMN",
                   help="exchangeability blocks (repeated measures): the design column naming each map's subject; "
                        "permutations within subjects (subject effects added to the model), or with --sign-flip "
                        "whole-subject sign flips")
    q.add_argument("--fwe-across-contrasts", action="store_true",
                   help="FWE over all contrasts too: each null = max over the contrasts (PALM -corrcon)")
    q.add_argument("--covariates", nargs="*", default=None,
                   help="covariate columns to use, in this order (default: all columns except the map columns)")
    q.add_argument("--map-column", default="map", help="column with the map paths (default 'map')")
    q.add_argument("--map-column-b", default=None, help="second map column: data = map - map_b")
    q.add_argument("--no-intercept", action="store_true", help="do not add an intercept column")
    q.add_argument("--sign-flip", action="store_true",
                   help="sign-flip the Freedman-Lane residuals (symmetric errors) instead of permuting them")
    q.add_argument("--raw-covariates", action="store_true",
                   help="do not mean-centre the covariates (the intercept is then tested at covariate value 0)")
    _common_stats_options(q)
    q.set_defaults(func=run)

    q = ssub.add_parser("warmup", parents=[parent], help="compile the TFCE kernels into numba's cache ahead "
                        "(once per installation, e.g. when building an image)",
                        description="Compile (or load) the numba TFCE kernels and write them to numba's cache "
                                    "($NUMBA_CACHE_DIR when set), so that the first TFCE run does not compile.")
    q.set_defaults(func=run_warmup)


def run_warmup(args: argparse.Namespace) -> int:
    """``voxelkit stats warmup``: compile the TFCE kernels into numba's on-disk cache and say where it is."""
    t0 = time.perf_counter()
    from ..stats import tfce  # noqa: PLC0415

    tfce.warm_up()
    print(f"voxelkit stats warmup: TFCE kernels ready in {time.perf_counter() - t0:.1f} s "
          f"(numba cache: {tfce.cache_dir() or 'not reported by numba'})")
    return 0


def _import_engine_without_precompile() -> None:
    """Import the stats engine with ``VOXELKIT_TFCE_PRECOMPILE=0`` for the import only (restored after), so that
    a run without TFCE on a fresh install does not compile the TFCE kernels in the background."""
    if "voxelkit.stats.engine" in sys.modules:
        return
    old = os.environ.get("VOXELKIT_TFCE_PRECOMPILE")
    os.environ["VOXELKIT_TFCE_PRECOMPILE"] = "0"
    try:
        import_module("voxelkit.stats.engine")
    finally:
        if old is None:
            os.environ.pop("VOXELKIT_TFCE_PRECOMPILE", None)
        else:
            os.environ["VOXELKIT_TFCE_PRECOMPILE"] = old


def run(args: argparse.Namespace) -> int:
    if getattr(args, "tfce", None) is False:  # --no-tfce: the engine's first import compiles no TFCE kernels
        _import_engine_without_precompile()
    from ..stats import api  # noqa: PLC0415

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise CliError(f"{out}: exists and is not a directory")
    if args.atlas_lookup and not args.atlas:
        raise CliError("--atlas-lookup needs --atlas")
    if args.variance_smoothing is not None and not args.variance_smoothing >= 0:
        raise CliError(f"--variance-smoothing: the FWHM in mm must be >= 0, got {args.variance_smoothing}")
    f_only = bool(getattr(args, "f_contrast", None)) and not getattr(args, "contrast", None)
    if getattr(args, "f_contrast", None) and args.two_sided:
        raise CliError("F contrasts have no sides: drop --two-sided (F contrasts are tested in the upper tail)")
    inf = inference_from_args(args, f_only=f_only)
    if inf.tfce:  # load (or, on a fresh install, compile) the TFCE kernels while the inputs are checked and read
        from ..stats.engine import start_tfce_warmup  # noqa: PLC0415

        start_tfce_warmup()
    kw = dict(mask=args.mask, device=args.device, progress=not args.quiet, atlas=args.atlas,
              atlas_lookup=args.atlas_lookup, **inf.as_kwargs())
    glm_in = _read_glm(args) if _kind(args) == "glm" else None
    folder = _output_folder(args, out, glm_in, inf)
    t0 = time.perf_counter()
    if args.design == "paired":
        res = api.paired(args.a, args.b, **kw)
    elif args.design == "one-sample":
        res = api.one_sample(args.maps, **kw)
    elif args.design == "two-sample":
        res = api.two_sample(args.a, args.b, **kw)
    else:
        res = _glm(args, kw, glm_in)
    paths = res.save(folder)
    s = res.settings
    log.info("voxelkit stats %s: %d maps, %d voxels analysed, %d permutations%s in %.1f s -> %s", args.design,
             s["n_maps"], s["n_voxels_analysed"], s["n_perm"], " (exact)" if s["exhaustive"] else "",
             time.perf_counter() - t0, out)
    if res.clusters:
        n_sig = sum(1 for c in res.clusters if c.get("p_fwe_extent") not in ("", None) and c["p_fwe_extent"] <= .05)
        log.info("clusters: %d, %d with extent FWE p <= 0.05 (%s)", sum(1 for c in res.clusters if c["sign"]),
                 n_sig, paths.get("clusters"))
    return 0


def _read_glm(args: argparse.Namespace) -> dict:
    """Read and validate the design table and the covariates (cheap; before the output folder is touched)."""
    from ..stats.covariates import code_covariates  # noqa: PLC0415
    from ..stats.io import ID_COLUMNS, read_design_table  # noqa: PLC0415

    maps, maps_b, cols, labels = read_design_table(args.design, args.map_column, args.map_column_b)
    names = [c for c in cols if c not in ID_COLUMNS] if args.covariates is None else list(args.covariates)
    centre = not args.raw_covariates and not args.no_intercept
    code_covariates(cols, names, labels, str(args.design), centre=centre, intercept=not args.no_intercept)
    blocks = None
    if args.blocks is not None:
        if args.blocks not in cols:
            raise CliError(f"{args.design}: --blocks: no column {args.blocks!r}; columns are {', '.join(cols)}")
        if args.blocks in names:
            names.remove(args.blocks)  # the blocks enter the model as block effects, not as a covariate
        blocks = list(cols[args.blocks])
    tcons = [_parse_contrast(c) for c in (args.contrast or [])]
    if not tcons and not args.f_contrast:
        raise CliError("give a contrast: --contrast (t) or --f-contrast (F)")
    return {"maps": maps, "maps_b": maps_b, "table": {k: cols[k] for k in names}, "labels": labels,
            "contrast": tcons[0] if tcons else None, "more_contrasts": tcons[1:],
            "f_contrasts": [list(c) for c in (args.f_contrast or [])], "blocks": blocks}


def _parse_contrast(tokens: list[str]) -> str | list[float]:
    """One --contrast: a column name or numbers."""
    if len(tokens) == 1:
        try:
            return [float(tokens[0])]
        except ValueError:
            return tokens[0]
    try:
        return [float(x) for x in tokens]
    except ValueError as exc:
        raise CliError(f"--contrast: give one column name or numbers ({exc})") from exc


def _glm(args: argparse.Namespace, kw: dict, g: dict) -> object:
    from ..stats import api  # noqa: PLC0415

    return api.glm(g["maps"], g["table"], g["contrast"], intercept=not args.no_intercept,
                   method="flip" if args.sign_flip else "permute", imgs_b=g["maps_b"],
                   centre_covariates=not args.raw_covariates, subjects=g["labels"], source=str(args.design),
                   extra_settings={"design_file": str(args.design)}, more_contrasts=g["more_contrasts"],
                   f_contrasts=g["f_contrasts"], fwe_across_contrasts=args.fwe_across_contrasts, blocks=g["blocks"],
                   **kw)


def _output_folder(args: argparse.Namespace, out: Path, glm_in: dict | None, inf: object) -> object:
    """Check the cheap things (settings, pairing, smallest attainable p, outputs vs inputs), then open the output
    folder (refusing a non-empty one without --overwrite) -- all before any map is loaded or permuted.  ``inf``:
    the validated :class:`voxelkit.stats.settings.Inference`."""
    from ..io.derivatives import stats_output_names  # noqa: PLC0415 - every output name lives there
    from ..outputs import OutputFolder, check_not_input  # noqa: PLC0415
    from ..stats.design import check_attainable  # noqa: PLC0415

    groups = None
    kind = _kind(args)
    if kind == "glm":
        inputs = [*glm_in["maps"], *(glm_in["maps_b"] or []), args.design]
        n, method = len(glm_in["maps"]), "flip" if args.sign_flip else "permute"
    elif kind == "one-sample":
        inputs, n, method = list(args.maps), len(args.maps), "flip"
    else:
        inputs = [*args.a, *args.b]
        if kind == "paired":
            if len(args.a) != len(args.b):
                raise CliError(f"pairs incomplete: {len(args.a)} A maps but {len(args.b)} B maps")
            n, method = len(args.a), "flip"
        else:
            n, method, groups = len(args.a) + len(args.b), "permute", [len(args.a), len(args.b)]
    inputs += [p for p in (args.mask, args.atlas, args.atlas_lookup) if p]
    if n >= 1:
        check_attainable(n, method, inf.two_sided, inf.n_perm, groups)
    n_t = len(glm_in["more_contrasts"]) + (glm_in["contrast"] is not None) if glm_in else 0
    check_not_input([out / name for name in stats_output_names(n_t, len(glm_in["f_contrasts"]) if glm_in else 0)],
                    inputs)
    return OutputFolder(out, f"stats {kind}", overwrite=args.overwrite, inputs=inputs)


def _kind(args: argparse.Namespace) -> str:
    """The design name (for ``glm``, ``args.design`` holds the --design TSV path, not the design name)."""
    return "glm" if hasattr(args, "contrast") else args.design
