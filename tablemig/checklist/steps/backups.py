"""Pre-execution · 2. Backup and safety measures (PRE-2.1 .. PRE-2.4).

The backup is the real `pg_dump` of the target tables and of the database's schema, taken
from a snapshot exported by tablemig so that the checksums recorded next to it describe
exactly the dumped rows; PRE-2.3 restores it into a scratch database and compares (see
tablemig.pg.dumps). pg_dump and pg_restore are chosen by the server's version
(tablemig.pg.client_tools). The backup files are removed by cleanup only.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ...config.settings import Settings
from ...errors import InputError
from ...lifecycle.objects import CAPTURE_TRIGGER
from ...lifecycle.planner import TablePlan
from ...lifecycle.resume import note
from ...lifecycle.structure import create_table_sql, drop_trigger_sql, sync_function_sql, trigger_sql
from ...pg import dumps
from ...pg.client_tools import DUMP_TOOLS, ClientTools, find_client_tools, server_major
from ...pg.connect import connect, redact
from ...pg.locking import with_lock_retries
from ...pg.names import QualifiedName
from ...pg.reconcile import Reconciler, Side
from ..context import StepContext


def client_tools(ctx: StepContext, needs: Sequence[str] = DUMP_TOOLS, at_least: int = 0) -> ClientTools:
    """Client tools of the active site's major version or newer (and of `at_least`), from
    everything the machine has (tablemig.pg.client_tools); refused, naming what to install, when
    there are none. The choice is recorded in the step's evidence."""
    row = ctx.connect().execute("SELECT current_setting('server_version_num')::int,"
                                " current_setting('server_version')").fetchone()
    assert row is not None
    major = max(server_major(int(row[0])), at_least)
    pg_bin = ctx.request.config.getoption("--pg-bin", default=None)
    try:
        tools = find_client_tools(major, needs, explicit=[(pg_bin, "--pg-bin")] if pg_bin else [])
    except InputError as exc:
        raise InputError(f"the active site runs PostgreSQL {row[1]}: {exc.problem}", exc.fix) from None
    ctx.evidence(server_version=row[1], client_tools={n: str(tools.tool(n)) for n in needs},
                 client_version=tools.version, client_tools_found_in=tools.source)
    return tools


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


def _table_checksum(conn: psycopg.Connection[Any], table: QualifiedName, plan: Any) -> dict[str, Any]:
    types = {c.name: c.type for c in plan.info.columns}
    rec = Reconciler(plan.key, [types[k] for k in plan.key], [c.name for c in plan.info.columns])
    # the text form of each row: a binary hash of an enum hashes its OID, which differs in
    # the database the backup is restored into
    rec.binary_hash = False
    seg = rec.checksums(conn, {"t": Side(table)}, [])[0]
    return {"rows": seg.counts["t"], "checksum": seg.sums["t"]}


def _unreadable_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(schema, name) of the tables the role may not read: pg_dump locks every table it
    dumps, also for the schema only, and LOCK needs a privilege on the table."""
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND NOT has_table_privilege(c.oid, 'SELECT')"
        " ORDER BY 1, 2").fetchall()]


def _foreign_keys(conn: psycopg.Connection[Any], table: QualifiedName) -> dict[str, str]:
    """The table's foreign keys: name -> referenced table (as SQL writes it)."""
    rows = conn.execute("SELECT conname, confrelid::regclass::text FROM pg_constraint"
                        " WHERE conrelid = %s::regclass AND contype = 'f' AND conparentid = 0",
                        (str(table),)).fetchall()
    return {r[0]: str(QualifiedName.parse(r[1])) for r in rows}


MANIFEST = "manifest.json"


def latest_backup(ctx: StepContext) -> dict[str, Any] | None:
    """The backup PRE-2.3 restores and EX-1.1 records: this run's (under pytest -n another
    worker may have made it), else, when PRE-2.1 did not run in this run (a plan run with
    `-k`), the newest complete one of the plan's backup directory; which one it is, is in the
    manifest (`run`, `folder`) and so in the evidence."""
    mine = ctx.record.facts.get("backup")
    if mine and (Path(mine["folder"]) / MANIFEST).exists():  # the file has PRE-2.3's result too
        return dict(json.loads((Path(mine["folder"]) / MANIFEST).read_text()))
    root = Path(ctx.plan.backup_dir).resolve() / ctx.plan.name
    # a manifest is written only once every dump of its run is complete
    manifests = [json.loads(p.read_text()) for p in sorted(root.glob(f"*/{MANIFEST}"), key=lambda p: p.stat().st_mtime)]
    ours = [m for m in manifests if m.get("run") and m.get("run") == ctx.record.facts.get("run_uid")]
    if ours:
        return dict(ours[-1])
    return dict(manifests[-1]) if manifests else None


