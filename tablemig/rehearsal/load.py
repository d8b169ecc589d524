"""Rows into the rehearsal database: COPY, the rows the server rejects found and drawn again.

Each table loads in one transaction with its user triggers disabled (an application trigger
that stamps `now()` into the date column, or writes elsewhere, would change what the
statistics describe); their exact states — enabled, replica, always, disabled — are restored
before the commit. COPY fires no rules. A batch the server rejects (a CHECK the row could
not be repaired for, an expression or partial unique index, a domain) is split in halves
under savepoints until the rejected rows are found; each gets up to three more tries (its
nullable columns NULL, then its columns drawn again: `TableGenerator.redraw`), then is left
out and counted by constraint.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..errors import InputError
from ..pg.names import QualifiedName
from .catalog import ForeignKey, TableShape
from .distribution import Distribution
from .kinds import IntKind
from .synthetic import ParentKeys, TableGenerator, TableRows

BATCH = 2000
ATTEMPTS = 3
ENABLE = {"O": "ENABLE", "R": "ENABLE REPLICA", "A": "ENABLE ALWAYS", "D": "DISABLE"}


@dataclass
class LoadResult:
    table: str
    rows: int = 0
    redrawn: int = 0
    left_out: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "redrawn": self.redrawn, "left_out": dict(self.left_out)}


@dataclass
class _Rejected:
    row: list[Any]
    constraint: str | None
    message: str


@contextmanager
def quiet_triggers(conn: psycopg.Connection[Any], table: QualifiedName, oid: int) -> Iterator[None]:
    """Inside the caller's transaction: the table's user triggers off, then back in their states."""
    states = conn.execute("SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = %s AND NOT tgisinternal"
                          " AND tgparentid = 0", (oid,)).fetchall()
    if states:
        conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER USER").format(table.ident()))
    yield
    for name, state in states:
        conn.execute(sql.SQL("ALTER TABLE {} {} TRIGGER {}").format(
            table.ident(), sql.SQL(ENABLE.get(state, "ENABLE")), sql.Identifier(name)))


class _Copier:
    def __init__(self, conn: psycopg.Connection[Any], rows: TableRows) -> None:
        self.conn, self.rows = conn, rows
        self.statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            rows.table.ident(), sql.SQL(", ").join(sql.Identifier(c) for c in rows.columns))
        self.kinds = [rows.kinds[c] for c in rows.columns]

    def text(self, row: list[Any]) -> list[str | None]:
        return [None if v is None else k.format(v) for k, v in zip(self.kinds, row, strict=True)]

    def copy(self, batch: list[list[Any]]) -> list[_Rejected]:
        """COPY `batch`; the rows the server rejects (found by halving under savepoints)."""
        try:
            with self.conn.transaction(), self.conn.cursor().copy(self.statement) as cp:
                for r in batch:
                    cp.write_row(self.text(r))
            return []
        except (psycopg.errors.IntegrityError, psycopg.errors.DataError) as exc:
            if len(batch) == 1:
                return [_Rejected(batch[0], exc.diag.constraint_name, exc.diag.message_primary or str(exc))]
        mid = len(batch) // 2
        return self.copy(batch[:mid]) + self.copy(batch[mid:])


def load_table(conn: psycopg.Connection[Any], gen: TableGenerator, rows: TableRows) -> LoadResult:
    """Load `rows` (made by `gen`) into their table; see the module docstring. `conn` is in
    autocommit mode; the load is one transaction."""
    result = LoadResult(str(rows.table))
    copier = _Copier(conn, rows)
    with conn.transaction(), quiet_triggers(conn, rows.table, gen.shape.oid):
        for start in range(0, len(rows.rows), BATCH):
            pending = rows.rows[start:start + BATCH]
            for attempt in range(1, ATTEMPTS + 2):
                rejected = copier.copy(pending)
                result.rows += len(pending) - len(rejected)
                if not rejected:
                    break
                if attempt == 1 and start == 0 and len(pending) >= 20 and len(rejected) * 2 > len(pending):
                    first = rejected[0]
                    raise InputError(f"the rehearsal cannot make rows of {rows.table} that the server accepts: "
                                     f"{len(rejected)} of the first {len(pending)} were rejected"
                                     f" ({first.constraint or 'no constraint named'}: {first.message})",
                                     "ANALYZE the table on the active site (rows are made from its statistics), "
                                     "or give the rehearsal a schema file without that constraint")
                pending = []
                for r in rejected:
                    again = gen.redraw(r.row, rows.columns, r.constraint, attempt)
                    if again is None or attempt > ATTEMPTS:
                        result.left_out[r.constraint or r.message] += 1
                    else:
                        pending.append(again)
                        result.redrawn += 1
                if not pending:
                    break
    return result


def parent_keys(conn: psycopg.Connection[Any], table: QualifiedName, columns: tuple[str, ...],
                first: Distribution | None) -> ParentKeys:
    """The keys `columns` of `table` as loaded, in key order (as text)."""
    # qualified: an output column named like the key (`id::text AS id`) would order as text
    cols = sql.SQL(", ").join(sql.Identifier("t", c) for c in columns)
    texts = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier("t", c)) for c in columns)
    not_null = sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier("t", c)) for c in columns)
    keys = conn.execute(sql.SQL("SELECT {} FROM {} AS t WHERE {} ORDER BY {}").format(
        texts, table.ident(), not_null, cols)).fetchall()
    return ParentKeys([tuple(k) for k in keys], first)


def fill_after_load(conn: psycopg.Connection[Any], gen: TableGenerator, fk: ForeignKey,
                    parent: ParentKeys) -> int:
    """Set a foreign key left NULL by the load (a cycle between tables, a reference to the
    table itself) once its parent's rows exist; returns the rows given a reference."""
    table = gen.shape.name
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in fk.columns)
    with conn.transaction(), quiet_triggers(conn, table, gen.shape.oid):
        ctids = [r[0] for r in conn.execute(sql.SQL("SELECT ctid FROM {}").format(table.ident()))]
        values = gen.values_after_load(fk, parent, len(ctids))
        conn.execute(sql.SQL("CREATE TEMP TABLE tablemig_rehearsal_fill ON COMMIT DROP AS"
                             " SELECT ctid AS row_id, {} FROM {} WITH NO DATA").format(cols, table.ident()))
        kinds = [gen.kinds[c] for c in fk.columns]
        with conn.cursor().copy(sql.SQL("COPY tablemig_rehearsal_fill (row_id, {}) FROM STDIN").format(cols)) as cp:
            for ctid, v in zip(ctids, values, strict=True):
                if v is not None:
                    cp.write_row([ctid, *(None if x is None else k.format(x) for k, x in zip(kinds, v, strict=True))])
        assignments = sql.SQL(", ").join(sql.SQL("{0} = f.{0}").format(sql.Identifier(c)) for c in fk.columns)
        done = conn.execute(sql.SQL("UPDATE {} t SET {} FROM tablemig_rehearsal_fill f WHERE t.ctid = f.row_id")
                            .format(table.ident(), assignments)).rowcount
    return done


