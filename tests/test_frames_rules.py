"""Frame-timing rules: windows by mid-time, implausible timing (minutes / milliseconds), InjectionStart offset."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_models_mrtm import truth_tacs

from voxelkit.api import fit
from voxelkit.cli import main
from voxelkit.frames import FrameError, FrameTiming
from voxelkit.io import read_tac_table
from voxelkit.models.mrtm import MRTM


def late_start_schedule() -> FrameTiming:
    """A 90-min schedule whose first frame starts 10 s after injection: 6x30 s, 7x60 s, 16x300 s."""
    d = np.repeat([30.0, 60.0, 300.0], [6, 7, 16])
    return FrameTiming(10.0 + np.concatenate([[0.0], np.cumsum(d)[:-1]]), d)


# ---------------------------------------------------------------------------------------------------------
# windows
# ---------------------------------------------------------------------------------------------------------
def test_tiling_windows_use_every_frame_exactly_once() -> None:
    fr = late_start_schedule()
    a = fr.window_mask(0.0, 45.0)
    b = fr.window_mask(45.0, 90.0)
    assert not (a & b).any() and (a | b).all()  # no frame lost, none twice
    # the rule is the mid-time, independently computed
    mid = (fr.start + fr.duration / 2) / 60.0
    np.testing.assert_array_equal(a, mid < 45.0)
    # the frames the old "wholly inside" rule lost: the one crossing 45 min and the last (ends at 90:10)
    wholly = [(fr.start / 60 >= lo) & (fr.end / 60 <= hi) for lo, hi in ((0, 45), (0, 90))]
    assert int((~(wholly[0] | ((fr.start / 60 >= 45) & (fr.end / 60 <= 90)))).sum()) == 2
    assert not wholly[1][-1]


def test_window_frames_are_logged_and_straddlers_warned(caplog) -> None:
    fr = late_start_schedule()
    crossing = int(np.flatnonzero((fr.start < 2700) & (fr.end > 2700))[0])
    with caplog.at_level(logging.INFO, logger="voxelkit"):
        keep = fr.describe_window(0.0, 45.0, what="baseline window")
    text = caplog.text
    idx = np.flatnonzero(keep)
    assert f"frames {idx[0]}-{idx[-1]} ({idx.size} frames" in text
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and f"frame {crossing} " in warned[0].getMessage()
    assert fr.window_straddlers(45.0, 90.0) == [crossing, fr.n_frames - 1]


def test_models_use_the_mid_time_rule() -> None:
    ct, cr, _, _, fr = truth_tacs(n=5)
    f = MRTM(window=(0.0, 45.0)).fit(ct, cr, fr)
    np.testing.assert_array_equal(f.used_frames, fr.mid_min < 45.0)


# ---------------------------------------------------------------------------------------------------------
# implausible timing
# ---------------------------------------------------------------------------------------------------------
def _minutes_meta() -> dict:
    start = [0, 1, 2, 3, 5, 10, 15, 20, 30, 45, 60, 75]
    dur = [1, 1, 1, 2, 5, 5, 5, 10, 15, 15, 15, 15]  # 0 ... 90, in minutes
    return {"FrameTimesStart": start, "FrameDuration": dur}


def test_frame_times_in_minutes_are_refused() -> None:
    with pytest.raises(FrameError, match="look like minutes") as ei:
        FrameTiming.from_bids_dict(_minutes_meta(), source="sub-01_pet.json")
    assert "sub-01_pet.json" in str(ei.value)


def test_frame_times_in_milliseconds_and_subsecond_frames_are_refused() -> None:
    ms = {k: [v * 60000 for v in vals] for k, vals in _minutes_meta().items()}
    with pytest.raises(FrameError, match="milliseconds"):
        FrameTiming.from_bids_dict(ms, source="x.json")
    short = {"FrameTimesStart": [0.0, 0.5, 600.0], "FrameDuration": [0.5, 599.5, 600.0]}
    with pytest.raises(FrameError, match="frame 0 .*lasts 0.5 s"):
        FrameTiming.from_bids_dict(short, source="x.json")
    # a normal schedule passes
    FrameTiming.from_bids_dict(late_start_schedule().to_bids_dict(), source="ok.json")


def test_cli_fit_with_minutes_stops_naming_the_sidecar(tmp_path: Path, capsys) -> None:
    shape = (3, 2, 2)
    meta = _minutes_meta()
    data = np.ones(shape + (len(meta["FrameTimesStart"]),), np.float32)
    pet = tmp_path / "sub-01_pet.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), pet)
    (tmp_path / "sub-01_pet.json").write_text(json.dumps(meta))
    ref = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, np.uint8), np.eye(4)), ref)
    out = tmp_path / "out"
    rc = main(["fit", str(pet), "--ref-mask", str(ref), "-o", str(out), "--model", "srtm", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "sub-01_pet.json" in err and "look like minutes" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_tac_table_in_minutes_is_refused(tmp_path: Path) -> None:
    m = _minutes_meta()
    lines = ["frame_start\tframe_end\tReference\tROI1"]
    for s, d in zip(m["FrameTimesStart"], m["FrameDuration"], strict=True):
        lines.append(f"{s}\t{s + d}\t1.0\t2.0")
    tsv = tmp_path / "tacs.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    with pytest.raises(FrameError, match="tacs.tsv.*look like minutes"):
        read_tac_table(tsv)


# ---------------------------------------------------------------------------------------------------------
# time zero and injection
# ---------------------------------------------------------------------------------------------------------
def _image_study(tmp: Path, meta: dict, name: str) -> tuple[Path, Path]:
    ct, cr, _, _, fr = truth_tacs(n=12, seed=4)
    shape = (4, 2, 2)
    data = np.zeros(shape + (fr.n_frames,), np.float32)
    data[:, :, 0] = ct[:8].reshape(4, 2, -1)
    data[:, :, 1] = cr
    ref = np.zeros(shape, np.uint8)
    ref[:, :, 1] = 1
    pet = tmp / f"{name}_pet.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), pet)
    (tmp / f"{name}_pet.json").write_text(json.dumps(meta))
    refp = tmp / "ref.nii.gz"
    nib.save(nib.Nifti1Image(ref, np.eye(4)), refp)
    return pet, refp


def test_injection_start_offset_gives_the_same_bpnd(tmp_path: Path) -> None:
    fr = truth_tacs(n=12, seed=4)[4]
    plain = fr.to_bids_dict()
    shifted = {"FrameTimesStart": (fr.start + 60.0).tolist(), "FrameDuration": fr.duration.tolist(),
               "InjectionStart": 60.0, "ScanStart": 60.0, "TimeZero": "10:00:00"}
    pet0, ref = _image_study(tmp_path, plain, "sub-01")
    pet1, _ = _image_study(tmp_path, shifted, "sub-02")
    kw = {"model": "mrtm", "device": "cpu"}  # trapezoid from a zero at injection: sensitive to the time origin
    f0 = fit(pet0, reference=ref, **kw)
    f1 = fit(pet1, reference=ref, **kw)
    np.testing.assert_array_equal(f1.frames.start, fr.start)
    assert f1.frames.injection_offset_s == 60.0 and f1.info["injection_offset_s"] == 60.0
    assert f1.sidecar()["InjectionOffset"] == 60.0 and f0.sidecar()["InjectionOffset"] == 0.0
    np.testing.assert_allclose(f1.bp_nd, f0.bp_nd, rtol=0, atol=1e-6)
    assert np.isfinite(f0.bp_nd[::2]).all()  # tissue voxels (the odd ones are the reference region)
    # ignoring the offset would have changed the answer (the test can fail)
    wrong = FrameTiming(fr.start + 60.0, fr.duration)
    f2 = fit(pet1, reference=ref, frames=wrong, **kw)
    assert np.abs(f2.bp_nd - f0.bp_nd)[::2].max() > 1e-3


def test_frames_before_injection_are_an_error() -> None:
    meta = {"FrameTimesStart": [0.0, 30.0, 60.0, 600.0], "FrameDuration": [30.0, 30.0, 540.0, 600.0],
            "InjectionStart": 20.0}
    with pytest.raises(FrameError, match="before the injection.*InjectionStart 20 s"):
        FrameTiming.from_bids_dict(meta, source="s.json")
    with pytest.raises(FrameError, match="InjectionStart must be a number"):
        FrameTiming.from_bids_dict({**meta, "InjectionStart": "10:00"}, source="s.json")


def test_select_keeps_the_offset() -> None:
    meta = {"FrameTimesStart": [60.0, 360.0, 660.0], "FrameDuration": [300.0, 300.0, 300.0], "InjectionStart": 60}
    fr = FrameTiming.from_bids_dict(meta)
    assert fr.select([1, 2]).injection_offset_s == 60.0 and fr.start[0] == 0.0
