"""Python API: ``one_sample``, ``paired``, ``two_sample`` and ``glm`` permutation tests.

Inference settings (their one definition and defaults): :class:`voxelkit.stats.settings.Inference`; the result
objects, cluster table and settings record: :mod:`voxelkit.stats.result`.

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
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..backend import get_backend
from ..io import ImageLike, InputError, Masker, check_same_space, image_name, load_image
from . import engine as _engine
from .covariates import code_covariates
from .decisions import p_over_mask, record_decisions
from .design import (
    MIN_SUBJECTS,
    Design,
    check_attainable,
    make_permutation_set,
    one_sample_design,
    two_sample_design,
)
from .inference import fdr_bh, logp, t_isf
from .io import load_maps, read_lookup
from .result import (  # noqa: F401  (re-exported: imported from voxelkit.stats.api today)
    CLUSTER_COLUMNS,
    MAP_NAMES,
    OTHER_OUTPUTS,
    MultiContrastResult,
    PermutationResult,
    cluster_table,
    output_names,
    settings_record,
)
from .settings import DEFAULTS, Inference
from .tail import TailInference

log = logging.getLogger("voxelkit")

_D = DEFAULTS  # the one set of inference defaults (voxelkit.stats.settings)


def permutation_test(Y: np.ndarray, masker: Masker, design: Design, *, n_perm: int = _D.n_perm,
                     two_sided: bool = _D.two_sided, cluster_p: float | None = _D.cluster_p,
                     cluster_t: float | None = _D.cluster_t, tfce: bool = _D.tfce, tfce_H: float = _D.tfce_H,
                     tfce_E: float = _D.tfce_E, connectivity: int = _D.connectivity, seed: int | None = _D.seed,
                     device: Any = None, batch_size: int | None = _D.batch_size, dtype: str = _D.dtype,
                     progress: bool = False, atlas: ImageLike | None = None,
                     atlas_lookup: str | Path | Mapping[int, str] | None = None,
                     inputs: Sequence[str] = (), extra_settings: Mapping[str, Any] | None = None,
                     variance_smoothing: float | None = _D.variance_smoothing, accel: str | None = _D.accel,
                     ) -> PermutationResult:
    """Permutation inference on stacked maps ``Y`` (n x V over ``masker``'s voxels) for ``design``.

    The inference keywords are the fields of :class:`voxelkit.stats.settings.Inference`, with its defaults
    (two-sided, TFCE, clusters at p < 0.001, 5000 permutations, 26-connectivity, seed 0); an ``Inference``
    object ``inf`` is passed as ``**inf.as_kwargs()``.  Three steps: :func:`validate` (settings, design and data
    checks, residualised data), :func:`run_engine` (the permutations) and :func:`assemble` (maps, p-values,
    cluster table and the settings record).

    Parameters
    ----------
    n_perm : number of permutations/sign flips including the identity (all 2^n flips are used, an exact
        test, when 2^n <= n_perm; likewise all n! orders for permutation designs when n! <= n_perm).
    two_sided : test |t| (maps signed by the sign of t); otherwise t > 0.  F contrasts are always tested in
        the upper tail (F has no sides; ``two_sided`` does not apply to them).
    cluster_p, cluster_t : cluster-forming threshold as an uncorrected parametric p (converted with the t
        distribution on the residual df; halved for two-sided tests, as nilearn) or directly in t units
        (``cluster_t`` alone replaces the default ``cluster_p``); both None: no clusters.
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
    inf = Inference(n_perm=n_perm, two_sided=two_sided, cluster_p=cluster_p, cluster_t=cluster_t, tfce=tfce,
                    tfce_H=tfce_H, tfce_E=tfce_E, connectivity=connectivity, seed=seed, batch_size=batch_size,
                    dtype=dtype, variance_smoothing=variance_smoothing, accel=accel)
    run = validate(Y, masker, design, inf, device)
    res = run_engine(run, progress)
    return assemble(run, res, atlas=atlas, atlas_lookup=atlas_lookup, inputs=inputs, extra_settings=extra_settings)


@dataclass
class Checked:
    """What :func:`validate` established: the settings (``inf``; two_sided off for F contrasts), the design, the
    residualised data (``prep``), the backend, the cluster-forming threshold in t (or F) units, the
    permutations, the 3-D mask of analysed voxels and the tail approximation."""

    inf: Inference
    masker: Masker
    design: Design
    prep: _engine.PreparedDesign
    be: Any
    thr_t: float | None
    perms: Any
    mask3d: np.ndarray
    tail: TailInference


def validate(Y: np.ndarray, masker: Masker, design: Design, inf: Inference, device: Any = None) -> Checked:
    """Check the data, design and settings together (``InputError`` naming the argument and the CLI flag) and
    prepare the engine's inputs; starts loading the TFCE kernels in the background when TFCE is asked for."""
    if inf.tfce:
        _engine.start_tfce_warmup()
    n = Y.shape[0]
    if n < MIN_SUBJECTS:
        raise InputError(f"{n} maps: at least {MIN_SUBJECTS} are needed (with n = 4 there are only 2^4 = 16 sign "
                         "flips, so the smallest attainable p is 1/16 = 0.0625 and nothing can reach p < 0.05)")
    f_rank = int(getattr(design, "f_rank", 0))  # F contrast (voxelkit.stats.contrasts.FDesign)
    if f_rank and inf.two_sided:
        inf = inf.replace(two_sided=False)  # F: the upper tail
    groups = None
    if design.kind == "two_sample":
        n_a = int(round(float(design.matrix[:, 1].sum())))
        groups = [n_a, n - n_a]
    check_attainable(n, design.method, inf.two_sided, inf.n_perm, groups)
    tail = TailInference(inf.accel, inf.seed)
    if f_rank and inf.variance_smoothing is not None:
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
    thr_t = inf.cluster_t
    if inf.cluster_p is not None:
        cp = float(inf.cluster_p)
        thr_t = t_isf(cp / 2 if inf.two_sided else cp, prep.df)  # t quantile without importing scipy.special
        if f_rank:
            from scipy.special import fdtri  # noqa: PLC0415

            thr_t = float(fdtri(f_rank, prep.df, 1.0 - cp))
    perms = make_permutation_set(design, inf.n_perm, inf.seed)
    N = perms.n_perm
    min_p = (2.0 if inf.two_sided and design.method == "flip" else 1.0) / N
    if min_p > 0.05:
        log.warning("voxelkit stats: only %d distinct permutations: the smallest attainable p is %.3g", N, min_p)
    if perms.exhaustive:
        log.info("voxelkit stats: exact test over all %d %s", N,
                 "sign flips" if design.method == "flip" else "permutations")
    mask3d = masker.mask.copy()
    mask3d[masker.mask] = prep.valid
    return Checked(inf, masker, design, prep, be, thr_t, perms, mask3d, tail)


def run_engine(run: Checked, progress: bool = False) -> _engine.EngineResult:
    """All permutations through :func:`voxelkit.stats.engine.run` (a progress bar on a terminal)."""
    inf = run.inf
    cfg = _engine.EngineConfig(two_sided=inf.two_sided, cluster_t=run.thr_t, tfce=inf.tfce, tfce_H=inf.tfce_H,
                               tfce_E=inf.tfce_E, connectivity=inf.connectivity, batch_size=inf.batch_size,
                               dtype=inf.dtype, variance_smoothing=inf.variance_smoothing,
                               affine=run.masker.affine)
    bar = None
    if progress and getattr(sys.stderr, "isatty", lambda: False)():  # bars on a terminal only
        from tqdm.auto import tqdm  # noqa: PLC0415

        bar = tqdm(total=run.perms.n_perm, unit="perm", desc=f"voxelkit stats {run.design.kind}", leave=False)
    try:
        return _engine.run(run.prep, run.perms, run.mask3d, run.be, cfg,
                           progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()


def assemble(run: Checked, res: _engine.EngineResult, *, atlas: ImageLike | None = None,
             atlas_lookup: str | Path | Mapping[int, str] | None = None, inputs: Sequence[str] = (),
             extra_settings: Mapping[str, Any] | None = None) -> PermutationResult:
    """Maps over the mask (uncorrected, FDR and FWE -log10 p), null distributions, the cluster table and the
    settings record (:func:`voxelkit.stats.result.settings_record`) from the engine's result."""
    inf, masker, tail, thr_t, perms = run.inf, run.masker, run.tail, run.thr_t, run.perms
    two_sided = inf.two_sided
    N = perms.n_perm
    V = masker.n_voxels
    valid = run.prep.valid
    sign = np.sign(res.t) if two_sided else None

    def full(v: np.ndarray) -> np.ndarray:
        out = np.zeros(V, np.float32)
        out[valid] = v
        return out

    t = res.t
    stat = np.abs(t) if two_sided else t
    p_unc = res.count / N
    exact = {"logp_uncorrected": p_unc, "logp_fdr": fdr_bh(p_unc),
             "logp_fwe_voxel": tail.pfun("h0_max_t")(stat, res.h0_max_t)}
    maps = {"t": full(np.clip(t, -1e30, 1e30)), **{k: full(logp(p, sign)) for k, p in exact.items()}}
    null: dict[str, np.ndarray] = {"h0_max_t": res.h0_max_t}
    clusters: list[dict] = []
    if thr_t is not None:
        t3d = np.zeros(masker.shape)
        t3d[run.mask3d] = t
        atlas_pair = None
        if atlas is not None:
            aimg = load_image(atlas)
            check_same_space(nib.Nifti1Image(np.zeros(masker.shape, np.uint8), masker.affine), aimg,
                             "the statistic maps", image_name(atlas))
            lut = dict(atlas_lookup) if isinstance(atlas_lookup, Mapping) else (
                read_lookup(atlas_lookup) if atlas_lookup is not None else {})
            atlas_pair = (np.rint(np.asarray(aimg.dataobj)).astype(np.int64).reshape(masker.shape), lut)
        lp_e, lp_m, clusters = cluster_table(t3d, run.mask3d, thr_t, two_sided, inf.connectivity,
                                             res.h0_max_extent, res.h0_max_mass, masker.affine, atlas_pair,
                                             tail.pfun("h0_max_cluster_extent"), tail.pfun("h0_max_cluster_mass"))
        maps["logp_fwe_cluster_extent"] = lp_e[masker.mask].astype(np.float32)
        maps["logp_fwe_cluster_mass"] = lp_m[masker.mask].astype(np.float32)
        null["h0_max_cluster_extent"] = res.h0_max_extent
        null["h0_max_cluster_mass"] = res.h0_max_mass
    if inf.tfce:
        maps["tfce"] = full(res.tfce)
        exact["logp_fwe_tfce"] = tail.pfun("h0_max_tfce")(np.abs(res.tfce), res.h0_max_tfce)
        maps["logp_fwe_tfce"] = full(logp(exact["logp_fwe_tfce"], sign))
        null["h0_max_tfce"] = res.h0_max_tfce
    if perms.signs is not None:
        null["sign_flips"] = perms.signs
    else:
        null["permutations"] = perms.orders
    null["cluster_threshold_t"] = np.array(np.nan if thr_t is None else thr_t)
    null["two_sided"] = np.array(two_sided)
    settings = settings_record(inf, design=run.design, perms=perms, prep=run.prep, res=res, backend=run.be.name,
                               n_maps=int(run.prep.E.shape[0]), n_voxels_mask=V, n_voxels_analysed=int(valid.sum()),
                               cluster_threshold_t=thr_t, inputs=inputs, tail_settings=tail.settings(),
                               extra_settings=extra_settings)
    result = PermutationResult(maps, masker, null, clusters, settings, analysed=valid)
    # significance decided once, here, on the float64 p (stats.json "decisions"; the report reads it)
    record_decisions(result, p_values={k: p_over_mask(p, valid) for k, p in exact.items()})
    return result


def _load_maps(images: Sequence[ImageLike], mask: ImageLike | None,
               kwargs: Mapping[str, Any]) -> tuple[np.ndarray, Masker, list[str]]:
    """:func:`load_maps`, with the TFCE kernels loading in the background meanwhile when TFCE is asked for."""
    if kwargs.get("tfce", DEFAULTS.tfce):
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
