"""Per-voxel fit status codes (written as a ``status`` map, uint8)."""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    """Why a voxel's parameters are (or are not) trustworthy.  0 is a good fit."""

    OK = 0
    TOO_FEW_FRAMES = 1  #: fewer frames in the fitted range than parameters + 1
    SINGULAR = 2  #: the regression matrix is (numerically) singular
    NONFINITE_INPUT = 3  #: NaN or inf in the voxel's TAC
    NONPOSITIVE = 4  #: zero or negative activity where the model divides by it (e.g. Logan)
    GRID_EDGE = 5  #: best basis function at the edge of the theta grid (SRTM/SRTM2): parameters clipped
    IMPLAUSIBLE = 6  #: fitted parameters outside physical ranges (e.g. negative k2)

    @classmethod
    def describe(cls) -> dict[int, str]:
        return {int(s): s.name.lower() for s in cls}
