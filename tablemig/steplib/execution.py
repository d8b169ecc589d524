"""Execution phases 1, 2 and 4.1, and the immediate rollback (EX-1.1 .. EX-2.3, EX-4.1, RB-1)."""

from __future__ import annotations

from psycopg import sql

from .. import probes
from ..names import QualifiedName
from ..reconcile import Reconciler, Side
from ..schema import SCHEMA_VERSION, install_schema, installed_version, render_schema
from ..state import old_table
from ..steps import StepContext
from ..structure import change_log_name, create_table_sql


# -- Execution · Phase 1 ----------------------------------------------------------------------
def ex_1_1_deploy_framework(ctx: StepContext) -> None:
    """EX-1.1 Deploy migration framework: install the table_migration schema, verify it,
    test a utility function."""
    conn = ctx.connect()
    before = installed_version(conn)
    ctx.evidence(installed_version=before, version=SCHEMA_VERSION)
    if not ctx.execute:
        ctx.dry_run(f"would install table_migration schema version {SCHEMA_VERSION}"
                    f" (installed: {before})", sql=render_schema())
        return
    result = install_schema(conn)
    schema = conn.execute("SELECT schema_name FROM information_schema.schemata"
                          " WHERE schema_name = 'table_migration'").fetchone()
    value = conn.execute("SELECT table_migration.get_config('data_retention_percentage')").fetchone()
    assert schema is not None, "table_migration schema missing after install"
    assert value is not None and float(value[0]) > 0
    ctx.evidence(action=result.action, schema=schema[0], data_retention_percentage=value[0])
    # The PRE-2.1 backup was taken before the schema existed: record it in the audit log now,
    # so cleanup (and only cleanup) can find and remove each table's dump.
    from ..state import log
    from .backups import backup_log_entries, latest_backup

    for table, details in backup_log_entries(latest_backup(ctx) or {}):
        log(conn, table, "backup", "done", details=details)


def ex_1_2_configure_parameters(ctx: StepContext) -> None:
    """EX-1.2 Configure migration parameters: retention percentage and batch size."""
    first = ctx.plan.tables[0]
    values = {"data_retention_percentage": str(first.retention or ""),
              "batch_size": str(first.batch_size),
              "max_replication_lag": ctx.plan.max_replication_lag}
    ex = ctx.executor()
    for key, value in values.items():
        if value:
            ex.run("UPDATE table_migration.migration_config SET config_value = %s, updated_at = now()"
                   " WHERE config_key = %s", (value, key))
    if not ctx.execute:
        ctx.dry_run("would set " + ", ".join(f"{k}={v}" for k, v in values.items() if v))
        return
    rows = dict(ex.conn.execute("SELECT config_key, config_value FROM table_migration.migration_config"
                                " WHERE config_key = ANY(%s)", (list(values),)).fetchall())
    for key, value in values.items():
        if value:
            assert rows[key] == value, f"{key} is {rows.get(key)}, expected {value}"
    ctx.evidence(config=rows)


def ex_1_3_analyze_tables(ctx: StepContext) -> None:
    """EX-1.3 Analyze target tables: data volume per month and the cutoff date."""
    mig = ctx.migration()
    plan = mig.plan()
    frame = probes.monthly_distribution(ctx.connect(), plan.original, plan.date_column, plan.date_type,
                                        plan.cutoff)
    ctx.table.facts.update(cutoff=plan.cutoff, rows_total=plan.total_rows, rows_keep=plan.keep_rows,
                           rows_archive=plan.archive_rows, distribution=frame.to_dict("records"))
    ctx.evidence(cutoff=plan.cutoff, rows_total=plan.total_rows, rows_keep=plan.keep_rows,
                 rows_archive=plan.archive_rows, rows_null_date=plan.null_dated_rows,
                 months=len(frame), warnings=plan.warnings, blockers=plan.blockers)
    assert int(frame["record_count"].sum()) + plan.null_dated_rows == plan.total_rows
    assert int(frame["kept"].sum()) == plan.keep_rows


