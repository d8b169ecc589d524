"""The one place statements run: every statement is recorded (text, site, timing, rows,
error) for the report, and in a dry run mutating statements are recorded, not run.

Inside `Executor.batched()` the mutating statements without parameters are sent together,
in one round trip, when the block ends or before the next statement that reads (or has
parameters): under the swap's lock, two dozen renames and re-creations cost one round
trip instead of two dozen. They run in the order given, in the caller's transaction; the
first error stops the rest and fails the transaction as it would have one by one."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..pg.connect import redact
from ..pg.sqltext import bound_text


@dataclass
class StatementRecord:
    step: str
    site: str
    sql: str
    executed: bool
    started_at: float
    duration_ms: float = 0.0
    rows: int | None = None
    error: str | None = None
    batch: int | None = None  # sent with this many statements in one round trip (duration: its share)


@dataclass
class Recorder:
    """Collects statements; the report reads them per step."""

    statements: list[StatementRecord] = field(default_factory=list)
    step: str = ""
    limit: int = 20000  # batches repeat the same statements; keep the record bounded

    def add(self, rec: StatementRecord) -> None:
        if len(self.statements) < self.limit:
            self.statements.append(rec)

    def for_step(self, step: str) -> list[StatementRecord]:
        return [s for s in self.statements if s.step == step]


class Executor:
    """Runs (or, in a dry run, records) statements on one connection."""

    def __init__(self, conn: psycopg.Connection[Any], *, dry_run: bool = False,
                 recorder: Recorder | None = None, site: str = "active") -> None:
        self.conn = conn
        self.dry_run = dry_run
        self.recorder = recorder or Recorder()
        self.site = site
        self._pending: list[tuple[str, StatementRecord]] | None = None

    def text(self, query: sql.Composable | str) -> str:
        return query.as_string(self.conn) if isinstance(query, sql.Composable) else query

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Send the block's mutating statements without parameters together (see the module
        docstring). On an error inside the block the unsent ones are dropped: the caller's
        transaction fails anyway."""
        outer, self._pending = self._pending, []
        try:
            yield
            self.flush()
        finally:
            self._pending = outer

    def flush(self) -> None:
        """Send the statements batched so far (one round trip)."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        t0 = time.perf_counter()
        try:
            # a newline before each ";": a statement ending in a -- comment still ends there
            self.conn.execute("\n;\n".join(text for text, _ in pending))  # type: ignore[arg-type]
        except psycopg.Error as exc:
            pending[-1][1].error = redact(f"one of the {len(pending)} statements sent together failed: "
                                          f"{str(exc).strip()}")
            raise
        finally:
            share = round((time.perf_counter() - t0) * 1000 / len(pending), 3)
            for _, rec in pending:
                rec.duration_ms, rec.batch = share, len(pending)
                self.recorder.add(rec)

    def run(self, query: sql.Composable | str, params: Any = None, *, mutating: bool = True,
            record: bool = True) -> psycopg.Cursor[Any] | None:
        text = self.text(query)
        # recorded with its values written in (passwords redacted), as a DBA would rerun it
        shown = text if params is None else bound_text(self.conn, query, params)
        rec = StatementRecord(self.recorder.step, self.site, redact(shown),
                              not (self.dry_run and mutating), time.time())
        if self.dry_run and mutating:
            self.recorder.add(rec)
            return None
        if self._pending is not None:
            if mutating and params is None and record:
                self._pending.append((text, rec))
                return None
            self.flush()  # a read, or parameters: everything before it runs first
        t0 = time.perf_counter()
        try:
            # the text rendered for the record is the statement run (rendered once); with
            # parameters the composed statement itself, so that a "%" in a name stays one
            # (tablemig.pg.sqltext)
            run: Any = query if params is not None and isinstance(query, sql.Composable) else text
            cur = self.conn.execute(run, params)
            rec.rows = cur.rowcount if cur.rowcount >= 0 else None
            return cur
        except psycopg.Error as exc:
            rec.error = redact(str(exc).strip())
            raise
        finally:
            rec.duration_ms = round((time.perf_counter() - t0) * 1000, 3)
            if record:
                self.recorder.add(rec)

    def scalar(self, query: sql.Composable | str, params: Any = None) -> Any:
        cur = self.run(query, params, mutating=False)
        row = cur.fetchone() if cur is not None else None
        return row[0] if row else None
