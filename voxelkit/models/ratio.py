"""Equilibrium ratio method of bolus-plus-infusion displacement studies (Carson et al. 1993, 1997).

At (transient) equilibrium the tissue-to-reference ratio is the distribution volume ratio, so over the frames
of a window::

    DVR = mean C_T / mean C_R,    BPND = DVR - 1

with the means weighted by frame duration (time averages; ``weights`` can choose another scheme).  Outputs
``bp_nd`` and ``dvr`` (unitless) and a status code per TAC; there is no fitted curve and no residual (a mean has
nothing to fit), so no ``wrss`` and no ``predict``.  Use it with ``window`` (minutes) for each phase of a
bolus-plus-infusion scan; it is valid only where tissue and reference are at equilibrium (see
:mod:`voxelkit.models.activation` for where that fails on simulated data).

One code path over ``be.xp`` (NumPy or CuPy): two weighted sums per TAC, no kernel.
Status: NaN/inf in a fitted frame -> ``nonfinite_input``; mean C_T <= 0 -> ``nonpositive``; both with NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import Backend
from ..frames import FrameTiming
from ..io import InputError
from .base import Prepared, ReferenceModel, frame_weights
from .status import Status


class Ratio(ReferenceModel):
    """Tissue-to-reference ratio over the fitted frames: ``bp_nd = sum w C_T / sum w C_R - 1``.

    Parameters
    ----------
    window : ``(start, end)`` minutes; the frames the ratio averages (default: all frames).
    weights : averaging weights per frame (default ``duration``: time averages); any scheme of
        :data:`voxelkit.models.base.WEIGHT_SCHEMES` or one weight per frame.
    device, chunk_voxels, half_life_min : see :class:`~voxelkit.models.base.ReferenceModel`.
    """

    name = "ratio"
    param_names = ("bp_nd", "dvr")
    n_regressors = 0  #: one frame is enough for a mean

    def __init__(self, *, weights: str | np.ndarray | None = "duration", integration: str = "trapezoid",
                 **kwargs: Any) -> None:
        if integration != "trapezoid":
            raise InputError(f"ratio: option integration={integration!r} does not apply (the ratio method "
                             "integrates nothing)")
        super().__init__(weights=weights, integration=integration, **kwargs)

    def options(self) -> dict[str, Any]:
        out = super().options()
        out.pop("integration", None)
        return out

    def _prepare(self, reference: np.ndarray, frames: FrameTiming) -> Prepared:
        used = self.used_frames(frames)
        w = frame_weights(self.weights, frames, reference, self.half_life_min) * used
        ref_mean = float(w @ reference)
        if used.any() and not ref_mean > 0:
            where = f"window {list(self.window)} min" if self.window else "the scan"
            raise InputError(f"ratio: the reference TAC has no positive mean over {where}")
        return Prepared(frames, used, w, reference, extra={"ref_sum": ref_mean})

    def _fit_chunk(self, be: Backend, tacs: Any, prep: Prepared) -> tuple[dict[str, Any], Any]:
        idx = np.flatnonzero(prep.used)
        return ratio_xp(be.xp, tacs, prep, be.asarray(idx.astype(np.int64)),
                        be.asarray(prep.weights[idx], dtype=np.float64))


def ratio_xp(xp: Any, tacs: Any, prep: Prepared, idx: Any, w: Any) -> tuple[dict[str, Any], Any]:
    """Ratio fit of a chunk ``tacs`` (n x F, any array module): ``idx`` the fitted frames and ``w`` their weights,
    both on that module.  Sums in float64; only the fitted frames are read (NaN elsewhere is ignored)."""
    ct = tacs[:, idx].astype(xp.float64)
    finite = xp.isfinite(ct).all(axis=1)
    ct = xp.where(finite[:, None], ct, 0.0)
    num = ct @ w
    dvr = num / prep.extra["ref_sum"]
    st = xp.full(ct.shape[0], int(Status.OK), dtype=xp.uint8)
    st = xp.where(num > 0, st, np.uint8(Status.NONPOSITIVE))
    st = xp.where(finite, st, np.uint8(Status.NONFINITE_INPUT)).astype(xp.uint8)
    good = st == Status.OK
    nan = xp.float64(np.nan)
    dvr = xp.where(good, dvr, nan)
    return {"dvr": dvr.astype(xp.float32), "bp_nd": (dvr - 1.0).astype(xp.float32)}, st
