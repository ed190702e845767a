"""The pipeline stages called alone (fit_scans -> contrast_maps -> group_stats) give what run_study gives."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from voxelkit.io import InputError
from voxelkit.outputs import LOCK_NAME
from voxelkit.pipeline import ScanFits, StudyConfig, contrast_maps, fit_scans, group_stats, layout, run_study

N_SUBJECTS = 6


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    from voxelkit.simulate.study import simulate_study

    root = tmp_path_factory.mktemp("stages") / "bids"
    simulate_study(root, preset="test", n_subjects=N_SUBJECTS, effect=0.15, noise=0.05, seed=3, challenge="none")
    return root


def _cfg(bids: Path, out: Path, **kw) -> StudyConfig:
    base = dict(bids_dir=bids, output_dir=out, model="mrtm", n_perm=64, cluster_p=0.01, tfce=True, seed=1,
                smoothing_fwhm=4.0, report=False)
    base.update(kw)
    return StudyConfig(**base)


@pytest.fixture(scope="module")
def whole(study: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "out"
    return run_study(_cfg(study, out), progress=False)


def test_stages_by_hand_equal_run_study(study: Path, whole, tmp_path: Path, monkeypatch):
    cfg = _cfg(study, tmp_path / "out")
    fits = fit_scans(cfg)
    assert isinstance(fits, ScanFits)
    assert fits.fitted == 2 * N_SUBJECTS and fits.reused == 0 and fits.subjects == whole.subjects
    assert not (tmp_path / "out" / LOCK_NAME).exists()
    # the stage objects hold the maps: the later stages read no image
    assert set(fits.maps) == {(s, c) for s in fits.subjects for c in cfg.conditions}
    for (sub, cond), vol in fits.maps.items():
        assert isinstance(vol, np.ndarray) and vol.ndim == 3 and vol.dtype == np.float32
        on_disk = np.asarray(nib.load(str(layout.map_path(cfg.output_dir, sub, cond, "mrtm", "bp_nd"))).dataobj)
        np.testing.assert_array_equal(vol, on_disk.astype(np.float32))
    assert fits.mask.dtype == bool and fits.mask.shape == fits.maps[(fits.subjects[0], "anakinra")].shape

    def no_read(*a, **k):
        raise AssertionError(f"image read again: {a}")

    monkeypatch.setattr(nib, "load", no_read)
    a, b, mask, affine = contrast_maps(cfg, fits)
    assert len(a) == len(b) == N_SUBJECTS and all(isinstance(m, np.ndarray) and m.ndim == 3 for m in a + b)
    res = group_stats(cfg, a, b, mask, affine, fits=fits)
    monkeypatch.undo()

    ref = whole.stats
    assert set(res.maps) == set(ref.maps)
    for name in ref.maps:
        np.testing.assert_array_equal(res.maps[name], ref.maps[name], err_msg=name)
    t_ref = np.asarray(nib.load(str(layout.stats_dir(whole.output_dir) / "t.nii.gz")).dataobj)
    t_new = np.asarray(nib.load(str(layout.stats_dir(cfg.output_dir) / "t.nii.gz")).dataobj)
    assert t_ref.tobytes() == t_new.tobytes()
    for sub in whole.subjects:
        rel = layout.contrast_path(whole.output_dir, sub, "bp_ndanakinraminusplacebo").relative_to(whole.output_dir)
        assert (whole.output_dir / rel).read_bytes() == (cfg.output_dir / rel).read_bytes() or np.array_equal(
            np.asarray(nib.load(str(whole.output_dir / rel)).dataobj),
            np.asarray(nib.load(str(cfg.output_dir / rel)).dataobj))
    # the stages wrote into the manifest: a later run_study reuses every fit and gives the same t map
    again = run_study(cfg, progress=False)
    assert again.fitted == 0 and again.reused == 2 * N_SUBJECTS
    np.testing.assert_array_equal(again.stats.maps["t"], ref.maps["t"])
    manifest = json.loads((cfg.output_dir / "voxelkit_manifest.json").read_text())
    assert manifest["complete"] is True and all((cfg.output_dir / w).exists() for w in manifest["written"])


def test_fit_scans_reuses_the_cache_of_run_study(study: Path, whole):
    fits = fit_scans(_cfg(study, whole.output_dir))
    assert fits.fitted == 0 and fits.reused == 2 * N_SUBJECTS
    np.testing.assert_array_equal(np.stack([fits.maps[(s, "anakinra")] for s in fits.subjects]).shape[0],
                                  N_SUBJECTS)


def test_group_stats_with_covariates_equals_run_study(study: Path, tmp_path: Path):
    """The centred-covariate GLM: by hand and through run_study."""
    parts = (study / "participants.tsv").read_text().splitlines()
    if "age" not in parts[0].split("\t"):
        pytest.fail("the simulated participants.tsv has no age column")
    cfg = _cfg(study, tmp_path / "a", covariates=["age"], tfce=False)
    whole = run_study(cfg, progress=False)
    cfg2 = _cfg(study, tmp_path / "b", covariates=["age"], tfce=False)
    fits = fit_scans(cfg2)
    assert fits.covariates is not None and fits.covariates.q >= 1
    a, b, mask, affine = contrast_maps(cfg2, fits)
    res = group_stats(cfg2, a, b, fits=fits)
    np.testing.assert_array_equal(res.maps["t"], whole.stats.maps["t"])


def test_stage_alone_respects_the_folder_lock(study: Path, whole, tmp_path: Path):
    cfg = _cfg(study, whole.output_dir)
    fits = fit_scans(cfg)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": "voxelkit run",
              "started": "2026-12-01T09:00:00+00:00"}
    lock = whole.output_dir / LOCK_NAME
    lock.write_text(json.dumps(holder))
    try:
        with pytest.raises(InputError, match="in use by voxelkit run"):
            contrast_maps(cfg, fits)
        assert json.loads(lock.read_text()) == holder
    finally:
        lock.unlink()


def test_group_stats_without_mask_is_one_line(study: Path, tmp_path: Path):
    cfg = _cfg(study, tmp_path / "out")
    with pytest.raises(InputError, match="mask") as exc:
        group_stats(cfg, [np.zeros((2, 2, 2))] * 6, [np.zeros((2, 2, 2))] * 6)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_roi_tables_and_provenance_alone_equal_run_study(study: Path, whole, tmp_path: Path, monkeypatch):
    """roi_tables and provenance called alone on the in-memory stage objects: the same tables and records as
    run_study's, and no image read."""
    from voxelkit.io import read_table
    from voxelkit.pipeline import RoiTables, provenance, roi_tables

    cfg = _cfg(study, tmp_path / "out")
    fits = fit_scans(cfg)
    a, b, mask, affine = contrast_maps(cfg, fits)
    res = group_stats(cfg, a, b, mask, affine, fits=fits)

    def no_read(*a, **k):
        raise AssertionError(f"image read again: {a}")

    monkeypatch.setattr(nib, "load", no_read)
    roi = roi_tables(cfg, fits)
    prov = provenance(cfg, fits, res)
    monkeypatch.undo()
    assert isinstance(roi, RoiTables) and roi.tests and roi.values
    same = json.dumps  # NaN (pct_change near BPND 0) compares equal as text
    assert same(roi.tests) == same(whole.roi_tests)  # the same paired tests per region as run_study
    assert whole.roi is not None and same(roi.values) == same(whole.roi.values)
    assert roi.paths["tests"] == layout.roi_tests_path(cfg.output_dir)
    on_disk = read_table(layout.roi_values_path(cfg.output_dir), what="roi values")
    assert len(on_disk.rows) == len(roi.values)
    assert (layout.roi_tests_path(cfg.output_dir).read_text() == layout.roi_tests_path(whole.output_dir).read_text())
    written = json.loads((cfg.output_dir / "provenance.json").read_text())
    assert written["inputs"] == json.loads(json.dumps(prov["inputs"]))
    assert written["subjects"] == whole.subjects and written["inference"]["n_perm"] == 64
    assert json.loads((cfg.output_dir / "study.json").read_text()) == json.loads(json.dumps(cfg.to_dict()))
    ref = json.loads((whole.output_dir / "provenance.json").read_text())
    for key in ("inputs", "subjects", "dropped_subjects", "scans", "settings", "inference", "k2prime_per_scan"):
        if key == "settings":
            assert {k: v for k, v in written[key].items() if k != "output_dir"} == \
                {k: v for k, v in ref[key].items() if k != "output_dir"}
        else:
            assert written[key] == ref[key], key
    manifest = json.loads((cfg.output_dir / "voxelkit_manifest.json").read_text())
    assert {"provenance.json", "study.json", "roi/roi_values.tsv", "roi/roi_tests.tsv"} <= set(manifest["written"])


