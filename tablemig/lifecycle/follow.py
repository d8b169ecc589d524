"""The `follow` policy of a child table: a child row stays live exactly when the row it
references stays live; the others go to the archive with their parent (docs/families.md).

The child gets its own new table, built by the swap step of its parent while the
application writes both tables:

1. *arm* (one short transaction, SHARE ROW EXCLUSIVE on the table and the child, the
   bounded lock waits of every tablemig lock): the child's new table `C_new` (bare: no key,
   no index, no foreign key to the table), the child's change log (its keys, logged by a
   trigger on the child for every write) and its parent log (the referenced keys, logged
   by a trigger on the table when a row's date or key changes or the row is deleted: its
   children may then change sides without being written);
2. *load*, no lock: `INSERT INTO C_new SELECT ... FROM C WHERE` the row's reference is in
   the table's new table (or is NULL, referencing nothing). One scan of the child and a
   hash of the new table's keys: linear. It sees every write committed before the arm;
   every later one is logged;
3. *index*: the key and the secondary indexes of the child built on `C_new`, its other
   foreign keys validated;
4. *replay*, no lock, batches in REPEATABLE READ transactions: the rows of `C_new` with a
   logged key or a logged reference are deleted and copied again from the child where
   their reference is in the new table, as the batch's snapshot sees both. A write not
   visible to that snapshot has a log row the batch does not see either, which survives
   it (the argument of tablemig.lifecycle.replay); the table's new table changes only in
   the transaction of a write to the table (direct capture), which logs the key;
5. *verify*: in one snapshot, the last log rows replayed, then the count and a checksum of
   `C_new` against the child's rows whose reference is in the new table;
6. *under the swap's lock*, after the table's renames and the rows kept for `keep` children
   (so that the live table is exact): the child renamed to its archive and `C_new` to the
   child's name, then the remaining log rows (and the keys the `keep` rule decided again)
   replayed into it (after the renames, so that a logical subscriber receives these changes
   under the live names), the rest of the exchange (tablemig.lifecycle.exchange, as for the
   table), the triggers and logs dropped, and a mirror trigger on the live child that keeps
   the archive complete (rollback stays lossless until prune). The swap then re-points the
   child's foreign key: on the live child, to the live table (NOT VALID, validated after
   the swap); the archived child keeps its own key to the archived table.

Nothing writes the family while the lock is held, so the live child is exactly the rows
that reference a live row (or nothing). A failure before the swap drops what was armed
(`disarm_sql`); a rerun builds the child's new table again from the start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from psycopg import sql

from ..errors import TablemigError
from ..pg.catalog import TableInfo, inspect_table
from ..pg.locking import with_lock_retries
from ..pg.names import QualifiedName
from ..pg.partitions import Partition, partition_key, partition_names, partition_tree
from ..pg.references import Reference, references
from ..pg.sqltext import Fragment
from ..pg.statements import Statements
from ..pg.templating import render
from . import follow_partitions
from .exchange import exchange
from .executor import Executor, Observed
from .follow_partitions import archived
from .follow_partitions_after import archive_defaults, defaults_sql
from .follow_rows import Replayed, batch, build_indexes, drain, load, verify
from .objects import (
    FOLLOW_TRIGGER,
    GUARD_TRIGGER,
    MIRROR_TRIGGER,
    REFUSE_TRUNCATE,
    Objects,
    deferred_names,
    follow_watch_trigger,
    new_name,
    temp_index_name,
)
from .structure import (
    change_id_column,
    change_log_sql,
    create_table_sql,
    drop_function_sql,
    drop_table_sql,
    drop_trigger_sql,
    key_index,
    secondary_indexes,
    sync_function_sql,
    trigger_sql,
    truncate_guard_sql,
)


@dataclass(frozen=True)
class Downstream:
    """A table following a `follow` child in turn (a grandchild): its parent log, fed by the
    child's replay with the keys of the child rows it moved."""

    log: QualifiedName
    child_columns: tuple[str, ...]  # the grandchild's referencing columns (the log's)
    parent_columns: tuple[str, ...]  # the child's columns they reference


