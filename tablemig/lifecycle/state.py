"""`table_migration.migration_state`: one row per table, changed in the same transaction as
the work it records, plus the advisory lock that keeps two runs off one table."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from ..errors import ConcurrentRun
from ..pg.names import QualifiedName

# Advisory-lock class for "a tablemig run owns this table" (objid = the table's OID).
LOCK_CLASS = 0x7AB1E


STATES = ("planned", "capturing", "backfilling", "indexed", "verified", "swapped", "pruned",
          "cleaned", "rolled_back")
ORDER = {s: i for i, s in enumerate(STATES)}


def live_table(m: dict[str, Any]) -> QualifiedName:
    """The table the application uses (the original name, whichever table holds it now)."""
    return QualifiedName(m["schema_name"], m["original_name"])


def old_table(m: dict[str, Any]) -> QualifiedName:
    """After the swap, the original table: the archive (mode rename) or the kept backup
    (mode copy), which the mirror trigger keeps complete until prune."""
    return QualifiedName(m["schema_name"], (m["swap_record"] or {}).get("outgoing") or m["archive_name"])


def new_tables(m: dict[str, Any]) -> list[tuple[QualifiedName, str]]:
    """The tables the migration builds, with the tag of their temporary index names: the
    new table N ("n") and, in archive mode copy, the archive H the history is copied to ("h")."""
    out = [(QualifiedName(m["schema_name"], m["new_name"]), "n")]
    if m["archive_mode"] == "copy":
        out.append((QualifiedName(m["schema_name"], m["archive_name"]), "h"))
    return out


def load(conn: psycopg.Connection[Any], table: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM table_migration.migration_state WHERE table_name = %s", (table,))
        return cur.fetchone()


def load_by_current_name(conn: psycopg.Connection[Any], table: str) -> dict[str, Any] | None:
    """The state row of a table given by its name now (live or archive side)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM table_migration.migration_state WHERE table_name = %s"
                    " ORDER BY updated_at DESC LIMIT 1", (table,))
        return cur.fetchone()


def _update_sql(table: str, fields: dict[str, Any]) -> tuple[str, list[Any]]:
    values = [Jsonb(v) if isinstance(v, dict | list) and c in ("checkpoint", "swap_record") else v
              for c, v in fields.items()]
    assignments = ", ".join(f"{c} = %s" for c in fields)
    return (f"UPDATE table_migration.migration_state SET {assignments}, updated_at = now()"  # noqa: S608
            " WHERE table_name = %s", [*values, table])


_LOG = "SELECT table_migration.log_event(%s, %s, %s, %s::bigint, %s::numeric, %s)"


def _log_params(table: str, operation: str, status: str, rows: int | None, duration_ms: float | None,
                details: dict[str, Any] | None) -> list[Any]:
    return [table, operation, status, rows, duration_ms,
            Jsonb(json.loads(json.dumps(details, default=str))) if details else None]


def update(conn: psycopg.Connection[Any], table: str, **fields: Any) -> None:
    """Update fields of the state row (call inside the transaction doing the work)."""
    query, params = _update_sql(table, fields)
    conn.execute(query, params)


def log(conn: psycopg.Connection[Any], table: str, operation: str, status: str,
        rows: int | None = None, duration_ms: float | None = None,
        details: dict[str, Any] | None = None) -> None:
    conn.execute(_LOG, _log_params(table, operation, status, rows, duration_ms, details))


def advance(conn: psycopg.Connection[Any], table: str, operation: str, status: str, *,
            rows: int | None = None, duration_ms: float | None = None,
            details: dict[str, Any] | None = None, **fields: Any) -> None:
    """update() and log() in one statement: atomic on its own, one round trip."""
    query, params = _update_sql(table, fields)
    conn.execute(f"WITH u AS ({query}) {_LOG}",
                 [*params, *_log_params(table, operation, status, rows, duration_ms, details)])


def acquire_table_lock(conn: psycopg.Connection[Any], table_oid: int, table: str) -> None:
    """Session advisory lock for the table; names the holder when another run has it."""
    got = conn.execute("SELECT pg_try_advisory_lock(%s, %s)",
                       (LOCK_CLASS, table_oid & 0x7FFFFFFF)).fetchone()
    if got and got[0]:
        return
    holder = conn.execute(
        "SELECT a.pid, a.usename, a.application_name, a.client_addr::text, a.backend_start"
        "  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s AND l.granted",
        (LOCK_CLASS, table_oid & 0x7FFFFFFF)).fetchone()
    who = (f"pid {holder[0]} (user {holder[1]}, application {holder[2]!r}, "
           f"client {holder[3] or 'local'}, connected since {holder[4]:%Y-%m-%d %H:%M:%S})"
           if holder else "another session")
    raise ConcurrentRun(
        f"{table} is being migrated by another tablemig run: {who}",
        "wait for that run to finish, or stop it; then rerun (the migration resumes where it "
        "stopped)")


def release_table_lock(conn: psycopg.Connection[Any], table_oid: int) -> None:
    if not conn.closed:
        conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, table_oid & 0x7FFFFFFF))
