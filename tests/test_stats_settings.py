"""One set of inference settings (issue 11): :class:`voxelkit.stats.settings.Inference` behind the Python API, the
``voxelkit stats`` options and the study file's ``[inference]`` table; permutation_test as validate -> engine ->
assemble; the result module."""

from __future__ import annotations

import argparse
import inspect
import json

import nibabel as nib
import numpy as np
import pytest

from voxelkit.backend import NUMPY
from voxelkit.cli import main
from voxelkit.cli import stats as cli_stats
from voxelkit.io import InputError, Masker
from voxelkit.pipeline.config import StudyConfig, load_study_file
from voxelkit.stats import DEFAULTS, Inference, api, one_sample_design, paired, permutation_test, result
from voxelkit.stats.contrasts import MultiContrastResult as MCR_contrasts

SHAPE = (6, 7, 5)
AFF = np.diag([2.0, 2.0, 2.0, 1.0])
N = 8


def _write(path, data):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), AFF), str(path))
    return str(path)


@pytest.fixture
def maps(tmp_path):
    rng = np.random.default_rng(3)
    src = tmp_path / "maps"
    src.mkdir()
    blob = np.zeros(SHAPE)
    blob[1:4, 2:5, 1:4] = 1.0
    a = [_write(src / f"a{i}.nii.gz", rng.normal(1.0, 0.3, SHAPE) + 0.6 * blob + 2) for i in range(N)]
    b = [_write(src / f"b{i}.nii.gz", rng.normal(1.0, 0.3, SHAPE) + 2) for i in range(N)]
    return tmp_path, a, b


def _paired_cli(a, b, out, *extra):
    return main(["stats", "paired", "--a", *a, "--b", *b, "--n-perm", "100", "-q", "--device", "cpu", *extra,
                 "-o", str(out)])


def _stats_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--device")
    parent.add_argument("-q", "--quiet", action="store_true")
    cli_stats.register(sub, parent)
    return parser


def test_one_set_of_defaults():
    """The API keyword defaults, the CLI defaults and the study file defaults are all DEFAULTS."""
    assert (DEFAULTS.two_sided, DEFAULTS.tfce, float(DEFAULTS.cluster_p), DEFAULTS.n_perm, DEFAULTS.connectivity,
            DEFAULTS.seed) == (True, True, 0.001, 5000, 26, 0)
    sig = inspect.signature(permutation_test).parameters
    for name, value in DEFAULTS.as_kwargs().items():
        assert sig[name].default == value, name
    args = _stats_parser().parse_args(["stats", "paired", "--a", "x", "--b", "y", "-o", "o"])
    assert cli_stats.inference_from_args(args) == DEFAULTS
    cfg = StudyConfig(bids_dir="study")
    for name in ("n_perm", "cluster_p", "tfce", "two_sided", "seed"):
        assert getattr(cfg, name) == getattr(DEFAULTS, name), name
    # what the pipeline passes on from a study file equals the defaults too
    assert Inference(n_perm=cfg.n_perm, cluster_p=cfg.cluster_p, tfce=cfg.tfce, two_sided=cfg.two_sided,
                     seed=cfg.seed) == DEFAULTS


def test_cli_flags_map_to_settings():
    p = _stats_parser()
    base = ["stats", "paired", "--a", "x", "--b", "y", "-o", "o"]

    def inf(*extra):
        return cli_stats.inference_from_args(p.parse_args([*base, *extra]))

    assert inf("--two-sided", "--tfce") == DEFAULTS                          # no-ops: they are the defaults
    assert inf("--one-sided").two_sided is False
    assert inf("--no-tfce").tfce is False
    assert not inf("--no-clusters").clusters
    assert inf("--cluster-t", "2.5") == DEFAULTS.replace(cluster_p=None, cluster_t=2.5)
    assert inf("--cluster-p", "0.01").cluster_p == 0.01
    for bad in (["--one-sided", "--two-sided"], ["--tfce", "--no-tfce"], ["--cluster-p", "0.01", "--no-clusters"]):
        with pytest.raises(SystemExit):
            p.parse_args([*base, *bad])


