"""Operational sub-commands: plan, migrate, status, pause/resume, prune, rollback, cleanup
(`health` is in `tablemig.cli.health`). Each is a thin adapter over
`tablemig.lifecycle.driver.Migration`. `migrate`, `prune` and `rollback` change nothing
without `--execute` (`tablemig.cli.conventions.confirmed`)."""

from __future__ import annotations

import argparse
from typing import Any

import psycopg

from ..config.settings import BATCH_SIZE, WORKERS, Fixed, argument
from ..config.spec import TableSpec
from ..errors import InputError, TablemigError
from ..lifecycle.driver import Migration
from ..lifecycle.state import State, StateStore
from ..pg.connect import connect
from ..pg.names import QualifiedName
from ..pg.schema import installed_version
from ..pg.statements import Direct
from . import describe
from .conventions import (
    CHECK_FAILED,
    OK,
    add_dsn,
    add_execute,
    add_json,
    confirmed,
    cutoff,
    dsn_of,
    emit,
    fraction,
    must_describe,
    positive_int,
)


def _spec_args(p: argparse.ArgumentParser) -> None:
    add_dsn(p)
    p.add_argument("--table", required=True, help="table as SQL writes it: public.orders, \"Sales\".\"Invoice\"")
    p.add_argument("--date-column", required=True, help="the column that dates each row")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--retention", type=fraction, help="fraction of rows to keep live, e.g. 0.1")
    g.add_argument("--cutoff", type=cutoff, help="keep rows with date >= this ISO 8601 date or timestamp")
    p.add_argument("--new-table", help="name of the new table (default <table>_new)")
    p.add_argument("--archive-table", help="name of the archive (default <table>_archive_<YYYYMMDD>)")
    p.add_argument("--archive-mode", choices=["rename", "copy"], default="rename")
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE, help="rows per unit of bulk work")
    p.add_argument("--workers", type=positive_int, default=WORKERS, help="concurrent backfill workers")
    p.add_argument("--hold-swap", metavar="release|TIMESTAMP",
                   help="postponed cut-over: once verified, the swap waits for `tablemig release` (release) or"
                        " until an ISO 8601 timestamp (or an earlier release); the new table follows every write"
                        " meanwhile")
    p.add_argument("--child", action="append", default=[], metavar="TABLE=POLICY",
                   help="the policy of a table whose foreign key references the table: refuse (the default) or"
                        " keep, e.g. --child public.order_items=keep (repeatable; docs/families.md)")
    add_json(p)


def _children(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        table, sep, policy = pair.rpartition("=")
        if not sep or not table:
            raise InputError(f"--child {pair!r} is not TABLE=POLICY", "e.g. --child public.order_items=keep")
        out[table] = policy
    return out


def _table_args(p: argparse.ArgumentParser) -> None:
    add_dsn(p)
    p.add_argument("--table", required=True, help="table as SQL writes it: public.orders")
    add_json(p)




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
                     workers=a.workers, children=_children(a.child), hold_swap=a.hold_swap)


def _stored_state(conn: psycopg.Connection[Any], name: str) -> tuple[StateStore, State]:
    """The state store of a table already under way (`name` as QualifiedName prints it) and
    its state row; refused when there is none."""
    if installed_version(conn) is None:
        raise InputError(f"no tablemig schema in this database: {name} was never migrated here",
                         "check --dsn (the active site of the migration)")
    store = StateStore(Direct(conn), name)
    m = store.load()
    if m is None:
        raise InputError(f"{name} has no migration state", "see `tablemig status` for tables under way")
    return store, m


def load_state(dsn: str, table: str) -> State:
    """The migration state of a table already under way; refused when there is none."""
    with connect(dsn) as conn:
        return _stored_state(conn, str(QualifiedName.parse(table)))[1]


def state_row(dsn: str, table: str) -> dict[str, Any]:
    """The migration state row (as migration_state holds it) of a table already under way."""
    return load_state(dsn, table).row()


