"""One definition of model options (voxelkit.models.options) for fit, fit-tacs, run and the study file; k2' is
estimated once per scan (all frames or ``k2prime_window``), not per fitted window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voxelkit.cli import build_parser, main
from voxelkit.cli.run import study_overrides
from voxelkit.io import InputError
from voxelkit.models.mrtm import MRTM2
from voxelkit.models.options import MODEL_OPTION_SPECS, option_table_markdown, specs_for, validate_model_options
from voxelkit.models.srtm import SRTM2
from voxelkit.pipeline import StudyConfig, load_study_file

RUN_FLAGS = ["--k2prime", "--weights", "--integration", "--n-basis", "--theta3-range", "--bp-max", "--half-life",
             "--end", "--k2prime-window", "--mask-threshold", "--tstar", "--k2prime-mask"]


def _help(capsys, *cmd: str) -> str:
    with pytest.raises(SystemExit):
        main([*cmd, "--help"])
    return capsys.readouterr().out


def test_run_help_lists_every_model_option(capsys) -> None:
    text = _help(capsys, "run")
    for flag in RUN_FLAGS:
        assert flag in text, flag
    assert "--window NAME START END" in text  # run's named windows stay


@pytest.mark.parametrize("command", ["fit", "fit-tacs"])
def test_fit_commands_take_the_same_flags_from_the_table(capsys, command: str) -> None:
    text = _help(capsys, command)
    for spec in specs_for(command):
        assert spec.flag in text, spec.flag
    assert {s.flag for s in specs_for("fit")} - {s.flag for s in specs_for("run")} == {"--window"}


def test_run_command_and_study_file_give_the_same_model_options(tmp_path: Path) -> None:
    argv = ["run", str(tmp_path), "--model", "srtm2", "--k2prime", "median", "--weights", "duration",
            "--n-basis", "60", "--theta3-range", "0.01", "0.8", "--bp-max", "6", "--half-life", "109.77",
            "--k2prime-window", "0", "45", "--mask-threshold", "0.4"]
    args = build_parser().parse_args(argv)
    cfg_cli = StudyConfig(bids_dir=tmp_path, **study_overrides(args))
    toml = tmp_path / "study.toml"
    toml.write_text(f'bids_dir = "{tmp_path}"\nmodel = "srtm2"\n[model_options]\nk2prime = "median"\n'
                    'weights = "duration"\nn_basis = 60\ntheta3_range = [0.01, 0.8]\nbp_max = 6\n'
                    'half_life_min = 109.77\nk2prime_window = [0, 45]\nmask_threshold = 0.4\n')
    cfg_file = load_study_file(toml)
    assert cfg_cli.model_options == cfg_file.model_options
    assert cfg_cli.model_options == {"k2prime": "median", "weights": "duration", "n_basis": 60,
                                     "theta3_range": [0.01, 0.8], "bp_max": 6.0, "half_life_min": 109.77,
                                     "k2prime_window": [0.0, 45.0], "mask_threshold": 0.4}
    # the command line wins key by key over the file
    args2 = build_parser().parse_args(["run", "--study", str(toml), "--bp-max", "3"])
    cfg_mix = load_study_file(toml, **study_overrides(args2))
    assert cfg_mix.model_options["bp_max"] == 3.0 and cfg_mix.model_options["k2prime"] == "median"


def test_run_accepts_k2prime_median_and_weights(tmp_path: Path) -> None:
    args = build_parser().parse_args(["run", str(tmp_path), "--model", "mrtm2", "--k2prime", "median",
                                      "--weights", "sqrt_duration_uncorrected_activity", "--integration",
                                      "frame_average"])
    opts = study_overrides(args)["model_options"]
    assert opts == {"k2prime": "median", "weights": "sqrt_duration_uncorrected_activity",
                    "integration": "frame_average"}
    assert StudyConfig(bids_dir=tmp_path, model="mrtm2", model_options=opts).model_options == opts


@pytest.mark.parametrize("body, match", [
    ("bogus = 1", "unknown model option 'bogus'"),
    ("k2prime = \"fast\"", "'k2prime'"),
    ("n_basis = 2", "'n_basis'"),
    ("theta3_range = [0.5, 0.1]", "'theta3_range'"),
    ("tstar = 30", "only applies to models logan, not 'srtm'"),
    ("window = [0, 45]", "[windows]"),
    ("mask_threshold = 1.5", "'mask_threshold'"),
])
def test_study_file_model_option_errors_name_file_and_key(tmp_path: Path, body: str, match: str) -> None:
    toml = tmp_path / "my_study.toml"
    toml.write_text(f'bids_dir = "{tmp_path}"\nmodel = "srtm"\n[model_options]\n{body}\n')
    with pytest.raises(InputError, match=None) as ei:
        load_study_file(toml)
    msg = str(ei.value)
    assert "my_study.toml" in msg and match in msg and "\n" not in msg, msg


def test_run_cli_bad_option_is_one_line(tmp_path: Path, capsys) -> None:
    rc = main(["run", str(tmp_path), "--model", "logan", "--n-basis", "40"])
    err = capsys.readouterr().err
    assert rc == 2 and "--n-basis" in err and len(err.strip().splitlines()) == 1, err


def test_validate_normalises_and_table_renders() -> None:
    out = validate_model_options({"half_life": 20.4, "theta3_range": (0.01, 1)}, "srtm", "x")
    assert out == {"half_life_min": 20.4, "theta3_range": [0.01, 1.0]}
    table = option_table_markdown()
    for s in MODEL_OPTION_SPECS:
        assert f"`{s.flag}`" in table


# ---------------------------------------------------------------------------------------------------------
# k2' belongs to the scan
# ---------------------------------------------------------------------------------------------------------
def _scan(challenge: bool = False, n: int = 200) -> tuple[np.ndarray, np.ndarray, object]:
    from voxelkit.simulate.kinetics import carfentanil_frames, challenge_bp_nd, srtm_tacs

    fr = carfentanil_frames()
    rng = np.random.default_rng(0)
    bp, r1 = rng.uniform(0.2, 4.0, n), rng.uniform(0.6, 1.4, n)
    if challenge:
        segs, sw = challenge_bp_nd(bp, 0.3, 45.0)
        ct, cr = srtm_tacs(fr, r1, segs, switch_min=sw, k2prime=0.1)
    else:
        ct, cr = srtm_tacs(fr, r1, bp, k2prime=0.1)
    return ct, cr, fr


@pytest.mark.parametrize("model", [MRTM2, SRTM2])
def test_k2prime_median_is_estimated_from_the_whole_scan_in_every_window(model) -> None:
    ct, cr, fr = _scan()
    whole = model(k2prime="median").fit(ct, cr, fr)
    k_whole = whole.info["k2prime"]
    assert abs(k_whole - 0.1) < 3e-4 and whole.info["k2prime_window_min"] is None
    for win in ((0.0, 45.0), (45.0, 90.0)):
        f = model(k2prime="median", window=win).fit(ct, cr, fr)
        assert f.info["k2prime"] == k_whole  # the same scan k2' in every window
        assert f.info["k2prime_source"].startswith("median")
        assert np.all(f.k2prime[np.isfinite(f.k2prime)] == np.float32(k_whole))
    if model is MRTM2:  # the old rule (k2' from the fitted window's frames only) is biased by ~1 % here
        old = [model(k2prime="median", k2prime_window=w, window=w).fit(ct, cr, fr).info["k2prime"]
               for w in ((0.0, 45.0), (45.0, 90.0))]
        assert max(abs(k - 0.1) for k in old) > 5 * abs(k_whole - 0.1)


@pytest.mark.parametrize("model", [MRTM2, SRTM2])
def test_k2prime_window_names_the_frames_for_k2prime(model) -> None:
    """With a challenge at 45 min the whole scan violates the model; the user names the baseline for k2'."""
    ct, cr, fr = _scan(challenge=True)
    whole = model(k2prime="median").fit(ct, cr, fr).info["k2prime"]
    assert abs(whole - 0.1) > 0.01  # the challenge biases a whole-scan k2'
    got = []
    for win in ((0.0, 45.0), (45.0, 90.0)):
        f = model(k2prime="median", k2prime_window=(0.0, 45.0), window=win).fit(ct, cr, fr)
        assert f.info["k2prime_window_min"] == [0.0, 45.0]
        assert f.sidecar()["Info"]["k2prime"] == f.info["k2prime"]
        got.append(f.info["k2prime"])
    assert got[0] == got[1] and abs(got[0] - 0.1) < 1e-3


def test_k2prime_region_mask_uses_all_frames_too() -> None:
    ct, cr, fr = _scan()
    hb = np.zeros(ct.shape[0], bool)
    hb[:20] = True
    ref = MRTM2(k2prime_region=hb).fit(ct, cr, fr).info["k2prime"]
    win = MRTM2(k2prime_region=hb, window=(45.0, 90.0)).fit(ct, cr, fr).info["k2prime"]
    assert win == ref


def test_k2prime_window_with_a_given_k2prime_is_an_error() -> None:
    with pytest.raises(InputError, match="k2prime_window"):
        MRTM2(k2prime=0.1, k2prime_window=(0, 45))
    with pytest.raises(InputError, match="k2prime_window"):
        SRTM2(k2prime=0.1, k2prime_window=(0, 45))
