"""Output folders: the one rule for where voxelkit writes, what it may replace, and who may write at a time.

Every command that writes a folder of results (``fit``, ``stats``, ``run``) goes through :class:`OutputFolder`:

- an output path that is an existing *file* is refused;
- a folder that is not writable is refused before any work starts;
- a **non-empty** folder is refused unless ``overwrite=True`` (``--overwrite``), or unless the command is
  ``resumable`` and the folder holds this command's own earlier results (``voxelkit run`` reuses its fits);
- with ``overwrite=True``, exactly the files that the previous voxelkit command recorded in the folder's
  manifest (:data:`MANIFEST_NAME`) are removed, never a file the user passed as an input, never anything else;
- a planned output whose path is one of the command's inputs is refused, with or without ``overwrite``;
- the manifest lists what this command wrote (relative paths), so overwrite, resume and the report know it.

:class:`FolderLock` keeps two long-running commands (``voxelkit run``) out of the same folder at once.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import socket
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .io import InputError

log = logging.getLogger("voxelkit")

#: File in an output folder that lists what the last voxelkit command wrote there.
MANIFEST_NAME = "voxelkit_manifest.json"
#: Lock file of a folder in use by a running command.
LOCK_NAME = ".voxelkit.lock"


def _resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_not_input(path: str | Path, inputs: Iterable[str | Path], what: str = "output") -> None:
    """Raise :class:`InputError` if ``path`` is (or links to) one of ``inputs``."""
    p = Path(path)
    for inp in inputs:
        if inp is not None and _same_file(p, Path(inp)):
            raise InputError(f"{p}: the {what} would overwrite the input {inp}; choose another output name")


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of ``folder`` (None when there is none or it is unreadable)."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


class OutputFolder:
    """A folder a command writes into, checked before any work (see the module docstring for the rules).

    Parameters
    ----------
    path : the output folder (created if missing).
    command : the command name recorded in the manifest (``"fit"``, ``"stats paired"``, ``"run"``).
    overwrite : replace what the previous voxelkit command recorded writing here.
    inputs : paths the command reads; never removed, never written.
    resumable : the command may reuse its own earlier results in a non-empty folder (``voxelkit run``).
    """

    def __init__(self, path: str | Path, command: str, *, overwrite: bool = False,
                 inputs: Iterable[str | Path | None] = (), resumable: bool = False) -> None:
        self.path = Path(path)
        self.command = command
        self.overwrite = overwrite
        self.inputs = [Path(p) for p in inputs if p is not None]
        self.resumable = resumable
        self.written: list[str] = []
        self.previous = None
        self._prepare()

    # --- checks -------------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        p = self.path
        if p.exists() and not p.is_dir():
            raise InputError(f"{p}: output path is an existing file, not a folder")
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{p}: cannot create the output folder ({exc.strerror or exc})") from None
        try:
            with tempfile.NamedTemporaryFile(dir=p, prefix=".voxelkit-write-test-"):
                pass
        except OSError as exc:
            raise InputError(f"{p}: output folder is not writable ({exc.strerror or exc})") from None
        self.previous = read_manifest(p)
        entries = [e for e in p.iterdir() if e.name not in (MANIFEST_NAME, LOCK_NAME)]
        if not entries:
            return
        if self.resumable and self.previous is not None and self.previous.get("command") == self.command:
            return
        if not self.overwrite:
            raise InputError(f"{p}: output folder is not empty ({len(entries)} entries); use --overwrite to "
                             "replace what an earlier voxelkit command wrote there, or choose an empty folder")
        self.remove_previous()

    def remove_previous(self) -> list[Path]:
        """Remove the files the previous manifest lists (inside this folder and not an input); returns them."""
        removed: list[Path] = []
        if self.previous is None:
            return removed
        root = _resolved(self.path)
        for rel in self.previous.get("written", []):
            f = (root / rel).resolve()
            if root not in f.parents or not f.is_file():
                continue
            if any(_same_file(f, inp) for inp in self.inputs):
                log.warning("%s: kept (it is an input of this command)", f)
                continue
            f.unlink()
            removed.append(f)
        with contextlib.suppress(FileNotFoundError):
            (self.path / MANIFEST_NAME).unlink()
        for d in sorted({f.parent for f in removed}, key=lambda q: len(q.parts), reverse=True):
            while d != root and root in d.parents:
                try:
                    d.rmdir()
                except OSError:
                    break
                d = d.parent
        if removed:
            log.info("removed %d files of the previous %s in %s", len(removed),
                     self.previous.get("command", "voxelkit command"), self.path)
        self.previous = None
        return removed

    def check_planned(self, paths: Iterable[str | Path]) -> None:
        """Refuse planned outputs that are inputs, before any work."""
        for q in paths:
            check_not_input(q, self.inputs)

    # --- recording ----------------------------------------------------------------------------------------
    def file(self, relative: str | Path) -> Path:
        """Path of an output inside the folder, recorded in the manifest (refused if it is an input)."""
        q = self.path / relative
        check_not_input(q, self.inputs)
        self.record(q)
        return q

    def record(self, path: str | Path) -> None:
        """Record an output the command wrote (or will write) inside the folder."""
        q = Path(path)
        try:
            rel = str(_resolved(q).relative_to(_resolved(self.path)))
        except ValueError:
            raise InputError(f"{q}: outside the output folder {self.path}") from None
        if rel not in self.written:
            self.written.append(rel)

    def write_manifest(self, **extra: Any) -> Path:
        """Write the manifest (the previous one's entries are kept for a resumable command)."""
        from . import __version__  # noqa: PLC0415

        written = list(self.written)
        if self.previous is not None and self.resumable:
            written = [*[w for w in self.previous.get("written", []) if w not in written], *written]
            written = [w for w in written if (self.path / w).exists()]
        doc = {"command": self.command, "voxelkit": __version__,
               "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
               "inputs": [str(p) for p in self.inputs], "written": written, **extra}
        path = self.path / MANIFEST_NAME
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        tmp.replace(path)
        return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """An exclusive lock on an output folder (a lock file created atomically), as a context manager.

    A second holder gets one line naming the holder (pid, host, start time).  A lock left by a dead process on
    this host is taken over with a warning.
    """

    def __init__(self, folder: str | Path, command: str = "voxelkit run") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command
        self._held = False

    def acquire(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
              "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) \
                        and not _pid_alive(holder["pid"]):
                    log.warning("%s: taking over a lock left by %s (pid %s, no longer running)", self.folder,
                                holder.get("command", "voxelkit"), holder["pid"])
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    continue
                raise InputError(f"{self.folder}: in use by {holder.get('command', 'another voxelkit command')} "
                                 f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
                                 f"{holder.get('started', '?')}); wait for it, or remove {self.path} if that "
                                 "process is gone") from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self._held = True
            return self
        raise InputError(f"{self.path}: cannot take the lock")

    def _holder(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text())
            return doc if isinstance(doc, dict) else {}
        except (OSError, json.JSONDecodeError):
            return {}

    def release(self) -> None:
        if self._held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self._held = False

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
