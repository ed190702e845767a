"""The permutation engine: observed t, null maxima of t / cluster extent / cluster mass / TFCE, and voxelwise
exceedance counts, computed in batches of permutations as matrix products on (maps x voxels) data.

For a design ``M`` with orthonormal basis ``Q`` (n x r), nuisance basis ``Zn`` and data ``Y`` (n x V):
``E = (I - Zn Zn') Y`` normalised to unit norm per voxel (t is scale invariant).  For a permutation or sign
matrix ``P`` let ``U = Q' P E`` (r x V).  Then, with ``a = Q' pinv(M)' c``, ``cvar = c' (M'M)^+ c``,
``df = n - r``::

    t = (a . U) / sqrt((1 - |U|^2) / df * cvar)

because the permuted data have the same norm (permutations and sign flips are orthogonal), so the residual sum
of squares is ``1 - |U|^2`` (the sign-/permutation-invariant sum of squares is reused).  A batch of ``b``
permutations is one product of a (b*r x n) matrix with E.  For one-sample / paired tests (r = 1, no nuisance)
``t = kappa s / sqrt(1 - s^2)`` with ``s = sign(a) U`` is increasing in ``s``, so maxima and exceedance counts
are taken on ``s`` directly (no per-element t evaluation) and only the maxima are converted.

F contrasts (``PreparedDesign.Fb``): ``F = |Fb U|^2 / s / ((1 - |U|^2) / df)`` with ``Fb = L' A'`` from the Cholesky
factor ``L`` of ``[C (M'M)^+ C']^-1`` and ``A = Q' pinv(M)' C'`` (:func:`f_from_U`).  Variance smoothing
(``EngineConfig.variance_smoothing``, :mod:`.varsmooth`): the variance rows ``(1 - |U|^2) norm^2 / df`` of a whole
batch are smoothed within the mask before t is formed (:func:`smoothed_t`); voxels are coupled, so the batch's
pseudo-t is formed over all voxels at once and the voxel blocks read slices of it.

**Exact sign-flip enumerations** (all 2^n flips, :attr:`.design.PermutationSet.mirrored`): the rows come in
antithetic pairs ``s`` and ``-s`` (rows ``j`` and ``N - 1 - j``), and the statistic map of ``-s`` is exactly
minus the map of ``s`` (``U`` changes sign; t, pseudo-t and the fast path's score are odd in ``U``, F is even).
Only rows ``0 .. N/2 - 1`` and ``N - 1`` (the identity's partner; row 0 itself is replaced by the observed map)
are computed.  Each computed map gives its partner's null entries: for a two-sided test (and F) the same values;
for a one-sided test the other tail of the same map (max t of ``-s`` = -min t of ``s``, clusters of ``t < -thr``,
TFCE of the negative part, the count of ``t <= -t_obs``).  The nulls (in permutation order) and the counts equal
those of computing every map, bit for bit (the same floating-point operations on negated values; a product of
one row, which BLAS rounds differently, is made only where the full computation makes one: :func:`_computed_rows`).
About half the work for the same result.  Random flips and permutations compute every map.

Memory is bounded by ``batch_size x n_voxels`` working values.  The same code runs on NumPy and CuPy
(``be.xp``); on the CPU cluster labelling (cc3d) and exact TFCE (numba) run per batch on the host; on the GPU
they run on the device (:mod:`.device_null`) and only the per-permutation maxima come back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backend import Backend, chunks
from ..threads import blas_single_thread as _blas_single_thread  # the one helper (models use it too)
from ..threads import n_cpus
from .clusters import batch_cluster_max, label_clusters
from .design import Design, PermutationSet

log = logging.getLogger("voxelkit")


@dataclass
class PreparedDesign:
    """Normalised residual data and the design quantities the engine needs (host, float64)."""

    E: np.ndarray          # (n, V_valid) unit-norm residuals of Y on the nuisance space
    Q: np.ndarray          # (n, r) orthonormal basis of the model
    a: np.ndarray          # (r,)
    cvar: float
    df: int
    fast: bool             # rank-1 model without nuisance: score s monotone in t
    kappa: float           # fast path: t = kappa s / sqrt(1 - s^2)
    sign_a: float
    valid: np.ndarray      # (V,) bool: voxels analysed
    n_constant: int
    n_nonfinite: int
    norm: np.ndarray | None = None   # (V_valid,) residual norms (data units), for variance smoothing
    Fb: np.ndarray | None = None     # F contrast: (s, r) with F = |Fb U|^2 / s / (rss / df); None: t contrast
    f_rank: int = 0                  # F contrast: rank s of the contrast matrix

    def t_from_U(self, U: np.ndarray) -> np.ndarray:
        """t (or F, for an F contrast) from (r, V) projections (float64)."""
        if self.Fb is not None:
            return f_from_U(np, U[None], self.Fb, self.f_rank, self.df, 0.0)[0]
        num = self.a @ U
        rss = np.maximum(1.0 - np.sum(U * U, axis=0), 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = num / np.sqrt(rss / self.df * self.cvar)
        return np.where(rss > 0, t, np.sign(num) * np.inf)

    def score_from_t(self, t: float) -> float:
        """Fast path: the score s at which t is reached (inverse of t(s))."""
        return float(t / np.sqrt(self.kappa ** 2 + t ** 2))


def prepare(Y: np.ndarray, design: Design) -> PreparedDesign:
    """Residualise on the nuisance space, normalise, and flag constant / non-finite voxels."""
    Y = np.asarray(Y, np.float64)
    n, V = Y.shape
    if n != design.n:
        raise ValueError(f"design has {design.n} rows but there are {n} maps")
    finite = np.all(np.isfinite(Y), axis=0)
    Yf = np.where(finite[None, :], Y, 0.0)
    constant = finite & (np.ptp(Yf, axis=0) == 0)
    Zn = design.nuisance()
    E = Yf - Zn @ (Zn.T @ Yf) if Zn.shape[1] else Yf.copy()
    norm = np.sqrt(np.sum(E * E, axis=0))
    scale = np.sqrt(np.sum(Yf * Yf, axis=0))
    # residuals zero (data explained by the nuisance model alone) count as constant
    degenerate = finite & ~constant & (norm <= 1e-10 * np.maximum(scale, 1e-300))
    valid = finite & ~constant & ~degenerate
    E = E[:, valid] / norm[valid]
    M = design.matrix
    u, s, _ = np.linalg.svd(M, full_matrices=False)
    Q = u[:, s > 1e-10 * s.max()]
    r = Q.shape[1]
    df = n - r
    if np.ndim(design.contrast) == 2:  # F contrast (s x p): F = (C b)' [C (M'M)^+ C']^-1 (C b) / s / sigma^2
        C = design.contrast
        A = Q.T @ (np.linalg.pinv(M).T @ C.T)                     # (r, s): C b = A' U
        L = np.linalg.cholesky(np.linalg.inv(C @ np.linalg.pinv(M.T @ M) @ C.T))
        if df < 1:
            raise ValueError(f"no residual degrees of freedom: {n} maps and a model of rank {r}")
        return PreparedDesign(E, Q, np.zeros(r), 1.0, df, False, 0.0, 1.0, valid,
                              int(constant.sum() + degenerate.sum()), int((~finite).sum()), norm=norm[valid],
                              Fb=L.T @ A.T, f_rank=int(C.shape[0]))
    w = np.linalg.pinv(M).T @ design.contrast
    a = Q.T @ w
    cvar = float(design.contrast @ np.linalg.pinv(M.T @ M) @ design.contrast)
    if df < 1:
        raise ValueError(f"no residual degrees of freedom: {n} maps and a model of rank {r}")
    fast = r == 1 and Zn.shape[1] == 0
    kappa = float(abs(a[0]) / np.sqrt(cvar / df)) if fast else 0.0
    return PreparedDesign(E, Q, a, cvar, df, fast, kappa, float(np.sign(a[0])) if fast else 1.0, valid,
                    int(constant.sum() + degenerate.sum()), int((~finite).sum()), norm=norm[valid])


@dataclass
class EngineConfig:
    """What to compute (thresholds in t units)."""

    two_sided: bool = False
    cluster_t: float | None = None
    tfce: bool = False
    tfce_H: float = 2.0
    tfce_E: float = 0.5
    connectivity: int = 26
    batch_size: int | None = None
    dtype: str = "auto"          # "auto" (float32 for one-sample/paired, float64 otherwise), "float32", "float64"
    threads: int | None = None   # CPU threads (None: the CPUs this process may use); see _run
    variance_smoothing: float | None = None  # FWHM in mm of the variance smoothing (None: plain t)
    affine: np.ndarray | None = None         # voxel-to-mm affine (voxel sizes for variance smoothing)


@dataclass
class EngineResult:
    """Observed statistics (over valid voxels) and null distributions (row 0 = identity = observed)."""

    t: np.ndarray                       # (V_valid,) float64
    count: np.ndarray                   # (V_valid,) permutations with stat >= observed (identity included)
    h0_max_t: np.ndarray                # (N,) max t (two-sided: max |t|)
    tfce: np.ndarray | None = None      # (V_valid,) signed for two-sided
    h0_max_tfce: np.ndarray | None = None
    h0_max_extent: np.ndarray | None = None
    h0_max_mass: np.ndarray | None = None
    dtype: str = "float64"
    extra: dict = field(default_factory=dict)


#: Use the exact sign-flip symmetry (module docstring).  A private switch: tests set it to False to compare with
#: the computation of every map.
_SYMMETRY = True
#: Largest stacked label volume (bytes) of a default cluster batch on the host.
CLUSTER_BATCH_BYTES = 256 * 2**20


def _computed_rows(perms: PermutationSet, B: int, symmetric: bool) -> tuple[np.ndarray, list[slice]]:
    """The permutation rows whose maps are computed, and their batches (slices of those rows).

    Without the symmetry: every row, in batches of ``B``.  With it: rows ``0 .. N/2 - 1`` and ``N - 1``, in
    batches of ``B`` rows, except that a product of one row is made exactly where the full computation makes one:
    BLAS rounds a one-row product (matrix-vector code) differently from a row of a larger one.  The full
    computation has one-row batches when ``B == 1`` (all of them) and when ``N % B == 1`` (row ``N - 1`` alone);
    so row ``N - 1`` is a batch of its own then, and any other batch of one row is joined to the one before."""
    N = perms.n_perm
    if not symmetric:
        return np.arange(N), list(chunks(N, B))
    H = N // 2
    rows = np.r_[np.arange(H), N - 1]
    if B == 1:
        return rows, list(chunks(rows.size, 1))
    alone = N % B == 1   # the full computation's last batch is row N - 1 alone
    sl = list(chunks(H if alone else H + 1, B))
    if len(sl) > 1 and sl[-1].stop - sl[-1].start == 1:
        sl[-2:] = [slice(sl[-2].start, sl[-1].stop)]
    if alone:
        sl.append(slice(H, H + 1))
    return rows, sl


def _perm_rows(prep: PreparedDesign, perms: PermutationSet, sl: slice | np.ndarray) -> np.ndarray:
    """(b*r, n) float64 rows G such that G @ E gives U = Q' P E for each permutation of the slice (or rows)."""
    Q = prep.Q
    n, r = Q.shape
    if perms.signs is not None:
        s = perms.signs[sl].astype(np.float64)
        G = Q.T[None, :, :] * s[:, None, :]
    else:
        o = perms.orders[sl]
        b = o.shape[0]
        G = np.zeros((b, r, n))
        G[np.arange(b)[:, None], :, o] = Q[None, :, :]
    return G.reshape(-1, n)


