"""Benchmark: a voxelwise fit of an image larger than comfortable memory, in z-slabs (:mod:`voxelkit.bigfit`).

Writes a 4-D float32 image of ``--voxels`` voxels x ``--frames`` frames (default 10 M x 40 = 1.6 GB) as an
uncompressed NIfTI under ``--dir`` (frame by frame: the writer itself never holds the image), a reference mask
and a brain mask, then runs ``voxelkit fit --chunked`` in a child process and reports its wall time and its peak
memory (``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``)::

    nice python bench/bench_bigfit.py --model logan --model mrtm            # 10 M voxels x 40 frames
    python bench/bench_bigfit.py --voxels 1000000 --frames 20 --keep        # quicker

Check ``df -h /tmp`` first (the image needs voxels x frames x 4 bytes).  Prints one JSON line per model.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def grid(n_voxels: int) -> tuple[int, int, int]:
    """A grid of about ``n_voxels`` voxels, 5 : 4 : 4."""
    s = (n_voxels / 80.0) ** (1 / 3)
    return int(round(5 * s)), int(round(4 * s)), int(round(4 * s))


def write_image(root: Path, n_voxels: int, n_frames: int, seed: int = 0) -> dict[str, Path]:
    """An SRTM-like image (BPND 0-3, R1 0.7-1.3, 3 % noise; an ellipsoid head) written frame by frame."""
    rng = np.random.default_rng(seed)
    shape = grid(n_voxels)
    start = np.r_[0.0, np.cumsum(np.geomspace(15, 600, n_frames - 1))]
    dur = np.diff(np.r_[start, start[-1] + 600.0])
    t = (start + dur / 2) / 60.0
    ref = 10 * t * np.exp(-t / 12.0) + 0.5
    conv = np.cumsum(ref * np.diff(np.r_[0.0, t]))
    x, y, z = np.ogrid[:shape[0], :shape[1], :shape[2]]
    c = [(s - 1) / 2 for s in shape]
    head = ((x - c[0]) / c[0]) ** 2 + ((y - c[1]) / c[1]) ** 2 + ((z - c[2]) / c[2]) ** 2 <= 1.0
    refmask = head & (z < shape[2] // 6) & (np.abs(x - c[0]) < shape[0] // 6)
    r1 = rng.uniform(0.7, 1.3, shape).astype(np.float32)
    bp = np.where(refmask, 0.0, rng.uniform(0.0, 3.0, shape)).astype(np.float32)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((*shape, n_frames))
    hdr.set_data_dtype(np.float32)
    hdr.set_qform(aff, 1)
    hdr.set_sform(aff, 1)
    pet = root / "big_pet.nii"
    offset = 352
    hdr["vox_offset"] = offset
    with pet.open("wb") as fh:
        fh.write(hdr.binaryblock)
        fh.write(b"\0" * (offset - len(hdr.binaryblock)))
        for j in range(n_frames):
            vol = r1 * np.float32(ref[j]) + np.float32(0.05 * conv[j] * np.exp(-0.01 * t[j])) * bp
            vol *= 1 + 0.03 * rng.standard_normal(shape, dtype=np.float32)
            vol[~head] = 0.0
            fh.write(np.asfortranarray(vol).tobytes(order="F"))
    (root / "big_pet.json").write_text(json.dumps({"FrameTimesStart": start.tolist(), "FrameDuration": dur.tolist()}))
    nib.save(nib.Nifti1Image(refmask.astype(np.uint8), aff), str(root / "ref_mask.nii.gz"))
    nib.save(nib.Nifti1Image(head.astype(np.uint8), aff), str(root / "brain_mask.nii.gz"))
    return {"pet": pet, "ref": root / "ref_mask.nii.gz", "brain": root / "brain_mask.nii.gz", "shape": shape,
            "n_brain": int(head.sum())}


CHILD = ("import resource, sys\nfrom voxelkit.cli import main\nrc = main(sys.argv[1:])\n"
         "print('MAXRSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\nsys.exit(rc)")


def run_child(args: list[str]) -> tuple[float, float, int]:
    """``voxelkit ARGS`` in a child process: wall seconds, its peak resident memory (GiB, ru_maxrss of the
    child itself) and its exit status."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
    kib = [int(ln.split()[1]) for ln in proc.stderr.splitlines() if ln.startswith("MAXRSS_KIB")]
    return wall, (kib[-1] if kib else resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 2 ** 20, \
        proc.returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxels", type=int, default=10_000_000)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--model", action="append", default=None, help="logan (t* 20 min), mrtm, srtm ... (repeat)")
    ap.add_argument("--slab-voxels", type=int, default=None)
    ap.add_argument("--dir", default="/tmp/voxelkit_bigfit")
    ap.add_argument("--keep", action="store_true", help="keep the image (reused by the next run)")
    ap.add_argument("--in-memory", action="store_true", help="also run each model without --chunked (whole image "
                    "in memory) for comparison")
    args = ap.parse_args(argv)
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    need = args.voxels * args.frames * 4
    free = shutil.disk_usage(root).free
    if free < need * 1.2:
        print(f"{root}: {free / 2**30:.1f} GiB free, the image needs {need / 2**30:.1f} GiB", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    paths = write_image(root, args.voxels, args.frames)
    t_write = time.perf_counter() - t0
    size = paths["pet"].stat().st_size
    for model in args.model or ["logan", "mrtm"]:
        for chunked in (True, False) if args.in_memory else (True,):
            out = root / f"out_{model}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = ["fit", str(paths["pet"]), "--ref-mask", str(paths["ref"]), "--mask", str(paths["brain"]),
                   "--model", model, "-o", str(out), "--quiet", "--device", "cpu",
                   "--chunked" if chunked else "--no-chunked"]
            if model == "logan":
                cmd += ["--tstar", "20"]
            if args.slab_voxels and chunked:
                cmd += ["--slab-voxels", str(args.slab_voxels)]
            wall, peak, rc = run_child(cmd)
            bp = np.asarray(nib.load(str(out / "bp_nd.nii.gz")).dataobj) if rc == 0 else None
            print(json.dumps({"model": model, "chunked": chunked, "shape": [*paths["shape"], args.frames],
                              "voxels": int(np.prod(paths["shape"])), "brain_voxels": paths["n_brain"],
                              "image_gib": round(size / 2 ** 30, 3), "write_s": round(t_write, 1),
                              "fit_wall_s": round(wall, 1), "peak_rss_gib": round(peak, 3), "exit": rc,
                              "finite_bp_nd": int(np.isfinite(bp).sum()) if bp is not None else None}), flush=True)
            shutil.rmtree(out, ignore_errors=True)
    if not args.keep:
        for p in (paths["pet"], paths["ref"], paths["brain"], root / "big_pet.json"):
            p.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
