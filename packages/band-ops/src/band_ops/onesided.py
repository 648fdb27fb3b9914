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

For a given delta the root depends on a alone, through y = logit(a) = log kappa. ``StartTable``
holds it, in a smooth form, against a coordinate derived from y: tabulated once per
(divergence, delta) by the robust solver below, interpolated by cubic pieces in float32, good
to about 1e-6. From there one Halley step (float64) or Newton step (float32) in the compute
dtype reaches rounding level. The step's size relative to the distance to the singular ends
checks that: a side whose step is too large (a token within 1e-8 of a saturation threshold,
float32 tokens whose 1 - p is below float32's range) is solved again by the robust float64
solver, once per call for all such tokens.

Speed (CPU). The per-token work is a few transcendental functions and about 60 elementwise
operations, done in place on buffers reused across chunks of ``CHUNK`` tokens, which keep every
operation on the calling thread; the chunks are spread over a small thread pool. Comparisons,
masks and ``masked_fill`` cost several times an arithmetic operation there, so saturation and
the check are arithmetic, and a chunk builds a mask only when its largest step is too large.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

# Tokens per chunk on CPU (on other devices the whole batch is one chunk). At 2^14 every
# elementwise op of a chunk, on (2, CHUNK) values, stays at torch's grain size (32768), so it
# runs on the calling thread: the chunks are spread over a thread pool instead. Ops split
# across OpenMP threads meet at a barrier each, which on a loaded machine costs more than the
# op (a descheduled thread stalls its partner); a thread per chunk waits only at the end.
CHUNK = 1 << 14
# Relative size of the final step below which the result is at rounding level: the step is
# about the start's error e, and the error after it about e^3 (Halley, float64) or e^2
# (Newton, float32). Table starts are good to about 1e-6 (float32 lookup).
STEP_TOLERANCE = {torch.float64: 2e-5, torch.float32: 3e-4}
# Saturation as arithmetic: clamp((kappa - kappa_sat) * BIG, 0, 1) is 0 on saturated sides and
# 1 on the others (but for kappa within 1e-30 of the threshold, where the root is 0 anyway);
# masks and masked_fill cost several times more than elementwise arithmetic on CPU.
BIG = 1e30
# Cells of the start tables: cubic interpolation on this spacing is accurate to about 1e-9.
CELL = 0.02
ROBUST_ITERATIONS = 200
LN2 = math.log(2.0)


@dataclass(frozen=True)
class StartTable:
    """Cubic pieces of a start value G(x) on uniform cells of a coordinate x, in float32.

    ``packed`` is (cells,) complex128, each element the four float32 coefficients of a cell,
    G = c0 + c1 u + c2 u^2 + c3 u^3 with u = (x - x0) / h - j on cell j: one gather fetches all
    four (a gather costs about as much as five elementwise operations).
    """

    packed: Tensor
    x0: float
    inv_h: float
    cells: int

    def lookup(self, x: Tensor, out: Tensor, work: Tensor, index: Tensor) -> Tensor:
        """Writes G(x) into ``out`` (x, out: float32 (2, M)); x is clamped to the table.

        ``work`` is float32 scratch of at least 10 M values, ``index`` (2M,) int64 scratch.
        """
        n = x.numel()
        u = out.view(-1)
        torch.sub(x.view(-1), self.x0, out=u).mul_(self.inv_h)
        # Just below the last cell's right end, so that the truncation stays in range.
        u.clamp_(0.0, self.cells - 1.0 / 1024)
        index = index[:n]
        index.copy_(u)  # truncation: floor for u >= 0
        # The complex view needs 16-byte alignment: the gather's buffer starts the scratch.
        gathered = torch.index_select(self.packed, 0, index, out=_complex_view(work[: 4 * n]))
        frac = torch.frac(u, out=work[4 * n : 5 * n])
        c = torch.view_as_real(gathered).view(torch.float32).view(n, 4)
        torch.addcmul(c[:, 2], frac, c[:, 3], out=u)
        torch.addcmul(c[:, 1], frac, u, out=u)
        torch.addcmul(c[:, 0], frac, u, out=u)
        return out


def _complex_view(buffer: Tensor) -> Tensor:
    """Returns float32 ``buffer`` (4n values) viewed as n complex128 values."""
    return buffer.view(torch.float64).view(-1, 2).view(torch.complex128).view(-1)


def cubic_table(values: Tensor, x0: float, h: float) -> StartTable:
    """Returns the table interpolating ``values`` at x0 + h (k - 1), k = 0 .. n + 2 (n cells).

    Cell j uses the nodes j - 1 .. j + 2 (Lagrange cubic), so the first node lies one cell
    before x0 and the last two after the table's end.
    """
    g0, g1, g2, g3 = values[:-3], values[1:-2], values[2:-1], values[3:]
    c0 = g1
    c1 = -g0 / 3 - g1 / 2 + g2 - g3 / 6
    c2 = g0 / 2 - g1 + g2 / 2
    c3 = (g3 - g0) / 6 + (g1 - g2) / 2
    coeffs = torch.stack((c0, c1, c2, c3), dim=1).to(torch.float32).contiguous()
    cells = coeffs.shape[0]
    return StartTable(_complex_view(coeffs.view(-1)).clone(), x0, 1.0 / h, cells)


def logit_table(
    residual: Residual, delta: float, y_sat: float, z_low: float, y_top: float
) -> StartTable | None:
    """Returns a table of logit(w) at the root against z = log(y - y_sat), z >= ``z_low``.

    None when y_sat is within 1 of ``y_top`` (no token can be unsaturated but by rounding).
    """
    if not y_sat < y_top - 1.0:
        return None
    h = CELL
    cells = math.ceil((math.log(y_top - y_sat) - z_low) / h)
    z = z_low + h * (torch.arange(cells + 3, dtype=torch.float64) - 1)
    y = (y_sat + torch.exp(z)).clamp_(max=y_top)
    a, b, kappa = torch.sigmoid(y), torch.sigmoid(-y), torch.exp(y)
    return cubic_table(robust_logit(residual, a, b, kappa, delta), z_low, h)


def log_distance(y: Tensor, kappa: Tensor, kappa_sat: float, z_low: float, out: Tensor) -> Tensor:
    """Writes z = log(y - y_sat), at least ``z_low``, into ``out`` (float32 (2, M)).

    y - y_sat = log(kappa / kappa_sat) is formed in float64 from y; in float32 (where y
    itself is only good to 1e-7 |y|) as log1p((kappa - kappa_sat) / kappa_sat), whose
    argument keeps its relative precision however close kappa is to kappa_sat.
    """
    if y.dtype == torch.float64:
        torch.sub(y, math.log(kappa_sat), out=out)
    else:
        torch.sub(kappa, kappa_sat, out=out).mul_(1.0 / kappa_sat).log1p_()
    return out.clamp_(min=math.exp(z_low)).log_()


# --- per-token quantities ------------------------------------------------------------------------


def side_quantities(logp: Tensor, out: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fills ``out`` (6, 2, M) and returns (a, b, kappa, inv_p, odds) for log p (M,).

    Rows of a, b, kappa are (upper side, lower side): a = (1-p, p), b = (p, 1-p),
    kappa = a / b. inv_p = exp(-log p) (M,), the exact cap of the upper bound; odds =
    expm1(-log p) = (1-p)/p (M,), clamped to the smallest normal number (p = 1 keeps a
    finite kappa). p and 1 - p come from these two with a relative error of an ulp or two,
    also where p rounds to 1.
    """
    tiny = torch.finfo(logp.dtype).tiny
    a, b, kappa = out[0], out[1], out[2]
    inv_p, odds = out[3, 0], out[3, 1]
    torch.neg(logp, out=odds)
    torch.exp(odds, out=inv_p)
    odds.expm1_().clamp_(min=tiny)
    p, p1 = b[0], a[0]
    torch.reciprocal(inv_p, out=p)
    torch.mul(odds, p, out=p1)
    a[1].copy_(p)
    b[1].copy_(p1)
    kappa[0].copy_(odds)
    torch.reciprocal(odds, out=kappa[1])
    return a, b, kappa, inv_p, odds


def logit_coordinate(odds: Tensor, out: Tensor) -> Tensor:
    """Writes y = logit(a) = log kappa, (2, M) in the compute dtype: (log odds, -log odds).

    Taken in the compute dtype: float64 odds can lie beyond float32's range (p = 1 has odds
    1e-308), and next to a saturation threshold the distance y - y_sat needs y's precision.
    """
    torch.log(odds, out=out[0])
    torch.neg(out[0], out=out[1])
    return out


# --- the robust solver (float64), used for the tables and for flagged tokens ---------------------


# (w, m = 1 - w, e = m / w, d = w' - 1 = kappa m, a, b, kappa, work (6, ...), second) ->
# (D, dD/dw, d2D/dw2 or None unless ``second``), written into ``work``. e and d let every
# logarithm be a log1p of a precise argument: log w = -log1p(e), log w' = log1p(d).
Residual = Callable[..., tuple[Tensor, Tensor, Tensor | None]]


def robust_logit(
    residual: Residual,
    a: Tensor,
    b: Tensor,
    kappa: Tensor,
    delta: float,
) -> Tensor:
    """Returns l = logit(w) solving D(w) = delta, by safeguarded Newton on l, float64.

    The bracket starts at l in [-700, 700] (w from 1e-304 to 1 - 1e-304); a Newton step that
    leaves it is replaced by bisection. Iterating on the logit keeps w and 1 - w both to full
    relative precision. For an unsaturated side the root is in the bracket; a saturated one
    comes out at the bracket's low end (the caller overrides it).
    """
    lo = torch.full_like(a, -700.0)
    hi = torch.full_like(a, 700.0)
    ell = torch.zeros_like(a)
    eps = torch.finfo(torch.float64).eps
    for _ in range(ROBUST_ITERATIONS):
        e = torch.exp(-ell)
        w = 1 / (1 + e)
        m = e * w
        excess, slope_w, _ = residual(
            w, m, e, kappa * m, a, b, kappa, a.new_empty(6, *a.shape), False
        )
        excess = excess - delta
        outside = excess > 0  # D > delta: w below the root
        lo = torch.where(outside, ell, lo)
        hi = torch.where(outside, hi, ell)
        candidate = ell - excess / (slope_w * w * m)
        inside = (candidate > lo) & (candidate < hi)
        new = torch.where(inside, candidate, (lo + hi) / 2)
        done = (new - ell).abs() <= 4 * eps * (1 + ell.abs())
        ell = new
        if bool(done.all()):
            break
    return ell


def logit_sides(a: Tensor, b: Tensor, kappa: Tensor, delta: float, residual: Residual):
    """Returns (w, 1 - w) from ``robust_logit``, for flagged tokens."""
    e = torch.exp(-robust_logit(residual, a, b, kappa, delta))
    w = 1 / (1 + e)
    return w, e * w


def robust_kl(a: Tensor, b: Tensor, kappa: Tensor, delta: float) -> Tensor:
    """Returns t = -log w for KL, by Newton on t from the asymptote, float64.

    D(t) = a t - b log1p(kappa (1 - e^-t)) is convex and increasing, and lies above its
    asymptote a t + b log b, so Newton from the asymptote's root (delta - b log b) / a
    descends monotonically onto the root.
    """
    eps = torch.finfo(torch.float64).eps
    t_cap = -math.log(eps) + 4.0
    t = (delta - b * torch.log(b)) / a
    for _ in range(ROBUST_ITERATIONS):
        m = -torch.expm1(-t.clamp(max=t_cap))
        excess = a * t - b * torch.log1p(kappa * m) - delta
        slope = a * m / (b + a * m)
        step = excess / slope
        t = t - step
        if bool((step.abs() <= 16 * eps * t).all()):
            break
    return t


def kl_sides(a: Tensor, b: Tensor, kappa: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Returns (w, 1 - w) from ``robust_kl``; w stops at twice the smallest normal number."""
    t = robust_kl(a, b, kappa, delta)
    tiny = torch.finfo(torch.float64).tiny
    return torch.exp(-t.clamp(max=-math.log(2 * tiny))), -torch.expm1(-t)


# --- the Halley step on w (reverse KL, Jensen-Shannon) ------------------------------------------


def w_step(residual: Residual) -> Callable[..., Tensor]:
    """Returns the fast step for a divergence solved in w, from a table of logit(w) at the root.

    The start's w and 1 - w both come from the logit, each with full relative precision (the
    lower bound is w, the upper one is built from 1 - w); the step moves them together.
    """

    def step(
        g: Tensor,
        a: Tensor,
        b: Tensor,
        kappa: Tensor,
        delta: float,
        work: Tensor,
        result: Tensor,
        y: Tensor,
    ) -> Tensor:
        halley = a.dtype == torch.float64
        limit = 700.0 if halley else 80.0
        e, w, m, d = work[0], work[1], work[2], work[3]
        e.copy_(g).clamp_(-limit, limit).neg_().exp_()
        torch.add(e, 1.0, out=w).reciprocal_()
        torch.mul(e, w, out=m)
        torch.mul(kappa, m, out=d)
        excess, d1, d2 = residual(w, m, e, d, a, b, kappa, work[4:], halley)
        newton = excess.sub_(delta).div_(d1)
        if d2 is not None:
            # Halley: divide the Newton step by 1 - newton D'' / (2 D'); clamped so that a bad
            # start cannot reverse or blow up the step (such a side is flagged anyway).
            d2.mul_(newton).div_(d1).mul_(-0.5).add_(1.0).clamp_(min=0.5)
            newton.div_(d2)
        torch.add(m[0], newton[0], out=result[0])
        torch.sub(w[1], newton[1], out=result[1])
        # The step relative to the distance to either end: w -> 0 is singular (log w).
        return torch.abs(newton, out=d1).div_(torch.minimum(w, m, out=e))

    return step


# --- the driver ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SideSolver:
    """One dedicated divergence: saturation threshold, start table, fast step, robust solver.

    - ``saturation(delta)``: kappa_sat (a side saturates when kappa <= kappa_sat), or None.
    - ``table(delta)``: the start table (CPU), or None when (almost) every token saturates.
    - ``coordinate(y, kappa, delta, out)``: the table coordinate, float32 (2, M), from
      y = logit(a) = log kappa (compute dtype).
    - ``step(g, a, b, kappa, delta, work, result, y)``: the final step (Halley in float64,
      Newton in float32) from the table value g; writes (1 - w of the upper side, w of the
      lower) into ``result`` and returns the step's size relative to the root's scale, (2, M):
      a side whose value exceeds ``STEP_TOLERANCE`` (or is NaN) goes to the robust solver.
    - ``robust(a, b, kappa, delta)``: float64 (w, 1 - w) for flagged sides.
    """

    name: str
    saturation: Callable[[float], float | None]
    table: Callable[[float], StartTable | None]
    coordinate: Callable[[Tensor, Tensor, float, Tensor], Tensor]
    step: Callable[..., Tensor]
    robust: Callable[[Tensor, Tensor, Tensor, float], tuple[Tensor, Tensor]]


@functools.lru_cache(maxsize=64)
def _device_table(solver: SideSolver, delta: float, device: torch.device) -> StartTable | None:
    table = solver.table(delta)
    if table is None or device.type == "cpu":
        return table
    return StartTable(table.packed.to(device), table.x0, table.inv_h, table.cells)


WORK_ROWS = 17


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """Returns the module's thread pool, grown to at least ``workers`` threads."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < workers:
            old, _POOL = _POOL, ThreadPoolExecutor(workers, thread_name_prefix="band_ops")
            if old is not None:
                old.shutdown(wait=False)
        return _POOL


def solve(solver: SideSolver, logp: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Returns (lower, upper) for log p (N,), float32 or float64, in chunks of ``CHUNK``."""
    n = logp.shape[0]
    lower, upper = torch.empty_like(logp), torch.empty_like(logp)
    table = _device_table(solver, delta, logp.device)
    kappa_sat = solver.saturation(delta)
    if logp.device.type != "cpu":
        spans = [(0, n)]
    else:
        starts = list(range(0, n, CHUNK))
        workers = min(torch.get_num_threads(), len(starts))
        # Contiguous runs of chunks, one per worker.
        bounds = [starts[len(starts) * k // workers] for k in range(workers)] + [n]
        spans = list(itertools.pairwise(bounds))

    def run(span: tuple[int, int]) -> list[Tensor]:
        return _solve_span(solver, table, kappa_sat, logp, delta, span, lower, upper)

    if len(spans) == 1:
        flagged = run(spans[0])
    else:
        flagged = [c for part in _pool(len(spans)).map(run, spans) for c in part]
    if flagged:
        # Solved once for the whole batch: the robust solver's per-iteration overhead would
        # otherwise be paid in every chunk.
        tokens = torch.cat(flagged)
        lower[tokens], upper[tokens] = robust_bounds(solver, logp[tokens], delta)
    return lower, upper


def _solve_span(
    solver: SideSolver,
    table: StartTable | None,
    kappa_sat: float | None,
    logp: Tensor,
    delta: float,
    span: tuple[int, int],
    lower: Tensor,
    upper: Tensor,
) -> list[Tensor]:
    """Solves tokens [span) chunk by chunk; returns the indices left to the robust solver."""
    first, end = span
    chunk = CHUNK if logp.device.type == "cpu" else max(end - first, 1)
    size = min(chunk, end - first)
    # Buffers reused by every chunk; a chunk of m tokens views the first 2m of each row as (2, m).
    work = logp.new_empty(WORK_ROWS, 2 * size)
    work32 = logp.new_empty(2, 2 * size, dtype=torch.float32)
    scratch32 = logp.new_empty(10 * size, dtype=torch.float32)  # the table lookup's, flat
    index = torch.empty(2 * size, dtype=torch.int64, device=logp.device)
    flagged = []
    for start in range(first, end, chunk):
        stop = min(start + chunk, end)
        m = stop - start
        columns = _solve_chunk(
            solver,
            table,
            kappa_sat,
            logp[start:stop],
            delta,
            work[:, : 2 * m].view(WORK_ROWS, 2, m),
            work32[:, : 2 * m].view(2, 2, m),
            scratch32[: 10 * m],
            index[: 2 * m],
            lower[start:stop],
            upper[start:stop],
        )
        if columns is not None:
            flagged.append(columns + start)
    return flagged


def _solve_chunk(
    solver: SideSolver,
    table: StartTable | None,
    kappa_sat: float | None,
    logp: Tensor,
    delta: float,
    work: Tensor,
    work32: Tensor,
    scratch32: Tensor,
    index: Tensor,
    lower: Tensor,
    upper: Tensor,
) -> Tensor | None:
    """Writes the chunk's bounds; returns the columns of tokens left to the robust solver."""
    a, b, kappa, inv_p, odds = side_quantities(logp, work[:4])
    unsaturated = None
    if kappa_sat is not None:
        unsaturated = torch.sub(kappa, kappa_sat, out=work[16]).mul_(BIG).clamp_(0.0, 1.0)
    result = work[4]  # row 0: 1 - s on the upper side; row 1: r on the lower side
    if table is None:
        badness = torch.full_like(a, math.inf)
    else:
        y = logit_coordinate(odds, work[5])
        x = solver.coordinate(y, kappa, delta, work32[0])
        g = table.lookup(x, work32[1], scratch32, index)
        badness = solver.step(g, a, b, kappa, delta, work[6:16], result, y)
    _write_bounds(result, unsaturated, odds, inv_p, lower, upper)
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


def _write_bounds(
    result: Tensor,
    unsaturated: Tensor | None,
    odds: Tensor,
    inv_p: Tensor,
    lower: Tensor,
    upper: Tensor,
) -> None:
    """Writes lower = w and upper = 1 + (1 - s) odds of the two sides, saturation and caps.

    A saturated upper side gets 1 - s >= 2, so that the cap makes it exactly inv_p.
    """
    if unsaturated is None:
        torch.clamp(result[1], 0.0, 1.0, out=lower)
        torch.mul(result[0], odds, out=upper).add_(1.0)
    else:
        torch.mul(result[1], unsaturated[1], out=lower).clamp_(0.0, 1.0)
        torch.mul(unsaturated[0], -2.0, out=upper).add_(2.0).add_(result[0])
        upper.mul_(odds).add_(1.0)
    torch.minimum(upper, inv_p, out=upper).clamp_(min=1.0)


def robust_bounds(solver: SideSolver, logp: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Returns (lower, upper) for log p (K,) from the robust float64 solver alone.

    The caps and saturated ends are taken in the dtype of ``logp``, as on the fast path.
    """
    k = logp.shape[0]
    a, b, kappa, _, _ = side_quantities(logp.double(), logp.new_empty(4, 2, k, dtype=torch.float64))
    w, m = solver.robust(a.reshape(-1), b.reshape(-1), kappa.reshape(-1), delta)
    buffer = logp.new_empty(5, 2, k)
    _, _, kappa, inv_p, odds = side_quantities(logp, buffer[:4])
    result = buffer[4]
    result[0].copy_(m.view(2, k)[0])
    result[1].copy_(w.view(2, k)[1])
    kappa_sat = solver.saturation(delta)
    unsaturated = None
    if kappa_sat is not None:
        unsaturated = torch.sub(kappa, kappa_sat).mul_(BIG).clamp_(0.0, 1.0)
    lower, upper = torch.empty_like(logp), torch.empty_like(logp)
    _write_bounds(result, unsaturated, odds, inv_p, lower, upper)
    return lower, upper
