"""Execution phases 1, 2 and 4.1, and the immediate rollback (EX-1.1 .. EX-2.3, EX-4.1, RB-1)."""

from __future__ import annotations

from typing import Any

from psycopg import sql

from ...lifecycle.resume import AFTER_SWAP, note, remaining
from ...lifecycle.state import State
from ...pg import inventory, probes
from ...pg.connect import read_snapshot
from ...pg.names import QualifiedName
from ...pg.reconcile import Reconciler, Side
from ...pg.schema import SCHEMA_VERSION, install_schema, installed_version
from ...pg.sqltext import Fragment
from ..context import StepContext


# -- Execution · Phase 1 ----------------------------------------------------------------------
def ex_1_1_deploy_framework(ctx: StepContext) -> None:
    """EX-1.1 Deploy migration framework: install the table_migration schema, verify it,
    test a utility function."""
    conn = ctx.connect()
    before = installed_version(conn)
    ctx.evidence(installed_version=before, version=SCHEMA_VERSION)
    if not ctx.execute:
        # in plan mode: recorded, and the steps after it read the schema as installed
        install_schema(ctx.executor())
        ctx.dry_run(f"would install table_migration schema version {SCHEMA_VERSION}"
                    f" (installed: {before})", sql=ctx.recorded_changes())
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
    from ...lifecycle.state import StateStore
    from ...pg.statements import Direct
    from .backups import backup_log_entries, latest_backup

    for table, details in backup_log_entries(latest_backup(ctx) or {}):
        StateStore(Direct(conn), table).log("backup", "done", details=details)


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
    """EX-1.3 Analyze target tables: data volume per month and the cutoff date. The monthly
    figures and the totals they must add up to are read in one snapshot: the application
    keeps writing, and the plan's own counts are from an earlier moment."""
    mig = ctx.migration()
    plan = mig.plan()
    if plan.resumed_state:  # the cutoff recorded when the migration started; counted where the rows are now
        ctx.evidence(resumed=note(plan.resumed_state), counted_in=[str(t) for t in plan.sources])
    conn = ctx.connect()
    with read_snapshot(conn):
        frame = probes.monthly_distribution(conn, plan.sources, plan.date_column, plan.date_type, plan.cutoff)
        counts = probes.row_counts(conn, plan.sources, plan.date_column, plan.date_type, plan.cutoff)
    archive = counts["total"] - counts["keep"]
    ctx.table.facts.update(cutoff=plan.cutoff, cutoff_local=plan.cutoff_local, timezone=plan.timezone,
                           rows_total=counts["total"], rows_keep=counts["keep"],
                           rows_archive=archive, distribution=frame.to_dict("records"))
    if plan.children:  # the tables referencing it, with their policies (docs/families.md)
        ctx.table.facts.update(children=[c.as_dict() for c in plan.children],
                               rows_kept_for_children=plan.retained_rows)
    ctx.evidence(cutoff=plan.cutoff, cutoff_local=plan.cutoff_local, timezone=plan.timezone,
                 rows_total=counts["total"], rows_keep=counts["keep"], rows_archive=archive,
                 rows_null_date=counts["null_dated"], months=len(frame), warnings=plan.warnings,
                 blockers=plan.blockers, planned={"rows_total": plan.total_rows, "rows_keep": plan.keep_rows,
                                                  "note": "counted when the plan was made"})
    assert int(frame["record_count"].sum()) + counts["null_dated"] == counts["total"], \
        "the monthly counts do not add up to the table's rows"
    assert int(frame["kept"].sum()) == counts["keep"], "the monthly kept counts do not add up to the rows kept"