@dataclass(frozen=True)
class Follower:
    """One table of the family that follows (a child of the table, or of a following child),
    and the names of what the swap step builds for it."""

    ref: Reference
    info: TableInfo  # the child as inspected
    parent: QualifiedName  # the table it references (its original name)
    upstream: QualifiedName  # the parent's new table, which decides its rows before the swap
    depth: int  # 1: a child of the table; 2: a grandchild; ...
    new: QualifiedName
    archive: QualifiedName
    log: QualifiedName  # the child's written keys
    parents: QualifiedName  # the parent's keys whose rows changed sides or went
    capture: QualifiedName
    watch: QualifiedName
    mirror: QualifiedName
    prune: QualifiedName
    downstream: tuple[Downstream, ...] = ()
    partition_by: str | None = None  # a partitioned child: its PARTITION BY (tablemig.lifecycle.follow_partitions)
    partitions: tuple[Partition, ...] = ()  # ... and its partitions, as inspected

    @property
    def partitioned(self) -> bool:
        return self.partition_by is not None

    @property
    def child(self) -> QualifiedName:
        return self.ref.child

    @property
    def key(self) -> list[str]:
        return list(self.info.key_columns)

    @property
    def watch_trigger(self) -> str:
        """The trigger on the table feeding a child's parent log (one per child of the table;
        a grandchild's parent log is fed by its parent's replay)."""
        return follow_watch_trigger(self.ref.child_oid)

    def record(self) -> dict[str, Any]:
        """What the swap record keeps of it (read by prune and rollback)."""
        return {"child": str(self.child), "parent": str(self.parent), "depth": self.depth, "oid": self.ref.child_oid,
                "new": str(self.new), "archive": str(self.archive), "foreign_key": self.ref.name, "key": self.key,
                "mirror": str(self.mirror), "prune": str(self.prune)}


def follower(st: Statements, ref: Reference, objects: Objects, parent: QualifiedName, upstream: QualifiedName,
             depth: int) -> Follower:
    """The following table of `ref`, inspected now."""
    info = inspect_table(st, ref.child, partitioned=True)
    o = ref.child_oid
    parted = info.relkind == "p"
    return Follower(ref, info, parent, upstream, depth, new_name(ref.child),
                    archived(ref.child, objects.original, objects.archive),
                    objects.follow_object("log", o), objects.follow_object("parents", o),
                    objects.follow_object("capture", o), objects.follow_object("watch", o),
                    objects.follow_object("mirror", o), objects.follow_object("prune", o),
                    partition_by=partition_key(st, ref.child) if parted else None,
                    partitions=tuple(partition_tree(st, ref.child)) if parted else ())


def family(st: Statements, refs: Sequence[Reference], objects: Objects) -> list[Follower]:
    """The `follow` children of the table (`refs`) and, in turn, every table referencing a
    following table: parents before their children."""
    out: list[Follower] = []
    todo = [(r, objects.original, objects.new, 1) for r in refs]
    while todo:
        ref, parent, upstream, depth = todo.pop(0)
        f = follower(st, ref, objects, parent, upstream, depth)
        out.append(f)
        todo += [(r, f.child, f.new, depth + 1) for r in references(st, ref.child_oid) if not r.self_ref]
    return [dataclasses.replace(f, downstream=tuple(
        Downstream(g.parents, g.ref.child_columns, g.ref.parent_columns) for g in out if g.parent == f.child))
        for f in out]


def _parent_log_sql(f: Follower) -> sql.Composable:
    types = {c.name: c.type for c in f.info.columns}
    cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), Fragment(types[c]))
                             for c in f.ref.child_columns)
    return sql.SQL("CREATE TABLE {} ({} bigserial PRIMARY KEY, {})").format(
        f.parents.ident(), sql.Identifier(change_id_column(f.ref.child_columns)), cols)


def _or_replace_trigger(name: str, events: sql.Composable, table: QualifiedName, function: QualifiedName,
                       level: str = "ROW") -> sql.Composable:
    # OR REPLACE: SHARE ROW EXCLUSIVE, where dropping an earlier attempt's trigger first
    # would take ACCESS EXCLUSIVE on the table (and keep its readers waiting meanwhile)
    return sql.SQL("CREATE OR REPLACE TRIGGER {} {} ON {} FOR EACH {} EXECUTE FUNCTION {}()").format(
        sql.Identifier(name), events, table.ident(), sql.SQL(level), function.ident())


