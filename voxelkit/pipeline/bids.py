"""Finding subjects, sessions and PET scans in a BIDS-PET dataset, and reading ``participants.tsv``."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib

from ..frames import FrameTiming
from ..io import InputError, read_table, sidecar_path
from ..io.derivatives import BIDS_PARTICIPANTS, BIDS_PET_GLOBS, JSON_EXT, PREPROC_PET_SUFFIX, bids_sessions_name

log = logging.getLogger("voxelkit")

_PET_RE = re.compile(
    r"^sub-(?P<sub>[A-Za-z0-9]+)_ses-(?P<ses>[A-Za-z0-9]+)(?P<rest>(_[a-z]+-[A-Za-z0-9]+)*)_pet\.(nii(\.gz)?|v)$"
)


@dataclass(frozen=True)
class Scan:
    subject: str  #: label without ``sub-``
    session: str  #: label without ``ses-`` (the condition label once :func:`apply_condition_column` ran)
    pet: Path
    sidecar: Path
    entities: tuple[tuple[str, str], ...] = ()  #: other BIDS entities of the file name, e.g. (("rec", "acdyn"),)
    visit: str | None = None  #: the folder's ``ses-`` label when ``session`` holds a condition from sessions.tsv

    def entity(self, key: str) -> str | None:
        return dict(self.entities).get(key)


def _entities(rest: str) -> tuple[tuple[str, str], ...]:
    """``_rec-acdyn_run-1`` -> (("rec", "acdyn"), ("run", "1"))."""
    return tuple(tuple(part.split("-", 1)) for part in rest.split("_") if part)  # type: ignore[misc]


def _check_session_level(bids_dir: Path) -> None:
    """A subject folder without a ``ses-`` level is reported, never silently ignored."""
    for subdir in sorted(bids_dir.glob("sub-*")):
        if not subdir.is_dir():
            continue
        pets = sorted(subdir.glob(BIDS_PET_GLOBS[0].removeprefix("ses-*/")))
        if pets:
            raise InputError(f"{subdir}: PET data without a ses- level ({pets[0].relative_to(bids_dir)}): voxelkit "
                             f"run compares two sessions per subject; put each scan in {subdir.name}/ses-<label>/pet/")
        if not any(d.is_dir() for d in subdir.glob("ses-*")):
            log.warning("WARNING: %s has no ses-* folder and no PET data: subject not used", subdir)
        elif not any(subdir.glob(BIDS_PET_GLOBS[0])):
            log.warning("WARNING: %s has no PET file under ses-*/pet/: subject not used", subdir)


def find_scans(bids_dir: Path) -> list[Scan]:
    """Every ``sub-*/ses-*/pet/*_pet.nii[.gz]`` with its JSON sidecar, sorted by subject and session."""
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise InputError(f"{bids_dir}: not a directory (expected a BIDS-PET dataset)")
    _check_session_level(bids_dir)
    scans = []
    for pet in sorted(p for g in BIDS_PET_GLOBS for p in bids_dir.glob(f"sub-*/{g}")):
        m = _PET_RE.match(pet.name)
        if not m:
            log.warning("skipping %s: not a BIDS PET file name", pet)
            continue
        if pet.parent.parent.name != f"ses-{m['ses']}" or pet.parent.parent.parent.name != f"sub-{m['sub']}":
            raise InputError(f"{pet}: file name labels do not match its folders")
        side = sidecar_path(pet)
        if not side.exists() and pet.suffix == ".v":
            side = pet  # ECAT7: frame times from the frame subheaders (see scan_frames)
        elif not side.exists():
            raise InputError(f"{pet}: BIDS sidecar {side.name} is missing (frame times are needed)")
        scans.append(Scan(m["sub"], m["ses"], pet, side, _entities(m["rest"] or "")))
    if not scans:
        raise InputError(f"{bids_dir}: no PET scans found (expected sub-*/{BIDS_PET_GLOBS[0]})")
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
    path = Path(bids_dir) / BIDS_PARTICIPANTS
    if not path.exists():
        return {}
    table = read_table(path, what="participants table", min_rows=0)  # the one TSV reader (voxelkit.io.tables)
    if not table.has("participant_id"):
        raise InputError(f"{path}: no participant_id column")
    return table.index_by("participant_id", strip_prefix="sub-")


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


# ------------------------------------------------------------------------------- layouts beyond ses-<condition>

#: Entities ``--filter KEY=VALUE`` may select on (BIDS-PET file name entities).
FILTER_ENTITIES = ("trc", "rec", "task", "run", "acq", "res", "space", "desc")


