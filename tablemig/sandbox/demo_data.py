"""Demo data: `public.orders` (growth-skewed over 36 months) with real dependencies.

Everything is generated server-side with `generate_series`; no row passes through Python.
By default `order_items` references only orders of the last 30 days (items of open orders),
so its foreign key can follow `orders` to the live table after a migration that keeps at
least the newest ~6 % of rows: a plain child for the tests that are not about families.

With `family` the data is as real data is, and as the demo plan migrates it: `order_items`
references orders of every age (one to three items per order), and `order_returns`
references 2 % of the orders, of every age (a warranty claim comes years later). Both block
a migration unless the plan gives them a policy (docs/families.md): the demo plan's items
follow their orders (policy `follow`), its returns keep theirs live (policy `keep`).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import psycopg
from psycopg import sql

from ..cli.conventions import add_dsn, add_json, dsn_of, emit, positive_int
from ..errors import InputError
from ..pg.connect import connect

DDL = """
DROP VIEW IF EXISTS {schema}.recent_orders;
DROP TABLE IF EXISTS {schema}.order_returns;
DROP TABLE IF EXISTS {schema}.order_items;
DROP TABLE IF EXISTS {schema}.orders;
CREATE TABLE {schema}.orders (
    id           bigserial,
    customer_id  bigint NOT NULL,
    status       text NOT NULL,
    amount       numeric(12,2) NOT NULL,
    created_date timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    note         text
);
"""

INSERT_ORDERS = """
INSERT INTO {schema}.orders (customer_id, status, amount, created_date, updated_at, note)
SELECT mod(g::bigint * 7919, 100000) + 1,
       (ARRAY['new','paid','shipped','delivered','cancelled'])[1 + mod(g, 5)],
       round((random() * 500)::numeric, 2),
       ts, ts + interval '1 hour',
       CASE WHEN mod(g, 10) = 0 THEN repeat($$note $$, 1 + mod(g, 20)::int) END
  FROM generate_series(1::bigint, %(rows)s) g,
       -- density grows linearly with time: the newest months hold the most rows
       LATERAL (SELECT %(end)s::timestamptz
                       - (%(months)s * interval '1 month') * (1 - sqrt((g - 0.5) / %(rows)s))
                       AS ts) t
"""

# Indexes after the load: building them once is much cheaper than maintaining them per row.
AFTER_LOAD = """
ALTER TABLE {schema}.orders ADD CONSTRAINT orders_pkey PRIMARY KEY (id);
CREATE INDEX orders_customer_id_idx ON {schema}.orders (customer_id);
CREATE INDEX orders_created_date_idx ON {schema}.orders (created_date);
CREATE TABLE {schema}.order_items (
    id        bigserial PRIMARY KEY,
    order_id  bigint NOT NULL REFERENCES {schema}.orders (id) ON DELETE CASCADE,
    sku       text NOT NULL,
    quantity  integer NOT NULL CHECK (quantity > 0)
);
INSERT INTO {schema}.order_items (order_id, sku, quantity)
SELECT o.id, 'SKU-' || (o.id % 997), 1 + (o.id % 3)
  FROM {schema}.orders o, generate_series(1, 1 + (o.id % 3)::int) n
 WHERE {items_of};
CREATE INDEX order_items_order_id_idx ON {schema}.order_items (order_id);
CREATE VIEW {schema}.recent_orders AS
    SELECT id, customer_id, status, amount, created_date
      FROM {schema}.orders
     WHERE created_date >= now() - interval '30 days';
ANALYZE {schema}.orders;
ANALYZE {schema}.order_items;
"""

RETURNS = """
CREATE TABLE {schema}.order_returns (
    id           bigserial PRIMARY KEY,
    order_id     bigint NOT NULL REFERENCES {schema}.orders (id),
    reason       text NOT NULL,
    returned_at  timestamptz NOT NULL
);
INSERT INTO {schema}.order_returns (order_id, reason, returned_at)
SELECT o.id, (ARRAY['damaged','wrong size','warranty','late delivery'])[1 + mod(o.id, 4)::int],
       o.created_date + interval '9 days'
  FROM {schema}.orders o
 WHERE mod(o.id * 7907, 50) = 0;
CREATE INDEX order_returns_order_id_idx ON {schema}.order_returns (order_id);
ANALYZE {schema}.order_returns;
"""


def create_demo_data(conn: psycopg.Connection[Any], rows: int, *, schema: str = "public",
                     months: int = 36, end: str | None = None, family: bool = False) -> dict[str, Any]:
    """(Re)create the demo tables with `rows` orders (with `family`: items of orders of
    every age, and `order_returns`); returns counts and the elapsed time."""
    if rows < 1:
        raise InputError(f"--rows must be at least 1, got {rows}", "give a positive row count")
    started = time.monotonic()
    s = sql.Identifier(schema)
    end_ts = end or "now"
    with conn.transaction():
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s))
        conn.execute(sql.SQL(DDL).format(schema=s))
        conn.execute("SELECT setseed(0.42)")
        conn.execute(sql.SQL(INSERT_ORDERS).format(schema=s),
                     {"rows": rows, "months": months, "end": end_ts})
        items_of = (sql.SQL("true") if family else sql.SQL(
            "o.created_date >= (SELECT max(created_date) FROM {}.orders) - interval '30 days'").format(s))
        conn.execute(sql.SQL(AFTER_LOAD).format(schema=s, items_of=items_of))
        if family:
            conn.execute(sql.SQL(RETURNS).format(schema=s))
    counts = conn.execute(
        sql.SQL("SELECT (SELECT count(*) FROM {}.orders), (SELECT count(*) FROM {}.order_items)")
        .format(s, s)
    ).fetchone()
    assert counts is not None
    out = {"orders": counts[0], "order_items": counts[1], "seconds": round(time.monotonic() - started, 2)}
    if family:
        found = conn.execute(sql.SQL("SELECT count(*) FROM {}.order_returns").format(s)).fetchone()
        out["order_returns"] = found[0] if found else 0
    return out


def _cmd(args: argparse.Namespace) -> int:
    with connect(dsn_of(args)) as conn:
        result = create_demo_data(conn, args.rows, schema=args.schema, months=args.months, family=args.family)
    emit(args, {**result, "schema": args.schema}, f"created {result['orders']} orders and {result['order_items']} "
         f"order_items in {args.schema} in {result['seconds']} s")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo-data", help="create the demo orders / order_items / recent_orders")
    add_dsn(p)
    p.add_argument("--rows", type=int, default=100_000, help="number of orders (default 100000)")
    p.add_argument("--months", type=positive_int, default=36, help="months of history (default 36)")
    p.add_argument("--schema", default="public", help="schema to create the tables in")
    p.add_argument("--family", action="store_true",
                   help="as real data is: order_items of orders of every age, and order_returns referencing 2 %% "
                        "of the orders of every age (children that need a policy: docs/families.md)")
    add_json(p)
    p.set_defaults(func=_cmd)
