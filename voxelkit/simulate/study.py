"""Simulate a [11C]carfentanil anakinra/placebo crossover study and write it as a BIDS-PET dataset.

What is planted, exactly (all multiplicative on BPND, per voxel of the phantom):

``BPND[subject, session] = phantom BPND x subject factor (all voxels) x subject-by-region factor (per atlas
label) x session factor (all voxels) x period factor (second crossover period, all voxels; 1 by default)
x drug factor``, where the **drug factor** is ``1 - effect`` in the voxels of ``effect_regions`` in the
``anakinra`` session and 1 everywhere else (``effect_on="scan"``, the default of ``design="scan"``).  With
``effect_on="challenge"`` the drug factor applies only during the challenge window.  The reference region keeps
BPND 0 and R1 1.

**Designs.**  ``design="scan"`` (default): the above, with a step challenge.  ``design="release"`` (the study's
finding: the drug enhances pain-induced release): the challenge lowers BPND in ``challenge_regions`` in every
challenged session with a release time course, and in the drug session the drug adds ``effect`` of extra
reduction in ``effect_regions`` during the challenge only (``effect_on`` is "challenge").  The time course is
the one lp-ntPET assumes (Normandin et al. 2012): the efflux rate rises by ``gamma h(t)`` with
``h(t) = tau^alpha exp(alpha (1 - tau))``, ``tau = (t - t_D) / (t_P - t_D)`` from the onset ``t_D`` (the start
of ``challenge_window_min``) to its peak ``t_P = t_D + release_peak_min`` and decaying after it, stopping at the
end of the challenge window; ``BP(t) = k2 / (k2a + gamma h(t)) - 1`` with ``gamma`` such that the occupancy
``1 - BP(t_P)/BP`` at the peak is ``1 - (1 - displacement)(1 - drug effect)``.  It is simulated exactly as a
staircase of ``release_step_min`` steps (BPND at each step's mid-time); the staircase is the truth written to
``occupancy.tsv``.

**Protocols.**  ``protocol="bolus"`` or ``"bolus-infusion"`` (Carson's bolus plus constant infusion with
``kbol`` minutes, default :data:`DEFAULT_KBOL_MIN`); None follows ``kbol``.

The **pain challenge** (``challenge="within"``) lowers BPND by the fraction ``displacement`` (per subject and
session, linked to covariates) in ``challenge_regions`` between ``challenge_window_min`` minutes, in every
session except ``baseline``; ``challenge="between"`` lowers it for the whole scan instead (add
``baseline_session=True`` for an unchallenged ``ses-baseline``); ``"none"`` disables it.

Images are frame averages (kBq/mL) decay-corrected to injection (TimeZero), with Gaussian noise whose variance
follows the counts (activity x C-11 decay x frame duration) and is spatially correlated to ``fwhm_mm`` with the
voxel variance preserved.  ``noise`` is the coefficient of variation of one reference-region voxel in the last
frame at 2 mm for a nominal subject (it scales with (2 mm / voxel size)^1.5); ``noise=0`` is noiseless.
The white field is drawn as unit-variance uniform noise when the smoothing kernel spans >= 1 voxel sd (the
smoothed field is then Gaussian by the central limit theorem; 9x faster to draw), else as normal deviates.
Noisy images keep ``mantissa_bits`` (12) significant bits (relative rounding <= 2.4e-4, far below the noise),
which halves gzip time; noiseless images are exact float32.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import scipy.ndimage as ndi

from ..frames import FrameTiming
from ..io import write_json, write_tsv
from .kinetics import C11_HALF_LIFE_MIN, FengInput, SRTMTable, carfentanil_frames, decay_factor
from .options import DEFAULT_KBOL_MIN, DESIGNS, PROTOCOLS
from .phantom import Phantom, Region, TissueValues, build_phantom

log = logging.getLogger(__name__)

__all__ = ["PRESETS", "SimulationConfig", "SimulationResult", "simulate_study", "plan_study"]

#: Names before 0.2 (``StudyConfig`` / ``StudyResult`` were also the pipeline's classes): deprecated aliases.
_DEPRECATED = {"StudyConfig": "SimulationConfig", "StudyResult": "SimulationResult"}


def __getattr__(name: str):
    if name in _DEPRECATED:
        logging.getLogger("voxelkit").warning("DEPRECATED: voxelkit.simulate.study.%s is now %s (the old name "
                                              "works for one release)", name, _DEPRECATED[name])
        return globals()[_DEPRECATED[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

BIDS_VERSION = "1.10.0"
DERIV = "voxelkit-sim"
#: The simulator's own records in ``derivatives/<DERIV>/``: the full configuration, the ground truth per scan and
#: (release designs) the occupancy time courses.
SIMULATION_RECORD = "simulation.json"
TRUTH_TABLE = "truth.tsv"
OCCUPANCY_TABLE = "occupancy.tsv"
#: Ending of the true peak-occupancy map of a release scan (``<sub>_<ses>`` + this, in the scan's pet folder).
TRUE_PEAK_OCCUPANCY_SUFFIX = "_desc-truepeakoccupancy_mimap.nii.gz"
SPACE = "MNI152NLin2009cAsym"
CARFENTANIL_MW = 394.5  # g/mol
#: Input scale (kBq/mL per unit Feng shape) for 350 MBq: reference TAC peaks near 12 kBq/mL.
BASE_SCALE_PER_MBQ = 0.55 / 350.0
DEFAULT_EFFECT_REGIONS = ("thalamus", "insula", "nucleus_accumbens", "anterior_cingulate", "caudate")


@dataclass
class SimulationConfig:
    """Everything that defines a simulated study (units in the field comments)."""

    n_subjects: int = 12
    effect: float = 0.08  # relative BPND reduction in effect_regions in the drug session
    effect_regions: tuple[str, ...] = DEFAULT_EFFECT_REGIONS
    effect_on: str | None = None  # "scan" | "challenge" (only during the challenge window); None: by design
    design: str = "scan"  # "scan" (whole-scan drug effect, step challenge) | "release" (see the module doc)
    protocol: str | None = None  # "bolus" | "bolus-infusion"; None: bolus-infusion if kbol is given
    noise: float = 0.10  # COV of a 2 mm reference voxel, last frame; 0 = noiseless
    fwhm_mm: float = 7.0  # spatial correlation of the noise (reconstructed resolution), mm
    psf_fwhm_mm: float = 0.0  # optional blur of the noiseless signal, mm (0: fitted BPND = truth)
    seed: int = 0
    resolution: float = 2  # voxel size, mm
    sessions: tuple[str, ...] = ("anakinra", "placebo")  # crossover sessions, randomized order
    drug_session: str = "anakinra"
    baseline_session: bool = False  # add ses-baseline (first, no drug, no challenge)
    challenge: str = "within"  # "within" | "between" | "none"
    challenge_window_min: tuple[float, float | None] = (45.0, 65.0)  # minutes after injection
    challenge_displacement: float = 0.10  # mean relative BPND reduction during the challenge
    challenge_regions: tuple[str, ...] = DEFAULT_EFFECT_REGIONS + ("amygdala",)
    challenge_sd: float = 0.3  # relative sd of the displacement across subjects and sessions
    activation_links: dict[str, float] = field(default_factory=lambda: {"neuroticism": 0.3, "il1b": 0.3})
    pain_link: float = -0.5  # correlation-like link of pain ratings to the displacement
    bp_subject_sd: float = 0.10  # log-sd of the subject's global BPND factor
    bp_region_sd: float = 0.05  # log-sd of subject-by-region BPND factors
    bp_session_sd: float = 0.02  # log-sd of the scan's global BPND factor (test-retest)
    r1_subject_sd: float = 0.05  # log-sd of the subject's R1 factor (not the reference region)
    period_effect: float = 0.0  # relative BPND change in the second crossover period (all voxels)
    k1prime: float = 0.1  # reference K1', mL/min/mL
    k2prime: float = 0.1  # reference k2', 1/min
    injected_mbq: float = 350.0  # mean injected radioactivity, MBq
    injected_sd_mbq: float = 30.0
    specific_activity: float = 400.0  # MBq/ug at injection (mean)
    input_sd: float = 0.10  # log-sd of the subject's input scale (body size, clearance)
    kbol: float | None = None  # bolus-plus-infusion Kbol in minutes (None: bolus, or DEFAULT_KBOL_MIN)
    release_peak_min: float = 10.0  # release design: minutes from the onset to the peak of the release
    release_alpha: float = 1.0  # release design: sharpness of the gamma variate (lp-ntPET's alpha)
    release_step_min: float = 0.5  # release design: staircase step of the simulated time course, minutes
    input_delay_min: float = 0.2  # arrival delay of the input, minutes
    frames: FrameTiming | None = None  # default carfentanil_frames()
    regions: tuple[Region, ...] | None = None  # default phantom.default_regions()
    tissue: TissueValues | None = None
    image_dtype: str = "float32"  # "float32" | "int16" (scaled)
    mantissa_bits: int = 12  # significant bits kept in noisy images (24: all; noiseless images keep all)
    n_jobs: int = 1  # worker processes writing scans (results do not depend on it)

    # -- resolved settings -------------------------------------------------------------------------------------
    @property
    def effect_when(self) -> str:
        """When the drug effect applies: ``effect_on`` or, if None, "challenge" for the release design."""
        if self.effect_on is not None:
            return self.effect_on
        return "challenge" if self.design == "release" else "scan"

    @property
    def protocol_name(self) -> str:
        """``bolus`` or ``bolus-infusion`` (``protocol``, or from ``kbol`` when None)."""
        if self.protocol is not None:
            return self.protocol
        return "bolus" if self.kbol is None else "bolus-infusion"

    @property
    def kbol_min(self) -> float | None:
        """Kbol in minutes of the infusion (None for a bolus)."""
        if self.protocol_name == "bolus":
            return None
        return DEFAULT_KBOL_MIN if self.kbol is None else float(self.kbol)

    def scan_frames(self) -> FrameTiming:
        return self.frames or carfentanil_frames()

    def validate(self) -> None:
        if self.n_subjects < 1:
            raise ValueError(f"n_subjects must be >= 1, got {self.n_subjects}")
        if not 0 <= self.effect < 1:
            raise ValueError(f"effect must be in [0, 1), got {self.effect}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")
        if self.design not in DESIGNS:
            raise ValueError(f"design (--design) must be 'scan' or 'release', got {self.design!r}")
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol (--protocol) must be 'bolus' or 'bolus-infusion', got {self.protocol!r}")
        if self.protocol == "bolus" and self.kbol is not None:
            raise ValueError("kbol (--kbol) needs protocol 'bolus-infusion' (--protocol bolus-infusion)")
        if self.kbol is not None and not (math.isfinite(self.kbol) and self.kbol > 0):
            raise ValueError(f"kbol (--kbol) must be a positive number of minutes, got {self.kbol}")
        if self.effect_on not in (None, "scan", "challenge"):
            raise ValueError(f"effect_on must be 'scan' or 'challenge', got {self.effect_on!r}")
        if self.design == "release":
            if self.challenge != "within":
                raise ValueError(f"design 'release' needs challenge 'within', got {self.challenge!r}")
            if self.effect_on == "scan":
                raise ValueError("design 'release' puts the drug effect in the challenge window; effect_on='scan' "
                                 "contradicts it")
            if not (math.isfinite(self.release_peak_min) and self.release_peak_min > 0):
                raise ValueError(f"release_peak_min (--release-peak) must be > 0 minutes, got "
                                 f"{self.release_peak_min}")
            if not (math.isfinite(self.release_alpha) and self.release_alpha > 0):
                raise ValueError(f"release_alpha (--release-alpha) must be > 0, got {self.release_alpha}")
            if not (math.isfinite(self.release_step_min) and self.release_step_min > 0):
                raise ValueError(f"release_step_min must be > 0 minutes, got {self.release_step_min}")
        if self.challenge not in ("within", "between", "none"):
            raise ValueError(f"challenge must be 'within', 'between' or 'none', got {self.challenge!r}")
        if self.drug_session not in self.sessions or len(set(self.sessions)) != len(self.sessions):
            raise ValueError(f"sessions {self.sessions} must be distinct and contain {self.drug_session!r}")
        for s in self.sessions:
            if not s.isalnum():
                raise ValueError(f"session label {s!r} must be alphanumeric (BIDS)")
        if self.image_dtype not in ("float32", "int16"):
            raise ValueError(f"image_dtype must be 'float32' or 'int16', got {self.image_dtype!r}")
        if self.challenge == "within":
            if len(tuple(self.challenge_window_min)) != 2:
                raise ValueError(f"challenge window (--challenge-window START END) must be two times in minutes, "
                                 f"got {self.challenge_window_min}")
            on, off = self.challenge_window_min
            if not (self.input_delay_min < on and (off is None or off > on)):
                raise ValueError(f"challenge window (--challenge-window) {list(self.challenge_window_min)} min must "
                                 f"be increasing and start after the input delay ({self.input_delay_min:g} min)")
            end = float(self.scan_frames().end_min[-1])
            if on >= end or (off is not None and off > end + 1e-9):
                raise ValueError(f"challenge window (--challenge-window) {list(self.challenge_window_min)} min lies "
                                 f"outside the scan (0-{end:g} min)")
            if self.design == "release" and on + self.release_peak_min >= (end if off is None else off):
                raise ValueError(f"release peak {on + self.release_peak_min:g} min (--release-peak) is not inside "
                                 f"the challenge window (--challenge-window) {list(self.challenge_window_min)} min")
        if self.effect_when == "challenge" and self.challenge != "within":
            raise ValueError("effect_on='challenge' needs challenge='within'")


#: Named presets; keyword arguments to :func:`simulate_study` override them.
PRESETS: dict[str, dict] = {
    "test": {"n_subjects": 4, "resolution": 4},
    "demo": {"n_subjects": 10, "resolution": 3},
    "full": {},
}


@dataclass
class SimulationResult:
    """Where the study went and what was planted."""

    root: Path
    config: SimulationConfig
    pet_files: list[Path]
    derivatives: Path
    truth: list[dict]
    seconds: float

    def summary(self) -> str:
        c = self.config
        lines = [f"wrote {len(self.pet_files)} PET scans ({c.n_subjects} subjects x "
                 f"{len(self.pet_files) // c.n_subjects} sessions, {c.resolution:g} mm) to {self.root} "
                 f"in {self.seconds:.1f} s",
                 f"planted: BPND x {1 - c.effect:g} in {', '.join(c.effect_regions)} in ses-{c.drug_session} "
                 f"({'whole scan' if c.effect_when == 'scan' else 'challenge window only'})"]
        if c.design == "release":
            on, off = c.challenge_window_min
            lines.append(f"release: occupancy (1 - {c.challenge_displacement:g} on average at the peak) in "
                         f"{', '.join(c.challenge_regions)}: onset {on:g}, peak {on + c.release_peak_min:g} min, "
                         f"gamma variate (alpha {c.release_alpha:g}) until {'end' if off is None else f'{off:g}'} "
                         f"min; {c.protocol_name}"
                         + (f" (Kbol {c.kbol_min:g} min)" if c.kbol_min is not None else ""))
        elif c.challenge == "within":
            on, off = c.challenge_window_min
            lines.append(f"challenge: BPND x (1 - {c.challenge_displacement:g} on average) in "
                         f"{', '.join(c.challenge_regions)} from {on:g} to {'end' if off is None else f'{off:g}'} "
                         "min")
        elif c.challenge == "between":
            lines.append(f"challenge: BPND x (1 - {c.challenge_displacement:g} on average) in "
                         f"{', '.join(c.challenge_regions)} for whole challenge scans")
        lines.append(f"noise: COV {c.noise:g} (2 mm reference voxel, last frame), FWHM {c.fwhm_mm:g} mm; "
                     f"truth maps in {self.derivatives}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# planning: everything random except the image noise
# ------------------------------------------------------------------------------------------------------------
@dataclass
class ScanPlan:
    subject: str
    session: str
    period: int  # 0-based scan order within the subject
    bp_segments: np.ndarray | None  # (V, S) float64 over brain voxels (None: release design, see segments())
    r1: np.ndarray  # (V,)
    scale: float  # input scale (kBq/mL per Feng unit)
    injected_mbq: float
    injected_ug: float
    displacement: float
    drug: bool
    challenged: bool
    seed: np.random.SeedSequence
    factors: dict
    bp_base: np.ndarray | None = None  # release design: (V,) BPND outside the release
    peak_occ: np.ndarray | None = None  # release design: (V,) occupancy at the peak of the release
    h_steps: np.ndarray | None = None  # release design: (S,) release shape h per segment (0 outside)

    def segments(self, index: np.ndarray | slice = slice(None)) -> np.ndarray:
        """BPND per segment (V, S) of the voxels ``index`` (computed for the release design)."""
        if self.bp_segments is not None:
            return self.bp_segments[index]
        return release_bp(self.bp_base[index], self.peak_occ[index], self.h_steps)


def release_bp(bp: np.ndarray, peak_occ: np.ndarray, h: np.ndarray) -> np.ndarray:
    """BPND(t) of the lp-ntPET release model for baseline ``bp`` (V,), peak occupancy ``peak_occ`` (V,) and
    release shapes ``h`` (S,) (peak 1): ``BP = k2 / (k2a + gamma h) - 1`` with ``gamma / k2 =
    1 / (1 + bp (1 - peak)) - 1 / (1 + bp)`` (independent of R1).  Returns (V, S)."""
    bp = np.asarray(bp, float)[:, None]
    g = 1.0 / (1.0 + bp * (1.0 - np.asarray(peak_occ, float)[:, None])) - 1.0 / (1.0 + bp)
    return 1.0 / (1.0 / (1.0 + bp) + g * np.asarray(h, float)[None, :]) - 1.0


def release_shape(t_min, onset_min: float, peak_min: float, alpha: float,
                  stop_min: float | None = None) -> np.ndarray:
    """lp-ntPET's release shape ``h(t) = tau^alpha exp(alpha (1 - tau))``, ``tau = (t - t_D) / (t_P - t_D)``
    (1 at the peak ``t_P``), 0 before the onset ``t_D`` and from ``stop_min`` on.  Times in minutes."""
    t = np.asarray(t_min, float)
    tau = np.clip((t - onset_min) / (peak_min - onset_min), 0.0, None)
    with np.errstate(divide="ignore"):
        h = np.where(tau > 0, np.exp(alpha * (np.log(np.where(tau > 0, tau, 1.0)) + 1.0 - tau)), 0.0)
    if stop_min is not None:
        h = np.where(t >= stop_min, 0.0, h)
    return h


def release_steps(cfg: SimulationConfig) -> tuple[np.ndarray, np.ndarray]:
    """The release design's staircase: ``(switch_min (S-1,), h (S,))`` with h at each step's mid-time (0 before
    the onset and after the end of the challenge window)."""
    on, off = cfg.challenge_window_min
    end = float(cfg.scan_frames().end_min[-1])
    stop = end if off is None else min(float(off), end)
    n = max(1, int(math.ceil((stop - on) / cfg.release_step_min - 1e-9)))
    edges = np.minimum(on + cfg.release_step_min * np.arange(n + 1), stop)
    mids = 0.5 * (edges[:-1] + edges[1:])
    h = release_shape(mids, on, on + cfg.release_peak_min, cfg.release_alpha)
    switch = edges[:-1] if stop >= end - 1e-9 else edges
    h_all = np.concatenate([[0.0], h] + ([[0.0]] if switch.size > n else []))
    return switch.astype(float), h_all


def _z(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def plan_study(cfg: SimulationConfig, phantom: Phantom) -> tuple[list[dict], list[ScanPlan], np.ndarray]:
    """Draw covariates, orders and per-scan parameter maps.  Returns (participant rows, scans, switch_min)."""
    ss = np.random.SeedSequence(cfg.seed)
    design_seed, noise_root = ss.spawn(2)
    rng = np.random.default_rng(design_seed)
    n = cfg.n_subjects
    brain = phantom.brain
    labels = phantom.labels[brain]
    bp0 = phantom.bp_nd[brain].astype(float)
    r10 = phantom.r1[brain].astype(float)
    ref = phantom.reference_mask[brain]
    effect_mask = phantom.mask(list(cfg.effect_regions))[brain]
    chal_mask = phantom.mask(list(cfg.challenge_regions))[brain] if cfg.challenge != "none" else ~brain[brain]
    n_labels = len(phantom.names)

    # covariates
    sex = rng.choice(np.array(["F", "M"]), size=n)
    age = rng.integers(20, 46, size=n)
    neuro = np.clip(np.round(rng.normal(20.0, 7.0, size=n)), 0, 48)
    il1b = np.round(np.exp(rng.normal(np.log(1.0), 0.5, size=n)), 3)  # pg/mL
    il1ra = np.round(np.exp(rng.normal(np.log(250.0), 0.4, size=n)), 1)  # pg/mL
    weight = np.round(rng.normal(72.0, 10.0, size=n), 1)
    covs = {"neuroticism": neuro, "il1b": il1b, "il1ra": il1ra, "age": age.astype(float),
            "weight": weight}
    for name in cfg.activation_links:
        if name not in covs:
            raise ValueError(f"activation_links: unknown covariate {name!r}; use one of {', '.join(covs)}")
    link = sum(b * _z(covs[k]) for k, b in cfg.activation_links.items()) if cfg.activation_links else 0.0
    link = np.broadcast_to(np.asarray(link, float), (n,))
    # balanced randomized crossover order
    n_seq = math.factorial(len(cfg.sessions))
    orders = [tuple(cfg.sessions)] if n_seq == 1 else None
    if orders is None:
        base = [tuple(cfg.sessions), tuple(reversed(cfg.sessions))]
        seqs = [base[i % 2] for i in range(n)]
        perm = rng.permutation(n)
        orders = [seqs[i] for i in perm]
    else:
        orders = orders * n
    subj_bp = np.exp(rng.normal(0.0, cfg.bp_subject_sd, size=n))
    reg_bp = np.exp(rng.normal(0.0, cfg.bp_region_sd, size=(n, n_labels)))
    subj_r1 = np.exp(rng.normal(0.0, cfg.r1_subject_sd, size=n))
    subj_input = np.exp(rng.normal(0.0, cfg.input_sd, size=n))

    if cfg.design == "release":
        switch, h_steps = release_steps(cfg)
    elif cfg.challenge == "within":
        on, off = cfg.challenge_window_min
        switch = np.array([on] if off is None else [on, off], dtype=float)
    else:
        switch = np.zeros(0)

    participants, scans = [], []
    all_sessions = (["baseline"] if cfg.baseline_session else []) + list(cfg.sessions)
    noise_seeds = noise_root.spawn(n * len(all_sessions))
    k = 0
    for i in range(n):
        sub = f"{i + 1:02d}"
        order = (["baseline"] if cfg.baseline_session else []) + list(orders[i])
        row = {"participant_id": f"sub-{sub}", "sex": sex[i], "age": int(age[i]), "weight": weight[i],
               "neuroticism": int(neuro[i]), "il1b": il1b[i], "il1ra": il1ra[i],
               "session_order": "-".join(orders[i])}
        for period, ses in enumerate(order):
            drug = ses == cfg.drug_session
            challenged = cfg.challenge != "none" and ses != "baseline"
            disp = 0.0
            if challenged:
                disp = cfg.challenge_displacement * max(
                    0.0, 1.0 + link[i] + cfg.challenge_sd * rng.standard_normal())
                disp = min(disp, 0.9)
            ses_f = math.exp(rng.normal(0.0, cfg.bp_session_sd))
            crossover_period = period - (1 if cfg.baseline_session else 0)
            per_f = 1.0 + cfg.period_effect if crossover_period >= 1 else 1.0
            bp = bp0 * subj_bp[i] * reg_bp[i, labels] * ses_f * per_f
            drug_f = np.where(effect_mask, 1.0 - cfg.effect, 1.0) if drug else np.ones_like(bp)
            if cfg.effect_when == "scan":
                bp = bp * drug_f
            chal = np.where(chal_mask, 1.0 - disp, 1.0)
            release: dict = {}
            if cfg.design == "release":
                peak = np.where(ref, 0.0, 1.0 - chal * drug_f)
                release = {"bp_base": np.where(ref, 0.0, bp), "peak_occ": peak, "h_steps": h_steps}
                bp_segments = None
            elif cfg.challenge == "within":
                during = bp * chal * (drug_f if cfg.effect_when == "challenge" else 1.0)
                segs = [bp, during] + ([bp] if switch.size == 2 else [])
                bp_segments = np.stack(segs, axis=1)
            elif cfg.challenge == "between":
                bp_segments = (bp * chal)[:, None]
            else:
                bp_segments = bp[:, None]
            if bp_segments is not None:
                bp_segments[ref] = 0.0
            r1 = np.where(ref, 1.0, r10 * subj_r1[i])
            dose = max(50.0, rng.normal(cfg.injected_mbq, cfg.injected_sd_mbq))
            sa = cfg.specific_activity * math.exp(rng.normal(0.0, 0.2))
            scans.append(ScanPlan(
                subject=sub, session=ses, period=period, bp_segments=bp_segments, r1=r1,
                scale=BASE_SCALE_PER_MBQ * dose * subj_input[i], injected_mbq=round(dose, 2),
                injected_ug=round(dose / sa, 4), displacement=disp, drug=drug, challenged=challenged,
                seed=noise_seeds[k],
                factors={"subject_bp": subj_bp[i], "session_bp": ses_f, "period_bp": per_f,
                         "subject_r1": subj_r1[i], "subject_input": subj_input[i]}, **release))
            k += 1
            if ses != "baseline":
                # pain ratings (VAS 0-100): linked to the displacement, plus noise
                zd = (disp / cfg.challenge_displacement - 1.0) / max(cfg.challenge_sd, 1e-6) \
                    if cfg.challenge_displacement > 0 and challenged else 0.0
                e = rng.standard_normal()
                rho = float(np.clip(cfg.pain_link, -1, 1))
                pain = 50.0 + 15.0 * (rho * zd + math.sqrt(1 - rho * rho) * e)
                row[f"pain_{ses}"] = round(float(np.clip(pain, 0, 100)), 1)
        participants.append(row)
    return participants, scans, switch


# ------------------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------------------
_CTX: dict = {}


def _init_worker(ctx: dict) -> None:
    _CTX.clear()
    _CTX.update(ctx)


def _gauss_unit_factor(sigma_vox: float) -> float:
    """1/sd of white unit noise after ``gaussian_filter`` with ``sigma_vox`` (exact, discrete kernel)."""
    if sigma_vox <= 0:
        return 1.0
    n = 2 * int(3 * sigma_vox + 1) + 1
    d = np.zeros((n, n, n))
    d[n // 2, n // 2, n // 2] = 1.0
    k = ndi.gaussian_filter(d, sigma_vox, truncate=3.0, mode="constant")
    return 1.0 / math.sqrt(float((k * k).sum()))


def _simulate_scan(plan: ScanPlan) -> tuple[str, dict]:
    ctx = _CTX
    cfg: SimulationConfig = ctx["cfg"]
    table: SRTMTable = ctx["table"]
    brain: np.ndarray = ctx["brain"]
    frames: FrameTiming = table.frames
    if plan.bp_segments is not None:
        tac = table.tacs(plan.r1, plan.bp_segments, scale=plan.scale, dtype=np.float32)  # (V, F) kBq/mL
    else:  # release design: one TAC per distinct (R1, BPND, peak occupancy), then expanded
        key = np.stack([plan.r1, plan.bp_base, plan.peak_occ], axis=1)
        uniq, inv = np.unique(key, axis=0, return_inverse=True)
        small = table.tacs(uniq[:, 0], release_bp(uniq[:, 1], uniq[:, 2], plan.h_steps), scale=plan.scale,
                           dtype=np.float32)
        tac = small[inv.reshape(-1)]
    lo, hi = ctx["bbox"]
    sub_brain = brain[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    if cfg.psf_fwhm_mm > 0:
        sig = cfg.psf_fwhm_mm / (math.sqrt(8 * math.log(2)) * cfg.resolution)
        vol = np.zeros((frames.n_frames,) + sub_brain.shape, dtype=np.float32)
        vol[:, sub_brain] = tac.T
        vol = ndi.gaussian_filter(vol, (0, sig, sig, sig), truncate=3.0, mode="constant")
        tac = vol[:, sub_brain].T
    if cfg.noise > 0:
        rng = np.random.default_rng(plan.seed)
        sig = cfg.fwhm_mm / (math.sqrt(8 * math.log(2)) * cfg.resolution)
        shape = (frames.n_frames,) + sub_brain.shape
        if sig >= 1.0:
            # the smoothed field is Gaussian by the central limit theorem (>= ~150 voxels per kernel):
            # unit-variance uniform white noise is 9x cheaper to draw than normal deviates
            white = rng.random(shape, dtype=np.float32)
            white -= np.float32(0.5)
            white *= np.float32(math.sqrt(12.0))
        else:
            white = rng.standard_normal(shape, dtype=np.float32)
        if sig > 0:
            white = ndi.gaussian_filter(white, (0, sig, sig, sig), truncate=3.0, mode="constant")
        field_ = white[:, sub_brain].T * np.float32(ctx["unit"])  # (V, F) unit variance, correlated
        inv = (1.0 / (ctx["decay"] * frames.duration_min)).astype(np.float32)
        sd = np.sqrt(np.maximum(tac, 0.0) * inv[None, :]) * np.float32(ctx["noise_k"])
        tac = tac + sd * field_
        if cfg.mantissa_bits:
            tac = _round_mantissa(tac, cfg.mantissa_bits)
    data = np.zeros(brain.shape + (frames.n_frames,), dtype=np.float32)
    data[brain] = tac
    img = nib.Nifti1Image(data, ctx["affine"])
    img.header.set_xyzt_units("mm", "sec")
    if cfg.image_dtype == "int16":
        img.set_data_dtype(np.int16)
    else:
        img.set_data_dtype(np.float32)
    stem = f"sub-{plan.subject}_ses-{plan.session}"
    root: Path = ctx["root"]
    pet = root / f"sub-{plan.subject}" / f"ses-{plan.session}" / "pet" / f"{stem}_pet.nii.gz"
    pet.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(pet))
    write_json(_pet_sidecar(cfg, plan, frames), pet.with_name(f"{stem}_pet.json"))
    # truth maps
    d = ctx["deriv"] / f"sub-{plan.subject}" / f"ses-{plan.session}" / "pet"
    d.mkdir(parents=True, exist_ok=True)
    pre = f"{stem}_space-{SPACE}"
    aff = ctx["affine"]
    release = plan.bp_segments is None
    window = list(cfg.challenge_window_min) if release or plan.bp_segments.shape[1] > 1 else None
    common = {"Sources": [f"bids::sub-{plan.subject}/ses-{plan.session}/pet/{stem}_pet.nii.gz"],
              "k2prime": cfg.k2prime, "k2primeUnits": "1/min", "k1prime": cfg.k1prime,
              "k1primeUnits": "mL/min/mL", "ChallengeWindowMinutes": window,
              "ChallengeDisplacement": plan.displacement, "DrugSession": plan.drug,
              "EffectFactor": 1.0 - cfg.effect if plan.drug else 1.0, "InputScale": plan.scale,
              "InputScaleDescription": "multiplies the unit Feng input of simulation.json (kBq/mL)"}
    if release:
        common.update({"Design": "release", "ReleaseOnsetMinutes": window[0],
                       "ReleasePeakMinutes": window[0] + cfg.release_peak_min, "ReleaseAlpha": cfg.release_alpha,
                       "OccupancyFile": "occupancy.tsv"})
        _save_map(plan.bp_base, brain, aff, d / f"{pre}_desc-truebpnd_mimap.nii.gz",
                  {"Description": "true BPND (unitless) of the scan outside the release", **common})
        _save_map(plan.bp_base * (1.0 - plan.peak_occ), brain, aff, d / f"{pre}_desc-truebpndpeak_mimap.nii.gz",
                  {"Description": "true BPND (unitless) at the peak of the release", **common})
        _save_map(plan.peak_occ, brain, aff, d / f"{pre}{TRUE_PEAK_OCCUPANCY_SUFFIX}",
                  {"Description": "true occupancy 1 - BP(t_P)/BP at the peak of the release (unitless)", **common})
    else:
        _save_map(plan.bp_segments[:, 0], brain, aff, d / f"{pre}_desc-truebpnd_mimap.nii.gz",
              {"Description": "true BPND (unitless) of the scan" + (" before/after the challenge window"
                                                                   if window else ""), **common})
    if window and not release:
        _save_map(plan.bp_segments[:, 1], brain, aff, d / f"{pre}_desc-truebpndchallenge_mimap.nii.gz",
                  {"Description": "true BPND (unitless) during the challenge window", **common})
    _save_map(plan.r1, brain, aff, d / f"{pre}_desc-truer1_mimap.nii.gz",
              {"Description": "true R1 = K1/K1' (unitless)", **common})
    eff = ctx["effect_mask"] if plan.drug and cfg.effect > 0 else np.zeros_like(brain)
    _save_mask(eff, aff, d / f"{pre}_desc-effect_mask.nii.gz",
               {"Description": "voxels where the drug effect was planted in this scan (BPND x EffectFactor)",
                **common})
    return str(pet), {}


def _round_mantissa(x: np.ndarray, bits: int) -> np.ndarray:
    """Round float32 values to ``bits`` significant bits (relative error <= 2**-bits): noisy images then
    gzip about twice as fast.  ``bits`` >= 24 leaves the values unchanged."""
    if bits >= 24:
        return x
    drop = 24 - bits
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    u = (u + np.uint32(1 << (drop - 1))) & np.uint32((0xFFFFFFFF >> drop) << drop)
    return u.view(np.float32)


def _save_map(values: np.ndarray, brain: np.ndarray, affine: np.ndarray, path: Path, meta: dict | None = None,
              dtype=np.float32) -> None:
    vol = np.zeros(brain.shape, dtype=dtype)
    vol[brain] = values
    img = nib.Nifti1Image(vol, affine)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    if meta is not None:
        write_json(meta, _json_of(path))


def _save_mask(mask: np.ndarray, affine: np.ndarray, path: Path, meta: dict) -> None:
    img = nib.Nifti1Image(mask.astype(np.uint8), affine)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    write_json(meta, _json_of(path))


def _json_of(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".nii.gz") + ".json")


def _pet_sidecar(cfg: SimulationConfig, plan: ScanPlan, frames: FrameTiming) -> dict:
    meta = {
        "Manufacturer": "voxelkit (simulated)",
        "ManufacturersModelName": "voxelkit-sim digital brain phantom",
        "Units": "kBq/mL",
        "BodyPart": "Brain",
        "InstitutionName": "voxelkit simulation (no institution)",
        "InstitutionAddress": "n/a",
        "InstitutionalDepartmentName": "n/a",
        "TracerName": "carfentanil",
        "TracerRadionuclide": "C11",
        "TracerMolecularWeight": CARFENTANIL_MW,
        "TracerMolecularWeightUnits": "g/mol",
        "InjectedRadioactivity": plan.injected_mbq,
        "InjectedRadioactivityUnits": "MBq",
        "InjectedMass": plan.injected_ug,
        "InjectedMassUnits": "ug",
        "SpecificRadioactivity": round(plan.injected_mbq / plan.injected_ug, 3),
        "SpecificRadioactivityUnits": "MBq/ug",
        "ModeOfAdministration": "bolus" if cfg.kbol_min is None else "bolus-infusion",
        "TimeZero": "10:00:00",
        "ScanStart": 0,
        "InjectionStart": 0,
        "FrameTimesStart": frames.start.tolist(),
        "FrameDuration": frames.duration.tolist(),
        "AcquisitionMode": "list mode",
        "ImageDecayCorrected": True,
        "ImageDecayCorrectionTime": 0,
        "ReconMethodName": "3D-OSEM (simulated)",
        "ReconMethodParameterLabels": ["subsets", "iterations"],
        "ReconMethodParameterUnits": ["none", "none"],
        "ReconMethodParameterValues": [21, 3],
        "ReconFilterType": "Gaussian" if cfg.fwhm_mm > 0 else "none",
        "AttenuationCorrection": "CT-based (simulated)",
    }
    if cfg.fwhm_mm > 0:
        meta["ReconFilterSize"] = cfg.fwhm_mm
    if plan.session != "baseline":
        meta.update({"PharmaceuticalName": "anakinra" if plan.drug else "placebo (saline)",
                     "PharmaceuticalDoseAmount": 100 if plan.drug else 0, "PharmaceuticalDoseUnits": "mg",
                     "PharmaceuticalDoseRegimen": "single subcutaneous dose", "PharmaceuticalDoseTime": -10800})
    if cfg.kbol_min is not None:
        total_min = frames.end_min[-1]
        bolus = plan.injected_mbq * cfg.kbol_min / (cfg.kbol_min + total_min)
        meta.update({"InfusionRadioactivity": round(plan.injected_mbq - bolus, 3),
                     "InfusionStart": 0, "InfusionSpeed": round(10.0 / total_min, 5),
                     "InfusionSpeedUnits": "mL/min", "InjectedVolume": 10.0})
    return meta


def _prepare_outdir(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root}: exists and is not a directory")
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{root}: directory exists and is not empty (use overwrite=True / --overwrite)")
        desc = root / "dataset_description.json"
        try:
            gen = json.loads(desc.read_text()).get("GeneratedBy", [{}])[0].get("Name")
        except (OSError, ValueError, IndexError, AttributeError):
            gen = None
        if gen != "voxelkit-simulate":
            raise FileExistsError(f"{root}: not a dataset written by voxelkit simulate; refusing to overwrite it")
        for p in list(root.iterdir()):
            if p.name.startswith("sub-") or p.name == "derivatives":
                shutil.rmtree(p)
            elif p.is_file():
                p.unlink()
    root.mkdir(parents=True, exist_ok=True)


def simulate_study(outdir: str | Path, *, preset: str | None = None, config: SimulationConfig | None = None,
                   overwrite: bool = False, phantom: Phantom | None = None, **overrides) -> SimulationResult:
    """Simulate a crossover study and write it as BIDS-PET under ``outdir``.

    ``config`` is a complete :class:`SimulationConfig` (default: the 12-subject 2 mm study); ``preset`` ("test": 4
    subjects at 4 mm, seconds; "demo": 10 subjects at 3 mm; "full": no change) replaces its fields; keyword
    ``overrides`` (any SimulationConfig field, e.g. ``n_subjects=12, effect=0.08, noise=0.1, seed=0,
    resolution=2``) win over both.  ``phantom`` reuses a built :class:`Phantom` of the same resolution.
    Deterministic for a seed (and independent of ``n_jobs``).  Refuses to write into a non-empty directory
    unless ``overwrite`` (and then only one that voxelkit simulate wrote).
    """
    t0 = time.perf_counter()
    base = config or SimulationConfig()
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        base = replace(base, **PRESETS[preset])
    names = {f.name for f in fields(SimulationConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"simulate_study: unknown option(s) {', '.join(sorted(unknown))}")
    cfg = replace(base, **overrides)
    cfg.validate()
    root = Path(outdir)
    if root.exists() and root.is_dir() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"{root}: directory exists and is not empty (use overwrite=True / --overwrite)")
    if phantom is None or phantom.resolution != float(cfg.resolution):
        phantom = build_phantom(cfg.resolution, cfg.regions, cfg.tissue)
    for name in set(cfg.effect_regions) | set(cfg.challenge_regions if cfg.challenge != "none" else ()):
        phantom.label_of(name)
    _prepare_outdir(root, overwrite)
    frames = cfg.frames or carfentanil_frames()
    participants, scans, switch = plan_study(cfg, phantom)
    kbol = cfg.kbol_min
    if kbol is not None:  # the same total dose split into bolus and infusion
        for s in scans:
            s.scale *= kbol / (kbol + frames.end_min[-1])

    inp = FengInput(delay=cfg.input_delay_min, kbol=kbol)
    a_lo, a_hi = np.inf, 0.0
    for s in scans:
        a = s.r1[:, None] * cfg.k2prime / (1.0 + (s.segments() if s.bp_segments is not None else np.stack(
            [s.bp_base, s.bp_base * (1.0 - s.peak_occ)], axis=1)))
        a_lo, a_hi = min(a_lo, float(a.min())), max(a_hi, float(a.max()))
    table = SRTMTable(frames, inp, cfg.k1prime, cfg.k2prime, switch, a_min=a_lo / 1.02, a_max=a_hi * 1.02)
    brain = phantom.brain
    sig = cfg.fwhm_mm / (math.sqrt(8 * math.log(2)) * cfg.resolution)
    margin = int(3 * max(sig, cfg.psf_fwhm_mm / (2.3548 * cfg.resolution)) + 2)
    idx = np.argwhere(brain)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + margin, brain.shape)
    decay = decay_factor(frames, C11_HALF_LIFE_MIN)
    # noise constant: COV = noise for a nominal reference voxel in the last frame at 2 mm
    ref_last = table.reference(BASE_SCALE_PER_MBQ * cfg.injected_mbq)[-1]
    noise_k = cfg.noise * math.sqrt(ref_last * decay[-1] * frames.duration_min[-1]) * (2.0 / cfg.resolution) ** 1.5
    deriv = root / "derivatives" / DERIV
    ctx = {"cfg": cfg, "table": table, "brain": brain, "affine": phantom.affine, "bbox": (lo, hi),
           "unit": _gauss_unit_factor(sig) if sig > 0 else 1.0, "decay": decay, "noise_k": noise_k,
           "root": root, "deriv": deriv, "effect_mask": phantom.mask(list(cfg.effect_regions))}

    _write_static(root, deriv, cfg, phantom, participants, frames)
    if cfg.n_jobs > 1 and len(scans) > 1:
        import multiprocessing as mp  # noqa: PLC0415

        method = "fork" if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(cfg.n_jobs, mp_context=mp.get_context(method), initializer=_init_worker,
                                 initargs=(ctx,)) as ex:
            pets = [Path(p) for p, _ in ex.map(_simulate_scan, scans)]
    else:
        _init_worker(ctx)
        pets = [Path(_simulate_scan(s)[0]) for s in scans]
        _CTX.clear()

    truth = _truth_rows(cfg, phantom, scans)
    write_tsv(truth, deriv / TRUTH_TABLE)
    if cfg.challenge == "within":
        write_tsv(occupancy_rows(cfg, phantom, scans, switch), deriv / OCCUPANCY_TABLE)
    result = SimulationResult(root, cfg, pets, deriv, truth, time.perf_counter() - t0)
    log.debug("%s", result.summary())  # callers print it (the CLI once); logging it too printed it twice
    return result


def _truth_rows(cfg: SimulationConfig, phantom: Phantom, scans: list[ScanPlan]) -> list[dict]:
    labels = phantom.labels[phantom.brain]
    rows = []
    for s in scans:
        row = {"participant_id": f"sub-{s.subject}", "session": s.session, "period": s.period + 1,
               "drug": int(s.drug), "challenged": int(s.challenged), "displacement": round(s.displacement, 6),
               "effect_factor": 1.0 - cfg.effect if s.drug else 1.0,
               "injected_mbq": s.injected_mbq, "input_scale": f"{s.scale:.12g}"}
        row.update({k: round(float(v), 6) for k, v in s.factors.items()})
        for idx, name in enumerate(phantom.names):
            sel = labels == idx
            if idx and sel.any():
                row[f"bpnd_{name}"] = float((s.bp_base if s.bp_segments is None else s.bp_segments[:, 0])[sel].mean())
        rows.append(row)
    return rows


def occupancy_rows(cfg: SimulationConfig, phantom: Phantom, scans: list[ScanPlan], switch: np.ndarray) -> list[dict]:
    """The true occupancy curve per scan and region: one row per scan and piecewise-constant segment
    (``time_start_min``, ``time_end_min``), one column per region: the region mean of ``1 - BPND(t) / BPND``
    (BPND outside the challenge; voxels with BPND > 0)."""
    labels = phantom.labels[phantom.brain]
    end = float(cfg.scan_frames().end_min[-1])
    edges = np.concatenate([[0.0], np.asarray(switch, float), [end]])
    regions = [(idx, name) for idx, name in enumerate(phantom.names)
               if idx and name != phantom.reference and (labels == idx).any()]
    rows = []
    for s in scans:
        occ = {}
        for idx, name in regions:
            sel = labels == idx
            base = s.bp_base[sel] if s.bp_segments is None else s.bp_segments[sel, 0]
            pos = base > 0
            if not pos.any():
                occ[name] = np.zeros(edges.size - 1)
                continue
            if s.bp_segments is None:
                key, cnt = np.unique(np.stack([base[pos], s.peak_occ[sel][pos]], axis=1), axis=0,
                                     return_counts=True)
                seg = release_bp(key[:, 0], key[:, 1], s.h_steps)
                occ[name] = ((1.0 - seg / key[:, :1]) * cnt[:, None]).sum(axis=0) / cnt.sum()
            else:
                seg = s.bp_segments[sel][pos]
                occ[name] = (1.0 - seg / seg[:, :1]).mean(axis=0)
        for k in range(edges.size - 1):
            row = {"participant_id": f"sub-{s.subject}", "session": s.session,
                   "time_start_min": round(float(edges[k]), 6), "time_end_min": round(float(edges[k + 1]), 6)}
            row.update({name: round(float(v[k]), 8) + 0.0 for name, v in occ.items()})
            rows.append(row)
    return rows


def _write_static(root: Path, deriv: Path, cfg: SimulationConfig, phantom: Phantom, participants: list[dict],
                  frames: FrameTiming) -> None:
    gen = [{"Name": "voxelkit-simulate", "Version": _version(),
            "Description": "voxelkit simulate: [11C]carfentanil crossover study simulator"}]
    write_json({"Name": "Simulated [11C]carfentanil anakinra/placebo crossover study (voxelkit)",
                "BIDSVersion": BIDS_VERSION, "DatasetType": "raw", "License": "CC0",
                "Authors": ["voxelkit developers", "voxelkit simulate (generator)"], "GeneratedBy": gen,
                "HowToAcknowledge": "Simulated data: no acknowledgement needed."},
               root / "dataset_description.json")
    cols = ["participant_id", "sex", "age", "weight", "neuroticism", "il1b", "il1ra", "session_order"]
    cols += [f"pain_{s}" for s in cfg.sessions]
    write_tsv(participants, root / "participants.tsv", cols)
    pj = {"sex": {"Description": "sex", "Levels": {"F": "female", "M": "male"}},
          "age": {"Description": "age", "Units": "year"},
          "weight": {"Description": "body weight", "Units": "kg"},
          "neuroticism": {"Description": "NEO-FFI neuroticism sum score (0-48)"},
          "il1b": {"Description": "plasma interleukin-1 beta", "Units": "pg/mL"},
          "il1ra": {"Description": "plasma interleukin-1 receptor antagonist", "Units": "pg/mL"},
          "session_order": {"Description": "order of the crossover sessions"}}
    for s in cfg.sessions:
        pj[f"pain_{s}"] = {"Description": f"pain rating during the challenge in ses-{s} (VAS)", "Units": "mm"}
    write_json(pj, root / "participants.json")
    (root / "README").write_text(_readme(cfg))
    (root / ".bidsignore").write_text(_BIDSIGNORE)
    # derivatives
    deriv.mkdir(parents=True, exist_ok=True)
    write_json({"Name": "voxelkit-sim ground truth", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
                "Authors": ["voxelkit developers", "voxelkit simulate (generator)"], "GeneratedBy": gen,
                "SourceDatasets": [{"URL": "../../"}]}, deriv / "dataset_description.json")
    aff, brain = phantom.affine, phantom.brain
    res = int(cfg.resolution) if float(cfg.resolution).is_integer() else cfg.resolution
    ctx_effect = phantom.mask(list(cfg.effect_regions))
    spatial_ref = f"{SPACE} (nilearn MNI152 template grid at {res} mm)"
    atlas = f"space-{SPACE}_atlas-carfentanil_res-{res}_dseg"
    img = nib.Nifti1Image(phantom.labels.astype(np.int16), aff)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(deriv / f"{atlas}.nii.gz"))
    rows = phantom.lookup_rows()
    for r in rows:
        r["effect"] = int(r["name"] in cfg.effect_regions)
        r["challenge"] = int(cfg.challenge != "none" and r["name"] in cfg.challenge_regions)
        r["reference"] = int(r["name"] == phantom.reference)
    write_tsv(rows, deriv / f"{atlas}.tsv",
              ["index", "name", "bp_nd", "r1", "n_voxels", "effect", "challenge", "reference"])
    write_json({"Description": "region atlas of the simulated phantom (integer labels, names in the .tsv)",
                "SpatialReference": spatial_ref,
                "bp_nd": {"Description": "phantom BPND before subject/session factors", "Units": "unitless"},
                "r1": {"Description": "phantom R1 = K1/K1' before subject factors", "Units": "unitless"},
                "n_voxels": {"Description": "number of voxels with this label"},
                "effect": {"Description": "1 if the drug effect is planted in this region"},
                "challenge": {"Description": "1 if the pain challenge lowers BPND in this region"},
                "reference": {"Description": "1 for the reference region"}}, deriv / f"{atlas}.json")
    write_json({"Name": "carfentanil simulation phantom atlas",
                "Description": "ellipsoidal regions at literature MNI coordinates, intersected with grey matter "
                               "(cortex) or the brain mask (deep nuclei); remaining brain by tissue class",
                "SpatialReference": {"res": SPACE}}, deriv / "atlas-carfentanil_description.json")
    for desc, m, text in (
            ("brain", brain, "brain mask of the phantom (all simulated voxels)"),
            ("reference", phantom.reference_mask, f"reference region ({phantom.reference}): BPND 0, R1 1"),
            ("effect", ctx_effect, f"regions where the drug effect is planted ({', '.join(cfg.effect_regions)})"),
            ("challenge", phantom.mask(list(cfg.challenge_regions)) if cfg.challenge != "none"
             else np.zeros_like(brain), "regions where the pain challenge lowers BPND"),
            ("highbinding", _high_binding_mask(phantom),
             f"high-binding regions (phantom BPND >= {HIGH_BINDING_BP:g}) for a k2' estimate (k2prime_mask)")):
        _save_mask(m, aff, deriv / f"space-{SPACE}_res-{res}_desc-{desc}_mask.nii.gz",
                   {"Description": text, "SpatialReference": spatial_ref})
    pre = f"space-{SPACE}_res-{res}"
    _save_map(phantom.bp_nd[brain], brain, aff, deriv / f"{pre}_desc-phantombpnd_mimap.nii.gz",
              {"Description": "phantom BPND before subject/session factors"})
    _save_map(phantom.r1[brain], brain, aff, deriv / f"{pre}_desc-phantomr1_mimap.nii.gz",
              {"Description": "phantom R1 before subject factors"})
    (deriv / ".bidsignore").write_text(_BIDSIGNORE)
    (deriv / "README").write_text("Ground truth of the simulated study written by voxelkit simulate: masks, region "
                                  "atlas, true BPND/R1 maps per scan (`*_mimap`, bidsignored: PET parametric maps "
                                  "are not yet in the BIDS schema), `truth.tsv` (one row per scan) and "
                                  "`simulation.json` (the full configuration).\n")
    cfg_dict = {k: v for k, v in asdict(cfg).items() if k not in ("frames", "regions", "tissue", "n_jobs")}
    cfg_dict["frames"] = frames.to_bids_dict()
    cfg_dict["regions"] = [asdict(r) for r in phantom.regions]
    cfg_dict["tissue"] = asdict(phantom.tissue)
    cfg_dict["reference"] = phantom.reference
    cfg_dict["input"] = asdict(FengInput(delay=cfg.input_delay_min, kbol=cfg.kbol_min))
    cfg_dict["effect_on"] = cfg.effect_when
    cfg_dict["protocol"] = cfg.protocol_name
    cfg_dict["kbol"] = cfg.kbol_min
    if cfg.challenge == "within":
        on, off = cfg.challenge_window_min
        cfg_dict["release"] = {
            "shape": "gamma variate in the efflux (lp-ntPET)" if cfg.design == "release" else "step",
            "onset_min": on, "peak_min": on + cfg.release_peak_min if cfg.design == "release" else on,
            "alpha": cfg.release_alpha if cfg.design == "release" else None,
            "stop_min": off, "step_min": cfg.release_step_min if cfg.design == "release" else None,
            "occupancy_file": "occupancy.tsv",
            "occupancy_definition": "1 - BPND(t) / BPND outside the challenge, region mean, per scan; "
                                    "piecewise constant from time_start_min to time_end_min"}
    cfg_dict["files"] = {"atlas": f"{atlas}.nii.gz", "lookup": f"{atlas}.tsv",
                         **{f"{d}_mask": f"{pre}_desc-{d}_mask.nii.gz"
                            for d in ("brain", "reference", "effect", "challenge", "highbinding")}}
    write_json(cfg_dict, deriv / SIMULATION_RECORD)


#: Phantom BPND from which a region counts as high-binding (``desc-highbinding_mask``: a k2' source).
HIGH_BINDING_BP = 2.0


def _high_binding_mask(phantom: Phantom) -> np.ndarray:
    names = [r.name for r in phantom.regions if r.bp_nd >= HIGH_BINDING_BP]
    return phantom.mask(names) if names else np.zeros_like(phantom.brain)


#: Ground truth that BIDS has no file rule for yet (PET parametric maps, per-scan PET masks, tables).
_BIDSIGNORE = ("*_mimap.nii.gz\n*_mimap.json\nsub-*_desc-effect_mask.*\ntruth.tsv\nsimulation.json\n"
               "occupancy.tsv\n")


def _version() -> str:
    try:
        from .. import __version__  # noqa: PLC0415

        return str(__version__)
    except ImportError:  # pragma: no cover
        return "unknown"


def _readme(cfg: SimulationConfig) -> str:
    on, off = cfg.challenge_window_min
    return f"""# Simulated [11C]carfentanil crossover study

Written by `voxelkit simulate` (seed {cfg.seed}). Not real data.

- {cfg.n_subjects} subjects, sessions {', '.join(cfg.sessions)} in randomized balanced order
  {'(plus ses-baseline first)' if cfg.baseline_session else ''}.
- 90-min dynamic [11C]carfentanil PET in MNI space at {cfg.resolution:g} mm, kBq/mL, decay corrected to
  injection; reference region: occipital cortex.
- Planted drug effect: BPND x {1 - cfg.effect:g} in {', '.join(cfg.effect_regions)} in ses-{cfg.drug_session}
  ({'whole scan' if cfg.effect_when == 'scan' else 'challenge window only'}; design {cfg.design},
  {cfg.protocol_name}).
- Pain challenge: {cfg.challenge}{f' ({on:g}-{off if off is not None else "end"} min)'
                                  if cfg.challenge == 'within' else ''}, mean displacement
  {cfg.challenge_displacement:g} in {', '.join(cfg.challenge_regions)}.
- Ground truth, masks and the region atlas: `derivatives/{DERIV}/` (`truth.tsv`, `simulation.json`).
"""
