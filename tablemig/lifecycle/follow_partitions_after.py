"""A partitioned `follow` child after the swap (tablemig.lifecycle.follow_partitions): the
partitions the live child gains until prune, and what they mean for its archive.

The mirror trigger writes every row of the live child to the archive too, so the archive must
take every row the live child takes, also in a partition created on the live child after the
swap (next month's, by a job), which the archive has no counterpart of. Under the swap's lock
each partitioned table of the archive without a DEFAULT partition gets one
(`<archive>_default`, `archive_defaults`): such rows land there. Prune deletes the archive's
copies of the live rows, these among them, and drops the default partitions it leaves empty;
the restore of a rollback after prune makes them again before it copies the rows back.

The swap back gives the archive (the child again) each partition the live child gained, with
its rows (`adopt_sql`): their copies deleted from the archive's default partition, the
partition detached from the live child (its foreign keys, which then become its own, dropped:
they reference the live table) and attached to the archive with its bound. The default
partitions tablemig added are dropped once empty, so the child has the partitions the
application made and no others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import sql

from ..pg.names import QualifiedName, derived_name
from ..pg.partitions import (
    Partition,
    default_partition,
    inherited_foreign_keys,
    partition_parent,
    partition_tree,
)
from ..pg.sqltext import Fragment
from ..pg.statements import Statements
from .follow_partitions import archived


def archive_defaults(tree: Sequence[Partition], child: QualifiedName, partition_by: str,
                     archive: QualifiedName) -> list[list[str]]:
    """[partitioned table of the archive, the DEFAULT partition to give it] for each
    partitioned table of the child (`tree`: its partitions; `partition_by`: the child's
    PARTITION BY) without one: the swap record's `archive_defaults`. Not for a table
    partitioned by hash, which cannot have one (nor gain a partition its partitions do not
    leave room for)."""
    has_default = {p.parent for p in tree if p.bound == "DEFAULT"}
    out = []
    for node, by in [(child, partition_by), *((p.name, p.partition_by) for p in tree if p.partition_by)]:
        if node not in has_default and not str(by).upper().startswith("HASH"):
            a = archive if node == child else archived(node, child, archive)
            out.append([str(a), str(a.sibling(derived_name(a.name, "_default")))])
    return out


def defaults_sql(pairs: Sequence[Sequence[str]], owner: str) -> list[sql.Composable]:
    """The archive's DEFAULT partitions of `pairs` (archive_defaults), where missing."""
    stmts: list[sql.Composable] = []
    for table, default in pairs:
        t, d = QualifiedName.parse(table), QualifiedName.parse(default)
        stmts += [sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} DEFAULT").format(d.ident(), t.ident()),
                  sql.SQL("ALTER TABLE {} OWNER TO {}").format(d.ident(), sql.Identifier(owner))]
    return stmts


def drop_empty_defaults(st: Statements, pairs: Sequence[Sequence[str]]) -> list[str]:
    """Drop the DEFAULT partitions of `pairs` that exist and are empty, deepest first (by
    their names, which neither prune nor the swap back changes, unlike their tables');
    returns those left because they hold rows."""
    left = []
    for _, default in reversed(pairs):
        d = QualifiedName.parse(default)
        if not st.read("SELECT to_regclass(%s) IS NOT NULL", (str(d),)).scalar():
            continue
        if st.read(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(d.ident()), reads=[str(d)],
                   planned=[(False,)]).scalar():
            left.append(default)
            continue
        # detached first: a foreign key referencing the partitioned table depends on each
        # partition (its table read now: the swap back renamed it back)
        parent = partition_parent(st, d)
        if parent is not None:
            st.run(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent.ident(), d.ident()))
        st.run(sql.SQL("DROP TABLE {}").format(d.ident()))
    return left


def adopt_sql(st: Statements, child: QualifiedName, archive: QualifiedName, key: Sequence[str],
              record: Sequence[dict[str, Any]]) -> list[sql.Composable]:
    """Under the swap back's lock, before its renames: each partition the live `child` gained
    since the swap (not in `record`, the swap record's `partitions`) moved to the `archive`
    (see the module docstring). A partition gained below one gained moves with it."""
    recorded = {e["partition"]: QualifiedName.parse(e["archive"]) for e in record}
    stmts: list[sql.Composable] = []
    for p in partition_tree(st, child):
        if str(p.name) in recorded or (p.parent != child and str(p.parent) not in recorded):
            continue
        target = archive if p.parent == child else recorded[str(p.parent)]
        default = default_partition(st, target)
        if default is not None:  # the mirror's copies of its rows
            stmts.append(sql.SQL("DELETE FROM {} d USING {} x WHERE {}").format(
                default.ident(), p.name.ident(), sql.SQL(" AND ").join(
                    sql.SQL("d.{0} = x.{0}").format(sql.Identifier(k)) for k in key)))
        fks = inherited_foreign_keys(st, p.name)
        stmts.append(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(p.parent.ident(), p.name.ident()))
        stmts += [sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(p.name.ident(), sql.Identifier(fk))
                  for fk in fks]
        stmts.append(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(
            target.ident(), p.name.ident(), Fragment(p.bound)))
    return stmts