def continue_sequences(conn: psycopg.Connection[Any], shape: TableShape) -> list[str]:
    """Set each identity or serial sequence of the table past the values loaded (the
    application's next insert must not collide); returns the sequences set."""
    done = []
    for c in shape.columns:
        if not c.sequence or not isinstance(c.kind, IntKind):
            continue
        row = conn.execute(
            "SELECT s.seqrelid::regclass::text, s.seqrelid FROM pg_sequence s"
            " WHERE s.seqincrement > 0 AND s.seqrelid IN ("
            " SELECT dep.refobjid FROM pg_attrdef d JOIN pg_depend dep ON dep.classid = 'pg_attrdef'::regclass"
            "    AND dep.objid = d.oid AND dep.refclassid = 'pg_class'::regclass WHERE d.adrelid = %s AND d.adnum = %s"
            " UNION SELECT dep.objid FROM pg_depend dep WHERE dep.classid = 'pg_class'::regclass"
            "    AND dep.refobjid = %s AND dep.refobjsubid = %s AND dep.deptype = 'i')",
            (shape.oid, c.attnum, shape.oid, c.attnum)).fetchone()
        if row is None:
            continue
        top = conn.execute(sql.SQL("SELECT max({})::bigint FROM {}").format(
            sql.Identifier(c.name), shape.name.ident())).fetchone()
        if top and top[0] is not None:
            conn.execute("SELECT setval(%s::oid::regclass, %s)", (row[1], top[0]))
            done.append(str(row[0]))
    return done
