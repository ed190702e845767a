"""Voxelwise fits of images larger than memory: an uncompressed 4-D NIfTI (memory-mapped: nibabel's
``dataobj`` reads only the slab asked for) or a Zarr array, fitted in z-slabs with bounded memory, on threads or
on a Dask cluster.

:func:`fit_chunked` reads the reference-region TAC and the brain mask first (slab by slab), then fits every
slab's masked voxels and writes the parameters into per-voxel result arrays (4 bytes per voxel and parameter).
Peak memory: the masks (1 byte per voxel each), the result arrays, and one slab at a time per worker
(``slab voxels x frames x 4 bytes`` read, plus the model's working copies of its ``chunk_voxels`` TACs).  The
results equal :func:`voxelkit.fit` on the whole image for models that fit each voxel on its own (Logan, MRTM,
SRTM, the ratio; MRTM2/SRTM2 with a given k2'); a model that estimates something from all voxels together
(k2' ``"median"``, a k2' region mask, lp-ntPET's calibration) is refused.

Zarr input: a 4-D array (x, y, z, frame) in a ``.zarr`` store; the frame timing from ``frames`` or the array's
attributes ``FrameTimesStart`` / ``FrameDuration`` (seconds), the voxel-to-mm affine from its ``affine``
attribute (4 x 4; default identity).  Needs the optional ``zarr`` package (``pip install "voxelkit[dask]"``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .frames import FrameTiming
from .io import MIN_REFERENCE_VOXELS, InputError, Masker, load_mask

log = logging.getLogger("voxelkit")

#: Voxels per slab read at a time (default): 1 M voxels x 40 frames x 4 bytes = 160 MB per slab.
DEFAULT_SLAB_VOXELS = 1 << 20
#: ``voxelkit fit`` fits an uncompressed NIfTI of more bytes than this in slabs by itself (1 GiB).
AUTO_CHUNK_BYTES = 1 << 30
#: Models whose voxels are fitted independently (any k2' given as a number for the two-step models).
INDEPENDENT_MODELS = ("logan", "mrtm", "srtm", "ratio")


@dataclass(frozen=True)
class Source:
    """Where the 4-D data are: a NIfTI path (memory-mapped) or a Zarr store, opened again on each worker."""

    path: str
    kind: str  #: "nifti" or "zarr"

    def open(self) -> Any:
        if self.kind == "zarr":
            try:
                import zarr  # noqa: PLC0415
            except ImportError:
                raise InputError(f"{self.path}: reading Zarr needs the zarr package (pip install "
                                 "\"voxelkit[dask]\")") from None
            try:
                return zarr.open_array(self.path, mode="r")
            except Exception as exc:  # zarr raises several types for a store that is not an array
                raise InputError(f"{self.path}: cannot open the Zarr array ({exc})") from None
        return nib.load(self.path, mmap=True).dataobj

    def slab(self, arr: Any, z0: int, z1: int) -> np.ndarray:
        """Frames of the voxels with z in [z0, z1), float32 (x, y, z1 - z0, frames)."""
        try:
            return np.asarray(arr[:, :, z0:z1, :], dtype=np.float32)
        except (EOFError, OSError, ValueError) as exc:
            raise InputError(f"{self.path}: cannot read slab z {z0}-{z1} (truncated or corrupt? {exc})") from None


def open_source(pet: str | Path, frames: FrameTiming | None = None) -> tuple[Source, Any, FrameTiming]:
    """The source of ``pet`` (a 4-D ``.nii`` / ``.nii.gz`` or a ``.zarr`` store), a header-only image of its grid
    (shape and affine, for the masks) and the frame timing (``frames``, else the BIDS sidecar / the Zarr
    attributes; seconds).  Raises :class:`InputError` naming the file."""
    path = Path(pet)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir() or path.suffix == ".zarr":
        src = Source(str(path), "zarr")
        arr = src.open()
        if arr.ndim != 4:
            raise InputError(f"{path}: expected a 4-D array (x, y, z, frame), got shape {tuple(arr.shape)}")
        attrs = dict(arr.attrs)
        affine = np.asarray(attrs.get("affine", np.eye(4)), dtype=float)
        if affine.shape != (4, 4):
            raise InputError(f"{path}: attribute 'affine' must be 4 x 4, got shape {affine.shape}")
        if frames is None:
            if "FrameTimesStart" not in attrs or "FrameDuration" not in attrs:
                raise InputError(f"{path}: no frame timing: give --frames-json (or attributes FrameTimesStart and "
                                 "FrameDuration in seconds)")
            frames = FrameTiming.from_bids_dict(attrs, source=str(path))
        shape = tuple(int(s) for s in arr.shape)
        grid = nib.Nifti1Image(np.broadcast_to(np.uint8(0), shape[:3]), affine)
    else:
        from .io import load_pet  # noqa: PLC0415

        dpet = load_pet(str(path), frames=frames)
        src = Source(str(path), "nifti")
        frames = dpet.frames
        shape = tuple(int(s) for s in dpet.image.shape)
        if len(shape) != 4:
            raise InputError(f"{path}: expected a 4-D dynamic image, got shape {shape}")
        grid = nib.Nifti1Image(np.broadcast_to(np.uint8(0), shape[:3]), dpet.affine)
    frames.check_count(shape[3], str(path))
    return src, grid, frames


def slabs(shape: tuple[int, ...], slab_voxels: int) -> list[tuple[int, int]]:
    """``(z0, z1)`` ranges of about ``slab_voxels`` voxels each (at least one z-plane)."""
    plane = max(1, int(shape[0]) * int(shape[1]))
    dz = max(1, int(slab_voxels) // plane)
    return [(z, min(int(shape[2]), z + dz)) for z in range(0, int(shape[2]), dz)]


#: Two-step models that are voxel-independent once k2' is a given number (1/min).
FIXED_K2PRIME_MODELS = ("mrtm2", "srtm2")


def is_independent(model: str, k2prime: Any = None) -> bool:
    """Whether ``model``'s voxels are fitted independently of each other (so slabs give the whole-image
    result): the models of :data:`INDEPENDENT_MODELS`, and those of :data:`FIXED_K2PRIME_MODELS` with k2' given
    as a number (1/min)."""
    name = str(model).lower()
    return name in INDEPENDENT_MODELS or (name in FIXED_K2PRIME_MODELS and isinstance(k2prime, int | float)
                                          and not isinstance(k2prime, bool))


def check_independent(model: str, mdl: Any) -> None:
    """Refuse a model whose voxels are not fitted independently (the slabs would change its result)."""
    name = model.lower()
    if is_independent(name, getattr(mdl, "k2prime", None)) and getattr(mdl, "k2prime_tac", None) is None:
        return
    raise InputError(f"--chunked: model {model!r} " + (
        "estimates k2' from all voxels together (k2prime median / a k2' mask): give k2' in 1/min (--k2prime)"
        if name in FIXED_K2PRIME_MODELS else "calibrates its test on all voxels together") +
        f"; chunked fits support {', '.join(INDEPENDENT_MODELS)} and mrtm2/srtm2 with a given k2'")


def _reference_and_mask(src: Source, grid: Any, shape: tuple[int, ...], ranges: list[tuple[int, int]],
                        reference: Any, mask: Any, threshold: float | None) -> tuple[np.ndarray, str, np.ndarray,
                                                                                    dict[str, Any]]:
    """Pass 1 over the slabs: the reference TAC (mean over the finite rows of the region, the voxels in C order
    as :func:`voxelkit.api.region_mean_tac` takes them) and the brain mask (given, or: finite in every frame
    and non-zero in some)."""
    info: dict[str, Any] = {}
    given_tac = not (isinstance(reference, str | Path) or hasattr(reference, "affine"))
    ref_mask = None
    if not given_tac:
        ref_info: dict[str, Any] = {}
        ref_mask = load_mask(reference, grid, src.path, what="reference region mask", threshold=threshold,
                             info=ref_info)
        info["reference_mask"] = ref_info
    if mask is not None:
        bm: dict[str, Any] = {}
        brain = load_mask(mask, grid, src.path, what="brain mask", threshold=threshold, info=bm)
        info["brain_mask"] = bm
    else:
        brain = np.zeros(shape[:3], dtype=bool)
    need_data = ref_mask is not None or mask is None
    keys, rows = [], []
    if need_data:
        arr = src.open()
        for z0, z1 in ranges:
            rsl = ref_mask[:, :, z0:z1] if ref_mask is not None else None
            if mask is not None and (rsl is None or not rsl.any()):
                continue
            data = src.slab(arr, z0, z1)
            if mask is None:
                brain[:, :, z0:z1] = np.isfinite(data).all(axis=3) & (np.abs(np.nan_to_num(data)).sum(axis=3) > 0)
            if rsl is not None and rsl.any():
                i, j, k = np.nonzero(rsl)
                keys.append(np.ravel_multi_index((i, j, k + z0), shape[:3]))
                rows.append(data[rsl].astype(np.float64))
            del data
    if mask is None:
        if not brain.any():
            raise InputError(f"{src.path}: no voxel with finite, non-zero signal")
        info["brain_mask"] = {"rule": "finite, non-zero signal in some frame", "n_voxels": int(brain.sum())}
    if given_tac:
        tac = np.asarray(reference, dtype=float).reshape(-1)
        if tac.size != shape[3] or not np.isfinite(tac).all():
            raise InputError(f"the given reference TAC must have {shape[3]} finite values, got {tac.size}")
        return tac, "given TAC", brain, info
    where = str(reference) if isinstance(reference, str | Path) else "reference region mask image"
    order = np.argsort(np.concatenate(keys), kind="stable")
    tac_rows = np.concatenate(rows)[order]  # C order of the 3-D mask, as data[mask]
    from .api import mean_of_finite_rows  # noqa: PLC0415

    tac, n_used = mean_of_finite_rows(tac_rows, where, "reference region mask", str(src.path))
    info["reference_mask"]["n_used"] = n_used
    if n_used < MIN_REFERENCE_VOXELS:
        log.warning("WARNING: the reference region %s has only %d voxels (fewer than %d): its mean TAC is noisy and "
                    "every BPND depends on it", where, n_used, MIN_REFERENCE_VOXELS)
    return tac, f"mean of {n_used} voxels in {where}", brain, info


def fit_slab(src: Source, z0: int, z1: int, mask_slab: np.ndarray, ref_tac: np.ndarray, frames: FrameTiming,
             model: str, device: str | None, options: dict[str, Any]) -> dict[str, np.ndarray]:
    """Fit the masked voxels of slab z in [z0, z1) (run in a thread or on a Dask worker: it opens the source
    itself).  Returns each parameter (float32) and ``status`` (uint8) for those voxels, in C order."""
    from .models import get_model  # noqa: PLC0415

    data = src.slab(src.open(), z0, z1)
    tacs = data[mask_slab]
    del data
    mdl = get_model(model, device=device, **options)
    mdl.quiet = True  # the QC message is for the whole image, not per slab
    res = mdl.fit(tacs, ref_tac, frames, keep_inputs=False)
    out = {k: np.asarray(v) for k, v in res.params.items()}
    out["status"] = np.asarray(res.status)
    out["_backend"] = np.array(res.backend)
    return out


def fit_chunked(pet: str | Path, reference: Any, model: str = "logan", mask: Any = None, *,
                frames: FrameTiming | None = None, device: str | None = None, slab_voxels: int | None = None,
                scheduler: Any = None, **options: Any) -> Any:
    """Fit ``model`` to every voxel of a 4-D image too large for memory, slab by slab (z-slabs of about
    ``slab_voxels`` voxels, default :data:`DEFAULT_SLAB_VOXELS`).

    Arguments as :func:`voxelkit.fit` (``reference``: a mask image / path or a TAC; ``mask``: a brain mask, default
    voxels with finite, non-zero signal; ``mask_threshold`` for fractional masks; model options in minutes and
    1/min); ``pet``: a 4-D NIfTI (uncompressed ``.nii`` is memory-mapped) or a ``.zarr`` store.  ``scheduler``: a
    :class:`voxelkit.pipeline.scheduler.Scheduler` (threads or Dask; default: slabs one after another here).
    Returns a :class:`voxelkit.models.ModelFit` with a masker (``.save`` / ``.to_images`` as usual), equal to
    :func:`voxelkit.fit`'s for voxel-independent models."""
    from .models import ModelFit, get_model  # noqa: PLC0415

    t0 = time.perf_counter()
    threshold = options.pop("mask_threshold", None)
    if options.get("k2prime_mask") is not None:
        raise InputError("--chunked: a k2' region mask (--k2prime-mask) needs all voxels together: give k2' in "
                         "1/min (--k2prime)")
    mdl = get_model(model, device=device, **options)
    check_independent(model, mdl)
    src, grid, frames = open_source(pet, frames)
    shape = tuple(int(s) for s in grid.shape) + (frames.n_frames,)
    ranges = slabs(shape, slab_voxels or DEFAULT_SLAB_VOXELS)
    ref_tac, ref_desc, brain, info = _reference_and_mask(src, grid, shape, ranges, reference, mask, threshold)
    masker = Masker(brain, grid.affine)
    n = masker.n_voxels
    # where each slab's voxels go in the masked vector (C order of the mask; a z-slab's voxels are spread there)
    flat = np.flatnonzero(brain)
    todo = [(z0, z1, brain[:, :, z0:z1].copy()) for z0, z1 in ranges if brain[:, :, z0:z1].any()]
    params = {k: np.full(n, np.nan, dtype=np.float32) for k in mdl.param_names}
    status = np.full(n, 255, dtype=np.uint8)
    backend = ["numpy"]

    def put(item: tuple[Any, ...], out: dict[str, np.ndarray]) -> None:
        z0, _, ms = item
        i, j, k = np.nonzero(ms)
        pos = np.searchsorted(flat, np.ravel_multi_index((i, j, k + z0), shape[:3]))
        for name in mdl.param_names:
            params[name][pos] = out[name]
        status[pos] = out["status"]
        backend[0] = str(out["_backend"])

    args = (ref_tac, frames, model, device, dict(options))
    log.info("%s: %d voxels in %d slabs (z-slabs of about %d voxels)", src.path, n, len(todo),
             slab_voxels or DEFAULT_SLAB_VOXELS)
    if scheduler is None or (not getattr(scheduler, "distributed", False) and scheduler.n_workers <= 1):
        for item in todo:
            put(item, fit_slab(src, item[0], item[1], item[2], *args))
    else:
        futs = [scheduler.submit(fit_slab, src, z0, z1, ms, *args) for z0, z1, ms in todo] \
            if getattr(scheduler, "distributed", False) else None
        if futs is not None:
            for i, out in scheduler.as_completed(futs):
                put(todo[i], out)
        else:
            scheduler.map(lambda item: fit_slab(src, item[0], item[1], item[2], *args), todo,
                          on_done=lambda i, out: put(todo[i], out))
    prep_used = mdl.used_frames(frames)
    fit = ModelFit(mdl.name, params, status, frames, prep_used, mdl.options(), backend[0], masker=masker,
                   info={}, model_obj=mdl, inputs=None)
    fit.info.update(reference=ref_desc, pet=src.path, chunked={"slabs": len(todo), "slab_voxels": int(
        slab_voxels or DEFAULT_SLAB_VOXELS), "scheduler": getattr(scheduler, "name", "this process")},
                    injection_offset_s=frames.injection_offset_s, **info)
    fit.seconds = time.perf_counter() - t0
    qc = fit.qc()
    if qc["flagged"]:
        log.warning("WARNING: %s", qc["message"])
    return fit


