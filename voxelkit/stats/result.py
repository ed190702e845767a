"""Result objects: :class:`PermutationResult` (one contrast), :class:`MultiContrastResult`
(several), the cluster table (:func:`cluster_table`, :data:`CLUSTER_COLUMNS`), the output names and the settings
record written to ``stats.json`` (:func:`settings_record`).  The objects do no I/O: ``save`` calls
:func:`voxelkit.io.writers.write_stats`.

Kept apart from the engine (:mod:`.engine`) and the entry points (:mod:`.api`) so that a reader of a result -- the
report, the pipeline, user code -- finds its schema in one place.  Re-exported from :mod:`voxelkit.stats`,
:mod:`voxelkit.stats.api` and (``MultiContrastResult``) :mod:`voxelkit.stats.contrasts`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__
from ..io import Masker

# the output names and the cluster table's columns live in voxelkit.io.derivatives (every output name in one place)
from ..io.derivatives import STATS_CLUSTER_COLUMNS as CLUSTER_COLUMNS  # noqa: F401 - re-exported
from ..io.derivatives import STATS_MAP_NAMES as MAP_NAMES  # noqa: F401 - re-exported
from ..io.derivatives import STATS_OTHER_OUTPUTS as OTHER_OUTPUTS  # noqa: F401 - re-exported
from ..io.derivatives import stats_contrast_outputs
from ..io.derivatives import stats_output_names as output_names  # noqa: F401 - re-exported
from ..outputs import OutputFolder
from .clusters import label_clusters, local_maxima
from .decisions import ensure_decisions
from .inference import fwe_p, fwe_threshold, logp
from .settings import Inference

if TYPE_CHECKING:
    import nibabel as nib


@dataclass
class PermutationResult:
    """Maps (over the mask's voxels, C order), null distributions, cluster table and settings."""

    maps: dict[str, np.ndarray]
    masker: Masker
    null: dict[str, np.ndarray]
    clusters: list[dict]
    settings: dict[str, Any]
    analysed: np.ndarray = field(repr=False, default=None)  # (V,) bool: voxels not excluded
    input_files: list[str] = field(default_factory=list)  # image paths read (never overwritten by save)

    def image(self, name: str) -> nib.Nifti1Image:
        """The map ``name`` as a NIfTI image (0 outside the mask and in excluded voxels)."""
        if name not in self.maps:
            raise KeyError(f"no map {name!r}; maps are {', '.join(self.maps)}")
        return self.masker.to_image(self.maps[name], fill=0.0)

    def fwe_threshold(self, which: str = "t", alpha: float = 0.05) -> float:
        """Statistic value needed for FWE p <= alpha from the saved null (``which``: t, tfce, cluster_extent,
        cluster_mass) -- re-thresholding without re-running."""
        key = {"t": "h0_max_t", "tfce": "h0_max_tfce", "cluster_extent": "h0_max_cluster_extent",
               "cluster_mass": "h0_max_cluster_mass"}[which]
        return fwe_threshold(self.null[key], alpha)

    def save(self, outdir: str | Path | OutputFolder, *, overwrite: bool = False,
             inputs: Sequence[str | Path] = ()) -> dict[str, Path]:
        """Write every map, the analysed-voxel mask, the null distributions, the cluster table (when clusters were
        formed), ``stats.json`` and the folder manifest: a convenience for :func:`voxelkit.io.writers.write_stats`
        (see there for the names and the folder rules; ``outdir`` may be an :class:`OutputFolder` already checked
        by the caller).  Returns name -> path."""
        from ..io.writers import write_stats  # noqa: PLC0415 - the writers live in the I/O layer

        ensure_decisions(self)  # stats.json "decisions": the record made with the p-values (or one made now)
        return write_stats(self, outdir, overwrite=overwrite, inputs=inputs)


def cluster_table(t3d: np.ndarray, mask3d: np.ndarray, thr: float, two_sided: bool, connectivity: int,
                     h0_ext: np.ndarray, h0_mass: np.ndarray, affine: np.ndarray,
                     atlas: tuple[np.ndarray, dict[int, str]] | None, pfun_ext=fwe_p,
                     pfun_mass=fwe_p) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Per-voxel signed logp maps (3-D) for extent and mass FWE, and the cluster table rows (``pfun_*``: the FWE
    p-value function of each null, :func:`fwe_p` or the tail approximation's)."""
    lp_ext = np.zeros(t3d.shape)
    lp_mass = np.zeros(t3d.shape)
    rows: list[dict] = []
    vox_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    found = []
    for sgn in ((1.0, -1.0) if two_sided else (1.0,)):
        stat = sgn * t3d
        labels, ext, mass = label_clusters(stat, thr, mask3d, connectivity)
        if ext.size <= 1:
            continue
        p_e = pfun_ext(ext[1:], h0_ext)
        p_m = pfun_mass(mass[1:], h0_mass)
        sign_map = sgn if two_sided else 1.0
        lab_e = np.r_[0.0, logp(p_e) * sign_map]
        lab_m = np.r_[0.0, logp(p_m) * sign_map]
        lp_ext += lab_e[labels]
        lp_mass += lab_m[labels]
        for k in range(1, ext.size):
            found.append((ext[k], sgn, k, labels, stat, p_e[k - 1], p_m[k - 1], mass[k]))
    found.sort(key=lambda f: (-f[0], -f[7]))
    for cid, (ext_k, sgn, k, labels, stat, pe, pm, mass_k) in enumerate(found, start=1):
        peaks = local_maxima(stat, labels, k, affine)
        for j, pk in enumerate(peaks):
            xyz = affine[:3, :3] @ np.asarray(pk, float) + affine[:3, 3]
            row: dict[str, Any] = {"cluster_id": str(cid) if j == 0 else f"{cid}{chr(ord('a') + j - 1)}",
                                   "peak_t": float(t3d[pk]), "peak_x": round(float(xyz[0]), 2),
                                   "peak_y": round(float(xyz[1]), 2), "peak_z": round(float(xyz[2]), 2)}
            if j == 0:
                row.update(sign="+" if sgn > 0 else "-", size_voxels=int(ext_k),
                           size_mm3=round(float(ext_k * vox_mm3), 3), mass=float(mass_k),
                           p_fwe_extent=float(pe), p_fwe_mass=float(pm))
            else:
                row.update(sign="", size_voxels="", size_mm3="", mass="", p_fwe_extent="", p_fwe_mass="")
            if atlas is not None:
                idx = int(atlas[0][pk])
                row["region"] = atlas[1].get(idx, "n/a" if idx == 0 else str(idx))
            else:
                row["region"] = "n/a"
            rows.append(row)
    return lp_ext, lp_mass, rows


@dataclass
class MultiContrastResult:
    """One :class:`~voxelkit.stats.api.PermutationResult` per contrast (label -> result), and the run's settings."""

    results: dict[str, Any]
    specs: list[Any]  # voxelkit.stats.contrasts.ContrastSpec
    settings: dict[str, Any]
    input_files: list[str] = field(default_factory=list)

    def __getitem__(self, label: str) -> Any:
        return self.results[label]

    @property
    def clusters(self) -> list[dict]:
        """Cluster rows of all contrasts (each with its ``contrast`` label)."""
        return [{**row, "contrast": lab} for lab, r in self.results.items() for row in r.clusters]

    def output_names(self) -> dict[str, list[str]]:
        """label -> file names this result writes for that contrast (names: :mod:`voxelkit.io.derivatives`)."""
        out = {}
        for sp in self.specs:
            r = self.results[sp.label]
            has_clusters = r.settings.get("cluster_threshold_t") is not None
            out[sp.label] = stats_contrast_outputs(sp.label, r.maps, has_clusters, sp.kind)
        return out

    def save(self, outdir: str | Path | OutputFolder, *, overwrite: bool = False,
             inputs: Sequence[str | Path] = ()) -> dict:
        """Write every contrast's files with its label as prefix, ``mask.nii.gz`` and one ``stats.json``: a
        convenience for :func:`voxelkit.io.writers.write_stats` (a non-empty folder is refused unless
        ``overwrite``)."""
        from ..io.writers import write_stats  # noqa: PLC0415 - the writers live in the I/O layer

        ensure_decisions(self)  # stats.json "decisions" by contrast label, before writing
        return write_stats(self, outdir, overwrite=overwrite, inputs=inputs)


def settings_record(inf: Inference, *, design: Any, perms: Any, prep: Any, res: Any, backend: str, n_maps: int,
                    n_voxels_mask: int, n_voxels_analysed: int, cluster_threshold_t: float | None,
                    inputs: Sequence[str], tail_settings: Mapping[str, Any],
                    extra_settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``stats.json`` record of one permutation test: every inference setting (``inf``, the keys of
    :class:`~voxelkit.stats.settings.Inference` under their own names), the design, the permutations and what the
    engine did (``res``: :class:`~voxelkit.stats.engine.EngineResult`; ``prep``: its ``PreparedDesign``)."""
    two_sided = inf.two_sided
    vs = inf.variance_smoothing
    settings: dict[str, Any] = {
        "voxelkit_version": __version__, "test": design.kind, "method": design.method,
        "permutation_scheme": ("sign flipping" if design.method == "flip" else "permutation") + (
            " (Freedman-Lane)" if design.nuisance().shape[1] and design.kind == "glm" else ""),
        "n_maps": n_maps, "n_perm_requested": int(inf.n_perm), "n_perm": perms.n_perm,
        "exhaustive": perms.exhaustive, "seed": inf.seed, "two_sided": two_sided, "df": prep.df,
        "design_columns": design.names, "design_matrix": design.matrix, "contrast": design.contrast,
        "cluster_p": None if inf.cluster_p is None else float(inf.cluster_p),
        "cluster_threshold_t": cluster_threshold_t,
        "cluster_threshold_rule": "t > threshold (two-sided: |t| > threshold, p halved)",
        "cluster_mass": "sum of (t - threshold) over the cluster", "connectivity": inf.connectivity,
        "tfce": inf.tfce, "tfce_H": inf.tfce_H, "tfce_E": inf.tfce_E, "tfce_method": "exact (union-find, no step size)",
        "tfce_two_sided": "positive and negative parts enhanced separately; null = max over both",
        "p_value_maps": "-log10(p)" + (", signed by the sign of t" if two_sided else ""),
        "uncorrected_p": "permutation p (identity counted)",
        "backend": backend, "dtype": res.dtype, "batch_size": res.extra.get("batch_size", inf.batch_size),
        "n_voxels_mask": n_voxels_mask, "n_voxels_analysed": n_voxels_analysed,
        "n_voxels_excluded_constant": prep.n_constant, "n_voxels_excluded_nonfinite": prep.n_nonfinite,
        "fwe_threshold_t_0.05": fwe_threshold(res.h0_max_t, 0.05),
        "inputs": list(inputs),
        "variance_smoothing_fwhm_mm": vs,
    }
    if vs is not None:
        settings["statistic"] = ("pseudo-t: variance smoothed within the mask (Gaussian FWHM "
                                 f"{vs:g} mm, normalised by the smoothed mask) before forming t, "
                                 "in the observed and every permuted map")
        settings["variance_smoothing_sigma_vox"] = res.extra.get("variance_smoothing_sigma_vox")
    settings.update(tail_settings)
    f_rank = int(getattr(prep, "f_rank", 0))
    if f_rank:
        settings["statistic"] = f"F on ({f_rank}, {prep.df}) degrees of freedom (map 't' holds F)"
        settings["f_rank"] = f_rank
        settings["f_tail"] = "upper tail (F has no sides: two_sided does not apply)"
    if extra_settings:
        settings.update(extra_settings)
    return settings
