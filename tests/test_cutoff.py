"""`table_migration.cutoff_value` / `get_data_cutoff_date` and the planner's dry-run path.

The tables hold hand-chosen dates, so every expected cutoff is computed independently here:
the cutoff C is the k-th newest non-NULL value with k = max(1, ceil(n * fraction)); every row
tied at C is kept, rows with a NULL date are never kept and not counted in n.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tablemig.errors import InputError
from tablemig.pg.cutoff import compute_cutoff
from tablemig.pg.names import QualifiedName
from tablemig.pg.schema import install_schema

D = dt.date


@pytest.fixture
def conn(fresh_db: Any) -> Iterator[psycopg.Connection[Any]]:
    with fresh_db.connect() as c:
        install_schema(c)
        yield c


def make_table(conn: psycopg.Connection[Any], values: Sequence[Any], col_type: str = "date",
               table: str = "t") -> None:
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
    conn.execute(sql.SQL("CREATE TABLE {} (id bigserial PRIMARY KEY, d {})").format(
        sql.Identifier(table), sql.SQL(col_type)))
    with conn.cursor() as cur:
        cur.executemany(sql.SQL("INSERT INTO {} (d) VALUES (%s::{})").format(sql.Identifier(table), sql.SQL(col_type)),
                        [(v,) for v in values])


def cutoff(conn: psycopg.Connection[Any], fraction: float | str | None, table: str = "t",
           column: str = "d") -> str:
    row = conn.execute("SELECT table_migration.cutoff_value(%s::regclass, %s::name, %s::numeric)",
                       (table, column, None if fraction is None else str(fraction))).fetchone()
    assert row is not None
    return str(row[0])


def expected_cutoff(values: Sequence[Any], fraction: float | str) -> Any:
    dated = sorted((v for v in values if v is not None), reverse=True)
    keep = max(1, math.ceil(len(dated) * Decimal(str(fraction))))
    return dated[keep - 1]


def kept(conn: psycopg.Connection[Any], c: str, col_type: str = "date") -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM t WHERE d >= %s::{}").format(sql.SQL(col_type)),
                       (c,)).fetchone()
    assert row is not None
    return int(row[0])


def error_of(conn: psycopg.Connection[Any], fraction: float | str | None, table: str = "t",
             column: str = "d") -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info:
        cutoff(conn, fraction, table, column)
    return info.value


# --- exact values -----------------------------------------------------------------------

TEN_DAYS = [D(2024, 1, day) for day in range(1, 11)]  # one row per day, 2024-01-01 .. 10


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [
        ("0.1", D(2024, 1, 10)),  # keep 1: the newest
        ("0.05", D(2024, 1, 10)),  # ceil(0.5) = 1
        ("0.0001", D(2024, 1, 10)),  # never keeps nothing
        ("0.2", D(2024, 1, 9)),
        ("0.25", D(2024, 1, 8)),  # ceil(2.5) = 3
        ("0.3", D(2024, 1, 8)),  # exactly 3 in numeric (a float would make it 3.0000000000000004)
        ("0.5", D(2024, 1, 6)),
        ("0.9", D(2024, 1, 2)),
        ("0.95", D(2024, 1, 1)),
        ("0.9999", D(2024, 1, 1)),
    ],
)
def test_exact_cutoff_on_distinct_dates(conn: psycopg.Connection[Any], fraction: str, expected: D) -> None:
    make_table(conn, list(reversed(TEN_DAYS)))  # insertion order must not matter
    assert cutoff(conn, fraction) == expected.isoformat()
    assert expected_cutoff(TEN_DAYS, fraction) == expected
    assert kept(conn, expected.isoformat()) == max(1, math.ceil(10 * Decimal(fraction)))


def test_ties_at_the_cutoff_are_all_kept(conn: psycopg.Connection[Any]) -> None:
    d1, d2, d3, d4 = D(2023, 5, 1), D(2023, 6, 1), D(2023, 7, 1), D(2023, 8, 1)
    values = [d1, d2, d2, d2, d2, d2, d2, d2, d3, d4]  # 10 rows, 7 tied at d2
    make_table(conn, values)
    assert cutoff(conn, "0.1") == d4.isoformat()
    assert cutoff(conn, "0.2") == d3.isoformat()
    for fraction in ("0.3", "0.5", "0.8", "0.9"):  # the k-th newest is one of the tied rows
        c = cutoff(conn, fraction)
        assert c == d2.isoformat()
        assert kept(conn, c) == 9  # every tied row stays live: 90 % kept, never below the fraction
    assert cutoff(conn, "0.95") == d1.isoformat()


def test_kept_share_is_never_below_the_fraction(conn: psycopg.Connection[Any]) -> None:
    """Many fractions on a table with ties and NULLs: exact, and minimal (the newest C that
    keeps enough rows)."""
    base = D(2022, 1, 1)
    values: list[D | None] = [base + dt.timedelta(days=(i * 7) % 23) for i in range(37)]
    values += [None] * 13
    make_table(conn, values)
    dated = [v for v in values if v is not None]
    for step in range(1, 100):
        fraction = f"{step / 100:.2f}"
        c = cutoff(conn, fraction)
        assert c == expected_cutoff(values, fraction).isoformat(), fraction
        need = math.ceil(len(dated) * Decimal(fraction))
        assert kept(conn, c) >= need
        assert sum(1 for v in dated if v > D.fromisoformat(c)) < need  # a newer C would keep too few


def test_null_dates_are_not_counted_and_never_kept(conn: psycopg.Connection[Any]) -> None:
    values: list[D | None] = [None] * 90 + TEN_DAYS  # 100 rows, 10 dated
    make_table(conn, values)
    # 50 % of the dated rows: the 5th newest of 10 (50 % of all 100 rows would be far older)
    assert cutoff(conn, "0.5") == "2024-01-06"
    assert cutoff(conn, "0.1") == "2024-01-10"
    assert kept(conn, "2024-01-01") == 10  # the NULL rows never satisfy d >= C


@pytest.mark.parametrize(
    ("col_type", "values", "fraction", "expected"),
    [
        ("date", ["2024-02-29", "2024-03-01", "2023-12-31"], "0.5", "2024-02-29"),
        ("timestamp", ["2024-03-05 10:30:00.123456", "2024-03-05 10:30:00.123457", "2024-03-05 10:30:00"],
         "0.5", "2024-03-05 10:30:00.123456"),
        ("timestamp without time zone", ["2024-01-01 00:00:00", "2024-01-01 00:00:01"], "0.5",
         "2024-01-01 00:00:01"),
        ("timestamptz", ["2024-03-05 10:30:00.5+00", "2024-03-05 12:00:00+02", "2024-03-05 10:00:00+00"],
         "0.5", "2024-03-05 10:00:00+00"),
        ("timestamp with time zone", ["2024-03-05 10:30:00+00", "2024-03-05 11:30:00+02"], "0.5",
         "2024-03-05 10:30:00+00"),
    ],
)
def test_date_timestamp_and_timestamptz(conn: psycopg.Connection[Any], col_type: str, values: list[str],
                                        fraction: str, expected: str) -> None:
    make_table(conn, values, col_type)
    c = cutoff(conn, fraction)
    assert c == expected  # as text in the column's own type (session: UTC, ISO)
    assert kept(conn, c, col_type) >= math.ceil(len(values) * Decimal(fraction))
    row = conn.execute("SELECT table_migration.get_data_cutoff_date('t', 'd', %s::numeric),"
                       " %s::timestamptz", (fraction, expected)).fetchone()
    assert row is not None and row[0] == row[1]
    assert isinstance(row[0], dt.datetime) and row[0].tzinfo is not None


def test_cutoff_orders_by_value_not_by_text(conn: psycopg.Connection[Any]) -> None:
    """The k-th newest by the column's own order, not by its text form."""
    # years past 9999 and BC dates sort wrongly as text
    make_table(conn, ["9999-12-31", "10000-01-01", "0044-03-15 BC", "0001-01-01"])
    assert cutoff(conn, "0.25") == "10000-01-01"
    assert cutoff(conn, "0.5") == "9999-12-31"
    assert cutoff(conn, "0.75") == "0001-01-01"
    assert cutoff(conn, "0.99") == "0044-03-15 BC"
    # across the end of daylight saving time, local text order differs from time order
    make_table(conn, ["2024-10-27 00:30:00+00", "2024-10-27 01:15:00+00"], "timestamptz")
    conn.execute("SET TimeZone = 'Europe/Berlin'")
    try:
        c = cutoff(conn, "0.5")  # keep 1: the newest is 01:15 UTC = 02:15+01 (after 02:30+02)
        assert c == "2024-10-27 02:15:00+01"
        row = conn.execute("SELECT table_migration.get_data_cutoff_date('t', 'd', 0.5)"
                           " = timestamptz '2024-10-27 01:15:00+00'").fetchone()
        assert row == (True,)
    finally:
        conn.execute("SET TimeZone = 'UTC'")