def parse_filters(items: list[str] | dict[str, str] | None) -> dict[str, str]:
    """``["rec=acdyn", "run=1"]`` -> {"rec": "acdyn", "run": "1"} (labels without the ``key-`` prefix)."""
    if not items:
        return {}
    if isinstance(items, dict):
        pairs = list(items.items())
    else:
        pairs = []
        for item in items:
            key, sep, val = str(item).partition("=")
            if not sep or not key.strip() or not val.strip():
                raise InputError(f"--filter {item!r}: expected KEY=VALUE, e.g. rec=acdyn")
            pairs.append((key.strip(), val.strip()))
    out = {}
    for key, val in pairs:
        if key not in FILTER_ENTITIES:
            raise InputError(f"--filter {key}={val}: unknown BIDS entity {key!r}; "
                             f"use one of {', '.join(FILTER_ENTITIES)}")
        out[key] = str(val).removeprefix(f"{key}-")
    return out


def n_frames(scan: Scan) -> int:
    """Number of frames from the sidecar's ``FrameDuration`` or else the NIfTI header (no image data read); an
    ECAT7 file without sidecar: its frame subheaders."""
    if scan.sidecar.suffix != JSON_EXT:
        return scan_frames(scan).n_frames
    try:
        meta = json.loads(scan.sidecar.read_text())
    except (OSError, ValueError):
        meta = {}
    dur = meta.get("FrameDuration")
    if isinstance(dur, list):
        return len(dur)
    if isinstance(dur, int | float):
        return 1
    shape = nib.load(str(scan.pet)).shape  # header only: nibabel reads the data lazily
    return int(shape[3]) if len(shape) == 4 else 1


def _describe(scan: Scan) -> str:
    ent = "_".join(f"{k}-{v}" for k, v in scan.entities) or "no other entities"
    return f"{scan.pet.name} ({ent})"


def select_scans(scans: list[Scan], filters: dict[str, str] | None = None) -> list[Scan]:
    """Apply ``--filter`` entities, then keep one scan per subject and session: the only candidate, or the only
    dynamic one (more than one frame) among several.  Anything else is an error naming the files."""
    filters = filters or {}
    for key, val in filters.items():
        present = sorted({s.entity(key) or "(none)" for s in scans})
        kept = [s for s in scans if s.entity(key) == val]
        if not kept:
            raise InputError(f"--filter {key}={val} matches no PET scan; {key} values present: {', '.join(present)}")
        log.info("--filter %s=%s: %d of %d PET files kept", key, val, len(kept), len(scans))
        scans = kept
    groups: dict[tuple[str, str], list[Scan]] = {}
    for s in scans:
        groups.setdefault((s.subject, s.session), []).append(s)
    out = []
    for (sub, ses), cands in groups.items():
        if len(cands) == 1:
            out.append(cands[0])
            continue
        frames = {c.pet: n_frames(c) for c in cands}
        dynamic = [c for c in cands if frames[c.pet] > 1]
        listing = ", ".join(f"{c.pet.name} ({frames[c.pet]} frame{'s' if frames[c.pet] != 1 else ''})" for c in cands)
        if len(dynamic) == 1:
            log.info("sub-%s ses-%s: using the dynamic scan %s (candidates: %s)", sub, ses, dynamic[0].pet.name,
                     listing)
            out.append(dynamic[0])
            continue
        keys = sorted({k for c in cands for k, _ in c.entities})
        hint = " or ".join(f"--filter {k}=..." for k in keys) or "remove or rename one"
        raise InputError(f"sub-{sub} ses-{ses}: {len(cands)} PET scans and not exactly one dynamic: {listing}; "
                         f"choose with {hint}")
    return sorted(out, key=lambda s: (s.subject, s.session))


def read_sessions_tsv(bids_dir: Path, subject: str) -> dict[str, dict[str, str]] | None:
    """``sub-XX/sub-XX_sessions.tsv`` as {session label: {column: value}}; None when the file is absent."""
    path = Path(bids_dir) / f"sub-{subject}" / bids_sessions_name(subject)
    if not path.exists():
        return None
    table = read_table(path, what="sessions table", min_rows=0)  # the one TSV reader (voxelkit.io.tables)
    if not table.has("session_id"):
        raise InputError(f"{path}: no session_id column")
    return table.index_by("session_id", strip_prefix="ses-")


_NOT_CONDITION = {"session_id", "acq_time", "acq_date", "date", "time", "age"}


