"""Frame timing of dynamic PET scans.

Times are stored in **seconds from injection**.  BIDS-PET gives ``FrameTimesStart`` relative to ``TimeZero``;
:meth:`FrameTiming.from_bids_dict` subtracts ``InjectionStart`` (seconds relative to ``TimeZero``, default 0) and
records it as :attr:`FrameTiming.injection_offset_s`.  A frame that starts before the injection is an error
(remove pre-injection frames from the image and the sidecar, or correct ``InjectionStart``).
Kinetic models work in **minutes**: use :attr:`FrameTiming.mid_min` and friends.

Timing read from a file is checked for plausibility (:meth:`FrameTiming.check_plausible`): a whole scan shorter
than 5 minutes or a frame shorter than 1 s means the times are not in seconds (minutes?); a scan longer than a
day means milliseconds.

Windows (:meth:`FrameTiming.window_mask`): a frame belongs to the window ``[start, end)`` that holds its
**mid-time**, for every schedule, so windows that tile the scan (0-45, 45-90 min) use every frame exactly once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("voxelkit")

#: A whole scan shorter than this (seconds) is implausible: frame times in minutes?
MIN_SCAN_SECONDS = 300.0
#: A frame shorter than this (seconds) is implausible: frame times in minutes?
MIN_FRAME_SECONDS = 1.0
#: A scan longer than this (seconds, one day) is implausible: frame times in milliseconds?
MAX_SCAN_SECONDS = 86400.0


from .errors import FrameError  # noqa: E402 - defined in voxelkit.errors, re-exported here


@dataclass(frozen=True)
class FrameTiming:
    """Start and duration of each frame, in seconds from injection.

    ``injection_offset_s``: the ``InjectionStart`` (seconds after ``TimeZero``) subtracted from the file's frame
    times (0 when the file had none, or for timing given directly)."""

    start: np.ndarray
    duration: np.ndarray
    source: str = "<frames>"
    injection_offset_s: float = 0.0

    def __post_init__(self) -> None:
        start = np.asarray(self.start, dtype=float).reshape(-1)
        duration = np.asarray(self.duration, dtype=float).reshape(-1)
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "duration", duration)
        self.validate()

    # --- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_start_end(cls, start_s, end_s, source: str = "<frames>") -> FrameTiming:
        start = np.asarray(start_s, dtype=float)
        return cls(start, np.asarray(end_s, dtype=float) - start, source)

    @classmethod
    def from_bids_json(cls, path: str | Path) -> FrameTiming:
        """Read ``FrameTimesStart`` and ``FrameDuration`` (seconds) from a BIDS-PET sidecar."""
        path = Path(path)
        try:
            meta = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise FrameError(f"{path}: cannot read JSON sidecar ({exc})") from exc
        return cls.from_bids_dict(meta, source=str(path))

    @classmethod
    def from_bids_dict(cls, meta: dict, source: str = "<sidecar>", check: bool = True) -> FrameTiming:
        """Frame timing from a BIDS-PET sidecar dict: ``FrameTimesStart`` minus ``InjectionStart`` (seconds
        relative to ``TimeZero``; 0 if absent), ``FrameDuration``.  ``check``: :meth:`check_plausible`."""
        missing = [k for k in ("FrameTimesStart", "FrameDuration") if k not in meta]
        if missing:
            raise FrameError(f"{source}: missing BIDS field(s) {', '.join(missing)}")
        start, dur = meta["FrameTimesStart"], meta["FrameDuration"]
        if np.ndim(start) != 1 or np.ndim(dur) != 1 or len(start) != len(dur):
            raise FrameError(
                f"{source}: FrameTimesStart ({np.size(start)} values) and FrameDuration "
                f"({np.size(dur)} values) must be lists of equal length"
            )
        try:
            start_a, dur_a = np.asarray(start, float), np.asarray(dur, float)
        except (TypeError, ValueError):
            raise FrameError(f"{source}: FrameTimesStart and FrameDuration must be numbers (seconds)") from None
        inj = meta.get("InjectionStart", 0) or 0
        if isinstance(inj, bool) or not isinstance(inj, int | float) or not np.isfinite(inj):
            raise FrameError(f"{source}: InjectionStart must be a number of seconds relative to TimeZero, "
                             f"got {inj!r}")
        inj = float(inj)
        if inj != 0.0:
            before = np.flatnonzero(start_a < inj - 1e-6)
            if before.size:
                raise FrameError(
                    f"{source}: frame(s) {before.tolist()} (0-based) start before the injection (FrameTimesStart "
                    f"{start_a[before[0]]:g} s < InjectionStart {inj:g} s, relative to TimeZero): remove the "
                    "pre-injection frames from the image and the sidecar, or correct InjectionStart")
            log.info("%s: frame times shifted by InjectionStart = %g s (models use time from injection)",
                     source, inj)
        elif start_a.size and start_a[0] < -1e-6:
            raise FrameError(f"{source}: frame 0 starts at {start_a[0]:g} s, before TimeZero, and there is no "
                             "InjectionStart: frame times must be seconds from injection (give InjectionStart)")
        fr = cls(start_a - inj, dur_a, source, injection_offset_s=inj)
        if check:
            fr.check_plausible()
        return fr

    @classmethod
    def uniform(cls, n_frames: int, duration_s: float, first_start_s: float = 0.0) -> FrameTiming:
        start = first_start_s + duration_s * np.arange(n_frames)
        return cls(start, np.full(n_frames, float(duration_s)))

    # --- checks -------------------------------------------------------------------------------------------
    def validate(self) -> None:
        s, d, src = self.start, self.duration, self.source
        if s.shape != d.shape:
            raise FrameError(f"{src}: {s.size} frame starts but {d.size} durations")
        if s.size == 0:
            raise FrameError(f"{src}: no frames")
        bad = ~np.isfinite(s) | ~np.isfinite(d)
        if bad.any():
            raise FrameError(f"{src}: non-finite frame time at frame {int(np.argmax(bad))} (0-based)")
        if (d <= 0).any():
            i = int(np.argmax(d <= 0))
            raise FrameError(f"{src}: frame {i} (0-based) has non-positive duration {d[i]} s")
        if s.size > 1:
            step = np.diff(s)
            if (step <= 0).any():
                i = int(np.argmax(step <= 0)) + 1
                raise FrameError(f"{src}: frame starts must increase; frame {i} starts at {s[i]} s, "
                                 f"frame {i - 1} at {s[i - 1]} s")
            overlap = s[1:] < (s[:-1] + d[:-1]) - 1e-6
            if overlap.any():
                i = int(np.argmax(overlap)) + 1
                raise FrameError(f"{src}: frame {i} starts at {s[i]} s, before frame {i - 1} ends at "
                                 f"{s[i - 1] + d[i - 1]} s (frames overlap)")

    def check_plausible(self) -> None:
        """Raise :class:`FrameError` if the timing cannot be seconds: the whole scan lasts under
        :data:`MIN_SCAN_SECONDS` or a frame under :data:`MIN_FRAME_SECONDS` (times in minutes?), or the scan
        lasts over :data:`MAX_SCAN_SECONDS` (times in milliseconds?).  Called for timing read from files."""
        src = self.source
        total = float(self.end[-1])
        if total > MAX_SCAN_SECONDS:
            raise FrameError(f"{src}: the scan ends {total:g} s ({total / 3600:.1f} h) after injection, longer than "
                             "a day: frame times look like milliseconds; BIDS-PET frame times and durations are "
                             "seconds")
        if total < MIN_SCAN_SECONDS:
            raise FrameError(f"{src}: the scan ends {total:g} s after injection, under "
                             f"{MIN_SCAN_SECONDS / 60:g} minutes: frame times look like minutes; BIDS-PET frame "
                             "times and durations are seconds (multiply by 60)")
        short = np.flatnonzero(self.duration < MIN_FRAME_SECONDS)
        if short.size:
            i = int(short[0])
            raise FrameError(f"{src}: frame {i} (0-based) lasts {self.duration[i]:g} s, under "
                             f"{MIN_FRAME_SECONDS:g} s: frame times look like minutes; BIDS-PET frame times and "
                             "durations are seconds")

    def check_count(self, n_frames: int, what: str) -> None:
        """Raise if ``what`` (for example an image path) has ``n_frames`` frames but the timing has not."""
        if n_frames != self.n_frames:
            raise FrameError(f"frame count mismatch: {what} has {n_frames} frames but {self.source} "
                             f"describes {self.n_frames}")

    # --- derived quantities ---------------------------------------------------------------------------------
    @property
    def n_frames(self) -> int:
        return int(self.start.size)

    @property
    def end(self) -> np.ndarray:
        """Frame end times, seconds."""
        return self.start + self.duration

    @property
    def mid(self) -> np.ndarray:
        """Frame mid times, seconds."""
        return self.start + 0.5 * self.duration

    @property
    def start_min(self) -> np.ndarray:
        return self.start / 60.0

    @property
    def end_min(self) -> np.ndarray:
        return self.end / 60.0

    @property
    def mid_min(self) -> np.ndarray:
        return self.mid / 60.0

    @property
    def duration_min(self) -> np.ndarray:
        return self.duration / 60.0

    def select(self, index) -> FrameTiming:
        """A timing with only the frames ``index`` (boolean mask or integer indices)."""
        return FrameTiming(self.start[index], self.duration[index], self.source, self.injection_offset_s)

    def to_bids_dict(self) -> dict:
        return {"FrameTimesStart": self.start.tolist(), "FrameDuration": self.duration.tolist()}

    def window_mask(self, start_min: float | None, end_min: float | None) -> np.ndarray:
        """Frames whose **mid-time** lies in ``[start_min, end_min)`` minutes (None = open end).

        The same rule for every schedule: windows that tile the scan (0-45, 45-90) use each frame exactly once
        (a mid-time on a bound belongs to the later window; the scan's last frame belongs to a window ending at
        or after the scan's end).  See :meth:`window_straddlers` for frames that cross a bound."""
        mid = self.mid_min
        keep = np.ones(self.n_frames, dtype=bool)
        if start_min is not None:
            keep &= mid >= start_min - 1e-9
        if end_min is not None:
            keep &= mid < end_min - 1e-9
        return keep

    def window_straddlers(self, start_min: float | None, end_min: float | None) -> list[int]:
        """Indices of frames that cross a bound of the window ``[start_min, end_min]`` (minutes): they start
        before the bound and end after it, so part of them lies on the other side."""
        out: set[int] = set()
        for bound in (start_min, end_min):
            if bound is None:
                continue
            cross = (self.start_min < bound - 1e-9) & (self.end_min > bound + 1e-9)
            out.update(int(i) for i in np.flatnonzero(cross))
        return sorted(out)

    def describe_window(self, start_min: float | None, end_min: float | None, what: str = "window") -> np.ndarray:
        """:meth:`window_mask`, logging the frames the window uses (info) and warning about frames that cross
        a bound (they are assigned by their mid-time)."""
        keep = self.window_mask(start_min, end_min)
        idx = np.flatnonzero(keep)
        lo = "0" if start_min is None else f"{start_min:g}"
        hi = "end" if end_min is None else f"{end_min:g}"
        if idx.size:
            log.info("%s %s-%s min: frames %d-%d (%d frames, %.4g-%.4g min; rule: frame mid-time in [start, end))",
                     what, lo, hi, idx[0], idx[-1], idx.size, self.start_min[idx[0]], self.end_min[idx[-1]])
        else:
            log.info("%s %s-%s min: no frame has its mid-time inside", what, lo, hi)
        for i in self.window_straddlers(start_min, end_min):
            log.warning("%s: frame %d (%.4g-%.4g min) crosses a bound of the %s %s-%s min; it is %s by its "
                        "mid-time %.4g min", self.source, i, self.start_min[i], self.end_min[i], what, lo, hi,
                        "used" if keep[i] else "not used", self.mid_min[i])
        return keep


INTEGRATION_SCHEMES = ("trapezoid", "trapezoid_first_mid", "frames")


def integration_coefficients(frames: FrameTiming, scheme: str = "trapezoid") -> tuple[np.ndarray, np.ndarray]:
    """Coefficients ``a``, ``b`` (minutes) of the running integral ``I[i] = I[i-1] + a[i] C[i-1] + b[i] C[i]``
    (``I[0] = b[0] C[0]``) of frame values ``C`` up to each frame's mid-time.

    Schemes:
    - ``trapezoid``: trapezoid rule on mid-times with a point (0, 0) at injection (kinfitr's default).
    - ``trapezoid_first_mid``: trapezoid rule starting at the first mid-time (TPCCLIB's reference Logan).
    - ``frames``: each frame's value held over its duration, integral up to the frame's mid-time
      (kinfitr's ``frame_cumsum``, used when ``dur`` is given); gaps before the first frame count as zero.
    """
    t = frames.mid_min
    n = t.size
    a = np.zeros(n)
    b = np.zeros(n)
    if scheme in ("trapezoid", "trapezoid_first_mid"):
        dt = np.diff(t)
        a[1:] = 0.5 * dt
        b[1:] = 0.5 * dt
        if scheme == "trapezoid":
            b[0] = 0.5 * t[0]
    elif scheme == "frames":
        d = frames.duration_min
        a[1:] = 0.5 * d[:-1]
        b[:] = 0.5 * d
    else:
        raise ValueError(f"unknown integration scheme {scheme!r}: choose one of {', '.join(INTEGRATION_SCHEMES)}")
    return a, b


def integration_matrix(frames: FrameTiming, scheme: str = "trapezoid") -> np.ndarray:
    """Matrix ``M`` (F x F, minutes) with ``M @ C`` the running integral of :func:`integration_coefficients`."""
    a, b = integration_coefficients(frames, scheme)
    n = a.size
    m = np.zeros((n, n))
    m[0, 0] = b[0]
    for i in range(1, n):
        m[i] = m[i - 1]
        m[i, i - 1] += a[i]
        m[i, i] += b[i]
    return m
