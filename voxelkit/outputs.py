"""Output folders: the one rule for where voxelkit writes, what it may replace, and who may write at a time.

The code lives in :mod:`voxelkit.io.derivatives` (with every output name and sidecar schema); this module
re-exports it so that ``from voxelkit.outputs import OutputFolder`` keeps working.

Every command that writes a folder of results (``fit``, ``stats``, ``run``) goes through :class:`OutputFolder`:

- an output path that is an existing *file* is refused;
- a folder that is not writable is refused before any work starts;
- a **non-empty** folder is refused unless ``overwrite=True`` (``--overwrite``), or unless the command is
  ``resumable`` and the folder holds this command's own earlier results (``voxelkit run`` reuses its fits);
- with ``overwrite=True``, exactly the files that the previous voxelkit command recorded in the folder's
  manifest (:data:`MANIFEST_NAME`) are removed, never a file the user passed as an input, never anything else;
- a planned output whose path is one of the command's inputs is refused, with or without ``overwrite``;
- the manifest lists what this command wrote (relative paths, and each output's name and old name), so
  overwrite, resume and the report know it.

:class:`FolderLock` keeps two long-running commands (``voxelkit run``) out of the same folder at once.
"""

from __future__ import annotations

from .errors import InputError
from .io.derivatives import (
    LOCK_NAME,
    MANIFEST_NAME,
    FolderLock,
    OutputFolder,
    _pid_alive,
    _resolved,
    check_not_input,
    read_manifest,
    resolve_output,
)

__all__ = ["LOCK_NAME", "MANIFEST_NAME", "FolderLock", "InputError", "OutputFolder", "check_not_input",
           "read_manifest", "resolve_output", "_pid_alive", "_resolved"]
