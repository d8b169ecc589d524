"""Rollback at every state and prune, under concurrent writers (twin-table method)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from state_helpers import stored
from twin import CUTOFF, Writers, create_events, diff

from tablemig.config.spec import TableSpec
from tablemig.lifecycle.driver import Migration

ROWS = 20_000


def _spec(**kw: Any) -> TableSpec:
    return TableSpec("public.events", "d", cutoff=CUTOFF.isoformat(), batch_size=500, **kw)


def _mig(db: Any, **kw: Any) -> Migration:
    return Migration(db.dsn, _spec(**kw), progress=lambda p: None, throttle=lambda: time.sleep(0.01),
                     lock_timeout="100ms", swap_max_attempts=30)


def _same_as_twin(db: Any, table: str = "events") -> None:
    with db.connect() as conn:
        d = diff(conn, table, "events_twin")
        assert d["only_left"] == 0 and d["only_right"] == 0 and d["left"] == d["right"], d


def _catalog_clean(db: Any) -> None:
    with db.connect() as conn:
        left = conn.execute("SELECT relname FROM pg_class WHERE relname LIKE 'events\\_%' AND relkind = 'r'"
                            " AND relname <> 'events_twin'").fetchall()
        trig = conn.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'events'::regclass"
                            " AND NOT tgisinternal").fetchall()
        fns = conn.execute("SELECT proname FROM pg_proc WHERE pronamespace = 'table_migration'::regnamespace"
                           " AND (proname LIKE 'capture\\_%' OR proname LIKE 'mirror\\_%')").fetchall()
        assert left == [] and trig == [] and fns == [], (left, trig, fns)


@pytest.mark.parametrize("stop_at", ["capturing", "backfilling", "indexed", "verified"])
def test_rollback_before_swap_leaves_the_original_untouched(fresh_db: Any, stop_at: str) -> None:
    with fresh_db.connect() as conn:
        create_events(conn, ROWS)
    with Writers(fresh_db.dsn, ROWS) as w, _mig(fresh_db) as mig:
        if stop_at == "capturing":
            mig.capture()
        else:
            mig.run(stop_at)
        assert stored(mig).state == stop_at
        assert mig.rollback() == "capture removed, new table dropped"
        assert stored(mig).state == "rolled_back"
        time.sleep(0.2)
    assert sum(w.stats.ops.values()) > 0
    _same_as_twin(fresh_db)
    _catalog_clean(fresh_db)


def test_rollback_after_swap_keeps_every_write_made_since(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        create_events(conn, ROWS)
    with Writers(fresh_db.dsn, ROWS) as w, _mig(fresh_db) as mig:
        mig.run("verified")
        w.begin_swap()
        mig.swap()
        ops_at_swap = sum(w.stats.ops.values())
        time.sleep(0.8)  # the application keeps writing to the new table
        assert sum(w.stats.ops.values()) > ops_at_swap
        assert mig.rollback() == "swapped back"
        time.sleep(0.3)  # ... and to the original again
    _same_as_twin(fresh_db)
    _catalog_clean(fresh_db)


@pytest.mark.parametrize("deferrable", [False, True], ids=["key", "deferrable_key"])
def test_prune_leaves_disjoint_live_and_archive_and_rollback_restores(fresh_db: Any, deferrable: bool) -> None:
    """With a DEFERRABLE key the restore copies without ON CONFLICT (it cannot name such a
    key): it locks the batch's rows first and skips the keys the mirror wrote meanwhile."""
    with fresh_db.connect() as conn:
        create_events(conn, ROWS, deferrable=deferrable)
    with Writers(fresh_db.dsn, ROWS, deferrable=deferrable) as w, _mig(fresh_db) as mig:
        mig.run("verified")
        w.begin_swap()
        mig.swap()
        time.sleep(0.3)
        archive = stored(mig).archive.name
        deleted = mig.prune(batch_size=700)
        assert deleted > 0
        assert stored(mig).state == "pruned"
        with fresh_db.connect() as conn:
            overlap = conn.execute(f"SELECT count(*) FROM events JOIN {archive} USING (id)").fetchone()[0]
            assert overlap == 0
            hist = conn.execute(f"SELECT count(*) FROM {archive} WHERE d >= %s", (CUTOFF,)).fetchone()[0]
            assert hist == 0
        w.stop.set()  # after prune the archive no longer follows: compare the union at rest
    with fresh_db.connect() as conn:
        d = diff(conn, f"(SELECT * FROM events UNION ALL SELECT * FROM {archive}) u", "events_twin")
        assert d["only_left"] == 0 and d["only_right"] == 0, d
    with Writers(fresh_db.dsn, ROWS, deferrable=deferrable) as w2, _mig(fresh_db) as mig:
        w2.begin_swap()
        assert mig.rollback() == "swapped back"
        time.sleep(0.2)
    _same_as_twin(fresh_db)
    _catalog_clean(fresh_db)


def test_copy_mode_archives_history_into_a_separate_table(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        create_events(conn, ROWS)
    with Writers(fresh_db.dsn, ROWS) as w, _mig(fresh_db, archive_mode="copy") as mig:
        mig.run("verified")
        w.begin_swap()
        mig.swap()
        time.sleep(0.3)
        m = stored(mig)
    archive, backup = m.archive.name, m.objects.outgoing.name
    with fresh_db.connect() as conn:
        # the archive holds exactly the history (as of the swap), the live table the recent rows
        d = diff(conn, "events", "events_twin", f"d >= '{CUTOFF.isoformat()}'")
        assert d["only_left"] == 0 and d["only_right"] == 0, d
        d = diff(conn, archive, "events_twin", f"d < '{CUTOFF.isoformat()}'")
        assert d["only_left"] == 0 and d["only_right"] == 0, d
        # the original is kept, complete and current, as the backup until cleanup
        d = diff(conn, backup, "events_twin")
        assert d["only_left"] == 0 and d["only_right"] == 0, d
    with _mig(fresh_db, archive_mode="copy") as mig:
        mig.prune()
        assert mig.cleanup(approved_by="change board CAB-42") == [f"public.{backup}"]
        assert stored(mig).state == "cleaned"
