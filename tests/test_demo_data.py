"""`tablemig demo-data`: the demo orders / order_items / recent_orders, through the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[1]
ROWS = 20_000


def demo_data(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tablemig.cli.main", "demo-data", "--dsn", dsn, *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture
def demo(fresh_db: Any) -> Any:
    out = demo_data(fresh_db.dsn, "--rows", str(ROWS))
    assert out.returncode == 0, out.stderr
    assert f"created {ROWS} orders" in out.stdout
    return fresh_db


def scalar(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def test_orders_structure(demo: Any) -> None:
    with demo.connect() as conn:
        cols = conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid)"
            "  FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
            " WHERE a.attrelid = 'public.orders'::regclass AND a.attnum > 0 AND NOT a.attisdropped"
            " ORDER BY a.attnum").fetchall()
        by_name = {c[0]: c[1:] for c in cols}
        assert [c[0] for c in cols] == ["id", "customer_id", "status", "amount", "created_date", "updated_at",
                                        "note"]
        assert by_name["id"][0] == "bigint" and by_name["id"][1]
        assert "nextval" in by_name["id"][2]  # bigserial
        assert scalar(conn, "SELECT pg_get_serial_sequence('public.orders', 'id')") == "public.orders_id_seq"
        assert by_name["created_date"][:2] == ("timestamp with time zone", True)
        assert by_name["updated_at"][0] == "timestamp with time zone"
        assert by_name["customer_id"][0] == "bigint" and by_name["note"][1] is False

        pk = scalar(conn, "SELECT array_agg(a.attname::text) FROM pg_index i"
                          " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)"
                          " WHERE i.indrelid = 'public.orders'::regclass AND i.indisprimary")
        assert pk == ["id"]
        secondary = {r[0] for r in conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
            " AND a.attnum = i.indkey[0] WHERE i.indrelid = 'public.orders'::regclass AND NOT i.indisprimary"
            " AND i.indnatts = 1 AND i.indisvalid")}
        assert {"customer_id", "created_date"} <= secondary
        # the sequence continues after the generated rows
        assert scalar(conn, "SELECT last_value FROM public.orders_id_seq") == ROWS


def test_dependencies_order_items_and_view(demo: Any) -> None:
    with demo.connect() as conn:
        fk = conn.execute(
            "SELECT conrelid::regclass::text, confrelid::regclass::text, pg_get_constraintdef(oid)"
            " FROM pg_constraint WHERE contype = 'f' AND confrelid = 'public.orders'::regclass").fetchall()
        assert len(fk) == 1
        assert fk[0][0] == "order_items" and fk[0][1] == "orders"
        assert "FOREIGN KEY (order_id) REFERENCES orders(id)" in fk[0][2]
        view = conn.execute("SELECT c.relkind FROM pg_class c WHERE c.oid = 'public.recent_orders'::regclass")
        assert view.fetchone() == ("v",)
        uses = conn.execute("SELECT table_schema, table_name FROM information_schema.view_table_usage"
                            " WHERE view_schema = 'public' AND view_name = 'recent_orders'").fetchall()
        assert uses == [("public", "orders")]
        recent = scalar(conn, "SELECT count(*) FROM public.recent_orders")
        assert recent == scalar(conn, "SELECT count(*) FROM public.orders"
                                      " WHERE created_date >= now() - interval '30 days'")
        assert recent > 0


def test_row_count_growth_skew_and_spread(demo: Any) -> None:
    with demo.connect() as conn:
        assert scalar(conn, "SELECT count(*) FROM public.orders") == ROWS
        assert scalar(conn, "SELECT count(DISTINCT id) FROM public.orders") == ROWS
        row = conn.execute(
            "WITH b AS (SELECT min(created_date) lo, max(created_date) hi FROM public.orders)"
            " SELECT count(*) FILTER (WHERE created_date < lo + interval '12 months'),"
            "        count(*) FILTER (WHERE created_date >= hi - interval '12 months'),"
            "        extract(epoch FROM hi - lo) / 86400, extract(epoch FROM now() - hi) / 86400"
            "   FROM public.orders, b GROUP BY lo, hi").fetchone()
        assert row is not None
        first_year, last_year, span_days, age_days = int(row[0]), int(row[1]), float(row[2]), float(row[3])
        assert last_year >= 3 * first_year, (first_year, last_year)
        assert first_year > 0
        assert 35 * 30 <= span_days <= 36 * 31, span_days  # ~36 months
        assert -0.01 <= age_days <= 1, age_days  # ends now
        # every month of the 36 has orders, and the monthly volume grows
        months = conn.execute("SELECT date_trunc('month', created_date), count(*) FROM public.orders"
                              " GROUP BY 1 ORDER BY 1").fetchall()
        assert 36 <= len(months) <= 37
        counts = [m[1] for m in months[1:-1]]  # the partial first and last months aside
        assert counts[-1] > counts[0] * 3


def test_order_items_reference_only_recent_orders(demo: Any) -> None:
    with demo.connect() as conn:
        items, orders_with_items = conn.execute(
            "SELECT count(*), count(DISTINCT order_id) FROM public.order_items").fetchone() or (0, 0)
        assert items > 0 and orders_with_items > 0
        too_old = scalar(conn, "SELECT count(*) FROM public.order_items i JOIN public.orders o ON o.id = i.order_id"
                               " WHERE o.created_date < (SELECT max(created_date) FROM public.orders)"
                               " - interval '30 days'")
        assert too_old == 0
        # and every order of the last 30 days has its items
        recent = scalar(conn, "SELECT count(*) FROM public.orders WHERE created_date >="
                              " (SELECT max(created_date) FROM public.orders) - interval '30 days'")
        assert orders_with_items == recent
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO public.order_items (order_id, sku, quantity) VALUES (-1, 'x', 1)")


def test_rerun_recreates_the_same_shape(demo: Any) -> None:
    out = demo_data(demo.dsn, "--rows", "500")
    assert out.returncode == 0, out.stderr
    with demo.connect() as conn:
        assert scalar(conn, "SELECT count(*) FROM public.orders") == 500
        assert scalar(conn, "SELECT count(*) FROM public.recent_orders") >= 0
        assert scalar(conn, "SELECT min(id) FROM public.orders") == 1


@pytest.mark.parametrize("rows", ["0", "-5"])
def test_rows_must_be_positive(fresh_db: Any, rows: str) -> None:
    out = demo_data(fresh_db.dsn, "--rows", rows)
    assert out.returncode == 2
    assert "--rows must be at least 1" in out.stderr
    assert "Traceback" not in out.stderr
    with fresh_db.connect() as conn:
        assert scalar(conn, "SELECT to_regclass('public.orders')") is None


def test_other_schema(fresh_db: Any) -> None:
    out = demo_data(fresh_db.dsn, "--rows", "1000", "--schema", "Shop")
    assert out.returncode == 0, out.stderr
    with fresh_db.connect() as conn:
        assert scalar(conn, 'SELECT count(*) FROM "Shop".orders') == 1000
        assert scalar(conn, "SELECT to_regclass('public.orders')") is None
        assert scalar(conn, """SELECT to_regclass('"Shop".recent_orders') IS NOT NULL""")


def test_the_family_references_orders_of_every_age(fresh_db: Any) -> None:
    """`--family`: order_items of orders of every age (one to three per order), and
    order_returns, 2 % of the orders, from the oldest months to the newest (the demo plan's
    children, with the policies follow and keep, docs/families.md)."""
    out = demo_data(fresh_db.dsn, "--rows", str(ROWS), "--family", "--json")
    assert out.returncode == 0, out.stderr
    with fresh_db.connect() as conn:
        span = scalar(conn, "SELECT extract(epoch FROM max(created_date) - min(created_date))::float8 FROM orders")
        for child, low, high in (("order_returns", 0.015, 0.025), ("order_items", 1.9, 2.1)):
            row = conn.execute(
                "SELECT count(*), extract(epoch FROM max(o.created_date) - min(o.created_date))::float8"
                f" FROM {child} c JOIN orders o ON o.id = c.order_id").fetchone()
            assert row is not None
            n, covered = row
            assert ROWS * low <= n <= ROWS * high, (child, n)
            assert covered > span * 0.95, (child, covered, span)  # every age
            assert scalar(conn, f"SELECT count(*) FROM pg_indexes WHERE indexname = '{child}_order_id_idx'") == 1
