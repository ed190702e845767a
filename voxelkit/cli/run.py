"""``voxelkit run``: a whole BIDS-PET study in one command."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("voxelkit")


def add_study_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``run`` and ``demo`` (they override the study file)."""
    g = p.add_argument_group("study")
    g.add_argument("--conditions", nargs="+", metavar="COND", default=None,
                   help="the conditions: session labels, or values of --condition-column; with two (A B) the "
                        "contrast is A - B (default anakinra placebo); with more, name the contrasts (--contrasts)")
    g.add_argument("--contrasts", nargs="+", metavar="A-B", default=None,
                   help="named contrasts over --conditions, e.g. --conditions anakinra placebo baseline --contrasts "
                        "anakinra-placebo anakinra-baseline: every scan of the conditions is fitted once, then each "
                        "contrast gets its paired test in group/stats-LABEL/ and roi/desc-LABEL_roi_*.tsv")
    g.add_argument("--condition-column", default=None, metavar="COLUMN",
                   help="sub-XX_sessions.tsv column holding each session's condition (e.g. drug); found by itself "
                        "when the condition values occur in exactly one column")
    g.add_argument("--filter", dest="filters", action="append", default=None, metavar="KEY=VALUE",
                   help="use only PET files with this BIDS entity (repeat: --filter rec=acdyn --filter run=1; "
                        "keys trc, rec, task, run, acq)")
    g.add_argument("--input-derivatives", default=None, metavar="DIR",
                   help="take the images from a derivatives dataset (PETPrep): *_space-SPACE_desc-preproc_pet.nii.gz")
    g.add_argument("--space", default=None, help="template space of --input-derivatives (e.g. MNI152NLin2009cAsym)")
    g.add_argument("--ref-mask", "--reference", default=None,
                   help="reference region mask (e.g. occipital cortex); --reference: the same")
    g.add_argument("--mask", dest="brain_mask", default=None, help="brain mask")
    g.add_argument("--atlas", default=None, help="integer label atlas for region names and ROI tables")
    g.add_argument("--atlas-labels", "--atlas-lookup", default=None,
                   help="TSV lookup of the atlas: index, name (--atlas-lookup: the same, as in voxelkit stats)")
    g.add_argument("--model", default=None,
                   help="kinetic model (default: srtm for --contrast bp_nd; the validated default for activation "
                        "(mrtm2, k2' from the baseline window); lpntpet2 for release, k2' median over the frames "
                        "before --challenge-window, or lpntpet without a challenge window)")
    from ..models.options import add_model_arguments  # noqa: PLC0415

    add_model_arguments(p.add_argument_group("model options (also [model_options] in the study file)"), "run")
    g.add_argument("--window", nargs=3, action="append", metavar=("NAME", "START", "END"), default=None,
                   help="a named time window in minutes (repeat: --window baseline 0 45 --window challenge 45 90)")
    g.add_argument("--contrast", "--quantity", choices=("bp_nd", "activation", "release"), default=None,
                   help="the quantity whose condition difference is tested (--quantity: the same; in voxelkit stats "
                        "glm a contrast is a weight vector): bp_nd: condition difference of BPND; activation: "
                        "of baseline - challenge BPND (--window); "
                        "release: of the lp-ntPET release map (peak fractional occupancy by the released "
                        "neurotransmitter; whole-scan fits, give --challenge-window START END)")
    g.add_argument("--smoothing-fwhm", type=float, default=None, metavar="MM", help="smoothing before statistics")
    g.add_argument("--covariates", nargs="+", default=None, help="participants.tsv columns (nuisance)")
    g.add_argument("--jobs", type=int, default=None, help="scans fitted in parallel (threads; default 1)")
    g.add_argument("--scheduler", default=None, metavar="threads|dask|tcp://HOST:PORT",
                   help="where the per-scan fits and permutation batches run: threads in this process (default), "
                        "dask (a local Dask cluster of --workers processes) or the address of a running Dask "
                        "scheduler (workers must see the same files); needs pip install \"voxelkit[dask]\"")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes of --scheduler dask (default: one per CPU)")
    g.add_argument("--on-missing", choices=("drop", "stop"), default=None,
                   help="subjects lacking a condition: report and drop (default) or stop")
    g.add_argument("--keep-failed-scans", dest="keep_failed_scans", action="store_true", default=None,
                   help="keep scans whose fit failed in most voxels in the group test (default: report them and "
                        "leave their subjects out)")
    from ..stats.settings import add_inference_arguments  # noqa: PLC0415  (light: no numba, no scipy)

    # every voxelkit.stats.settings.Inference field, from its one definition (also [inference] in the study file)
    add_inference_arguments(p.add_argument_group("inference (also [inference] in the study file)"), defaults=None)
    p.add_argument("--no-report", dest="report", action="store_false", default=None, help="skip the HTML report")


