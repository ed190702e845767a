"""The study report: one self-contained HTML file built from a pipeline output directory.

What it reads, every name from :mod:`voxelkit.io.derivatives`:

- the run's records by their names: ``study.json`` (:meth:`voxelkit.pipeline.config.StudyConfig.to_dict`),
  ``provenance.json`` (written by :mod:`voxelkit.pipeline.run`), ``roi/roi_values.tsv``, ``roi/roi_tests.tsv``;
  their keys by their exact names (no key search, no alternative spellings);
- which per-scan files exist (QC records, BPND maps) from the run folder's manifest (``voxelkit_manifest.json``),
  and which statistics files exist (maps, cluster table, null distributions, ``stats.json``) from the manifest of
  ``group/stats/`` that :meth:`voxelkit.stats.PermutationResult.save` writes -- nothing is globbed;
- the significance decisions from ``stats.json`` key ``decisions`` (:mod:`voxelkit.stats.decisions`: made once, in
  memory, by the statistics): the report never re-thresholds values read back from disk.

With named contrasts (study.json ``contrasts``, ``voxelkit run --conditions A B C --contrasts A-B A-C``) the one
report has the design and the per-scan QC once and, per contrast in the order named, its key results, maps,
clusters, ROI tables and null distributions headed by the contrast ("anakinra − baseline"): the contrasts and their
labels come from study.json ``conditions``, ``contrasts`` and ``contrast`` (:func:`~voxelkit.io.derivatives.
contrast_label`), each contrast's statistics from the manifest of its ``group/stats-<LABEL>/``, its ROI tables from
``roi/desc-<LABEL>_roi_*.tsv``; a statistics folder of a contrast the study does not name is not shown.

``voxelkit run`` passes what it holds in memory (the study settings, the provenance, the
:class:`~voxelkit.stats.PermutationResult`, the list of files it wrote; with named contrasts, each contrast's
PermutationResult and RoiTables), so no map is re-read for the report;
``voxelkit report DIR`` reads them from disk through the manifests.  Figures still need images: each file is read
once.  Images are embedded PNG data URIs, the stylesheet is inline, there is no script and no external resource.
A piece that is absent is "not computed"; one that a folder written by an older voxelkit does not record (no
manifest, no decisions) is "not recorded" with what to rerun; a piece that cannot be read is reported as such
(with a warning) instead of stopping the report.  The output depends only on the inputs (no timestamps).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import logging
import math
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..io import InputError, read_table, write_tsv
from ..io import derivatives as dv
from ..io.derivatives import entity_labels, write_text_atomic
from ..stats import decisions as dec
from . import figures
from .html import (
    NOT_AVAILABLE,
    NOT_COMPUTED,
    Raw,
    Section,
    details,
    esc,
    figure,
    fmt_value,
    is_number,
    kv_table,
    note,
    page,
    parse_cell,
    table,
)

log = logging.getLogger(__name__)

ALPHA = dec.ALPHA
LOGP_ALPHA = -math.log10(ALPHA)
#: FWE -log10 p maps in the report's order, and the inference of each (voxelkit.stats.decisions.P_MAPS).
FWE_MAPS = ("logp_fwe_tfce", "logp_fwe_cluster_mass", "logp_fwe_cluster_extent", "logp_fwe_voxel")
FWE_LABELS = {"cluster_extent": "cluster extent", "cluster_mass": "cluster mass", "tfce": "TFCE",
              "voxel": "voxel (max-T)", "cluster": "cluster"}
MAX_TABLE_ROWS = 300
#: Colour range limits of the release maps (fraction of the receptors; voxel estimates beyond are clipped).
RELEASE_DISPLAY = (-0.5, 1.0)
#: pct_change is not shown for a region whose condition-B mean is below this in magnitude (BPND about 0: a
#: percentage of about nothing is meaningless, e.g. 288 % for a region at reference level).
PCT_MIN_BASELINE = 0.1
#: Cluster-table p columns and the inference they belong to.
CLUSTER_P_COLUMNS = {"p_fwe_extent": "cluster_extent", "p_fwe_mass": "cluster_mass"}
#: Display names of table columns that carry a unit.
COLUMN_UNITS = {"peak_x": "peak_x (mm)", "peak_y": "peak_y (mm)", "peak_z": "peak_z (mm)",
                "size_mm3": "size (mm³)"}
MAX_BACKGROUND_MAPS = 40


# ------------------------------------------------------------------------------------------------ reading

def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path`` (None when the file does not exist)."""
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_tsv(path: Path) -> tuple[list[str], list[list[object]]]:
    """Header and rows (cells parsed to int/float/str) of a tab-separated file, read by the one TSV reader
    (:func:`voxelkit.io.read_table`; an empty file is an empty table)."""
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        return [], []
    table = read_table(path, min_rows=0)
    return table.header, [[parse_cell(c) for c in r] for r in table.rows]


def as_json(obj: Any) -> Any:
    """``obj`` as it reads back from its JSON file (NumPy values and tuples to lists, paths to text): a record
    passed in memory renders as the one read from disk."""
    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    return json.loads(json.dumps(obj, default=default))


def _cell_value(v: Any) -> object:
    """A cluster-table value in memory typed as the table file's cell reads back (text through
    :func:`parse_cell`, integral floats as int); floats keep their full precision."""
    if isinstance(v, str):
        return parse_cell(v)
    if isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer():
        return int(v)
    return v.item() if isinstance(v, np.generic) else v


def _as_read_back(rows: Iterable[Mapping[str, Any]]) -> tuple[list[str], list[list[object]]]:
    """Header and rows of an ROI table held in memory (the rows ``voxelkit run`` wrote) exactly as its file reads
    back: through the one TSV writer's text (:func:`voxelkit.io.write_tsv`: 6 significant digits, NaN as n/a)
    and :func:`parse_cell`, so that the report made in memory equals the one made from the folder."""
    lines = [ln.split("\t") for ln in write_tsv(list(rows), None).splitlines() if ln.strip()]
    if not lines:
        return [], []
    return [h.strip() for h in lines[0]], [[parse_cell(c) for c in r] for r in lines[1:]]


def not_recorded(what: str, rerun: str) -> str:
    """The notice for a piece that a folder written by an older voxelkit does not record."""
    return f"{what}: not recorded (written by an older voxelkit); rerun {rerun} to get it."


RERUN_RUN = "voxelkit run (finished per-scan fits are reused)"


class _Stats:
    """The group statistics the report shows: a :class:`~voxelkit.stats.PermutationResult` in memory, or the
    files that the manifest of ``group/stats/`` lists (each read once, when first needed)."""

    def __init__(self, folder: Path, result: Any = None, rel: str | None = None) -> None:
        self.folder = folder
        self.result = result
        self.rel = rel if rel is not None else f"{dv.GROUP_DIR}/{dv.STATS_DIR}"  # for messages
        self.missing: str | None = None  # why nothing can be shown (not computed / not recorded)
        self.problems: list[str] = []
        self._images: dict[str, Any] = {}
        self._null: dict[str, np.ndarray] | None = None
        self._clusters: tuple[list[str], list[list[object]]] | None = None
        self.listed: set[str] = set()
        if result is not None:
            self.settings: dict[str, Any] = as_json(result.settings)
            self.map_names = [m for m in dv.STATS_MAP_NAMES if m in result.maps]
            self.has_null = bool(result.null)
            self.has_clusters = result.settings.get("cluster_threshold_t") is not None
            return
        self.settings = {}
        self.map_names = []
        self.has_null = self.has_clusters = False
        manifest = dv.read_manifest(folder)
        if manifest is None:
            if folder.is_dir() and any(folder.iterdir()):
                self.missing = not_recorded(f"the statistics in {self.rel} (no {dv.MANIFEST_NAME})",
                                            f"{RERUN_RUN} or voxelkit stats")
            else:
                self.missing = NOT_COMPUTED
            return
        self.listed = {str(w) for w in manifest.get("written") or []}
        if dv.STATS_SETTINGS in self.listed:
            try:
                self.settings = read_json(folder / dv.STATS_SETTINGS) or {}
            except Exception as exc:  # noqa: BLE001
                self.problems.append(f"{self.rel}/{dv.STATS_SETTINGS}: {type(exc).__name__}: {exc}")
        self.map_names = [m for m in dv.STATS_MAP_NAMES if dv.stats_map_name(m) in self.listed]
        self.has_null = dv.STATS_NULL in self.listed
        self.has_clusters = dv.STATS_CLUSTERS in self.listed

    @property
    def decisions(self) -> dict[str, Any] | None:
        """The decisions record (stats.json ``decisions``); made in memory for a result that has none yet."""
        rec = self.settings.get(dec.DECISIONS_KEY)
        if rec is None and self.result is not None:
            rec = self.settings[dec.DECISIONS_KEY] = as_json(dec.decisions(self.result))
        return rec if isinstance(rec, dict) else None

    def file_name(self, name: str) -> str:
        return dv.stats_map_name(name)

    def image(self, name: str) -> Any:
        """Map ``name`` as a 3-D image (the result's, or its file read once)."""
        if name not in self._images:
            if self.result is not None:
                self._images[name] = self.result.image(name)
            else:
                import nibabel as nib  # noqa: PLC0415

                img = nib.load(self.folder / dv.stats_map_name(name))
                data = np.asarray(img.dataobj, dtype=np.float32)
                data = data.reshape(data.shape[:3]) if data.ndim > 3 and all(s == 1 for s in data.shape[3:]) else data
                self._images[name] = nib.Nifti1Image(data, img.affine)
        return self._images[name]

    def data(self, name: str) -> np.ndarray:
        return np.asarray(self.image(name).dataobj, dtype=np.float32)

    @property
    def null(self) -> dict[str, np.ndarray]:
        """The null distributions (and what was saved with them)."""
        if self._null is None:
            if self.result is not None:
                self._null = {k: np.asarray(v) for k, v in self.result.null.items()}
            elif self.has_null:
                with np.load(self.folder / dv.STATS_NULL, allow_pickle=False) as z:
                    self._null = {k: np.asarray(z[k]) for k in z.files}
            else:
                self._null = {}
        return self._null

    def cluster_table(self) -> tuple[list[str], list[list[object]]]:
        """Header and rows of the cluster table (empty when clusters were not formed)."""
        if self._clusters is None:
            if not self.has_clusters:
                self._clusters = ([], [])
            elif self.result is not None:
                header = list(dv.STATS_CLUSTER_COLUMNS)
                self._clusters = (header, [[_cell_value(r.get(c, float("nan"))) for c in header]
                                           for r in self.result.clusters])
            else:
                self._clusters = read_tsv(self.folder / dv.STATS_CLUSTERS)
        return self._clusters


