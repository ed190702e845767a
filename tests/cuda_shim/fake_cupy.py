"""A test-only stand-in for ``cupy``: NumPy underneath, CuPy's rules on top, kernels run through the CPU shim.

Install it as ``sys.modules["cupy"]`` (the ``fake_gpu`` fixture in tests/conftest.py does this) so that the
real GPU code path of voxelkit (transfers, kernel launches, grid/block sizes, dtypes, chunking) runs in CI.

What it enforces, as CuPy does:

* arrays are a proxy class (not an ndarray subclass) that refuses implicit conversion to NumPy
  (``np.asarray(x)`` raises ``TypeError``); explicit transfers are ``cupy.asarray`` / ``cupy.asnumpy`` /
  ``x.get()``; ``int()``/``float()``/``bool()``/``item()``/``tolist()`` copy to the host like CuPy's;
* mixing a NumPy array into a CuPy operation raises ``TypeError``;
* reductions and scalar indexing give 0-d arrays, not NumPy scalars;
* ``RawModule(code=..., options=<tuple>)``/``RawKernel(grid, block, args)``: grid and block are tuples of
  ints within CUDA's limits, every argument matches the kernel's C signature exactly (device array of the
  exact dtype for pointers; NumPy scalar of the exact type for values: a Python int or float raises, as
  CuPy would silently pass it as int64/float64), then the kernel runs through the CPU shim build of the
  same source;
* ``cupy.empty``/``empty_like`` are filled with a garbage byte pattern (``POISON_BYTE``), as GPU memory is
  not zeroed, so outputs a kernel forgets to write do not pass as zeros;
* ``cupy.linalg.solve``/``inv`` do not raise on singular matrices (CuPy's default ``linalg='ignore'``):
  they return NaN for those systems.

Only the functions listed below exist: anything else raises ``AttributeError`` naming it, so the set of
CuPy features voxelkit uses stays visible.  Add what the project needs to the lists (one line each).
"""

from __future__ import annotations

import hashlib
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from . import build

IMPLICIT_MSG = (
    "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array "
    "explicitly."
)
VERSION = "14.2.0+voxelkit-fake"
DEVICE_NAME = b"FakeGPU (CPU shim)"

# --------------------------------------------------------------------------------------------- lists
#: cupy.<name> -> numpy.<name>, called with device arrays only (NumPy arrays raise TypeError).
ARRAY_FUNCTIONS = """
all any allclose amax amin append argmax argmin argsort argwhere around array_equal atleast_1d atleast_2d
atleast_3d average bincount broadcast_arrays broadcast_to clip column_stack concatenate copy count_nonzero
cross cumprod cumsum diag diagonal diff dot dstack einsum expand_dims flatnonzero flip histogram hstack inner
isclose kron max mean median min moveaxis nanargmax nanargmin nancumsum nanmax nanmean nanmin
nanstd nansum nanvar nonzero outer percentile prod ptp quantile ravel repeat reshape roll rollaxis round
searchsorted sort squeeze stack std sum swapaxes take take_along_axis tensordot tile trace transpose trapezoid
tril triu unique unravel_index var vstack where
""".split()

#: cupy.<name> ufuncs (wrapped so that .reduce/.accumulate/.outer/.at work on device arrays too).
UFUNCS = """
abs absolute add arccos arcsin arctan arctan2 bitwise_and bitwise_not bitwise_or bitwise_xor cbrt ceil
conj copysign cos cosh deg2rad divide equal exp exp2 expm1 fabs floor floor_divide fmax fmin fmod greater
greater_equal hypot invert isfinite isinf isnan left_shift less less_equal log log10 log1p log2 logaddexp
logical_and logical_not logical_or logical_xor maximum minimum mod multiply negative nextafter not_equal
power rad2deg reciprocal remainder right_shift rint sign signbit sin sinh sqrt square subtract tan tanh
true_divide trunc
""".split()

#: cupy.<name> -> numpy.<name>, creation from host data or shapes (NumPy input allowed: host-to-device).
CREATION_FUNCTIONS = "arange empty eye full identity indices linspace logspace ones tri zeros".split()
LIKE_FUNCTIONS = "empty_like full_like ones_like zeros_like".split()

