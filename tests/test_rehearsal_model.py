"""The rehearsal's model, without a database: statistics read as a distribution and drawn at
scale, CHECKs repaired, the load order of tables with foreign keys, the extrapolation."""

from __future__ import annotations

import datetime as dt
import doctest
import random
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest

from tablemig.errors import InputError
from tablemig.pg.names import QualifiedName
from tablemig.rehearsal import checks, distribution, estimate
from tablemig.rehearsal.catalog import Column, ForeignKey, TableShape
from tablemig.rehearsal.checks import parse_check, repair
from tablemig.rehearsal.distribution import ColumnStats, Distribution
from tablemig.rehearsal.kinds import DateKind, IntKind, NumericKind, TextKind, TimestampKind, kind_for
from tablemig.rehearsal.prepare import Scale, load_order


def test_docstring_examples() -> None:
    for module in (distribution, checks):
        assert doctest.testmod(module).failed == 0


def _stats_of(values: list[Any], kind_text: Any, nulls: int, buckets: int = 100, mcv: int = 0) -> ColumnStats:
    """pg_stats as ANALYZE computes it from a full sample: NULL share, the most common values
    and an equal-frequency histogram of the rest."""
    total = len(values) + nulls
    counts = Counter(values)
    common = [v for v, c in counts.most_common(mcv) if c > 1]
    rest = sorted(v for v in values if v not in common)
    bounds = [rest[min(round(i * (len(rest) - 1) / buckets), len(rest) - 1)] for i in range(buckets + 1)]
    return ColumnStats(null_frac=nulls / total, n_distinct=-len(counts) / total,
                       most_common_vals=tuple(kind_text(v) for v in common),
                       most_common_freqs=tuple(counts[v] / total for v in common),
                       histogram_bounds=tuple(kind_text(v) for v in bounds), correlation=1.0)


def _months(values: list[Any]) -> dict[str, float]:
    c = Counter(v.strftime("%Y-%m") for v in values if v is not None)
    n = sum(c.values())
    return {k: x / n for k, x in c.items()}


