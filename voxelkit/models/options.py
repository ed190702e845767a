"""The one definition of model options, shared by ``voxelkit fit``, ``voxelkit fit-tacs``, ``voxelkit run`` and
the study file's ``[model_options]`` table.

Each :class:`OptionSpec` names the keyword the model constructor (or :func:`voxelkit.api.fit`) takes, its CLI
flag, how a value is parsed and checked, its unit, its help text, the models that accept it and the commands
that offer it.  :func:`add_model_arguments` adds the flags to an argparse parser, :func:`collect_model_options`
reads the given ones back from parsed arguments, and :func:`validate_model_options` checks a dict (a study
file's ``[model_options]``, or the collected CLI options) before any fit: an unknown key, a value of the wrong
type or an option that the model does not take is one line naming the source and the key.

Units: times (``tstar``, ``end``, ``window``, ``k2prime_window``, ``half_life_min``) in **minutes**, rate
constants (``k2prime``, ``theta3_range``) in **1/min**; ``mask_threshold`` is a fraction (0-1].
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import DEFAULT_MASK_THRESHOLD, InputError
from .k2prime import K2PRIME_ESTIMATING_MODELS, K2PRIME_NUMBER_MODELS, k2prime_kind

#: The models this table knows.  ``OptionSpec.models == ALL_MODELS`` means "every model"; for a model not listed
#: here (a newly registered one) applicability is left to its constructor.  To expose a new model's option on
#: every command and in the study file, add an :class:`OptionSpec` row below.
ALL_MODELS = ("logan", "lpntpet", "lpntpet2", "mrtm", "mrtm2", "ratio", "srtm", "srtm2")
ALL_COMMANDS = ("fit", "fit-tacs", "run")


class _Bad(ValueError):
    """A value that does not parse; the text says what was expected."""


def _number(v: Any, what: str = "a number") -> float:
    if isinstance(v, bool):
        raise _Bad(f"expected {what}, got {v!r}")
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise _Bad(f"expected {what}, got {v!r}") from None
    if x != x or x in (float("inf"), float("-inf")):
        raise _Bad(f"expected {what}, got {v!r}")
    return x


def _positive(v: Any) -> float:
    x = _number(v, "a positive number")
    if not x > 0:
        raise _Bad(f"expected a positive number, got {v!r}")
    return x


def _nonneg(v: Any) -> float:
    x = _number(v, "a number >= 0")
    if x < 0:
        raise _Bad(f"expected a number >= 0, got {v!r}")
    return x


def _int_ge5(v: Any) -> int:
    if isinstance(v, bool):
        raise _Bad(f"expected an integer >= 5, got {v!r}")
    try:
        x = int(str(v)) if not isinstance(v, int) else v
    except ValueError:
        raise _Bad(f"expected an integer >= 5, got {v!r}") from None
    if x < 5:
        raise _Bad(f"expected an integer >= 5, got {v!r}")
    return x


def _k2prime(v: Any) -> float | str:
    if isinstance(v, str) and v.strip().lower() == "median":
        return "median"
    try:
        return _positive(v)
    except _Bad:
        raise _Bad(f"expected a rate in 1/min or 'median', got {v!r}") from None


def _is_rate_or_median(v: str) -> bool:
    try:
        _k2prime(v)
    except _Bad:
        return False
    return True


def _pair(conv: Callable[[Any], float], ordered: bool = True) -> Callable[[Any], list[float]]:
    def parse(v: Any) -> list[float]:
        if isinstance(v, str) or not isinstance(v, Iterable):
            raise _Bad(f"expected two numbers (start, end), got {v!r}")
        vals = list(v)
        if len(vals) != 2:
            raise _Bad(f"expected two numbers (start, end), got {v!r}")
        a, b = conv(vals[0]), conv(vals[1])
        if ordered and not a < b:
            raise _Bad(f"expected start < end, got {vals}")
        return [a, b]
    return parse


def _fraction(v: Any) -> float:
    x = _number(v, "a fraction in (0, 1]")
    if not 0 < x <= 1:
        raise _Bad(f"expected a fraction in (0, 1], got {v!r}")
    return x


def _weights(v: Any) -> str | list[float]:
    from .base import WEIGHT_SCHEMES  # noqa: PLC0415

    if isinstance(v, str):
        return v  # a scheme, or (fit-tacs) a column name: checked where the table is known
    if isinstance(v, Iterable):
        return [_nonneg(x) for x in v]
    raise _Bad(f"expected one of {', '.join(WEIGHT_SCHEMES)} or one weight per frame, got {v!r}")


def _integration(v: Any) -> str:
    from .base import MODEL_INTEGRATION_SCHEMES  # noqa: PLC0415

    if v not in MODEL_INTEGRATION_SCHEMES:
        raise _Bad(f"expected one of {', '.join(MODEL_INTEGRATION_SCHEMES)}, got {v!r}")
    return str(v)


def _text(v: Any) -> str:
    if not isinstance(v, str | Path) or not str(v):
        raise _Bad(f"expected a name or path, got {v!r}")
    return str(v)


@dataclass(frozen=True)
class OptionSpec:
    """One model option: ``name`` is the keyword the model constructor (or ``voxelkit.api.fit``) takes."""

    name: str
    flag: str
    parse: Callable[[Any], Any]
    unit: str
    help: str
    models: tuple[str, ...] = ALL_MODELS
    commands: tuple[str, ...] = ALL_COMMANDS
    nargs: int | None = None
    metavar: str | tuple[str, ...] | None = None
    cli_type: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    aliases: tuple[str, ...] = field(default=())

    def check(self, value: Any, where: str) -> Any:
        """The parsed value, or :class:`InputError` naming ``where`` and the option."""
        try:
            return self.parse(value)
        except _Bad as exc:
            raise InputError(f"{where}: option {self.name!r} ({self.flag}): {exc}") from None


def _weights_help() -> str:
    from .base import WEIGHT_SCHEMES  # noqa: PLC0415

    return "frame weights: " + ", ".join(WEIGHT_SCHEMES) + " (fit-tacs also: a column name)"


def _positives(v: Any) -> list[float]:
    vals = [v] if isinstance(v, int | float | str) else list(v) if isinstance(v, Iterable) else None
    if not vals:
        raise _Bad(f"expected one or more positive numbers, got {v!r}")
    return [_positive(x) for x in vals]


#: lp-ntPET (voxelkit.models.lpntpet): the release basis grid and the F test (Python-only: nonnegative, refine).
_LP = ("lpntpet", "lpntpet2")
LPNTPET_OPTION_SPECS: tuple[OptionSpec, ...] = (
    OptionSpec("challenge_window", "--challenge-window", _pair(_nonneg), "min",
               "lpntpet: the challenge's start and end; centres the default release grid", models=_LP, nargs=2,
               metavar=("START", "END")),
    OptionSpec("td_range", "--td-range", _pair(_nonneg, ordered=False), "min",
               "lpntpet: first and last release onset t_D of the grid", models=_LP, nargs=2,
               metavar=("FIRST", "LAST")),
    OptionSpec("tp_range", "--tp-range", _pair(_nonneg, ordered=False), "min",
               "lpntpet: first and last release peak t_P of the grid", models=_LP, nargs=2,
               metavar=("FIRST", "LAST")),
    OptionSpec("td_step", "--td-step", _positive, "min", "lpntpet: onset grid step (default 2 with a challenge window)",
               models=_LP, metavar="MIN"),
    OptionSpec("tp_step", "--tp-step", _positive, "min", "lpntpet: peak grid step (default 3 with a challenge window)",
               models=_LP, metavar="MIN"),
    OptionSpec("alphas", "--alphas", _positives, "", "lpntpet: release sharpness values (default 0.5 1 2 4)",
               models=_LP, nargs="+", metavar="A"),
    OptionSpec("p_eff", "--p-eff", _positive, "",
               "lpntpet: effective parameter count of the release F test (default: calibrated per scan)", models=_LP,
               metavar="P"),
    OptionSpec("f_alpha", "--f-alpha", _fraction, "fraction",
               "lpntpet: nominal voxelwise false-positive rate of the F threshold (default 0.05)", models=_LP,
               metavar="A"),
)


#: The option table.  Order = the order of ``--help``.
MODEL_OPTION_SPECS: tuple[OptionSpec, ...] = (
    OptionSpec("tstar", "--tstar", _nonneg, "min",
               "Logan: frames starting at or after t* enter the regression (required for logan)",
               models=("logan",), metavar="MIN"),
    OptionSpec("k2prime", "--k2prime", _k2prime, "1/min",
               "reference-region efflux rate k2'; mrtm2/srtm2/lpntpet2 also 'median' (median MRTM/SRTM k2' over the "
               "voxels/regions of highest tissue/reference ratio, from all frames or --k2prime-window) or a "
               "high-binding region: mask image (fit, run), atlas region name (run), column name (fit-tacs); k2' from "
               "a fit of its mean TAC",
               models=K2PRIME_NUMBER_MODELS, metavar="K"),
    OptionSpec("k2prime_window", "--k2prime-window", _pair(_nonneg), "min",
               "mrtm2/srtm2: frames whose mid-time lies in [START, END) estimate k2' (default: all frames, also "
               "when --window restricts the fit)", models=K2PRIME_ESTIMATING_MODELS, nargs=2,
               metavar=("START", "END")),
    OptionSpec("end", "--end", _positive, "min", "Logan: ignore frames ending after this time",
               models=("logan",), metavar="MIN"),
    OptionSpec("window", "--window", _pair(_nonneg), "min",
               "fit only frames whose mid-time lies in [START, END) (integrals still start at injection)",
               commands=("fit", "fit-tacs"), nargs=2, metavar=("START", "END")),
    OptionSpec("weights", "--weights", _weights, "", "frame weights (see --help)", metavar="SCHEME"),
    OptionSpec("half_life_min", "--half-life", _positive, "min",
               "radionuclide half-life for decay-uncorrected weights (default C-11, 20.364)", metavar="MIN",
               aliases=("half_life",)),
    OptionSpec("integration", "--integration", _integration, "",
               "running-integral rule (default trapezoid from a zero at injection, as kinfitr; frame_average is "
               "exact for frame-average data on uneven schedules)",
               models=("logan", "lpntpet", "lpntpet2", "mrtm", "mrtm2"),
               metavar="RULE"),
    OptionSpec("theta3_range", "--theta3-range", _pair(_positive), "1/min",
               "SRTM/SRTM2: basis-function theta3 grid range; default from k2' and --bp-max",
               models=("srtm", "srtm2"), nargs=2, metavar=("MIN", "MAX")),
    OptionSpec("n_basis", "--n-basis", _int_ge5, "", "SRTM/SRTM2: number of basis functions (log-spaced theta3)",
               models=("srtm", "srtm2"), metavar="N"),
    OptionSpec("bp_max", "--bp-max", _positive, "", "SRTM/SRTM2: highest BPND the default theta3 grid must reach",
               models=("srtm", "srtm2"), metavar="BP"),
    OptionSpec("mask_threshold", "--mask-threshold", _fraction, "fraction",
               "fractional (0-1) masks (reference, brain, k2' region): voxels >= this are inside (default 0.5); "
               "integer/binary masks: every non-zero voxel", commands=("fit", "run"), metavar="T"),
    OptionSpec("k2prime_mask", "--k2prime-mask", _text, "",
               "mrtm2/srtm2: mask image of a high-binding region; k2' from a fit of its mean TAC (fit: the same as "
               "--k2prime IMG; run: deprecated, use --k2prime IMG)",
               models=K2PRIME_ESTIMATING_MODELS, commands=("fit", "run"), metavar="IMG"),
    OptionSpec("k2prime_region", "--k2prime-region", _text, "",
               "mrtm2/srtm2: column of a high-binding region; k2' from its fit (the same as --k2prime COLUMN)",
               models=K2PRIME_ESTIMATING_MODELS,
               commands=("fit-tacs",), metavar="COLUMN"),
    *LPNTPET_OPTION_SPECS,
)

SPECS: dict[str, OptionSpec] = {s.name: s for s in MODEL_OPTION_SPECS}
#: Options that are not model constructor keywords but inputs of ``voxelkit.api.fit`` / ``fit_tacs``.
INPUT_OPTIONS = ("mask_threshold", "k2prime_mask", "k2prime_region")


def specs_for(command: str) -> list[OptionSpec]:
    """The option specs ``command`` (``fit``, ``fit-tacs``, ``run``) offers."""
    return [s for s in MODEL_OPTION_SPECS if command in s.commands]


def _lookup(key: str) -> OptionSpec | None:
    if key in SPECS:
        return SPECS[key]
    for s in MODEL_OPTION_SPECS:
        if key in s.aliases or key == s.flag.lstrip("-").replace("-", "_"):
            return s
    return None


def add_model_arguments(parser: argparse.ArgumentParser | Any, command: str) -> None:
    """Add the flags of :func:`specs_for` ``command`` to ``parser`` (a parser or an argument group).
    Every default is None, so :func:`collect_model_options` passes on only what the user gave."""
    for s in specs_for(command):
        help_text = _weights_help() if s.name == "weights" else s.help
        if s.unit and s.unit not in ("fraction",):
            help_text += f" [{s.unit}]"
        kwargs: dict[str, Any] = {"dest": s.name, "default": None, "help": help_text, "metavar": s.metavar}
        if s.nargs:
            kwargs["nargs"] = s.nargs
        parser.add_argument(s.flag, **kwargs)


def collect_model_options(args: argparse.Namespace, command: str, model: str | None = None) -> dict[str, Any]:
    """The model options given on the command line, parsed and checked (see :func:`validate_model_options`)."""
    given = {s.name: getattr(args, s.name) for s in specs_for(command) if getattr(args, s.name, None) is not None}
    return validate_model_options(given, model, "command line", command=command)


def validate_model_options(options: dict[str, Any] | None, model: str | None, source: str, *,
                           command: str = "run", base_dir: str | Path | None = None) -> dict[str, Any]:
    """Check and normalise a dict of model options (from a study file's ``[model_options]`` or the CLI).

    Unknown keys, bad values and options that ``model`` (when given) does not take raise :class:`InputError`
    naming ``source`` and the key.  Pairs become lists (as in JSON), numbers floats (``n_basis`` int);
    a relative ``k2prime_mask`` path is taken relative to ``base_dir`` (the study file's folder)."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise InputError(f"{source}: model_options must be a table of option = value, got {options!r}")
    out: dict[str, Any] = {}
    allowed = specs_for(command)
    for key, value in options.items():
        spec = _lookup(str(key))
        if spec is None or spec not in allowed:
            hint = " (use [windows] / --window NAME START END for named time windows)" \
                if key == "window" and command == "run" else ""
            raise InputError(f"{source}: unknown model option {key!r}{hint}; known: "
                             f"{', '.join(s.name for s in allowed)}")
        if model is not None and spec.models != ALL_MODELS and model.lower() in ALL_MODELS \
                and model.lower() not in spec.models:
            raise InputError(f"{source}: option {spec.name!r} ({spec.flag}) only applies to models "
                             f"{', '.join(spec.models)}, not {model.lower()!r}")
        if value is None:
            continue
        if spec.name == "k2prime" and command in ("fit", "fit-tacs", "run") and isinstance(value, str | Path) \
                and not _is_rate_or_median(str(value)):
            # a high-binding region: mask image (fit, run), atlas region name (run) or column (fit-tacs), checked
            # later; a relative mask path is relative to base_dir (the study file's folder)
            if base_dir is not None and k2prime_kind(str(value)) == "mask" and not Path(value).is_absolute():
                value = Path(base_dir) / value
            out[spec.name] = str(value)
            continue
        val = spec.check(value, source)
        if spec.name == "k2prime" and val == "median" and model is not None and model.lower() == "logan":
            raise InputError(f"{source}: option 'k2prime' (--k2prime) = 'median' only applies to mrtm2, srtm2 "
                             "(and srtm, whose grid then uses its wide default), not 'logan'")
        if spec.name == "k2prime_mask" and base_dir is not None and not Path(val).is_absolute():
            val = str(Path(base_dir) / val)
        out[spec.name] = val
    return out


def option_table_markdown() -> str:
    """The option table as Markdown (for the README)."""
    lines = ["| option (study file / Python) | CLI flag | unit | models | commands | meaning |",
             "|---|---|---|---|---|---|"]
    for s in MODEL_OPTION_SPECS:
        models = "all" if s.models == ALL_MODELS else ", ".join(s.models)
        help_text = _weights_help() if s.name == "weights" else s.help
        lines.append(f"| `{s.name}` | `{s.flag}` | {s.unit or '-'} | {models} | {', '.join(s.commands)} | "
                     f"{help_text} |")
    return "\n".join(lines) + "\n"


__all__ = ["DEFAULT_MASK_THRESHOLD", "INPUT_OPTIONS", "MODEL_OPTION_SPECS", "OptionSpec", "SPECS",
           "add_model_arguments", "collect_model_options", "option_table_markdown", "specs_for",
           "validate_model_options"]
