"""The change-log pipeline: the trigger logs keys while the bare new table is loaded and
indexed, the replay corrects every logged key (also stale duplicates of the load), then the
switch to direct capture; rollback before the swap removes all of it."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from db_helpers import scalar
from twin import CUTOFF, Writers, create_events, diff

from tablemig.config.spec import TableSpec
from tablemig.lifecycle.driver import Migration

ROWS = 20_000


def _spec(**kw: Any) -> TableSpec:
    return TableSpec("public.events", "d", cutoff=CUTOFF.isoformat(), batch_size=500, **kw)


def _log_table(conn: psycopg.Connection[Any]) -> str:
    oid = scalar(conn, "SELECT 'public.events'::regclass::oid")
    return f"table_migration.changes_{oid}"


def _exists(conn: psycopg.Connection[Any], name: str) -> bool:
    return bool(scalar(conn, "SELECT to_regclass(%s) IS NOT NULL", (name,)))


def test_log_mode_then_replay_and_switch_keep_the_new_table_exact(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        create_events(conn, ROWS)
    with Migration(fresh_db.dsn, _spec(), progress=lambda p: None) as mig, fresh_db.connect() as conn:
        mig.run("capturing")
        log = _log_table(conn)
        # the new table is bare and the trigger only logs keys
        assert conn.execute("SELECT count(*) FROM pg_index WHERE indrelid = 'events_new'::regclass"
                            ).fetchone()[0] == 0
        conn.execute("INSERT INTO events VALUES (900001, %s, 1, 'new')", (CUTOFF,))
        conn.execute("UPDATE events SET id = 900002 WHERE id = 900001")  # key change: old and new key
        conn.execute("DELETE FROM events WHERE id = %s", (ROWS,))
        assert conn.execute(f"SELECT id FROM {log} ORDER BY change_id").fetchall() == [
            (900001,), (900001,), (900002,), (ROWS,)]
        assert conn.execute("SELECT count(*) FROM events_new").fetchone()[0] == 0
        mig.run("indexed")
        # writes during the load and after it: moves across the cutoff both ways, key
        # changes, deletes of loaded rows, inserts; all only logged
        recent = ROWS - 10
        old = 100
        conn.execute("UPDATE events SET d = %s WHERE id = %s", (CUTOFF.replace(day=1), recent))  # moves down
        conn.execute("UPDATE events SET d = %s WHERE id = %s", (CUTOFF, old))  # moves up
        conn.execute("UPDATE events SET id = 900003 WHERE id = %s", (recent - 1,))
        conn.execute("UPDATE events SET v = -5, payload = 'changed' WHERE id = %s", (recent - 2,))
        conn.execute("DELETE FROM events WHERE id = %s", (recent - 3,))
        assert conn.execute(f"SELECT count(*) FROM {log}").fetchone()[0] >= 9
        # before the replay the new table is stale
        assert diff(conn, "events_new", "events", f"d >= '{CUTOFF.isoformat()}'")["only_left"] > 0
        result = mig.verify()
        assert result.match and result.repaired == 0  # the replay alone made it exact
        # switched: the log is empty and no longer written; the swap drops it
        assert conn.execute(f"SELECT count(*) FROM {log}").fetchone()[0] == 0
        conn.execute("UPDATE events SET v = v + 1 WHERE id = %s", (ROWS - 20,))
        assert conn.execute(f"SELECT count(*) FROM {log}").fetchone()[0] == 0
        d = diff(conn, "events_new", "events", f"d >= '{CUTOFF.isoformat()}'")
        assert d["only_left"] == 0 and d["only_right"] == 0 and d["left"] > 0, d
        event = conn.execute("SELECT rows_affected, details FROM table_migration.migration_log"
                             " WHERE operation = 'replay' AND status = 'switched'").fetchone()
        assert event[0] >= 9 and event[1]["lock_hold_ms"] is not None, event
        assert "replay" in mig.timings
        # direct capture from now on: a write reaches the new table at once
        conn.execute("UPDATE events SET v = 4242 WHERE id = %s", (recent - 4,))
        assert conn.execute("SELECT v FROM events_new WHERE id = %s", (recent - 4,)).fetchone()[0] == 4242
        mig.swap()  # drops the emptied log in its transaction
        assert not _exists(conn, log)


def test_a_small_table_is_indexed_keyed_and_analyzed_in_one_round_trip(fresh_db: Any) -> None:
    """Below parallel_min_rows the index step sends its builds, the key constraint and the
    ANALYZE together in one transaction: the statistics commit with the indexes."""
    with fresh_db.connect() as conn:
        create_events(conn, ROWS)
    # the write guard off: other tests write to the same server, and while anything writes the
    # guard builds one index at a time (tests/test_pacing.py covers that path)
    with Migration(fresh_db.dsn, _spec(), progress=lambda p: None, app_write_share=0) as mig, \
            fresh_db.connect() as conn:
        mig.run("indexed")
        step = [r for r in mig.recorder.statements
                if r.sql.startswith(("CREATE UNIQUE INDEX", "CREATE INDEX", "ALTER TABLE", "ANALYZE"))
                and "events_new" in r.sql]
        assert [r.sql.split()[0] for r in step][-1] == "ANALYZE", [r.sql for r in step]
        assert len(step) >= 3 and {r.batch for r in step} == {len(step)}, [(r.sql, r.batch) for r in step]
        assert conn.execute("SELECT count(*) FROM pg_stats WHERE schemaname = 'public'"
                            " AND tablename = 'events_new'").fetchone()[0] > 0
        assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = 'events_new'::regclass"
                            " AND contype = 'p'").fetchone()[0] == 1
        result = mig.verify()
        assert result.match and result.repaired == 0


def test_stale_duplicate_of_the_load_is_dropped_before_the_key_is_built(fresh_db: Any) -> None:
    """A row moved between load chunks while they run is copied twice: the key build finds
    the duplicate, the logged keys are dropped from the new table, the replay copies them."""
    with fresh_db.connect() as conn:
        create_events(conn, ROWS)
    with Migration(fresh_db.dsn, _spec(), progress=lambda p: None) as mig, fresh_db.connect() as conn:
        mig.run("backfilling")
        moved = ROWS - 50
        # what a move between chunks leaves behind: the row in an early chunk's range (old
        # copy) and in a later one (new copy); the move itself is logged
        conn.execute("INSERT INTO events_new SELECT * FROM events WHERE id = %s", (moved,))
        conn.execute("UPDATE events SET d = d + interval '1 hour' WHERE id = %s", (moved,))
        assert conn.execute("SELECT count(*) FROM events_new WHERE id = %s", (moved,)).fetchone()[0] == 2
        mig.run("verified")
        assert mig.verify_result is not None and mig.verify_result.repaired == 0
        status = conn.execute("SELECT status, details FROM table_migration.migration_log"
                              " WHERE operation = 'index' ORDER BY log_id").fetchall()
        assert status[0][0] == "stale rows dropped" and status[-1][0] == "done", status
        d = diff(conn, "events_new", "events", f"d >= '{CUTOFF.isoformat()}'")
        assert d["only_left"] == 0 and d["only_right"] == 0, d
        pk = conn.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = 'events_new'::regclass"
                          " AND contype = 'p'").fetchone()[0]
        assert pk == 1


def test_rollback_in_log_mode_removes_the_log_trigger_and_tables(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        create_events(conn, 5_000)
    with Migration(fresh_db.dsn, _spec(archive_mode="copy"), progress=lambda p: None) as mig, \
            fresh_db.connect() as conn:
        mig.run("indexed")
        log = _log_table(conn)
        oid = log.rsplit("_", 1)[1]
        assert _exists(conn, log)
        assert mig.rollback() == "capture removed, new table dropped"
        assert not _exists(conn, log)
        assert not _exists(conn, "events_new")
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'events'::regclass"
                            " AND NOT tgisinternal").fetchone()[0] == 0
        assert not conn.execute("SELECT to_regprocedure(%s)", (f"table_migration.capture_{oid}()",)
                                ).fetchone()[0]
        conn.execute("INSERT INTO events VALUES (900001, %s, 1, 'after rollback')", (CUTOFF,))


def test_copy_mode_history_is_replayed_too(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        create_events(conn, 10_000)
    with Writers(fresh_db.dsn, 10_000, threads=2) as writers, \
            Migration(fresh_db.dsn, _spec(archive_mode="copy"), progress=lambda p: None,
                      throttle=lambda: time.sleep(0.01)) as mig:
        time.sleep(0.2)
        mig.run("verified")
        assert mig.verify_result is not None and mig.verify_result.match
        writers.stop.set()
    assert sum(writers.stats.ops.values()) > 20, writers.stats.ops
    with fresh_db.connect() as conn:
        m = conn.execute("SELECT archive_name FROM table_migration.migration_state").fetchone()
        h = diff(conn, m[0], "events", f"NOT (d >= '{CUTOFF.isoformat()}')")
        assert h["only_left"] == 0 and h["only_right"] == 0 and h["left"] > 0, h
        n = diff(conn, "events_new", "events", f"d >= '{CUTOFF.isoformat()}'")
        assert n["only_left"] == 0 and n["only_right"] == 0, n


def test_parallel_paths_under_writers_with_a_stale_duplicate_and_a_bypassing_write(fresh_db: Any) -> None:
    """The paths of large tables, forced on a small one: index builds on several
    connections (one finds the load's stale duplicate), verify reading both sides at once
    on two connections sharing a snapshot, segments from the key's histogram; a row written
    behind the harness's back is found and repaired. The write guard is off: while the
    writers write it would build one index at a time and read verify's sides in turn."""
    with fresh_db.connect() as conn:
        create_events(conn, ROWS)
    with Writers(fresh_db.dsn, ROWS, threads=2) as writers, \
            Migration(fresh_db.dsn, _spec(workers=2), progress=lambda p: None,
                      throttle=lambda: time.sleep(0.01), app_write_share=0) as mig, fresh_db.connect() as conn:
        mig.parallel_min_rows = 0
        mig.segment_min_rows = 0
        # the one kept row the writers never touch (between their old and recent id ranges)
        quiet = int(ROWS * 300 / 365) + 1
        assert conn.execute("SELECT d >= %s FROM events WHERE id = %s", (CUTOFF, quiet)).fetchone()[0]
        time.sleep(0.2)
        mig.run("backfilling")
        assert conn.execute("INSERT INTO events_new SELECT * FROM events WHERE id = %s", (quiet,)).rowcount == 1
        conn.execute("UPDATE events SET d = d + interval '1 hour' WHERE id = %s", (quiet,))
        mig.run("indexed")
        parallel = conn.execute("SELECT details->>'parallel' FROM table_migration.migration_log"
                                " WHERE operation = 'index' AND status = 'done'").fetchone()[0]
        assert int(parallel) > 1
        # a row written into the new table behind the harness's back: not logged, so not
        # replayed; only verify can find it
        conn.execute("INSERT INTO events_new VALUES (-1, %s, 0, 'bypassed')", (CUTOFF,))
        result = mig.verify()
        assert result.match and result.repaired >= 1, result
        assert conn.execute("SELECT count(*) FROM events_new WHERE id = -1").fetchone()[0] == 0
        assert len(result.segments) > 1  # cut at the key's histogram
        writers.stop.set()
    assert sum(writers.stats.ops.values()) > 20, writers.stats.ops
    with fresh_db.connect() as conn:
        d = diff(conn, "events_new", "events", f"d >= '{CUTOFF.isoformat()}'")
        assert d["only_left"] == 0 and d["only_right"] == 0 and d["left"] > 0, d
        status = [r[0] for r in conn.execute("SELECT status FROM table_migration.migration_log"
                                             " WHERE operation = 'index' ORDER BY log_id").fetchall()]
        assert status == ["stale rows dropped", "done"], status
