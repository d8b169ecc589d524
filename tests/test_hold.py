"""The postponed cut-over (tablemig.lifecycle.hold): once verified, the swap waits for
`tablemig release` or a deadline while the application writes, and then swaps without
losing or reviving a row (the twin table is the ground truth, tests/twin.py)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from twin import CUTOFF, Writers, create_events, diff

from tablemig.config.spec import TableSpec
from tablemig.errors import InputError
from tablemig.lifecycle.driver import Migration

ROWS = 20_000


def tablemig(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tablemig.cli.main", *args], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


def _row(db: Any) -> tuple[Any, ...] | None:
    """The state row's state, holding and released (None before the schema exists)."""
    with db.connect() as conn:
        if conn.execute("SELECT to_regclass('table_migration.migration_state')").fetchone() == (None,):
            return None
        row: tuple[Any, ...] | None = conn.execute(
            "SELECT state, checkpoint->>'holding', checkpoint->>'released'"
            " FROM table_migration.migration_state").fetchone()
        return row


def _until(what: str, probe: Any, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"{what}: not seen within {timeout} s"
        time.sleep(0.1)


def test_the_swap_waits_for_release_under_writes(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        create_events(conn, ROWS)
    spec = TableSpec("public.events", "d", cutoff=CUTOFF.isoformat(), batch_size=500, hold_swap="release")
    errors: list[BaseException] = []
    with Writers(fresh_db.dsn, ROWS, threads=2) as writers:
        def migrate() -> None:
            try:
                with Migration(fresh_db.dsn, spec, progress=lambda p: None, lock_timeout="100ms",
                               swap_max_attempts=40) as mig:
                    mig.run("swapped")
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        t = threading.Thread(target=migrate)
        t.start()
        _until("the swap waiting", lambda: (r := _row(fresh_db)) is not None and r[1] is not None)
        time.sleep(1.5)  # writes go on while it waits: the new table follows them
        row = _row(fresh_db)
        assert row is not None and row[0] == "verified" and row[1] == "tablemig release", row
        status = tablemig("status", "--dsn", fresh_db.dsn)
        assert "SWAP WAITS for tablemig release" in status.stdout, status.stdout
        writers.begin_swap()
        released = tablemig("release", "--dsn", fresh_db.dsn, "--table", "public.events")
        assert released.returncode == 0 and "goes ahead now" in released.stdout, released.stderr
        t.join(timeout=300)
        assert not errors, errors
        time.sleep(0.5)  # writes against the live table
    assert writers.stats.ops
    row = _row(fresh_db)
    assert row is not None and row[0] == "swapped" and row[1] is None, row
    with fresh_db.connect() as conn:
        archive = conn.execute("SELECT archive_name FROM table_migration.migration_state").fetchone()
        assert archive is not None
        assert diff(conn, archive[0], "events_twin") | {"left": 0, "right": 0} == {
            "only_left": 0, "only_right": 0, "left": 0, "right": 0}
        d = diff(conn, "events", "events_twin", f"d >= '{CUTOFF.isoformat()}'")
        assert d["only_left"] == 0 and d["only_right"] == 0 and d["left"] > 0, d
        log = [r[0] for r in conn.execute("SELECT status FROM table_migration.migration_log"
                                          " WHERE operation = 'hold' ORDER BY log_id").fetchall()]
        assert log == ["waiting", "released"], log
    again = tablemig("release", "--dsn", fresh_db.dsn, "--table", "public.events")
    assert again.returncode == 2 and "already swapped" in again.stderr, again.stderr


def test_the_swap_goes_ahead_at_its_deadline(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        create_events(conn, 2000)
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)
    spec = TableSpec("public.events", "d", cutoff=CUTOFF.isoformat(), hold_swap=deadline.isoformat())
    with Migration(fresh_db.dsn, spec, progress=lambda p: None) as mig:
        final = mig.run("swapped")
    assert final is not None and final.state == "swapped"
    assert dt.datetime.now(dt.UTC) >= deadline
    with fresh_db.connect() as conn:
        log = [r[0] for r in conn.execute("SELECT status FROM table_migration.migration_log"
                                          " WHERE operation = 'hold' ORDER BY log_id").fetchall()]
    assert log == ["waiting", "deadline"], log


def test_a_hold_that_is_neither_release_nor_a_timestamp_is_refused() -> None:
    with pytest.raises(InputError) as err:
        TableSpec("public.events", "d", cutoff=CUTOFF.isoformat(), hold_swap="tomorrow")
    assert "'tomorrow'" in err.value.problem and "release" in err.value.fix
    bad = tablemig("migrate", "--execute", "--yes", "--dsn", "dbname=none", "--table", "public.events",
                   "--date-column", "d", "--cutoff", "2024-01-01", "--hold-swap", "soon")
    assert bad.returncode == 2 and "'soon'" in bad.stderr, bad.stderr
