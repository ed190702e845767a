"""Speed of ``voxelkit simulate``: a 12-subject, 2-session, 2 mm study (24 scans of 99 x 117 x 95 x 30 voxels,
~235k brain voxels) written as BIDS-PET.  Target (issue 4): under a minute on this 2-core machine.

The whole process is timed (interpreter start, imports, phantom, kinetics, noise, gzip writing).

    python -m pytest bench/bench_simulate.py -p no:cacheprovider   # pytest-benchmark, 1 round
    python bench/bench_simulate.py                   # one run per setting, a table
    python bench/bench_simulate.py --jobs 2          # only the 2-process run
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

TARGET_S = 60.0


def run_cli(out: Path, jobs: int, extra: tuple[str, ...] = ()) -> float:
    """Wall time (s) of one ``voxelkit simulate`` process writing the full 12-subject 2 mm study."""
    cmd = [sys.executable, "-m", "voxelkit", "simulate", "-o", str(out), "--n-subjects", "12",
           "--resolution", "2", "--seed", "0", "--jobs", str(jobs), "-q", *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


@pytest.mark.parametrize("jobs", [1, 2])
def test_full_study_2mm(benchmark, tmp_path, jobs):
    counter = iter(range(100))

    def once() -> float:
        return run_cli(tmp_path / f"study{next(counter)}", jobs)

    seconds = benchmark.pedantic(once, rounds=1, iterations=1)
    n_pet = len(list((tmp_path / "study0").glob("sub-*/ses-*/pet/*_pet.nii.gz")))
    assert n_pet == 24
    benchmark.extra_info["seconds"] = seconds
    if jobs == 2:
        assert seconds < TARGET_S, f"{seconds:.1f} s >= {TARGET_S} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, nargs="*", default=[1, 2])
    args = ap.parse_args()
    print(f"{'jobs':>4}  {'seconds':>8}  {'MB':>6}")
    for jobs in args.jobs:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "study"
            sec = run_cli(out, jobs)
            mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
            print(f"{jobs:>4}  {sec:>8.1f}  {mb:>6.0f}", flush=True)


if __name__ == "__main__":
    main()
