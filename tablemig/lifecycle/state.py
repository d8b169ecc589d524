"""`table_migration.migration_state`: one row per table, changed in the same transaction as
the work it records, read by one loader into a typed, frozen `State`; plus the advisory lock
that keeps two runs off one table.

`StateStore` reads and writes a table's row through the run's executor. In a dry run its
writes are recorded, not run, and the store keeps the row they would have made, so that
the steps that follow see the states a real run would pass through.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from ..errors import ConcurrentRun
from ..pg.names import QualifiedName
from ..pg.schema import SCHEMA, installed_version
from ..pg.statements import Result, Statements
from .executor import Executor, Observed
from .objects import Objects

# Advisory-lock class for "a tablemig run owns this table" (objid = the table's OID).
LOCK_CLASS = 0x7AB1E

STATES = ("planned", "capturing", "backfilling", "indexed", "verified", "swapped", "pruned",
          "cleaned", "rolled_back")
ORDER = {s: i for i, s in enumerate(STATES)}
AFTER_SWAP = ("swapped", "pruned")
FINISHED = ("rolled_back", "cleaned")  # nothing of a migration stands: a new one may start

TABLE = QualifiedName(SCHEMA, "migration_state")
LOG = QualifiedName(SCHEMA, "migration_log")


@dataclass(frozen=True)
class Cutoff:
    """The cutoff as stored: text of the date column's base type (a timestamptz in UTC),
    which every statement passes as is, and its typed value."""

    text: str
    date_type: str

    @property
    def value(self) -> dt.date | dt.datetime | None:
        """As Python reads it (None for what Python cannot hold: BC, infinity, year > 9999)."""
        try:
            if self.date_type == "date":
                return dt.date.fromisoformat(self.text)
            return dt.datetime.fromisoformat(self.text)
        except ValueError:
            return None

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Checkpoint:
    """The step's progress (`checkpoint` jsonb): load chunk plans, the switch, prune."""

    data: Mapping[str, Any] = field(default_factory=dict)

    def job(self, key: str) -> dict[str, Any] | None:
        """The saved plan of a copy job (its chunks or ranges), by its key."""
        value = self.data.get(key)
        return dict(value) if isinstance(value, dict) else None

    @property
    def switched(self) -> bool:
        """The capture trigger writes the new table directly (tablemig.lifecycle.replay)."""
        return bool(self.data.get("switched"))

    @property
    def paused(self) -> bool:
        return bool(self.data.get("paused"))

    @property
    def paused_text(self) -> str | None:
        """The pause flag as `checkpoint->>'paused'` shows it ("true", "false", or None)."""
        value = self.data.get("paused")
        return None if value is None else json.dumps(value) if isinstance(value, bool) else str(value)

    @property
    def holding(self) -> str | None:
        """While a postponed cut-over waits: what it waits for (tablemig.lifecycle.hold)."""
        value = self.data.get("holding")
        return str(value) if value else None

    @property
    def prune_started(self) -> bool:
        return bool(self.data.get("prune_started"))

    @property
    def prune_last(self) -> list[str] | None:
        """The key of the last archive row the prune deleted copies up to."""
        last = self.data.get("prune_last")
        return [str(v) for v in last] if last else None

    @property
    def archive_self_fks(self) -> list[tuple[str, str]]:
        """(name, definition) of the archive's foreign keys to itself, dropped by the prune."""
        return [(str(n), str(d)) for n, d in self.data.get("archive_self_fks", [])]

    @property
    def archive_rows_at_prune(self) -> int | None:
        v = self.data.get("archive_rows_at_prune")
        return int(v) if v is not None else None


