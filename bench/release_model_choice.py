"""Which lp-ntPET variant suits the release contrast: drug - placebo release per region, found vs true.

Simulates a small release study (3 mm, bolus-plus-infusion, challenge 45-90 min, 8 % drug-enhanced release) and
fits every scan with ``lpntpet``, ``lpntpet2`` with the median k2' over the pre-challenge frames (the pipeline's
default), and ``lpntpet2`` with k2' from the simulator's high-binding mask; prints, per region, the true
drug - placebo peak occupancy and, per variant, the found mean (SD over subjects).  The README's model-choice
table was measured with ``python bench/release_model_choice.py --noise 0.03 --subjects 4`` (and ``--noise 0
--subjects 2``).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from voxelkit.api import fit
from voxelkit.io import read_lookup
from voxelkit.simulate.study import simulate_study

REGIONS = ("insula", "caudate", "nucleus_accumbens", "thalamus", "anterior_cingulate", "amygdala",
           "grey_matter_other")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--noise", type=float, default=0.03, help="simulator noise (default 0.03)")
    ap.add_argument("--subjects", type=int, default=4, help="subjects (default 4)")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "study"
        sim = simulate_study(out, preset="demo", n_subjects=args.subjects, noise=args.noise, seed=args.seed,
                             design="release", protocol="bolus-infusion", challenge_window_min=(45.0, 90.0),
                             effect=0.08)
        d = Path(sim.derivatives)
        ref = next(d.glob("*desc-reference_mask.nii.gz"))
        brain = next(d.glob("*desc-brain_mask.nii.gz"))
        hb = next(d.glob("*highbinding_mask.nii.gz"))
        atlas = np.asarray(nib.load(str(next(d.glob("*_dseg.nii.gz")))).dataobj).astype(int)
        lut = {name: idx for idx, name in read_lookup(next(d.glob("*_dseg.tsv"))).items()}
        cases = {"lpntpet": ("lpntpet", {}),
                 "lpntpet2 median(0-45)": ("lpntpet2", {"k2prime": "median", "k2prime_window": (0, 45)}),
                 "lpntpet2 high-binding(0-45)": ("lpntpet2", {"k2prime": str(hb), "k2prime_window": (0, 45)})}
        found: dict[str, dict] = {c: {} for c in cases}
        truth: dict = {}
        for p in sorted(out.glob("sub-*/ses-*/pet/*_pet.nii.gz")):
            sub, ses = p.name.split("_")[:2]
            tv = np.asarray(nib.load(str(next((d / sub / ses / "pet").glob("*truepeakoccupancy_mimap.nii.gz"))))
                            .dataobj, dtype=float)
            truth[(sub, ses)] = {g: tv[atlas == lut[g]].mean() for g in REGIONS}
            for c, (model, opts) in cases.items():
                r = fit(str(p), reference=str(ref), model=model, mask=str(brain), challenge_window=(45, 90), **opts)
                rel = np.full(atlas.shape, np.nan)
                rel[r.masker.mask] = r.params["release"]
                found[c][(sub, ses)] = {g: np.nanmean(rel[atlas == lut[g]]) for g in REGIONS}
    subs = sorted({k[0] for k in truth})

    def diff(dd: dict, g: str) -> np.ndarray:
        return np.array([dd[(s, "ses-anakinra")][g] - dd[(s, "ses-placebo")][g] for s in subs])

    print(f"noise {args.noise}, {args.subjects} subjects: region: true drug-placebo release | found mean (sd)")
    for g in REGIONS:
        line = f"{g:20s} true {diff(truth, g).mean():.4f} |"
        for c in cases:
            x = diff(found[c], g)
            line += f" {c}: {x.mean():.4f} ({x.std(ddof=1) if x.size > 1 else 0.0:.3f});"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