def _looks_like_condition(values_by_subject: dict[str, list[str]]) -> bool:
    """A within-subject factor with a few non-numeric levels (drug, treatment), not a date or a measurement."""
    levels = {v for vals in values_by_subject.values() for v in vals if v and v.lower() != "n/a"}
    if not 2 <= len(levels) <= 6:
        return False
    for v in levels:
        try:
            float(v)
            return False
        except ValueError:
            pass
        if re.match(r"^\d{4}-\d{2}-\d{2}", v):
            return False
    return any(len(set(vals)) > 1 for vals in values_by_subject.values())


def _sessions_columns(bids_dir: Path, subjects: list[str]) -> tuple[dict[str, dict[str, dict[str, str]]],
                                                                        dict[str, dict[str, list[str]]]]:
    tables = {}
    cols: dict[str, dict[str, list[str]]] = {}
    for sub in subjects:
        t = read_sessions_tsv(bids_dir, sub)
        if t is None:
            continue
        tables[sub] = t
        for row in t.values():
            for k, v in row.items():
                if k not in _NOT_CONDITION:
                    cols.setdefault(k, {}).setdefault(sub, []).append(v)
    return tables, cols


def apply_condition_column(scans: list[Scan], bids_dir: Path, conditions: tuple[str, str],
                           column: str | None = None) -> list[Scan]:
    """Map sessions to conditions through ``sub-XX/sub-XX_sessions.tsv``.

    ``column`` None: the condition labels are session labels when every one of them is one (then a warning when
    sessions.tsv holds a column that looks like the real conditions); otherwise the column is the only one of
    sessions.tsv holding both condition values (an error when none or several do).  The returned scans carry the
    condition in ``session`` and the folder's label in ``visit``; scans of other conditions are left out.
    """
    bids_dir = Path(bids_dir)
    subjects = sorted({s.subject for s in scans})
    sessions = sorted({s.session for s in scans})
    tables, cols = _sessions_columns(bids_dir, subjects)
    if column is None:
        if all(c in sessions for c in conditions):
            for name, by_sub in cols.items():
                if _looks_like_condition(by_sub):
                    levels = sorted({v for vals in by_sub.values() for v in vals if v})
                    log.warning("WARNING: the conditions %s are session labels (ses-%s, ses-%s), but the sessions.tsv "
                                "column %r varies between sessions with values %s: if that is the condition, use "
                                "--condition-column %s --conditions %s", " ".join(conditions), conditions[0],
                                conditions[1], name, ", ".join(levels), name, " ".join(levels[:2]))
            return scans
        hits = [name for name, by_sub in cols.items()
                if all(any(v == c for vals in by_sub.values() for v in vals) for c in conditions)]
        if not hits:
            where = f"no sub-XX_sessions.tsv column holds both {conditions[0]!r} and {conditions[1]!r}" if tables \
                else "no sub-XX/sub-XX_sessions.tsv found"
            raise InputError(f"no scan has session ses-{next(c for c in conditions if c not in sessions)} and {where}; "
                             f"sessions present: {', '.join(sessions)}")
        if len(hits) > 1:
            raise InputError(f"the conditions {conditions[0]!r} and {conditions[1]!r} occur in several sessions.tsv "
                             f"columns ({', '.join(hits)}): choose one with --condition-column")
        column = hits[0]
        log.info("conditions %s and %s found in column %r of sub-XX_sessions.tsv (the only column holding both): "
                 "sessions mapped to conditions", conditions[0], conditions[1], column)
    out = []
    seen: dict[tuple[str, str], Scan] = {}
    for s in scans:
        table = tables.get(s.subject)
        tsv = bids_dir / f"sub-{s.subject}" / bids_sessions_name(s.subject)
        if table is None:
            raise InputError(f"{tsv}: missing (--condition-column {column} reads the condition of each session there)")
        row = table.get(s.session)
        if row is None:
            raise InputError(f"{tsv}: no row for ses-{s.session} ({s.pet.name})")
        if column not in row:
            raise InputError(f"{tsv}: no column {column!r}; columns are {', '.join(row)}")
        cond = row[column]
        if cond not in conditions:
            log.info("sub-%s ses-%s: %s=%s is neither condition: not used", s.subject, s.session, column, cond)
            continue
        key = (s.subject, cond)
        if key in seen:
            raise InputError(f"{tsv}: ses-{seen[key].visit} and ses-{s.session} both have {column}={cond}")
        new = Scan(s.subject, cond, s.pet, s.sidecar, s.entities, visit=s.session)
        seen[key] = new
        out.append(new)
    log.info("sessions -> conditions (%s): %s", column,
             "; ".join(f"sub-{s.subject} ses-{s.visit}={s.session}" for s in out))
    return out


