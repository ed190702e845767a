"""Images larger than memory (:mod:`voxelkit.bigfit`): slab-wise fits of a memory-mapped NIfTI or a Zarr array
equal the in-memory fit, on this process and on Dask; ``voxelkit fit --chunked``; the errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import voxelkit
from voxelkit.bigfit import fit_chunked, open_source, slabs
from voxelkit.cli import main
from voxelkit.io import InputError

SHAPE = (11, 9, 8)
START = np.r_[0, 30, 60, 90, 120, 180, 240, 300, 420, 600, 900, 1200, 1500, 1800, 2400, 3000, 3600, 4200]
DUR = np.diff(np.r_[START, 4800]).astype(float)


def _write_study(root: Path) -> dict[str, Path]:
    """A small 4-D image (SRTM-like TACs, voxels outside the head at 0, one voxel with a NaN frame) written
    uncompressed, with its sidecar, a reference mask and a brain mask."""
    rng = np.random.default_rng(4)
    t = (START + DUR / 2) / 60.0
    ref = 10 * t * np.exp(-t / 12.0) + 0.5
    r1 = rng.uniform(0.7, 1.3, SHAPE)
    bp = rng.uniform(0.0, 2.0, SHAPE)
    conv = np.cumsum(ref * np.diff(np.r_[0.0, t]))
    clean = r1[..., None] * ref + (0.05 * bp)[..., None] * conv * np.exp(-0.01 * t)
    data = clean * (1 + 0.03 * rng.standard_normal(SHAPE + (t.size,)))
    head = np.zeros(SHAPE, bool)
    head[1:-1, 1:-1, :] = True
    data[~head] = 0.0
    data[3, 4, 5, 7] = np.nan
    refmask = np.zeros(SHAPE, np.uint8)
    refmask[2:5, 2:4, 1:6] = 1
    data[refmask > 0] = ref * (1 + 0.02 * rng.standard_normal((int(refmask.sum()), t.size)))
    brain = head.copy()
    brain[5, 5, :] = False
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    paths = {"pet": root / "pet.nii", "ref": root / "ref.nii.gz", "brain": root / "brain.nii.gz"}
    nib.save(nib.Nifti1Image(data.astype(np.float32), aff), str(paths["pet"]))
    (root / "pet.json").write_text(json.dumps({"FrameTimesStart": START.tolist(), "FrameDuration": DUR.tolist()}))
    nib.save(nib.Nifti1Image(refmask, aff), str(paths["ref"]))
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), aff), str(paths["brain"]))
    return paths


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict[str, Path]:
    return _write_study(tmp_path_factory.mktemp("bigfit"))


def _same(a, b) -> None:
    assert list(a.params) == list(b.params)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)
    np.testing.assert_array_equal(a.status, b.status)
    np.testing.assert_array_equal(a.masker.mask, b.masker.mask)


@pytest.mark.parametrize(("model", "opts"), [("logan", {"tstar": 10}), ("mrtm", {}), ("srtm", {}),
                                             ("mrtm2", {"k2prime": 0.15})])
@pytest.mark.parametrize("brain", [True, False])
def test_slabs_equal_in_memory_fit(study, model, opts, brain):
    mask = str(study["brain"]) if brain else None
    ref = voxelkit.fit(str(study["pet"]), reference=str(study["ref"]), model=model, mask=mask, **opts)
    # one z-plane (99 voxels) per slab: 8 slabs
    got = fit_chunked(study["pet"], str(study["ref"]), model, mask, slab_voxels=100, **opts)
    assert got.info["chunked"]["slabs"] == SHAPE[2]
    _same(ref, got)
    assert got.info["reference"] == ref.info["reference"]
    assert got.info["brain_mask"]["n_voxels"] == ref.info["brain_mask"]["n_voxels"]


def test_slabs_read_only_their_planes(study, monkeypatch):
    """Bounded memory: every read of the image is one slab, never the whole 4-D array."""
    from voxelkit import bigfit

    sizes = []
    orig = bigfit.Source.slab

    def spy(self, arr, z0, z1):
        sizes.append(z1 - z0)
        return orig(self, arr, z0, z1)

    monkeypatch.setattr(bigfit.Source, "slab", spy)
    fit_chunked(study["pet"], str(study["ref"]), "logan", None, slab_voxels=200, tstar=10)
    assert sizes and max(sizes) == 2  # 200 voxels = 2 planes of 99
    src, grid, frames = open_source(study["pet"])
    assert isinstance(src.open(), nib.arrayproxy.ArrayProxy)  # memory-mapped proxy, read by slices
    assert slabs((11, 9, 8, 18), 200) == [(0, 2), (2, 4), (4, 6), (6, 8)]


def test_zarr_and_dask_equal_in_memory_fit(study, tmp_path):
    zarr = pytest.importorskip("zarr")  # in the test extra: CI has it
    from voxelkit.pipeline.scheduler import make_scheduler

    img = nib.load(str(study["pet"]))
    store = tmp_path / "pet.zarr"
    z = zarr.open_array(str(store), mode="w", shape=img.shape, chunks=(11, 9, 2, 18), dtype="f4")
    z[:] = np.asarray(img.dataobj, np.float32)
    z.attrs.update({"affine": img.affine.tolist(), "FrameTimesStart": START.tolist(),
                    "FrameDuration": DUR.tolist()})
    ref = voxelkit.fit(str(study["pet"]), reference=str(study["ref"]), model="mrtm", mask=str(study["brain"]))
    _same(ref, fit_chunked(store, str(study["ref"]), "mrtm", str(study["brain"]), slab_voxels=150))
    with make_scheduler("dask", 2, processes=False) as sched:
        got = fit_chunked(study["pet"], str(study["ref"]), "mrtm", str(study["brain"]), slab_voxels=150,
                          scheduler=sched)
        _same(ref, got)
        _same(ref, fit_chunked(store, str(study["ref"]), "mrtm", str(study["brain"]), slab_voxels=150,
                               scheduler=sched))
    with make_scheduler("threads", jobs=2) as sched:
        _same(ref, fit_chunked(study["pet"], str(study["ref"]), "mrtm", str(study["brain"]), slab_voxels=150,
                               scheduler=sched))
    # a Zarr array without frame timing: one line naming it
    bare = tmp_path / "bare.zarr"
    zarr.open_array(str(bare), mode="w", shape=img.shape, dtype="f4")
    with pytest.raises(InputError, match="bare.zarr: no frame timing"):
        fit_chunked(bare, str(study["ref"]), "mrtm")


def test_cli_chunked_writes_the_same_maps(study, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    base = [str(study["pet"]), "--ref-mask", str(study["ref"]), "--mask", str(study["brain"]), "--model", "srtm"]
    assert main(["fit", *base, "-o", str(a), "--quiet"]) == 0
    assert main(["fit", *base, "-o", str(b), "--chunked", "--slab-voxels", "120", "--quiet"]) == 0
    names = sorted(p.name for p in a.glob("*.nii.gz"))
    assert names == sorted(p.name for p in b.glob("*.nii.gz")) and "bp_nd.nii.gz" in names
    for name in names:
        np.testing.assert_array_equal(np.asarray(nib.load(str(a / name)).dataobj),
                                      np.asarray(nib.load(str(b / name)).dataobj), err_msg=name)
    assert json.loads((b / "fit.json").read_text())["Info"]["chunked"]["slabs"] == 8
    capsys.readouterr()
    before = study["pet"].read_bytes()
    # errors: one line, exit 2, nothing written, input unchanged
    for extra, msg in ((["--slab-voxels", "0"], "--slab-voxels must be >= 1"),
                       (["--model", "mrtm2", "--k2prime", "median"], "--chunked: model 'mrtm2' estimates k2'")):
        out = tmp_path / f"bad{len(msg)}"
        assert main(["fit", *base, "-o", str(out), "--chunked", *extra]) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and msg in err[0], err
        assert not out.exists() or not any(out.iterdir())
    assert study["pet"].read_bytes() == before


def test_api_fit_switches_to_slabs_by_itself_for_large_uncompressed_images(study, monkeypatch):
    """voxelkit.fit chunks an uncompressed .nii above AUTO_CHUNK_BYTES for voxel-independent models, keeps the
    in-memory path for a model that needs all voxels (k2' median) and with chunked=False; same maps."""
    import voxelkit.bigfit as bigfit

    mem = voxelkit.fit(str(study["pet"]), reference=str(study["ref"]), model="mrtm", chunked=False)
    assert "chunked" not in mem.info
    monkeypatch.setattr(bigfit, "AUTO_CHUNK_BYTES", 1)
    auto = voxelkit.fit(str(study["pet"]), reference=str(study["ref"]), model="mrtm")
    assert "chunked" in auto.info
    _same(mem, auto)
    med = voxelkit.fit(str(study["pet"]), reference=str(study["ref"]), model="mrtm2", k2prime="median")
    assert "chunked" not in med.info
