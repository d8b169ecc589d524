"""I1 no loss, I2 no resurrection / no duplicates, under concurrent writers, twin-table method."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
from twin import CUTOFF, Writers, create_events, diff

from tablemig.engine import Migration
from tablemig.spec import TableSpec

ROWS = 30_000


def _migrate_with_writers(db: Any, *, blocker_seconds: float = 0.0, workers: int = 1,
                          deferrable: bool = False) -> dict[str, Any]:
    with db.connect() as conn:
        create_events(conn, ROWS, deferrable=deferrable)
    spec = TableSpec("public.events", "d", cutoff=CUTOFF.isoformat(), batch_size=250, workers=workers)
    out: dict[str, Any] = {}
    with Writers(db.dsn, ROWS, threads=3, deferrable=deferrable) as writers, \
            Migration(db.dsn, spec, progress=lambda p: None, throttle=lambda: time.sleep(0.03),
                      lock_timeout="100ms", batch_target_seconds=0.001,
                      swap_max_attempts=30) as mig:
        time.sleep(0.3)
        mig.run("verified")
        writers.begin_swap()
        time.sleep(0.2)
        blocker = None
        if blocker_seconds:
            blocker = _hold_lock(db.dsn, "events", blocker_seconds)
        result = mig.swap()
        if blocker:
            blocker.join()
        mig.validate_foreign_keys()
        time.sleep(0.5)  # writes continue against the new table
        out["swap"] = result
        out["timings"] = dict(mig.timings)
        assert mig.verify_result is not None and mig.verify_result.match
        out["repaired"] = mig.verify_result.repaired
    out["writers"] = writers.stats
    return out


def _hold_lock(dsn: str, table: str, seconds: float) -> threading.Thread:
    ready = threading.Event()

    def hold() -> None:
        with psycopg.connect(dsn, autocommit=False) as c:
            c.execute(f"LOCK TABLE {table} IN ROW EXCLUSIVE MODE")
            ready.set()
            time.sleep(seconds)
            c.rollback()

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    ready.wait(10)
    return t


def _check_invariants(db: Any) -> None:
    with db.connect() as conn:
        archive = conn.execute(
            "SELECT archive_name FROM table_migration.migration_state WHERE table_name = 'public.events'"
        ).fetchone()[0]
        # the archive is what the original would be: every write, no loss, no resurrection
        assert diff(conn, archive, "events_twin") | {"left": 0, "right": 0} == {
            "only_left": 0, "only_right": 0, "left": 0, "right": 0}
        # the live table holds exactly the twin's recent rows (every column)
        d = diff(conn, "events", "events_twin", f"d >= '{CUTOFF.isoformat()}'")
        assert d["only_left"] == 0 and d["only_right"] == 0, d
        assert d["left"] > 0
        # every history row of the twin is in the archive
        missing = conn.execute(f"SELECT count(*) FROM events_twin t WHERE d < %s AND NOT EXISTS "
                               f"(SELECT 1 FROM {archive} a WHERE a.id = t.id)", (CUTOFF,)).fetchone()[0]
        assert missing == 0
        # no row of the live table is older than the cutoff (writers kept that rule after the swap)
        assert conn.execute("SELECT count(*) FROM events WHERE d < %s", (CUTOFF,)).fetchone()[0] == 0


def test_I1_I2_no_loss_no_resurrection_under_concurrent_writers(fresh_db: Any) -> None:
    out = _migrate_with_writers(fresh_db)
    ops = out["writers"].ops
    for op in ("insert_recent", "update_old", "move_down", "move_up", "pk_old", "delete_any"):
        assert ops.get(op, 0) > 0, ops
    _check_invariants(fresh_db)


def test_I1_I2_hold_when_the_swap_has_to_retry(fresh_db: Any) -> None:
    out = _migrate_with_writers(fresh_db, blocker_seconds=1.0)
    assert out["swap"].attempts > 1
    assert any(a["outcome"] == "lock_timeout" for a in out["swap"].attempt_log)
    _check_invariants(fresh_db)


def test_I1_I2_I8_with_a_deferrable_key(fresh_db: Any) -> None:
    """A DEFERRABLE key cannot be an ON CONFLICT arbiter, and the application may hold two
    rows with one key until a statement (or its transaction) ends: the capture and the
    mirror match rows by key and whole value, and defer the copies' key checks."""
    out = _migrate_with_writers(fresh_db, deferrable=True)
    ops = out["writers"].ops
    assert ops.get("swap_keys", 0) > 0 and ops.get("duplicate_rekeyed", 0) > 0, ops
    _check_invariants(fresh_db)
    with fresh_db.connect() as conn:
        assert conn.execute("SELECT condeferrable FROM pg_constraint WHERE conrelid = 'events'::regclass"
                            " AND contype = 'p'").fetchone() == (True,)


def test_I1_I2_with_two_backfill_workers(fresh_db: Any) -> None:
    _migrate_with_writers(fresh_db, workers=2)
    _check_invariants(fresh_db)
