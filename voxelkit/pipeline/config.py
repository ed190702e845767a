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
    k2prime = 0.1                          # 1/min; or "median", a mask image ("thal_mask.nii.gz", relative to
                                           # this file) or an atlas region name ("thalamus"; needs an atlas)

    [windows]                              # minutes; needed for contrast = "activation"
    baseline = [0, 45]
    challenge = [45, 90]

    [inference]
    n_perm = 5000
    cluster_p = 0.001
    tfce = true
    two_sided = true
    seed = 0
    # and every other field of voxelkit.stats.settings.Inference: cluster_t, tfce_H, tfce_E, connectivity,
    # variance_smoothing (FWHM mm), accel ("tail"), batch_size, dtype
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..io import InputError
from ..stats.settings import DEFAULTS as _INF
from ..stats.settings import Inference

#: The ``[inference]`` keys: every field of :class:`voxelkit.stats.settings.Inference` (the one definition).
INFERENCE_KEYS = tuple(f.name for f in fields(Inference))

log = logging.getLogger("voxelkit")

CONTRASTS = ("bp_nd", "activation", "release")
#: Models that estimate release over time (``contrast = "release"``): lp-ntPET (voxelkit.models.lpntpet).
RELEASE_MODELS = ("lpntpet", "lpntpet2")
#: Model used for ``contrast = "bp_nd"`` when none is given.
DEFAULT_MODEL = "srtm"


def normalise_k2prime(model_options: dict[str, Any], source: str) -> dict[str, Any]:
    """``model_options`` with the deprecated ``k2prime_mask`` (``--k2prime-mask``) moved to ``k2prime`` (which
    takes a mask path itself), with a ``DEPRECATED`` warning; both given is an :class:`InputError`."""
    if model_options.get("k2prime_mask") is None:
        model_options.pop("k2prime_mask", None)
        return model_options
    opts = dict(model_options)
    mask = opts.pop("k2prime_mask")
    if opts.get("k2prime") is not None:
        raise InputError(f"{source}: give one source of k2' (k2prime), not both k2prime and k2prime_mask")
    log.warning("DEPRECATED: %s: k2prime_mask (--k2prime-mask) is deprecated and will be removed in the next "
                "release; use k2prime = \"<mask image>\" (--k2prime IMG)", source)
    opts["k2prime"] = str(mask)
    return opts


def k2prime_source(model_options: dict[str, Any]) -> tuple[str, Any]:
    """``(kind, value)`` of the study's ``k2prime`` (:func:`voxelkit.models.k2prime.k2prime_kind`: ``"none"``,
    ``"number"``, ``"median"``, ``"mask"`` (an image path) or ``"region"`` (an atlas region name))."""
    from ..models.k2prime import k2prime_kind  # noqa: PLC0415

    value = model_options.get("k2prime")
    return k2prime_kind(value), value