def run(prep: PreparedDesign, perms: PermutationSet, mask_valid: np.ndarray, be: Backend, cfg: EngineConfig,
        progress: Callable[[int], None] | None = None) -> EngineResult:
    """Run all permutations.  ``mask_valid`` is the 3-D boolean mask of analysed voxels (C order = E columns)."""
    if be.is_gpu:
        return _run(prep, perms, mask_valid, be, cfg, progress)
    with _blas_single_thread():
        return _run(prep, perms, mask_valid, be, cfg, progress)


_warmup: threading.Thread | None = None


def start_tfce_warmup(daemon: bool = False) -> None:
    """Import numba and load the TFCE kernels from its cache in a background thread (once per process), so
    that this ~0.5 s (mostly numba's target set-up, which also loads SciPy's BLAS) overlaps reading the maps
    instead of delaying the first batch.  The engine's own calls wait for it (numba's compile lock); a failure
    here is only logged at debug level, the real call reports it.  ``daemon``: the process may exit without
    waiting for it (the compilation started on import, :func:`start_cold_compile`)."""
    global _warmup
    if _warmup is not None:
        return

    def load() -> None:
        # The garbage collector is left alone: pausing or freezing it here would change the whole process
        # (library users' long-running sessions included), for ~0.4 s of a one-off start-up.
        try:
            from .tfce import warm_up  # noqa: PLC0415

            warm_up()
        except Exception:  # pragma: no cover - reported by the engine's own call
            log.debug("voxelkit stats: TFCE warm-up failed", exc_info=True)

    _warmup = threading.Thread(target=load, name="voxelkit-tfce-warmup", daemon=daemon)
    _warmup.start()


