"""Logical replication: a subscriber follows the migration under concurrent writes.

A private sandbox with a third cluster (the subscriber, wal_level logical,
max_prepared_transactions > 0). The active site publishes `events` FOR TABLE; the
subscriber subscribes. Writers change the table (every kind of write, also across the
cutoff and of keys) during the whole migration and after the swap; the subscriber must end
with exactly the publisher's rows in the live table and in the archive."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from db_helpers import scalar
from family_twin import CUTOFF as FAMILY_CUTOFF
from family_twin import FamilyWriters, create_family
from plan_compare import run, same, statements
from site_helpers import own_sandbox
from twin import CUTOFF, Writers, create_events

from tablemig.config.spec import TableSpec
from tablemig.errors import InputError
from tablemig.lifecycle.driver import Migration
from tablemig.pg.connect import connect
from tablemig.pg.replication import wait_for_apply
from tablemig.sandbox.cluster import Sandbox

ROWS = 20_000
FAMILY_ROWS = 10_000
TABLE_DDL = ("CREATE TABLE {t} (id bigint PRIMARY KEY, d timestamptz NOT NULL, v integer NOT NULL,"
             " payload text)")


@pytest.fixture(scope="module")
def logical_sandbox() -> Iterator[Sandbox]:
    with own_sandbox("logical") as sb:
        yield sb


def _subscribe(sb: Sandbox, table: str, *, copy: bool = True) -> None:
    assert sb.subscriber_dsn is not None
    with connect(sb.active_dsn) as pub, connect(sb.subscriber_dsn) as sub:
        pub.execute(f"CREATE PUBLICATION pub_{table} FOR TABLE {table}")
        sub.execute(TABLE_DDL.format(t=table))
        sub.execute(f"CREATE INDEX {table}_d_idx ON {table} (d)")
        info = pub.info
        conninfo = f"host={info.host} port={info.port} dbname={info.dbname} user={info.user}"
        sub.execute(f"CREATE SUBSCRIPTION sub_{table} CONNECTION '{conninfo}' PUBLICATION pub_{table}"
                    f" WITH (copy_data = {str(copy).lower()})")
        _wait(lambda: scalar(sub, "SELECT bool_and(srsubstate = 'r') FROM pg_subscription_rel"),
              "initial table sync")


def _wait(fn: Callable[[], object], what: str, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while not fn():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)


def _table(sb: Sandbox, table: str, rows: int, **spec: Any) -> TableSpec:
    """`table` (events-like) on the active site, published, subscribed; its TableSpec."""
    with connect(sb.active_dsn) as conn:
        create_events(conn, rows, table=table)
    _subscribe(sb, table)
    return TableSpec(f"public.{table}", "d", cutoff=CUTOFF.isoformat(), **spec)


def _fingerprint(conn: psycopg.Connection[Any], table: str) -> tuple[int, int]:
    row = conn.execute(f"SELECT count(*), coalesce(sum(hashtext(t::text)::bigint), 0) FROM {table} t").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _caught_up(sb: Sandbox, tables: list[str]) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """Wait until the subscriber has applied everything the publisher committed so far."""
    assert sb.subscriber_dsn is not None
    with connect(sb.active_dsn) as pub, connect(sb.subscriber_dsn) as sub:
        for t in tables:  # applied, not only received: the slot's confirmed flush position
            wait_for_apply(pub, sub, table=f"public.{t}")
        return {t: (_fingerprint(pub, t), _fingerprint(sub, t)) for t in tables}


def test_subscriber_follows_the_migration_under_concurrent_writes(logical_sandbox: Sandbox) -> None:
    sb = logical_sandbox
    assert sb.subscriber_dsn is not None
    spec = _table(sb, "events", ROWS, batch_size=500)
    with Writers(sb.active_dsn, ROWS, threads=3) as writers, \
            Migration(sb.active_dsn, spec, progress=lambda p: None, subscribers=[sb.subscriber_dsn],
                      throttle=lambda: time.sleep(0.02), lock_timeout="200ms", batch_target_seconds=0.001,
                      swap_max_attempts=30) as mig:
        time.sleep(0.3)
        mig.run("verified")
        with connect(sb.subscriber_dsn) as sub:  # the subscriber received the new table's rows
            assert scalar(sub, "SELECT count(*) FROM events_new") > 0
        writers.begin_swap()
        time.sleep(0.2)
        result = mig.swap()
        time.sleep(1.0)  # writes continue against the new table
        peers = result.record["peers"]
        m = mig.state()
    assert writers.stats.ops and not writers.stats.errors.get("lock_not_available"), writers.stats
    assert m is not None and m.state == "swapped"
    (peer,) = peers.values()
    assert peer["gid"] == f"tablemig-swap-{m.table_oid}" and peer["barrier"]["waited_s"] >= 0
    archive = m.archive.name
    sites = _caught_up(sb, ["events", archive])
    for table, (pub_fp, sub_fp) in sites.items():
        assert pub_fp == sub_fp, f"{table}: publisher {pub_fp} != subscriber {sub_fp}"
    with connect(sb.subscriber_dsn) as sub, connect(sb.active_dsn) as pub:
        # nothing left prepared; the subscriber's tables have the publisher's names and indexes
        assert scalar(sub, "SELECT count(*) FROM pg_prepared_xacts") == 0
        assert scalar(sub, "SELECT to_regclass('events_new')") is None
        assert scalar(sub, "SELECT count(*) FROM events WHERE d < %s", (CUTOFF,)) == 0
        assert scalar(sub, "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'events'::regclass"
                           " AND indisprimary") == "events_pkey"
        # both tables stay subscribed and ready
        states = dict(sub.execute("SELECT srrelid::regclass::text, srsubstate FROM pg_subscription_rel").fetchall())
        assert states == {"events": "r", archive: "r"}
        # a write after the swap reaches the subscriber's new live table, the mirror's copy its archive
        pub.execute("INSERT INTO events VALUES (999999999, now(), 1, 'after swap')")
    _wait(lambda: _row_on_subscriber(sb, "events", 999999999) and _row_on_subscriber(sb, archive, 999999999),
          "post-swap write on the subscriber")


def _row_on_subscriber(sb: Sandbox, table: str, ident: int) -> bool:
    assert sb.subscriber_dsn is not None
    with connect(sb.subscriber_dsn) as sub:
        return bool(scalar(sub, f"SELECT count(*) FROM {table} WHERE id = %s", (ident,)))


def test_rollback_after_swap_and_before_swap_on_the_subscriber(logical_sandbox: Sandbox) -> None:
    sb = logical_sandbox
    assert sb.subscriber_dsn is not None
    spec = _table(sb, "rb", 5_000, batch_size=1000)
    with Migration(sb.active_dsn, spec, progress=lambda p: None, subscribers=[sb.subscriber_dsn]) as mig:
        mig.run("swapped")
        with connect(sb.active_dsn) as pub:
            pub.execute("UPDATE rb SET v = v + 1 WHERE id = 5000")
        assert mig.rollback() == "swapped back"
    sites = _caught_up(sb, ["rb"])
    assert sites["rb"][0] == sites["rb"][1] and sites["rb"][0][0] == 5_000
    with connect(sb.subscriber_dsn) as sub:
        assert sub.execute("SELECT to_regclass('rb_new'), to_regclass('rb_archive')").fetchone() == (None, None)
        assert scalar(sub, "SELECT srsubstate FROM pg_subscription_rel WHERE srrelid = 'rb'::regclass"
                           ) == "r"
    # and once more, rolled back before the swap: the subscriber's new table goes too
    with Migration(sb.active_dsn, spec, progress=lambda p: None, subscribers=[sb.subscriber_dsn]) as mig:
        mig.run("indexed")  # the subscriber gets the new table once it has its key
        with connect(sb.subscriber_dsn) as sub:
            assert scalar(sub, "SELECT to_regclass('rb_new')") is None
        mig.run("verified")
    with connect(sb.subscriber_dsn) as sub:
        assert scalar(sub, "SELECT to_regclass('rb_new') IS NOT NULL")
    out = subprocess.run([sys.executable, "-m", "tablemig.cli.main", "rollback", "--execute", "--dsn", sb.active_dsn,
                          "--table", "public.rb", "--subscriber-dsn", sb.subscriber_dsn], capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 0 and "new table dropped" in out.stdout, out.stderr
    with connect(sb.subscriber_dsn) as sub:
        assert scalar(sub, "SELECT to_regclass('rb_new')") is None


def test_prepared_swap_left_by_a_crash_is_resolved_by_the_rerun(logical_sandbox: Sandbox,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash between the active site's commit and COMMIT PREPARED: the subscriber holds the
    renames prepared (applying nothing to the wrong table) until the rerun commits them."""
    sb = logical_sandbox
    assert sb.subscriber_dsn is not None
    spec = _table(sb, "cr", 3_000, batch_size=1000)
    with Migration(sb.active_dsn, spec, progress=lambda p: None, subscribers=[sb.subscriber_dsn]) as mig:
        mig.run("verified")
        (sub,) = mig.subscribers
        monkeypatch.setattr(sub, "finish_swap", lambda *a, **k: None)  # the "crash"
        mig.swap()
        m = mig.state()
        assert m is not None
        gid, archive = f"tablemig-swap-{m.table_oid}", m.archive.name
    with connect(sb.active_dsn) as pub:
        pub.execute("INSERT INTO cr VALUES (777777, now(), 1, 'while prepared')")
    with connect(sb.subscriber_dsn) as s:
        assert scalar(s, "SELECT count(*) FROM pg_prepared_xacts WHERE gid = %s", (gid,)) == 1
        time.sleep(0.5)
        s.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):  # the renamed tables are held
            s.execute("SELECT count(*) FROM cr_new")
    with Migration(sb.active_dsn, spec, progress=lambda p: None, subscribers=[sb.subscriber_dsn]) as mig:
        assert mig.resolve_subscribers() == [f"committed {gid}"]
    _wait(lambda: _row_on_subscriber(sb, "cr", 777777), "the write made while prepared")
    sites = _caught_up(sb, ["cr", archive])
    assert all(p == s for p, s in sites.values()), sites


