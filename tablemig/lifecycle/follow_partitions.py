"""A `follow` child that is a partitioned table (tablemig.lifecycle.follow, docs/families.md):
its new table is partitioned the same way, partition for partition.

Each partition `P` of the child (at any depth) gets a partition `P_new` of the new table
with the same bound (and the same PARTITION BY when it is partitioned in turn), owner,
grants, storage options and comment. A partition the application adds to the child while the
swap step runs (a job creating next month's) gets its `P_new` before the next replay batch
and under the swap's lock (`sync`); a partition dropped or detached meanwhile took its rows
with it without a trigger seeing them, so the swap refuses it (`sync` raises: the rerun
builds the new table again). Under the swap's lock, with the table renames, each `P` takes
the archive's name (`P_archive_<date>`, the archive's suffix) and each `P_new` takes `P`'s
name; the indexes of the partitions made from the table's indexes take their names the same
way, so the live partitions and their indexes have the names the child's had. The swap back
does the reverse (`back_sql`).

Each partition refuses TRUNCATE from the arm on (a TRUNCATE of one partition fires no trigger
of the partitioned table), the child's until the swap, the live child's until prune, as the
child itself does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import sql

from ..errors import TablemigError
from ..pg.names import QualifiedName, derived_name
from ..pg.partitions import Partition, attached_indexes, partition_names, partition_tree
from ..pg.sqltext import Fragment
from ..pg.statements import Statements
from .objects import GUARD_TRIGGER, new_name
from .structure import drop_trigger_sql, grant_sql, storage_options_sql, truncate_guard_sql


def archived(name: QualifiedName, original: QualifiedName, archive: QualifiedName) -> QualifiedName:
    """The archive's name for `name` (the child or one of its partitions): `name` with the
    suffix `archive` has after `original` (`orders_archive_20261205` after `orders` gives
    `order_items_archive_20261205`), or `_archive`."""
    suffix = (archive.name[len(original.name):] if archive.name.startswith(original.name)
              and len(archive.name) > len(original.name) else "_archive")
    return name.sibling(derived_name(name.name, suffix))


def _create_sql(p: Partition, child: QualifiedName, new: QualifiedName) -> list[sql.Composable]:
    """`p`'s partition of the child's new table `new`, under the new table of the table `p`
    belongs to."""
    target = new_name(p.name)
    parent_new = new if p.parent == child else new_name(p.parent)
    opts = storage_options_sql(p.reloptions, f"partition {p.name}")
    sub = sql.SQL(" PARTITION BY {}").format(Fragment(p.partition_by)) if p.partition_by else sql.SQL("")
    stmts: list[sql.Composable] = [sql.SQL("CREATE TABLE {} PARTITION OF {} {}{}{}").format(
        target.ident(), parent_new.ident(), Fragment(p.bound), sub, opts),
        # (a no-op where the owner creates it)
        sql.SQL("ALTER TABLE {} OWNER TO {}").format(target.ident(), sql.Identifier(p.owner))]
    stmts += grant_sql(target, p.grants)
    if p.comment is not None:
        stmts.append(sql.SQL("COMMENT ON TABLE {} IS {}").format(target.ident(), sql.Literal(p.comment)))
    return stmts


def create_sql(tree: Sequence[Partition], child: QualifiedName, new: QualifiedName) -> list[sql.Composable]:
    """The partitions of the child's new table `new` (created PARTITION BY as the child) for
    the child's partitions `tree`, each after the one it belongs to, and a TRUNCATE refusal
    on each of the child's."""
    stmts: list[sql.Composable] = []
    for p in tree:
        stmts += _create_sql(p, child, new)
    return stmts + guards_sql([p.name for p in tree])


def guard_drops_sql(partitions: Sequence[QualifiedName]) -> list[sql.Composable]:
    """The TRUNCATE refusals on the child's partitions (as they are now) dropped."""
    return [drop_trigger_sql(p, GUARD_TRIGGER) for p in partitions]


