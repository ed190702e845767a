"""ECAT7 ``.v`` files: frames and frame times (ms in the subheaders, s in voxelkit) through nibabel.ecat, for
``voxelkit fit`` and ``voxelkit run``.

nibabel's ECAT writer only copies frames of an existing file, so :func:`write_ecat` builds a multi-frame ECAT7
file here from the main header and subheader of nibabel's own test file ``tinypet.v`` (big-endian int16 data,
one 512-byte block per header, one matrix-list block)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel import ecat

from voxelkit.ecat import ecat_frames, is_ecat, load_ecat
from voxelkit.io import InputError, load_pet

TINYPET = Path(os.path.dirname(nib.__file__)) / "tests" / "data" / "tinypet.v"
BLOCK = 512


def write_ecat(path: Path, data: np.ndarray, start_s: np.ndarray, dur_s: np.ndarray,
               order: list[int] | None = None) -> None:
    """A minimal ECAT7 volume file: main header, one matrix list, then per frame a subheader and int16 data."""
    tmpl = ecat.load(str(TINYPET))
    hdr = np.frombuffer(TINYPET.read_bytes()[:BLOCK], dtype=ecat.hdr_dtype.newbyteorder(">")).copy()
    sub0 = np.array(tmpl.get_subheaders().subheaders[0]).copy()
    cal = float(hdr["ecat_calibration_factor"][0])
    nx, ny, nz, nf = data.shape
    order = list(range(nf)) if order is None else order
    assert nf <= 31
    hdr["num_frames"] = nf
    blob = bytearray(hdr.tobytes())
    blob += b"\0" * BLOCK  # matrix list block (filled below)
    mlist = np.zeros((32, 4), dtype=">i4")
    mlist[0] = [31 - nf, 2, 0, nf]
    nbytes = nx * ny * nz * 2
    nblocks = -(-nbytes // BLOCK)
    for row, k in enumerate(order, start=1):
        vol = data[..., k].astype(np.float64)
        scale = max(float(np.abs(vol).max()), 1e-12) / 32000.0 / cal  # stored x scale x calibration = value
        sub = sub0.copy()
        sub["x_dimension"], sub["y_dimension"], sub["z_dimension"] = nx, ny, nz
        sub["data_type"] = 6
        sub["scale_factor"] = scale
        sub["frame_start_time"] = int(round(start_s[k] * 1000))
        sub["frame_duration"] = int(round(dur_s[k] * 1000))
        first_block = len(blob) // BLOCK + 1
        blob += sub.astype(sub.dtype.newbyteorder(">")).tobytes().ljust(BLOCK, b"\0")
        raw = np.round(vol / (scale * cal)).astype(">i2")
        blob += raw.tobytes(order="F").ljust(nblocks * BLOCK, b"\0")
        mlist[row] = [16842758 + k, first_block, first_block + nblocks, 1]
    blob[BLOCK:2 * BLOCK] = mlist.tobytes()
    path.write_bytes(bytes(blob))


def _expected(data: np.ndarray) -> np.ndarray:
    """What the file holds after int16 quantisation (nibabel scales back by scale factor x calibration)."""
    cal = float(np.frombuffer(TINYPET.read_bytes()[:BLOCK], dtype=ecat.hdr_dtype.newbyteorder(">"))
                ["ecat_calibration_factor"][0])
    out = np.empty_like(data, dtype=np.float64)
    for k in range(data.shape[3]):
        scale = max(float(np.abs(data[..., k]).max()), 1e-12) / 32000.0 / cal
        out[..., k] = np.round(data[..., k] / (scale * cal)) * scale * cal
    return out


def test_tinypet_from_nibabel():
    assert is_ecat(TINYPET)
    fr = ecat_frames(TINYPET)
    np.testing.assert_allclose(fr.start, [1500.016])  # 1500016 ms in the subheader
    np.testing.assert_allclose(fr.duration, [300.0])
    img = load_ecat(TINYPET)
    assert img.shape == (10, 10, 3, 1) and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(np.asarray(img.dataobj)[..., 0], ecat.load(str(TINYPET)).get_fdata()[..., 0],
                               rtol=1e-6)


def test_multi_frame_file_round_trip(tmp_path: Path):
    rng = np.random.default_rng(1)
    data = rng.uniform(0, 50, size=(6, 5, 4, 5))
    start = np.array([0.0, 30.0, 90.0, 210.0, 450.0])
    dur = np.array([30.0, 60.0, 120.0, 240.0, 300.0])
    path = tmp_path / "scan.v"
    write_ecat(path, data, start, dur, order=[2, 0, 1, 4, 3])  # stored out of order
    fr = ecat_frames(path)
    np.testing.assert_allclose(fr.start, start)
    np.testing.assert_allclose(fr.duration, dur)
    img = load_ecat(path)
    got = np.asarray(img.dataobj)
    np.testing.assert_allclose(got, _expected(data), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, data, rtol=0, atol=50 / 32000)  # int16 quantisation only
    pet = load_pet(path)  # no sidecar: frame times from the subheaders
    assert pet.frames.n_frames == 5 and pet.data().shape == (6, 5, 4, 5)
    # a sidecar beside it wins (BIDS)
    (tmp_path / "scan.json").write_text(json.dumps({"FrameTimesStart": list(start + 1), "FrameDuration": list(dur)}))
    np.testing.assert_allclose(load_pet(path).frames.start, start + 1)


def test_bad_ecat_is_one_line_error(tmp_path: Path):
    bad = tmp_path / "bad.v"
    bad.write_bytes(b"MATRIX72v" + b"\0" * 100)
    with pytest.raises(InputError, match="bad.v: cannot read ECAT7"):
        load_ecat(bad)
    with pytest.raises(InputError, match="bad.v: cannot read ECAT7"):
        load_pet(bad)


def _phantom_frames():
    from voxelkit.frames import FrameTiming

    dur = np.array([30.0] * 4 + [60.0] * 4 + [300.0] * 10)
    start = np.concatenate([[0.0], np.cumsum(dur)[:-1]])
    return FrameTiming(start, dur)


def _tacs(frames, bp: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Reference and target TACs from SRTM-like kinetics (frame means of a fine grid)."""
    t = np.linspace(0, frames.end[-1] / 60, 4000)
    cp = 40 * t * np.exp(-t / 1.5)
    dt = t[1] - t[0]

    def tissue(k1, k2):
        return np.convolve(cp, k1 * np.exp(-k2 * t))[: t.size] * dt

    cr = tissue(0.3, 0.15)
    ct = tissue(0.3, 0.15 / (1 + bp))
    mid_avg = lambda y: np.array([y[(t * 60 >= a) & (t * 60 < a + d)].mean()  # noqa: E731
                                  for a, d in zip(frames.start, frames.duration, strict=True)])
    return mid_avg(cr), mid_avg(ct) * (1 + 0.0 * rng.standard_normal())


