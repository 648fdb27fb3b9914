"""Independent high-precision reference for the band end points (mpmath, 60 digits).

Each divergence is written here from its definition on the binary pair old = (p, 1-p),
new = (q, 1-q), not from the package's generators, and each side of the band is found by plain
bisection: on q in [p, 1] for the upper side and on log q for the lower side (the lower end
can be far below the smallest float, e.g. exp(-delta / p) for KL at tiny p).
"""

from __future__ import annotations

import mpmath as mp

mp.mp.dps = 60


def _xlogy(x, y):
    return mp.mpf(0) if x == 0 else x * mp.log(y)


def divergence(name: str, p, q):
    """Returns D(new || old) for the binary pair, or +inf outside the domain."""
    old = (p, 1 - p)
    new = (q, 1 - q)
    if name == "kl":  # KL(old || new)
        if q <= 0 or q >= 1:
            return mp.inf
        return sum(_xlogy(o, o / n) for o, n in zip(old, new, strict=True))
    if name == "reverse_kl":  # KL(new || old)
        return sum(_xlogy(n, n / o) for o, n in zip(old, new, strict=True))
    if name == "tv":
        return abs(q - p)
    if name == "chi2":
        return sum((n - o) ** 2 / o for o, n in zip(old, new, strict=True))
    if name == "neyman_chi2":
        if q <= 0 or q >= 1:
            return mp.inf
        return sum((o - n) ** 2 / n for o, n in zip(old, new, strict=True))
    if name == "hellinger":
        return sum((mp.sqrt(n) - mp.sqrt(o)) ** 2 for o, n in zip(old, new, strict=True))
    if name == "js":
        mid = [(o + n) / 2 for o, n in zip(old, new, strict=True)]
        kl_om = sum(_xlogy(o, o / m) for o, m in zip(old, mid, strict=True))
        kl_nm = sum(_xlogy(n, n / m) for n, m in zip(new, mid, strict=True))
        return (kl_om + kl_nm) / 2
    raise KeyError(name)


def bounds(name: str, logp: float, delta: float, iterations: int = 230):
    """Returns (lower, upper) ratios as mpf for old log-probability ``logp`` (a float, exact)."""
    p = mp.e ** mp.mpf(logp)
    d = mp.mpf(delta)

    def excess(q):
        return divergence(name, p, q) - d

    if excess(mp.mpf(1)) <= 0:
        upper = 1 / p
    else:
        lo, hi = p, mp.mpf(1)
        for _ in range(iterations):
            mid = (lo + hi) / 2
            if excess(mid) > 0:
                hi = mid
            else:
                lo = mid
        upper = (lo + hi) / 2 / p
    if excess(mp.mpf(0)) <= 0:
        lower = mp.mpf(0)
    else:
        a, b = mp.log(p) - mp.mpf(10) ** 9, mp.log(p)
        for _ in range(iterations):
            mid = (a + b) / 2
            if excess(mp.e**mid) > 0:
                a = mid
            else:
                b = mid
        lower = mp.e ** ((a + b) / 2) / p
    return lower, upper
