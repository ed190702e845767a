"""Backend selection: device names, the environment variable, the GPU probe and its error, ``voxelkit info``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from voxelkit import backend as be
from voxelkit.frames import FrameError, FrameTiming


@pytest.fixture(autouse=True)
def _fresh_probe():
    be.reset_probe()
    yield
    be.reset_probe()


def test_cpu_and_env(monkeypatch):
    assert be.get_backend("cpu").name == "numpy"
    monkeypatch.setenv(be.ENV_DEVICE, "cpu")
    assert be.get_backend().xp is np
    with pytest.raises(be.BackendError, match="unknown device 'tpu'"):
        be.get_backend("tpu")


def test_gpu_without_device_is_clear_error(monkeypatch):
    # No machine here has a GPU; make sure of it even where one exists by hiding cupy.
    monkeypatch.setitem(sys.modules, "cupy", None)
    be.reset_probe()
    probe = be.probe_gpu()
    assert not probe.available and "cupy is not importable" in probe.reason
    with pytest.raises(be.BackendError, match="no usable GPU: cupy is not importable"):
        be.get_backend("gpu")
    auto = be.get_backend("auto")
    assert auto.name == "numpy" and "cupy is not importable" in auto.reason


def test_real_cupy_probe_reports_reason():
    pytest.importorskip("cupy")
    probe = be.probe_gpu()
    if probe.available:  # pragma: no cover - only on a GPU machine
        assert probe.name and probe.total_memory > 0
    else:
        assert "cupy cannot use a GPU" in probe.reason or "no CUDA device" in probe.reason


def test_fake_gpu_backend_roundtrip(fake_gpu):
    assert fake_gpu.is_gpu and fake_gpu.name == "cupy"
    a = fake_gpu.asarray(np.arange(5, dtype=np.float32))
    with pytest.raises(TypeError):
        np.asarray(a)  # like CuPy: no implicit device-to-host conversion
    np.testing.assert_array_equal(fake_gpu.to_host(a * 2), np.arange(5) * 2)


def test_kernel_sources_found():
    names = sorted(p.stem for p in be.kernel_dir().glob("*.cu"))
    assert {"logan", "mrtm", "srtm"} <= set(names)
    assert "extern \"C\" __global__" in be.kernel_source("logan")
    with pytest.raises(FileNotFoundError):
        be.kernel_source("no_such_kernel")


def test_chunks_cover_range():
    sl = be.chunks(10, 4)
    assert [(s.start, s.stop) for s in sl] == [(0, 4), (4, 8), (8, 10)]
    assert be.chunks(0, 4) == []


def test_cli_info_and_gpu_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "voxelkit", "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "voxelkit 0.1.0" in out.stdout and "backend (device=auto):" in out.stdout and "GPU:" in out.stdout
    tsv = tmp_path / "tacs.tsv"
    tsv.write_text("frame_start\tframe_end\tR\tA\n" + "".join(f"{60 * i}\t{60 * i + 60}\t{1 + i}\t{2 + i}\n"
                                                            for i in range(8)))
    env_code = "import sys; sys.modules['cupy'] = None; from voxelkit.cli import main; sys.exit(main())"
    err = subprocess.run([sys.executable, "-c", env_code, "fit-tacs", str(tsv), "--ref", "R", "--tstar", "2",
                          "--device", "gpu"], capture_output=True, text=True, timeout=120)
    assert err.returncode == 2 and "Traceback" not in err.stderr
    assert "device 'gpu' requested but no usable GPU: cupy is not importable" in err.stderr


def test_frame_validation_names_source_and_frame():
    with pytest.raises(FrameError, match=r"sc\.json: frame 2 \(0-based\) has non-positive duration"):
        FrameTiming([0, 10, 20], [10, 10, 0], source="sc.json")
    with pytest.raises(FrameError, match="frames overlap"):
        FrameTiming([0, 5], [10, 10], source="sc.json")
    with pytest.raises(FrameError, match="must increase"):
        FrameTiming([0, 20, 10], [5, 5, 5], source="sc.json")
    ft = FrameTiming([30, 60, 120], [30, 60, 60])  # a gap is allowed
    with pytest.raises(FrameError, match="frame count mismatch: pet.nii has 4 frames"):
        ft.check_count(4, "pet.nii")
    np.testing.assert_allclose(ft.mid_min, [0.75, 1.5, 2.5])


def test_auto_keeps_a_small_problem_on_the_cpu(fake_gpu, tmp_path):
    """One rule for every entry point: ``auto`` (the default of fit and fit_tacs) picks the GPU when usable,
    except for a problem the caller says is small (fewer than AUTO_GPU_MIN_ITEMS items, e.g. the regional TACs
    of a table); ``gpu`` is always the GPU."""
    assert be.get_backend("auto").is_gpu  # the stand-in GPU is usable
    assert be.get_backend("auto", n_items=be.AUTO_GPU_MIN_ITEMS).is_gpu
    assert not be.get_backend("auto", n_items=be.AUTO_GPU_MIN_ITEMS - 1).is_gpu
    assert not be.get_backend(None, n_items=100).is_gpu
    assert be.get_backend("gpu", n_items=3).is_gpu
    import inspect

    import voxelkit

    assert inspect.signature(voxelkit.fit).parameters["device"].default is None
    assert inspect.signature(voxelkit.fit_tacs).parameters["device"].default is None
    # fit_tacs with the default device on a machine with a GPU: a 3-region table stays on the CPU
    t = np.arange(0, 3600, 300.0)
    rows = ["frame_start\tframe_end\tref\tA\tB\tC"]
    for s in t:
        m = (s + 150) / 60
        ref = 10 * m * np.exp(-m / 8) + 1
        rows.append(f"{s}\t{s + 300}\t{ref}\t{ref * 2}\t{ref * 3}\t{ref * 1.5}")
    p = tmp_path / "tacs.tsv"
    p.write_text("\n".join(rows) + "\n")
    fit = voxelkit.fit_tacs(p, reference="ref", model="mrtm")
    assert fit.backend == "numpy"
