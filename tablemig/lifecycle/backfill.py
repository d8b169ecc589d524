"""Copying the rows `D >= C` from a source to a target table.

`ChunkLoader` is the engine's bulk load into the bare new table (no key, no index; only the
harness writes it while the capture trigger logs changed keys, see `tablemig.lifecycle.replay`): a
few large `INSERT ... SELECT` chunks over disjoint ranges of one split column (the date
column when an index leads with it, else the key's first column). The chunk bounds come
from the column's `pg_stats` histogram, so no row is read to find them; the first and last
chunks are open-ended, so the chunks cover every row whatever the statistics say (they
only size the chunks). Each chunk is one transaction that also marks itself done in the
checkpoint, so a crash loses at most the chunks in flight and a rerun copies exactly the
chunks not done: no duplicate, no `ON CONFLICT` (`synchronous_commit` is off for a chunk,
`local` when a replication-lag throttle needs its WAL written). Rows changed while the load runs are
stale or missing or (moved between chunks) copied twice in the target; each such row's key
is in the change log, and the replay corrects it.

The keyset batch copy used by the restore after prune is in `tablemig.lifecycle.batch_copy`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..pg.connect import connect
from ..pg.names import QualifiedName
from ..pg.sqltext import Fragment
from . import state
from .pacing import Pace

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

    def _date_filter(self) -> sql.Composable:
        d, t = sql.Identifier(self.date_column or ""), Fragment(self.date_type)
        if self.history:
            return sql.SQL("({d} < %s::{t} OR {d} IS NULL)").format(d=d, t=t)
        return sql.SQL("{} >= %s::{}").format(d, t)

    def _cols(self) -> sql.Composable:
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
            parts.append(self._date_filter())
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
                tgt=self.target.ident(), cols=self._cols(), src=self.source.ident(), where=where,
                ovr=sql.SQL(" OVERRIDING SYSTEM VALUE" if self.overriding else ""), absent=absent)
        conflict = sql.SQL(", ").join(map(sql.Identifier, self.key))
        if self.update_on_conflict:
            sets = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
                                      for c in self.columns if c not in self.key)
            action = sql.SQL("DO UPDATE SET {}").format(sets)
        else:
            action = sql.SQL("DO NOTHING")
        return sql.SQL(
            "INSERT INTO {tgt} ({cols}){ovr} SELECT {cols} FROM {src} WHERE {where}"
            "{lock} ON CONFLICT ({conflict}) {action}").format(
            tgt=self.target.ident(), cols=self._cols(), src=self.source.ident(), where=where,
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
    """What a copy run shares: the job, its checkpoint key, workers, throttle, progress."""

    def __init__(self, dsn: str, job: CopyJob, table_label: str, checkpoint_key: str, *,
                 workers: int, throttle: Throttle | None, progress: Progress | None,
                 expected_rows: int | None, pace: Pace | None = None) -> None:
        self.dsn, self.job, self.table, self.key = dsn, job, table_label, checkpoint_key
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


@dataclass
class Chunk:
    lo: str | None  # exclusive lower bound of the split column, None = from the start
    hi: str | None  # inclusive upper bound, None = to the end
    done: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"lo": self.lo, "hi": self.hi, "done": self.done}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Chunk:
        return cls(d.get("lo"), d.get("hi"), bool(d.get("done")))


def chunk_sql(job: CopyJob, split: str, split_type: str, lo: bool, hi: bool) -> sql.Composable:
    """One chunk: `INSERT INTO target SELECT ... FROM source WHERE filter AND lo < s <= hi`
    (no ON CONFLICT: the target has no key during the load)."""
    parts: list[sql.Composable] = [job._date_filter()] if job.date_column else []
    col, typ = sql.Identifier(split), Fragment(split_type)
    if lo:
        parts.append(sql.SQL("{} > %s::{}").format(col, typ))
    if hi:
        parts.append(sql.SQL("{} <= %s::{}").format(col, typ))
    where = sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")
    return sql.SQL("INSERT INTO {tgt} ({cols}){ovr} SELECT {cols} FROM {src} WHERE {where}").format(
        tgt=job.target.ident(), cols=job._cols(), src=job.source.ident(), where=where,
        ovr=sql.SQL(" OVERRIDING SYSTEM VALUE" if job.overriding else ""))


def plan_chunks(conn: psycopg.Connection[Any], job: CopyJob, split: str, split_type: str,
                expected_rows: int, min_chunk_rows: int, max_chunks: int = 64,
                min_chunks: int = 1) -> list[Chunk]:
    """Chunk bounds from the split column's histogram (no table read). The recent job on
    the date column uses only the bounds above the cutoff; about `expected_rows /
    min_chunk_rows` chunks, at least `min_chunks` (the workers) when the histogram has
    enough bounds; none of it changes which rows are copied, only how they are cut."""
    want = max(min_chunks, min(max_chunks, -(-max(expected_rows, 1) // max(min_chunk_rows, 1))))
    if want <= 1:
        return [Chunk(None, None)]
    row = conn.execute("SELECT histogram_bounds::text FROM pg_stats WHERE schemaname = %s"
                       " AND tablename = %s AND attname = %s",
                       (job.source.schema, job.source.name, split)).fetchone()
    if not row or row[0] is None:
        return [Chunk(None, None)]
    above = split == job.date_column and not job.history
    typ = Fragment(split_type)
    query = sql.SQL("SELECT v::text FROM (SELECT DISTINCT u.b AS v FROM unnest(%s::text::{}[]) AS u(b)"
                    " WHERE {}) s ORDER BY s.v").format(
        typ, sql.SQL("u.b > %s::{}").format(typ) if above else sql.SQL("u.b IS NOT NULL"))
    bounds = [str(r[0]) for r in conn.execute(query, [row[0], *([job.cutoff] if above else [])]).fetchall()]
    if len(bounds) + 1 > want:  # every k-th bound, evenly
        bounds = [bounds[int(i * len(bounds) / want)] for i in range(1, want)]
        bounds = list(dict.fromkeys(bounds))
    edges: list[str | None] = [None, *bounds, None]
    return [Chunk(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


class ChunkLoader(CopyRun):
    """Runs the chunks of a bulk load (see the module docstring), `workers` at a time."""

    def __init__(self, dsn: str, job: CopyJob, table_label: str, checkpoint_key: str, *,
                 split: str, split_type: str, min_chunk_rows: int, workers: int = 1,
                 throttle: Throttle | None = None, progress: Progress | None = None,
                 expected_rows: int | None = None, pace: Pace | None = None) -> None:
        super().__init__(dsn, job, table_label, checkpoint_key, workers=workers, throttle=throttle,
                         progress=progress, expected_rows=expected_rows, pace=pace)
        self.split, self.split_type = split, split_type
        self.min_chunk_rows = min_chunk_rows
        self._todo: list[int] = []

    def run(self, conn: psycopg.Connection[Any], checkpoint: dict[str, Any],
            on_plan: Callable[[psycopg.Connection[Any]], None] | None = None) -> CopyStats:
        """Copy every chunk not done yet; `conn` plans the chunks (and copies them when
        there is one worker: no extra connection). `on_plan` runs in the transaction that
        saves a new chunk plan."""
        saved = checkpoint.get(self.key)
        if saved and saved.get("chunks") is not None:
            chunks = [Chunk.from_json(c) for c in saved["chunks"]]
        else:
            chunks = plan_chunks(conn, self.job, self.split, self.split_type, self.expected or 0,
                                 self.min_chunk_rows, min_chunks=self.workers)
            with conn.pipeline(), conn.transaction():  # one round trip
                conn.execute(
                    "UPDATE table_migration.migration_state SET checkpoint = jsonb_set(checkpoint,"
                    " %s, %s::jsonb), updated_at = now() WHERE table_name = %s",
                    ([self.key], _json({"split": self.split, "chunks": [c.to_json() for c in chunks]}),
                     self.table))
                if on_plan is not None:
                    on_plan(conn)
        self._todo = [i for i, c in enumerate(chunks) if not c.done]
        n = min(self.workers, len(self._todo))
        if n <= 1:  # on the caller's connection
            return self._run_all([lambda: self._work(conn, chunks)] if self._todo else [])
        return self._run_all([lambda: self._worker(chunks) for _ in range(n)])

    def _worker(self, chunks: list[Chunk]) -> None:
        try:
            with connect(self.dsn, application_name="tablemig-backfill") as conn:
                self._work(conn, chunks)
        except BaseException as exc:  # noqa: BLE001 - re-raised by run()
            with self._lock:
                self._error = self._error or exc

    def _next(self) -> int | None:
        with self._lock:
            if self._error is not None or not self._todo:
                return None
            return self._todo.pop(0)

    def _work(self, conn: psycopg.Connection[Any], chunks: list[Chunk]) -> None:
        job = self.job
        while (index := self._next()) is not None:
            wait_while_paused(conn, self.table)
            if self.throttle:
                self.throttle()
            if self.pace:
                self.pace(conn)
            c = chunks[index]
            t0 = time.perf_counter()
            with conn.transaction():
                # with a throttle the chunk's commit flushes its WAL locally (`local`: no
                # wait for a synchronous standby): the lag the throttle measures (written
                # WAL against the standby's replay) must include this chunk; one flush per
                # large chunk costs nothing measurable
                wal0 = conn.execute("SELECT pg_current_wal_insert_lsn(), set_config('synchronous_commit', %s, true)",
                                    ("local" if self.throttle else "off",)).fetchone()
                params = [*([job.cutoff] if job.date_column else []),
                          *([c.lo] if c.lo is not None else []), *([c.hi] if c.hi is not None else [])]
                cur = conn.execute(chunk_sql(job, self.split, self.split_type, c.lo is not None,
                                             c.hi is not None), params)
                copied = max(cur.rowcount, 0)
                # last in the transaction: concurrent workers queue on the state row only briefly
                wal = conn.execute(
                    "UPDATE table_migration.migration_state SET checkpoint = jsonb_set(checkpoint,"
                    " %s, 'true'::jsonb), rows_copied = rows_copied + %s, updated_at = now()"
                    " WHERE table_name = %s RETURNING pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)::bigint",
                    ([self.key, "chunks", str(index), "done"], copied, self.table,
                     wal0[0] if wal0 else None)).fetchone()
            elapsed = time.perf_counter() - t0
            with self._lock:
                c.done = True
                self.stats.rows += copied
                self.stats.batches += 1
                self.stats.batch_sizes.append(copied)
                self.stats.samples.append({"t": time.time(), "rows": self.stats.rows,
                                           "batch_rows": copied, "batch_seconds": elapsed,
                                           "batch_size": copied, "wal_bytes": wal[0] if wal else None})
                rows = self.stats.rows
            self.progress({"table": self.table, "rows": rows, "expected": self.expected,
                           "batch_seconds": elapsed, "batch_size": copied, "started": self._started})


def wait_while_paused(conn: psycopg.Connection[Any], table: str, poll_s: float = 1.0) -> None:
    """`tablemig pause` sets checkpoint.paused; batches wait here until `tablemig resume`."""
    announced = False
    while True:
        row = conn.execute("SELECT (checkpoint->>'paused')::boolean FROM table_migration.migration_state"
                           " WHERE table_name = %s", (table,)).fetchone()
        if not (row and row[0]):
            return
        if not announced:
            log.info("%s: paused; waiting for `tablemig resume`", table)
            announced = True
        time.sleep(poll_s)


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


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
        log.info("%s: %s/%s rows, %s rows/s, batch %s, ETA %s s", p["table"], f"{p['rows']:,}", f"{expected:,}",
                 f"{rate:,.0f}", f"{p['batch_size']:,}", f"{eta:,.0f}")


__all__ = ["Chunk", "ChunkLoader", "CopyJob", "CopyStats", "chunk_sql", "plan_chunks", "state"]