#: The TFCE kernels the engine calls (numba compiles the helpers into them); their cache index files tell whether
#: numba's cache holds them for the present source of tfce.py.
TFCE_ENTRY_KERNELS = ("_max_rows_f32", "_tfce_rows")


def _numba_cache_dir(src: str) -> str:
    """The folder numba's cache locators pick for functions defined in ``src`` (numba.core.caching, without
    importing numba): ``$NUMBA_CACHE_DIR/<folder>_<sha1 of the folder path>`` when set, else ``__pycache__``
    next to ``src`` when it is (or can be made) writable, else the per-user cache
    (``$XDG_CACHE_HOME`` or ``~/.cache``, ``numba/<folder>_<sha1>``)."""
    folder = os.path.dirname(os.path.abspath(src))
    sub = f"{os.path.basename(folder)}_{hashlib.sha1(folder.encode()).hexdigest()}"
    env = os.environ.get("NUMBA_CACHE_DIR")
    if env:
        return os.path.join(env, sub)
    tree = os.path.join(folder, "__pycache__")
    if os.access(tree if os.path.isdir(tree) else folder, os.W_OK):
        return tree
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "numba", sub)


def tfce_cache_cold() -> bool:
    """True when numba's on-disk cache lacks a TFCE kernel compiled from the present ``tfce.py`` (a fresh install,
    or a changed source): its index file (``tfce.<kernel>-<line>.py<version>.nbi``) is missing or does not hold
    the source's SHA-256 stamp (numba's freshness check).  Costs a hash of one file and a few small reads; numba
    is not imported.  (A cache from another numba version counts as warm: numba then compiles at first use.)"""
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tfce.py")
    try:
        with open(src, "rb") as f:
            stamp = hashlib.sha256(f.read()).digest()
    except OSError:  # no source file (frozen or zipped install): numba would not cache either
        return False
    folder = _numba_cache_dir(src)
    try:
        names = os.listdir(folder)
    except OSError:  # no cache folder yet
        return True
    tail = f".py{sys.version_info[0]}{sys.version_info[1]}{getattr(sys, 'abiflags', '')}.nbi"
    for kernel in TFCE_ENTRY_KERNELS:
        fresh = False
        for name in names:
            if not (name.startswith(f"tfce.{kernel}-") and name.endswith(tail)):
                continue
            try:
                with open(os.path.join(folder, name), "rb") as f:
                    fresh = stamp in f.read()
            except OSError:
                continue
            if fresh:
                break
        if not fresh:
            return True
    return False


