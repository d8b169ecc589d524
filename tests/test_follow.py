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

import datetime as dt
import time
from typing import Any

import psycopg
import pytest
from backup_helpers import run_plan
from family_twin import CUTOFF, FamilyWriters, create_family, differences, new_family_plan
from plan_compare import run, same, statements
from site_helpers import killed_while_the_swap_waits, swap_kept_waiting

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
                        " (ARRAY['items%', 'notes%', 'parts%'])").fetchall()
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


@pytest.mark.parametrize(("rollback_after", "parts"), [("swap", False), ("prune", False), ("swap", True),
                                                       ("prune", True)])
def test_follow_under_concurrent_writes_then_rollback(fresh_db: Any, rollback_after: str, parts: bool) -> None:
    """With `parts`, a grandchild: parts reference items, and follow them in turn."""
    with fresh_db.connect() as conn:
        create_family(conn, ROWS, parts=parts)
    dsn = fresh_db.dsn
    with FamilyWriters(dsn, ROWS, parts=parts) as writers, \
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
        assert [f["child"] for f in followed] == ["public.items", *(["public.parts"] if parts else [])]
        assert all(f["rows_archived"] > 0 and f["rows_live"] > 0 for f in followed), followed
        assert mig.validate_foreign_keys()
        time.sleep(0.5)  # writes of every kind go on against the live tables
        if rollback_after == "prune":
            writers.stop.set()  # (the rows the application writes meanwhile are the restore's concern)
            mig.prune()
    ops = writers.ops
    expected = ("insert_order", "move_order", "delete_order", "insert_item", "repoint_item", "delete_item",
                "change_item", *(("insert_part", "repoint_part", "delete_part") if parts else ()))
    assert all(ops.get(op, 0) > 0 for op in expected), ops
    with connect(dsn) as conn:
        _check_live(conn)
        archive = conn.execute("SELECT archive_name FROM table_migration.migration_state").fetchone()
        assert archive is not None
        suffix = str(archive[0])[len("orders"):]
        children = ["items", *(["parts"] if parts else [])]
        if parts:
            assert differences(conn, "parts", "parts_twin", "item_id IN (SELECT id FROM items)") == 0
        for child in children:
            if rollback_after == "swap":  # the archives are the twins whole, kept by the mirrors
                assert differences(conn, child + suffix, f"{child}_twin") == 0, child
            else:  # pruned: the archive is what is not live
                both = conn.execute(f"SELECT count(*) FROM {child}{suffix} a JOIN {child} USING (id)").fetchone()
                assert both == (0,), child
                assert differences(conn, f"(SELECT * FROM {child} UNION ALL SELECT * FROM {child}{suffix}) u",
                                   f"{child}_twin") == 0, child
        if rollback_after == "swap":
            assert differences(conn, archive[0], "orders_twin") == 0
        fks = _fks(conn)
        assert fks["items"] == ("orders", True) and fks["items" + suffix] == (archive[0], True), fks
        assert fks["notes"] == ("orders", True), fks
        if parts:
            assert fks["parts"] == ("items", True) and fks["parts" + suffix] == ("items" + suffix, True), fks
    with Migration(dsn, _spec(children=POLICIES), progress=lambda p: None, lock_timeout="100ms",
                   swap_max_attempts=40) as mig:
        assert mig.rollback() == "swapped back"
    with connect(dsn) as conn:
        for table in ("orders", "items", "notes", *(["parts"] if parts else [])):  # every row back, nothing lost
            assert differences(conn, table, f"{table}_twin") == 0, table
        fks = _fks(conn)
        assert {k: v for k, v in fks.items() if not k.endswith("_twin")} == {
            "items": ("orders", True), "notes": ("orders", True), **({"parts": ("items", True)} if parts else {})}
        assert _tables(conn, "items%") == ["items", "items_twin"]
        assert _tables(conn, "parts%") == (["parts", "parts_twin"] if parts else [])


