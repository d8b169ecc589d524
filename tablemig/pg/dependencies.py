"""Functions and procedures that mention a table, found by parsing their bodies.

SQL-language bodies are parsed with sqlglot and the table references compared exactly;
PL/pgSQL and other bodies cannot be parsed as SQL, so they are matched by text and marked
"unverified" — never reported as checked.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
import sqlglot
from sqlglot import exp

from .names import QualifiedName


def _tables_in(body: str) -> set[tuple[str, str]] | None:
    """(schema, table) pairs referenced by SQL `body`; None when it does not parse."""
    try:
        statements = sqlglot.parse(body, read="postgres")
    except sqlglot.errors.ParseError:
        return None
    found: set[tuple[str, str]] = set()
    for st in statements:
        if st is None:
            continue
        for t in st.find_all(exp.Table):
            found.add((t.db or "", t.name))
    return found


def scan_functions(conn: psycopg.Connection[Any], table: QualifiedName) -> list[dict[str, Any]]:
    """Every user function whose body mentions the table, with how sure we are."""
    rows = conn.execute(
        "SELECT p.oid::regprocedure::text, l.lanname, p.prosrc, p.prosqlbody IS NOT NULL"
        "  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'table_migration')"
        "   AND l.lanname IN ('sql', 'plpgsql')").fetchall()
    needle = re.compile(rf"\b{re.escape(table.name)}\b", re.IGNORECASE)
    out = []
    for name, lang, src, atomic in rows:
        src = src or ""
        if not needle.search(src) and not atomic:
            continue
        if atomic:
            out.append({"function": name, "language": lang, "status": "bound by OID (BEGIN ATOMIC)"})
            continue
        refs = _tables_in(src) if lang == "sql" else None
        if refs is None:
            out.append({"function": name, "language": lang, "status": "unverified",
                        "detail": "body is not plain SQL: matched by text"})
        elif (table.schema, table.name) in refs or ("", table.name) in refs:
            out.append({"function": name, "language": lang, "status": "references the table",
                        "detail": "resolved by name at run time: follows the new table after the swap"})
    return out
