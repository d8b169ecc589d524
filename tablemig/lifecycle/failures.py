"""A failed step leaves a stated state: the error is recorded in the table's state row
(`migration_state.last_error`) and the audit log, and the error the DBA reads says where
the migration stands and how to go on: rerun to resume, or roll back.

Every step method of `tablemig.lifecycle.driver.Migration` is wrapped with `records_failure`; the
outermost one records (a step run by another step, such as prune by rollback, is
recorded once, by the outer step). A successful step clears `last_error`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

import psycopg

from ..errors import TablemigError
from ..pg.connect import redact
from . import state

F = TypeVar("F", bound=Callable[..., Any])


class StepFailed(TablemigError):
    """A step failed part-way; its transaction was rolled back, earlier steps stand."""


class _Host(Protocol):
    conn: psycopg.Connection[Any]

    @property
    def table(self) -> str: ...


def _state_of(host: _Host) -> str | None:
    row = host.conn.execute("SELECT state FROM table_migration.migration_state WHERE table_name = %s",
                            (host.table,)).fetchone() if _installed(host) else None
    return str(row[0]) if row else None


def _installed(host: _Host) -> bool:
    row = host.conn.execute("SELECT to_regclass('table_migration.migration_state') IS NOT NULL").fetchone()
    return bool(row and row[0])


def how_to_go_on(table: str, at: str) -> str:
    """What to do after a failure with the migration in state `at`."""
    return (f"the migration of {table} stands at state {at} (recorded in table_migration.migration_state."
            f"last_error): fix the cause and rerun the same command or plan to resume, or undo it: "
            f"tablemig rollback --execute --dsn DSN --table {table}")


def _record(host: _Host, step: str, exc: BaseException) -> TablemigError | None:
    """Record `exc` in the state row; returns the error to raise instead (None: `exc` as is)."""
    conn = host.conn
    if conn.closed or conn.broken:
        return None
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.rollback()  # a transaction the failure left open (autocommit connections have none)
    at = _state_of(host)
    if at is None or (at in ("rolled_back", "cleaned") and step not in ("rollback", "cleanup")):
        return None  # nothing of a migration stands: the error says all
    if isinstance(exc, TablemigError):
        problem, fix = exc.problem, exc.fix
    else:
        assert isinstance(exc, psycopg.Error)
        diag = exc.diag
        problem = (f"step {step} of {host.table} failed: {diag.message_primary or str(exc).strip()}"
                   + (f" ({diag.message_detail})" if diag.message_detail else ""))
        fix = ""
    with conn.transaction():
        state.update(conn, host.table, last_error=redact(f"{step}: {problem}"))
        state.log(conn, host.table, step, "failed", details={"error": redact(problem), "fix": redact(fix)})
    go_on = how_to_go_on(host.table, at)
    if isinstance(exc, TablemigError):
        return type(exc)(problem, f"{fix}; {go_on}" if fix else go_on)
    return StepFailed(problem, go_on)


def _clear(host: _Host) -> None:
    if _installed(host):
        host.conn.execute("UPDATE table_migration.migration_state SET last_error = NULL"
                          " WHERE table_name = %s AND last_error IS NOT NULL", (host.table,))


def records_failure(step: str) -> Callable[[F], F]:
    """Wrap a step method: on an error (a refusal or a database error, not a lost
    connection) record it and raise it with how to go on; on success clear last_error."""
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            outer = not getattr(self, "_step_running", False)
            self._step_running = True
            try:
                result = fn(self, *args, **kwargs)
            except (TablemigError, psycopg.Error) as exc:
                if not outer or isinstance(exc, psycopg.OperationalError):
                    raise
                replacement = None
                with contextlib.suppress(psycopg.Error):
                    replacement = _record(self, step, exc)
                if replacement is None:
                    raise
                raise replacement from exc
            finally:
                if outer:
                    self._step_running = False
            if outer:
                with contextlib.suppress(psycopg.Error):
                    _clear(self)
            return result
        return cast(F, run)
    return wrap