def ex_2_1_create_new_table(ctx: StepContext) -> None:
    """EX-2.1 Create new table structure and validate it. The capture trigger is installed in
    the same transaction: it must exist before any row is copied, or writes made during the
    copy would be lost (the seed lists it later, in Step 2.3)."""
    mig = ctx.migration()
    plan = mig.plan() if not ctx.execute else mig._plan or mig.plan()
    assert not plan.blockers, "blockers: " + "; ".join(plan.blockers)
    if not ctx.execute:
        ctx.dry_run(f"would create {plan.new} and the capture trigger on {plan.original}",
                    sql=[s.as_string() for s in create_table_sql(plan.info, plan.new, "current_user")],
                    summary=plan.summary())
        return
    mig.capture()
    m = mig._state()
    assert m is not None and m["state"] != "planned"
    new = QualifiedName(m["schema_name"], m["new_name"])
    conn = ctx.connect()
    checks = conn.execute("SELECT check_name, status, detail FROM table_migration.validate_table_structure("
                          "%s::regclass, %s::regclass)", (str(plan.original), str(new))).fetchall()
    ctx.evidence(new_table=str(new), structure=[{"check": c, "status": s, "detail": d} for c, s, d in checks])
    # the new table is created bare: its key is built after the load (index step), so a
    # missing key is expected here; any other key is still an error
    errors = [c for c in checks if c[1] == "error"
              and not (c[0] == "primary key" and c[2].endswith("new key (none)"))]
    assert not errors, f"structure errors: {errors}"
    # until the replay switches it to direct capture, the trigger logs changed keys
    log = change_log_name(plan.info.oid)
    in_log = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (str(log),)).fetchone()
    probe = probes.trigger_probe(conn, plan.original, log if in_log and in_log[0] else new, plan.key,
                                 plan.date_column, plan.date_type, plan.cutoff, plan.columns,
                                 plan.overriding, key_only=bool(in_log and in_log[0]))
    ctx.table.facts["capture_probe"] = probe


def ex_2_2_execute_migration(ctx: StepContext) -> None:
    """EX-2.2 Execute migration: dry run first, review, execute (backfill, indexes, verify,
    swap), monitor progress."""
    mig = ctx.migration()
    if not ctx.execute:
        plan = mig.plan()
        from ..backfill import CopyJob, chunk_sql
        from .scheduling import PLANNING_ROWS_PER_SECOND

        types = {c.name: c.type for c in plan.info.columns}
        job = CopyJob(plan.original, plan.new, plan.columns, plan.order_columns,
                      [types[c] for c in plan.order_columns], plan.date_column, plan.date_type, plan.cutoff,
                      plan.overriding, plan.key)
        estimate = round(plan.keep_rows / PLANNING_ROWS_PER_SECOND * 2.5, 1)
        split = plan.date_column if plan.order_by_date else plan.key[0]
        split_type = plan.date_type if plan.order_by_date else types[split]
        ctx.dry_run(f"would copy {plan.keep_rows} rows to {plan.new} in chunks (about {estimate} s), "
                    f"build its key and {len(plan.info.indexes) - 1} indexes, replay the changes "
                    "logged meanwhile, switch to direct capture, verify, and swap",
                    summary=plan.summary(), estimated_seconds=estimate, estimated_rows=plan.keep_rows,
                    batch_sql=[chunk_sql(job, split, split_type, True, True).as_string()])
        return
    m = mig._state()
    ctx.evidence(dry_run_review=(mig._plan.summary() if mig._plan else None),
                 resumed_from=m["state"] if m else None)
    final = mig.run("swapped")
    progress = ctx.connect().execute(
        "SELECT table_name, operation, status, operation_time::text, rows_affected"
        " FROM table_migration.generate_migration_report() WHERE table_name = %s"
        " ORDER BY operation_time DESC LIMIT 20", (ctx.result.table,)).fetchall()
    swap = mig.swap_result
    ctx.table.facts.update(state=final["state"], timings=dict(mig.timings),
                           swap_attempts=final["swap_attempts"], lock_hold_ms=float(final["lock_hold_ms"] or 0),
                           rows_copied=final["rows_copied"], throughput=mig.backfill_samples[-200:],
                           swap_log=swap.attempt_log if swap else [], pacing=mig.pacer.summary())
    # pacing: what the write guard measured of the application's writes and how long the
    # migration rested for them (tablemig.pacing)
    ctx.evidence(state=final["state"], timings=mig.timings, rows_copied=final["rows_copied"],
                 swap_attempts=final["swap_attempts"], lock_hold_ms=final["lock_hold_ms"],
                 pacing=mig.pacer.summary(), progress=[list(map(str, r)) for r in progress])
    assert final["state"] == "swapped"


