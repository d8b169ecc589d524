"""Taking a table lock without stalling the application: bounded waits, retries, blockers.

A waiting ACCESS EXCLUSIVE (or SHARE ROW EXCLUSIVE) request blocks every later query on the
table, so no attempt may wait longer than `lock_timeout`; a failed attempt backs off with
jitter and tries again, a bounded number of times, and the sessions holding or waiting for
the locks are named. Used by the capture, the switch to direct capture, the swap, prune
and rollback.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from .errors import LockNotAcquired
from .names import QualifiedName


def blockers(conn: psycopg.Connection[Any], tables: list[QualifiedName],
             older_than_s: float) -> list[dict[str, Any]]:
    """Sessions holding locks on `tables`, and transactions older than `older_than_s`
    (they would make the swap's ACCESS EXCLUSIVE request wait). Only sessions of this
    database: relation OIDs in pg_locks are per database."""
    rows = conn.execute("""
        SELECT DISTINCT a.pid, a.usename, a.application_name, a.state,
               round(extract(epoch FROM now() - a.xact_start)::numeric, 1) AS xact_seconds,
               left(a.query, 200) AS query,
               EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.granted
                         AND l.database = a.datid
                         AND l.relation = ANY(%s::regclass[])) AS holds_lock
          FROM pg_stat_activity a
         WHERE a.pid <> pg_backend_pid() AND a.xact_start IS NOT NULL
           AND a.backend_type = 'client backend'
           AND a.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND (EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.granted
                          AND l.database = a.datid
                          AND l.relation = ANY(%s::regclass[]))
                OR now() - a.xact_start > make_interval(secs => %s))
         ORDER BY xact_seconds DESC""",
                        ([str(t) for t in tables], [str(t) for t in tables], older_than_s))
    cols = ["pid", "user", "application", "state", "xact_seconds", "query", "holds_lock"]
    return [dict(zip(cols, r, strict=True)) for r in rows.fetchall()]


def with_lock_retries(conn: psycopg.Connection[Any], what: str, tables: list[QualifiedName],
                      body: Callable[[float], dict[str, Any]], *, lock_timeout: str,
                      attempts: int, statement_timeout: str = "30s",
                      long_xact_seconds: float = 60, base_delay: float = 0.2,
                      mode: str = "ACCESS EXCLUSIVE",
                      on_attempt: Callable[[dict[str, Any]], None] | None = None,
                      watch: list[QualifiedName] | None = None, report_seen: bool = False,
                      durable: bool = False,
                      ) -> tuple[dict[str, Any], int, list[dict[str, Any]]]:
    """Run `body(locked_at)` in a transaction that first locks `tables` in `mode`.

    Each attempt waits at most `lock_timeout` for the locks; failures back off
    exponentially with jitter. After `attempts` failures, LockNotAcquired names the
    blockers seen (holders of locks on `tables` and on `watch`: relations `body` locks
    itself). `body` runs with the locks held and returns what to record. `durable` commits
    with synchronous_commit = on whatever the session's setting (the swap: it must survive
    a server crash once reported, and precede a subscriber's COMMIT PREPARED)."""
    log: list[dict[str, Any]] = []
    for attempt in range(1, attempts + 1):
        # With report_seen (the swap) every attempt records the sessions seen before it, also
        # old transactions that do not block; otherwise (the query costs milliseconds) only
        # a failed attempt asks, after the fact: the holder of a lock it waited for is still there.
        seen = blockers(conn, tables + (watch or []), long_xact_seconds) if report_seen else None
        t0 = time.perf_counter()
        try:
            with conn.transaction():
                with conn.pipeline():  # the timeouts and the lock in one round trip
                    conn.execute("SELECT set_config('lock_timeout', %s, true),"
                                 " set_config('statement_timeout', %s, true)"
                                 + (", set_config('synchronous_commit', 'on', true)" if durable else ""),
                                 (lock_timeout, statement_timeout))
                    conn.execute(sql.SQL("LOCK TABLE {} IN {} MODE").format(
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
                seen = blockers(conn, tables + (watch or []), long_xact_seconds)
            entry = {"attempt": attempt, "outcome": "lock_timeout", "wait_ms": wait_ms, "blockers": seen}
            log.append(entry)
            if on_attempt:
                on_attempt(entry)
            if attempt < attempts:
                time.sleep(min(5.0, base_delay * 2 ** (attempt - 1)) * (0.5 + random.random()))
    last = log[-1]["blockers"] if log else []
    who = "; ".join(f"pid {b['pid']} ({b['user']}, {b['state']}, transaction {b['xact_seconds']} s"
                    f", {'holds a lock' if b['holds_lock'] else 'old snapshot'}): {b['query']!r}"
                    for b in last[:5]) or "no blocker visible at the last attempt"
    raise LockNotAcquired(
        f"{what}: could not lock {', '.join(map(str, tables))} within {lock_timeout} in "
        f"{attempts} attempts; nothing was changed. Blockers: {who}",
        "wait for those sessions to finish (or end them: SELECT pg_terminate_backend(pid)), "
        "then rerun; the migration resumes at this step")
