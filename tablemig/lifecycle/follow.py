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
   (so that the live table is exact): the remaining log rows (and the keys the `keep` rule
   decided again) replayed against the live table, the child renamed to its archive and
   `C_new` to the child's name (tablemig.lifecycle.exchange, as for the table), the
   triggers and logs dropped, and a mirror trigger on the live child that keeps the
   archive complete (rollback stays lossless until prune). The swap then re-points the
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..errors import TablemigError
from ..pg.catalog import TableInfo, inspect_table
from ..pg.locking import with_lock_retries
from ..pg.names import QualifiedName, derived_name
from ..pg.references import Reference, references
from ..pg.sqltext import Fragment
from ..pg.statements import Statements
from ..pg.templating import render
from .exchange import exchange
from .executor import Executor, Observed
from .objects import (
    FOLLOW_TRIGGER,
    GUARD_TRIGGER,
    MIRROR_TRIGGER,
    REFUSE_TRUNCATE,
    Objects,
    deferred_names,
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
    index_properties_sql,
    index_sql,
    key_constraint_sql,
    key_index,
    secondary_indexes,
    sync_function_sql,
    trigger_sql,
    truncate_guard_sql,
)

BATCH = 10_000  # log rows per replay batch
SWITCH_BELOW = 1_000  # the replay stops once a batch finds fewer: the rest is replayed under the lock


def child_archive_name(child: QualifiedName, parent: QualifiedName, parent_archive: QualifiedName) -> QualifiedName:
    """The archive of a `follow` child: the child's name with the suffix the table's archive
    has after the table's name (`orders_archive_20261205` gives `order_items_archive_20261205`),
    or `_archive`."""
    suffix = (parent_archive.name[len(parent.name):] if parent_archive.name.startswith(parent.name)
              and len(parent_archive.name) > len(parent.name) else "_archive")
    return child.sibling(derived_name(child.name, suffix))


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

    @property
    def child(self) -> QualifiedName:
        return self.ref.child

    @property
    def key(self) -> list[str]:
        return list(self.info.key_columns)

    @property
    def columns(self) -> list[str]:
        return [c.name for c in self.info.writable_columns]

    @property
    def overriding(self) -> bool:
        return any(c.identity == "a" for c in self.info.writable_columns)

    @property
    def watch_trigger(self) -> str:
        """The trigger on the table feeding a child's parent log (one per child of the table;
        a grandchild's parent log is fed by its parent's replay)."""
        return derived_name(FOLLOW_TRIGGER, f"_{self.ref.child_oid}")

    def record(self) -> dict[str, Any]:
        """What the swap record keeps of it (read by prune and rollback)."""
        return {"child": str(self.child), "parent": str(self.parent), "depth": self.depth, "oid": self.ref.child_oid,
                "new": str(self.new), "archive": str(self.archive), "foreign_key": self.ref.name, "key": self.key,
                "mirror": str(self.mirror), "prune": str(self.prune)}


def follower(st: Statements, ref: Reference, objects: Objects, parent: QualifiedName, upstream: QualifiedName,
             depth: int) -> Follower:
    """The following table of `ref`, inspected now."""
    info = inspect_table(st, ref.child)
    o = ref.child_oid
    return Follower(ref, info, parent, upstream, depth, new_name(ref.child),
                    child_archive_name(ref.child, objects.original, objects.archive),
                    objects.follow_object("log", o), objects.follow_object("parents", o),
                    objects.follow_object("capture", o), objects.follow_object("watch", o),
                    objects.follow_object("mirror", o), objects.follow_object("prune", o))


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


def _and(parts: Sequence[sql.Composable]) -> sql.Composable:
    return sql.SQL(" AND ").join(parts)


