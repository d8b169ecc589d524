"""Taking a table lock without stalling the application: bounded waits, retries, blockers.

A waiting ACCESS EXCLUSIVE (or SHARE ROW EXCLUSIVE) request blocks every later query on the
table, so no attempt may wait longer than `lock_timeout`; a failed attempt backs off with
jitter and tries again, a bounded number of times, and the sessions holding or waiting for
the locks are named. An autovacuum worker holding the lock is handled as
tablemig.pg.autovacuum describes: cancelled, left for the server to cancel, or (anti-wraparound)
waited out for a bounded time. Every lock a step takes goes through `with_lock_retries`:
the capture, PRE-2.4's rehearsal, the switch to direct capture, the swap and the swap back,
prune, rollback, and the rehearsals of EX-4.2 and RB-2.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from ..errors import LockNotAcquired
from . import autovacuum
from .autovacuum import AutovacuumPolicy
from .names import QualifiedName
from .statements import Statements, statements

log = logging.getLogger("tablemig.locking")


def blockers(conn: psycopg.Connection[Any] | Statements, tables: list[QualifiedName],
             older_than_s: float) -> list[dict[str, Any]]:
    """Sessions holding locks on `tables` (autovacuum workers included), and client
    transactions older than `older_than_s` (they would make the swap's ACCESS EXCLUSIVE
    request wait). Only sessions of this database: relation OIDs in pg_locks are per database."""
    rows = statements(conn).read("""
        SELECT pid, usename, application_name, state, xact_seconds, query, holds_lock, backend_type
          FROM (SELECT a.pid, a.usename, a.application_name, a.state, a.backend_type,
                       round(extract(epoch FROM now() - a.xact_start)::numeric, 1) AS xact_seconds,
                       left(a.query, 200) AS query, a.xact_start,
                       EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.granted
                                 AND l.database = (SELECT oid FROM pg_database
                                                    WHERE datname = current_database())
                                 AND l.relation = ANY(%s::regclass[])) AS holds_lock
                  FROM pg_stat_activity a
                 -- a role without pg_read_all_stats sees other roles' sessions without type,
                 -- transaction start or database (NULL): lock holders still count
                 WHERE a.pid <> pg_backend_pid()
                   AND (a.backend_type IN ('client backend', 'autovacuum worker')
                        AND a.xact_start IS NOT NULL
                        AND a.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
                        OR a.backend_type IS NULL)) s
         WHERE holds_lock OR (backend_type = 'client backend'
                              AND now() - xact_start > make_interval(secs => %s))
         ORDER BY xact_seconds DESC""", ([str(t) for t in tables], older_than_s))
    cols = ["pid", "user", "application", "state", "xact_seconds", "query", "holds_lock", "backend_type"]
    return [dict(zip(cols, r, strict=True)) for r in rows.fetchall()]


def _who(found: list[dict[str, Any]]) -> str:
    return "; ".join(
        (f"pid {b['pid']} (autovacuum worker, {b['xact_seconds']} s): {b['query']!r}"
         if b.get("backend_type") == "autovacuum worker" else
         f"pid {b['pid']} ({b['user'] or 'no role: an autovacuum worker'}, details hidden: the role "
         "lacks pg_read_all_stats)" if b.get("backend_type") is None else
         f"pid {b['pid']} ({b['user']}, {b['state']}, transaction {b['xact_seconds']} s"
         f", {'holds a lock' if b['holds_lock'] else 'old snapshot'}): {b['query']!r}")
        for b in found[:5]) or "no blocker visible at the last attempt"


class _Autovacuum:
    """What one run of `with_lock_retries` does about autovacuum workers (see tablemig.pg.autovacuum)."""

    def __init__(self, conn: Statements, what: str, tables: list[QualifiedName],
                 policy: AutovacuumPolicy) -> None:
        self.conn, self.what, self.tables, self.policy = conn, what, tables, policy
        self.wraparound_left = policy.wraparound_wait_s
        self.refused = ""  # why the role may not cancel a worker, once it was refused

    def handle(self, entry: dict[str, Any], lock_timeout: str, last: bool) -> str | None:
        """After a failed attempt: the lock_timeout of the next attempt, or None (no
        autovacuum involved, or no attempt follows: back off as usual). Raises
        LockNotAcquired for an anti-wraparound vacuum still running after the bounded wait."""
        found = autovacuum.holding(self.conn, self.tables)
        if not found:
            return None
        entry["autovacuum"] = [v.as_dict() for v in found]
        if last:
            return None
        wraparound = [v for v in found if v.wraparound]
        if wraparound:
            samples = entry.setdefault("wraparound_progress", [])
            waited, running = autovacuum.wait_for_wraparound(
                self.conn, self.tables, self.what, max(0.0, self.wraparound_left),
                on_progress=lambda v: samples.append(v.as_dict()))
            self.wraparound_left -= waited
            entry["waited_for_wraparound_s"] = round(waited, 1)
            if running:
                raise LockNotAcquired(
                    f"{self.what}: an anti-wraparound autovacuum holds the lock on "
                    f"{', '.join(map(str, self.tables))} and was still running after "
                    f"{self.policy.wraparound_wait_s:.0f} s of waiting: "
                    + "; ".join(v.describe() for v in running) + "; nothing was changed",
                    autovacuum.wraparound_fix(self.policy.wraparound_wait_s))
            return lock_timeout
        if self.policy.cancel and not self.refused:
            pids, self.refused = autovacuum.cancel(self.conn, found)
            if pids:
                entry["autovacuum_cancelled"] = pids
                log.warning("%s: cancelled the autovacuum holding the lock (%s)", self.what,
                            "; ".join(v.describe() for v in found))
                autovacuum.wait_gone(self.conn, self.tables, pids)
                return lock_timeout
            if self.refused:
                entry["autovacuum_cancel_refused"] = self.refused
        wait_ms = autovacuum.setting_ms(self.conn, "lock_timeout", self.policy.lock_wait)
        deadlock_ms = autovacuum.setting_ms(self.conn, "deadlock_timeout")
        if wait_ms > deadlock_ms:
            # the server cancels an ordinary autovacuum for a waiter after deadlock_timeout
            entry["next_attempt_lock_timeout"] = self.policy.lock_wait
            why = "this role may not cancel it" if self.refused else "autovacuum_cancel is off"
            log.warning("%s: an autovacuum holds the lock and %s: the next attempt waits up to %s "
                        "(deadlock_timeout is %.0f ms), so that the server cancels it", self.what, why,
                        self.policy.lock_wait, deadlock_ms)
            return self.policy.lock_wait
        entry["autovacuum_left_running"] = (f"autovacuum_lock_wait {self.policy.lock_wait} does not exceed "
                                            f"deadlock_timeout ({deadlock_ms:.0f} ms)")
        return None

    def fix(self, last: dict[str, Any]) -> str | None:
        if any(v["wraparound"] for v in last.get("autovacuum", [])):
            return autovacuum.wraparound_fix(self.policy.wraparound_wait_s)
        if "autovacuum" in last and not last.get("autovacuum_cancelled"):
            return autovacuum.cannot_cancel_fix(self.refused or ("" if self.policy.cancel
                                                                 else "autovacuum_cancel is off"))
        return None


def with_lock_retries(conn: psycopg.Connection[Any] | Statements, what: str, tables: list[QualifiedName],
                      body: Callable[[float], dict[str, Any]], *, lock_timeout: str,
                      attempts: int, statement_timeout: str = "30s",
                      long_xact_seconds: float = 60, base_delay: float = 0.2,
                      mode: str = "ACCESS EXCLUSIVE",
                      on_attempt: Callable[[dict[str, Any]], None] | None = None,
                      watch: list[QualifiedName] | None = None, report_seen: bool = False,
                      durable: bool = False, rehearse: bool = False,
                      autovacuum_policy: AutovacuumPolicy | None = None,
                      ) -> tuple[dict[str, Any], int, list[dict[str, Any]]]:
    """Run `body(locked_at)` in a transaction that first locks `tables` in `mode`.

    Each attempt waits at most `lock_timeout` for the locks; failures back off
    exponentially with jitter. After `attempts` failures, LockNotAcquired names the
    blockers seen (holders of locks on `tables` and on `watch`: relations `body` locks
    itself). An autovacuum worker among the holders is cancelled, left for the server to
    cancel during one longer attempt, or (anti-wraparound) waited out, as
    `autovacuum_policy` says (tablemig.pg.autovacuum). `body` runs with the locks held and
    returns what to record. `durable` commits with synchronous_commit = on whatever the
    session's setting (the swap: it must survive a server crash once reported, and precede
    a subscriber's COMMIT PREPARED); `rehearse` rolls the transaction back instead of
    committing (a rehearsal that proves statements run and changes nothing)."""
    st = statements(conn)
    log: list[dict[str, Any]] = []
    watched = tables + (watch or [])
    vacuums = _Autovacuum(st, what, watched, autovacuum_policy or AutovacuumPolicy())
    timeout = lock_timeout
    for attempt in range(1, attempts + 1):
        # With report_seen (the swap) every attempt records the sessions seen before it, also
        # old transactions that do not block; otherwise (the query costs milliseconds) only
        # a failed attempt asks, after the fact: the holder of a lock it waited for is still there.
        seen = blockers(st, watched, long_xact_seconds) if report_seen else None
        t0 = time.perf_counter()
        try:
            with st.transaction(force_rollback=rehearse):
                with st.pipeline():  # the timeouts and the lock in one round trip
                    st.run(sql.SQL("SELECT set_config('lock_timeout', %s, true),"
                                   " set_config('statement_timeout', %s, true)"
                                   + (", set_config('synchronous_commit', 'on', true)" if durable else "")),
                           (timeout, statement_timeout))
                    st.run(sql.SQL("LOCK TABLE {} IN {} MODE").format(
                        sql.SQL(", ").join(t.ident() for t in tables), sql.SQL(mode)))
                locked_at = time.perf_counter()
                result = body(locked_at)
            hold_ms = (time.perf_counter() - locked_at) * 1000
            entry = {"attempt": attempt, "outcome": "ok", "wait_ms": round((locked_at - t0) * 1000, 1),
                     "hold_ms": round(hold_ms, 1), "blockers": seen or []}
            log.append(entry)
            if on_attempt:
                on_attempt(entry)
            result["lock_hold_ms"] = round(hold_ms, 1)
            return result, attempt, log
        except psycopg.errors.LockNotAvailable:
            wait_ms = round((time.perf_counter() - t0) * 1000, 1)
            if seen is None:
                seen = blockers(st, watched, long_xact_seconds)
            entry = {"attempt": attempt, "outcome": "lock_timeout", "wait_ms": wait_ms, "blockers": seen}
            if timeout != lock_timeout:
                entry["lock_timeout"] = timeout
            log.append(entry)
            try:
                next_timeout = vacuums.handle(entry, lock_timeout, last=attempt == attempts)
            finally:
                if on_attempt:
                    on_attempt(entry)
            timeout = next_timeout or lock_timeout
            if attempt < attempts and next_timeout is None:
                time.sleep(min(5.0, base_delay * 2 ** (attempt - 1)) * (0.5 + random.random()))
    last = log[-1] if log else {}
    raise LockNotAcquired(
        f"{what}: could not lock {', '.join(map(str, tables))} within {lock_timeout} in "
        f"{attempts} attempts; nothing was changed. Blockers: {_who(last.get('blockers', []))}",
        vacuums.fix(last) or "wait for those sessions to finish (or end them: SELECT pg_terminate_backend(pid)), "
        "then rerun; the migration resumes at this step")
