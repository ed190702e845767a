"""Round trip: a noiseless simulated scan fitted with voxelkit's reference models gives back the true BPND."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from voxelkit.frames import FrameTiming
from voxelkit.simulate.study import simulate_study

models = pytest.importorskip("voxelkit.models")

SPACE = "MNI152NLin2009cAsym"


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    res = simulate_study(tmp_path_factory.mktemp("rt") / "ds", preset="test", n_subjects=1, noise=0.0,
                         challenge="none", seed=11)
    d = res.root / "derivatives" / "voxelkit-sim"
    stem = "sub-01_ses-anakinra"
    pet = res.root / "sub-01" / "ses-anakinra" / "pet" / f"{stem}_pet.nii.gz"

    def img(p: Path) -> np.ndarray:
        return np.asarray(nib.load(str(p)).dataobj)

    truth = d / "sub-01" / "ses-anakinra" / "pet"
    r1 = img(truth / f"{stem}_space-{SPACE}_desc-truer1_mimap.nii.gz")
    bp = img(truth / f"{stem}_space-{SPACE}_desc-truebpnd_mimap.nii.gz")
    ref = img(d / f"space-{SPACE}_res-4_desc-reference_mask.nii.gz").astype(bool)
    data = img(pet)
    brain = r1 > 0
    frames = FrameTiming.from_bids_json(pet.with_name(f"{stem}_pet.json"))
    return data[brain], data[ref].mean(axis=0), frames, bp[brain], r1[brain]


def test_srtm_recovers_truth(scan):
    tacs, ref, frames, bp, r1 = scan
    fit = models.get_model("srtm").fit(tacs, ref, frames)
    assert np.all(fit.status == 0)
    assert np.max(np.abs(fit.bp_nd - bp)) < 2e-3
    assert np.max(np.abs(fit.params["r1"] - r1)) < 2e-3


def test_logan_recovers_truth(scan):
    tacs, ref, frames, bp, _ = scan
    fit = models.get_model("logan", tstar=20.0, k2prime=0.1).fit(tacs, ref, frames)
    assert np.max(np.abs(fit.bp_nd - bp)) < 0.02
