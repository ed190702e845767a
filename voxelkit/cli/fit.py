"""``voxelkit fit`` (4-D image -> parametric maps) and ``voxelkit fit-tacs`` (TAC table -> one row per region)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("voxelkit")

#: CLI option -> model keyword, with a converter.  Only options the user gave are passed on.
MODEL_OPTIONS: dict[str, str] = {
    "tstar": "tstar",
    "k2prime": "k2prime",
    "end": "end",
    "window": "window",
    "weights": "weights",
    "integration": "integration",
    "theta3_range": "theta3_range",
    "n_basis": "n_basis",
    "bp_max": "bp_max",
    "half_life": "half_life_min",
    "k2prime_region": "k2prime_region",
    "k2prime_mask": "k2prime_mask",
}


def _k2prime_arg(text: str) -> float | str:
    """``--k2prime``: a rate in 1/min, or ``median``."""
    if text.strip().lower() == "median":
        return "median"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rate in 1/min or 'median', got {text!r}") from None


def add_model_options(p: argparse.ArgumentParser) -> None:
    from ..models import MODELS  # noqa: PLC0415
    from ..models.base import MODEL_INTEGRATION_SCHEMES, WEIGHT_SCHEMES  # noqa: PLC0415

    g = p.add_argument_group("model")
    g.add_argument("--model", default="logan", choices=sorted(MODELS), help="kinetic model (default: logan)")
    g.add_argument("--tstar", type=float, default=None, metavar="MIN",
                   help="Logan: frames starting at or after t* (minutes) enter the regression")
    g.add_argument("--k2prime", type=_k2prime_arg, default=None, metavar="K",
                   help="reference-region efflux rate k2' (1/min); mrtm2 also 'median' (median MRTM k2' over "
                        "well-fitted high-BPND voxels/regions)")
    g.add_argument("--end", type=float, default=None, metavar="MIN",
                   help="Logan: ignore frames ending after this time (minutes)")
    g.add_argument("--window", type=float, nargs=2, default=None, metavar=("START", "END"),
                   help="fit only frames inside [START, END] minutes (integrals still start at injection)")
    g.add_argument("--weights", default=None,
                   help="frame weights: " + ", ".join(WEIGHT_SCHEMES) + ", or (fit-tacs) a column name")
    g.add_argument("--half-life", type=float, default=None, metavar="MIN",
                   help="radionuclide half-life for decay-uncorrected weights (minutes; default C-11, 20.364)")
    g.add_argument("--integration", default=None, choices=MODEL_INTEGRATION_SCHEMES,
                   help="running-integral rule (default trapezoid from a zero at injection, as kinfitr; "
                        "frame_average is exact for frame-average data on uneven schedules)")
    g.add_argument("--theta3-range", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="SRTM/SRTM2: basis-function theta3 grid range (1/min); default from k2' and --bp-max")
    g.add_argument("--n-basis", type=int, default=None, metavar="N",
                   help="SRTM/SRTM2: number of basis functions (log-spaced theta3)")
    g.add_argument("--bp-max", type=float, default=None, metavar="BP",
                   help="SRTM/SRTM2: highest BPND the default theta3 grid must reach")


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    opts = {}
    for attr, key in MODEL_OPTIONS.items():
        val = getattr(args, attr, None)
        if val is not None:
            opts[key] = tuple(val) if isinstance(val, list) else val
    return opts


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("fit", parents=[parent], help="fit a kinetic model to every voxel of a 4-D PET image",
                       description="Fit a reference-tissue model voxelwise and write parametric maps "
                                   "(NIfTI + JSON sidecars) to OUTDIR.")
    p.add_argument("pet", help="4-D PET image; frame times from its BIDS JSON sidecar unless --frames-json")
    p.add_argument("--ref-mask", required=True, help="reference region mask (mean TAC used)")
    p.add_argument("--mask", default=None, help="brain mask (default: voxels with finite, non-zero signal)")
    p.add_argument("--frames-json", default=None, help="BIDS JSON with FrameTimesStart/FrameDuration (seconds)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output directory")
    p.add_argument("--prefix", default="", help="prefix of output file names")
    p.add_argument("--overwrite", action="store_true", help="replace existing output maps")
    add_model_options(p)
    p.add_argument("--k2prime-mask", default=None, metavar="IMG",
                   help="mrtm2/srtm2: mask image of a high-binding region; k2' from a fit of its mean TAC")
    p.set_defaults(func=run_fit)

    q = sub.add_parser("fit-tacs", parents=[parent], help="fit a kinetic model to regional TACs (TSV)",
                       description="Fit a reference-tissue model to each region of a TAC table (TSV with "
                                   "frame_start, frame_end in seconds and one column per region).")
    q.add_argument("tacs", help="TAC table (TSV)")
    q.add_argument("--ref", required=True, metavar="COLUMN", help="reference region column")
    q.add_argument("--regions", nargs="+", default=None, help="region columns to fit (default: all others)")
    q.add_argument("-o", "--output", default=None, metavar="OUT.tsv", help="output TSV (default: print)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing output TSV")
    add_model_options(q)
    q.add_argument("--k2prime-region", default=None, metavar="COLUMN",
                   help="mrtm2/srtm2: column of a high-binding region; k2' from its fit")
    q.set_defaults(func=run_fit_tacs)


def _planned_outputs(model: str, outdir: Path, prefix: str) -> list[Path]:
    """Files ``ModelFit.save`` writes for ``model``: a map and a JSON per parameter and for ``status``, and
    ``fit.json``."""
    import importlib  # noqa: PLC0415

    from ..models import MODELS  # noqa: PLC0415

    mod_name, cls_name = MODELS[model.lower()].split(":")
    names = [*getattr(importlib.import_module(mod_name), cls_name).param_names, "status"]
    return ([outdir / f"{prefix}{k}.nii.gz" for k in names] + [outdir / f"{prefix}{k}.json" for k in names]
            + [outdir / f"{prefix}fit.json"])


def run_fit(args: argparse.Namespace) -> int:
    from ..api import fit  # noqa: PLC0415
    from ..frames import FrameTiming  # noqa: PLC0415
    from . import CliError  # noqa: PLC0415

    frames = FrameTiming.from_bids_json(args.frames_json) if args.frames_json else None
    out = Path(args.output)
    if not args.overwrite:  # fail before the (possibly long) fit: the files this model would write
        existing = [str(p) for p in _planned_outputs(args.model, out, args.prefix) if p.exists()]
        if existing:
            raise CliError(f"output exists: {', '.join(existing)} (use --overwrite or another --output/--prefix)")
    result = fit(args.pet, reference=args.ref_mask, model=args.model, mask=args.mask, frames=frames,
                 device=args.device, **model_options(args))
    if out.resolve() == Path(args.pet).resolve().parent and not args.prefix:
        log.info("writing maps beside the input image")
    written = result.save(out, prefix=args.prefix, overwrite=args.overwrite)
    counts = result.status_counts()
    log.info("%s: %d voxels in %.2f s on %s; status %s; wrote %d files to %s", args.model, result.n,
             result.seconds, result.backend, counts, len(written), out)
    return 0


def run_fit_tacs(args: argparse.Namespace) -> int:
    from ..api import fit_tacs  # noqa: PLC0415
    from ..io import write_tsv  # noqa: PLC0415
    from . import CliError  # noqa: PLC0415

    opts = model_options(args)
    weights = opts.pop("weights", None)
    if args.output is not None and Path(args.output).exists() and not args.overwrite:
        raise CliError(f"output exists: {args.output} (use --overwrite)")
    result = fit_tacs(args.tacs, ref=args.ref, model=args.model, regions=args.regions, weights=weights,
                      device=args.device or "cpu", **opts)
    text = write_tsv(result.rows(), args.output)
    if args.output is None:
        sys.stdout.write(text)
    else:
        log.info("wrote %d regions to %s", result.n, args.output)
    return 0
