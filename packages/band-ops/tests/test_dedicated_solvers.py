"""The tabulated-start solvers of kl, reverse_kl and js (band_ops.onesided) on their hard cases.

The fast path (table start + one Halley/Newton step) is checked against the bracketed float64
solver it falls back to, over dense grids that include the extremes, against the mpmath
reference next to the saturation thresholds, and for results that do not depend on how a batch
is cut into chunks or spread over threads.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time

import mp_reference
import pytest
import torch

import band_ops
from band_ops import js, kl, onesided, reverse_kl
from band_ops.newton import newton_bounds

SOLVERS = {"kl": kl.SOLVER, "reverse_kl": reverse_kl.SOLVER, "js": js.SOLVER}
DELTAS = (1e-6, 1e-4, 0.01, 0.05, 0.3, 1.0, 3.0)


def _dense_logp(dtype: torch.dtype) -> torch.Tensor:
    """Log-probabilities from the smallest normal p to p = 1, dense in both tails."""
    low = math.log(torch.finfo(dtype).tiny)
    far = -torch.logspace(math.log10(-low), -1, 400, dtype=torch.float64)  # p tiny .. 0.9
    near = -torch.logspace(-1, -300 if dtype == torch.float64 else -44, 400, dtype=torch.float64)
    return torch.cat([far, near, torch.zeros(1, dtype=torch.float64)]).to(dtype)


def _assert_close(got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float, what: str):
    bad = (got - want).abs() > rtol * want.abs() + atol
    if bad.any():
        i = int(bad.nonzero()[0])
        raise AssertionError(f"{what}: {int(bad.sum())} values off, e.g. {got[i]!r} vs {want[i]!r}")


@pytest.mark.parametrize("delta", DELTAS)
@pytest.mark.parametrize("name", list(SOLVERS))
def test_fast_path_matches_the_bracketed_solver_over_the_whole_range(name, delta):
    # robust_bounds runs every side through the bracketed float64 solver when the fast path
    # flags it; here the comparison is with the bracketed solver for *every* side.
    solver = SOLVERS[name]
    logp = _dense_logp(torch.float64)
    lower, upper = band_ops.ratio_bounds(logp, divergence=name, delta=delta)
    k = logp.shape[0]
    wide = onesided.Scratch(k, torch.float64, logp.device)
    onesided.side_quantities(logp, wide)
    a, b, kappa = wide.a.reshape(-1), wide.b.reshape(-1), wide.kappa.reshape(-1)
    w, m = solver.robust(a, b, kappa, delta, None)
    ref_lower = w.view(2, k)[1].clone()
    ref_upper = torch.minimum(1 + m.view(2, k)[0] * wide.odds, wide.inv_p)
    kappa_sat = solver.saturation(delta)
    if kappa_sat is not None:
        ref_lower[wide.kappa[1] <= kappa_sat] = 0.0
        ref_upper = torch.where(wide.kappa[0] <= kappa_sat, wide.inv_p, ref_upper)
    eps = torch.finfo(torch.float64).eps
    _assert_close(lower, ref_lower, 1e-12, 16 * eps, f"{name} lower, delta {delta}")
    _assert_close(upper, ref_upper, 1e-12, 16 * eps, f"{name} upper, delta {delta}")


@pytest.mark.parametrize("name", ["reverse_kl", "js"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_bounds_next_to_the_saturation_thresholds_match_mpmath(name, dtype):
    # Near a threshold the root vanishes like d / log(1/d) in the distance d: the table's
    # coordinate, the float32 precision of 1 - p and the fallback all meet here.
    delta = 0.05
    kappa_sat = SOLVERS[name].saturation(delta)
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    atol = 16 * torch.finfo(dtype).eps
    failures = []
    for side in ("lower", "upper"):
        # The side's odds kappa: p / (1-p) for the lower, (1-p) / p for the upper side.
        for rel in (1e-12, 1e-9, 1e-6, 1e-3, 0.1, -1e-9, -1e-3):
            kappa = kappa_sat * (1 + rel)
            logp = -math.log1p(1 / kappa) if side == "lower" else -math.log1p(kappa)
            x = torch.tensor([logp], dtype=torch.float64).to(dtype)
            lower, upper = band_ops.ratio_bounds(x, divergence=name, delta=delta)
            ref = mp_reference.bounds(name, float(x), delta)
            for got, want, which in ((lower, ref[0], "lower"), (upper, ref[1], "upper")):
                want = float(want)
                if not abs(float(got) - want) <= rtol * abs(want) + atol:
                    failures.append(f"{side} rel {rel:g} {which}: {float(got)!r} vs {want!r}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_random_points_match_mpmath_in_float64(name):
    gen = torch.Generator().manual_seed(7)
    logp = -torch.exp(torch.empty(12, dtype=torch.float64).uniform_(-25, 5, generator=gen))
    deltas = torch.exp(torch.empty(12, dtype=torch.float64).uniform_(-10, 1, generator=gen))
    eps = torch.finfo(torch.float64).eps
    for lp, delta in zip(logp.tolist(), deltas.tolist(), strict=True):
        lower, upper = band_ops.ratio_bounds(
            torch.tensor([lp], dtype=torch.float64), divergence=name, delta=delta
        )
        ref = [float(v) for v in mp_reference.bounds(name, lp, delta)]
        for got, want in ((float(lower), ref[0]), (float(upper), ref[1])):
            if want < 2 * torch.finfo(torch.float64).tiny:
                assert abs(got - want) <= 4 * torch.finfo(torch.float64).tiny
            else:
                assert abs(got - want) <= 1e-10 * want + 16 * eps, (lp, delta, got, want)


@pytest.mark.parametrize("name", ["reverse_kl", "js"])
def test_generic_newton_agrees_with_the_dedicated_solvers(name):
    # An independent route: the generator, differentiated, in the generic solver.
    spec = band_ops.get_divergence(name)
    old = torch.linspace(math.log(1e-7), -1e-7, 301, dtype=torch.float64)
    p, p1 = old.exp(), -torch.expm1(old)
    for delta in (1e-3, 0.05, 0.5):
        lo, hi = band_ops.ratio_bounds(old, divergence=name, delta=delta)
        glo, ghi = newton_bounds(spec.generator, p, p1, delta, derivative=spec.derivative)
        torch.testing.assert_close(hi, torch.minimum(ghi, 1 / p), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(lo, glo, rtol=1e-9, atol=1e-12)


def test_flagged_float32_sides_are_solved_again_in_float64(monkeypatch):
    # float32 tokens within 1e-6 of a threshold lack float64's digits of 1 - p: the fast path
    # flags them and robust_bounds solves them; their bounds then match mpmath.
    calls = []
    real = onesided.robust_bounds

    def spy(solver, logp, delta):
        calls.append(logp.numel())
        return real(solver, logp, delta)

    monkeypatch.setattr(onesided, "robust_bounds", spy)
    kappa_sat = js.saturation(0.05)
    x = torch.tensor([-math.log1p(1 / (kappa_sat * (1 + 1e-6)))], dtype=torch.float32)
    lower, _ = band_ops.ratio_bounds(x, divergence="js", delta=0.05)
    assert calls == [1]
    want = float(mp_reference.bounds("js", float(x), 0.05)[0])
    assert abs(float(lower) - want) <= 1e-5 * want + 16 * torch.finfo(torch.float32).eps


@pytest.mark.parametrize("name", list(SOLVERS))
def test_results_do_not_depend_on_chunks_threads_or_batch(name, monkeypatch):
    gen = torch.Generator().manual_seed(3)
    logp = -12 * torch.rand(5000, generator=gen, dtype=torch.float64)
    logp[::97] = 0.0
    whole = band_ops.ratio_bounds(logp, divergence=name, delta=0.05)
    monkeypatch.setattr(onesided, "CHUNK", 333)
    monkeypatch.setattr(onesided, "WORKERS", 3)
    chunked = band_ops.ratio_bounds(logp, divergence=name, delta=0.05)
    for a, b in zip(whole, chunked, strict=True):
        assert torch.equal(a, b)
    for i in (0, 97, 4999):
        alone = band_ops.ratio_bounds(logp[i : i + 1], divergence=name, delta=0.05)
        assert torch.equal(alone[0], whole[0][i : i + 1])
        assert torch.equal(alone[1], whole[1][i : i + 1])


@pytest.mark.parametrize("name, delta", [("js", math.log(2)), ("js", 5.0), ("reverse_kl", 800.0)])
def test_delta_beyond_every_threshold_saturates_every_side(name, delta):
    # JS is at most log 2; reverse KL's sides saturate for delta >= -log(min(p, 1-p)).
    logp = torch.log(torch.tensor([1e-300, 1e-8, 0.3, 0.5, 1 - 1e-12], dtype=torch.float64))
    lower, upper = band_ops.ratio_bounds(logp, divergence=name, delta=delta)
    assert torch.equal(lower, torch.zeros_like(lower))
    assert not torch.signbit(lower).any()  # +0.0, not -0.0 (which prints as -0.000)
    assert torch.equal(upper, torch.exp(-logp))


@pytest.mark.parametrize("name", list(SOLVERS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_extreme_deltas_give_ordered_finite_bounds(name, dtype):
    logp = _dense_logp(dtype)
    for delta in (1e-12, 1e-9, 20.0, 1e6):
        lower, upper = band_ops.ratio_bounds(logp, divergence=name, delta=delta)
        assert torch.isfinite(lower).all() and torch.isfinite(upper).all()
        assert (lower >= 0).all() and (lower <= 1).all()
        assert (upper >= 1).all() and (upper <= torch.exp(-logp)).all()


@pytest.mark.parametrize("name", list(SOLVERS))
def test_tiny_delta_bounds_sit_on_the_quadratic_model(name):
    # For delta -> 0 every f-divergence is f''(1)/2 chi2: r = 1 -+ sqrt(2 delta (1-p) / (p f''(1))).
    curvature = {"kl": 1.0, "reverse_kl": 1.0, "js": 0.25}[name]
    delta = 1e-12
    p = torch.tensor([0.01, 0.3, 0.9], dtype=torch.float64)
    lower, upper = band_ops.ratio_bounds(p.log(), divergence=name, delta=delta)
    half = torch.sqrt(2 * delta * (1 - p) / (p * curvature))
    torch.testing.assert_close(upper - 1, half, rtol=1e-4, atol=0)
    torch.testing.assert_close(1 - lower, half, rtol=1e-4, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(SOLVERS))
def test_cuda_matches_cpu(name):
    logp = _dense_logp(torch.float64)
    cpu = band_ops.ratio_bounds(logp, divergence=name, delta=0.05)
    gpu = band_ops.ratio_bounds(logp.cuda(), divergence=name, delta=0.05)
    for a, b in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-12, atol=1e-300)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_its_own_thread_pool(monkeypatch):
    # The parent's pool threads do not exist in a forked child; reusing the pool would hang.
    monkeypatch.setattr(onesided, "CHUNK", 64)
    monkeypatch.setattr(onesided, "WORKERS", 2)
    logp = -12 * torch.rand(1000, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    want = band_ops.ratio_bounds(logp, divergence="js", delta=0.05)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: exit code 0 only if the bounds come back, and right
        try:
            got = band_ops.ratio_bounds(logp, divergence="js", delta=0.05)
            ok = all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    waited = 0.0
    while waited < 60 and os.waitpid(pid, os.WNOHANG) == (0, 0):
        time.sleep(0.1)
        waited += 0.1
    if waited >= 60:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1", "the child's bounds did not come back within 60 s"


@pytest.mark.parametrize("name", ["reverse_kl", "js"])
def test_saturated_lower_bounds_are_plus_zero(name):
    # The step's value on a saturated side is discarded by multiplying with 0; a negative one
    # would leave -0.0 (printed -0.000 by band-ops-demo).
    logp = torch.log(torch.tensor([0.001, 0.01], dtype=torch.float64))
    lower, _ = band_ops.ratio_bounds(logp, divergence=name, delta=0.05)
    assert torch.equal(lower, torch.zeros_like(lower))
    assert not torch.signbit(lower).any()


def _thread_counts() -> list[int]:
    """Returns the calling thread's per-thread counts that ``serial_operations`` manages."""
    counts = []
    for swap in onesided._thread_settings():
        value = swap(1)
        swap(value)
        counts.append(value)
    return counts


