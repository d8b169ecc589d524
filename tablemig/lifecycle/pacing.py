"""Pacing of the bulk work: the write guard and the nice ratio.

On a busy server the migration's bulk work takes CPU and I/O from the application. Two
policies bound that, applied between units of bulk work (a load chunk, an index build, a
prune batch) by one `Pacer`:

- the **write guard** (`app_write_share`, default 0.9; `tablemig.lifecycle.write_guard`): the
  migration rests as long as it takes for the application's write rate over the migration
  to stay at that share of its rate while the migration rests. On an idle server nothing
  rests. While the application writes, the migration builds one index at a time, analyzes
  in the foreground and reads verify's two sides one after the other; it settles its debt
  before and during the replay, while the trigger only logs keys (`settle`), and not after
  the switch to direct capture, where the trigger's second write of every row makes a rest
  cost the application more than it gives back.
- the **nice ratio** (`nice_ratio`, default 0): after each unit the worker sleeps
  `nice_ratio` times as long as the unit took, whatever the load. With 1 the migration
  works at most half the time, with 4 a fifth of it.

Both come from `table_migration.migration_config` (or the command line / the plan, which
fix them for the run) and are re-read from the configuration table every few seconds, so a
DBA can change a running migration from psql:

    UPDATE table_migration.migration_config SET config_value = '0' WHERE config_key = 'app_write_share';
    UPDATE table_migration.migration_config SET config_value = '3' WHERE config_key = 'nice_ratio';

Not paced by the nice ratio: the replay of the change log (its work follows the
application's write rate; slowing it down would only lengthen the capture and the switch's
final batch under its lock), verify and the swap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from ..config.settings import Fixed, Settings
from ..errors import InputError
from ..pg.connect import connect
from .write_guard import WriteGuard

log = logging.getLogger("tablemig.pacing")

Pace = Callable[[psycopg.Connection[Any] | None], None]

# the application's writes, read live (see tablemig.lifecycle.write_guard)
WRITE_COUNTER = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
SLICE_S = 0.25  # a rest is cut into slices: each one reads the counter and may end the rest
# A unit's cost outlasts it (the WAL writer flushes its WAL after its asynchronous commit,
# a standby replays that WAL, autovacuum comes for the rows it changed): the first part of
# a rest, half as long as the work before it within these bounds, counts as work, not as a
# measure of the application's free rate.
AFTERMATH_SHARE, AFTERMATH_MIN_S, AFTERMATH_MAX_S = 0.5, 0.25, 2.0
ANNOUNCE_S = 2.0  # rests at least this long are announced on stderr


def write_rate(conn: psycopg.Connection[Any], seconds: float = 0.2) -> float:
    """The server's writing transactions per second now, over `seconds` (read-only; `conn`
    idle or at READ COMMITTED)."""
    t0, c0 = time.monotonic(), _counter(conn)
    time.sleep(seconds)
    return (_counter(conn) - c0) / (time.monotonic() - t0)


def _counter(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(WRITE_COUNTER).fetchone()
    return int(row[0]) if row else 0


class Pacer:
    """Called between units of bulk work with the caller's connection (idle or in a
    transaction; the counter is read on it). Thread-safe: each thread times its own units,
    and the guard's debt is shared by all of them.

    `ratio` and `share` given (the command line, the plan) are fixed for the run; None
    takes them from the configuration, re-read every `reload_s` seconds.

    `clock`, `sleep` and `counter` (the server's write counter, read on the caller's
    connection by default) can be replaced: a test drives the pacer with a load and a time
    it controls, so that what it asserts does not depend on the machine's speed."""

    def __init__(self, dsn: str, ratio: float | None = None, share: float | None = None, *,
                 reload_s: float = 5.0, label: str = "", clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, counter: Callable[[], int] | None = None) -> None:
        self.dsn = dsn
        self._clock, self._sleep, self._fixed_counter = clock, sleep, counter
        # given values are fixed for the run; the others follow migration_config
        self.fixed = Fixed({"nice_ratio": ratio, "app_write_share": share}, source="pacing")
        initial = self.fixed.apply(Settings())
        self.ratio = initial.nice_ratio
        self.guard = WriteGuard(initial.app_write_share)
        self.reload_s = reload_s
        self.label = label
        self.slept_s = 0.0  # by the nice ratio
        self._loaded = self._clock()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._busy = 0  # bulk units running now
        self._generation = 0  # bumped whenever _busy changes: tells a quiet interval
        self._read_generation = -1  # the generation at the previous reading
        self._read_at = float("-inf")  # time of the previous reading
        self._work_ended = float("-inf")  # when the last unit (or step) ended
        self._aftermath = AFTERMATH_MIN_S  # how long its cost outlasts it
        self._announced = float("-inf")
        self._conn: psycopg.Connection[Any] | None = None

    # -- configuration --------------------------------------------------------------------
    def start(self, conn: psycopg.Connection[Any] | None = None, settings: Settings | None = None) -> None:
        """A paced step begins on `conn` (its first unit is timed from now) with the
        configured settings; the guard's window begins with the first step."""
        if settings is not None:
            self._take(self.fixed.apply(settings))
            self._loaded = self._clock()
        with self._lock:
            self._busy = 0
            self._generation += 1
        self._read(conn)
        self._local.since = self._clock()
        self._local.busy = False

    def _reload(self) -> None:
        with self._lock:
            if len(self.fixed.values) == 2 or self._clock() - self._loaded < self.reload_s:
                return  # both fixed: nothing to re-read
            self._loaded = self._clock()
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = connect(self.dsn, application_name="tablemig-pacer")
                s = Settings.load(self._conn, self.fixed)
            except (psycopg.Error, InputError):
                return  # keep what is in force (a bad value is refused when the next step starts)
            self._take(s)

    def _take(self, s: Settings) -> None:
        self.ratio = s.nice_ratio
        self.guard.share = s.app_write_share

    # -- the counter ----------------------------------------------------------------------
    def _read(self, conn: psycopg.Connection[Any] | None) -> None:
        """Read the write counter (on `conn`, else on the pacer's own connection) and feed
        the guard. The interval since the previous reading (by any thread) is quiet when no
        unit ran in it. `conn` must not be in a REPEATABLE READ transaction (its snapshot
        would be the transaction's)."""
        if self.guard.share <= 0:
            return  # off (raised later, the window begins at the next reading)
        with self._lock:
            gen, busy = self._generation, self._busy
        try:
            if self._fixed_counter is not None:
                count = self._fixed_counter()
            elif conn is None:
                with self._lock:
                    if self._conn is None or self._conn.closed:
                        self._conn = connect(self.dsn, application_name="tablemig-pacer")
                    count = _counter(self._conn)
            else:
                count = _counter(conn)
        except (psycopg.Error, InputError):
            return  # the guard goes on with what it knows; the caller's next statement reports
        with self._lock:
            now = self._clock()
            quiet = busy == 0 and self._busy == 0 and self._read_generation == gen == self._generation
            settled = self._read_at >= self._work_ended + self._aftermath
            self._read_generation, self._read_at = self._generation, now
            self.guard.observe(now, count, quiet=quiet, settled=settled)

    @property
    def engaged(self) -> bool:
        """The application writes: work one unit at a time and rest between units."""
        return self.guard.engaged

    @property
    def paced(self) -> bool:
        """The nice ratio or the engaged guard paces the bulk work: one unit at a time, no
        transaction left open while resting, nothing of the migration in the background."""
        return self.ratio > 0 or self.guard.engaged

    # -- between units --------------------------------------------------------------------
    def __call__(self, conn: psycopg.Connection[Any] | None = None) -> None:
        now = self._clock()
        since = getattr(self._local, "since", None)
        self._reload()
        with self._lock:
            if getattr(self._local, "busy", False):
                self._busy -= 1
                self._generation += 1
                self._ended(now, now - since if since is not None else 0.0)
            self._local.busy = False
        nice = self.ratio * (now - since) if since is not None and self.ratio > 0 else 0.0
        self._rest(conn, nice)
        with self._lock:
            self._busy += 1
            self._generation += 1
            self._local.busy = True
        self._local.since = self._clock()

    def settle(self, conn: psycopg.Connection[Any] | None = None) -> None:
        """Between steps (no unit runs): rest until the guard's debt is repaid."""
        self._reload()
        with self._lock:
            self._busy = 0
            self._generation += 1
            now = self._clock()
            self._ended(now, now - self._read_at)  # the step's work since the last reading
        self._local.busy = False
        self._rest(conn, 0.0)

    def _ended(self, now: float, worked: float) -> None:
        """Work that took `worked` seconds ended at `now` (under the lock)."""
        self._work_ended = now
        self._aftermath = min(AFTERMATH_MAX_S, max(AFTERMATH_MIN_S, AFTERMATH_SHARE * worked))

    def _rest(self, conn: psycopg.Connection[Any] | None, nice: float) -> None:
        t0 = self._clock()
        self._read(conn)
        while True:
            now = self._clock()
            owed = self.guard.rest_needed(now)
            wait = max(t0 + nice - now, owed)
            if self.guard.calibration_due(now):  # rest past the aftermath for a settled reading
                wait = max(wait, self._work_ended + self._aftermath + SLICE_S - now)
            if wait <= 0.001:
                break
            if owed >= ANNOUNCE_S and self.label and now - self._announced >= 30:
                self._announced = now
                log.info("%s: yielding to the application's writes (%s/s; keeping %g %% of them): resting %.1f s",
                         self.label, f"{self.guard.rate or 0:,.0f}", self.guard.share * 100, owed)
            before = self._clock()
            self._sleep(min(wait, SLICE_S))
            slept = self._clock() - before
            with self._lock:  # counted as it goes: a rest in progress shows
                in_nice = min(slept, max(0.0, t0 + nice - before))
                self.slept_s += in_nice
                self.guard.rested_s += slept - in_nice
            self._read(conn)
            self._reload()

    def summary(self) -> dict[str, Any]:
        return {"nice_ratio": self.ratio, "nice_slept_s": round(self.slept_s, 3), **self.guard.summary()}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
