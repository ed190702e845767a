"""The study report: one self-contained HTML file (embedded PNGs, inline CSS, no scripts) from pipeline outputs."""

from .report import write_report

__all__ = ["write_report"]
