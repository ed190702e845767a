"""Compile CUDA sources with NVRTC, the compiler ``cupy.RawModule`` uses, without a GPU.

``cupy.cuda.compiler.compile_using_nvrtc`` asks the (absent) device for its architecture, so this goes
through the low-level ``cupy.cuda.nvrtc`` bindings with the options ``cupy.RawModule(code=...,
options=OPTS)`` ends up passing (CuPy 13/14, cupy/_core/_compile_with_cache.pyx and cupy/cuda/compiler.py):

1. ``assemble_cupy_compiler_options(OPTS)``: a default ``--std=`` (c++17 in CuPy 14) unless OPTS names one, the bundled
   CCCL include directories first, then OPTS, then ``-I<cupy include>`` (and ``-I$CUDA_PATH/include``);
2. ``-ftz=true``;
3. ``-arch=sm_XX`` (CuPy builds cubin by default; ``CUPY_COMPILE_WITH_PTX=1`` gives ``compute_XX``/PTX);
4. ``--device-as-default-execution-space``.

We compile for both ``compute_XX`` (PTX) and ``sm_XX`` (cubin, runs ptxas) for every architecture.  Any
compiler log (warnings included) is a failure.  Template kernels must have every instantiation named with
``// voxelkit-name-expressions: k<float>, k<double>`` (NVRTC only checks instantiated templates), and every
``extern "C"`` kernel must appear under its plain name in the PTX (what ``get_function(name)`` looks up).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from . import build

#: Compute capabilities voxelkit supports (Turing .. Hopper).
ARCHS = ("75", "80", "86", "89", "90")
MODES = ("ptx", "cubin")


class NvrtcUnavailable(RuntimeError):
    """``cupy.cuda.nvrtc`` cannot be imported or NVRTC cannot be loaded."""


class NvrtcCheckError(AssertionError):
    """A kernel source failed the NVRTC check (error, warning, unnamed template, mangled kernel name)."""


def nvrtc() -> Any:
    """The ``cupy.cuda.nvrtc`` module, after checking that the NVRTC library loads."""
    try:
        import cupy  # noqa: F401, PLC0415
        from cupy.cuda import nvrtc as mod  # noqa: PLC0415

        mod.getVersion()
    except Exception as exc:  # ImportError, or the NVRTC shared library is missing
        raise NvrtcUnavailable(
            f"NVRTC is not usable ({type(exc).__name__}: {exc}); "
            "install cupy-cuda12x and nvidia-cuda-nvrtc-cu12 (the project's cuda12 extra)"
        ) from exc
    if not hasattr(mod, "createProgram"):
        raise NvrtcUnavailable("cupy.cuda.nvrtc has no createProgram: is `cupy` the test stand-in?")
    return mod


def nvrtc_version() -> tuple[int, int]:
    return tuple(nvrtc().getVersion())


def base_options(user_options: tuple[str, ...]) -> tuple[str, ...]:
    """What CuPy's ``assemble_cupy_compiler_options`` makes of ``user_options`` (or a faithful copy)."""
    try:
        from cupy._core.core import assemble_cupy_compiler_options  # noqa: PLC0415

        return tuple(assemble_cupy_compiler_options(tuple(user_options)))
    except (ImportError, AttributeError):
        import os  # noqa: PLC0415

        import cupy  # noqa: PLC0415

        opts = tuple(user_options)
        if not any("-std=" in o for o in opts):
            opts += ("--std=c++17",)  # CuPy 14's default
        include = os.path.join(os.path.dirname(cupy.__file__), "_core", "include")
        return opts + (f"-I{include}",)


