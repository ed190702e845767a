"""A digital [11C]carfentanil brain in MNI space built from nilearn's offline MNI152 templates.

Tissue classes come from nilearn's probabilistic grey/white matter templates (``load_mni152_gm_template``,
``load_mni152_wm_template``) inside ``load_mni152_brain_mask``, resampled by nilearn to 2, 3 or 4 mm (any
integer resolution works).  Regions are ellipsoids at literature MNI coordinates (mm), mirrored to both
hemispheres when ``bilateral``, and intersected with grey matter (``tissue="gm"``) or only with the brain
mask (``tissue="brain"``, deep nuclei).  Later regions are painted over earlier ones.  BPND is unitless;
R1 = K1/K1' is unitless (relative delivery).  nilearn is imported only inside :func:`build_phantom`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

__all__ = ["Phantom", "Region", "TissueValues", "build_phantom", "default_regions"]


@dataclass(frozen=True)
class Region:
    """An ellipsoidal region: ``center_mm`` (MNI x, y, z of the right/midline copy), ``radii_mm``, true
    ``bp_nd`` and ``r1``; ``bilateral`` mirrors it at x -> -x; ``tissue`` "gm" or "brain" (see module doc)."""

    name: str
    center_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    bp_nd: float
    r1: float = 1.0
    bilateral: bool = True
    tissue: str = "gm"

    def __post_init__(self) -> None:
        if self.tissue not in ("gm", "brain"):
            raise ValueError(f"Region {self.name!r}: tissue must be 'gm' or 'brain', got {self.tissue!r}")
        if min(self.radii_mm) <= 0:
            raise ValueError(f"Region {self.name!r}: radii must be > 0 mm, got {self.radii_mm}")
        if not self.name.replace("_", "").isalnum():
            raise ValueError(f"Region name {self.name!r}: use letters, digits and underscores only")


#: Name of the reference region in :func:`default_regions` (no specific binding, BPND = 0, R1 = 1).
REFERENCE = "occipital_cortex"


def default_regions() -> tuple[Region, ...]:
    """Carfentanil regions at approximate literature MNI coordinates with typical BPND.

    Thalamus 2.8, nucleus accumbens 2.2, caudate 2.0, amygdala 1.9, insula 1.3, anterior cingulate 1.2 and
    the occipital cortex reference (BPND 0, R1 1).  Cortical regions are limited to grey matter.
    """
    return (
        Region(REFERENCE, (18.0, -88.0, 6.0), (18.0, 13.0, 18.0), 0.0, 1.0, True, "gm"),
        Region("insula", (38.0, 4.0, 2.0), (6.0, 16.0, 11.0), 1.3, 1.0, True, "gm"),
        Region("anterior_cingulate", (5.0, 30.0, 22.0), (6.0, 13.0, 10.0), 1.2, 1.0, True, "gm"),
        Region("amygdala", (23.0, -4.0, -19.0), (6.0, 6.0, 6.0), 1.9, 0.95, True, "brain"),
        Region("caudate", (13.0, 12.0, 10.0), (5.0, 9.0, 7.0), 2.0, 1.0, True, "brain"),
        Region("nucleus_accumbens", (10.0, 11.0, -8.0), (5.0, 5.0, 4.0), 2.2, 1.0, True, "brain"),
        Region("thalamus", (11.0, -18.0, 7.0), (7.0, 10.0, 7.0), 2.8, 1.1, True, "brain"),
    )


@dataclass(frozen=True)
class TissueValues:
    """BPND and R1 outside the named regions: other grey matter, white matter and other brain (CSF);
    ``threshold`` is the minimum template probability for a voxel to be called grey or white matter."""

    gm_bp_nd: float = 0.8
    gm_r1: float = 1.0
    wm_bp_nd: float = 0.25
    wm_r1: float = 0.6
    csf_bp_nd: float = 0.0
    csf_r1: float = 0.3
    threshold: float = 0.25


@dataclass
class Phantom:
    """Label atlas and true parameter maps on an MNI grid (3-D arrays in the grid of ``affine``)."""

    affine: np.ndarray
    brain: np.ndarray  # bool
    labels: np.ndarray  # int16: 0 outside the brain, 1..N regions, then other GM, WM, CSF
    names: list[str]  # names[label]; names[0] = "background"
    bp_nd: np.ndarray  # float32
    r1: np.ndarray  # float32
    regions: tuple[Region, ...]
    tissue: TissueValues = field(default_factory=TissueValues)
    resolution: float = 2.0
    reference: str = REFERENCE

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.brain.shape)

    def label_of(self, name: str) -> int:
        if name not in self.names:
            raise ValueError(f"no region {name!r} in the phantom; regions are {', '.join(self.names[1:])}")
        return self.names.index(name)

    def mask(self, names) -> np.ndarray:
        """Boolean 3-D mask of the union of the regions ``names`` (a name or a list of names)."""
        if isinstance(names, str):
            names = [names]
        return np.isin(self.labels, [self.label_of(n) for n in names])

    @property
    def reference_mask(self) -> np.ndarray:
        return self.mask(self.reference)

    def lookup_rows(self) -> list[dict]:
        """Rows of the atlas lookup table (BIDS dseg.tsv): index, name, true BPND, R1, voxel count."""
        rows = []
        for idx, name in enumerate(self.names):
            if idx == 0:
                continue
            sel = self.labels == idx
            n = int(sel.sum())
            rows.append({"index": idx, "name": name, "bp_nd": float(self.bp_nd[sel].mean()) if n else np.nan,
                         "r1": float(self.r1[sel].mean()) if n else np.nan, "n_voxels": n})
        return rows


def _ellipsoid(coords: np.ndarray, center, radii) -> np.ndarray:
    d = (coords - np.asarray(center, float)) / np.asarray(radii, float)
    return np.einsum("...i,...i->...", d, d) <= 1.0


def build_phantom(resolution: float = 2, regions: tuple[Region, ...] | None = None,
                  tissue: TissueValues | None = None, reference: str = REFERENCE) -> Phantom:
    """Build the phantom at ``resolution`` mm (2, 3, 4...) on nilearn's MNI152 grid.

    ``regions`` default to :func:`default_regions`; ``reference`` names the reference region (must be in
    ``regions``; its voxels get BPND 0).  Raises ValueError if a region ends up empty.  Results are cached
    in the process: treat the returned arrays as read-only.
    """
    regions = tuple(regions) if regions is not None else default_regions()
    return _build_cached(float(resolution), regions, tissue or TissueValues(), reference)


@lru_cache(maxsize=4)
def _build_cached(resolution: float, regions: tuple[Region, ...], tissue: TissueValues,
                  reference: str) -> Phantom:
    from nilearn import datasets  # noqa: PLC0415  (slow import, only when a phantom is built)

    names_r = [r.name for r in regions]
    if len(set(names_r)) != len(names_r):
        raise ValueError(f"duplicate region names: {names_r}")
    if reference not in names_r:
        raise ValueError(f"reference region {reference!r} not among the regions {names_r}")
    res = int(resolution) if float(resolution).is_integer() else resolution
    brain_img = datasets.load_mni152_brain_mask(resolution=res)
    affine = brain_img.affine.copy()
    brain = np.asarray(brain_img.dataobj) > 0
    p_gm = np.asarray(datasets.load_mni152_gm_template(resolution=res).dataobj, dtype=np.float32)
    p_wm = np.asarray(datasets.load_mni152_wm_template(resolution=res).dataobj, dtype=np.float32)
    gm = brain & (p_gm >= tissue.threshold) & (p_gm >= p_wm)
    wm = brain & (p_wm >= tissue.threshold) & ~gm

    ijk = np.indices(brain.shape, dtype=np.float32).reshape(3, -1).T
    coords = (ijk @ affine[:3, :3].T + affine[:3, 3]).reshape(brain.shape + (3,))

    n = len(regions)
    names = ["background", *names_r, "grey_matter_other", "white_matter", "csf_other"]
    labels = np.zeros(brain.shape, dtype=np.int16)
    labels[brain] = n + 3
    labels[wm] = n + 2
    labels[gm] = n + 1
    bp = np.zeros(brain.shape, dtype=np.float32)
    r1 = np.zeros(brain.shape, dtype=np.float32)
    bp[brain], r1[brain] = tissue.csf_bp_nd, tissue.csf_r1
    bp[wm], r1[wm] = tissue.wm_bp_nd, tissue.wm_r1
    bp[gm], r1[gm] = tissue.gm_bp_nd, tissue.gm_r1
    for k, reg in enumerate(regions, start=1):
        sel = _ellipsoid(coords, reg.center_mm, reg.radii_mm)
        if reg.bilateral:
            c = reg.center_mm
            sel |= _ellipsoid(coords, (-c[0], c[1], c[2]), reg.radii_mm)
        sel &= gm if reg.tissue == "gm" else brain
        if not sel.any():
            raise ValueError(f"region {reg.name!r} is empty at {resolution} mm (check center/radii)")
        labels[sel] = k
        bp[sel], r1[sel] = reg.bp_nd, reg.r1
    ref = labels == names.index(reference)
    if not ref.any():
        raise ValueError(f"reference region {reference!r} is fully covered by later regions")
    bp[ref] = 0.0
    return Phantom(affine=affine, brain=brain, labels=labels, names=names, bp_nd=bp, r1=r1, regions=regions,
                   tissue=tissue, resolution=float(resolution), reference=reference)
