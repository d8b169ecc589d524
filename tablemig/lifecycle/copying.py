"""What copying rows from a source to a target table shares: the job (`CopyJob`: which rows,
how to copy them), the run of its workers (`CopyRun`), its statistics, the pause of
`tablemig pause`, and the progress line. The bulk load's chunks are in
`tablemig.lifecycle.chunks`, the keyset batches of the restore after prune in
`tablemig.lifecycle.batch_copy`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from ..pg.connect import connect
from ..pg.names import QualifiedName
from ..pg.sqltext import Fragment
from .executor import Executor
from .pacing import Pace
from .state import StateStore

log = logging.getLogger("tablemig.backfill")

Throttle = Callable[[], None]
Progress = Callable[[dict[str, Any]], None]


@dataclass
class CopyJob:
    """What to copy: `source[D >= cutoff]` (or every row when `date_column` is None)."""

    source: QualifiedName
    target: QualifiedName
    columns: list[str]
    order_columns: list[str]
    order_types: list[str]
    date_column: str | None
    date_type: str
    cutoff: str
    overriding: bool
    key: list[str]
    update_on_conflict: bool = False
    history: bool = False  # copy the rows D < cutoff OR D IS NULL instead
    lock_rows: bool = False  # FOR SHARE: writers of a row wait for the batch (no verify follows)
    # the target's key is DEFERRABLE, so it cannot be an ON CONFLICT arbiter: rows whose key
    # the target has are skipped by NOT EXISTS, after `lock_sql` has locked the batch's rows
    # (see copy_sql)
    no_arbiter: bool = False

    def date_filter(self) -> sql.Composable:
        """The rows the job copies: `D >= %s` (history: `D < %s OR D IS NULL`)."""
        d, t = sql.Identifier(self.date_column or ""), Fragment(self.date_type)
        if self.history:
            return sql.SQL("({d} < %s::{t} OR {d} IS NULL)").format(d=d, t=t)
        return sql.SQL("{} >= %s::{}").format(d, t)

    def column_list(self) -> sql.Composable:
        """The copied columns, comma-separated."""
        return sql.SQL(", ").join(map(sql.Identifier, self.columns))

    def _order(self) -> sql.Composable:
        return sql.SQL(", ").join(map(sql.Identifier, self.order_columns))

    def _bound(self, op: str) -> sql.Composable:
        vals = sql.SQL(", ").join(sql.SQL("%s::{}").format(Fragment(t)) for t in self.order_types)
        cond = sql.SQL("({}) {} ({})").format(self._order(), sql.SQL(op), vals)
        if op == ">" and self.order_columns[0] == self.date_column:
            # lets the index on D start at the checkpoint (the row comparison alone does not)
            cond = sql.SQL("{} >= %s::{} AND {}").format(
                sql.Identifier(self.date_column), Fragment(self.date_type), cond)
        return cond

    def _filter(self, lo: bool, hi: bool) -> tuple[sql.Composable, int]:
        parts: list[sql.Composable] = []
        if self.date_column:
            parts.append(self.date_filter())
        if lo:
            parts.append(self._bound(">"))
        if hi:
            parts.append(self._bound("<="))
        return (sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")), len(parts)

    def params(self, lo: list[str] | None, hi: list[str] | None) -> list[Any]:
        out: list[Any] = [self.cutoff] if self.date_column else []
        if lo is not None:
            if self.order_columns[0] == self.date_column:
                out.append(lo[0])
            out.extend(lo)
        if hi is not None:
            out.extend(hi)
        return out

    def upper_bound_sql(self, lo: bool, hi: bool) -> sql.Composable:
        where, _ = self._filter(lo, hi)
        # Qualified with the alias on purpose: a bare ORDER BY name would bind to the ::text
        # output column and sort by text (wrong order, and no index scan).
        texts = sql.SQL(", ").join(sql.SQL("src.{}::text").format(sql.Identifier(c))
                                   for c in self.order_columns)
        order = sql.SQL(", ").join(sql.SQL("src.{}").format(sql.Identifier(c)) for c in self.order_columns)
        return sql.SQL("SELECT {} FROM {} AS src WHERE {} ORDER BY {} OFFSET %s LIMIT 1").format(
            texts, self.source.ident(), where, order)

    def lock_sql(self, lo: bool, hi: bool) -> sql.Composed | None:
        """With `no_arbiter` and `lock_rows`: lock the batch's source rows FOR SHARE in a
        statement of their own (same parameters as copy_sql). Once it returns, every writer
        of those rows has committed (its mirror write into the target with it) and new ones
        wait, so copy_sql's NOT EXISTS, run with a later snapshot, sees every such write."""
        if not (self.no_arbiter and self.lock_rows):
            return None
        where, _ = self._filter(lo, hi)
        return sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} WHERE {} FOR SHARE) s").format(
            self.source.ident(), where)

    def copy_sql(self, lo: bool, hi: bool) -> sql.Composable:
        where, _ = self._filter(lo, hi)
        if self.no_arbiter:
            absent = sql.SQL(" AND ").join(sql.SQL("x.{0} = s.{0}").format(sql.Identifier(k)) for k in self.key)
            return sql.SQL(
                "INSERT INTO {tgt} ({cols}){ovr} SELECT {cols} FROM {src} s WHERE {where}"
                " AND NOT EXISTS (SELECT 1 FROM {tgt} x WHERE {absent})").format(
                tgt=self.target.ident(), cols=self.column_list(), src=self.source.ident(), where=where,
                ovr=sql.SQL(" OVERRIDING SYSTEM VALUE" if self.overriding else ""), absent=absent)
        conflict = sql.SQL(", ").join(map(sql.Identifier, self.key))
        action: sql.Composable
        if self.update_on_conflict:
            sets = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
                                      for c in self.columns if c not in self.key)
            action = sql.SQL("DO UPDATE SET {}").format(sets)
        else:
            action = sql.SQL("DO NOTHING")
        return sql.SQL(
            "INSERT INTO {tgt} ({cols}){ovr} SELECT {cols} FROM {src} WHERE {where}"
            "{lock} ON CONFLICT ({conflict}) {action}").format(
            tgt=self.target.ident(), cols=self.column_list(), src=self.source.ident(), where=where,
            lock=sql.SQL(" FOR SHARE" if self.lock_rows else ""),
            ovr=sql.SQL(" OVERRIDING SYSTEM VALUE" if self.overriding else ""),
            conflict=conflict, action=action)