def backup_log_entries(backup: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """(table, details) of each file of the backup, for migration_log: cleanup removes
    exactly the files logged for its table."""
    out = []
    for dumped, f in backup.get("files", {}).items():
        table = f.get("table", dumped)  # the plan's table (after the swap: also for its archive's dump)
        out.append((table, {"file": f["file"], "sha256": f["sha256"]}))
        if f.get("schema_file"):
            out.append((table, {"file": f["schema_file"], "sha256": f["schema_sha256"], "kind": "schema"}))
    return out


def _backup_dir(ctx: StepContext) -> Path:
    run = str(ctx.record.facts.setdefault("backup_run", time.strftime("%Y%m%dT%H%M%S")))
    return Path(ctx.plan.backup_dir).resolve() / ctx.plan.name / run


def _dump_name(table: str, suffix: str = ".dump") -> str:
    return "".join(c if c.isalnum() else "_" for c in table).strip("_") + suffix


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pre_2_1_full_backup(ctx: StepContext) -> None:
    """Per table (so cleanup of one table removes only its own backup), all in one exported
    snapshot: a pg_dump of the table, a pg_dump of the database's schema (what the table
    needs to be restored on its own: sequences, types, functions; one file hard-linked per
    table), and the checksums of exactly the dumped rows. pg_dump at least as new as the
    server is chosen from the machine's installations, or the step is refused (dry run too)."""
    tools = client_tools(ctx)
    dumped = _dumped_tables(ctx)
    tables = list(dumped)
    folder = _backup_dir(ctx)
    resumed = {t: note(p.resumed_state) for t, (_, p) in dumped.items() if p.resumed_state}
    if resumed:
        ctx.evidence(resumed=resumed)
    shown = {t: [dumps.dump_command(tools, ctx.active_dsn, folder / _dump_name(t), t),
                 dumps.dump_command(tools, ctx.active_dsn, folder / _dump_name(t, ".schema.dump"), None)]
             for t in tables}
    if not ctx.execute:
        ctx.dry_run("would run pg_dump of each target table and of the database's schema", commands=shown,
                    target=str(folder))
        return
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Any]] = {}
    with connect(ctx.active_dsn) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snap = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert snap is not None
        sums = {t: _table_checksum(conn, QualifiedName.parse(t), plan) for t, (_, plan) in dumped.items()}
        t0 = time.perf_counter()
        schema_file = folder / _dump_name(tables[0], ".schema.dump")
        # tables the role may not read cannot be locked, so not dumped: left out, and named
        unreadable = _unreadable_tables(conn)
        dumps.dump(tools, ctx.active_dsn, snap[0], schema_file, table=None, timeout=24 * 3600,
                   exclude=[dumps.exact_pattern(s, n) for s, n in unreadable])
        schema_seconds = round(time.perf_counter() - t0, 2)
        schema_sha = _sha256(schema_file)
        for t in tables:
            t0 = time.perf_counter()
            out = folder / _dump_name(t)
            dumps.dump(tools, ctx.active_dsn, snap[0], out, table=t, timeout=24 * 3600)
            own_schema = folder / _dump_name(t, ".schema.dump")
            if own_schema != schema_file:
                own_schema.unlink(missing_ok=True)
                os.link(schema_file, own_schema)
            files[t] = {"file": str(out), "bytes": out.stat().st_size, "sha256": _sha256(out),
                        "seconds": round(time.perf_counter() - t0, 2), "checksum": sums[t],
                        "schema_file": str(own_schema), "schema_sha256": schema_sha,
                        "schema_seconds": schema_seconds,
                        "foreign_keys": _foreign_keys(conn, QualifiedName.parse(t)), "table": dumped[t][0]}
        conn.execute("COMMIT")
    (folder / "SHA256SUMS").write_text("".join(
        f"{f[h]}  {Path(f[n]).name}\n" for f in files.values()
        for n, h in (("file", "sha256"), ("schema_file", "schema_sha256"))))
    (folder / "checksums.json").write_text(json.dumps(sums, indent=2))
    ctx.record.facts["backup"] = {"folder": str(folder), "files": files, "checksums": sums,
                                  "pg_dump": tools.describe(), "run": ctx.record.facts.get("run_uid")}
    (folder / MANIFEST).write_text(json.dumps(ctx.record.facts["backup"], indent=2))
    from ...lifecycle.state import StateStore
    from ...pg.schema import installed_version
    from ...pg.statements import Direct

    log_conn = ctx.connect()
    if installed_version(log_conn) is not None:  # else EX-1.1 records it once the schema exists
        for t, details in backup_log_entries(ctx.record.facts["backup"]):
            StateStore(Direct(log_conn), t).log("backup", "done", details=details)
    ctx.evidence(commands=shown, files=files,
                 schema_dump_leaves_out=[str(QualifiedName(s, n)) for s, n in unreadable])


