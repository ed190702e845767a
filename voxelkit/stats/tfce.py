"""Exact threshold-free cluster enhancement (TFCE) on masked voxel vectors.

TFCE (Smith and Nichols 2009) of a voxel ``v`` with value ``t_v > 0`` is

    TFCE(v) = integral_0^{t_v} e_v(h)^E h^H dh

where ``e_v(h)`` is the number of voxels (extent, in voxels) of the connected component of ``{t >= h}`` that
contains ``v``.  ``e_v(h)`` is a step function of ``h`` that only changes at the map's values, so the integral
is a finite sum of terms ``e^E (b^{H+1} - a^{H+1}) / (H+1)`` -- no threshold step is involved and the value does
not depend on a step size.  It is computed here by a disjoint-set forest (union-find) over the voxels sorted by
decreasing value: when a voxel is added at height ``h`` its component and its neighbours' components are
"settled" down to ``h`` (their accumulated integral grows by the interval since they last changed) and merged.
A per-node offset (weighted union-find) lets every voxel read its own total at the end.  This is the same idea
as eTFCE (Chen, Weeda, Nichols and Goeman, 2026).

Only positive values contribute; for a two-sided test call it on ``t`` and on ``-t`` (positive and negative
parts are enhanced separately, as in FSL and nilearn) -- see :func:`tfce_signed`.

The permutation null needs only each map's maximum: :func:`tfce_max` radix-sorts the float32 map inside numba
(one sort serves both signs) and runs a lighter union-find that keeps, per component, only the largest value of
its voxels (no per-voxel offsets, no final pass); rows are independent and split over threads (the kernels
release the GIL), so results do not depend on the thread count.

The compiled path uses numba (``cache=True``, so the compilation cost of ~2 s of CPU is paid once per
installation; with a read-only installation numba caches in its per-user folder or ``$NUMBA_CACHE_DIR``, see
:func:`cache_dir`).  Each kernel is compiled for one signature only (the engine's: float32 null maps, float64
observed map, int32 grid); ``voxelkit stats warmup`` compiles them ahead, e.g. at install or image build time.
:func:`tfce_reference` (exact, plain NumPy/SciPy) and :func:`tfce_numeric` (fine-step numerical
integration) are slow references for tests.
"""

from __future__ import annotations

import threading
from concurrent.futures import Executor
from dataclasses import dataclass

import numba
import numpy as np

from .neighbors import offsets, structure

# start / step of the passes over the sorted voxels, as int64 values: literal constants (0, 1, -1) would make
# numba compile a second specialisation of each pass kernel (measured: 2 of each, ~1.5 s of a cold start)
FIRST = np.int64(0)
UP = np.int64(1)
DOWN = np.int64(-1)


@numba.njit(cache=True, nogil=True, inline="always")
def _find(parent: np.ndarray, rec: np.ndarray, stack: np.ndarray, u: int) -> int:
    """Root of ``u``; compresses the path keeping offset sums (value(x) = sum of offsets to the root + the
    root's accumulated integral; ``w`` holds the offset of a non-root and the integral of a root)."""
    r = u
    m = 0
    while parent[r] != r:
        stack[m] = r
        m += 1
        r = parent[r]
    acc = 0.0
    for i in range(m - 1, -1, -1):
        x = stack[i]
        acc += rec[x, 0]
        rec[x, 0] = acc
        parent[x] = r
    return r


