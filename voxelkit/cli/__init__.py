"""The ``voxelkit`` command line.  Each subcommand lives in its own module with a ``register`` function."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .. import __version__

#: Subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS = ("info", "fit", "batch", "simulate", "stats", "run", "report", "demo")


class CliError(Exception):
    """An error to print as one line (no traceback) with exit status 2."""


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand accepts (``--device``, ``--quiet``, ``--verbose``)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("general")
    g.add_argument("--device", choices=("auto", "cpu", "gpu"), default=None,
                   help="array backend (default: $VOXELKIT_DEVICE or auto)")
    g.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors, no progress bars")
    g.add_argument("-v", "--verbose", action="store_true", help="debug messages")
    return p


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or (``only``: a subcommand name) just that subcommand's parser: ``voxelkit stats
    ...`` then does not import the modules of ``fit``, ``simulate`` etc. (about 30 ms of a 1 s run)."""
    parser = argparse.ArgumentParser(
        prog="voxelkit",
        description="Voxelwise PET kinetic modelling and permutation statistics (NumPy or CuPy).",
    )
    parser.add_argument("--version", action="version", version=f"voxelkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parent = common_options()
    for name in (only,) if only in SUBCOMMANDS else SUBCOMMANDS:
        mod = importlib.import_module(f".{name}", __name__)
        mod.register(sub, parent)
    return parser


def setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    if getattr(args, "verbose", False):
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    setup_logging(args)
    from ..backend import BackendError  # noqa: PLC0415
    from ..frames import FrameError  # noqa: PLC0415
    from ..io import InputError  # noqa: PLC0415

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"voxelkit {args.command}: interrupted (Ctrl-C); nothing more was written", file=sys.stderr)
        return 130
    except (CliError, BackendError, FrameError, InputError, ValueError) as exc:
        return _error_line(args.command, str(exc))
    except OSError as exc:  # PermissionError, IsADirectoryError, FileExistsError, disk full, ...
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        return _error_line(args.command, f"{where}{exc.strerror or exc}")


def _error_line(command: str, text: str) -> int:
    """Print ``text`` as one line (a multi-line message's details go to the debug log) and return 2."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()] or ["unknown error"]
    if len(lines) > 1:
        logging.getLogger("voxelkit").debug("details:\n%s", text)
    print(f"voxelkit {command}: error: {' '.join(lines) if len(lines) <= 2 else lines[0]}", file=sys.stderr)
    return 2
