"""Pre-execution · 2. Backup and safety measures (PRE-2.1 .. PRE-2.4).

The backup is the real `pg_dump` of the target tables, taken from a snapshot exported by
tablemig so that the checksums recorded next to it describe exactly the dumped rows;
PRE-2.3 restores it into a scratch database and compares. The backup files are removed by
cleanup only.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..db import connect, redact
from ..names import QualifiedName
from ..planner import TablePlan
from ..reconcile import Reconciler, Side
from ..resume import note
from ..steps import StepContext
from ..structure import create_table_sql, drop_trigger_sql, sync_function_sql, trigger_sql
from ..swap import CAPTURE_TRIGGER, GUARD_TRIGGER, MIRROR_TRIGGER, PRUNE_TRIGGER

OWN_TRIGGERS = (CAPTURE_TRIGGER, GUARD_TRIGGER, MIRROR_TRIGGER, PRUNE_TRIGGER)


def _tool(ctx: StepContext, name: str) -> str:
    sb = ctx.request.getfixturevalue("sandbox")
    if sb is not None:
        return str(sb.pg_bin.tool(name))
    from ..pgbin import find_pg_bin

    try:
        return str(find_pg_bin().tool(name))
    except Exception:  # noqa: BLE001 - fall back to PATH
        return name


def _dumped_tables(ctx: StepContext) -> dict[str, tuple[str, TablePlan]]:
    """The tables to dump -> (the plan's table, its plan). Before the swap each plan table;
    after it (a resumed run) the live table and the original, now the archive: together
    they hold every row."""
    out: dict[str, tuple[str, TablePlan]] = {}
    for t in ctx.plan.tables:
        plan = ctx.migration_for(t).plan()
        for table in dict.fromkeys([plan.original, *plan.sources]):
            out[str(table)] = (str(t.spec().qualified), plan)
    return out


def _checksum(conn: psycopg.Connection[Any], plan: TablePlan, table: QualifiedName) -> dict[str, Any]:
    types = {c.name: c.type for c in plan.info.columns}
    rec = Reconciler(plan.key, [types[k] for k in plan.key], [c.name for c in plan.info.columns])
    seg = rec.checksums(conn, {"t": Side(table)}, [])[0]
    return {"rows": seg.counts["t"], "checksum": seg.sums["t"]}


def _restore_list(tool: str, dump: str) -> str:
    """The dump's table of contents without tablemig's own triggers: their functions live in
    the table_migration schema, which a single-table dump does not contain."""
    proc = subprocess.run([tool, "--list", dump], capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, f"pg_restore --list {dump} failed: {redact(proc.stderr.strip())}"
    ours = re.compile(r" TRIGGER .* (" + "|".join(map(re.escape, OWN_TRIGGERS)) + r") ")
    return "".join(line + "\n" for line in proc.stdout.splitlines() if not ours.search(line))


MANIFEST = "manifest.json"


def latest_backup(ctx: StepContext) -> dict[str, Any] | None:
    """This run's backup; under pytest -n another worker may have made it: the newest
    manifest of the plan's backup directory."""
    mine = ctx.record.facts.get("backup")
    if mine and (Path(mine["folder"]) / MANIFEST).exists():  # the file has PRE-2.3's result too
        return dict(json.loads((Path(mine["folder"]) / MANIFEST).read_text()))
    root = Path(ctx.plan.backup_dir).resolve() / ctx.plan.name
    manifests = sorted(root.glob(f"*/{MANIFEST}"), key=lambda p: p.stat().st_mtime)
    # never the backup of an earlier run: a run that was killed may have left one
    ours = [m for m in map(lambda p: json.loads(p.read_text()), manifests)
            if m.get("run") and m.get("run") == ctx.record.facts.get("run_uid")]
    return dict(ours[-1]) if ours else None


def _backup_dir(ctx: StepContext) -> Path:
    run = ctx.record.facts.setdefault("backup_run", time.strftime("%Y%m%dT%H%M%S"))
    return Path(ctx.plan.backup_dir).resolve() / ctx.plan.name / run


def _dump_name(table: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in table).strip("_") + ".dump"


def pre_2_1_full_backup(ctx: StepContext) -> None:
    """One pg_dump per table (so cleanup of one table removes only its own backup), all from
    one exported snapshot, with the checksums of exactly the dumped rows."""
    dumped = _dumped_tables(ctx)
    tables = list(dumped)
    folder = _backup_dir(ctx)
    cmds = {t: [_tool(ctx, "pg_dump"), "--format=custom", "--no-owner", f"--file={folder / _dump_name(t)}",
                f"--table={t}", "--dbname", ctx.active_dsn] for t in tables}
    shown = {t: redact(" ".join(c)) for t, c in cmds.items()}
    resumed = {t: note(p.resumed_state) for t, (_, p) in dumped.items() if p.resumed_state}
    if resumed:
        ctx.evidence(resumed=resumed)
    if not ctx.execute:
        ctx.dry_run("would run pg_dump of each target table", commands=shown, target=str(folder))
        return
    folder.mkdir(parents=True, exist_ok=True)
    conn = connect(ctx.active_dsn)
    files: dict[str, dict[str, Any]] = {}
    try:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snap = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert snap is not None
        sums = {t: _checksum(conn, plan, QualifiedName.parse(t)) for t, (_, plan) in dumped.items()}
        for t, cmd in cmds.items():
            t0 = time.perf_counter()
            proc = subprocess.run([*cmd[:-2], f"--snapshot={snap[0]}", *cmd[-2:]], capture_output=True, text=True,
                                  timeout=24 * 3600)
            assert proc.returncode == 0, f"pg_dump of {t} failed: {redact(proc.stderr.strip())}"
            out = folder / _dump_name(t)
            files[t] = {"file": str(out), "bytes": out.stat().st_size,
                        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
                        "seconds": round(time.perf_counter() - t0, 2), "checksum": sums[t],
                        "table": dumped[t][0]}
        conn.execute("COMMIT")
    finally:
        conn.close()
    (folder / "SHA256SUMS").write_text("".join(f"{f['sha256']}  {Path(f['file']).name}\n" for f in files.values()))
    (folder / "checksums.json").write_text(json.dumps(sums, indent=2))
    ctx.record.facts["backup"] = {"folder": str(folder), "files": files, "checksums": sums,
                                  "run": ctx.record.facts.get("run_uid")}
    (folder / MANIFEST).write_text(json.dumps(ctx.record.facts["backup"], indent=2))
    from ..schema import installed_version
    from ..state import log

    log_conn = ctx.connect()
    if installed_version(log_conn) is not None:  # else EX-1.1 records it once the schema exists
        for f in files.values():
            log(log_conn, f["table"], "backup", "done", details={"file": f["file"], "sha256": f["sha256"]})
    ctx.evidence(commands=shown, files=files)


def pre_2_2_restore_point(ctx: StepContext) -> None:
    conn = ctx.connect()
    archiving = conn.execute("SELECT current_setting('archive_mode'), current_setting('archive_command'),"
                             " current_setting('wal_level')").fetchone()
    assert archiving is not None
    usable = archiving[0] != "off" and archiving[1] not in ("", "(disabled)")
    ctx.evidence(archive_mode=archiving[0], archive_command=redact(archiving[1]), wal_level=archiving[2],
                 pitr_usable=usable)
    if not ctx.execute:
        ctx.dry_run("would run SELECT pg_create_restore_point('before_table_rename_strategy')")
        return
    try:
        row = conn.execute("SELECT pg_create_restore_point('before_table_rename_strategy')::text").fetchone()
    except psycopg.errors.InsufficientPrivilege as exc:
        raise AssertionError(
            f"{exc.diag.message_primary}: the role may not create restore points. Fix: "
            "GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO <role>, or create it as a superuser "
            "and attest PRE-2.2") from None
    ctx.evidence(restore_point="before_table_rename_strategy", lsn=row and row[0])
    ctx.record.facts["restore_point"] = {"name": "before_table_rename_strategy", "lsn": row and row[0]}
    if not usable:
        ctx.warn("WAL archiving is off: the restore point cannot be used for point-in-time recovery; the "
                 "pg_dump backup (PRE-2.1) is the way back")


def pre_2_3_test_restore(ctx: StepContext) -> None:
    backup = latest_backup(ctx)
    scratch = f"tablemig_restore_{uuid.uuid4().hex[:8]}"
    if not ctx.execute:
        ctx.dry_run(f"would restore the PRE-2.1 dump into a scratch database {scratch} and compare checksums")
        return
    assert backup, "no backup from PRE-2.1 in this run"
    admin = ctx.connect()
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
    params = conninfo_to_dict(ctx.active_dsn)
    params["dbname"] = scratch
    scratch_dsn = make_conninfo(**params)
    try:
        with connect(scratch_dsn) as conn:  # pg_dump --table does not dump the table's schema
            for t in ctx.plan.tables:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                    sql.Identifier(t.spec().qualified.schema)))
        tool = _tool(ctx, "pg_restore")
        for f in backup["files"].values():
            listing = Path(f["file"] + ".list")
            listing.write_text(_restore_list(tool, f["file"]))
            proc = subprocess.run([tool, "--no-owner", "--use-list", str(listing), "--dbname", scratch_dsn, f["file"]],
                                  capture_output=True, text=True, timeout=24 * 3600)
            listing.unlink()
            assert proc.returncode == 0, f"pg_restore of {f['file']} failed: {redact(proc.stderr.strip())}"
        plans = _dumped_tables(ctx)
        with connect(scratch_dsn) as conn:
            restored = {t: _checksum(conn, plans[t][1], QualifiedName.parse(t)) for t in backup["checksums"]}
    finally:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch)))
    ctx.evidence(scratch_database=scratch, restored=restored, dumped=backup["checksums"])
    assert restored == backup["checksums"], "restored data differs from the dumped snapshot"
    backup["restore_test"] = {"passed": True, "scratch_database": scratch}
    (Path(backup["folder"]) / MANIFEST).write_text(json.dumps(backup, indent=2))