def _env_on(name: str) -> bool:
    v = os.environ.get(name, "").strip().lower()
    return v not in ("", "0", "false", "no", "off")


def start_cold_compile() -> bool:
    """On the engine's first import: when numba's cache lacks the TFCE kernels (:func:`tfce_cache_cold`), compile
    them in a background daemon thread (:func:`start_tfce_warmup`), so that a fresh install's first TFCE run
    (TFCE is on by default) finds them compiled, or partly so.  Never with ``NUMBA_DISABLE_JIT`` set, or with
    ``VOXELKIT_TFCE_PRECOMPILE=0``.  No output and no effect on results; a failure surfaces only where the
    kernels are used.  With a warm cache nothing starts (numba is not imported).  Returns whether it started."""
    if _warmup is not None or _env_on("NUMBA_DISABLE_JIT") or os.environ.get("VOXELKIT_TFCE_PRECOMPILE") == "0":
        return False
    try:
        if not tfce_cache_cold():
            return False
    except Exception:  # pragma: no cover - a check that cannot run: leave it to the first use
        log.debug("voxelkit stats: TFCE cache check failed", exc_info=True)
        return False
    start_tfce_warmup(daemon=True)
    return True


def _run(prep: PreparedDesign, perms: PermutationSet, mask_valid: np.ndarray, be: Backend, cfg: EngineConfig,
         progress: Callable[[int], None] | None = None) -> EngineResult:
    # CPU threads (NumPy releases the GIL in matmul and reductions; BLAS itself is single-threaded here): whole
    # batches in parallel without TFCE, else the voxel blocks of one batch (_run_batches); the GPU takes all
    # voxels of a batch at once.
    n_threads = 1 if be.is_gpu else min(cfg.threads or n_cpus(), 8)
    if n_threads <= 1:
        return _run_batches(prep, perms, mask_valid, be, cfg, progress, None)
    with ThreadPoolExecutor(n_threads) as pool:
        return _run_batches(prep, perms, mask_valid, be, cfg, progress, pool, n_threads)


