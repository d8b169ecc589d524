"""Autovacuum workers that hold a lock a migration step needs.

An autovacuum worker holds SHARE UPDATE EXCLUSIVE on the table it vacuums, which conflicts
with every lock a step takes (SHARE ROW EXCLUSIVE, ACCESS EXCLUSIVE). PostgreSQL cancels an
ordinary autovacuum for a waiter, but only once the waiter has waited `deadlock_timeout`
(1 s by default): with a shorter `lock_timeout` every attempt gives up first. And it never
cancels an anti-wraparound vacuum ("(to prevent wraparound)" in its query). So the lock
helper (tablemig.pg.locking), after an attempt failed:

* ordinary autovacuum: cancels it with pg_cancel_backend when the role may (a superuser; on
  PostgreSQL 18 also a member of pg_signal_autovacuum_worker; before 18 no other role may
  signal an autovacuum worker), then retries at once; otherwise makes one attempt wait
  `autovacuum_lock_wait` (longer than deadlock_timeout), so the server cancels it for us.
  The price: the application's writes queue behind that attempt for up to that long.
* anti-wraparound vacuum: waits for it to finish, without queueing a lock request, at most
  `autovacuum_wraparound_wait` seconds, reporting its progress from pg_stat_progress_vacuum;
  then fails naming it. Cancelling it would only postpone work the server must do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from ..errors import LockNotAcquired
from .names import QualifiedName
from .statements import Statements, statements

log = logging.getLogger("tablemig.autovacuum")

WRAPAROUND_MARK = "(to prevent wraparound)"
ANNOUNCE_EVERY_S = 30.0


@dataclass(frozen=True)
class AutovacuumPolicy:
    """What the lock helper does about an autovacuum worker holding a lock it needs."""

    cancel: bool = True  # pg_cancel_backend, when the role may
    # lock_timeout of the attempt that lets the server cancel the worker itself (it must
    # exceed deadlock_timeout); "0" never makes such an attempt
    lock_wait: str = "2s"
    wraparound_wait_s: float = 600.0  # how long to wait for an anti-wraparound vacuum


@dataclass(frozen=True)
class Vacuum:
    """An autovacuum worker holding a lock on one of the tables, and its progress."""

    pid: int
    query: str
    seconds: float
    phase: str | None  # pg_stat_progress_vacuum's, or "analyze: " and pg_stat_progress_analyze's
    blocks_total: int | None  # heap blocks to scan (vacuum) or to sample (analyze)
    blocks_done: int | None

    @property
    def wraparound(self) -> bool:
        return WRAPAROUND_MARK in self.query

    def progress(self) -> str:
        if not self.phase:
            return "no progress reported yet"
        if self.blocks_total:
            done = self.blocks_done or 0
            return (f"{self.phase}, {done:,} of {self.blocks_total:,} blocks "
                    f"({100 * done / self.blocks_total:.0f} %)")
        return self.phase

    def describe(self) -> str:
        return f"pid {self.pid} {self.query!r}, running {self.seconds:.0f} s, {self.progress()}"

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "query": self.query, "wraparound": self.wraparound,
                "seconds": round(self.seconds, 1), "progress": self.progress()}


def holding(conn: psycopg.Connection[Any] | Statements, tables: list[QualifiedName]) -> list[Vacuum]:
    """Autovacuum workers of this database holding a lock on one of `tables`.

    A role without pg_read_all_stats (pg_monitor) sees neither the backend type nor the
    query of other roles' processes: a lock holder of this database without any role is
    then taken for the autovacuum worker it must be, and it is anti-wraparound when the
    table is older than its autovacuum_freeze_max_age (or the multixact one), as the
    server decides when it launches the worker."""
    rows = statements(conn).read("""
        SELECT a.pid, min(a.query), extract(epoch FROM now() - min(a.xact_start))::float8,
               min(coalesce(p.phase, 'analyze: ' || z.phase)),
               min(coalesce(p.heap_blks_total, z.sample_blks_total)),
               min(coalesce(p.heap_blks_scanned, z.sample_blks_scanned)),
               bool_or(age(c.relfrozenxid) > coalesce(
                           (SELECT o.option_value::bigint FROM pg_options_to_table(c.reloptions) o
                             WHERE o.option_name = 'autovacuum_freeze_max_age'),
                           current_setting('autovacuum_freeze_max_age')::bigint)
                       OR mxid_age(c.relminmxid) > coalesce(
                           (SELECT o.option_value::bigint FROM pg_options_to_table(c.reloptions) o
                             WHERE o.option_name = 'autovacuum_multixact_freeze_max_age'),
                           current_setting('autovacuum_multixact_freeze_max_age')::bigint))
          FROM pg_stat_activity a
          JOIN pg_locks l ON l.pid = a.pid AND l.granted AND l.locktype = 'relation'
                         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          JOIN pg_class c ON c.oid = l.relation
          LEFT JOIN pg_stat_progress_vacuum p ON p.pid = a.pid
          LEFT JOIN pg_stat_progress_analyze z ON z.pid = a.pid
         WHERE (a.backend_type = 'autovacuum worker' OR (a.backend_type IS NULL AND a.usesysid IS NULL))
           AND l.relation IN (SELECT to_regclass(x) FROM unnest(%s::text[]) AS x)
         GROUP BY a.pid ORDER BY a.pid""", ([str(t) for t in tables],)).fetchall()
    out = []
    for pid, query, seconds, phase, total, done, old in rows:
        text = str(query or "")
        if not text.startswith("autovacuum:"):  # hidden from this role
            text = ("autovacuum worker (details hidden: the role lacks pg_read_all_stats)"
                    + (f" {WRAPAROUND_MARK}" if old else ""))
        out.append(Vacuum(int(pid), text, float(seconds or 0), phase, total, done))
    return out


def cancel(conn: psycopg.Connection[Any] | Statements, vacuums: list[Vacuum]) -> tuple[list[int], str]:
    """pg_cancel_backend for each ordinary autovacuum: (pids cancelled, why not, if refused)."""
    st = statements(conn)
    done: list[int] = []
    for v in vacuums:
        if v.wraparound:
            continue
        try:
            with st.transaction():
                row = st.run("SELECT pg_cancel_backend(%s)", (v.pid,), planned=[(False,)]).fetchone()
        except psycopg.errors.InsufficientPrivilege as exc:
            return done, " ".join(x for x in (exc.diag.message_primary, exc.diag.message_detail) if x)
        if row and row[0]:
            done.append(v.pid)
    return done, ""


def wait_gone(conn: psycopg.Connection[Any] | Statements, tables: list[QualifiedName], pids: list[int],
              timeout_s: float = 10.0) -> None:
    """Until the cancelled workers let go of the tables (they stop at their next check)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and {v.pid for v in holding(conn, tables)} & set(pids):
        time.sleep(0.05)


