"""The study pipeline: BIDS-PET crossover study -> BPND maps -> drug-effect statistics -> report."""

from .config import StudyConfig, load_study_file
from .run import StudyResult, run_study

__all__ = ["StudyConfig", "StudyResult", "load_study_file", "run_study"]
