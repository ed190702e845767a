"""``voxelkit fit`` (4-D image -> parametric maps) and ``voxelkit fit-tacs`` (TAC table -> one row per region).

Model options come from the one table in :mod:`voxelkit.models.options` (shared with ``voxelkit run`` and the
study file).  Outputs of ``fit`` go through :class:`voxelkit.outputs.OutputFolder`: a non-empty folder is refused
without ``--overwrite``; with it, exactly the files the previous voxelkit command recorded in the folder's
manifest are removed (never an input).  ``fit-tacs -o`` never replaces its input table.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("voxelkit")


def add_model_options(p: argparse.ArgumentParser, command: str = "fit") -> None:
    """``--model`` and the model options of ``command`` (see :mod:`voxelkit.models.options`)."""
    from ..models import MODELS  # noqa: PLC0415
    from ..models.options import add_model_arguments  # noqa: PLC0415

    g = p.add_argument_group("model")
    g.add_argument("--model", default="logan", choices=sorted(MODELS), help="kinetic model (default: logan)")
    add_model_arguments(g, command)


def model_options(args: argparse.Namespace, command: str = "fit") -> dict[str, Any]:
    """The model options given on the command line, checked against ``--model``.  ``--k2prime-mask`` (fit) and
    ``--k2prime-region`` (fit-tacs) become the API's one ``k2prime`` (a region); both with ``--k2prime``: error."""
    from ..io import InputError  # noqa: PLC0415
    from ..models.options import collect_model_options  # noqa: PLC0415

    opts = collect_model_options(args, command, model=getattr(args, "model", None))
    for flag, key in (("--k2prime-mask", "k2prime_mask"), ("--k2prime-region", "k2prime_region")):
        if key in opts:
            if opts.get("k2prime") is not None:
                raise InputError(f"command line: give only one source of k2' (--k2prime or {flag})")
            opts["k2prime"] = opts.pop(key)
    return opts


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("fit", parents=[parent], help="fit a kinetic model to every voxel of a 4-D PET image",
                       description="Fit a reference-tissue model voxelwise and write parametric maps "
                                   "(NIfTI + JSON sidecars) to OUTDIR. OUTDIR must be empty or new; "
                                   "--overwrite replaces what an earlier voxelkit command wrote there (its "
                                   "manifest), never an input. When most voxels fail, a warning on stderr says "
                                   "why (exit 0; --strict: exit 2).")
    p.add_argument("pet", help="4-D PET image; frame times from its BIDS JSON sidecar unless --frames-json")
    p.add_argument("--ref-mask", "--reference", required=True,
                   help="reference region mask (mean TAC used); --reference: the same (the Python keyword)")
    p.add_argument("--mask", default=None, help="brain mask (default: voxels with finite, non-zero signal)")
    p.add_argument("--frames-json", default=None, help="BIDS JSON with FrameTimesStart/FrameDuration (seconds)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output directory (empty or new)")
    p.add_argument("--prefix", default="", help="prefix of output file names")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what an earlier voxelkit command wrote in OUTDIR (never an input)")
    p.add_argument("--strict", action="store_true",
                   help="stop with exit 2 (nothing written) when most voxels fail (see fit.qc())")
    from ..bigfit import add_chunked_arguments  # noqa: PLC0415

    add_chunked_arguments(p)  # --chunked, --slab-voxels, --scheduler, --workers (images larger than memory)
    add_model_options(p, "fit")
    p.set_defaults(func=run_fit)

    q = sub.add_parser("fit-tacs", parents=[parent], help="fit a kinetic model to regional TACs (TSV)",
                       description="Fit a reference-tissue model to each region of a TAC table (TSV with "
                                   "frame_start, frame_end in seconds and one column per region).")
    q.add_argument("tacs", help="TAC table (TSV)")
    q.add_argument("--ref", "--reference", required=True, metavar="COLUMN",
                   help="reference region column (--reference: the same, the Python keyword)")
    q.add_argument("--regions", nargs="+", default=None, help="region columns to fit (default: all others)")
    q.add_argument("-o", "--output", default=None, metavar="OUT.tsv",
                   help="output TSV (default: print); never the input table")
    q.add_argument("--overwrite", action="store_true", help="replace an existing output TSV (not the input)")
    add_model_options(q, "fit-tacs")
    q.set_defaults(func=run_fit_tacs)


def _planned_outputs(model: str, outdir: Path, prefix: str) -> list[Path]:
    """Files ``ModelFit.save`` writes for ``model`` (the names live in :mod:`voxelkit.io.derivatives`)."""
    from ..io.derivatives import model_fit_outputs  # noqa: PLC0415

    return [outdir / name for name in model_fit_outputs(model, prefix)]


