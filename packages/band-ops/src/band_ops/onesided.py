"""Dedicated band solvers for divergences without a closed form: tabulated start, one step.

One-sided form. Each end of the band is the lower end of the band of one outcome of the binary
pair: the sampled token (probability a = p, ratio w = r) gives the lower bound; the rest of the
vocabulary (a = 1 - p, ratio w = s = (1 - r p) / (1 - p)) gives the upper bound, because r rises
exactly as s falls. With b = 1 - a and the odds kappa = a / b, the other outcome's ratio is
w' = 1 + kappa (1 - w), and each side solves

    D(w) = a f(w) + b f(w') = delta,   w in (0, 1),

where D is convex and falls from D(0) to D(1) = 0. The side saturates at w = 0 when
D(0) <= delta; D(0) rises with kappa alone, so saturation is ``kappa <= kappa_sat`` for a
threshold computed once per delta. kappa = exp(-log p) - 1 or its reciprocal keeps its relative
precision where 1 - p rounds (deciding on a rounded 1 - p would misplace float32 tokens next to
the threshold, where the root depends on 1 - p to 1e-9). The outputs are lower = w (sampled
token) and upper = 1 + (1 - s) (1 - p) / p (rest of the vocabulary): one solver for both sides.
Rows of every (2, M) quantity are (upper side, lower side).

For a given delta the root depends on a alone, through y = logit(a) = log kappa. A
``StartTable`` holds it, in a smooth form, against a coordinate derived from y: tabulated once
per (divergence, delta) by the robust solver below, interpolated linearly in float32 on fine
cells (about 1e-6). From there one Halley step (float64) or Newton step (float32) in the compute
dtype reaches rounding level. The step's size relative to the distance to the singular ends
checks that: a side whose step is too large (a token within 1e-8 of a saturation threshold,
a float32 token whose 1 - p is below float32's range) is solved again by the robust float64
solver, once per call for all such tokens.

Speed (CPU). The per-token work is a few transcendental functions and about 40 elementwise
operations, in place on buffers reused across chunks of ``CHUNK`` tokens. At that size every
operation runs on the calling thread (below torch's grain size), so no operation waits at an
OpenMP barrier, which on a loaded machine costs more than the operation; the chunks are spread
over the calling thread and a small thread pool, one at a time (a thread the machine
deschedules takes fewer). The row views are made once per chunk size: per call,
dispatch costs about as much as the arithmetic. Comparisons, masks and ``masked_fill`` cost
several times an arithmetic operation, so saturation and the check are arithmetic, and a chunk
builds a mask only when its largest step is too large.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

# Tokens per chunk on CPU (on other devices the whole batch is one chunk): (2, CHUNK) values
# are exactly torch's grain size, the largest operation it runs on the calling thread.
CHUNK = 1 << 14
WORKERS: int | None = None  # threads for the chunks; None: torch.get_num_threads()
# Relative size of the final step below which the result is at rounding level: the step is
# about the start's error e, and the error after it about e^3 (Halley, float64) or e^2
# (Newton, float32).
STEP_TOLERANCE = {torch.float64: 2e-5, torch.float32: 3e-4}
# Cells of the start tables: linear interpolation on this spacing is good to about 1e-6.
CELL = 1.0 / 256
ROBUST_ITERATIONS = 200
COARSE = 32  # table nodes per node solved from scratch when a table is built
# Saturation as arithmetic: clamp((kappa - kappa_sat) * BIG, 0, 1) is 0 on saturated sides and
# 1 on the others (but for kappa within 1e-30 of the threshold, where the root is 0 anyway).
BIG = 1e30


@dataclass(frozen=True)
class StartTable:
    """A start value G(x) on uniform cells of a coordinate x, interpolated linearly in float32.

    ``packed`` is (cells,) int64, each the bits of two float32: the value at the cell's left
    end and its slope per cell, fetched by one gather (any device gathers int64). Coordinates
    are given in cell units, u = (x - x0) / h.
    """

    packed: Tensor
    x0: float
    inv_h: float
    cells: int
    top: float  # the largest float32 below ``cells``: the truncation of u stays in range

    def lookup(self, u: Tensor, scratch: Scratch) -> Tensor:
        """Returns G at cell coordinates ``u`` (float32 (2, M)), clamped to the table."""
        frac = torch.clamp(u.view(-1), 0.0, self.top, out=scratch.frac)
        scratch.index.copy_(frac)  # truncation: floor for u >= 0
        frac.frac_()
        torch.index_select(self.packed, 0, scratch.index, out=scratch.gathered)
        pairs = scratch.pairs
        return torch.addcmul(pairs[:, 0], frac, pairs[:, 1], out=scratch.g.view(-1)).view(2, -1)


def linear_table(values: Tensor, x0: float, h: float) -> StartTable:
    """Returns the table interpolating ``values`` at x0 + h k, k = 0 .. cells."""
    value = values[:-1].to(torch.float32)
    slope = (values[1:] - values[:-1]).to(torch.float32)
    packed = torch.stack((value, slope), dim=1).contiguous().view(torch.int64).view(-1)
    cells = packed.shape[0]
    top = torch.nextafter(torch.tensor(float(cells)), torch.tensor(0.0)).item()
    return StartTable(packed, x0, 1.0 / h, cells, top)


# --- the robust solver (float64), used for the tables and for flagged tokens ---------------------

# residual(w, m, e, d, a, b, kappa, second) -> (D, dD/dw, d2D/dw2 or None): at w with
# m = 1 - w, e = m / w and d = w' - 1 = kappa m, which let every logarithm be a log1p of a
# precise argument (log w = -log1p(e), log w' = log1p(d)). Allocating; the fast path has its
# own in-place version of each divergence.
Residual = Callable[..., tuple[Tensor, Tensor, Tensor | None]]


def robust_logit(
    residual: Residual,
    a: Tensor,
    b: Tensor,
    kappa: Tensor,
    delta: float,
    start: Tensor | None = None,
    rtol: float | None = None,
) -> Tensor:
    """Returns l = logit(w) solving D(w) = delta, by safeguarded Newton on l, float64.

    The bracket starts at l in [-700, 700] (w from 1e-304 to 1 - 1e-304); a Newton step that
    leaves it is replaced by bisection. Iterating on the logit keeps w and 1 - w both to full
    relative precision. For an unsaturated side the root is in the bracket; a saturated one
    comes out at the bracket's low end (callers leave saturated sides out). A side stops once
    its Newton step is below ``rtol`` (1 + |l|) (default 4 eps), or small and no longer
    shrinking: next to a saturation threshold l is only determined to about
    eps delta / (D' w (1 - w)), far above eps.
    """
    eps = torch.finfo(torch.float64).eps
    rtol = 4 * eps if rtol is None else rtol
    lo = torch.full_like(a, -700.0)
    hi = torch.full_like(a, 700.0)
    ell = torch.zeros_like(a) if start is None else start.clamp(-699.0, 699.0)
    previous = torch.full_like(a, math.inf)
    finished = torch.zeros_like(a, dtype=torch.bool)
    for _ in range(ROBUST_ITERATIONS):
        e = torch.exp(-ell)
        w = 1 / (1 + e)
        m = e * w
        excess, slope_w, _ = residual(w, m, e, kappa * m, a, b, kappa, False)
        excess = excess - delta
        outside = excess > 0  # D > delta: w below the root
        lo = torch.where(outside, ell, lo)
        hi = torch.where(outside, hi, ell)
        step = excess / (slope_w * w * m)
        candidate = ell - step
        # Judged before the bracket test: at the root the candidate equals an end of it.
        size = step.abs()
        scale = 1 + ell.abs()
        done = (size <= rtol * scale) | ((size <= 1e-6 * scale) & (size >= previous / 2))
        done |= hi - lo <= rtol * scale
        previous = size
        inside = (candidate >= lo) & (candidate <= hi)
        new = torch.where(inside | done, candidate, (lo + hi) / 2)
        ell = torch.where(finished, ell, new)  # a finished side keeps its value
        finished |= done
        if bool(finished.all()):
            break
    return ell


def logit_sides(
    a: Tensor, b: Tensor, kappa: Tensor, delta: float, start: Tensor | None, residual: Residual
) -> tuple[Tensor, Tensor]:
    """Returns (w, 1 - w) from ``robust_logit``, for flagged sides; ``start``: -logit(w)."""
    e = torch.exp(-robust_logit(residual, a, b, kappa, delta, None if start is None else -start))
    w = 1 / (1 + e)
    return w, e * w


# The coordinate of the reverse-KL and JS tables: x = log d + d / D_SCALE in the distance
# d = y - y_sat from the saturation threshold. Near the threshold the root vanishes like
# d / log(1/d), smooth in log d; far from it (small delta) log((1 - w) / w) is close to linear
# in y, which a log d coordinate would bend (interpolation errors of 1e-4 at delta = 1e-4).
D_SCALE = 8.0


def _distance(x: Tensor) -> Tensor:
    """Returns d > 0 with log d + d / D_SCALE = x (float64), by Newton from above."""
    d = torch.minimum(torch.exp(x), D_SCALE * x.clamp(min=1.0))
    for _ in range(100):
        step = (torch.log(d) + d / D_SCALE - x) / (1 / d + 1 / D_SCALE)
        d = d - step
        if bool((step.abs() <= 1e-15 * d).all()):
            break
    return d


def logit_table(
    residual: Residual, delta: float, y_sat: float, x_low: float, y_top: float
) -> StartTable | None:
    """Returns a table of -logit(w) at the root against x = log d + d / D_SCALE, d = y - y_sat.

    The sign makes exp(G) = (1 - w) / w. The table runs from x_low to y = y_top, both nodes.
    None when y_sat is within 1 of ``y_top`` (no token can be unsaturated but by rounding).
    """
    if not y_sat < y_top - 1.0:
        return None
    d_top = y_top - y_sat
    x_top = math.log(d_top) + d_top / D_SCALE
    cells = math.ceil((x_top - x_low) / CELL)
    h = (x_top - x_low) / cells
    x = x_low + h * torch.arange(cells + 1, dtype=torch.float64)
    y = (y_sat + _distance(x)).clamp_(max=y_top)
    a, b, kappa = torch.sigmoid(y), torch.sigmoid(-y), torch.exp(y)
    # Coarse to fine: every COARSE-th node from scratch, the others from their interpolation
    # (a few Newton steps instead of a bracket search each).
    coarse = torch.arange(0, cells + COARSE, COARSE).clamp_(max=cells)
    # The table only seeds a step per token: 1e-10 is plenty.
    rough = robust_logit(residual, a[coarse], b[coarse], kappa[coarse], delta, rtol=1e-10)
    position = torch.arange(cells + 1, dtype=torch.float64) / COARSE
    left = position.long().clamp_(max=len(coarse) - 2)
    frac = (x - x[coarse[left]]) / (x[coarse[left + 1]] - x[coarse[left]])
    start = torch.lerp(rough[left], rough[left + 1], frac)
    ell = robust_logit(residual, a, b, kappa, delta, start, rtol=1e-10)
    # Bounded so that exp(G) stays finite in float32; such roots are flagged and solved again.
    return linear_table((-ell).clamp_(-80.0, 80.0), x_low, h)


def log_distance(
    y: Tensor, kappa: Tensor, kappa_sat: float, table: StartTable, s: Scratch
) -> Tensor:
    """Returns x = log d + d / D_SCALE, d = y - y_sat, in the table's cell units (``s.u``).

    d = log(kappa / kappa_sat) is formed in float64 from y; in float32 (where y itself is only
    good to 1e-7 |y|) as log1p((kappa - kappa_sat) / kappa_sat), whose argument keeps its
    relative precision however close kappa is to kappa_sat.
    """
    if y.dtype == torch.float64:
        d = torch.sub(y, math.log(kappa_sat), out=s.g)
    else:
        d = torch.sub(kappa, kappa_sat, out=s.g).mul_(1.0 / kappa_sat).log1p_()
    d.clamp_(min=math.exp(table.x0))
    x = torch.log(d, out=s.u).add_(d, alpha=1.0 / D_SCALE)
    return x.sub_(table.x0).mul_(table.inv_h)


T_MAX = 1e300


def robust_kl(a: Tensor, b: Tensor, kappa: Tensor, delta: float) -> Tensor:
    """Returns t = -log w for KL, by Newton on t from the asymptote, float64.

    D(t) = a t - b log1p(kappa (1 - e^-t)) is convex and increasing, and lies above its
    asymptote a t + b log b, so Newton from the asymptote's root (delta - b log b) / a
    descends monotonically onto the root.
    """
    eps = torch.finfo(torch.float64).eps
    t_cap = -math.log(eps) + 4.0
    # A root beyond T_MAX (a tiny, delta large) may exceed float64's range; there w = 0 and
    # 1 - w = 1 whatever t is, so t stops at T_MAX.
    t = ((delta - b * torch.log(b)) / a).clamp(max=T_MAX)
    for _ in range(ROBUST_ITERATIONS):
        m = -torch.expm1(-t.clamp(max=t_cap))
        excess = a * t - b * torch.log1p(kappa * m) - delta
        slope = a * m / (b + a * m)
        step = excess / slope
        t = (t - step).clamp(max=T_MAX)
        if bool(((step.abs() <= 16 * eps * t) | (t >= T_MAX)).all()):
            break
    return t


def kl_sides(
    a: Tensor, b: Tensor, kappa: Tensor, delta: float, start: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Returns (w, 1 - w) from ``robust_kl`` (which needs no start); w stops at twice the
    smallest normal number."""
    t = robust_kl(a, b, kappa, delta)
    tiny = torch.finfo(torch.float64).tiny
    return torch.exp(-t.clamp(max=-math.log(2 * tiny))), -torch.expm1(-t)


# --- the fast step on w (reverse KL, Jensen-Shannon) ------------------------------------------

# fast_residual(delta, scratch, e, w, m, d, rows) -> (R, S, C), rows of ``rows`` holding, for
# some factor k > 0: R = k (D - delta), S = -k D' (> 0) and C = k D'' (None in float32, where
# the step is Newton's).
FastResidual = Callable[..., tuple[Tensor, Tensor, Tensor | None]]


def w_step(fast_residual: FastResidual) -> Callable[..., Tensor]:
    """Returns the final step for a divergence solved in w, from a table of log((1 - w) / w).

    The start's w and 1 - w both come from e = (1 - w) / w, each with full relative precision
    (the lower bound is w, the upper one is built from 1 - w); the step moves them together.
    """

    def step(g: Tensor, delta: float, s: Scratch, lower: Tensor, upper: Tensor) -> Tensor:
        e, w, m, d = s.rows[:4]
        torch.exp(g, out=e)
        torch.add(e, 1.0, out=w).reciprocal_()
        torch.mul(e, w, out=m)
        torch.mul(s.kappa, m, out=d)
        r, slope, curvature = fast_residual(delta, s, e, w, m, d, s.rows[4:])
        r.div_(slope)  # minus the Newton step: w_new = w + r
        if curvature is not None:
            # Halley: divide the Newton step by 1 - newton D'' / (2 D') = 1 - r C / (2 S).
            r.div_(curvature.mul_(r).div_(slope).mul_(-0.5).add_(1.0))
        torch.sub(m[0], r[0], out=upper)
        torch.add(w[1], r[1], out=lower)
        # The step relative to the distance to either end: w -> 0 is singular (log w).
        scale = torch.minimum(w, m, out=slope)
        return torch.div(r, scale, out=slope).abs_()

    return step


def w_solver(
    name: str,
    *,
    residual: Residual,
    fast_residual: FastResidual,
    saturation: Callable[[float], float],
    threshold: Callable[[float], float],
    x_low: float,
    y_top: float,
) -> SideSolver:
    """Returns the solver of a divergence solved in w, from a table of -logit(w) at the root
    against the distance to the saturation threshold (``logit_table``, ``log_distance``).

    ``saturation(delta)`` is kappa_sat and ``threshold(delta)`` its logarithm y_sat (given on
    its own: it stays finite where kappa_sat overflows); the table spans x_low to y = y_top.
    """

    @functools.lru_cache(maxsize=8)
    def table(delta: float) -> StartTable | None:
        return logit_table(residual, delta, threshold(delta), x_low, y_top)

    def coordinate(y: Tensor, kappa: Tensor, delta: float, table: StartTable, s: Scratch) -> Tensor:
        return log_distance(y, kappa, saturation(delta), table, s)

    return SideSolver(
        name=name,
        saturation=saturation,
        table=table,
        coordinate=coordinate,
        step=w_step(fast_residual),
        robust=functools.partial(logit_sides, residual=residual),
    )


# --- buffers -----------------------------------------------------------------------------------


class Scratch:
    """Buffers and row views for chunks of ``size`` tokens, made once and reused.

    ``q`` holds (1-p, p, 1-p), so that a = (1-p, p) and b = (p, 1-p) are views; ``kappa``
    is (odds, 1/odds) with odds = (1-p)/p. ``rows[k]`` are (2, M) work rows of the compute
    dtype, ``top[k]`` / ``bottom[k]`` their upper and lower halves.
    """

    ROWS = 12

    def __init__(self, size: int, dtype: torch.dtype, device: torch.device) -> None:
        def empty(*shape: int, kind: torch.dtype = dtype) -> Tensor:
            return torch.empty(*shape, dtype=kind, device=device)

        self.size = size
        self.q = empty(3, size)
        self.a, self.b = self.q[0:2], self.q[1:3]
        self.p1, self.p = self.q[0], self.q[1]
        self.kappa = empty(2, size)
        self.odds, self.inverse_odds = self.kappa[0], self.kappa[1]
        self.inv_p = empty(size)
        self.ones = torch.ones(size, dtype=dtype, device=device)
        self.y = empty(2, size)
        self.unsaturated = empty(2, size)
        self.unsaturated_top, self.unsaturated_bottom = self.unsaturated[0], self.unsaturated[1]
        self.rows = [empty(2, size) for _ in range(self.ROWS)]
        self.top = [r[0] for r in self.rows]
        self.bottom = [r[1] for r in self.rows]
        self.u = empty(2, size, kind=torch.float32)
        self.g = empty(2, size, kind=torch.float32)
        self.frac = empty(2 * size, kind=torch.float32)
        self.index = empty(2 * size, kind=torch.int64)
        self.gathered = empty(2 * size, kind=torch.int64)
        self.pairs = self.gathered.view(torch.float32).view(2 * size, 2)
        self._constant: tuple[float, Tensor] | None = None

    def constant(self, value: float) -> Tensor:
        """Returns a (2, M) row filled with ``value`` (kept while the value stays the same)."""
        if self._constant is None or self._constant[0] != value:
            self._constant = (value, torch.full_like(self.y, value))
        return self._constant[1]


# --- the driver ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SideSolver:
    """One dedicated divergence: saturation threshold, start table, fast step, robust solver.

    - ``saturation(delta)``: kappa_sat (a side saturates when kappa <= kappa_sat), or None.
    - ``table(delta)``: the start table (CPU), or None when (almost) every token saturates.
    - ``coordinate(y, kappa, delta, table, scratch)``: the table coordinate in cell units,
      float32 (2, M) in ``scratch.u``, from y = logit(a) = log kappa (compute dtype).
    - ``step(g, delta, scratch, lower, upper)``: the final step (Halley in float64, Newton in
      float32) from the table value g; writes the lower bound's w into ``lower`` and the upper
      side's 1 - w into ``upper``, and returns the step's size relative to the root's scale,
      (2, M): a side whose value exceeds ``STEP_TOLERANCE`` (or is NaN) goes to the robust
      solver.
    - ``robust(a, b, kappa, delta, start)``: float64 (w, 1 - w) for flagged sides, from the
      table's values ``start`` (float64, or None without a table).
    """

    name: str
    saturation: Callable[[float], float | None]
    table: Callable[[float], StartTable | None]
    coordinate: Callable[[Tensor, Tensor, float, StartTable, Scratch], Tensor]
    step: Callable[[Tensor, float, Scratch, Tensor, Tensor], Tensor]
    robust: Callable[[Tensor, Tensor, Tensor, float, Tensor | None], tuple[Tensor, Tensor]]


@functools.lru_cache(maxsize=16)
def _device_table(solver: SideSolver, delta: float, device: torch.device) -> StartTable | None:
    table = solver.table(delta)
    if table is None or device.type == "cpu":
        return table
    return StartTable(table.packed.to(device), table.x0, table.inv_h, table.cells, table.top)


# --- element-wise operations on the calling thread -------------------------------------------


def _loaded_libraries() -> list[str]:
    """Returns the paths of the shared libraries loaded in this process (Linux), else those in
    torch's lib folder."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            return list(dict.fromkeys(line.split()[-1] for line in maps if "/" in line))
    except OSError:
        return [str(p) for p in (Path(torch.__file__).parent / "lib").iterdir()]


def _swap_openmp(get: Callable[[], int], put: Callable[[int], None], threads: int) -> int:
    """Sets the calling thread's OpenMP thread count; returns the previous one."""
    previous = get()
    put(threads)
    return previous


@functools.lru_cache(maxsize=1)
def _thread_settings() -> list[Callable[[int], int]]:
    """Returns the per-thread thread counts torch's CPU operations obey, as functions that set
    one and return its previous value.

    - OpenMP's (``omp_get_max_threads`` / ``omp_set_num_threads``), where torch's parallel
      backend is OpenMP and its runtime is loaded and reports the calling thread's torch count;
    - MKL's thread-local one (``MKL_Set_Num_Threads_Local``, C interface; 0 means "the global
      count"), where torch has MKL: some functions (exp) run on MKL's own threads once
      ``torch.set_num_threads`` was called.
    Empty where neither is found: nothing is changed then.
    """
    settings: list[Callable[[int], int]] = []
    libraries = _loaded_libraries()
    if "parallel backend: OpenMP" in torch.__config__.parallel_info():
        threads = torch.get_num_threads()  # torch's lazy per-thread set-up happens first
        for path in libraries:
            if not os.path.basename(path).startswith(("libgomp", "libiomp5", "libomp")):
                continue
            try:
                omp = ctypes.CDLL(path)
                get, put = omp.omp_get_max_threads, omp.omp_set_num_threads
            except (OSError, AttributeError):
                continue
            get.restype, get.argtypes = ctypes.c_int, []
            put.restype, put.argtypes = None, [ctypes.c_int]
            if get() == threads:
                settings.append(functools.partial(_swap_openmp, get, put))
                break
    if torch.backends.mkl.is_available():
        for path in libraries:
            if not os.path.basename(path).startswith(("libtorch_cpu", "libmkl_rt")):
                continue
            try:
                local = ctypes.CDLL(path).MKL_Set_Num_Threads_Local
            except (OSError, AttributeError):
                continue
            local.restype, local.argtypes = ctypes.c_int, [ctypes.c_int]
            settings.append(local)
            break
    return settings


@contextlib.contextmanager
def serial_operations() -> Iterator[None]:
    """Runs torch's CPU operations inside on the calling thread only; restores its settings.

    Chunks are spread over threads of their own (the calling thread and a pool), so an
    operation that torch parallelises again (transcendental functions from about 5,000
    elements) only adds thread teams contending for the same cores: 1.3 to 1.5x slower on 2
    cores. The settings changed are per thread (see ``_thread_settings``): other threads and
    later calls keep theirs.
    """
    settings = _thread_settings()
    if settings:
        torch.get_num_threads()  # torch's lazy per-thread set-up would otherwise undo them
    previous: list[tuple[Callable[[int], int], int]] = []
    try:
        for swap in settings:
            previous.append((swap, swap(1)))
        yield
    finally:
        for swap, value in reversed(previous):
            swap(value)


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, pool)
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """Returns the module's thread pool with at least ``workers`` threads.

    A forked child gets a new one: the parent's threads do not exist there, and work sent to
    them would wait forever.
    """
    global _POOL
    with _POOL_LOCK:
        pid = os.getpid()
        if _POOL is None or _POOL[0] != pid or _POOL[1] < workers:
            if _POOL is not None and _POOL[0] == pid:
                _POOL[2].shutdown(wait=False)
            _POOL = (pid, workers, ThreadPoolExecutor(workers, thread_name_prefix="band_ops"))
        return _POOL[2]