@pytest.mark.skipif(
    not onesided._thread_settings(),
    reason="no OpenMP runtime or MKL found to set per-thread counts on (nothing to check)",
)
def test_serial_operations_sets_only_the_calling_thread_and_restores_it():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # also on a 1-core machine: the setting is what is checked
    try:
        _check_serial_operations()
    finally:
        torch.set_num_threads(threads)


def _in_another_thread() -> list[int]:
    seen: list[list[int]] = []
    other = threading.Thread(target=lambda: seen.append(_thread_counts()))
    other.start()
    other.join()
    return seen[0]


def _check_serial_operations() -> None:
    before, elsewhere = _thread_counts(), _in_another_thread()
    with onesided.serial_operations():
        assert torch.get_num_threads() == 1
        assert _thread_counts() == [1] * len(before)
        assert _in_another_thread() == elsewhere  # other threads keep theirs
    assert torch.get_num_threads() == 2
    assert _thread_counts() == before


def test_serial_operations_restores_the_counts_after_an_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"), onesided.serial_operations():
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("name", list(SOLVERS))
def test_results_do_not_depend_on_serial_operations(name, monkeypatch):
    # Element-wise operations give the same bits on one thread as split over several.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        logp = -12 * torch.rand(40_000, generator=torch.Generator().manual_seed(8))
        serial = band_ops.ratio_bounds(logp, divergence=name, delta=0.05)
        monkeypatch.setattr(onesided, "serial_operations", contextlib.nullcontext)
        split = band_ops.ratio_bounds(logp, divergence=name, delta=0.05)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(serial, split, strict=True):
        assert torch.equal(a, b)
