"""ANALYZE of the new tables: the planner needs their statistics from the swap on.

A small table is analyzed by the index step in its own transaction (`now`). A large one
on another connection, started as soon as its indexes exist (an expression index gets its
statistics too): it overlaps the replay and verify's checksums (ANALYZE's SHARE UPDATE
EXCLUSIVE lets both go on) and takes no time of its own in the core; verify waits for it
(`Analysis.join`).
"""

from __future__ import annotations

import threading

from psycopg import sql

from .context import RunContext
from .copying import forked
from .executor import Executor
from .state import State


def analyze_sql(m: State) -> list[sql.Composable]:
    return [sql.SQL("ANALYZE {}").format(table.ident()) for table, _ in m.new_tables()]


class Analysis:
    """The ANALYZE of a run's new tables (see the module docstring)."""

    def __init__(self) -> None:
        self.done = False
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def now(self, ex: Executor, m: State) -> None:
        """ANALYZE on `ex`'s connection (a small table's, in the index step's transaction:
        its statistics commit with its indexes)."""
        for stmt in analyze_sql(m):
            ex.run(stmt)
        self.done = True

    def in_background(self, ctx: RunContext, m: State) -> None:
        """ANALYZE on a connection of its own (see the module docstring); once."""
        if self._thread is not None or self.done:
            return
        statements = analyze_sql(m)
        self._error = None

        def run() -> None:
            try:
                with forked(ctx.ex, ctx.dsn, "tablemig-analyze", "analyze") as ex:
                    for stmt in statements:
                        ex.run(stmt)
            except BaseException as exc:  # noqa: BLE001 - re-raised by join()
                self._error = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def join(self, *, raise_error: bool = True) -> None:
        """Wait for the background ANALYZE; its error, if any, is raised here."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self.done = self._error is None
        if self._error is not None and raise_error:
            error, self._error = self._error, None
            raise error


def of(ctx: RunContext) -> Analysis:
    """The run's analysis (made on first use)."""
    if ctx.analysis is None:
        ctx.analysis = Analysis()
    return ctx.analysis
