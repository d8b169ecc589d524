"""Catalog and data snapshots: proof that an operation changed nothing."""

from __future__ import annotations

from typing import Any

import psycopg

CATALOG = """
SELECT 'class', n.nspname || '.' || c.relname || ':' || c.relkind::text || ':' || coalesce(c.relacl::text, '')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
UNION ALL SELECT 'attr', attrelid::regclass || '.' || attname || ':' || atttypid::regtype
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND attnum > 0
UNION ALL SELECT 'proc', p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
UNION ALL SELECT 'trigger', tgrelid::regclass || '.' || tgname || ':' || tgenabled::text FROM pg_trigger
UNION ALL SELECT 'constraint', conrelid::regclass || '.' || conname || ':' || convalidated FROM pg_constraint
 WHERE connamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
UNION ALL SELECT 'namespace', nspname FROM pg_namespace
UNION ALL SELECT 'view', schemaname || '.' || viewname || ':' || md5(definition) FROM pg_views
 WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
UNION ALL SELECT 'sequence', schemaname || '.' || sequencename || ':' || coalesce(last_value, 0) FROM pg_sequences
ORDER BY 1, 2
"""


def snapshot(conn: psycopg.Connection[Any], tables: tuple[str, ...] = ()) -> dict[str, Any]:
    """The user-visible catalog, and count + md5 of every row of `tables`."""
    catalog = conn.execute(CATALOG).fetchall()
    data = {t: conn.execute(f"SELECT count(*), md5(string_agg(x::text, ',' ORDER BY x::text)) FROM {t} x").fetchone()
            for t in tables}
    return {"catalog": catalog, "data": data}
