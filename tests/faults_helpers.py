"""Helpers for tests/test_faults.py: the CLI as a subprocess, bounded waits, blocker sessions
and the twin-table invariants."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from twin import CUTOFF, diff

from tablemig.lifecycle.state import LOCK_CLASS
from tablemig.pg.connect import connect

T = TypeVar("T")


def migrate_args(dsn: str, *extra: str, batch: int = 500, table: str = "public.events") -> list[str]:
    return ["migrate", "--execute", "--json", "--dsn", dsn, "--table", table, "--date-column", "d", "--cutoff",
            CUTOFF.isoformat(), "--batch-size", str(batch), *extra]


def tablemig(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion (bounded)."""
    return subprocess.run([sys.executable, "-m", "tablemig.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def ok(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = tablemig(*args, timeout=timeout)
    assert proc.returncode == 0, f"tablemig {args[0]} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def final_state(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON summary `migrate` prints on stdout."""
    return cast("dict[str, Any]", json.loads(proc.stdout))


class Harness:
    """`tablemig ...` (or `python -m MODULE ...`: a plan run by pytest) running in the
    background; output goes to files (no pipe can fill up). Leaving the context kills it (by
    its own pid) if it is still running."""

    def __init__(self, workdir: Path, *args: str, module: str = "tablemig.cli.main") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = workdir / "harness.out", workdir / "harness.err"
        self._out, self._err = open(self.out_path, "w"), open(self.err_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=self._out, stderr=self._err,
                                     cwd=workdir, stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a lost terminal would."""
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    @property
    def stderr(self) -> str:
        self._err.flush()
        return self.err_path.read_text()

    @property
    def stdout(self) -> str:
        self._out.flush()
        return self.out_path.read_text()

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._out.close()
        self._err.close()


def wait_for(fn: Callable[[], T], what: str, timeout: float = 60, interval: float = 0.05,
             alive: Harness | None = None) -> T:
    """Poll `fn` until it returns something truthy; fail after `timeout` seconds (or as soon
    as `alive`, a background harness, has exited: it cannot get there any more)."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        if alive is not None and not alive.alive():
            raise AssertionError(f"the harness exited ({alive.proc.returncode}) while waiting for {what}:\n"
                                 f"{alive.stderr[-3000:]}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def scalar(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def state_row(conn: psycopg.Connection[Any], table: str = "public.events") -> dict[str, Any] | None:
    if scalar(conn, "SELECT to_regclass('table_migration.migration_state')") is None:
        return None
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM table_migration.migration_state WHERE table_name = %s",
                           (table,)).fetchone()


def stored_row(conn: psycopg.Connection[Any], table: str = "public.events") -> dict[str, Any]:
    """`table`'s state row, which must be there (the test fails saying so when it is not)."""
    m = state_row(conn, table)
    assert m is not None, f"{table} has no migration state row"
    return m


def lock_holders(conn: psycopg.Connection[Any]) -> list[int]:
    """Backends of this database holding a tablemig table lock (advisory)."""
    rows = conn.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND granted"
                        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                        (LOCK_CLASS,)).fetchall()
    return [r[0] for r in rows]


def harness_backends(conn: psycopg.Connection[Any]) -> list[tuple[int, str]]:
    """Sessions of tablemig runs (main and backfill connections) in this database."""
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name LIKE 'tablemig%' AND pid <> pg_backend_pid()").fetchall()]


def wait_harness_gone(conn: psycopg.Connection[Any], timeout: float = 120) -> None:
    """After the harness died: its sessions end (the table lock with them)."""
    wait_for(lambda: not harness_backends(conn) and not lock_holders(conn),
             "the killed harness's sessions and table lock to go away", timeout=timeout)


class Session:
    """A second client holding something open (a transaction, a lock, a snapshot)."""

    def __init__(self, dsn: str) -> None:
        self.conn = connect(dsn, autocommit=False, application_name="faults-blocker")

    def execute(self, query: str, params: Any = None) -> psycopg.Cursor[Any]:
        return self.conn.execute(query, params)

    def close(self) -> None:
        try:
            if not self.conn.closed:
                self.conn.rollback()
        except psycopg.Error:
            pass  # the server restarted under it
        self.conn.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


BLOCK_INDEX = "faults_block_backfill"


def block_backfill_at(dsn: str, offset: int, count: int = 40) -> Session:
    """Make the bulk load stop at a known point. The new table has no key during the load,
    so the test gives it one of its own (a unique index on events_new (id), dropped by
    `unblock_backfill`), and an open transaction inserts into events_new the keys of
    `count` kept rows starting `offset` rows into the copy order (d, id). The chunk that
    reaches them waits on their uncommitted inserts (the unique check must know the
    outcome), so the chunks before it commit and the load is then stuck mid-way until this
    session ends."""
    with connect(dsn) as c:
        c.execute(f"CREATE UNIQUE INDEX {BLOCK_INDEX} ON events_new (id)")
    s = Session(dsn)
    cur = s.execute("INSERT INTO events_new SELECT * FROM events WHERE d >= %s ORDER BY d, id OFFSET %s LIMIT %s",
                    (CUTOFF, offset, count))
    assert cur.rowcount > 0
    return s


def unblock_backfill(dsn: str) -> None:
    """Drop the unique index `block_backfill_at` gave the new table (its session is gone)."""
    with connect(dsn) as c:
        c.execute(f"DROP INDEX IF EXISTS {BLOCK_INDEX}")


def backfill_stuck(conn: psycopg.Connection[Any]) -> bool:
    """Some rows are copied and a load chunk waits on a lock."""
    m = state_row(conn)
    if not m or m["state"] != "backfilling" or not m["rows_copied"]:
        return False
    return bool(scalar(conn, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                             " AND application_name LIKE 'tablemig%%' AND wait_event_type = 'Lock'"
                             " AND query ILIKE 'INSERT INTO%%'"))


def check_twin_invariants(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """After the swap: the archive equals the twin (what the original would be), the live
    table equals the twin's rows with d >= CUTOFF (every column)."""
    m = state_row(conn)
    assert m is not None and m["state"] == "swapped", m
    archive = m["archive_name"]
    a = diff(conn, archive, "events_twin")
    assert a["only_left"] == 0 and a["only_right"] == 0 and a["left"] == a["right"], a
    live = diff(conn, "events", "events_twin", f"d >= '{CUTOFF.isoformat()}'")
    assert live["only_left"] == 0 and live["only_right"] == 0 and live["left"] > 0, live
    assert scalar(conn, "SELECT count(*) FROM events WHERE d < %s", (CUTOFF,)) == 0
    return {"archive_rows": a["left"], "live_rows": live["left"]}


def invalid_indexes(conn: psycopg.Connection[Any], table: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = to_regclass(%s) AND NOT i.indisvalid ORDER BY 1", (table,)).fetchall()]


def with_dbname(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo("", **params)