def arm_sql(f: Follower, user: str, parent_date_column: str, parent_key: Sequence[str],
            search_path: Sequence[str]) -> list[sql.Composable]:
    """Step 1, from scratch: what an earlier attempt left is replaced (its tables dropped,
    its triggers and functions replaced)."""
    stmts: list[sql.Composable] = [drop_table_sql(t) for t in (f.new, f.log, f.parents)]
    # the new child references the live table from the swap on; before it, nothing
    stmts += create_table_sql(f.info, f.new, user, with_key=False, without_fks=[f.ref.name],
                              partition_by=f.partition_by)
    stmts += follow_partitions.create_sql(f.partitions, f.child, f.new)
    stmts.append(change_log_sql(f.info, f.log))
    stmts.append(_parent_log_sql(f))
    stmts.append(sync_function_sql(f.info, f.capture, "log", f.log, search_path=search_path))
    stmts.append(_or_replace_trigger(FOLLOW_TRIGGER, sql.SQL("AFTER INSERT OR UPDATE OR DELETE"), f.child, f.capture))
    stmts.append(_or_replace_trigger(GUARD_TRIGGER, sql.SQL("BEFORE TRUNCATE"), f.child, REFUSE_TRUNCATE,
                                     "STATEMENT"))
    stmts.append(Fragment(render("follow_watch_function.sql.j2", function=(f.watch.schema, f.watch.name),
                                 log=(f.parents.schema, f.parents.name), search_path=list(search_path),
                                 child=list(f.ref.child_columns), parent=list(f.ref.parent_columns))))
    if f.depth == 1:  # a grandchild's parent log is fed by its parent's replay
        watched = sorted({parent_date_column, *parent_key, *f.ref.parent_columns})
        stmts.append(_or_replace_trigger(f.watch_trigger, sql.SQL("AFTER UPDATE OF {} OR DELETE").format(
            sql.SQL(", ").join(map(sql.Identifier, watched))), f.parent, f.watch))
    return stmts


def trigger_drops_sql(f: Follower, parent: QualifiedName, child: QualifiedName,
                      partitions: Sequence[QualifiedName] = ()) -> list[sql.Composable]:
    """The capture of the swap step off: its triggers (on `parent` and `child`, the names the
    two tables have now, and on the child's `partitions`)."""
    watch = [drop_trigger_sql(parent, f.watch_trigger)] if f.depth == 1 else []
    return [*watch, drop_trigger_sql(child, FOLLOW_TRIGGER), drop_trigger_sql(child, GUARD_TRIGGER),
            *follow_partitions.guard_drops_sql(partitions)]


def logs_drop_sql(f: Follower) -> list[sql.Composable]:
    """The capture's functions and logs dropped (after its triggers)."""
    return [drop_function_sql(f.watch), drop_function_sql(f.capture), drop_table_sql(f.log),
            drop_table_sql(f.parents)]


def disarm_sql(f: Follower, partitions: Sequence[QualifiedName] = ()) -> list[sql.Composable]:
    """Undo step 1 before the swap (or what an earlier attempt left): the triggers (also on
    the child's `partitions`, as they are now), logs and the child's new table."""
    return [*trigger_drops_sql(f, f.parent, f.child, partitions), *logs_drop_sql(f), drop_table_sql(f.new)]


