"""Build a CUDA kernel source as a host shared library (g++ + shim.h) and call its kernels through ctypes.

Each ``.cu`` source becomes its own ``.so`` (helper names of different sources would clash otherwise),
cached under ``tests/.shim_cache`` (or ``$VOXELKIT_SHIM_CACHE``) by a hash of the source, ``shim.h``, the
compiler flags and the compiler version.  For every ``extern "C" __global__ void NAME(PARAMS)`` the
generated wrapper exports::

    extern "C" void vkshim_launch_NAME(unsigned gx, unsigned gy, unsigned gz,
                                       unsigned bx, unsigned by, unsigned bz, PARAMS...)

which loops over the whole grid (an OpenMP loop over blocks, the threads of a block in order) with the
thread-local ``threadIdx``/``blockIdx``/``blockDim``/``gridDim`` set for each call.

Template kernels are supported when the source names their instantiations in a comment, the same
convention the NVRTC check uses::

    // voxelkit-name-expressions: scale<float>, scale<double>

``VOXELKIT_SHIM_SANITIZE=1`` (or ``sanitize=True``) builds with AddressSanitizer + UBSan; the Python
process must then have ``libasan`` preloaded (``LD_PRELOAD=$(g++ -print-file-name=libasan.so)``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SHIM_DIR = Path(__file__).resolve().parent
SHIM_HEADER = SHIM_DIR / "shim.h"
DEFAULT_CACHE = SHIM_DIR.parent / ".shim_cache"
ENV_SANITIZE = "VOXELKIT_SHIM_SANITIZE"
ENV_CACHE = "VOXELKIT_SHIM_CACHE"
ENV_CXX = "VOXELKIT_SHIM_CXX"
#: Bump when the generated wrapper changes in a way the hash of its inputs does not capture.
GENERATOR_VERSION = "3"

BASE_FLAGS = (
    "-std=c++17",
    "-fPIC",
    "-shared",
    "-fopenmp",
    "-Wall",
    "-Werror",
    "-Wno-unknown-pragmas",  # #pragma unroll
    "-Wno-unused-function",
    "-Wno-sign-compare",
)
OPT_FLAGS = ("-O2",)
SANITIZE_FLAGS = (
    "-fsanitize=address,undefined",
    "-fno-omit-frame-pointer",
    "-fno-sanitize-recover=all",
    "-g",
    "-O1",
)


class ShimError(RuntimeError):
    """The kernel source cannot be parsed or built for the CPU shim."""


class ShimArgumentError(TypeError):
    """A kernel argument does not match the kernel's C signature."""


# --------------------------------------------------------------------------------------------- C types
@dataclass(frozen=True)
class CType:
    """A C scalar type a kernel parameter may have (pointee type for pointers)."""

    name: str
    dtype: np.dtype
    ctype: Any


def _ct(name: str, dtype: str, ctype: Any) -> CType:
    return CType(name, np.dtype(dtype), ctype)


_CTYPES: dict[str, CType] = {}
for _names, _dtype, _c in (
    (("float",), "float32", ctypes.c_float),
    (("double",), "float64", ctypes.c_double),
    (("int", "signed int", "signed", "int32_t"), "int32", ctypes.c_int32),
    (("unsigned int", "unsigned", "uint32_t"), "uint32", ctypes.c_uint32),
    (("long long", "long long int", "signed long long", "signed long long int", "int64_t", "long",
      "long int"), "int64", ctypes.c_int64),
    (("unsigned long long", "unsigned long long int", "uint64_t", "size_t", "unsigned long",
      "unsigned long int"), "uint64", ctypes.c_uint64),
    (("short", "short int", "signed short", "int16_t"), "int16", ctypes.c_int16),
    (("unsigned short", "unsigned short int", "uint16_t"), "uint16", ctypes.c_uint16),
    (("signed char", "int8_t"), "int8", ctypes.c_int8),
    (("unsigned char", "uint8_t"), "uint8", ctypes.c_uint8),
    (("bool",), "bool", ctypes.c_bool),
):
    for _n in _names:
        _CTYPES[_n] = _ct(_names[0], _dtype, _c)

_QUALIFIERS = {"const", "volatile", "__restrict__", "__restrict", "restrict", "__grid_constant__"}