def test_follow_is_made_exact_under_the_swaps_lock(fresh_db: Any) -> None:
    """Writes made after the child's new table was built, while the swap waits for its lock:
    an old order moved on or after the cutoff (its item goes live), a recent one moved before
    it (its item goes to the archive; one a note keeps live keeps its items live too), an old
    item re-pointed to a recent order and a recent one to an old order, an item added to a
    recent order, a recent order deleted (its items cascade), and notes re-pointed (the `keep`
    rule decides their orders again, and their items with them). Under the lock the live
    child follows each of them."""
    with fresh_db.connect() as conn:
        create_family(conn, 2000)
        recent = [int(r[0]) for r in conn.execute(
            "SELECT o.id FROM orders o WHERE o.d >= %s AND EXISTS (SELECT 1 FROM items i WHERE i.order_id = o.id)"
            " AND NOT EXISTS (SELECT 1 FROM notes n WHERE n.order_id = o.id) ORDER BY o.id LIMIT 4",
            (CUTOFF,)).fetchall()]
    spec = _spec(children={"public.items": "follow", "public.notes": "keep"})
    with Migration(fresh_db.dsn, spec, progress=lambda p: None) as mig:
        mig.run("verified")
    with swap_kept_waiting(fresh_db.dsn, spec, "public.orders") as conn:
        # the swap itself waits: the child's new table is built, its triggers armed
        armed = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'tablemig_follow%'").fetchone()
        assert armed == (2,) and conn.execute("SELECT count(*) FROM items_new").fetchone() != (0,)
        conn.execute("UPDATE orders SET d = %s WHERE id = 5", (CUTOFF + dt.timedelta(days=1),))  # item 5 live
        conn.execute("UPDATE orders SET d = %s WHERE id = %s", (CUTOFF - dt.timedelta(days=1), recent[0]))
        conn.execute("UPDATE items SET order_id = %s WHERE id = 10", (recent[1],))  # old item re-pointed
        conn.execute("UPDATE items SET order_id = 15 WHERE id = %s", (recent[2],))  # to an old order
        conn.execute("INSERT INTO items VALUES (900001, %s, 1)", (recent[1],))
        conn.execute("DELETE FROM orders WHERE id = %s", (recent[3],))
        conn.execute("UPDATE orders SET d = %s WHERE id = 35", (CUTOFF - dt.timedelta(days=2),))  # note 35
        # the rows the `keep` rule decides again carry their items: order 25 now kept for
        # note 14, order 70 no longer kept (its note re-pointed)
        conn.execute("UPDATE notes SET order_id = 25 WHERE id = 14")
        conn.execute("UPDATE notes SET order_id = 3 WHERE id = 70")
    with fresh_db.connect() as conn:
        live = {int(r[0]) for r in conn.execute(
            "SELECT id FROM items WHERE id IN (5, 10, 25, 35, 70, 900001) OR id = ANY(%s)", (recent,)).fetchall()}
        # item ids are their order's (family_twin); r0 went with its order, r2 with its new
        # (old) order, r3 with its deleted order
        assert live == {5, 10, 25, 35, 900001, recent[1]}, live
        # exactly: the live items are those whose order is live, the archive every item
        wrong = conn.execute("SELECT count(*) FROM items i WHERE NOT EXISTS (SELECT 1 FROM orders o"
                             " WHERE o.id = i.order_id)").fetchone()
        assert wrong == (0,)
        archive = conn.execute("SELECT archive_name FROM table_migration.migration_state").fetchone()
        assert archive is not None
        items_archive = "items" + str(archive[0])[len("orders"):]
        missing = conn.execute(f"SELECT count(*) FROM {items_archive} a JOIN orders o ON o.id = a.order_id"
                               " WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.id = a.id)").fetchone()
        assert missing == (0,)  # no item of a live order was left in the archive only
        assert {int(r[0]) for r in conn.execute(f"SELECT id FROM {items_archive} WHERE id = ANY(%s)",
                                                  (recent,)).fetchall()} == {recent[0], recent[1], recent[2]}


