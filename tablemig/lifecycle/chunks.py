"""The bulk load: the rows `D >= C` copied into the bare new table in a few large chunks.

`ChunkLoader` runs the backfill step's load (`tablemig.lifecycle.backfill`) into the new
table, which has no key and no index yet (only the harness writes it while the capture
trigger logs changed keys, see `tablemig.lifecycle.replay`): a
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

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from ..pg.sqltext import Fragment
from .copying import WAL_MARK, WAL_SINCE_MARK, CopyJob, CopyRun, CopyStats, Progress, Throttle, forked
from .executor import Executor, Observed
from .pacing import Pace
from .state import Expr, StateStore


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
    parts: list[sql.Composable] = [job.date_filter()] if job.date_column else []
    col, typ = sql.Identifier(split), Fragment(split_type)
    if lo:
        parts.append(sql.SQL("{} > %s::{}").format(col, typ))
    if hi:
        parts.append(sql.SQL("{} <= %s::{}").format(col, typ))
    where = sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")
    return sql.SQL("INSERT INTO {tgt} ({cols}){ovr} SELECT {cols} FROM {src} WHERE {where}").format(
        tgt=job.target.ident(), cols=job.column_list(), src=job.source.ident(), where=where,
        ovr=sql.SQL(" OVERRIDING SYSTEM VALUE" if job.overriding else ""))


def chunk_params(job: CopyJob, chunk: Chunk) -> list[Any]:
    """The parameters of `chunk_sql` for `chunk`."""
    return [*([job.cutoff] if job.date_column else []), *([chunk.lo] if chunk.lo is not None else []),
            *([chunk.hi] if chunk.hi is not None else [])]


def plan_chunks(ex: Executor, job: CopyJob, split: str, split_type: str, expected_rows: int,
                batch_size: int, max_chunks: int = 64, min_chunks: int = 1) -> list[Chunk]:
    """Chunk bounds from the split column's histogram (no table read). The recent job on
    the date column uses only the bounds above the cutoff; about `expected_rows /
    batch_size` chunks, at least `min_chunks` (the workers) when the histogram has
    enough bounds; none of it changes which rows are copied, only how they are cut."""
    want = max(min_chunks, min(max_chunks, -(-max(expected_rows, 1) // max(batch_size, 1))))
    if want <= 1:
        return [Chunk(None, None)]
    row = ex.read("SELECT histogram_bounds::text FROM pg_stats WHERE schemaname = %s"
                  " AND tablename = %s AND attname = %s",
                  (job.source.schema, job.source.name, split)).fetchone()
    if not row or row[0] is None:
        return [Chunk(None, None)]
    above = split == job.date_column and not job.history
    typ = Fragment(split_type)
    query = sql.SQL("SELECT v::text FROM (SELECT DISTINCT u.b AS v FROM unnest(%s::text::{}[]) AS u(b)"
                    " WHERE {}) s ORDER BY s.v").format(
        typ, sql.SQL("u.b > %s::{}").format(typ) if above else sql.SQL("u.b IS NOT NULL"))
    bounds = [str(r[0]) for r in ex.read(query, [row[0], *([job.cutoff] if above else [])]).fetchall()]
    if len(bounds) + 1 > want:  # every k-th bound, evenly
        bounds = [bounds[int(i * len(bounds) / want)] for i in range(1, want)]
        bounds = list(dict.fromkeys(bounds))
    edges: list[str | None] = [None, *bounds, None]
    return [Chunk(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


class ChunkLoader(CopyRun):
    """Runs the chunks of a bulk load (see the module docstring), `workers` at a time."""

    def __init__(self, ex: Executor, dsn: str, job: CopyJob, table_label: str, checkpoint_key: str, *,
                 split: str, split_type: str, batch_size: int, workers: int = 1,
                 throttle: Throttle | None = None, progress: Progress | None = None,
                 expected_rows: int | None = None, pace: Pace | None = None) -> None:
        super().__init__(ex, dsn, job, table_label, checkpoint_key, workers=workers, throttle=throttle,
                         progress=progress, expected_rows=expected_rows, pace=pace)
        self.split, self.split_type = split, split_type
        self.batch_size = batch_size
        self._todo: list[int] = []

    def run(self, store: StateStore, saved: dict[str, Any] | None,
            on_plan: Callable[[StateStore], None] | None = None) -> CopyStats:
        """Copy every chunk not done yet; the run's connection plans the chunks (and copies
        them when there is one worker: no extra connection). `saved`: the job's plan saved by
        an earlier run. `on_plan` runs in the transaction that saves a new chunk plan."""
        ex = self.ex
        if saved and saved.get("chunks") is not None:
            chunks = [Chunk.from_json(c) for c in saved["chunks"]]
        else:
            chunks = plan_chunks(ex, self.job, self.split, self.split_type, self.expected or 0,
                                 self.batch_size, min_chunks=self.workers)
            with ex.transaction(), ex.pipeline():  # one round trip
                store.set_checkpoint(path=[self.key],
                                     value={"split": self.split, "chunks": [c.to_json() for c in chunks]})
                if on_plan is not None:
                    on_plan(store)
        self._todo = [i for i, c in enumerate(chunks) if not c.done]
        n = min(self.workers, len(self._todo))
        if n <= 1:  # on the caller's connection
            return self._run_all([lambda: self._work(ex, chunks)] if self._todo else [])
        return self._run_all([functools.partial(self._worker, chunks, i) for i in range(n)])

    def _worker(self, chunks: list[Chunk], number: int) -> None:
        try:
            with forked(self.ex, self.dsn, "tablemig-backfill", f"backfill-{number + 1}") as ex:
                self._work(ex, chunks)
        except BaseException as exc:  # noqa: BLE001 - re-raised by run()
            self._failed(exc)

    def _next(self) -> int | None:
        with self._lock:
            if self._error is not None or not self._todo:
                return None
            return self._todo.pop(0)

    def _work(self, ex: Executor, chunks: list[Chunk]) -> None:
        job, store = self.job, StateStore(ex, self.table)
        while (index := self._next()) is not None:
            self._between_units(ex)
            c = chunks[index]
            t0 = time.perf_counter()
            with ex.transaction():
                # with a throttle the chunk's commit flushes its WAL locally (`local`: no
                # wait for a synchronous standby): the lag the throttle measures (written
                # WAL against the standby's replay) must include this chunk; one flush per
                # large chunk costs nothing measurable
                ex.run(sql.SQL("SELECT set_config('synchronous_commit', %s, true), {}").format(WAL_MARK),
                       ("local" if self.throttle else "off",))
                copied = max(ex.run(chunk_sql(job, self.split, self.split_type, c.lo is not None,
                                              c.hi is not None), chunk_params(job, c)).rowcount, 0)
                # last in the transaction: concurrent workers queue on the state row only briefly
                wal = store.set_checkpoint(path=[self.key, "chunks", str(index), "done"], value=True,
                                           rows_copied=Expr(sql.SQL("rows_copied + %s"),
                                                            (Observed("rows", copied),)),
                                           returning=WAL_SINCE_MARK, planned=0).scalar()
            with self._lock:
                c.done = True
            self._report(copied, time.perf_counter() - t0, copied, wal)
