"""Which kinetic model, options and protocol give a right activation by windows, in ONE place.

Activation by windows: fit the model separately in a ``baseline`` and a ``challenge`` window (minutes) and take
``activation = BPND(baseline) - BPND(challenge)``.  A BPND change inside the scan breaks every model's
assumption of constant binding, so whether a combination recovers the activation is measured, not assumed:
``bench/activation_bias.py`` simulates noiseless single TACs with the exact simulator
(:func:`voxelkit.simulate.kinetics.srtm_tacs`: Feng input, bolus or bolus-plus-infusion, BPND lowered by 10 %
in the challenge regions from 45 min to the end, nothing changing elsewhere) and compares with the truth.

**True BPND of a window**: the time average of the true BPND(t) over the frames the model fits in that window
(each frame's own time average, weighted by frame duration), i.e. ``sum_j d_j BP_j / sum_j d_j`` over the
window's frames with ``BP_j`` the mean of BPND(t) over frame j.  True activation = true(baseline) -
true(challenge).  Bounds: ``|activation| <= 0.02`` where nothing changes, within 5 % of the true activation in
the challenge regions.

:data:`RULES` is the table (first matching row wins); :func:`check_activation` applies it (warnings returned,
refusals raised as :class:`~voxelkit.io.InputError`); :func:`default_activation` is the combination used when
``--contrast activation`` is given without ``--model``; :func:`check_windows` refuses a window with fewer
frames than the model needs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..io import InputError

#: Protocols the table knows (BIDS ``ModeOfAdministration``: ``bolus``, ``bolus-infusion``).
PROTOCOLS = ("bolus", "bolus-infusion")

#: Least gap (minutes) between the end of the baseline window and the start of the challenge window for the
#: default (MRTM2) on bolus-plus-infusion to be "ok": the frames right after the challenge onset hold the
#: transition.
MIN_GAP_MIN = 15.0


def _has_k2p(o: Mapping[str, Any]) -> bool:
    return any(o.get(k) is not None for k in ("k2prime", "k2prime_region", "k2prime_mask", "k2prime_tac"))


def _gap(windows: Mapping[str, tuple[float, float]] | None) -> float | None:
    if not windows or not {"baseline", "challenge"} <= set(windows):
        return None
    return float(windows["challenge"][0]) - float(windows["baseline"][1])


def _k2p_from_baseline(o: Mapping[str, Any], windows: Mapping[str, tuple[float, float]] | None) -> bool:
    """k2' estimated from frames inside the baseline window (constant binding): ``k2prime="median"`` or a
    high-binding region (``k2prime_mask`` / ``k2prime_region``), with ``k2prime_window`` in the baseline."""
    estimated = o.get("k2prime") == "median" or (o.get("k2prime") is None and (
        o.get("k2prime_mask") is not None or o.get("k2prime_region") is not None))
    if not estimated or not windows or "baseline" not in windows:
        return False
    kw = o.get("k2prime_window")
    if kw is None:
        return False
    b0, b1 = (float(v) for v in windows["baseline"])
    return b0 - 1e-9 <= float(kw[0]) < float(kw[1]) <= b1 + 1e-9


def _k2p_whole_baseline(o: Mapping[str, Any], windows: Mapping[str, tuple[float, float]] | None) -> bool:
    """k2' median over exactly the baseline window, which starts at injection (the validated default)."""
    if not _k2p_from_baseline(o, windows):
        return False
    b0, b1 = (float(v) for v in windows["baseline"])  # type: ignore[index]
    k0, k1 = (float(v) for v in o["k2prime_window"])
    return abs(b0) < 1e-9 and abs(k0) < 1e-9 and abs(k1 - b1) < 1e-9


#: Kbol range (minutes) over which the default combination meets the bounds on bolus-plus-infusion studies.
KBOL_OK_MIN = (65.0, 90.0)


@dataclass(frozen=True)
class Rule:
    """One row of the table: ``model`` with options matching ``condition`` on ``protocol`` -> ``verdict``.
    ``match(options, windows, kbol_min)``; first match wins."""

    model: str
    condition: str  #: the options/windows condition, in words
    protocol: str  #: one of PROTOCOLS
    verdict: str  #: "ok" | "warn" | "refuse"
    reason: str
    match: Callable[[Mapping[str, Any], Mapping[str, tuple[float, float]] | None, float | None], bool] = \
        lambda o, w, k: True  # noqa: E731