def test_fit_cli_on_ecat_matches_nifti(tmp_path: Path):
    frames = _phantom_frames()
    rng = np.random.default_rng(0)
    shape = (4, 4, 3)
    cr, _ = _tacs(frames, 0.0, rng)
    data = np.empty((*shape, frames.n_frames))
    bp_true = np.linspace(0.2, 2.0, int(np.prod(shape))).reshape(shape)
    for idx in np.ndindex(shape):
        data[idx] = _tacs(frames, bp_true[idx], rng)[1]
    data[0, 0, 0] = cr
    ecat_path = tmp_path / "ecat_scan.v"  # no sidecar beside it
    write_ecat(ecat_path, data, frames.start, frames.duration)
    img = load_ecat(ecat_path)
    ref = np.zeros(shape, np.uint8)
    ref[0, 0, 0] = 1
    nib.save(nib.Nifti1Image(ref, img.affine), str(tmp_path / "ref.nii.gz"))
    # the same quantised data as NIfTI + sidecar: the reference result
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine), str(tmp_path / "scan.nii.gz"))
    (tmp_path / "scan.json").write_text(json.dumps({"FrameTimesStart": frames.start.tolist(),
                                                   "FrameDuration": frames.duration.tolist()}))
    for src, out in ((ecat_path, "o_ecat"), (tmp_path / "scan.nii.gz", "o_nii")):
        proc = subprocess.run([sys.executable, "-m", "voxelkit", "fit", str(src), "--ref-mask",
                               str(tmp_path / "ref.nii.gz"), "--model", "logan", "--k2prime", "0.15", "--tstar",
                               "10", "-o", str(tmp_path / out), "--device", "cpu", "--quiet"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    a = np.asarray(nib.load(str(tmp_path / "o_ecat" / "bp_nd.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(tmp_path / "o_nii" / "bp_nd.nii.gz")).dataobj)
    np.testing.assert_array_equal(a, b)
    assert np.nanmax(np.abs(a - bp_true)[1:]) < 0.1


def test_run_finds_ecat_scans_without_sidecar(tmp_path: Path):
    """A BIDS-like study whose scans are ``*_pet.v`` (no JSON): voxelkit run reads frames from the subheaders
    and reproduces the statistics of the same numbers written as NIfTI with sidecars."""
    from voxelkit.pipeline import StudyConfig, layout, run_study
    from voxelkit.pipeline.bids import find_scans
    from voxelkit.simulate.study import simulate_study

    nii = tmp_path / "nii"
    simulate_study(nii, preset="test", n_subjects=6, effect=0.15, noise=0.05, seed=3, challenge="none")
    # requantise through ECAT so that both studies hold identical numbers
    ev = tmp_path / "ecat"
    shutil.copytree(nii, ev)
    for pet in sorted(ev.glob("sub-*/ses-*/pet/*_pet.nii.gz")):
        img = nib.load(str(pet))
        meta = json.loads(pet.with_name(pet.name.replace(".nii.gz", ".json")).read_text())
        vpath = pet.with_name(pet.name.replace(".nii.gz", ".v"))
        write_ecat(vpath, np.asarray(img.dataobj, np.float64), np.asarray(meta["FrameTimesStart"]),
                   np.asarray(meta["FrameDuration"]))
        q = load_ecat(vpath)
        npet = nii / pet.relative_to(ev)
        nib.save(nib.Nifti1Image(np.asarray(q.dataobj), q.affine), str(npet))
        pet.unlink()
        pet.with_name(pet.name.replace(".nii.gz", ".json")).unlink()
    # the masks and atlas on the ECAT grid (nibabel's ECAT affine), same voxels, in both studies
    for m in sorted((nii / "derivatives" / "voxelkit-sim").glob("*.nii.gz")):
        mimg = nib.load(str(m))
        nib.save(nib.Nifti1Image(np.asarray(mimg.dataobj), q.affine), str(m))
        shutil.copy(m, ev / m.relative_to(nii))
    scans = find_scans(ev)
    assert all(s.pet.suffix == ".v" and s.sidecar == s.pet for s in scans) and len(scans) == 12
    common = dict(model="mrtm", n_perm=64, cluster_p=0.01, tfce=False, seed=1, report=False)
    run_study(StudyConfig(bids_dir=ev, output_dir=tmp_path / "o_ecat", **common), progress=False)
    run_study(StudyConfig(bids_dir=nii, output_dir=tmp_path / "o_nii", **common), progress=False)
    t_ecat = np.asarray(nib.load(str(layout.stats_dir(tmp_path / "o_ecat") / "t.nii.gz")).dataobj)
    t_nii = np.asarray(nib.load(str(layout.stats_dir(tmp_path / "o_nii") / "t.nii.gz")).dataobj)
    assert np.isfinite(t_ecat).sum() > 100
    np.testing.assert_array_equal(t_ecat, t_nii)
    prov = json.loads((tmp_path / "o_ecat" / "provenance.json").read_text())
    assert all(r["pet"].endswith("_pet.v") for r in prov["scans"])


def test_dynamic_ecat_chosen_over_static(tmp_path: Path):
    """Two ECAT reconstructions in one session, no sidecars: the one with more than one frame is used."""
    from voxelkit.pipeline.bids import find_scans, n_frames, select_scans

    pet = tmp_path / "sub-01" / "ses-1" / "pet"
    pet.mkdir(parents=True)
    data = np.random.default_rng(2).uniform(1, 5, size=(3, 3, 2, 4))
    write_ecat(pet / "sub-01_ses-1_rec-dyn_pet.v", data, np.array([0.0, 60, 120, 240]), np.array([60.0, 60, 120, 120]))
    write_ecat(pet / "sub-01_ses-1_rec-stat_pet.v", data[..., :1], np.array([1200.0]), np.array([600.0]))
    scans = find_scans(tmp_path)
    assert sorted(n_frames(s) for s in scans) == [1, 4]
    (chosen,) = select_scans(scans)
    assert chosen.entity("rec") == "dyn"
