"""The Python API contract (issue 11): one vocabulary (``reference=``, ``k2prime=``), array inputs, ``fit.map``,
discoverable parameters, sidecars that rebuild their model, one C-11 constant, and an unbiased ``"median"`` k2'."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_cli_fit import write_study
from test_models_mrtm import SIMREF, truth_tacs

import voxelkit
from voxelkit.frames import FrameTiming
from voxelkit.io import InputError
from voxelkit.models import MODELS, get_model


@pytest.fixture()
def study(tmp_path: Path) -> dict[str, Path]:
    return write_study(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# fit(): k2prime= number | "median" | mask image; fit.map; arrays
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k2prime", ["hb", 0.1, "median"])
def test_fit_srtm2_k2prime_sources_and_map(study: dict[str, Path], k2prime) -> None:
    brain = nib.load(study["brain"])
    k2 = str(study["hb"]) if k2prime == "hb" else k2prime
    fit = voxelkit.fit(str(study["pet"]), reference=str(study["ref"]), model="srtm2", mask=brain, k2prime=k2,
                       device="cpu")
    bp = fit.map("bp_nd")
    pet = nib.load(study["pet"])
    assert isinstance(bp, nib.Nifti1Image) and bp.shape == pet.shape[:3]
    np.testing.assert_allclose(bp.affine, pet.affine)
    inside = np.asarray(brain.dataobj).astype(bool)
    np.testing.assert_array_equal(np.asarray(bp.dataobj)[inside], fit.params["bp_nd"])
    assert np.isnan(np.asarray(bp.dataobj)[~inside]).all()
    assert fit.info["k2prime"] == pytest.approx(0.1, abs=2e-3)
    _, _, bp_true, _, _ = truth_tacs(n=90, seed=3)
    np.testing.assert_allclose(fit.bp_nd, bp_true[: inside.sum()], atol=0.03)
    if k2prime == "hb":
        assert fit.info["k2prime_source"].startswith("SRTM fit") and fit.info["k2prime_mask"]["n_voxels"] == 1
    if k2prime == "median":
        assert fit.info["k2prime_method"] == "median_over_ratio_selected"
        assert fit.sidecar()["Info"]["k2prime_method"] == "median_over_ratio_selected"
    assert fit.map("status").get_data_dtype() == np.uint8
    with pytest.raises(KeyError, match="bp_nd"):
        fit.map("bpnd")


def test_fit_takes_an_array_affine_pair_a_tac_and_a_boolean_mask(study: dict[str, Path]) -> None:
    pet = nib.load(study["pet"])
    data4d, affine = np.asarray(pet.dataobj), pet.affine
    frames = FrameTiming.from_bids_json(study["pet"].with_suffix("").with_suffix(".json"))
    mask3d = np.asarray(nib.load(study["brain"]).dataobj).astype(bool)
    ref_tac = data4d[:, :, 3].reshape(-1, data4d.shape[3]).mean(axis=0)
    fit = voxelkit.fit((data4d, affine), reference=ref_tac, frames=frames, mask=mask3d, model="mrtm")
    by_path = voxelkit.fit(str(study["pet"]), reference=str(study["ref"]), mask=str(study["brain"]), model="mrtm")
    np.testing.assert_allclose(fit.bp_nd, by_path.bp_nd, rtol=1e-5, atol=1e-6)
    assert fit.map("bp_nd").shape == mask3d.shape
    # a boolean array as the reference mask and as the k2' region
    ref3d = np.asarray(nib.load(study["ref"]).dataobj).astype(bool)
    hb3d = np.asarray(nib.load(study["hb"]).dataobj).astype(bool)
    g = voxelkit.fit((data4d, affine), reference=ref3d, frames=frames, mask=mask3d, model="mrtm2", k2prime=hb3d)
    h = voxelkit.fit(str(study["pet"]), reference=str(study["ref"]), mask=str(study["brain"]), model="mrtm2",
                     k2prime=str(study["hb"]))
    assert g.info["k2prime"] == pytest.approx(h.info["k2prime"], rel=1e-9)
    with pytest.raises(InputError, match="shape"):
        voxelkit.fit((data4d, affine), reference=ref_tac, frames=frames, mask=mask3d[:-1])


def test_fit_old_k2prime_mask_keyword_is_a_deprecated_alias(study: dict[str, Path], caplog, monkeypatch) -> None:
    monkeypatch.setattr("voxelkit.api._WARNED", set())  # each deprecated keyword is logged once per process
    kw = {"reference": str(study["ref"]), "mask": str(study["brain"]), "model": "mrtm2"}
    with caplog.at_level(logging.WARNING, logger="voxelkit"):
        old = voxelkit.fit(str(study["pet"]), k2prime_mask=str(study["hb"]), **kw)
    assert any("DEPRECATED" in r.getMessage() and "k2prime_mask" in r.getMessage() for r in caplog.records)
    new = voxelkit.fit(str(study["pet"]), k2prime=str(study["hb"]), **kw)
    np.testing.assert_array_equal(old.bp_nd, new.bp_nd)
    with pytest.raises(InputError, match="only one source"):
        voxelkit.fit(str(study["pet"]), k2prime=0.1, k2prime_mask=str(study["hb"]), **kw)
    with pytest.raises(InputError, match="only applies"):
        voxelkit.fit(str(study["pet"]), reference=str(study["ref"]), model="mrtm", k2prime=str(study["hb"]))


# ---------------------------------------------------------------------------------------------------------
# fit_tacs(): reference= and k2prime= (column); ref= / k2prime_region= deprecated
# ---------------------------------------------------------------------------------------------------------
def test_fit_tacs_reference_and_k2prime_column(caplog, monkeypatch) -> None:
    monkeypatch.setattr("voxelkit.api._WARNED", set())
    path = SIMREF / "hukw_1_tacs.tsv"
    rows = voxelkit.fit_tacs(str(path), reference="Reference", model="mrtm2", k2prime="ROI1",
                             weights="kinfitr_weight").rows()
    assert [r["region"] for r in rows] == ["ROI1", "ROI2", "ROI3"]
    assert rows[1]["bp_nd"] == pytest.approx(0.808238253648889, abs=1e-5)  # kinfitr 0.9.1 mrtm2
    with caplog.at_level(logging.WARNING, logger="voxelkit"):
        old = voxelkit.fit_tacs(str(path), ref="Reference", model="mrtm2", k2prime_region="ROI1",
                                weights="kinfitr_weight").rows()
    msgs = [r.getMessage() for r in caplog.records if "DEPRECATED" in r.getMessage()]
    assert any("ref=" in m for m in msgs) and any("k2prime_region=" in m for m in msgs)
    assert old == rows
    # SRTM2 takes the same column (it need not be a fitted region)
    s = voxelkit.fit_tacs(str(path), reference="Reference", model="srtm2", k2prime="ROI1", regions=["ROI2"])
    f = voxelkit.fit_tacs(str(path), reference="Reference", model="srtm", regions=["ROI1"])
    assert s.info["k2prime"] == pytest.approx(float(f.k2prime[0]), rel=1e-4)
    with pytest.raises(InputError, match="only applies"):
        voxelkit.fit_tacs(str(path), reference="Reference", model="mrtm", k2prime="ROI1")


# ---------------------------------------------------------------------------------------------------------
# parameters discoverable
# ---------------------------------------------------------------------------------------------------------
def test_params_dir_and_attribute_errors() -> None:
    ct, cr, _, _, fr = truth_tacs(n=5)
    fit = get_model("mrtm").fit(ct, cr, fr)
    assert isinstance(fit.params, dict) and set(fit.params) == {"bp_nd", "r1", "k2", "k2prime", "wrss"}
    assert set(fit.params) <= set(dir(fit)) and "map" in dir(fit)
    assert fit.bp_nd is fit.params["bp_nd"]
    with pytest.raises(AttributeError, match=r"bp_nd.*did you mean 'bp_nd'") as ei:
        fit.bpnd  # noqa: B018
    assert "parameters: bp_nd, r1, k2, k2prime, wrss" in str(ei.value)
    with pytest.raises(ValueError, match="masker"):
        fit.map("bp_nd")


# ---------------------------------------------------------------------------------------------------------
# a written sidecar rebuilds its model
# ---------------------------------------------------------------------------------------------------------
ROUND_TRIP = {
    "logan": {"tstar": 20.0, "k2prime": 0.1, "end": 80.0, "weights": "duration"},
    "lpntpet": {"challenge_window": [40.0, 60.0], "alphas": [1.0, 2.0], "p_eff": 5.0},
    "lpntpet2": {"k2prime": 0.1, "challenge_window": [40.0, 60.0], "alphas": [1.0], "p_eff": 4.0},
    "mrtm": {"window": [0.0, 60.0], "integration": "frame_average"},
    "mrtm2": {"k2prime": "median", "k2prime_window": [0.0, 60.0], "weights": "counts", "half_life_min": 109.77},
    "ratio": {"window": [30.0, 90.0]},
    "srtm": {"theta3_range": [0.005, 1.0], "n_basis": 60, "bp_max": 6.0},
    "srtm2": {"k2prime": "median", "n_basis": 40, "input_model": "mid_linear"},
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sidecar_options_rebuild_an_equal_model(name: str, tmp_path: Path) -> None:
    assert set(ROUND_TRIP) == set(MODELS)
    ct, cr, _, _, fr = truth_tacs(n=12)
    noisy = ct * (1 + 0.01 * np.random.default_rng(0).standard_normal(ct.shape))
    fit = get_model(name, **ROUND_TRIP[name]).fit(noisy, cr, fr)
    side = json.loads(json.dumps(fit.sidecar()))  # as written to disk
    opts = side["Options"]
    assert not [k for k in opts if k.endswith(("_min", "_per_min")) and k != "half_life_min"], opts
    for k, v in ROUND_TRIP[name].items():
        assert opts[k] == v, k
    assert {k: side["Units"][k] for k in ("window",) if k in opts} == {"window": "min"} or "window" not in opts
    rebuilt = get_model(side["Model"], **opts)
    assert rebuilt.options() == fit.model_obj.options()
    again = rebuilt.fit(noisy, cr, fr)
    for k in fit.params:
        np.testing.assert_array_equal(again.params[k], fit.params[k])


def test_sidecar_units_and_region_k2prime_becomes_the_value(study: dict[str, Path]) -> None:
    fit = voxelkit.fit(str(study["pet"]), reference=str(study["ref"]), mask=str(study["brain"]), model="mrtm2",
                       k2prime=str(study["hb"]))
    side = fit.sidecar()
    assert side["Options"]["k2prime"] == pytest.approx(fit.info["k2prime"])
    assert side["Units"]["k2prime"] == "1/min" and side["Units"]["half_life_min"] == "min"
    assert get_model("mrtm2", **side["Options"]).k2prime == pytest.approx(fit.info["k2prime"])


#: Every way of giving k2' to the models that take one, and the models without one (voxelkit.fit on images).
K2_SOURCES = [("logan", 0.1), ("srtm", 0.1), ("mrtm", None), ("ratio", None), ("lpntpet", None),
              *((m, k) for m in ("lpntpet2", "mrtm2", "srtm2") for k in (0.1, "median", "mask"))]


@pytest.mark.parametrize(("name", "k2prime"), K2_SOURCES, ids=[f"{m}-{k}" for m, k in K2_SOURCES])
def test_written_sidecar_rebuilds_the_model_for_every_k2prime_source(study: dict[str, Path], tmp_path: Path,
                                                                     name: str, k2prime) -> None:
    """The fit.json on disk: ``Options`` are constructor keywords (no unit suffixes), ``Units`` gives a unit for
    every option that has one, and ``get_model(Model, **Options)`` refits the same TACs to the same parameters.
    A k2' from a mask is recorded as the value used (its source in ``Info``; no path in ``Options``); "median" is
    recorded as "median" (re-estimated from the same TACs: the same value)."""
    from voxelkit.io import derivatives as dv
    from voxelkit.models.options import SPECS

    kw = {"challenge_window": [40.0, 60.0]} if name.startswith("lpntpet") else {}
    if name == "logan":
        kw["tstar"] = 20.0
    if k2prime is not None:
        kw["k2prime"] = str(study["hb"]) if k2prime == "mask" else k2prime
    fit = voxelkit.fit(str(study["pet"]), reference=str(study["ref"]), mask=str(study["brain"]), model=name,
                       device="cpu", **kw)
    fit.save(tmp_path / "out", inputs=[study["pet"]])
    side = json.loads((tmp_path / "out" / dv.fit_sidecar_name()).read_text())
    opts = side["Options"]
    assert side["Model"] == name
    assert not [k for k in opts if k.endswith(("_min", "_per_min")) and k != "half_life_min"], opts
    units = {k: SPECS[k].unit for k in opts if k in SPECS and SPECS[k].unit}
    assert {k: side["Units"][k] for k in units} == units
    if k2prime == "mask":
        assert isinstance(opts["k2prime"], float) and opts["k2prime"] == pytest.approx(fit.info["k2prime"])
        assert str(study["hb"]) not in json.dumps(opts) and "k2prime_source" in side["Info"]
    elif k2prime is not None:
        assert opts["k2prime"] == k2prime and side["Units"]["k2prime"] == "1/min"
    else:
        assert "k2prime" not in opts
    rebuilt = get_model(side["Model"], **opts)
    tacs, ref = fit.inputs
    again = rebuilt.fit(tacs, ref, fit.frames)
    for k in fit.params:
        np.testing.assert_array_equal(again.params[k], fit.params[k], err_msg=k)
    if k2prime is not None and name != "logan" and name != "srtm":
        assert again.info.get("k2prime", opts["k2prime"]) == pytest.approx(fit.info.get("k2prime", k2prime))
    # a region in a hand-edited sidecar cannot rebuild a model: one line naming the option
    if k2prime == "mask":
        with pytest.raises(InputError, match=r"k2prime must be a rate in 1/min or 'median', got '.*hb"):
            get_model(name, **{**opts, "k2prime": str(study["hb"])})


@pytest.mark.parametrize("name", ["mrtm2", "srtm2", "lpntpet2"])
def test_sidecar_of_a_k2prime_column_rebuilds_the_model(name: str) -> None:
    """fit_tacs with k2prime=<column>: the sidecar holds the value it gave (1/min) and rebuilds the model."""
    kw = {"challenge_window": [40.0, 60.0]} if name == "lpntpet2" else {}
    fit = voxelkit.fit_tacs(str(SIMREF / "hukw_1_tacs.tsv"), reference="Reference", model=name, k2prime="ROI1",
                            regions=["ROI2", "ROI3"], **kw)
    side = json.loads(json.dumps(fit.sidecar()))
    assert side["Options"]["k2prime"] == pytest.approx(fit.info["k2prime"])
    assert "ROI1" not in json.dumps(side["Options"]) and side["Units"]["k2prime"] == "1/min"
    again = get_model(side["Model"], **side["Options"]).fit(*fit.inputs, fit.frames)
    for k in fit.params:
        np.testing.assert_array_equal(again.params[k], fit.params[k], err_msg=k)


def test_get_model_checks_options_against_the_constructor(caplog) -> None:
    with pytest.raises(InputError, match=r"does not take option 'tstr' \(did you mean 'tstar'\?\)"):
        get_model("logan", tstr=20.0)
    with pytest.raises(InputError, match="does not take option 'tstar'.*its options: window"):
        get_model("mrtm", tstar=20.0)
    with caplog.at_level(logging.WARNING, logger="voxelkit"):
        m = get_model("logan", tstar_min=20.0, k2prime_per_min=0.1, window_min=None)
        s = get_model("srtm", theta3_range_per_min="auto", n_basis=40)  # a wave-1 sidecar's Options
    assert m.tstar == 20.0 and m.k2prime == 0.1 and s.theta3_range is None and s.n_basis == 40
    assert any("DEPRECATED" in r.getMessage() and "tstar_min" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------------------
# one C-11 half-life, one BLAS helper
# ---------------------------------------------------------------------------------------------------------
def test_one_c11_half_life_and_one_blas_helper() -> None:
    import voxelkit.models.base as base
    import voxelkit.models.lpntpet as lpntpet
    import voxelkit.models.srtm as srtm
    import voxelkit.simulate.kinetics as kinetics
    from voxelkit import constants, threads

    assert constants.C11_HALF_LIFE_MIN == 20.364
    assert kinetics.C11_HALF_LIFE_MIN == base.C11_HALF_LIFE_MIN == constants.C11_HALF_LIFE_MIN
    assert srtm.blas_single_thread is threads.blas_single_thread is lpntpet.blas_single_thread
    assert not hasattr(srtm, "_blas_single_thread")
    import voxelkit.models.logan as logan
    import voxelkit.models.mrtm as mrtm
    assert not hasattr(mrtm, "fit_k2prime") and not hasattr(logan, "weighted_line")


# ---------------------------------------------------------------------------------------------------------
# k2prime="median" is not biased by voxel noise (wave-1 finding)
# ---------------------------------------------------------------------------------------------------------
def _noisy_bolus_infusion(n: int = 10000, cov: float = 0.2, seed: int = 1):
    from voxelkit.simulate.kinetics import FengInput, carfentanil_frames, decay_factor, srtm_tacs

    fr = carfentanil_frames()
    rng = np.random.default_rng(seed)
    hb = rng.random(n) < 0.15  # a high-binding region (BPND 2-3.5) among BPND 0.2-1.5
    bp = np.where(hb, rng.uniform(2.0, 3.5, n), rng.uniform(0.2, 1.5, n))
    r1 = rng.uniform(0.7, 1.3, n)
    ct, cr = srtm_tacs(fr, r1, bp, k2prime=0.1, inp=FengInput(kbol=80.0))
    dec = decay_factor(fr)
    k = cov * np.sqrt(cr[-1] * dec[-1] * fr.duration_min[-1])  # COV `cov` for a reference voxel, last frame
    sd = np.sqrt(np.maximum(ct, 0) / (dec * fr.duration_min)[None]) * k  # counting noise of decayed activity
    return (ct + sd * rng.standard_normal(ct.shape)).astype(np.float32), cr, fr, bp, hb


@pytest.mark.parametrize("model", ["mrtm2", "srtm2"])
def test_k2prime_median_is_unbiased_on_noisy_voxels(model: str) -> None:
    """Noisy bolus-infusion voxels, k2' from the baseline frames (0-45 min): the old rule (median over the voxels
    of highest first-pass BPND and lowest residual; voxelkit before this release) gives 0.064/min (MRTM2) / 0.078
    (SRTM2) on these data for a true 0.1, and high-binding BPND +19 % / +9 %; the ratio selection gives 0.099 /
    0.100 and BPND within 0.1 %."""
    tacs, cr, fr, bp, hb = _noisy_bolus_infusion()
    fit = get_model(model, k2prime="median", k2prime_window=(0.0, 45.0)).fit(tacs, cr, fr)
    assert fit.info["k2prime"] == pytest.approx(0.1, rel=0.05)
    assert abs(np.nanmedian(fit.bp_nd[hb] / bp[hb]) - 1.0) < 0.03
    assert fit.info["k2prime_method"] == "median_over_ratio_selected"
    assert fit.info["k2prime_mean_tac"] == pytest.approx(0.1, rel=0.05)


def test_k2prime_median_warns_when_few_voxels_are_selected(caplog) -> None:
    ct, cr, _, _, fr = truth_tacs(n=61)
    with caplog.at_level(logging.WARNING, logger="voxelkit"):
        f = get_model("mrtm2", k2prime="median").fit(ct, cr, fr)
    assert f.info["k2prime_n_used"] < 50 and "k2prime_warning" in f.info
    assert any("selected only" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------------------
# per-scan device constants are uploaded once per fit, not per voxel chunk
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.kernels
@pytest.mark.parametrize("name, kw", [("logan", {"tstar": 20.0}), ("mrtm", {}), ("mrtm2", {"k2prime": 0.1}),
                                      ("srtm", {}), ("srtm2", {"k2prime": 0.1}),
                                      ("srtm", {"window": (0.0, 60.0)})])
def test_device_constants_are_uploaded_once_per_scan(fake_gpu, monkeypatch, name: str, kw: dict) -> None:
    ct, cr, _, _, fr = truth_tacs(n=40)
    calls = []
    real = type(fake_gpu).asarray

    def counting(self, a, dtype=None):
        if self is fake_gpu:
            calls.append(getattr(a, "shape", None))
        return real(self, a, dtype=dtype)

    monkeypatch.setattr(type(fake_gpu), "asarray", counting)  # the Backend dataclass is frozen
    counts, fits = [], []
    for chunk in (40, 8):  # 1 chunk, 5 chunks
        calls.clear()
        fits.append(get_model(name, device=fake_gpu, chunk_voxels=chunk, **kw).fit(ct, cr, fr))
        counts.append(len(calls))
    assert counts[1] - counts[0] == 4  # one more upload per extra chunk: its TACs, nothing else
    for k in fits[0].params:
        np.testing.assert_array_equal(fits[0].params[k], fits[1].params[k])


# ---------------------------------------------------------------------------------------------------------
# the CLI speaks the same vocabulary: --k2prime takes a region too (old flags kept)
# ---------------------------------------------------------------------------------------------------------
def test_cli_k2prime_takes_a_region(study: dict[str, Path], tmp_path: Path, capsys) -> None:
    from voxelkit.cli import main

    base = ["fit", str(study["pet"]), "--ref-mask", str(study["ref"]), "--mask", str(study["brain"]),
            "--model", "mrtm2", "--device", "cpu", "-q"]
    assert main([*base, "-o", str(tmp_path / "a"), "--k2prime", str(study["hb"])]) == 0
    assert main([*base, "-o", str(tmp_path / "b"), "--k2prime-mask", str(study["hb"])]) == 0
    a = json.loads((tmp_path / "a" / "fit.json").read_text())
    b = json.loads((tmp_path / "b" / "fit.json").read_text())
    assert a["Info"]["k2prime"] == b["Info"]["k2prime"] and a["Options"] == b["Options"]
    assert main([*base, "-o", str(tmp_path / "c"), "--k2prime", str(tmp_path / "missing.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "missing.nii.gz" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()
    tacs = ["fit-tacs", str(SIMREF / "hukw_1_tacs.tsv"), "--ref", "Reference", "--model", "mrtm2", "-q"]
    assert main([*tacs, "--k2prime", "ROI1"]) == 0
    new = capsys.readouterr().out
    assert main([*tacs, "--k2prime-region", "ROI1"]) == 0
    assert capsys.readouterr().out == new
    assert main([*tacs, "--k2prime", "0.1", "--k2prime-region", "ROI1"]) == 2
    assert "only one source" in capsys.readouterr().err
