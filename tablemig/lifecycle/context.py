"""The run context: what every lifecycle step of one table's migration gets.

A step is a function of a `RunContext` (`capture.run(ctx)`, `backfill.run(ctx)`, ...). The
context holds the connection and its executor (every statement goes through `ctx.ex`), the
table's state row (`ctx.state()`, typed), the settings, the plan, the pacer and the lag
throttle, the progress callback, the logical subscribers, and what the steps measured for
the report (`ctx.timings`, `ctx.results`). Steps never call each other through the context;
the driver (`tablemig.lifecycle.driver`) decides their order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg

from ..config.settings import Fixed, Settings
from ..config.spec import TableSpec
from ..errors import InputError
from ..pg.connect import connect, database_timezone
from .executor import Executor, Mode, Recorder
from .logical import Subscriber
from .pacing import Pacer
from .planner import TablePlan, build_plan
from .state import State, StateStore

log = logging.getLogger("tablemig.migration")
# the phases logged as they start and end, in the words `tablemig status` uses
PHASE_WORDS = {"capture": "capture", "backfill": "backfill", "index": "index build",
               "replay": "replay", "verify": "verify", "swap": "swap",
               "validate_fks": "foreign key validation", "prune": "prune"}

if TYPE_CHECKING:
    from .analyze import Analysis
    from .swap import SwapResult
    from .verify import VerifyResult

Throttle = Callable[[], None]
Progress = Callable[[dict[str, Any]], None]


@dataclass
class Results:
    """What the steps of this run found, for the report."""

    swap: SwapResult | None = None
    verify: VerifyResult | None = None
    backfill_samples: list[dict[str, Any]] = field(default_factory=list)
    switch_lock_hold_ms: float | None = None


class RunContext:
    """One table's migration run (see the module docstring)."""

    # Below `parallel_min_rows` rows kept, more connections cost more than they save (a
    # fresh backend's start and cold caches cost more than a second core saves): the
    # indexes are built one after the other and the new tables analyzed in the index
    # step's transaction, and verify reads both sides with one statement, all on the
    # harness's connection. Larger tables build several indexes at once, ANALYZE in the
    # background (overlapping the replay and verify) and verify both sides at once on two
    # connections. Below `segment_min_rows` verify compares the table as one segment.
    parallel_min_rows = 200_000
    segment_min_rows = 50_000

    def __init__(self, dsn: str, spec: TableSpec, *, mode: Mode = "execute", recorder: Recorder | None = None,
                 throttle: Throttle | None = None, progress: Progress | None = None,
                 plan_name: str | None = None, subscribers: Sequence[str] = (),
                 fixed: Fixed | None = None) -> None:
        self.dsn = dsn
        self.spec = spec
        self.plan_name = plan_name
        self.fixed = fixed or Fixed()
        self.throttle = throttle
        self.progress = progress
        # The harness's own transactions need not wait for a WAL flush: a server crash can
        # lose only the last of them, all later ones with them (commits are in WAL order),
        # and the rerun resumes from the state that survived. The swap and swap back commit
        # durably (with_lock_retries(durable=True)).
        self.conn = connect(dsn, settings={"synchronous_commit": "off"}, prepare_threshold=None)
        self.ex = Executor(self.conn, mode=mode, recorder=recorder or Recorder())
        self.store = StateStore(self.ex, self.table)
        # the write guard and the nice ratio (tablemig.lifecycle.pacing): from migration_config,
        # or fixed for the run. A dry run shows the unpaced flow: it rests for nobody.
        paced = self.fixed if mode == "execute" else Fixed({"nice_ratio": 0, "app_write_share": 0})
        self.pacer = Pacer(dsn, paced.get("nice_ratio"), paced.get("app_write_share"), label=self.table)
        # logical subscribers of the active site (tablemig.lifecycle.logical); physical standbys need nothing
        self.subscribers = [Subscriber(d, dsn, mode=mode, recorder=self.ex.recorder) for d in subscribers]
        self.timings: dict[str, float] = {}
        self.results = Results()
        self.analysis: Analysis | None = None  # the background ANALYZE of the new tables
        self._plan: TablePlan | None = None
        self._locked_oid: int | None = None
        self._timezone: str | None = None

    @property
    def table(self) -> str:
        """The table as SQL writes it (the key of its state row)."""
        return str(self.spec.qualified)

    @property
    def recorder(self) -> Recorder:
        return self.ex.recorder

    @property
    def planning(self) -> bool:
        """A dry run (plan mode, see tablemig.lifecycle.executor)."""
        return self.ex.planning

    # -- the plan, the state and the settings ---------------------------------------------
    def database_timezone(self) -> str:
        """The database's own TimeZone (tablemig.pg.cutoff), asked once."""
        if self._timezone is None:
            self._timezone = database_timezone(self.dsn)
        return self._timezone

    def plan(self) -> TablePlan:
        """A new plan of the table as the database has it now (read-only)."""
        self._plan = build_plan(self.ex, self.spec, self.store.stored(), timezone=self.database_timezone)
        return self._plan

    @property
    def last_plan(self) -> TablePlan | None:
        """The plan made last (None before any)."""
        return self._plan

    def current_plan(self) -> TablePlan:
        """The plan made last, or a new one."""
        return self._plan or self.plan()

    def state(self) -> State | None:
        """The table's state row (in a dry run: the row it would have written)."""
        return self.store.load()

    def require(self, *allowed: str) -> State:
        """The state, which must be one of `allowed`; takes the table's lock."""
        m = self.state()
        if not m or m.state not in allowed:
            have = m.state if m else "not started"
            raise InputError(f"{self.table} is in state {have}; this step needs {' or '.join(allowed)}",
                             "run the steps in order (rerunning the plan resumes)")
        self.lock(m.table_oid)
        return m

    def settings(self) -> Settings:
        """migration_config's settings now, with the run's fixed ones."""
        return Settings.load(self.ex, self.fixed)

    def lock(self, oid: int) -> None:
        """The table's advisory lock: one run per table (kept until close)."""
        if self._locked_oid is None:
            self.store.acquire_lock(oid)
            self._locked_oid = oid

    # -- timing and pacing ----------------------------------------------------------------
    def begin(self, phase: str) -> float:
        """Log the start of a phase (not in plan mode: nothing starts); its clock, for `timed`."""
        if not self.planning:
            log.info("%s: %s: started", self.table, PHASE_WORDS.get(phase, phase))
        return time.perf_counter()

    def timed(self, name: str, t0: float) -> None:
        """Add the time since `t0` to the step time `name`; log the end of a phase."""
        took = time.perf_counter() - t0
        self.timings[name] = round(self.timings.get(name, 0) + took, 3)
        if name in PHASE_WORDS and not self.planning:
            log.info("%s: %s: done in %.2f s", self.table, PHASE_WORDS[name], took)

    def settle(self, *, between_steps: bool = True) -> float:
        """The write guard's rest, if the application is owed one; between steps it is
        timed as `rest` (rests within a step are part of its time). Returns the seconds."""
        t0 = time.perf_counter()
        self.pacer.settle(self.conn)
        took = time.perf_counter() - t0
        if took > 0.001 and between_steps:
            self.timed("rest", t0)
        return took

    def small(self, m: State, plan: TablePlan) -> bool:
        """Fewer rows to build than `parallel_min_rows`: one connection does all the work."""
        rows = (plan.keep_rows or 0) + (plan.archive_rows if m.archive_mode == "copy" else 0)
        return rows < self.parallel_min_rows

    def pause(self) -> None:
        """Between units of bulk work: wait while paused (`tablemig pause`), then for the
        replication-lag throttle."""
        from .copying import wait_while_paused

        wait_while_paused(self.store)
        if self.throttle:
            self.throttle()

    # -- connections ----------------------------------------------------------------------
    def connect(self, application_name: str) -> psycopg.Connection[Any]:
        """Another connection of this run (a worker's)."""
        return connect(self.dsn, application_name=application_name)

    def close(self) -> None:
        if self.analysis is not None:
            self.analysis.join(raise_error=False)
        for sub in self.subscribers:
            sub.close()
        self.pacer.close()
        if self._locked_oid is not None and not self.conn.closed:
            try:
                self.store.release_lock(self._locked_oid)
            except psycopg.Error:
                pass  # the session is gone, and its advisory lock with it
        self.conn.close()
