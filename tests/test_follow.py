"""The child policy follow (tablemig.lifecycle.follow, docs/families.md): a child's rows move
with the rows they reference.

Ground truth is a twin family written in the same transactions (tests/family_twin.py): the
writers insert, move across the cutoff both ways, delete and re-point on every table of the
family before, during and after the swap (no quiet moment). After the swap every live order
is its twin, no twin order dated from the cutoff on is missing from the live table, the live
items are exactly the twin's items whose order is live, the archives are the twins whole
(until prune), and the foreign keys are valid on both sides; after a rollback, from the
swap or after prune, every table is its twin again.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from family_twin import CUTOFF, FamilyWriters, create_family, differences

from tablemig.config.spec import TableSpec
from tablemig.lifecycle.driver import Migration
from tablemig.pg.connect import connect

ROWS = 20_000
POLICIES = {"public.items": "follow", "public.notes": "keep"}


def _spec(**kw: Any) -> TableSpec:
    return TableSpec("public.orders", "d", cutoff=CUTOFF.isoformat(), batch_size=500, **kw)


def _fks(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, bool]]:
    rows = conn.execute("SELECT conrelid::regclass::text, confrelid::regclass::text, convalidated"
                        " FROM pg_constraint WHERE contype = 'f' AND conrelid::regclass::text LIKE ANY"
                        " (ARRAY['items%', 'notes%'])").fetchall()
    return {str(r[0]): (str(r[1]), bool(r[2])) for r in rows}


def _tables(conn: psycopg.Connection[Any], pattern: str) -> list[str]:
    return [str(r[0]) for r in conn.execute(
        "SELECT relname FROM pg_class WHERE relname LIKE %s AND relkind IN ('r', 'p') ORDER BY 1",
        (pattern,)).fetchall()]


def _check_live(conn: psycopg.Connection[Any]) -> None:
    """The family after the swap, whatever was written since (see the module docstring)."""
    assert differences(conn, "orders", "orders_twin", "id IN (SELECT id FROM orders)") == 0
    missing = conn.execute("SELECT count(*) FROM orders_twin t WHERE t.d >= %s"
                           " AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = t.id)", (CUTOFF,)).fetchone()
    assert missing == (0,)
    assert differences(conn, "items", "items_twin", "order_id IN (SELECT id FROM orders)") == 0
    assert differences(conn, "notes", "notes_twin") == 0  # keep: every note stays, its order live


@pytest.mark.parametrize("rollback_after", ["swap", "prune"])
def test_follow_under_concurrent_writes_then_rollback(fresh_db: Any, rollback_after: str) -> None:
    with fresh_db.connect() as conn:
        create_family(conn, ROWS)
    dsn = fresh_db.dsn
    with FamilyWriters(dsn, ROWS) as writers, \
            Migration(dsn, _spec(children=POLICIES), progress=lambda p: None,
                      throttle=lambda: time.sleep(0.02), lock_timeout="100ms", batch_target_seconds=0.001,
                      swap_max_attempts=40) as mig:
        plan = mig.plan()
        assert not plan.blockers, plan.blockers
        assert {c.ref.child.name: c.policy for c in plan.children} == {"items": "follow", "notes": "keep"}
        items = next(c for c in plan.children if c.ref.child.name == "items")
        assert items.referencing_archived > 0  # items of old orders: they go to the archive
        mig.run("verified")
        result = mig.swap()
        followed = result.record["follow"]
        assert [f["child"] for f in followed] == ["public.items"]
        assert followed[0]["rows_archived"] > 0 and followed[0]["rows_live"] > 0, followed
        assert mig.validate_foreign_keys()
        time.sleep(0.5)  # writes of every kind go on against the live tables
        if rollback_after == "prune":
            writers.stop.set()  # (the rows the application writes meanwhile are the restore's concern)
            mig.prune()
            writers.stop.set()
    ops = writers.ops
    assert all(ops.get(op, 0) > 0 for op in ("insert_order", "move_order", "delete_order", "insert_item",
                                             "repoint_item", "delete_item", "change_item")), ops
    with connect(dsn) as conn:
        _check_live(conn)
        archive = conn.execute("SELECT archive_name FROM table_migration.migration_state").fetchone()
        assert archive is not None
        items_archive = "items" + str(archive[0])[len("orders"):]
        if rollback_after == "swap":  # the archives are the twins whole, kept by the mirrors
            assert differences(conn, archive[0], "orders_twin") == 0
            assert differences(conn, items_archive, "items_twin") == 0
        else:  # pruned: the archive is what is not live
            assert conn.execute(f"SELECT count(*) FROM {items_archive} a JOIN items USING (id)").fetchone() == (0,)
            assert differences(conn, f"(SELECT * FROM items UNION ALL SELECT * FROM {items_archive}) u",
                               "items_twin") == 0
        fks = _fks(conn)
        assert fks["items"] == ("orders", True) and fks[items_archive] == (archive[0], True), fks
        assert fks["notes"] == ("orders", True), fks
    with Migration(dsn, _spec(children=POLICIES), progress=lambda p: None, lock_timeout="100ms",
                   swap_max_attempts=40) as mig:
        assert mig.rollback() == "swapped back"
    with connect(dsn) as conn:
        for table in ("orders", "items", "notes"):  # every row back, nothing lost
            assert differences(conn, table, f"{table}_twin") == 0, table
        assert _fks(conn) == {"items": ("orders", True), "notes": ("orders", True),
                              "items_twin": ("orders_twin", True), "notes_twin": ("orders_twin", True)}
        assert _tables(conn, "items%") == ["items", "items_twin"]