def check_k2prime(model_options: dict[str, Any], model: str | None, source: str, *,
                  atlas: Path | None = None, atlas_labels: Path | None = None) -> None:
    """The study's ``k2prime`` checked when the settings are read (before any work): a mask file must exist, a
    region name needs an atlas and (with a look-up table) must be one of its regions, and the model must take a
    region (:func:`voxelkit.models.k2prime.resolve_k2prime`, the one resolver, with a placeholder region TAC).
    Raises :class:`InputError` naming ``source`` and the key."""
    kind, value = k2prime_source(model_options)
    if kind not in ("mask", "region"):
        return
    if kind == "mask" and not Path(value).is_file():
        raise InputError(f"{source}: option 'k2prime' (--k2prime): no such mask file {value}")
    if kind == "region":  # without an atlas yet (found in derivatives later): checked by validate_study
        if atlas_labels is not None and Path(atlas_labels).is_file():
            from ..io import read_lookup  # noqa: PLC0415

            names = sorted(read_lookup(atlas_labels).values())
            if value not in names:
                raise InputError(f"{source}: option 'k2prime' (--k2prime) = {value!r}: no such region in "
                                 f"{atlas_labels}; regions: {', '.join(names)}")
    if model is not None:
        import numpy as np  # noqa: PLC0415

        from ..models.k2prime import resolve_k2prime  # noqa: PLC0415

        try:
            resolve_k2prime(value, model, lambda v: (np.ones(1), str(v), {}), what="option 'k2prime' (--k2prime)")
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from None


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
    conditions: tuple[str, ...] = ("anakinra", "placebo")  #: A, B (contrast A - B); more with ``contrasts``
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
    # [inference]: every field of voxelkit.stats.settings.Inference, with its defaults (shared with `voxelkit
    # stats` and the Python API); __post_init__ validates and normalises them through it (cluster_p = false: no
    # clusters); a test checks that this list and Inference's fields are the same (INFERENCE_KEYS)
    n_perm: int = _INF.n_perm
    cluster_p: float | None = _INF.cluster_p
    tfce: bool = _INF.tfce
    two_sided: bool = _INF.two_sided
    seed: int | None = _INF.seed
    cluster_t: float | None = _INF.cluster_t  #: cluster-forming threshold in t units (instead of cluster_p)
    tfce_H: float = _INF.tfce_H  # noqa: N815 - the Inference field's name
    tfce_E: float = _INF.tfce_E  # noqa: N815
    connectivity: int = _INF.connectivity  #: 6, 18 or 26 (clusters and TFCE)
    variance_smoothing: float | None = _INF.variance_smoothing  #: FWHM in mm of the variance image (pseudo-t)
    accel: str | None = _INF.accel  #: "tail": generalized Pareto tail approximation of the FWE p-values
    batch_size: int | None = _INF.batch_size
    dtype: str = _INF.dtype
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
    #: named contrasts "A-B" over ``conditions`` (needed with more than two): every scan of the conditions is
    #: fitted once, then the paired stage runs per contrast into its own folders (see :meth:`contrast_pairs`)
    contrasts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        inf = Inference.from_mapping({k: getattr(self, k) for k in INFERENCE_KEYS}, "study settings [inference]")
        for k in INFERENCE_KEYS:
            setattr(self, k, getattr(inf, k))
        self.bids_dir = Path(self.bids_dir)
        from ..models.options import validate_model_options  # noqa: PLC0415

        if self.contrast not in CONTRASTS:
            raise InputError(f"contrast must be one of {', '.join(CONTRASTS)}, got {self.contrast!r}")
        if self.model is None and self.contrast == "bp_nd":
            self.model = DEFAULT_MODEL
        if self.contrast == "release" and self.model is not None and self.model.lower() not in RELEASE_MODELS:
            raise InputError(f"contrast 'release' needs an lp-ntPET model ({', '.join(RELEASE_MODELS)}), got "
                             f"--model {self.model}")
        self.model_options = normalise_k2prime(
            validate_model_options(self.model_options, self.model, "study settings [model_options]"),
            "study settings [model_options]")
        #: how the model was chosen when not given (set for the defaults of contrast activation / release)
        self.model_choice: dict[str, Any] | None = None
        #: contrast activation: the protocol read from the sidecars and check_activation's warnings (run sets it)
        self.activation_check: dict[str, Any] | None = None
        #: the study file the settings came from (load_study_file sets it; named in later errors)
        self.study_file: Path | None = None
        if self.model is None and self.contrast == "release":
            model, opts, why = default_release(self.model_options)
            self.model_choice = {"model": model, "options": dict(opts), "reason": why,
                                 "rule": "voxelkit.pipeline.config.default_release"}
            self.model, self.model_options = model, opts
        for name in ("output_dir", "ref_mask", "brain_mask", "atlas", "atlas_labels", "input_derivatives"):
            val = getattr(self, name)
            if val is not None:
                setattr(self, name, Path(val))
        check_k2prime(self.model_options, self.model, "study settings [model_options]", atlas=self.atlas,
                      atlas_labels=self.atlas_labels)
        if k2prime_source(self.model_options)[0] == "mask":  # absolute: the same file from any working folder
            self.model_options["k2prime"] = str(Path(self.model_options["k2prime"]).absolute())
        self.conditions = tuple(str(c).removeprefix("ses-") for c in self.conditions)  # type: ignore[assignment]
        self.contrasts = [str(c) for c in (self.contrasts or [])]
        if len(self.conditions) < 2 or len(set(self.conditions)) != len(self.conditions):
            raise InputError(f"conditions must be different session labels (two, or more with contrasts), got "
                             f"{list(self.conditions)}")
        if len(self.conditions) > 2 and not self.contrasts:
            raise InputError(f"{len(self.conditions)} conditions ({' '.join(self.conditions)}): name the contrasts "
                             f"to test, e.g. --contrasts {self.conditions[0]}-{self.conditions[1]} "
                             f"{self.conditions[0]}-{self.conditions[2]} (study file: contrasts = [...])")
        self.contrast_pairs()  # checks every named contrast
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

    def contrast_pairs(self) -> list[tuple[str, str]]:
        """The named contrasts as ``(A, B)`` pairs (A - B), from ``contrasts`` ("A-B"); without named contrasts
        the one pair of the two conditions.  A contrast naming an unknown or the same condition twice is an
        :class:`InputError`."""
        if not self.contrasts:
            return [(self.conditions[0], self.conditions[1])]
        from ..io.derivatives import contrast_conditions  # noqa: PLC0415

        pairs = []
        for text in self.contrasts:
            a, b = contrast_conditions(text, self.conditions)
            if (a, b) in pairs:
                raise InputError(f"contrast {text!r} is named twice")
            pairs.append((a, b))
        return pairs

    def for_contrast(self, a: str, b: str) -> StudyConfig:
        """These settings for the one contrast A - B (conditions ``(a, b)``, no named contrasts): what the paired
        stages (contrast_maps, group_stats, roi_tables) of a named contrast use."""
        import copy  # noqa: PLC0415

        sub = copy.copy(self)
        sub.conditions = (a, b)
        sub.contrasts = []
        return sub

    def inference(self) -> Inference:
        """The inference settings (:class:`voxelkit.stats.settings.Inference`) that ``group_stats`` passes to
        :func:`voxelkit.stats.permutation_test`."""
        return Inference(**{k: getattr(self, k) for k in INFERENCE_KEYS})

    @property
    def quantity(self) -> str:
        """The quantity whose condition difference is tested (``bp_nd``, ``activation``, ``release``): the study
        file's ``quantity`` / ``contrast`` key, ``voxelkit run --quantity`` / ``--contrast``."""
        return self.contrast

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
    table = doc.get("inference")
    if table is not None:  # every key an Inference field, every value valid: errors name the file
        if not isinstance(table, dict):
            raise InputError(f"{path}: [inference] must be a table of setting = value, got {table!r}")
        Inference.from_mapping(table, f"{path} [inference]")
    doc = _flatten(doc)
    if "quantity" in doc:  # the quantity tested (a synonym of contrast, which means a weight vector in stats glm)
        if "contrast" in doc:
            raise InputError(f"{path}: give quantity or contrast (the same setting), not both")
        doc["contrast"] = doc.pop("quantity")
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
    file_opts = normalise_k2prime(file_opts, f"{path} [model_options]")
    cli_opts = overrides.pop("model_options", None) or {}
    cli_opts = normalise_k2prime(cli_opts, "command line") if cli_opts else cli_opts
    doc["model_options"] = {**file_opts, **cli_opts}  # command-line options win, key by key
    doc.update({k: v for k, v in overrides.items() if v is not None})
    if "bids_dir" not in doc:
        raise InputError(f"{path}: bids_dir is required")
    if "k2prime" not in cli_opts:  # the file's k2' (mask file, atlas region) checked now, naming the file
        check_k2prime(file_opts, model, f"{path} [model_options]", atlas=_opt_path(doc.get("atlas")),
                      atlas_labels=_opt_path(doc.get("atlas_labels")))
    cfg = StudyConfig(**doc)
    cfg.study_file = path
    return cfg


def _opt_path(v: Any) -> Path | None:
    return None if v is None else Path(v)
