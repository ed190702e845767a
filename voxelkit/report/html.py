"""Small HTML building blocks for the study report: escaping, tables, figures, the page template.

Everything is plain HTML + one inline stylesheet: no scripts, no external resources.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html import escape

NOT_COMPUTED = "not computed"
#: A value deliberately not shown (e.g. a percentage of a baseline about zero); numeric columns keep it.
NOT_AVAILABLE = "n/a"


def esc(x: object) -> str:
    """HTML-escape ``str(x)``."""
    return escape(str(x), quote=True)


def fmt_value(x: object, digits: int = 4) -> str:
    """Readable text for a table cell: floats with ``digits`` significant digits, NaN/None as an en dash."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "–"
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
            return f"{x:.{max(digits - 1, 1)}e}"
        return f"{x:.{digits}g}"
    return str(x)


def parse_cell(s: str) -> object:
    """A TSV cell as int, float or str (``n/a`` and ``nan`` become NaN, an empty cell stays empty)."""
    t = s.strip()
    if t == "":
        return ""
    if t in ("n/a", "NA", "nan", "NaN", "None", "null"):
        return float("nan")
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


def png_data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img(png: bytes, alt: str, cls: str = "") -> str:
    """An ``<img>`` with the PNG embedded."""
    c = f' class="{esc(cls)}"' if cls else ""
    return f'<img{c} src="{png_data_uri(png)}" alt="{esc(alt)}">'


def figure(png: bytes | None, caption: str, alt: str | None = None, cls: str = "") -> str:
    """A ``<figure>`` with an embedded image and a caption (a "not computed" note when ``png`` is None)."""
    if png is None:
        return note(f"{caption}: {NOT_COMPUTED}.")
    return f'<figure class="{esc(cls)}">{img(png, alt or caption)}<figcaption>{esc(caption)}</figcaption></figure>'


def note(text: str, kind: str = "muted") -> str:
    """A one-paragraph note (``kind``: muted, warn)."""
    return f'<p class="note {esc(kind)}">{esc(text)}</p>'