def member(f: Follower, alias: str, parent: QualifiedName) -> sql.Composable:
    """The child row `alias` stays live: its reference is NULL (it references nothing) or
    is a row of `parent` (the table's new table, or after the renames the live table)."""
    nulls = sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(sql.Identifier(alias, c))
                                 for c in f.ref.child_columns)
    match = _and([sql.SQL("p.{} = {}").format(sql.Identifier(pc), sql.Identifier(alias, cc))
                  for pc, cc in zip(f.ref.parent_columns, f.ref.child_columns, strict=True)])
    return sql.SQL("({} OR EXISTS (SELECT 1 FROM {} p WHERE {}))").format(nulls, parent.ident(), match)


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
    stmts += create_table_sql(f.info, f.new, user, with_key=False, without_fks=[f.ref.name])
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


def triggers_off_sql(f: Follower, parent: QualifiedName, child: QualifiedName) -> list[sql.Composable]:
    """The capture of the swap step off: triggers (on `parent` and `child`, the names the
    two tables have now), functions and logs."""
    watch = [drop_trigger_sql(parent, f.watch_trigger)] if f.depth == 1 else []
    return [*watch, drop_trigger_sql(child, FOLLOW_TRIGGER), drop_trigger_sql(child, GUARD_TRIGGER),
            drop_function_sql(f.watch), drop_function_sql(f.capture), drop_table_sql(f.log), drop_table_sql(f.parents)]


def disarm_sql(f: Follower) -> list[sql.Composable]:
    """Undo step 1 before the swap (or what an earlier attempt left): the triggers, logs and
    the child's new table."""
    return [*triggers_off_sql(f, f.parent, f.child), drop_table_sql(f.new)]


def _insert(f: Follower, where: sql.Composable, keys: sql.Composable | None, parent: QualifiedName,
            conflict: bool) -> sql.Composable:
    cols = sql.SQL(", ").join(map(sql.Identifier, f.columns))
    tcols = sql.SQL(", ").join(sql.Identifier("t", c) for c in f.columns)
    return sql.SQL("INSERT INTO {new} ({cols}){ovr} SELECT {tcols} FROM {src} WHERE {where} AND {member}{oc}").format(
        new=f.new.ident(), cols=cols,
        ovr=sql.SQL(" OVERRIDING SYSTEM VALUE" if f.overriding else ""), tcols=tcols,
        src=keys if keys is not None else sql.SQL("{} t").format(f.child.ident()), where=where,
        member=member(f, "t", parent),
        oc=sql.SQL(" ON CONFLICT ({}) DO NOTHING").format(sql.SQL(", ").join(map(sql.Identifier, f.key)))
        if conflict else sql.SQL(""))


def load(st: Statements, f: Follower, parent_new: QualifiedName) -> int:
    """Step 2: the child's rows whose reference is in the table's new table."""
    return max(st.run(_insert(f, sql.SQL("true"), None, parent_new, conflict=False)).rowcount, 0)


def build_indexes(st: Statements, f: Follower) -> list[str]:
    """Step 3: the key, the secondary indexes and their properties on `C_new`, its other
    foreign keys validated; returns the indexes built."""
    built = []
    for idx in [key_index(f.info), *secondary_indexes(f.info)]:
        name = temp_index_name(idx)
        st.run(index_sql(f.info, idx, f.new, name, concurrently=False))
        for stmt in [*key_constraint_sql(idx, f.new), *index_properties_sql(idx, f.new)]:
            st.run(stmt)
        built.append(idx.name)
    for fk_name, _, _ in f.info.outgoing_fks:
        if fk_name != f.ref.name:
            st.run(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(f.new.ident(), sql.Identifier(fk_name)))
    st.run(sql.SQL("ANALYZE {}").format(f.new.ident()))
    return built


@dataclass
class Replayed:
    """Log rows replayed and the new child's rows deleted and inserted by them."""

    logged: int = 0
    deleted: int = 0
    inserted: int = 0
    batches: int = 0

    def add(self, other: Replayed) -> None:
        self.logged += other.logged
        self.deleted += other.deleted
        self.inserted += other.inserted
        self.batches += other.batches