def from_state(dsn: str, table: str, **options: Any) -> Migration:
    """A Migration for a table already under way, rebuilt from its state row."""
    m = load_state(dsn, table)
    spec = TableSpec(m.table, m.date_column, cutoff=m.cutoff.text, new_table=m.new.name,
                     archive_table=m.archive.name, archive_mode=m.archive_mode, batch_size=m.batch_size,
                     key=m.key)
    return Migration(dsn, spec, **options)


def _fixed(a: argparse.Namespace) -> Fixed:
    """The settings the command line fixes for the run (the others follow migration_config)."""
    return Fixed({"nice_ratio": getattr(a, "nice_ratio", None),
                  "app_write_share": getattr(a, "app_write_share", None)}, source="the command line:")


def cmd_plan(a: argparse.Namespace) -> int:
    with Migration(dsn_of(a), _spec(a)) as mig:
        summary = mig.plan().summary()
    emit(a, summary, lambda: describe.plan_text(summary))
    return CHECK_FAILED if summary["blockers"] else OK


_SUBSCRIBER_HELP = ("a logical-replication subscriber of the active site that receives the table "
                    "(repeatable); tablemig applies the migration's DDL there and coordinates the swap")


def _subscriber_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subscriber-dsn", action="append", default=[], help=_SUBSCRIBER_HELP)


def cmd_migrate(a: argparse.Namespace) -> int:
    dsn, spec = dsn_of(a), _spec(a)
    if must_describe(a):
        with Migration(dsn, spec) as mig:
            summary = mig.plan().summary()
        if summary["blockers"]:  # what the migration itself would refuse with
            raise TablemigError(f"{summary['table']} has blockers: " + "; ".join(summary["blockers"]),
                                "resolve them (`tablemig plan` lists them) and rerun")
        if not confirmed(a, describe.migrate_intent(summary, a.until), summary):
            return OK
    with Migration(dsn, spec, subscribers=a.subscriber_dsn, fixed=_fixed(a)) as mig:
        final = mig.run(a.until)
        plan = mig.last_plan
        swapped = final is not None and final.state == "swapped"
        result = {"table": mig.table, "state": final and final.state, "cutoff": final and final.cutoff.text,
                  "cutoff_local": plan.cutoff_local if plan else None, "timezone": plan.timezone if plan else None,
                  "new_table": plan and str(plan.new), "archive_table": plan and str(plan.archive),
                  "timings": mig.timings, "rows_copied": final and final.rows_copied,
                  "swap_attempts": final and final.swap_attempts, "lock_hold_ms": final and final.lock_hold_ms,
                  **({"inventory": final.swap_record.inventory} if final is not None and swapped else {}),
                  "pacing": mig.pacer.summary(), **mig.pacer.summary()}
    emit(a, result, lambda: describe.migrate_result(result))
    return OK


def _set_paused(a: argparse.Namespace, paused: bool) -> int:
    name = str(QualifiedName.parse(a.table))
    with connect(dsn_of(a)) as conn:
        if installed_version(conn) is None:
            raise InputError(f"no tablemig schema in this database: {name} was never migrated here",
                             "check --dsn (the active site of the migration); `tablemig status` lists the "
                             "migrations of a database")
        if not StateStore(Direct(conn), name).set_paused(paused):
            raise InputError(f"{name} has no migration state", "see `tablemig status`")
    emit(a, {"table": name, "paused": paused},
         f"{name}: {'paused (batches wait until resume)' if paused else 'resumed'}")
    return OK


def cmd_release(a: argparse.Namespace) -> int:
    """`tablemig release`: a postponed cut-over (migrate --hold-swap) swaps now."""
    name = str(QualifiedName.parse(a.table))
    with connect(dsn_of(a)) as conn:
        store, m = _stored_state(conn, name)
        if m.swapped:
            raise InputError(f"{name} is already swapped (state {m.state}): nothing to release",
                             "see `tablemig status`")
        store.set_released()
        waiting = m.checkpoint.holding
    text = (f"{name}: released; the swap waiting for it goes ahead now" if waiting else
            f"{name}: released; its swap will not wait (state {m.state})")
    emit(a, {"table": name, "released": True, "was_waiting": bool(waiting), "state": m.state}, text)
    return OK