def pre_2_4_rollback_plan_executable(ctx: StepContext) -> None:
    """Create the new table and the capture trigger, run the rollback SQL, and roll the
    whole transaction back: proves the rollback statements run, changes nothing."""
    conn = ctx.connect()
    ran = []
    for t in ctx.plan.tables:
        mig = ctx.migration_for(t)
        plan = mig.plan()
        if plan.resumed_state:
            ctx.evidence(**{str(plan.original): f"{note(plan.resumed_state)}: the migration is under way, its "
                                                "rollback is RB-1's (tablemig rollback)"})
            continue
        user = conn.execute("SELECT current_user").fetchone()
        fn = plan.function_name("capture")
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL lock_timeout = '200ms'")
            if conn.execute("SELECT to_regnamespace('table_migration')").fetchone() == (None,):
                conn.execute("CREATE SCHEMA table_migration")
            stmts = [*create_table_sql(plan.info, plan.new, user[0] if user else ""),
                     sync_function_sql(plan.info, fn, "capture", plan.new, date_column=plan.date_column,
                                       date_type=plan.date_type, cutoff=plan.cutoff,
                                       search_path=plan.search_path),
                     *trigger_sql(plan.original, CAPTURE_TRIGGER, fn)]
            for s in stmts:
                conn.execute(s)
            rollback = [drop_trigger_sql(plan.original, CAPTURE_TRIGGER),
                        sql.SQL("DROP FUNCTION {}()").format(fn.ident()),
                        sql.SQL("DROP TABLE {}").format(plan.new.ident())]
            for s in rollback:
                conn.execute(s)
                ran.append(s.as_string(conn))
        still = conn.execute("SELECT to_regclass(%s)", (str(plan.new),)).fetchone()
        assert still == (None,), "the rehearsal left the new table behind"
    ctx.evidence(rollback_sql=ran, note="executed inside a transaction that was rolled back")