def test_monthly_shares_of_a_skewed_column_survive_any_scale() -> None:
    """Fails when values are drawn uniformly between the first and last bound, or by plain
    random sampling (a month's share then wanders by more than a point at 2,000 rows)."""
    rng = random.Random(7)
    start = dt.datetime(2023, 1, 1, tzinfo=dt.UTC)
    source: list[dt.datetime] = []
    for m in range(24):
        weight = (m + 1) ** 2 * (3 if m == 10 else 1) // (8 if m == 15 else 1)
        first = dt.datetime(2023 + m // 12, m % 12 + 1, 1, tzinfo=dt.UTC)
        source += [first + dt.timedelta(seconds=rng.uniform(0, 27 * 86400)) for _ in range(weight * 10)]
    kind = TimestampKind(with_zone=True)
    stats = _stats_of(source, lambda v: v.isoformat(sep=" "), nulls=0)
    d = Distribution(kind, stats)
    expected = _months(source)
    assert min(source) >= start
    for n in (2_000, 20_000):
        drawn = d.draw(n, random.Random(1), order=1)
        assert drawn == sorted(drawn), "drawn in physical order"
        got = _months(drawn)
        worst = max(abs(got.get(k, 0) - v) for k, v in expected.items())
        assert worst < 0.01, (n, worst)


def test_common_values_nulls_and_interpolation() -> None:
    kind = IntKind()
    stats = ColumnStats(null_frac=0.2, most_common_vals=("5000", "9000"), most_common_freqs=(0.3, 0.1),
                        histogram_bounds=("0", "100", "1000"))
    d = Distribution(kind, stats)
    values = d.draw(10_000, random.Random(3))
    shares = Counter(values)
    # non-NULL shares: 5000 -> 0.3/0.8, 9000 -> 0.1/0.8, the histogram 0.4/0.8 split evenly by bucket
    assert abs(shares[5000] / 10_000 - 0.375) < 0.001 and abs(shares[9000] / 10_000 - 0.125) < 0.001
    assert abs(sum(1 for v in values if v < 100) / 10_000 - 0.25) < 0.001
    assert d.cdf(1000) == pytest.approx(0.5)
    assert d.cdf(5000) == pytest.approx(0.5 + 0.375 / 2)
    assert Distribution(kind, None).described is False


def test_unparsable_bounds_are_kept_as_text() -> None:
    d = Distribution(DateKind(), ColumnStats(histogram_bounds=("-infinity", "2024-01-01", "infinity")))
    assert {d.value_at(0.1), d.value_at(0.9)} <= {"-infinity", "2024-01-01", "infinity"}
    assert d.cdf(dt.date(2024, 1, 1)) is None


def test_kinds() -> None:
    assert kind_for("numeric", (12 << 16) + 2 + 4, "N") == NumericKind(12, 2)
    assert NumericKind(12, 2).format(Decimal("1.237")) == "1.24"
    text = kind_for("varchar", 5 + 4, "S")
    assert isinstance(text, TextKind) and text.max_length == 5
    assert len(text.bump("abcdef", 12)) <= 5 and text.bump("abcdef", 12).endswith("~12")
    assert kind_for("mood", -1, "E", enum_labels=("happy", "sad")).synth(random.Random(0), 0, False) in ("happy", "sad")
    assert kind_for("int4", -1, "N").bump(2**31 - 1, 1) is None


def test_checks_understood_and_repaired() -> None:
    rules, complete = parse_check("((paid_at >= booked_at) AND (amount >= (0)::numeric) AND (qty BETWEEN 1 AND 5))")
    assert complete and len(rules) == 4
    ts = TimestampKind(with_zone=True)
    kinds = {"paid_at": ts, "booked_at": ts, "amount": NumericKind(10, 2), "qty": IntKind(32)}
    booked = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    row = {"paid_at": booked - dt.timedelta(days=1), "booked_at": booked, "amount": Decimal("-3.5"), "qty": 9}
    repair(rules, row, kinds, fixed={"booked_at"}, rng=random.Random(0))
    assert row == {"paid_at": booked, "booked_at": booked, "amount": Decimal(0), "qty": 5}
    row = {"paid_at": None, "booked_at": booked, "amount": Decimal(1), "qty": 0}  # NULL passes a CHECK
    repair(rules, row, kinds, fixed={"booked_at"}, rng=random.Random(0))
    assert row["paid_at"] is None and row["qty"] == 1
    strict, _ = parse_check("(qty > 0)")
    row = {"qty": -4}
    repair(strict, row, {"qty": IntKind(32)}, fixed=set(), rng=random.Random(0))
    assert row["qty"] == 1
    assert parse_check("((a > 0) OR (b > 0))") == ([], False)  # left to the server
    assert parse_check("(lower(code) = code)")[1] is False


def _col(name: str, not_null: bool = True) -> Column:
    return Column(name, 1, "bigint", IntKind(), not_null, False, "", False, False)


def _shape(name: str, fks: list[tuple[str, str, bool]]) -> TableShape:
    cols = [_col("id")] + [_col(c, not_null) for c, _, not_null in fks]
    return TableShape(QualifiedName("public", name), 0, cols, unique_keys=[("id",)],
                      foreign_keys=[ForeignKey(f"{name}_{c}_fkey", (c,), QualifiedName("public", p), ("id",))
                                    for c, p, _ in fks])


def test_load_order_parents_first_cycles_broken_at_a_nullable_key() -> None:
    shapes = {s.name: s for s in (
        _shape("lines", [("order_id", "orders", True)]),
        _shape("orders", [("customer_id", "customers", True), ("parent_id", "orders", False)]),
        _shape("customers", [("last_order_id", "orders", False)]),
    )}
    order, deferred = load_order(shapes)
    names = [t.name for t in order]
    assert names.index("orders") < names.index("lines")
    assert "orders_parent_id_fkey" in deferred[QualifiedName("public", "orders")]  # nullable self-reference
    assert deferred[QualifiedName("public", "customers")] == {"customers_last_order_id_fkey"}
    stuck = {s.name: s for s in (_shape("a", [("b_id", "b", True)]), _shape("b", [("a_id", "a", True)]))}
    with pytest.raises(InputError, match="cycle"):
        load_order(stuck)


def test_scale() -> None:
    assert Scale(rows=1000).fraction_of(500_000_000) == pytest.approx(2e-6)
    assert Scale(rows=1000).fraction_of(10) == 1.0
    assert Scale(fraction=0.01).fraction_of(10**9) == 0.01
    for bad in ({"rows": 0}, {"fraction": 1.5}, {"rows": 10, "fraction": 0.1}):
        with pytest.raises(InputError):
            Scale(**bad)


def test_estimate_scales_row_steps_and_phases_only() -> None:
    rehearsal = {"tables": {
        "public.orders": {"plan_table": True, "source_rows": 500_000_000.0, "rows": 100_000},
        "public.items": {"plan_table": False, "source_rows": 1_000_000.0, "rows": 200}}}
    run = {"steps": [
        {"id": "PRE-3.2", "table": None, "duration_s": 0.5},  # fixed: a notification
        {"id": "EX-1.3", "table": "public.orders", "duration_s": 0.2},  # rows of the table
        {"id": "PRE-2.1", "table": None, "duration_s": 1.0},  # rows of the plan's tables
        {"id": "EX-2.2", "table": "public.orders", "duration_s": 3.0}],
        "tables": {"public.orders": {"timings": {"backfill": 1.0, "index": 0.5, "verify": 0.5, "swap": 0.1}}}}
    est = estimate.estimate(run, rehearsal)
    by_id = {s["id"]: s for s in est["steps"]}
    assert by_id["PRE-3.2"]["estimated_s"] == 0.5
    assert by_id["EX-1.3"]["estimated_s"] == pytest.approx(0.2 * 5000)
    assert by_id["PRE-2.1"]["estimated_s"] == pytest.approx(5000)
    sort = 5000 * (20.03 / 11.51)  # log(5e8) / log(1e5)
    assert by_id["EX-2.2"]["estimated_s"] == pytest.approx(1.0 + 1.5 * 5000 + 0.5 * sort, rel=0.01)
    assert est["estimated_s"] == pytest.approx(sum(s["estimated_s"] for s in est["steps"]))
    assert est["factors"]["public.items"]["factor"] == 5000
    assert any("memory" in x for x in est["limits"])
    lines = estimate.summary_lines({"source": "host=db1", "scale": {"fraction": 2e-4}, **rehearsal}, est)
    assert any("EX-2.2" in x for x in lines)
