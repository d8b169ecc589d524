"""Physical limits: the least work that does what a step of the migration does, measured on
the same data and server. Each function returns its seconds (and what it did); none of them
is part of tablemig."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tablemig.pg.connect import connect

from .source import DATE_COLUMN, Cut

BARE = "kept"
BARE_CHILD = "kept_child"  # a `follow` child's kept rows (copy_followed_family)


@dataclass(frozen=True)
class Index:
    """A plain-column index of the original, rebuilt the same way on the bare copy."""

    columns: tuple[str, ...]
    unique: bool
    primary: bool


def simple_indexes(conn: psycopg.Connection[Any], table: str) -> list[Index]:
    """The indexes of `table` that are plain column lists (the demo table's: its key, the
    customer and the date); expression and partial indexes are left out."""
    rows = conn.execute(
        "SELECT i.indisprimary, i.indisunique,"
        " array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(n, o)"
        "       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o)"
        " FROM pg_index i WHERE i.indrelid = %s::regclass AND i.indexprs IS NULL AND i.indpred IS NULL"
        " AND 0 <> ALL (i.indkey) ORDER BY i.indisprimary DESC, i.indexrelid", (table,)).fetchall()
    return [Index(tuple(r[2]), bool(r[1]), bool(r[0])) for r in rows]


def _timed(conn: psycopg.Connection[Any], stmt: sql.Composed | sql.SQL, params: tuple[Any, ...] | None = None
           ) -> float:
    t0 = time.perf_counter()
    conn.execute(stmt, params)
    return time.perf_counter() - t0


def copy_kept(conn: psycopg.Connection[Any], cut: Cut, table: str = "orders") -> dict[str, float]:
    """The physical limit of the load and the index build: one INSERT ... SELECT of the kept
    rows into a bare table (columns and defaults only), then the original's indexes built
    on it one after the other (the key as a primary key). Seconds per statement."""
    src, bare = sql.Identifier(table), sql.Identifier(BARE)
    steps = {"create": _timed(conn, sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(bare, src))}
    steps["insert"] = _timed(conn, sql.SQL("INSERT INTO {} SELECT * FROM {} WHERE {} >= %s::timestamptz").format(
        bare, src, sql.Identifier(DATE_COLUMN)), (cut.cutoff,))
    steps.update(_build_indexes(conn, table))
    return {k: round(v, 4) for k, v in steps.items()}


def copy_kept_family(conn: psycopg.Connection[Any], cut: Cut, child: str, child_column: str,
                     table: str = "orders") -> dict[str, float]:
    """The physical limit of a migration whose child `child` has the policy `keep`: the
    rows dated from the cutoff on plus every older row the child references, in one
    INSERT ... SELECT into a bare table (the two disjoint halves as a UNION ALL, so that the
    older half is a semi-join of the old rows against the child's referencing column, the
    plan PostgreSQL cannot choose for an OR), then the original's indexes as `copy_kept`
    builds them. Seconds per statement."""
    src, bare, d = sql.Identifier(table), sql.Identifier(BARE), sql.Identifier(DATE_COLUMN)
    steps = {"create": _timed(conn, sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(bare, src))}
    key = next(ix.columns for ix in simple_indexes(conn, table) if ix.primary)
    match = sql.SQL(" AND ").join(sql.SQL("c.{} = o.{}").format(sql.Identifier(child_column), sql.Identifier(k))
                                  for k in key)
    steps["insert"] = _timed(conn, sql.SQL(
        "INSERT INTO {bare} SELECT * FROM {src} WHERE {d} >= %s::timestamptz"
        " UNION ALL SELECT o.* FROM {src} o WHERE o.{d} < %s::timestamptz"
        " AND EXISTS (SELECT 1 FROM {child} c WHERE {match})").format(
        bare=bare, src=src, d=d, child=sql.Identifier(*child.split(".")), match=match), (cut.cutoff, cut.cutoff))
    steps.update(_build_indexes(conn, table))
    return {k: round(v, 4) for k, v in steps.items()}


def validate_child_fk(conn: psycopg.Connection[Any], child: str, child_column: str) -> float:
    """What re-pointing the child's foreign key to the bare table costs at least: the key
    added NOT VALID, then validated (one pass over the child); seconds of the validation."""
    ch = sql.Identifier(*child.split("."))
    fk = sql.Identifier(f"{BARE}_{child_column}_fk")
    conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} NOT VALID").format(
        ch, fk, sql.Identifier(child_column), sql.Identifier(BARE)))
    return round(_timed(conn, sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(ch, fk)), 4)


def copy_followed_family(conn: psycopg.Connection[Any], cut: Cut, child: str, child_column: str,
                         table: str = "orders") -> dict[str, float]:
    """The physical limit of a migration whose child `child` has the policy `follow`: both
    tables' kept rows inserted into bare tables (the table's rows dated from the cutoff on;
    the child's rows whose reference is one of them, a semi-join), then each table's key and
    indexes built, and the bare child's key to the bare table added and validated (what the
    migration's foreign key re-pointing costs at least). Seconds per statement."""
    steps = copy_kept(conn, cut, table)
    src, bare, d = sql.Identifier(*child.split(".")), sql.Identifier(BARE_CHILD), sql.Identifier(DATE_COLUMN)
    name = child.split(".")[-1]
    key = next(ix.columns for ix in simple_indexes(conn, table) if ix.primary)
    match = sql.SQL(" AND ").join(sql.SQL("o.{} = c.{}").format(sql.Identifier(k), sql.Identifier(child_column))
                                  for k in key)
    steps["child_create"] = _timed(conn, sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(bare, src))
    steps["child_insert"] = _timed(conn, sql.SQL(
        "INSERT INTO {bare} SELECT c.* FROM {src} c WHERE EXISTS (SELECT 1 FROM {t} o WHERE {match}"
        " AND o.{d} >= %s::timestamptz)").format(bare=bare, src=src, t=sql.Identifier(table), match=match, d=d),
        (cut.cutoff,))
    steps.update({f"child_{k}": v for k, v in _build_indexes(conn, name, BARE_CHILD).items()})
    fk = sql.Identifier(f"{BARE_CHILD}_{child_column}_fk")
    conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} NOT VALID").format(
        bare, fk, sql.Identifier(child_column), sql.Identifier(BARE)))
    steps["child_validate_fk"] = _timed(conn, sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(bare, fk))
    return {k: round(v, 4) for k, v in steps.items()}


