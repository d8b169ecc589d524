"""Pre-execution · 1. Environment assessment (PRE-1.1 replication, PRE-1.2 resources,
PRE-1.3 dependencies). All read-only: they run in dry runs and executions alike."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import psycopg

from ...config.settings import Settings
from ...lifecycle.pacing import write_rate
from ...lifecycle.resume import note
from ...pg import replication
from ...pg.app_queries import table_queries
from ...pg.binding import bindings
from ...pg.connect import server_identity
from ...pg.dependencies import scan_functions
from ...pg.replication import LagLimit
from ..context import NotApplicable, StepContext
from . import sites


def _require_pair(ctx: StepContext) -> tuple[psycopg.Connection[Any], psycopg.Connection[Any]]:
    active = ctx.connect("active")
    passive = ctx.connect("passive")  # NotApplicable when single-site; an error when unreachable
    if server_identity(active)[1:] == server_identity(passive)[1:] and \
            active.info.dbname == passive.info.dbname:
        raise AssertionError("the passive DSN points at the same server as the active DSN: "
                             "give the standby's address")
    return active, passive


def pre_1_1a_only_one_site_active(ctx: StepContext) -> None:
    active, passive = _require_pair(ctx)
    a = active.execute("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')").fetchone()
    p = passive.execute("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')").fetchone()
    assert a is not None and p is not None
    subs = passive.execute("SELECT count(*) FROM pg_subscription").fetchone()
    topology = "physical" if p[0] else ("logical" if subs and subs[0] else "none")
    ctx.evidence(active_in_recovery=a[0], passive_in_recovery=p[0], passive_read_only=p[1], topology=topology)
    ctx.table_facts_all(topology=topology)
    assert not a[0], "the active site is in recovery: it cannot take writes"
    if topology == "physical":
        senders = replication.standbys(active)
        ctx.evidence(standbys=senders)
        assert senders, "the passive is a standby but the active has no streaming standby (pg_stat_replication)"
    else:
        assert topology == "logical", ("the passive site is writable and subscribes to nothing: two sites are "
                                       "active for writes")


def pre_1_1b_replication_lag(ctx: StepContext) -> None:
    active, _ = _require_pair(ctx)
    limit = LagLimit.parse(ctx.plan.max_replication_lag)
    rows, waited = replication.standbys_within(active, limit)
    ctx.evidence(max_replication_lag=limit.text, standbys=rows, waited_for_lag_s=waited,
                 base_backups_in_progress=replication.base_backups(active))
    assert rows, "no standby is streaming from the active site"
    for r in rows:
        assert r["state"] == "streaming", f"standby {r['application_name']} is {r['state']}, not streaming"
        assert not limit.exceeded(r["lag_bytes"], r["lag_seconds"]), (
            f"standby {r['application_name']} lags {r['lag_bytes']} bytes / {r['lag_seconds']} s, "
            f"over {limit.text}")


def pre_1_1c_passive_in_sync(ctx: StepContext) -> None:
    """The table holds the same rows on both sites, compared while the application writes
    (tablemig.pg.site_compare): rows still changing are in flight, a row that stays different
    while its active version stays the same is divergence."""
    active, passive = _require_pair(ctx)
    mig = ctx.migration()
    plan = mig.plan()
    if ctx.passive_is_logical():
        link = mig.subscribers[0].check(active, plan.original)  # refusals before anything changes
        ctx.evidence(subscription=link)
    if plan.resumed_state:  # after the swap: the live table and the original, now the archive
        ctx.evidence(resumed=note(plan.resumed_state))
    tables = {str(t): t for t in dict.fromkeys([plan.original, *plan.sources])}
    found = sites.compare_tables(ctx, sites.pair(ctx, active, passive), sites.reconciler(plan), tables)
    ctx.evidence(tables={label: {"segments": d.segments, "rows_active": d.rows_active,
                                 "rows_passive": d.rows_passive} for label, d in found.items()})


def pre_1_1d_replication_configuration(ctx: StepContext) -> None:
    active = ctx.connect("active")
    try:
        passive = ctx.connect("passive")
    except NotApplicable:  # single site, or a passive the plan may run without: the active alone
        passive = None
    snap = replication.snapshot(active, passive)
    ctx.record.facts["replication"] = snap
    ctx.evidence(**snap)


# -- resources --------------------------------------------------------------------------------
def _local_data_dir(conn: psycopg.Connection[Any]) -> Path | None:
    row = conn.execute("SELECT current_setting('data_directory', true), inet_server_addr()::text").fetchone()
    if not row or not row[0]:
        return None
    local = row[1] is None or row[1].split("/")[0] in ("127.0.0.1", "::1")
    path = Path(row[0])
    return path if local and path.exists() else None


def pre_1_2a_disk_space(ctx: StepContext) -> None:
    conn = ctx.connect()
    sizes = {str(r.spec().qualified): conn.execute("SELECT pg_total_relation_size(%s::regclass)",
                                                   (str(r.spec().qualified),)).fetchone()[0]  # type: ignore[index]
             for r in ctx.plan.tables}
    largest = max(sizes.values())
    need = 3 * largest
    data_dir = _local_data_dir(conn)
    if data_dir is not None:
        free, source = shutil.disk_usage(data_dir).free, f"free space of {data_dir}"
    elif ctx.plan.declared_free_bytes is not None:
        free, source = ctx.plan.declared_free_bytes, "declared in the plan (declared_free_bytes)"
    else:
        ctx.evidence(table_bytes=sizes, required_bytes=need)
        ctx.warn("free space unknown: the server is remote and the plan declares no figure "
                 "(set declared_free_bytes); this is not a pass")
        return
    ctx.evidence(table_bytes=sizes, largest_bytes=largest, required_bytes=need, free_bytes=free, source=source)
    assert free >= need, f"only {free} bytes free, {need} needed (3x the largest table)"


def pre_1_2b_backup_space(ctx: StepContext) -> None:
    conn = ctx.connect()
    need = sum(conn.execute("SELECT pg_table_size(%s::regclass)", (str(t.spec().qualified),)).fetchone()[0]  # type: ignore[index]
               for t in ctx.plan.tables)
    target = Path(ctx.plan.backup_dir)
    target.mkdir(parents=True, exist_ok=True) if ctx.execute else None
    probe = target if target.exists() else target.resolve().parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    ctx.evidence(backup_dir=str(target.resolve()), estimated_dump_bytes=need, free_bytes=free)
    assert free >= need, f"backup target has {free} bytes free; the dump needs about {need}"


def pre_1_2c_cpu_and_memory(ctx: StepContext) -> None:
    conn = ctx.connect()
    settings = dict(conn.execute(
        "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name IN ('max_connections',"
        " 'shared_buffers', 'maintenance_work_mem', 'work_mem', 'max_wal_size', 'max_worker_processes',"
        " 'max_parallel_maintenance_workers')").fetchall())
    used = conn.execute("SELECT count(*) FROM pg_stat_activity").fetchone()
    mwm = conn.execute("SELECT setting::bigint * 1024 FROM pg_settings WHERE name = 'maintenance_work_mem'").fetchone()
    workers = max(t.workers for t in ctx.plan.tables)
    need_conns = workers + 4
    maxc = int(str(settings["max_connections"]))
    evidence: dict[str, Any] = {"settings": settings, "connections_in_use": used and used[0],
                                "connections_needed": need_conns,
                                # the load the write guard protects (tablemig.lifecycle.pacing)
                                "write_transactions_per_second": round(write_rate(conn), 1),
                                "app_write_share": (f"migration_config (default {Settings.app_write_share:g})"
                                                    if ctx.plan.app_write_share is None
                                                    else ctx.plan.app_write_share)}
    if _local_data_dir(conn) is not None:
        evidence.update(cpu_count=os.cpu_count(), load_average=os.getloadavg())
    ctx.evidence(**evidence)
    assert used is not None and maxc - used[0] >= need_conns, "not enough free connections for the migration"
    if mwm and mwm[0] < 64 * 1024**2:
        ctx.warn("maintenance_work_mem below 64MB: index builds will be slow")


def pre_1_2d_network_bandwidth(ctx: StepContext) -> None:
    active, _ = _require_pair(ctx)
    estimate = 0
    for t in ctx.plan.tables:
        plan = ctx.migration_for(t).plan()
        if plan.swapped:  # nothing is copied any more
            continue
        share = plan.keep_rows / max(plan.total_rows, 1)
        estimate += int(plan.info.total_bytes * share * 1.2)  # heap + indexes of the kept rows, WAL overhead
    limit = LagLimit.parse(ctx.plan.max_replication_lag)
    rows, waited = replication.standbys_within(active, limit)
    stats = active.execute("SELECT wal_bytes, extract(epoch FROM now() - stats_reset) FROM pg_stat_wal").fetchone()
    ctx.evidence(estimated_wal_bytes=estimate, standbys=rows, waited_for_lag_s=waited,
                 wal_bytes_since_reset=stats and int(stats[0]), seconds_since_reset=stats and stats[1])
    for r in rows:
        assert not limit.exceeded(r["lag_bytes"], r["lag_seconds"]), "the standby does not keep up now"
    ctx.evidence(note="the backfill is throttled on replica lag, so WAL is sent no faster than the standby "
                      "replays it")


# -- dependencies -----------------------------------------------------------------------------
def pre_1_3a_affected_tables(ctx: StepContext) -> None:
    plan = ctx.migration().plan()
    affected = {str(plan.original), str(plan.new), str(plan.archive), *map(str, plan.sources)}
    affected |= {str(fk.table) for fk in plan.info.incoming_fks}
    affected |= {str(v.name) for v in plan.info.views}
    ctx.evidence(affected=sorted(affected), new_table=str(plan.new), archive_table=str(plan.archive))


def pre_1_3b_foreign_keys(ctx: StepContext) -> None:
    plan = ctx.migration().plan()
    blockers = [b for b in plan.blockers if "foreign key" in b or "child" in b]
    ctx.evidence(incoming=[f"{fk.table}.{fk.name}: {fk.definition}" for fk in plan.info.incoming_fks],
                 outgoing=[f"{n}: {d}" for n, d, _ in plan.info.outgoing_fks],
                 self_references=[f"{fk.name}: {fk.definition}" for fk in plan.info.self_fks],
                 children=[c.as_dict() for c in plan.children],
                 rows_kept_live_for_children=plan.retained_rows,
                 blockers=blockers)
    assert not blockers, "foreign keys block the migration: " + "; ".join(blockers)


def pre_1_3c_application_dependencies(ctx: StepContext) -> None:
    conn = ctx.connect()
    apps = conn.execute("SELECT application_name, usename, count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND backend_type = 'client backend'"
                        " AND application_name NOT LIKE 'tablemig%%' GROUP BY 1, 2 ORDER BY 3 DESC").fetchall()
    ctx.evidence(connected_applications=[{"application": a, "user": u, "sessions": n} for a, u, n in apps],
                 declared_applications=list(ctx.plan.applications),
                 note="connected sessions and recorded queries are hints, not a list of every application: "
                      "a person confirms")
    for t in ctx.plan.tables:  # the statements the server recorded that name each table
        found = table_queries(conn, t.spec().qualified)
        ctx.evidence(**{f"queries_touching_{t.spec().qualified}": found})
    ctx.attest()


def pre_1_3d_views_procedures_triggers(ctx: StepContext) -> None:
    plan = ctx.migration().plan()
    conn = ctx.connect()
    found = scan_functions(conn, plan.original)
    ctx.evidence(views=[str(v.name) for v in plan.info.views if v.kind == "v"],
                 materialized_views=[str(v.name) for v in plan.info.views if v.kind == "m"],
                 triggers=[t.name for t in plan.info.triggers], policies=[p["name"] for p in plan.info.policies],
                 publications=plan.info.publications, functions=found,
                 bound_by_oid=plan.info.bound_functions,
                 rules_writing_the_table=[f"{r.name} on {r.relation}" for r in plan.info.rules_elsewhere],
                 trigger_search_path=["pg_catalog", *plan.search_path, "pg_temp"])
    bound = bindings(conn, plan.original)
    ctx.evidence(bindings=[b.as_dict() for b in bound])
    # the schemas the tool's trigger functions need for the table's expressions
    # (tablemig.pg.search_path): refused when others may create objects there
    unsafe = [b for b in plan.blockers if "search_path" in b]
    assert not unsafe, "; ".join(unsafe)
    stale = [b.name for b in bound if b.kind == "policy elsewhere"]
    if stale:
        ctx.warn("policies of other tables read the table and are not rebuilt by the swap (they would read "
                 "the archive): " + ", ".join(stale) + "; recreate them after the swap")
    unverified = [f["function"] for f in found if f["status"] == "unverified"]
    if unverified:
        ctx.warn(f"could not parse {len(unverified)} function bodies; checked by text search only: "
                 + ", ".join(unverified))

