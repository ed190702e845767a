"""Voxelwise permutation inference: one-sample / paired / two-sample / GLM designs, max-T, cluster extent and
mass, exact TFCE, FDR; NumPy or CuPy.  See :mod:`voxelkit.stats.api` (entry points), :mod:`.settings`
(:class:`Inference`: the settings and their defaults) and :mod:`.result` (result objects and their files)."""

from .api import glm, one_sample, paired, permutation_test, two_sample
from .contrasts import FDesign
from .covariates import CodedCovariates, code_covariates
from .design import Design, make_permutation_set, one_sample_design, smallest_p, two_sample_design
from .inference import fdr_bh, fwe_p, fwe_threshold
from .io import load_null
from .result import CLUSTER_COLUMNS, MAP_NAMES, MultiContrastResult, PermutationResult
from .settings import DEFAULTS, Inference


def __getattr__(name: str):  # lazy: numba is imported only when TFCE is used
    if name == "tfce_volume":
        from .tfce import tfce_volume  # noqa: PLC0415

        return tfce_volume
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CLUSTER_COLUMNS", "DEFAULTS", "Inference", "MAP_NAMES", "FDesign", "MultiContrastResult",
           "CodedCovariates", "Design", "code_covariates", "smallest_p", "PermutationResult", "fdr_bh", "fwe_p",
           "fwe_threshold", "glm", "load_null", "make_permutation_set", "one_sample", "one_sample_design", "paired",
           "permutation_test", "tfce_volume", "two_sample", "two_sample_design"]