def _intent_data(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m.get(k) for k in ("table_name", "state", "archive_mode", "new_name", "archive_name", "cutoff",
                                  "rows_copied")}


def cmd_prune(a: argparse.Namespace) -> int:
    dsn = dsn_of(a)
    m = state_row(dsn, a.table)
    if m["state"] not in ("swapped", "pruned"):
        raise InputError(f"{m['table_name']} is in state {m['state']}; prune needs swapped",
                         "finish the migration first (tablemig migrate --execute), or roll it back")
    if must_describe(a) and not confirmed(a, describe.prune_intent(m, a.batch_size), _intent_data(m)):
        return OK
    with from_state(dsn, a.table, subscribers=a.subscriber_dsn, fixed=_fixed(a)) as mig:
        n = mig.prune(a.batch_size)
    emit(a, {"table": m["table_name"], "state": "pruned", "rows_deleted": n},
         f"pruned: {n} rows deleted from the archive")
    return OK


def cmd_rollback(a: argparse.Namespace) -> int:
    dsn = dsn_of(a)
    m = state_row(dsn, a.table)
    if m["state"] == "cleaned":
        raise InputError(f"{m['table_name']} was cleaned up after approval; the original is gone",
                         "restore from the backup (RB-3 full rollback)")
    if must_describe(a) and not confirmed(a, describe.rollback_intent(m), _intent_data(m)):
        return OK
    with from_state(dsn, a.table, subscribers=a.subscriber_dsn) as mig:
        done = mig.rollback()
    emit(a, {"table": m["table_name"], "state": "rolled_back", "done": done}, f"rollback: {done}")
    return OK


def cmd_cleanup(a: argparse.Namespace) -> int:
    with from_state(dsn_of(a), a.table, subscribers=a.subscriber_dsn) as mig:
        dropped = mig.cleanup(a.approved_by)
    emit(a, {"table": mig.table, "approved_by": a.approved_by, "dropped": dropped},
         f"cleaned up (approved by {a.approved_by}); dropped: {', '.join(dropped) or 'nothing'}")
    return OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("plan", help="show the plan for one table (read-only); exit 1 when something blocks it")
    _spec_args(p)
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("migrate", help="migrate one table (resumes where it stopped); needs --execute")
    _spec_args(p)
    _pacing_args(p)
    p.add_argument("--until", default="swapped",
                   choices=["capturing", "backfilling", "indexed", "verified", "swapped"])
    _subscriber_arg(p)
    add_execute(p, "migrate the table")
    p.set_defaults(func=cmd_migrate)
    for name, paused in (("pause", True), ("resume", False)):
        p = sub.add_parser(name, help=f"{name} the batches of a table's backfill or prune")
        _table_args(p)
        p.set_defaults(func=lambda a, paused=paused: _set_paused(a, paused))
    p = sub.add_parser("release", help="let a postponed cut-over (migrate --hold-swap) swap now")
    _table_args(p)
    p.set_defaults(func=cmd_release)
    p = sub.add_parser("prune", help="after the swap: delete the archive's copies of live rows; needs --execute")
    _table_args(p)
    p.add_argument("--batch-size", type=positive_int)
    _pacing_args(p)
    _subscriber_arg(p)
    add_execute(p, "delete the copies")
    p.set_defaults(func=cmd_prune)
    p = sub.add_parser("rollback", help="undo the migration of a table from any state; needs --execute")
    _table_args(p)
    _subscriber_arg(p)
    add_execute(p, "roll back")
    p.set_defaults(func=cmd_rollback)
    p = sub.add_parser("cleanup", help="after recorded business approval: drop what only served the migration")
    _table_args(p)
    p.add_argument("--approved-by", required=True, help="who approved (recorded in the audit log)")
    _subscriber_arg(p)
    p.set_defaults(func=cmd_cleanup)