def guards_sql(partitions: Sequence[QualifiedName]) -> list[sql.Composable]:
    """A TRUNCATE refusal on each of `partitions` (made again where there is one): on the
    live child's after the swap, while its mirror keeps the archive complete (a TRUNCATE of a
    partition fires no trigger of the partitioned table)."""
    return [stmt for p in partitions for stmt in (drop_trigger_sql(p, GUARD_TRIGGER), truncate_guard_sql(p))]


def sync(st: Statements, child: QualifiedName, new: QualifiedName) -> list[Partition]:
    """Before a replay batch and under the swap's lock: the new table's partitions created
    for the partitions added to the child since (empty: the rows they get are logged); a
    partition of the new table whose partition the child lost is an error. Returns the
    child's partitions."""
    tree = partition_tree(st, child)
    have = set(partition_names(st, new, reads=(str(new),), planned=[new_name(p.name) for p in tree]))
    lost = sorted(str(n) for n in have - {new_name(p.name) for p in tree})
    if lost:
        raise TablemigError(
            f"follow: partitions of {child} were dropped or detached while the swap step ran (their counterparts "
            f"{', '.join(lost)} in {new} are left over); nothing was swapped",
            "rerun the swap step: it builds the new table again from the partitions there are then")
    for p in tree:
        if new_name(p.name) not in have:
            for stmt in _create_sql(p, child, new):
                st.run(stmt)
    return tree


def exchange_sql(st: Statements, tree: Sequence[Partition], original: QualifiedName, archive: QualifiedName,
                 temporary: dict[str, str]) -> tuple[list[sql.Composable], list[dict[str, Any]]]:
    """Under the swap's lock, before the child's renames: each partition to its archive name,
    each partition of the new table to the partition's name, their indexes likewise (an index
    of the new table has the temporary name `temporary` gives for the child's index until the
    child's exchange). Returns the statements and what the swap back needs (the record's
    `partitions`)."""
    first: list[sql.Composable] = []
    then: list[sql.Composable] = []
    record = []
    # an index of the child (or of a partition) -> its counterpart in the new table, as named
    # now: a partition's index is made from its parent's, whose counterpart comes first
    mates = dict(temporary)
    for p in tree:
        new, gone = new_name(p.name), archived(p.name, original, archive)
        new_idx = attached_indexes(st, new, reads=(str(new),))
        indexes = []
        for parent_index, name in attached_indexes(st, p.name).items():
            mate = new_idx.get(mates.get(parent_index, ""))
            if mate is None:
                continue
            mates[name] = mate
            far = derived_name(name, "_a")
            first.append(_rename_index(p.name.sibling(name), far))
            then.append(_rename_index(p.name.sibling(mate), name))
            indexes.append([name, far, mate])
        first.append(_rename(p.name, gone))
        then.append(_rename(new, p.name))
        record.append({"partition": str(p.name), "archive": str(gone), "new": str(new), "indexes": indexes})
    return first + then, record


def back_sql(st: Statements, record: Sequence[dict[str, Any]]) -> list[sql.Composable]:
    """The swap back of `exchange_sql`: each live partition to its new table's name, each
    archived partition to its name again, their indexes likewise. A live partition dropped
    since the swap (its rows are in the archive: the mirror saw them before) is not there to
    rename; one detached since keeps its rows under the new table's name."""
    first: list[sql.Composable] = []
    then: list[sql.Composable] = []
    for e in record:
        p, gone, new = (QualifiedName.parse(e[k]) for k in ("partition", "archive", "new"))
        live = st.read("SELECT to_regclass(%s) IS NOT NULL", (str(p),)).scalar()
        for name, far, mate in e.get("indexes", []):
            if live:
                first.append(_rename_index(p.sibling(name), mate))
            then.append(_rename_index(p.sibling(far), name))
        if live:
            first.append(_rename(p, new.name))
        then.append(_rename(gone, p.name))
    return first + then


def _rename(table: QualifiedName, to: QualifiedName | str) -> sql.Composable:
    name = to if isinstance(to, str) else to.name
    return sql.SQL("ALTER TABLE {} RENAME TO {}").format(table.ident(), sql.Identifier(name))


def _rename_index(index: QualifiedName, to: str) -> sql.Composable:
    return sql.SQL("ALTER INDEX {} RENAME TO {}").format(index.ident(), sql.Identifier(to))
