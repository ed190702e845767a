"""Self-tests of the kernel verification tools (tests/cuda_shim/): CPU shim, argument checks, CuPy stand-in,
sanitizer build.  They use the test-only kernels in tests/cuda_shim/selftest.cu."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from cuda_shim import SELFTEST_CU, build, fake_cupy, require_kernel_tools, sanitizer_env, selftest_source

pytestmark = pytest.mark.kernels

EDGE_SIZES = [1, 7, 255, 256, 1000, 200_003]  # one item, < one block, block +- 1, not a multiple, large
BLOCK = 256


@pytest.fixture(scope="module")
def shim() -> build.ShimModule:
    require_kernel_tools(nvrtc=False, gxx=True)
    return build.load(selftest_source(), str(SELFTEST_CU))


def blocks(n: int, block: int = BLOCK) -> tuple[int]:
    return ((n + block - 1) // block,)


# ------------------------------------------------------------------------------------------ parsing
def test_parse_signatures() -> None:
    ks = {k.name: k for k in build.parse_kernels(selftest_source())}
    assert {"saxpy", "coverage", "grid_stride_sum", "histogram", "index3d", "unguarded_fill"} <= set(ks)
    assert all(k.extern_c for k in ks.values())
    sig = [(p.name, p.ctype.name, p.pointer, p.const) for p in ks["saxpy"].params]
    assert sig == [("y", "float", True, False), ("x", "float", True, True), ("a", "float", False, True),
                   ("n", "int", False, True)]
    h = ks["histogram"].params
    assert h[0].dtype == np.uint8 and h[0].pointer and h[2].dtype == np.int32
    assert ks["grid_stride_sum"].params[3].dtype == np.int64
    # the device helper is not a kernel
    assert "logistic" not in ks


def test_parse_linkage_and_launch_bounds() -> None:
    src = textwrap.dedent("""
        /* extern "C" __global__ void commented_out(int* x) { } */
        extern "C" {
        __global__ void __launch_bounds__(256) a(int* x, unsigned int n) { }
        __global__ void b(const uint8_t* __restrict__ m, long long k) { }
        }
        __global__ void c(float x[]) { }
        extern "C" __global__ __launch_bounds__(128, 2) void d(bool flag, double* __restrict__ out) { }
    """)
    ks = {k.name: k for k in build.parse_kernels(src)}
    assert list(ks) == ["a", "b", "c", "d"]
    assert [ks[n].extern_c for n in "abcd"] == [True, True, False, True]
    assert [p.dtype for p in ks["a"].params] == [np.int32, np.uint32]
    assert [p.dtype for p in ks["b"].params] == [np.uint8, np.int64]
    assert ks["c"].params[0].pointer and ks["d"].params[0].dtype == np.bool_


def test_parse_rejects_unsupported_parameters() -> None:
    with pytest.raises(build.ShimError, match="pointers to pointers"):
        build.parse_kernels('extern "C" __global__ void k(float** p) { }')
    with pytest.raises(build.ShimError, match="not supported"):
        build.parse_kernels('extern "C" __global__ void k(float2* p) { }')


def test_name_expressions_split_on_top_level_commas() -> None:
    src = "// voxelkit-name-expressions: a<float>, b<float, 3>\n// voxelkit-name-expressions: c<double>\n"
    assert build.name_expressions(src) == ("a<float>", "b<float, 3>", "c<double>")


# ------------------------------------------------------------------------------------------ launch loop
@pytest.mark.parametrize("n", EDGE_SIZES)
def test_saxpy_matches_numpy(shim: build.ShimModule, n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(np.float32)
    y = rng.standard_normal(n).astype(np.float32)
    expected = (np.float64(2.5) * x + y).astype(np.float32)
    shim.launch("saxpy", blocks(n), (BLOCK,), (y, x, np.float32(2.5), np.int32(n)))
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("n", "block"), [(n, b) for b in (1, 32, 100, 1024) for n in EDGE_SIZES if not (b == 1 and n > 10_000)]
)
def test_every_item_handled_exactly_once(shim: build.ShimModule, n: int, block: int) -> None:
    out = np.zeros(n + 5, dtype=np.int32)  # the 5 extra items must stay untouched (guard works)
    shim.launch("coverage", blocks(n, block), (block,), (out, np.int32(n)))
    assert (out[:n] == 1).all(), np.flatnonzero(out[:n] != 1)[:10]
    assert (out[n:] == 0).all()


@pytest.mark.parametrize(("n", "grid", "block"), [(1, 1, 32), (10_001, 3, 64), (5, 4, 256), (300_000, 7, 128)])
def test_grid_stride_loop(shim: build.ShimModule, n: int, grid: int, block: int) -> None:
    x = np.random.default_rng(0).random(n)
    total = np.zeros(1)
    visits = np.zeros(n, dtype=np.int32)
    shim.launch("grid_stride_sum", (grid,), (block,), (x, total, visits, np.int64(n)))
    assert (visits == 1).all()
    np.testing.assert_allclose(total[0], x.sum(), rtol=1e-12)


def test_atomics_histogram(shim: build.ShimModule) -> None:
    n, nbins = 100_000, 7
    rng = np.random.default_rng(1)
    labels = rng.integers(0, nbins + 2, n).astype(np.uint8)  # some labels out of range: skipped
    w = rng.random(n).astype(np.float32)
    counts = np.zeros(nbins, dtype=np.int32)
    sums = np.zeros(nbins, dtype=np.float32)
    maxidx = np.full(nbins, -1, dtype=np.int32)
    shim.launch("histogram", blocks(n), (BLOCK,),
                (labels, w, counts, sums, maxidx, np.int32(n), np.int32(nbins)))
    ok = labels < nbins
    np.testing.assert_array_equal(counts, np.bincount(labels[ok], minlength=nbins))
    np.testing.assert_allclose(sums, np.bincount(labels[ok], weights=w[ok], minlength=nbins), rtol=1e-3)
    expected_max = [np.flatnonzero(labels == b).max() for b in range(nbins)]
    np.testing.assert_array_equal(maxidx, expected_max)


def test_other_atomics(shim: build.ShimModule) -> None:
    n = 50_001
    v = np.random.default_rng(2).integers(-10**6, 10**6, n).astype(np.int32)
    minmax = np.array([np.iinfo(np.int32).max, np.iinfo(np.int32).min], dtype=np.int32)
    owner = np.full(8, -1, dtype=np.int32)
    last = np.full(1, -1.0, dtype=np.float32)
    count = np.zeros(1, dtype=np.uint64)
    dsum = np.zeros(1)
    shim.launch("atomics_misc", blocks(n), (BLOCK,), (v, minmax, owner, last, count, dsum, np.int32(n)))
    assert minmax.tolist() == [v.min(), v.max()]
    for slot in range(8):  # exactly one claimant per slot, and it has that slot
        assert owner[slot] >= 0 and (v[owner[slot]] & 7) == slot
    assert 0 <= last[0] < n and count[0] == n
    assert dsum[0] == v.astype(np.float64).sum()  # integers: exact in double


def test_3d_launch(shim: build.ShimModule) -> None:
    nx, ny, nz = 37, 5, 3
    out = np.full(nx * ny * nz, -1, dtype=np.int32)
    block = (16, 4, 2)
    grid = tuple((s + b - 1) // b for s, b in zip((nx, ny, nz), block, strict=True))
    shim.launch("index3d", grid, block, (out, np.int32(nx), np.int32(ny), np.int32(nz)))
    np.testing.assert_array_equal(out, np.arange(out.size))


def test_intrinsics_map_to_libm(shim: build.ShimModule) -> None:
    x = np.linspace(-1.5, 1.5, 301).astype(np.float32)
    out = np.zeros(5 * x.size, dtype=np.float32)
    outd = np.zeros(x.size)
    shim.launch("intrinsics", blocks(x.size), (BLOCK,), (x, out, outd, np.int32(x.size)))
    out = out.reshape(-1, 5)
    # GPU fast-math intrinsics have ~2 ulp (+ flush-to-zero) errors; libm is tighter; 1e-5 covers both.
    np.testing.assert_allclose(out[:, 0], np.exp(x), rtol=1e-5)
    np.testing.assert_allclose(out[:, 1], np.log(x + 2), rtol=1e-5)
    np.testing.assert_allclose(out[:, 2], x / 3, rtol=1e-6)
    np.testing.assert_allclose(out[:, 3], 1 / np.sqrt(x + 2), rtol=1e-6)
    np.testing.assert_allclose(out[:, 4], np.clip(x, -1, 1))
    np.testing.assert_allclose(outd, 1 / (1 + np.exp(-x.astype(np.float64))), rtol=1e-14)


# ------------------------------------------------------------------------------------------ argument checks
def test_python_int_for_int_parameter_raises(shim: build.ShimModule) -> None:
    y = np.zeros(4, np.float32)
    with pytest.raises(build.ShimArgumentError, match=r"argument 3 \(const int n\).*NumPy scalar"):
        shim.launch("saxpy", (1,), (32,), (y, y.copy(), np.float32(1), 4))
    with pytest.raises(build.ShimArgumentError, match="argument 2"):
        shim.launch("saxpy", (1,), (32,), (y, y.copy(), 1.0, np.int32(4)))
    with pytest.raises(build.ShimArgumentError, match="needs np.int32, got np.int64"):
        shim.launch("saxpy", (1,), (32,), (y, y.copy(), np.float32(1), np.int64(4)))


def test_float64_array_for_float_pointer_raises(shim: build.ShimModule) -> None:
    y = np.zeros(4, np.float32)
    with pytest.raises(build.ShimArgumentError, match="needs dtype float32, got an array of dtype float64"):
        shim.launch("saxpy", (1,), (32,), (y, np.zeros(4), np.float32(1), np.int32(4)))
    with pytest.raises(build.ShimArgumentError, match="C-contiguous"):
        shim.launch("saxpy", (1,), (32,), (y, np.zeros(8, np.float32)[::2], np.float32(1), np.int32(4)))
    with pytest.raises(build.ShimArgumentError, match="takes 4 arguments, got 3"):
        shim.launch("saxpy", (1,), (32,), (y, y, np.float32(1)))


# ------------------------------------------------------------------------------------------ forbidden constructs
@pytest.mark.parametrize(
    ("body", "what"),
    [
        ("__shared__ float s[32]; s[threadIdx.x] = x[0]; x[0] = s[0];", "__shared__"),
        ("x[0] = 1.0f; __syncthreads();", "__syncthreads"),
        ("x[0] = __shfl_down_sync(0xffffffffu, x[0], 1);", "__shfl_down_sync"),
        ("x[0] = (float)__ballot_sync(0xffffffffu, x[0] > 0.0f);", "__ballot_sync"),
    ],
)
def test_forbidden_constructs_do_not_build(body: str, what: str) -> None:
    require_kernel_tools(nvrtc=False, gxx=True)
    src = f'extern "C" __global__ void k(float* x) {{ {body} }}\n'
    with pytest.raises(build.ShimError, match=rf"{what}.*not allowed in voxelkit kernels"):
        build.build(src, f"forbidden_{what.strip('_')}.cu")


def test_template_kernel_through_name_expressions() -> None:
    require_kernel_tools(nvrtc=False, gxx=True)
    src = textwrap.dedent("""
        // voxelkit-name-expressions: scale<float>, scale<double>
        template <typename T>
        __global__ void scale(T* x, const T a, const int n) {
            const int i = blockIdx.x * blockDim.x + threadIdx.x;
            if (i >= n) return;
            x[i] *= a;
        }
    """)
    mod = build.load(src, "template_selftest.cu")
    assert set(mod.kernels) == {"scale<float>", "scale<double>"}
    xf, xd = np.arange(5, dtype=np.float32), np.arange(5, dtype=np.float64)
    mod.launch("scale<float>", (1,), (8,), (xf, np.float32(2), np.int32(5)))
    mod.launch("scale<double>", (1,), (8,), (xd, np.float64(3), np.int32(5)))
    np.testing.assert_array_equal(xf, 2 * np.arange(5))
    np.testing.assert_array_equal(xd, 3 * np.arange(5))
    with pytest.raises(build.ShimArgumentError, match="float32"):
        mod.launch("scale<float>", (1,), (8,), (xd, np.float32(2), np.int32(5)))


# ------------------------------------------------------------------------------------------ CuPy stand-in
def test_standin_refuses_implicit_host_conversion() -> None:
    cp = fake_cupy.cupy
    a = cp.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert not isinstance(a, np.ndarray)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(a)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.array(a)
    with pytest.raises(TypeError, match="Unsupported type"):
        a + np.ones(3, dtype=np.float32)  # device + host array
    with pytest.raises(TypeError, match="Unsupported type"):
        np.ones(3, dtype=np.float32) + a
    with pytest.raises(TypeError, match="Unsupported type"):
        cp.concatenate([a, np.zeros((1, 3), np.float32)])
    with pytest.raises(TypeError):
        float(a)  # more than one element: NumPy's rule, as cupy's float() copies to the host
    # explicit transfers and 0-d conversions are fine (as in CuPy)
    total = cp.sum(a)
    assert isinstance(total, fake_cupy.ndarray) and total.ndim == 0
    assert float(total) == 15.0 and int(a[1, 2]) == 5 and bool(a[0, 1])
    assert a.tolist() == [[0, 1, 2], [3, 4, 5]]
    host = cp.asnumpy(a * 2 + 1)
    assert isinstance(host, np.ndarray) and host.dtype == np.float32
    np.testing.assert_array_equal(host, np.arange(6).reshape(2, 3) * 2 + 1)


def test_standin_transfers_copy() -> None:
    cp = fake_cupy.cupy
    host = np.zeros(3, np.float32)
    dev = cp.asarray(host)
    dev[0] = 7
    assert host[0] == 0  # asarray is a host-to-device copy
    assert cp.asarray(dev) is dev
    back = cp.asnumpy(dev)
    back[1] = 9
    assert float(dev[1]) == 0


def test_standin_empty_is_not_zeroed() -> None:
    cp = fake_cupy.cupy
    for dtype in (np.float32, np.float64, np.int32, np.uint8):
        e = cp.asnumpy(cp.empty((3, 4), dtype=dtype))
        assert (e != 0).all() and (e == e.flat[0]).all(), dtype
    assert (cp.asnumpy(cp.empty_like(cp.zeros(5))) != 0).all()
    assert (cp.asnumpy(cp.zeros(5)) == 0).all()


def test_standin_missing_features_fail_loudly() -> None:
    cp = fake_cupy.cupy
    with pytest.raises(AttributeError, match=r"cupy\.fft is not provided by the test stand-in"):
        cp.fft  # noqa: B018
    with pytest.raises(AttributeError, match=r"cupy\.linalg\.eig is not provided"):
        cp.linalg.eig  # noqa: B018
    with pytest.raises(TypeError, match=r"numpy\.isin was called on a device array"):
        np.isin(cp.zeros(4), cp.zeros(2))
    assert cp.get_array_module(cp.zeros(1)) is cp
    assert cp.get_array_module(np.zeros(1)) is np
    x = cp.ones((3, 3))
    assert isinstance(np.sum(x), fake_cupy.ndarray)  # NEP-18 dispatch, as CuPy does


def test_standin_linalg_singular_gives_nan() -> None:
    cp = fake_cupy.cupy
    a = cp.asarray(np.stack([np.eye(2), np.zeros((2, 2))]))
    b = cp.asarray(np.ones((2, 2)))
    x = cp.asnumpy(cp.linalg.solve(a, b))
    np.testing.assert_array_equal(x[0], [1, 1])
    assert np.isnan(x[1]).all()


def test_standin_ndimage() -> None:
    nd = fake_cupy.MODULES["cupyx.scipy.ndimage"]
    img = fake_cupy.cupy.asarray(np.array([[1, 0, 1], [1, 0, 0]], dtype=np.uint8))
    labels, n = nd.label(img)
    assert n == 2 and isinstance(labels, fake_cupy.ndarray)


def test_rawkernel_checks_arguments() -> None:
    require_kernel_tools(nvrtc=False, gxx=True)
    cp = fake_cupy.cupy
    kern = cp.RawModule(code=selftest_source(), options=("--std=c++14",)).get_function("saxpy")
    n = 300
    x = cp.asarray(np.arange(n, dtype=np.float32))
    y = cp.zeros(n, dtype=cp.float32)
    kern(((n + 127) // 128,), (128,), (y, x, np.float32(2), np.int32(n)))
    np.testing.assert_array_equal(cp.asnumpy(y), 2 * np.arange(n))
    with pytest.raises(TypeError, match=r"argument 3 \(const int n\).*Python int|NumPy scalar"):
        kern((3,), (128,), (y, x, np.float32(2), n))
    with pytest.raises(TypeError, match="dtype float32, got an array of dtype float64"):
        kern((3,), (128,), (y, cp.asarray(np.arange(n, dtype=np.float64)), np.float32(2), np.int32(n)))
    with pytest.raises(TypeError, match="host NumPy array"):
        kern((3,), (128,), (y, np.arange(n, dtype=np.float32), np.float32(2), np.int32(n)))
    with pytest.raises(TypeError, match="device array where the kernel takes a value"):
        kern((3,), (128,), (y, x, cp.sum(x).astype(cp.float32), np.int32(n)))
    with pytest.raises(TypeError, match="grid must be a tuple"):
        kern(3, (128,), (y, x, np.float32(2), np.int32(n)))
    with pytest.raises(ValueError, match="threads per block"):
        kern((1,), (64, 32), (y, x, np.float32(2), np.int32(n)))
    with pytest.raises(ValueError, match="1..1024"):
        kern((1,), (2048,), (y, x, np.float32(2), np.int32(n)))
    with pytest.raises(TypeError, match="entries must be ints"):
        kern((1.0,), (128,), (y, x, np.float32(2), np.int32(n)))
    with pytest.raises(TypeError, match="options must be a tuple"):
        cp.RawModule(code=selftest_source(), options=["--std=c++14"])
    with pytest.raises(fake_cupy.CUDADriverError, match="named symbol not found"):
        cp.RawModule(code=selftest_source()).get_function("logistic")


def test_rawmodule_passes_macro_definitions() -> None:
    require_kernel_tools(nvrtc=False, gxx=True)
    src = 'extern "C" __global__ void k(float* x) { x[0] = SCALE; }\n'
    x = fake_cupy.cupy.zeros(1, dtype=fake_cupy.cupy.float32)
    fake_cupy.cupy.RawModule(code=src, options=("-DSCALE=3.0f",)).get_function("k")((1,), (1,), (x,))
    assert float(x[0]) == 3.0
    with pytest.raises(build.ShimError, match="SCALE"):
        fake_cupy.cupy.RawModule(code=src).get_function("k")


def test_fake_gpu_fixture_runs_real_backend(fake_gpu) -> None:
    from voxelkit import backend

    be = fake_gpu
    assert be.is_gpu and be.probe is not None and be.probe.name == "FakeGPU (CPU shim)"
    assert sys.modules["cupy"] is fake_cupy.cupy
    n = 1000
    host = np.arange(n, dtype=np.float32)
    y = be.asarray(np.zeros(n), dtype=np.float32)
    kern = be.xp.RawModule(code=selftest_source(), options=backend.NVRTC_OPTIONS).get_function("saxpy")
    be.launch(kern, n, (y, be.asarray(host), np.float32(3), np.int32(n)))
    assert fake_cupy.LAUNCHES[-1] == ("saxpy", (4,), (backend.DEFAULT_BLOCK,))
    out = be.to_host(y)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, 3 * host)
    assert fake_cupy.stats()["h2d"] >= 2 and fake_cupy.stats()["d2h"] >= 1


def test_project_kernels_build_through_shim() -> None:
    """Every kernels/*.cu builds through the shim and exports all its extern "C" kernels."""
    require_kernel_tools(nvrtc=False, gxx=True)
    from voxelkit.backend import kernel_dir

    files = sorted(Path(kernel_dir()).glob("*.cu"))
    assert files, "no kernels/*.cu found"
    for f in files:
        mod = build.load_file(f)
        assert mod.kernels, f"{f.name}: no __global__ kernel found"
        for k in mod.kernels.values():
            assert k.extern_c, f"{f.name}: kernel {k.name} is not extern \"C\""


# ------------------------------------------------------------------------------------------ sanitizer
SANITIZED_SCRIPT = """
import sys
import numpy as np
from cuda_shim import SELFTEST_CU, build
mod = build.load_file(SELFTEST_CU)
assert mod.sanitize
n = 1000
out = np.zeros(n, dtype=np.float32)
mod.launch(sys.argv[1], ((n + 255) // 256,), (256,), (out, np.float32(1), np.int32(n)))
assert out.sum() == n
print("KERNEL-RAN-CLEAN")
"""


@pytest.mark.sanitizer_subprocess
def test_sanitizer_catches_missing_bounds_guard() -> None:
    require_kernel_tools(nvrtc=False, gxx=True)
    env = sanitizer_env()
    good = subprocess.run([sys.executable, "-c", SANITIZED_SCRIPT, "guarded_fill"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert good.returncode == 0 and "KERNEL-RAN-CLEAN" in good.stdout, good.stderr[-3000:]
    bad = subprocess.run([sys.executable, "-c", SANITIZED_SCRIPT, "unguarded_fill"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0, "unguarded kernel ran clean under ASan"
    assert "heap-buffer-overflow" in bad.stderr, bad.stderr[-3000:]
    assert "selftest.cu" in bad.stderr and "unguarded_fill" in bad.stderr  # points at the kernel line
    assert "KERNEL-RAN-CLEAN" not in bad.stdout


@pytest.mark.sanitizer_subprocess  # not meaningful inside the sanitized re-run
def test_sanitized_build_refuses_without_asan_runtime() -> None:
    require_kernel_tools(nvrtc=False, gxx=True)
    if build.asan_loaded():
        pytest.skip("this process has libasan loaded (running under the sanitizer re-run)")
    with pytest.raises(build.ShimError, match="LD_PRELOAD"):
        build.ShimModule(selftest_source(), str(SELFTEST_CU), sanitize=True)