def cupy_options(user_options: tuple[str, ...], arch: str, mode: str) -> tuple[str, ...]:
    """The full NVRTC option list of ``RawModule(code, options=user_options)`` on a GPU of ``arch``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    arch_opt = f"-arch=sm_{arch}" if mode == "cubin" else f"-arch=compute_{arch}"
    return base_options(user_options) + ("-ftz=true", arch_opt, "--device-as-default-execution-space")


@dataclass
class CompileResult:
    arch: str
    mode: str
    options: tuple[str, ...]
    log: str
    ok: bool
    binary: bytes = b""
    lowered: dict[str, str] = field(default_factory=dict)


def _clean_log(log: Any) -> str:
    if isinstance(log, bytes):
        log = log.decode(errors="replace")
    return (log or "").replace("\x00", "").strip()


def compile_source(source: str, filename: str, arch: str, mode: str = "ptx",
                   user_options: tuple[str, ...] = (), exprs: tuple[str, ...] = ()) -> CompileResult:
    """Compile ``source`` with NVRTC; never raises on a compile error (see ``CompileResult.ok``/``log``)."""
    mod = nvrtc()
    options = cupy_options(user_options, arch, mode)
    prog = mod.createProgram(source, filename, (), ())
    try:
        for e in exprs:
            mod.addNameExpression(prog, e)
        ok = True
        try:
            mod.compileProgram(prog, options)
        except mod.NVRTCError:
            ok = False
        log = _clean_log(mod.getProgramLog(prog))
        res = CompileResult(arch, mode, options, log, ok)
        if ok:
            res.binary = mod.getCUBIN(prog) if mode == "cubin" else mod.getPTX(prog)
            res.lowered = {e: mod.getLoweredName(prog, e) for e in exprs}
        return res
    finally:
        mod.destroyProgram(prog)


_TEMPLATE_KERNEL_RE = re.compile(
    r"template\s*<[^{};]*>\s*(?:(?:static|inline|__\w+__)\s+)*__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?"
    r"void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?([A-Za-z_]\w*)\s*\("
)


def template_kernels(source: str) -> list[str]:
    """Names of template ``__global__`` functions in ``source``."""
    return _TEMPLATE_KERNEL_RE.findall(build.strip_comments(source))


def check_source(source: str, filename: str, archs: tuple[str, ...] = ARCHS, modes: tuple[str, ...] = MODES,
                 user_options: tuple[str, ...] | None = None) -> list[CompileResult]:
    """Run the whole check on one source; raise :class:`NvrtcCheckError` listing every problem found."""
    if user_options is None:
        from voxelkit.backend import NVRTC_OPTIONS  # noqa: PLC0415

        user_options = tuple(NVRTC_OPTIONS)
    exprs = build.name_expressions(source)
    problems: list[str] = []
    for t in template_kernels(source):
        if not any(re.fullmatch(rf"\s*{re.escape(t)}\s*<.*>\s*", e) for e in exprs):
            problems.append(
                f"template kernel {t!r} has no instantiation named: add a comment "
                f"`// voxelkit-name-expressions: {t}<float>, ...` (NVRTC only checks instantiated templates)"
            )
    try:
        kernels = build.parse_kernels(source, exprs)
    except build.ShimError:
        kernels = []  # parameters the CPU shim cannot handle are reported by the shim tests
    if "__global__" not in build.strip_comments(source):
        problems.append("no __global__ kernel found")
    results = []
    for arch in archs:
        for mode in modes:
            r = compile_source(source, filename, arch, mode, user_options, exprs)
            results.append(r)
            if not r.ok or r.log:
                what = "compile error" if not r.ok else "compiler log not empty (warnings count as failures)"
                problems.append(f"[{mode} {arch}] {what}:\n{r.log}\noptions: {' '.join(r.options)}")
            elif mode == "ptx":
                ptx = r.binary.decode(errors="replace") if isinstance(r.binary, bytes) else str(r.binary)
                for k in kernels:
                    if k.extern_c and not re.search(rf"\.entry\s+{re.escape(k.name)}\s*\(", ptx):
                        problems.append(f"[{arch}] kernel {k.name} is not in the PTX under its plain name")
                    if not k.extern_c and k.name == k.call and k.call not in r.lowered:
                        problems.append(
                            f"kernel {k.name} (line {k.line}) is not extern \"C\": CuPy's get_function({k.name!r}) "
                            "would not find its mangled name (voxelkit kernels are extern \"C\")"
                        )
    if problems:
        uniq = list(dict.fromkeys(problems))
        raise NvrtcCheckError(f"NVRTC check of {filename} failed:\n" + "\n\n".join(uniq))
    return results
