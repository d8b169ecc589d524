"""The prune step: after the swap (and the validation window), delete from the archive the
rows that live in T; from then on T and the archive are disjoint halves of the original.

The mirror trigger is first replaced, in one transaction, by a prune guard (deletes reach
the archive; keys that exist in the archive are refused), the copies are deleted in keyset
batches, then the guard is dropped and the state becomes `pruned`. Resumable; a rollback
during or after it goes through tablemig.lifecycle.rollback's restore path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from psycopg import sql

from ..pg.catalog import inspect_table
from ..pg.locking import with_lock_retries
from ..pg.names import QualifiedName
from ..pg.sqltext import Fragment
from ..pg.statements import Statements
from . import follow_after
from .context import RunContext
from .executor import Observed
from .objects import GUARD_TRIGGER, MIRROR_TRIGGER, PRUNE_TRIGGER
from .planner import TablePlan, plan_after_swap
from .state import State
from .structure import drop_function_sql, drop_trigger_sql, sync_function_sql, trigger_sql


def plan_for_state(ctx: RunContext, m: State) -> TablePlan:
    """A plan for the live table as it is after the swap, without counting rows."""
    return plan_after_swap(ctx.ex, ctx.spec, m, count=False)


def run(ctx: RunContext, batch_size: int | None = None) -> int:
    """Prune (see the module docstring); returns the archive rows deleted."""
    t0 = ctx.begin("prune")
    m = ctx.require("swapped", "pruned")
    if m.state == "pruned":
        return 0
    s = ctx.settings()
    ex = ctx.ex
    ctx.pacer.start(ctx.conn, s)
    t, a = m.live, m.old_table
    plan = ctx.last_plan or plan_for_state(ctx, m)
    names = m.objects
    copy_mode = m.archive_mode == "copy"
    children = follow_after.followed(m.swap_record.as_json())  # `follow` children (mode rename only)
    if not m.checkpoint.prune_started and not copy_mode:
        # the archive's foreign keys to itself: archived rows may reference rows that are
        # live now, whose copies the prune deletes; dropped (rollback adds them back)
        self_fks = self_references(ex, a)
        infos = [(c, inspect_table(ex, c.child, partitioned=True)) for c in children]

        def start(_locked_at: float) -> dict[str, Any]:
            follow_after.start_prune(ex, infos)  # the `follow` children's mirrors too
            for name, _ in self_fks:
                ex.run(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(a.ident(), sql.Identifier(name)))
            ex.run(drop_trigger_sql(t, MIRROR_TRIGGER))
            ex.run(drop_function_sql(names.mirror_function))
            ex.run(sync_function_sql(plan.info, names.prune_function, "prune", a, search_path=plan.search_path))
            for stmt in trigger_sql(t, PRUNE_TRIGGER, names.prune_function):
                ex.run(stmt)
            ctx.store.set_checkpoint({"prune_started": True, "archive_self_fks": [list(f) for f in self_fks]})
            ctx.store.log("prune", "started")
            return {}
        with_lock_retries(ex, f"prune of {t}", [t, *(c.child for c in children)], start,
                          mode="SHARE ROW EXCLUSIVE", **s.lock_options())
        m = ctx.state() or m
    # the children's copies before the table's: an archived child row references the table's archive
    deleted_children = _delete_children_copies(ctx, children, batch_size or m.batch_size)
    deleted = 0 if copy_mode else _delete_table_copies(ctx, m, t, a, batch_size or m.batch_size)

    def finish(_locked_at: float) -> dict[str, Any]:
        for trg in (PRUNE_TRIGGER, MIRROR_TRIGGER, GUARD_TRIGGER):
            ex.run(drop_trigger_sql(t, trg))
        for fn in (names.prune_function, names.mirror_function):
            ex.run(drop_function_sql(fn))
        follow_after.finish_prune(ex, children)
        ctx.store.update(state="pruned")
        ctx.store.record_archive_rows(a)
        ctx.store.log("prune", "done", rows=Observed("rows", deleted),
                      details={"children": deleted_children} if deleted_children else None)
        return {}
    with_lock_retries(ex, f"prune of {t}", [t, *(c.child for c in children)], finish, mode="SHARE ROW EXCLUSIVE",
                      **s.lock_options())
    ctx.timed("prune", t0)
    return deleted


def _delete_children_copies(ctx: RunContext, children: list[follow_after.Followed], batch: int) -> dict[str, int]:
    """The `follow` children's archive copies of their live rows, deleted, grandchildren first
    (each from the start of its key: a rerun deletes what is left)."""
    out = {}
    for c in reversed(children):
        out[str(c.child)] = _delete_archived_copies(ctx, list(c.key), c.child, c.archive, batch, None,
                                                    lambda _last, _done: None)
    return out


def _delete_table_copies(ctx: RunContext, m: State, t: QualifiedName, a: QualifiedName, batch: int) -> int:
    """The table's archive copies of its live rows, deleted, resuming at the checkpoint."""
    return _delete_archived_copies(ctx, list(m.key), t, a, batch, m.checkpoint.prune_last, lambda last, done:
                                   ctx.store.set_checkpoint({"prune_last": last, "prune_done": done}))