@dataclass
class FollowRun:
    """What the swap step did for the following tables before its lock, and does under it."""

    followers: list[Follower]  # parents before their children
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)

    def lock_list(self) -> list[QualifiedName]:
        """What the swap locks besides the table's own list (which has the table's children)."""
        return [*(f.child for f in self.followers if f.depth > 1), *(f.new for f in self.followers)]

    def _exchange_partitions(self, ex: Executor, trees: dict[QualifiedName, list[Partition]]
                             ) -> dict[QualifiedName, list[dict[str, Any]]]:
        """The partitions of the partitioned children exchanged, before the tables' renames
        (their indexes have the names the pairing needs still): the record of each."""
        parts = {}
        for f in self.followers:
            if f.partitioned:
                temporary = {i.name: temp_index_name(i) for i in [key_index(f.info), *secondary_indexes(f.info)]}
                stmts, parts[f.child] = follow_partitions.exchange_sql(ex, trees[f.child], f.child, f.archive,
                                                                       temporary)
                for stmt in stmts:
                    ex.run(stmt)
        return parts

    def locked(self, ex: Executor, live: QualifiedName, outgoing: QualifiedName,
               decided_again: QualifiedName | None) -> list[dict[str, Any]]:
        """Under the swap's lock, after the table's renames (and the `keep` rule's pass): each
        following table made exact, parents first (a child of the table against the live
        table, a grandchild against its parent's new table, made exact just before), then
        each put in its place, children first (a child's exchange re-points its children's
        keys to the live child). Returns the swap record's `follow` entries."""
        t0 = time.perf_counter()
        # under the lock, current, and before any rename: a child's incoming keys must name
        # its children as they are now (after their exchange, those names are the live ones)
        infos = {f.child: inspect_table(ex, f.child, partitioned=True) for f in self.followers}
        # a partitioned child's partitions, as they are now (tablemig.lifecycle.follow_partitions)
        trees = {f.child: follow_partitions.sync(ex, f.child, f.new) for f in self.followers if f.partitioned}
        for f in self.followers:  # the triggers, on the tables under their names before the renames
            for stmt in trigger_drops_sql(f, outgoing if f.depth == 1 else f.parent, f.child,
                                          [p.name for p in trees.get(f.child, [])]):
                ex.run(stmt)
        parts = self._exchange_partitions(ex, trees)
        done: dict[QualifiedName, Replayed] = {}
        records: dict[QualifiedName, dict[str, Any]] = {}

        def replay() -> None:
            # after every rename, parents first: a logical subscriber receives these changes
            # under the live names (its renames are committed with the swap's)
            for f in self.followers:
                done[f.child] = batch(ex, f, live if f.depth == 1 else f.parent, None,
                                      decided_again if f.depth == 1 else None, renamed=True)

        # the exchanges nested, the deepest outermost: every table renamed first (children
        # first), then the replay, then each exchange goes on, parents first (a child's
        # re-points its children's keys to the live child: they are renamed already)
        step: Callable[[], None] = replay
        for f in self.followers:
            def exchanged(f: Follower = f, inner: Callable[[], None] = step) -> None:
                records[f.child] = exchange(ex, infos[f.child], f.child, f.new, f.archive, after_rename=inner)
            step = exchanged
        step()
        out = []
        for f in self.followers:
            info = infos[f.child]
            defaults = (archive_defaults(trees[f.child], f.child, f.partition_by, f.archive)
                        if f.partition_by is not None else [])
            for stmt in [*defaults_sql(defaults, info.owner),
                         *_mirrored_sql(f, info, [p.name for p in trees.get(f.child, [])])]:
                ex.run(stmt)
            out.append(f.record() | self.figures.get(str(f.child), {}) | {
                "replayed_under_lock": Observed("rows", done[f.child].logged), "exchange": records[f.child],
                **({"partitions": parts[f.child], "archive_defaults": defaults} if f.partitioned else {}),
                # its children's keys, re-pointed to the live child by its exchange: validated after the swap
                "foreign_keys": [fk.__dict__ | {"table": str(fk.table)} for fk in info.incoming_fks],
                "under_lock_ms": Observed("ms", round((time.perf_counter() - t0) * 1000, 1))})
        return out


def _mirrored_sql(f: Follower, info: TableInfo, partitions: Sequence[QualifiedName]) -> list[sql.Composable]:
    """After its exchange: the capture's logs dropped, the mirror that keeps the archive
    complete on the live child, TRUNCATE refused there (and on its `partitions`), the
    archive's comment."""
    return [*logs_drop_sql(f), sync_function_sql(info, f.mirror, "mirror", f.archive,
                                                 defer=deferred_names(info, f.archive.schema, "a")),
            *trigger_sql(f.child, MIRROR_TRIGGER, f.mirror), truncate_guard_sql(f.child),
            *follow_partitions.guards_sql(partitions),
            sql.SQL("COMMENT ON TABLE {} IS {}").format(f.archive.ident(), sql.Literal(
                f"tablemig: original {f.child} (all rows) before the swap of {f.parent}, whose rows it follows"))]


def _ms(start: float, end: float) -> Observed:
    return Observed("ms", round((end - start) * 1000, 1))


class FollowPeer(Protocol):
    """A logical subscriber, as the follow step needs it (tablemig.lifecycle.logical.Subscriber)."""

    children: list[tuple[QualifiedName, QualifiedName, QualifiedName]]

    def attach_child(self, pub: Executor, child: QualifiedName, new: QualifiedName, without_fk: str) -> float: ...

    def drop(self, tables: list[QualifiedName]) -> list[str]: ...


