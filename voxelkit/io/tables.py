"""Tables: the one TSV reader of voxelkit, and the TSV writer.

Every tab-separated file voxelkit reads (TAC tables, design tables, ``participants.tsv``, ``sessions.tsv``, atlas
look-up tables, the simulator's truth tables, the tables the report shows) goes through :func:`read_table`.  It is
strict, and its errors are one line naming the file (and the line and column):

- a header and (by default) at least one row; blank lines are skipped (``comments=True``: lines starting with
  ``#`` too);
- no duplicate column names, no row whose field count differs from the header's;
- cells are stripped strings; typed access (:meth:`Table.floats`, :meth:`Table.ints`) names the first bad cell;
- :meth:`Table.index_by` refuses a duplicate key (two rows for one participant, one session, one label index).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..frames import FrameTiming
from .images import _one_line, check_input_file

#: Cell values read as "not available" by :meth:`Table.floats` (NaN).
NA_VALUES = ("n/a", "na", "nan", "")


@dataclass
class Table:
    """A TSV file read by :func:`read_table`: header, rows of stripped strings and each row's line number."""

    path: Path
    header: list[str]
    rows: list[list[str]]
    lines: list[int]

    def __len__(self) -> int:
        return len(self.rows)

    def has(self, name: str) -> bool:
        return name in self.header

    def require(self, *names: str, hint: str = "") -> None:
        """Raise :class:`InputError` naming the file and the first missing column."""
        for n in names:
            if n not in self.header:
                raise InputError(f"{self.path}: missing column {n!r}{hint}; columns are {', '.join(self.header)}")

    def column(self, name: str) -> list[str]:
        self.require(name)
        i = self.header.index(name)
        return [r[i] for r in self.rows]

    def columns(self) -> dict[str, list[str]]:
        """{column: values} in header order."""
        return {h: [r[i] for r in self.rows] for i, h in enumerate(self.header)}

    def records(self) -> list[dict[str, str]]:
        """One {column: value} dict per row."""
        return [dict(zip(self.header, r, strict=True)) for r in self.rows]

    def floats(self, name: str, *, na: bool = True) -> np.ndarray:
        """Column ``name`` as float64 (``n/a``, ``nan`` and empty cells are NaN when ``na``); a cell that is not a
        number is an :class:`InputError` naming the line and the column."""
        out = np.empty(len(self.rows))
        for k, (v, line) in enumerate(zip(self.column(name), self.lines, strict=True)):
            if na and v.lower() in NA_VALUES:
                out[k] = np.nan
                continue
            try:
                out[k] = float(v)
            except ValueError:
                raise InputError(f"{self.path}: line {line}, column {name!r}: {v!r} is not a number") from None
        return out

    def ints(self, name: str) -> list[int]:
        """Column ``name`` as integers (``3`` or ``3.0``; anything else names the line and the column)."""
        out = []
        for v, line in zip(self.column(name), self.lines, strict=True):
            try:
                f = float(v)
            except ValueError:
                f = np.nan
            if not np.isfinite(f) or f != int(f):
                raise InputError(f"{self.path}: line {line}, column {name!r}: {v!r} is not an integer")
            out.append(int(f))
        return out

    def index_by(self, name: str, *, strip_prefix: str = "") -> dict[str, dict[str, str]]:
        """{key: row dict} keyed by column ``name`` (``strip_prefix`` removed, e.g. ``sub-``); a key that occurs
        twice is an :class:`InputError` naming both lines."""
        self.require(name)
        out: dict[str, dict[str, str]] = {}
        first: dict[str, int] = {}
        for rec, line in zip(self.records(), self.lines, strict=True):
            key = rec[name].removeprefix(strip_prefix)
            if key in out:
                raise InputError(f"{self.path}: {name} {rec[name]!r} appears twice (lines {first[key]} and {line}); "
                                 "every row needs its own value")
            out[key] = rec
            first[key] = line
        return out


def read_table(path: str | Path, *, what: str = "table", rows_desc: str = "row", min_rows: int = 1,
               require: Sequence[str] = (), comments: bool = False) -> Table:
    """Read a tab-separated table (see the module docstring for the rules).

    ``min_rows``: rows needed after the header (0: a header alone is a valid, empty table).  ``require``: columns
    that must be present.  ``comments``: skip lines whose first cell starts with ``#``."""
    path = check_input_file(path, what)
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh, delimiter="\t")
            for r in reader:
                if not r or not any(c.strip() for c in r):
                    continue
                if comments and r[0].lstrip().startswith("#"):
                    continue
                rows.append(r)
                lines.append(reader.line_num)
    except PermissionError:
        raise InputError(f"{path}: cannot read the {what}: permission denied") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read the {what} ({_one_line(exc)})") from None
    if not rows or len(rows) - 1 < min_rows:
        if min_rows <= 1:
            raise InputError(f"{path}: needs a header and at least one {rows_desc}" if min_rows == 1
                             else f"{path}: needs a header line")
        raise InputError(f"{path}: needs a header and at least {min_rows} {rows_desc}s, got {max(len(rows) - 1, 0)}")
    header = [h.strip() for h in rows[0]]
    seen: set[str] = set()
    dups = sorted({h for h in header if h in seen or seen.add(h)})  # type: ignore[func-returns-value]
    if dups:
        raise InputError(f"{path}: duplicate column name(s) {', '.join(dups)} in the header; "
                         "every column needs its own name")
    body: list[list[str]] = []
    for r, line in zip(rows[1:], lines[1:], strict=True):
        if len(r) != len(header):
            raise InputError(f"{path}: line {line} has {len(r)} fields, header has {len(header)}")
        body.append([c.strip() for c in r])
    table = Table(path, header, body, lines[1:])
    table.require(*require)
    return table