def test_quoted_table_and_column_names(conn: psycopg.Connection[Any]) -> None:
    conn.execute('CREATE SCHEMA "Sales"')
    conn.execute('CREATE TABLE "Sales"."Invoice Lines" ("Created At" date, "select" int)')
    conn.execute('INSERT INTO "Sales"."Invoice Lines" VALUES (\'2024-01-01\', 1), (\'2024-02-01\', 2),'
                 ' (\'2024-03-01\', 3), (\'2024-04-01\', 4)')
    assert cutoff(conn, "0.5", '"Sales"."Invoice Lines"', "Created At") == "2024-03-01"
    qn = QualifiedName("Sales", "Invoice Lines")
    assert compute_cutoff(conn, qn, "Created At", 0.75) == "2024-02-01"


# --- configuration ----------------------------------------------------------------------


def test_null_fraction_uses_the_configured_retention(conn: psycopg.Connection[Any]) -> None:
    days = [D(2024, 1, 1) + dt.timedelta(days=i) for i in range(20)]
    make_table(conn, days)
    assert cutoff(conn, None) == days[-2].isoformat()  # default 0.1 of 20 rows: keep 2
    two_arg = conn.execute("SELECT table_migration.cutoff_value('t', 'd')").fetchone()
    assert two_arg == (days[-2].isoformat(),)
    conn.execute("UPDATE table_migration.migration_config SET config_value = '0.5'"
                 " WHERE config_key = 'data_retention_percentage'")
    assert cutoff(conn, None) == days[-10].isoformat()
    conn.execute("UPDATE table_migration.migration_config SET config_value = '1'"
                 " WHERE config_key = 'data_retention_percentage'")
    assert "out of range" in (error_of(conn, None).diag.message_primary or "")