def test_each_image_read_at_most_once_per_run(study: Path, tmp_path: Path, monkeypatch):
    """Counting nibabel.load (under every voxelkit loader): a fresh run opens each PET and each mask once and no
    fitted map (they are kept from the fits); a run reusing the fits opens each map once."""
    import collections

    counts: collections.Counter = collections.Counter()
    real = nib.load

    def counting(path, *a, **k):
        counts[Path(path).resolve()] += 1
        return real(path, *a, **k)

    monkeypatch.setattr(nib, "load", counting)
    out = tmp_path / "out"
    for attempt in ("fresh", "reuse"):
        counts.clear()
        res = run_study(_cfg(study, out, tfce=False, cluster_p=0.01, n_perm=32), progress=False)
        assert counts and max(counts.values()) == 1, (attempt, {str(k): v for k, v in counts.items() if v > 1})
        maps = [p for p in counts if p.is_relative_to(out.resolve())]
        pets = [p for p in counts if p.name.endswith("_pet.nii.gz")]
        masks = [p for p in counts if "derivatives" in p.parts]
        assert len(pets) == 2 * N_SUBJECTS and len(masks) == 3, sorted(map(str, counts))  # ref, brain, atlas
        if attempt == "fresh":
            assert res.fitted == 2 * N_SUBJECTS and maps == []
        else:
            assert res.reused == 2 * N_SUBJECTS and len(maps) == 2 * N_SUBJECTS
