"""Arming and disarming the swap step's orphan check (see tablemig/lifecycle/families.py for what is
logged and why the check under the swap's lock is then enough)."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import psycopg
from psycopg import sql

from ..config.settings import Settings
from ..errors import TablemigError
from ..pg.locking import with_lock_retries
from ..pg.references import Reference
from .capture import direct_function_sql
from .executor import Executor
from .families import OrphanGuard, child_trigger_sql, disarm_sql, orphan_error, orphans
from .planner import TablePlan
from .retain import purge_old_rows
from .state import State
from .structure import change_log_sql, drop_table_sql


def arm(ex: Executor, m: State, plan: TablePlan, refs: list[Reference], s: Settings) -> OrphanGuard:
    """Arm the family log (one short transaction), then look for orphans with no lock: an
    orphan refuses the swap before anything changes (and the arming is undone)."""
    names = m.objects
    log = names.family_log
    stmts: list[sql.Composable] = [
        drop_table_sql(log), change_log_sql(plan.info, log),
        direct_function_sql(m, plan, family=log, refs=refs,
                            self_kept=plan.keep_rule is not None and plan.keep_rule.self_ref is not None),
        *child_trigger_sql(refs, names, plan.key, plan.search_path,
                           frozenset(r.child for r in plan.keep_rule.refs) if plan.keep_rule else frozenset())]

    def body(_locked_at: float) -> dict[str, Any]:
        with ex.batched():
            for stmt in stmts:
                ex.run(stmt)
        ex.creates(str(log))
        return {}

    # SHARE ROW EXCLUSIVE waits for the writers that started before: every later write is
    # logged, every earlier one is visible to the check below
    children = sorted({r.child for r in refs if not r.self_ref})
    with_lock_retries(ex, f"arming the orphan check of {plan.original}", [plan.original, *children], body,
                      mode="SHARE ROW EXCLUSIVE", **s.lock_options())
    types = {c.name: c.type for c in plan.info.columns}
    guard = OrphanGuard(refs, names, plan.key, [types[k] for k in plan.key], plan.keep_rule)
    try:
        # from the new table as the engine keeps it: a failed or interrupted swap step may
        # have left copies of rows a `keep` child referenced, whose changes the emptied
        # family log no longer names (tablemig.lifecycle.retain)
        purge_old_rows(ex, names.new, m.date_column, m.date_type, m.cutoff.text)
        if plan.keep_rule is not None:
            guard = dataclasses.replace(guard, retained_full_pass=plan.keep_rule.full_pass(ex, names.new))
        # a `keep` child's references are the rule's, made exact under the swap's lock (its
        # writes since the full pass are logged); only the other children can refuse here
        kept = plan.keep_rule.refs if plan.keep_rule is not None else ()
        found = {r.label(): rows for r in refs if r not in kept and (rows := orphans(ex, r, names.new))}
        if found:
            raise orphan_error(str(plan.original), found, under_lock=False)
    except BaseException:
        disarm(ex, m, plan, refs, s)
        raise
    return guard


def disarm(ex: Executor, m: State, plan: TablePlan, refs: list[Reference], s: Settings) -> None:
    """Undo the arming (the swap did not happen): plain direct capture again, no trigger on
    the referencing tables, no family log. Best effort, a few attempts (the session that
    kept the swap from its lock may still hold it): what is left armed costs a logged key
    per write of a reference, and a rerun or a rollback undoes it."""
    stmts = [direct_function_sql(m, plan), *disarm_sql(refs, m.objects)]

    def body(_locked_at: float) -> dict[str, Any]:
        # the table in SHARE ROW EXCLUSIVE (no writer of it runs the function being
        # replaced); DROP TRIGGER takes ACCESS EXCLUSIVE on each referencing table, under the
        # same lock_timeout
        for stmt in stmts:
            ex.run(stmt)
        return {}

    with contextlib.suppress(psycopg.Error, TablemigError):
        if ex.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            ex.conn.rollback()
        with_lock_retries(ex, f"disarming the orphan check of {plan.original}", [plan.original], body,
                          mode="SHARE ROW EXCLUSIVE", **(s.lock_options() | {"attempts": min(3, s.swap_max_attempts)}))