_BOLUS_LOW = ("on bolus studies the tissue never re-equilibrates after the BPND change, so the challenge-window "
              "fit mixes both binding states: activation measured {} % of the truth in the challenge regions "
              "(bench/activation_bias.py); use the release contrast (lp-ntPET) for bolus studies")
_BI_KBOL = ("on bolus-plus-infusion studies the activation depends on how close the protocol comes to "
            "equilibrium: measured {} % of the truth for Kbol 50-110 min (bench/activation_bias.py)")
_NO_K2P = ("Logan without k2' gives activation -0.1 to -0.2 where nothing changes and the wrong sign in the "
           "challenge regions (the Cr/k2' term it drops changes between windows); give k2prime")


def _region_k2p(o: Mapping[str, Any]) -> bool:
    return o.get("k2prime_mask") is not None or o.get("k2prime_region") is not None


def _default_ok(o: Mapping[str, Any], w: Mapping[str, tuple[float, float]] | None, k: float | None) -> bool:
    return (_region_k2p(o) and _k2p_whole_baseline(o, w) and o.get("integration", "trapezoid") == "trapezoid"
            and (_gap(w) or 0.0) >= MIN_GAP_MIN - 1e-9 and k is not None
            and KBOL_OK_MIN[0] - 1e-9 <= k <= KBOL_OK_MIN[1] + 1e-9)