@dataclass
class CopyStats:
    rows: int = 0
    batches: int = 0
    seconds: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)  # throughput over time


class CopyRun:
    """What a copy run shares: the job, its checkpoint key, workers, throttle, progress.
    Every statement goes through `ex` (the run's executor) or an executor forked from it for
    a worker's own connection."""

    def __init__(self, ex: Executor, dsn: str, job: CopyJob, table_label: str, checkpoint_key: str, *,
                 workers: int, throttle: Throttle | None, progress: Progress | None,
                 expected_rows: int | None, pace: Pace | None = None) -> None:
        self.ex, self.dsn, self.job, self.table, self.key = ex, dsn, job, table_label, checkpoint_key
        self.workers = workers
        self.throttle = throttle  # the replication-lag throttle (it needs each unit's WAL flushed)
        self.pace = pace  # the write guard and nice ratio (tablemig.lifecycle.pacing)
        self.progress = progress or ProgressLog()
        self.expected = expected_rows
        self.stats = CopyStats()
        self._started = time.time()
        self._lock = threading.Lock()
        self._error: BaseException | None = None

    def _run_all(self, workers: list[Callable[[], None]]) -> CopyStats:
        """Run `workers` (one in this thread, several in threads); the first error is raised."""
        started = time.monotonic()
        self._started = time.time()
        if len(workers) <= 1:
            for w in workers:
                w()
        else:
            threads = [threading.Thread(target=w, daemon=True) for w in workers]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        self.stats.seconds = time.monotonic() - started
        if self._error:
            raise self._error
        return self.stats

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self._error = self._error or exc

    def _between_units(self, ex: Executor) -> None:
        """Before each unit: the pause, the lag throttle, the pacer."""
        wait_while_paused(StateStore(ex, self.table))
        if self.throttle:
            self.throttle()
        if self.pace:
            self.pace(ex.conn)

    def _report(self, copied: int, elapsed: float, size: int, wal: Any) -> None:
        """Account for a unit that copied `copied` rows in `elapsed` seconds."""
        with self._lock:
            self.stats.rows += copied
            self.stats.batches += 1
            self.stats.batch_sizes.append(size)
            self.stats.samples.append({"t": time.time(), "rows": self.stats.rows, "batch_rows": copied,
                                       "batch_seconds": elapsed, "batch_size": size, "wal_bytes": wal})
            rows = self.stats.rows
        if not self.ex.planning:  # a dry run copies nothing to show progress of
            self.progress({"table": self.table, "rows": rows, "expected": self.expected,
                           "batch_seconds": elapsed, "batch_size": size, "started": self._started})


# A unit's WAL: the insert position at its start, kept in the transaction (a setting of its
# own), subtracted at its end; no position travels through the client.
WAL_MARK = sql.SQL("set_config('tablemig.wal_start', pg_current_wal_insert_lsn()::text, true)")
WAL_SINCE_MARK = sql.SQL(
    "pg_wal_lsn_diff(pg_current_wal_insert_lsn(), current_setting('tablemig.wal_start')::pg_lsn)::bigint")


@contextmanager
def forked(ex: Executor, dsn: str, application_name: str, label: str) -> Iterator[Executor]:
    """A new connection of the run, for a worker, with an executor forked from `ex`."""
    with connect(dsn, application_name=application_name) as conn:
        yield ex.fork(conn, label)


def wait_while_paused(store: StateStore, poll_s: float = 1.0) -> None:
    """`tablemig pause` sets checkpoint.paused; units of bulk work wait here until
    `tablemig resume`. (A poll, not a statement of the migration: it is not recorded.)"""
    announced = False
    while True:
        if not store.paused_now():
            return
        if not announced:
            log.info("%s: paused; waiting for `tablemig resume`", store.table)
            announced = True
        time.sleep(poll_s)


class ProgressLog:
    """The copy's progress as log lines (rows done of expected, rate, ETA): the first batch,
    then at most one line every `every_s` seconds, and the last one."""

    def __init__(self, every_s: float = 2.0) -> None:
        self.every_s = every_s
        self._last = 0.0

    def __call__(self, p: dict[str, Any]) -> None:
        now = time.time()
        expected = p.get("expected") or 0
        done = bool(expected) and p["rows"] >= expected
        if self._last and now - self._last < self.every_s and not done:
            return
        self._last = now
        rate = p["rows"] / max(now - p["started"], 1e-6)
        eta = (expected - p["rows"]) / rate if rate > 0 and expected > p["rows"] else 0
        # the figures ride along: a terminal's handler draws them as one bar (tablemig.report.progress)
        log.info("%s: %s/%s rows, %s rows/s, batch %s, ETA %s s", p["table"], f"{p['rows']:,}", f"{expected:,}",
                 f"{rate:,.0f}", f"{p['batch_size']:,}", f"{eta:,.0f}",
                 extra={"progress": {"table": p["table"], "rows": p["rows"], "expected": expected, "rate": rate,
                                     "eta": eta}})
