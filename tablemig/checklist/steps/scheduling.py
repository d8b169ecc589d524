"""Pre-execution · 3. Communication and scheduling (PRE-3.1 .. PRE-3.4)."""

from __future__ import annotations

import datetime as dt

from ...pg.schema import CONFIG_SEED, installed_version, render_schema
from .. import notify
from ..context import StepContext

# A conservative planning rate for this kind of hardware; the report shows the measured one.
PLANNING_ROWS_PER_SECOND = 150_000


def estimated_seconds(ctx: StepContext) -> float:
    total = 0.0
    for t in ctx.plan.tables:
        plan = ctx.migration_for(t).plan()
        if plan.swapped:  # resumed after the swap: no rows left to copy
            continue
        total += plan.keep_rows / PLANNING_ROWS_PER_SECOND * 2.5  # copy, indexes, verify
    return total


def pre_3_1_maintenance_window(ctx: StepContext) -> None:
    est = estimated_seconds(ctx)
    ctx.evidence(estimated_seconds=round(est, 1), recommended="4-8 hours for large tables")
    window = ctx.plan.window
    if window is not None:
        start, end = window.bounds()
        now = dt.datetime.now(dt.UTC)
        ctx.evidence(window_start=start.isoformat(), window_end=end.isoformat(), now=now.isoformat())
        if ctx.execute:
            assert start <= now <= end, f"now ({now:%Y-%m-%d %H:%M} UTC) is outside the maintenance window"
            assert (end - now).total_seconds() >= est, "the window left is shorter than the estimate"
        elif (end - start).total_seconds() < est:
            ctx.warn("the maintenance window is shorter than the estimated duration")
    else:
        ctx.evidence(window="none declared in the plan")
    ctx.attest()


def pre_3_2_notify_stakeholders(ctx: StepContext) -> None:
    notify.validate(ctx.plan.notifiers)
    audiences = ["database administrators", "application teams", "business users", "operations team"]
    if ctx.plan.notifiers and ctx.execute:
        deliveries = notify.send(ctx.plan.notifiers, "start", ctx.plan.name,
                                 {"tables": [t.table for t in ctx.plan.tables], "audiences": audiences})
        ctx.record.facts["notifications"] = deliveries
        ctx.evidence(deliveries=deliveries)
        failed = [d for d in deliveries if not d.get("delivered")]
        assert not failed, f"notifications failed: {failed}"
        return
    if ctx.plan.notifiers:
        ctx.evidence(notifiers=[n.get("kind") for n in ctx.plan.notifiers], audiences=audiences)
        ctx.dry_run("would send the start notification to every notifier")
        return
    ctx.evidence(audiences=audiences, notifiers="none configured")
    ctx.attest()


def pre_3_3_monitoring_dashboard(ctx: StepContext) -> None:
    conn = ctx.connect()
    installed = installed_version(conn) is not None
    ctx.evidence(dashboard="the HTML report of this run (reports/<plan>/latest/report.html)",
                 health_check="table_migration.health_check()", schema_installed=installed)
    if installed:
        rows = conn.execute("SELECT check_name, status FROM table_migration.health_check()").fetchall()
        ctx.evidence(health_rows=[list(r) for r in rows])
    else:
        assert any("health_check()" in s for s in render_schema()), "health_check() missing from the schema"


def pre_3_4_alerting_thresholds(ctx: StepContext) -> None:
    conn = ctx.connect()
    wanted = [k for k, _, _ in CONFIG_SEED if k.startswith("alert_")] + ["max_replication_lag"]
    if installed_version(conn) is not None:
        rows = dict(conn.execute("SELECT config_key, config_value FROM table_migration.migration_config"
                                 " WHERE config_key = ANY(%s)", (wanted,)).fetchall())
        missing = [k for k in wanted if k not in rows]
        assert not missing, f"thresholds missing from migration_config: {missing}"
        conn.execute("SELECT * FROM table_migration.health_check()").fetchall()  # evaluates them
        ctx.evidence(thresholds=rows, evaluated_by="table_migration.health_check()")
    else:
        ctx.evidence(thresholds={k: v for k, v, _ in CONFIG_SEED if k in wanted},
                     note="seeded when EX-1.1 installs the schema")