#: The table (first match wins).  Numbers quoted are from ``bench/activation_bias.py`` on the default
#: 30-frame 90-min schedule, BPND lowered by 10 % from 45 min in insula, caudate and thalamus.
RULES: tuple[Rule, ...] = (
    Rule("logan", "no k2'", "bolus", "refuse", _NO_K2P, lambda o, w, k: not _has_k2p(o)),
    Rule("logan", "no k2'", "bolus-infusion", "refuse", _NO_K2P, lambda o, w, k: not _has_k2p(o)),
    Rule("logan", "fixed k2'", "bolus", "warn", _BOLUS_LOW.format("69-85")),
    Rule("logan", "fixed k2'", "bolus-infusion", "warn", _BI_KBOL.format("94-122")),
    Rule("mrtm2", "baseline window from 0 min, k2' of a high-binding region over it (k2prime_mask, "
         "k2prime_window), trapezoid, "
         f"gap >= {MIN_GAP_MIN:g} min, Kbol {KBOL_OK_MIN[0]:g}-{KBOL_OK_MIN[1]:g} min", "bolus-infusion", "ok",
         "k2' from the baseline window (constant binding) and MRTM2's two parameters: within 5 % (measured 96-105 %"
         " for Kbol 65-90 min, null <= 0.004)", _default_ok),
    Rule("mrtm2", "k2' median over voxels in the baseline window", "bolus-infusion", "warn",
         "k2prime='median' meets the bounds on noiseless data (Kbol 65-90 min); the estimator before this release "
         "(voxels chosen by their noisy first-pass BPND) gave k2' 0.065-0.068 instead of 0.1 and thalamus BPND "
         "+40 % on the noisy demo study (3 mm, noise 0.1); the ratio selection now used gives 0.1005 and thalamus / "
         "caudate BPND -1.0 / -0.8 % on one such scan (Kbol 80, k2' window 0-45 min), not yet re-measured over the "
         "whole demo; give a "
         "high-binding region (k2prime_mask, with k2prime_window = the baseline window)",
         lambda o, w, k: _default_ok({**o, "k2prime_mask": "x"}, w, k) and o.get("k2prime") == "median"),
    Rule("mrtm2", "k2' from the baseline window, other Kbol or Kbol unknown", "bolus-infusion", "warn",
         f"validated for Kbol {KBOL_OK_MIN[0]:g}-{KBOL_OK_MIN[1]:g} min only (baseline window from 0 min and k2' "
         "over it; a later baseline start or a shorter k2' window shifts the activation by about +3 %; "
         f"windows >= {MIN_GAP_MIN:g} min apart): measured 106-109 % of the truth at Kbol 50 and 92-97 % at "
         "Kbol 110 min (windows 0-45 / 60-90); the bias grows with the distance from equilibrium",
         lambda o, w, k: _k2p_from_baseline(o, w) and (_gap(w) or 0.0) >= MIN_GAP_MIN - 1e-9),
    Rule("mrtm2", "other k2' sources or windows", "bolus-infusion", "warn",
         "a fixed k2' (measured 96-124 % of the truth for Kbol 50-110 min), k2' median from all frames (5-34 %: "
         "the BPND change biases k2'), the frame_average rule or contiguous windows (the transition frames: up to "
         f"119 %); give k2' from a high-binding region (k2prime_mask) with k2prime_window = the baseline window "
         f"and windows >= {MIN_GAP_MIN:g} min apart"),
    Rule("mrtm2", "any", "bolus", "warn", _BOLUS_LOW.format("67-86 (5-19 with k2' median over all frames)")),
    Rule("mrtm", "any", "bolus-infusion", "warn",
         "MRTM meets the bounds on noiseless step changes at Kbol 50-110 min only with integration frame_average "
         f"and windows >= {MIN_GAP_MIN:g} min apart, but near equilibrium its three regressors are nearly "
         "collinear: 4-6x the spread of MRTM2 with noise, and implausible values when BPND changes within the "
         "challenge window (a release time course); prefer mrtm2 with k2' from the baseline window"),
    Rule("mrtm", "any", "bolus", "warn", _BOLUS_LOW.format("66-86")),
    Rule("srtm", "any", "bolus", "refuse",
         "SRTM fitted in windows after a BPND change recovers 15-67 % of the activation on bolus studies "
         "(its convolution assumes one BPND since injection)"),
    Rule("srtm", "any", "bolus-infusion", "warn", _BI_KBOL.format("95-133")),
    Rule("srtm2", "any", "bolus", "refuse",
         "SRTM2 fitted in windows after a BPND change recovers 46-79 % of the activation on bolus studies "
         "(its convolution assumes one BPND since injection)"),
    Rule("srtm2", "any", "bolus-infusion", "warn", _BI_KBOL.format("96-135")),
    Rule("ratio", "any", "bolus", "refuse",
         "the ratio method needs equilibrium, which a bolus study never reaches (activation off by > 0.4 "
         "where nothing changes)"),
    Rule("ratio", "any", "bolus-infusion", "warn",
         "the ratio method assumes tissue and reference at equilibrium in both windows; on the simulated "
         "bolus-plus-infusion protocols (Kbol 50-110 min) high-binding tissue still rises at 90 min and the "
         "activation is off by 0.27-0.33 where nothing changes: check equilibrium (flat C_T/C_R) in your data"),
)

_ORDER = {"ok": 0, "warn": 1, "refuse": 2}


def _rule(model: str, options: Mapping[str, Any], protocol: str,
          windows: Mapping[str, tuple[float, float]] | None, kbol_min: float | None) -> Rule | None:
    for r in RULES:
        if r.model == model and r.protocol == protocol and r.match(options, windows, kbol_min):
            return r
    return None


def check_activation(model: str, model_options: Mapping[str, Any] | None = None, protocol: str | None = None,
                     windows: Mapping[str, tuple[float, float]] | None = None,
                     kbol_min: float | None = None) -> list[str]:
    """Check a model for ``--contrast activation``: returns warning messages (empty when the combination is
    known to meet the bounds) or raises :class:`~voxelkit.io.InputError` with the reason for a refused one.

    ``protocol``: ``bolus`` or ``bolus-infusion`` (BIDS ``ModeOfAdministration``; None = unknown: refused only
    if refused on both, otherwise a warning for each protocol on which it is not "ok").
    ``windows``: ``{"baseline": (start, end), "challenge": (start, end)}``
    in minutes (rules depend on the gap between them).  ``kbol_min``: the infusion's Kbol in minutes if known
    (the bolus-plus-infusion "ok" holds for :data:`KBOL_OK_MIN` only).
    """
    key = model.lower()
    opts = dict(model_options or {})
    if protocol is not None and protocol not in PROTOCOLS:
        raise InputError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    prots = [protocol] if protocol else list(PROTOCOLS)
    found = [(p, _rule(key, opts, p, windows, kbol_min)) for p in prots]
    unknown = [p for p, r in found if r is None]
    if unknown:
        return [f"activation with model {key!r} on {' / '.join(unknown)} studies has not been validated "
                "(bench/activation_bias.py): its bias is unknown"]
    refused = [(p, r) for p, r in found if r.verdict == "refuse"]
    if refused and len(refused) == len(found):
        p, r = refused[0]
        where = p if protocol else "bolus and bolus-infusion"
        raise InputError(f"--model {key} with --contrast activation is refused on {where} studies: {r.reason}")
    # protocol unknown and refused on one of them only: warn (the data may be of the other protocol)
    return [f"--model {key} with --contrast activation "
            + (f"is refused on {p} studies" if r.verdict == "refuse" else f"on {p} studies")
            + ("" if protocol else " (protocol unknown)") + f": {r.reason}"
            for p, r in found if r.verdict != "ok"]