def read_tsv(path: str | Path, rows_desc: str = "row") -> dict[str, list[str]]:
    """A tab-separated table as {column: values (stripped strings)} in header order (:func:`read_table`)."""
    return read_table(path, rows_desc=rows_desc).columns()


def read_rows(path: str | Path, *, what: str = "table", require: Sequence[str] = (),
              min_rows: int = 0) -> list[dict[str, str]]:
    """A tab-separated table as one {column: value} dict per row (:func:`read_table`; a header alone is an empty
    list unless ``min_rows``)."""
    return read_table(path, what=what, require=require, min_rows=min_rows).records()


# ------------------------------------------------------------------------------------------------ TAC tables

@dataclass
class TACTable:
    """Regional time-activity curves: frame timing plus one curve per column (any activity unit)."""

    frames: FrameTiming
    columns: dict[str, np.ndarray]
    source: str = "<table>"

    def column(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise InputError(f"{self.source}: no column {name!r}; columns are {', '.join(self.columns)}")
        return self.columns[name]


def read_tac_table(path: str | Path) -> TACTable:
    """Read a TSV with ``frame_start`` and ``frame_end`` (seconds) and one column per region."""
    table = read_table(path, what="table", rows_desc="frame row")
    table.require("frame_start", "frame_end", hint=" (BIDS-PET derivatives TAC table)")
    # row by row, so that the first bad cell in reading order is the one reported
    for k in range(len(table)):
        for h, v in zip(table.header, table.rows[k], strict=True):
            if v.lower() not in NA_VALUES:
                try:
                    float(v)
                except ValueError:
                    raise InputError(f"{table.path}: line {table.lines[k]}, column {h!r}: {v!r} is not a "
                                     "number") from None
    arrays = {h: table.floats(h) for h in table.header}
    frames = FrameTiming.from_start_end(arrays.pop("frame_start"), arrays.pop("frame_end"), source=str(path))
    frames.check_plausible()
    return TACTable(frames, arrays, str(path))


# ------------------------------------------------------------------------------------------- look-up tables

def read_lookup(path: str | Path) -> dict[int, str]:
    """Atlas look-up table {label index: region name}.

    Either a BIDS ``dseg.tsv``-like table with columns ``index`` and ``name`` (other columns ignored), or
    header-less lines ``index<TAB>name`` / ``index name`` (a first line that is not ``index name``, e.g. a
    header, is skipped; ``#`` lines are comments).  Strict: a later line without an integer index, or an index
    given twice, is an :class:`InputError` naming the file and the line."""
    path = check_input_file(path, "look-up table")
    try:
        text = path.read_text(encoding="utf-8")
    except PermissionError:
        raise InputError(f"{path}: cannot read the look-up table: permission denied") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the look-up table ({_one_line(exc)})") from None
    numbered = [(i, ln) for i, ln in enumerate(text.splitlines(), start=1)
                if ln.strip() and not ln.lstrip().startswith("#")]
    if not numbered:
        raise InputError(f"{path}: no 'index name' lines found")
    first = [c.strip() for c in numbered[0][1].split("\t")]
    out: dict[int, str] = {}
    where: dict[int, int] = {}

    def add(idx: int, name: str, line: int) -> None:
        if idx in out:
            raise InputError(f"{path}: index {idx} appears twice (lines {where[idx]} and {line})")
        out[idx] = name
        where[idx] = line

    if "index" in first and "name" in first:
        table = read_table(path, what="look-up table", comments=True, require=("index", "name"))
        for idx, name, line in zip(table.ints("index"), table.column("name"), table.lines, strict=True):
            add(idx, name, line)
        return out
    for k, (line, ln) in enumerate(numbered):
        parts = ln.split("\t") if "\t" in ln else ln.split(None, 1)
        idx = _as_int(parts[0])
        if idx is None or len(parts) < 2 or not parts[1].strip():
            if k == 0:
                continue  # a header line
            raise InputError(f"{path}: line {line}: expected 'index name' (an integer label and its name), got "
                             f"{ln.strip()!r}")
        add(idx, parts[1].strip(), line)
    if not out:
        raise InputError(f"{path}: no 'index name' lines found")
    return out


def _as_int(v: str) -> int | None:
    try:
        f = float(v)
    except ValueError:
        return None
    return int(f) if np.isfinite(f) and f == int(f) else None


# ------------------------------------------------------------------------------------------------ writing

def write_tsv(rows: Iterable[dict], path: str | Path | None, columns: list[str] | None = None) -> str:
    """Write rows as TSV (``path`` None: return the text only).  Floats: 6 significant digits, NaN as ``n/a``;
    a missing cell is ``n/a``."""
    rows = list(rows)
    if columns is None:
        columns = []
        for r in rows:
            columns.extend(k for k in r if k not in columns)
    lines = ["\t".join(columns)]
    for r in rows:
        lines.append("\t".join(_fmt(r.get(c, "n/a")) for c in columns))
    text = "\n".join(lines) + "\n"
    if path is not None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return text


def _fmt(v: Any) -> str:
    if isinstance(v, float | np.floating):
        return "n/a" if not np.isfinite(v) else f"{float(v):.6g}"
    return str(v)
