"""The rows of a `follow` child's new table (tablemig.lifecycle.follow): which rows stay live
(`member`), the load, the index build, the replay of the logs in batches and the verification.

A child row stays live when its reference is NULL or is a row of the parent's new table (the
live table under the swap's lock). The replay's batches decide the rows of the logged keys and
references again, each from one REPEATABLE READ snapshot of the child and the parent's new
table; a batch's changes to the new table pass the keys of the rows it moved on to the tables
that follow the child in turn (their parent logs), in its own transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import sql

from ..errors import TablemigError
from ..pg.names import QualifiedName
from ..pg.statements import Statements
from .executor import Observed
from .follow_partitions import sync
from .objects import temp_index_name
from .structure import (
    change_id_column,
    index_properties_sql,
    index_sql,
    key_constraint_sql,
    key_index,
    partitioned_key_sql,
    secondary_indexes,
)

if TYPE_CHECKING:  # tablemig.lifecycle.follow imports this module: only the type is needed here
    from .follow import Follower

BATCH = 10_000  # log rows per replay batch
SWITCH_BELOW = 1_000  # the replay stops once a batch finds fewer: the rest is replayed under the lock


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


def live_rows(f: Follower, parent: QualifiedName) -> sql.Composable:
    """The child rows that stay live, as a FROM item `t`: driven from `parent`'s rows through
    the child's index on the referencing columns (each child row matches one parent row at
    most: it references a key), plus the rows referencing nothing. Linear in the rows kept,
    not in the child."""
    match = _and([sql.SQL("t.{} = p.{}").format(sql.Identifier(cc), sql.Identifier(pc))
                  for pc, cc in zip(f.ref.parent_columns, f.ref.child_columns, strict=True)])
    nulls = sql.SQL(" OR ").join(sql.SQL("t.{} IS NULL").format(sql.Identifier(c)) for c in f.ref.child_columns)
    return sql.SQL("(SELECT t.* FROM {parent} p JOIN {child} t ON {match}"
                   " UNION ALL SELECT t.* FROM {child} t WHERE {nulls}) t").format(
        parent=parent.ident(), child=f.child.ident(), match=match, nulls=nulls)


def _insert(f: Follower, where: sql.Composable, keys: sql.Composable | None, parent: QualifiedName,
            conflict: bool, target: QualifiedName | None = None) -> sql.Composable:
    cols = sql.SQL(", ").join(map(sql.Identifier, f.info.written_columns))
    tcols = sql.SQL(", ").join(sql.Identifier("t", c) for c in f.info.written_columns)
    return sql.SQL("INSERT INTO {new} ({cols}){ovr} SELECT {tcols} FROM {src} WHERE {where} AND {member}{oc}").format(
        new=(target or f.new).ident(), cols=cols,
        ovr=sql.SQL(" OVERRIDING SYSTEM VALUE" if f.info.identity_always else ""), tcols=tcols,
        src=keys if keys is not None else sql.SQL("{} t").format(f.child.ident()), where=where,
        member=member(f, "t", parent),
        oc=sql.SQL(" ON CONFLICT ({}) DO NOTHING").format(sql.SQL(", ").join(map(sql.Identifier, f.key)))
        if conflict else sql.SQL(""))


def load(st: Statements, f: Follower, parent_new: QualifiedName) -> int:
    """Step 2: the child's rows whose reference is in the table's new table (`live_rows`)."""
    if f.partitioned:  # a partition added since the arm
        sync(st, f.child, f.new)
    cols = sql.SQL(", ").join(map(sql.Identifier, f.info.written_columns))
    return max(st.run(sql.SQL("INSERT INTO {} ({}){} SELECT {} FROM {}").format(
        f.new.ident(), cols, sql.SQL(" OVERRIDING SYSTEM VALUE" if f.info.identity_always else ""),
        sql.SQL(", ").join(sql.Identifier("t", c) for c in f.info.written_columns),
        live_rows(f, parent_new))).rowcount, 0)


def build_indexes(st: Statements, f: Follower) -> list[str]:
    """Step 3: the key, the secondary indexes and their properties on `C_new`, its other
    foreign keys validated; returns the indexes built."""
    built = []
    for idx in [key_index(f.info), *secondary_indexes(f.info)]:
        if f.partitioned and idx.constraint_type in ("p", "u"):
            stmts = partitioned_key_sql(idx, f.new)
        else:
            stmts = [index_sql(f.info, idx, f.new, temp_index_name(idx), concurrently=False),
                     *key_constraint_sql(idx, f.new)]
        for stmt in [*stmts, *index_properties_sql(idx, f.new)]:
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
          decided_again: QualifiedName | None = None, *, renamed: bool = False) -> Replayed:
    """Replay up to `limit` rows of each log (all when None) in the caller's transaction,
    REPEATABLE READ or under a lock that keeps the family's writers out; `parent` is the
    table's new table (the live table under the swap's lock). `decided_again`: a log of the
    table's keys whose rows may have changed sides otherwise (the family log of the `keep`
    rule, under the swap's lock). `renamed`: under the swap's lock, after the renames (the
    new table has the child's name, the child its archive's), so that the changes reach a
    logical subscriber under the names its own renames give."""
    target, source = (f.child, f.archive) if renamed else (f.new, f.child)
    if f.partitioned and not renamed:  # a partition added meanwhile (under the lock: FollowRun.locked)
        sync(st, f.child, f.new)
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
            target.ident(), picked, match), params)
        tmatch = _and([sql.SQL("t.{0} = c.{0}").format(sql.Identifier(c)) for c in child_cols])
        keys = sql.SQL("({}) c JOIN {} t ON {}").format(picked, source.ident(), tmatch)
        out.inserted += _changed(st, f, sql.SQL("{} RETURNING *").format(
            _insert(f, sql.SQL("true"), keys, parent, conflict=True, target=target)), params)
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
        # from the kept parent rows through the child's index (the batch's transaction joins
        # by nested loops): what the rows kept cost, not a probe per row of the child
        want = _checksum(st, live_rows(f, parent_new), f, parent_new)
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
