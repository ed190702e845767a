"""The study pipeline: BIDS-PET crossover study -> BPND maps -> drug-effect statistics -> report.

Stages that can be called alone, passing arrays in memory: :func:`fit_scans` (cached per-scan fits, maps returned
in memory), :func:`contrast_maps`, :func:`group_stats`, :func:`roi_tables`, :func:`provenance`; :func:`run_study`
only sequences them (fit_scans -> contrast_maps -> group_stats -> roi_tables -> provenance -> report)."""

from .config import StudyConfig, load_study_file
from .run import (
    RoiTables,
    ScanFits,
    StudyResult,
    contrast_maps,
    fit_scans,
    group_stats,
    provenance,
    roi_tables,
    run_group_stats,
    run_study,
)

__all__ = ["RoiTables", "ScanFits", "StudyConfig", "StudyResult", "contrast_maps", "fit_scans", "group_stats",
           "load_study_file", "provenance", "roi_tables", "run_group_stats", "run_study"]
