"""``voxelkit simulate``: write a simulated [11C]carfentanil crossover study as BIDS-PET with ground truth."""

from __future__ import annotations

import argparse
import os

from ..simulate.options import add_cli_knobs, cli_knob_overrides
from . import CliError


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "simulate", parents=[parent],
        help="simulate a [11C]carfentanil anakinra/placebo crossover study (BIDS-PET + ground truth)",
        description="Simulate a [11C]carfentanil anakinra/placebo crossover study in MNI space and write it "
                    "as a BIDS-PET dataset with ground-truth maps under derivatives/voxelkit-sim/. "
                    "Options left out come from the preset (default: full 12-subject study at 2 mm).")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory (BIDS root)")
    p.add_argument("--preset", choices=("test", "demo", "full"), default=None,
                   help="test: 4 subjects at 4 mm (seconds); demo: 10 subjects at 3 mm; full: 12 at 2 mm")
    p.add_argument("--n-subjects", type=int, default=None, help="number of subjects (default 12)")
    p.add_argument("--effect", type=float, default=None,
                   help="relative BPND reduction planted in the anakinra session (default 0.08)")
    p.add_argument("--effect-regions", default=None, metavar="NAMES",
                   help="comma-separated regions carrying the effect "
                        "(default thalamus,insula,nucleus_accumbens,anterior_cingulate,caudate)")
    p.add_argument("--noise", type=float, default=None, metavar="LEVEL",
                   help="noise as the COV of a 2 mm reference voxel in the last frame (default 0.1; 0 = none)")
    p.add_argument("--fwhm", type=float, default=None, metavar="MM", help="noise correlation FWHM in mm (7)")
    p.add_argument("--challenge", choices=("within", "between", "none"), default=None,
                   help="pain challenge lowering BPND within a window (default), whole scans, or none")
    add_cli_knobs(p)
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--resolution", type=float, default=None, choices=(2.0, 3.0, 4.0), metavar="MM",
                   help="voxel size in mm: 2, 3 or 4 (default 2)")
    p.add_argument("--jobs", type=int, default=None,
                   help="worker processes (default: 2 if the machine has 2+ CPUs; results do not change)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing dataset written by voxelkit simulate in DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..simulate.study import simulate_study  # noqa: PLC0415

    overrides = {}
    for opt, key in (("n_subjects", "n_subjects"), ("effect", "effect"), ("noise", "noise"), ("fwhm", "fwhm_mm"),
                     ("challenge", "challenge"), ("seed", "seed"), ("resolution", "resolution"),
                     ("jobs", "n_jobs")):
        val = getattr(args, opt)
        if val is not None:
            overrides[key] = val
    overrides.update(cli_knob_overrides(args))
    if "n_jobs" not in overrides:
        overrides["n_jobs"] = min(2, os.cpu_count() or 1)
    if args.effect_regions:
        overrides["effect_regions"] = tuple(r.strip() for r in args.effect_regions.split(",") if r.strip())
    if "resolution" in overrides and float(overrides["resolution"]).is_integer():
        overrides["resolution"] = int(overrides["resolution"])
    try:
        result = simulate_study(args.output, preset=args.preset, overwrite=args.overwrite, **overrides)
    except TypeError as exc:
        raise CliError(str(exc)) from exc
    if not args.quiet:
        print(result.summary())
    return 0
