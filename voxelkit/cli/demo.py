"""``voxelkit demo``: simulate a small crossover study, analyse it end to end, summarise and point to the report."""

from __future__ import annotations

import argparse

from ..simulate.options import DEMO_DEFAULT_DESIGN, add_cli_knobs, cli_knob_overrides


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", parents=[parent], help="simulate a crossover study and run the whole pipeline",
                       description="Simulate a [11C]carfentanil crossover study (anakinra vs placebo) with a "
                                   "planted anakinra effect, run fits, permutation inference and the report, "
                                   "and say which planted regions were found.")
    p.add_argument("-o", "--output", default="voxelkit-demo", help="directory for the study and the results")
    p.add_argument("--design", choices=("scan", "release"), default=None,
                   help=f"scan: whole-scan BPND change (the classic demo); release: pain-induced release in both "
                        f"sessions, enhanced by anakinra during the challenge, analysed by --analysis; "
                        f"bolus-plus-infusion (Kbol 80 min) and challenge 45-90 min unless --protocol / --kbol / "
                        f"--challenge-window say otherwise (default {DEMO_DEFAULT_DESIGN})")
    p.add_argument("--analysis", choices=("release", "activation"), default=None,
                   help="release design: release = lp-ntPET on every whole scan and the paired test of the release "
                        "maps (--contrast release; default); activation = windowed activation (--contrast "
                        "activation, default combination)")
    p.add_argument("--n-subjects", type=int, default=10, help="subjects (default 10)")
    p.add_argument("--resolution", type=float, default=3, help="voxel size in mm (default 3)")
    p.add_argument("--effect", type=float, default=0.08, help="relative BPND reduction by anakinra (default 0.08)")
    p.add_argument("--noise", type=float, default=None,
                   help="noise level (default: the simulator's 0.1; release design 0.03, a low-noise study)")
    p.add_argument("--model", default=None,
                   help="kinetic model (default srtm; release design: lpntpet2 for --analysis release, the default "
                        "activation combination for --analysis activation)")
    p.add_argument("--n-perm", type=int, default=1024,
                   help="permutations (default 1024: with 10 subjects all 2^10 sign flips, an exact test; with "
                        "fewer subjects all 2^n; with more, 1024 random flips)")
    p.add_argument("--smoothing-fwhm", type=float, default=4.0, metavar="MM", help="smoothing (default 4 mm)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo directory")
    g = p.add_argument_group("simulated study (see voxelkit simulate -h)")
    add_cli_knobs(g, skip=("design",))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time  # noqa: PLC0415

    from ..pipeline.demo import run_demo  # noqa: PLC0415

    t0 = time.perf_counter()
    result, text, sim = run_demo(args.output, n_subjects=args.n_subjects, resolution=args.resolution,
                                 effect=args.effect, noise=args.noise, seed=args.seed, n_perm=args.n_perm,
                                 model=args.model, smoothing_fwhm=args.smoothing_fwhm, overwrite=args.overwrite,
                                 device=args.device, progress=not args.quiet, design=args.design,
                                 sim_options=cli_knob_overrides(args, skip=("design",)), analysis=args.analysis)
    print(sim.summary())
    print()
    print(text)
    print()
    print(f"done in {time.perf_counter() - t0:.0f} s; results in {result.output_dir}")
    if result.report:
        print(f"report: {result.report}")
    return 0
