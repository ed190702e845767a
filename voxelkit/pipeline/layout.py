"""Where the study pipeline writes its outputs (a BIDS-derivatives dataset): a re-export of
:mod:`voxelkit.io.derivatives`, which holds every output name and sidecar schema.

```
<out>/                                     default: <bids>/derivatives/voxelkit
  dataset_description.json
  provenance.json                          inputs with sha256, versions, backend, settings, seed, timings
  study.json                               the resolved settings
  voxelkit_manifest.json                   what was written (each output's name and its old name)
  sub-XX/ses-YY/pet/
    sub-XX_ses-YY[_desc-PHASE]_model-M_meas-LABEL_mimap.nii.gz (+ .json)   LABEL: BPND, R1, k2, ..., status
    sub-XX_ses-YY[_desc-PHASE]_model-M_qc.json                             reference TAC, example voxel TACs
                                                                             with fitted curves, status counts,
                                                                             parameter histograms
    sub-XX_ses-YY[_desc-PHASE]_model-M_fit.json                            checksum of inputs + settings (cache)
  group/
    sub-XX_desc-CONTRAST_mimap.nii.gz      per-subject contrast maps (condition A - B, smoothed);
                                           CONTRAST = contrast_label(quantity, A, B), e.g. BPNDanakinraMinusPlacebo
    stats/                                 voxelkit.stats outputs (t, logp_* maps, tfce, nulls .npz, clusters)
    stats-CONTRAST/                        the same per named contrast (--conditions A B C --contrasts A-B A-C)
  roi/
    roi_values.tsv                         subject, condition, phase, region, value (mean BPND)
    roi_tests.tsv                          region, n, mean_a, mean_b, mean_diff, t, p, p_fdr
    desc-CONTRAST_roi_values.tsv, desc-CONTRAST_roi_tests.tsv    the same per named contrast
  report.html
```
PHASE is ``baseline`` / ``challenge`` when time windows are used, absent otherwise.  Functions take parameter
names (``bp_nd``); the file names carry their alphanumeric BIDS labels (``meas-BPND``).
"""

from __future__ import annotations

from ..io.derivatives import (
    PARAM_LABELS,
    bids_label,
    contrast_label,
    contrast_path,
    contrast_roi_tests_path,
    contrast_roi_values_path,
    contrast_stats_dir,
    find_scan_maps,
    fit_record_path,
    legacy_name,
    map_path,
    map_sidecar_path,
    qc_path,
    report_path,
    resolve_output,
    roi_dir,
    roi_tests_path,
    roi_values_path,
    scan_dir,
    scan_map_glob,
    scan_outputs,
    scan_stem,
    sidecar_of,
    stats_dir,
)

__all__ = ["PARAM_LABELS", "bids_label", "contrast_label", "contrast_path", "contrast_roi_tests_path",
           "contrast_roi_values_path", "contrast_stats_dir", "find_scan_maps", "fit_record_path",
           "legacy_name", "map_path", "map_sidecar_path", "qc_path", "report_path", "resolve_output", "roi_dir",
           "roi_tests_path", "roi_values_path", "scan_dir", "scan_map_glob", "scan_outputs", "scan_stem",
           "sidecar_of", "stats_dir"]
