"""The one place a migration's statements run: in `execute` mode, or in `plan` mode (the
dry run), through the same code.

Every statement is recorded (text, parameters with secrets redacted, site, connection,
timing, rows, error) for the report, whichever mode. In plan mode:

* changes (`run`: DDL, DML, locks, session settings) are recorded, not run; a change that
  returns something (`RETURNING`, a function's value) returns its `planned` result;
* reads (`read`) run, since the plan needs them (the catalog, counts, statistics) — except
  reads of objects the dry run itself "created" (`creates`, declared by `reads`): those
  are recorded, not run, and return `planned`, what a quiet database would answer (an
  empty change log, matching checksums, no orphans);
* transaction control runs (a transaction of reads changes nothing) and is recorded;
* a rehearsal — a transaction that is always rolled back (`transaction(force_rollback=True)`)
  — runs everything in both modes, against the database as it is: it changes nothing.

So a dry run records the statements the execution would run, in the same order, with the
same parameters, except for values the server or the clock decide at run time: those are
passed as `Observed` (durations, row counts, LSNs) and shown as such.

The "created" objects are kept by the `Recorder`, which the whole run shares: a dry run
of the plan's schema installation (EX-1.1) makes later steps read the schema as installed.

Inside `Executor.batched()` the changes without parameters are sent together, in one round
trip, when the block ends or before the next statement that reads (or has parameters):
under the swap's lock, two dozen renames and re-creations cost one round trip instead of two
dozen. They run in the order given, in the caller's transaction; the first error stops the
rest and fails the transaction as it would have one by one. `Executor.pipeline()` sends
changes with parameters in one round trip (psycopg's pipeline mode).
"""

from __future__ import annotations

import datetime as dt
import decimal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.types.json import Json, Jsonb

from ..pg.connect import redact
from ..pg.sqltext import bound_text
from ..pg.statements import Planned, Query, Result, planned_rows

Mode = Literal["plan", "execute"]
Kind = Literal["change", "read", "transaction", "rehearsal"]


@dataclass(frozen=True)
class Observed:
    """A parameter whose value the run observes (a duration, a row count, an LSN): shown in
    the record with its kind, which tells it from values the plan decides. In a dry run
    there is nothing to observe: its value is what the dry run assumes (0, None)."""

    kind: str
    value: Any