# ------------------------------------------------------------------------------------------------ rendering

def render_value(v: Any, depth: int = 0) -> Raw:
    """Nested JSON as HTML: dicts as key/value tables, lists of scalars inline, lists of dicts as tables."""
    if isinstance(v, Raw):
        return v
    if isinstance(v, dict):
        if not v:
            return Raw('<span class="note">(empty)</span>')
        if depth >= 4:
            return Raw(f"<code>{esc(json.dumps(v, sort_keys=False))}</code>")
        return Raw(kv_table((str(k), render_value(x, depth + 1)) for k, x in v.items()))
    if isinstance(v, list):
        if v and all(isinstance(x, dict) for x in v):
            keys: list[str] = []
            for x in v:
                keys.extend(k for k in x if k not in keys)
            rows = [[_cell(x.get(k)) for k in keys] for x in v]
            return Raw(table(keys, rows))
        text = ", ".join(fmt_value(x) if not isinstance(x, (dict, list)) else json.dumps(x) for x in v)
        if len(text) > 400:
            text = text[:400] + f" … ({len(v)} items)"
        return Raw(esc(f"[{text}]") if not v else esc(text))
    if isinstance(v, str) and re.fullmatch(r"[0-9a-f]{32,128}", v):
        return Raw(f"<code>{esc(v)}</code>")
    return Raw(esc(fmt_value(v)))


def _cell(x: Any) -> object:
    if isinstance(x, (dict, list)):
        return json.dumps(x)
    return x


def _cards(items: Iterable[tuple[str, object]]) -> str:
    cards = "".join(f'<div class="card"><div class="v">{esc(fmt_value(v))}</div><div class="k">{esc(k)}</div></div>'
                    for k, v in items if v is not None)
    return f'<div class="cards">{cards}</div>' if cards else ""


def _short(v: Any) -> str:
    """A short one-line summary of a setting value."""
    if isinstance(v, dict):
        name = v.get("name") or v.get("model") or v.get("type")
        rest = ", ".join(f"{k}={fmt_value(x)}" for k, x in v.items()
                         if k not in ("name", "model", "type") and not isinstance(x, (dict, list)))
        return f"{name} ({rest})" if name and rest else str(name) if name else rest
    if isinstance(v, list):
        return " vs ".join(str(x) for x in v) if len(v) <= 4 else f"{len(v)}"
    return fmt_value(v)


# -------------------------------------------------------------------------------------------------- report

