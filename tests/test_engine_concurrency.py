"""I1 no loss, I2 no resurrection / no duplicates, under concurrent writers, twin-table method."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
from state_helpers import stored
from twin import BASE, CUTOFF, Writers, create_events, diff

from tablemig.config.spec import TableSpec
from tablemig.lifecycle.driver import Migration

ROWS = 30_000


def _migrate_with_writers(db: Any, *, blocker_seconds: float = 0.0, workers: int = 1,
                          deferrable: bool = False, identity: bool = False) -> dict[str, Any]:
    with db.connect() as conn:
        create_events(conn, ROWS, deferrable=deferrable, identity=identity)
    spec = TableSpec("public.events", "d", cutoff=CUTOFF.isoformat(), batch_size=250, workers=workers)
    out: dict[str, Any] = {}
    with Writers(db.dsn, ROWS, threads=3, deferrable=deferrable, identity=identity) as writers, \
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


def test_I1_I2_identity_key_changed_before_and_after_the_swap_and_rolled_back(fresh_db: Any) -> None:
    """A GENERATED ALWAYS identity key changed by the application (UPDATE ... SET id =
    DEFAULT) while the capture runs, after the swap, and during the rollback: an UPDATE can
    set such a column only to DEFAULT, so the capture and the mirror replace the copy
    (delete, then INSERT ... OVERRIDING SYSTEM VALUE). The archive follows every key change,
    the live table holds the twin's recent rows, and the rollback loses nothing."""
    out = _migrate_with_writers(fresh_db, identity=True)
    ops, after = out["writers"].ops, out["writers"].ops_after_swap
    before = {op: ops.get(op, 0) - after.get(op, 0) for op in ("pk_recent", "pk_old")}
    assert before["pk_recent"] > 0 and before["pk_old"] > 0, (ops, after)
    assert after.get("pk_recent", 0) > 0, after
    _check_invariants(fresh_db)
    spec = TableSpec("public.events", "d", cutoff=CUTOFF.isoformat(), batch_size=250)
    with Writers(fresh_db.dsn, ROWS, threads=3, identity=True, seed=11) as writers, \
            Migration(fresh_db.dsn, spec, progress=lambda p: None, lock_timeout="100ms",
                      swap_max_attempts=30) as mig:
        writers.begin_swap()
        time.sleep(0.3)  # key changes mirrored into the archive ...
        assert mig.rollback() == "swapped back"
        time.sleep(0.3)  # ... which is the table again, its identity continuing the live table's
    assert writers.stats.ops_after_swap.get("pk_recent", 0) > 0, writers.stats.ops_after_swap
    assert "UniqueViolation" not in writers.stats.errors, writers.stats.errors
    with fresh_db.connect() as conn:
        d = diff(conn, "events", "events_twin")
        assert d["only_left"] == 0 and d["only_right"] == 0 and d["left"] == d["right"], d


def test_identity_column_beside_the_key_changed_before_and_after_the_swap(fresh_db: Any) -> None:
    """A GENERATED ALWAYS identity column that is not the key, given a new value (SET n =
    DEFAULT) while the capture runs and after the swap: the new table, the archive and the
    table after the rollback keep the value the application drew."""
    with fresh_db.connect() as conn:
        conn.execute("CREATE TABLE events (id bigint PRIMARY KEY, n bigint GENERATED ALWAYS AS IDENTITY,"
                     " d timestamptz NOT NULL)")
        conn.execute("INSERT INTO events (id, d) SELECT g, %s::timestamptz + g * interval '1 day'"
                     " FROM generate_series(1, 400) g", (BASE,))
        conn.execute("CREATE TABLE events_twin AS SELECT * FROM events")
    recent = f"d >= '{CUTOFF.isoformat()}'"

    def change(ids: list[int]) -> None:  # the application draws new values; the twin records them
        with fresh_db.connect() as conn:
            for i in ids:
                row = conn.execute("UPDATE events SET n = DEFAULT WHERE id = %s RETURNING n", (i,)).fetchone()
                conn.execute("UPDATE events_twin SET n = %s WHERE id = %s", (row[0], i))

    def same(table: str, where: str = "true") -> None:
        with fresh_db.connect() as conn:
            d = diff(conn, table, "events_twin", where)
        assert d["only_left"] == 0 and d["only_right"] == 0 and d["left"] == d["right"] > 0, (table, d)

    spec = TableSpec("public.events", "d", cutoff=CUTOFF.isoformat(), batch_size=100)
    with Migration(fresh_db.dsn, spec, progress=lambda p: None, lock_timeout="100ms",
                   swap_max_attempts=30) as mig:
        mig.run("verified")  # the capture writes the new table directly from here on
        change([5, 390, 395])  # a history row and two kept rows
        m = stored(mig)
        same(m.new.name, recent)
        mig.swap()
        change([391, 396])
        same(m.archive.name)
        same("events", recent)
        assert mig.rollback() == "swapped back"
    same("events")