@numba.njit(cache=True, nogil=True)
def _tfce_pass(sv: np.ndarray, sp: np.ndarray, sg: np.ndarray, start: int, step: int, sgn: float,
               offs: np.ndarray, hp: float, sizeE: np.ndarray, sout: np.ndarray,
               parent: np.ndarray, rec: np.ndarray, stack: np.ndarray, nb: np.ndarray) -> None:
    """TFCE of the part of ``sgn * vals`` above 0.  The inputs are in sorted (increasing value) order: ``sv``
    values, ``sp = |sv|^(H+1)``, ``sg`` grid indices; voxels are visited at ``start, start+step, ...``
    (decreasing ``sgn * sv``) and ``sgn * TFCE`` is written into ``sout`` (sorted order), so all per-voxel
    reads and writes are sequential; only the forest on the grid is accessed at random.

    The forest lives on the zero-padded grid (``lin[v]`` = grid index of in-mask voxel v, neighbours at
    ``g + offs``), so no neighbour table is read; out-of-mask grid cells are never added.  ``rec[g]`` holds,
    in one cache line, the offset (non-root) or accumulated integral (root), ``level^(H+1)`` at the root's last
    change, and the root's size; ``powv = |vals|^(H+1)``; ``sizeE[k] = k^E``.  The neighbours already in the
    forest are first collected without branches into ``nb`` (a data-dependent branch per neighbour is
    mispredicted about half the time); they are then merged in the same order as before.
    """
    V = sv.shape[0]
    K = offs.shape[0]
    n_added = 0
    ii = start
    while 0 <= ii < V:
        h = sgn * sv[ii]
        if not h > 0:
            break
        hh = sp[ii]
        g = sg[ii]
        ii += step
        n_added += 1
        n_nb = 0
        for k in range(K):
            u = g + offs[k]
            nb[n_nb] = u
            n_nb += parent[u] >= 0
        parent[g] = g
        rec[g, 0] = 0.0
        rec[g, 1] = hh
        rec[g, 2] = 1.0
        rv = g
        for j in range(n_nb):
            ru = _find(parent, rec, stack, nb[j])
            if ru == rv:
                continue
            # settle both components down to h (their extent was constant since their last change)
            szu = rec[ru, 2]
            szv = rec[rv, 2]
            rec[ru, 0] += sizeE[int(szu)] * (rec[ru, 1] - hh)
            rec[ru, 1] = hh
            rec[rv, 0] += sizeE[int(szv)] * (rec[rv, 1] - hh)
            rec[rv, 1] = hh
            if szu < szv:
                a, b = ru, rv
            else:
                a, b = rv, ru
            parent[a] = b
            rec[a, 0] = rec[a, 0] - rec[b, 0]
            rec[b, 2] = szu + szv
            rv = b
    ii = start
    for _ in range(n_added):
        g = sg[ii]
        ii += step
        if parent[g] == g:
            rec[g, 0] += sizeE[int(rec[g, 2])] * rec[g, 1]
    ii = start
    for _ in range(n_added):
        g = sg[ii]
        r = _find(parent, rec, stack, g)
        val = rec[g, 0] if r == g else rec[g, 0] + rec[r, 0]
        sout[ii] = sgn * val / hp
        ii += step
    # reset the touched cells for the next pass
    ii = start
    for _ in range(n_added):
        parent[sg[ii]] = -1
        ii += step


def _size_pow(n: int, E: float) -> np.ndarray:
    """``k^E`` for k = 0..n (float64), the extent weights of both TFCE kernels and of the device kernel (NumPy:
    one compiled function fewer to load or compile)."""
    return np.arange(n + 1, dtype=np.float64) ** float(E)


@numba.njit(cache=True, nogil=True)
def _tfce_rows(svals: np.ndarray, spow: np.ndarray, sgrid: np.ndarray, offs: np.ndarray, n_grid: int,
               H: float, sizeE: np.ndarray, two_sided: bool, sout: np.ndarray, r0: int, r1: int) -> None:
    """Per-voxel TFCE of rows ``r0:r1`` (sorted inputs, see :func:`_tfce_pass`); releases the GIL."""
    V = svals.shape[1]
    hp = H + 1.0
    parent = np.full(n_grid, -1, np.int32)
    rec = np.empty((n_grid, 4), np.float64)
    stack = np.empty(V + 1, np.int32)
    nb = np.empty(offs.shape[0], np.int32)
    for b in range(r0, r1):
        for v in range(V):
            sout[b, v] = 0.0
        # rows are sorted increasingly: the positive part is visited from the end
        _tfce_pass(svals[b], spow[b], sgrid[b], V - 1, DOWN, 1.0, offs, hp, sizeE, sout[b], parent, rec, stack, nb)
        if two_sided:
            _tfce_pass(svals[b], spow[b], sgrid[b], FIRST, UP, -1.0, offs, hp, sizeE, sout[b], parent, rec, stack,
                       nb)


