"""The writers of the result objects: :func:`write_fit` (a :class:`~voxelkit.models.base.ModelFit`: the files of
``voxelkit fit``) and :func:`write_stats` (a :class:`~voxelkit.stats.PermutationResult` or
:class:`~voxelkit.stats.result.MultiContrastResult`: the files of ``voxelkit stats``).

The result objects hold arrays and metadata only; their ``save`` methods are one-line conveniences that call these
functions (as nibabel's ``img.to_filename`` calls ``nib.save``).  Every file name comes from
:mod:`voxelkit.io.derivatives`, every file goes through an :class:`~voxelkit.io.derivatives.OutputFolder` (checked
before anything is written, recorded in the folder's manifest).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .derivatives import (
    STATS_CLUSTER_COLUMNS,
    STATS_CLUSTERS,
    STATS_MASK,
    STATS_NULL,
    STATS_SETTINGS,
    OutputFolder,
    fit_map_name,
    fit_map_names,
    fit_sidecar_name,
    map_sidecar,
    sidecar_of,
    stats_contrast_file,
    stats_contrast_map_key,
    stats_contrast_map_name,
    stats_map_name,
    stats_outputs,
    write_json,
)
from .images import write_image
from .tables import write_tsv

#: The command recorded in the manifest of a fit's folder.
FIT_COMMAND = "fit"
#: The command recorded in the manifest of a multi-contrast GLM's folder (one contrast: ``stats <test>``).
STATS_MULTI_COMMAND = "stats glm"


# ============================================================================================ voxelkit fit

def write_fit_maps(fit: Any, paths: Mapping[str, str | Path], *, folder: OutputFolder | None = None,
                   extra: Mapping[str, Any] | None = None, meta: Mapping[str, Any] | None = None) -> list[Path]:
    """Write maps of ``fit`` (a :class:`~voxelkit.models.base.ModelFit` from images: ``fit.map(name)``) to
    ``paths`` (map name -> image path; a parameter or ``"status"``), each with its sidecar beside it
    (:func:`~voxelkit.io.derivatives.sidecar_of`): ``meta`` (default ``fit.sidecar()``) plus ``Description`` and
    ``extra``.  With ``folder``, ``paths`` are relative to it and each file is recorded in (and checked against the
    inputs of) that folder just before it is written.  Returns the written paths, each map followed by its
    sidecar."""
    meta = fit.sidecar() if meta is None else meta
    written: list[Path] = []
    for name, path in paths.items():
        img_path, side_path = Path(path), sidecar_of(path)
        img = fit.map(name)
        written.append(write_image(img, img_path if folder is None else folder.file(img_path)))
        side = {**map_sidecar(meta, name), **(extra or {})}
        written.append(write_json(side, side_path if folder is None else folder.file(side_path)))
    return written


def write_fit(fit: Any, outdir: str | Path, prefix: str = "", overwrite: bool = False,
              inputs: Iterable[str | Path | None] = ()) -> list[Path]:
    """Write ``fit`` (a :class:`~voxelkit.models.base.ModelFit` from images) as ``voxelkit fit`` does:
    ``<prefix><param>.nii.gz`` and ``<prefix>status.nii.gz`` with JSON sidecars, ``<prefix>fit.json`` (the fit
    sidecar, :data:`~voxelkit.io.derivatives.FIT_SIDECAR_KEYS`) and the folder's manifest
    (``voxelkit_manifest.json``, with the model and the prefix).

    A non-empty ``outdir`` is refused unless ``overwrite``; with it, exactly the files an earlier voxelkit command
    recorded in the manifest are removed first (so no stale map of another model stays), never one of ``inputs``
    (the files the fit read), and an output whose path is an input is refused before anything is written.  A write
    that fails raises :class:`InputError` naming ``outdir``; what was written until then is in the manifest.
    Returns the written paths (maps and sidecars, then the fit sidecar)."""
    if fit.masker is None:  # refused before the folder is touched
        raise ValueError("this fit has no masker (it was not fitted from images)")
    folder = OutputFolder(outdir, FIT_COMMAND, overwrite=overwrite, inputs=inputs)
    folder.check_planned(folder.path / name for name in fit.planned_outputs(prefix))
    meta = fit.sidecar()
    written: list[Path] = []
    try:
        maps = {name: fit_map_name(name, prefix) for name in fit_map_names(fit.params)}
        written += write_fit_maps(fit, maps, folder=folder, meta=meta)
        written.append(write_json(meta, folder.file(fit_sidecar_name(prefix))))
    except OSError as exc:
        raise InputError(f"{outdir}: cannot write the outputs ({exc.strerror or exc})") from None
    finally:
        if folder.written:
            folder.write_manifest(model=fit.model, prefix=prefix)
    return written


# ========================================================================================== voxelkit stats

def write_null(path: str | Path, **arrays: np.ndarray | None) -> Path:
    """Write null distributions (and what is needed to re-threshold) as a compressed ``.npz`` (None: left out)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def write_analysed_mask(result: Any, path: str | Path) -> Path:
    """The analysed voxels of a permutation result (1 inside, 0 elsewhere) as a uint8 image."""
    img = result.masker.to_image(result.analysed.astype(np.uint8), fill=0, dtype=np.uint8)
    return write_image(img, path)


