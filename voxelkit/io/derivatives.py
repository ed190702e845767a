"""Derivatives: every output name and sidecar schema of voxelkit in one place, and the output folder rules.

Who writes what (all names below come from this module; nothing else spells an output name).  The writers of the
result objects are in :mod:`voxelkit.io.writers` (``ModelFit.save`` and ``PermutationResult.save`` call them):

``voxelkit fit`` / :func:`voxelkit.io.writers.write_fit` (folder OUTDIR, optional ``--prefix P``)::

    P<param>.nii.gz + P<param>.json     one map and sidecar per model parameter (bp_nd, r1, ...), and "status"
    Pfit.json                           the fit sidecar (FIT_SIDECAR_KEYS)
    voxelkit_manifest.json              what the command wrote

``voxelkit stats`` / :func:`voxelkit.io.writers.write_stats`::

    <map>.nii.gz                        STATS_MAP_NAMES (t, logp_uncorrected, logp_fdr, logp_fwe_voxel, ...)
    mask.nii.gz, null_distributions.npz, clusters.tsv (when clusters were formed), stats.json
    voxelkit_manifest.json
    several contrasts (glm): LABEL_<map>.nii.gz (an F map: LABEL_f.nii.gz), LABEL_null_distributions.npz,
    LABEL_clusters.tsv per contrast (c1, c2, ..., f1, ...), one mask.nii.gz and one stats.json

``voxelkit run`` (a BIDS-derivatives dataset, default ``<bids>/derivatives/voxelkit``)::

    dataset_description.json, study.json, provenance.json, report.html, voxelkit_manifest.json
    sub-XX/ses-YY/pet/
      sub-XX_ses-YY[_desc-PHASE]_model-M_meas-LABEL_mimap.nii.gz (+ .json)   LABEL: PARAM_LABELS (BPND, R1, ...)
      sub-XX_ses-YY[_desc-PHASE]_model-M_qc.json                            QC_KEYS
      sub-XX_ses-YY[_desc-PHASE]_model-M_fit.json                           checksum of inputs + settings (cache)
    group/sub-XX_desc-CONTRAST_mimap.nii.gz      CONTRAST: contrast_label(quantity, A, B), e.g.
                                                 BPNDanakinraMinusPlacebo (condition A - B, smoothed)
    group/stats/                                 the stats outputs above
    roi/roi_values.tsv, roi/roi_tests.tsv        regional values and paired tests (written by voxelkit.pipeline)

BIDS entity labels are alphanumeric (``[A-Za-z0-9]+``).  Until 0.1 the ``meas-`` and contrast ``desc-`` labels were
parameter names with underscores (``meas-bp_nd``, ``desc-bp_ndanakinraminusplacebo``); the manifest lists every
output with its name and its old name (:func:`legacy_name`), and :func:`resolve_output` gives the new file to a
reader that asks for an old name (for one release).

Output folders (:class:`OutputFolder`): an output path that is an existing *file* is refused; a folder that is
not writable is refused before any work starts; a **non-empty** folder is refused unless ``overwrite=True``
(``--overwrite``), or unless the command is ``resumable`` and the folder holds this command's own earlier results
(``voxelkit run`` reuses its fits); with ``overwrite=True`` exactly the files that the previous voxelkit command
recorded in the folder's manifest (:data:`MANIFEST_NAME`) are removed, never a file the user passed as an input,
never anything else; a planned output whose path is one of the command's inputs is refused, with or without
``overwrite``.  :class:`FolderLock` keeps two long-running commands (``voxelkit run``) out of the same folder.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import re
import socket
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .images import sidecar_path

log = logging.getLogger("voxelkit")

# ============================================================================================== BIDS labels

#: A BIDS entity label: letters and digits only.
BIDS_LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")
#: Entities (``key-label``) in a file name, for checks.
ENTITY_RE = re.compile(r"(?:^|_)([A-Za-z]+)-([^_.]*)")

#: Parameter (or contrast quantity) name -> BIDS ``meas-`` / ``desc-`` label.
PARAM_LABELS: dict[str, str] = {
    "bp_nd": "BPND", "dvr": "DVR", "r1": "R1", "k2": "k2", "k2a": "k2a", "k2prime": "k2prime",
    "theta3": "theta3", "intercept": "intercept", "wrss": "WRSS", "gamma": "gamma", "t_d": "tD", "t_p": "tP",
    "alpha": "alpha", "release": "release", "f_stat": "Fstat", "status": "status", "activation": "activation",
}
_LABEL_PARAMS = {v: k for k, v in PARAM_LABELS.items()}


def check_label(label: str, what: str = "BIDS label") -> str:
    """``label`` if it is alphanumeric, else an :class:`InputError` naming it."""
    if not BIDS_LABEL_RE.match(str(label)):
        raise InputError(f"{what} {label!r} is not a valid BIDS label (letters and digits only)")
    return str(label)


def bids_label(name: str) -> str:
    """The BIDS label of a parameter or quantity name: :data:`PARAM_LABELS`, else the name in camel case without
    underscores (``t_peak`` -> ``tPeak``)."""
    if name in PARAM_LABELS:
        return PARAM_LABELS[name]
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", str(name)) if p]
    label = "".join([parts[0], *(p[:1].upper() + p[1:] for p in parts[1:])]) if parts else ""
    return check_label(label, f"label of {name!r}")


def param_from_label(label: str) -> str:
    """Inverse of :func:`bids_label` for the known names (an unknown label is returned as is)."""
    return _LABEL_PARAMS.get(label, label)


def entity_labels(filename: str) -> list[tuple[str, str]]:
    """The ``(key, label)`` entities of a BIDS file name (``sub-01_meas-BPND_mimap.nii.gz`` -> sub/01, meas/BPND)."""
    return ENTITY_RE.findall(Path(filename).name)


# ============================================================================================ file endings

#: Ending of every NIfTI image voxelkit writes (gzip-compressed).
NIFTI_EXT = ".nii.gz"
#: Ending of a sidecar (beside its image: :func:`sidecar_of`).
JSON_EXT = ".json"

# ========================================================================== BIDS input names (read, not written)

#: The participants table of a BIDS dataset (covariates, groups).
BIDS_PARTICIPANTS = "participants.tsv"
#: The description of a BIDS (derivatives) dataset; voxelkit run also writes one (:data:`DATASET_DESCRIPTION`).
BIDS_DESCRIPTION = "dataset_description.json"


#: Glob of the PET sidecars of a BIDS dataset (one folder level per entity).
BIDS_PET_SIDECAR_GLOB = "sub-*/ses-*/pet/*_pet.json"
#: Globs (under ``<bids>/derivatives/*/``) of the masks and the atlas ``voxelkit run`` finds by itself.
REFERENCE_MASK_GLOB = "*desc-reference_mask.nii.gz"
BRAIN_MASK_GLOB = "*desc-brain_mask.nii.gz"
ATLAS_GLOB = "*_dseg.nii.gz"
#: Globs of the raw PET images of a BIDS dataset relative to a subject folder (NIfTI, ECAT7); with ``sub-*/``
#: in front, relative to the dataset.
BIDS_PET_GLOBS = ("ses-*/pet/*_pet.nii*", "ses-*/pet/*_pet.v")
#: Ending of a preprocessed PET image of a derivatives dataset (PETPrep): ``*_space-<space>[_res-R]`` + this.
PREPROC_PET_SUFFIX = "_desc-preproc_pet.nii.gz"


def bids_sessions_name(subject: str) -> str:
    """The sessions table of a subject: ``sub-XX_sessions.tsv`` (``subject`` without ``sub-``)."""
    return f"sub-{subject}_sessions.tsv"


def lookup_of(atlas: str | Path) -> Path:
    """The look-up table beside a label image (BIDS ``*_dseg``): ``x_dseg.nii.gz`` -> ``x_dseg.tsv``."""
    atlas = Path(atlas)
    stem = atlas.name[: -len(NIFTI_EXT)] if atlas.name.endswith(NIFTI_EXT) else atlas.stem
    return atlas.with_name(f"{stem}.tsv")


# =================================================================================== voxelkit fit (ModelFit)

#: The map of voxel status codes written beside the parameter maps.
STATUS_MAP = "status"
#: The fit sidecar of ``voxelkit fit`` (after the prefix).
FIT_SIDECAR_NAME = "fit.json"
#: Keys of the fit sidecar (``fit.json`` and every map's ``.json``); ``Info`` only when the model reports any.
FIT_SIDECAR_KEYS = ("Model", "Options", "Parameters", "StatusCodes", "StatusCounts", "QC", "FrameTimesStart",
                    "FrameDuration", "FrameTimesFrom", "InjectionOffset", "FramesUsed", "Units", "Backend",
                    "FitSeconds", "Software")
FIT_SIDECAR_OPTIONAL_KEYS = ("Info",)
#: Extra key of a map's sidecar: the map's name.
MAP_SIDECAR_KEY = "Description"


def fit_map_names(params: Iterable[str]) -> list[str]:
    """The maps of a fit: every parameter, then :data:`STATUS_MAP`."""
    return [*params, STATUS_MAP]


def fit_map_name(name: str, prefix: str = "") -> str:
    return f"{prefix}{name}{NIFTI_EXT}"


def fit_map_sidecar_name(name: str, prefix: str = "") -> str:
    return f"{prefix}{name}{JSON_EXT}"


def fit_sidecar_name(prefix: str = "") -> str:
    return f"{prefix}{FIT_SIDECAR_NAME}"


def fit_outputs(params: Iterable[str], prefix: str = "") -> list[str]:
    """Every file :meth:`ModelFit.save` writes (besides the manifest), in writing order's groups: the maps,
    their sidecars, the fit sidecar."""
    names = fit_map_names(params)
    return ([fit_map_name(k, prefix) for k in names] + [fit_map_sidecar_name(k, prefix) for k in names]
            + [fit_sidecar_name(prefix)])


def model_params(model: str) -> tuple[str, ...]:
    """The parameter names of a model of :data:`voxelkit.models.MODELS` (its class's ``param_names``)."""
    import importlib  # noqa: PLC0415

    from ..models import MODELS  # noqa: PLC0415 - models import io

    mod_name, cls_name = MODELS[model.lower()].split(":")
    return tuple(getattr(importlib.import_module(mod_name), cls_name).param_names)


def model_fit_outputs(model: str, prefix: str = "") -> list[str]:
    """The files ``voxelkit fit --model MODEL --prefix PREFIX`` writes (besides the manifest)."""
    return fit_outputs(model_params(model), prefix)


def map_sidecar(meta: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The sidecar of map ``name``: the fit sidecar plus :data:`MAP_SIDECAR_KEY`."""
    return {**meta, MAP_SIDECAR_KEY: name}


# ================================================================================ voxelkit stats (permutation)

#: Maps a permutation test may write, in order (``<name>.nii.gz``); p maps are -log10(p).
STATS_MAP_NAMES = ("t", "logp_uncorrected", "logp_fdr", "logp_fwe_voxel", "logp_fwe_cluster_extent",
                   "logp_fwe_cluster_mass", "tfce", "logp_fwe_tfce")
STATS_MASK = "mask.nii.gz"
STATS_NULL = "null_distributions.npz"
STATS_CLUSTERS = "clusters.tsv"
STATS_SETTINGS = "stats.json"
#: Files besides the maps that a stats command may write.
STATS_OTHER_OUTPUTS = (STATS_MASK, STATS_NULL, STATS_CLUSTERS, STATS_SETTINGS)
#: Columns of ``clusters.tsv``.
STATS_CLUSTER_COLUMNS = ["cluster_id", "sign", "size_voxels", "size_mm3", "mass", "peak_t", "peak_x", "peak_y",
                         "peak_z", "p_fwe_extent", "p_fwe_mass", "region"]


def stats_map_name(name: str) -> str:
    return f"{name}{NIFTI_EXT}"


def stats_outputs(maps: Iterable[str], has_clusters: bool) -> list[str]:
    """The files :meth:`PermutationResult.save` writes for these maps (besides the manifest)."""
    return ([stats_map_name(m) for m in maps] + [STATS_MASK, STATS_NULL, STATS_SETTINGS]
            + ([STATS_CLUSTERS] if has_clusters else []))


def stats_contrast_map_key(label: str, name: str, kind: str = "t") -> str:
    """The stem of a map of one contrast of a multi-contrast GLM, ``<label>_<name>`` (an F contrast's statistic
    map ``t`` is ``<label>_f``); also its key in the paths that ``save`` returns."""
    return f"{label}_{'f' if (kind == 'F' and name == 't') else name}"


def stats_contrast_map_name(label: str, name: str, kind: str = "t") -> str:
    """A map of one contrast of a multi-contrast GLM: ``<label>_<name>.nii.gz`` (an F contrast's statistic map
    is ``<label>_f.nii.gz``)."""
    return f"{stats_contrast_map_key(label, name, kind)}{NIFTI_EXT}"


def stats_contrast_file(label: str, name: str) -> str:
    """One contrast's copy of a stats output: ``<label>_<name>`` (``c1_null_distributions.npz``)."""
    return f"{label}_{name}"


def stats_contrast_outputs(label: str, maps: Iterable[str], has_clusters: bool, kind: str = "t") -> list[str]:
    """The files one contrast of a multi-contrast GLM writes (the folder also gets one :data:`STATS_MASK` and
    one :data:`STATS_SETTINGS`)."""
    return ([stats_contrast_map_name(label, m, kind) for m in maps] + [stats_contrast_file(label, STATS_NULL)]
            + ([stats_contrast_file(label, STATS_CLUSTERS)] if has_clusters else []))


def stats_contrast_label(index: int, kind: str = "t") -> str:
    """The label (file-name prefix) of contrast ``index`` (0-based) of its kind: t contrasts ``c1, c2, ...``,
    F contrasts ``f1, f2, ...``."""
    return f"{'f' if kind == 'F' else 'c'}{index + 1}"


def stats_output_names(n_t: int = 0, n_f: int = 0) -> list[str]:
    """Every file name a stats command may write into its output folder (for the input check before work); with
    ``n_t`` t and ``n_f`` F contrasts, also every name of a multi-contrast GLM's contrasts."""
    names = [*(stats_map_name(m) for m in STATS_MAP_NAMES), *STATS_OTHER_OUTPUTS, MANIFEST_NAME]
    for kind, n in (("t", n_t), ("F", n_f)):
        for i in range(n):
            names += stats_contrast_outputs(stats_contrast_label(i, kind), STATS_MAP_NAMES, True, kind)
    return names


#: Key of ``stats.json`` holding the significance decisions (:mod:`voxelkit.stats.decisions`; a multi-contrast
#: GLM: one record per contrast label), and the keys of one record.
STATS_DECISIONS_KEY = "decisions"
STATS_DECISIONS_KEYS = ("alpha", "rule", "two_sided", "connectivity", "cluster_forming_p", "cluster_threshold_t",
                        "maps", "clusters", "nulls")


# ===================================================================================== voxelkit run (BIDS)

DATASET_DESCRIPTION = BIDS_DESCRIPTION
STUDY_RECORD = "study.json"
PROVENANCE = "provenance.json"
REPORT = "report.html"
GROUP_DIR = "group"
STATS_DIR = "stats"
ROI_DIR = "roi"
ROI_VALUES = "roi_values.tsv"
ROI_TESTS = "roi_tests.tsv"
#: Suffix of parametric maps (BIDS-PET derivatives: "mimap", molecular imaging map).
MAP_SUFFIX = "mimap"
#: Keys of a per-scan ``*_qc.json`` (voxelkit run).
QC_KEYS = ("subject", "session", "phase", "model", "frames", "used_frames", "reference_tac", "reference_desc",
           "example_voxels", "status_counts", "histograms", "n_voxels", "fit_seconds", "backend")
#: Extra key of the QC record of a release (lp-ntPET) model.
QC_RELEASE_KEYS = ("release_curves",)


def scan_stem(subject: str, session: str, phase: str | None = None) -> str:
    """``sub-XX_ses-YY[_desc-PHASE]`` (labels without their ``sub-``/``ses-`` prefixes)."""
    stem = f"sub-{subject}_ses-{session}"
    return f"{stem}_desc-{phase}" if phase else stem


def scan_dir(out: Path, subject: str, session: str) -> Path:
    return Path(out) / f"sub-{subject}" / f"ses-{session}" / "pet"


def map_name(subject: str, session: str, model: str, param: str, phase: str | None = None) -> str:
    """``sub-XX_ses-YY[_desc-PHASE]_model-M_meas-LABEL_mimap.nii.gz`` (LABEL: :func:`bids_label` of ``param``)."""
    return f"{scan_stem(subject, session, phase)}_model-{model}_meas-{bids_label(param)}_{MAP_SUFFIX}.nii.gz"


def map_path(out: Path, subject: str, session: str, model: str, param: str, phase: str | None = None) -> Path:
    """Per-scan parameter map of ``voxelkit run`` (``param``: a parameter name such as ``bp_nd``)."""
    return scan_dir(out, subject, session) / map_name(subject, session, model, param, phase)


def sidecar_of(path: str | Path) -> Path:
    """``x.nii.gz`` -> ``x.json`` (the sidecar of a map; :func:`voxelkit.io.images.sidecar_path`)."""
    return sidecar_path(path)


def map_sidecar_path(out: Path, subject: str, session: str, model: str, param: str,
                     phase: str | None = None) -> Path:
    return sidecar_of(map_path(out, subject, session, model, param, phase))


#: File-name ending of a per-scan QC record, and the glob (relative to a run's folder) of all of them.
QC_SUFFIX = "_qc.json"
QC_GLOB = f"sub-*/ses-*/pet/*{QC_SUFFIX}"


def qc_path(out: Path, subject: str, session: str, model: str, phase: str | None = None) -> Path:
    return scan_dir(out, subject, session) / f"{scan_stem(subject, session, phase)}_model-{model}{QC_SUFFIX}"


def fit_record_path(out: Path, subject: str, session: str, model: str, phase: str | None = None) -> Path:
    return scan_dir(out, subject, session) / f"{scan_stem(subject, session, phase)}_model-{model}_fit.json"


def scan_outputs(subject: str, session: str, model: str, params: Iterable[str],
                 phase: str | None = None) -> list[str]:
    """Relative paths ``voxelkit run`` writes for one scan (and phase): a map and sidecar per parameter and for
    ``status``, the QC record and the fit record."""
    out = Path(".")
    paths: list[Path] = []
    for p in fit_map_names(params):
        m = map_path(out, subject, session, model, p, phase)
        paths += [m, sidecar_of(m)]
    paths += [qc_path(out, subject, session, model, phase), fit_record_path(out, subject, session, model, phase)]
    return [str(p) for p in paths]


def scan_map_glob(param: str) -> str:
    """Glob (relative to a run's output folder) of every scan's map of ``param``."""
    return f"sub-*/ses-*/pet/*_meas-{bids_label(param)}_{MAP_SUFFIX}.nii*"


def find_scan_maps(out: str | Path, param: str) -> list[Path]:
    """Every scan's map of ``param`` in a run's output folder, sorted; a folder written before the renaming
    (``meas-bp_nd``) is read under its old names."""
    out = Path(out)
    found = sorted(out.glob(scan_map_glob(param)))
    if not found and bids_label(param) != param:
        found = sorted(out.glob(f"sub-*/ses-*/pet/*_meas-{param}_{MAP_SUFFIX}.nii*"))
    return found


def contrast_label(quantity: str, a: str, b: str) -> str:
    """``desc-`` label of the contrast map condition ``a`` - condition ``b`` of ``quantity`` (a parameter name
    or ``activation``): ``contrast_label("bp_nd", "anakinra", "placebo")`` = ``BPNDanakinraMinusPlacebo``."""
    label = f"{bids_label(quantity)}{a}Minus{b[:1].upper()}{b[1:]}"
    return check_label(label, f"contrast label of {quantity!r}, {a!r} - {b!r}")


def contrast_conditions(text: str, conditions: Sequence[str]) -> tuple[str, str]:
    """The conditions ``(A, B)`` of a named contrast ``"A-B"`` (``voxelkit run --contrasts``, study.json
    ``contrasts``; a ``ses-`` prefix is dropped) over ``conditions``; :class:`InputError` unless A and B are two
    different conditions of the list."""
    a, sep, b = str(text).partition("-")
    a, b = a.removeprefix("ses-"), b.removeprefix("ses-")
    if not sep or a not in conditions or b not in conditions or a == b:
        raise InputError(f"contrast {text!r}: expected A-B with two different conditions of "
                         f"{' '.join(conditions)} (e.g. {'-'.join(conditions[:2])})")
    return a, b


def legacy_contrast_label(quantity: str, a: str, b: str) -> str:
    """The contrast label before 0.2: ``bp_ndanakinraminusplacebo``."""
    return f"{quantity}{a}minus{b}"


def _from_legacy_contrast(text: str) -> str | None:
    """``bp_ndanakinraminusplacebo`` -> ``BPNDanakinraMinusPlacebo`` (None when it is not of that form)."""
    if "Minus" in text:
        return None
    for q in sorted(PARAM_LABELS, key=len, reverse=True):
        if text.startswith(q) and "minus" in text[len(q):]:
            a, b = text[len(q):].split("minus", 1)
            if a and b and BIDS_LABEL_RE.match(a) and BIDS_LABEL_RE.match(b):
                return contrast_label(q, a, b)
    return None


def contrast_path(out: Path, subject: str, contrast: str) -> Path:
    """Per-subject contrast map; ``contrast`` is a :func:`contrast_label` (an old-style label such as
    ``bp_ndanakinraminusplacebo`` is converted to it)."""
    label = _from_legacy_contrast(contrast) or check_label(contrast, "contrast label")
    return Path(out) / GROUP_DIR / f"sub-{subject}_desc-{label}_{MAP_SUFFIX}.nii.gz"


def stats_dir(out: Path) -> Path:
    return Path(out) / GROUP_DIR / STATS_DIR


def roi_dir(out: Path) -> Path:
    return Path(out) / ROI_DIR


def roi_values_path(out: Path) -> Path:
    return roi_dir(out) / ROI_VALUES


def roi_tests_path(out: Path) -> Path:
    return roi_dir(out) / ROI_TESTS


def report_path(out: Path) -> Path:
    return Path(out) / REPORT


def contrast_stats_dir(out: Path, label: str) -> Path:
    """The statistics of one named contrast (``voxelkit run --contrasts``): ``group/stats-<label>/``, ``label``
    a :func:`contrast_label` (e.g. ``BPNDanakinraMinusPlacebo``)."""
    return Path(out) / GROUP_DIR / f"{STATS_DIR}-{check_label(label, 'contrast label')}"


def contrast_roi_values_path(out: Path, label: str) -> Path:
    """``roi/desc-<label>_roi_values.tsv``: the regional values of one named contrast's two conditions."""
    return roi_dir(out) / f"desc-{check_label(label, 'contrast label')}_{ROI_VALUES}"


def contrast_roi_tests_path(out: Path, label: str) -> Path:
    """``roi/desc-<label>_roi_tests.tsv``: the paired regional tests of one named contrast."""
    return roi_dir(out) / f"desc-{check_label(label, 'contrast label')}_{ROI_TESTS}"


#: Keys of ``provenance.json`` (written last by ``voxelkit run``; read by the report under these names).
PROVENANCE_KEYS = ("voxelkit", "command", "settings", "seed", "backend", "versions", "inputs", "subjects",
                   "dropped_subjects", "scans", "spatial_conform", "failed_scans", "k2prime_per_scan", "model_choice",
                   "activation_check", "covariate_coding", "inference", "fits", "seconds")


# ==================================================================================== old names (one release)

_MEAS_RE = re.compile(r"_meas-([A-Za-z0-9]+)_")
_DESC_CONTRAST_RE = re.compile(r"^(sub-[A-Za-z0-9]+_desc-)([A-Za-z0-9]+)(_mimap\..*)$")


def _legacy_contrast_of(label: str) -> str | None:
    for q in sorted(PARAM_LABELS, key=lambda k: len(PARAM_LABELS[k]), reverse=True):
        ql = PARAM_LABELS[q]
        if label.startswith(ql) and "Minus" in label[len(ql):]:
            a, b = label[len(ql):].split("Minus", 1)
            if a and b:
                return legacy_contrast_label(q, a, b[:1].lower() + b[1:])
    return None


def legacy_name(relative: str | Path) -> str:
    """The name an output had before the BIDS labels became alphanumeric (the same name when it did not
    change): ``..._meas-BPND_mimap.nii.gz`` -> ``..._meas-bp_nd_mimap.nii.gz``,
    ``group/sub-01_desc-BPNDanakinraMinusPlacebo_mimap.nii.gz`` -> ``group/sub-01_desc-bp_ndanakinraminusplacebo_...``.
    """
    rel = Path(relative)
    name = _MEAS_RE.sub(lambda m: f"_meas-{param_from_label(m.group(1))}_", rel.name)
    m = _DESC_CONTRAST_RE.match(name)
    if m and rel.parent.name == GROUP_DIR:
        old = _legacy_contrast_of(m.group(2))
        if old is not None:
            name = f"{m.group(1)}{old}{m.group(3)}"
    return str(rel.with_name(name))


def manifest_outputs(written: Iterable[str]) -> list[dict[str, str]]:
    """The manifest's ``outputs``: each written file's ``name`` and ``old_name`` (equal when unchanged)."""
    return [{"name": w, "old_name": legacy_name(w)} for w in written]


def resolve_output(folder: str | Path, name: str | Path) -> Path:
    """The file of output ``name`` (relative to ``folder``): ``folder/name`` when it exists; else, through the
    folder's manifest, the file whose old name is ``name`` (a reader asking for ``meas-bp_nd`` gets the
    ``meas-BPND`` file); else the file under its old name (a folder written before the renaming); else an
    :class:`InputError` naming the folder."""
    folder = Path(folder)
    rel = str(name)
    if (folder / rel).exists():
        return folder / rel
    doc = read_manifest(folder)
    if doc is not None:
        entries = doc.get("outputs") or manifest_outputs(doc.get("written", []))
        for key in (str, str.casefold):
            for e in entries:
                if not isinstance(e, dict) or "name" not in e:
                    continue
                if key(str(e.get("old_name", ""))) == key(rel) and (folder / e["name"]).exists():
                    if e["name"] != rel:
                        log.info("%s: %s is now %s (the old name works for one release)", folder, rel, e["name"])
                    return folder / e["name"]
    old = legacy_name(rel)
    if old != rel and (folder / old).exists():
        return folder / old
    raise InputError(f"{folder}: no output {rel} (not in the folder, nor as an old name in its manifest)")


# ============================================================================================ sidecars (JSON)

def write_json(obj: dict, path: str | Path, *, atomic: bool = False) -> Path:
    """Write ``obj`` as indented JSON (NumPy scalars and arrays, paths converted); ``atomic``: through
    :func:`write_text_atomic` (readers never see half a file)."""
    text = json.dumps(obj, indent=2, default=_json_default) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if atomic:
        return write_text_atomic(path, text)
    path.write_text(text)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``: a reader (or an interrupted
    run) sees the old file or the new one, never half of one.  The temporary file is removed on failure; the
    folder must exist."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ========================================================================================= output folders

#: File in an output folder that lists what the last voxelkit command wrote there.
MANIFEST_NAME = "voxelkit_manifest.json"
#: Lock file of a folder in use by a running command.
LOCK_NAME = ".voxelkit.lock"
#: Keys of the manifest (``complete``, ``model``, ``prefix``: only from some commands).
MANIFEST_KEYS = ("command", "voxelkit", "time", "inputs", "written", "outputs")


def _resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def _file_id(path: str | Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file (what ``os.path.samefile`` compares), else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class _InputSet:
    """The inputs of a command, each resolved and stat-ed once: :meth:`find` says whether a path is one of them
    (the same resolved path, or another name of the same file: a link)."""

    def __init__(self, inputs: Iterable[str | Path | None]):
        self.items: list[tuple[str | Path, Path, tuple[int, int] | None]] = []
        for inp in inputs:
            if inp is None:
                continue
            try:
                self.items.append((inp, Path(inp).resolve(), _file_id(inp)))
            except OSError:
                continue

    def find(self, path: str | Path) -> str | Path | None:
        """The input ``path`` would overwrite, or None."""
        try:
            pr = Path(path).resolve()
        except OSError:
            return None
        for inp, ir, _ in self.items:
            if pr == ir:
                return inp
        ident = _file_id(path)
        if ident is not None:
            for inp, _, iid in self.items:
                if iid == ident:
                    return inp
        return None


def check_not_input(path: str | Path | Iterable[str | Path], inputs: Iterable[str | Path | None] | _InputSet,
                    what: str = "output") -> None:
    """Raise :class:`InputError` if ``path`` (one path, or several) is (or links to) one of ``inputs``.  Each
    input is resolved once, however many paths are checked."""
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(q) for q in path]
    ins = inputs if isinstance(inputs, _InputSet) else _InputSet(inputs)
    for p in paths:
        inp = ins.find(p)
        if inp is not None:
            raise InputError(f"{p}: the {what} would overwrite the input {inp}; choose another output name")


def check_writable_dir(path: str | Path) -> None:
    """Raise :class:`InputError` if files cannot be created in ``path`` (or, if it does not exist yet, in its
    nearest existing parent).  A real write test: permission bits do not stop root.  Creates nothing."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"{path}: cannot create the output folder: {probe} is a file")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".voxelkit-write-test-"):
            pass
    except OSError as exc:
        raise InputError(f"{path}: output folder is not writable ({exc.strerror or exc})") from None


def _not_empty(path: Path, entries: list[Path]) -> InputError:
    return InputError(f"{path}: output folder is not empty ({len(entries)} entries); use --overwrite to replace what "
                      "an earlier voxelkit command wrote there, or choose an empty folder")


def _entries(path: Path) -> list[Path]:
    """What a folder holds besides the manifest and the lock."""
    return [e for e in path.iterdir() if e.name not in (MANIFEST_NAME, LOCK_NAME)]


def check_output_folder(path: str | Path, overwrite: bool, planned: Iterable[str | Path] = (),
                        inputs: Iterable[str | Path | None] = ()) -> None:
    """The checks of :class:`OutputFolder`, made before a long command starts and without creating or removing
    anything: an output path that is an existing file, a folder that cannot be written, a non-empty folder without
    ``overwrite``, a ``planned`` output that is one of ``inputs``."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: output path is an existing file, not a folder")
    check_writable_dir(out)
    if out.is_dir() and not overwrite and (entries := _entries(out)):
        raise _not_empty(out, entries)
    for q in planned:
        check_not_input(q, inputs)


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of ``folder`` (None when there is none or it is unreadable)."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


class OutputFolder:
    """A folder a command writes into, checked before any work (see the module docstring for the rules).

    Parameters
    ----------
    path : the output folder (created if missing).
    command : the command name recorded in the manifest (``"fit"``, ``"stats paired"``, ``"run"``).
    overwrite : replace what the previous voxelkit command recorded writing here.
    inputs : paths the command reads; never removed, never written.
    resumable : the command may reuse its own earlier results in a non-empty folder (``voxelkit run``).
    """

    def __init__(self, path: str | Path, command: str, *, overwrite: bool = False,
                 inputs: Iterable[str | Path | None] = (), resumable: bool = False) -> None:
        self.path = Path(path)
        self.command = command
        self.overwrite = overwrite
        self.inputs = [Path(p) for p in inputs if p is not None]
        self._inputs = _InputSet(self.inputs)   # resolved and stat-ed once, for every check below
        self.resumable = resumable
        self.written: list[str] = []
        self.previous = None
        self._prepare()

    # --- checks -------------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        p = self.path
        if p.exists() and not p.is_dir():
            raise InputError(f"{p}: output path is an existing file, not a folder")
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{p}: cannot create the output folder ({exc.strerror or exc})") from None
        try:
            with tempfile.NamedTemporaryFile(dir=p, prefix=".voxelkit-write-test-"):
                pass
        except OSError as exc:
            raise InputError(f"{p}: output folder is not writable ({exc.strerror or exc})") from None
        self.previous = read_manifest(p)
        entries = _entries(p)
        if not entries:
            return
        if self.resumable and self.previous is not None and self.previous.get("command") == self.command:
            return
        if not self.overwrite:
            raise _not_empty(p, entries)
        self.remove_previous()

    def remove_previous(self) -> list[Path]:
        """Remove the files the previous manifest lists (inside this folder and not an input); returns them."""
        removed: list[Path] = []
        if self.previous is None:
            return removed
        root = _resolved(self.path)
        for rel in self.previous.get("written", []):
            f = (root / rel).resolve()
            if root not in f.parents or not f.is_file():
                continue
            if self.is_input(f):
                log.warning("%s: kept (it is an input of this command)", f)
                continue
            f.unlink()
            removed.append(f)
        with contextlib.suppress(FileNotFoundError):
            (self.path / MANIFEST_NAME).unlink()
        for d in sorted({f.parent for f in removed}, key=lambda q: len(q.parts), reverse=True):
            while d != root and root in d.parents:
                try:
                    d.rmdir()
                except OSError:
                    break
                d = d.parent
        if removed:
            log.info("removed %d files of the previous %s in %s", len(removed),
                     self.previous.get("command", "voxelkit command"), self.path)
        self.previous = None
        return removed

    def is_input(self, path: str | Path) -> bool:
        """Whether ``path`` is one of the command's inputs (or another name of one)."""
        return self._inputs.find(path) is not None

    def check_planned(self, paths: Iterable[str | Path]) -> None:
        """Refuse planned outputs that are inputs, before any work."""
        check_not_input(paths, self._inputs)

    # --- recording ----------------------------------------------------------------------------------------
    def file(self, relative: str | Path) -> Path:
        """Path of an output inside the folder, recorded in the manifest (refused if it is an input)."""
        q = self.path / relative
        check_not_input(q, self._inputs)
        self.record(q)
        return q

    def record(self, path: str | Path) -> None:
        """Record an output the command wrote (or will write) inside the folder."""
        q = Path(path)
        try:
            rel = str(_resolved(q).relative_to(_resolved(self.path)))
        except ValueError:
            raise InputError(f"{q}: outside the output folder {self.path}") from None
        if rel not in self.written:
            self.written.append(rel)

    def write_manifest(self, **extra: Any) -> Path:
        """Write the manifest (the previous one's entries are kept for a resumable command): ``written`` (the
        relative paths) and ``outputs`` (each one's ``name`` and ``old_name``, see :func:`legacy_name`)."""
        from .. import __version__  # noqa: PLC0415

        written = list(self.written)
        if self.previous is not None and self.resumable:
            written = [*[w for w in self.previous.get("written", []) if w not in written], *written]
            written = [w for w in written if (self.path / w).exists()]
        doc = {"command": self.command, "voxelkit": __version__,
               "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
               "inputs": [str(p) for p in self.inputs], "written": written,
               "outputs": manifest_outputs(written), **extra}
        return write_text_atomic(self.path / MANIFEST_NAME, json.dumps(doc, indent=2, default=str) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """An exclusive lock on an output folder (a lock file created atomically), as a context manager.

    A second holder gets one line naming the holder (pid, host, start time).  A lock left by a dead process on
    this host is taken over with a warning.
    """

    def __init__(self, folder: str | Path, command: str = "voxelkit run") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command
        self._held = False

    def acquire(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
              "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) \
                        and not _pid_alive(holder["pid"]):
                    log.warning("%s: taking over a lock left by %s (pid %s, no longer running)", self.folder,
                                holder.get("command", "voxelkit"), holder["pid"])
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    continue
                raise InputError(f"{self.folder}: in use by {holder.get('command', 'another voxelkit command')} "
                                 f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
                                 f"{holder.get('started', '?')}); wait for it, or remove {self.path} if that "
                                 "process is gone") from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self._held = True
            return self
        raise InputError(f"{self.path}: cannot take the lock")

    def _holder(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text())
            return doc if isinstance(doc, dict) else {}
        except (OSError, json.JSONDecodeError):
            return {}

    def release(self) -> None:
        if self._held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self._held = False

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