def _killed_while_waiting_for_the_swap(dsn: str) -> None:
    """Run the swap step in another process and SIGKILL it while it waits for its lock,
    the `follow` child's new table built and its triggers armed."""
    armed = killed_while_the_swap_waits(dsn, CUTOFF.isoformat(), {"public.items": "follow"}, lambda conn: conn.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'tablemig_follow%'").fetchone())
    assert armed == (2,)


def _follow_objects(conn: psycopg.Connection[Any]) -> list[Any]:
    return conn.execute(
        "SELECT 'trigger ' || tgname FROM pg_trigger WHERE tgname LIKE 'tablemig_follow%'"
        " UNION ALL SELECT 'table ' || relname FROM pg_class WHERE relname LIKE 'follow%' OR relname = 'items_new'"
        " UNION ALL SELECT 'function ' || proname FROM pg_proc WHERE proname LIKE 'follow%'").fetchall()


def test_a_swap_step_killed_while_following_resumes_or_rolls_back(fresh_db: Any) -> None:
    """A crash (SIGKILL) after the child's new table was built: a rerun builds it again and
    swaps; a rollback drops what was armed; nothing is lost either way."""
    with fresh_db.connect() as conn:
        create_family(conn, 2000)
        conn.execute("DROP TABLE notes")  # items only: the script's plan names it alone
    spec = _spec(children={"public.items": "follow"})
    for then in ("rerun", "rollback"):
        with Migration(fresh_db.dsn, spec, progress=lambda p: None) as mig:
            mig.run("verified")
        _killed_while_waiting_for_the_swap(fresh_db.dsn)
        with fresh_db.connect() as conn:
            conn.execute("INSERT INTO items VALUES (900001, 5, 1)")  # written meanwhile: not logged by anything
            assert _follow_objects(conn)  # left armed by the kill
        with Migration(fresh_db.dsn, spec, progress=lambda p: None) as mig:
            if then == "rerun":
                mig.swap()
            assert mig.rollback() in ("swapped back", "capture removed, new table dropped")
        with fresh_db.connect() as conn:
            assert _follow_objects(conn) == []
            assert differences(conn, "orders", "orders_twin") == 0
            assert differences(conn, "items", "(SELECT * FROM items_twin UNION ALL SELECT 900001, 5, 1) t") == 0
            conn.execute("DELETE FROM items WHERE id = 900001")


def test_the_dry_run_records_what_the_execution_runs(fresh_db: Any) -> None:
    """`pytest plans/...` without --execute: the swap step of a plan with a `follow` child
    is recorded statement by statement as the execution then runs it (the figures the
    execution observes excepted), and the dry run changes nothing."""
    with fresh_db.connect() as conn:
        create_family(conn, 2000)
    spec = _spec(children=POLICIES)
    planned, would = run(fresh_db.dsn, spec, "plan", "swapped")
    with fresh_db.connect() as conn:
        assert conn.execute("SELECT to_regclass('items_new'), to_regclass('orders_new')").fetchone() == (None, None)
    executed, final = run(fresh_db.dsn, spec, "execute", "swapped")
    assert would is not None and final is not None and would.state == final.state == "swapped"
    texts = [s[2] for s in statements(planned)]
    assert any(t.startswith('INSERT INTO "public"."items_new"') for t in texts)
    assert any('ALTER TABLE "public"."items" RENAME TO "items_archive' in t for t in texts), texts
    same(statements(planned), statements(executed))


@pytest.mark.parametrize(("setup", "kw", "expected"), [
    ("DROP INDEX items_order_id_idx", {}, "no index leads with the referencing columns"),
    ("", {"archive_mode": "copy"}, "needs archive mode rename"),
    ("CREATE TABLE parts (id bigint PRIMARY KEY, item_id bigint REFERENCES items)", {},
     "'follow' for public.parts (which follows public.items): no index leads with the referencing columns"),
    ("ALTER TABLE items ADD COLUMN other bigint REFERENCES orders; CREATE INDEX ON items (other)", {},
     "more than one foreign key to the table"),
    ("ALTER TABLE items DROP CONSTRAINT items_pkey, ADD PRIMARY KEY (id) DEFERRABLE", {}, "DEFERRABLE"),
])
def test_follow_refusals_change_nothing(fresh_db: Any, setup: str, kw: dict[str, Any], expected: str) -> None:
    """What follow cannot do is refused by the plan, naming the problem and the way out,
    and the capture then refuses to start."""
    with fresh_db.connect() as conn:
        create_family(conn, 1000)
        if setup:
            conn.execute(setup)
    with Migration(fresh_db.dsn, _spec(children=POLICIES, **kw), progress=lambda p: None) as mig:
        blockers = mig.plan().blockers
        assert any(expected in b and "'follow' for public." in b for b in blockers), blockers
        with pytest.raises(Exception, match="blockers"):
            mig.capture()
    with fresh_db.connect() as conn:
        assert conn.execute("SELECT to_regclass('orders_new'), to_regclass('items_new')").fetchone() == (None, None)


def test_follow_for_a_self_reference_is_refused(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, d date NOT NULL, parent_id bigint REFERENCES t (id));"
                     " CREATE INDEX ON t (parent_id);"
                     " INSERT INTO t SELECT g, date '2024-01-01' + g, NULLIF(g - 1, 0) FROM generate_series(1, 100) g")
    spec = TableSpec("public.t", "d", cutoff="2024-03-01", children={"public.t": "follow"})
    with Migration(fresh_db.dsn, spec, progress=lambda p: None) as mig:
        blockers = mig.plan().blockers
    assert any("self-reference" in b and "cannot follow itself" in b for b in blockers), blockers