def ex_2_3_change_capture(ctx: StepContext) -> None:
    """EX-2.3 Set up change capture: the sync trigger was created before the backfill, and
    test rows written inside rolled-back transactions appeared through it."""
    if not ctx.execute:
        ctx.dry_run("would prove the capture trigger with a rolled-back test row")
        return
    mig = ctx.migration()
    conn = ctx.connect()
    log = conn.execute("SELECT operation, min(logged_at) FROM table_migration.migration_log"
                       " WHERE table_name = %s AND operation IN ('capture', 'backfill') GROUP BY 1",
                       (ctx.result.table,)).fetchall()
    times = dict(log)
    ctx.evidence(capture_installed=str(times.get("capture")), backfill_done=str(times.get("backfill")))
    if "capture" in times and "backfill" in times:
        assert times["capture"] < times["backfill"], "capture trigger must precede the backfill"
    before = ctx.table.facts.get("capture_probe")
    if before is not None:
        ctx.evidence(before_swap_probe=before)
        assert before.get("appeared"), f"capture trigger probe failed: {before}"
    m = mig._state()
    assert m is not None
    if m["state"] == "swapped":  # after the swap the mirror trigger is the live capture
        plan = mig.plan_for_state(m)
        archive = old_table(m)
        after = probes.trigger_probe(conn, plan.original, archive, plan.key, m["date_column"], m["date_type"],
                                     m["cutoff"], plan.columns, plan.overriding)
        ctx.evidence(after_swap_probe=after)
        assert after.get("appeared"), f"mirror trigger probe failed: {after}"


def ex_4_1_data_integrity(ctx: StepContext) -> None:
    """EX-4.1 Data integrity validation: counts and date ranges of each table, new + archive
    = original, segment checksums of the live table against the archive."""
    if not ctx.execute:
        ctx.dry_run("would compare counts, date ranges and segment checksums after the swap")
        return
    mig = ctx.migration()
    m = mig._state()
    assert m is not None and m["state"] in ("swapped", "pruned"), f"state is {m and m['state']}"
    conn = ctx.connect()
    live = QualifiedName(m["schema_name"], m["original_name"])
    archive = old_table(m)
    summary = probes.validation_summary(conn, {"New Table (live)": live, "Archive Table": archive},
                                        m["date_column"])
    key = sql.SQL(", ").join(map(sql.Identifier, m["key_columns"]))
    row = conn.execute(sql.SQL(
        "SELECT (SELECT count(*) FROM {t}), (SELECT count(*) FROM {a} WHERE ({k}) NOT IN (SELECT {k} FROM {t})),"
        " (SELECT count(*) FROM {a})").format(t=live.ident(), a=archive.ident(), k=key)).fetchone()
    assert row is not None
    live_n, history_n, original_n = row
    plan = mig.plan_for_state(m)
    types = {c.name: c.type for c in plan.info.columns}
    rec = Reconciler(plan.key, [types[k] for k in plan.key], [c.name for c in plan.info.columns])
    new_side = Side(live)
    old_side = Side(archive, m["date_column"], m["date_type"], m["cutoff"])
    segs = rec.checksums(conn, {"new": new_side, "original": old_side},
                         rec.boundaries(conn, new_side, 16))
    ctx.table.facts["reconciliation"] = [s.to_row() for s in segs]
    ctx.evidence(validation_summary=summary, total_after_migration=live_n + history_n,
                 original_count=original_n, segments=len(segs),
                 mismatching_segments=[s.index for s in segs if not s.match])
    assert live_n + history_n == original_n, "new + archive != original"
    assert all(s.match for s in segs), "segment checksums differ between live table and archive"


def rb_1_immediate_rollback(ctx: StepContext) -> None:
    """RB-1 Immediate rollback: drop the triggers, swap back (the archive was kept current),
    re-enable the original table, notify."""
    if not ctx.execute:
        ctx.dry_run("would swap back: the archive becomes the table again, the new table is dropped")
        return
    if not ctx.request.config.getoption("--rollback"):
        ctx.not_applicable("rollback not requested (run with --execute --rollback)")
    mig = ctx.migration()
    conn = ctx.connect()
    m = mig._state()
    assert m is not None
    archive = old_table(m)
    before = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(archive.ident())).fetchone()
    done = mig.rollback()
    live = QualifiedName(m["schema_name"], m["original_name"])
    after = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(live.ident())).fetchone()
    gone = conn.execute("SELECT to_regclass(%s), to_regclass(%s)",
                        (str(archive), str(QualifiedName(m["schema_name"], m["new_name"])))).fetchone()
    ctx.evidence(action=done, rows_before=before and before[0], rows_after=after and after[0])
    assert before == after, "rollback changed the row count"
    assert gone == (None, None), f"leftovers after rollback: {gone}"
