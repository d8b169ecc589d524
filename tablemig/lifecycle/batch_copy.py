"""Keyset batch copy of the rows `D >= C` from a source to a target table (the rollback
uses it to make the archive complete again after a prune, see `tablemig.lifecycle.rollback`).

Each batch is one transaction: find the batch's upper bound (the `batch_size`-th next row
in `(D, key)` order, through an index on `D`), copy the rows in `(last, upper]` with
`ON CONFLICT DO NOTHING`, and store the new checkpoint in `migration_state` in the same
transaction. So a crash loses at most the batch in flight, and its checkpoint with it, and
a stale batch never overwrites a newer row written by the capture trigger.

The copy takes no row locks. Two races remain while a batch is in flight: a row deleted,
or moved across the cutoff, after the batch read it but before the batch committed: the
trigger's DELETE cannot see the batch's uncommitted insert, so the stale copy survives.
Both are closed by `verify`, which compares every key range in one snapshot and repairs
the differing rows before the swap is allowed (after the backfill the trigger alone keeps
the copy exact, so nothing can go stale later). Locking the source rows instead
(`FOR SHARE`/`FOR KEY SHARE`) would make writers wait for whole batches and write a lock
into every copied tuple (WAL and dirty pages proportional to the rows kept).

`synchronous_commit` is off for batch transactions: a batch lost in a server crash is lost
together with its checkpoint, so it is copied again on the rerun.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from .copying import WAL_MARK, WAL_SINCE_MARK, CopyJob, CopyRun, CopyStats, Progress, Throttle, forked
from .executor import Executor, Observed
from .pacing import Pace
from .state import Expr, StateStore

MIN_BATCH, MAX_BATCH = 1_000, 500_000


@dataclass
class CopyRange:
    lo: list[str] | None  # exclusive lower bound, None = from the start
    hi: list[str] | None  # inclusive upper bound, None = to the end
    last: list[str] | None = None
    done: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"lo": self.lo, "hi": self.hi, "last": self.last, "done": self.done}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CopyRange:
        return cls(d.get("lo"), d.get("hi"), d.get("last"), bool(d.get("done")))


def split_ranges(ex: Executor, job: CopyJob, expected_rows: int, workers: int) -> list[CopyRange]:
    """Disjoint ranges of roughly equal row counts, one per worker."""
    if workers <= 1 or expected_rows < workers * MIN_BATCH:
        return [CopyRange(None, None)]
    points: list[list[str]] = []
    for i in range(1, workers):
        row = ex.read(job.upper_bound_sql(False, False),
                      [*job.params(None, None), expected_rows * i // workers]).fetchone()
        if row and (not points or list(row) != points[-1]):
            points.append([str(v) for v in row])
    bounds: list[list[str] | None] = [None, *points, None]
    return [CopyRange(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


class BatchCopier(CopyRun):
    """Runs a CopyJob over checkpointed ranges, with throttling and progress."""

    def __init__(self, ex: Executor, dsn: str, job: CopyJob, table_label: str, checkpoint_key: str, *,
                 batch_size: int, target_seconds: float = 0.5, workers: int = 1,
                 throttle: Throttle | None = None, progress: Progress | None = None,
                 expected_rows: int | None = None, pace: Pace | None = None) -> None:
        super().__init__(ex, dsn, job, table_label, checkpoint_key, workers=workers, throttle=throttle,
                         progress=progress, expected_rows=expected_rows, pace=pace)
        self.batch_size = batch_size
        self.target_seconds = target_seconds

    def run(self, store: StateStore, saved: dict[str, Any] | None) -> CopyStats:
        """Copy everything not yet copied (`saved`: the job's ranges saved by an earlier run);
        the run's connection plans the ranges."""
        if saved and saved.get("ranges"):
            ranges = [CopyRange.from_json(r) for r in saved["ranges"]]
        else:
            ranges = split_ranges(self.ex, self.job, self.expected or 0, self.workers)
            with self.ex.transaction():
                store.set_checkpoint(path=[self.key], value={"ranges": [r.to_json() for r in ranges]})
        todo = [i for i, r in enumerate(ranges) if not r.done]
        return self._run_all([functools.partial(self._worker, ranges, i) for i in todo])

    def _worker(self, ranges: list[CopyRange], index: int) -> None:
        try:
            with forked(self.ex, self.dsn, "tablemig-backfill", f"copy-{index + 1}") as ex:
                # a parallel plan for a batch's bound query would take CPU from the application
                ex.run("SET max_parallel_workers_per_gather = 0")
                self._copy_range(ex, ranges, index)
        except BaseException as exc:  # noqa: BLE001 - re-raised by run()
            self._failed(exc)

    def _copy_range(self, ex: Executor, ranges: list[CopyRange], index: int) -> None:
        rng = ranges[index]
        job, size, store = self.job, self.batch_size, StateStore(ex, self.table)
        has_hi = rng.hi is not None
        while not rng.done and self._error is None:
            self._between_units(ex)
            lo = rng.last if rng.last is not None else rng.lo
            t0 = time.perf_counter()
            with ex.transaction():
                ex.run(sql.SQL("SELECT set_config('synchronous_commit', 'off', true), {}").format(WAL_MARK))
                row = ex.read(job.upper_bound_sql(lo is not None, has_hi),
                              [*job.params(lo, rng.hi), size - 1]).fetchone()
                upper = [str(v) for v in row] if row else rng.hi
                lock = job.lock_sql(lo is not None, upper is not None)
                if lock is not None:
                    ex.run(lock, job.params(lo, upper))
                copied = max(ex.run(job.copy_sql(lo is not None, upper is not None),
                                    job.params(lo, upper)).rowcount, 0)
                done = CopyRange(rng.lo, rng.hi, upper, row is None)
                # each worker writes only its own range, in its own batch transaction, so a
                # checkpoint never records another worker's uncommitted progress
                wal = store.set_checkpoint(path=[self.key, "ranges", str(index)], value=done.to_json(),
                                           rows_copied=Expr(sql.SQL("rows_copied + %s"),
                                                            (Observed("rows", copied),)),
                                           returning=WAL_SINCE_MARK, planned=0).scalar()
            with self._lock:
                rng.last, rng.done = done.last, done.done
            elapsed = time.perf_counter() - t0
            self._report(copied, elapsed, size, wal)
            # Tune towards the target batch time, at most doubling or halving per step.
            if elapsed > 0:
                floor = min(MIN_BATCH, self.batch_size)  # a smaller configured size is respected
                size = int(min(MAX_BATCH, max(floor, size * min(
                    2.0, max(0.5, self.target_seconds / elapsed)))))