def test_unsupported_publications_are_refused_before_anything_changes(logical_sandbox: Sandbox) -> None:
    sb = logical_sandbox
    assert sb.subscriber_dsn is not None
    with connect(sb.active_dsn) as conn:
        create_events(conn, 1_000, table="filtered")
    with connect(sb.active_dsn) as pub, connect(sb.subscriber_dsn) as sub:
        pub.execute("CREATE PUBLICATION pub_filtered FOR TABLE filtered WHERE (v > 10)")
        sub.execute(TABLE_DDL.format(t="filtered"))
        info = pub.info
        sub.execute(f"CREATE SUBSCRIPTION sub_filtered CONNECTION 'host={info.host} port={info.port}"
                    f" dbname={info.dbname} user={info.user}' PUBLICATION pub_filtered")
    spec = TableSpec("public.filtered", "d", cutoff=CUTOFF.isoformat())
    with Migration(sb.active_dsn, spec, progress=lambda p: None, subscribers=[sb.subscriber_dsn]) as mig, \
            pytest.raises(InputError, match="row filter or column list"):
        mig.run("capturing")
    with connect(sb.active_dsn) as pub:
        assert scalar(pub, "SELECT to_regclass('filtered_new')") is None


def test_plan_executes_against_a_logical_subscriber(logical_sandbox: Sandbox, tmp_path: Path) -> None:
    """The plan module with the subscriber as passive site: pre-checks, EX-3.1 (DDL applied on
    the subscriber, swapped there), EX-3.2 (checksums equal on both sites) pass."""
    import json

    from tablemig.cli.newplan import render_plan
    from tablemig.config.plan import TableConfig
    from tablemig.sandbox.demo_data import create_demo_data

    sb = logical_sandbox
    assert sb.subscriber_dsn is not None
    with connect(sb.active_dsn) as pub, connect(sb.subscriber_dsn) as sub:
        create_demo_data(pub, 20_000, schema="shop")
        create_demo_data(sub, 1, schema="shop")  # the same structure (FK, view) on the subscriber
        sub.execute("TRUNCATE shop.orders, shop.order_items")
        pub.execute("CREATE PUBLICATION pub_shop FOR TABLE shop.orders")
        info = pub.info
        sub.execute(f"CREATE SUBSCRIPTION sub_shop CONNECTION 'host={info.host} port={info.port}"
                    f" dbname={info.dbname} user={info.user}' PUBLICATION pub_shop")
        _wait(lambda: scalar(sub, "SELECT bool_and(srsubstate = 'r') FROM pg_subscription_rel"),
              "initial table sync")
    plan = tmp_path / "logical_plan.py"
    plan.write_text(render_plan(name="logical_plan", path=str(plan), tables=[
        TableConfig("shop.orders", "created_date", retention=0.1, batch_size=2000)]))
    cmd = [sys.executable, "-m", "pytest", str(plan), "-q", "-p", "no:cacheprovider", "--active-dsn",
           sb.active_dsn, "--passive-dsn", sb.subscriber_dsn, "--reports-dir", str(tmp_path / "reports")]
    dry = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert dry.returncode == 0, dry.stdout[-3000:]
    proc = subprocess.run([*cmd, "--execute"], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    run = json.loads(sorted((tmp_path / "reports").glob("*/latest/run.json"))[-1].read_text())
    steps = {s["id"]: s for s in run["steps"] if s["table"] in (None, "shop.orders")}
    for item in ("PRE-1.1a", "PRE-1.1c", "EX-2.2", "EX-3.1", "EX-3.2", "EX-3.3", "EX-4.1"):
        assert steps[item]["status"] == "passed", (item, steps[item])
    assert steps["PRE-1.1a"]["evidence"]["topology"] == "logical"
    assert steps["EX-3.1"]["evidence"]["topology"].startswith("logical")
    assert steps["EX-3.2"]["evidence"]["sites"]["live"]["rows_passive"] == 2_000
    with connect(sb.subscriber_dsn) as sub:
        # the subscriber's own dependants follow its live table too
        fk = sub.execute("SELECT confrelid::regclass::text, convalidated FROM pg_constraint WHERE conrelid ="
                         " 'shop.order_items'::regclass AND contype = 'f'").fetchone()
        assert fk == ("shop.orders", True)
        assert scalar(sub, "SELECT count(*) FROM shop.orders") == 2_000


def test_copy_mode_prune_and_cleanup_follow_on_the_subscriber(logical_sandbox: Sandbox) -> None:
    """Archive mode copy: the history copy is created and published too; prune and cleanup
    (which drops the kept original on both sites) keep the sites equal."""
    sb = logical_sandbox
    assert sb.subscriber_dsn is not None
    spec = _table(sb, "cp", 6_000, batch_size=1000, archive_mode="copy")
    with Writers(sb.active_dsn, 6_000, table="cp", threads=2) as writers, \
            Migration(sb.active_dsn, spec, progress=lambda p: None, subscribers=[sb.subscriber_dsn],
                      lock_timeout="200ms", swap_max_attempts=30) as mig:
        mig.run("verified")
        writers.begin_swap()
        time.sleep(0.2)
        mig.swap()
        time.sleep(0.5)
        m = mig.state()
    assert m is not None
    history, backup = m.archive.name, m.objects.outgoing.name
    sites = _caught_up(sb, ["cp", history, backup])
    assert all(p == s for p, s in sites.values()), sites
    with Migration(sb.active_dsn, spec, progress=lambda p: None, subscribers=[sb.subscriber_dsn]) as mig:
        mig.prune()
        assert mig.cleanup("CAB-7")[0] == f"public.{backup}"
    sites = _caught_up(sb, ["cp", history])
    assert all(p == s for p, s in sites.values()), sites
    with connect(sb.subscriber_dsn) as sub:
        assert scalar(sub, "SELECT to_regclass(%s)", (backup,)) is None


def test_the_dry_run_records_the_statements_the_execution_runs_on_both_sites(logical_sandbox: Sandbox) -> None:
    """With a logical subscriber, and a key GENERATED ALWAYS AS IDENTITY: the dry run
    records the subscriber's statements too (its new table, the subscription's refresh, the
    prepared swap), the same as the execution runs."""
    sb = logical_sandbox
    assert sb.subscriber_dsn is not None
    with connect(sb.active_dsn) as conn:
        create_events(conn, 5_000, table="ident", identity=True)
    _subscribe(sb, "ident")
    spec = TableSpec("public.ident", "d", cutoff=CUTOFF.isoformat(), batch_size=500)
    planned, would = run(sb.active_dsn, spec, "plan", "swapped", [sb.subscriber_dsn])
    executed, final = run(sb.active_dsn, spec, "execute", "swapped", [sb.subscriber_dsn])
    assert would is not None and final is not None and would.state == final.state == "swapped"
    assert any(s.site == "subscriber" and s.kind == "change" for s in planned.statements)
    same(statements(planned), statements(executed))


def test_subscriber_follows_a_family_with_children_kept(logical_sandbox: Sandbox) -> None:
    """orders with two children, the policy keep, under writes on the whole family: the rows
    the swap step copies for the children (before the lock and under it) reach the
    subscriber's live table like every other change."""
    sb = logical_sandbox
    assert sb.subscriber_dsn is not None
    with connect(sb.active_dsn) as pub, connect(sb.subscriber_dsn) as sub:
        create_family(pub, FAMILY_ROWS)
        pub.execute("CREATE PUBLICATION pub_family FOR TABLE orders, items, notes")
        create_family(sub, 0)
        sub.execute("DROP TABLE orders_twin, items_twin, notes_twin")
        info = pub.info
        conninfo = f"host={info.host} port={info.port} dbname={info.dbname} user={info.user}"
        sub.execute(f"CREATE SUBSCRIPTION sub_family CONNECTION '{conninfo}' PUBLICATION pub_family")
        _wait(lambda: scalar(sub, "SELECT bool_and(srsubstate = 'r') FROM pg_subscription_rel"),
              "initial table sync")
    spec = TableSpec("public.orders", "d", cutoff=FAMILY_CUTOFF.isoformat(), batch_size=500,
                     children={"public.items": "keep", "public.notes": "keep"})
    with FamilyWriters(sb.active_dsn, FAMILY_ROWS) as writers, \
            Migration(sb.active_dsn, spec, progress=lambda p: None, subscribers=[sb.subscriber_dsn],
                      throttle=lambda: time.sleep(0.02), lock_timeout="200ms", batch_target_seconds=0.001,
                      swap_max_attempts=30) as mig:
        mig.run("verified")
        time.sleep(0.3)
        writers.begin_swap()
        mig.swap()
        mig.validate_foreign_keys()
        time.sleep(0.5)
        m = mig.state()
    assert m is not None and m.state == "swapped" and writers.ops
    sites = _caught_up(sb, ["orders", m.archive.name, "items", "notes"])
    for table, (pub_fp, sub_fp) in sites.items():
        assert pub_fp == sub_fp, f"{table}: publisher {pub_fp} != subscriber {sub_fp}"
    with connect(sb.subscriber_dsn) as sub:
        assert scalar(sub, "SELECT count(*) FROM orders WHERE d < %s", (FAMILY_CUTOFF,)) > 0
        assert scalar(sub, "SELECT count(*) FROM pg_prepared_xacts") == 0


def _family_in_schema(sb: Sandbox, schema: str, publish: str) -> str:
    """The family of tests/family_twin.py in `schema` on both sites, the publisher's tables
    `publish` subscribed; returns a DSN whose search_path is the schema (for the writers)."""
    assert sb.subscriber_dsn is not None
    with connect(sb.active_dsn) as pub, connect(sb.subscriber_dsn) as sub:
        for c in (pub, sub):
            c.execute(f"CREATE SCHEMA {schema}")
            c.execute(f"SET search_path = {schema}")
        create_family(pub, FAMILY_ROWS)
        create_family(sub, 0)
        sub.execute("DROP TABLE orders_twin, items_twin, notes_twin")
        pub.execute(f"CREATE PUBLICATION pub_{schema} FOR TABLE {publish}")
        info = pub.info
        conninfo = f"host={info.host} port={info.port} dbname={info.dbname} user={info.user}"
        sub.execute(f"CREATE SUBSCRIPTION sub_{schema} CONNECTION '{conninfo}' PUBLICATION pub_{schema}")
        _wait(lambda: scalar(sub, "SELECT bool_and(srsubstate = 'r') FROM pg_subscription_rel"),
              "initial table sync")
    return f"{sb.active_dsn} options='-c search_path={schema}'"


def test_subscriber_follows_a_family_whose_child_follows(logical_sandbox: Sandbox) -> None:
    """orders with items (policy follow) and notes (keep), under writes on the whole family:
    the items' new table is attached to the subscriber like the table's, and swapped there
    with it in the same prepared transaction; after the swap and after the swap back both
    sites hold the same rows in every table of the family."""
    sb = logical_sandbox
    assert sb.subscriber_dsn is not None
    writers_dsn = _family_in_schema(sb, "fol", "fol.orders, fol.items, fol.notes")
    spec = TableSpec("fol.orders", "d", cutoff=FAMILY_CUTOFF.isoformat(), batch_size=500,
                     children={"fol.items": "follow", "fol.notes": "keep"})
    with FamilyWriters(writers_dsn, FAMILY_ROWS) as writers, \
            Migration(sb.active_dsn, spec, progress=lambda p: None, subscribers=[sb.subscriber_dsn],
                      throttle=lambda: time.sleep(0.02), lock_timeout="200ms", batch_target_seconds=0.001,
                      swap_max_attempts=30) as mig:
        mig.run("verified")
        result = mig.swap()
        peer = next(iter(result.record["peers"].values()))
        assert [f["child"] for f in peer["follow"]] == ["fol.items"], peer
        mig.validate_foreign_keys()
        time.sleep(0.5)
        m = mig.state()
    assert m is not None and m.state == "swapped" and writers.ops.get("repoint_item")
    suffix = m.archive.name[len("orders"):]
    tables = ["fol.orders", f"fol.{m.archive.name}", "fol.items", f"fol.items{suffix}", "fol.notes"]
    for table, (pub_fp, sub_fp) in _caught_up_tables(sb, tables).items():
        assert pub_fp == sub_fp, f"{table}: publisher {pub_fp} != subscriber {sub_fp}"
    with connect(sb.subscriber_dsn) as sub:
        # the subscriber's live items reference its live orders only; its keys are validated
        assert scalar(sub, "SELECT count(*) FROM fol.items i WHERE NOT EXISTS"
                           " (SELECT 1 FROM fol.orders o WHERE o.id = i.order_id)") == 0
        assert scalar(sub, "SELECT bool_and(convalidated) FROM pg_constraint WHERE contype = 'f'"
                           " AND connamespace = 'fol'::regnamespace") is True
        assert scalar(sub, "SELECT count(*) FROM pg_prepared_xacts") == 0
    with Migration(sb.active_dsn, spec, progress=lambda p: None, subscribers=[sb.subscriber_dsn],
                   lock_timeout="200ms", swap_max_attempts=30) as mig:
        assert mig.rollback() == "swapped back"
    for table, (pub_fp, sub_fp) in _caught_up_tables(sb, ["fol.orders", "fol.items", "fol.notes"]).items():
        assert pub_fp == sub_fp, f"{table} after the swap back: publisher {pub_fp} != subscriber {sub_fp}"
    with connect(sb.subscriber_dsn) as sub:
        assert scalar(sub, "SELECT count(*) FROM pg_tables WHERE schemaname = 'fol'") == 3
        sub.execute("DROP SUBSCRIPTION sub_fol")
    with connect(sb.active_dsn) as pub:
        pub.execute("DROP PUBLICATION pub_fol")


def _caught_up_tables(sb: Sandbox, tables: list[str]) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """`_caught_up` for schema-qualified tables."""
    assert sb.subscriber_dsn is not None
    with connect(sb.active_dsn) as pub, connect(sb.subscriber_dsn) as sub:
        wait_for_apply(pub, sub, table=tables[0])
        return {t: (_fingerprint(pub, t), _fingerprint(sub, t)) for t in tables}


def test_follow_of_a_child_the_subscriber_does_not_receive_is_refused(logical_sandbox: Sandbox) -> None:
    """A following child is swapped with the table on the subscriber too: one the table's
    subscription does not carry is refused at the capture, before anything changes."""
    sb = logical_sandbox
    assert sb.subscriber_dsn is not None
    _family_in_schema(sb, "refused", "refused.orders, refused.notes")  # items not published
    spec = TableSpec("refused.orders", "d", cutoff=FAMILY_CUTOFF.isoformat(), batch_size=500,
                     children={"refused.items": "follow", "refused.notes": "keep"})
    with Migration(sb.active_dsn, spec, progress=lambda p: None, subscribers=[sb.subscriber_dsn]) as mig:
        with pytest.raises(InputError) as err:
            mig.capture()
        assert "refused.items" in err.value.problem and "keep" in err.value.fix, err.value
        assert mig.state() is None
    with connect(sb.active_dsn) as pub, connect(sb.subscriber_dsn) as sub:
        assert scalar(pub, "SELECT to_regclass('refused.orders_new') IS NULL")
        sub.execute("DROP SUBSCRIPTION sub_refused")
        pub.execute("DROP PUBLICATION pub_refused")
