"""``voxelkit demo``: simulate a small crossover study with a planted anakinra effect, run the whole pipeline
on it, and say which planted regions were found at what FWE level."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from . import layout
from .config import StudyConfig
from .run import StudyResult, run_study

log = logging.getLogger("voxelkit")

#: FWE maps the summary looks at, in the order it reports them.
FWE_MAPS = ("logp_fwe_tfce", "logp_fwe_cluster_extent", "logp_fwe_cluster_mass", "logp_fwe_voxel")


@dataclass
class RegionFinding:
    region: str
    planted: bool
    n_voxels: int
    best: dict[str, float]  # map -> smallest FWE p in the region (1.0 if none)
    frac_sig: dict[str, float]  # map -> fraction of the region's voxels with FWE p < alpha


def region_findings(out: Path, atlas: Path, atlas_tsv: Path, alpha: float = 0.05) -> list[RegionFinding]:
    """Smallest FWE p and fraction of significant voxels per atlas region, for every FWE map present."""
    labels = np.asarray(nib.load(str(atlas)).dataobj).astype(int)
    with atlas_tsv.open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    sdir = layout.stats_dir(out)
    maps = {m: np.abs(np.asarray(nib.load(str(sdir / f"{m}.nii.gz")).dataobj, dtype=float))
            for m in FWE_MAPS if (sdir / f"{m}.nii.gz").exists()}
    found = []
    for r in rows:
        k = int(r["index"])
        reg = labels == k
        if k <= 0 or not reg.any() or r.get("reference") == "1":
            continue
        best, frac = {}, {}
        for m, v in maps.items():
            vals = v[reg]
            vals = vals[np.isfinite(vals)]
            best[m] = float(10 ** -vals.max()) if vals.size else 1.0
            frac[m] = float((vals > -np.log10(alpha)).mean()) if vals.size else 0.0
        found.append(RegionFinding(r["name"], r.get("effect") == "1", int(reg.sum()), best, frac))
    return found


def format_findings(findings: list[RegionFinding], alpha: float = 0.05) -> str:
    lines = []
    maps = [m for m in FWE_MAPS if findings and m in findings[0].best]
    short = {"logp_fwe_tfce": "TFCE", "logp_fwe_cluster_extent": "cluster extent",
             "logp_fwe_cluster_mass": "cluster mass", "logp_fwe_voxel": "voxel max-T"}
    header = f"{'region':<22}{'planted':>8}" + "".join(f"{short[m]:>16}" for m in maps)
    lines.append(header)
    for f in sorted(findings, key=lambda f: (not f.planted, f.region)):
        cells = "".join(f"{_pcell(f.best[m], f.frac_sig[m], alpha):>16}" for m in maps)
        lines.append(f"{f.region:<22}{'yes' if f.planted else 'no':>8}{cells}")
    planted = [f for f in findings if f.planted]
    hit = [f for f in planted if any(f.best[m] < alpha for m in ("logp_fwe_tfce", "logp_fwe_cluster_extent",
                                                                  "logp_fwe_cluster_mass") if m in f.best)]
    other = [f for f in findings if not f.planted and any(v < alpha for v in f.best.values())]
    lines.append(f"planted regions detected (cluster or TFCE FWE p < {alpha:g}): {len(hit)} of {len(planted)}"
                 + (f" ({', '.join(f.region for f in hit)})" if hit else ""))
    desc = [f"{f.region} ({100 * max(f.frac_sig.values()):.1f}% of its voxels)" for f in other]
    lines.append(f"regions without a planted effect with voxels at FWE p < {alpha:g}: "
                 + (", ".join(desc) if desc else "none")
                 + (" -- small fractions are clusters extending from planted regions (smoothing, resolution)"
                    if desc else ""))
    return "\n".join(lines)


def _pcell(p: float, frac: float, alpha: float) -> str:
    if p >= alpha:
        return f"p={p:.2f}" if p < 1 else "-"
    return f"p={p:.3f} {100 * frac:.0f}%"


def run_demo(outdir: str | Path, *, n_subjects: int = 10, resolution: float = 3, effect: float = 0.08,
             noise: float | None = None, seed: int = 0, n_perm: int = 1000, model: str = "srtm",
             smoothing_fwhm: float = 4.0, overwrite: bool = False, device: str | None = None,
             progress: bool = True) -> tuple[StudyResult, str, Any]:
    """Simulate (``outdir/bids``), analyse (``outdir/bids/derivatives/voxelkit``) and summarise."""
    from ..simulate.study import simulate_study  # noqa: PLC0415

    outdir = Path(outdir)
    bids = outdir / "bids"
    extra: dict[str, Any] = {} if noise is None else {"noise": noise}
    sim = simulate_study(bids, preset="demo", n_subjects=n_subjects, resolution=resolution, effect=effect,
                         seed=seed, overwrite=overwrite, **extra)
    log.info("%s", sim.summary())
    cfg = StudyConfig(bids_dir=bids, model=model, n_perm=n_perm, seed=seed, smoothing_fwhm=smoothing_fwhm,
                      device=device)
    result = run_study(cfg, progress=progress)  # finds the simulator's masks and atlas in derivatives/
    atlas, atlas_tsv = result.config.atlas, result.config.atlas_labels
    text = format_findings(region_findings(result.output_dir, atlas, atlas_tsv)) if atlas and atlas_tsv else ""
    return result, text, sim