def default_activation(protocol: str | None = None, windows: Mapping[str, tuple[float, float]] | None = None,
                       k2prime_mask: Any = None) -> tuple[str, dict[str, Any]]:
    """The (model, options) used for ``--contrast activation`` without ``--model``: MRTM2 with k2' from the
    baseline window's frames (``k2prime_window`` = the baseline window, when ``windows`` are given): from an MRTM
    fit of the mean TAC of ``k2prime_mask`` (a high-binding region; preferred, robust to voxel noise) if given,
    else the median MRTM k2' over voxels (``k2prime="median"``).  It is the table's "ok" row on
    bolus-plus-infusion studies (Kbol 65-90 min, windows >= 15 min apart); on bolus studies no windowed model
    meets the bounds and :func:`check_activation` warns."""
    opts: dict[str, Any] = {"k2prime": "median"} if k2prime_mask is None else {"k2prime_mask": k2prime_mask}
    if windows and "baseline" in windows:
        opts["k2prime_window"] = [float(v) for v in windows["baseline"]]
    return "mrtm2", opts


def default_windows(challenge_start_min: float, scan_end_min: float,
                    baseline_start_min: float = 0.0) -> dict[str, tuple[float, float]]:
    """Windows (minutes) for a challenge starting at ``challenge_start_min``: baseline up to the onset, challenge
    from ``MIN_GAP_MIN`` later to the end of the scan."""
    return {"baseline": (float(baseline_start_min), float(challenge_start_min)),
            "challenge": (float(challenge_start_min) + MIN_GAP_MIN, float(scan_end_min))}


def check_windows(model: Any, windows: Mapping[str, tuple[float, float]], frames: Any,
                  option: str = "--window") -> None:
    """Raise :class:`~voxelkit.io.InputError` naming ``option`` if a window holds fewer frames than the model
    (a :class:`~voxelkit.models.base.ReferenceModel`) needs (its parameters + 1) or lies outside the scan."""
    end = float(frames.end_min[-1])
    saved = model.window
    try:
        for name, (a, b) in windows.items():
            if not (0.0 <= float(a) < float(b)) or float(a) >= end:
                raise InputError(f"{option} {name} [{a:g}, {b:g}] min is not an increasing window inside the scan "
                                 f"(0-{end:g} min)")
            model.window = (float(a), float(b))
            n = int(model.used_frames(frames).sum())
            need = int(model.n_regressors) + 1
            if n < need:
                raise InputError(f"{option} {name} [{a:g}, {b:g}] min holds {n} frame(s); model {model.name} needs "
                                 f"at least {need}")
    finally:
        model.window = saved


# ------------------------------------------------------------------------------------------------------------
# measurement (used by bench/activation_bias.py and tests/test_activation_bias.py)
# ------------------------------------------------------------------------------------------------------------
#: Test TACs: (name, BPND, R1, in a challenge region) - grey and white matter and three challenge regions.
BIAS_TACS = (("grey_matter", 0.8, 1.0, False), ("white_matter", 0.25, 0.6, False), ("insula", 1.3, 1.0, True),
             ("caudate", 2.0, 1.0, True), ("thalamus", 2.8, 1.1, True))


