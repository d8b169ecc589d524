"""The application's queries that touch a table, from `pg_stat_statements` when it is there.

A hint for PRE-1.3c (application dependencies), next to the sessions connected now and the
applications the plan declares: the statements the server has recorded whose text names the
table, with their calls and mean time. Matched by text (the relation's name as a word), so a
query through a view or a function that reads the table is not found, and a same-named
relation of another schema is: a person confirms. Statements are normalized by the
extension (constants shown as $1, …): no values of the application's rows appear.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql

from .names import QualifiedName

LIMIT = 20


def table_queries(conn: psycopg.Connection[Any], table: QualifiedName, limit: int = LIMIT) -> dict[str, Any]:
    """{"available": bool, "queries": [{query, calls, mean_ms, rows}], "why": text when not}."""
    found = conn.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
                         " WHERE e.extname = 'pg_stat_statements'").fetchone()
    if found is None:
        return {"available": False, "queries": [],
                "why": "pg_stat_statements is not installed in this database (shared_preload_libraries = "
                       "'pg_stat_statements', then CREATE EXTENSION pg_stat_statements)"}
    # the name as a word (\m, \M: PostgreSQL's word boundaries); re.escape's escapes are ARE's
    pattern = r"\m" + re.escape(table.name) + r"\M"
    query = sql.SQL(
        "SELECT s.query, s.calls, round(s.mean_exec_time::numeric, 3), s.rows FROM {}.pg_stat_statements s"
        " WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND s.query ~* %s AND s.query !~* 'table_migration' ORDER BY s.calls DESC, s.query LIMIT %s").format(
        sql.Identifier(found[0]))
    try:
        with conn.transaction():
            rows = conn.execute(query, (pattern, limit)).fetchall()
    except psycopg.errors.ObjectNotInPrerequisiteState as exc:  # installed but not preloaded
        return {"available": False, "queries": [], "why": f"pg_stat_statements: {exc.diag.message_primary}"}
    return {"available": True, "queries": [{"query": q, "calls": int(c), "mean_ms": float(m), "rows": int(r)}
                                           for q, c, m, r in rows]}
