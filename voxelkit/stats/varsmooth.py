"""Variance smoothing (FSL randomise ``-v``, SnPM's pseudo-t) for small samples.

With 10-20 maps the voxelwise variance estimate is noisy and dominates the noise of ``t``.  Smoothing the variance
image within the mask before forming ``t`` borrows strength from neighbouring voxels (Holmes et al. 1996;
Nichols and Holmes 2002).  The same smoothing is applied to the observed and to every permuted map, so the
permutation test stays exact; only the statistic changes (a "pseudo-t").

Smoothing is Gaussian with a full width at half maximum ``fwhm_mm`` in millimetres, converted to voxels per axis
with the affine's voxel sizes (sigma_axis = FWHM / sqrt(8 ln 2) / voxel size).  It is normalised by the
smoothed mask, ``smooth(var * m) / smooth(m)`` with ``m`` the analysed voxels, so voxels at the mask's edge are
not biased towards zero.  The kernel is SciPy's (``scipy.ndimage.gaussian_filter``, truncated at 4 sigma, zero
outside the grid), applied as separable 1-D convolutions on a batch of B maps at once with ``xp`` (NumPy or
CuPy): each axis is a matrix product with its banded convolution matrix, so the work runs in BLAS / cuBLAS.

Note: randomise's ``-v`` takes the Gaussian's standard deviation in mm; here the option is the FWHM in mm
(FWHM = 2.3548 sigma).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..backend import Backend

TRUNCATE = 4.0  # kernel half-width in sigmas (scipy.ndimage.gaussian_filter's default)


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel size along each array axis in mm (column norms of the affine's 3 x 3 part)."""
    return np.sqrt(np.sum(np.asarray(affine, np.float64)[:3, :3] ** 2, axis=0))


def sigmas_vox(fwhm_mm: float, affine: np.ndarray) -> np.ndarray:
    """Gaussian sigma per axis in voxels for a FWHM in mm."""
    return float(fwhm_mm) / math.sqrt(8.0 * math.log(2.0)) / voxel_sizes(affine)


def gaussian_kernel1d(sigma: float, truncate: float = TRUNCATE) -> np.ndarray:
    """Normalised 1-D Gaussian weights (as scipy.ndimage's: radius = int(truncate * sigma + 0.5))."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


class VarianceSmoother:
    """Smooths (B, V) rows of per-voxel values over the 3-D grid of ``mask`` (V = mask.sum(), C order).

    ``smooth(var)`` returns ``smooth(var * m) / smooth(m)`` at the mask's voxels (``m`` = mask), for every row;
    arrays are of the backend ``be`` (NumPy or CuPy).
    """

    def __init__(self, mask: np.ndarray, affine: np.ndarray, fwhm_mm: float, be: Backend, dtype: Any = np.float64):
        if not np.isfinite(fwhm_mm) or fwhm_mm < 0:
            raise ValueError(f"variance smoothing FWHM must be >= 0 mm, got {fwhm_mm}")
        self.mask = np.asarray(mask, bool)
        self.fwhm_mm = float(fwhm_mm)
        self.be = be
        self.dtype = np.dtype(dtype)
        self.sigmas = sigmas_vox(fwhm_mm, affine) if fwhm_mm > 0 else np.zeros(3)
        # axes with sigma 0 are skipped (as scipy.ndimage); a kernel of one tap is the identity too
        self.kernels = [gaussian_kernel1d(s) if s > 0 else None for s in self.sigmas]
        self.kernels = [k if k is not None and k.size > 1 else None for k in self.kernels]
        self.identity = all(k is None for k in self.kernels)
        xp = be.xp
        # crop the grid to the mask's bounding box plus the kernel radius (zeros beyond are the same as the grid's
        # zero padding), so the batch volume is no larger than needed
        idx = np.argwhere(self.mask)
        lo = idx.min(axis=0) if idx.size else np.zeros(3, int)
        hi = idx.max(axis=0) + 1 if idx.size else np.zeros(3, int)
        rad = np.array([(k.size // 2 if k is not None else 0) for k in self.kernels])
        self.lo = np.maximum(lo - rad, 0)
        self.hi = np.minimum(hi + rad, self.mask.shape)
        sub = self.mask[tuple(slice(a, b) for a, b in zip(self.lo, self.hi, strict=True))]
        self.shape = sub.shape
        self.lin = be.asarray(np.flatnonzero(sub.ravel()).astype(np.int64))
        # banded convolution matrices K[i_out, i_in] = w[i_in - i_out + radius] (zero padding beyond the grid)
        self.kmats = []
        for ax, w in enumerate(self.kernels):
            if w is None:
                self.kmats.append(None)
                continue
            n, rad = self.shape[ax], w.size // 2
            d = np.arange(n)[None, :] - np.arange(n)[:, None] + rad
            K = np.where((d >= 0) & (d < w.size), w[np.clip(d, 0, w.size - 1)], 0.0)
            self.kmats.append(be.asarray(K, dtype=self.dtype))
        self.V = int(self.mask.sum())
        if not self.identity:
            m = xp.zeros((1, int(np.prod(self.shape))), dtype=self.dtype)
            m[:, self.lin] = 1.0
            sm = self._convolve(m.reshape((1, *self.shape))).reshape(1, -1)[:, self.lin]
            self.norm = sm  # (1, V) smoothed mask at the mask's voxels (> 0: each voxel weighs itself)

    def _convolve(self, vol: Any) -> Any:
        """Separable zero-padded Gaussian convolution of (B, X, Y, Z) along the three spatial axes, each a
        (broadcast) matrix product with the banded (n x n) convolution matrix of that axis (BLAS / cuBLAS)."""
        B, X, Y, Z = vol.shape
        if self.kmats[0] is not None:   # X: (X_out, X_in) @ (B, X_in, Y*Z)
            vol = (self.kmats[0] @ vol.reshape(B, X, Y * Z)).reshape(B, X, Y, Z)
        if self.kmats[1] is not None:   # Y: (Y_out, Y_in) @ (B, X, Y_in, Z)
            vol = self.kmats[1] @ vol
        if self.kmats[2] is not None:   # Z: (B, X, Y, Z_in) @ (Z_in, Z_out)
            vol = vol @ self.kmats[2].T
        return vol

    def smooth(self, values: Any) -> Any:
        """(B, V) values at the mask's voxels -> (B, V) mask-normalised smoothed values (backend arrays)."""
        if self.identity:
            return values
        xp = self.be.xp
        B = values.shape[0]
        vol = xp.zeros((B, int(np.prod(self.shape))), dtype=values.dtype)
        vol[:, self.lin] = values
        sm = self._convolve(vol.reshape((B, *self.shape))).reshape(B, -1)[:, self.lin]
        return sm / self.norm.astype(values.dtype)


def reference_smooth(values3d: np.ndarray, mask: np.ndarray, fwhm_mm: float, affine: np.ndarray) -> np.ndarray:
    """Slow reference (tests): ``gaussian_filter(v * m) / gaussian_filter(m)`` with scipy.ndimage, one 3-D map."""
    from scipy import ndimage  # noqa: PLC0415

    s = sigmas_vox(fwhm_mm, affine)
    m = mask.astype(np.float64)
    num = ndimage.gaussian_filter(np.where(mask, values3d, 0.0), s, mode="constant", truncate=TRUNCATE)
    den = ndimage.gaussian_filter(m, s, mode="constant", truncate=TRUNCATE)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mask, num / den, 0.0)
