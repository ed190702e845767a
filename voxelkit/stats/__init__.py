"""Voxelwise permutation inference: one-sample / paired / two-sample / GLM designs, max-T, cluster extent and
mass, exact TFCE, FDR; NumPy or CuPy.  See :mod:`voxelkit.stats.api` (entry points), :mod:`.settings`
(:class:`Inference`: the settings and their defaults) and :mod:`.result` (result objects and their files)."""

from importlib import import_module

#: Public name -> submodule.  Resolved on first use, so importing a light submodule (``voxelkit.stats.settings``:
#: the CLI and the study file need only the defaults) does not import the engine, SciPy or numba.
_EXPORTS = {
    **dict.fromkeys(("glm", "one_sample", "paired", "permutation_test", "two_sample"), "api"),
    "FDesign": "contrasts",
    **dict.fromkeys(("CodedCovariates", "code_covariates"), "covariates"),
    **dict.fromkeys(("Design", "make_permutation_set", "one_sample_design", "smallest_p", "two_sample_design"),
                    "design"),
    **dict.fromkeys(("fdr_bh", "fwe_p", "fwe_threshold"), "inference"),
    "load_null": "io",
    **dict.fromkeys(("CLUSTER_COLUMNS", "MAP_NAMES", "MultiContrastResult", "PermutationResult"), "result"),
    **dict.fromkeys(("DEFAULTS", "Inference"), "settings"),
    "tfce_volume": "tfce",  # numba is imported only when TFCE is used
}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = ["CLUSTER_COLUMNS", "DEFAULTS", "Inference", "MAP_NAMES", "FDesign", "MultiContrastResult",
           "CodedCovariates", "Design", "code_covariates", "smallest_p", "PermutationResult", "fdr_bh", "fwe_p",
           "fwe_threshold", "glm", "load_null", "make_permutation_set", "one_sample", "one_sample_design", "paired",
           "permutation_test", "tfce_volume", "two_sample", "two_sample_design"]