# --- refusals ---------------------------------------------------------------------------


def test_empty_table_and_all_null_column(conn: psycopg.Connection[Any]) -> None:
    make_table(conn, [])
    exc = error_of(conn, "0.1")
    assert "no rows" in (exc.diag.message_primary or "")
    assert exc.diag.sqlstate == "P0002"  # no_data_found
    make_table(conn, [None, None, None])
    exc = error_of(conn, "0.1")
    assert "no rows" in (exc.diag.message_primary or "") and '"d"' in (exc.diag.message_primary or "")


@pytest.mark.parametrize("col_type", ["text", "integer", "bigint", "time", "interval"])
def test_non_date_column_is_refused(conn: psycopg.Connection[Any], col_type: str) -> None:
    conn.execute(sql.SQL("CREATE TABLE t (id int, d {})").format(sql.SQL(col_type)))
    exc = error_of(conn, "0.1")
    message = exc.diag.message_primary or ""
    assert '"d"' in message
    type_name = {"integer": "integer", "bigint": "bigint", "time": "time without time zone"}.get(col_type, col_type)
    assert type_name in message
    assert "not a date or timestamp" in message
    assert exc.diag.sqlstate == "42804"  # datatype_mismatch


def test_missing_column_and_table(conn: psycopg.Connection[Any]) -> None:
    make_table(conn, TEN_DAYS)
    exc = error_of(conn, "0.1", column="created_at")
    assert '"created_at" does not exist' in (exc.diag.message_primary or "")
    assert exc.diag.sqlstate == "42703"
    exc = error_of(conn, "0.1", table="public.no_such_table")
    assert exc.diag.sqlstate == "42P01"