def setting_ms(conn: psycopg.Connection[Any] | Statements, name: str, value: str | None = None) -> float:
    """A duration setting in milliseconds: the server's current `name`, or `value` read as
    the server reads that setting (so "200ms", "2s" and a bare number mean what they do there)."""
    st = statements(conn)
    with st.transaction(force_rollback=True):
        if value is not None:
            st.run("SELECT set_config(%s, %s, true)", (name, value))
        row = st.read("SELECT setting::float8 * CASE unit WHEN 's' THEN 1000 WHEN 'min' THEN 60000"
                           " ELSE 1 END FROM pg_settings WHERE name = %s", (name,)).fetchone()
    return float(row[0]) if row else 0.0


def wait_for_wraparound(conn: psycopg.Connection[Any] | Statements, tables: list[QualifiedName], what: str,
                        limit_s: float, on_progress: Callable[[Vacuum], None] | None = None
                        ) -> tuple[float, list[Vacuum]]:
    """Wait (queueing no lock request) until no anti-wraparound vacuum holds `tables`, at most
    `limit_s`: (seconds waited, the vacuums still running — empty when they finished)."""
    t0 = time.monotonic()
    next_notice = 0.0
    while True:
        running = [v for v in holding(conn, tables) if v.wraparound]
        waited = time.monotonic() - t0
        if not running or waited >= limit_s:
            return waited, running
        if waited >= next_notice:
            next_notice = waited + ANNOUNCE_EVERY_S
            for v in running:
                log.warning("%s: waiting for the anti-wraparound autovacuum %s (at most %.0f s)", what,
                            v.describe(), limit_s)
                if on_progress:
                    on_progress(v)
        time.sleep(min(1.0, max(0.05, limit_s - waited)))


def clear(conn: psycopg.Connection[Any] | Statements, tables: list[QualifiedName], what: str) -> list[int]:
    """Before taking locks where no wait is allowed (a subscriber's part of the swap, under
    the active site's locks): cancel the ordinary autovacuum workers holding `tables`, when
    the role may; an anti-wraparound one fails the attempt, named. Returns the pids cancelled."""
    found = holding(conn, tables)
    running = [v for v in found if v.wraparound]
    if running:
        raise LockNotAcquired(f"{what}: an anti-wraparound autovacuum holds the lock on "
                              f"{', '.join(map(str, tables))}: " + "; ".join(v.describe() for v in running)
                              + "; nothing was changed", wraparound_fix(AutovacuumPolicy().wraparound_wait_s))
    pids, _ = cancel(conn, found)
    if pids:
        wait_gone(conn, tables, pids)
    return pids


def wraparound_fix(limit_s: float) -> str:
    return ("let the anti-wraparound vacuum finish (it protects the database from transaction ID "
            "wraparound and is never cancelled for a waiter; its progress is in pg_stat_progress_vacuum), "
            "then rerun: the migration resumes at this step; or raise migration_config "
            f"autovacuum_wraparound_wait (now {limit_s:.0f} s). Next time, VACUUM (FREEZE) the table in a "
            "quiet hour before the migration, so that no such vacuum falls due during it")


def cannot_cancel_fix(reason: str) -> str:
    return ("an autovacuum worker holds the table's lock and was not cancelled"
            + (f" ({reason})" if reason else "") + ": grant the role pg_signal_autovacuum_worker "
            "(PostgreSQL 18 or newer) or run as a superuser, or set migration_config autovacuum_lock_wait "
            "above the server's deadlock_timeout (the server then cancels the worker; the application "
            "queues behind that one attempt for up to that long), or wait for it to finish and rerun")
