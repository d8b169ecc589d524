"""A failed step leaves a stated state: the error is recorded in the table's state row
(`migration_state.last_error`) and the audit log, and the error the DBA reads says where
the migration stands and how to go on: rerun to resume, or roll back.

The driver runs every step through `recorded`; the outermost one records (a step run by
another step, such as prune by rollback, is recorded once, by the outer step). A
successful step clears `last_error`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg

from ..errors import TablemigError
from ..pg.connect import redact
from .context import RunContext


class StepFailed(TablemigError):
    """A step failed part-way; its transaction was rolled back, earlier steps stand."""


def how_to_go_on(table: str, at: str) -> str:
    """What to do after a failure with the migration in state `at`."""
    return (f"the migration of {table} stands at state {at} (recorded in table_migration.migration_state."
            f"last_error): fix the cause and rerun the same command or plan to resume, or undo it: "
            f"tablemig rollback --execute --dsn DSN --table {table}")


def _record(ctx: RunContext, step: str, exc: BaseException) -> TablemigError | None:
    """Record `exc` in the state row; returns the error to raise instead (None: `exc` as is)."""
    conn = ctx.conn
    if conn.closed or conn.broken:
        return None
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.rollback()  # a transaction the failure left open (autocommit connections have none)
    m = ctx.state()
    if m is None or (m.finished and step not in ("rollback", "cleanup")):
        return None  # nothing of a migration stands: the error says all
    if isinstance(exc, TablemigError):
        problem, fix = exc.problem, exc.fix
    else:
        assert isinstance(exc, psycopg.Error)
        diag = exc.diag
        problem = (f"step {step} of {ctx.table} failed: {diag.message_primary or str(exc).strip()}"
                   + (f" ({diag.message_detail})" if diag.message_detail else ""))
        fix = ""
    with ctx.ex.transaction():
        ctx.store.update(last_error=redact(f"{step}: {problem}"))
        ctx.store.log(step, "failed", details={"error": redact(problem), "fix": redact(fix)})
    go_on = how_to_go_on(ctx.table, m.state)
    if isinstance(exc, TablemigError):
        return type(exc)(problem, f"{fix}; {go_on}" if fix else go_on)
    return StepFailed(problem, go_on)


def _clear(ctx: RunContext) -> None:
    if ctx.store.installed():
        ctx.store.clear_error()


class Steps:
    """Which step of a run is running (the outermost one records a failure)."""

    def __init__(self) -> None:
        self.running: str | None = None

    @contextlib.contextmanager
    def recorded(self, ctx: RunContext, step: str) -> Iterator[None]:
        """Run a step: on an error (a refusal or a database error, not a lost connection)
        record it and raise it with how to go on; on success clear last_error."""
        outer = self.running is None
        if outer:
            self.running = step
        try:
            yield
        except (TablemigError, psycopg.Error) as exc:
            if not outer or isinstance(exc, psycopg.OperationalError):
                raise
            replacement = None
            with contextlib.suppress(psycopg.Error):
                replacement = _record(ctx, step, exc)
            if replacement is None:
                raise
            raise replacement from exc
        finally:
            if outer:
                self.running = None
        if outer:
            with contextlib.suppress(psycopg.Error):
                _clear(ctx)
