"""The study pipeline: BIDS-PET crossover study -> BPND maps -> drug-effect statistics -> report.

Stages that can be called alone: :func:`fit_scans` (cached per-scan fits, maps returned in memory),
:func:`contrast_maps`, :func:`group_stats`; :func:`run_study` sequences them (plus ROI tables, provenance, report)."""

from .config import StudyConfig, load_study_file
from .run import ScanFits, StudyResult, contrast_maps, fit_scans, group_stats, run_group_stats, run_study

__all__ = ["ScanFits", "StudyConfig", "StudyResult", "contrast_maps", "fit_scans", "group_stats", "load_study_file",
           "run_group_stats", "run_study"]