@dataclass(frozen=True)
class SwapRecord:
    """What the swap did and found (`swap_record` jsonb), read by the steps after it."""

    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def outgoing(self) -> str | None:
        """The name the original took (the archive, or the backup in archive mode copy)."""
        v = self.data.get("outgoing")
        return str(v) if v else None

    @property
    def foreign_keys(self) -> list[dict[str, Any]]:
        """The re-pointed foreign keys ({"table", "name", ...}), validated after the swap."""
        return list(self.data.get("foreign_keys", []))

    @property
    def fk_validated(self) -> list[str]:
        return [str(x) for x in self.data.get("fk_validated", [])]

    @property
    def indexes(self) -> list[list[Any]]:
        """[original name, archive name, temporary name, constraint] of each index."""
        return [list(x) for x in self.data.get("indexes", [])]

    @property
    def archived_indexes(self) -> dict[str, str]:
        """{original index name: its name on the archive}."""
        return {str(i[0]): str(i[1]) for i in self.indexes}

    @property
    def views(self) -> list[str]:
        """The views on the table the swap recreated."""
        return [str(v) for v in self.data.get("views", [])]

    @property
    def disabled_triggers(self) -> list[str]:
        """The triggers the swap found disabled on the original and disabled on the live table."""
        return [str(t) for t in self.data.get("disabled_triggers", [])]

    @property
    def inventory(self) -> str | None:
        v = self.data.get("inventory")
        return str(v) if v is not None else None

    @property
    def inventory_before(self) -> dict[str, Any] | None:
        v = self.data.get("inventory_before")
        return dict(v) if isinstance(v, dict) else None

    def peer(self, name: str) -> dict[str, Any]:
        """What a logical subscriber recorded of its part of the swap."""
        return dict((self.data.get("peers") or {}).get(name) or {})

    def validated(self, done: Sequence[str]) -> Expr:
        """The stored record with `done` foreign keys added to the validated ones: only that
        field is written (the record's other values stay as the swap observed them)."""
        return Expr(sql.SQL("jsonb_set(swap_record, '{fk_validated}', %s)"),
                    (Jsonb([*self.fk_validated, *done]),))

    def as_json(self) -> dict[str, Any]:
        return dict(self.data)


# The columns of migration_state the loader reads, in order (the row of a dry run too).
COLUMNS = ("table_name", "table_oid", "schema_name", "original_name", "new_name", "archive_name",
           "backup_name", "date_column", "date_type", "key_columns", "cutoff", "archive_mode", "state",
           "plan_name", "batch_size", "checkpoint", "rows_copied", "rows_to_copy", "swap_attempts",
           "lock_hold_ms", "swap_lsn", "swap_record", "started_at", "updated_at", "last_error")


@dataclass(frozen=True)
class State:
    """One table's row of migration_state."""

    table: str  # the original table as SQL writes it (the row's key)
    objects: Objects
    date_column: str
    date_type: str
    key: tuple[str, ...]
    cutoff: Cutoff
    archive_mode: str
    state: str
    plan_name: str | None = None
    batch_size: int = 0
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    rows_copied: int = 0
    rows_to_copy: int | None = None
    swap_attempts: int = 0
    lock_hold_ms: float | None = None
    swap_lsn: str | None = None
    swap_record: SwapRecord = field(default_factory=SwapRecord)
    started_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    last_error: str | None = None

    @property
    def table_oid(self) -> int:
        """The original table's OID (after the swap: the archive's)."""
        return self.objects.table_oid

    @property
    def live(self) -> QualifiedName:
        """The table the application uses (the original name, whichever table holds it now)."""
        return self.objects.original

    @property
    def new(self) -> QualifiedName:
        return self.objects.new

    @property
    def archive(self) -> QualifiedName:
        return self.objects.archive

    @property
    def old_table(self) -> QualifiedName:
        """After the swap, the original table: the archive (mode rename) or the kept backup
        (mode copy), which the mirror trigger keeps complete until prune."""
        return self.live.sibling(self.swap_record.outgoing or self.archive.name)

    def new_tables(self) -> list[tuple[QualifiedName, str]]:
        return self.objects.new_tables()

    @property
    def swapped(self) -> bool:
        return self.state in AFTER_SWAP

    @property
    def finished(self) -> bool:
        """Rolled back or cleaned up: nothing of this migration stands."""
        return self.state in FINISHED

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> State:
        schema = str(row["schema_name"])
        backup = row.get("backup_name")
        objects = Objects(QualifiedName(schema, str(row["original_name"])),
                          QualifiedName(schema, str(row["new_name"])),
                          QualifiedName(schema, str(row["archive_name"])),
                          QualifiedName(schema, str(backup)) if backup and row["archive_mode"] == "copy" else None,
                          int(row["table_oid"]))
        hold = row.get("lock_hold_ms")
        return cls(str(row["table_name"]), objects, str(row["date_column"]), str(row["date_type"]),
                   tuple(row["key_columns"]), Cutoff(str(row["cutoff"]), str(row["date_type"])),
                   str(row["archive_mode"]), str(row["state"]), row.get("plan_name"), int(row.get("batch_size") or 0),
                   Checkpoint(dict(row.get("checkpoint") or {})), int(row.get("rows_copied") or 0),
                   row.get("rows_to_copy"), int(row.get("swap_attempts") or 0),
                   float(hold) if hold is not None else None,
                   str(row["swap_lsn"]) if row.get("swap_lsn") is not None else None,
                   SwapRecord(dict(row.get("swap_record") or {})), row.get("started_at"), row.get("updated_at"),
                   row.get("last_error"))

    def row(self) -> dict[str, Any]:
        """The row as migration_state holds it (COLUMNS)."""
        o = self.objects
        return {"table_name": self.table, "table_oid": o.table_oid, "schema_name": o.original.schema,
                "original_name": o.original.name, "new_name": o.new.name, "archive_name": o.archive.name,
                "backup_name": o.backup.name if o.backup else None, "date_column": self.date_column,
                "date_type": self.date_type, "key_columns": list(self.key), "cutoff": self.cutoff.text,
                "archive_mode": self.archive_mode, "state": self.state, "plan_name": self.plan_name,
                "batch_size": self.batch_size, "checkpoint": dict(self.checkpoint.data),
                "rows_copied": self.rows_copied, "rows_to_copy": self.rows_to_copy,
                "swap_attempts": self.swap_attempts, "lock_hold_ms": self.lock_hold_ms,
                "swap_lsn": self.swap_lsn, "swap_record": self.swap_record.as_json() or None,
                "started_at": self.started_at, "updated_at": self.updated_at, "last_error": self.last_error}