def pre_2_2_restore_point(ctx: StepContext) -> None:
    conn = ctx.connect()
    archiving = conn.execute("SELECT current_setting('archive_mode'), current_setting('archive_command'),"
                             " current_setting('wal_level')").fetchone()
    assert archiving is not None
    usable = archiving[0] != "off" and archiving[1] not in ("", "(disabled)")
    ctx.evidence(archive_mode=archiving[0], archive_command=redact(archiving[1]), wal_level=archiving[2],
                 pitr_usable=usable)
    ex = ctx.executor()
    try:
        # in plan mode: recorded, not run
        lsn = ex.run("SELECT pg_create_restore_point(%s)::text", ("before_table_rename_strategy",)).scalar()
    except psycopg.errors.InsufficientPrivilege as exc:
        raise AssertionError(
            f"{exc.diag.message_primary}: the role may not create restore points. Fix: "
            "GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO <role>, or create it as a superuser "
            "and attest PRE-2.2") from None
    if not ctx.execute:
        ctx.dry_run("would create the restore point before_table_rename_strategy", sql=ctx.recorded_changes())
        return
    ctx.evidence(restore_point="before_table_rename_strategy", lsn=lsn)
    ctx.record.facts["restore_point"] = {"name": "before_table_rename_strategy", "lsn": lsn}
    if not usable:
        ctx.warn("WAL archiving is off: the restore point cannot be used for point-in-time recovery; the "
                 "pg_dump backup (PRE-2.1) is the way back")


def pre_2_3_test_restore(ctx: StepContext) -> None:
    """Restore the PRE-2.1 backup into a scratch database (always dropped): the schema's
    pre-data, then each table's rows, then its keys, indexes and triggers; the restored rows
    must have the counts and checksums recorded at dump time."""
    backup = latest_backup(ctx)
    made_by = int((backup or {}).get("pg_dump", {}).get("major", 0))
    # pg_restore must read the archive: as new as the pg_dump that wrote it, and the server
    tools = client_tools(ctx, ("pg_restore",), at_least=made_by)
    if not ctx.execute:
        ctx.dry_run("would restore the PRE-2.1 backup (schema, rows, keys, indexes, triggers) into a "
                    "scratch database and compare counts and checksums")
        return
    assert backup, "no backup from PRE-2.1: run PRE-2.1 first"
    ctx.evidence(backup_folder=backup["folder"], backup_run=backup.get("run"))
    files = backup["files"]
    missing = [t for t, f in files.items() if not f.get("schema_file")]
    assert not missing, f"the backup of {', '.join(missing)} has no schema dump: rerun PRE-2.1"
    targets = [dumps.RestoredTable(t, QualifiedName.parse(t).schema, QualifiedName.parse(t).name,
                                   Path(f["file"]), dict(f.get("foreign_keys", {}))) for t, f in files.items()]
    with dumps.scratch_database(ctx.active_dsn) as (scratch, scratch_dsn):
        outcome = dumps.restore(tools, scratch_dsn, Path(next(iter(files.values()))["schema_file"]), targets)
        plans = _dumped_tables(ctx)
        with connect(scratch_dsn) as conn:
            restored = {t: _table_checksum(conn, QualifiedName.parse(t), plans[t][1])
                        for t in backup["checksums"] if t in plans}
    ctx.evidence(scratch_database=scratch, scratch_dropped=True, restored=restored,
                 dumped=backup["checksums"], restore_commands=outcome.commands,
                 foreign_keys_not_restored=outcome.skipped_foreign_keys,
                 schema_objects_not_restored=outcome.schema_errors)
    expected = {t: backup["checksums"][t] for t in restored}
    assert restored == expected, f"restored data differs from the dumped snapshot: {restored} != {expected}"
    if outcome.schema_errors:
        ctx.warn(f"the tables restored exactly, but {len(outcome.schema_errors)} lines of errors came from other "
                 "objects of the database's schema (see schema_objects_not_restored): a full restore needs "
                 "a role that may create them")
    backup["restore_test"] = {"passed": True, "scratch_database": scratch}
    (Path(backup["folder"]) / MANIFEST).write_text(json.dumps(backup, indent=2))


