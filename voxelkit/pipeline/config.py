"""Study settings: a dataclass, read from a TOML study file and/or CLI options.

Example study file (all keys optional except where the data cannot tell)::

    bids_dir = "study"                     # BIDS-PET dataset
    conditions = ["anakinra", "placebo"]   # session labels A, B; the contrast is A - B
    ref_mask = "study/derivatives/voxelkit-sim/ref_mask.nii.gz"
    brain_mask = "study/derivatives/voxelkit-sim/brain_mask.nii.gz"
    atlas = "study/derivatives/voxelkit-sim/atlas.nii.gz"      # integer labels
    atlas_labels = "study/derivatives/voxelkit-sim/atlas.tsv"  # index, name
    model = "srtm"                         # default: srtm (bp_nd), the validated combination (activation),
                                           # lpntpet2 (release; see RELEASE_MODELS)
    smoothing_fwhm = 6.0                   # mm, before statistics
    contrast = "bp_nd"                     # or "activation" (baseline BPND - challenge BPND), or "release"
                                           # (lp-ntPET peak release over the whole scan; give
                                           # [model_options] challenge_window = [45, 90])
    covariates = ["sex", "age"]            # participants.tsv columns (nuisance in the GLM; mean-centred, so the
                                           # tested effect is the mean difference at the average covariates)
    keep_failed_scans = false              # true: keep scans whose fit failed in most voxels in the group test

    [model_options]
    k2prime = 0.1                          # 1/min

    [windows]                              # minutes; needed for contrast = "activation"
    baseline = [0, 45]
    challenge = [45, 90]

    [inference]
    n_perm = 5000
    cluster_p = 0.001
    tfce = true
    two_sided = true
    seed = 0
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..io import InputError
from ..stats.settings import DEFAULTS as _INF

CONTRASTS = ("bp_nd", "activation", "release")
#: Models that estimate release over time (``contrast = "release"``): lp-ntPET (voxelkit.models.lpntpet).
RELEASE_MODELS = ("lpntpet", "lpntpet2")
#: Model used for ``contrast = "bp_nd"`` when none is given.
DEFAULT_MODEL = "srtm"


def default_release(model_options: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
    """The lp-ntPET variant for ``contrast = "release"`` without a model: (model, options, why).

    ``lpntpet2`` (MRTM2 form, k2' fixed) when k2' can be estimated from release-free frames or is given: with a
    k2' source in ``model_options`` (``k2prime``, ``k2prime_mask``) that one; else, with a ``challenge_window``,
    ``k2prime = "median"`` over the frames before the challenge (``k2prime_window = [0, start]``).  Without
    either, ``lpntpet`` (k2' is not fixed: a median over all frames would include the release).  Measured on a
    simulated release study (README: 4 subjects, 3 mm, noise 0.03): the drug - placebo release difference per
    region had an SD over subjects of 0.019-0.045 with lpntpet2 (median k2' over 0-45 min) against 0.046-0.126
    with lpntpet; noiseless, both recover it within 0.0005."""
    opts = dict(model_options)
    if any(opts.get(k) is not None for k in ("k2prime", "k2prime_mask", "k2prime_region")):
        return "lpntpet2", opts, "k2' source given"
    cw = opts.get("challenge_window")
    if cw is not None:
        opts["k2prime"] = "median"
        opts.setdefault("k2prime_window", [0.0, float(cw[0])])
        return "lpntpet2", opts, (f"k2' = median MRTM k2' over the frames before the challenge "
                                  f"({opts['k2prime_window'][0]:g}-{opts['k2prime_window'][1]:g} min)")
    return "lpntpet", opts, "no challenge_window and no k2' source: k2' cannot be fixed from release-free frames"


@dataclass
class StudyConfig:
    """Everything ``voxelkit run`` needs; units: mm for smoothing, minutes for windows, 1/min for rates."""

    bids_dir: Path
    output_dir: Path | None = None
    conditions: tuple[str, str] = ("anakinra", "placebo")
    ref_mask: Path | None = None
    brain_mask: Path | None = None
    atlas: Path | None = None
    atlas_labels: Path | None = None
    model: str | None = None  #: None: not given (srtm for bp_nd; a default pick for activation/release)
    model_options: dict[str, Any] = field(default_factory=dict)
    windows: dict[str, tuple[float, float]] | None = None
    contrast: str = "bp_nd"
    smoothing_fwhm: float = 0.0
    covariates: list[str] = field(default_factory=list)
    # [inference]: defaults and validation from voxelkit.stats.settings.Inference (shared with `voxelkit stats`
    # and the Python API); __post_init__ normalises them through it (cluster_p = false: no clusters)
    n_perm: int = _INF.n_perm
    cluster_p: float | None = _INF.cluster_p
    tfce: bool = _INF.tfce
    two_sided: bool = _INF.two_sided
    seed: int = _INF.seed
    on_missing: str = "drop"
    jobs: int = 1
    device: str | None = None
    report: bool = True
    keep_failed_scans: bool = False  #: keep scans whose fit failed in most voxels in the group test
    condition_column: str | None = None  #: sub-XX_sessions.tsv column holding the condition of each session
    filters: dict[str, str] = field(default_factory=dict)  #: BIDS entities a PET file must have, e.g. {"rec": "acdyn"}
    input_derivatives: Path | None = None  #: derivatives dataset (PETPrep) with *_space-<space>_desc-preproc_pet
    space: str | None = None  #: template space of the preprocessed images, e.g. MNI152NLin2009cAsym
    scheduler: str = "threads"  #: threads, dask (local cluster) or tcp://HOST:PORT (see pipeline.scheduler)
    workers: int | None = None  #: local Dask workers (scheduler "dask"; default one per CPU)

    def __post_init__(self) -> None:
        inf = _INF.from_mapping({k: getattr(self, k) for k in ("n_perm", "cluster_p", "tfce", "two_sided", "seed")},
                                "study settings [inference]")
        self.n_perm, self.cluster_p, self.tfce, self.two_sided, self.seed = (
            inf.n_perm, inf.cluster_p, inf.tfce, inf.two_sided, inf.seed)
        self.bids_dir = Path(self.bids_dir)
        from ..models.options import validate_model_options  # noqa: PLC0415

        if self.contrast not in CONTRASTS:
            raise InputError(f"contrast must be one of {', '.join(CONTRASTS)}, got {self.contrast!r}")
        if self.model is None and self.contrast == "bp_nd":
            self.model = DEFAULT_MODEL
        if self.contrast == "release" and self.model is not None and self.model.lower() not in RELEASE_MODELS:
            raise InputError(f"contrast 'release' needs an lp-ntPET model ({', '.join(RELEASE_MODELS)}), got "
                             f"--model {self.model}")
        self.model_options = validate_model_options(self.model_options, self.model, "study settings [model_options]")
        #: how the model was chosen when not given (set for the defaults of contrast activation / release)
        self.model_choice: dict[str, Any] | None = None
        #: contrast activation: the protocol read from the sidecars and check_activation's warnings (run sets it)
        self.activation_check: dict[str, Any] | None = None
        if self.model is None and self.contrast == "release":
            model, opts, why = default_release(self.model_options)
            self.model_choice = {"model": model, "options": dict(opts), "reason": why,
                                 "rule": "voxelkit.pipeline.config.default_release"}
            self.model, self.model_options = model, opts
        for name in ("output_dir", "ref_mask", "brain_mask", "atlas", "atlas_labels", "input_derivatives"):
            val = getattr(self, name)
            if val is not None:
                setattr(self, name, Path(val))
        self.conditions = tuple(self.conditions)  # type: ignore[assignment]
        if len(self.conditions) != 2 or self.conditions[0] == self.conditions[1]:
            raise InputError(f"conditions must be two different session labels, got {list(self.conditions)}")
        self.conditions = tuple(c.removeprefix("ses-") for c in self.conditions)  # type: ignore[assignment]
        if self.windows is not None:
            self.windows = {k: (float(v[0]), float(v[1])) for k, v in self.windows.items()}
        if self.contrast == "activation":
            if not self.windows or not {"baseline", "challenge"} <= set(self.windows):
                raise InputError("contrast 'activation' needs windows 'baseline' and 'challenge' (minutes)")
        if self.contrast == "release":
            if self.windows:
                raise InputError("contrast 'release' fits lp-ntPET to the whole scan: give no windows (--window / "
                                 "[windows]); the challenge goes in challenge_window (--challenge-window START END)")
        if self.on_missing not in ("drop", "stop"):
            raise InputError(f"on_missing must be 'drop' or 'stop', got {self.on_missing!r}")
        if self.smoothing_fwhm < 0:
            raise InputError("smoothing_fwhm must be >= 0 mm")
        if self.output_dir is None:
            self.output_dir = self.bids_dir / "derivatives" / "voxelkit"
        from .scheduler import check_spec  # noqa: PLC0415

        self.scheduler = check_spec(self.scheduler, self.workers)

    @property
    def phases(self) -> list[str | None]:
        """Fitted phases: the window names, or [None] for whole-scan fits."""
        return list(self.windows) if self.windows else [None]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, Path):
                d[k] = str(v)
        d["conditions"] = list(self.conditions)
        if self.model_choice is not None:
            d["model_choice"] = self.model_choice
        if self.activation_check is not None:
            d["activation_check"] = self.activation_check
        return d

    def fit_settings(self) -> dict[str, Any]:
        """The settings a per-scan fit depends on (its cache key, with the input checksums)."""
        return {"model": self.model, "model_options": self.model_options,
                "windows": {k: list(v) for k, v in (self.windows or {}).items()}}


def _flatten(doc: dict[str, Any]) -> dict[str, Any]:
    out = dict(doc)
    inf = out.pop("inference", {}) or {}
    out.update(inf)
    return out


def load_study_file(path: str | Path, **overrides: Any) -> StudyConfig:
    """Read a TOML study file; relative paths are relative to the file; ``overrides`` (not None) win."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{path}: cannot read study file ({exc})") from exc
    doc = _flatten(doc)
    known = {f.name for f in fields(StudyConfig)}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise InputError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for key in ("bids_dir", "output_dir", "ref_mask", "brain_mask", "atlas", "atlas_labels", "input_derivatives"):
        if key in doc and doc[key] is not None and not Path(doc[key]).is_absolute():
            doc[key] = str(path.parent / doc[key])
    from ..models.options import validate_model_options  # noqa: PLC0415

    model = overrides.get("model") or doc.get("model")
    file_opts = validate_model_options(doc.get("model_options"), model, f"{path} [model_options]",
                                       base_dir=path.parent)
    cli_opts = overrides.pop("model_options", None) or {}
    doc["model_options"] = {**file_opts, **cli_opts}  # command-line options win, key by key
    doc.update({k: v for k, v in overrides.items() if v is not None})
    if "bids_dir" not in doc:
        raise InputError(f"{path}: bids_dir is required")
    return StudyConfig(**doc)
