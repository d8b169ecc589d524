"""Execution · Phase 5 (EX-5.1, EX-5.2) and the post-migration tasks (POST-1 .. POST-3)."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from ...pg.names import QualifiedName
from ...pg.reconcile import Reconciler
from ...pg.schema import installed_version
from ..context import StepContext

HEALTH_VIEW = ("CREATE OR REPLACE VIEW table_migration.daily_migration_health AS"
               " SELECT * FROM table_migration.health_check()")
CRON = "*/15 * * * * tablemig health --dsn \"$TABLEMIG_DSN\" >> /var/log/tablemig-health.log 2>&1"


def _health(ctx: StepContext) -> list[dict[str, Any]]:
    conn = ctx.connect()
    with conn.cursor(row_factory=dict_row) as cur:
        return list(cur.execute("SELECT * FROM table_migration.health_check()").fetchall())


def ex_5_1_health_monitoring(ctx: StepContext) -> None:
    ex = ctx.executor()
    ex.run(HEALTH_VIEW)
    if not ctx.execute:
        ctx.dry_run("would create the table_migration.daily_migration_health view", cron=CRON)
        return
    rows = ex.conn.execute("SELECT count(*) FROM table_migration.daily_migration_health").fetchone()
    ctx.evidence(view="table_migration.daily_migration_health", rows=rows and rows[0], schedule=CRON,
                 cli="tablemig health --dsn DSN  (exit 1 on an alert)")


def ex_5_2_alerts(ctx: StepContext) -> None:
    conn = ctx.connect()
    if installed_version(conn) is None:
        ctx.dry_run("alerts are evaluated by health_check() once the schema is installed")
        return
    rows = _health(ctx)
    categories = {"replication_lag": "replication lag exceeding threshold",
                  "failed_trigger_executions": "failed trigger executions",
                  "volume_change": "unusual data volume changes",
                  "archive_growth": "archive table growth rate"}
    seen = {r["check_name"] for r in rows}
    ctx.evidence(checks=rows, categories={k: (v, k in seen) for k, v in categories.items()},
                 dashboard="reports/<plan>/latest/report.html")
    alerts = [r for r in rows if r["status"] == "alert"]
    assert not alerts, f"alerts firing: {alerts}"


def post_1_first_24_hours(ctx: StepContext) -> None:
    """Monitor stability, verify the sync, check performance, review error logs, replication
    health: the same checks a cron job runs (`tablemig health`), recorded now."""
    conn = ctx.connect()
    if installed_version(conn) is None:
        ctx.dry_run("after the migration: `tablemig health` every 15 minutes; results recorded")
        return
    rows = _health(ctx)
    failures = conn.execute("SELECT count(*) FROM table_migration.capture_failures WHERE repaired_at IS NULL"
                            ).fetchone()
    errors = conn.execute("SELECT count(*) FROM table_migration.migration_log WHERE status IN ('failed', 'mismatch')"
                          " AND logged_at > now() - interval '24 hours'").fetchone()
    ctx.evidence(health=rows, unrepaired_capture_failures=failures and failures[0],
                 errors_logged_24h=errors and errors[0], schedule=CRON)
    assert not [r for r in rows if r["status"] == "alert"]


def post_2_first_week(ctx: StepContext) -> None:
    """Daily integrity check (live table against the archive's copy until prune) and the
    trigger performance report."""
    conn = ctx.connect()
    if installed_version(conn) is None:
        ctx.dry_run("after the migration: daily integrity check and trigger performance report")
        return
    checked: dict[str, Any] = {}
    for run in ctx.record.tables.values():
        m = conn.execute("SELECT schema_name, original_name, archive_name, key_columns, state, swap_record"
                         " FROM table_migration.migration_state WHERE table_name = %s",
                         (str(run.config.spec().qualified),)).fetchone()
        if not m or m[4] != "swapped":
            checked[str(run.config.spec().qualified)] = f"state {m and m[4]}: nothing to compare"
            continue
        live = QualifiedName(m[0], m[1])
        archive = QualifiedName(m[0], (m[5] or {}).get("outgoing") or m[2])
        checked[str(live)] = _copies(conn, live, archive, list(m[3]))
    stats = conn.execute("SELECT funcname, calls, round(total_time::numeric, 2), round(self_time::numeric, 2)"
                         " FROM pg_stat_user_functions WHERE schemaname = 'table_migration'").fetchall()
    track = conn.execute("SELECT current_setting('track_functions')").fetchone()
    ctx.evidence(integrity=checked, daily_command="tablemig status --dsn DSN && tablemig health --dsn DSN",
                 trigger_functions=[list(r) for r in stats], track_functions=track and track[0])
    if track and track[0] == "none":
        ctx.warn("track_functions is off: trigger timings need SET track_functions = 'pl'")
    bad = [k for k, v in checked.items() if isinstance(v, dict) and not v["match"]]
    assert not bad, f"integrity check failed for {bad}"


def _copies(conn: psycopg.Connection[Any], live: QualifiedName, archive: QualifiedName,
            key: list[str]) -> dict[str, Any]:
    """The archive's copies of the live rows (kept by the mirror trigger until prune) against
    the live rows: one statement, so one snapshot, and one join (linear in the rows)."""
    cols = [r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass"
                                       " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                                       (str(live),)).fetchall()]
    types = dict(conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                              " WHERE attrelid = %s::regclass AND attnum > 0", (str(live),)).fetchall())
    rec = Reconciler(key, [types[k] for k in key], cols)
    rec.choose_hash(conn, live)
    row = conn.execute(sql.SQL(
        "SELECT count(*), count(*) FILTER (WHERE a.h IS NULL), count(*) FILTER (WHERE a.h <> l.h)"
        " FROM (SELECT {k}, {h} AS h FROM {live}) l LEFT JOIN (SELECT {k}, {h} AS h FROM {arch}) a USING ({k})").format(
        k=rec.key_list(), h=rec.hash64(), live=live.ident(), arch=archive.ident())).fetchone()
    assert row is not None
    live_rows, missing, differing = (int(x) for x in row)
    return {"live_rows": live_rows, "archive_copies": live_rows - missing, "missing_in_archive": missing,
            "differing_in_archive": differing, "match": missing == 0 and differing == 0}


def post_3_first_month(ctx: StepContext) -> None:
    """Cleanup waits for recorded business approval (the attestation); the audit log is
    archived to a CSV file next to the report (the log itself stays append-only)."""
    conn = ctx.connect()
    if installed_version(conn) is not None and ctx.execute:
        out = Path(ctx.plan.backup_dir).resolve() / ctx.plan.name / "audit"
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"migration_log_{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}.csv"
        with conn.cursor() as cur, path.open("w", newline="") as fh:
            cur.execute("SELECT log_id, logged_at, table_name, operation, status, rows_affected, duration_ms,"
                        " details::text, executed_by FROM table_migration.migration_log ORDER BY log_id")
            w = csv.writer(fh)
            w.writerow([d.name for d in cur.description or []])
            w.writerows(cur.fetchall())
        ctx.evidence(audit_log_archive=str(path))
    ctx.evidence(cleanup_command="tablemig cleanup --dsn DSN --table T --approved-by NAME",
                 future_migrations="tablemig new-plan --table ... --output plans/<table>_migration.py")
    ctx.attest()