def _rehearsal(conn: psycopg.Connection[Any], stmts: list[Any], rollback: list[Any]
               ) -> Callable[[float], dict[str, Any]]:
    """The body of PRE-2.4's locked transaction: the capture's DDL, then its rollback."""
    def body(_locked_at: float) -> dict[str, Any]:
        done = []
        if conn.execute("SELECT to_regnamespace('table_migration')").fetchone() == (None,):
            conn.execute("CREATE SCHEMA table_migration")
        for s in stmts:
            conn.execute(s)
        for s in rollback:
            conn.execute(s)
            done.append(s.as_string(conn))
        return {"ran": done}
    return body


def pre_2_4_rollback_plan_executable(ctx: StepContext) -> None:
    """Create the new table and the capture trigger, run the rollback SQL, and roll the
    whole transaction back: proves the rollback statements run, changes nothing. The trigger
    needs SHARE ROW EXCLUSIVE on the table: taken through the lock helper (bounded attempts,
    an autovacuum holding the table handled as tablemig.pg.autovacuum says)."""
    conn = ctx.connect()
    settings = Settings.current(conn)
    ran: list[str] = []
    attempts_log: dict[str, Any] = {}
    for t in ctx.plan.tables:
        mig = ctx.migration_for(t)
        plan = mig.plan()
        if plan.resumed_state:
            ctx.evidence(**{str(plan.original): f"{note(plan.resumed_state)}: the migration is under way, its "
                                                "rollback is RB-1's (tablemig rollback)"})
            continue
        if plan.blockers:  # refused at its EX-2.1, before anything changes; the others go on
            ctx.evidence(**{str(plan.original): "not rehearsed, blockers: " + "; ".join(plan.blockers)})
            continue
        user = conn.execute("SELECT current_user").fetchone()
        fn = plan.names.capture_function
        stmts = [*create_table_sql(plan.info, plan.new, user[0] if user else ""),
                 sync_function_sql(plan.info, fn, "capture", plan.new, date_column=plan.date_column,
                                   date_type=plan.date_type, cutoff=plan.cutoff,
                                   search_path=plan.search_path),
                 *trigger_sql(plan.original, CAPTURE_TRIGGER, fn)]
        rollback = [drop_trigger_sql(plan.original, CAPTURE_TRIGGER),
                    sql.SQL("DROP FUNCTION {}()").format(fn.ident()),
                    sql.SQL("DROP TABLE {}").format(plan.new.ident())]

        result, _, log = with_lock_retries(conn, f"rollback rehearsal on {plan.original}", [plan.original],
                                           _rehearsal(conn, stmts, rollback), mode="SHARE ROW EXCLUSIVE", rehearse=True,
                                           **settings.lock_options())
        ran += result["ran"]
        attempts_log[str(plan.original)] = log
        still = conn.execute("SELECT to_regclass(%s)", (str(plan.new),)).fetchone()
        assert still == (None,), "the rehearsal left the new table behind"
    ctx.evidence(rollback_sql=ran, lock_attempts=attempts_log,
                 note="executed inside a transaction that was rolled back")
