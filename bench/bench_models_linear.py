"""Speed of the linear reference models on the NumPy path (30,000 voxels x 28 frames, fit only) and of the whole
``voxelkit fit`` command on such an image.  Target (issue 3): >= 5 million voxels/s per model; CLI < 2 s.

Run: ``python -m pytest bench/bench_models_linear.py -p no:cacheprovider``
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from voxelkit.frames import FrameTiming
from voxelkit.models import get_model

N_VOXELS = 30_000
N_FRAMES = 28
TARGET_VOXELS_PER_S = 5e6


def frames28() -> FrameTiming:
    d = np.repeat([15.0, 30.0, 60.0, 120.0, 300.0], [6, 4, 4, 4, 10])
    return FrameTiming(np.concatenate([[0.0], np.cumsum(d)[:-1]]), d)


def synthetic(n: int = N_VOXELS, seed: int = 0) -> tuple[np.ndarray, np.ndarray, FrameTiming]:
    """SRTM-like TACs with 5% noise (not exact: speed only)."""
    fr = frames28()
    t = fr.mid_min
    rng = np.random.default_rng(seed)
    cr = 10.0 * t * np.exp(-t / 6.0) + 0.5
    bp = rng.uniform(0.0, 3.0, n)
    r1 = rng.uniform(0.7, 1.3, n)
    k2a = 0.1 * r1 / (1.0 + bp)
    dt = np.diff(np.concatenate([[0.0], t]))
    conv = np.zeros((n, t.size))
    acc = np.zeros(n)
    for i in range(t.size):  # crude recursive convolution, frames only (not per voxel)
        acc = acc * np.exp(-k2a * dt[i]) + cr[i] * dt[i]
        conv[:, i] = acc
    ct = r1[:, None] * cr + (0.1 * r1 - r1 * k2a)[:, None] * conv
    ct *= 1.0 + 0.05 * rng.standard_normal(ct.shape)
    return ct.astype(np.float32), cr, fr


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, FrameTiming]:
    return synthetic()


MODELS = {
    "logan": {"tstar": 20.0, "k2prime": 0.1},
    "mrtm": {},
    "mrtm2": {"k2prime": 0.1},
}


@pytest.mark.parametrize("name", list(MODELS))
def test_bench_fit_numpy(benchmark, data, name: str) -> None:
    ct, cr, fr = data
    model = get_model(name, device="cpu", **MODELS[name])
    result = benchmark(model.fit, ct, cr, fr, keep_inputs=False)
    assert result.n == N_VOXELS and (result.status == 0).mean() > 0.9
    # The best round is the machine's speed; the median also holds time stolen by other processes (on a busy
    # shared 2-core machine it can be 2x the best).  Both are recorded; the target is checked on the best.
    st = benchmark.stats.stats
    rate, rate_median = N_VOXELS / st.min, N_VOXELS / st.median
    benchmark.extra_info.update(voxels_per_s_best=rate, voxels_per_s_median=rate_median)
    print(f"\n{name}: {rate / 1e6:.1f} million voxels/s best, {rate_median / 1e6:.1f} median ({st.rounds} rounds)")
    assert rate >= TARGET_VOXELS_PER_S, f"{name}: {rate:.3g} voxels/s < {TARGET_VOXELS_PER_S:.3g}"


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> dict[str, Path]:
    ct, cr, fr = synthetic()
    tmp = tmp_path_factory.mktemp("bench_cli")
    shape = (40, 30, 26)  # 31,200 voxels: 30,000 tissue + 1,200 reference
    data = np.zeros((int(np.prod(shape)), fr.n_frames), dtype=np.float32)
    data[:N_VOXELS] = ct
    data[N_VOXELS:] = cr
    ref = np.zeros(int(np.prod(shape)), dtype=np.uint8)
    ref[N_VOXELS:] = 1
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    paths = {"pet": tmp / "sub-01_pet.nii.gz", "ref": tmp / "ref.nii.gz"}
    nib.save(nib.Nifti1Image(data.reshape(shape + (fr.n_frames,)), aff), paths["pet"])
    nib.save(nib.Nifti1Image(ref.reshape(shape), aff), paths["ref"])
    (tmp / "sub-01_pet.json").write_text(json.dumps(fr.to_bids_dict()))
    paths["out"] = tmp / "out"
    return paths


@pytest.mark.parametrize("name", ["logan", "mrtm"])
def test_bench_cli_fit(benchmark, image, name: str) -> None:
    """The whole command in a fresh interpreter: import, read, fit, write maps (+ JSON)."""
    extra = ["--tstar", "20", "--k2prime", "0.1"] if name == "logan" else []
    cmd = [sys.executable, "-m", "voxelkit", "fit", str(image["pet"]), "--ref-mask", str(image["ref"]),
           "-o", str(image["out"] / name), "--model", name, "--device", "cpu", "--overwrite", "-q", *extra]

    def run() -> float:
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        return time.perf_counter() - t0

    benchmark.pedantic(run, rounds=3, iterations=1)
    med = benchmark.stats.stats.median
    print(f"\nvoxelkit fit --model {name}: {med:.2f} s")
    assert med < 2.0
