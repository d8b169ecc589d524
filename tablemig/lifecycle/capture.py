"""The capture step: the bare new table N (and, in archive mode copy, the history copy H),
the change log, and the capture trigger on T that logs the key of every written row, all
in one short transaction under SHARE ROW EXCLUSIVE on T; the state row starts there.

The capture function has two modes (sql_templates/row_sync_function.sql.j2): "log" from
here until the replay's switch (it appends keys to the change log), then "direct" (it
keeps N, and H, equal itself; `direct_function_sql`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import psycopg
from psycopg import sql

from ..errors import InputError, TablemigError
from ..pg.locking import with_lock_retries
from ..pg.names import QualifiedName
from ..pg.references import Reference
from ..pg.schema import install_schema
from .context import RunContext
from .objects import CAPTURE_TRIGGER, Objects, deferred_names
from .planner import TablePlan, missing_privileges
from .state import Cutoff, State
from .structure import change_log_sql, create_table_sql, sync_function_sql, trigger_sql, truncate_guard_sql


def log_function_sql(plan: TablePlan) -> sql.SQL:
    """The capture function in log mode: it appends the written rows' keys to the change log."""
    names = plan.names
    return sync_function_sql(plan.info, names.capture_function, "log", names.change_log,
                             search_path=plan.search_path)


def direct_function_sql(m: State, plan: TablePlan, *, family: QualifiedName | None = None,
                        refs: Sequence[Reference] = (), self_kept: bool = False) -> sql.SQL:
    """The capture function in direct mode (it keeps N, and H, equal itself); with `family`
    it also feeds the swap step's orphan check (tablemig.lifecycle.families)."""
    names = m.objects
    history = names.archive if m.archive_mode == "copy" else None
    return sync_function_sql(plan.info, names.capture_function, "capture", names.new, history,
                             date_column=m.date_column, date_type=m.date_type, cutoff=m.cutoff.text,
                             search_path=plan.search_path, family=family, source=plan.original,
                             self_refs=[(r.child_columns, r.parent_columns) for r in refs if r.self_ref],
                             self_refs_kept=self_kept,
                             defer=[*deferred_names(plan.info, names.new.schema, "n"),
                                    *(deferred_names(plan.info, history.schema, "h") if history else [])])