def test_cli_defaults_equal_api_defaults_and_old_behaviour_by_flags(maps):
    tmp, a, b = maps
    assert _paired_cli(a, b, tmp / "d") == 0
    meta = json.loads((tmp / "d" / "stats.json").read_text())
    assert meta["two_sided"] is True and meta["tfce"] is True and meta["cluster_p"] == 0.001
    assert meta["connectivity"] == 26 and meta["seed"] == 0
    assert (tmp / "d" / "logp_fwe_tfce.nii.gz").is_file() and (tmp / "d" / "clusters.tsv").is_file()
    api_res = paired(a, b, n_perm=100, device="cpu")
    for m in api_res.maps:
        np.testing.assert_array_equal(nib.load(str(tmp / "d" / f"{m}.nii.gz")).get_fdata(),
                                      api_res.image(m).get_fdata(), err_msg=m)
    # --two-sided --tfce change nothing
    assert _paired_cli(a, b, tmp / "e", "--two-sided", "--tfce") == 0
    for m in api_res.maps:
        np.testing.assert_array_equal(nib.load(str(tmp / "e" / f"{m}.nii.gz")).get_fdata(),
                                      nib.load(str(tmp / "d" / f"{m}.nii.gz")).get_fdata(), err_msg=m)
    # the old defaults, by flags
    assert _paired_cli(a, b, tmp / "old", "--one-sided", "--no-tfce", "--no-clusters") == 0
    old = json.loads((tmp / "old" / "stats.json").read_text())
    assert old["two_sided"] is False and old["tfce"] is False and old["cluster_threshold_t"] is None
    assert not (tmp / "old" / "tfce.nii.gz").exists() and not (tmp / "old" / "clusters.tsv").exists()
    ref = paired(a, b, n_perm=100, device="cpu", two_sided=False, tfce=False, cluster_p=None)
    assert set(ref.maps) == {"t", "logp_uncorrected", "logp_fdr", "logp_fwe_voxel"}
    for m in ref.maps:
        np.testing.assert_array_equal(nib.load(str(tmp / "old" / f"{m}.nii.gz")).get_fdata(),
                                      ref.image(m).get_fdata(), err_msg=m)
    # one-sided maps are unsigned and differ from the two-sided ones where t < 0
    t = ref.maps["t"]
    assert np.all(ref.maps["logp_uncorrected"] >= 0)
    assert np.any(api_res.maps["logp_uncorrected"][t < 0] < 0)


def test_cluster_t_replaces_the_default_cluster_p(maps, capsys):
    tmp, a, b = maps
    r = paired(a, b, n_perm=40, device="cpu", tfce=False, cluster_t=2.5)
    assert r.settings["cluster_p"] is None and r.settings["cluster_threshold_t"] == 2.5
    with pytest.raises(InputError, match=r"cluster_p \(--cluster-p\) or cluster_t \(--cluster-t\)"):
        paired(a, b, n_perm=40, device="cpu", cluster_p=0.01, cluster_t=2.5)
    assert _paired_cli(a, b, tmp / "c", "--cluster-t", "2.5", "--no-tfce") == 0
    assert json.loads((tmp / "c" / "stats.json").read_text())["cluster_threshold_t"] == 2.5


@pytest.mark.parametrize("args, flag", [(["--n-perm", "0"], "--n-perm"), (["--tfce-h", "-1"], "--tfce-h"),
                                        (["--cluster-p", "1.5"], "--cluster-p"), (["--seed", "-2"], "--seed")])
def test_bad_cli_settings_one_line_nothing_written(maps, capsys, args, flag):
    tmp, a, b = maps
    capsys.readouterr()
    assert _paired_cli(a, b, tmp / "bad", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0], err
    assert not (tmp / "bad").exists()