def ex_2_1_create_new_table(ctx: StepContext) -> None:
    """EX-2.1 Create new table structure and validate it. The capture trigger is installed in
    the same transaction: it must exist before any row is copied, or writes made during the
    copy would be lost (the seed lists it later, in Step 2.3)."""
    mig = ctx.migration()
    plan = mig.plan() if not ctx.execute else mig.last_plan or mig.plan()
    assert not plan.blockers, "blockers: " + "; ".join(plan.blockers)
    if not ctx.execute:
        if plan.resumed_state:
            done = "the swap is done" if plan.swapped else f"{plan.new} and the capture trigger exist"
            ctx.dry_run(f"{note(plan.resumed_state)}: {done}; --execute continues with: "
                        + "; ".join(remaining(plan.resumed_state)), summary=plan.summary())
            return
        mig.capture()  # in plan mode: the capture's statements recorded, nothing changed
        names = plan.names
        ctx.dry_run(f"would create {plan.new}, the change log {names.change_log}, the capture function "
                    f"{names.capture_function}, its trigger and the truncate guard on {plan.original}",
                    sql=ctx.recorded_changes(), summary=plan.summary())
        return
    mig.capture()
    m = mig.state()
    assert m is not None and m.state != "planned"
    if plan.resumed_state:
        ctx.evidence(resumed=note(plan.resumed_state))
    conn = ctx.connect()
    # after the swap the new table is the live one and the original is the archive
    original, new = ((m.old_table, m.live) if m.state in AFTER_SWAP
                     else (plan.original, m.new))
    checks = conn.execute("SELECT check_name, status, detail FROM table_migration.validate_table_structure("
                          "%s::regclass, %s::regclass)", (str(original), str(new))).fetchall()
    ctx.evidence(original_table=str(original), new_table=str(new),
                 structure=[{"check": c, "status": s, "detail": d} for c, s, d in checks])
    # the new table is created bare: its key is built after the load (index step), so a
    # missing key is expected here; any other key is still an error
    errors = [c for c in checks if c[1] == "error"
              and not (c[0] == "primary key" and c[2].endswith("new key (none)"))]
    assert not errors, f"structure errors: {errors}"
    if m.state in AFTER_SWAP:
        return  # the capture trigger is gone: EX-2.3 probes the mirror trigger that replaced it
    # until the replay switches it to direct capture, the trigger logs changed keys
    log = plan.names.change_log
    logging = not m.checkpoint.switched and bool(
        conn.execute("SELECT to_regclass(%s) IS NOT NULL", (str(log),)).fetchone() == (True,))
    probe = probes.trigger_probe(conn, plan.original, log if logging else new, plan.key,
                                 plan.date_column, plan.date_type, plan.cutoff, plan.columns,
                                 plan.overriding, key_only=logging)
    ctx.table.facts["capture_probe"] = probe


def ex_2_2_execute_migration(ctx: StepContext) -> None:
    """EX-2.2 Execute migration: dry run first, review, execute (backfill, indexes, verify,
    swap), monitor progress."""
    mig = ctx.migration()
    if not ctx.execute:
        plan = mig.plan()
        if plan.resumed_state:
            ctx.dry_run(f"{note(plan.resumed_state)}: --execute continues with: "
                        + "; ".join(remaining(plan.resumed_state)),
                        summary=plan.summary(), resumed_state=plan.resumed_state,
                        remaining=remaining(plan.resumed_state))
            return
        would = mig.run("swapped")  # in plan mode: the statements --execute runs, recorded
        ctx.dry_run(f"would copy the {plan.keep_rows} rows kept to {plan.new} in chunks, build its key and "
                    f"{len(plan.info.indexes) - 1} indexes, replay the changes logged meanwhile, switch to "
                    "direct capture, verify, and swap", summary=plan.summary(),
                    estimated_rows=plan.keep_rows, reaches=would.state if would else None,
                    sql=ctx.recorded_changes())
        return
    m = mig.state()
    ctx.evidence(dry_run_review=(mig.last_plan.summary() if mig.last_plan else None),
                 resumed_from=m.state if m else None)
    if m and m.state not in ("rolled_back", "cleaned"):
        ctx.evidence(resumed=note(m.state), remaining=remaining(m.state))
    final = mig.run("swapped")
    assert final is not None
    progress = ctx.connect().execute(
        "SELECT table_name, operation, status, operation_time::text, rows_affected"
        " FROM table_migration.generate_migration_report() WHERE table_name = %s"
        " ORDER BY operation_time DESC LIMIT 20", (ctx.result.table,)).fetchall()
    swap = mig.swap_result
    followed = followed_children(final.swap_record.as_json())
    ctx.table.facts.update(followed=followed, state=final.state, timings=dict(mig.timings),
                           swap_attempts=final.swap_attempts, lock_hold_ms=float(final.lock_hold_ms or 0),
                           rows_copied=final.rows_copied, throughput=mig.backfill_samples[-200:],
                           swap_log=swap.attempt_log if swap else [], pacing=mig.pacer.summary())
    # pacing: what the write guard measured of the application's writes and how long the
    # migration rested for them (tablemig.lifecycle.pacing)
    ctx.evidence(state=final.state, timings=mig.timings, rows_copied=final.rows_copied,
                 swap_attempts=final.swap_attempts, lock_hold_ms=final.lock_hold_ms,
                 pacing=mig.pacer.summary(), progress=[list(map(str, r)) for r in progress],
                 inventory=final.swap_record.inventory,
                 # the rows kept live for `keep` children (docs/families.md): copied before the
                 # swap's lock, and removed and copied under it
                 **({"kept_for_children": final.swap_record.as_json()["retained"]}
                    if "retained" in final.swap_record.as_json() else {}),
                 # the `follow` children, moved with the table: their rows live and archived
                 **({"followed_children": followed} if followed else {}))
    assert final.state in AFTER_SWAP, f"state is {final.state}"


