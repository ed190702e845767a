"""Bias of activation by windows: model x options x protocol x windows on noiseless simulated TACs.

Usage: ``python bench/activation_bias.py [--markdown]`` (about 10 s on 2 cores).  For each combination it
simulates five TACs with the exact simulator (grey and white matter without change; insula, caudate and
thalamus with BPND lowered by 10 % from 45 min to the end; Feng input, delay 0.2 min) and fits the baseline
and challenge windows.  Each cell shows the largest |activation| where nothing changes ("null"), the range of
the relative error of the activation in the challenge regions (%), against the true window BPND defined in
:mod:`voxelkit.models.activation`, and the table's verdict (:data:`voxelkit.models.activation.RULES`:
ok / warn / refuse) for that protocol and Kbol; ``*`` marks a measurement that meets the bounds
(|null| <= 0.02, |relative| <= 5 %).  A row whose verdict is "ok" in a cell without ``*`` would be a bug of the
table (counted at the end; tests/test_activation_bias.py asserts it is zero).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from typing import Any

from voxelkit.io import InputError
from voxelkit.models.activation import activation_bias, check_activation, default_activation, meets_bounds


def _fixed(opts: dict[str, Any]) -> Callable[[dict], dict[str, Any]]:
    return lambda w: dict(opts)


#: (label, model, options as a function of the windows)
COMBOS: tuple[tuple[str, str, Callable[[dict], dict[str, Any]]], ...] = (
    ("logan t*10", "logan", _fixed({"tstar": 10})),
    ("logan t*20", "logan", _fixed({"tstar": 20})),
    ("logan k2'=0.1 t*10", "logan", _fixed({"tstar": 10, "k2prime": 0.1})),
    ("logan k2'=0.1 t*20", "logan", _fixed({"tstar": 20, "k2prime": 0.1})),
    ("mrtm", "mrtm", _fixed({})),
    ("mrtm frame_average", "mrtm", _fixed({"integration": "frame_average"})),
    ("mrtm2 k2'=0.1", "mrtm2", _fixed({"k2prime": 0.1})),
    ("mrtm2 k2' median (all frames)", "mrtm2", _fixed({"k2prime": "median"})),
    ("mrtm2 k2' median (baseline)", "mrtm2", lambda w: default_activation("bolus-infusion", w)[1]),
    ("mrtm2 k2' region (baseline) [default]", "mrtm2",
     lambda w: default_activation("bolus-infusion", w, k2prime_mask="high-binding region")[1]),
    ("srtm", "srtm", _fixed({})),
    ("srtm2 k2'=0.1", "srtm2", _fixed({"k2prime": 0.1})),
    ("ratio", "ratio", _fixed({})),
)
WINDOWS = (
    ("0-45 / 45-90", {"baseline": (0.0, 45.0), "challenge": (45.0, 90.0)}),
    ("0-45 / 60-90", {"baseline": (0.0, 45.0), "challenge": (60.0, 90.0)}),
)
#: (column label, protocol, Kbol minutes)
PROTOCOLS = (("bolus", "bolus", None), ("B/I Kbol 50", "bolus-infusion", 50.0),
             ("B/I Kbol 80", "bolus-infusion", 80.0), ("B/I Kbol 110", "bolus-infusion", 110.0))


def verdict(model: str, options: dict, protocol: str, windows: dict, kbol: float | None) -> str:
    try:
        return "warn" if check_activation(model, options, protocol, windows, kbol) else "ok"
    except InputError:
        return "refuse"


def run() -> list[dict[str, Any]]:
    """Measure every cell (the k2' region of the TAC fits is the high-binding TACs: caudate and thalamus)."""
    """One dict per (windows, combination, protocol column): null, rel_lo, rel_hi, meets, table."""
    rows = []
    for wlab, win in WINDOWS:
        for label, model, opt_fn in COMBOS:
            opts = opt_fn(win)
            for plab, protocol, kbol in PROTOCOLS:
                r = activation_bias(model, opts, protocol, win, kbol=kbol or 80.0)
                rel = list(r["rel_error"].values())
                rows.append({"windows": wlab, "combination": label, "model": model, "options": opts,
                             "column": plab, "protocol": protocol, "kbol": kbol, "null": r["null_error"],
                             "rel_lo": min(rel), "rel_hi": max(rel), "meets": meets_bounds(r),
                             "table": verdict(model, opts, protocol, win, kbol)})
    return rows


#: Release time courses of the second table: (label, (peak minutes after the onset, alpha)).
RELEASES = (("peak +10 min, alpha 1 (simulator default)", (10.0, 1.0)), ("peak +10 min, alpha 0.25 (sustained)",
                                                                          (10.0, 0.25)))
RELEASE_COMBOS = ("logan k2'=0.1 t*20", "mrtm", "mrtm frame_average", "mrtm2 k2'=0.1",
                  "mrtm2 k2' region (baseline) [default]", "srtm2 k2'=0.1")


def run_release() -> list[dict[str, Any]]:
    """The lp-ntPET release time course (onset 45 min, to the end) on bolus-plus-infusion, Kbol 80 min, windows
    0-45 / 60-90: how windowed methods do when BPND changes within the challenge window (no bounds apply)."""
    win = dict(WINDOWS[1][1])
    combos = {c[0]: c for c in COMBOS}
    rows = []
    for rlab, rel in RELEASES:
        for label in RELEASE_COMBOS:
            _, model, opt_fn = combos[label]
            r = activation_bias(model, opt_fn(win), "bolus-infusion", win, kbol=80.0, release=rel)
            v = list(r["rel_error"].values())
            rows.append({"release": rlab, "combination": label, "null": r["null_error"], "rel_lo": min(v),
                         "rel_hi": max(v)})
    return rows


def _cell(r: dict[str, Any]) -> str:
    return (f"{r['null']:.3f}, {100 * r['rel_lo']:+.0f}..{100 * r['rel_hi']:+.0f} % "
            f"{r['table']}{'*' if r['meets'] else ''}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # the frame-window notes of every fit
    t0 = time.perf_counter()
    rows = run()
    cols = [c[0] for c in PROTOCOLS]
    keys = list(dict.fromkeys((r["windows"], r["combination"]) for r in rows))
    cell = {(r["windows"], r["combination"], r["column"]): _cell(r) for r in rows}
    if args.markdown:
        print("| windows (min) | model | " + " | ".join(cols) + " |")
        print("|---|---|" + "---|" * len(cols))
        for w, c in keys:
            print(f"| {w} | {c} | " + " | ".join(cell[(w, c, k)] for k in cols) + " |")
    else:
        print(f"{'windows':<14}{'model':<40}" + "".join(f"{k:>28}" for k in cols))
        for w, c in keys:
            print(f"{w:<14}{c:<40}" + "".join(f"{cell[(w, c, k)]:>28}" for k in cols))
    bad = [r for r in rows if r["table"] == "ok" and not r["meets"]]
    print(f"{len(rows)} cells in {time.perf_counter() - t0:.1f} s; cell = null error, relative error range, "
          f"verdict (* = meets the bounds); 'ok' but failing the bounds: {len(bad)}")
    print()
    rel_rows = run_release()
    print("release time course (lp-ntPET shape from 45 min, peak occupancy 10 %), bolus-plus-infusion Kbol 80 min, "
          "windows 0-45 / 60-90:")
    if args.markdown:
        print("| release | model | max \\|activation\\| where nothing changes | relative error |")
        print("|---|---|---|---|")
    for r in rel_rows:
        rel = f"{100 * r['rel_lo']:+.0f}..{100 * r['rel_hi']:+.0f} %"
        if args.markdown:
            print(f"| {r['release']} | {r['combination']} | {r['null']:.3f} | {rel} |")
        else:
            print(f"{r['release']:<42}{r['combination']:<40}{r['null']:>7.3f}{rel:>16}")


if __name__ == "__main__":
    main()
