"""``voxelkit report``: (re)write the HTML report of a finished ``voxelkit run`` output directory.

The report reads the files that the folder's manifests list (the run's and ``group/stats/``'s) and the
significance decisions that the statistics recorded in ``stats.json``; a folder written by an older voxelkit is
reported as "not recorded" where it lacks them (see :mod:`voxelkit.report.report`).  A run with named contrasts
(``--contrasts``) gets one report with a part per contrast (``group/stats-<LABEL>/``, ``roi/desc-<LABEL>_*``).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    from ..io.derivatives import REPORT  # noqa: PLC0415

    p = sub.add_parser("report", parents=[parent], help="write the HTML report of a voxelkit run output folder")
    p.add_argument("output_dir", help="a voxelkit run output directory (e.g. BIDS/derivatives/voxelkit)")
    p.add_argument("--html", default=None, help=f"where to write the report (default OUTPUT_DIR/{REPORT})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path  # noqa: PLC0415

    from ..report import write_report  # noqa: PLC0415

    path = write_report(Path(args.output_dir), Path(args.html) if args.html else None)
    print(f"report: {path}")
    return 0
