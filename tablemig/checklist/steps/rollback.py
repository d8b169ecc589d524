"""Rollback procedures RB-2 (partial) and RB-3 (full). RB-1 lives with the execution steps.

RB-2 is rehearsed for real inside a transaction that is rolled back: the triggers are
disabled, a segment of recent rows is restored from the original (the archive, which the
mirror trigger keeps complete) into the live table, the triggers re-enabled, and the
segment compared. RB-3 is documented with the exact commands and checked against this
run's backup and restore point.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from ...config.settings import Settings
from ...pg import probes
from ...pg.locking import with_lock_retries
from ...pg.reconcile import Reconciler, Side
from ..context import StepContext
from .backups import latest_backup


def rb_2_partial_rollback(ctx: StepContext) -> None:
    if not ctx.execute:  # the rehearsal disables triggers, even if rolled back: not in a dry run
        ctx.dry_run("after the swap: rehearse restoring recent rows from the original into the new table")
        return
    mig = ctx.migration()
    m = mig.state()
    if m is None or m.state != "swapped":
        ctx.not_applicable(f"state is {m and m.state}: a partial rollback applies after the swap, before prune")
    assert m is not None
    conn = ctx.connect()
    live = m.live
    archive = m.old_table
    plan = mig.plan_for_state(m)
    types = {c.name: c.type for c in plan.info.columns}
    rec = Reconciler(plan.key, [types[k] for k in plan.key], [c.name for c in plan.info.columns], plan.columns)
    key = sql.SQL(", ").join(map(sql.Identifier, plan.key))
    keys: list[list[str]] = []

    def rehearse(_locked_at: float) -> dict[str, Any]:
        conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER USER").format(live.ident()))
        for rule in plan.info.rules:  # a DO INSTEAD NOTHING rule would swallow the restore's DELETE
            conn.execute(sql.SQL("ALTER TABLE {} DISABLE RULE {}").format(live.ident(), sql.Identifier(rule.name)))
        sample = conn.execute(sql.SQL("SELECT {k} FROM {t} WHERE {ok} ORDER BY {k} DESC LIMIT 100").format(
            k=key, t=live.ident(), ok=probes.rewritable(conn, live))).fetchall()
        keys[:] = [[str(v) for v in r] for r in sample]
        # in place: the live table's rows are referenced by the children's foreign keys,
        # which a DELETE + INSERT would cascade into (or be refused by)
        restored = rec.repair(conn, Side(archive), Side(live), keys, plan.overriding, in_place=[
            c.name for c in plan.info.writable_columns if c.name not in plan.key and c.identity != "a"])
        conn.execute(sql.SQL("ALTER TABLE {} ENABLE TRIGGER USER").format(live.ident()))
        bounds = rec.boundaries(conn, Side(live), 4)
        # rows dated from the cutoff on: a live row dated below it after the swap has its copy
        # in the archive dated the same (the mirror trigger), outside both sides
        segs = rec.checksums(conn, {"live": Side(live, m.date_column, m.date_type, m.cutoff.text),
                                    "original": Side(archive, m.date_column, m.date_type, m.cutoff.text)},
                             bounds)
        return {"rows_restored": restored, "segments_equal": all(s.match for s in segs)}

    # rolled back; disabling the triggers takes SHARE ROW EXCLUSIVE, disabling a rule ACCESS
    # EXCLUSIVE (what the real procedure takes too): through the lock helper. The checksums
    # under that lock read the whole table, as before: no statement_timeout.
    mode = "ACCESS EXCLUSIVE" if plan.info.rules else "SHARE ROW EXCLUSIVE"
    done, _, _ = with_lock_retries(conn, f"RB-2 rehearsal on {live}", [live], rehearse, mode=mode,
                                   rehearse=True, statement_timeout="0", **Settings.current(conn).lock_options())
    done.pop("lock_hold_ms", None)
    ctx.evidence(**done, procedure=["ALTER TABLE T DISABLE TRIGGER USER (and DISABLE RULE for each rule of T)",
                                    "restore the affected recent rows from the original, updated in place "
                                    "(a DELETE + INSERT would cascade into the tables that reference them)",
                                    "ALTER TABLE T ENABLE TRIGGER USER, then give each trigger and rule its own "
                                    "state again (DISABLE / ENABLE REPLICA / ENABLE ALWAYS, as before)",
                                    "compare segment checksums"],
                 note="rehearsed inside a transaction that was rolled back")
    assert done["rows_restored"] == len(keys)


def rb_3_full_rollback(ctx: StepContext) -> None:
    backup = latest_backup(ctx)
    rp = ctx.record.facts.get("restore_point")
    conn = ctx.connect()
    arch = conn.execute("SELECT current_setting('archive_mode'), current_setting('archive_command')").fetchone()
    pitr = bool(arch and arch[0] != "off" and arch[1] not in ("", "(disabled)"))
    tables = " ".join(f"--table={t.table}" for t in ctx.plan.tables)
    # a pg_restore at least as new as the pg_dump that wrote the archive
    made_by = (backup or {}).get("pg_dump") or {}
    restore_tool = f"{made_by['bindir']}/pg_restore" if made_by.get("bindir") else "pg_restore"
    ctx.evidence(
        backup=backup and {t: {"file": f["file"], "sha256": f["sha256"]} for t, f in backup["files"].items()},
        restore_point=rp, pitr_possible=pitr,
        procedure=[
            "1. restore: " + restore_tool + " --clean --if-exists " + tables + " --dbname DSN " +
            (" ".join(f["file"] for f in backup["files"].values()) if backup else "<PRE-2.1 dumps>")
            + (" (or PITR: recovery_target_name = 'before_table_rename_strategy')" if pitr else "")
            + "; into a database without the table's types, sequences and functions, first "
            "pg_restore --section=pre-data of the schema dump next to it (*.schema.dump), as PRE-2.3 did",
            "2. re-sync replication: a physical standby follows; after PITR rebuild it with pg_basebackup",
            "3. validate: compare counts/checksums with checksums.json next to the dump (PRE-2.3 proved it)",
            "4. root cause analysis: the report of this run (failed steps, SQL, timings)"])
    if not ctx.execute:
        ctx.dry_run("documented; the backup it relies on is made and restore-tested by PRE-2.1/PRE-2.3")
        return
    assert backup, "no backup in this run: a full rollback would have nothing to restore"
    assert (backup.get("restore_test") or {}).get("passed"), "the backup was not restore-tested (PRE-2.3)"
    if not pitr:
        ctx.warn("WAL archiving is off: full rollback means restoring the pg_dump backup, not point-in-time")
