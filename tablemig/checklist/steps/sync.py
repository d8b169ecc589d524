"""Execution · Phase 3: replication synchronisation (EX-3.1 .. EX-3.3).

Physical standby: DDL and data replicate; the harness proves it by waiting for the
standby to replay past the active's current LSN and then finding the objects there, and by
comparing the tables on both sites while the application writes (`tablemig.pg.site_compare`).
Logical subscribers: the engine applies the DDL there and swaps with two-phase commit
(`tablemig.lifecycle.logical`); these steps prove the outcome the same way.
"""

from __future__ import annotations

from typing import Any

import psycopg

from ...lifecycle.state import live_table, old_table
from ...pg import replication
from ...pg.names import QualifiedName
from ...pg.replication import LagLimit
from ..context import StepContext
from . import sites


def _pair(ctx: StepContext) -> tuple[psycopg.Connection[Any], psycopg.Connection[Any]]:
    return ctx.connect("active"), ctx.connect("passive")


def _names(ctx: StepContext) -> dict[str, Any] | None:
    return ctx.migration()._state() if ctx.execute else None


def ex_3_1_prepare_passive_site(ctx: StepContext) -> None:
    active, passive = _pair(ctx)
    if ctx.passive_is_logical():
        _prepare_subscriber(ctx, active)
        return
    replay = replication.wait_for_replay(active, passive)
    m = _names(ctx)
    expected = ["table_migration.migration_state"]
    if m is not None:
        expected += [str(live_table(m)), str(old_table(m))]
    found = {name: passive.execute("SELECT to_regclass(%s)::text", (name,)).fetchone()[0]  # type: ignore[index]
             for name in expected}
    ctx.evidence(topology="physical: DDL replicates with the WAL", replayed=replay, objects_on_passive=found)
    if not ctx.execute and m is None:
        schema = passive.execute("SELECT schema_name FROM information_schema.schemata"
                                 " WHERE schema_name = 'table_migration'").fetchone()
        ctx.evidence(schema_on_passive=bool(schema))
        ctx.dry_run("after the migration: objects checked on the standby after replay")
        return
    missing = [n for n, v in found.items() if v is None]
    assert not missing, f"not on the passive site after replay: {missing}"


def _prepare_subscriber(ctx: StepContext, active: psycopg.Connection[Any]) -> None:
    """Logical: DDL does not replicate; the engine applies it on the subscriber (see
    tablemig.lifecycle.logical). This step proves the result: both tables there, subscribed, ready."""
    mig = ctx.migration()
    (sub,) = mig.subscribers
    m = _names(ctx)
    table = QualifiedName(m["schema_name"], m["original_name"]) if m else mig.plan().original
    link = sub.check(active, table)  # refuses unsupported publications, also in the dry run
    ctx.evidence(topology="logical: tablemig applies the DDL on the subscriber and swaps it with two-phase "
                          "commit", **link)
    if not ctx.execute or m is None:
        new = mig.plan().new
        ctx.dry_run(f"would create {new} on the subscriber (structure and indexes of its {table}), add it "
                    f"to publication(s) {', '.join(link['publications'])}, REFRESH PUBLICATION WITH "
                    "(copy_data = true), and swap the names there in a prepared transaction committed "
                    "right after the active site's swap")
        return
    resolved = mig.resolve_subscribers()
    wanted = [str(live_table(m)), str(old_table(m))] if m["state"] in ("swapped", "pruned", "cleaned") \
        else [str(QualifiedName(m["schema_name"], m["new_name"]))]
    states = link["table_states"]
    prepared = sub.conn.execute("SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'tablemig-%'").fetchall()
    ctx.evidence(subscribed=states, resolved_prepared=resolved, prepared_left=[r[0] for r in prepared])
    not_ready = [t for t in wanted if states.get(t) != "r"]
    assert not not_ready, f"not subscribed and ready on the subscriber: {not_ready} (states {states})"
    assert not prepared, f"prepared transactions left on the subscriber: {prepared}"


def ex_3_2_replication_health(ctx: StepContext) -> None:
    active, passive = _pair(ctx)
    limit = LagLimit.parse(ctx.plan.max_replication_lag)
    lag, waited_for_lag = replication.standbys_within(active, limit)  # a burst of WAL is waited out
    ctx.evidence(standbys=lag, max_replication_lag=limit.text, waited_for_lag_s=waited_for_lag)
    mig = ctx.migration()
    m = mig._state()
    if (m is None or m["state"] not in ("swapped", "pruned")) and not ctx.execute:
        waited = (replication.wait_for_apply(active, passive) if ctx.passive_is_logical()
                  else replication.wait_for_replay(active, passive))
        ctx.evidence(caught_up=waited)
        ctx.dry_run("after the swap: lag under the limit and the live table and the archive equal on both sites")
        return
    if m is not None and m["state"] in ("swapped", "pruned"):
        plan = mig.plan_for_state(m)
        tables = {"live": live_table(m), "archive": old_table(m)}
    else:  # not swapped (yet): the table as it is
        plan = mig.plan()
        tables = {"live": plan.original}
    result = sites.compare_tables(ctx, sites.pair(ctx, active, passive), sites.reconciler(plan), tables)
    ctx.table.facts["sites"] = {k: v.evidence() for k, v in result.items()}
    conflicts = passive.execute("SELECT confl_tablespace, confl_lock, confl_snapshot, confl_bufferpin,"
                                " confl_deadlock FROM pg_stat_database_conflicts"
                                " WHERE datname = current_database()").fetchone()
    ctx.evidence(standby_conflicts=dict(zip(["tablespace", "lock", "snapshot", "bufferpin", "deadlock"],
                                            conflicts or [], strict=False)))
    for r in lag:
        assert not limit.exceeded(r["lag_bytes"], r["lag_seconds"]), f"lag over {limit.text}: {r}"


def ex_3_3_reenable_replication(ctx: StepContext) -> None:
    table = ctx.result.table
    note = "Migration completed, replication re-enabled"
    ex = ctx.executor()
    ex.run("UPDATE table_migration.replication_control SET replication_enabled = TRUE, last_sync_time = NOW(),"
           " notes = %s WHERE table_name = %s", (note, table))
    if not ctx.execute:
        ctx.dry_run("would mark replication re-enabled in table_migration.replication_control")
        return
    row = ex.conn.execute("SELECT replication_enabled, last_sync_time::text, notes FROM"
                          " table_migration.replication_control WHERE table_name = %s", (table,)).fetchone()
    ctx.evidence(replication_control=row and {"replication_enabled": row[0], "last_sync_time": row[1],
                                              "notes": row[2]})
    assert row is not None and row[0], "replication_control was not updated"