def _build_indexes(conn: psycopg.Connection[Any], table: str, target: str = BARE) -> dict[str, float]:
    """The plain indexes of `table` built on the bare table `target` one after the other,
    the key as a primary key; seconds per index."""
    bare = sql.Identifier(target)
    steps: dict[str, float] = {}
    for ix in simple_indexes(conn, table):
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in ix.columns)
        if ix.primary:
            stmt = sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(bare, cols)
            name = "primary_key"
        else:
            stmt = sql.SQL("CREATE {}INDEX ON {} ({})").format(sql.SQL("UNIQUE " if ix.unique else ""), bare, cols)
            name = "index_" + "_".join(ix.columns)
        steps[name] = _timed(conn, stmt)
    return steps


def naive(conn: psycopg.Connection[Any], cut: Cut) -> dict[str, float]:
    """What a migration avoids: DELETE of the history, then VACUUM FULL (which holds an
    ACCESS EXCLUSIVE lock for its whole run)."""
    d = sql.Identifier(DATE_COLUMN)
    return {"delete": round(_timed(conn, sql.SQL("DELETE FROM orders WHERE {} < %s::timestamptz").format(d),
                                   (cut.cutoff,)), 4),
            "vacuum_full": round(_timed(conn, sql.SQL("VACUUM FULL orders")), 4)}


def hash_scan(dsn: str, table: str, cut: Cut | None = None) -> dict[str, Any]:
    """One read of the rows of `table` (those on or after the cutoff with `cut`) with the
    row hash tablemig's comparisons use (hash_record_extended of the whole row, summed):
    the physical limit of every step that checksums rows."""
    with connect(dsn, application_name="tablemig-bench-scan") as c:
        cols = [r[0] for r in c.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
            " AND NOT attisdropped ORDER BY attnum", (table,)).fetchall()]
        row = sql.SQL("ROW({})").format(sql.SQL(", ").join(sql.Identifier(x) for x in cols))
        q = sql.SQL("SELECT count(*), coalesce(sum(hash_record_extended({}, 0)), 0) FROM {}").format(
            row, sql.Identifier(*table.split(".")))
        params: tuple[Any, ...] | None = None
        if cut is not None:
            q = sql.SQL("{} WHERE {} >= %s::timestamptz").format(q, sql.Identifier(DATE_COLUMN))
            params = (cut.cutoff,)
        t0 = time.perf_counter()
        res = c.execute(q, params).fetchone()
        seconds = time.perf_counter() - t0
    assert res is not None
    return {"seconds": round(seconds, 4), "rows": int(res[0])}


def _client(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return time.perf_counter() - t0


def pg_dump_table(pg_dump: Path, dsn: str, table: str, out: Path) -> dict[str, Any]:
    """`pg_dump --format=custom --table=T`, as PRE-2.1 runs it for the table (without the
    database's schema, which PRE-2.1 also dumps, and the row checksums it records)."""
    seconds = _client([str(pg_dump), "--format=custom", f"--file={out}", f"--table={table}", "--dbname", dsn])
    return {"seconds": round(seconds, 3), "bytes": out.stat().st_size}


def pg_restore_table(pg_restore: Path, dsn: str, dump: Path) -> dict[str, Any]:
    """`pg_restore` of that dump into an empty database: the table, its rows, its key and
    indexes (PRE-2.3 also restores the database's schema first and compares checksums)."""
    seconds = _client([str(pg_restore), "--no-owner", "--no-privileges", "--exit-on-error", "--dbname", dsn,
                       str(dump)])
    return {"seconds": round(seconds, 3)}