#: Plain re-exports (dtypes, constants, dtype helpers).
PASSTHROUGH = """
bool_ byte complex64 complex128 dtype e euler_gamma float16 float32 float64 floating generic inexact inf int8
int16 int32 int64 int_ integer intp nan newaxis number pi signedinteger ubyte uint uint8 uint16 uint32 uint64
uintp unsignedinteger finfo iinfo issubdtype promote_types can_cast ndindex
""".split()

LINALG_FUNCTIONS = "cholesky det eigh eigvalsh lstsq matrix_rank norm pinv qr slogdet svd".split()

NDIMAGE_FUNCTIONS = """
affine_transform binary_closing binary_dilation binary_erosion binary_fill_holes binary_opening convolve
convolve1d correlate correlate1d distance_transform_edt gaussian_filter gaussian_filter1d
generate_binary_structure label labeled_comprehension map_coordinates maximum maximum_filter mean median
median_filter minimum minimum_filter shift standard_deviation sum sum_labels uniform_filter uniform_filter1d
variance zoom
""".split()


# --------------------------------------------------------------------------------------------- arrays
def _unsupported(x: Any) -> TypeError:
    return TypeError(
        f"Unsupported type {type(x)} (fake cupy: a NumPy array reached a device operation; transfer it "
        "explicitly with be.asarray / cupy.asarray first)"
    )


def _unwrap(x: Any, strict: bool = True) -> Any:
    """Device proxies -> their NumPy arrays, recursively; NumPy arrays raise if ``strict``."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        if strict:
            raise _unsupported(x)
        return x
    if isinstance(x, tuple):
        return tuple(_unwrap(v, strict) for v in x)
    if isinstance(x, list):
        return [_unwrap(v, strict) for v in x]
    if isinstance(x, dict):
        return {k: _unwrap(v, strict) for k, v in x.items()}
    return x


def _wrap(x: Any) -> Any:
    """NumPy results -> device proxies (NumPy scalars become 0-d arrays, as CuPy returns)."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind in "OUSVM":
            raise TypeError(f"fake cupy: dtype {x.dtype} is not supported by CuPy")
        return ndarray._from_numpy(x)
    if isinstance(x, np.generic):
        return ndarray._from_numpy(np.asarray(x))
    if isinstance(x, tuple):
        items = [_wrap(v) for v in x]
        return type(x)(*items) if hasattr(x, "_fields") else tuple(items)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


class _MemPtr:
    def __init__(self, a: np.ndarray) -> None:
        self.ptr = int(a.ctypes.data)