@pytest.mark.parametrize("fraction", ["0", "1", "-0.1", "1.5", "0.0", "1.0000"])
def test_fraction_out_of_range(conn: psycopg.Connection[Any], fraction: str) -> None:
    make_table(conn, TEN_DAYS)
    exc = error_of(conn, fraction)
    assert "out of range" in (exc.diag.message_primary or "")
    assert exc.diag.sqlstate == "22023"
    assert "between 0 and 1" in (exc.diag.message_hint or "")


# --- scale and plan ---------------------------------------------------------------------


def test_large_table_with_index_is_exact_and_walks_the_index(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE big (id bigint PRIMARY KEY, d timestamptz)")
    conn.execute("INSERT INTO big SELECT g, timestamptz '2020-01-01 00:00:00+00' + g * interval '1 minute'"
                 " FROM generate_series(1, 200000) g")
    conn.execute("CREATE INDEX big_d_idx ON big (d)")
    conn.execute("ANALYZE big")
    # keep 10 % = 20000 rows: the 20000th newest is g = 180001
    expected = (dt.datetime(2020, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=180001))
    assert cutoff(conn, "0.1", "big") == expected.strftime("%Y-%m-%d %H:%M:%S+00")
    row = conn.execute("SELECT table_migration.get_data_cutoff_date('big', 'd', 0.1)").fetchone()
    assert row == (expected,)

    # The plan of the query the function runs, through auto_explain (nested statements).
    plans: list[str] = []
    conn.add_notice_handler(lambda d: plans.append(d.message_primary or ""))
    try:
        conn.execute("LOAD 'auto_explain'")
    except psycopg.Error as exc:
        pytest.skip(f"auto_explain is not available: {exc}")
    conn.execute("SET auto_explain.log_min_duration = 0")
    conn.execute("SET auto_explain.log_nested_statements = on")
    conn.execute("SET auto_explain.log_level = notice")
    cutoff(conn, "0.1", "big")
    conn.execute("SET auto_explain.log_min_duration = -1")
    kth = [p for p in plans if "OFFSET" in p]
    assert kth, plans
    assert "Scan Backward using big_d_idx" in kth[0], kth[0]
    assert "Sort" not in kth[0], kth[0]


# --- the planner (dry runs change nothing) ----------------------------------------------


def test_planner_compute_cutoff_without_the_schema_leaves_nothing_behind(fresh_db: Any) -> None:
    with fresh_db.connect() as c:
        days = [D(2024, 1, 1) + dt.timedelta(days=i) for i in range(8)]
        make_table(c, days + [None])
        assert compute_cutoff(c, QualifiedName.parse("public.t"), "d", 0.25) == "2024-01-07"
        assert compute_cutoff(c, QualifiedName.parse("t"), "d", 0.5) == "2024-01-05"
        with pytest.raises(InputError, match="out of range"):
            compute_cutoff(c, QualifiedName.parse("public.t"), "d", 1.5)
        with pytest.raises(InputError, match="not a date or timestamp"):
            compute_cutoff(c, QualifiedName.parse("public.t"), "id", 0.5)
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        gone = c.execute("SELECT to_regnamespace('table_migration'),"
                         " (SELECT count(*) FROM pg_proc WHERE proname = 'cutoff_value')").fetchone()
        assert gone == (None, 0)
        c.execute("DELETE FROM t")
        with pytest.raises(InputError, match="no rows"):
            compute_cutoff(c, QualifiedName.parse("public.t"), "d", 0.5)
        assert c.execute("SELECT to_regnamespace('table_migration')").fetchone() == (None,)


def test_planner_compute_cutoff_with_the_schema_installed(conn: psycopg.Connection[Any]) -> None:
    make_table(conn, TEN_DAYS)
    assert compute_cutoff(conn, QualifiedName.parse("public.t"), "d", 0.3) == "2024-01-08"
    assert compute_cutoff(conn, QualifiedName.parse('"public"."t"'), "d", 0.1) == "2024-01-10"
    assert conn.execute("SELECT to_regnamespace('table_migration') IS NOT NULL").fetchone() == (True,)