def _row_chunks(n_rows: int, n_parts: int) -> list[tuple[int, int]]:
    """Contiguous row ranges, ``n_parts`` of them or fewer (a result never depends on the split)."""
    n_parts = max(1, min(n_parts, n_rows))
    edges = np.linspace(0, n_rows, n_parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def _map_rows(fn, n_rows: int, pool: Executor | None, n_threads: int) -> None:
    """Run ``fn(r0, r1)`` over row chunks, on ``pool`` when given (the numba kernels release the GIL).  Several
    chunks per thread balance the load when a core is shared."""
    if pool is None or n_threads <= 1 or n_rows < 2:
        fn(0, n_rows)
        return
    list(pool.map(lambda ab: fn(*ab), _row_chunks(n_rows, 4 * n_threads)))


def tfce_vectors(maps: np.ndarray, grid: Grid, H: float = 2.0, E: float = 0.5,
                 two_sided: bool = False, pool: Executor | None = None, n_threads: int = 1) -> np.ndarray:
    """Exact TFCE of the positive part of each row of ``maps`` (B x V in-mask voxels, or V); with
    ``two_sided`` the negative part's TFCE is written (negated) where the map is negative.

    ``grid`` comes from :func:`make_grid` (mask + connectivity).  Returns float64 of the shape of ``maps``.
    The voxel order is one NumPy argsort per map (much faster than sorting inside numba) that serves both
    signs; values, heights and grid indices are gathered in that order by NumPy so the numba union-find reads
    them sequentially.  Rows are independent: with ``pool`` (``n_threads`` workers) they are split across
    threads and the result is the same bit for bit.
    """
    m = np.asarray(maps)
    one = m.ndim == 1
    m2 = m[None, :] if one else m
    if m2.dtype not in (np.float32, np.float64):
        m2 = m2.astype(np.float64)
    m2 = np.ascontiguousarray(m2)
    orders = np.argsort(m2, axis=1)
    svals = np.take_along_axis(m2, orders, axis=1)
    absv = np.abs(svals.astype(np.float64))
    spow = absv * absv * absv if float(H) == 2.0 else absv ** (float(H) + 1.0)  # pow is slow; H = 2: cube
    sgrid = grid.lin[orders]
    sout = np.empty(m2.shape, np.float64)
    sizeE = _size_pow(m2.shape[1], float(E))
    _map_rows(lambda r0, r1: _tfce_rows(svals, spow, sgrid, grid.offs, grid.size, float(H), sizeE,
                                        bool(two_sided), sout, r0, r1), m2.shape[0], pool, n_threads)
    out = np.empty(m2.shape, np.float64)
    np.put_along_axis(out, orders, sout, axis=1)
    return out[0] if one else out


# ------------------------------------------------------------------------------------------------------------
# max-only TFCE for the permutation null: no per-voxel output, so no offsets and no final pass over the voxels

@numba.njit(cache=True, nogil=True, inline="always")
def _root(parent: np.ndarray, u: int) -> int:
    """Root of ``u`` in a forest where ``parent[x] > 0`` is a parent and ``parent[x] < 0`` marks a root (minus
    its size); path halving."""
    while True:
        p = parent[u]
        if p < 0:
            return u
        gp = parent[p]
        if gp < 0:
            return p
        parent[u] = gp
        u = gp


@numba.njit(cache=True, nogil=True)
def _max_pass(sv: np.ndarray, sg: np.ndarray, start: int, step: int, sgn: float, offs: np.ndarray, H: float,
              sizeE: np.ndarray, parent: np.ndarray, best: np.ndarray, nb: np.ndarray) -> float:
    """Max over voxels of ``(H+1) * TFCE`` of the part of ``sgn * sv`` above 0 (``sv`` sorted increasingly,
    ``sg`` their grid cells, visited from ``start`` by ``step``: decreasing ``sgn * sv``).

    The TFCE integral is written as a sum over the changes of a voxel's component (Abel summation of the same
    step function): a component of size ``s`` that becomes size ``S`` at height ``h`` adds
    ``h^(H+1) (S^E - s^E)`` to each of its voxels, and a voxel's birth at its own height adds ``h^(H+1)``; the
    value at height 0 is the TFCE.  All voxels of a component gain the same amount, so each root keeps only the
    largest value among its voxels (``best``) and a merge takes the larger of the two; no per-voxel offsets and
    no final pass are needed.  ``parent``: 0 = not in the forest (grid cell 0 is padding, never a voxel),
    > 0 parent cell, < 0 root of size ``-parent``.  The touched cells are reset to 0 at the end.
    """
    V = sv.shape[0]
    K = offs.shape[0]
    gmax = 0.0
    n_added = 0
    ii = start
    while 0 <= ii < V:
        h = sgn * np.float64(sv[ii])
        if not h > 0:
            break
        hh = h * h * h if H == 2.0 else h ** (H + 1.0)
        g = sg[ii]
        ii += step
        n_added += 1
        n_nb = 0
        for k in range(K):  # neighbours in the forest, collected without a branch
            u = g + offs[k]
            nb[n_nb] = u
            n_nb += parent[u] != 0
        parent[g] = -1
        bv = hh
        rv = g
        sz = 1
        for j in range(n_nb):
            u = nb[j]
            if u == rv or parent[u] == rv:  # already in this component: what _root would return, sooner
                continue
            ru = _root(parent, u)
            if ru == rv:
                continue
            su = -parent[ru]
            s = su + sz
            es = sizeE[s]
            bu = best[ru] + hh * (es - sizeE[su])
            bv = max(bv + hh * (es - sizeE[sz]), bu)
            if su > sz:
                parent[rv] = ru
                rv = ru
            else:
                parent[ru] = rv
            parent[rv] = -s
            sz = s
        best[rv] = bv
        gmax = max(gmax, bv)
    ii = start
    for _ in range(n_added):
        parent[sg[ii]] = 0
        ii += step
    return gmax


@numba.njit(cache=True, nogil=True)
def _radix_sort(vals: np.ndarray, lin: np.ndarray, kbuf: np.ndarray, pbuf: np.ndarray, cnt: np.ndarray,
                sv: np.ndarray, sg: np.ndarray) -> None:
    """Stable LSD radix sort (3 digits of 11 bits) of float32 ``vals`` carrying the grid cells ``lin``: writes
    the sorted values ``sv`` and their cells ``sg``.  Floats are mapped to order-preserving unsigned keys
    (flip all bits of negatives, the sign bit of the rest); a digit shared by all keys is skipped.

    Ties keep the order of the first pass's input, which holds the negative values (sign bit set) in increasing
    voxel order and the others in decreasing voxel order.  Both passes of :func:`_max_pass` (the positive part
    from the end, the negative part from the start) therefore visit tied voxels in increasing voxel order, and
    the negative part of ``t`` is processed exactly as the positive part of ``-t``: the TFCE of ``-t`` equals
    that of ``t`` with the tails swapped, bit for bit (the engine's exact sign-flip symmetry relies on it)."""
    V = vals.shape[0]
    bits = vals.view(np.uint32)
    sign = np.uint32(0x80000000)
    ones = np.uint32(0xFFFFFFFF)
    mask = np.uint32(2047)
    cnt[:] = 0
    k0 = kbuf[0]
    p0 = pbuf[0]
    lo = 0
    hi = V - 1
    for i in range(V):
        b = bits[i]
        if b & sign:
            k = b ^ ones
            pos = lo
            lo += 1
        else:
            k = b | sign
            pos = hi
            hi -= 1
        k0[pos] = k
        p0[pos] = lin[i]
        cnt[0, k & mask] += 1
        cnt[1, (k >> np.uint32(11)) & mask] += 1
        cnt[2, k >> np.uint32(22)] += 1
    src = 0
    for d in range(3):
        shift = np.uint32(11 * d)
        c = cnt[d]
        if c[(k0[0] >> shift) & mask] == V:  # every key has this digit
            continue
        tot = 0
        for j in range(2048):
            t = c[j]
            c[j] = tot
            tot += t
        ks = kbuf[src]
        ps = pbuf[src]
        kd = kbuf[1 - src]
        pd = pbuf[1 - src]
        for i in range(V):
            k = ks[i]
            j = (k >> shift) & mask
            pos = c[j]
            c[j] = pos + 1
            kd[pos] = k
            pd[pos] = ps[i]
        src = 1 - src
    ks = kbuf[src]
    ps = pbuf[src]
    out = sv.view(np.uint32)
    for i in range(V):
        k = ks[i]
        out[i] = (k ^ sign) if k & sign else (k ^ ones)
        sg[i] = ps[i]


@numba.njit(cache=True, nogil=True)
def _max_rows_f32(maps: np.ndarray, lin: np.ndarray, offs: np.ndarray, H: float, sizeE: np.ndarray,
                  two_sided: bool, out: np.ndarray, r0: int, r1: int, kbuf: np.ndarray, pbuf: np.ndarray,
                  cnt: np.ndarray, sv: np.ndarray, sg: np.ndarray, parent: np.ndarray, best: np.ndarray,
                  nb: np.ndarray) -> None:
    """Max TFCE of the positive part (``out[r, 0]``) and, with ``two_sided``, of the negative part
    (``out[r, 1]``; else 0) of float32 rows ``r0:r1`` (radix-sorted here; one sort serves both signs).  The work
    arrays come from :func:`_workspace` (``parent`` all zero on entry and on return)."""
    V = maps.shape[1]
    for r in range(r0, r1):
        m = 0.0
        mn = 0.0
        if V:
            _radix_sort(maps[r], lin, kbuf, pbuf, cnt, sv, sg)
            m = _max_pass(sv, sg, V - 1, DOWN, 1.0, offs, H, sizeE, parent, best, nb)
            if two_sided:
                mn = _max_pass(sv, sg, FIRST, UP, -1.0, offs, H, sizeE, parent, best, nb)
        out[r, 0] = m / (H + 1.0)
        out[r, 1] = mn / (H + 1.0)


@numba.njit(cache=True, nogil=True)
def _max_rows_sorted(svals: np.ndarray, sgrid: np.ndarray, offs: np.ndarray, H: float, sizeE: np.ndarray,
                     two_sided: bool, out: np.ndarray, r0: int, r1: int, parent: np.ndarray, best: np.ndarray,
                     nb: np.ndarray) -> None:
    """As :func:`_max_rows_f32` for rows ``r0:r1`` already sorted (any float dtype)."""
    V = svals.shape[1]
    for r in range(r0, r1):
        m = 0.0
        mn = 0.0
        if V:
            m = _max_pass(svals[r], sgrid[r], V - 1, DOWN, 1.0, offs, H, sizeE, parent, best, nb)
            if two_sided:
                mn = _max_pass(svals[r], sgrid[r], FIRST, UP, -1.0, offs, H, sizeE, parent, best, nb)
        out[r, 0] = m / (H + 1.0)
        out[r, 1] = mn / (H + 1.0)


_tls = threading.local()


def _workspace(V: int, grid: Grid) -> tuple[np.ndarray, ...]:
    """This thread's work arrays of the max-only kernel, kept between calls: fresh multi-megabyte arrays per
    call cost page faults (zeroing) comparable to the union-find itself.  ``parent`` is left all zero by
    every kernel call."""
    it = grid.lin.dtype
    key = (V, grid.size, it.str, grid.offs.shape[0])
    ws = getattr(_tls, "ws", None)
    if ws is None or ws[0] != key:
        ws = (key, (np.empty((2, V), np.uint32), np.empty((2, V), it), np.empty((3, 2048), np.int64),
                    np.empty(V, np.float32), np.empty(V, it), np.zeros(grid.size, it), np.empty(grid.size),
                    np.empty(grid.offs.shape[0], it)))
        _tls.ws = ws
    return ws[1]


def tfce_max(maps: np.ndarray, grid: Grid, H: float = 2.0, E: float = 0.5, two_sided: bool = False,
             pool: Executor | None = None, n_threads: int = 1) -> np.ndarray:
    """Max over voxels of the exact TFCE of each row of ``maps`` (B x V, or V): ``max(TFCE(t))``, two-sided
    ``max(max TFCE(t), max TFCE(-t))`` -- the permutation null of :func:`tfce_signed`'s ``max |.|``.

    Float32 rows are sorted by a radix sort inside numba (both signs from one sort); other dtypes by NumPy.
    Rows are split across ``pool``'s ``n_threads`` workers; each row's value does not depend on the split or on
    the thread count.  Equal to ``np.abs(tfce_signed(...)).max(axis=1)`` up to rounding (a different but
    equally exact summation of the same integral; relative differences ~1e-14).
    """
    m = np.asarray(maps)
    tails = tfce_max_tails(m, grid, H, E, two_sided, pool, n_threads)
    return np.maximum(tails[..., 0], tails[..., 1]) if two_sided else tails[..., 0]


def tfce_max_tails(maps: np.ndarray, grid: Grid, H: float = 2.0, E: float = 0.5, negative: bool = True,
                   pool: Executor | None = None, n_threads: int = 1) -> np.ndarray:
    """Max over voxels of the exact TFCE of the positive part (``[..., 0]``) and, with ``negative``, of the
    negative part (``[..., 1]``, else 0) of each row of ``maps`` (B x V, or V): shape (B, 2), or (2,).

    The negative part of ``t`` gives exactly (bit for bit, for float32 rows) the positive part of ``-t``: the
    engine takes the null of a one-sided test at the sign-flipped map ``-s`` from it.  Float32 rows are sorted by
    a radix sort inside numba (both signs from one sort); other dtypes by NumPy."""
    m = np.asarray(maps)
    one = m.ndim == 1
    m2 = m[None, :] if one else m
    B, V = m2.shape
    out = np.zeros((B, 2), np.float64)
    sizeE = _size_pow(V, float(E))
    if m2.dtype == np.float32:
        m2 = np.ascontiguousarray(m2)
        _map_rows(lambda r0, r1: _max_rows_f32(m2, grid.lin, grid.offs, float(H), sizeE, bool(negative), out,
                                               r0, r1, *_workspace(V, grid)), B, pool, n_threads)
    else:
        m2 = np.ascontiguousarray(m2, np.float64)
        orders = np.argsort(m2, axis=1)
        svals = np.take_along_axis(m2, orders, axis=1)
        sgrid = grid.lin[orders]
        _map_rows(lambda r0, r1: _max_rows_sorted(svals, sgrid, grid.offs, float(H), sizeE, bool(negative),
                                                  out, r0, r1, *_workspace(V, grid)[5:]), B, pool, n_threads)
    return out[0] if one else out


def warm_up() -> None:
    """Load the compiled kernels (numba's on-disk cache; compiled and cached there on a fresh install) with the
    argument types the engine uses: float32 null maps, float64 observed map, int32 grid.  The null kernel comes
    first (the first permutation batch needs it), the observed-map kernel second (needed only after the last
    batch).  Run in a background thread while the maps are read (:func:`voxelkit.stats.engine.start_tfce_warmup`);
    loading takes ~0.3 s of CPU (numba's target set-up), compiling ~2 s (``voxelkit stats warmup`` does it ahead)."""
    mask = np.ones((3, 3, 3), bool)
    grid = make_grid(mask, 6)
    x = np.linspace(-1.0, 1.0, 27)
    tfce_max(x[None, :].astype(np.float32), grid, two_sided=True)
    tfce_vectors(x, grid, two_sided=True)


def cache_dir() -> str | None:
    """The folder numba caches the TFCE kernels in: ``$NUMBA_CACHE_DIR`` when set, else ``__pycache__`` next to
    this file when writable, else numba's per-user cache folder (None if numba does not say)."""
    cache = getattr(_max_rows_f32, "_cache", None)
    path = getattr(cache, "_cache_path", None)
    return None if path is None else str(path)


def kernels() -> list:
    """The numba-compiled TFCE kernels (for ``voxelkit stats warmup`` and tests)."""
    return [_tfce_rows, _tfce_pass, _max_rows_f32, _max_rows_sorted, _max_pass, _radix_sort]


@dataclass(frozen=True)
class Grid:
    """In-mask voxels on a zero-padded grid: ``lin`` (V,) grid index of each voxel (C order of the mask),
    ``offs`` (K,) neighbour offsets (both int32, int64 for grids of 2^31 cells or more), ``size`` the number of
    grid cells.  Cell 0 is padding (never a voxel)."""

    lin: np.ndarray
    offs: np.ndarray
    size: int


def make_grid(mask: np.ndarray, connectivity: int = 26) -> Grid:
    """The padded-grid description of ``mask`` for :func:`tfce_vectors`."""
    mask = np.asarray(mask, bool)
    shp = tuple(s + 2 for s in mask.shape)
    idx = np.arange(int(np.prod(shp)), dtype=np.int64).reshape(shp)
    lin = np.ascontiguousarray(idx[1:-1, 1:-1, 1:-1][mask])
    strides = np.array([shp[1] * shp[2], shp[2], 1], np.int64)
    offs = np.ascontiguousarray(offsets(connectivity) @ strides)
    size = int(np.prod(shp))
    it = np.int32 if size < 2**31 - 1 else np.int64
    return Grid(lin.astype(it), offs.astype(it), size)


def tfce_signed(maps: np.ndarray, grid: Grid, H: float = 2.0, E: float = 0.5,
                two_sided: bool = False, pool: Executor | None = None, n_threads: int = 1) -> np.ndarray:
    """TFCE of the positive part; with ``two_sided`` minus the TFCE of the negative part (a signed map)."""
    return tfce_vectors(maps, grid, H, E, two_sided, pool, n_threads)


def tfce_volume(vol: np.ndarray, mask: np.ndarray | None = None, H: float = 2.0, E: float = 0.5,
                connectivity: int = 26) -> np.ndarray:
    """Exact TFCE of the positive part of a 3-D array (voxels outside ``mask`` are background)."""
    if mask is None:
        mask = np.ones(vol.shape, bool)
    out = np.zeros(vol.shape, np.float64)
    out[mask] = tfce_vectors(np.asarray(vol, np.float64)[mask], make_grid(mask, connectivity), H, E)
    return out


def tfce_reference(vol: np.ndarray, H: float = 2.0, E: float = 0.5, connectivity: int = 26) -> np.ndarray:
    """Slow exact TFCE (tests): label ``vol >= level`` at every distinct positive value with
    ``scipy.ndimage.label`` and add ``extent^E (l_j^{H+1} - l_{j+1}^{H+1}) / (H+1)`` piecewise."""
    from scipy import ndimage  # noqa: PLC0415  (slow import, references only)

    vol = np.asarray(vol, np.float64)
    levels = np.unique(vol[vol > 0])[::-1]
    lower = np.append(levels[1:], 0.0)
    out = np.zeros(vol.shape)
    st = structure(connectivity)
    for lj, lk in zip(levels, lower, strict=True):
        lab, _ = ndimage.label(vol >= lj, structure=st)
        ext = np.bincount(lab.ravel()).astype(np.float64)
        inside = lab > 0
        out[inside] += ext[lab[inside]] ** E * (lj ** (H + 1) - lk ** (H + 1)) / (H + 1)
    return out


def tfce_numeric(vol: np.ndarray, dh: float, H: float = 2.0, E: float = 0.5,
                 connectivity: int = 26) -> np.ndarray:
    """TFCE by midpoint-rule numerical integration with step ``dh`` (converges to the exact value as dh -> 0)."""
    from scipy import ndimage  # noqa: PLC0415

    vol = np.asarray(vol, np.float64)
    vmax = float(vol.max()) if vol.size else 0.0
    out = np.zeros(vol.shape)
    st = structure(connectivity)
    n = int(np.ceil(vmax / dh))
    for k in range(n):
        h = (k + 0.5) * dh
        lab, _ = ndimage.label(vol >= h, structure=st)
        ext = np.bincount(lab.ravel()).astype(np.float64)
        inside = lab > 0
        out[inside] += ext[lab[inside]] ** E * h ** H * dh
    # the last interval [n*dh - dh/2 ... v] is partial for each voxel: midpoint rule on a partial step
    return out