def run(ctx: RunContext) -> None:
    """Install the schema, create N (and H in copy mode), the change log and the capture
    trigger; resumes (does nothing) when a migration of the table is under way."""
    t0 = time.perf_counter()
    ex = ctx.ex
    # Plan (which validates every input) before anything is installed: bad input changes nothing.
    # Planning is read-only and is done (and timed) apart from the migration core.
    last = ctx.last_plan
    plan = last if last and last.resumed_state is None else ctx.plan()
    # the trigger function is rendered while planning: a template error shows before
    # anything is installed, and its rendering is not part of the capture
    log_function = log_function_sql(plan)
    ctx.timed("plan", t0)
    if plan.blockers:
        raise TablemigError(f"{ctx.table} has blockers: " + "; ".join(plan.blockers),
                            "resolve them (the dry run lists them) and rerun")
    user = str(ex.scalar("SELECT current_user"))
    lacking = missing_privileges(ex, plan)
    if lacking:
        raise InputError(f"the role {user} lacks a privilege for {ctx.table}: " + "; ".join(lacking)
                         + "; nothing was changed",
                         "run as the table's owner (or a member of the owner role, also of referencing "
                         "tables and views) with CREATE on its schema; see README, Least privilege")
    _link_subscribers(ctx, plan)
    t_install = time.perf_counter()
    try:
        install_schema(ex)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise InputError(f"the role {user} lacks a privilege to install the table_migration schema: "
                         f"{exc.diag.message_primary}",
                         "GRANT CREATE ON DATABASE to the role, or have the database owner run "
                         "`tablemig install-schema` once (the table owner is needed for the rest)") from None
    ctx.timed("install", t_install)
    # the table lock is keyed by the original's OID, which after the swap is the archive's
    m = ctx.state()
    ctx.lock(m.table_oid if m is not None and not m.finished else plan.info.oid)
    m = ctx.state()
    if m and not m.finished:
        _resuming(ctx, m, plan)
        return
    t0 = ctx.begin("capture")
    names = plan.names
    info = plan.info
    # every statement is composed before the lock is taken: the lock is held only while
    # they run. N (and H) bare: the key and the indexes are built after the load; the
    # trigger logs changed keys until the replay switches it to direct capture.
    ddl: list[sql.Composable] = list(create_table_sql(info, names.new, user, with_key=False))
    if ctx.spec.archive_mode == "copy":
        ddl.extend(create_table_sql(info, names.archive, user, tag="h", with_key=False))
    ddl.append(change_log_sql(info, names.change_log))
    ddl.append(log_function)
    ddl.extend(trigger_sql(plan.original, CAPTURE_TRIGGER, names.capture_function))
    ddl.append(truncate_guard_sql(plan.original))
    started = State(ctx.table, names, plan.date_column, plan.date_type, tuple(plan.key),
                    Cutoff(plan.cutoff, plan.date_type), ctx.spec.archive_mode, "capturing", ctx.plan_name,
                    ctx.spec.batch_size, rows_to_copy=plan.keep_rows)

    def body(_locked_at: float) -> dict[str, object]:
        # three round trips under the lock: the state row, the DDL, the records
        ctx.store.insert(started)
        with ex.batched():
            for stmt in ddl:
                ex.run(stmt)
        ex.creates(*_created(names))
        with ex.pipeline():
            ex.run("INSERT INTO table_migration.replication_control (table_name, replication_enabled,"
                   " notes) VALUES (%s, false, 'migration in progress: capture installed')"
                   " ON CONFLICT (table_name) DO UPDATE SET replication_enabled = false,"
                   " notes = EXCLUDED.notes", (ctx.table,))
            ctx.store.log("capture", "installed", details={"new_table": str(names.new), "cutoff": plan.cutoff,
                                                           "change_log": str(names.change_log)})
        return {}

    s = ctx.settings()
    # CREATE TRIGGER takes SHARE ROW EXCLUSIVE: it waits for running writers and blocks
    # new ones while waiting, so it gets the same bounded lock_timeout as the swap.
    try:
        with_lock_retries(ex, f"capture on {ctx.table}", [plan.original], body,
                          mode="SHARE ROW EXCLUSIVE", **s.lock_options())
    except psycopg.errors.InsufficientPrivilege as exc:
        raise InputError(
            f"the role {user} lacks a privilege: {exc.diag.message_primary}; nothing was changed",
            "run as the table's owner (or a member of the owner role) with CREATE on its schema; "
            "see README, Least privilege") from None
    ctx.timed("capture", t0)


def _link_subscribers(ctx: RunContext, plan: TablePlan) -> None:
    """The logical subscribers' refusals, before anything changes."""
    for sub in ctx.subscribers:
        sub.link(ctx.ex, plan.original)
        for c in plan.children:  # a `follow` child is swapped with the table there too
            if c.policy == "follow":
                sub.child_publications(ctx.ex, c.ref.child)


def _created(names: Objects) -> list[str]:
    """What the capture creates, for a dry run's later reads (tablemig.lifecycle.executor)."""
    return [str(t) for t, _ in names.new_tables()] + [str(names.change_log), str(names.capture_function)]


def _resuming(ctx: RunContext, m: State, plan: TablePlan) -> None:
    """A migration of the table is under way: it must be this plan's, of this table."""
    if m.plan_name and ctx.plan_name and m.plan_name != ctx.plan_name:
        raise InputError(f"{ctx.table} is mid-migration (state {m.state}) by plan {m.plan_name!r}",
                         f"finish or roll back that plan first (tablemig rollback --table {ctx.table})")
    original_oid = (ctx.ex.scalar("SELECT to_regclass(%s)::oid", (str(m.old_table),)) if plan.swapped
                    else plan.info.oid)
    if m.table_oid != original_oid:
        raise InputError(f"state of {ctx.table} belongs to another table (oid {m.table_oid})",
                         "inspect table_migration.migration_state")
