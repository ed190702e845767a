"""voxelkit's I/O layer: images, tables and derivatives (output names, sidecars, the manifest).

- :mod:`voxelkit.io.images`: :func:`check_img` (a path, a nibabel image or an ``(array, affine)`` pair),
  :func:`load_pet`, :func:`load_mask`, :class:`Masker` (images <-> voxel vectors), ECAT7 through
  :mod:`voxelkit.ecat`, masks on other grids through :mod:`voxelkit.conform`;
- :mod:`voxelkit.io.tables`: :func:`read_table`, the one TSV reader (strict about duplicates and types),
  :func:`read_tac_table`, :func:`read_lookup`, :func:`write_tsv`;
- :mod:`voxelkit.io.derivatives`: every output name and sidecar schema, :func:`write_json`, and the output folder
  rules (:class:`OutputFolder`, :class:`FolderLock`, the manifest :data:`MANIFEST_NAME`);
- :mod:`voxelkit.io.writers`: the writers of the result objects, :func:`write_fit` (a ``ModelFit``: maps,
  sidecars, ``fit.json``, manifest), :func:`write_fit_maps`, :func:`write_stats` (a permutation result),
  :func:`write_null`; ``ModelFit.save`` and ``PermutationResult.save`` call them.

Every name ``voxelkit.io`` had as a module is importable from here.
"""

from __future__ import annotations

import logging

import nibabel as nib  # noqa: F401 - kept as voxelkit.io.nib (tests patch voxelkit.io.nib.load)
import numpy as np  # noqa: F401

from ..errors import InputError
from ..frames import FrameTiming
from .derivatives import (
    LOCK_NAME,
    MANIFEST_NAME,
    FolderLock,
    OutputFolder,
    check_not_input,
    read_manifest,
    resolve_output,
    write_json,
)
from .images import (
    DEFAULT_MASK_THRESHOLD,
    MIN_REFERENCE_VOXELS,
    DynamicPET,
    ImageLike,
    Masker,
    check_img,
    check_input_file,
    check_same_space,
    image_data,
    image_name,
    load_image,
    load_mask,
    load_pet,
    mask_from_values,
    sidecar_path,
    write_image,
)
from .tables import Table, TACTable, read_lookup, read_rows, read_table, read_tac_table, read_tsv, write_tsv
from .writers import write_fit, write_fit_maps, write_null, write_stats

log = logging.getLogger("voxelkit")

__all__ = [
    "DEFAULT_MASK_THRESHOLD", "LOCK_NAME", "MANIFEST_NAME", "MIN_REFERENCE_VOXELS", "DynamicPET", "FolderLock",
    "FrameTiming", "ImageLike", "InputError", "Masker", "OutputFolder", "TACTable", "Table", "check_img",
    "check_input_file", "check_not_input", "check_same_space", "image_data", "image_name", "load_image",
    "load_mask", "load_pet", "mask_from_values", "read_lookup", "read_manifest", "read_rows", "read_table",
    "read_tac_table", "read_tsv", "resolve_output", "sidecar_path", "write_fit", "write_fit_maps", "write_image",
    "write_json", "write_null", "write_stats", "write_tsv",
]