def _stats_folder(result: Any, outdir: str | Path | OutputFolder, command: str, overwrite: bool,
                  inputs: Sequence[str | Path]) -> OutputFolder:
    if isinstance(outdir, OutputFolder):
        return outdir
    return OutputFolder(outdir, command, overwrite=overwrite, inputs=[*result.input_files, *inputs])


def _has_clusters(result: Any) -> bool:
    return result.settings.get("cluster_threshold_t") is not None


def write_stats(result: Any, outdir: str | Path | OutputFolder, *, overwrite: bool = False,
                inputs: Sequence[str | Path] = ()) -> dict[str, Path]:
    """Write a permutation result as ``voxelkit stats`` does and return name -> path.

    One contrast (:class:`~voxelkit.stats.PermutationResult`): ``<map>.nii.gz`` for every map, ``mask.nii.gz``
    (the analysed voxels), ``null_distributions.npz``, ``clusters.tsv`` (when clusters were formed), ``stats.json``
    (all settings).  Several (:class:`~voxelkit.stats.result.MultiContrastResult`): every contrast's files with
    its label as prefix (``c1_t.nii.gz``, ``f1_f.nii.gz``, ``c1_null_distributions.npz``), one ``mask.nii.gz``
    and one ``stats.json`` (with ``outputs``: label -> file names).  Then the folder manifest.

    A non-empty ``outdir`` is refused unless ``overwrite=True``; then exactly the files the previous voxelkit
    command recorded in the folder's manifest are removed first (never an input).  An output whose path is one of
    ``inputs`` or of the images the result was computed from is refused before anything is written.  ``outdir``
    may also be an :class:`OutputFolder` already checked by the caller."""
    if hasattr(result, "specs"):
        return _write_multi(result, outdir, overwrite, inputs)
    folder = _stats_folder(result, outdir, f"stats {result.settings.get('test', '')}".strip(), overwrite, inputs)
    has_clusters = _has_clusters(result)
    folder.check_planned([folder.path / q for q in stats_outputs(result.maps, has_clusters)])
    paths: dict[str, Path] = {}
    for name in result.maps:
        paths[name] = write_image(result.image(name), folder.file(stats_map_name(name)))
    paths["mask"] = write_analysed_mask(result, folder.file(STATS_MASK))
    paths["null"] = write_null(folder.file(STATS_NULL), **result.null)
    if has_clusters:
        paths["clusters"] = folder.file(STATS_CLUSTERS)
        write_tsv(result.clusters, paths["clusters"], columns=STATS_CLUSTER_COLUMNS)
    paths["json"] = write_json(result.settings, folder.file(STATS_SETTINGS))
    folder.write_manifest()
    return paths


def _write_multi(result: Any, outdir: str | Path | OutputFolder, overwrite: bool,
                 inputs: Sequence[str | Path]) -> dict[str, Path]:
    folder = _stats_folder(result, outdir, STATS_MULTI_COMMAND, overwrite, inputs)
    names = result.output_names()
    folder.check_planned([folder.path / f for fl in names.values() for f in fl]
                         + [folder.path / STATS_MASK, folder.path / STATS_SETTINGS])
    paths: dict[str, Path] = {}
    paths["mask"] = write_analysed_mask(result.results[result.specs[0].label], folder.file(STATS_MASK))
    for sp in result.specs:
        r = result.results[sp.label]
        for m in r.maps:
            key = stats_contrast_map_key(sp.label, m, sp.kind)
            paths[key] = write_image(r.image(m), folder.file(stats_contrast_map_name(sp.label, m, sp.kind)))
        paths[stats_contrast_file(sp.label, "null")] = write_null(
            folder.file(stats_contrast_file(sp.label, STATS_NULL)), **r.null)
        if _has_clusters(r):
            p = folder.file(stats_contrast_file(sp.label, STATS_CLUSTERS))
            write_tsv(r.clusters, p, columns=STATS_CLUSTER_COLUMNS)
            paths[stats_contrast_file(sp.label, "clusters")] = p
    settings = dict(result.settings)
    settings["outputs"] = names
    paths["json"] = write_json(settings, folder.file(STATS_SETTINGS))
    folder.write_manifest()
    return paths