class _Report:
    """Collects the pieces of one output directory and renders them to sections.

    With named contrasts (study.json ``contrasts``) it holds one view per contrast (:meth:`view`): a copy that
    shares the run's records, problems and caches and has the contrast's own statistics (``group/stats-<LABEL>/``),
    ROI tables (``roi/desc-<LABEL>_roi_*.tsv``), condition pair, section ids and headings."""

    def __init__(self, out_dir: Path, *, study: Any = None, provenance: Mapping[str, Any] | None = None,
                 stats: Any = None, written: Iterable[str | Path] | None = None,
                 bp_nd: Iterable[np.ndarray] | None = None,
                 contrasts: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.out = Path(out_dir)
        self.roi = dv.roi_dir(self.out)
        self.problems: list[str] = []
        self.timings: dict[str, float] = {}
        self.study: dict[str, Any] = {}
        self.prov: dict[str, Any] = {}
        manifest = dv.read_manifest(self.out)
        self.has_manifest = manifest is not None or written is not None
        self.listed: list[str] = sorted({*(str(w) for w in (manifest or {}).get("written") or []),
                                         *(str(w) for w in written or [])})
        self._load_records(study, provenance)
        self.bp_nd = bp_nd
        self._qc: dict[Path, tuple[dict[str, Any] | None, str]] = {}
        self._shared: dict[str, Any] = {}  # caches shared with the contrast views (the background image)
        # one contrast: the two conditions' statistics in group/stats/ and ROI tables in roi/
        self.prefix = ""  # section-id prefix and heading of a named contrast ('' for the one contrast)
        self.heading = ""
        self.pair: tuple[str, str] | None = None
        self.roi_paths = {"values": self.roi / dv.ROI_VALUES, "tests": self.roi / dv.ROI_TESTS}
        self.roi_mem: dict[str, tuple[list[str], list[list[object]]]] | None = None
        self._roi_read: dict[str, tuple[list[str], list[list[object]]]] = {}
        self.views: list[_Report] = []
        # what the key-results summary needs, filled in by the section builders
        self.fwe_counts: list[tuple[str, int, int]] = []  # (method, significant voxels, clusters)
        self.fwe_signs: dict[str, tuple[int, int]] = {}  # method label -> (voxels with t > 0, with t < 0)
        self.pct_hidden: list[str] = []  # regions whose pct_change is not shown (baseline about 0)
        self._unit: str | None = None
        self.sig_clusters: list[dict[str, object]] = []
        self.sig_rois: list[dict[str, object]] = []
        self.roi_p_name = ""
        # the statistics: group/stats/, or one view per named contrast (made last: a view copies the above)
        named = self.named_contrasts()
        if named:
            self.views = [self.view(label, a, b, (contrasts or {}).get(label)) for label, a, b in named]
            self.stats = self.views[0].stats  # the settings cards (every contrast has the run's inference)
        else:
            self.stats = _Stats(dv.stats_dir(self.out), stats)
            self.problems += self.stats.problems
        self.stats_settings: dict[str, Any] = self.stats.settings

    # -- named contrasts
    def named_contrasts(self) -> list[tuple[str, str, str]]:
        """(label, A, B) of each named contrast, in the order of study.json ``contrasts`` ("A-B" over
        ``conditions``, as :meth:`voxelkit.pipeline.config.StudyConfig.contrast_pairs` reads them; the label is
        :func:`voxelkit.io.derivatives.contrast_label` of ``contrast``); empty for a two-condition run."""
        names, conds, quantity = self.study.get("contrasts"), self.study.get("conditions"), self.study.get("contrast")
        if not isinstance(names, list) or not names:
            return []
        conds = [str(c) for c in conds] if isinstance(conds, list) else []
        out: list[tuple[str, str, str]] = []
        for text in names:
            try:
                a, b = dv.contrast_conditions(text, conds)
            except InputError:
                a = b = None
            if a is None or not isinstance(quantity, str):
                self.problems.append(f"{dv.STUDY_RECORD}: contrast {text!r} is not A-B over the conditions "
                                     f"{' '.join(conds)} (with a contrast quantity); not shown")
                continue
            label = dv.contrast_label(quantity, a, b)
            if label not in (c[0] for c in out):
                out.append((label, a, b))
        return out

    def view(self, label: str, a: str, b: str, given: Mapping[str, Any] | None) -> _Report:
        """The report of the named contrast A - B (``label``): the run's records, problems and caches shared; its
        statistics from ``given["stats"]`` (a PermutationResult in memory) or ``group/stats-<label>/`` through its
        manifest; its ROI tables from ``given["roi"]`` (RoiTables in memory, as the files read back) or
        ``roi/desc-<label>_roi_*.tsv``."""
        v = copy.copy(self)
        v.prefix, v.heading, v.pair, v.views = label, f"{a} − {b}", (a, b), []
        folder = dv.contrast_stats_dir(self.out, label)
        v.stats = _Stats(folder, (given or {}).get("stats"), f"{dv.GROUP_DIR}/{folder.name}")
        v.stats_settings = v.stats.settings
        self.problems += v.stats.problems  # one list, shared
        v.roi_paths = {"values": dv.contrast_roi_values_path(self.out, label),
                       "tests": dv.contrast_roi_tests_path(self.out, label)}
        roi = (given or {}).get("roi")
        v.roi_mem = None if roi is None else {k: _as_read_back(getattr(roi, k)) for k in v.roi_paths
                                              if k in (getattr(roi, "paths", None) or {})}
        v._roi_read = {}
        v.fwe_counts, v.fwe_signs, v.pct_hidden, v.sig_clusters, v.sig_rois, v.roi_p_name = [], {}, [], [], [], ""
        return v

    def sid(self, name: str) -> str:
        """A section (or heading) id, prefixed by the contrast label for a named contrast."""
        return f"{self.prefix}-{name}" if self.prefix else name

    def title(self, name: str) -> str:
        """A section title, headed by the contrast ("anakinra − baseline: ...") for a named contrast."""
        return f"{self.heading}: {name}" if self.heading else name

    def roi_exists(self, kind: str) -> bool:
        """Whether the ROI table ``kind`` ("values", "tests") was written (in memory: the run's RoiTables)."""
        return kind in self.roi_mem if self.roi_mem is not None else self.roi_paths[kind].is_file()

    def roi_table(self, kind: str) -> tuple[list[str], list[list[object]]]:
        """Header and rows of the ROI table ``kind`` (in memory, typed as its file reads back; else read once)."""
        if self.roi_mem is not None:
            return self.roi_mem[kind]
        if kind not in self._roi_read:
            self._roi_read[kind] = read_tsv(self.roi_paths[kind])
        return self._roi_read[kind]

    # -- helpers
    def guarded(self, name: str, fn: Callable[[], Section]) -> Section:
        """Run a section builder; a failure becomes a short notice in the report (and a warning)."""
        t0 = time.perf_counter()
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - one broken input must not stop the whole report
            msg = f"{name}: could not be rendered ({type(exc).__name__}: {exc})"
            warnings.warn(msg, stacklevel=2)
            self.problems.append(msg)
            sid = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
            return Section(sid, name, note(msg, "warn"))
        finally:
            self.timings[name] = time.perf_counter() - t0

    def _load_records(self, study: Any, provenance: Mapping[str, Any] | None) -> None:
        """study.json (or the StudyConfig / its dict in memory) and provenance.json (or the dict in memory)."""
        if study is not None:
            self.study = as_json(study.to_dict() if hasattr(study, "to_dict") else dict(study))
        if provenance is not None:
            self.prov = as_json(dict(provenance))
        for name, given in ((dv.STUDY_RECORD, study), (dv.PROVENANCE, provenance)):
            if given is not None:
                continue
            try:
                obj = read_json(self.out / name) or {}
            except Exception as exc:  # noqa: BLE001
                self.problems.append(f"{name}: {type(exc).__name__}: {exc}")
                obj = {}
            if name == dv.STUDY_RECORD:
                self.study = obj
            else:
                self.prov = obj

    def listed_files(self, pattern: str) -> list[Path]:
        """Files of the run folder's manifest whose relative path matches ``pattern`` (a pattern from
        voxelkit.io.derivatives, matched against the manifest's entries, never against the disk), sorted."""
        return [self.out / w for w in self.listed if fnmatch.fnmatchcase(w, pattern)]

    def scan_maps(self, param: str) -> list[Path]:
        """Every scan's map of ``param`` that the run's manifest lists."""
        return self.listed_files(dv.scan_map_glob(param))

    def qc_records(self) -> list[Path]:
        """The per-scan QC records that the run's manifest lists."""
        return self.listed_files(dv.QC_GLOB)

    def read_qc(self, path: Path) -> tuple[dict[str, Any] | None, str]:
        """A QC record (read once) and '' -- or None and why it cannot be read."""
        if path not in self._qc:
            try:
                obj = read_json(path)
                self._qc[path] = (obj, "") if obj is not None else (None, "missing")
            except Exception as exc:  # noqa: BLE001
                self._qc[path] = (None, f"{type(exc).__name__}: {exc}")
        return self._qc[path]

    def unlisted(self, what: str) -> str:
        """Notice for a piece of the run folder that is missing: not recorded (no manifest) or not computed."""
        if not self.has_manifest and self.out.is_dir() and any(self.out.iterdir()):
            return note(not_recorded(f"{what} (no {dv.MANIFEST_NAME})", RERUN_RUN))
        return note(f"{what}: {NOT_COMPUTED}.")

    def conditions(self, seen: list[str]) -> list[str]:
        """Condition order: as in study.json, else order of appearance (a named contrast: its two conditions)."""
        if self.pair is not None:
            return [c for c in self.pair if c in seen]
        declared = self.study.get("conditions")
        order: list[str] = []
        if isinstance(declared, list):
            order = [str(c) for c in declared if str(c) in seen]
        return order + [c for c in seen if c not in order]

    def significant_cluster_ids(self) -> dict[str, list[str]] | None:
        """Cluster ids FWE-significant by cluster extent and by mass (the decisions record), None when not
        recorded."""
        rec = self.stats.decisions
        cl = rec.get("clusters") if rec else None
        if not isinstance(cl, dict):
            return None
        return {m: [str(i) for i in (cl.get(m) or {}).get("cluster_ids") or []] for m in CLUSTER_P_COLUMNS.values()}

    @staticmethod
    def group_word(method: str) -> str:
        return "clusters (table)" if method in CLUSTER_P_COLUMNS.values() else "connected sets"

    def condition_pair(self) -> tuple[str, str] | None:
        if self.pair is not None:
            return self.pair
        conds = self.study.get("conditions")
        if isinstance(conds, list) and len(conds) == 2:
            return str(conds[0]), str(conds[1])
        return None

    def hide_pct_of_zero(self, header: list[str], rows: list[list[object]]) -> list[list[object]]:
        """``pct_change`` -> n/a where the condition-B mean is below PCT_MIN_BASELINE in magnitude."""
        if "pct_change" not in header:
            return rows
        pair = self.condition_pair()
        base = next((c for c in ([f"mean_{pair[1]}"] if pair else []) + ["mean_b"] if c in header), None)
        if base is None:
            return rows
        jp, jb, jr = header.index("pct_change"), header.index(base), header.index("region") if "region" in header \
            else 0
        out = []
        for r in rows:
            r = list(r)
            b = r[jb]
            if is_number(b) and (math.isnan(b) or abs(b) < PCT_MIN_BASELINE) and r[jp] != NOT_AVAILABLE:
                r[jp] = NOT_AVAILABLE
                self.pct_hidden.append(str(r[jr]))
            out.append(r)
        return out

    def activity_unit(self) -> str | None:
        """The PET activity unit (``Units`` of the scans' BIDS sidecars), None when unknown."""
        if self._unit is None:
            self._unit = ""
            cands = [r.get("sidecar") for r in (self.prov.get("scans") or []) if isinstance(r, dict)][:1]
            for c in cands:
                try:
                    unit = read_json(Path(c)).get("Units") if c and str(c).endswith(dv.JSON_EXT) else None
                except (OSError, ValueError, AttributeError):
                    unit = None
                if isinstance(unit, str) and unit:
                    self._unit = unit
                    break
        return self._unit or None

    # -- design and settings
    def design(self) -> Section:
        # exact keys: study.json = StudyConfig.to_dict(), provenance.json (pipeline.run), stats.json (settings_record)
        study, prov, st = self.study, self.prov, self.stats_settings
        subjects = prov.get("subjects")
        n_subj = len(subjects) if isinstance(subjects, list) else None
        conds = study.get("conditions")
        model = study.get("model")
        opts = study.get("model_options")
        if isinstance(model, str) and isinstance(opts, dict) and opts:
            model = {"name": model, **opts}
        nperm = st.get("n_perm") if st.get("n_perm") is not None else study.get("n_perm")
        backend = prov.get("backend")
        if isinstance(backend, dict):
            backend = backend.get("name", backend)
        elif backend is None:
            backend = st.get("backend")
        tfce = st.get("tfce") if "tfce" in st else study.get("tfce")
        cluster_p = st.get("cluster_p") if "cluster_p" in st else study.get("cluster_p")
        two_sided = st.get("two_sided") if "two_sided" in st else study.get("two_sided")
        inference = [k for k, on in (("TFCE", tfce), ("cluster", cluster_p is not None), ("voxel", True)) if on]
        dropped = prov.get("dropped_subjects")
        contrast = study.get("contrast")
        cards = _cards([
            ("subjects", n_subj),
            *([("conditions", _short(conds) if conds is not None else None),
               ("named contrasts", ", ".join(v.heading for v in self.views))] if self.views else
              [("conditions (A vs B)", _short(conds) if conds is not None else None)]),
            ("contrast", _short(contrast) if contrast is not None else None),
            ("model", _short(model) if model is not None else None),
            ("smoothing FWHM (mm)", study.get("smoothing_fwhm")),
            ("permutations", nperm),
            ("FWE inference", " + ".join(inference) + (", two-sided" if two_sided else ", one-sided"
                                                       if two_sided is not None else "")),
            ("cluster-forming p", cluster_p),
            ("seed", study.get("seed")),
            ("backend", _short(backend) if backend is not None else None),
        ])
        parts = [cards]
        if dropped:
            parts.append(note(f"Subjects dropped (incomplete pairs): {_short(dropped)}", "warn"))
        check = self.prov.get("activation_check") if isinstance(self.prov, dict) else None
        if isinstance(check, dict):
            for w in check.get("warnings") or []:  # the activation rules of voxelkit.models.activation
                parts.append(note(f"Activation by windows: {w}", "warn"))
        choice = self.prov.get("model_choice") if isinstance(self.prov, dict) else None
        if isinstance(choice, dict) and choice.get("model"):
            parts.append(note(f"Model not given: {_short(choice)}"))
        if isinstance(subjects, list) and subjects:
            parts.append(f"<p><b>Subjects ({len(subjects)}):</b> {esc(', '.join(str(s) for s in subjects))}</p>")
        subs = [("design-settings", "Study settings")]
        parts.append('<h3 id="design-settings">Study settings</h3>')
        parts.append(render_value(self.study).html if self.study else note(f"{dv.STUDY_RECORD}: {NOT_COMPUTED}."))
        for v in self.views or [self]:
            if v.stats_settings:
                parts.append(details(f"Inference settings ({v.stats.rel}/{dv.STATS_SETTINGS})"
                                     + (f" — {v.heading}" if v.heading else ""), render_value(v.stats_settings).html))
        subs.append(("design-provenance", "Provenance"))
        parts.append('<h3 id="design-provenance">Provenance</h3>')
        if self.prov:
            big = ("inputs", "seconds", "versions", "settings", "scans")
            rest = {k: v for k, v in self.prov.items() if k not in big}
            if isinstance(rest.get("command"), list):
                rest["command"] = Raw(f"<code>{esc(' '.join(str(c) for c in rest['command']))}</code>")
            if rest:
                parts.append(render_value(rest).html)
            settings = self.prov.get("settings")
            if settings is not None and settings != self.study:
                parts.append(details(f"Settings recorded in {dv.PROVENANCE}", render_value(settings).html))
            if isinstance(self.prov.get("scans"), list) and self.prov["scans"]:
                parts.append(details(f"Scans used ({len(self.prov['scans'])}: subject, condition, session folder, "
                                     "image, timing sidecar)", render_value(self.prov["scans"]).html))
            if self.prov.get("versions") is not None:
                parts.append(details("Software versions", render_value(self.prov["versions"]).html, open_=True))
            if "inputs" in self.prov:
                v = self.prov["inputs"]
                n = len(v) if isinstance(v, (list, dict)) else 1
                parts.append(details(f"Input checksums ({n} files)", render_value(v).html))
            if "seconds" in self.prov:
                parts.append(details("Timings (s)", render_value(self.prov["seconds"]).html))
        else:
            parts.append(note(f"{dv.PROVENANCE}: {NOT_COMPUTED}."))
        return Section("design", "Design and settings", "\n".join(parts), subs)

    # -- statistical maps
    def background(self, ref: Any) -> tuple[Any, str]:
        """Mean BPND over the per-scan maps (in memory, else the manifest's files, each read once; same grid as
        ``ref``) as the slice background, else nilearn's MNI template."""
        key = ("background", tuple(ref.shape[:3]), np.asarray(ref.affine, np.float64).tobytes())
        if key not in self._shared:
            self._shared[key] = self._background(ref)
        return self._shared[key]

    def _background(self, ref: Any) -> tuple[Any, str]:
        import nibabel as nib  # noqa: PLC0415

        acc = None
        n = 0
        if self.bp_nd is not None:
            arrays: Iterable[Any] = list(self.bp_nd)[:MAX_BACKGROUND_MAPS]
        else:
            arrays = self.scan_maps("bp_nd")[:MAX_BACKGROUND_MAPS]
        for item in arrays:
            if isinstance(item, Path):
                try:
                    img = nib.load(item)
                except Exception:  # noqa: BLE001
                    continue
                if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine, atol=1e-3):
                    continue
                d = np.asarray(img.dataobj, dtype=np.float32).reshape(ref.shape[:3])
            else:
                d = np.asarray(item, dtype=np.float32)
                if d.shape[:3] != ref.shape[:3]:
                    continue
                d = d.reshape(ref.shape[:3])
            d = np.nan_to_num(d)
            acc = d if acc is None else acc + d
            n += 1
        if acc is None:
            return None, "MNI152 template"
        return nib.Nifti1Image(acc / n, ref.affine), f"mean BPND of {n} scans"

    def fwe_maps(self) -> list[str]:
        """The FWE -log10 p maps of the statistics, in the report's order."""
        return [m for m in FWE_MAPS if m in self.stats.map_names]

    def maps(self) -> Section:
        st = self.stats
        if st.missing is not None:
            text = f"Statistical maps: {st.missing}." if st.missing == NOT_COMPUTED else st.missing
            return Section(self.sid("maps"), self.title("Statistical maps"), note(text))
        fwe = self.fwe_maps()
        has_t = "t" in st.map_names
        if not has_t and not fwe:
            return Section(self.sid("maps"), self.title("Statistical maps"), note(f"Statistical maps: {NOT_COMPUTED}."))
        import nibabel as nib  # noqa: PLC0415

        parts: list[str] = []
        subs: list[tuple[str, str]] = []
        shown = "t" if has_t else fwe[0]
        t_img = st.image(shown)
        t = np.nan_to_num(st.data(shown))
        if has_t:
            stat_name = "t"
        else:
            stat_name = f"signed -log10 p ({shown})"
            parts.append(note(f"t map: {NOT_COMPUTED}; showing {shown} instead.", "warn"))
        affine = t_img.affine
        t[np.abs(t) > 1e29] = 0.0  # voxelkit.stats clips infinite t to +-1e30: not displayable
        vmax = float(np.max(np.abs(t))) or 1.0
        bg, bg_desc = self.background(t_img)
        disp = nib.Nifti1Image(t.astype(np.float32), affine)

        rec = st.decisions
        maps_rec = (rec or {}).get("maps") or {}
        clusters_rec = (rec or {}).get("clusters") or {}
        sig_rows = []
        sig_masks: dict[str, np.ndarray] = {}
        for name in fwe:
            method = dec.P_MAPS[name]
            label = FWE_LABELS.get(method, method)
            lp = np.nan_to_num(st.data(name)).reshape(t.shape)
            # the figure shows the voxels of the map significant by the statistics' own rule for a stored map;
            # every count below is the statistics' record (decided once, in memory)
            sig_masks[method] = dec.significant(lp, ALPHA)
            m = maps_rec.get(name)
            if not isinstance(m, dict):
                sig_rows.append([label, st.file_name(name), "not recorded", None, None, self.group_word(method), None,
                                 float(np.max(np.abs(lp)))])
                continue
            if method in CLUSTER_P_COLUMNS.values() and isinstance(clusters_rec.get(method), dict):
                n_cl = int(clusters_rec[method].get("significant", 0))
            else:
                n_cl = int(m.get("connected_sets", 0))
            n_sig, pos, neg = int(m["significant_voxels"]), m.get("positive"), m.get("negative")
            sig_rows.append([label, st.file_name(name), n_sig, pos, neg, self.group_word(method), n_cl,
                             float(np.max(np.abs(lp)))])
            self.fwe_counts.append((label, n_sig, n_cl))
            self.fwe_signs[label] = (int(pos or 0), int(neg or 0))
        in_brain = int(np.count_nonzero(t))
        parts.append(_cards([
            (f"max {stat_name}", float(t.max())), (f"min {stat_name}", float(t.min())),
            ("voxels with a statistic", in_brain),
            *[(f"FWE p≤{ALPHA} voxels, {r[0]}", r[2]) for r in sig_rows],
        ]))
        conn = (rec or {}).get("connectivity")
        parts.append(f"<p>Map: <code>{esc(st.file_name(shown))}</code>. Slices are shown on the "
                     f"{esc(bg_desc)}. FWE-significant: p<sub>FWE</sub> &le; {ALPHA} "
                     f"(|-log10 p| &ge; {LOGP_ALPHA:.3f}; two-sided maps are signed by the sign of t).</p>")
        if fwe and rec is None:
            parts.append(note(not_recorded(f"Significance counts ({dv.STATS_SETTINGS} key {dec.DECISIONS_KEY!r})",
                                           f"{RERUN_RUN} or voxelkit stats"), "warn"))
        if sig_rows:
            parts.append(table(["method", "file", "significant voxels", "positive (t > 0)", "negative (t < 0)",
                                "counted as", "count", "max -log10 p"], sig_rows,
                               highlight=[isinstance(r[2], int) and r[2] > 0 for r in sig_rows]))
            conn_text = f" ({conn}-connectivity, as in the test)" if conn else ""
            parts.append(note("Cluster extent and cluster mass: clusters of the cluster table that reach FWE "
                              f"p ≤ {ALPHA} by that inference (a cluster significant only by mass is not counted "
                              f"under extent). TFCE and voxel max-T: connected sets of significant voxels"
                              f"{conn_text}. Counts are the statistics' decisions ({dv.STATS_SETTINGS}), made on "
                              "the p-values before the maps were written."))
        else:
            parts.append(note(f"FWE-corrected maps (logp_fwe_*): {NOT_COMPUTED}."))

        subs.append((self.sid("maps-t"), f"{stat_name} map"))
        parts.append(f'<h3 id="{self.sid("maps-t")}">The {esc(stat_name)} map</h3>')
        thr = self.cluster_threshold() if has_t else None
        if thr is not None:
            cp = st.settings.get("cluster_p")
            why = f"the cluster-forming threshold (p < {fmt_value(cp)} uncorrected)" if cp is not None else \
                "the cluster-forming threshold"
            parts.append(figure(figures.glass_brain(disp, f"|{stat_name}| > {thr:.3g}", thr, vmax, stat_name),
                                f"Glass brain (maximum-intensity projections) of the {stat_name} map where "
                                f"|{stat_name}| > {thr:.3g}, {why}; not corrected for multiple comparisons."))
        else:
            parts.append(figure(figures.glass_brain(disp, f"{stat_name} (unthresholded)", 1e-6, vmax, stat_name),
                                f"Glass brain (maximum-intensity projections) of the unthresholded {stat_name} map."))
        parts.append(figure(figures.stat_slices(disp, bg, f"{stat_name}", 1e-6, vmax, 7, mode="z",
                                                cbar_label=stat_name),
                            f"Axial slices of the unthresholded {stat_name} map."))

        for method, sig in sig_masks.items():
            label = FWE_LABELS.get(method, method)
            sid = self.sid(f"maps-fwe-{method}")
            subs.append((sid, f"FWE: {label}"))
            parts.append(f'<h3 id="{esc(sid)}">FWE-significant voxels: {esc(label)}</h3>')
            if not sig.any():
                parts.append(note(f"No voxel is FWE-significant at p ≤ {ALPHA} with {label} inference."))
                continue
            masked = np.where(sig, t, 0.0).astype(np.float32)
            mimg = nib.Nifti1Image(masked, affine)
            peak = np.unravel_index(int(np.argmax(np.abs(masked))), masked.shape)
            xyz = [float(v) for v in (affine[:3, :3] @ np.array(peak, float) + affine[:3, 3])]
            title = f"{stat_name}, FWE p ≤ {ALPHA} ({label})"
            parts.append('<div class="grid2">')
            parts.append(figure(figures.glass_brain(mimg, title, 1e-6, vmax, stat_name),
                                f"Glass brain of {stat_name} restricted to {label} FWE-significant voxels."))
            parts.append(figure(figures.stat_slices(mimg, bg, title, 1e-6, vmax, xyz, mode="ortho",
                                                    cbar_label=stat_name),
                                f"Sections through the strongest significant voxel, at "
                                f"({xyz[0]:.0f}, {xyz[1]:.0f}, {xyz[2]:.0f}) mm."))
            parts.append("</div>")
        return Section(self.sid("maps"), self.title("Statistical maps"), "\n".join(parts), subs)

    def cluster_threshold(self) -> float | None:
        """The cluster-forming |t| threshold the test used (stats.json ``cluster_threshold_t``), None when clusters
        were not formed."""
        v = self.stats.settings.get("cluster_threshold_t")
        return float(v) if is_number(v) and math.isfinite(v) else None

    # -- cluster tables
    def significant_by(self, cluster_id: object) -> str:
        """Which cluster inference makes a cluster FWE-significant ("extent + mass", "mass only", ...), from the
        decisions record ('' when neither, or not recorded)."""
        ids = self.significant_cluster_ids() or {}
        hits = [m.removeprefix("cluster_") for m in CLUSTER_P_COLUMNS.values() if str(cluster_id) in ids.get(m, [])]
        if not hits:
            return ""
        return " + ".join(hits) if len(hits) > 1 else f"{hits[0]} only"

    def clusters(self) -> Section:
        st = self.stats
        if st.missing is not None or not st.has_clusters:
            text = st.missing if st.missing not in (None, NOT_COMPUTED) else f"Cluster table: {NOT_COMPUTED}."
            return Section(self.sid("clusters"), self.title("Clusters"), note(text))
        parts = []
        header, rows = st.cluster_table()
        parts.append(f"<h3>{esc(dv.STATS_CLUSTERS)}</h3>")
        if not rows:
            parts.append(note("No clusters (the table is empty)."))
            return Section(self.sid("clusters"), self.title("Clusters"), "\n".join(parts))
        ids = self.significant_cluster_ids()
        if ids is None:
            parts.append(note(not_recorded(f"Which clusters are FWE-significant ({dv.STATS_SETTINGS} key "
                                           f"{dec.DECISIONS_KEY!r})", f"{RERUN_RUN} or voxelkit stats"), "warn"))
        jid = header.index("cluster_id") if "cluster_id" in header else None
        by = [self.significant_by(r[jid]) if jid is not None else "" for r in rows]
        hl = [bool(b) for b in by]
        self.sig_clusters.extend(dict(zip(header, r, strict=False)) for r, h in zip(rows, hl, strict=True) if h)
        if ids is not None:
            header = [*header, f"FWE p ≤ {ALPHA} by"]
            rows = [[*r, b] for r, b in zip(rows, by, strict=True)]
        if len(rows) > MAX_TABLE_ROWS:
            parts.append(note(f"Showing the first {MAX_TABLE_ROWS} of {len(rows)} rows."))
            rows, hl = rows[:MAX_TABLE_ROWS], hl[:MAX_TABLE_ROWS]
        parts.append(table([COLUMN_UNITS.get(h, h) for h in header], rows, highlight=hl))
        parts.append(note(f"Highlighted rows: FWE p ≤ {ALPHA} by cluster extent or cluster mass (the last column "
                          "says which; the statistics' decisions). Rows without a size are further local maxima of "
                          "the cluster above them. Peak coordinates are world coordinates of the maps in mm; t is "
                          "the paired t statistic."))
        return Section(self.sid("clusters"), self.title("Clusters"), "\n".join(parts))

    # -- ROIs
    def rois(self) -> Section:
        parts = []
        subs = []
        vpath = self.roi_paths["values"]
        subs.append((self.sid("roi-values"), "BPND by condition"))
        parts.append(f'<h3 id="{self.sid("roi-values")}">Regional BPND by condition (paired)</h3>')
        if self.roi_exists("values"):
            header, rows = self.roi_table("values")
            col = {h: i for i, h in enumerate(header)}
            need = {"subject", "condition", "region", "value"}
            if not need <= set(col):
                parts.append(note(f"{vpath.name}: missing columns {sorted(need - set(col))}.", "warn"))
            else:
                values: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
                seen: list[str] = []
                for r in rows:
                    if "quantity" in col and str(r[col["quantity"]]) not in ("bp_nd", "nan", ""):
                        continue  # other quantities (release) have their own figure
                    cond = str(r[col["condition"]])
                    phase = r[col["phase"]] if "phase" in col else ""
                    phase = "" if isinstance(phase, float) and math.isnan(phase) else str(phase)
                    if cond not in seen:
                        seen.append(cond)
                    key = (str(r[col["region"]]), phase)
                    v = r[col["value"]]
                    values.setdefault(key, {}).setdefault(str(r[col["subject"]]), {})[cond] = \
                        float(v) if isinstance(v, (int, float)) else float("nan")
                conds = self.conditions(seen)
                if values:
                    n_sub = len({s for d in values.values() for s in d})
                    parts.append(figure(figures.roi_paired(values, conds),
                                        f"Mean BPND per region and condition; grey lines join the {n_sub} subjects' "
                                        f"values, black diamonds are condition means."))
                else:
                    parts.append(note(f"{vpath.name} has no rows."))
        else:
            parts.append(note(f"Regional values ({dv.ROI_DIR}/{vpath.name}): {NOT_COMPUTED}."))
        tpath = self.roi_paths["tests"]
        subs.append((self.sid("roi-tests"), "ROI tests"))
        parts.append(f'<h3 id="{self.sid("roi-tests")}">Paired tests per region</h3>')
        if self.roi_exists("tests"):
            header, rows = self.roi_table("tests")
            rows = self.hide_pct_of_zero(header, rows)
            pcol = next((header.index(c) for c in ("p_fdr", "p_fwe", "p") if c in header), None)
            hl = [pcol is not None and isinstance(r[pcol], (int, float)) and r[pcol] < ALPHA for r in rows]
            self.sig_rois = [dict(zip(header, r, strict=False)) for r, h in zip(rows, hl, strict=True) if h]
            self.roi_p_name = header[pcol] if pcol is not None else ""
            parts.append(table(header, rows, highlight=hl))
            if pcol is not None:
                parts.append(note(f"Highlighted rows: {header[pcol]} < {ALPHA}. mean_diff and pct_change are "
                                  "condition A − condition B (BPND is unitless)."))
            if self.pct_hidden:
                parts.append(note(f"pct_change is n/a for {', '.join(self.pct_hidden)}: the mean BPND there is "
                                  f"below {PCT_MIN_BASELINE:g} in magnitude (about the reference level), so a "
                                  "percentage change is meaningless; see mean_diff."))
        else:
            parts.append(note(f"ROI tests ({dv.ROI_DIR}/{tpath.name}): {NOT_COMPUTED}."))
        return Section(self.sid("roi"), self.title("Regions of interest"), "\n".join(parts), subs)

    # -- release (contrast "release": lp-ntPET on every whole scan)
    def scan_maps_by_condition(self, param: str) -> dict[str, list[tuple[str, Path]]]:
        """Per condition (session label), the (subject, path) of every scan's map of ``param``."""
        out: dict[str, list[tuple[str, Path]]] = {}
        for path in self.scan_maps(param):
            ent = dict(entity_labels(path.name))
            if "sub" in ent and "ses" in ent and "desc" not in ent:
                out.setdefault(ent["ses"], []).append((ent["sub"], path))
        return out

    def planted_regions(self, available: list[str]) -> tuple[list[str], str]:
        """Regions for the BP(t) figure: the atlas look-up's ``effect`` = 1 rows (a simulated study's planted
        regions), else the regions significant in the ROI tests, else the 5 of largest mean release."""
        lut = self.study.get("atlas_labels")
        if isinstance(lut, str) and Path(lut).is_file():
            header, rows = read_tsv(Path(lut))
            if "effect" in header and "name" in header:
                je, jn = header.index("effect"), header.index("name")
                names = [str(r[jn]) for r in rows if r[je] in (1, 1.0, "1")]
                names = [n for n in names if n in available]
                if names:
                    return names, "the planted regions (atlas look-up column effect = 1)"
        sig = [str(r.get("region")) for r in self.sig_rois if str(r.get("region")) in available]
        if sig:
            return sig, f"the regions with {self.roi_p_name} < {ALPHA} in the ROI tests"
        return available[:5], "the regions of largest mean release"

    def release(self) -> Section:
        import nibabel as nib  # noqa: PLC0415

        parts: list[str] = []
        subs: list[tuple[str, str]] = []
        pair = self.condition_pair()
        window = (self.study.get("model_options") or {}).get("challenge_window")
        window = window if isinstance(window, list) and len(window) == 2 else None
        parts.append("<p>lp-ntPET (Normandin et al. 2012) fitted to every whole scan: binding falls while the "
                     "released neurotransmitter occupies receptors, <i>BP(t) = k2 / (k2a + γ h(t)) − 1</i>, with "
                     "<i>h</i> rising from the onset t<sub>D</sub> to the peak t<sub>P</sub>. "
                     "<code>release</code> = 1 − BP(t<sub>P</sub>)/BP<sub>0</sub>, the peak fractional occupancy; "
                     "the group test is on the paired differences of the release maps"
                     + (f" ({esc(pair[0])} − {esc(pair[1])})" if pair else "")
                     + (f"; challenge window {fmt_value(window[0])}–{fmt_value(window[1])} min" if window else "")
                     + ".</p>")
        # maps: mean over subjects per condition
        subs.append((self.sid("release-maps"), "Release and onset maps"))
        parts.append(f'<h3 id="{self.sid("release-maps")}">Release and onset maps (mean over subjects)</h3>')
        for param, label, unit, cmap in (("release", "release", "fraction", "magma"),
                                         ("t_d", "onset t_D", "min", "viridis")):
            by_cond = self.scan_maps_by_condition(param)
            if not by_cond:
                parts.append(note(f"{label} maps (meas-{param}): {NOT_COMPUTED}."))
                continue
            conds = self.conditions(list(by_cond))
            rows = []
            for cond in conds:
                acc, cnt, n = None, None, 0
                for _, path in by_cond[cond]:
                    v = np.asarray(nib.load(path).dataobj, dtype=np.float64)
                    acc = np.nan_to_num(v) if acc is None else acc + np.nan_to_num(v)
                    cnt = np.isfinite(v).astype(float) if cnt is None else cnt + np.isfinite(v)
                    n += 1
                with np.errstate(invalid="ignore", divide="ignore"):
                    mean = np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan)
                rows.append((f"{cond} (n={n})", mean))
            vals = np.concatenate([r[1][np.isfinite(r[1])] for r in rows])
            lo, hi = (np.percentile(vals, [2, 98]) if vals.size else (0.0, 1.0))
            if param == "release":  # a fraction of the receptors: outlying voxel estimates are not shown apart
                lo, hi = max(min(float(lo), 0.0), RELEASE_DISPLAY[0]), min(float(hi), RELEASE_DISPLAY[1])
            hi = float(hi) if hi > lo else float(lo) + 1e-6
            parts.append(figure(figures.map_slices(rows, f"{label}: mean over subjects", f"{label} ({unit})",
                                                   float(lo), hi, cmap=cmap),
                                f"Axial slices of the mean {label} map per condition (colour range: 2nd-98th "
                                f"percentile" + (f", including 0, within {RELEASE_DISPLAY[0]:g} to "
                                                 f"{RELEASE_DISPLAY[1]:g}" if param == "release" else "")
                                + "); voxel-level estimates are noisy, compare conditions, not single voxels."))
        # regional release (roi_values quantity = release)
        if self.roi_exists("values"):
            header, rows_t = self.roi_table("values")
            col = {h: i for i, h in enumerate(header)}
            if {"quantity", "subject", "condition", "region", "value"} <= set(col):
                values: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
                seen: list[str] = []
                for r in rows_t:
                    if str(r[col["quantity"]]) != "release":
                        continue
                    cond = str(r[col["condition"]])
                    if cond not in seen:
                        seen.append(cond)
                    v = r[col["value"]]
                    values.setdefault((str(r[col["region"]]), ""), {}).setdefault(str(r[col["subject"]]), {})[
                        cond] = float(v) if isinstance(v, (int, float)) else float("nan")
                if values:
                    subs.append((self.sid("release-roi"), "Regional release"))
                    parts.append(f'<h3 id="{self.sid("release-roi")}">Regional release by condition (paired)</h3>')
                    parts.append(figure(figures.roi_paired(values, self.conditions(seen), ylabel="release"),
                                        "Mean release (fraction of receptors) per region and condition; grey lines "
                                        "join each subject's values, black diamonds are condition means."))
        # BP(t) of the planted regions, from the per-scan QC records (release_curves)
        curves: dict[str, dict[str, list[list[float]]]] = {}
        t_min: list[float] | None = None
        examples: dict[str, dict[str, Any]] = {}
        for qpath in self.qc_records():
            qc = self.read_qc(qpath)[0]
            if qc is None:
                continue
            rc = qc.get("release_curves")
            if not isinstance(rc, dict):
                continue
            cond = str(qc.get("session"))
            examples.setdefault(cond, qc)
            t_min = t_min or rc.get("t_min")
            for region, d in (rc.get("regions") or {}).items():
                curves.setdefault(region, {}).setdefault(cond, []).append(d.get("bp_t") or [])
        subs.append((self.sid("release-bpt"), "BP(t)"))
        parts.append(f'<h3 id="{self.sid("release-bpt")}">BP(t) of the planted regions</h3>')
        if curves and t_min:
            chosen, why = self.planted_regions(list(curves))
            data = {}
            for region in chosen:
                data[region] = {}
                for cond, ys in curves[region].items():
                    arr = np.array([y for y in ys if len(y) == len(t_min)], dtype=float)
                    if arr.size:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore", RuntimeWarning)
                            data[region][cond] = {"mean": np.nanmean(arr, axis=0).tolist(), "subjects": arr.tolist()}
            conds = self.conditions(list({c for d in data.values() for c in d}))
            parts.append(figure(figures.bp_curves(data, t_min, conds, window),
                                f"BP(t) = k2/(k2a + γ h(t)) − 1 from the fitted k2, k2a, γ, t_D, t_P, α, averaged "
                                f"over each region's voxels (status ok or grid_edge) per scan; thin lines: subjects, "
                                f"thick: mean per condition; shaded: the challenge window. Regions: {why}."))
        else:
            parts.append(note(f"BP(t) curves (release_curves in the per-scan QC records): {NOT_COMPUTED}."))
        if examples:
            subs.append((self.sid("release-tacs"), "Voxel fits"))
            parts.append(f'<h3 id="{self.sid("release-tacs")}">Voxel TACs with and without the release term</h3>')
            for cond in self.conditions(list(examples)):
                qc = examples[cond]
                name = f"sub-{qc.get('subject')} ses-{qc.get('session')}"
                unit = self.activity_unit()
                if unit and not qc.get("activity_unit"):
                    qc["activity_unit"] = unit
                hists = qc.get("histograms") or {}
                qc = {**qc, "histograms": {k: hists[k] for k in ("release", "t_d") if k in hists}}
                parts.append(figure(figures.scan_qc(qc, max_hists=2),
                                    f"{name}: example voxels ranked by the release F statistic (10th-99th "
                                    "percentile); solid: the lp-ntPET fit, dashed: the same fit without the release "
                                    "term (γ = 0)."))
        return Section(self.sid("release"), self.title("Release (lp-ntPET)"), "\n".join(parts), subs)

    # -- per-scan QC
    def qc(self) -> Section:
        paths = self.qc_records()
        if not paths:
            return Section("qc", "Per-scan QC", self.unlisted(f"Per-scan QC (*{dv.QC_SUFFIX})"))
        records: list[tuple[str, dict[str, Any] | None, str]] = []
        for p in paths:
            name = p.name[: -len(dv.QC_SUFFIX)]
            qc, err = self.read_qc(p)
            records.append((name, qc, err))
            if qc is None:
                self.problems.append(f"{p.name}: {err}")
        statuses: list[str] = []
        for _, qc, _ in records:
            for k in (qc or {}).get("status_counts") or {}:
                if k not in statuses:
                    statuses.append(k)
        statuses = (["ok"] if "ok" in statuses else []) + [s for s in statuses if s != "ok"]
        header = ["#", "scan", "model", "voxels", *statuses, "flagged %", "fit (s)", "backend"]
        rows = []
        hl = []
        for i, (name, qc, err) in enumerate(records, start=1):
            if qc is None:
                rows.append([i, name, f"unreadable: {err}", *([None] * (len(header) - 3))])
                hl.append(True)
                continue
            sc = qc.get("status_counts") or {}
            total = qc.get("n_voxels") or sum(int(v) for v in sc.values()) or None
            bad = sum(int(v) for k, v in sc.items() if k != "ok")
            frac = 100.0 * bad / total if total else float("nan")
            rows.append([i, name, qc.get("model"), total, *[int(sc.get(s, 0)) for s in statuses], round(frac, 2),
                         qc.get("fit_seconds"), qc.get("backend")])
            hl.append(bool(total) and frac > 5.0)
        parts = [f"<p>{len(records)} scans. Status counts are numbers of voxels; every status other than "
                 f"<code>ok</code> is flagged (parameters NaN or clipped). Rows with more than 5 % flagged voxels "
                 f"are highlighted.</p>", table(header, rows, highlight=hl)]
        unit = self.activity_unit()
        for _, qc, _ in records:
            if qc is not None and unit and not qc.get("activity_unit"):
                qc["activity_unit"] = unit
        good = [(name, qc) for name, qc, _ in records if qc is not None]
        if good:
            params = [k for _, qc in good for k in (qc.get("histograms") or {})]
            param = "bp_nd" if "bp_nd" in params else (params[0] if params else None)
            parts.append(figure(figures.qc_overview(good, param),
                                "All scans at a glance (colours follow the table order): reference TACs, "
                                f"{param or 'parameter'} distributions of fitted voxels, and flagged voxels per scan "
                                "(red: more than 5 %)."))
        open_all = len(records) <= 4
        pngs = iter(figures.scan_qc_figures([qc for _, qc in good]))
        for name, qc, err in records:
            if qc is None:
                parts.append(details(f"{name} (unreadable)", note(err, "warn")))
                continue
            body = [figure(next(pngs), f"{name}: reference TAC, example voxels and parameter histograms. "
                           f"Reference: {qc.get('reference_desc') or 'not described'}.")]
            ex = qc.get("example_voxels") or []
            if ex:
                ex_rows = [[v.get("index"), str(v.get("ijk")), v.get("label"),
                            ", ".join(f"{k}={fmt_value(x, 3)}" for k, x in (v.get("params") or {}).items())]
                           for v in ex]
                body.append(table(["index", "ijk", "label", "parameters"], ex_rows))
            sc = qc.get("status_counts") or {}
            bad = sum(int(v) for k, v in sc.items() if k != "ok")
            total = qc.get("n_voxels") or sum(int(v) for v in sc.values())
            badge = f"{bad} flagged ({100.0 * bad / total:.2g} %)" if bad and total else "all ok"
            parts.append(details(f"{name} — {badge}", "".join(body), open_=open_all))
        return Section("qc", "Per-scan QC", "\n".join(parts))

    # -- key results
    def summary(self) -> Section:
        """Key results: FWE-significant voxels per method, significant clusters, significant ROI tests."""
        parts = []
        sentences = self.effect_sentences()
        if sentences:
            parts.append('<div class="effect">' + "".join(f"<p><b>{esc(t)}</b></p>" if i == 0 else f"<p>{esc(t)}</p>"
                                                          for i, t in enumerate(sentences)) + "</div>")
        if self.fwe_counts:
            cards = []
            for m, n, c in self.fwe_counts:
                key = next((k for k, v in FWE_LABELS.items() if v == m), m)
                what = "cluster" if key in CLUSTER_P_COLUMNS.values() else "connected set"
                cards.append((f"FWE p≤{ALPHA}, {m}", f"{n} voxels in {c} {what}{'s' if c != 1 else ''}"
                              if n else "none"))
            parts.append(_cards(cards))
        else:
            parts.append(note(f"Voxelwise inference: {NOT_COMPUTED}."))
        if self.sig_clusters:
            keys = ["cluster_id", "sign", "size_voxels", "size_mm3", "peak_t", "peak_x", "peak_y", "peak_z",
                    "p_fwe_extent", "p_fwe_mass", "region"]
            first = self.sig_clusters[0]
            cols = [k for k in keys if k in first] or list(first)
            by_rows = [self.significant_by(c.get("cluster_id")) for c in self.sig_clusters]
            n_ext = sum("extent" in b for b in by_rows)
            n_mass = sum("mass" in b for b in by_rows)
            split = f": {n_ext} by cluster extent, {n_mass} by cluster mass" \
                if any(k in cols for k in CLUSTER_P_COLUMNS) else ""
            parts.append(f"<p><b>{len(self.sig_clusters)} FWE-significant cluster(s)</b> (p ≤ {ALPHA} by cluster "
                         f"extent or mass){esc(split)}:</p>")
            show = self.sig_clusters[:20]
            # reader's order: which cluster, where, how it is significant, then sizes and p values
            peak = all(k in cols for k in ("peak_x", "peak_y", "peak_z"))
            lead = [k for k in ("cluster_id", "region", "sign") if k in cols]
            rest = [k for k in cols if k not in lead and not (peak and k in ("peak_x", "peak_y", "peak_z"))]
            hdr = [*lead, *([f"FWE p ≤ {ALPHA} by"] if split else []), *(["peak x, y, z (mm)"] if peak else []),
                   *[COLUMN_UNITS.get(k, k) for k in rest]]
            body = [[c.get(k) for k in lead] + ([by] if split else [])
                    + ([", ".join(fmt_value(c.get(k), 3) for k in ("peak_x", "peak_y", "peak_z"))] if peak else [])
                    + [c.get(k) for k in rest] for c, by in zip(show, by_rows, strict=False)]
            parts.append(table(hdr, body))
        elif self.fwe_counts:
            parts.append(note(f"No cluster in the cluster table reaches FWE p ≤ {ALPHA}."))
        if self.sig_rois:
            pair = self.condition_pair()
            means = [f"mean_{pair[0]}", f"mean_{pair[1]}"] if pair else []
            cols = [k for k in ("region", "n", *means, "mean_diff", "pct_change", "t", "p", self.roi_p_name)
                    if k in self.sig_rois[0]]
            cols = list(dict.fromkeys(cols))
            parts.append(f"<p><b>{len(self.sig_rois)} region(s) with {esc(self.roi_p_name)} &lt; {ALPHA}</b> "
                         f"in the paired ROI tests:</p>")
            parts.append(table(cols, [[r.get(k) for k in cols] for r in self.sig_rois]))
        elif self.roi_p_name:
            parts.append(note(f"No region reaches {self.roi_p_name} < {ALPHA} in the paired ROI tests."))
        return Section(self.sid("summary"), self.title("Key results"), "\n".join(parts))

    def effect_sentences(self) -> list[str]:
        """The direction and size of the effect in words, from the significant ROI tests and FWE maps."""
        pair = self.condition_pair()
        if pair is None:
            return []
        a, b = pair
        quantity = self.study.get("contrast")
        what = "BPND" if quantity in (None, "bp_nd") else (
            "the peak release (lp-ntPET: fractional receptor occupancy by the released neurotransmitter)"
            if quantity == "release" else "the challenge-induced BPND change (baseline − challenge)")
        out = []
        if self.sig_rois:
            for sign, word in ((-1, "lower"), (1, "higher")):
                rows = [r for r in self.sig_rois if is_number(r.get("mean_diff")) and r["mean_diff"] * sign > 0]
                if not rows:
                    continue
                names = [str(r.get("region", "?")).replace("_", " ") for r in rows]
                pcts = [abs(r["pct_change"]) for r in rows if is_number(r.get("pct_change"))
                        and math.isfinite(r["pct_change"])]
                diffs = [abs(r["mean_diff"]) for r in rows]
                units = "fraction of receptors" if quantity == "release" else "BPND units"
                size = f"by {_range(pcts)} %" if pcts else f"by {_range(diffs, 2)} ({units})"
                n = max((int(r["n"]) for r in rows if is_number(r.get("n"))), default=None)
                regions = ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1]
                out.append(f"{what[0].upper() + what[1:]} {word} under {a} than under {b} {size} in {regions} "
                           f"(paired t-tests{f', n = {n}' if n else ''}, {self.roi_p_name} < {ALPHA}).")
        elif self.roi_p_name:
            out.append(f"No region differs in {what} between {a} and {b} at {self.roi_p_name} < {ALPHA}.")
        for m, (pos, neg) in self.fwe_signs.items():
            if pos + neg == 0:
                continue
            if neg and not pos:
                dirn = f"all with {a} < {b} (t < 0)"
            elif pos and not neg:
                dirn = f"all with {a} > {b} (t > 0)"
            else:
                dirn = f"{neg} with {a} < {b}, {pos} with {a} > {b}"
            out.append(f"Voxelwise ({m}, FWE p ≤ {ALPHA}): {pos + neg} voxels, {dirn}.")
            break  # the first method (TFCE when computed) says it; the cards give the others
        return out

    # -- null distributions
    def nulls(self) -> Section:
        st = self.stats
        if st.missing is not None or not st.has_null:
            text = st.missing if st.missing not in (None, NOT_COMPUTED) else \
                f"Null distributions ({dv.STATS_NULL}): {NOT_COMPUTED}."
            return Section(self.sid("nulls"), self.title("Null distributions"), note(text))
        arrays = st.null
        two_sided = st.settings.get("two_sided")
        rec = st.decisions
        nrec = (rec or {}).get("nulls") or {}
        parts = [f"<p>Each permutation contributes the maximum of the statistic over the brain; the FWE critical "
                 f"value at {ALPHA} is the 95th percentile of these maxima, and an observed statistic above it is "
                 f"significant. p<sub>FWE</sub> counts the permutations (the identity included) whose maximum "
                 f"reaches the observed value (the identity's, the first permutation). Values from the "
                 f"statistics' decisions ({dv.STATS_SETTINGS}).</p>", f"<h3>{esc(dv.STATS_NULL)}</h3>"]
        keys = [k for k in dec.NULLS if k in arrays and np.asarray(arrays[k]).size > 1]
        if not keys:
            parts.append(note(f"No null distribution found in {dv.STATS_NULL} (arrays: "
                              f"{', '.join(arrays) or 'none'})."))
            return Section(self.sid("nulls"), self.title("Null distributions"), "\n".join(parts))
        if rec is None:
            parts.append(note(not_recorded(f"Critical values and observed maxima ({dv.STATS_SETTINGS} key "
                                           f"{dec.DECISIONS_KEY!r})", f"{RERUN_RUN} or voxelkit stats"), "warn"))
        items = []
        rows: list[list[object]] = []
        for k in keys:
            r = nrec.get(k) if isinstance(nrec.get(k), dict) else {}
            null = np.asarray(arrays[k], np.float64).ravel()
            crit, obs, p = r.get("fwe_critical_value"), r.get("observed_max"), r.get("p_fwe_observed_max")
            items.append((k, null, obs, crit))
            rows.append([k, int(np.isfinite(null).sum()), crit if crit is not None else "not recorded",
                         obs if obs is not None else "not recorded", p if p is not None else "not recorded"])
        parts.append(figure(figures.null_histograms(items, ALPHA),
                            "Permutation null distributions of the maximum statistics (grey), the FWE 0.05 "
                            "critical value (dashed) and the observed maximum (red)."
                            + (" Two-sided: maxima of |statistic|." if two_sided else "")))
        parts.append(table(["null", "permutations", f"critical value (FWE {ALPHA})", "observed maximum",
                            "p (FWE)"], rows, highlight=[isinstance(r[4], float) and r[4] <= ALPHA for r in rows]))
        return Section(self.sid("nulls"), self.title("Null distributions"), "\n".join(parts))


