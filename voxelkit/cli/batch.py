"""``voxelkit fit-tacs-batch``: fit every regional TAC table of a BIDS derivatives dataset (e.g. PETPrep's
``*_desc-preproc_seg-gtm_tacs.tsv``) and write one tidy table: one row per scan and region."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("voxelkit")

DEFAULT_PATTERN = "*_tacs.tsv"
_NAME_RE = re.compile(r"^sub-(?P<sub>[A-Za-z0-9]+)(?:_ses-(?P<ses>[A-Za-z0-9]+))?_")


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    from .fit import add_model_options  # noqa: PLC0415

    p = sub.add_parser("fit-tacs-batch", parents=[parent],
                       help="fit every TAC table of a derivatives dataset into one tidy table",
                       description="Find every sub-*/[ses-*/]pet/*_tacs.tsv under DIR (a BIDS derivatives dataset "
                                   "such as PETPrep's, frame_start/frame_end in seconds), fit each region with "
                                   "the reference column, and write one TSV: subject, session, file, frames, "
                                   "region and the model's parameters (rates in 1/min). Regions may differ "
                                   "between scans. Nothing is written when a table cannot be fitted.")
    p.add_argument("derivatives", metavar="DIR", help="derivatives dataset (e.g. derivatives/petprep)")
    p.add_argument("--ref", "--reference", required=True, metavar="COLUMN",
                   help="reference region column in every table (--reference: the same)")
    p.add_argument("--regions", nargs="+", default=None,
                   help="region columns to fit (default: all others; a table lacking one skips it with a note)")
    p.add_argument("--pattern", default=DEFAULT_PATTERN, help=f"TAC file name pattern (default {DEFAULT_PATTERN})")
    p.add_argument("-o", "--output", required=True, metavar="OUT.tsv", help="output TSV (never an input)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output TSV")
    add_model_options(p, "fit-tacs")
    p.set_defaults(func=run)


def find_tac_tables(root: Path, pattern: str = DEFAULT_PATTERN) -> list[Path]:
    """``sub-*/[ses-*/]pet/<pattern>`` under ``root``, sorted."""
    hits = set(root.glob(f"sub-*/ses-*/pet/{pattern}")) | set(root.glob(f"sub-*/pet/{pattern}"))
    return sorted(hits)


def fit_batch(root: Path, ref: str, model: str, regions: list[str] | None = None, pattern: str = DEFAULT_PATTERN,
              device: str | None = None, **options: Any) -> list[dict[str, Any]]:
    """Tidy rows (subject, session, file, frames, region, parameters...) of every TAC table under ``root``."""
    from ..api import fit_tacs  # noqa: PLC0415
    from ..io import InputError, read_tac_table  # noqa: PLC0415

    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory (expected a derivatives dataset)")
    files = find_tac_tables(root, pattern)
    if not files:
        raise InputError(f"{root}: no sub-*/[ses-*/]pet/{pattern} found")
    rows: list[dict[str, Any]] = []
    for path in files:
        m = _NAME_RE.match(path.name)
        sub, ses = (m["sub"], m["ses"] or "n/a") if m else ("n/a", "n/a")
        table = read_tac_table(path)
        if ref not in table.columns:
            raise InputError(f"{path}: no reference column {ref!r}")
        use = regions
        if regions is not None:
            missing = [r for r in regions if r not in table.columns]
            if missing:
                log.warning("%s: no column %s (skipped)", path.name, ", ".join(missing))
            use = [r for r in regions if r in table.columns]
            if not use:
                continue
        result = fit_tacs(table, reference=ref, model=model, regions=use, device=device, **dict(options))
        rel = str(path.relative_to(root))
        for r in result.rows():
            rows.append({"subject": sub, "session": ses, "file": rel, "frames": table.frames.n_frames, **r})
    log.info("fit-tacs-batch: %d tables, %d rows (%s, reference %s)", len(files), len(rows), model, ref)
    return rows


def run(args: argparse.Namespace) -> int:
    from ..outputs import check_not_input  # noqa: PLC0415
    from . import CliError  # noqa: PLC0415
    from .fit import _check_writable_dir, model_options, write_tsv_atomic  # noqa: PLC0415

    opts = model_options(args, "fit-tacs")
    target = Path(args.output)
    root = Path(args.derivatives)
    check_not_input(target, find_tac_tables(root, args.pattern) if root.is_dir() else [], "output TSV")
    if target.is_dir():
        raise CliError(f"{target}: output is an existing folder; give a file name (OUT.tsv)")
    if target.exists() and not args.overwrite:
        raise CliError(f"output exists: {target} (use --overwrite)")
    _check_writable_dir(target.parent)
    device = args.device  # None: $VOXELKIT_DEVICE or auto (auto keeps a small table on the CPU)
    rows = fit_batch(root, args.ref, args.model, args.regions, args.pattern, device=device, **opts)
    write_tsv_atomic(rows, target)
    log.info("wrote %d rows to %s", len(rows), target)
    return 0