def solve(solver: SideSolver, logp: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Returns (lower, upper) for log p (N,), float32 or float64, in chunks of ``CHUNK``."""
    n = logp.shape[0]
    lower, upper = torch.empty_like(logp), torch.empty_like(logp)
    table = _device_table(solver, delta, logp.device)
    kappa_sat = solver.saturation(delta)
    chunk = CHUNK if logp.device.type == "cpu" else max(n, 1)
    starts = range(0, n, chunk)
    workers = min(WORKERS or torch.get_num_threads(), len(starts))
    # Chunks are handed out one at a time: a thread that the machine deschedules takes fewer
    # of them instead of holding up the call with a fixed share.
    pending, lock = iter(starts), threading.Lock()

    def claim() -> int:
        with lock:
            return next(pending)

    def run() -> list[Tensor]:
        with serial_operations():
            return _solve_chunks(solver, table, kappa_sat, logp, delta, claim, chunk, lower, upper)

    if workers <= 1 or logp.device.type != "cpu":
        flagged = run()
    else:
        helpers = [_pool(workers - 1).submit(run) for _ in range(workers - 1)]
        flagged = run()  # the calling thread works too
        for helper in helpers:
            flagged += helper.result()
    if flagged:
        # Solved once for the whole batch: the robust solver's per-iteration overhead would
        # otherwise be paid in every chunk.
        tokens = torch.cat(flagged)
        lower[tokens], upper[tokens] = robust_bounds(solver, logp[tokens], delta)
    return lower, upper


def _solve_chunks(
    solver: SideSolver,
    table: StartTable | None,
    kappa_sat: float | None,
    logp: Tensor,
    delta: float,
    claim: Callable[[], int],
    chunk: int,
    lower: Tensor,
    upper: Tensor,
) -> list[Tensor]:
    """Solves the chunks it claims until none is left; returns the tokens left to the robust
    solver."""
    n = logp.shape[0]
    scratch: Scratch | None = None
    flagged: list[Tensor] = []
    while True:
        try:
            start = claim()
        except StopIteration:
            return flagged
        stop = min(start + chunk, n)
        if scratch is None or scratch.size != stop - start:
            scratch = Scratch(stop - start, logp.dtype, logp.device)
        columns = _solve_chunk(
            solver,
            table,
            kappa_sat,
            logp[start:stop],
            delta,
            scratch,
            lower[start:stop],
            upper[start:stop],
        )
        if columns is not None:
            flagged.append(columns + start)


def side_quantities(logp: Tensor, s: Scratch) -> None:
    """Fills ``s.q`` (1-p, p, 1-p), ``s.kappa`` (odds, 1/odds) and ``s.inv_p`` from log p.

    inv_p = exp(-log p) is the upper bound's exact cap; odds = expm1(-log p), clamped to the
    smallest normal number (p = 1 keeps a finite 1/odds). p and 1 - p come from these two with
    a relative error of an ulp or two, also where p rounds to 1.
    """
    tiny = torch.finfo(logp.dtype).tiny
    torch.neg(logp, out=s.odds)
    torch.exp(s.odds, out=s.inv_p)
    s.odds.expm1_().clamp_(min=tiny)
    torch.reciprocal(s.inv_p, out=s.p)
    torch.mul(s.odds, s.p, out=s.p1)
    s.q[2].copy_(s.p1)
    torch.reciprocal(s.odds, out=s.inverse_odds)


def _solve_chunk(
    solver: SideSolver,
    table: StartTable | None,
    kappa_sat: float | None,
    logp: Tensor,
    delta: float,
    s: Scratch,
    lower: Tensor,
    upper: Tensor,
) -> Tensor | None:
    """Writes the chunk's bounds; returns the columns of tokens left to the robust solver."""
    side_quantities(logp, s)
    unsaturated = None
    if kappa_sat is not None:
        unsaturated = torch.sub(s.kappa, kappa_sat, out=s.unsaturated)
        unsaturated.mul_(BIG).clamp_(0.0, 1.0)
    if table is None:
        badness = torch.full_like(s.kappa, math.inf)
        upper.zero_()
        lower.zero_()
    else:
        # y = logit(a) = (log odds, -log odds), in the compute dtype: float64 odds can lie
        # beyond float32's range, and next to a saturation threshold y - y_sat needs y's digits.
        torch.log(s.odds, out=s.y[0])
        torch.neg(s.y[0], out=s.y[1])
        u = solver.coordinate(s.y, s.kappa, delta, table, s)
        g = table.lookup(u, s)
        badness = solver.step(g, delta, s, lower, upper)
    _write_bounds(s, unsaturated, lower, upper)
    if unsaturated is not None:
        badness.mul_(unsaturated)
    tolerance = STEP_TOLERANCE[logp.dtype]
    if bool(badness.amax() <= tolerance):  # False for NaN too
        return None
    flagged = badness.le(tolerance).logical_not_()
    if unsaturated is not None:
        flagged &= unsaturated > 0
    columns = flagged.any(0).nonzero().squeeze(1)
    return columns if columns.numel() else None


def _write_bounds(s: Scratch, unsaturated: Tensor | None, lower: Tensor, upper: Tensor) -> None:
    """Turns ``lower`` = w and ``upper`` = 1 - s into the bounds: saturation and caps.

    The upper bound is 1 + (1 - s) odds. A saturated upper side gets 1 - s >= 2, so that the
    cap makes it exactly inv_p; a saturated lower side gets 0. Without saturation (KL) the
    step's results are in [0, 1] already.
    """
    if unsaturated is not None:
        # Clamped first: w * 0 of a negative w would be -0.0, which a clamp keeps.
        lower.clamp_(0.0, 1.0).mul_(s.unsaturated_bottom)
        # max(1 - s, 2 (1 - unsaturated)): 2 on a saturated side, 1 - s untouched on the others
        # (adding 2 and taking it away again would round 1 - s to 2's ulp).
        floor = torch.mul(s.unsaturated_top, -2.0, out=s.top[0]).add_(2.0)
        torch.maximum(upper, floor, out=upper)
    torch.addcmul(s.ones, upper, s.odds, out=upper)
    torch.minimum(upper, s.inv_p, out=upper)


def robust_bounds(solver: SideSolver, logp: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Returns (lower, upper) for log p (K,) solved in float64: the fast path, then the robust
    solver for the sides it still flags.

    Most sides flagged in float32 only lacked float64's digits (next to a saturation
    threshold the root depends on 1 - p to 1e-9); the bracketed solver is left for the rest.
    The caps and saturated ends are taken in the dtype of ``logp``, as on the fast path.
    """
    k = logp.shape[0]
    table = _device_table(solver, delta, logp.device)
    kappa_sat = solver.saturation(delta)
    wide = Scratch(k, torch.float64, logp.device)
    side_quantities(logp.double(), wide)
    w = torch.zeros_like(wide.kappa)
    m = torch.ones_like(wide.kappa)
    flagged = torch.ones_like(wide.kappa, dtype=torch.bool)
    start = None
    if table is not None:
        torch.log(wide.odds, out=wide.y[0])
        torch.neg(wide.y[0], out=wide.y[1])
        g = table.lookup(solver.coordinate(wide.y, wide.kappa, delta, table, wide), wide)
        start = g.double()
        badness = solver.step(g, delta, wide, w[1], m[0])
        # The step writes what the bounds use: 1 - w of the upper side, w of the lower.
        flagged = badness.le(STEP_TOLERANCE[torch.float64]).logical_not_()
    if kappa_sat is not None:
        flagged &= wide.kappa > kappa_sat  # saturated sides have no root (their ends are set)
    if bool(flagged.any()):
        w_fix, m_fix = solver.robust(
            wide.a[flagged],
            wide.b[flagged],
            wide.kappa[flagged],
            delta,
            None if start is None else start[flagged],
        )
        w[flagged], m[flagged] = w_fix, m_fix
    s = Scratch(k, logp.dtype, logp.device)
    side_quantities(logp, s)
    lower, upper = torch.empty_like(logp), torch.empty_like(logp)
    upper.copy_(m[0])
    lower.copy_(w[1])
    unsaturated = None
    if kappa_sat is not None:
        unsaturated = torch.sub(s.kappa, kappa_sat, out=s.unsaturated)
        unsaturated.mul_(BIG).clamp_(0.0, 1.0)
    else:
        # As on the fast path, a lower bound never saturating stops at twice the smallest
        # normal number of the output dtype (float64's would round to 0 in float32).
        floor = torch.tensor(math.log(2 * torch.finfo(logp.dtype).tiny), dtype=logp.dtype).exp()
        lower.clamp_(min=float(floor))  # the fast path's exp(-u_cap), to the bit
    _write_bounds(s, unsaturated, lower, upper)
    return lower, upper