def batch(st: Statements, f: Follower, parent: QualifiedName, limit: int | None,
          decided_again: QualifiedName | None = None) -> Replayed:
    """Replay up to `limit` rows of each log (all when None) in the caller's transaction,
    REPEATABLE READ or under a lock that keeps the family's writers out; `parent` is the
    table's new table (the live table under the swap's lock). `decided_again`: a log of the
    table's keys whose rows may have changed sides otherwise (the family log of the `keep`
    rule, under the swap's lock)."""
    st.run("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
    out = Replayed(batches=1)
    sources: list[tuple[QualifiedName, Sequence[str], Sequence[str], bool]] = [
        (f.log, f.key, f.key, True), (f.parents, f.ref.child_columns, f.ref.child_columns, True)]
    if decided_again is not None:
        sources.append((decided_again, f.ref.parent_columns, f.ref.child_columns, False))
    for log, log_cols, child_cols, consume in sources:
        cond: sql.Composable = sql.SQL("true")
        params: list[Any] = []
        if consume:
            cid = sql.Identifier(change_id_column(log_cols))
            inner = (sql.SQL("SELECT {id} FROM {log} ORDER BY {id} LIMIT %s").format(id=cid, log=log.ident())
                     if limit is not None else sql.SQL("SELECT {} FROM {}").format(cid, log.ident()))
            row = st.read(sql.SQL("SELECT max(s.{}), count(*) FROM ({}) s").format(cid, inner),
                          [limit] if limit is not None else None, reads=[str(log)], planned=[(None, 0)]).fetchone()
            if not row or row[0] is None:
                continue
            out.logged += int(row[1])
            cond = sql.SQL("{} <= %s").format(cid)
            params = [int(row[0])]
        picked = sql.SQL("SELECT DISTINCT {} FROM {} WHERE {}").format(
            sql.SQL(", ").join(sql.SQL("{} AS {}").format(sql.Identifier(lc), sql.Identifier(cc))
                               for lc, cc in zip(log_cols, child_cols, strict=True)), log.ident(), cond)
        match = _and([sql.SQL("x.{0} = c.{0}").format(sql.Identifier(c)) for c in child_cols])
        out.deleted += _changed(st, f, sql.SQL("DELETE FROM {} x USING ({}) c WHERE {} RETURNING x.*").format(
            f.new.ident(), picked, match), params)
        tmatch = _and([sql.SQL("t.{0} = c.{0}").format(sql.Identifier(c)) for c in child_cols])
        keys = sql.SQL("({}) c JOIN {} t ON {}").format(picked, f.child.ident(), tmatch)
        out.inserted += _changed(st, f, sql.SQL("{} RETURNING *").format(
            _insert(f, sql.SQL("true"), keys, parent, conflict=True)), params)
        if consume:
            st.run(sql.SQL("DELETE FROM {} WHERE {}").format(log.ident(), cond), params)
    return out


def _changed(st: Statements, f: Follower, change: sql.Composable, params: list[Any]) -> int:
    """Run `change` (a DELETE or INSERT of the new table RETURNING its rows); the keys of the
    rows it moved go to the parent log of each table following `f` (their rows referencing
    them are decided again by their next batch, whose snapshot sees this one's commit).
    Returns the rows changed."""
    if not f.downstream:
        return max(st.run(change, params).rowcount, 0)
    parts = [sql.SQL("moved AS ({})").format(change)]
    for i, d in enumerate(f.downstream):
        parts.append(sql.SQL("{} AS (INSERT INTO {} ({}) SELECT {} FROM moved)").format(
            sql.Identifier(f"down{i}"), d.log.ident(), sql.SQL(", ").join(map(sql.Identifier, d.child_columns)),
            sql.SQL(", ").join(map(sql.Identifier, d.parent_columns))))
    row = st.run(sql.SQL("WITH {} SELECT count(*) FROM moved").format(sql.SQL(", ").join(parts)), params,
                 planned=[(0,)]).fetchone()
    return int(row[0]) if row else 0


def drain(st: Statements, f: Follower, parent_new: QualifiedName, *, max_rounds: int = 10_000) -> Replayed:
    """Step 4: replay batches, each in its own REPEATABLE READ transaction, until one finds
    fewer than SWITCH_BELOW log rows."""
    total = Replayed()
    for _ in range(max_rounds):
        with st.transaction(isolation="REPEATABLE READ"):
            st.run("SELECT set_config('synchronous_commit', 'off', true)")
            done = batch(st, f, parent_new, BATCH)
        total.add(done)
        if done.logged < SWITCH_BELOW:
            break
    return total


def _checksum(st: Statements, source: sql.Composable, f: Follower, parent_new: QualifiedName) -> tuple[int, str]:
    row = st.read(sql.SQL("SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text FROM {}").format(
        source), reads=[str(f.new), str(parent_new)], planned=[(0, "0")]).fetchone()
    return (int(row[0]), str(row[1])) if row else (0, "0")


def verify(st: Statements, f: Follower, parent_new: QualifiedName) -> dict[str, Any]:
    """Step 5: in one snapshot, the remaining log rows replayed, then count and checksum of
    `C_new` against the child's rows that stay live. A difference is an error (nothing
    has been swapped)."""
    with st.transaction(isolation="REPEATABLE READ"):
        done = batch(st, f, parent_new, None)
        live = _checksum(st, sql.SQL("{} t").format(f.new.ident()), f, parent_new)
        want = _checksum(st, sql.SQL("{} t WHERE {}").format(f.child.ident(), member(f, "t", parent_new)),
                         f, parent_new)
        total = st.read(sql.SQL("SELECT count(*) FROM {}").format(f.child.ident()),
                        reads=[str(parent_new)], planned=[(0,)]).scalar()
    if live != want and not st.planning:
        raise TablemigError(
            f"follow: the new table {f.new} of {f.child} differs from the rows of {f.child} that stay live "
            f"({live[0]} rows against {want[0]}); nothing was swapped",
            f"rerun the swap step (it builds {f.new} again); if it differs again, roll back "
            f"(tablemig rollback --table {f.parent}) and report it")
    return {"rows_live": Observed("rows", live[0]), "rows_archived": Observed("rows", int(total or 0) - live[0]),
            "checksum": Observed("checksum", live[1]), "replayed_at_verify": Observed("rows", done.logged)}


@dataclass
class FollowRun:
    """What the swap step did for the following tables before its lock, and does under it."""

    followers: list[Follower]  # parents before their children
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)

    def lock_list(self) -> list[QualifiedName]:
        """What the swap locks besides the table's own list (which has the table's children)."""
        return [*(f.child for f in self.followers if f.depth > 1), *(f.new for f in self.followers)]

    def locked(self, ex: Executor, live: QualifiedName, outgoing: QualifiedName,
               decided_again: QualifiedName | None) -> list[dict[str, Any]]:
        """Under the swap's lock, after the table's renames (and the `keep` rule's pass): each
        following table made exact, parents first (a child of the table against the live
        table, a grandchild against its parent's new table, made exact just before), then
        each put in its place, children first (a child's exchange re-points its children's
        keys to the live child). Returns the swap record's `follow` entries."""
        done: dict[QualifiedName, Replayed] = {}
        for f in self.followers:
            done[f.child] = batch(ex, f, live if f.depth == 1 else f.upstream, None,
                                  decided_again if f.depth == 1 else None)
        # under the lock, current, and before any exchange: a child's incoming keys must name
        # its children as they are now (after their exchange, those names are the live ones)
        infos = {f.child: inspect_table(ex, f.child) for f in self.followers}
        out = []
        for f in reversed(self.followers):
            t0 = time.perf_counter()
            info = infos[f.child]
            for stmt in triggers_off_sql(f, outgoing if f.depth == 1 else f.parent, f.child):
                ex.run(stmt)
            record = exchange(ex, info, f.child, f.new, f.archive)
            ex.run(sync_function_sql(info, f.mirror, "mirror", f.archive,
                                     defer=deferred_names(info, f.archive.schema, "a")))
            for stmt in trigger_sql(f.child, MIRROR_TRIGGER, f.mirror):
                ex.run(stmt)
            ex.run(truncate_guard_sql(f.child))
            ex.run(sql.SQL("COMMENT ON TABLE {} IS {}").format(f.archive.ident(), sql.Literal(
                f"tablemig: original {f.child} (all rows) before the swap of {f.parent}, whose rows it follows")))
            out.append(f.record() | self.figures.get(str(f.child), {}) | {
                "replayed_under_lock": Observed("rows", done[f.child].logged), "exchange": record,
                # its children's keys, re-pointed to the live child by its exchange: validated after the swap
                "foreign_keys": [fk.__dict__ | {"table": str(fk.table)} for fk in info.incoming_fks],
                "under_lock_ms": Observed("ms", round((time.perf_counter() - t0) * 1000, 1))})
        return out[::-1]


