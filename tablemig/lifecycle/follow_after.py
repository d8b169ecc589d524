"""The `follow` children after the swap (tablemig.lifecycle.follow): their triggers for prune
and for the restore of a rollback after prune, and the swap back; and what a swap step
interrupted before the swap left armed for them (`leftovers_sql`).

The swap record's `follow` entries name each child's live table, archive and trigger
functions. While the live child's mirror trigger keeps its archive complete, the swap back
is the swap's exchange in the other direction, in the table's transaction. Prune deletes the
archive's copies of the live child's rows before the table's own (children before parents:
the archived child references the archived table), under the same prune guard and with the
same keyset batches as the table (tablemig.lifecycle.prune); a rollback after prune restores
the table's archive first, then the child's, with the same batch copy
(tablemig.lifecycle.rollback).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import sql

from ..pg.catalog import TableInfo, inspect_table
from ..pg.names import QualifiedName
from ..pg.partitions import partition_names
from ..pg.statements import Statements
from . import follow_partitions, follow_partitions_after
from .exchange import exchange, exchange_back
from .executor import Executor
from .objects import (
    FOLLOW_TRIGGER,
    GUARD_TRIGGER,
    MIRROR_TRIGGER,
    PRUNE_TRIGGER,
    Objects,
    deferred_names,
    follow_watch_trigger,
    new_name,
)
from .structure import (
    drop_function_sql,
    drop_table_sql,
    drop_trigger_sql,
    sync_function_sql,
    trigger_sql,
    truncate_guard_sql,
)


@dataclass(frozen=True)
class Followed:
    """A `follow` child after the swap, as the swap record names it."""

    child: QualifiedName  # the live child
    new: QualifiedName  # the name the live child had before the swap (and takes back)
    archive: QualifiedName
    key: tuple[str, ...]
    mirror: QualifiedName | None  # none on a logical subscriber (its copy is written by replication)
    prune: QualifiedName | None
    exchange: dict[str, Any]
    partitions: tuple[dict[str, Any], ...] = ()  # a partitioned child's (tablemig.lifecycle.follow_partitions)
    archive_defaults: tuple[list[str], ...] = ()  # ... and its archive's (follow_partitions_after)

    @classmethod
    def of(cls, entry: dict[str, Any]) -> Followed:
        def name(key: str) -> QualifiedName | None:
            return QualifiedName.parse(entry[key]) if entry.get(key) else None
        return cls(QualifiedName.parse(entry["child"]), QualifiedName.parse(entry["new"]),
                   QualifiedName.parse(entry["archive"]), tuple(entry["key"]), name("mirror"), name("prune"),
                   dict(entry.get("exchange") or {}), tuple(entry.get("partitions") or ()),
                   tuple(entry.get("archive_defaults") or ()))

    def functions(self) -> tuple[QualifiedName, QualifiedName]:
        """The mirror and prune functions (the active site's record names them)."""
        assert self.mirror is not None and self.prune is not None, f"{self.child}: no mirror on this site"
        return self.mirror, self.prune


def followed(record: dict[str, Any]) -> list[Followed]:
    """The `follow` children of a swap record (none for a table without)."""
    return [Followed.of(e) for e in record.get("follow") or []]


def swap_back(ex: Executor, f: Followed) -> None:
    """Under the swap back's lock, after the table's own exchange back: the archive becomes
    the child again, the live child (the new table) is dropped."""
    info = inspect_table(ex, f.child, partitioned=True)
    for trg in (MIRROR_TRIGGER, GUARD_TRIGGER, PRUNE_TRIGGER):
        ex.run(drop_trigger_sql(f.child, trg))
    for stmt in follow_partitions.guard_drops_sql(partition_names(ex, f.child)):
        ex.run(stmt)
    for fn in (f.mirror, f.prune):
        if fn is not None:
            ex.run(drop_function_sql(fn))
    for stmt in [*follow_partitions_after.adopt_sql(ex, f.child, f.archive, f.key, f.partitions),
                 *follow_partitions.back_sql(ex, f.partitions)]:
        ex.run(stmt)
    exchange_back(ex, info, f.child, f.new, f.archive, f.exchange)
    ex.run(drop_table_sql(f.new, if_exists=False))
    follow_partitions_after.drop_empty_defaults(ex, f.archive_defaults)


def start_prune(ex: Executor, children: list[tuple[Followed, TableInfo]]) -> None:
    """In the prune's first transaction: each child's mirror replaced by the prune guard."""
    for f, info in children:
        mirror, prune = f.functions()
        ex.run(drop_trigger_sql(f.child, MIRROR_TRIGGER))
        ex.run(drop_function_sql(mirror))
        ex.run(sync_function_sql(info, prune, "prune", f.archive))
        for stmt in trigger_sql(f.child, PRUNE_TRIGGER, prune):
            ex.run(stmt)


def finish_prune(ex: Executor, children: list[Followed]) -> None:
    """In the prune's last transaction: the guards and the TRUNCATE refusals dropped."""
    for f in children:
        for trg in (PRUNE_TRIGGER, MIRROR_TRIGGER, GUARD_TRIGGER):
            ex.run(drop_trigger_sql(f.child, trg))
        for stmt in follow_partitions.guard_drops_sql(partition_names(ex, f.child)):
            ex.run(stmt)
        follow_partitions_after.drop_empty_defaults(ex, f.archive_defaults)  # prune emptied them
        for fn in f.functions():
            ex.run(drop_function_sql(fn))


def restore_mirror(ex: Executor, f: Followed, info: TableInfo) -> None:
    """Rollback after prune: the mirror on the live child again (before its rows are copied
    back into the archive)."""
    mirror, prune = f.functions()
    ex.run(drop_trigger_sql(f.child, PRUNE_TRIGGER))
    ex.run(drop_function_sql(prune))
    for stmt in follow_partitions_after.defaults_sql(f.archive_defaults, info.owner):  # dropped by prune
        ex.run(stmt)
    ex.run(sync_function_sql(info, mirror, "mirror", f.archive, defer=deferred_names(info, f.archive.schema, "a")))
    ex.run(drop_trigger_sql(f.child, MIRROR_TRIGGER))
    for stmt in trigger_sql(f.child, MIRROR_TRIGGER, mirror):
        ex.run(stmt)
    ex.run(drop_trigger_sql(f.child, GUARD_TRIGGER))
    ex.run(truncate_guard_sql(f.child))
    for stmt in follow_partitions.guards_sql(partition_names(ex, f.child)):
        ex.run(stmt)


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
        stmts += [*follow_partitions.guard_drops_sql(partition_names(st, child)),
                  drop_trigger_sql(objects.original, follow_watch_trigger(oid)),
                  drop_trigger_sql(child, FOLLOW_TRIGGER), drop_trigger_sql(child, GUARD_TRIGGER),
                  *(drop_function_sql(objects.follow_object(k, oid)) for k in ("watch", "capture")),
                  *(drop_table_sql(objects.follow_object(k, oid)) for k in ("log", "parents")),
                  drop_table_sql(new_name(child))]
    return children, stmts


def exchange_children(ex: Executor, infos: list[tuple[tuple[QualifiedName, QualifiedName, QualifiedName],
                                                         TableInfo]]) -> list[dict[str, Any]]:
    """On a logical subscriber, in its part of the swap: the `follow` children put in place,
    children first, as on the active site (tablemig.lifecycle.follow); what the swap back
    needs of each (`Followed`), with the keys its exchange re-pointed."""
    out = []
    for (child, new, archive), info in reversed(infos):
        rec = exchange(ex, info, child, new, archive)
        out.append({"child": str(child), "new": str(new), "archive": str(archive), "key": info.key_columns,
                    "exchange": rec,
                    "foreign_keys": [{"table": str(fk.table), "name": fk.name} for fk in info.incoming_fks]})
    return out[::-1]