class ndarray:  # noqa: N801 - the name CuPy uses
    """Device array stand-in: a NumPy array that must not leak to the host implicitly."""

    __slots__ = ("_a",)
    __array_priority__ = 100
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, shape: Any, dtype: Any = float, memptr: Any = None, strides: Any = None,
                 order: str = "C") -> None:
        if memptr is not None or strides is not None:
            raise NotImplementedError("fake cupy: ndarray(memptr=/strides=) is not supported")
        self._a = _poisoned(np.empty(shape, dtype=dtype, order=order))

    @classmethod
    def _from_numpy(cls, a: np.ndarray) -> ndarray:
        obj = object.__new__(cls)
        obj._a = a
        return obj

    # -- conversions (CuPy copies to the host for these) ------------------------------------------------
    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError(IMPLICIT_MSG)

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        fn = ufunc if method == "__call__" else getattr(ufunc, method)
        return _wrap(fn(*_unwrap(inputs), **_unwrap(kwargs)))

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        name = func.__name__
        mod = getattr(func, "__module__", "") or ""
        target: Any = linalg if "linalg" in mod else cupy
        try:
            impl = getattr(target, name)
        except AttributeError:
            raise TypeError(
                f"fake cupy: numpy.{name} was called on a device array; CuPy would dispatch it to "
                f"cupy.{name}, which the stand-in does not provide"
            ) from None
        return impl(*args, **kwargs)

    def get(self, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True) -> np.ndarray:
        _STATS["d2h"] += 1
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order, copy=True)

    def set(self, arr: Any, stream: Any = None) -> None:
        _STATS["h2d"] += 1
        if isinstance(arr, ndarray):
            raise TypeError("fake cupy: ndarray.set() takes a NumPy array")
        self._a[...] = np.asarray(arr)

    def item(self) -> Any:
        _STATS["d2h"] += 1
        return self._a.item()

    def tolist(self) -> Any:
        _STATS["d2h"] += 1
        return self._a.tolist()

    def __int__(self) -> int:
        _STATS["d2h"] += 1
        return int(self._a)

    def __float__(self) -> float:
        _STATS["d2h"] += 1
        return float(self._a)

    def __complex__(self) -> complex:
        _STATS["d2h"] += 1
        return complex(self._a)

    def __bool__(self) -> bool:
        _STATS["d2h"] += 1
        return bool(self._a)

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self) -> Any:
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self._a.shape[0]))

    def __repr__(self) -> str:
        return repr(self._a).replace("array(", "array(", 1) + "  # fake cupy"

    def __str__(self) -> str:
        return str(self._a)

    def __format__(self, spec: str) -> str:
        return format(self._a, spec)

    def __copy__(self) -> ndarray:
        return self.copy()

    def __deepcopy__(self, memo: Any) -> ndarray:
        return self.copy()

    # -- attributes -----------------------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: _wrap(self._a.T))
    real = property(lambda self: _wrap(self._a.real))
    imag = property(lambda self: _wrap(self._a.imag))
    data = property(lambda self: _MemPtr(self._a))
    device = property(lambda self: cuda.Device(0))

    @property
    def mT(self) -> ndarray:  # noqa: N802 - NumPy's name
        return _wrap(np.swapaxes(self._a, -1, -2))

    # -- indexing -------------------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        return _wrap(self._a[_unwrap(key)])

    def __setitem__(self, key: Any, value: Any) -> None:
        self._a[_unwrap(key)] = _unwrap(value)


def _method(name: str) -> Any:
    def method(self: ndarray, *args: Any, **kwargs: Any) -> Any:
        return _wrap(getattr(self._a, name)(*_unwrap(args), **_unwrap(kwargs)))

    method.__name__ = name
    return method


for _name in """
all any argmax argmin argsort astype clip conj copy cumprod cumsum diagonal dot fill flatten max mean min
nonzero prod ptp ravel repeat reshape round searchsorted sort squeeze std sum swapaxes take trace transpose
var view
""".split():
    if _name == "ptp":
        continue
    setattr(ndarray, _name, _method(_name))


def _binary(name: str, reflected: bool = False, inplace: bool = False) -> Any:
    np_name = f"__{name}__"

    def op(self: ndarray, other: Any) -> Any:
        if isinstance(other, np.ndarray):
            raise _unsupported(other)
        if not isinstance(other, ndarray | np.generic | int | float | complex | bool):
            return NotImplemented
        o = _unwrap(other)
        if inplace:
            getattr(self._a, f"__i{name}__")(o)
            return self
        if reflected:
            return _wrap(getattr(self._a, f"__r{name}__")(o))
        return _wrap(getattr(self._a, np_name)(o))

    return op


for _name in "add sub mul truediv floordiv mod pow matmul and or xor lshift rshift".split():
    setattr(ndarray, f"__{_name}__", _binary(_name))
    setattr(ndarray, f"__r{_name}__", _binary(_name, reflected=True))
    setattr(ndarray, f"__i{_name}__", _binary(_name, inplace=True))
for _name in "lt le eq ne gt ge".split():
    setattr(ndarray, f"__{_name}__", _binary(_name))
for _name in "neg pos abs invert".split():
    setattr(ndarray, f"__{_name}__", (lambda n: lambda self: _wrap(getattr(self._a, f"__{n}__")()))(_name))


