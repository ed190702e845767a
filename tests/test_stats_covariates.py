"""Covariate coding (issue 9, item 1): nuisance covariates are mean-centred (categorical ones effect-coded), so the
tested intercept of paired differences is the mean difference at the sample's average covariates; t equals an
independent OLS reference; slopes are unaffected by centring; clear one-line errors from the API and the CLI."""

from __future__ import annotations

import json
import logging
import re

import nibabel as nib
import numpy as np
import pytest

from voxelkit.cli import main
from voxelkit.io import InputError
from voxelkit.stats import glm, paired
from voxelkit.stats.covariates import code_covariates

SHAPE = (6, 6, 5)
AFF = np.diag([2.0, 2.0, 2.0, 1.0])
N = 20


def _img(data):
    return nib.Nifti1Image(np.asarray(data, np.float32), AFF)


@pytest.fixture(scope="module")
def study():
    return make_study()


def make_study():
    """N subjects, condition A = B + planted effect (+ noise); an age covariate unrelated to the effect."""
    rng = np.random.default_rng(7)
    effect = np.zeros(SHAPE)
    effect[1:4, 1:4, 1:3] = 1.0
    effect[4:6, 3:6, 2:5] = 0.6
    base = rng.uniform(1.5, 2.5, SHAPE)
    a, b = [], []
    for _ in range(N):
        b.append(base + 0.3 * rng.standard_normal(SHAPE))
        a.append(base + effect + 0.3 * rng.standard_normal(SHAPE))
    age = np.round(rng.uniform(20, 70, N), 1)
    sex = np.array(["F", "M"] * (N // 2))
    rng.shuffle(sex)
    site = np.array(["x", "y", "z", "x", "y"] * (N // 5))
    D = np.stack(a) - np.stack(b)
    return {"a": [_img(x) for x in a], "b": [_img(x) for x in b], "D": D.reshape(N, -1), "age": age,
            "sex": sex, "site": site}


def _t(res):
    return np.asarray(res.image("t").get_fdata(), np.float64).ravel()


def _corr(x, y):
    return float(np.corrcoef(x, y)[0, 1])


KW = dict(n_perm=50, seed=0, device="cpu")


def test_unrelated_covariate_leaves_paired_t_nearly_unchanged(study):
    ref = _t(paired(study["a"], study["b"], **KW))
    cen = _t(glm(study["a"], {"age": study["age"]}, "intercept", imgs_b=study["b"], method="flip", **KW))
    raw = _t(glm(study["a"], {"age": study["age"]}, "intercept", imgs_b=study["b"], method="flip",
                 centre_covariates=False, **KW))

    def nearly_unchanged(t):
        return _corr(t, ref) > 0.99 and abs(np.abs(t).max() / np.abs(ref).max() - 1) < 0.08

    assert nearly_unchanged(cen), (_corr(cen, ref), np.abs(cen).max(), np.abs(ref).max())
    # the old behaviour (raw age: the effect tested at age 0) fails the same criterion by far
    assert not nearly_unchanged(raw)
    assert np.abs(raw).max() < 0.6 * np.abs(ref).max()


def test_t_equals_independent_ols_reference(study):
    """t of the intercept and of a slope equal numpy lstsq with centred age and effect-coded, centred sex."""
    D, age, sex = study["D"], study["age"], study["sex"]
    res = glm(study["a"], {"age": age, "sex": list(sex)}, "intercept", imgs_b=study["b"], method="flip", **KW)
    assert res.settings["design_columns"] == ["intercept", "age", "sex[F]"]
    sexcode = np.where(sex == "F", 1.0, -1.0)
    X = np.column_stack([np.ones(N), age - age.mean(), sexcode - sexcode.mean()])

    def ols_t(X, c):
        beta, rss, *_ = np.linalg.lstsq(X, D, rcond=None)
        s2 = rss / (N - X.shape[1])
        return (c @ beta) / np.sqrt(s2 * (c @ np.linalg.inv(X.T @ X) @ c))

    mask = res.masker.mask.ravel()
    np.testing.assert_allclose(_t(res)[mask], ols_t(X, np.array([1.0, 0, 0]))[mask], rtol=2e-5, atol=1e-5)
    # the intercept estimate is exactly the mean difference (centred covariates are orthogonal to 1)
    beta = np.linalg.lstsq(X, D, rcond=None)[0]
    np.testing.assert_allclose(beta[0], D.mean(axis=0), atol=1e-12)
    # slope contrast: same t centred or raw, and equal to the raw-coding OLS reference
    t_c = _t(glm(study["a"], {"age": age, "sex": list(sex)}, "age", imgs_b=study["b"], **KW))
    t_r = _t(glm(study["a"], {"age": age, "sex": list(sex)}, "age", imgs_b=study["b"], centre_covariates=False,
                 **KW))
    Xraw = np.column_stack([np.ones(N), age, sexcode])
    np.testing.assert_allclose(t_c, t_r, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t_c[mask], ols_t(Xraw, np.array([0.0, 1, 0]))[mask], rtol=2e-5, atol=1e-5)


def test_raw_covariates_warn_when_intercept_tested(study, caplog):
    with caplog.at_level(logging.WARNING, logger="voxelkit"):
        r = glm(study["a"], {"age": study["age"]}, [1, 0], imgs_b=study["b"], method="flip",
                centre_covariates=False, **KW)
    assert "covariate value 0" in caplog.text
    assert "covariate value 0" in r.settings["contrast_tests"] and r.settings["covariates_centred"] is False
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="voxelkit"):
        r = glm(study["a"], {"age": study["age"]}, [1, 0], imgs_b=study["b"], method="flip", **KW)
    assert "covariate value 0" not in caplog.text
    assert "average covariate values" in r.settings["contrast_tests"]
    assert "mean-centred" in r.settings["covariate_coding"]


def test_effect_coding_two_and_three_levels():
    subj = [f"s{i}" for i in range(7)]
    sex = ["M", "F", "F", "M", "M", "F", "M"]
    site = ["a", "b", "c", "a", "c", "b", "a"]
    cc = code_covariates({"sex": sex, "site": site}, ["sex", "site"], subj, "p.tsv", centre=False)
    assert cc.names == ["sex[F]", "site[a]", "site[b]"]
    want_sex = [-1, 1, 1, -1, -1, 1, -1]                     # F = +1, reference M = -1
    want_a = [1, 0, -1, 1, -1, 0, 1]                         # reference c = -1 in every site column
    want_b = [0, 1, -1, 0, -1, 1, 0]
    np.testing.assert_array_equal(cc.matrix, np.column_stack([want_sex, want_a, want_b]))
    cen = code_covariates({"sex": sex, "site": site}, ["sex", "site"], subj, "p.tsv")
    np.testing.assert_allclose(cen.matrix, cc.matrix - cc.matrix.mean(axis=0), atol=1e-15)
    np.testing.assert_allclose(cen.matrix.mean(axis=0), 0, atol=1e-15)
    assert cen.groups == {"sex": ["sex[F]"], "site": ["site[a]", "site[b]"]}
    assert "effect-coded" in cen.description and "reference M" in cen.description
    # numeric: mean-centred; the subject -> row form (participants.tsv) gives the same
    rows = {s: {"age": str(40 + i), "sex": sex[i]} for i, s in enumerate(subj)}
    byrow = code_covariates(rows, ["age", "sex"], subj[::-1], "participants.tsv")
    np.testing.assert_allclose(byrow.matrix[:, 0], np.arange(46, 39, -1) - 43.0)
    np.testing.assert_allclose(byrow.matrix[::-1, 1], cen.matrix[:, 0])


BAD = {
    "missing": (["bmi"], r"d\.tsv: no column 'bmi'; columns are .*age.*sex"),
    "n/a": (["age"], r"d\.tsv: numeric column 'age' has a missing value for subject s3 \('n/a'\)"),
    "constant": (["scanner"], r"d\.tsv: covariate 'scanner' is constant"),
    "id": (["code"], r"d\.tsv: column 'code' has a different value for each of the 6 subjects \(an identifier"),
    "rank": (["age2", "weight", "height"], r"d\.tsv: covariate 'height' makes the design rank-deficient"),
}


def _bad_table():
    return {"age": ["41", "35", "50", "n/a", "62", "30"], "sex": ["M", "F", "M", "F", "M", "F"],
            "scanner": ["hrrt"] * 6, "code": ["p1", "p2", "p3", "p4", "p5", "p6"],
            "age2": ["41", "35", "50", "44", "62", "30"], "weight": ["70", "80", "65", "90", "75", "60"],
            "height": ["140", "160", "130", "180", "150", "120"]}  # height = 2 x weight


@pytest.mark.parametrize("case", list(BAD))
def test_covariate_errors_api(case):
    cols, pattern = BAD[case]
    with pytest.raises(InputError, match=pattern) as ei:
        code_covariates(_bad_table(), cols, [f"s{i}" for i in range(6)], "d.tsv")
    assert "\n" not in str(ei.value) and "categorical with" not in str(ei.value)


def test_missing_value_api_via_glm_names_subject(study):
    age = [str(x) for x in study["age"]]
    age[4] = "n/a"
    with pytest.raises(InputError, match=r"participants.tsv: numeric column 'age' has a missing value for "
                                         r"subject sub-05 \('n/a'\)"):
        glm(study["a"], {"age": age}, "intercept", imgs_b=study["b"], subjects=[f"sub-{i + 1:02d}" for i in range(N)],
            source="participants.tsv", method="flip", **KW)


def _design_folder(tmp_path, n=6, extra=None):
    rng = np.random.default_rng(3)
    tab = _bad_table()
    if extra:
        tab.update(extra)
    header = ["participant_id", "map", "map_b", *tab]
    lines = ["\t".join(header)]
    for i in range(n):
        for c in "ab":
            x = rng.uniform(1, 2, SHAPE) + (0.5 if c == "a" else 0)
            nib.save(_img(x), str(tmp_path / f"{c}{i}.nii.gz"))
        lines.append("\t".join([f"sub-{i + 1:02d}", f"a{i}.nii.gz", f"b{i}.nii.gz", *(tab[k][i] for k in tab)]))
    (tmp_path / "d.tsv").write_text("\n".join(lines) + "\n")
    return tmp_path


@pytest.mark.parametrize("case", list(BAD))
def test_covariate_errors_cli(tmp_path, capsys, case):
    folder = _design_folder(tmp_path)
    cols, pattern = BAD[case]
    pattern = pattern.replace(r"subject s3", r"subject sub-04")
    out = folder / "out"
    rc = main(["stats", "glm", "--design", str(folder / "d.tsv"), "--map-column-b", "map_b", "--contrast",
               "intercept", "--covariates", *cols, "--sign-flip", "--n-perm", "50", "-q", "-o", str(out)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]
    assert "categorical with" not in err and not out.exists()


def test_glm_cli_categorical_intercept_matches_api(tmp_path):
    folder = _design_folder(tmp_path, extra={"age": ["41", "35", "50", "44", "62", "30"]})
    out = folder / "out"
    rc = main(["stats", "glm", "--design", str(folder / "d.tsv"), "--map-column-b", "map_b", "--contrast",
               "intercept", "--covariates", "age", "sex", "--sign-flip", "--n-perm", "64", "-q", "--device", "cpu",
               "-o", str(out)])
    assert rc == 0
    meta = json.loads((out / "stats.json").read_text())
    assert meta["design_columns"] == ["intercept", "age", "sex[F]"] and meta["covariates_centred"] is True
    X = np.asarray(meta["design_matrix"])
    np.testing.assert_allclose(X[:, 1:].mean(axis=0), 0, atol=1e-12)
    a = [str(folder / f"a{i}.nii.gz") for i in range(6)]
    b = [str(folder / f"b{i}.nii.gz") for i in range(6)]
    r = glm(a, {"age": [41, 35, 50, 44, 62, 30], "sex": ["M", "F", "M", "F", "M", "F"]}, "intercept", imgs_b=b,
            method="flip", n_perm=64, device="cpu")
    np.testing.assert_allclose(r.image("t").get_fdata(), nib.load(str(out / "t.nii.gz")).get_fdata(), rtol=1e-5)
    # --raw-covariates: recorded, and a warning is printed
    rc = main(["stats", "glm", "--design", str(folder / "d.tsv"), "--map-column-b", "map_b", "--contrast",
               "intercept", "--covariates", "age", "--sign-flip", "--n-perm", "64", "-q", "--device", "cpu",
               "--raw-covariates", "-o", str(folder / "raw")])
    assert rc == 0
    assert json.loads((folder / "raw" / "stats.json").read_text())["covariates_centred"] is False


def test_glm_cli_duplicate_design_column(tmp_path, capsys):
    """A design TSV with two 'age' columns is refused, naming the column (the TSV reader's duplicate check)."""
    folder = _design_folder(tmp_path)
    text = (folder / "d.tsv").read_text().splitlines()
    text = [ln + "\t" + ln.split("\t")[3] for ln in text]   # repeat the 'age' column (header and values)
    text[1:] = [ln.rsplit("\t", 1)[0] + "\t99" for ln in text[1:]]
    (folder / "d.tsv").write_text("\n".join(text) + "\n")
    assert text[0].split("\t").count("age") == 2
    rc = main(["stats", "glm", "--design", str(folder / "d.tsv"), "--map-column-b", "map_b", "--contrast", "age",
               "--covariates", "age", "--n-perm", "50", "-q", "-o", str(folder / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "age" in err and "d.tsv" in err, err
    assert not (folder / "out").exists()


def test_contrast_names_a_categorical_column(study):
    """'sex' (one coded column) means sex[F]; 'site' (two columns) needs a vector and says so."""
    kw = dict(imgs_b=study["b"], **KW)
    covs = {"age": study["age"], "sex": list(study["sex"]), "site": list(study["site"])}
    t1 = _t(glm(study["a"], covs, "sex", **kw))
    t2 = _t(glm(study["a"], covs, "sex[F]", **kw))
    np.testing.assert_array_equal(t1, t2)
    with pytest.raises(InputError, match=r"'site' is coded as site\[x\], site\[y\]"):
        glm(study["a"], covs, "site", **kw)
