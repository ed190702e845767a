"""Python API: ``one_sample``, ``paired``, ``two_sample`` and ``glm`` permutation tests.

Each returns a :class:`PermutationResult` holding maps (``t``, ``logp_uncorrected``, ``logp_fdr``,
``logp_fwe_voxel``, and when requested ``logp_fwe_cluster_extent``, ``logp_fwe_cluster_mass``, ``tfce``,
``logp_fwe_tfce``), the null distributions, the cluster table and every setting; ``.save(outdir)`` writes them.

p-value maps are -log10(p).  For two-sided tests they are signed by the sign of t (as nilearn's
``non_parametric_inference``): +3 means p = 0.001 with t > 0, -3 means p = 0.001 with t < 0.  One-sided tests
test t > 0 (flip the contrast or swap A and B for the other tail) and their maps are unsigned.

Intercept, covariates and contrast of :func:`glm`: the model is ``Y = [1, Z] beta`` where ``Z`` are the covariate
columns coded by :func:`voxelkit.stats.covariates.code_covariates` (numeric columns mean-centred, categorical
columns effect-coded into k-1 columns and mean-centred; FSL's "demean EVs" rule).  Because ``Z`` has mean 0, the
intercept is the mean of the data *at the sample's average covariate values*: a contrast on the intercept (e.g.
``[1, 0, 0]`` on paired differences) tests the mean effect adjusted for the covariates.  A contrast on a slope
(intercept weight 0) gives the same t with or without centring.  ``centre_covariates=False`` keeps raw covariate
values; the intercept is then the effect at covariate value 0 (age 0 ...), and a warning says so when it is
tested.  ``.save(outdir)`` refuses a non-empty folder unless ``overwrite=True`` (see :mod:`voxelkit.outputs`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .. import __version__
from ..backend import get_backend
from ..io import ImageLike, InputError, Masker, check_same_space, image_name, load_image, write_json, write_tsv
from ..outputs import MANIFEST_NAME, OutputFolder
from . import engine as _engine
from .clusters import label_clusters, local_maxima
from .covariates import code_covariates
from .design import (
    MIN_SUBJECTS,
    Design,
    check_attainable,
    check_settings,
    make_permutation_set,
    one_sample_design,
    two_sample_design,
)
from .inference import fdr_bh, fwe_p, fwe_threshold, logp
from .io import load_maps, read_lookup, save_null
from .neighbors import DEFAULT_CONNECTIVITY, check_connectivity
from .tail import TailInference

log = logging.getLogger("voxelkit")

MAP_NAMES = ("t", "logp_uncorrected", "logp_fdr", "logp_fwe_voxel", "logp_fwe_cluster_extent",
             "logp_fwe_cluster_mass", "tfce", "logp_fwe_tfce")
CLUSTER_COLUMNS = ["cluster_id", "sign", "size_voxels", "size_mm3", "mass", "peak_t", "peak_x", "peak_y",
                   "peak_z", "p_fwe_extent", "p_fwe_mass", "region"]
#: Files besides the maps that :meth:`PermutationResult.save` may write.
OTHER_OUTPUTS = ("mask.nii.gz", "null_distributions.npz", "clusters.tsv", "stats.json")


def output_names() -> list[str]:
    """Every file name a stats command may write into its output folder (for the input check before work)."""
    return [*(f"{m}.nii.gz" for m in MAP_NAMES), *OTHER_OUTPUTS, MANIFEST_NAME]


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
        """Write ``<map>.nii.gz`` for every map, ``mask.nii.gz`` (analysed voxels), ``null_distributions.npz``,
        ``clusters.tsv`` (when clusters were formed), ``stats.json`` (all settings) and the folder manifest
        ``voxelkit_manifest.json`` (what was written), through :class:`voxelkit.outputs.OutputFolder`.

        A non-empty ``outdir`` is refused unless ``overwrite=True``; then exactly the files the previous voxelkit
        command recorded in the folder's manifest are removed first (never an input).  An output whose path is
        one of ``inputs`` or of the images this result was computed from is refused before anything is written.
        ``outdir`` may also be an :class:`OutputFolder` already checked by the caller.  Returns name -> path.
        """
        if isinstance(outdir, OutputFolder):
            folder = outdir
        else:
            command = f"stats {self.settings.get('test', '')}".strip()
            folder = OutputFolder(outdir, command, overwrite=overwrite, inputs=[*self.input_files, *inputs])
        out = folder.path
        has_clusters = self.settings.get("cluster_threshold_t") is not None
        planned = [f"{name}.nii.gz" for name in self.maps] + ["mask.nii.gz", "null_distributions.npz",
                                                               "stats.json"] + (["clusters.tsv"] * has_clusters)
        folder.check_planned([out / q for q in planned])
        paths: dict[str, Path] = {}
        for name in self.maps:
            p = folder.file(f"{name}.nii.gz")
            nib.save(self.image(name), str(p))
            paths[name] = p
        p = folder.file("mask.nii.gz")
        nib.save(self.masker.to_image(self.analysed.astype(np.uint8), fill=0, dtype=np.uint8), str(p))
        paths["mask"] = p
        paths["null"] = save_null(folder.file("null_distributions.npz"), **self.null)
        if has_clusters:
            paths["clusters"] = folder.file("clusters.tsv")
            write_tsv(self.clusters, paths["clusters"], columns=CLUSTER_COLUMNS)
        paths["json"] = write_json(self.settings, folder.file("stats.json"))
        folder.write_manifest()
        return paths


def _cluster_outputs(t3d: np.ndarray, mask3d: np.ndarray, thr: float, two_sided: bool, connectivity: int,
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


def permutation_test(Y: np.ndarray, masker: Masker, design: Design, *, n_perm: int = 5000,
                     two_sided: bool = False, cluster_p: float | None = None, cluster_t: float | None = None,
                     tfce: bool = False, tfce_H: float = 2.0, tfce_E: float = 0.5,
                     connectivity: int = DEFAULT_CONNECTIVITY, seed: int | None = 0,
                     device: Any = None, batch_size: int | None = None, dtype: str = "auto",
                     progress: bool = False, atlas: ImageLike | None = None,
                     atlas_lookup: str | Path | Mapping[int, str] | None = None,
                     inputs: Sequence[str] = (), extra_settings: Mapping[str, Any] | None = None,
                     variance_smoothing: float | None = None, accel: str | None = None,
                     ) -> PermutationResult:
    """Permutation inference on stacked maps ``Y`` (n x V over ``masker``'s voxels) for ``design``.

    Parameters
    ----------
    n_perm : number of permutations/sign flips including the identity (all 2^n flips are used, an exact
        test, when 2^n <= n_perm; likewise all n! orders for permutation designs when n! <= n_perm).
    two_sided : test |t| (maps signed by the sign of t); otherwise t > 0.
    cluster_p, cluster_t : cluster-forming threshold as an uncorrected parametric p (converted with the t
        distribution on the residual df; halved for two-sided tests, as nilearn) or directly in t units.
    tfce, tfce_H, tfce_E : exact TFCE with height exponent H and extent exponent E (extent in voxels).
    connectivity : 6, 18 or 26 (default 26, as FSL; nilearn uses 6).
    seed : seed of the random flips/permutations (recorded in the settings).
    device : "cpu", "gpu", "auto", a Backend or None ($VOXELKIT_DEVICE).
    batch_size : permutations per batch (memory ~ batch_size x n_voxels x 4-8 bytes).
    dtype : working precision of the permutation products ("auto": float32 for one-sample/paired, where the
        statistic is a monotone function of a short sum; float64 for GLMs).
    atlas, atlas_lookup : label image in the same space and an ``index name`` table for the cluster table.
    variance_smoothing : FWHM in mm of the Gaussian smoothing of the variance image within the mask before
        forming t (pseudo-t, as randomise -v / SnPM), in the observed and every permuted map; None: plain t.
    accel : ``"tail"``: FWE p-values (max-T, cluster extent / mass, TFCE) from a generalized Pareto fit to the
        tail of each null of maxima (PALM's -accel tail), accurate with a few hundred permutations; the plain
        permutation p is kept (with a warning) where the fit is poor.  See :mod:`voxelkit.stats.tail`.
    """
    if tfce:
        _engine.start_tfce_warmup()
    n = Y.shape[0]
    if n < MIN_SUBJECTS:
        raise InputError(f"{n} maps: at least {MIN_SUBJECTS} are needed (with n = 4 there are only 2^4 = 16 sign "
                         "flips, so the smallest attainable p is 1/16 = 0.0625 and nothing can reach p < 0.05)")
    connectivity = check_connectivity(connectivity)
    if cluster_p is not None and cluster_t is not None:
        raise InputError("give the cluster-forming threshold as cluster_p (--cluster-p) or cluster_t "
                         "(--cluster-t), not both")
    if cluster_p is not None and not 0 < cluster_p < 1:
        raise InputError(f"cluster_p (--cluster-p) must be in (0, 1), got {cluster_p}")
    check_settings(n_perm=n_perm, cluster_p=cluster_p, cluster_t=cluster_t, tfce_H=tfce_H, tfce_E=tfce_E, seed=seed,
                   batch_size=batch_size)
    groups = None
    if design.kind == "two_sample":
        n_a = int(round(float(design.matrix[:, 1].sum())))
        groups = [n_a, n - n_a]
    check_attainable(n, design.method, two_sided, n_perm, groups)
    if variance_smoothing is not None and not (np.isfinite(variance_smoothing) and variance_smoothing >= 0):
        raise InputError(f"variance_smoothing (FWHM in mm) must be >= 0, got {variance_smoothing}")
    tail = TailInference(accel, seed)
    f_rank = int(getattr(design, "f_rank", 0))  # F contrast (voxelkit.stats.contrasts.FDesign)
    if f_rank and two_sided:
        raise InputError("F contrasts have no sides: drop two_sided (--two-sided)")
    if f_rank and variance_smoothing is not None:
        raise InputError("variance_smoothing (--variance-smoothing) is not available with F contrasts")
    be = get_backend(device)
    prep = _engine.prepare(Y, design)
    n_valid = int(prep.valid.sum())
    if prep.n_constant or prep.n_nonfinite:
        log.warning("voxelkit stats: excluded %d voxels (%d constant across maps or fully explained by the "
                    "nuisance model, %d non-finite in some map); %d voxels analysed",
                    prep.n_constant + prep.n_nonfinite, prep.n_constant, prep.n_nonfinite, n_valid)
    if n_valid == 0:
        raise InputError("no voxel can be analysed: every voxel is constant or non-finite in some map")
    thr_t = cluster_t
    if cluster_p is not None:
        from scipy.special import stdtrit  # noqa: PLC0415  (t quantile; scipy.stats costs ~1 s to import)

        thr_t = float(stdtrit(prep.df, 1.0 - (cluster_p / 2 if two_sided else cluster_p)))
        if f_rank:
            from scipy.special import fdtri  # noqa: PLC0415

            thr_t = float(fdtri(f_rank, prep.df, 1.0 - cluster_p))
    perms = make_permutation_set(design, n_perm, seed)
    N = perms.n_perm
    min_p = (2.0 if two_sided and design.method == "flip" else 1.0) / N
    if min_p > 0.05:
        log.warning("voxelkit stats: only %d distinct permutations: the smallest attainable p is %.3g", N, min_p)
    if perms.exhaustive:
        log.info("voxelkit stats: exact test over all %d %s", N,
                 "sign flips" if design.method == "flip" else "permutations")
    mask3d = masker.mask.copy()
    mask3d[masker.mask] = prep.valid
    cfg = _engine.EngineConfig(two_sided=two_sided, cluster_t=thr_t, tfce=tfce, tfce_H=tfce_H, tfce_E=tfce_E,
                               connectivity=connectivity, batch_size=batch_size, dtype=dtype,
                               variance_smoothing=variance_smoothing, affine=masker.affine)
    bar = None
    if progress and getattr(__import__("sys").stderr, "isatty", lambda: False)():  # bars on a terminal only
        from tqdm.auto import tqdm  # noqa: PLC0415

        bar = tqdm(total=N, unit="perm", desc=f"voxelkit stats {design.kind}", leave=False)
    try:
        res = _engine.run(prep, perms, mask3d, be, cfg, progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()

    V = masker.n_voxels
    valid = prep.valid
    sign = np.sign(res.t) if two_sided else None

    def full(v: np.ndarray) -> np.ndarray:
        out = np.zeros(V, np.float32)
        out[valid] = v
        return out

    t = res.t
    stat = np.abs(t) if two_sided else t
    p_unc = res.count / N
    maps = {"t": full(np.clip(t, -1e30, 1e30)), "logp_uncorrected": full(logp(p_unc, sign)),
            "logp_fdr": full(logp(fdr_bh(p_unc), sign)), "logp_fwe_voxel": full(logp(tail.pfun("h0_max_t")(
                stat, res.h0_max_t), sign))}
    null: dict[str, np.ndarray] = {"h0_max_t": res.h0_max_t}
    clusters: list[dict] = []
    if thr_t is not None:
        t3d = np.zeros(masker.shape)
        t3d[mask3d] = t
        atlas_pair = None
        if atlas is not None:
            aimg = load_image(atlas)
            check_same_space(nib.Nifti1Image(np.zeros(masker.shape, np.uint8), masker.affine), aimg,
                             "the statistic maps", image_name(atlas))
            lut = dict(atlas_lookup) if isinstance(atlas_lookup, Mapping) else (
                read_lookup(atlas_lookup) if atlas_lookup is not None else {})
            atlas_pair = (np.rint(np.asarray(aimg.dataobj)).astype(np.int64).reshape(masker.shape), lut)
        lp_e, lp_m, clusters = _cluster_outputs(t3d, mask3d, thr_t, two_sided, connectivity,
                                                res.h0_max_extent, res.h0_max_mass, masker.affine, atlas_pair,
                                                tail.pfun("h0_max_cluster_extent"), tail.pfun("h0_max_cluster_mass"))
        maps["logp_fwe_cluster_extent"] = lp_e[masker.mask].astype(np.float32)
        maps["logp_fwe_cluster_mass"] = lp_m[masker.mask].astype(np.float32)
        null["h0_max_cluster_extent"] = res.h0_max_extent
        null["h0_max_cluster_mass"] = res.h0_max_mass
    if tfce:
        maps["tfce"] = full(res.tfce)
        maps["logp_fwe_tfce"] = full(logp(tail.pfun("h0_max_tfce")(np.abs(res.tfce), res.h0_max_tfce), sign))
        null["h0_max_tfce"] = res.h0_max_tfce
    if perms.signs is not None:
        null["sign_flips"] = perms.signs
    else:
        null["permutations"] = perms.orders
    null["cluster_threshold_t"] = np.array(np.nan if thr_t is None else thr_t)
    null["two_sided"] = np.array(two_sided)

    settings: dict[str, Any] = {
        "voxelkit_version": __version__, "test": design.kind, "method": design.method,
        "permutation_scheme": ("sign flipping" if design.method == "flip" else "permutation") + (
            " (Freedman-Lane)" if design.nuisance().shape[1] and design.kind == "glm" else ""),
        "n_maps": n, "n_perm_requested": int(n_perm), "n_perm": N, "exhaustive": perms.exhaustive,
        "seed": seed, "two_sided": two_sided, "df": prep.df,
        "design_columns": design.names, "design_matrix": design.matrix, "contrast": design.contrast,
        "cluster_p": cluster_p, "cluster_threshold_t": thr_t,
        "cluster_threshold_rule": "t > threshold (two-sided: |t| > threshold, p halved)",
        "cluster_mass": "sum of (t - threshold) over the cluster", "connectivity": connectivity,
        "tfce": tfce, "tfce_H": tfce_H, "tfce_E": tfce_E, "tfce_method": "exact (union-find, no step size)",
        "tfce_two_sided": "positive and negative parts enhanced separately; null = max over both",
        "p_value_maps": "-log10(p)" + (", signed by the sign of t" if two_sided else ""),
        "uncorrected_p": "permutation p (identity counted)",
        "backend": be.name, "dtype": res.dtype, "batch_size": res.extra.get("batch_size", batch_size),
        "n_voxels_mask": V, "n_voxels_analysed": n_valid,
        "n_voxels_excluded_constant": prep.n_constant, "n_voxels_excluded_nonfinite": prep.n_nonfinite,
        "fwe_threshold_t_0.05": fwe_threshold(res.h0_max_t, 0.05),
        "inputs": list(inputs),
        "variance_smoothing_fwhm_mm": variance_smoothing,
    }
    if variance_smoothing is not None:
        settings["statistic"] = ("pseudo-t: variance smoothed within the mask (Gaussian FWHM "
                                 f"{variance_smoothing:g} mm, normalised by the smoothed mask) before forming t, "
                                 "in the observed and every permuted map")
        settings["variance_smoothing_sigma_vox"] = res.extra.get("variance_smoothing_sigma_vox")
    settings.update(tail.settings())
    if f_rank:
        settings["statistic"] = f"F on ({f_rank}, {prep.df}) degrees of freedom (map 't' holds F)"
        settings["f_rank"] = f_rank
    if extra_settings:
        settings.update(extra_settings)
    return PermutationResult(maps, masker, null, clusters, settings, analysed=valid)


def _load_maps(images: Sequence[ImageLike], mask: ImageLike | None,
               kwargs: Mapping[str, Any]) -> tuple[np.ndarray, Masker, list[str]]:
    """:func:`load_maps`, with the TFCE kernels loading in the background meanwhile when TFCE is asked for."""
    if kwargs.get("tfce"):
        _engine.start_tfce_warmup()
    return load_maps(images, mask)


def _image_paths(*groups: Sequence[Any]) -> list[str]:
    """The file paths among image arguments (in-memory images and None are skipped)."""
    return [str(x) for g in groups for x in g if isinstance(x, str | Path)]


def one_sample(imgs: Sequence[ImageLike], *, mask: ImageLike | None = None, **kwargs: Any) -> PermutationResult:
    """One-sample test of mean > 0 (or != 0 with ``two_sided=True``) by sign flipping.
    Keyword arguments as :func:`permutation_test`."""
    Y, masker, names = _load_maps(imgs, mask, kwargs)
    res = permutation_test(Y, masker, one_sample_design(len(names)), inputs=names, **kwargs)
    res.input_files = _image_paths(imgs, [mask])
    return res


def paired(a_imgs: Sequence[ImageLike], b_imgs: Sequence[ImageLike], *, mask: ImageLike | None = None,
           **kwargs: Any) -> PermutationResult:
    """Paired test of A - B (subject i's ``a_imgs[i]`` with ``b_imgs[i]``) by sign flipping the differences.
    Keyword arguments as :func:`permutation_test`."""
    if len(a_imgs) != len(b_imgs):
        raise InputError(f"pairs incomplete: {len(a_imgs)} A maps but {len(b_imgs)} B maps")
    Y, masker, names = _load_maps(list(a_imgs) + list(b_imgs), mask, kwargs)
    n = len(a_imgs)
    D = Y[:n] - Y[n:]
    res = permutation_test(D, masker, one_sample_design(n, kind="paired"),
                           inputs=[f"{a} - {b}" for a, b in zip(names[:n], names[n:], strict=True)], **kwargs)
    res.input_files = _image_paths(a_imgs, b_imgs, [mask])
    return res


def two_sample(a_imgs: Sequence[ImageLike], b_imgs: Sequence[ImageLike], *, mask: ImageLike | None = None,
               **kwargs: Any) -> PermutationResult:
    """Two-sample test of mean(A) > mean(B) by permuting the group labels."""
    Y, masker, names = _load_maps(list(a_imgs) + list(b_imgs), mask, kwargs)
    res = permutation_test(Y, masker, two_sample_design(len(a_imgs), len(b_imgs)), inputs=names, **kwargs)
    res.input_files = _image_paths(a_imgs, b_imgs, [mask])
    return res


def glm(imgs: Sequence[ImageLike], covariates: Mapping[str, Sequence[Any]] | np.ndarray,
        contrast: str | Sequence[float], *, mask: ImageLike | None = None, intercept: bool = True,
        method: str = "permute", imgs_b: Sequence[ImageLike] | None = None,
        covariate_names: Sequence[str] | None = None, centre_covariates: bool = True,
        subjects: Sequence[str] | None = None, source: str = "covariates", more_contrasts: Sequence[Any] = (),
        f_contrasts: Sequence[Any] = (), fwe_across_contrasts: bool = False, blocks: Sequence[Any] | None = None,
        **kwargs: Any) -> PermutationResult:
    """GLM ``Y = [1, Z] beta`` tested for one t ``contrast`` by Freedman-Lane permutation (``method="permute"``)
    or Freedman-Lane sign flipping of the residuals (``method="flip"``, symmetric errors; e.g. paired
    differences with nuisance covariates).

    What happens to the covariates, the intercept and the contrast:

    - ``Z`` = the covariates coded by :func:`voxelkit.stats.covariates.code_covariates`: numeric columns
      mean-centred, categorical (text) columns effect-coded into k-1 columns named ``col[level]`` and
      mean-centred.  With ``intercept=True`` the intercept is therefore the mean of the data (the maps, or the
      differences ``imgs - imgs_b``) at the sample's average covariate values (FSL's "demean EVs" rule), and a
      contrast on the intercept tests the mean effect adjusted for the covariates.
    - ``centre_covariates=False``: raw covariate values (effect codes not centred); a contrast on the intercept
      then tests the effect at covariate value 0 (age 0 ...), and a warning is logged.
    - A slope contrast (intercept weight 0) gives the same t with or without centring.
    - ``intercept=False``: no intercept column and no centring; the covariates are the whole model.
    - ``contrast``: a design column name (its coefficient is tested: ``"intercept"``, ``"age"``, ``"sex[F]"``;
      a categorical column's own name works when it has a single coded column) or one weight per design column
      ``[intercept,] Z columns`` in the order of ``covariates``.

    ``covariates``: mapping name -> values (one per map; numbers, or strings as read from a TSV) or an (n, k)
    array with ``covariate_names``.  ``subjects``: labels of the maps for error messages (default: the image
    names); ``source``: the file the covariates came from, for error messages.  ``imgs_b``: optional second
    maps; the data are then ``imgs - imgs_b`` (e.g. BPND change).  The coding is recorded in the settings
    (``covariate_coding``, ``covariate_columns``).  Other keyword arguments as :func:`permutation_test`.

    Several contrasts (:mod:`voxelkit.stats.contrasts`): ``more_contrasts`` (further t contrasts, as
    ``contrast``) and ``f_contrasts`` (each: column names, or p weights per row; ``contrast`` may then be None)
    are tested with the same permutations and return a :class:`~voxelkit.stats.contrasts.MultiContrastResult`
    (files prefixed ``c1_``, ``c2_``, ``f1_`` ...); ``fwe_across_contrasts=True`` takes the null maxima over
    the contrasts (PALM -corrcon).

    Repeated measures (:mod:`voxelkit.stats.blocks`): ``blocks`` gives each map's exchangeability block (its
    subject).  With ``method="permute"`` rows are permuted within blocks only and the block effects are added to
    the model as an effect-coded nuisance covariate ``block``; with ``method="flip"`` whole blocks are
    sign-flipped (no block effects added).
    """
    n_maps = len(imgs)
    if isinstance(covariates, Mapping):
        names_in = [str(k) for k in covariates]
        table = {str(k): list(covariates[k]) for k in covariates}
    else:
        X = np.asarray(covariates, np.float64)
        if X.ndim == 1:
            X = X[:, None]
        if X.ndim != 2 or X.shape[0] != n_maps:
            raise InputError(f"{source}: {n_maps} maps but covariates of shape {X.shape}")
        names_in = list(covariate_names) if covariate_names else [f"x{i}" for i in range(X.shape[1])]
        if len(names_in) != X.shape[1]:
            raise InputError(f"{source}: {len(names_in)} covariate names for {X.shape[1]} columns")
        table = {nm: list(X[:, j]) for j, nm in enumerate(names_in)}
    for k, v in table.items():
        if len(v) != n_maps:
            raise InputError(f"{source}: {n_maps} maps but {len(v)} values of covariate {k!r}")
        table[k] = [repr(float(x)) if isinstance(x, int | float | np.number) and not isinstance(x, bool)
                    else str(x) for x in v]
    labels = [str(x) for x in subjects] if subjects is not None else [image_name(i) for i in imgs]
    if len(labels) != n_maps:
        raise InputError(f"{source}: {n_maps} maps but {len(labels)} subject labels")
    centre = bool(centre_covariates and intercept)
    if blocks is not None:
        if len(blocks) != n_maps:
            raise InputError(f"{source}: {n_maps} maps but {len(blocks)} block labels")
        if method == "permute":  # subject effects as nuisance (text labels: effect-coded as a category)
            table = {**table, "block": [f"block {b}" for b in blocks]}
            names_in = [*names_in, "block"]
    coded = code_covariates(table, names_in, labels, source, centre=centre, intercept=intercept)
    X = coded.matrix
    names = list(coded.names)
    if intercept:
        X = np.column_stack([np.ones(n_maps), X])
        names = ["intercept", *names]
    first_contrast = contrast
    if contrast is None and f_contrasts:  # F contrasts only: the base design takes the first F row
        from .contrasts import f_weights  # noqa: PLC0415

        contrast = list(f_weights(f_contrasts[0], names)[0])
    if isinstance(contrast, str):
        col = contrast
        if col not in names and len(coded.groups.get(col, [])) == 1:
            col = coded.groups[col][0]
        if col not in names:
            more = (f" ({col!r} is coded as {', '.join(coded.groups[col])}: give a weight per design column)"
                    if col in coded.groups else "")
            raise InputError(f"contrast {contrast!r} is not a design column; columns are {', '.join(names)}{more}")
        c = np.zeros(len(names))
        c[names.index(col)] = 1.0
    else:
        c = np.asarray(contrast, np.float64)
    design = Design(X, c, method=method, names=names, kind="glm",
                    blocks=None if blocks is None else [str(b) for b in blocks])
    tests_intercept = bool(intercept and c.size == len(names) and c[0] != 0)
    if tests_intercept and coded.q and not centre:
        log.warning("voxelkit stats glm: covariates not centred (raw covariates): the intercept is tested at "
                    "covariate value 0 (%s = 0), not at the sample's average covariate values",
                    ", ".join(coded.names))
    if tests_intercept:
        meaning = ("the intercept: the mean of the data " + (
            "at the sample's average covariate values (covariates mean-centred)" if centre and coded.q else
            "at covariate value 0 (raw covariates)" if coded.q else "(no covariates)"))
    else:
        meaning = "a contrast of slopes (intercept weight 0: unaffected by covariate centring)"
    extra = {**coded.as_dict(), "intercept": intercept, "contrast_tests": meaning}
    if blocks is not None:
        from .blocks import n_distinct  # noqa: PLC0415

        extra.update(exchangeability_blocks=len(set(design.blocks)), permutation_scheme=(
            "within-block permutation (Freedman-Lane; block effects in the model)" if method == "permute" else
            "whole-block sign flipping (Freedman-Lane)"), n_distinct_permutations=n_distinct(method, design.blocks))
    extra.update(kwargs.pop("extra_settings", None) or {})
    if imgs_b is not None:
        if len(imgs_b) != len(imgs):
            raise InputError(f"pairs incomplete: {len(imgs)} maps but {len(imgs_b)} second maps")
        Y, masker, inames = _load_maps(list(imgs) + list(imgs_b), mask, kwargs)
        n = len(imgs)
        Y = Y[:n] - Y[n:]
        inames = [f"{a} - {b}" for a, b in zip(inames[:n], inames[n:], strict=True)]
    else:
        Y, masker, inames = _load_maps(imgs, mask, kwargs)
    if more_contrasts or f_contrasts:
        from .contrasts import make_specs, run_contrasts  # noqa: PLC0415

        specs = make_specs(names, ([] if first_contrast is None else [first_contrast]) + list(more_contrasts),
                           f_contrasts)
        extra.pop("contrast_tests", None)
        multi = run_contrasts(Y, masker, design, specs, fwe_across_contrasts=fwe_across_contrasts, inputs=inames,
                              extra_settings=extra, **kwargs)
        multi.input_files = _image_paths(imgs, imgs_b or (), [mask])
        for r in multi.results.values():
            r.input_files = multi.input_files
        return multi
    if fwe_across_contrasts:
        log.info("voxelkit stats glm: one contrast: fwe_across_contrasts has nothing to combine")
    res = permutation_test(Y, masker, design, inputs=inames, extra_settings=extra, **kwargs)
    res.input_files = _image_paths(imgs, imgs_b or (), [mask])
    return res