@dataclass(frozen=True)
class Expr:
    """A field's new value computed by the server: SQL with its own parameters (the WAL
    position of the swap, `rows_copied + %s`)."""

    sql: sql.Composable
    params: tuple[Any, ...] = ()


_LOAD = sql.SQL("SELECT {} FROM {} WHERE table_name = %s").format(
    sql.SQL(", ").join(map(sql.Identifier, COLUMNS)), TABLE.ident())
_LOG = sql.SQL("SELECT table_migration.log_event(%s, %s, %s, %s::bigint, %s::numeric, %s)")
# fields given as SQL run on the server (a value the server decides, e.g. the WAL position)
_JSON_FIELDS = ("checkpoint", "swap_record")


def load_all(st: Statements, table: str | None = None) -> list[State]:
    """Every table's state row (or `table`'s only), by table name."""
    query = sql.SQL("SELECT {} FROM {} WHERE %s::text IS NULL OR table_name = %s ORDER BY table_name").format(
        sql.SQL(", ").join(map(sql.Identifier, COLUMNS)), TABLE.ident())
    return [State.from_row(dict(zip(COLUMNS, row, strict=True))) for row in st.read(query, (table, table)).rows]


def _value(column: str, value: Any) -> Any:
    if isinstance(value, SwapRecord | Checkpoint):
        value = dict(value.data)
    return Jsonb(value) if column in _JSON_FIELDS and isinstance(value, dict | list) else value


def _assignments(fields: Mapping[str, Any]) -> tuple[sql.Composable, list[Any]]:
    parts: list[sql.Composable] = []
    params: list[Any] = []
    for column, value in fields.items():
        if isinstance(value, Expr):
            parts.append(sql.SQL("{} = {}").format(sql.Identifier(column), value.sql))
            params.extend(value.params)
        else:
            parts.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(_value(column, value))
    parts.append(sql.SQL("updated_at = now()"))
    return sql.SQL(", ").join(parts), params


def _log_params(table: str, operation: str, status: str, rows: Any, duration_ms: Any,
                details: Mapping[str, Any] | None) -> list[Any]:
    return [table, operation, status, rows, duration_ms, Jsonb(_jsonable(details)) if details else None]