def true_window_bp(frames: Any, used: np.ndarray, bp_segments: np.ndarray, switch_min: np.ndarray) -> np.ndarray:
    """True BPND of a window (see the module docstring): duration-weighted mean over the ``used`` frames of each
    frame's time average of the piecewise-constant BPND (``bp_segments`` (V, S), ``switch_min`` (S-1,))."""
    edges = np.concatenate([[-np.inf], np.asarray(switch_min, float), [np.inf]])
    s, e = frames.start_min[used], frames.end_min[used]
    over = np.clip(np.minimum(e[None, :], edges[1:, None]) - np.maximum(s[None, :], edges[:-1, None]), 0, None)
    return (bp_segments @ over.sum(axis=1)) / float((e - s).sum())


def activation_bias(model: str, options: Mapping[str, Any], protocol: str, windows: Mapping[str, tuple],
                    kbol: float = 80.0, challenge_on_min: float = 45.0, displacement: float = 0.10,
                    frames: Any = None, release: tuple[float, float] | None = None) -> dict[str, Any]:
    """Noiseless activation error of one combination (see the module docstring).  ``kbol`` (minutes) is used for
    ``bolus-infusion``.  ``release``: None for a step change from ``challenge_on_min`` to the end, or
    ``(peak_min, alpha)`` for the simulator's lp-ntPET release time course (onset ``challenge_on_min``, peak
    ``peak_min`` later, to the end of the scan; peak occupancy ``displacement``).  Returns ``null_error``
    (largest |activation| where nothing changes), ``rel_error`` (per challenge region, activation / true - 1),
    ``bp_baseline_error`` and the activations."""
    from ..simulate.kinetics import FengInput, carfentanil_frames, srtm_tacs  # noqa: PLC0415
    from . import get_model  # noqa: PLC0415

    fr = frames or carfentanil_frames()
    bp0 = np.array([t[1] for t in BIAS_TACS])
    options = dict(options)
    if options.pop("k2prime_mask", None) is not None or options.get("k2prime_region") is not None:
        options["k2prime_region"] = bp0 >= 2.0  # the high-binding TACs (caudate, thalamus)
    r1 = np.array([t[2] for t in BIAS_TACS])
    chal = np.array([t[3] for t in BIAS_TACS])
    if release is None:
        segs = np.stack([bp0, np.where(chal, bp0 * (1 - displacement), bp0)], axis=1)
        sw = np.array([challenge_on_min])
    else:
        from ..simulate.study import SimulationConfig, release_bp, release_steps  # noqa: PLC0415

        cfg = SimulationConfig(design="release", frames=fr, release_peak_min=float(release[0]),
                          release_alpha=float(release[1]),
                          challenge_window_min=(challenge_on_min, float(fr.end_min[-1])))
        sw, h = release_steps(cfg)
        segs = release_bp(bp0, np.where(chal, displacement, 0.0), h)
    inp = FengInput(delay=0.2, scale=0.55, kbol=kbol if protocol == "bolus-infusion" else None)
    tis, ref = srtm_tacs(fr, r1, segs, inp=inp, switch_min=sw)
    bp, true = {}, {}
    for w in ("baseline", "challenge"):
        m = get_model(model, window=tuple(windows[w]), device="cpu", **options)
        fit = m.fit(tis, ref, fr)
        bp[w] = fit.bp_nd.astype(float)
        true[w] = true_window_bp(fr, fit.used_frames, segs, sw)
    act = bp["baseline"] - bp["challenge"]
    tact = true["baseline"] - true["challenge"]
    return {"null_error": float(np.abs(act[~chal]).max()),
            "rel_error": {BIAS_TACS[i][0]: float(act[i] / tact[i] - 1) for i in np.flatnonzero(chal)},
            "bp_baseline_error": float(np.abs(bp["baseline"] - true["baseline"]).max()),
            "activation": act, "true_activation": tact}


def meets_bounds(res: Mapping[str, Any], null_bound: float = 0.02, rel_bound: float = 0.05) -> bool:
    """Whether a result of :func:`activation_bias` meets the issue's bounds."""
    return bool(res["null_error"] <= null_bound and max(abs(v) for v in res["rel_error"].values()) <= rel_bound)
