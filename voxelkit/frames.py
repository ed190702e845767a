"""Frame timing of dynamic PET scans.

Times are stored in **seconds** from injection, as BIDS-PET does (``FrameTimesStart``, ``FrameDuration``).
Kinetic models work in **minutes**: use :attr:`FrameTiming.mid_min` and friends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class FrameError(ValueError):
    """Invalid frame timing; the message names the source and the frame."""


@dataclass(frozen=True)
class FrameTiming:
    """Start and duration of each frame, in seconds from injection."""

    start: np.ndarray
    duration: np.ndarray
    source: str = "<frames>"

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
    def from_bids_dict(cls, meta: dict, source: str = "<sidecar>") -> FrameTiming:
        missing = [k for k in ("FrameTimesStart", "FrameDuration") if k not in meta]
        if missing:
            raise FrameError(f"{source}: missing BIDS field(s) {', '.join(missing)}")
        start, dur = meta["FrameTimesStart"], meta["FrameDuration"]
        if np.ndim(start) != 1 or np.ndim(dur) != 1 or len(start) != len(dur):
            raise FrameError(
                f"{source}: FrameTimesStart ({np.size(start)} values) and FrameDuration "
                f"({np.size(dur)} values) must be lists of equal length"
            )
        return cls(np.asarray(start, float), np.asarray(dur, float), source)

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
        return FrameTiming(self.start[index], self.duration[index], self.source)

    def to_bids_dict(self) -> dict:
        return {"FrameTimesStart": self.start.tolist(), "FrameDuration": self.duration.tolist()}

    def window_mask(self, start_min: float | None, end_min: float | None) -> np.ndarray:
        """Frames lying wholly inside ``[start_min, end_min]`` minutes (None = open end)."""
        keep = np.ones(self.n_frames, dtype=bool)
        if start_min is not None:
            keep &= self.start_min >= start_min - 1e-9
        if end_min is not None:
            keep &= self.end_min <= end_min + 1e-9
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
