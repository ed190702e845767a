"""Study settings: a dataclass, read from a TOML study file and/or CLI options.

Example study file (all keys optional except where the data cannot tell)::

    bids_dir = "study"                     # BIDS-PET dataset
    conditions = ["anakinra", "placebo"]   # session labels A, B; the contrast is A - B
    ref_mask = "study/derivatives/voxelkit-sim/ref_mask.nii.gz"
    brain_mask = "study/derivatives/voxelkit-sim/brain_mask.nii.gz"
    atlas = "study/derivatives/voxelkit-sim/atlas.nii.gz"      # integer labels
    atlas_labels = "study/derivatives/voxelkit-sim/atlas.tsv"  # index, name
    model = "srtm"
    smoothing_fwhm = 6.0                   # mm, before statistics
    contrast = "bp_nd"                     # or "activation" (baseline BPND - challenge BPND)
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

CONTRASTS = ("bp_nd", "activation")


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
    model: str = "srtm"
    model_options: dict[str, Any] = field(default_factory=dict)
    windows: dict[str, tuple[float, float]] | None = None
    contrast: str = "bp_nd"
    smoothing_fwhm: float = 0.0
    covariates: list[str] = field(default_factory=list)
    n_perm: int = 5000
    cluster_p: float = 0.001
    tfce: bool = True
    two_sided: bool = True
    seed: int = 0
    on_missing: str = "drop"
    jobs: int = 1
    device: str | None = None
    report: bool = True
    keep_failed_scans: bool = False  #: keep scans whose fit failed in most voxels in the group test
    condition_column: str | None = None  #: sub-XX_sessions.tsv column holding the condition of each session
    filters: dict[str, str] = field(default_factory=dict)  #: BIDS entities a PET file must have, e.g. {"rec": "acdyn"}
    input_derivatives: Path | None = None  #: derivatives dataset (PETPrep) with *_space-<space>_desc-preproc_pet
    space: str | None = None  #: template space of the preprocessed images, e.g. MNI152NLin2009cAsym

    def __post_init__(self) -> None:
        self.bids_dir = Path(self.bids_dir)
        from ..models.options import validate_model_options  # noqa: PLC0415

        self.model_options = validate_model_options(self.model_options, self.model, "study settings [model_options]")
        for name in ("output_dir", "ref_mask", "brain_mask", "atlas", "atlas_labels", "input_derivatives"):
            val = getattr(self, name)
            if val is not None:
                setattr(self, name, Path(val))
        self.conditions = tuple(self.conditions)  # type: ignore[assignment]
        if len(self.conditions) != 2 or self.conditions[0] == self.conditions[1]:
            raise InputError(f"conditions must be two different session labels, got {list(self.conditions)}")
        self.conditions = tuple(c.removeprefix("ses-") for c in self.conditions)  # type: ignore[assignment]
        if self.contrast not in CONTRASTS:
            raise InputError(f"contrast must be one of {', '.join(CONTRASTS)}, got {self.contrast!r}")
        if self.windows is not None:
            self.windows = {k: (float(v[0]), float(v[1])) for k, v in self.windows.items()}
        if self.contrast == "activation":
            if not self.windows or not {"baseline", "challenge"} <= set(self.windows):
                raise InputError("contrast 'activation' needs windows 'baseline' and 'challenge' (minutes)")
        if self.on_missing not in ("drop", "stop"):
            raise InputError(f"on_missing must be 'drop' or 'stop', got {self.on_missing!r}")
        if self.smoothing_fwhm < 0:
            raise InputError("smoothing_fwhm must be >= 0 mm")
        if self.output_dir is None:
            self.output_dir = self.bids_dir / "derivatives" / "voxelkit"

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

    model = overrides.get("model") or doc.get("model") or "srtm"
    file_opts = validate_model_options(doc.get("model_options"), model, f"{path} [model_options]",
                                       base_dir=path.parent)
    cli_opts = overrides.pop("model_options", None) or {}
    doc["model_options"] = {**file_opts, **cli_opts}  # command-line options win, key by key
    doc.update({k: v for k, v in overrides.items() if v is not None})
    if "bids_dir" not in doc:
        raise InputError(f"{path}: bids_dir is required")
    return StudyConfig(**doc)
