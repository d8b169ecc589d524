"""The one place statements run: every statement is recorded (text, site, timing, rows,
error) for the report, and in a dry run mutating statements are recorded, not run."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from .db import redact


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

    def text(self, query: sql.Composable | str) -> str:
        return query.as_string(self.conn) if isinstance(query, sql.Composable) else query

    def run(self, query: sql.Composable | str, params: Any = None, *, mutating: bool = True,
            record: bool = True) -> psycopg.Cursor[Any] | None:
        text = self.text(query)
        rec = StatementRecord(self.recorder.step, self.site, redact(text),
                              not (self.dry_run and mutating), time.time())
        if self.dry_run and mutating:
            self.recorder.add(rec)
            return None
        t0 = time.perf_counter()
        try:
            # the text rendered for the record is the statement run (rendered once)
            cur = self.conn.execute(text, params)  # type: ignore[arg-type]
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
