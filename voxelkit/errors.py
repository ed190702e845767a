"""The exceptions voxelkit raises for bad input, bad frame timing and an unusable backend.

They are defined here, once, and re-exported where they were first defined (``voxelkit.io.InputError``,
``voxelkit.frames.FrameError``, ``voxelkit.backend.BackendError`` are these same classes).  This module imports
nothing from voxelkit, so every module may import it.

- :class:`InputError` (a ``ValueError``): bad user input; the message is one line naming the file (or option)
  and the problem.  The CLI prints it as one line and exits with status 2.
- :class:`FrameError` (a ``ValueError``): invalid frame timing; the message names the source and the frame.
- :class:`BackendError` (a ``RuntimeError``): the requested backend cannot be used (``gpu`` without a GPU).
"""

from __future__ import annotations

__all__ = ["BackendError", "FrameError", "InputError"]


class InputError(ValueError):
    """Bad user input; the message names the file and the problem."""


class FrameError(ValueError):
    """Invalid frame timing; the message names the source and the frame."""


class BackendError(RuntimeError):
    """The requested backend cannot be used (for example ``gpu`` with no usable GPU)."""
