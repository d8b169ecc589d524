"""Helpers for tests that need sites of their own: a private sandbox (with a logical
subscriber) and a standby whose replay is paused; and the wait for a swap that waits for its
lock, a swap made to wait while the test writes, and a swap step killed while it waits."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tablemig.config.spec import TableSpec
from tablemig.lifecycle.driver import Migration
from tablemig.pg.connect import connect
from tablemig.sandbox.cluster import Sandbox, start_sandbox, stop_sandbox


@contextlib.contextmanager
def own_sandbox(prefix: str, *, subscriber: bool = True, pg_bin: str | None = None) -> Iterator[Sandbox]:
    """A primary, a streaming standby and (by default) a logical subscriber for one test
    module, removed afterwards (`pg_bin`: the server binaries, the sandbox's choice if None)."""
    root = Path("/tmp") / f"tablemig-{prefix}-{uuid.uuid4().hex[:8]}"
    sb = start_sandbox(root, subscriber=subscriber, pg_bin=pg_bin)
    try:
        yield sb
    finally:
        stop_sandbox(root)


def pause_replay(standby: Any) -> None:
    """Pause replay on `standby` and wait until it has (the pause is only requested: the
    startup process may replay on until it takes it)."""
    standby.execute("SELECT pg_wal_replay_pause()")
    t0 = time.monotonic()
    while standby.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0] != "paused":
        assert time.monotonic() - t0 < 30, "replay did not pause"
        time.sleep(0.05)


def waiting_for_the_swap(conn: Any, table: str, timeout: float = 120) -> None:
    """Until a swap's ACCESS EXCLUSIVE request on `table` waits (it comes after the checks
    made without a lock)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if conn.execute("SELECT 1 FROM pg_locks WHERE relation = %s::regclass AND NOT granted"
                        " AND mode = 'AccessExclusiveLock'", (table,)).fetchone():
            return
        time.sleep(0.02)
    raise AssertionError("the swap never waited for its lock")


@contextlib.contextmanager
def swap_kept_waiting(dsn: str, spec: TableSpec, table: str, *, validate: bool = False) -> Iterator[Any]:
    """The swap step of `spec` in a thread while a session holds ACCESS SHARE on `table`:
    yields a connection once the swap waits for its lock (its work without a lock is done),
    for the test's writes; leaving releases the lock, and the swap (and with `validate` the
    foreign keys' validation) must then finish without error."""
    errors: list[BaseException] = []

    def swap() -> None:
        try:
            with Migration(dsn, spec, progress=lambda p: None, lock_timeout="100ms") as mig:
                mig.swap()
                if validate:
                    mig.validate_foreign_keys()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    with connect(dsn) as conn, connect(dsn) as holder:
        # attempts enough to outlast the test's own writes whatever the machine's load
        conn.execute("UPDATE table_migration.migration_config SET config_value = '40'"
                     " WHERE config_key = 'swap_max_attempts'")
        holder.execute("BEGIN")
        holder.execute(f"SELECT count(*) FROM {table}")  # ACCESS SHARE until COMMIT: the swap waits
        t = threading.Thread(target=swap)
        t.start()
        try:
            waiting_for_the_swap(conn, table)
            yield conn
        finally:
            holder.execute("COMMIT")
            t.join(timeout=300)
    assert not t.is_alive(), "the swap did not finish"
    assert not errors, errors


T = TypeVar("T")

# the swap step of public.orders by date column d, its children's policies given as JSON
SWAP_SCRIPT = """
import json, sys
from tablemig.config.spec import TableSpec
from tablemig.lifecycle.driver import Migration
spec = TableSpec("public.orders", "d", cutoff=sys.argv[2], batch_size=500, children=json.loads(sys.argv[3]))
with Migration(sys.argv[1], spec, progress=lambda p: None, lock_timeout="100ms", swap_max_attempts=1000) as mig:
    mig.swap()
"""


def killed_while_the_swap_waits(dsn: str, cutoff: str, children: dict[str, str],
                                probe: Callable[[Any], T]) -> T:
    """Run the swap step of public.orders (with `children`) in another process while a
    session holds ACCESS SHARE on orders; once it waits for its lock (its work without a lock
    done), `probe(connection)` is read and the process is SIGKILLed. Returns the probe's value."""
    with connect(dsn) as conn, connect(dsn) as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT count(*) FROM orders")
        run = subprocess.Popen([sys.executable, "-c", SWAP_SCRIPT, dsn, cutoff, json.dumps(children)])
        try:
            waiting_for_the_swap(conn, "public.orders")
            return probe(conn)
        finally:
            run.kill()
            run.wait(timeout=60)
            holder.execute("ROLLBACK")
