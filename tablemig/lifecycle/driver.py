"""The migration of one table through its states, driven by the plan module and the CLI.

    planned -> capturing -> backfilling -> indexed -> verified -> swapped -> pruned -> cleaned
    any state before cleaned --rollback--> rolled_back

Each step is a module of this package taking the run's context (`RunContext`): capture,
backfill, index, verify (with the replay), swap, prune, rollback, cleanup. Every step reads
the state row, does its work, and records the new state in the same transaction as the
work (or makes the work idempotent): rerunning resumes. `Migration` runs them in order and
records a failure in the state row (tablemig.lifecycle.failures).

In plan mode (the dry run) the same steps run through an executor that records the
changes instead of making them (tablemig.lifecycle.executor).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..config.settings import Fixed
from ..config.spec import TableSpec
from ..errors import InputError
from . import backfill, capture, cleanup, index, prune, replay, rollback, subscribers, swap, verify
from .context import Progress, RunContext, Throttle
from .executor import Mode, Recorder
from .failures import Steps
from .logical import Subscriber
from .pacing import Pacer
from .planner import TablePlan
from .state import ORDER, State
from .swap import SwapResult
from .verify import VerifyResult

T = TypeVar("T")

# The states `run` moves through, and the step (its name, its function) that reaches each.
FORWARD: dict[str, tuple[str, Callable[[RunContext], object]]] = {
    "capturing": ("capture", capture.run), "backfilling": ("backfill", backfill.run),
    "indexed": ("index", index.run), "verified": ("verify", verify.run), "swapped": ("swap", swap.run),
}


class Migration:
    """One table's migration on the active site: the steps, in order, over one run context."""

    def __init__(self, dsn: str, spec: TableSpec, *, mode: Mode = "execute", recorder: Recorder | None = None,
                 throttle: Throttle | None = None, progress: Progress | None = None,
                 plan_name: str | None = None, subscribers: Sequence[str] = (),
                 fixed: Fixed | None = None, **settings: Any) -> None:
        """`fixed`: settings a plan or the command line fixes for the run; `settings`, more of
        them by name (e.g. lock_timeout="100ms")."""
        if fixed is not None or settings:
            fixed = Fixed({**(fixed.values if fixed else {}), **settings},
                          source=fixed.source if fixed else "the run's settings:")
        self.ctx = RunContext(dsn, spec, mode=mode, recorder=recorder, throttle=throttle, progress=progress,
                              plan_name=plan_name, subscribers=subscribers, fixed=fixed)
        self._steps = Steps()

    def _step(self, name: str, fn: Callable[[], T]) -> T:
        with self._steps.recorded(self.ctx, name):
            return fn()

    # -- the state machine ----------------------------------------------------------------
    def run(self, until: str = "swapped") -> State | None:
        """Run every step up to and including `until` (a state name); resumes. Returns the
        state reached (in plan mode: the state the run would reach)."""
        order = list(FORWARD)
        if until not in order:
            raise InputError(f"unknown target state {until!r}", f"use one of {', '.join(order)}")
        self.capture()
        self.resolve_subscribers()
        for target in order[1:order.index(until) + 1]:
            m = self.ctx.state()
            if m and ORDER[m.state] > ORDER[target]:
                continue  # resuming: this step finished in an earlier run
            name, step = FORWARD[target]
            self._step(name, functools.partial(step, self.ctx))
        if until == "swapped":
            self.validate_foreign_keys()
        return self.ctx.state()

    # -- the steps ------------------------------------------------------------------------
    def capture(self) -> None:
        """Install the schema, create N (and H in copy mode), the change log and the capture trigger."""
        self.ctx.recorder.step = self.ctx.recorder.step or "capture"
        self._step("capture", lambda: capture.run(self.ctx))

    def backfill(self) -> None:
        self._step("backfill", lambda: backfill.run(self.ctx))

    def build_indexes(self) -> None:
        self._step("index", lambda: index.run(self.ctx))

    def replay(self) -> None:
        self._step("replay", lambda: replay.run(self.ctx))

    def verify(self, max_rounds: int = 3) -> VerifyResult:
        return self._step("verify", lambda: verify.run(self.ctx, max_rounds))

    def swap(self) -> SwapResult:
        return self._step("swap", lambda: swap.run(self.ctx))

    def validate_foreign_keys(self) -> list[str]:
        """VALIDATE the re-pointed foreign keys (after the swap; idempotent)."""
        return self._step("validate_fks", lambda: swap.validate(self.ctx))

    def prune(self, batch_size: int | None = None) -> int:
        return self._step("prune", lambda: prune.run(self.ctx, batch_size))

    def rollback(self) -> str:
        """Undo the migration from whatever state it is in; returns what was done."""
        return self._step("rollback", lambda: rollback.run(self.ctx))

    def cleanup(self, approved_by: str) -> list[str]:
        return self._step("cleanup", lambda: cleanup.run(self.ctx, approved_by))

    def resolve_subscribers(self) -> list[str]:
        """Settle a swap left prepared on a subscriber by a crash (see tablemig.lifecycle.logical)."""
        return subscribers.resolve(self.ctx)

    # -- what the checklist and the command line read -------------------------------------
    def plan(self) -> TablePlan:
        """A new plan of the table as the database has it now (read-only)."""
        return self.ctx.plan()

    @property
    def last_plan(self) -> TablePlan | None:
        """The plan this migration made last (None before any)."""
        return self.ctx.last_plan

    def plan_for_state(self, m: State) -> TablePlan:
        """A plan for the live table as it is after the swap, without counting rows."""
        return prune.plan_for_state(self.ctx, m)

    def state(self) -> State | None:
        """The table's state row as the database holds it (a dry run changes nothing)."""
        return self.ctx.store.stored()

    @property
    def table(self) -> str:
        return self.ctx.table

    @property
    def recorder(self) -> Recorder:
        return self.ctx.recorder

    @property
    def timings(self) -> dict[str, float]:
        return self.ctx.timings

    @property
    def swap_result(self) -> SwapResult | None:
        return self.ctx.results.swap

    @property
    def verify_result(self) -> VerifyResult | None:
        return self.ctx.results.verify

    @property
    def backfill_samples(self) -> list[dict[str, Any]]:
        return self.ctx.results.backfill_samples

    @property
    def subscribers(self) -> list[Subscriber]:
        return self.ctx.subscribers

    @property
    def pacer(self) -> Pacer:
        return self.ctx.pacer

    @pacer.setter
    def pacer(self, pacer: Pacer) -> None:
        self.ctx.pacer = pacer

    @property
    def parallel_min_rows(self) -> int:
        return self.ctx.parallel_min_rows

    @parallel_min_rows.setter
    def parallel_min_rows(self, rows: int) -> None:
        self.ctx.parallel_min_rows = rows

    @property
    def segment_min_rows(self) -> int:
        return self.ctx.segment_min_rows

    @segment_min_rows.setter
    def segment_min_rows(self, rows: int) -> None:
        self.ctx.segment_min_rows = rows

    def close(self) -> None:
        self.ctx.close()

    def __enter__(self) -> Migration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["FORWARD", "Migration"]