def _check_writable_dir(path: Path) -> None:
    """:func:`voxelkit.io.derivatives.check_writable_dir` (files can be created in ``path`` or its nearest parent)."""
    from ..io.derivatives import check_writable_dir  # noqa: PLC0415

    check_writable_dir(path)


def check_output_folder(out: Path, overwrite: bool, planned: list[Path], inputs: list[Any]) -> None:
    """The checks of :class:`voxelkit.outputs.OutputFolder`, made before a long fit and without removing
    anything (:func:`voxelkit.io.derivatives.check_output_folder`)."""
    from ..io.derivatives import check_output_folder as check  # noqa: PLC0415

    check(out, overwrite, planned, inputs)


def _k2prime_path(opts: dict[str, Any]) -> str | None:
    """The k2' region mask file given as ``--k2prime IMG`` / ``--k2prime-mask IMG`` (None for a number/median)."""
    from ..models.k2prime import is_median  # noqa: PLC0415

    v = opts.get("k2prime")
    if not isinstance(v, str) or is_median(v):
        return None
    try:
        float(v)
    except ValueError:
        return v
    return None


def run_fit(args: argparse.Namespace) -> int:
    from ..api import fit  # noqa: PLC0415
    from ..frames import FrameTiming  # noqa: PLC0415
    from ..io import check_input_file, sidecar_path  # noqa: PLC0415
    from . import CliError  # noqa: PLC0415

    opts = model_options(args, "fit")
    from ..bigfit import is_zarr, wants_chunked  # noqa: PLC0415

    pet_file = None if is_zarr(args.pet) else args.pet  # a Zarr store is a folder
    for what, path in (("PET image", pet_file), ("reference mask", args.ref_mask), ("brain mask", args.mask),
                       ("frames JSON", args.frames_json), ("k2' mask", _k2prime_path(opts))):
        if path is not None:
            check_input_file(path, what)
    frames = FrameTiming.from_bids_json(args.frames_json) if args.frames_json else None
    out = Path(args.output)
    inputs = [args.pet, args.frames_json or sidecar_path(args.pet), args.ref_mask, args.mask, _k2prime_path(opts)]
    inputs = [p for p in inputs if p is not None]
    check_output_folder(out, args.overwrite, _planned_outputs(args.model, out, args.prefix), inputs)
    if wants_chunked(args):
        from ..bigfit import fit_from_args  # noqa: PLC0415

        result = fit_from_args(args, frames, opts)  # z-slabs of a memory-mapped NIfTI or a Zarr array
    else:
        result = fit(args.pet, reference=args.ref_mask, model=args.model, mask=args.mask, frames=frames,
                     device=args.device, **opts)
    qc = result.qc()
    if qc["flagged"] and args.strict:
        raise CliError(f"{args.pet}: {qc['message']} (--strict: nothing written)")
    if out.resolve() == Path(args.pet).resolve().parent:
        log.info("writing maps beside the input image (inputs are kept)")
    written = result.save(out, prefix=args.prefix, overwrite=args.overwrite, inputs=inputs)
    counts = result.status_counts()
    log.info("%s: %d voxels in %.2f s on %s; status %s; wrote %d files to %s", args.model, result.n,
             result.seconds, result.backend, counts, len(written), out)
    return 0


def run_fit_tacs(args: argparse.Namespace) -> int:
    from ..api import fit_tacs  # noqa: PLC0415
    from ..io import check_input_file, write_tsv  # noqa: PLC0415
    from ..outputs import check_not_input  # noqa: PLC0415
    from . import CliError  # noqa: PLC0415

    opts = model_options(args, "fit-tacs")
    weights = opts.pop("weights", None)
    check_input_file(args.tacs, "TAC table")
    if args.output is not None:
        target = Path(args.output)
        check_not_input(target, [args.tacs], "output TSV")
        if target.is_dir():
            raise CliError(f"{target}: output is an existing folder; give a file name (OUT.tsv)")
        if target.exists() and not args.overwrite:
            raise CliError(f"output exists: {args.output} (use --overwrite)")
        _check_writable_dir(target.parent)
    result = fit_tacs(args.tacs, reference=args.ref, model=args.model, regions=args.regions, weights=weights,
                      device=args.device, **opts)
    if args.output is None:
        sys.stdout.write(write_tsv(result.rows(), None))
        return 0
    write_tsv_atomic(result.rows(), target)
    log.info("wrote %d regions to %s", result.n, args.output)
    return 0


def write_tsv_atomic(rows: list[dict[str, Any]], target: Path) -> None:
    """Write ``rows`` as a TSV to ``target`` through a temporary file beside it (nothing half-written)."""
    from ..io import InputError, write_tsv  # noqa: PLC0415
    from ..io.derivatives import write_text_atomic  # noqa: PLC0415

    try:
        write_text_atomic(target, write_tsv(rows, None))
    except OSError as exc:
        raise InputError(f"{target}: cannot write the output TSV ({exc.strerror or exc})") from None
