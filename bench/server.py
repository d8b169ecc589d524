"""The server under test: a durable `tablemig.sandbox.cluster` (primary + streaming standby) the
bench starts itself, or a server given with `--reuse-dsn`; and what the bench does on it
(database copies, checkpoints, WAL positions, scheduling priority)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tablemig.pg.binaries import PgBin, find_pg_bin
from tablemig.pg.connect import connect
from tablemig.sandbox.cluster import Sandbox, start_sandbox

from .proc import log

APP = "tablemig-bench"
SETTINGS_SHOWN = ("server_version", "fsync", "full_page_writes", "synchronous_commit",
                  "wal_compression", "wal_level", "shared_buffers", "maintenance_work_mem",
                  "work_mem", "max_wal_size", "checkpoint_timeout", "autovacuum",
                  "max_parallel_maintenance_workers", "max_parallel_workers_per_gather")


@dataclass(frozen=True)
class Target:
    """Where the bench runs: the primary's admin DSN, the standby's (None: single site), the
    client tools, the sandbox when the bench started one, and an autocommit admin connection."""

    admin_dsn: str
    standby_dsn: str | None
    pg_bin: PgBin
    sandbox: Sandbox | None
    conn: psycopg.Connection[Any]

    def dsn(self, db: str) -> str:
        """The primary's DSN for database `db`."""
        return dsn_for(self.admin_dsn, db)

    def standby(self, db: str) -> str | None:
        """The standby's DSN for database `db` (None without a standby)."""
        return dsn_for(self.standby_dsn, db) if self.standby_dsn else None


def durable_conf(shared_buffers: str, autovacuum: bool) -> dict[str, str]:
    """Production-like settings: every commit and page write durable."""
    return {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on",
            "wal_compression": "off", "shared_buffers": shared_buffers,
            "maintenance_work_mem": "512MB", "max_wal_size": "8GB",
            "checkpoint_timeout": "30min", "log_checkpoints": "on",
            "autovacuum": "on" if autovacuum else "off"}


def dsn_for(dsn: str, dbname: str) -> str:
    """`dsn` with another database."""
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    params["dbname"] = dbname
    return make_conninfo("", **params)


@contextlib.contextmanager
def open_target(*, reuse_dsn: str | None, reuse_standby_dsn: str | None, sandbox_dir: str | None,
                shared_buffers: str, autovacuum: bool, keep: bool, facts: dict[str, Any]
                ) -> Iterator[Target]:
    """The server for this run, described into `facts`. A sandbox started here is stopped
    at the end (kept with `keep` after a run that did not fail; its logs kept after one that
    did)."""
    if reuse_dsn:
        conn = connect(reuse_dsn, application_name=APP)
        facts.update(kind="reused", dsn=reuse_dsn, standby_dsn=reuse_standby_dsn)
        try:
            yield Target(reuse_dsn, reuse_standby_dsn, find_pg_bin(), None, conn)
        finally:
            conn.close()
        return
    root = Path(sandbox_dir or f"/tmp/tablemig-bench-{os.getpid()}")
    t0 = time.perf_counter()
    log(f"starting a durable sandbox (primary + standby) at {root} ...")
    sb = start_sandbox(root, extra_conf=durable_conf(shared_buffers, autovacuum))
    log(f"sandbox up in {time.perf_counter() - t0:.1f} s: {sb.active_dsn}")
    facts.update(kind="sandbox", root=str(root), dsn=sb.active_dsn, standby_dsn=sb.passive_dsn,
                 start_seconds=round(time.perf_counter() - t0, 1))
    failed = True
    conn = connect(sb.active_dsn, application_name=APP)
    try:
        yield Target(sb.active_dsn, sb.passive_dsn, sb.pg_bin, sb, conn)
        failed = False
    finally:
        conn.close()
        if keep and not failed:
            log(f"sandbox kept at {sb.root}: --reuse-dsn '{sb.active_dsn}' --reuse-standby-dsn "
                f"'{sb.passive_dsn}'; stop it with `.venv/bin/tablemig sandbox stop --dir {sb.root}`")
        else:
            log("stopping the sandbox ...")
            sb.stop(keep_logs=failed)
            if failed:
                log(f"server logs kept in {sb.root / 'logs'}")