def followed_children(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The swap record's `follow` children (docs/families.md), as the evidence and the report show them."""
    return [{"child": f["child"], "follows": f.get("parent"), "archive": f["archive"], "rows_live": f.get("rows_live"),
             "rows_archived": f.get("rows_archived"), "checksum": f.get("checksum"),
             "replayed_under_lock": f.get("replayed_under_lock")} for f in record.get("follow") or []]


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
    m = mig.state()
    assert m is not None
    if m.state == "pruned":
        ctx.evidence(resumed=note("pruned"), mirror_trigger="dropped by prune: live table and archive are "
                                                          "disjoint, nothing is mirrored any more")
    if m.state == "swapped":  # after the swap the mirror trigger is the live capture
        plan = mig.plan_for_state(m)
        archive = m.old_table
        after = probes.trigger_probe(conn, plan.original, archive, plan.key, m.date_column, m.date_type,
                                     m.cutoff.text, plan.columns, plan.overriding)
        ctx.evidence(after_swap_probe=after)
        assert after.get("appeared"), f"mirror trigger probe failed: {after}"


def ex_4_1_data_integrity(ctx: StepContext) -> None:
    """EX-4.1 Data integrity validation: counts and date ranges of each table, new + archive
    = original, segment checksums of the live table against the archive. Everything is read
    in one snapshot (the application keeps writing; the mirror trigger writes the archive's
    copy in the same transaction), with anti-joins: linear in the rows."""
    if not ctx.execute:
        ctx.dry_run("would compare counts, date ranges and segment checksums after the swap")
        return
    mig = ctx.migration()
    m = mig.state()
    assert m is not None and m.state in ("swapped", "pruned"), f"state is {m and m.state}"
    conn = ctx.connect()
    live = m.live
    archive = m.old_table
    if m.state == "pruned":
        summary = probes.validation_summary(conn, {"New Table (live)": live, "Archive Table": archive},
                                            m.date_column)
        _pruned_integrity(ctx, m, live, archive, summary)
        _inventory_evidence(ctx, _fidelity(conn, m, live), m)
        return
    plan = mig.plan_for_state(m)
    types = {c.name: c.type for c in plan.info.columns}
    rec = Reconciler(plan.key, [types[k] for k in plan.key], [c.name for c in plan.info.columns])
    # the live rows dated from the cutoff on against the archive's, and the live rows the
    # application dated below it after the swap against their copies in the archive
    new_side = Side(live, m.date_column, m.date_type, m.cutoff.text)
    old_side = Side(archive, m.date_column, m.date_type, m.cutoff.text)
    bounds = rec.boundaries(conn, new_side, 16)
    with read_snapshot(conn):
        summary = probes.validation_summary(conn, {"New Table (live)": live, "Archive Table": archive},
                                            m.date_column)
        row = conn.execute(integrity_counts_sql(live, archive, plan.key)).fetchone()
        segs = rec.checksums(conn, {"new": new_side, "original": old_side}, bounds)
        undated = conn.execute(_undated_copies_sql(rec, live, archive, m.date_column, m.date_type),
                               (m.cutoff.text,)).fetchone()
    assert row is not None
    live_n, history_n, original_n = row
    ctx.table.facts["reconciliation"] = [s.to_row() for s in segs]
    fidelity = _fidelity(conn, m, live)
    ctx.evidence(validation_summary=summary, total_after_migration=live_n + history_n,
                 original_count=original_n, segments=len(segs),
                 mismatching_segments=[s.index for s in segs if not s.match],
                 live_rows_dated_before_cutoff=undated and undated[0],
                 without_equal_copy_in_archive=undated and undated[1])
    assert live_n + history_n == original_n, "new + archive != original"
    assert all(s.match for s in segs), "segment checksums differ between live table and archive"
    assert undated is not None and undated[1] == 0, (
        f"{undated and undated[1]} live rows dated before the cutoff have no equal copy in the archive")
    _inventory_evidence(ctx, fidelity, m)


def _undated_copies_sql(rec: Reconciler, live: QualifiedName, archive: QualifiedName, date_column: str,
                        date_type: str) -> sql.Composed:
    """Live rows not dated from the cutoff on, and how many of them lack an equal copy in
    the archive (the mirror trigger keeps one): a few rows, each found by key."""
    match = sql.SQL(" AND ").join(sql.SQL("a.{k} = l.{k}").format(k=sql.Identifier(k)) for k in rec.key)
    return sql.SQL(
        "SELECT count(*), count(*) FILTER (WHERE NOT EXISTS ("
        "  SELECT 1 FROM (SELECT {key}, {h} AS h FROM {a}) a WHERE {match} AND a.h = l.h))"
        " FROM (SELECT {key}, {h} AS h FROM {t} WHERE ({d} >= %s::{dt}) IS NOT TRUE) l").format(
        key=rec.key_list(), h=rec.hash64(), a=archive.ident(), match=match, t=live.ident(),
        d=sql.Identifier(date_column), dt=Fragment(date_type))


def integrity_counts_sql(live: QualifiedName, archive: QualifiedName, key: list[str]) -> sql.Composed:
    """Rows of the live table, rows of the archive that are not in it (an anti-join), rows of
    the archive: one statement."""
    match = sql.SQL(" AND ").join(sql.SQL("t.{k} = a.{k}").format(k=sql.Identifier(k)) for k in key)
    return sql.SQL(
        "SELECT (SELECT count(*) FROM {t}),"
        " (SELECT count(*) FROM {a} a WHERE NOT EXISTS (SELECT 1 FROM {t} t WHERE {match})),"
        " (SELECT count(*) FROM {a})").format(t=live.ident(), a=archive.ident(), match=match)


def _pruned_integrity(ctx: StepContext, m: State, live: QualifiedName, archive: QualifiedName,
                      summary: list[dict[str, Any]]) -> None:
    """After prune the archive no longer holds copies of the live rows: the original is the
    live table and the archive together, and no key may be in both."""
    conn = ctx.connect()
    match = sql.SQL(" AND ").join(sql.SQL("a.{k} = t.{k}").format(k=sql.Identifier(k)) for k in m.key)
    with conn.transaction():  # one snapshot for the three numbers
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        row = conn.execute(sql.SQL(
            "SELECT (SELECT count(*) FROM {t}), (SELECT count(*) FROM {a}),"
            " (SELECT count(*) FROM {a} a WHERE EXISTS (SELECT 1 FROM {t} t WHERE {m}))").format(
            t=live.ident(), a=archive.ident(), m=match)).fetchone()
    assert row is not None
    live_n, archive_n, both = row
    ctx.evidence(resumed=note("pruned"), validation_summary=summary, total_after_migration=live_n + archive_n,
                 keys_in_live_and_archive=both,
                 note="after prune the live table and the archive are disjoint halves of the original: "
                      "checked for keys in both instead of comparing the archive's copies")
    assert both == 0, f"{both} keys are in the live table and in the archive after prune"


def _fidelity(conn: Any, m: State, table: QualifiedName) -> list[str] | None:
    """The differences between the original's inventory, recorded by the swap, and `table`'s
    now (None: the swap recorded none)."""
    before = m.swap_record.inventory_before
    if before is None:
        return None
    return inventory.differences(before, inventory.read(conn, table, list(m.key)))


def _inventory_evidence(ctx: StepContext, fidelity: list[str] | None, m: State) -> None:
    """EX-4.1's inventory comparison: recorded, and any difference fails the step."""
    ctx.evidence(inventory=inventory.summary(fidelity) if fidelity is not None else "not recorded by the swap",
                 inventory_at_swap=m.swap_record.inventory)
    assert not fidelity, f"the live table differs from the original: {inventory.summary(fidelity or [])}"


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
    m = mig.state()
    assert m is not None
    archive = m.old_table
    # the rollback renames the original (kept complete by the mirror trigger) back: the same
    # table, so the same rows; row counts read before and after would differ by the
    # application's writes in between
    before = conn.execute("SELECT %s::regclass::oid", (str(archive),)).fetchone()
    rows_before = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(archive.ident())).fetchone()
    done = mig.rollback()
    live = m.live
    after = conn.execute("SELECT %s::regclass::oid", (str(live),)).fetchone()
    rows_after = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(live.ident())).fetchone()
    gone = conn.execute("SELECT to_regclass(%s), to_regclass(%s)",
                        (str(archive), str(m.new))).fetchone()
    fidelity = _fidelity(conn, m, live) if done == "swapped back" else None
    ctx.evidence(action=done, rows_before=rows_before and rows_before[0], rows_after=rows_after and rows_after[0],
                 table_oid_before=before and before[0], table_oid_after=after and after[0],
                 **({"inventory": inventory.summary(fidelity)} if fidelity is not None else {}))
    assert before is not None and after is not None and before[0] == after[0], (
        f"{live} after the rollback is not the original table (oid {after and after[0]}, the original's was "
        f"{before and before[0]})")
    assert gone == (None, None), f"leftovers after rollback: {gone}"
    assert not fidelity, f"the restored original differs from before the swap: {inventory.summary(fidelity or [])}"
