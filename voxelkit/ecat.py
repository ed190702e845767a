"""ECAT7 (``.v``) dynamic PET files (HRRT and older Siemens/CTI scanners) through ``nibabel.ecat``.

``nibabel.load`` does not open them; :func:`load_ecat` reads every frame (values as stored x the main header's
``ecat_calibration_factor`` x each frame's ``scale_factor``, as nibabel's ECAT reader computes them) into an
in-memory 4-D :class:`nibabel.Nifti1Image` with nibabel's ECAT affine (mm), and :func:`ecat_frames` takes the
frame timing from the frame subheaders: ``frame_start_time`` and ``frame_duration`` are stored in
**milliseconds** and returned in **seconds** (:class:`voxelkit.frames.FrameTiming`).  Frames stored out of
chronological order are put in order by start time.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from .frames import FrameTiming
from .io import InputError

log = logging.getLogger("voxelkit")

ECAT_SUFFIXES = (".v",)
_MAGIC = b"MATRIX"


def is_ecat(path: str | Path) -> bool:
    """Whether ``path`` names an ECAT7 file (``.v`` suffix, or the ``MATRIX7`` magic of an existing file)."""
    p = Path(path)
    if p.name.lower().endswith(ECAT_SUFFIXES):
        return True
    if p.is_file() and not p.name.lower().endswith((".nii", ".nii.gz", ".json", ".tsv")):
        try:
            with p.open("rb") as fh:
                return fh.read(len(_MAGIC)) == _MAGIC
        except OSError:
            return False
    return False


def _open(path: Path):  # noqa: ANN202 - nibabel.ecat.EcatImage
    from nibabel import ecat  # noqa: PLC0415

    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():  # "frames stored out of order": voxelkit sorts them by start time
            warnings.simplefilter("ignore", UserWarning)
            img = ecat.load(str(path))
            img.get_subheaders()
            return img
    except Exception as exc:  # noqa: BLE001 - nibabel raises several types for a bad file
        raise InputError(f"{path}: cannot read ECAT7 file ({type(exc).__name__}: {exc})") from None


def _order_and_times(img, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # noqa: ANN001
    """(order, start_s, duration_s): nibabel returns frame i of the data from matrix-list row
    ``get_frame_order(mlist)[i][0]`` (frames sorted by matrix id); its times are that row's subheader.  ``order``
    then sorts the data frames by start time."""
    from nibabel.ecat import get_frame_order  # noqa: PLC0415

    subs = img.get_subheaders().subheaders
    if not subs:
        raise InputError(f"{path}: ECAT7 file without frame subheaders")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fo = get_frame_order(img.get_mlist())
    rows = [int(fo[i][0]) for i in range(len(fo))]
    start = np.array([float(subs[r]["frame_start_time"]) for r in rows]) / 1000.0
    dur = np.array([float(subs[r]["frame_duration"]) for r in rows]) / 1000.0
    order = np.argsort(start, kind="stable")
    return order, start[order], dur[order]


def ecat_frames(path: str | Path) -> FrameTiming:
    """Frame timing (seconds) from the frame subheaders of an ECAT7 file (milliseconds there)."""
    path = Path(path)
    img = _open(path)
    _, start, dur = _order_and_times(img, path)
    return FrameTiming(start, dur, source=f"{path} (ECAT7 subheaders)")


def load_ecat(path: str | Path) -> nib.Nifti1Image:
    """The ECAT7 file as an in-memory 4-D float32 NIfTI image (frames in chronological order, nibabel's affine)."""
    path = Path(path)
    img = _open(path)
    order, start, _ = _order_and_times(img, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            data = np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32)
            affine = np.asarray(img.affine, dtype=float)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot read ECAT7 image data ({type(exc).__name__}: {exc})") from None
    if data.ndim == 3:
        data = data[..., None]
    if data.shape[3] != order.size:
        raise InputError(f"{path}: {data.shape[3]} frames of data but {order.size} frame subheaders")
    if not np.array_equal(order, np.arange(order.size)):
        log.info("%s: frames not in chronological order; sorted by start time", path.name)
        data = data[..., order]
    out = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    out.header.set_xyzt_units("mm", "sec")
    log.debug("%s: ECAT7 %s, %d frames from %.0f s", path.name, data.shape, order.size, start[0])
    return out