# --------------------------------------------------------------------------------------------- module
class _StrictModule(types.ModuleType):
    """A module whose missing attributes fail loudly, naming what the stand-in lacks."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"fake cupy: {self.__name__}.{name} is not provided by the test stand-in "
            f"(tests/cuda_shim/fake_cupy.py); add it to the lists there if voxelkit really needs it"
        )


_STATS: Counter = Counter()


def _array_function(name: str, fn: Any) -> Any:
    def f(*args: Any, **kwargs: Any) -> Any:
        return _wrap(fn(*_unwrap(args), **_unwrap(kwargs)))

    f.__name__ = name
    f.__doc__ = f"fake cupy.{name} (numpy.{name} on device arrays)"
    return f


class ufunc:  # noqa: N801
    def __init__(self, np_ufunc: Any) -> None:
        self._u = np_ufunc
        self.__name__ = np_ufunc.__name__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _wrap(self._u(*_unwrap(args), **_unwrap(kwargs)))

    def __getattr__(self, name: str) -> Any:
        if name not in ("reduce", "accumulate", "outer", "at", "reduceat", "nin", "nout", "nargs", "types"):
            raise AttributeError(name)
        attr = getattr(self._u, name)
        if not callable(attr):
            return attr
        return lambda *a, **k: _wrap(attr(*_unwrap(a), **_unwrap(k)))


def _host_to_device(a: Any, dtype: Any = None, copy: bool = True, order: Any = None) -> ndarray:
    if isinstance(a, ndarray):
        if dtype is None or np.dtype(dtype) == a.dtype:
            return a.copy() if copy else a
        return _wrap(a._a.astype(dtype))
    _STATS["h2d"] += 1
    host = _unwrap(a, strict=False)
    return _wrap(np.array(host, dtype=dtype, copy=True, order=order or "K"))


def asarray(a: Any, dtype: Any = None, order: Any = None, *, blocking: bool = False) -> ndarray:
    """Host data -> device array (always a copy, as a real transfer is); device arrays pass through."""
    return _host_to_device(a, dtype, copy=False, order=order)


def array(obj: Any, dtype: Any = None, copy: bool = True, order: str = "K", subok: bool = False,
          ndmin: int = 0, *, blocking: bool = False) -> ndarray:
    out = _host_to_device(obj, dtype, copy=copy, order=order)
    while out.ndim < ndmin:
        out = out[None]
    return out


def ascontiguousarray(a: Any, dtype: Any = None) -> ndarray:
    if not isinstance(a, ndarray):
        raise _unsupported(a)
    return _wrap(np.ascontiguousarray(a._a, dtype=dtype))


def asnumpy(a: Any, stream: Any = None, order: str = "C", out: Any = None, *, blocking: bool = True) -> Any:
    """Device array -> NumPy copy; NumPy input is returned as is (as CuPy does)."""
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return np.asarray(a, order=order)


def get_array_module(*args: Any) -> Any:
    return cupy if any(isinstance(a, ndarray) for a in args) else np


#: Byte that fills ``cupy.empty``/``empty_like`` arrays (GPU memory is not zeroed): float32 -4.3e8,
#: float64 -6.3e66, int32 -842150451, uint8 205.  A kernel that leaves outputs unwritten shows up.
POISON_BYTE = 0xCD


def _poisoned(a: np.ndarray) -> np.ndarray:
    if a.size:
        a.view(np.uint8).reshape(-1)[...] = POISON_BYTE if a.flags.c_contiguous or a.flags.f_contiguous else 0
    return a


def _creation(name: str) -> Any:
    fn = getattr(np, name)
    poison = name in ("empty", "empty_like")

    def f(*args: Any, **kwargs: Any) -> ndarray:
        out = fn(*_unwrap(args), **_unwrap(kwargs))
        return _wrap(_poisoned(out) if poison else out)

    f.__name__ = name
    return f


# -- linalg: CuPy's default is linalg='ignore': singular systems give NaN instead of raising LinAlgError.
def _nan_on_singular(fn: Any, a: np.ndarray, *rest: np.ndarray) -> np.ndarray:
    try:
        return fn(a, *rest)
    except np.linalg.LinAlgError:
        if a.ndim == 2:
            shape = fn(np.eye(a.shape[-1], dtype=a.dtype), *rest).shape
            return np.full(shape, np.nan, dtype=np.result_type(a, *rest, np.float32))
        def item(r: np.ndarray, i: int) -> np.ndarray:
            return r[i] if r.ndim >= a.ndim - 1 and r.shape[0] == a.shape[0] else r

        return np.stack([_nan_on_singular(fn, a[i], *(item(r, i) for r in rest)) for i in range(a.shape[0])])


def _solve(a: Any, b: Any) -> ndarray:
    return _wrap(_nan_on_singular(np.linalg.solve, _unwrap(a), _unwrap(b)))


def _inv(a: Any) -> ndarray:
    return _wrap(_nan_on_singular(np.linalg.inv, _unwrap(a)))


# --------------------------------------------------------------------------------------------- CUDA
class CUDARuntimeError(RuntimeError):
    pass


class CUDADriverError(RuntimeError):
    pass


class _DeviceProps(dict):
    pass


_MEMORY = {"total": 16 * 1024**3, "free": 15 * 1024**3}


class Device:
    def __init__(self, device: int | None = None) -> None:
        self.id = 0 if device is None else int(device)
        if self.id != 0:
            raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")

    @property
    def mem_info(self) -> tuple[int, int]:
        return int(_MEMORY["free"]), int(_MEMORY["total"])

    compute_capability = "86"

    def synchronize(self) -> None:
        return None

    def use(self) -> Device:
        return self

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def __int__(self) -> int:
        return self.id

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id} (fake)>"


def _device_properties(device: int = 0) -> dict:
    Device(device)
    return _DeviceProps(
        name=DEVICE_NAME, totalGlobalMem=_MEMORY["total"], major=8, minor=6, multiProcessorCount=2,
        maxThreadsPerBlock=1024, warpSize=32, maxThreadsDim=(1024, 1024, 64),
        maxGridSize=(2**31 - 1, 65535, 65535),
    )


class _MemoryPool:
    def free_all_blocks(self, stream: Any = None) -> None:
        return None

    def used_bytes(self) -> int:
        return 0

    def total_bytes(self) -> int:
        return 0

    def set_limit(self, size: Any = None, fraction: Any = None) -> None:
        return None

    def get_limit(self) -> int:
        return 0


_POOL = _MemoryPool()
_PINNED_POOL = _MemoryPool()

MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)


def _check_dims(d: Any, what: str, limits: tuple[int, int, int]) -> tuple[int, ...]:
    if not isinstance(d, tuple):
        raise TypeError(f"{what} must be a tuple (CuPy's RawKernel takes `tuple {what}`), got {type(d).__name__}")
    if not 1 <= len(d) <= 3:
        raise ValueError(f"{what} must have 1 to 3 dimensions, got {d!r}")
    out = []
    for v in d:
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise TypeError(f"{what} entries must be ints, got {type(v).__name__} in {d!r}")
        out.append(int(v))
    for v, lim in zip(out, limits, strict=False):
        if not 1 <= v <= lim:
            raise ValueError(f"invalid {what} {d!r}: each dimension must be in 1..{lim} (CUDA launch limit)")
    return tuple(out)


class RawKernel:
    """A kernel of a :class:`RawModule`; calling it runs the CPU shim build after strict argument checks."""

    def __init__(self, module: RawModule, name: str, kernel: build.Kernel) -> None:
        self.module = module
        self.name = self.__name__ = name
        self.kernel_sig = kernel

    @property
    def attributes(self) -> dict:
        return {"max_threads_per_block": 1024, "num_regs": 32, "shared_size_bytes": 0}

    @property
    def max_threads_per_block(self) -> int:
        return 1024

    def __call__(self, grid: Any, block: Any, args: Any, *, shared_mem: int = 0, stream: Any = None,
                 **kwargs: Any) -> None:
        g = _check_dims(grid, "grid", MAX_GRID)
        b = _check_dims(block, "block", MAX_BLOCK)
        threads = int(np.prod(b))
        if threads > 1024:
            raise ValueError(f"invalid block {block!r}: {threads} threads per block (max 1024)")
        if shared_mem:
            raise ValueError("voxelkit kernels use no shared memory, but shared_mem was given")
        if kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
        if not isinstance(args, tuple | list):
            raise TypeError(f"args must be a tuple, got {type(args).__name__}")
        k = self.kernel_sig
        if len(args) != len(k.params):
            raise TypeError(f"kernel {k.signature} takes {len(k.params)} arguments, got {len(args)}")
        host_args = []
        for i, (p, a) in enumerate(zip(k.params, args, strict=True)):
            where = f"kernel {k.name}: argument {i} ({p.describe()})"
            if p.pointer:
                if isinstance(a, np.ndarray):
                    raise TypeError(f"{where}: got a host NumPy array; transfer it with be.asarray first")
                if not isinstance(a, ndarray):
                    raise TypeError(f"{where} needs a device array of dtype {p.dtype}, got {type(a).__name__}")
                host_args.append(a._a)
            else:
                if isinstance(a, ndarray):
                    raise TypeError(
                        f"{where}: got a device array where the kernel takes a value (CuPy would pass its "
                        f"pointer); pass np.{p.dtype.name}(...)"
                    )
                host_args.append(a)
        LAUNCHES.append((k.name, g, b))
        _STATS["launches"] += 1
        self.module._shim().launch(k.name, g, b, tuple(host_args))


def _filename_for(code: str) -> str:
    """The kernels/*.cu file whose text is ``code`` (for readable sanitizer reports), else a hash name."""
    try:
        from voxelkit.backend import kernel_dir  # noqa: PLC0415

        for path in sorted(Path(kernel_dir()).glob("*.cu")):
            if path.read_text() == code:
                return str(path)
    except Exception:  # noqa: BLE001 - only a nicer file name is at stake
        pass
    return f"rawmodule_{hashlib.sha1(code.encode()).hexdigest()[:10]}.cu"


class RawModule:
    """``cupy.RawModule(code=..., options=(...), name_expressions=...)`` running through the CPU shim."""

    def __init__(self, *, code: str | None = None, path: str | None = None, options: tuple = (),
                 backend: str = "nvrtc", translate_cucomplex: bool = False,
                 enable_cooperative_groups: bool = False, name_expressions: Any = None,
                 jitify: bool = False) -> None:
        if path is not None or code is None:
            raise NotImplementedError("fake cupy: only RawModule(code=...) is supported")
        if not isinstance(code, str):
            raise TypeError(f"code must be str, got {type(code).__name__}")
        if not isinstance(options, tuple):
            raise TypeError(f"options must be a tuple (CuPy declares `tuple options`), got {type(options).__name__}")
        if backend != "nvrtc" or jitify or enable_cooperative_groups or translate_cucomplex:
            raise NotImplementedError("fake cupy: RawModule supports backend='nvrtc' without jitify/coop groups")
        for o in options:
            if not isinstance(o, str):
                raise TypeError(f"compiler options must be str, got {o!r}")
        self.code = code
        self.options = options
        self.name_expressions = tuple(name_expressions) if name_expressions is not None else None
        self._mod: build.ShimModule | None = None

    def _shim(self) -> build.ShimModule:
        if self._mod is None:
            self._mod = build.load(self.code, _filename_for(self.code), exprs=self.name_expressions or (),
                                   defines=build.defines_from_options(self.options))
        return self._mod

    def compile(self, log_stream: Any = None) -> None:
        self._shim()

    def get_function(self, name: str) -> RawKernel:
        mod = self._shim()
        k = mod.kernels.get(name)
        if k is None or (not k.extern_c and name not in (self.name_expressions or ())):
            raise CUDADriverError("CUDA_ERROR_NOT_FOUND: named symbol not found"
                                  f" ({name!r}; extern \"C\" kernels here: "
                                  f"{', '.join(n for n, kk in mod.kernels.items() if kk.extern_c)})")
        return RawKernel(self, name, k)


#: (kernel name, grid, block) of every launch since the stand-in was created (tests may inspect/clear it).
LAUNCHES: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []


# --------------------------------------------------------------------------------------------- assembly
def _make_modules() -> dict[str, types.ModuleType]:
    cp = _StrictModule("cupy", "Test-only CuPy stand-in (tests/cuda_shim/fake_cupy.py)")
    cp.__file__ = __file__
    cp.__version__ = VERSION
    cp.ndarray = ndarray
    cp.ufunc = ufunc
    for n in ARRAY_FUNCTIONS:
        if hasattr(np, n):
            setattr(cp, n, _array_function(n, getattr(np, n)))
    for n in UFUNCS:
        if hasattr(np, n):
            setattr(cp, n, ufunc(getattr(np, n)))
    for n in CREATION_FUNCTIONS + LIKE_FUNCTIONS:
        setattr(cp, n, _creation(n))
    for n in PASSTHROUGH:
        if hasattr(np, n):
            setattr(cp, n, getattr(np, n))
    cp.result_type = lambda *a: np.result_type(*_unwrap(a))
    cp.asarray = asarray
    cp.array = array
    cp.ascontiguousarray = ascontiguousarray
    cp.asnumpy = asnumpy
    cp.get_array_module = get_array_module
    cp.RawModule = RawModule
    cp.get_default_memory_pool = lambda: _POOL
    cp.get_default_pinned_memory_pool = lambda: _PINNED_POOL
    cp.is_available = lambda: True

    la = _StrictModule("cupy.linalg")
    for n in LINALG_FUNCTIONS:
        setattr(la, n, _array_function(n, getattr(np.linalg, n)))
    la.solve = _solve
    la.inv = _inv
    la.LinAlgError = np.linalg.LinAlgError
    cp.linalg = la

    cu = _StrictModule("cupy.cuda")
    rt = _StrictModule("cupy.cuda.runtime")
    rt.getDeviceCount = lambda: 1
    rt.getDevice = lambda: 0
    rt.getDeviceProperties = _device_properties
    rt.deviceSynchronize = lambda: None
    rt.runtimeGetVersion = lambda: 12090
    rt.driverGetVersion = lambda: 12090
    rt.memGetInfo = lambda: Device(0).mem_info
    rt.CUDARuntimeError = CUDARuntimeError
    rt.is_hip = False
    drv = _StrictModule("cupy.cuda.driver")
    drv.CUDADriverError = CUDADriverError
    cu.runtime = rt
    cu.driver = drv
    cu.Device = Device
    cu.is_available = lambda: True
    cu.get_device_id = lambda: 0
    cu.Stream = _Stream
    cu.get_current_stream = lambda: _Stream()
    cu.MemoryPool = _MemoryPool
    cp.cuda = cu

    cx = _StrictModule("cupyx", "Test-only cupyx stand-in")
    sc = _StrictModule("cupyx.scipy")
    nd = _StrictModule("cupyx.scipy.ndimage")
    import scipy.ndimage  # noqa: PLC0415

    for n in NDIMAGE_FUNCTIONS:
        setattr(nd, n, _array_function(n, getattr(scipy.ndimage, n)))
    sc.ndimage = nd
    cx.scipy = sc
    return {
        "cupy": cp, "cupy.linalg": la, "cupy.cuda": cu, "cupy.cuda.runtime": rt, "cupy.cuda.driver": drv,
        "cupyx": cx, "cupyx.scipy": sc, "cupyx.scipy.ndimage": nd,
    }


class _Stream:
    null = None

    def __init__(self, *a: Any, **k: Any) -> None:
        pass

    def synchronize(self) -> None:
        return None

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


MODULES = _make_modules()
cupy = MODULES["cupy"]
linalg = MODULES["cupy.linalg"]
cuda = MODULES["cupy.cuda"]


def stats() -> Counter:
    """Counts of host-to-device (``h2d``) and device-to-host (``d2h``) transfers and kernel ``launches``."""
    return _STATS


def reset_stats(total_memory: int | None = None, free_memory: int | None = None) -> None:
    """Clear the counters and the launch log; optionally set the memory ``Device(0).mem_info`` reports."""
    _STATS.clear()
    LAUNCHES.clear()
    _MEMORY["total"] = 16 * 1024**3 if total_memory is None else int(total_memory)
    _MEMORY["free"] = (_MEMORY["total"] * 15 // 16) if free_memory is None else int(free_memory)


def install(monkeypatch: Any = None) -> types.ModuleType:
    """Put the stand-in into ``sys.modules`` (through ``monkeypatch`` if given, so it is undone)."""
    reset_stats()
    for name, mod in MODULES.items():
        if monkeypatch is not None:
            monkeypatch.setitem(sys.modules, name, mod)
        else:
            sys.modules[name] = mod
    return cupy