def prepare(ex: Executor, followers: list[Follower], user: str, date_column: str, parent_key: Sequence[str],
            search_path: Sequence[str], lock_options: dict[str, Any]) -> FollowRun:
    """Steps 1 to 5 for every following table, before the swap's lock (see the module
    docstring), parents first; on any failure what was armed is dropped again. Every table
    is armed before any is loaded: a child's replay feeds its children's parent logs."""
    run = FollowRun(followers)
    try:
        started = {}
        for f in followers:
            started[f.child] = time.perf_counter()
            stmts = arm_sql(f, user, date_column, parent_key, search_path)

            def body(_locked_at: float, stmts: list[sql.Composable] = stmts, f: Follower = f) -> dict[str, Any]:
                with ex.batched():
                    for stmt in stmts:
                        ex.run(stmt)
                ex.creates(str(f.new), str(f.log), str(f.parents))
                return {}

            # SHARE ROW EXCLUSIVE: the writers that started before have committed (the load
            # sees them), every later write is logged; for a child of the table, on the table
            # too (its trigger feeds the parent log)
            with_lock_retries(ex, f"arming follow of {f.child}", [f.parent, f.child] if f.depth == 1 else [f.child],
                              body, mode="SHARE ROW EXCLUSIVE", **lock_options)
        for f in followers:
            with ex.transaction():
                loaded = load(ex, f, f.upstream)
            with ex.transaction():
                indexes = build_indexes(ex, f)
            run.figures[str(f.child)] = {"rows_loaded": Observed("rows", loaded), "indexes": indexes}
        for f in followers:
            replayed = drain(ex, f, f.upstream)
            checked = verify(ex, f, f.upstream)
            run.figures[str(f.child)] |= checked | {
                "replayed_before_lock": Observed("rows", replayed.logged),
                "replay_batches": Observed("count", replayed.batches),
                "prepare_ms": Observed("ms", round((time.perf_counter() - started[f.child]) * 1000, 1))}
    except BaseException:
        disarm(ex, followers, lock_options)
        raise
    return run


