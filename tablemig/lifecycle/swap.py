"""The swap: one short transaction that puts the new table in the original's place.

Forward (`swap`): rename `T -> A` (or `T -> T_backup` in copy mode) and `N -> T`, then make
the new `T` look like the old one to the application: index/constraint names, sequence
ownership and position, incoming foreign keys (re-pointed NOT VALID, validated later in
their own transactions), views and materialized views recreated, grants, RLS policies,
comment, user triggers (in their enable states), rules and publication membership (with
row filters and column lists) carried over. The capture trigger goes; a mirror trigger on
the new `T` keeps the archive equal to what the original would be, so rolling back stays
lossless until prune. Last, still under the lock, the live table's inventory is compared
with the original's (`tablemig.pg.inventory`): any difference but the name rolls the swap
back, naming the property, and the swap record keeps the comparison for the audit.

Backward (`swap_back`, in tablemig.lifecycle.rollback): the same exchange in the other direction.

Locks are taken in a fixed order (the table, the other table, referencing tables, views),
each attempt waiting at most `lock_timeout` and retried a bounded number of times
(`tablemig.pg.locking`). The renames and re-creations themselves are `tablemig.lifecycle.exchange`,
shared with logical subscribers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from psycopg import sql

from ..errors import TablemigError
from ..pg import inventory
from ..pg.autovacuum import AutovacuumPolicy
from ..pg.catalog import TableInfo, inspect_table
from ..pg.locking import blockers, with_lock_retries
from ..pg.names import QualifiedName
from ..pg.references import references
from ..pg.statements import Statements
from . import hold
from .context import RunContext
from .exchange import exchange, move_publications, validate_foreign_keys
from .executor import Executor, Observed, plain
from .families import OrphanGuard
from .follow import FollowRun, family, prepare
from .follow import disarm as follow_disarm
from .objects import CAPTURE_TRIGGER, GUARD_TRIGGER, MIRROR_TRIGGER, deferred_names
from .orphan_guard import arm, disarm
from .state import Expr, State, StateStore
from .structure import (
    drop_function_sql,
    drop_table_sql,
    drop_trigger_sql,
    sync_function_sql,
    trigger_sql,
    truncate_guard_sql,
)


@dataclass
class SwapResult:
    attempts: int
    lock_hold_ms: float
    lsn: str
    record: dict[str, Any]
    attempt_log: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Dependents:
    """What the swap locks besides the two tables: tables whose foreign keys reference the
    table, views / materialized views on it, and relations with rules that name it (the
    swap re-creates those rules). Read with one cheap query before the lock; the full
    inspection under the lock must find no more than these."""

    children: frozenset[QualifiedName]
    views: frozenset[QualifiedName]
    matviews: frozenset[QualifiedName]
    rules: frozenset[QualifiedName] = frozenset()

    @classmethod
    def read(cls, st: Statements, table: QualifiedName) -> Dependents:
        rows = st.read("""
            SELECT 'f', n.nspname, c.relname FROM pg_constraint con
              JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE con.confrelid = %s::regclass AND con.contype = 'f' AND con.conrelid <> con.confrelid
               AND con.conparentid = 0
            UNION
            SELECT CASE WHEN r.rulename = '_RETURN' THEN v.relkind::text ELSE 'r' END, n.nspname, v.relname
              FROM pg_depend d
              JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class
              JOIN pg_namespace n ON n.oid = v.relnamespace
             WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
               AND d.refobjid = %s::regclass AND v.oid <> %s::regclass""", (str(table),) * 3).fetchall()
        pick = {k: frozenset(QualifiedName(sch, rel) for kind, sch, rel in rows if kind == k)
                for k in ("f", "v", "m", "r")}
        return cls(pick["f"], pick["v"], pick["m"], pick["r"])

    def covers(self, info: TableInfo) -> bool:
        return ({fk.table for fk in info.incoming_fks} <= self.children
                and {v.name for v in info.views} <= self.views | self.matviews
                and {r.relation for r in info.rules_elsewhere} <= self.rules)

    def lock_list(self, t: QualifiedName, other: QualifiedName) -> list[QualifiedName]:
        # LOCK TABLE refuses materialized views; the swap's DROP MATERIALIZED VIEW takes their
        # lock under the same lock_timeout (they are watched for blockers)
        return [t, other, *sorted(self.children), *sorted(self.views - self.children),
                *sorted(self.rules - self.children - self.views)]


class SwapPeer(Protocol):
    """Another site that must make the same exchange atomically with this one (a logical
    subscriber). `prepare_swap` runs last inside the locked transaction and leaves a
    prepared transaction; `finish_swap` commits or rolls it back once this site's
    transaction has committed or failed."""

    name: str

    def prepare_swap(self, m: State, *, back: bool) -> dict[str, Any]: ...

    def finish_swap(self, m: State, *, back: bool, committed: bool) -> None: ...


def coordinated(peers: Sequence[SwapPeer], m: State, back: bool,
                run: Callable[[], tuple[dict[str, Any], int, list[dict[str, Any]]]],
                ) -> tuple[dict[str, Any], int, list[dict[str, Any]]]:
    """`run` the locked transaction of this site; then the peers commit their prepared
    part (or roll it back if this site's failed)."""
    try:
        out = run()
    except BaseException:
        for p in peers:
            p.finish_swap(m, back=back, committed=False)
        raise
    for p in peers:
        p.finish_swap(m, back=back, committed=True)
    return out


@dataclass
class FamilyPass:
    """Under the swap's lock, right after the renames: the live table made exact for the
    `keep` children (tablemig.lifecycle.retain), then the `follow` children put in place
    (tablemig.lifecycle.follow); what they did goes into the swap record."""

    ex: Executor
    guard: OrphanGuard | None
    follow: FollowRun | None
    live: QualifiedName
    outgoing: QualifiedName
    retained: dict[str, int] = field(default_factory=dict)
    followed: list[dict[str, Any]] = field(default_factory=list)

    def after_rename(self) -> None:
        if self.guard is not None:
            self.retained.update(self.guard.retain_locked(self.ex, self.live, self.outgoing))
        if self.follow is not None:
            # the keys the `keep` rule decided again: their rows' children are decided again
            decided = self.guard.objects.family_log if self.guard and self.guard.retain else None
            self.followed.extend(self.follow.locked(self.ex, self.live, self.outgoing, decided))

    def record(self, record: dict[str, Any]) -> None:
        # counts the execution observes (a dry run records their kind)
        if self.retained:  # the rows `keep` children reference, live whatever their date (EX-4.1 counts them)
            record["retained"] = {k: Observed("rows", v) for k, v in self.retained.items()}
        if self.followed:  # the children that moved with the table (prune and rollback read them)
            record["follow"] = self.followed
            for f in self.followed:  # re-pointed to the live children: validated after the swap
                record["foreign_keys"] += f.pop("foreign_keys")


def swap(ex: Executor, m: State, *, lock_timeout: str, attempts: int, statement_timeout: str,
         long_xact_seconds: float, on_attempt: Callable[[dict[str, Any]], None] | None = None,
         peers: Sequence[SwapPeer] = (), search_path: Sequence[str] = (),
         guard: OrphanGuard | None = None, autovacuum_policy: AutovacuumPolicy | None = None,
         store: StateStore | None = None, follow: FollowRun | None = None) -> SwapResult:
    """Forward swap of the table described by state `m`; `peers` (logical subscribers)
    make the same exchange, committed right after this one (see tablemig.lifecycle.logical).
    `search_path`: the schemas of the mirror function's path (tablemig.pg.search_path).
    `guard`: the orphan check armed by the swap step, repeated first under the lock (a
    finding rolls the swap back; tablemig.lifecycle.families). `store`: the run's state store
    (a dry run keeps there the row it would have written). `follow`: the `follow` children's
    new tables, built by the swap step, put in place with the table (tablemig.lifecycle.follow)."""
    names = m.objects
    store = store or StateStore(ex, m.table)
    t, n, outgoing = names.original, names.new, names.outgoing
    deps = Dependents.read(ex, t)

    def body(locked_at: float) -> dict[str, Any]:
        info = inspect_table(ex, t, list(m.key))  # under the lock: current
        if not deps.covers(info):
            raise psycopg.errors.LockNotAvailable("dependencies changed while locking")
        family = FamilyPass(ex, guard, follow, t, outgoing)
        if guard is not None:  # before anything changes: an orphan rolls this transaction back
            guard.check_locked(ex)
        mirror = sync_function_sql(info, names.mirror_function, "mirror", outgoing, search_path=search_path,
                                   defer=deferred_names(info, outgoing.schema, "a"))
        with ex.batched():  # the DDL in as few round trips as its reads allow
            ex.run(drop_trigger_sql(t, CAPTURE_TRIGGER))
            ex.run(drop_trigger_sql(t, GUARD_TRIGGER))
            ex.run(drop_function_sql(names.capture_function))
            # the change log, emptied by the switch to direct capture (this commit is durable anyway)
            ex.run(drop_table_sql(names.change_log))
            record = exchange(ex, info, t, n, outgoing, after_rename=family.after_rename)
            if guard is not None:  # the family log, read by the rows kept for the children
                for stmt in guard.disarm_sql():
                    ex.run(stmt)
            if not peers:  # a managed subscriber keeps both tables published (see tablemig.lifecycle.logical)
                move_publications(ex, info.publication_rels, outgoing, t)
            ex.run(sql.SQL("COMMENT ON TABLE {} IS {}").format(outgoing.ident(), sql.Literal(
                f"tablemig: original {t} (all rows) before the swap; cutoff {m.cutoff} on {m.date_column}")))
            ex.run(mirror)
            for stmt in trigger_sql(t, MIRROR_TRIGGER, names.mirror_function):
                ex.run(stmt)
            ex.run(truncate_guard_sql(t))
        before = inventory.of(info)
        record["inventory"] = _same_inventory(ex, before, t, n, m)
        record["inventory_before"] = before  # for the checks after it (EX-4.1, RB-1)
        record |= {"foreign_keys": [fk.__dict__ | {"table": str(fk.table)} for fk in info.incoming_fks]
                   + record.pop("self_foreign_keys", []),
                   "views": [str(v.name) for v in info.views], "publications": info.publications,
                   "outgoing": outgoing.name, "fk_validated": []}
        family.record(record)
        # Last, with every lock held: the peers catch up and prepare their own exchange.
        record["peers"] = {p.name: p.prepare_swap(m, back=False) for p in peers}
        store_advance(store, m, record, locked_at)
        return record

    locks = deps.lock_list(t, n) + (follow.lock_list() if follow else [])
    record, used, log = coordinated(peers, m, False, lambda: with_lock_retries(
        ex, f"swap of {t}", locks, body, lock_timeout=lock_timeout,
        attempts=attempts, statement_timeout=statement_timeout,
        long_xact_seconds=long_xact_seconds, on_attempt=on_attempt, watch=sorted(deps.matviews),
        durable=True, autovacuum_policy=autovacuum_policy))
    hold = record.pop("lock_hold_ms")
    # the LSN after the swap's commit, for the standbys to reach
    lsn = store.record_swap(Observed("ms", hold), used)
    return SwapResult(used, hold, lsn, plain(record), log)


def store_advance(store: StateStore, m: State, record: dict[str, Any], locked_at: float) -> None:
    """The swap's state, in its transaction."""
    store.advance(
        "swap", "done", details={"renamed": [str(m.live), m.objects.outgoing.name]}, state="swapped",
        swap_record=record, swap_attempts=m.swap_attempts + 1,
        lock_hold_ms=Observed("ms", round((time.perf_counter() - locked_at) * 1000, 1)),
        swap_lsn=Expr(sql.SQL("pg_current_wal_insert_lsn()")))


def _same_inventory(ex: Executor, before: inventory.Inventory, t: QualifiedName, n: QualifiedName,
                    m: State) -> str:
    """Under the swap's lock: the live table's inventory must be the original's (`before`,
    read under the same lock) but for the name. A difference raises, which rolls the swap
    back: nothing changes, and the error names each property. (In a dry run the name still
    holds the original: no difference.)"""
    diffs = inventory.differences(before, inventory.read(ex, t, list(m.key)), pending_validation=True)
    if diffs:
        raise TablemigError(
            f"swap of {t}: the live table would differ from the original ({'; '.join(diffs)}); "
            "the swap was rolled back, nothing was changed",
            f"a property changed on {t} during the migration (or tablemig cannot carry it): make the same "
            f"change on {n} and rerun (the migration resumes at the swap), or roll back (tablemig "
            "rollback) and migrate again")
    return inventory.summary(diffs)


def run(ctx: RunContext) -> SwapResult:
    """The swap step: the orphan check armed (when foreign keys reference the table), the
    subscribers caught up, then the swap; resumes (returns the recorded result) once swapped."""
    m = ctx.require("verified", "swapped")
    if m.state == "swapped":
        return ctx.results.swap or SwapResult(m.swap_attempts, float(m.lock_hold_ms or 0), str(m.swap_lsn),
                                              m.swap_record.as_json())
    hold.wait_for_release(ctx)  # a postponed cut-over (tablemig.lifecycle.hold)
    t0 = ctx.begin("swap")
    s = ctx.settings()
    plan = ctx.current_plan()
    ex = ctx.ex
    for sub in ctx.subscribers:  # first: a following child's new table is attached there
        sub.link(ex, m.live)
    refs = references(ex, m.table_oid)
    followed = [r for r in refs if not r.self_ref and plan.spec.child_policy(r.child) == "follow"]
    refs = [r for r in refs if r not in followed]  # the orphan check is for the others
    guard = arm(ex, m, plan, refs, s) if refs else None
    following: FollowRun | None = None
    try:
        if followed:  # after the arming: the new table holds the rows kept for `keep` children
            following = prepare(ex, family(ex, followed, m.objects), str(ex.scalar("SELECT current_user")),
                                m.date_column, m.key, plan.search_path, s.lock_options(), ctx.subscribers)
        for sub in ctx.subscribers:  # caught up before the locks: the barrier under them is short
            sub.wait_ready([m.new])
            sub.barrier()
        result = swap(ex, m, peers=ctx.subscribers, search_path=plan.search_path, guard=guard,
                      store=ctx.store, follow=following, **s.swap_options())
    except BaseException:
        if guard is not None:
            disarm(ex, m, plan, refs, s)
        if following is not None:
            follow_disarm(ex, following.followers, s.lock_options(), ctx.subscribers)
        raise
    ctx.results.swap = result
    ctx.timed("swap", t0)
    last = result.attempt_log[-1] if result.attempt_log else None
    if last is not None and not last["blockers"]:
        # for the audit: old transactions seen right after (asked after the swap, so the
        # query's milliseconds stay out of the swap)
        last["blockers"] = blockers(ex, [m.live], s.long_transaction_seconds)
    return result


def validate(ctx: RunContext) -> list[str]:
    """VALIDATE the re-pointed foreign keys (after the swap; idempotent)."""
    t0 = ctx.begin("validate_fks")
    m = ctx.state()
    if not m or not m.swapped:
        return []
    rec = m.swap_record
    todo = [fk for fk in rec.foreign_keys if f"{fk['table']}.{fk['name']}" not in rec.fk_validated]
    done = validate_foreign_keys(ctx.ex, todo)
    for sub in ctx.subscribers:
        sub.link(ctx.ex, m.live)
        done += [f"subscriber: {fk}" for fk in sub.validate_foreign_keys(m)]
    if done:
        with ctx.ex.transaction():
            ctx.store.update(swap_record=rec.validated(done))
    ctx.timed("validate_fks", t0)
    return done


__all__ = ["Dependents", "SwapPeer", "SwapResult", "coordinated", "run", "swap", "validate", "validate_foreign_keys"]
