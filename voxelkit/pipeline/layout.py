"""Where the study pipeline writes its outputs (a BIDS-derivatives dataset).

```
<out>/                                     default: <bids>/derivatives/voxelkit
  dataset_description.json
  provenance.json                          inputs with sha256, versions, backend, settings, seed, timings
  study.json                               the resolved settings
  sub-XX/ses-YY/pet/
    sub-XX_ses-YY[_desc-PHASE]_model-M_meas-PARAM_mimap.nii.gz (+ .json)    PARAM: bp_nd, r1, ..., status
    sub-XX_ses-YY[_desc-PHASE]_model-M_qc.json                             reference TAC, example voxel TACs
                                                                             with fitted curves, status counts,
                                                                             parameter histograms
    sub-XX_ses-YY[_desc-PHASE]_model-M_fit.json                            checksum of inputs + settings (cache)
  group/
    sub-XX_desc-CONTRAST_mimap.nii.gz      per-subject contrast maps (condition A - B, smoothed)
    stats/                                 voxelkit.stats outputs (t, logp_* maps, tfce, nulls .npz, clusters)
  roi/
    roi_values.tsv                         subject, condition, phase, region, value (mean BPND)
    roi_tests.tsv                          region, n, mean_a, mean_b, mean_diff, t, p, p_fdr
  report.html
```
PHASE is ``baseline`` / ``challenge`` when time windows are used, absent otherwise.
"""

from __future__ import annotations

from pathlib import Path


def scan_stem(subject: str, session: str, phase: str | None = None) -> str:
    """``sub-XX_ses-YY[_desc-PHASE]`` (labels without their ``sub-``/``ses-`` prefixes)."""
    stem = f"sub-{subject}_ses-{session}"
    return f"{stem}_desc-{phase}" if phase else stem


def scan_dir(out: Path, subject: str, session: str) -> Path:
    return Path(out) / f"sub-{subject}" / f"ses-{session}" / "pet"


def map_path(out: Path, subject: str, session: str, model: str, param: str, phase: str | None = None) -> Path:
    stem = scan_stem(subject, session, phase)
    return scan_dir(out, subject, session) / f"{stem}_model-{model}_meas-{param}_mimap.nii.gz"


def qc_path(out: Path, subject: str, session: str, model: str, phase: str | None = None) -> Path:
    return scan_dir(out, subject, session) / f"{scan_stem(subject, session, phase)}_model-{model}_qc.json"


def fit_record_path(out: Path, subject: str, session: str, model: str, phase: str | None = None) -> Path:
    return scan_dir(out, subject, session) / f"{scan_stem(subject, session, phase)}_model-{model}_fit.json"


def contrast_path(out: Path, subject: str, contrast: str) -> Path:
    return Path(out) / "group" / f"sub-{subject}_desc-{contrast}_mimap.nii.gz"


def stats_dir(out: Path) -> Path:
    return Path(out) / "group" / "stats"


def roi_dir(out: Path) -> Path:
    return Path(out) / "roi"


def report_path(out: Path) -> Path:
    return Path(out) / "report.html"
