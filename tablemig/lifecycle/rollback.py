"""The rollback step, from any state before cleanup:

* before the swap: drop the capture trigger, the change log, the orphan check if armed,
  and the new table (and the history copy);
* after the swap, before prune: swap back (`swap_back`: the archive, kept current by the
  mirror trigger, becomes the table again; the new table is dropped);
* after (or during) prune: first make the archive complete again (`unprune`: the mirror
  trigger back, T's rows copied into the archive in keyset batches), then swap back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from ..config.settings import Settings
from ..errors import InputError, TablemigError
from ..pg.autovacuum import AutovacuumPolicy
from ..pg.catalog import TableInfo, inspect_table
from ..pg.locking import with_lock_retries
from ..pg.names import QualifiedName
from ..pg.references import references
from ..pg.sqltext import Fragment
from . import follow_after, prune
from .batch_copy import BatchCopier
from .context import RunContext
from .copying import CopyJob
from .exchange import exchange_back, move_publications, validate_foreign_keys
from .executor import Executor, plain
from .families import disarm_sql
from .objects import CAPTURE_TRIGGER, GUARD_TRIGGER, MIRROR_TRIGGER, deferrable_constraints, new_name
from .state import State, StateStore
from .structure import (
    deferrable_key,
    drop_function_sql,
    drop_table_sql,
    drop_trigger_sql,
    sync_function_sql,
    trigger_sql,
    truncate_guard_sql,
)
from .subscribers import resolve
from .swap import Dependents, SwapPeer, SwapResult, coordinated


def swap_back(ex: Executor, m: State, *, lock_timeout: str, attempts: int, statement_timeout: str,
              long_xact_seconds: float, peers: Sequence[SwapPeer] = (),
              autovacuum_policy: AutovacuumPolicy | None = None) -> SwapResult:
    """Undo a swap: the archive (kept current by the mirror trigger) becomes `T` again and
    the new table is dropped. Lossless while the mirror trigger was in place."""
    names = m.objects
    t, n, outgoing = m.live, m.new, m.old_table
    deps = Dependents.read(ex, t)
    children = follow_after.followed(m.swap_record.as_json())

    def body(locked_at: float) -> dict[str, Any]:
        info = inspect_table(ex, t, list(m.key))
        if not deps.covers(info):
            raise psycopg.errors.LockNotAvailable("dependencies changed while locking")
        with ex.batched():
            ex.run(drop_trigger_sql(t, MIRROR_TRIGGER))
            ex.run(drop_trigger_sql(t, GUARD_TRIGGER))
            ex.run(drop_function_sql(names.mirror_function))
            exchange_back(ex, info, t, n, outgoing, m.swap_record.as_json())
            if not peers:
                move_publications(ex, info.publication_rels, n, t)
            for child in children:  # before the new table goes: the live children referenced it
                follow_after.swap_back(ex, child)
            ex.run(drop_table_sql(n, if_exists=False))
        for p in peers:
            p.prepare_swap(m, back=True)
        StateStore(ex, m.table).advance("rollback", "swapped back", state="rolled_back")
        return {"foreign_keys": [fk.__dict__ | {"table": str(fk.table)} for fk in info.incoming_fks]}

    record, used, log = coordinated(peers, m, True, lambda: with_lock_retries(
        ex, f"swap back of {t}", deps.lock_list(t, outgoing) + [c.archive for c in children], body,
        lock_timeout=lock_timeout, attempts=attempts, statement_timeout=statement_timeout,
        long_xact_seconds=long_xact_seconds, watch=sorted(deps.matviews), report_seen=True,
        durable=True, autovacuum_policy=autovacuum_policy))
    hold = record.pop("lock_hold_ms")
    return SwapResult(used, hold, str(ex.scalar("SELECT pg_current_wal_insert_lsn()::text")), plain(record), log)


def run(ctx: RunContext) -> str:
    """Undo the migration from whatever state it is in; returns what was done."""
    m = ctx.state()
    if not m or m.state == "rolled_back":
        return "nothing to roll back"
    if m.state == "cleaned":
        raise InputError(f"{ctx.table} was cleaned up after approval; the original is gone",
                         "restore from the backup (RB-3 full rollback)")
    ctx.lock(m.table_oid)
    resolve(ctx)
    m = ctx.state() or m
    s = ctx.settings()
    ex = ctx.ex
    if m.state == "pruned" or m.checkpoint.prune_started:
        _unprune(ctx, m, s)
        m = ctx.state() or m
    if m.state == "swapped":
        for sub in ctx.subscribers:
            sub.barrier()
        ctx.results.swap = result = swap_back(ex, m, peers=ctx.subscribers, **s.swap_options())
        validate_foreign_keys(ex, result.record.get("foreign_keys", []))
        return "swapped back"
    names = m.objects
    t = m.live
    # an orphan check armed by a swap step that did not finish (tablemig.lifecycle.families)
    armed = ex.scalar("SELECT to_regclass(%s) IS NOT NULL", (str(names.family_log),),
                      reads=[str(names.family_log)], planned=[(True,)])
    refs = references(ex, m.table_oid) if armed else []
    # the `follow` children's new tables and triggers, when the swap step was interrupted
    followers, unfollow = follow_after.leftovers_sql(ex, names)

    def drop(_locked_at: float) -> dict[str, Any]:
        for stmt in [*disarm_sql(refs, names), *unfollow]:
            ex.run(stmt)
        ex.run(drop_trigger_sql(t, CAPTURE_TRIGGER))
        ex.run(drop_trigger_sql(t, GUARD_TRIGGER))
        ex.run(drop_function_sql(names.capture_function))
        ex.run(drop_table_sql(names.change_log))
        for table, _ in m.new_tables():
            ex.run(drop_table_sql(table))
        ctx.store.advance("rollback", "capture removed", state="rolled_back")
        return {}

    children = sorted({r.child for r in refs if not r.self_ref} | set(followers))
    with_lock_retries(ex, f"rollback of {t}", [t, *children], drop, **s.lock_options())
    dropped = [m.new] + ([m.old_table] if m.archive_mode == "copy" else []) + [new_name(c) for c in followers]
    for sub in ctx.subscribers:  # after the active site: no change for them is in flight
        sub.drop(dropped)
    return "capture removed, new table dropped"


def _unprune(ctx: RunContext, m: State, s: Settings) -> None:
    """After prune: finish the prune, refuse on key collisions, mirror again and copy T's
    rows back into A; A is then complete and the swap can be undone."""
    ex = ctx.ex
    t, a = m.live, m.old_table
    if m.archive_mode == "copy":
        raise TablemigError(
            f"{t} was pruned in archive mode copy: the original stopped following the live table",
            f"restore by hand: the original (complete up to the prune) is {a}; rows written since are "
            f"in {t}; or restore from the PRE-2.1 backup (RB-3)")
    if m.state != "pruned":
        prune.run(ctx)  # an interrupted prune is finished first: then A holds history only
    key = sql.SQL(", ").join(map(sql.Identifier, m.key))
    clash = ex.read(sql.SQL("SELECT {k} FROM {t} JOIN {a} USING ({k}) LIMIT 10").format(
        k=key, t=t.ident(), a=a.ident())).fetchall()
    if clash:
        raise TablemigError(
            f"cannot roll back {t}: keys written after the prune also exist in the archive "
            f"{a} (e.g. {clash[:3]}); the original's key cannot hold both",
            "decide which row wins for each such key, delete the other, then rerun rollback")
    plan = ctx.last_plan or prune.plan_for_state(ctx, m)
    info = plan.info
    fn = m.objects.mirror_function
    # the archive's deferrable constraints under the names the swap gave them
    archived = m.swap_record.archived_indexes
    defer = [a.sibling(archived[i.name]) for i in deferrable_constraints(info) if i.name in archived]

    def mirror(_locked_at: float) -> dict[str, Any]:
        ex.run(sync_function_sql(info, fn, "mirror", a, search_path=plan.search_path, defer=defer))
        for stmt in trigger_sql(t, MIRROR_TRIGGER, fn):
            ex.run(stmt)
        ex.run(truncate_guard_sql(t))
        return {}

    with_lock_retries(ex, f"restore mirror on {t}", [t], mirror, mode="SHARE ROW EXCLUSIVE", **s.lock_options())
    _copy_back(ctx, m, info, list(m.key), t, a, "unprune")
    _unprune_children(ctx, m, s)
    # the archive's foreign keys to itself, dropped by the prune: complete again, it
    # satisfies them (added NOT VALID, then validated without blocking writes)
    present = prune.self_references(ex, a)
    fks = [(n, d) for n, d in (ctx.state() or m).checkpoint.archive_self_fks if (n, d) not in present]

    def restore(_locked_at: float) -> dict[str, Any]:
        for name, definition in fks:
            ex.run(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID").format(
                a.ident(), sql.Identifier(name), Fragment(definition.removesuffix(" NOT VALID"))))
        ctx.store.update(state="swapped")
        ctx.store.set_checkpoint(drop=["prune_started", "prune_last", "prune_done", "archive_self_fks"])
        ctx.store.log("rollback", "archive made complete again")
        return {}

    with_lock_retries(ex, f"restore of {a}", [a], restore, mode="SHARE ROW EXCLUSIVE", **s.lock_options())
    for name, definition in fks:
        if not definition.endswith(" NOT VALID"):
            ex.run(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(a.ident(), sql.Identifier(name)))


def _unprune_children(ctx: RunContext, m: State, s: Settings) -> None:
    """The `follow` children's archives made complete again, after the table's (their rows
    reference the table's archive): the mirror back on each live child, then its rows copied."""
    ex = ctx.ex
    for child in follow_after.followed(m.swap_record.as_json()):
        info = inspect_table(ex, child.child, partitioned=True)

        def mirror(_locked_at: float, child: follow_after.Followed = child, info: TableInfo = info) -> dict[str, Any]:
            follow_after.restore_mirror(ex, child, info)
            return {}

        with_lock_retries(ex, f"restore mirror on {child.child}", [child.child], mirror, mode="SHARE ROW EXCLUSIVE",
                          **s.lock_options())
        _copy_back(ctx, m, info, list(child.key), child.child, child.archive, f"unprune {child.child}")


def _copy_back(ctx: RunContext, m: State, info: TableInfo, key: list[str], live: QualifiedName,
               archive: QualifiedName, checkpoint: str) -> None:
    """The live table's rows copied into its archive in keyset batches (the table's, or a
    `follow` child's), from the start (`checkpoint`: the key of its ranges in the state's
    checkpoint). No verify pass follows this copy, so it locks the rows it reads: a writer
    changing one of them waits for the batch, then the mirror trigger sees the copy."""
    types = {c.name: c.type for c in info.columns}
    job = CopyJob(live, archive, info.written_columns, key, [types[k] for k in key], None, "", "",
                  info.identity_always, key, lock_rows=True, no_arbiter=deferrable_key(info))
    with ctx.ex.transaction():
        ctx.store.set_checkpoint(drop=[checkpoint])
    BatchCopier(ctx.ex, ctx.dsn, job, ctx.table, checkpoint, batch_size=m.batch_size, throttle=ctx.throttle,
                progress=ctx.progress, pace=ctx.pacer).run(ctx.store, None)