def prepare(ex: Executor, followers: list[Follower], user: str, date_column: str, parent_key: Sequence[str],
            search_path: Sequence[str], lock_options: dict[str, Any],
            peers: Sequence[FollowPeer] = ()) -> FollowRun:
    """Steps 1 to 5 for every following table, before the swap's lock (see the module
    docstring), parents first; on any failure what was armed is dropped again. Every table
    is armed before any is loaded: a child's replay feeds its children's parent logs. With
    logical subscribers (`peers`), each new table is attached there once built, before its
    replay (as the table's own: tablemig.lifecycle.logical), and each peer is told the
    children its part of the swap puts in place."""
    run = FollowRun(followers)
    try:
        for peer in peers:  # what an earlier, unfinished attempt left there
            peer.drop([f.new for f in followers])
        started = {}
        for f in followers:
            started[f.child] = time.perf_counter()
            stmts = arm_sql(f, user, date_column, parent_key, search_path)

            def body(_locked_at: float, stmts: list[sql.Composable] = stmts, f: Follower = f) -> dict[str, Any]:
                with ex.batched():
                    for stmt in stmts:
                        ex.run(stmt)
                ex.creates(str(f.new), str(f.log), str(f.parents), *(str(new_name(p.name)) for p in f.partitions))
                return {}

            # SHARE ROW EXCLUSIVE: the writers that started before have committed (the load
            # sees them), every later write is logged; for a child of the table, on the table
            # too (its trigger feeds the parent log)
            with_lock_retries(ex, f"arming follow of {f.child}", [f.parent, f.child] if f.depth == 1 else [f.child],
                              body, mode="SHARE ROW EXCLUSIVE", **lock_options)
        for f in followers:
            t0 = time.perf_counter()
            with ex.transaction():
                loaded = load(ex, f, f.upstream)
            t1 = time.perf_counter()
            with ex.transaction():
                indexes = build_indexes(ex, f)
            t2 = time.perf_counter()
            for peer in peers:
                peer.attach_child(ex, f.child, f.new, f.ref.name)
            run.figures[str(f.child)] = {"rows_loaded": Observed("rows", loaded), "indexes": indexes,
                                         "load_ms": _ms(t0, t1), "index_ms": _ms(t1, t2)}
        for f in followers:
            t0 = time.perf_counter()
            replayed = drain(ex, f, f.upstream)
            t1 = time.perf_counter()
            checked = verify(ex, f, f.upstream)
            run.figures[str(f.child)] |= checked | {
                "replayed_before_lock": Observed("rows", replayed.logged),
                "replay_batches": Observed("count", replayed.batches),
                "replay_ms": _ms(t0, t1), "verify_ms": _ms(t1, time.perf_counter()),
                "prepare_ms": _ms(started[f.child], time.perf_counter())}
    except BaseException:
        disarm(ex, followers, lock_options, peers)
        raise
    for peer in peers:
        peer.children = [(f.child, f.new, f.archive) for f in followers]
    return run


def disarm(ex: Executor, followers: list[Follower], lock_options: dict[str, Any],
           peers: Sequence[FollowPeer] = ()) -> None:
    """Drop what the swap step armed for the `follow` children (the swap did not happen).
    Best effort, a few attempts, like the orphan check's (tablemig.lifecycle.orphan_guard): a
    rerun or a rollback drops what is left."""
    for f in followers:
        def body(_locked_at: float, f: Follower = f) -> dict[str, Any]:
            for stmt in disarm_sql(f, partition_names(ex, f.child) if f.partitioned else ()):
                ex.run(stmt)
            return {}

        with contextlib.suppress(psycopg.Error, TablemigError):
            if ex.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                ex.conn.rollback()
            with_lock_retries(ex, f"disarming follow of {f.child}", [f.parent, f.child] if f.depth == 1 else [f.child],
                              body,
                              **(lock_options | {"attempts": min(3, int(lock_options.get("attempts", 3)))}))
    for peer in peers:  # the new tables attached there (after a barrier: no change for them in flight)
        with contextlib.suppress(psycopg.Error, TablemigError):
            peer.drop([f.new for f in followers])