def find_preproc_scans(deriv_dir: Path, space: str, bids_dir: Path | None = None) -> list[Scan]:
    """PETPrep outputs ``sub-*/ses-*/pet/*_space-<space>_desc-preproc_pet.nii[.gz]`` of a derivatives dataset, with
    their sidecar; frame times come from it, or else from the raw dataset's ``*_pet.json`` of the same scan."""
    deriv_dir = Path(deriv_dir)
    if not deriv_dir.is_dir():
        raise InputError(f"{deriv_dir}: not a directory (expected a derivatives dataset such as PETPrep's)")
    _check_session_level(deriv_dir)
    pets = sorted(p for p in deriv_dir.glob(f"sub-*/ses-*/pet/*_space-{space}_*_pet.nii*")  # also _res-2_ etc.
                  if p.name.endswith((PREPROC_PET_SUFFIX, PREPROC_PET_SUFFIX.removesuffix(".gz"))))
    if not pets:
        other = sorted({re.sub(r".*_space-([A-Za-z0-9]+)_.*", r"\1", p.name)
                        for p in deriv_dir.glob(f"sub-*/ses-*/pet/*_space-*{PREPROC_PET_SUFFIX.removesuffix('.gz')}*")})
        raise InputError(f"{deriv_dir}: no *_space-{space}{PREPROC_PET_SUFFIX} under sub-*/ses-*/pet/"
                         + (f"; spaces present: {', '.join(other)}" if other else ""))
    scans = []
    for pet in pets:
        m = _PET_RE.match(pet.name)
        if not m:
            log.warning("skipping %s: not a BIDS PET file name", pet)
            continue
        ents = _entities(m["rest"] or "")
        side = sidecar_path(pet)
        timing = False
        if side.exists():
            try:
                timing = {"FrameTimesStart", "FrameDuration"} <= set(json.loads(side.read_text()))
            except (OSError, json.JSONDecodeError) as exc:
                raise InputError(f"{side}: cannot read JSON sidecar ({exc})") from exc
        if not timing:
            raw = None
            if bids_dir is not None:
                rest = "".join(f"_{k}-{v}" for k, v in ents if k not in ("space", "desc", "res", "den"))
                raw = Path(bids_dir) / f"sub-{m['sub']}" / f"ses-{m['ses']}" / "pet" / \
                    f"sub-{m['sub']}_ses-{m['ses']}{rest}_pet{JSON_EXT}"
            if raw is None or not raw.exists():
                raise InputError(f"{pet}: no frame timing: {side.name} lacks FrameTimesStart/FrameDuration and the raw "
                                 f"sidecar {raw if raw is not None else '(no raw dataset given)'} is missing")
            log.debug("%s: frame times from the raw sidecar %s", pet.name, raw)
            side = raw
        scans.append(Scan(m["sub"], m["ses"], pet, side, tuple((k, v) for k, v in ents if k not in ("space", "desc"))))
    if not scans:
        raise InputError(f"{deriv_dir}: no usable *_space-{space}_desc-preproc_pet files")
    log.info("preprocessed input: %d scans from %s (space %s)", len(scans), deriv_dir, space)
    return scans


def discover_scans(cfg) -> list[Scan]:  # noqa: ANN001 - a StudyConfig (no import cycle)
    """The scans ``voxelkit run`` uses: raw or preprocessed images, ``--filter`` and dynamic-scan selection, and the
    sessions.tsv condition mapping."""
    deriv = getattr(cfg, "input_derivatives", None)
    if deriv is not None:
        space = getattr(cfg, "space", None)
        if not space:
            raise InputError("--input-derivatives needs --space (e.g. MNI152NLin2009cAsym)")
        scans = find_preproc_scans(deriv, space, cfg.bids_dir)
    else:
        scans = find_scans(cfg.bids_dir)
    scans = select_scans(scans, parse_filters(getattr(cfg, "filters", None)))
    return apply_condition_column(scans, cfg.bids_dir, tuple(cfg.conditions), getattr(cfg, "condition_column", None))


def scan_table(pairing: Pairing) -> list[dict[str, str]]:
    """Which file was used for which subject and condition (for provenance)."""
    return [{"subject": sub, "condition": cond, "session": s.visit or s.session, "pet": str(s.pet),
             "sidecar": str(s.sidecar)} for (sub, cond), s in sorted(pairing.scans.items())]


def scan_frames(scan: Scan) -> FrameTiming:
    """Frame timing (seconds) of a scan: its BIDS sidecar, or the subheaders of an ECAT7 file without one."""
    if scan.sidecar.suffix == JSON_EXT:
        return FrameTiming.from_bids_json(scan.sidecar)
    from ..ecat import ecat_frames  # noqa: PLC0415

    return ecat_frames(scan.sidecar)
