"""Read-only evidence gathering used by plan steps: data-volume analysis, validation
summaries, trigger probes. Each returns plain data for the report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import psycopg
from psycopg import sql

from .names import QualifiedName
from .references import references
from .sqltext import Fragment
from .statements import Direct


def monthly_distribution(conn: psycopg.Connection[Any], table: QualifiedName | list[QualifiedName],
                         date_column: str, date_type: str, cutoff: str) -> pd.DataFrame:
    """The checklist's data-volume analysis: rows per month, share, kept vs archived. Several
    tables are counted as one (after prune, the live table and the archive hold the rows)."""
    d = sql.Identifier(date_column)
    tables = table if isinstance(table, list) else [table]
    rows = sql.SQL(" UNION ALL ").join(sql.SQL("SELECT {d} FROM {tbl}").format(d=d, tbl=t.ident()) for t in tables)
    cur = conn.execute(sql.SQL(
        "SELECT date_trunc('month', {d})::date AS month, count(*) AS record_count,"
        " count(*) FILTER (WHERE {d} >= %s::{t}) AS kept,"
        " count(*) FILTER (WHERE NOT ({d} >= %s::{t})) AS archived"
        " FROM ({rows}) r WHERE {d} IS NOT NULL GROUP BY 1 ORDER BY 1").format(
        d=d, t=Fragment(date_type), rows=rows), (cutoff, cutoff))
    frame = pd.DataFrame(cur.fetchall(), columns=["month", "record_count", "kept", "archived"])
    total = frame["record_count"].sum()
    frame["percentage"] = (frame["record_count"] * 100.0 / total).round(2) if total else 0.0
    return frame


def row_counts(conn: psycopg.Connection[Any], table: QualifiedName | list[QualifiedName], date_column: str,
               date_type: str, cutoff: str) -> dict[str, int]:
    """Rows in total, kept (date >= cutoff) and without a date, in one statement; several
    tables are counted as one (after prune the live table and the archive hold the rows)."""
    d = sql.Identifier(date_column)
    tables = table if isinstance(table, list) else [table]
    rows = sql.SQL(" UNION ALL ").join(sql.SQL("SELECT {d} FROM {tbl}").format(d=d, tbl=t.ident()) for t in tables)
    row = conn.execute(sql.SQL(
        "SELECT count(*), count(*) FILTER (WHERE {d} >= %s::{t}), count(*) FILTER (WHERE {d} IS NULL)"
        " FROM ({rows}) r").format(d=d, t=Fragment(date_type), rows=rows), (cutoff,)).fetchone()
    assert row is not None
    return {"total": int(row[0]), "keep": int(row[1]), "null_dated": int(row[2])}


def rewritable(conn: psycopg.Connection[Any], table: QualifiedName) -> sql.Composable:
    """A condition for the rows a probe may write again: those that satisfy the table's
    NOT VALID CHECK constraints (a row they never checked may not, and writing it fails, as
    it would for the application)."""
    rows = conn.execute("SELECT pg_get_expr(conbin, conrelid) FROM pg_constraint WHERE conrelid = %s::regclass"
                        " AND contype = 'c' AND NOT convalidated ORDER BY conname", (str(table),)).fetchall()
    parts: list[sql.Composable] = [sql.SQL("({}) IS NOT FALSE").format(Fragment(r[0])) for r in rows]
    return sql.SQL(" AND ").join(parts or [sql.SQL("true")])


def unreferenced(conn: psycopg.Connection[Any], table: QualifiedName, alias: str) -> sql.Composable:
    """A condition for the rows of `table` (as `alias`) that no foreign key references: a
    probe that deletes a row, even in a transaction rolled back, must neither cascade into
    the children nor fail on them (ON DELETE RESTRICT / NO ACTION)."""
    oid = conn.execute("SELECT %s::regclass::oid", (str(table),)).fetchone()
    assert oid is not None
    parts: list[sql.Composable] = []
    for ref in references(Direct(conn), int(oid[0])):
        match = sql.SQL(" AND ").join(sql.SQL("x.{} = {}").format(sql.Identifier(c), sql.Identifier(alias, p))
                                      for c, p in zip(ref.child_columns, ref.parent_columns, strict=True))
        parts.append(sql.SQL("NOT EXISTS (SELECT 1 FROM {} x WHERE {})").format(ref.child.ident(), match))
    return sql.SQL(" AND ").join(parts or [sql.SQL("true")])


def validation_summary(conn: psycopg.Connection[Any], tables: dict[str, QualifiedName],
                       date_column: str) -> list[dict[str, Any]]:
    """The checklist's validation summary: count and min/max date of each table."""
    out = []
    for label, t in tables.items():
        row = conn.execute(sql.SQL("SELECT count(*), min({d})::text, max({d})::text FROM {t}").format(
            d=sql.Identifier(date_column), t=t.ident())).fetchone()
        assert row is not None
        out.append({"table_type": label, "table": str(t), "record_count": row[0],
                    "earliest_date": row[1], "latest_date": row[2]})
    return out


