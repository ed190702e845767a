"""The simulator's study knobs (design, protocol, challenge window, release time course) defined once for the
Python API (:class:`voxelkit.simulate.study.SimulationConfig` fields) and the command line (``voxelkit simulate``,
``voxelkit demo``).  Light: no NumPy/nibabel import, so the CLI starts fast.  Times in minutes."""

from __future__ import annotations

import argparse

DESIGNS = ("scan", "release")
PROTOCOLS = ("bolus", "bolus-infusion")
#: Kbol (minutes) of ``protocol="bolus-infusion"`` when ``kbol`` is not given.
DEFAULT_KBOL_MIN = 80.0
#: The design ``voxelkit demo`` runs without ``--design`` (the ONE place to flip it): "release" (analysed by the
#: lp-ntPET release contrast, ``voxelkit.pipeline.demo.RELEASE_ANALYSIS``); "scan" is the classic demo.
DEMO_DEFAULT_DESIGN = "release"


#: The study knobs the command line offers beyond the basic ones, defined once here for ``voxelkit simulate``
#: (and ``voxelkit demo``): (flag, SimulationConfig field, argparse keywords).  Units in the help texts.
CLI_KNOBS: tuple[tuple[str, str, dict], ...] = (
    ("--design", "design", {"choices": DESIGNS,
                            "help": "release: the pain challenge lowers BPND in the challenge regions in every session "
                                    "with an lp-ntPET time course (onset, peak, decay) and the drug adds --effect of "
                                    "extra reduction during the challenge only; scan: whole-scan drug effect, step "
                                    "challenge (default scan)"}),
    ("--protocol", "protocol", {"choices": PROTOCOLS,
                                "help": "tracer administration: bolus, or bolus-infusion (Carson; Kbol from --kbol, "
                                        f"default {DEFAULT_KBOL_MIN:g} min); default bolus unless --kbol is given"}),
    ("--kbol", "kbol", {"type": float, "metavar": "MIN",
                        "help": "bolus-plus-infusion Kbol in minutes (the bolus equals Kbol minutes of infusion)"}),
    ("--challenge-window", "challenge_window_min", {"type": float, "nargs": 2, "metavar": ("START", "END"),
                                                    "help": "pain challenge from START to END minutes after "
                                                            "injection (default 45 65)"}),
    ("--displacement", "challenge_displacement", {"type": float, "metavar": "FRAC",
                                                  "help": "mean relative BPND reduction by the challenge (at the "
                                                          "peak of the release; default 0.1)"}),
    ("--release-peak", "release_peak_min", {"type": float, "metavar": "MIN",
                                            "help": "release design: minutes from the challenge onset to the peak "
                                                    "of the release (default 10)"}),
    ("--release-alpha", "release_alpha", {"type": float, "metavar": "ALPHA",
                                          "help": "release design: sharpness of the gamma-variate time course "
                                                  "(lp-ntPET alpha; default 1)"}),
)


def add_cli_knobs(parser: argparse.ArgumentParser, defaults: dict | None = None, skip: tuple[str, ...] = ()) -> None:
    """Add :data:`CLI_KNOBS` to an argparse parser (values default to None = the SimulationConfig default, or
    ``defaults[field]``)."""
    for flag, name, kw in CLI_KNOBS:
        if name in skip:
            continue
        parser.add_argument(flag, dest=name, default=(defaults or {}).get(name), **kw)


def cli_knob_overrides(args: argparse.Namespace, skip: tuple[str, ...] = ()) -> dict:
    """The :data:`CLI_KNOBS` given on the command line (except fields ``skip``), as SimulationConfig overrides."""
    out = {}
    for _, name, _ in CLI_KNOBS:
        if name in skip:
            continue
        val = getattr(args, name, None)
        if val is not None:
            out[name] = tuple(val) if isinstance(val, list) else val
    return out