def _range(vals: list[float], digits: int = 0) -> str:
    """``[7.2, 8.1]`` -> ``7-8``; one value (or equal rounded ends) -> ``7``; ``digits`` decimals."""
    lo, hi = min(vals), max(vals)
    if digits == 0 and hi < 10:
        digits = 1
    a, b = f"{lo:.{digits}f}", f"{hi:.{digits}f}"
    return a if a == b else f"{a}-{b}"


def write_report(out_dir: Path, path: Path | None = None, *, study: Any = None,
                 provenance: Mapping[str, Any] | None = None, stats: Any = None,
                 written: Iterable[str | Path] | None = None, bp_nd: Iterable[np.ndarray] | None = None,
                 contrasts: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Write the self-contained HTML report of the pipeline outputs in ``out_dir``.

    Parameters
    ----------
    out_dir : a pipeline output directory (see :mod:`voxelkit.io.derivatives`).
    path : where to write (default ``<out_dir>/report.html``).
    study, provenance, stats, written, bp_nd : what ``voxelkit run`` holds in memory (each optional; what is not
        given is read from ``out_dir``): the :class:`~voxelkit.pipeline.config.StudyConfig` (or its ``to_dict()``),
        the provenance record, the group :class:`~voxelkit.stats.PermutationResult`, the paths (relative to
        ``out_dir``) the run wrote (its :class:`~voxelkit.io.derivatives.OutputFolder`'s ``written``; added to the
        folder's manifest), and the per-scan BPND maps (3-D arrays on the statistics' grid) for the background.
    contrasts : with named contrasts (study ``contrasts``), what ``voxelkit run`` holds per contrast
        (``StudyResult.contrasts``: label -> ``{"stats": PermutationResult, "roi": RoiTables, ...}``; a label not
        given is read from ``group/stats-<label>/`` and ``roi/desc-<label>_roi_*.tsv``).  The report then has the
        design and per-scan QC once and, per contrast in the order named, its key results, maps, clusters, ROI
        tables and null distributions, headed by the contrast ("anakinra − baseline").  A statistics folder of a
        contrast the study does not name is not shown.

    Returns
    -------
    The path written.  Missing pieces are shown as "not computed", pieces an older voxelkit did not record as
    "not recorded"; nothing in ``out_dir`` is modified except the report itself.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise InputError(f"{out}: no such output directory")
    dest = Path(path) if path is not None else dv.report_path(out)
    rep = _Report(out, study=study, provenance=provenance, stats=stats, written=written, bp_nd=bp_nd,
                  contrasts=contrasts)
    t0 = time.perf_counter()
    if rep.views:
        sections = _contrast_sections(rep)
    else:
        sections = [rep.guarded("Design and settings", rep.design)]
        sections += [rep.guarded(n, f) for n, f in (("Statistical maps", rep.maps), ("Clusters", rep.clusters),
                                                     ("Regions of interest", rep.rois), ("Per-scan QC", rep.qc),
                                                     ("Null distributions", rep.nulls))]
        if rep.study.get("contrast") == "release":
            sections.insert(3, rep.guarded("Release (lp-ntPET)", rep.release))
        sections.insert(0, rep.guarded("Key results", rep.summary))
    if rep.problems:
        sections.append(Section("problems", "Problems", "<ul>" + "".join(f"<li>{esc(m)}</li>"
                                                                          for m in rep.problems) + "</ul>"))
    name = _dataset_name(rep.study)
    if not name and isinstance(rep.study.get("bids_dir"), str):
        name = Path(rep.study["bids_dir"]).name
    title = f"Study report: {name}" if isinstance(name, str) and name else "Study report"
    contrast = _contrast_text(rep.study, [v.heading for v in rep.views])
    res = out.resolve()
    subtitle = f"{res.parent.parent.name}/derivatives/{res.name}" if res.parent.name == "derivatives" else res.name
    if contrast:
        subtitle += f" · contrast: {contrast}"
    version = rep.prov.get("voxelkit") or _voxelkit_version()
    footer = (f"Generated by voxelkit {esc(version)} from <code>{esc(out.name)}</code>. Self-contained: images are "
              f"embedded, no network access is needed to view this file.")
    text = page(title, subtitle, sections, footer)
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(dest, text)
    log.info("report written to %s in %.1f s (%s)", dest, time.perf_counter() - t0,
             ", ".join(f"{k} {v:.1f}s" for k, v in rep.timings.items()))
    return dest


def _contrast_sections(rep: _Report) -> list[Section]:
    """The sections of a report with named contrasts: key results (one block per contrast), design and settings,
    per-scan QC, then per contrast in the order named its maps, clusters, (release), ROI tables and nulls."""
    sections = [rep.guarded("Design and settings", rep.design), rep.guarded("Per-scan QC", rep.qc)]
    for v in rep.views:
        builders = [("Statistical maps", v.maps), ("Clusters", v.clusters), ("Regions of interest", v.rois),
                    ("Null distributions", v.nulls)]
        if rep.study.get("contrast") == "release":
            builders.insert(2, ("Release (lp-ntPET)", v.release))
        sections += [v.guarded(v.title(n), f) for n, f in builders]
    blocks, subs = [], []
    for v in rep.views:  # after the sections above: they fill in what the key results say
        s = v.guarded(v.title("Key results"), v.summary)
        subs.append((v.sid("summary"), v.heading))
        blocks.append(f'<h3 id="{esc(v.sid("summary"))}">{esc(v.heading)}</h3>\n{s.body}')
    sections.insert(0, Section("summary", "Key results", "\n".join(blocks), subs))
    return sections


def _dataset_name(study: dict[str, Any]) -> str | None:
    """``Name`` of the BIDS dataset's dataset_description.json (None when absent or unreadable)."""
    bids = study.get("bids_dir")
    if not isinstance(bids, str):
        return None
    try:
        name = json.loads((Path(bids) / dv.BIDS_DESCRIPTION).read_text(encoding="utf-8")).get("Name")
    except (OSError, ValueError, AttributeError):
        return None
    return name.strip() if isinstance(name, str) and name.strip() else None


def _contrast_text(study: dict[str, Any], named: list[str] | None = None) -> str:
    """E.g. "anakinra − placebo (bp_nd)" from the study settings ('' when unknown); ``named``: the headings of
    the named contrasts ("anakinra − placebo, anakinra − baseline (bp_nd)")."""
    conds = study.get("conditions")
    contrast = study.get("contrast")
    if named:
        text = ", ".join(named)
        return f"{text} ({contrast})" if isinstance(contrast, str) and contrast else text
    if isinstance(conds, list) and len(conds) == 2:
        text = f"{conds[0]} − {conds[1]}"
        return f"{text} ({contrast})" if isinstance(contrast, str) and contrast else text
    return str(contrast) if contrast else ""


def _voxelkit_version() -> str:
    try:
        from importlib.metadata import version  # noqa: PLC0415

        return version("voxelkit")
    except Exception:  # noqa: BLE001
        return "unknown"
