"""Figures of the study report, rendered to PNG bytes.

matplotlib and nilearn are imported lazily inside the functions.  Figures are ``matplotlib.figure.Figure``
objects that are never registered with pyplot (no GUI backend is touched, nothing to close, safe in a notebook);
PNGs are written by the Agg renderer at a low DPI to keep the report small and fast.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 80
PALETTE = ("#1f5fa8", "#d1495b", "#2e933c", "#edae49", "#6b4c9a", "#00798c", "#8d6a9f", "#5c5c5c")


def new_figure(width_in: float, height_in: float) -> Figure:
    """A pyplot-free matplotlib figure (Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(width_in, height_in))
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure, dpi: int = DPI, clear: bool = True) -> bytes:
    """Render ``fig`` to PNG bytes (no timestamp or software metadata: deterministic); ``clear`` frees it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    if clear:
        fig.clear()
    return buf.getvalue()


def _style(ax: Axes, nbins: int = 4, x: bool = True) -> None:
    """Light axes: no top/right spines, few ticks (tick objects dominate the drawing time)."""
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    if x:
        ax.xaxis.set_major_locator(MaxNLocator(nbins))
    ax.yaxis.set_major_locator(MaxNLocator(nbins))
    ax.tick_params(labelsize=7.5, length=2.5, pad=2)


def _grid(n: int, ncols: int, panel_w: float, panel_h: float, left: float = 0.45, bottom: float = 0.38,
          top: float = 0.28, gap_w: float = 0.45, gap_h: float = 0.55) -> tuple[Figure, list[Axes]]:
    """``n`` panels of ``panel_w`` x ``panel_h`` inches in rows of ``ncols``, fixed margins in inches.

    (Fixed margins instead of ``tight_layout``, which measures every tick label and doubles the drawing time.)
    """
    ncols = max(1, min(ncols, n))
    nrows = max(1, int(np.ceil(n / ncols)))
    w = left + ncols * panel_w + (ncols - 1) * gap_w + 0.12
    h = bottom + nrows * panel_h + (nrows - 1) * gap_h + top
    fig = new_figure(w, h)
    fig.subplots_adjust(left=left / w, right=1 - 0.12 / w, bottom=bottom / h, top=1 - top / h,
                        wspace=gap_w / panel_w, hspace=gap_h / panel_h)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]
    return fig, axes


# ---------------------------------------------------------------------------------------------- brain maps

#: Units of the model parameters shown in the QC histograms (rates per minute, DEVELOPING.md).
PARAM_UNITS = {"k2": "1/min", "k2prime": "1/min", "k2a": "1/min", "k2p": "1/min", "theta3": "1/min",
               "bp_nd": "unitless", "r1": "unitless", "dvr": "unitless"}


def param_label(key: str) -> str:
    """``k2`` -> ``k2 (1/min)``; parameters without a known unit unchanged."""
    unit = PARAM_UNITS.get(key)
    return f"{key} ({unit})" if unit else key


def _label_colorbar(display: Any, label: str | None, color: str = "black") -> None:
    """Name the statistic on the colour bar (left of the bar: the right edge is the figure's edge)."""
    cbar = getattr(display, "_cbar", None)
    if label and cbar is not None:
        cbar.ax.yaxis.set_label_position("left")
        cbar.set_label(label, fontsize=9, labelpad=1, color=color)


def glass_brain(img: Any, title: str, threshold: float | None, vmax: float, cbar_label: str | None = "t") -> bytes:
    """Signed glass-brain projection (L, Y, R, Z views) of a statistic image; the colour bar is labelled
    ``cbar_label`` (the statistic)."""
    from nilearn import plotting  # noqa: PLC0415

    fig = new_figure(8.0, 2.5)
    disp = plotting.plot_glass_brain(img, figure=fig, display_mode="lyrz", plot_abs=False, threshold=threshold,
                                     vmin=-vmax, vmax=vmax, symmetric_cbar=True, cmap="cold_hot", colorbar=True,
                                     title=title, black_bg=False)
    _label_colorbar(disp, cbar_label)
    return to_png(fig)


def stat_slices(img: Any, bg: Any, title: str, threshold: float | None, vmax: float,
                cut_coords: Sequence[float] | int | None, mode: str = "ortho", cbar_label: str | None = "t") -> bytes:
    """Slices (``mode`` "ortho" at ``cut_coords`` (mm) or "z"/"x"/"y" mosaics) of a statistic image on ``bg``."""
    from nilearn import plotting  # noqa: PLC0415

    width = 8.0 if mode == "ortho" else 10.0
    fig = new_figure(width, 2.7 if mode == "ortho" else 2.0)
    kw: dict[str, Any] = {}
    if bg is not None:
        kw["bg_img"] = bg
        kw["dim"] = 0
    disp = plotting.plot_stat_map(img, figure=fig, display_mode=mode, cut_coords=cut_coords, threshold=threshold,
                                  vmin=-vmax, vmax=vmax, symmetric_cbar=True, cmap="cold_hot", colorbar=True,
                                  title=title, draw_cross=mode == "ortho", black_bg=True, **kw)
    _label_colorbar(disp, cbar_label, color="white")
    return to_png(fig)


# ---------------------------------------------------------------------------------------------------- ROIs

def roi_paired(values: dict[tuple[str, str], dict[str, dict[str, float]]], conditions: Sequence[str],
               ylabel: str = "BPND") -> bytes:
    """Small multiples, one panel per (region, phase): each subject's value in each condition, joined by a line.

    ``values[(region, phase)][subject][condition]`` = value; ``conditions`` gives the x order.
    """
    keys = list(values)
    fig, axes = _grid(len(keys), 5, 2.3, 2.3)
    x = np.arange(len(conditions))
    for ax, key in zip(axes, keys, strict=True):
        region, phase = key
        per_subj = values[key]
        for subj in per_subj:
            y = np.array([per_subj[subj].get(c, np.nan) for c in conditions], float)
            ok = np.isfinite(y)
            ax.plot(x[ok], y[ok], "-", color="#9aa5b1", linewidth=0.9, zorder=1)
            ax.scatter(x[ok], y[ok], s=9, color=[PALETTE[i % len(PALETTE)] for i in np.nonzero(ok)[0]],
                       zorder=2, linewidths=0)
        means = [np.nanmean([per_subj[s].get(c, np.nan) for s in per_subj]) if per_subj else np.nan
                 for c in conditions]
        ax.plot(x, means, "-", color="#1d2430", linewidth=2.0, zorder=3)
        ax.scatter(x, means, s=36, marker="D", color="#1d2430", zorder=4)
        ax.set_xticks(x, [c[:12] for c in conditions], fontsize=8)
        ax.set_xlim(-0.4, len(conditions) - 0.6)
        ax.set_title(region if not phase else f"{region} ({phase})", fontsize=9.5)
        _style(ax, x=False)
    if axes:
        axes[0].set_ylabel(ylabel, fontsize=9)
    return to_png(fig)


# ------------------------------------------------------------------------------------------------------- QC

def _as_float(seq: Any) -> np.ndarray:
    if seq is None:
        return np.zeros(0)
    return np.array([np.nan if v is None else v for v in seq], dtype=float)


def _hist_keys(qc: dict[str, Any], max_hists: int) -> list[str]:
    hists = {k: v for k, v in (qc.get("histograms") or {}).items()
             if isinstance(v, dict) and v.get("edges") is not None and v.get("counts") is not None}
    first = [k for k in ("bp_nd", "r1", "k2", "k2prime", "dvr") if k in hists]
    return (first + [k for k in hists if k not in first])[:max_hists]


def _clear_data(ax: Axes) -> None:
    """Remove the data artists of a reused axes (ticks, spines and styling stay)."""
    for a in [*ax.lines, *ax.patches, *ax.collections, *ax.texts]:
        a.remove()
    legend = ax.get_legend()
    if legend is not None:
        legend.remove()


def activity_label(qc: dict[str, Any]) -> str:
    """Y label of TAC panels: ``activity (kBq/mL)`` with the unit the report found (``qc["activity_unit"]``)."""
    unit = qc.get("activity_unit")
    return f"activity ({unit})" if unit else "activity (image units)"


def _draw_scan_qc(axes: Sequence[Axes], qc: dict[str, Any], hist_keys: Sequence[str], max_voxels: int) -> None:
    frames = qc.get("frames") or {}
    start = _as_float(frames.get("start_s"))
    dur = _as_float(frames.get("duration_s"))
    t_min = (start + dur / 2.0) / 60.0 if start.size and start.size == dur.size else None
    xlabel = "time (min)" if t_min is not None else "frame"

    def times(k: int) -> np.ndarray:
        return t_min if t_min is not None and t_min.size == k else np.arange(k, dtype=float)

    ax = axes[0]
    ref = _as_float(qc.get("reference_tac"))
    if ref.size:
        ax.plot(times(ref.size), ref, "o-", color="#5c5c5c", markersize=2.5, linewidth=1.2)
    else:
        ax.text(0.5, 0.5, "no reference TAC", ha="center", va="center", transform=ax.transAxes, fontsize=8)
    ax.set_title("reference TAC", fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(activity_label(qc), fontsize=8)

    ax = axes[1]
    used = qc.get("used_frames")
    if used and t_min is not None:
        u = np.asarray(used, int)
        u = u[(u >= 0) & (u < start.size)]
        if u.size and u.size < start.size:  # a time window: shade the fitted frames
            ax.axvspan(start[u.min()] / 60.0, (start[u.max()] + dur[u.max()]) / 60.0, color="#fff1c9", zorder=0,
                       linewidth=0)
    voxels = (qc.get("example_voxels") or [])[:max_voxels]
    for i, vox in enumerate(voxels):
        color = PALETTE[i % len(PALETTE)]
        tac = _as_float(vox.get("tac"))
        if not tac.size:
            continue
        label = str(vox.get("label") or vox.get("index", i))
        label = label if len(label) <= 16 else label[:15] + "…"
        params = vox.get("params") or {}
        if params:
            k0 = next(iter(params))
            v0 = params[k0]
            if isinstance(v0, (int, float)) and v0 is not None:
                label += f" ({k0} {v0:.2g})"
        ax.plot(times(tac.size), tac, "o", color=color, markersize=2.5, label=label)
        fit = vox.get("fitted")
        if fit is not None:
            f = _as_float(fit)
            if f.size == tac.size:
                ax.plot(times(f.size), f, "-", color=color, linewidth=1.2)
        wo = vox.get("fitted_without_release")  # lp-ntPET: the same fit with gamma = 0
        if wo is not None:
            f = _as_float(wo)
            if f.size == tac.size:
                ax.plot(times(f.size), f, "--", color=color, linewidth=0.9)
    if voxels:
        ax.legend(fontsize=6, frameon=False, loc="best")
    else:
        ax.text(0.5, 0.5, "no example voxels", ha="center", va="center", transform=ax.transAxes, fontsize=8)
    without = any(v.get("fitted_without_release") is not None for v in voxels)
    ax.set_title("voxel TACs (dots), fits (lines" + ("; dashed: no release)" if without else ")"), fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(activity_label(qc), fontsize=8)

    hists = qc.get("histograms") or {}
    for ax, key in zip(axes[2:], hist_keys, strict=True):
        edges = _as_float(hists[key]["edges"])
        counts = _as_float(hists[key]["counts"])
        if edges.size == counts.size + 1 and counts.size:
            ax.stairs(counts, edges, fill=True, color="#1f5fa8", alpha=0.75)
        ax.set_title(f"{param_label(key)}, fitted voxels", fontsize=9)
    for ax in axes:
        ax.relim()
        ax.autoscale_view()


def scan_qc_figures(qcs: Sequence[dict[str, Any]], max_hists: int = 3, max_voxels: int = 4) -> list[bytes]:
    """Per scan, one row of small panels: reference TAC, example voxel TACs with fits, parameter histograms.

    Frame times in the QC records are seconds; the x axes are in minutes (frame mid times).  One figure per panel
    count is drawn and reused for every scan (only the data artists change): creating axes and ticks dominates
    the cost of a figure this small, so reuse makes the QC of a 20-scan study about 4x faster.  Every artist is
    drawn with explicit colours and the limits are recomputed, so a scan's PNG does not depend on the others.
    """
    canvases: dict[int, tuple[Figure, list[Axes]]] = {}
    out = []
    for qc in qcs:
        keys = _hist_keys(qc, max_hists)
        n = 2 + len(keys)
        if n not in canvases:
            fig, axes = _grid(n, n, 2.45, 2.0)
            for ax in axes:
                _style(ax)
            canvases[n] = (fig, axes)
        fig, axes = canvases[n]
        for ax in axes:
            _clear_data(ax)
        _draw_scan_qc(axes, qc, keys, max_voxels)
        out.append(to_png(fig, clear=False))
    return out


def scan_qc(qc: dict[str, Any], max_hists: int = 3, max_voxels: int = 4) -> bytes:
    """The QC panels of one scan (see :func:`scan_qc_figures`)."""
    return scan_qc_figures([qc], max_hists, max_voxels)[0]


def qc_overview(records: Sequence[tuple[str, dict[str, Any]]], param: str | None) -> bytes:
    """All scans at a glance: reference TACs overlaid, ``param`` histograms overlaid (as densities) and the
    percentage of flagged voxels per scan (outlier scans stand out)."""
    fig, axes = _grid(3, 3, 3.2, 2.2, bottom=0.45)
    ax_ref, ax_hist, ax_bad = axes
    names = []
    bad = []
    for i, (name, qc) in enumerate(records):
        color = PALETTE[i % len(PALETTE)]
        frames = qc.get("frames") or {}
        start = _as_float(frames.get("start_s"))
        dur = _as_float(frames.get("duration_s"))
        ref = _as_float(qc.get("reference_tac"))
        if ref.size:
            t = (start + dur / 2.0) / 60.0 if start.size == ref.size == dur.size else np.arange(ref.size, dtype=float)
            ax_ref.plot(t, ref, "-", color=color, linewidth=0.9, alpha=0.8)
        h = (qc.get("histograms") or {}).get(param) if param else None
        if isinstance(h, dict):
            edges = _as_float(h.get("edges"))
            counts = _as_float(h.get("counts"))
            if edges.size == counts.size + 1 and counts.sum() > 0:
                dens = counts / (counts.sum() * np.diff(edges))
                ax_hist.stairs(dens, edges, color=color, linewidth=0.9, alpha=0.8)
        sc = qc.get("status_counts") or {}
        total = qc.get("n_voxels") or sum(int(v) for v in sc.values())
        names.append(name)
        bad.append(100.0 * sum(int(v) for k, v in sc.items() if k != "ok") / total if total else np.nan)
    ax_ref.set_title("reference TACs (all scans)", fontsize=9)
    ax_ref.set_xlabel("time (min)", fontsize=8)
    ax_ref.set_ylabel(activity_label(records[0][1]) if records else "activity", fontsize=8)
    ax_hist.set_title(f"{param} distributions (all scans)" if param else "no parameter histograms", fontsize=9)
    if param:
        ax_hist.set_xlabel(param_label(param), fontsize=8)
        ax_hist.set_ylabel("density", fontsize=8)
    x = np.arange(1, len(bad) + 1)
    ax_bad.bar(x, np.nan_to_num(np.asarray(bad)), color=["#d1495b" if b > 5 else "#9aa5b1" for b in bad], width=0.8)
    ax_bad.set_title("flagged voxels per scan (%)", fontsize=9)
    ax_bad.set_xlabel("scan (# in the table)", fontsize=8)
    for ax in axes:
        _style(ax)
    return to_png(fig)


# -------------------------------------------------------------------------------------------- null dists

def null_histograms(items: Sequence[tuple[str, np.ndarray, float | None, float | None]], alpha: float = 0.05) -> bytes:
    """Histograms of max-statistic null distributions (name, null, observed maximum, FWE critical value) with the
    critical value the statistics recorded (dashed; None: not drawn) and the observed value (red)."""
    fig, axes = _grid(len(items), 3, 3.3, 2.4)
    for ax, (name, null, obs, crit) in zip(axes, items, strict=True):
        null = np.asarray(null, float)
        null = null[np.isfinite(null)]
        if null.size:
            lo, hi = float(null.min()), float(null.max())
            if obs is not None and np.isfinite(obs):
                lo, hi = min(lo, obs), max(hi, obs)
            if hi <= lo:
                hi = lo + 1.0
            ax.hist(null, bins=40, range=(lo, hi + 1e-9 * abs(hi)), color="#9aa5b1", edgecolor="none")
            if crit is not None and np.isfinite(crit):
                ax.axvline(crit, color="#1d2430", linestyle="--", linewidth=1.2, label=f"FWE {alpha:g} at {crit:.3g}")
        if obs is not None and np.isfinite(obs):
            ax.axvline(obs, color="#d1495b", linewidth=2.0, label=f"observed {obs:.3g}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, frameon=True, framealpha=0.85, edgecolor="none", loc="upper right")
        ax.set_title(f"{name} (n={null.size})", fontsize=9)
        _style(ax)
    return to_png(fig)


# ------------------------------------------------------------------------------------------------- release

def map_slices(rows: Sequence[tuple[str, np.ndarray]], title: str, cbar_label: str, vmin: float, vmax: float,
               n_slices: int = 6, cmap: str = "viridis") -> bytes:
    """Axial slices of 3-D volumes, one row per ``(label, volume)`` (voxel order i, j, k; NaN transparent), the
    same colour scale ``vmin``-``vmax`` for all rows, slices evenly over the volumes' finite extent in k."""
    vols = [np.asarray(v, dtype=float) for _, v in rows]
    finite_k = np.flatnonzero(np.any([np.isfinite(v).any(axis=(0, 1)) for v in vols], axis=0)) if vols else []
    if len(finite_k):
        ks = np.unique(np.linspace(finite_k[0], finite_k[-1], n_slices + 2)[1:-1].round().astype(int))
    else:
        ks = np.array([0])
    nr, nc = max(len(rows), 1), len(ks)
    left, right, top, panel = 1.3, 0.9, 0.4, 1.25
    w, h = left + nc * panel + right, top + nr * panel + 0.1
    fig = new_figure(w, h)
    im = None
    for r, (label, _) in enumerate(rows):
        for c, k in enumerate(ks):
            ax = fig.add_axes(((left + c * panel) / w, 1 - (top + (r + 1) * panel) / h, 0.96 * panel / w,
                               0.96 * panel / h))
            im = ax.imshow(np.ma.masked_invalid(vols[r][:, :, k].T), origin="lower", cmap=cmap, vmin=vmin,
                           vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for sp in ax.spines.values():
                sp.set_visible(False)
            if c == 0:
                ax.text(-0.06, 0.5, label, transform=ax.transAxes, ha="right", va="center", fontsize=8)
            if r == 0:
                ax.set_title(f"slice k={k}", fontsize=7)
    if im is not None:
        cax = fig.add_axes((1 - 0.75 / w, 0.15, 0.12 / w, 0.7))
        cb = fig.colorbar(im, cax=cax)
        cb.ax.tick_params(labelsize=7)
        cb.set_label(cbar_label, fontsize=8)
    fig.suptitle(title, fontsize=9, y=1 - 0.05 / h, va="top")
    return to_png(fig)


def bp_curves(curves: dict[str, dict[str, dict[str, Any]]], t_min: Sequence[float], conditions: Sequence[str],
              challenge: Sequence[float] | None = None) -> bytes:
    """BP(t) of regions, one panel per region: one line per condition (``curves[region][condition]`` =
    ``{"mean": [...], "subjects": [[...], ...]}``, thin lines for the subjects); times in minutes; the challenge
    window shaded."""
    regions = list(curves)
    n = max(len(regions), 1)
    ncols = min(n, 5)
    fig, axes = _grid(n, ncols, 2.2, 1.8, left=0.55)
    t = np.asarray(t_min, dtype=float)
    for ax, region in zip(axes, regions, strict=False):
        _style(ax)
        if challenge is not None and len(challenge) == 2:
            ax.axvspan(float(challenge[0]), float(challenge[1]), color="#fff1c9", zorder=0, linewidth=0)
        for i, cond in enumerate(conditions):
            d = curves[region].get(cond)
            if not d:
                continue
            color = PALETTE[i % len(PALETTE)]
            for sub in d.get("subjects", []):
                y = _as_float(sub)
                if y.size == t.size:
                    ax.plot(t, y, "-", color=color, linewidth=0.5, alpha=0.3)
            y = _as_float(d.get("mean"))
            if y.size == t.size:
                ax.plot(t, y, "-", color=color, linewidth=1.6, label=cond)
        ax.set_title(region.replace("_", " "), fontsize=9)
        ax.set_xlabel("time (min)", fontsize=8)
        ax.set_ylabel("BP(t)", fontsize=8)
        ax.relim()
        ax.autoscale_view()
    if regions:
        axes[0].legend(fontsize=7, frameon=False, loc="lower left")
    return to_png(fig)