def _jsonable(value: Any) -> Any:
    """`value` for a jsonb parameter: what JSON cannot hold as text (`Observed` values stay
    for the executor, which sends their values)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool | Observed):
        return value
    return json.loads(json.dumps(value, default=str))


class StateStore:
    """One table's state row, through the run's executor (see the module docstring)."""

    def __init__(self, st: Statements, table: str) -> None:
        self.st = st
        self.table = table
        self._seen: dict[bool, bool] = {}
        self._planned: State | None = None  # the row a dry run would have written
        self._last: State | None = None

    def _key(self) -> str:
        return f"{TABLE}[{self.table}]"

    def installed(self) -> bool:
        """Is the table_migration schema there (or, in a dry run, as if installed)?"""
        return self._installed(as_planned=True)

    def _installed(self, *, as_planned: bool) -> bool:
        if not self._seen.get(as_planned):  # once there, the schema stays for this run: one query less
            if installed_version(self.st, as_planned=as_planned) is None:
                return False
            self._seen[as_planned] = True
            if not as_planned:  # there in the database: there for the dry run too (one query less)
                self._seen[True] = True
        return True

    def load(self) -> State | None:
        """The row as this run sees it (a dry run: the row it would have written)."""
        return self._read(as_planned=True)

    def stored(self) -> State | None:
        """The row as the database holds it (the same as `load` but in a dry run)."""
        return self._read(as_planned=not self.st.planning)

    def _read(self, *, as_planned: bool) -> State | None:
        if not self._installed(as_planned=as_planned):
            return None
        planned = self._planned
        row = self.st.read(_LOAD, (self.table,), reads=[self._key()] if as_planned else (),
                           planned=lambda: [tuple(planned.row()[c] for c in COLUMNS)] if planned else []).fetchone()
        found = State.from_row(dict(zip(COLUMNS, row, strict=True))) if row else None
        if as_planned:
            self._last = found
        return found

    def _planning(self, base: State | None, fields: Mapping[str, Any]) -> None:
        """A dry run: the row as the write would leave it (SQL-valued fields stay as they were)."""
        if not self.st.planning:
            return
        base = base or self._planned or self._last
        if base is None:
            return
        typed: dict[str, Any] = {}
        for column, value in fields.items():
            if isinstance(value, Expr):
                continue
            if column == "swap_record":
                value = value if isinstance(value, SwapRecord) else SwapRecord(dict(value or {}))
            elif column == "checkpoint":
                value = value if isinstance(value, Checkpoint) else Checkpoint(dict(value or {}))
            typed[column] = _plain(value)
        self._planned = replace(base, **typed)
        self.st.creates(self._key())

    def insert(self, state: State) -> None:
        """Start the table's row afresh (any finished migration's row is replaced)."""
        row = state.row()
        columns = [c for c in COLUMNS if c not in ("started_at", "updated_at", "swap_record", "swap_lsn",
                                                  "lock_hold_ms", "last_error")]
        with self.st.pipeline():
            self.st.run(sql.SQL("DELETE FROM {} WHERE table_name = %s").format(TABLE.ident()), (self.table,))
            self.st.run(sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                TABLE.ident(), sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.SQL(", ").join(sql.Placeholder() * len(columns))),
                [_value(c, row[c]) for c in columns])
        if self.st.planning:
            self._planned = state
            self.st.creates(self._key())

    def update(self, **fields: Any) -> None:
        """Update fields of the row (call inside the transaction doing the work). A field
        given as `Expr` is computed by the server (the WAL position of the swap)."""
        assignments, params = _assignments(fields)
        self.st.run(sql.SQL("UPDATE {} SET {} WHERE table_name = %s").format(TABLE.ident(), assignments),
                    [*params, self.table])
        self._planning(None, fields)

    def log(self, operation: str, status: str, rows: Any = None, duration_ms: Any = None,
            details: Mapping[str, Any] | None = None) -> None:
        """An entry of the audit log (migration_log)."""
        self.st.run(_LOG, _log_params(self.table, operation, status, rows, duration_ms, details),
                    planned=[(None,)])

    def advance(self, operation: str, status: str, *, rows: Any = None, duration_ms: Any = None,
                details: Mapping[str, Any] | None = None, **fields: Any) -> None:
        """update() and log() in one statement: atomic on its own, one round trip."""
        assignments, params = _assignments(fields)
        self.st.run(sql.SQL("WITH u AS (UPDATE {} SET {} WHERE table_name = %s) {}").format(
            TABLE.ident(), assignments, _LOG),
            [*params, self.table, *_log_params(self.table, operation, status, rows, duration_ms, details)],
            planned=[(None,)])
        self._planning(None, fields)

    def set_checkpoint(self, merge: Mapping[str, Any] | None = None, *, drop: Sequence[str] = (),
                       path: Sequence[str] = (), value: Any = None, returning: sql.Composable | None = None,
                       returning_params: Sequence[Any] = (), planned: Any = None,
                       **fields: Any) -> Result:
        """Change the checkpoint: merge keys in, drop keys, or set the value at `path`; with
        other `fields` in the same statement, and an optional RETURNING."""
        expr: sql.Composable = sql.SQL("checkpoint")
        params: list[Any] = []
        if path:
            expr = sql.SQL("jsonb_set({}, %s, %s::jsonb)").format(expr)
            params += [list(path), json.dumps(_plain(value))]
        if merge:
            expr = sql.SQL("{} || %s::jsonb").format(expr)
            params.append(json.dumps(_plain(dict(merge))))
        for key in drop:
            expr = sql.SQL("{} - %s").format(expr)
            params.append(key)
        assignments, more = _assignments(fields)
        query = sql.SQL("UPDATE {} SET checkpoint = {}, {} WHERE table_name = %s{}").format(
            TABLE.ident(), expr, assignments,
            sql.SQL(" RETURNING {}").format(returning) if returning is not None else sql.SQL(""))
        result = self.st.run(query, [*params, *more, self.table, *returning_params],
                             planned=[(planned,)] if returning is not None else None)
        if self.st.planning:
            base = self._planned or self._last
            if base is not None:
                data = {k: v for k, v in base.checkpoint.data.items() if k not in drop}
                data.update(_plain(dict(merge or {})))
                if path and len(path) == 1:
                    data[path[0]] = _plain(value)
                self._planning(base, {**fields, "checkpoint": Checkpoint(data)})
        return result

    def set_paused(self, paused: bool) -> bool:
        """`tablemig pause` / `resume`: set checkpoint.paused; False when the table has no row."""
        return self.set_checkpoint({"paused": paused}).rowcount > 0

    def set_released(self) -> bool:
        """`tablemig release`: a postponed cut-over may swap now (checkpoint.released);
        False when the table has no row."""
        return self.set_checkpoint({"released": True}).rowcount > 0

    def released_now(self) -> bool:
        """Has `tablemig release` been given? A poll, like `paused_now`."""
        query = sql.SQL("SELECT coalesce((checkpoint->>'released')::boolean, false) FROM {}"
                        " WHERE table_name = %s").format(TABLE.ident())
        if isinstance(self.st, Executor):
            return bool(self.st.probe(query, (self.table,), reads=[self._key()], planned=[(False,)]).scalar())
        return bool(self.st.read(query, (self.table,)).scalar())

    def paused_now(self) -> bool:
        """Is the run paused (`tablemig pause`)? A poll, not a statement of the migration: an
        executor runs it in both modes without recording it (how often depends on time)."""
        query = sql.SQL("SELECT (checkpoint->>'paused')::boolean FROM {} WHERE table_name = %s").format(
            TABLE.ident())
        if isinstance(self.st, Executor):
            return bool(self.st.probe(query, (self.table,), reads=[self._key()], planned=[(False,)]).scalar())
        return bool(self.st.read(query, (self.table,)).scalar())

    def clear_error(self) -> None:
        """Forget the last failure recorded (a step is starting again)."""
        self.st.run(sql.SQL("UPDATE {} SET last_error = NULL WHERE table_name = %s AND last_error IS NOT NULL")
                    .format(TABLE.ident()), (self.table,))

    def record_archive_rows(self, archive: QualifiedName) -> None:
        """The archive's row count when the prune finished, counted by the server in the
        prune's transaction (checkpoint.archive_rows_at_prune)."""
        self.st.run(sql.SQL(
            "UPDATE {} SET checkpoint = checkpoint || jsonb_build_object("
            "'archive_rows_at_prune', (SELECT count(*) FROM {})) WHERE table_name = %s").format(
                TABLE.ident(), archive.ident()), (self.table,))

    def record_swap(self, lock_hold_ms: Any, attempts: int) -> str:
        """The swap's lock hold and attempts, and the WAL position after its commit (for the
        standbys to reach); returns that position."""
        return str(self.st.run(sql.SQL(
            "UPDATE {} SET lock_hold_ms = %s, swap_attempts = %s, swap_lsn = pg_current_wal_insert_lsn(),"
            " updated_at = now() WHERE table_name = %s RETURNING swap_lsn::text").format(TABLE.ident()),
            (lock_hold_ms, attempts, self.table), planned=[("0/0",)]).scalar())

    def acquire_lock(self, table_oid: int) -> None:
        """Session advisory lock for the table; names the holder when another run has it."""
        got = self.st.run("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, table_oid & 0x7FFFFFFF),
                          planned=[(True,)]).scalar()
        if got:
            return
        holder = self.st.read(
            "SELECT a.pid, a.usename, a.application_name, a.client_addr::text, a.backend_start"
            "  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s AND l.granted",
            (LOCK_CLASS, table_oid & 0x7FFFFFFF)).fetchone()
        who = (f"pid {holder[0]} (user {holder[1]}, application {holder[2]!r}, "
               f"client {holder[3] or 'local'}, connected since {holder[4]:%Y-%m-%d %H:%M:%S})"
               if holder else "another session")
        raise ConcurrentRun(
            f"{self.table} is being migrated by another tablemig run: {who}",
            "wait for that run to finish, or stop it; then rerun (the migration resumes where it "
            "stopped)")

    def release_lock(self, table_oid: int) -> None:
        if not self.st.conn.closed:
            self.st.run("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, table_oid & 0x7FFFFFFF))


def _plain(value: Any) -> Any:
    """A value without the executor's `Observed` wrappers (what a dry run's row holds)."""
    if isinstance(value, Observed):
        return _plain(value.value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