@dataclass(frozen=True)
class Param:
    """One kernel parameter: a pointer to ``ctype`` or a ``ctype`` scalar passed by value."""

    name: str
    ctype: CType
    pointer: bool
    const: bool
    text: str

    @property
    def dtype(self) -> np.dtype:
        return self.ctype.dtype

    def describe(self) -> str:
        return f"{'const ' if self.const else ''}{self.ctype.name}{'*' if self.pointer else ''} {self.name}"


@dataclass(frozen=True)
class Kernel:
    """A ``__global__`` function as the shim exports it."""

    name: str  # the name CuPy's get_function takes (kernel name, or the name expression of a template)
    params: tuple[Param, ...]
    extern_c: bool
    line: int
    call: str  # C++ expression naming the function to call (``k`` or ``k<float>``)
    symbol: str  # exported launcher symbol

    @property
    def signature(self) -> str:
        return f"{self.name}({', '.join(p.describe() for p in self.params)})"


def strip_comments(src: str) -> str:
    """``src`` with comments replaced by spaces (newlines kept, so line numbers stay), literals intact."""
    out: list[str] = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c == "/" and i + 1 < n and src[i + 1] == "/":
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif c == "/" and i + 1 < n and src[i + 1] == "*":
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("".join(ch if ch == "\n" else " " for ch in src[i:j]))
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            out.append(src[i : j + 1])
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside ``<>``, ``()``, ``[]``, ``{}``."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "<([{":
            depth += 1
        elif ch in ">)]}":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


_NAME_EXPR_RE = re.compile(r"//\s*voxelkit-name-expressions\s*:(.*)$", re.MULTILINE)


def name_expressions(src: str) -> tuple[str, ...]:
    """Template instantiations named in ``// voxelkit-name-expressions: a<float>, b<double>`` comments."""
    out: list[str] = []
    for m in _NAME_EXPR_RE.finditer(src):
        out.extend(split_top_level(m.group(1)))
    return tuple(out)


def parse_param(text: str, kernel: str, subst: dict[str, str] | None = None) -> Param:
    """Parse one parameter declaration such as ``const float* __restrict__ x``."""
    raw = text.strip()
    t = raw
    if subst:
        for k, v in subst.items():
            t = re.sub(rf"\b{re.escape(k)}\b", v, t)
    t = re.sub(r"\[\s*\]", "*", t)  # float x[] -> float* x
    if "&" in t or "(" in t or "=" in t:
        raise ShimError(f"kernel {kernel}: unsupported parameter {raw!r} (references/function pointers/defaults)")
    stars = t.count("*")
    tokens = re.findall(r"[A-Za-z_]\w*", t.replace("*", " * "))
    const = "const" in tokens
    tokens = [tok for tok in tokens if tok not in _QUALIFIERS]
    if len(tokens) < 2:
        raise ShimError(f"kernel {kernel}: parameter {raw!r} has no name (every kernel parameter needs one)")
    name, base = tokens[-1], " ".join(tokens[:-1])
    if stars > 1:
        raise ShimError(f"kernel {kernel}: parameter {raw!r}: pointers to pointers are not supported")
    base = base.replace("std::", "")
    if base not in _CTYPES:
        raise ShimError(
            f"kernel {kernel}: parameter {raw!r}: type {base!r} is not supported by the shim "
            f"(supported: {', '.join(sorted(set(c.name for c in _CTYPES.values())))})"
        )
    return Param(name, _CTYPES[base], stars == 1, const, raw)


_GLOBAL_RE = re.compile(
    r"__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?"
    r"([A-Za-z_]\w*)\s*\(([^)]*)\)\s*\{"
)
_EXTERN_C_BLOCK_RE = re.compile(r'extern\s+"C"\s*\{')


def _extern_c_ranges(code: str) -> list[tuple[int, int]]:
    ranges = []
    for m in _EXTERN_C_BLOCK_RE.finditer(code):
        depth, j = 1, m.end()
        while j < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            j += 1
        ranges.append((m.start(), j))
    return ranges


def _template_params(prefix: str) -> list[str] | None:
    """Template parameter names if ``prefix`` (text before ``__global__``) ends with ``template<...>``."""
    m = re.search(r"template\s*<([^{};]*)>\s*(?:(?:static|inline|__\w+__)\s+)*$", prefix)
    if not m:
        return None
    names = []
    for p in split_top_level(m.group(1)):
        p = p.split("=")[0].strip()
        names.append(re.findall(r"[A-Za-z_]\w*", p)[-1])
    return names


def _symbol(name: str) -> str:
    if re.fullmatch(r"[A-Za-z_]\w*", name):
        return f"vkshim_launch_{name}"
    clean = re.sub(r"\W+", "_", name).strip("_")
    return f"vkshim_launch_{clean}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def parse_kernels(src: str, exprs: tuple[str, ...] | None = None) -> list[Kernel]:
    """All ``__global__`` kernels of ``src`` (template ones once per name expression)."""
    code = strip_comments(src)
    exprs = name_expressions(src) if exprs is None else tuple(exprs)
    ext_ranges = _extern_c_ranges(code)
    kernels: list[Kernel] = []
    for m in _GLOBAL_RE.finditer(code):
        name, params_text = m.group(1), m.group(2)
        start = m.start()
        stmt_start = max(code.rfind(";", 0, start), code.rfind("}", 0, start), code.rfind("{", 0, start)) + 1
        prefix = code[stmt_start:start]
        line = code.count("\n", 0, start) + 1
        extern_c = bool(re.search(r'extern\s+"C"', prefix)) or any(a <= start < b for a, b in ext_ranges)
        tparams = _template_params(prefix)
        param_texts = [p for p in split_top_level(params_text) if p != "void"]
        if tparams is None:
            params = tuple(parse_param(p, name) for p in param_texts)
            kernels.append(Kernel(name, params, extern_c, line, name, _symbol(name)))
            continue
        for expr in exprs:
            em = re.fullmatch(rf"\s*{re.escape(name)}\s*<(.*)>\s*", expr)
            if not em:
                continue
            targs = split_top_level(em.group(1))
            if len(targs) != len(tparams):
                raise ShimError(f"name expression {expr!r}: {len(targs)} template arguments, need {len(tparams)}")
            subst = dict(zip(tparams, targs, strict=True))
            params = tuple(parse_param(p, expr, subst) for p in param_texts)
            kernels.append(Kernel(expr, params, False, line, expr, _symbol(expr)))
    return kernels


# --------------------------------------------------------------------------------------------- building
def compiler() -> str | None:
    """Path of the C++ compiler (``$VOXELKIT_SHIM_CXX`` or g++), or None."""
    return shutil.which(os.environ.get(ENV_CXX, "g++"))


def sanitize_default() -> bool:
    return os.environ.get(ENV_SANITIZE, "").strip().lower() in ("1", "true", "yes", "on")


def asan_loaded() -> bool:
    """Whether libasan is mapped into this process (required before loading a sanitized build)."""
    try:
        return "libasan" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE)
    for candidate in ([Path(env)] if env else []) + [DEFAULT_CACHE, Path(tempfile.gettempdir()) / "voxelkit_shim"]:
        try:
            candidate.mkdir(parents=True, exist_ok=True)
            if os.access(candidate, os.W_OK):
                return candidate
        except OSError:
            continue
    raise ShimError("no writable cache directory for shim builds")


def generate_wrapper(src: str, kernels: list[Kernel], filename: str) -> str:
    """The C++ translation unit: shim.h, the kernel source (with #line), one launcher per kernel."""
    lines = [
        f'#include "{SHIM_HEADER.as_posix()}"',
        f'#line 1 "{filename}"',
        src,
        "",
        '#line 1 "vkshim_launchers.cpp"',
    ]
    for k in kernels:
        decl = ", ".join(
            f"{p.ctype.name}{'*' if p.pointer else ''} a{i}" for i, p in enumerate(k.params)
        )
        call_args = ", ".join(f"a{i}" for i in range(len(k.params)))
        lines.append(
            f'extern "C" void {k.symbol}(unsigned gx, unsigned gy, unsigned gz, '
            f"unsigned bx, unsigned by, unsigned bz{', ' if decl else ''}{decl}) {{\n"
            f"    const long long nblocks = (long long)gx * gy * gz;\n"
            f"    #pragma omp parallel for schedule(static)\n"
            f"    for (long long b = 0; b < nblocks; ++b) {{\n"
            f"        vkshim_enter_block_(gx, gy, gz, bx, by, bz, b);\n"
            f"        for (unsigned z = 0; z < bz; ++z)\n"
            f"            for (unsigned y = 0; y < by; ++y)\n"
            f"                for (unsigned x = 0; x < bx; ++x) {{\n"
            f"                    threadIdx.x = x; threadIdx.y = y; threadIdx.z = z;\n"
            f"                    {k.call}({call_args});\n"
            f"                }}\n"
            f"    }}\n"
            f"}}"
        )
    return "\n".join(lines) + "\n"


_BUILD_LOCK = threading.Lock()
_MODULES: dict[tuple[str, bool], ShimModule] = {}


def _compiler_version(cxx: str) -> str:
    return subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout


def defines_from_options(options: tuple[str, ...]) -> tuple[str, ...]:
    """The macro definitions among NVRTC options (``-DX``, ``-DX=1``, ``--define-macro=X``) as g++ flags."""
    out = []
    for o in options:
        if o.startswith("--define-macro="):
            out.append("-D" + o.split("=", 1)[1])
        elif o.startswith("-D") and len(o) > 2:
            out.append(o)
    return tuple(out)


def build(source: str, filename: str = "kernel.cu", *, sanitize: bool | None = None,
          exprs: tuple[str, ...] | None = None, defines: tuple[str, ...] = ()) -> Path:
    """Compile ``source`` through the shim into a cached shared library and return its path.

    ``defines`` are ``-DNAME[=VALUE]`` flags (see :func:`defines_from_options`)."""
    cxx = compiler()
    if cxx is None:
        raise ShimError(f"no C++ compiler found ({os.environ.get(ENV_CXX, 'g++')}); install g++")
    sanitize = sanitize_default() if sanitize is None else sanitize
    kernels = parse_kernels(source, exprs)
    flags = BASE_FLAGS + (SANITIZE_FLAGS if sanitize else OPT_FLAGS) + tuple(defines)
    wrapper = generate_wrapper(source, kernels, filename)
    key = hashlib.sha256(
        "\0".join(
            [GENERATOR_VERSION, wrapper, SHIM_HEADER.read_text(), " ".join(flags), _compiler_version(cxx)]
        ).encode()
    ).hexdigest()[:24]
    stem = re.sub(r"\W+", "_", Path(filename).stem)
    out_dir = cache_dir()
    so = out_dir / f"{stem}-{'asan-' if sanitize else ''}{key}.so"
    if so.is_file():
        try:
            os.utime(so)  # least-recently-used pruning
        except OSError:
            pass
        return so
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as tmp:
        cpp = Path(tmp) / f"{stem}.cpp"
        cpp.write_text(wrapper)
        tmp_so = Path(tmp) / so.name
        cmd = [cxx, *flags, str(cpp), "-o", str(tmp_so)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0 or res.stderr.strip():
            raise ShimError(
                f"g++ could not build {filename} through the CPU shim:\n$ {' '.join(cmd)}\n{res.stderr}"
            )
        os.replace(tmp_so, so)  # atomic: concurrent test runs may build the same key
    _prune(out_dir)
    return so


def _prune(out_dir: Path, keep: int = 200) -> None:
    """Delete the least recently built libraries beyond ``keep`` (the cache only grows otherwise)."""
    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    libs = sorted(out_dir.glob("*.so"), key=mtime)
    for old in libs[: max(0, len(libs) - keep)]:
        try:
            old.unlink()
        except OSError:
            pass


class ShimModule:
    """A kernel source built through the shim and loaded with ctypes."""

    def __init__(self, source: str, filename: str = "kernel.cu", *, sanitize: bool | None = None,
                 exprs: tuple[str, ...] | None = None, defines: tuple[str, ...] = ()) -> None:
        self.source = source
        self.filename = filename
        self.sanitize = sanitize_default() if sanitize is None else sanitize
        if self.sanitize and not asan_loaded():
            raise ShimError(
                "sanitized shim build requested but libasan is not loaded in this process: run python with "
                "LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0"
            )
        self.kernels = {k.name: k for k in parse_kernels(source, exprs)}
        self.path = build(source, filename, sanitize=self.sanitize, exprs=exprs, defines=defines)
        self.lib = ctypes.CDLL(str(self.path), mode=getattr(ctypes, "RTLD_LOCAL", 0))
        self._funcs = {}
        for k in self.kernels.values():
            fn = getattr(self.lib, k.symbol)
            fn.argtypes = [ctypes.c_uint] * 6 + [
                ctypes.c_void_p if p.pointer else p.ctype.ctype for p in k.params
            ]
            fn.restype = None
            self._funcs[k.name] = fn

    def kernel(self, name: str) -> Kernel:
        try:
            return self.kernels[name]
        except KeyError:
            raise KeyError(f"{self.filename} has no kernel {name!r} (has: {', '.join(self.kernels)})") from None

    def launch(self, name: str, grid: tuple[int, ...], block: tuple[int, ...], args: tuple) -> None:
        """Run kernel ``name`` over ``grid`` x ``block``; ``args`` are NumPy arrays (for pointers, of the exact
        dtype, C-contiguous) and NumPy scalars of the exact type (for by-value parameters)."""
        k = self.kernel(name)
        g = _dims(grid, "grid")
        b = _dims(block, "block")
        c_args = convert_args(k, args)
        self._funcs[name](*g, *b, *c_args)


def _dims(d: Any, what: str) -> tuple[int, int, int]:
    if isinstance(d, int | np.integer):
        d = (d,)
    if not isinstance(d, tuple) or not 1 <= len(d) <= 3:
        raise ShimArgumentError(f"{what} must be a tuple of 1 to 3 ints, got {d!r}")
    vals = [int(v) for v in d] + [1] * (3 - len(d))
    if any(v < 1 for v in vals):
        raise ShimArgumentError(f"{what} dimensions must be >= 1, got {d!r}")
    return vals[0], vals[1], vals[2]


def convert_args(k: Kernel, args: tuple) -> list[Any]:
    """Check ``args`` against the kernel's C signature and convert them for ctypes."""
    if not isinstance(args, tuple | list):
        raise ShimArgumentError(f"kernel args must be a tuple, got {type(args).__name__}")
    if len(args) != len(k.params):
        raise ShimArgumentError(
            f"kernel {k.signature} takes {len(k.params)} arguments, got {len(args)}"
        )
    out: list[Any] = []
    for i, (p, a) in enumerate(zip(k.params, args, strict=True)):
        where = f"kernel {k.name}: argument {i} ({p.describe()})"
        if p.pointer:
            if not isinstance(a, np.ndarray):
                raise ShimArgumentError(f"{where} needs an array of dtype {p.dtype}, got {type(a).__name__}")
            if a.dtype != p.dtype:
                raise ShimArgumentError(f"{where} needs dtype {p.dtype}, got an array of dtype {a.dtype}")
            if not a.flags.c_contiguous:
                raise ShimArgumentError(f"{where} needs a C-contiguous array (got strides {a.strides})")
            if not p.const and not a.flags.writeable:
                raise ShimArgumentError(f"{where} is written by the kernel but the array is read-only")
            out.append(a.ctypes.data)
        else:
            if not isinstance(a, np.generic):
                raise ShimArgumentError(
                    f"{where} needs a NumPy scalar np.{p.dtype.name}(...), got {type(a).__name__} {a!r} "
                    "(CuPy would pass a Python int as int64 and a float as float64, silently)"
                )
            if a.dtype != p.dtype:
                raise ShimArgumentError(f"{where} needs np.{p.dtype.name}, got np.{a.dtype.name}")
            out.append(a.item())
    return out


def load(source: str, filename: str = "kernel.cu", *, sanitize: bool | None = None,
         exprs: tuple[str, ...] | None = None, defines: tuple[str, ...] = ()) -> ShimModule:
    """Build (cached on disk) and load (cached per process) ``source``."""
    sanitize = sanitize_default() if sanitize is None else sanitize
    ident = "\0".join([source, filename, repr(exprs), repr(tuple(defines))])
    key = (hashlib.sha256(ident.encode()).hexdigest(), sanitize)
    with _BUILD_LOCK:
        mod = _MODULES.get(key)
        if mod is None:
            mod = ShimModule(source, filename, sanitize=sanitize, exprs=exprs, defines=tuple(defines))
            _MODULES[key] = mod
    return mod


def load_file(path: str | os.PathLike, *, sanitize: bool | None = None) -> ShimModule:
    path = Path(path)
    return load(path.read_text(), str(path), sanitize=sanitize)