def test_a_plan_written_by_new_plan_with_follow_runs_end_to_end(fresh_db: Any, tmp_path: Any) -> None:
    """`new-plan --children follow` for a table with two children (one with a NULL-able key,
    ON DELETE SET NULL) writes the policies with the counts; the plan as written runs every
    checklist item while the family is written, and the report shows the children moved."""
    with fresh_db.connect() as conn:
        create_family(conn, 2000)
    out = tmp_path / "family_plan.py"
    done = new_family_plan(fresh_db.dsn, out, "follow")
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "'public.items': 'follow'" in text and "'public.notes': 'follow'" in text, text
    assert "they go to the archive with them" in text, text
    with FamilyWriters(fresh_db.dsn, 2000, threads=2) as writers:
        proc, steps = run_plan(out, fresh_db.dsn, "--execute", timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert writers.ops
    children = steps["PRE-1.3b"]["evidence"]["children"]
    assert [(c["child"], c["policy"]) for c in children] == [("public.items", "follow"), ("public.notes", "follow")]
    assert steps["EX-4.1"]["status"] == "passed", steps["EX-4.1"]
    moved = steps["EX-2.2"]["evidence"]["followed_children"]
    assert [m["child"] for m in moved] == ["public.items", "public.notes"]
    assert all(m["rows_live"] > 0 and m["rows_archived"] > 0 for m in moved), moved
    (html,) = (out.parent / "reports").glob("*/latest/report.html")
    assert "the rows referencing live rows of public.orders (policy follow)" in html.read_text()
    with fresh_db.connect() as conn:
        assert conn.execute("SELECT state FROM table_migration.migration_state").fetchone() == ("swapped",)
        for child in ("items", "notes"):  # every live child row references a live order (or nothing)
            lost = conn.execute(f"SELECT count(*) FROM {child} c WHERE c.order_id IS NOT NULL AND NOT EXISTS"
                                " (SELECT 1 FROM orders o WHERE o.id = c.order_id)").fetchone()
            assert lost == (0,), child
        assert _fks(conn)["items"] == ("orders", True) and _fks(conn)["notes"] == ("orders", True)