def should_chunk(pet: str | Path) -> bool:
    """Whether ``voxelkit fit`` fits ``pet`` in slabs by itself: a ``.zarr`` store, or an uncompressed ``.nii``
    of more than :data:`AUTO_CHUNK_BYTES`."""
    p = Path(pet)
    if p.suffix == ".zarr" or p.is_dir():
        return True
    return p.name.endswith(".nii") and p.is_file() and p.stat().st_size > AUTO_CHUNK_BYTES


__all__ = ["fit_chunked", "open_source", "should_chunk", "slabs"]


def is_zarr(path: str | Path) -> bool:
    """A Zarr store: a folder named ``*.zarr``."""
    p = Path(path)
    return p.suffix == ".zarr" or (p.is_dir() and any((p / n).exists() for n in (".zarray", "zarr.json")))


def add_chunked_arguments(p: Any) -> None:
    """The ``voxelkit fit`` options of slab-wise fits (an argparse parser)."""
    g = p.add_argument_group("images larger than memory")
    g.add_argument("--chunked", dest="chunked", action="store_true", default=None,
                   help="fit in z-slabs with bounded memory (automatic for a .zarr store and for an uncompressed "
                        f".nii over {AUTO_CHUNK_BYTES >> 30} GiB); models whose voxels are fitted independently")
    g.add_argument("--no-chunked", dest="chunked", action="store_false",
                   help="read the whole image into memory even when it is large")
    g.add_argument("--slab-voxels", type=int, default=None, metavar="N",
                   help=f"voxels per slab read at a time (default {DEFAULT_SLAB_VOXELS}; memory ~ N x frames x 4 "
                        "bytes per worker, plus the model's working copies)")
    g.add_argument("--scheduler", default=None, metavar="threads|dask|tcp://HOST:PORT",
                   help="where the slabs are fitted: this process (default), a local Dask cluster (dask, "
                        "--workers N) or a running Dask scheduler (workers must see the input file)")
    g.add_argument("--workers", type=int, default=None, metavar="N", help="workers of --scheduler dask")


def fit_from_args(args: Any, frames: FrameTiming | None, options: dict[str, Any]) -> Any:
    """``voxelkit fit --chunked``: :func:`fit_chunked` with the command line's settings."""
    from .pipeline.scheduler import make_scheduler  # noqa: PLC0415

    slab_voxels = getattr(args, "slab_voxels", None)
    if slab_voxels is not None and slab_voxels < 1:
        raise InputError(f"--slab-voxels must be >= 1, got {slab_voxels}")
    spec = getattr(args, "scheduler", None) or "threads"
    with make_scheduler(spec, getattr(args, "workers", None)) as sched:
        return fit_chunked(args.pet, args.ref_mask, args.model, args.mask, frames=frames, device=args.device,
                           slab_voxels=slab_voxels, scheduler=sched, **options)


def wants_chunked(args: Any) -> bool:
    """``voxelkit fit`` in slabs: ``--chunked``, a ``--scheduler`` other than threads, or :func:`should_chunk`."""
    chunked = getattr(args, "chunked", None)
    if chunked is not None:
        return bool(chunked)
    return getattr(args, "scheduler", None) not in (None, "threads") or should_chunk(args.pet)