def is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def table(header: Sequence[str], rows: Iterable[Sequence[object]], *, highlight: Sequence[bool] | None = None,
          cls: str = "", digits: int = 4) -> str:
    """A ``<table>`` (numeric cells right-aligned; rows with ``highlight[i]`` True are emphasised)."""
    rows = [list(r) for r in rows]
    ncol = max([len(header)] + [len(r) for r in rows])
    # a column is numeric (right-aligned) only when every filled cell is a number (e.g. "1", "1a" ids are text)
    numeric = [all(is_number(r[j]) for r in rows if j < len(r) and r[j] not in ("", None, NOT_AVAILABLE))
               for j in range(ncol)]
    head = "".join(f'<th class="num">{esc(h)}</th>' if numeric[j] and rows else f"<th>{esc(h)}</th>"
                   for j, h in enumerate(header))
    body = []
    for i, row in enumerate(rows):
        cells = "".join(
            f'<td class="num">{esc(fmt_value(v, digits))}</td>' if numeric[j] and (is_number(v) or v == NOT_AVAILABLE)
            else f"<td>{esc(fmt_value(v))}</td>"
            for j, v in enumerate(row))
        hl = ' class="hl"' if highlight is not None and highlight[i] else ""
        body.append(f"<tr{hl}>{cells}</tr>")
    c = f" {esc(cls)}" if cls else ""
    return (f'<div class="tablewrap"><table class="data{c}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def kv_table(pairs: Iterable[tuple[str, object]]) -> str:
    """A two-column key/value table (values already HTML when they are :class:`Raw`)."""
    rows = []
    for k, v in pairs:
        val = v.html if isinstance(v, Raw) else esc(fmt_value(v))
        rows.append(f"<tr><th>{esc(k)}</th><td>{val}</td></tr>")
    return f'<table class="kv"><tbody>{"".join(rows)}</tbody></table>'


@dataclass(frozen=True)
class Raw:
    """Trusted HTML (already escaped)."""

    html: str


def details(summary: str, body: str, open_: bool = False) -> str:
    """A collapsible ``<details>`` section."""
    o = " open" if open_ else ""
    return f"<details{o}><summary>{esc(summary)}</summary><div class=\"details-body\">{body}</div></details>"


@dataclass
class Section:
    """One report section: an anchor id, a title (in the table of contents) and HTML body."""

    id: str
    title: str
    body: str
    subsections: list[tuple[str, str]] = field(default_factory=list)  # (id, title) for the TOC


CSS = """
:root { --fg:#1d2430; --muted:#5b6675; --line:#dde2e8; --bg:#ffffff; --panel:#f6f8fa; --accent:#1f5fa8;
        --hl:#fff4d6; --warn:#9a3b00; }
* { box-sizing: border-box; }
html { scroll-behavior: smooth; }
body { margin:0; color:var(--fg); background:var(--bg);
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans",
             "Liberation Sans", sans-serif; }
.layout { display:grid; grid-template-columns: 230px minmax(0, 1fr); min-height:100vh; }
nav.toc { position:sticky; top:0; align-self:start; height:100vh; overflow-y:auto; padding:20px 14px;
          background:var(--panel); border-right:1px solid var(--line); font-size:13.5px; }
nav.toc .brand { font-weight:700; font-size:15px; margin-bottom:2px; }
nav.toc .sub { color:var(--muted); font-size:12px; margin-bottom:14px; overflow-wrap:anywhere; }
nav.toc ol { list-style:none; margin:0; padding:0; }
nav.toc li { margin:2px 0; }
nav.toc li li a { padding-left:18px; font-size:12.5px; color:var(--muted); }
nav.toc a { display:block; padding:3px 8px; border-radius:4px; color:var(--fg); text-decoration:none; }
nav.toc a:hover { background:#e6ebf1; }
main { padding:28px 40px 80px; max-width:1180px; }
h1 { font-size:26px; margin:0 0 4px; }
h2 { font-size:20px; margin:40px 0 12px; padding-bottom:6px; border-bottom:2px solid var(--line); }
h3 { font-size:16px; margin:26px 0 8px; }
h2, h3 { scroll-margin-top:12px; }
p.lead { color:var(--muted); margin:0 0 18px; }
p.note { color:var(--muted); font-style:italic; }
.effect { border-left:4px solid var(--accent, #1f5fa8); background:var(--panel); padding:8px 14px; margin:10px 0; }
.effect p { margin:4px 0; }
p.note.warn { color:var(--warn); font-style:normal; }
.cards { display:flex; flex-wrap:wrap; gap:12px; margin:12px 0 6px; }
.card { background:var(--panel); border:1px solid var(--line); border-radius:8px; padding:10px 14px;
        min-width:150px; }
.card .v { font-size:20px; font-weight:650; }
.card .k { color:var(--muted); font-size:12.5px; }
.tablewrap { overflow:auto; max-height:520px; border:1px solid var(--line); border-radius:6px; margin:8px 0 14px; }
table { border-collapse:collapse; font-size:13.5px; }
table.data { width:100%; }
table.data th.num { text-align:right; }
table.data th { position:sticky; top:0; background:#eef2f6; text-align:left; font-weight:600;
                padding:6px 10px; border-bottom:1px solid var(--line); white-space:nowrap; }
table.data td { padding:4px 10px; border-bottom:1px solid #eef0f3; }
table.data tbody tr:nth-child(even) td { background:#fafbfc; }
table.data tr.hl td { background:var(--hl) !important; }
td.num { text-align:right; font-variant-numeric:tabular-nums;
         font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "Liberation Mono", monospace;
         font-size:12.5px; }
table.kv { margin:6px 0 14px; }
table.kv table.kv { margin:0; }
table.kv th { text-align:left; font-weight:600; color:var(--muted); padding:3px 18px 3px 0; vertical-align:top;
              white-space:nowrap; }
table.kv td { padding:3px 0; }
code, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "Liberation Mono", monospace;
              font-size:12.5px; }
figure { margin:10px 0 18px; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:6px; background:#fff; }
figcaption { color:var(--muted); font-size:13px; margin-top:4px; }
.grid2 { display:grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap:10px 20px; }
details { border:1px solid var(--line); border-radius:6px; margin:8px 0; background:#fff; }
details > summary { cursor:pointer; padding:7px 12px; font-weight:600; background:var(--panel);
                    border-radius:6px; }
details[open] > summary { border-bottom:1px solid var(--line); border-radius:6px 6px 0 0; }
.details-body { padding:8px 12px; }
.badge { display:inline-block; padding:0 7px; border-radius:10px; font-size:12px; font-weight:600;
         background:#e6ebf1; color:var(--fg); margin-left:6px; }
.badge.bad { background:#fde2d6; color:var(--warn); }
.badge.good { background:#dff3e4; color:#1b6b33; }
footer { margin-top:50px; color:var(--muted); font-size:12.5px; border-top:1px solid var(--line); padding-top:10px; }
@media (max-width: 900px) { .layout { grid-template-columns: 1fr; } nav.toc { position:static; height:auto; } }
@media print { nav.toc { display:none; } .layout { display:block; } details { break-inside:avoid; } }
"""


def page(title: str, subtitle: str, sections: Sequence[Section], footer: str) -> str:
    """The whole self-contained HTML document."""
    toc = []
    for s in sections:
        sub = ""
        if s.subsections:
            sub = "<ol>" + "".join(f'<li><a href="#{esc(i)}">{esc(t)}</a></li>' for i, t in s.subsections) + "</ol>"
        toc.append(f'<li><a href="#{esc(s.id)}">{esc(s.title)}</a>{sub}</li>')
    body = "\n".join(f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>\n{s.body}\n</section>' for s in sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="voxelkit">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head>
<body>
<div class="layout">
<nav class="toc" aria-label="Contents">
<div class="brand">voxelkit report</div>
<div class="sub">{esc(subtitle)}</div>
<ol>{"".join(toc)}</ol>
</nav>
<main>
<h1>{esc(title)}</h1>
<p class="lead">{esc(subtitle)}</p>
{body}
<footer>{footer}</footer>
</main>
</div>
</body>
</html>
"""
