"""Finding subjects, sessions and PET scans in a BIDS-PET dataset, and reading ``participants.tsv``."""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..io import InputError, sidecar_path

log = logging.getLogger("voxelkit")

_PET_RE = re.compile(
    r"^sub-(?P<sub>[A-Za-z0-9]+)_ses-(?P<ses>[A-Za-z0-9]+)(?P<rest>(_[a-z]+-[A-Za-z0-9]+)*)_pet\.nii(\.gz)?$"
)


@dataclass(frozen=True)
class Scan:
    subject: str  #: label without ``sub-``
    session: str  #: label without ``ses-``
    pet: Path
    sidecar: Path


def find_scans(bids_dir: Path) -> list[Scan]:
    """Every ``sub-*/ses-*/pet/*_pet.nii[.gz]`` with its JSON sidecar, sorted by subject and session."""
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise InputError(f"{bids_dir}: not a directory (expected a BIDS-PET dataset)")
    scans = []
    for pet in sorted(bids_dir.glob("sub-*/ses-*/pet/*_pet.nii*")):
        m = _PET_RE.match(pet.name)
        if not m:
            log.warning("skipping %s: not a BIDS PET file name", pet)
            continue
        if pet.parent.parent.name != f"ses-{m['ses']}" or pet.parent.parent.parent.name != f"sub-{m['sub']}":
            raise InputError(f"{pet}: file name labels do not match its folders")
        side = sidecar_path(pet)
        if not side.exists():
            raise InputError(f"{pet}: BIDS sidecar {side.name} is missing (frame times are needed)")
        scans.append(Scan(m["sub"], m["ses"], pet, side))
    if not scans:
        raise InputError(f"{bids_dir}: no PET scans found (expected sub-*/ses-*/pet/*_pet.nii.gz)")
    return scans


@dataclass
class Pairing:
    """Subjects with both conditions, and what was dropped."""

    subjects: list[str]
    scans: dict[tuple[str, str], Scan]  #: (subject, condition) -> scan
    dropped: dict[str, str]  #: subject -> reason


def pair_scans(scans: list[Scan], conditions: tuple[str, str], on_missing: str = "drop") -> Pairing:
    """Match each subject's scans to the two conditions; report (and drop) or stop on incomplete subjects."""
    by_key: dict[tuple[str, str], Scan] = {}
    for s in scans:
        key = (s.subject, s.session)
        if key in by_key:
            raise InputError(f"two PET scans for sub-{s.subject} ses-{s.session}: {by_key[key].pet.name} and "
                             f"{s.pet.name} (remove or rename one)")
        by_key[key] = s
    subjects = sorted({s.subject for s in scans})
    sessions = sorted({s.session for s in scans})
    for c in conditions:
        if c not in sessions:
            raise InputError(f"no scan has session ses-{c}; sessions present: {', '.join(sessions)}")
    kept, dropped = [], {}
    for sub in subjects:
        missing = [c for c in conditions if (sub, c) not in by_key]
        if missing:
            dropped[sub] = "missing " + ", ".join(f"ses-{c}" for c in missing)
        else:
            kept.append(sub)
    if dropped:
        msg = "; ".join(f"sub-{k}: {v}" for k, v in dropped.items())
        if on_missing == "stop":
            raise InputError(f"unpaired subjects: {msg} (use on_missing='drop' to continue without them)")
        log.warning("dropping unpaired subjects: %s", msg)
    return Pairing(kept, {k: v for k, v in by_key.items() if k[1] in conditions and k[0] in kept}, dropped)


def read_participants(bids_dir: Path) -> dict[str, dict[str, str]]:
    """``participants.tsv`` as {subject label: {column: value}} (empty when the file is absent)."""
    path = Path(bids_dir) / "participants.tsv"
    if not path.exists():
        return {}
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if rows and "participant_id" not in rows[0]:
        raise InputError(f"{path}: no participant_id column")
    return {r["participant_id"].removeprefix("sub-"): r for r in rows}


def find_derivative(bids_dir: Path, pattern: str, exclude: str = "voxelkit") -> Path | None:
    """The single file matching ``derivatives/*/pattern`` outside ``derivatives/<exclude>`` (our own outputs);
    None when there is none; an error when several match."""
    bids_dir = Path(bids_dir)
    hits = [h for h in sorted(bids_dir.glob(f"derivatives/*/{pattern}"))
            if h.relative_to(bids_dir).parts[1] != exclude]
    if len(hits) > 1:
        raise InputError(f"several files match derivatives/*/{pattern}: {', '.join(map(str, hits))}; "
                         "name the one to use")
    return hits[0] if hits else None
