"""Roofline model of voxelkit's CUDA kernels: bytes moved and floating-point operations per work item, and the
time bound they imply on a given card.  The one place these formulas live: ``bench/gpu_check.py`` divides its
measured kernel times by :func:`bound_seconds`, and the README table is printed by this module:

    python bench/roofline.py                 # markdown table for an H100/H200-class card
    python bench/roofline.py --card H200

Counting rules (estimates from reading the kernels, not measurements):

* bytes are DRAM traffic: coalesced streams at their size; an uncoalesced (per-thread random) access costs one
  32-byte sector; small shared tables (frame coefficients, basis columns, the neighbour table) are assumed to
  stay in L2 and are not counted, except the neighbour row each TFCE/cluster step reads (4 K bytes);
* flops count adds, multiplies, compares-and-selects, divides and square roots as one each; the precision that
  bounds a kernel is the one its inner loop uses (the model kernels accumulate in double);
* the union-find kernels (TFCE, clusters) do a data-dependent amount of work; their formulas assume about one
  root step per neighbour lookup (path halving keeps trees flat) and, for clusters, a supra-threshold fraction
  ``q`` of the voxels (passed in by the check from the labels it launched with).

The bound is ``max(bytes / bandwidth, flops / peak)``; measured / bound >= 1, and close to 1 means the kernel
runs at the card's limit.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent.parent / "kernels"


@dataclass(frozen=True)
class Card:
    """Peak numbers of a card: bandwidth in bytes/s, fp32 and fp64 (non-tensor) flop/s."""

    name: str
    bandwidth: float
    fp32: float
    fp64: float


CARDS: dict[str, Card] = {
    "H100": Card("H100 SXM", 3.35e12, 67e12, 34e12),
    "H200": Card("H200 SXM", 4.8e12, 67e12, 34e12),
    "A100": Card("A100 SXM 80GB", 2.04e12, 19.5e12, 9.7e12),
    "L40S": Card("L40S", 0.864e12, 91.6e12, 1.4e12),
    # the "H100/H200-class" numbers (~3-4 TB/s, ~60 TFLOP/s fp32), fp64 at half rate
    "generic": Card("an H100/H200-class card", 3.5e12, 60e12, 30e12),
}


def card_for(device_name: str | None) -> Card:
    """The :data:`CARDS` entry whose key appears in ``device_name`` (e.g. "NVIDIA H200"), else ``generic``."""
    name = (device_name or "").upper()
    for key, card in CARDS.items():
        if key != "generic" and key in name:
            return card
    return CARDS["generic"]


@dataclass(frozen=True)
class KernelModel:
    """Cost of one work item of a kernel.  ``item``: what one thread handles; ``items(d)`` the number of items
    of a launch, ``bytes_(d)`` / ``flops(d)`` per item, from ``d`` = the launch's scalar arguments by parameter
    name (plus ``q`` for the cluster kernel)."""

    item: str
    precision: str
    items: Callable[[dict], float]
    bytes_: Callable[[dict], float]
    flops: Callable[[dict], float]
    bytes_text: str
    flops_text: str
    example: dict


def _f(d: dict) -> float:
    return float(d.get("n_needed") or d.get("f") or 1)


MODELS: dict[str, KernelModel] = {
    "logan_fit": KernelModel(
        "voxel", "fp64", lambda d: d["n"], lambda d: 4 * _f(d) + 17, lambda d: 22 * _f(d) + 40,
        "4F + 17 (TAC in; 4 float32 + status out)", "22F + 40", {"n": 1_000_000, "f": 28}),
    "mrtm_fit": KernelModel(
        "voxel", "fp64", lambda d: d["n"], lambda d: 4 * _f(d) + 21, lambda d: 30 * _f(d) + 60,
        "4F + 21 (TAC in; 5 float32 + status out)", "30F + 60", {"n": 1_000_000, "f": 28}),
    "srtm_select": KernelModel(
        "voxel", "fp64", lambda d: d["n"], lambda d: 4 * d["f"] + 4 * (d["nb"] + 1) + 25,
        lambda d: 15 * d["f"] + 2 * d["nb"] + 250,
        "4F + 4(nb+1) + 25 (TAC and its projections y z in; 6 float32 + status out)",
        "15F + 2nb + 250 (the projections y z: a cuBLAS product of 2F(nb+1) flops, not in this kernel)",
        {"n": 1_000_000, "f": 28, "nb": 150}),
    "srtm2_select": KernelModel(
        "voxel", "fp64", lambda d: d["n"], lambda d: 4 * d["f"] + 4 * (d["nb"] + 1) + 25,
        lambda d: 9 * d["f"] + 2 * d["nb"] + 200,
        "4F + 4(nb+1) + 25", "9F + 2nb + 200 (cuBLAS product not included)",
        {"n": 1_000_000, "f": 28, "nb": 150}),
    "stats_exceed_count_f32": KernelModel(
        "voxel", "fp32", lambda d: d["n_vox"], lambda d: 4 * d["n_rows"] + 12, lambda d: 2 * d["n_rows"],
        "4b + 12 (b scores of the batch, threshold, count read and write)", "2b",
        {"n_vox": 235_000, "n_rows": 256}),
    "stats_exceed_count_f64": KernelModel(
        "voxel", "fp64", lambda d: d["n_vox"], lambda d: 8 * d["n_rows"] + 16, lambda d: 2 * d["n_rows"],
        "8b + 16", "2b", {"n_vox": 235_000, "n_rows": 256}),
    "stats_tfce_max": KernelModel(
        "permutation", "fp64", lambda d: d["n_rows"],
        lambda d: d["n_vox"] * (8 + 4 * d["n_nb"] + 32 * d["n_nb"] + 160),
        lambda d: d["n_vox"] * (4 + 7 * d["n_nb"]),
        "V(8 + 36K + 160) (sorted value and voxel, the neighbour row, one sector per neighbour's forest "
        "cell, root steps, root value read and write, reset)", "V(4 + 7K)",
        {"n_rows": 4096, "n_vox": 235_000, "n_nb": 26}),
    "stats_cluster_max_f32": KernelModel(
        "permutation", "fp64", lambda d: d["n_rows"],
        lambda d: d["n_vox"] * (2 + d.get("q", 0.002) * (4 + 5 * d["n_nb"] + 64 + 24)),
        lambda d: d["n_vox"] * (2 + d.get("q", 0.002) * (4 * d["n_nb"] + 6)),
        "V(2 + q(4 + 5K + 88)) (labels twice, and per labelled voxel t, K neighbour labels, the neighbour "
        "row, forest and mass cells; q = labelled fraction)", "V(2 + q(4K + 6))",
        {"n_rows": 4096, "n_vox": 235_000, "n_nb": 26, "q": 0.002}),
    "stats_cluster_max_f64": KernelModel(
        "permutation", "fp64", lambda d: d["n_rows"],
        lambda d: d["n_vox"] * (2 + d.get("q", 0.002) * (8 + 5 * d["n_nb"] + 64 + 24)),
        lambda d: d["n_vox"] * (2 + d.get("q", 0.002) * (4 * d["n_nb"] + 6)),
        "V(2 + q(8 + 5K + 88))", "V(2 + q(4K + 6))",
        {"n_rows": 4096, "n_vox": 235_000, "n_nb": 26, "q": 0.002}),
    "lpntpet_fit": KernelModel(
        "voxel", "fp64", lambda d: d["n"], lambda d: 4 * _f(d) + 8 * _f(d) + 4 + 49, lambda d: 50 * _f(d) + 150,
        "12F + 53 (TAC and the chosen release basis row in; 12 float32 + status out)", "50F + 150",
        {"n": 1_000_000, "f": 28}),
}

#: A per-voxel kernel this table does not know yet (e.g. a new model): read 4F bytes, write ~32, ~40 flops
#: per frame in double.  Marked "generic" in the check's output.
GENERIC = KernelModel(
    "voxel", "fp64", lambda d: d.get("n", 1), lambda d: 4 * _f(d) + 32, lambda d: 40 * _f(d) + 100,
    "4F + 32 (generic per-voxel estimate)", "40F + 100", {"n": 1_000_000, "f": 28})


def model_for(kernel: str) -> tuple[KernelModel, bool]:
    """The cost model of ``kernel`` and whether it is a specific one (False: :data:`GENERIC`)."""
    m = MODELS.get(kernel)
    return (m, True) if m is not None else (GENERIC, False)


def bound_seconds(kernel: str, dims: dict, card: Card) -> dict:
    """Bytes, flops and the roofline time bound (seconds) of one launch of ``kernel`` with scalar arguments
    ``dims`` on ``card``; ``limit`` says which roof binds."""
    m, specific = model_for(kernel)
    n = float(m.items(dims))
    nbytes = n * float(m.bytes_(dims))
    flops = n * float(m.flops(dims))
    peak = card.fp64 if m.precision == "fp64" else card.fp32
    t_mem, t_flop = nbytes / card.bandwidth, flops / peak
    return {"items": n, "bytes": nbytes, "flops": flops, "bound_s": max(t_mem, t_flop),
            "limit": "memory" if t_mem >= t_flop else f"{m.precision} compute", "specific": specific}


_GLOBAL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+([A-Za-z_]\w*)\s*\(([^)]*)\)')


def kernel_params(kernel_dir: Path = KERNEL_DIR) -> dict[str, list[tuple[str, bool]]]:
    """``{kernel: [(parameter name, is_pointer), ...]}`` of every ``extern "C"`` kernel in ``kernels/*.cu``."""
    out: dict[str, list[tuple[str, bool]]] = {}
    for path in sorted(Path(kernel_dir).glob("*.cu")):
        src = re.sub(r"//[^\n]*", "", path.read_text())
        for m in _GLOBAL_RE.finditer(src):
            params = []
            for p in m.group(2).split(","):
                p = p.strip()
                if not p:
                    continue
                params.append((re.findall(r"[A-Za-z_]\w*", p)[-1], "*" in p))
            out[m.group(1)] = params
    return out


def dims_from_args(params: list[tuple[str, bool]], args: tuple) -> dict:
    """The scalar arguments of a launch by parameter name (ints and floats)."""
    d: dict = {}
    for (name, pointer), a in zip(params, args, strict=False):
        if not pointer:
            try:
                d[name] = float(a) if not float(a).is_integer() else int(a)
            except (TypeError, ValueError):
                pass
    return d


def table(card: Card) -> str:
    """Markdown table of every kernel in ``kernels/*.cu`` at its example size on ``card``."""
    lines = [f"Roofline bounds on {card.name} ({card.bandwidth / 1e12:.2f} TB/s, {card.fp32 / 1e12:.0f} TFLOP/s "
             f"fp32, {card.fp64 / 1e12:.0f} TFLOP/s fp64); estimates from bench/roofline.py, to be replaced by "
             "the measured column of `python bench/gpu_check.py`.", "",
             "| kernel | work item | bytes / item | flops / item | example launch | bound | limit | measured / bound |",
             "|---|---|---|---|---|---|---|---|"]
    names = list(kernel_params()) or list(MODELS)
    for k in names:
        m, specific = model_for(k)
        ex = m.example
        b = bound_seconds(k, ex, card)
        ex_s = ", ".join(f"{a}={v:,}" if isinstance(v, int) else f"{a}={v}" for a, v in ex.items())
        limit = b["limit"] + ("" if specific else " (generic)")
        lines.append(f"| `{k}` | {m.item} | {m.bytes_text} | {m.flops_text} | {ex_s} | {b['bound_s'] * 1e3:.3g} ms | "
                     f"{limit} | "
                     "not measured yet |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Print the roofline table of voxelkit's CUDA kernels (markdown).")
    ap.add_argument("--card", choices=sorted(CARDS), default="generic", help="peak numbers to use")
    args = ap.parse_args(argv)
    print(table(CARDS[args.card]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
