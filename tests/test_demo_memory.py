"""The demo summarises a run from what the run holds in memory (issue 11: no re-reading of the stats maps and
per-scan maps that the result objects hold), with the same numbers as from the files."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from voxelkit.pipeline import demo


def test_demo_findings_from_memory_equal_findings_from_disk(tmp_path, monkeypatch):
    result, text, _ = demo.run_demo(tmp_path / "d", design="release", analysis="activation", n_subjects=6,
                                    resolution=4, n_perm=64, noise=0.0, progress=False)
    cfg = result.config
    assert result.stats is not None and result.fits is not None
    disk = demo.region_findings(result.output_dir, cfg.atlas, cfg.atlas_labels)
    assert disk, "the demo atlas has regions"

    real_load = nib.load
    stats_dir = str(result.output_dir / "group")

    def guarded(path, *a, **k):
        assert not str(path).startswith(stats_dir), f"re-read {path}"
        assert "_mimap" not in str(path) or "truepeak" in str(path), f"re-read a fitted map {path}"
        return real_load(path, *a, **k)

    monkeypatch.setattr(nib, "load", guarded)
    memory = demo._findings(result)
    assert [f.region for f in memory] == [f.region for f in disk]
    for m, d in zip(memory, disk, strict=True):
        assert m.n_voxels == d.n_voxels and m.planted == d.planted
        for k in d.best:
            assert np.isclose(m.best[k], d.best[k], rtol=1e-6) and m.frac_sig[k] == d.frac_sig[k], (m.region, k)
    # the per-scan activation maps come from memory and equal the written ones
    sub, ses = result.subjects[0], cfg.conditions[0]
    mem = demo._scan_map(result, sub, ses, "bp_nd", "baseline")
    monkeypatch.setattr(nib, "load", real_load)
    result.fits = None
    np.testing.assert_array_equal(mem, demo._scan_map(result, sub, ses, "bp_nd", "baseline"))
