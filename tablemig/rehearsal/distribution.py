"""A column's values as PostgreSQL's statistics describe them, drawn at any scale.

`pg_stats` describes a column by its share of NULLs, its most common values with their
frequencies, and a histogram: bounds splitting the other values into buckets that each hold
the same share of rows. Read as a distribution, that is a mixture of point masses (the common
values) and buckets of equal mass; for ordered kinds (numbers, dates, timestamps) a bucket's
values are spread between its bounds along a monotone cubic through the histogram's
cumulative shares (`Shape`): a bucket's density follows its neighbours' at its ends.

Values are drawn by stratified inverse sampling: row i of n takes the value at a quantile in
[i/n, (i+1)/n). Every stratum of the distribution gets its exact share of rows, so a small
rehearsal has the monthly shares of its source within the histogram's resolution, whatever
the scale, with no sampling noise on top.

    >>> from tablemig.rehearsal.kinds import IntKind
    >>> d = Distribution(IntKind(), ColumnStats(null_frac=0.5, most_common_vals=("7",),
    ...                  most_common_freqs=(0.1,), histogram_bounds=("0", "10", "20")))
    >>> d.value_at(0.1), d.value_at(0.3), d.value_at(0.7)
    (2, 7, 12)
    >>> round(d.cdf(15), 2)
    0.8
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from typing import Any

from .kinds import Kind


@dataclass(frozen=True)
class ColumnStats:
    """One row of `pg_stats` (values as text)."""

    null_frac: float = 0.0
    n_distinct: float = 0.0
    most_common_vals: tuple[str, ...] = ()
    most_common_freqs: tuple[float, ...] = ()
    histogram_bounds: tuple[str, ...] = ()
    correlation: float | None = None
    avg_width: int | None = None

    def distinct_share(self, rows: float) -> float:
        """The share of rows with a distinct value (n_distinct is a count when positive, minus
        a share of the rows when negative)."""
        if self.n_distinct < 0:
            return -self.n_distinct
        return self.n_distinct / rows if rows > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """For the rehearsal's record: the figures, never the values (they come from rows)."""
        return {"null_frac": round(self.null_frac, 4), "n_distinct": self.n_distinct,
                "most_common_values": len(self.most_common_vals),
                "histogram_buckets": max(len(self.histogram_bounds) - 1, 0), "correlation": self.correlation}


@dataclass(frozen=True)
class Shape:
    """Where a bucket's rows lie between its bounds: a monotone cubic (Fritsch-Carlson)
    through the histogram's cumulative shares. A wide bucket between narrow (dense) ones is
    dense near its ends and sparse in its middle, as a dip in the data is; linear within the
    bucket would spread its rows evenly across the dip. `m0`, `m1`: the density at the
    bucket's ends relative to its mean."""

    m0: float = 1.0
    m1: float = 1.0

    def mass(self, t: float) -> float:
        """The share of the bucket's rows below position t (0..1)."""
        t2 = t * t
        t3 = t2 * t
        return (t3 - 2 * t2 + t) * self.m0 + (3 * t2 - 2 * t3) + (t3 - t2) * self.m1

    def position(self, frac: float) -> float:
        """The position below which `frac` of the bucket's rows lie (Newton within a bracket)."""
        lo, hi, t = 0.0, 1.0, frac
        for _ in range(12):
            err = self.mass(t) - frac
            if abs(err) < 1e-9:
                break
            if err > 0:
                hi = t
            else:
                lo = t
            slope = (3 * t * t - 4 * t + 1) * self.m0 + 6 * t * (1 - t) + (3 * t * t - 2 * t) * self.m1
            step = t - err / slope if slope > 1e-12 else -1.0
            t = step if lo < step < hi else (lo + hi) / 2
        return t


LINEAR = Shape()


def shapes(positions: list[float]) -> list[Shape]:
    """The shape of each bucket between consecutive `positions` (0..1, ascending) of
    histogram bounds holding equal shares of rows."""
    n = len(positions) - 1
    widths = [b - a for a, b in zip(positions, positions[1:], strict=False)]
    dens = [1.0 / (n * w) if w > 0 else 0.0 for w in widths]  # 0: a bucket of one value
    knots = [dens[0]]
    for k in range(1, n):
        h0, h1, d0, d1 = widths[k - 1], widths[k], dens[k - 1], dens[k]
        if h0 > 0 and h1 > 0:
            knots.append(3 * (h0 + h1) / ((2 * h1 + h0) / d0 + (h1 + 2 * h0) / d1))
        else:
            knots.append(d0 if h0 > 0 else d1)
    knots.append(dens[-1])
    out = []
    for k in range(n):
        if dens[k] <= 0:
            out.append(LINEAR)
            continue
        a, b = knots[k] / dens[k], knots[k + 1] / dens[k]
        norm = (a * a + b * b) ** 0.5
        if norm > 3:  # keeps the cubic monotone
            a, b = 3 * a / norm, 3 * b / norm
        out.append(Shape(a, b))
    return out