def disarm(ex: Executor, followers: list[Follower], lock_options: dict[str, Any]) -> None:
    """Drop what the swap step armed for the `follow` children (the swap did not happen).
    Best effort, a few attempts, like the orphan check's (tablemig.lifecycle.orphan_guard): a
    rerun or a rollback drops what is left."""
    for f in followers:
        def body(_locked_at: float, f: Follower = f) -> dict[str, Any]:
            for stmt in disarm_sql(f):
                ex.run(stmt)
            return {}

        with contextlib.suppress(psycopg.Error, TablemigError):
            if ex.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                ex.conn.rollback()
            with_lock_retries(ex, f"disarming follow of {f.child}", [f.parent, f.child] if f.depth == 1 else [f.child],
                              body,
                              **(lock_options | {"attempts": min(3, int(lock_options.get("attempts", 3)))}))


def refusals(st: Statements, ref: Reference, siblings: Sequence[Reference], table_key: Sequence[str],
             archive_mode: str, via: QualifiedName | None = None,
             seen: frozenset[QualifiedName] = frozenset()) -> list[str]:
    """Why the policy follow cannot be applied to the child of `ref` (empty: it can), found
    before anything changes, for it and for the tables that would follow it in turn.
    `siblings`: every foreign key referencing the same table; `via`: the following table
    `ref` references (None: the migrated table)."""
    what = f"child policy 'follow' for {ref.child}" + (f" (which follows {via})" if via else "")
    if ref.self_ref:
        return [f"{what} itself (the self-reference {ref.name}) is not available: a table cannot follow "
                f"itself; use a cutoff that keeps the rows kept rows reference, or drop {ref.name}"]
    out = []
    if archive_mode != "rename":
        out.append(f"{what} needs archive mode rename (the child's original becomes its archive); "
                   "use archive_mode='rename'")
    if ref.partitioned:
        out.append(f"{what}: {ref.child} is partitioned, which this version cannot follow; use 'keep' "
                   "(its rows stay, and the rows they reference stay live)")
    if not ref.indexed:
        out.append(f"{what}: no index leads with the referencing columns of {ref.name}; the rows of a "
                   f"changed {ref.child} reference are found through it: CREATE INDEX CONCURRENTLY ON "
                   f"{ref.child} ({', '.join(ref.child_columns)}) first")
    if sorted(ref.parent_columns) != sorted(table_key):
        out.append(f"{what}: foreign key {ref.name} references ({', '.join(ref.parent_columns)}), not the "
                   f"key ({', '.join(table_key)}); only a reference to the key can be followed")
    if sum(1 for r in siblings if r.child == ref.child) > 1:
        out.append(f"{what}: {ref.child} has more than one foreign key to the table it follows, which this "
                   "version cannot follow; use 'keep'")
    if ref.child in seen:
        return [*out, f"{what}: {ref.child} is reached twice in the family (it references two following "
                      "tables), which this version cannot follow; use 'keep'"]
    return out + _child_refusals(st, ref, what, archive_mode, seen | {ref.child})


