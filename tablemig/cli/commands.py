"""Operational sub-commands: plan, migrate, status, health, pause/resume, prune, rollback,
cleanup. Each is a thin adapter over `tablemig.lifecycle.driver.Migration`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row

from ..config.settings import BATCH_SIZE, WORKERS, Fixed, argument
from ..config.spec import TableSpec
from ..errors import InputError
from ..lifecycle.driver import Migration
from ..lifecycle.state import StateStore, load_all
from ..pg.connect import connect
from ..pg.names import QualifiedName
from ..pg.schema import installed_version
from ..pg.statements import Direct


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dsn", required=True, help="connection string of the active site")
    p.add_argument("--table", required=True, help="table as SQL writes it: public.orders, \"Sales\".\"Invoice\"")
    p.add_argument("--date-column", required=True, help="the column that dates each row")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--retention", type=float, help="fraction of rows to keep live, e.g. 0.1")
    g.add_argument("--cutoff", help="keep rows with date >= this timestamp")
    p.add_argument("--new-table", help="name of the new table (default <table>_new)")
    p.add_argument("--archive-table", help="name of the archive (default <table>_archive_<YYYYMMDD>)")
    p.add_argument("--archive-mode", choices=["rename", "copy"], default="rename")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="rows per unit of bulk work")
    p.add_argument("--workers", type=int, default=WORKERS, help="concurrent backfill workers")


def _pacing_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nice-ratio", type=argument("nice_ratio"), metavar="R",
                   help="after each unit of bulk work sleep R times as long as it took (0: no pacing;"
                        " default: migration_config nice_ratio, re-read every 5 s)")
    p.add_argument("--app-write-share", type=argument("app_write_share"), metavar="S",
                   help="write guard: rest between units of bulk work so that the application keeps the"
                        " share S of its write rate (0: off; default: migration_config app_write_share,"
                        " 0.9, re-read every 5 s)")


def _spec(a: argparse.Namespace) -> TableSpec:
    return TableSpec(a.table, a.date_column, retention=a.retention, cutoff=a.cutoff, new_table=a.new_table,
                     archive_table=a.archive_table, archive_mode=a.archive_mode, batch_size=a.batch_size,
                     workers=a.workers)


def from_state(dsn: str, table: str, **options: Any) -> Migration:
    """A Migration for a table already under way, rebuilt from its state row."""
    name = str(QualifiedName.parse(table))
    with connect(dsn) as conn:
        if installed_version(conn) is None:
            raise InputError(f"no tablemig schema in this database: {name} was never migrated here",
                             "check --dsn (the active site of the migration)")
        m = StateStore(Direct(conn), name).load()
    if m is None:
        raise InputError(f"{name} has no migration state", "see `tablemig status --dsn ...` for tables under way")
    spec = TableSpec(name, m.date_column, cutoff=m.cutoff.text, new_table=m.new.name,
                     archive_table=m.archive.name, archive_mode=m.archive_mode, batch_size=m.batch_size,
                     key=m.key)
    return Migration(dsn, spec, **options)


def _fixed(a: argparse.Namespace) -> Fixed:
    """The settings the command line fixes for the run (the others follow migration_config)."""
    return Fixed({"nice_ratio": getattr(a, "nice_ratio", None),
                  "app_write_share": getattr(a, "app_write_share", None)}, source="the command line:")


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_plan(a: argparse.Namespace) -> int:
    with Migration(a.dsn, _spec(a)) as mig:
        _print(mig.plan().summary())
    return 0


_SUBSCRIBER_HELP = ("a logical-replication subscriber of the active site that receives the table "
                    "(repeatable); tablemig applies the migration's DDL there and coordinates the swap")


def _subscriber_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subscriber-dsn", action="append", default=[], help=_SUBSCRIBER_HELP)


def cmd_migrate(a: argparse.Namespace) -> int:
    with Migration(a.dsn, _spec(a), subscribers=a.subscriber_dsn, fixed=_fixed(a)) as mig:
        final = mig.run(a.until)
        print(file=sys.stderr)
        plan = mig.last_plan
        _print({"state": final and final.state, "cutoff": final and final.cutoff.text,
                "cutoff_local": plan.cutoff_local if plan else None, "timezone": plan.timezone if plan else None,
                "timings": mig.timings, "rows_copied": final and final.rows_copied,
                "swap_attempts": final and final.swap_attempts, "lock_hold_ms": final and final.lock_hold_ms,
                **({"inventory": final.swap_record.inventory} if final and final.state == "swapped" else {}),
                **mig.pacer.summary()})
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    with connect(a.dsn) as conn:
        if installed_version(conn) is None:
            print("no tablemig schema in this database")
            return 0
        rows = []
        for m in load_all(Direct(conn), a.table and str(QualifiedName.parse(a.table))):
            # keys logged by the capture trigger and not replayed yet (the change log lives
            # until the swap; it is empty from the switch to direct capture on)
            log = m.objects.change_log
            found = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (str(log),)).fetchone()
            rows.append({"table_name": m.table, "state": m.state, "new_name": m.new.name,
                         "archive_name": m.archive.name, "cutoff": m.cutoff.text, "rows_copied": m.rows_copied,
                         "rows_to_copy": m.rows_to_copy, "swap_attempts": m.swap_attempts,
                         "lock_hold_ms": m.lock_hold_ms, "paused": m.checkpoint.paused_text,
                         "updated_at": m.updated_at, "last_error": m.last_error,
                         "change_log_backlog": (conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                             log.ident())).fetchone() or [None])[0] if found and found[0] else None})
    _print(rows)
    return 0


def cmd_health(a: argparse.Namespace) -> int:
    """For cron: prints every check; exit 1 when any is an alert."""
    with connect(a.dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute("SELECT * FROM table_migration.health_check()").fetchall()
    _print(rows)
    return 1 if any(r["status"] == "alert" for r in rows) else 0


def _set_paused(a: argparse.Namespace, paused: bool) -> int:
    name = str(QualifiedName.parse(a.table))
    with connect(a.dsn) as conn:
        if not StateStore(Direct(conn), name).set_paused(paused):
            raise InputError(f"{name} has no migration state", "see `tablemig status`")
    print(f"{name}: {'paused (batches wait until resume)' if paused else 'resumed'}")
    return 0


def cmd_prune(a: argparse.Namespace) -> int:
    with from_state(a.dsn, a.table, subscribers=a.subscriber_dsn, fixed=_fixed(a)) as mig:
        n = mig.prune(a.batch_size)
    print(f"pruned: {n} rows deleted from the archive")
    return 0


def cmd_rollback(a: argparse.Namespace) -> int:
    with from_state(a.dsn, a.table, subscribers=a.subscriber_dsn) as mig:
        print(f"rollback: {mig.rollback()}")
    return 0


def cmd_cleanup(a: argparse.Namespace) -> int:
    with from_state(a.dsn, a.table, subscribers=a.subscriber_dsn) as mig:
        dropped = mig.cleanup(a.approved_by)
    print(f"cleaned up (approved by {a.approved_by}); dropped: {', '.join(dropped) or 'nothing'}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("plan", help="show the plan for one table (read-only)")
    _spec_args(p)
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("migrate", help="migrate one table (resumes where it stopped)")
    _spec_args(p)
    _pacing_args(p)
    p.add_argument("--until", default="swapped",
                   choices=["capturing", "backfilling", "indexed", "verified", "swapped"])
    _subscriber_arg(p)
    p.set_defaults(func=cmd_migrate)
    p = sub.add_parser("status", help="state of the migrations in a database")
    p.add_argument("--dsn", required=True)
    p.add_argument("--table")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("health", help="table_migration.health_check(); exit 1 on an alert (for cron)")
    p.add_argument("--dsn", required=True)
    p.set_defaults(func=cmd_health)
    for name, paused in (("pause", True), ("resume", False)):
        p = sub.add_parser(name, help=f"{name} the batches of a table's backfill or prune")
        p.add_argument("--dsn", required=True)
        p.add_argument("--table", required=True)
        p.set_defaults(func=lambda a, paused=paused: _set_paused(a, paused))
    p = sub.add_parser("prune", help="after the swap: delete the archive's copies of live rows")
    p.add_argument("--dsn", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--batch-size", type=int)
    _pacing_args(p)
    _subscriber_arg(p)
    p.set_defaults(func=cmd_prune)
    p = sub.add_parser("rollback", help="undo the migration of a table from any state")
    p.add_argument("--dsn", required=True)
    p.add_argument("--table", required=True)
    _subscriber_arg(p)
    p.set_defaults(func=cmd_rollback)
    p = sub.add_parser("cleanup", help="after recorded business approval: drop what only served the migration")
    p.add_argument("--dsn", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--approved-by", required=True, help="who approved (recorded in the audit log)")
    _subscriber_arg(p)
    p.set_defaults(func=cmd_cleanup)