@dataclass(frozen=True)
class Segment:
    lo: Any
    hi: Any
    mass: float
    point: bool
    shape: Shape = LINEAR


@dataclass
class Distribution:
    """The non-NULL values of a column; see the module docstring."""

    kind: Kind
    stats: ColumnStats | None
    segments: list[Segment] = field(default_factory=list)
    other: float = 0.0  # mass of values the statistics do not show (made by the kind)
    _cum: list[float] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        s = self.stats
        if s is None:
            return
        try:
            mcv = [self.kind.parse(v) for v in s.most_common_vals]
            bounds = [self.kind.parse(v) for v in s.histogram_bounds]
        except (ValueError, TypeError, OverflowError):
            # e.g. 'infinity' or a BC date among the bounds: keep the values as text, no interpolation
            self.kind = Kind()
            mcv, bounds = list(s.most_common_vals), list(s.histogram_bounds)
        freqs = list(s.most_common_freqs)[: len(mcv)]
        points = [Segment(v, v, f, True) for v, f in zip(mcv, freqs, strict=False) if f > 0]
        rest = max(0.0, 1.0 - s.null_frac - sum(freqs))
        buckets: list[Segment] = []
        if len(bounds) >= 2:
            share = rest / (len(bounds) - 1) if rest > 0 else 0.0
            forms = [LINEAR] * (len(bounds) - 1)
            if self.kind.ordered and len(bounds) >= 3 and bounds[-1] != bounds[0]:
                forms = shapes([self.kind.position(bounds[0], bounds[-1], b) for b in bounds])
            buckets = [Segment(a, b, share, False, f) for a, b, f in zip(bounds, bounds[1:], forms, strict=False)]
        elif rest > 0.001 and points:
            self.other = rest  # values the statistics do not list: made by the kind, if it can
        segments = points + buckets
        if self.kind.ordered:
            segments.sort(key=lambda g: (g.lo, not g.point))
        total = sum(g.mass for g in segments) + self.other
        if total <= 0:
            self.segments = []
            return
        self.segments = [Segment(g.lo, g.hi, g.mass / total, g.point, g.shape) for g in segments]
        self.other /= total
        c = 0.0
        for g in self.segments:
            c += g.mass
            self._cum.append(c)

    @property
    def described(self) -> bool:
        """Do the statistics give any value?"""
        return bool(self.segments)

    def value_at(self, u: float, rng: random.Random | None = None, i: int = 0) -> Any:
        """The value at quantile `u` (0 <= u < 1) of the non-NULL values."""
        known = 1.0 - self.other
        if u >= known and self.other > 0:
            made = self.kind.synth(rng or random.Random(i), i, False)
            if made is not None:
                return made
            u = u * known
        j = min(bisect.bisect_right(self._cum, u), len(self.segments) - 1)
        g = self.segments[j]
        if g.point:
            return g.lo
        start = self._cum[j] - g.mass
        frac = 0.0 if g.mass <= 0 else min(max((u - start) / g.mass, 0.0), 1.0)
        return self.kind.between(g.lo, g.hi, g.shape.position(frac) if g.shape is not LINEAR else frac)

    def cdf(self, value: Any) -> float | None:
        """The share of values below `value` (ordered kinds only; None otherwise)."""
        if not self.kind.ordered or not self.segments:
            return None
        below = 0.0
        for g in self.segments:
            if g.point:
                if g.lo < value:
                    below += g.mass
                elif g.lo == value:
                    below += g.mass / 2
            elif g.hi <= value:
                below += g.mass
            elif g.lo < value:
                below += g.mass * g.shape.mass(min(max(self.kind.position(g.lo, g.hi, value), 0.0), 1.0))
        return min(below, 1.0)

    def draw(self, n: int, rng: random.Random, *, order: int = 0) -> list[Any]:
        """n values, one per stratum of the distribution: ascending when `order` > 0,
        descending when < 0, shuffled when 0."""
        values = [self.value_at((i + rng.random()) / n, rng, i) for i in range(n)]
        if order and self.kind.ordered:
            try:
                values.sort(reverse=order < 0)
            except TypeError:  # values of mixed types (some made by the kind): keep strata order
                pass
        elif order < 0:
            values.reverse()
        elif not order:
            rng.shuffle(values)
        return values
