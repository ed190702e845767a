"""Every CUDA source compiles with NVRTC (CuPy's compiler and options) for compute_75..90, without warnings.

No GPU is needed: ``cupy.cuda.nvrtc`` works without a device.  In CI (``CI`` set) a missing NVRTC fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cuda_shim import SELFTEST_CU, nvrtc_check, require_kernel_tools

pytestmark = [pytest.mark.kernels, pytest.mark.nvrtc]


def kernel_files() -> list[Path]:
    """``kernels/*.cu`` as the package finds them (empty if there are none yet)."""
    from voxelkit.backend import kernel_dir

    try:
        return sorted(Path(kernel_dir()).glob("*.cu"))
    except FileNotFoundError:
        return []


@pytest.fixture(autouse=True)
def _nvrtc_available() -> None:
    require_kernel_tools(nvrtc=True, gxx=False)


@pytest.mark.parametrize("arch", nvrtc_check.ARCHS)
@pytest.mark.parametrize(
    "path", [*kernel_files(), SELFTEST_CU], ids=lambda p: p.name if isinstance(p, Path) else str(p)
)
def test_kernel_compiles_with_nvrtc(path: Path, arch: str) -> None:
    from voxelkit.backend import NVRTC_OPTIONS

    results = nvrtc_check.check_source(path.read_text(), path.name, archs=(arch,),
                                       user_options=tuple(NVRTC_OPTIONS))
    assert {r.mode for r in results} == set(nvrtc_check.MODES)
    assert all(r.ok and not r.log and r.binary for r in results)
    opts = results[0].options
    for required in ("-ftz=true", "--device-as-default-execution-space", *NVRTC_OPTIONS):
        assert required in opts, opts


def test_options_match_cupy_rawmodule() -> None:
    opts = nvrtc_check.cupy_options(("--std=c++14", "-DX=1"), "86", "cubin")
    assert opts[-3:] == ("-ftz=true", "-arch=sm_86", "--device-as-default-execution-space")
    assert "-DX=1" in opts and opts.count("--std=c++14") == 1
    assert any(o.startswith("-I") and o.endswith("include") for o in opts)  # CuPy's header dir
    assert any(o.startswith("--std=c++") for o in nvrtc_check.cupy_options((), "75", "ptx"))  # CuPy's default
    assert "-arch=compute_75" in nvrtc_check.cupy_options((), "75", "ptx")


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ('extern "C" __global__ void k(float* x) { int unused; x[0] = 1.0f; }', "warning"),
        ('#include <vector>\nextern "C" __global__ void k(float* x) { x[0] = 1.0f; }', "compile error"),
        ('extern "C" __global__ void k(float* x) { x[0] = undefined_thing; }', "compile error"),
        ("__global__ void k(float* x) { x[0] = 1.0f; }", 'not extern "C"'),
        ("template <typename T> __global__ void k(T* x) { x[0] = T(1); }", "no instantiation named"),
        (
            "// voxelkit-name-expressions: k<float>\n"
            "template <typename T> __global__ void k(T* x) { int unused; x[0] = T(1); }",
            "warning",
        ),
        ('extern "C" __device__ float f(float x) { return x; }', "no __global__ kernel"),
    ],
    ids=["warning", "host-header", "undefined", "mangled", "template-unnamed", "template-warning", "no-kernel"],
)
def test_check_rejects(source: str, problem: str) -> None:
    with pytest.raises(nvrtc_check.NvrtcCheckError, match=problem):
        nvrtc_check.check_source(source, "bad.cu", archs=("75",), user_options=("--std=c++14",))


def test_template_instantiations_are_compiled() -> None:
    src = (
        "// voxelkit-name-expressions: k<float>, k<double>\n"
        "template <typename T> __global__ void k(T* x, const int n) {\n"
        "    const int i = blockIdx.x * blockDim.x + threadIdx.x; if (i >= n) return; x[i] *= T(2); }\n"
    )
    results = nvrtc_check.check_source(src, "tmpl.cu", archs=("80",), user_options=("--std=c++14",))
    lowered = results[0].lowered
    assert set(lowered) == {"k<float>", "k<double>"}
    assert lowered["k<float>"] != lowered["k<double>"] and all(v.startswith("_Z") for v in lowered.values())


def test_selftest_kernels_are_in_the_ptx() -> None:
    res = nvrtc_check.compile_source(SELFTEST_CU.read_text(), "selftest.cu", "90", "ptx", ("--std=c++14",))
    assert res.ok and not res.log
    ptx = res.binary.decode() if isinstance(res.binary, bytes) else res.binary
    assert ".entry saxpy(" in ptx and ".entry unguarded_fill(" in ptx
    assert ".target sm_90" in ptx


def test_nvrtc_missing_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """``require_kernel_tools`` fails (not skips) when CI is set and NVRTC is missing."""

    def broken() -> None:
        raise nvrtc_check.NvrtcUnavailable("simulated: no NVRTC")

    monkeypatch.setattr(nvrtc_check, "nvrtc", broken)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="simulated: no NVRTC"):
        require_kernel_tools(nvrtc=True, gxx=False)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="simulated: no NVRTC"):
        require_kernel_tools(nvrtc=True, gxx=False)