def _run_batches(prep: PreparedDesign, perms: PermutationSet, mask_valid: np.ndarray, be: Backend, cfg: EngineConfig,
                 progress: Callable[[int], None] | None, pool: ThreadPoolExecutor | None,
                 n_threads: int = 1) -> EngineResult:
    xp = be.xp
    vsm = None
    one_sample = prep.fast   # (before variance smoothing turns the fast path off: float32 suffices there too)
    if cfg.variance_smoothing is not None:
        # pseudo-t: the statistic is no longer a monotone function of the score, so the GLM path forms t
        from .varsmooth import VarianceSmoother  # noqa: PLC0415

        prep = dataclasses.replace(prep, fast=False, kappa=0.0, sign_a=1.0)
        aff = cfg.affine if cfg.affine is not None else np.eye(4)
    E = prep.E
    n, V = E.shape
    r = prep.Q.shape[1]
    N = perms.n_perm
    dtname = cfg.dtype
    if dtname == "auto":
        dtname = "float32" if one_sample else "float64"
    dt = np.dtype(dtname)
    eps = float(np.finfo(dt).eps)
    # default batch: 256 flips for max-T; with clusters 256 while the stacked cc3d volume of a dense batch (B x
    # the grid, 5 bytes a voxel) stays within CLUSTER_BATCH_BYTES, else 128 (fewer, larger batches: 0.40 s
    # instead of 0.45 s for 5,000 flips of 76,800 voxels on 2 cores); 64 with TFCE (B maps of float32 t)
    if cfg.tfce:
        B_default = 64
    elif cfg.cluster_t is not None:
        B_default = 256 if 256 * 5 * mask_valid.size <= CLUSTER_BATCH_BYTES else 128
    else:
        B_default = 256
    B = max(1, int(cfg.batch_size or B_default))
    # voxel blocks keep the (B x block) working set in cache on the CPU; the GPU takes all voxels at once
    vblock = V if be.is_gpu else 8192

    t_obs = prep.t_from_U(prep.Q.T @ E)
    if cfg.variance_smoothing is not None:
        vsm = VarianceSmoother(mask_valid, aff, cfg.variance_smoothing, be, dt)
        # the observed pseudo-t in float64 on the host
        host_vsm = VarianceSmoother(mask_valid, aff, cfg.variance_smoothing, _host_backend())
        t_obs = smoothed_t(np, (prep.Q.T @ E)[None], prep.a, prep.norm, prep.cvar, prep.df, host_vsm)[0]
        norm_d = be.asarray(prep.norm, dtype=dt)
    if prep.fast:
        obs_score = prep.sign_a * (prep.Q.T @ E)[0]
    else:
        obs_score = t_obs
    obs_stat = np.abs(obs_score) if cfg.two_sided else obs_score
    tol = 16 * eps * (1.0 + np.abs(obs_stat))

    Ed = be.asarray(E, dtype=dt)
    obs_score_d = be.asarray(obs_score, dtype=dt)
    thr_d = be.asarray(obs_stat - tol, dtype=dt)
    # GPU: fused exceedance count kernel (kernels/stats_count.cu, int32 counts); CPU: NumPy
    count_d = xp.zeros(V, dtype=np.int32 if be.is_gpu else np.int64)
    count_kernel = be.kernel("stats_count", f"stats_exceed_count_{'f32' if dt == np.float32 else 'f64'}") \
        if be.is_gpu else None
    h0_max = np.zeros(N)
    h0_ext = np.zeros(N) if cfg.cluster_t is not None else None
    h0_mass = np.zeros(N) if cfg.cluster_t is not None else None
    h0_tfce = np.zeros(N) if cfg.tfce else None
    a_d = be.asarray(prep.a, dtype=dt)
    Fb_d = be.asarray(prep.Fb, dtype=dt) if prep.Fb is not None else None
    if cfg.tfce:  # numba is imported only when TFCE is asked for (import cost ~0.5 s)
        from .tfce import make_grid, tfce_max, tfce_max_tails, tfce_signed  # noqa: PLC0415

        nbr = make_grid(mask_valid, cfg.connectivity)
    if cfg.cluster_t is not None:
        thr_score = prep.score_from_t(cfg.cluster_t) if prep.fast else float(cfg.cluster_t)

    def to_t(score):
        if prep.fast:
            return prep.kappa * score / xp.sqrt(xp.maximum(1 - score * score, eps))
        return score

    def scores(G, vs: slice):
        S = G @ Ed[:, vs]
        if prep.fast:
            return S if prep.sign_a > 0 else -S
        b = G.shape[0] // r
        U = S.reshape(b, r, -1)
        if Fb_d is not None:  # F contrast
            return f_from_U(xp, U, Fb_d, prep.f_rank, prep.df, eps)
        num = xp.tensordot(a_d, U, axes=([0], [1]))
        rss = xp.maximum(1 - xp.sum(U * U, axis=1), eps)
        return num / xp.sqrt(rss * (prep.cvar / prep.df))

    # CPU, one-sample / paired scores: one matmul into this thread's reused buffer, then in-place |.|, the row
    # maxima and the exceedance counts as a uint8 sum (fresh multi-megabyte temporaries per block cost page faults,
    # and a bool sum casts every element to int64: measured 2.8x faster per block than the plain NumPy expressions)
    host_fast = prep.fast and not be.is_gpu
    tls = threading.local()

    def buffers(b: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        ws = getattr(tls, "ws", None)
        if ws is None or ws[0].size < b * w:
            ws = (np.empty(b * w, dt), np.empty(b * w, np.bool_))
            tls.ws = ws
        return tuple(x[:b * w].reshape(b, w) for x in ws)

    thread_counts: list[np.ndarray] = []   # batch-parallel host runs: one count array per thread

    def add_count(vs: slice, c) -> None:
        """Add one block's exceedance counts: into ``count_d`` (disjoint voxel slices across threads), or with
        whole batches in parallel into this thread's own array (summed at the end: integers, order-free)."""
        if not batch_par:
            count_d[vs] += c
            return
        arr = getattr(tls, "count", None)
        if arr is None:
            arr = tls.count = np.zeros(V, np.int64)
            thread_counts.append(arr)
        arr[vs] += c

    def fast_block(vs: slice, Gs: np.ndarray, first: bool, tb: np.ndarray | None, single: np.ndarray | None = None,
                   negp: bool = False):
        """``single``: rows without a partner (None: no symmetry); ``negp``: one-sided with the symmetry (the
        partners' statistics from the other tail)."""
        w = vs.stop - vs.start
        b = Gs.shape[0]
        sc, over = buffers(b, w)
        np.matmul(Gs, Ed[:, vs], out=sc)
        if first:
            sc[0] = obs_score_d[vs]
        if tb is not None:
            tb[:, vs] = to_t(sc)
        signed = cfg.cluster_t is not None and cfg.two_sided
        if cfg.two_sided:
            np.abs(sc, out=sc)
        m = sc.max(axis=1)
        mneg = -sc.min(axis=1) if negp else None
        cdt = np.uint16 if b < 65536 else np.int64
        np.greater_equal(sc, thr_d[vs], out=over)
        c = over.view(np.uint8).sum(axis=0, dtype=cdt)
        if single is None:
            add_count(vs, c)
        else:  # the partners' counts: |s| >= |s_obs| again (two-sided), or s <= -s_obs (one-sided)
            if negp:
                c = c.astype(np.int64)
                np.less_equal(sc, nthr_d[vs], out=over)
                c += over.view(np.uint8).sum(axis=0, dtype=cdt)
            else:
                c = 2 * c.astype(np.int64)
            c -= over[single].view(np.uint8).sum(axis=0, dtype=np.int64)
            add_count(vs, c)
        sup = supn = None
        if cfg.cluster_t is not None:
            np.greater(sc, thr_score, out=over)
            idx = np.flatnonzero(over)
            tv = to_t(sc.reshape(-1)[idx])
            ri, ci = idx // w, idx % w
            if signed:
                # the signs of the few supra-threshold voxels, recomputed from G and E (|s| > thr_score > 0, so a
                # rounding difference cannot change them): cheaper than a signbit pass over the whole block
                raw = np.einsum("ij,ji->i", Gs[ri], Ed[:, vs.start + ci])
                if first:
                    raw[ri == 0] = obs_score_d[vs.start + ci[ri == 0]]
                tv = np.where(raw < 0, -tv, tv)
            sup = (ri, ci + vs.start, tv)
            if negp:  # the partners' maps -sc: their voxels above the threshold
                np.less(sc, -thr_score, out=over)
                over[single] = False
                idx = np.flatnonzero(over)
                supn = (idx // w, idx % w + vs.start, to_t(-sc.reshape(-1)[idx]))
        return m, sup, mneg, supn

    # GPU: TFCE and cluster maxima on the device, only the maxima come back (voxelkit/stats/device_null.py)
    dnull = None
    if be.is_gpu and V and (cfg.tfce or cfg.cluster_t is not None):
        from .device_null import DeviceNull, gpu_batch_size  # noqa: PLC0415

        B = int(cfg.batch_size or gpu_batch_size(be, V, N, cfg.tfce, cfg.cluster_t is not None, dt.itemsize))
        dnull = DeviceNull(be, mask_valid, cfg.connectivity, min(B, N), cfg.cluster_t,
                           thr_score if cfg.cluster_t is not None else None, cfg.tfce, cfg.tfce_H, cfg.tfce_E,
                           cfg.two_sided)
    vblocks = chunks(V, vblock)
    # exact enumeration: half of the maps, each giving its partner's nulls (module docstring); host only
    sym = bool(_SYMMETRY and dnull is None and not be.is_gpu and perms.mirrored)
    even = cfg.two_sided or prep.Fb is not None   # the partner's statistics are the same values
    comp, batches = _computed_rows(perms, B, sym)
    partner = N - 1 - comp
    has_p = (comp != 0) & (comp != N - 1) if sym else np.zeros(comp.size, bool)
    nthr_d = -thr_d
    # the batch's t maps for TFCE, allocated once (a fresh B x V array per batch costs page faults)
    b_max = max((s.stop - s.start for s in batches), default=0)
    tb_all = np.empty((b_max, V), np.float32) if cfg.tfce and dnull is None else None
    # host without TFCE: whole batches run in parallel threads (each its voxel blocks in turn, then its
    # clusters), each thread adding its exceedance counts into its own array; otherwise the voxel blocks of one
    # batch run in parallel (TFCE splits its rows over the pool itself)
    batch_par = bool(pool is not None and not be.is_gpu and not cfg.tfce and vsm is None and len(batches) > 1)
    inner = None if batch_par else pool

    def do_batch(bsl: slice) -> int:
        """One batch of permutations: its nulls (and its partners'); returns the number of maps done."""
        rows = comp[bsl]
        b = rows.size
        hp = has_p[bsl]
        # rows of the batch without a partner (the identity, row N - 1): their counts and nulls are single
        single = np.flatnonzero(~hp) if sym else None
        neg = sym and not even   # one-sided: the partner's statistics come from the other tail
        G = be.asarray(_perm_rows(prep, perms, rows), dtype=dt)
        tb = tb_all[:b] if tb_all is not None else None
        # variance smoothing couples the voxels: the batch's pseudo-t over all voxels at once
        t_vs = smoothed_t(xp, (G @ Ed).reshape(b, r, V), a_d, norm_d, prep.cvar, prep.df, vsm) \
            if vsm is not None else None

        Gs = (G if prep.sign_a > 0 else -G) if host_fast else None  # negation is exact: the sign folded into G

        def block(vs: slice, G=G, first=bool(rows[0] == 0), tb=tb, t_vs=t_vs, Gs=Gs, single=single, neg=neg):
            """One voxel block of one batch: row maxima, exceedance counts, supra-threshold voxels (and, with
            the symmetry, the partners' maxima and supra-threshold voxels for a one-sided test)."""
            if Gs is not None and t_vs is None:
                return fast_block(vs, Gs, first, tb, single, neg)
            sc = scores(G, vs) if t_vs is None else t_vs[:, vs]
            if first:
                sc[0] = obs_score_d[vs]
            if count_kernel is not None and vs.start == 0 and vs.stop == V:
                sc = xp.ascontiguousarray(sc)
                be.launch(count_kernel, V, (sc, thr_d, count_d, np.int32(sc.shape[0]), np.int32(V),
                                            np.int32(1 if cfg.two_sided else 0)))
                st = None
                m = xp.maximum(sc.max(axis=1), -sc.min(axis=1)) if cfg.two_sided else sc.max(axis=1)
            else:
                st = xp.abs(sc) if cfg.two_sided else sc
                m = st.max(axis=1)
                over = st >= thr_d[vs]
                c = xp.sum(over, axis=0)
                if single is not None:  # the partners' counts: |t| >= |t_obs| again, or t <= -t_obs
                    if neg:
                        over = sc <= nthr_d[vs]
                        c = c + xp.sum(over, axis=0)
                    else:
                        c = 2 * c
                    c = c - xp.sum(over[single], axis=0)
                add_count(vs, c)
            if dnull is not None:
                return m, dnull.batch(sc, to_t), None, None
            mneg = -sc.min(axis=1) if neg else None
            sup = supn = None
            if cfg.cluster_t is not None:
                # supra-threshold voxels of this block (sparse), signed t values
                w = vs.stop - vs.start
                if st is None:
                    st = xp.abs(sc) if cfg.two_sided else sc
                idx = xp.flatnonzero(st > thr_score)
                tv = to_t(sc.reshape(-1)[idx])
                idx_h = be.to_host(idx)
                sup = (idx_h // w, idx_h % w + vs.start, be.to_host(tv))
                if neg:  # the partners' maps -sc: their voxels above the threshold
                    below = sc < -thr_score
                    below[single] = False
                    idx = xp.flatnonzero(below)
                    idx_h = be.to_host(idx)
                    supn = (idx_h // w, idx_h % w + vs.start, be.to_host(to_t(-sc.reshape(-1)[idx])))
            if tb is not None:
                tb[:, vs] = be.to_host(to_t(sc))
            return m, sup, mneg, supn

        parts = [block(vs) for vs in vblocks] if inner is None else list(inner.map(block, vblocks))
        bmax = parts[0][0]
        for p in parts[1:]:
            bmax = xp.maximum(bmax, p[0])
        sup = [p[1] for p in parts]
        bmax = be.to_host(bmax)
        h0_max[rows] = bmax
        pr = partner[bsl][hp]   # the partners' rows (empty without the symmetry)
        if neg:
            bneg = parts[0][2]
            for p in parts[1:]:
                bneg = np.maximum(bneg, p[2])
            h0_max[pr] = bneg[hp]
        else:
            h0_max[pr] = bmax[hp]
        if dnull is not None:
            if cfg.cluster_t is not None:
                h0_ext[rows], h0_mass[rows] = sup[0]["extent"], sup[0]["mass"]
            if cfg.tfce:
                h0_tfce[rows] = sup[0]["tfce"]
        if cfg.cluster_t is not None and dnull is None:
            parts_sup = [sup] + ([[p[3] for p in parts]] if neg else [])
            found = []
            for sp in parts_sup:
                found.append(batch_cluster_max(np.concatenate([x[0] for x in sp]), np.concatenate([x[1] for x in sp]),
                                               np.concatenate([x[2] for x in sp]), cfg.cluster_t, b, mask_valid,
                                               cfg.connectivity))
            h0_ext[rows], h0_mass[rows] = found[0]
            h0_ext[pr], h0_mass[pr] = found[-1][0][hp], found[-1][1][hp]
        if cfg.tfce and dnull is None:
            # max-only exact TFCE (radix sort + union-find in numba, rows split over the threads)
            if neg:  # one sort per map serves both: the positive part for s, the negative part for -s
                tails = tfce_max_tails(tb, nbr, cfg.tfce_H, cfg.tfce_E, True, pool, n_threads)
                h0_tfce[rows] = tails[:, 0]
                h0_tfce[pr] = tails[hp, 1]
            else:
                tf = tfce_max(tb, nbr, cfg.tfce_H, cfg.tfce_E, cfg.two_sided, pool, n_threads)
                h0_tfce[rows] = tf
                h0_tfce[pr] = tf[hp]
        return b + pr.size

    if batch_par:
        for done in pool.map(do_batch, batches):
            if progress is not None:
                progress(done)
        for arr in thread_counts:
            count_d += arr
    else:
        for bsl in batches:
            done = do_batch(bsl)
            if progress is not None:
                progress(done)

    res = EngineResult(t=t_obs, count=be.to_host(count_d).astype(np.int64), h0_max_t=h0_max, dtype=dtname,
                       extra={"batch_size": B, "maps_computed": int(comp.size), "sign_flip_symmetry": sym})
    if vsm is not None:
        res.extra["variance_smoothing_sigma_vox"] = [float(x) for x in vsm.sigmas]
    # the identity's null entries are the observed values computed in float64 (guarantees p >= 1/N)
    res.h0_max_t[0] = float(np.max(np.abs(t_obs) if cfg.two_sided else t_obs)) if V else 0.0
    if prep.fast:
        # convert score maxima to t (two-sided: |t| is increasing in |s|)
        res.h0_max_t[1:] = prep.kappa * h0_max[1:] / np.sqrt(np.maximum(1 - h0_max[1:] ** 2, eps))
    if cfg.cluster_t is not None:
        vol = np.zeros(mask_valid.shape)
        vol[mask_valid] = t_obs
        e0 = m0 = 0.0
        for sgn in ((1.0, -1.0) if cfg.two_sided else (1.0,)):
            _, ext, mass = label_clusters(sgn * vol, cfg.cluster_t, mask_valid, cfg.connectivity)
            e0 = max(e0, float(ext[1:].max(initial=0.0)))
            m0 = max(m0, float(mass[1:].max(initial=0.0)))
        h0_ext[0], h0_mass[0] = e0, m0
        res.h0_max_extent, res.h0_max_mass = h0_ext, h0_mass
    if cfg.tfce:
        res.tfce = tfce_signed(t_obs, nbr, cfg.tfce_H, cfg.tfce_E, cfg.two_sided)
        h0_tfce[0] = float(np.abs(res.tfce).max(initial=0.0))
        res.h0_max_tfce = h0_tfce
    return res


def _host_backend() -> Backend:
    from ..backend import NUMPY  # noqa: PLC0415

    return NUMPY


def smoothed_t(xp: Any, U: Any, a: Any, norm: Any, cvar: float, df: int, smoother: Any) -> Any:
    """Variance-smoothed (pseudo-)t, (b, V), of (b, r, V) projections ``U = Q' P E`` (unit-norm residuals).

    In data units the contrast estimate is ``(a . U) norm`` and the variance ``(1 - |U|^2) norm^2 / df``
    (``norm``: the residual norm of each voxel); the variance rows are smoothed within the mask
    (``smoother.smooth``, :class:`.varsmooth.VarianceSmoother`) before ``t = estimate / sqrt(var * cvar)``.
    All arrays are of the module ``xp``.  With a 0 mm smoother this is the plain t.
    """
    num = xp.tensordot(a, U, axes=([0], [1]))
    rss = xp.maximum(1.0 - xp.sum(U * U, axis=1), 0.0)
    var = smoother.smooth(rss * (norm * norm)[None, :]) * (cvar / df)
    tiny = float(np.finfo(np.dtype(U.dtype)).tiny)
    return num * norm[None, :] / xp.sqrt(xp.maximum(var, tiny))


def f_from_U(xp: Any, U: Any, Fb: Any, s: int, df: int, eps: float) -> Any:
    """F, (b, V), of (b, r, V) projections: ``|Fb U|^2 / s / (rss / df)`` with ``rss = 1 - |U|^2`` (F = t^2 for a
    one-row contrast).  ``rss`` is floored at ``eps`` (a perfect fit gives a large finite F)."""
    num = xp.sum((Fb[None] @ U) ** 2, axis=1)
    rss = xp.maximum(1.0 - xp.sum(U * U, axis=1), max(eps, 1e-300))
    return num / s / (rss / df)


start_cold_compile()  # a fresh install: the TFCE kernels compile in the background from the first import