def scalar(conn: psycopg.Connection[Any], query: sql.Composed | sql.SQL | str,
           params: tuple[Any, ...] | None = None) -> Any:
    """The first column of the first row (None without a row)."""
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def wal_lsn(t: Target) -> str:
    """The primary's current WAL insert position."""
    return str(scalar(t.conn, "SELECT pg_current_wal_insert_lsn()::text"))


def wal_since(t: Target, lsn: str) -> int:
    """WAL bytes written since `lsn`, by every session of the cluster."""
    return int(scalar(t.conn, "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s::pg_lsn)", (lsn,)))


def lsn_diff(t: Target, later: str, earlier: str) -> int:
    """Bytes of WAL between two positions."""
    return int(scalar(t.conn, "SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (later, earlier)))


def standby_caught_up(t: Target, timeout_s: float = 60) -> float:
    """Wait until every standby has replayed all WAL written so far (the copy, the last run):
    its replay must not compete for the CPUs with the run that follows. Returns the seconds."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if scalar(t.conn, "SELECT coalesce(bool_and(replay_lsn >= pg_current_wal_insert_lsn()), true)"
                          " FROM pg_stat_replication"):
            break
        time.sleep(0.01)
    return time.perf_counter() - t0


def checkpoint(t: Target) -> float:
    """CHECKPOINT; returns its seconds."""
    t0 = time.perf_counter()
    t.conn.execute("CHECKPOINT")
    return time.perf_counter() - t0


def server_settings(t: Target) -> dict[str, str]:
    """The settings that decide what the figures mean."""
    return {k: str(scalar(t.conn, sql.SQL("SHOW {}").format(sql.Identifier(k)))) for k in SETTINGS_SHOWN}


def drop_database(t: Target, db: str) -> None:
    """DROP DATABASE IF EXISTS, ending its sessions."""
    t.conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))


def copy_database(t: Target, src: str, db: str) -> float:
    """An identical copy of `src` (files copied: same pages, hint bits, visibility map and
    statistics); returns its seconds (reported, never part of a measured figure)."""
    drop_database(t, db)
    t0 = time.perf_counter()
    strategy: sql.Composable = sql.SQL(" STRATEGY file_copy")
    for attempt in range(60):
        try:
            t.conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}{}").format(
                sql.Identifier(db), sql.Identifier(src), strategy))
            break
        except psycopg.errors.SyntaxError:  # server older than 15: no STRATEGY
            strategy = sql.SQL("")
        except psycopg.errors.ObjectInUse:
            # a session still in the source (one just closed, or an autovacuum worker the
            # server did not stop within its 5 s on a busy machine): it ends soon
            if attempt == 59:
                raise
            time.sleep(1)
    return time.perf_counter() - t0


def sessions_gone(t: Target, db: str, timeout_s: float = 60) -> None:
    """Wait until no session but the bench's admin connection is in `db`. A backend writes
    its pending statistics before it leaves pg_stat_activity, so from then on the
    cumulative statistics hold everything the run did."""
    deadline = time.monotonic() + timeout_s
    while scalar(t.conn, "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                         " AND pid <> pg_backend_pid()", (db,)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"sessions still connected to {db} after {timeout_s} s")
        time.sleep(0.02)


def boost(sandbox: Sandbox) -> str:
    """Run this process and the primary's server processes (backends forked later inherit
    it from the postmaster) before anything else on the machine: real-time scheduling
    (SCHED_FIFO, lowest real-time priority; the kernel still leaves 5 % of each second to
    the rest), else nice -20. A timed run then waits less for a CPU, so the wall times the
    smoke reports are closer to a quiet machine's. The standby keeps its priority: it replays
    in the background. Needs root or CAP_SYS_NICE; returns what was done ("" when nothing
    could be)."""
    pm = sandbox.postmaster_pid("active")
    if pm is None:
        return ""
    try:
        children = [int(p) for p in Path(f"/proc/{pm}/task/{pm}/children").read_text().split()]
    except (OSError, ValueError):
        children = []
    pids = [0, pm, *children]  # 0: this process (its threads, started later, inherit it)

    def fifo(pid: int) -> None:
        os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(1))

    def nice(pid: int) -> None:
        os.setpriority(os.PRIO_PROCESS, pid, -20)

    for how, apply in (("SCHED_FIFO", fifo), ("nice -20", nice)):
        try:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):  # a child that exited meanwhile
                    apply(pid)
        except OSError:  # not permitted
            continue
        return how
    return ""