@dataclass
class StatementRecord:
    step: str
    site: str
    sql: str
    executed: bool
    started_at: float
    kind: Kind = "change"
    params: list[Any] | None = None
    connection: str = "main"  # which of the migration's connections (workers have their own)
    duration_ms: float = 0.0
    rows: int | None = None
    error: str | None = None
    batch: int | None = None  # sent with this many statements in one round trip (duration: its share)
    shown: str | None = None  # with parameters: the statement with its values written in, as psql takes it

    @property
    def text(self) -> str:
        """What a reader sees: the statement with its values (passwords redacted)."""
        return self.shown or self.sql

    def as_dict(self) -> dict[str, Any]:
        """For the report (JSON)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("step", "started_at", "batch")}
        if self.batch:
            out["sent_with"] = self.batch
        return out


@dataclass
class Recorder:
    """Collects the statements of a run; the report reads them per step. Shared by every
    executor of the run (threads included), and so also what a dry run holds as created."""

    statements: list[StatementRecord] = field(default_factory=list)
    step: str = ""
    limit: int = 20000  # batches repeat the same statements; keep the record bounded
    created: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, rec: StatementRecord) -> None:
        with self._lock:
            if len(self.statements) < self.limit:
                self.statements.append(rec)

    def for_step(self, step: str) -> list[StatementRecord]:
        with self._lock:
            return [s for s in self.statements if s.step == step]

    def create(self, site: str, names: Sequence[str]) -> None:
        with self._lock:
            self.created.update(f"{site}:{n}" for n in names)

    def drop(self, site: str, names: Sequence[str]) -> None:
        with self._lock:
            self.created.difference_update(f"{site}:{n}" for n in names)

    def holds(self, site: str, names: Sequence[str]) -> bool:
        """Is any of `names` (or its schema) among the objects created on `site`?"""
        with self._lock:
            if not self.created:
                return False
            return any(f"{site}:{n}" in self.created or f"{site}:{n.split('.', 1)[0]}" in self.created
                       for n in names)


class Executor:
    """Runs (or, in plan mode, records) the statements of a migration on one connection."""

    def __init__(self, conn: psycopg.Connection[Any], *, mode: Mode = "execute",
                 recorder: Recorder | None = None, site: str = "active", connection: str = "main") -> None:
        self.conn = conn
        self.mode: Mode = mode
        self.recorder = recorder or Recorder()
        self.site = site
        self.connection = connection
        self._pending: list[tuple[str, StatementRecord]] | None = None
        self._rehearsing = 0  # inside transactions that are rolled back: everything runs
        self._pipelined: list[tuple[Query, Any, StatementRecord]] | None = None

    @property
    def planning(self) -> bool:
        """Changes are recorded, not run (plan mode, outside a rehearsal)."""
        return self.mode == "plan" and not self._rehearsing

    def fork(self, conn: psycopg.Connection[Any], connection: str) -> Executor:
        """An executor for another connection of the same run (a worker's): same mode,
        recorder and site."""
        return Executor(conn, mode=self.mode, recorder=self.recorder, site=self.site, connection=connection)

    def text(self, query: Query) -> str:
        return query.as_string(self.conn) if isinstance(query, sql.Composable) else query

    # -- what a dry run created -----------------------------------------------------------
    def creates(self, *names: str) -> None:
        """Plan mode: `names` now exist as far as this dry run's reads are concerned."""
        if self.planning:
            self.recorder.create(self.site, names)

    def drops(self, *names: str) -> None:
        """Plan mode: `names` no longer exist (see `creates`)."""
        if self.planning:
            self.recorder.drop(self.site, names)

    def created(self, *names: str) -> bool:
        """Plan mode: does the dry run hold any of `names` as created by itself (on this site)?"""
        return self.planning and self.recorder.holds(self.site, names)

    # -- statements -----------------------------------------------------------------------
    def _record(self, query: Query, params: Any, kind: Kind, executed: bool) -> StatementRecord:
        # `sql` and `params` apart (a dry run is compared with its execution by them), and the
        # statement with its values written in for the reader
        shown = None if params is None else redact(bound_text(self.conn, query, _sent(params)))
        return StatementRecord(self.recorder.step, self.site, redact(self.text(query)), executed, time.time(),
                               kind=kind, params=None if params is None else _shown(params),
                               connection=self.connection, shown=shown)

    def run(self, query: Query, params: Any = None, *, planned: Planned = None) -> Result:
        """A change (see the module docstring); in plan mode recorded, not run."""
        rec = self._record(query, params, "rehearsal" if self._rehearsing else "change", not self.planning)
        assumed = Result(planned_rows(planned), -1) if self.planning else Result()
        if self._pipelined is not None:
            self._pipelined.append((query, params, rec))
            return assumed
        if self._pending is not None and params is None:
            self._pending.append((self.text(query), rec))
            return assumed
        self.flush()  # a statement with parameters: everything before it runs first
        if self.planning:
            self.recorder.add(rec)
            return assumed
        return self._execute(query, params, rec)

    def read(self, query: Query, params: Any = None, *, reads: Sequence[str] = (),
             planned: Planned = None) -> Result:
        """A read (see the module docstring): in plan mode recorded, not run, when it reads
        objects only the dry run created (`reads`)."""
        self.flush()
        if reads and self.created(*reads):
            self.recorder.add(self._record(query, params, "read", False))
            return Result(planned_rows(planned), len(planned_rows(planned)))
        return self._execute(query, params, self._record(query, params, "read", True))

    def probe(self, query: Query, params: Any = None, *, reads: Sequence[str] = (),
              planned: Planned = None) -> Result:
        """A reading that is no statement of the migration (a pause flag, a clock): run in
        both modes, not recorded (how often it runs depends on time)."""
        self.flush()
        if reads and self.created(*reads):
            return Result(planned_rows(planned), len(planned_rows(planned)))
        return Result.of(self.conn.execute(_runnable(self.conn, query, params), _sent(params)))

    def scalar(self, query: Query, params: Any = None, *, reads: Sequence[str] = (),
               planned: Planned = None) -> Any:
        return self.read(query, params, reads=reads, planned=planned).scalar()

    def _execute(self, query: Query, params: Any, rec: StatementRecord) -> Result:
        t0 = time.perf_counter()
        try:
            result = Result.of(self.conn.execute(_runnable(self.conn, query, params), _sent(params)))
            rec.rows = result.rowcount if result.rowcount >= 0 else None
            return result
        except psycopg.Error as exc:
            rec.error = redact(str(exc).strip())
            raise
        finally:
            rec.duration_ms = round((time.perf_counter() - t0) * 1000, 3)
            self.recorder.add(rec)

    # -- transactions ---------------------------------------------------------------------
    def _control(self, text: str) -> None:
        self.recorder.add(StatementRecord(self.recorder.step, self.site, text, True, time.time(),
                                          kind="transaction", connection=self.connection))

    @contextmanager
    def transaction(self, *, force_rollback: bool = False, isolation: str | None = None,
                    settings: dict[str, str] | None = None) -> Iterator[None]:
        """A transaction (a savepoint inside one), in both modes: one of reads changes
        nothing. `isolation` (e.g. "REPEATABLE READ") and `settings` (SET LOCAL) are
        given at its start."""
        self.flush()
        nested = self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
        self._control("SAVEPOINT" if nested else "BEGIN")
        ok = False
        self._rehearsing += force_rollback
        try:
            with self.conn.transaction(force_rollback=force_rollback):
                if isolation:
                    self._control(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
                    self.conn.execute(sql.SQL("SET TRANSACTION ISOLATION LEVEL {}").format(sql.SQL(isolation)))
                for name, value in (settings or {}).items():
                    self.run(sql.SQL("SELECT set_config(%s, %s, true)"), (name, value))
                yield
                self.flush()
                ok = True
        finally:
            self._rehearsing -= force_rollback
            if ok and not force_rollback:
                self._control("RELEASE SAVEPOINT" if nested else "COMMIT")
            else:
                self._control("ROLLBACK TO SAVEPOINT" if nested else "ROLLBACK")

    # -- sending several statements at once -----------------------------------------------
    @contextmanager
    def batched(self) -> Iterator[None]:
        """Send the block's changes without parameters together (see the module docstring).
        On an error inside the block the unsent ones are dropped: the caller's transaction
        fails anyway."""
        outer, self._pending = self._pending, []
        try:
            yield
            self.flush()
        finally:
            self._pending = outer

    def flush(self) -> None:
        """Send the statements batched or pipelined so far (one round trip)."""
        if self._pipelined:
            todo, self._pipelined = self._pipelined, []
            self._send(todo)
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if self.planning:
            for _, rec in pending:
                rec.batch = len(pending)
                self.recorder.add(rec)
            return
        t0 = time.perf_counter()
        try:
            # a newline before each ";": a statement ending in a -- comment still ends there
            self.conn.execute("\n;\n".join(text for text, _ in pending))
        except psycopg.Error as exc:
            pending[-1][1].error = redact(f"one of the {len(pending)} statements sent together failed: "
                                          f"{str(exc).strip()}")
            raise
        finally:
            share = round((time.perf_counter() - t0) * 1000 / len(pending), 3)
            for _, rec in pending:
                rec.duration_ms, rec.batch = share, len(pending)
                self.recorder.add(rec)

    @contextmanager
    def pipeline(self) -> Iterator[None]:
        """Send the block's changes (with parameters too) in one round trip. Nothing in the
        block may read their results."""
        self.flush()
        self._pipelined = []
        try:
            yield
            self.flush()
        finally:
            self._pipelined = None

    def _send(self, todo: list[tuple[Query, Any, StatementRecord]]) -> None:
        t0 = time.perf_counter()
        try:
            if not self.planning:
                with self.conn.pipeline():
                    for query, params, _ in todo:
                        self.conn.execute(_runnable(self.conn, query, params), _sent(params))
        except psycopg.Error as exc:
            todo[-1][2].error = redact(f"one of the {len(todo)} statements sent together failed: "
                                       f"{str(exc).strip()}")
            raise
        finally:
            share = round((time.perf_counter() - t0) * 1000 / len(todo), 3) if not self.planning else 0.0
            for _, _, rec in todo:
                rec.duration_ms, rec.batch = share, len(todo)
                self.recorder.add(rec)


def _runnable(conn: psycopg.Connection[Any], query: Query, params: Any) -> Any:
    # with parameters, the composed statement itself: a "%" in a name stays one
    # (tablemig.pg.sqltext); without, its text (there "%" means "%")
    if params is None and isinstance(query, sql.Composable):
        return query.as_string(conn)
    return query


def _sent(value: Any) -> Any:
    """`value` as sent to the server: every `Observed` replaced by its value."""
    if isinstance(value, Observed):
        return _sent(value.value)
    if isinstance(value, Jsonb):
        return Jsonb(plain(value.obj))
    if isinstance(value, Json):
        return Json(plain(value.obj))
    if isinstance(value, list):
        return [_sent(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_sent(v) for v in value)
    if isinstance(value, dict):
        return {k: _sent(v) for k, v in value.items()}
    return value


def plain(value: Any) -> Any:
    """`value` without `Observed` wrappers (what a step returns to its caller)."""
    if isinstance(value, Observed):
        return plain(value.value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _shown(value: Any) -> Any:
    """`value` as the record shows it: JSON-like, secrets redacted, observed values marked."""
    if isinstance(value, Observed):
        return {"observed": value.kind, "value": _shown(value.value)}
    if isinstance(value, Json | Jsonb):
        return _shown(value.obj)
    if isinstance(value, dict):
        return {str(k): _shown(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_shown(v) for v in value]
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dt.date | dt.datetime | dt.time | decimal.Decimal):
        return str(value)
    return redact(str(value))


__all__ = ["Executor", "Mode", "Observed", "Recorder", "Result", "StatementRecord", "plain"]