def _delete_archived_copies(ctx: RunContext, keys: list[str], t: QualifiedName, a: QualifiedName, batch: int,
                            last: list[str] | None, save: Callable[[list[str] | None, bool], object]) -> int:
    """Delete from `a` the rows whose key `t` has, in keyset batches of `t`'s key (each its
    own transaction, paced), after `last`; `save(last, done)` records each batch's end in its
    transaction."""
    ex = ctx.ex
    key = [sql.Identifier(k) for k in keys]
    klist = sql.SQL(", ").join(key)
    texts = sql.SQL(", ").join(sql.SQL("src.{}::text").format(k) for k in key)
    src_order = sql.SQL(", ").join(sql.SQL("src.{}").format(k) for k in key)
    match = sql.SQL(" AND ").join(sql.SQL("a.{0} = b.{0}").format(k) for k in key)
    total = 0
    typed = sql.SQL(", ").join(sql.SQL("%s::{}").format(Fragment(_type_of(ex, t, k))) for k in keys)
    above = sql.SQL("({}) > ({})").format(klist, typed)
    upto = sql.SQL("({}) <= ({})").format(klist, typed)
    while True:
        ctx.pause()
        ctx.pacer(ctx.conn)
        with ex.transaction():
            bound = ex.read(sql.SQL(  # ORDER BY the typed columns, not the ::text outputs
                "SELECT {} FROM {} AS src WHERE {} ORDER BY {} OFFSET %s LIMIT 1").format(
                texts, t.ident(), above if last else sql.SQL("true"), src_order),
                [*(last or []), batch - 1]).fetchone()
            upper = [str(v) for v in bound] if bound else None
            conds = ([above] if last else []) + ([upto] if upper else [])
            where = sql.SQL(" AND ").join(conds) if conds else sql.SQL("true")
            total += max(ex.run(sql.SQL(
                "DELETE FROM {a} a USING (SELECT {k} FROM {t} WHERE {w}) b WHERE {m}").format(
                a=a.ident(), k=klist, t=t.ident(), w=where, m=match),
                [*(last or []), *(upper or [])]).rowcount, 0)
            last = upper or last
            save(last, bound is None)
        if bound is None:
            break
    return total


def _type_of(st: Statements, table: QualifiedName, column: str) -> str:
    return str(st.read("SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
                       " WHERE attrelid = %s::regclass AND attname = %s", (str(table), column)).scalar())


def self_references(st: Statements, table: QualifiedName) -> list[tuple[str, str]]:
    """(name, definition) of `table`'s foreign keys to itself, the definitions
    schema-qualified (read with an empty search_path)."""
    with st.transaction():
        st.read("SELECT set_config('search_path', '', true)")  # for this read only
        rows = st.read("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
                       " WHERE conrelid = %s::regclass AND contype = 'f' AND confrelid = conrelid"
                       " ORDER BY conname", (str(table),)).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]