def _child_refusals(st: Statements, ref: Reference, what: str, archive_mode: str,
                    seen: frozenset[QualifiedName]) -> list[str]:
    """What of the child itself, or of the tables that would follow it, keeps it from following."""
    out: list[str] = []
    try:
        info = inspect_table(st, ref.child)
    except TablemigError as exc:
        return [f"{what}: {exc}"]
    if any(i.is_key and (i.deferrable or not i.arbiter_shape) for i in info.indexes):
        out.append(f"{what}: the key of {ref.child} is DEFERRABLE (or partial), which cannot arbitrate "
                   "the replay's copies; make it not deferrable, or use 'keep'")
    if info.inherits or info.has_children:
        out.append(f"{what}: {ref.child} uses table inheritance, which cannot follow; use 'keep'")
    # the tables referencing it follow it in turn (a grandchild whose parent is archived
    # would be an orphan)
    below = references(st, ref.child_oid)
    for g in below:
        out += refusals(st, g, below, info.key_columns, archive_mode, ref.child, seen)
    return out


def leftovers_sql(st: Statements, objects: Objects) -> tuple[list[QualifiedName], list[sql.Composable]]:
    """What a swap step that did not finish (a crash, a kill) left armed for `follow`
    children, found by the names of the logs: (the children, the statements dropping it).
    For the rollback before the swap."""
    prefix = objects.follow_object("log", 0).name.removesuffix("0")
    rows = st.read("SELECT s.oid::oid::regclass::text FROM (SELECT substr(c.relname, length(%(p)s) + 1) AS oid"
                   " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(s)s"
                   " AND c.relkind = 'r' AND left(c.relname, length(%(p)s)) = %(p)s) s WHERE s.oid ~ '^[0-9]+$'",
                   {"p": prefix, "s": objects.change_log.schema}).fetchall()
    children, stmts = [], []
    for (name,) in rows:
        child = QualifiedName.parse(str(name))
        oid = int(st.read("SELECT %s::regclass::oid", (str(child),)).scalar())
        children.append(child)
        stmts += [drop_trigger_sql(objects.original, derived_name(FOLLOW_TRIGGER, f"_{oid}")),
                  drop_trigger_sql(child, FOLLOW_TRIGGER), drop_trigger_sql(child, GUARD_TRIGGER),
                  *(drop_function_sql(objects.follow_object(k, oid)) for k in ("watch", "capture")),
                  *(drop_table_sql(objects.follow_object(k, oid)) for k in ("log", "parents")),
                  drop_table_sql(new_name(child))]
    return children, stmts