def study_overrides(args: argparse.Namespace) -> dict:
    opts = {}
    for key in ("conditions", "contrasts", "ref_mask", "brain_mask", "atlas", "atlas_labels", "model", "contrast",
                "smoothing_fwhm", "covariates", "on_missing", "jobs", "report", "device", "keep_failed_scans",
                "condition_column", "input_derivatives", "space", "scheduler", "workers"):
        val = getattr(args, key, None)
        if val is not None:
            opts[key] = val
    from ..stats.settings import inference_overrides  # noqa: PLC0415

    opts.update(inference_overrides(args))  # the inference flags given (voxelkit.stats.settings.Inference fields)
    from ..models.options import collect_model_options  # noqa: PLC0415

    model_options = collect_model_options(args, "run")  # the one option table (voxelkit.models.options)
    if model_options:
        opts["model_options"] = model_options
    if getattr(args, "filters", None):
        from ..pipeline.bids import parse_filters  # noqa: PLC0415

        opts["filters"] = parse_filters(args.filters)
    if getattr(args, "window", None):
        opts["windows"] = {name: (float(a), float(b)) for name, a, b in args.window}
    return opts


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("run", parents=[parent], help="run a whole BIDS-PET study: fits, statistics, report",
                       description="Fit every scan of a BIDS-PET crossover study, compute the condition "
                                   "contrast, run permutation inference and write a report. Re-running with "
                                   "the same inputs and settings reuses finished per-scan fits.")
    p.add_argument("bids_dir", nargs="?", default=None, help="BIDS-PET dataset (or give bids_dir in --study)")
    p.add_argument("--study", default=None, metavar="STUDY.toml", help="study file (TOML); CLI options win")
    p.add_argument("-o", "--output", dest="output_dir", default=None,
                   help="output directory (default BIDS_DIR/derivatives/voxelkit)")
    add_study_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..pipeline import StudyConfig, load_study_file, run_study  # noqa: PLC0415
    from . import CliError  # noqa: PLC0415

    opts = study_overrides(args)
    if args.output_dir:
        opts["output_dir"] = args.output_dir
    if args.bids_dir:
        opts["bids_dir"] = args.bids_dir
    if args.study:
        cfg = load_study_file(args.study, **opts)
    else:
        if "bids_dir" not in opts:
            raise CliError("give a BIDS dataset directory or --study STUDY.toml")
        cfg = StudyConfig(**opts)
    result = run_study(cfg, progress=not args.quiet)
    print_summary(result)
    return 0


def print_summary(result) -> None:
    cfg = result.config
    print(f"subjects: {len(result.subjects)} paired"
          + (f", dropped {len(result.dropped)}: {result.dropped}" if result.dropped else ""))
    print(f"fits: {result.fitted} fitted, {result.reused} reused; outputs in {result.output_dir}")
    for f in getattr(result, "failed_scans", []):
        print(f"FAILED SCAN: sub-{f['subject']} ses-{f['session']}" + (f" ({f['phase']})" if f.get("phase") else "")
              + f": {f['n_failed']} of {f['n_voxels']} voxels failed, mostly {f['main_status']} (likely cause: "
              f"{f['likely_cause']}); " + ("kept (--keep-failed-scans)" if f.get("kept") else
                                         "subject left out of the group test (--keep-failed-scans keeps it)"))
    choice = getattr(cfg, "model_choice", None)
    if choice:
        print(f"model (not given): {choice['model']} ({choice.get('reason', '')})")
    check = getattr(cfg, "activation_check", None)
    if check:
        print(f"protocol: {check.get('protocol') or 'unknown'}"
              + (f", Kbol {check['kbol_min']:g} min" if check.get("kbol_min") is not None else "")
              + f" ({check.get('source', '')})")
        for w in check.get("warnings", []):
            print(f"WARNING: {w}")
    k2 = getattr(result, "k2prime", {})
    if k2:
        vals = [v["value"] for v in k2.values()]
        print(f"k2' estimated once per scan: {min(vals):.4g}-{max(vals):.4g}/min over {len(vals)} scans "
              "(per scan in provenance.json)")
    for label, c in getattr(result, "contrasts", {}).items():
        tests = c["roi"].tests if c.get("roi") is not None else []
        n_sig = sum(1 for r in tests if r.get("p_fdr", 1) < 0.05)
        print(f"contrast {c['conditions'][0]} - {c['conditions'][1]} ({label}): statistics in {c['stats_dir']}"
              + (f"; {n_sig} of {len(tests)} regions with FDR q < 0.05" if tests else ""))
    sig = [r for r in result.roi_tests if r.get("p_fdr", 1) < 0.05]
    if result.roi_tests:
        print(f"ROI paired tests ({cfg.contrast}, {cfg.conditions[0]} - {cfg.conditions[1]}): "
              f"{len(sig)} of {len(result.roi_tests)} regions with FDR q < 0.05")
    if result.report:
        print(f"report: {result.report}")