def insert_copy(conn: psycopg.Connection[Any], table: QualifiedName, key: str, columns: list[str],
                overriding: bool, where: sql.Composable | None = None, params: Sequence[Any] = ()) -> int:
    """Insert a copy of one row of `table` (`where`, rewritable) under a new value of its
    one integer key column (far above the largest), for a probe whose transaction is rolled
    back: a row nothing references. Returns the new key."""
    k = sql.Identifier(key)
    new_key = conn.execute(sql.SQL("SELECT coalesce(max({k}), 0) + 1000000 FROM {t}").format(
        k=k, t=table.ident())).fetchone()
    assert new_key is not None
    others = [c for c in columns if c != key]
    conn.execute(sql.SQL(
        "INSERT INTO {t} ({k}, {o}){ovr} SELECT %s, {o} FROM {t} WHERE {w} AND {ok} LIMIT 1").format(
        t=table.ident(), k=k, o=sql.SQL(", ").join(map(sql.Identifier, others)),
        ovr=sql.SQL(" OVERRIDING SYSTEM VALUE" if overriding else ""), w=where or sql.SQL("true"),
        ok=rewritable(conn, table)),
        (new_key[0], *params))
    return int(new_key[0])


def touch_one(conn: psycopg.Connection[Any], table: QualifiedName, key: list[str]) -> int:
    """Write one row of `table` without changing it (its key set to itself: no foreign key
    action fires); the rows written (0 when the table is empty)."""
    k = sql.SQL(", ").join(map(sql.Identifier, key))
    return conn.execute(sql.SQL("UPDATE {0} SET ({1}) = ROW({1}) WHERE ctid IN (SELECT ctid FROM {0}"
                                " ORDER BY ctid DESC LIMIT 1)").format(table.ident(), k)).rowcount


def trigger_probe(conn: psycopg.Connection[Any], source: QualifiedName, target: QualifiedName,
                  key: list[str], date_column: str, date_type: str, cutoff: str,
                  columns: list[str], overriding: bool, *, key_only: bool = False) -> dict[str, Any]:
    """Write a test row to `source` inside a transaction that is rolled back and report
    whether the row trigger put it into `target`. Inserts a copy of a recent row under a
    new key when the key is one integer column; otherwise touches an existing recent row.
    `key_only`: `target` is a change log (key columns only): the key must appear there."""
    d = sql.Identifier(date_column)
    k = sql.SQL(", ").join(map(sql.Identifier, key))
    result: dict[str, Any] = {"source": str(source), "target": str(target)}
    try:
        with conn.transaction(force_rollback=True):
            kind = conn.execute(
                "SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = %s::regclass"
                " AND attname = %s", (str(source), key[0])).fetchone()
            integer = len(key) == 1 and kind is not None and kind[0] in ("integer", "bigint", "smallint")
            with conn.transaction():  # savepoint: fall back to an update probe on any failure
                if integer:
                    new_key = insert_copy(conn, source, key[0], columns, overriding, sql.SQL(
                        "{} >= %s::{}").format(d, Fragment(date_type)), [cutoff])
                    result.update(probe="insert", key=[str(new_key)])
                    found = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
                        target.ident(), k), (new_key,)).fetchone()
                else:
                    row = conn.execute(sql.SQL(
                        "UPDATE {t} SET {d} = {d} WHERE ({k}) = (SELECT {k} FROM {t} WHERE {d} >= %s::{dt}"
                        " AND {ok} LIMIT 1) RETURNING {k}").format(t=source.ident(), d=d, k=k, dt=Fragment(date_type),
                                                                   ok=rewritable(conn, source)),
                        (cutoff,)).fetchone()
                    result.update(probe="update", key=[str(v) for v in row or []])
                    found = conn.execute(sql.SQL(
                        "SELECT count(*) FROM {tt} WHERE ({k}) = ({vals})").format(
                        tt=target.ident(), k=k, vals=sql.SQL(", ").join(sql.Literal(v) for v in row or [])),
                    ).fetchone() if row and key_only else conn.execute(sql.SQL(
                        "SELECT count(*) FROM {tt} n JOIN {st} s USING ({k}) WHERE ({k}) = ({vals})"
                        " AND ROW(n.*) IS NOT DISTINCT FROM ROW(s.*)").format(
                        tt=target.ident(), st=source.ident(), k=k,
                        vals=sql.SQL(", ").join(sql.Literal(v) for v in row or [])),
                    ).fetchone() if row else (0,)
                result["appeared"] = bool(found and found[0] == 1)
                if not key_only:
                    src = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} >= %s::{}").format(
                        target.ident(), d, Fragment(date_type)), (cutoff,)).fetchone()
                    result["target_rows_in_probe_tx"] = src[0] if src else None
    except psycopg.Error as exc:
        result.update(appeared=False, error=str(exc.diag.message_primary))
    result["rolled_back"] = True
    return result