def test_inference_validation_and_mapping():
    with pytest.raises(InputError, match=r"connectivity \(--connectivity\) must be 6, 18 or 26"):
        Inference(connectivity=8)
    with pytest.raises(InputError, match=r"two_sided .* must be true or false"):
        Inference(two_sided="yes")
    with pytest.raises(InputError, match=r"accel"):
        Inference(accel="fast")
    with pytest.raises(InputError, match=r"variance_smoothing"):
        Inference(variance_smoothing=-1.0)
    with pytest.raises(InputError, match=r"study\.toml: unknown inference setting\(s\) nperm"):
        Inference.from_mapping({"nperm": 10}, "study.toml")
    with pytest.raises(InputError, match=r"study\.toml: n_perm \(--n-perm\) must be >= 1"):
        Inference.from_mapping({"n_perm": 0}, "study.toml")
    inf = Inference.from_mapping({"cluster_p": False, "tfce": False, "n_perm": 200, "connectivity": 6}, "s.toml")
    assert not inf.clusters and inf.tfce is False and inf.n_perm == 200 and inf.connectivity == 6
    assert Inference.from_mapping({"cluster_t": 3.0}, "s.toml").cluster_p is None
    assert Inference(**DEFAULTS.to_dict()) == DEFAULTS
    json.dumps(DEFAULTS.to_dict())


def test_study_file_inference_table(tmp_path):
    (tmp_path / "study").mkdir()
    f = tmp_path / "study.toml"
    f.write_text('bids_dir = "study"\n[inference]\nn_perm = 300\ncluster_p = false\ntwo_sided = false\n')
    cfg = load_study_file(f)
    assert cfg.n_perm == 300 and cfg.cluster_p is None and cfg.two_sided is False and cfg.tfce is True
    f.write_text('bids_dir = "study"\n[inference]\nn_perm = 0\n')
    with pytest.raises(InputError, match=r"\[inference\]: n_perm \(--n-perm\) must be >= 1"):
        load_study_file(f)
    f.write_text('bids_dir = "study"\n[inference]\ntfce = "yes"\n')
    with pytest.raises(InputError, match=r"tfce"):
        load_study_file(f)


def test_three_steps_equal_permutation_test():
    rng = np.random.default_rng(1)
    mask = np.ones((5, 6, 4), bool)
    y = rng.standard_normal((9, mask.sum())) + 0.4
    mk = Masker(mask, AFF)
    kw = dict(n_perm=64, seed=2, cluster_p=0.01)
    whole = permutation_test(y, mk, one_sample_design(9), device=NUMPY, **kw)
    run = api.validate(y, mk, one_sample_design(9), DEFAULTS.replace(**kw), NUMPY)
    parts = api.assemble(run, api.run_engine(run))
    assert set(whole.maps) == set(parts.maps)
    for m in whole.maps:
        np.testing.assert_array_equal(whole.maps[m], parts.maps[m])
    for k in whole.null:
        np.testing.assert_array_equal(whole.null[k], parts.null[k])
    assert whole.clusters == parts.clusters
    assert json.dumps(whole.settings, default=str) == json.dumps(parts.settings, default=str)
    # an Inference object passed as keywords
    inf = Inference(n_perm=64, seed=2, cluster_p=0.01)
    again = permutation_test(y, mk, one_sample_design(9), device=NUMPY, **inf.as_kwargs())
    np.testing.assert_array_equal(again.maps["logp_fwe_tfce"], whole.maps["logp_fwe_tfce"])


def test_result_module_is_reexported():
    assert api.PermutationResult is result.PermutationResult
    assert api.CLUSTER_COLUMNS is result.CLUSTER_COLUMNS and api.MAP_NAMES is result.MAP_NAMES
    assert MCR_contrasts is result.MultiContrastResult
    assert api.output_names() == result.output_names()


def test_f_contrast_under_the_two_sided_default(tmp_path, capsys):
    rng = np.random.default_rng(4)
    rows = ["map\tage\tdose"]
    for i in range(10):
        rows.append(f"{_write(tmp_path / f'm{i}.nii.gz', rng.normal(0, 1, SHAPE))}\t{30 + 3 * i}\t{i % 3}")
    (tmp_path / "d.tsv").write_text("\n".join(rows) + "\n")
    base = ["stats", "glm", "--design", str(tmp_path / "d.tsv"), "--f-contrast", "age", "dose", "--n-perm", "50",
            "-q", "--no-tfce"]
    assert main([*base, "-o", str(tmp_path / "f")]) == 0
    meta = json.loads((tmp_path / "f" / "stats.json").read_text())["contrasts"][0]["settings"]
    assert meta["two_sided"] is False and meta["f_rank"] == 2
    capsys.readouterr()
    assert main([*base, "--two-sided", "-o", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--two-sided" in err[0] and not (tmp_path / "g").exists()
