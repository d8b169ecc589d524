"""Every object a table's migration creates, by name: the one place these names are made.

User-visible tables take names the DBA chose (or the defaults `T_new`, `T_archive_<date>`,
`T_backup`, in the original's schema). The tool's own objects live in the
`table_migration` schema and carry the original table's OID, so that two migrations never
share one and a rerun finds its own: the change log and the family log, the trigger
functions (capture, mirror, prune guard, family), and, on the tables, triggers with fixed
names. Index copies carry their original index's OID (`_n<oid>` on the new table, `_h<oid>`
on the history copy, `_a<oid>` on the archive after the swap).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..pg.catalog import Index, TableInfo
from ..pg.names import QualifiedName, derived_name
from ..pg.schema import SCHEMA

TRIGGER_PREFIX = "tablemig_"
CAPTURE_TRIGGER = TRIGGER_PREFIX + "capture"  # on T until the swap: logs keys, then writes N
MIRROR_TRIGGER = TRIGGER_PREFIX + "mirror"  # on the live table after the swap: keeps the archive whole
GUARD_TRIGGER = TRIGGER_PREFIX + "no_truncate"  # refuses TRUNCATE while a trigger keeps a copy
PRUNE_TRIGGER = TRIGGER_PREFIX + "prune"  # during prune: deletes reach the archive
FAMILY_TRIGGER = TRIGGER_PREFIX + "family"  # on referencing tables during the swap step
FOLLOW_TRIGGER = TRIGGER_PREFIX + "follow"  # on a `follow` child (its keys) and the table (its keys) then
TOOL_TRIGGERS = (CAPTURE_TRIGGER, MIRROR_TRIGGER, GUARD_TRIGGER, PRUNE_TRIGGER)
REFUSE_TRUNCATE = QualifiedName(SCHEMA, "refuse_truncate")  # installed with the schema


def follow_watch_trigger(child_oid: int) -> str:
    """The trigger on the table that feeds one `follow` child's parent log (tablemig.lifecycle.follow)."""
    return derived_name(FOLLOW_TRIGGER, f"_{child_oid}")


def new_name(original: QualifiedName) -> QualifiedName:
    """The default new table: `T_new`, in T's schema."""
    return original.sibling(derived_name(original.name, "_new"))


def archive_name(original: QualifiedName, day: str) -> QualifiedName:
    """The default archive: `T_archive_<YYYYMMDD>`, in T's schema."""
    return original.sibling(derived_name(original.name, f"_archive_{day}"))


def backup_name(original: QualifiedName) -> QualifiedName:
    """Archive mode copy: where the original goes at the swap, kept until cleanup."""
    return original.sibling(derived_name(original.name, "_backup"))


def temp_index_name(index: Index, tag: str = "n") -> str:
    """Name of the copy of `index` on the new table (tag n) until the swap, or on the
    history copy of archive mode copy (tag h)."""
    return derived_name(index.name, f"_{tag}{index.oid}")


def archive_index_name(index: Index) -> str:
    """Name the original index takes on the archive after the swap."""
    return derived_name(index.name, f"_a{index.oid}")


def deferrable_constraints(info: TableInfo) -> list[Index]:
    """The table's deferrable PRIMARY KEY / UNIQUE constraints (as their indexes)."""
    return [i for i in info.indexes if i.deferrable and i.constraint_type in ("p", "u") and i.valid]


def deferred_names(info: TableInfo, schema: str, tag: str) -> list[QualifiedName]:
    """The names the deferrable constraints of `info` have on one of its copies: tag "n" the
    new table, "h" the history copy (until the swap), "a" the original after the swap."""
    return [QualifiedName(schema, archive_index_name(i) if tag == "a" else temp_index_name(i, tag))
            for i in deferrable_constraints(info)]


def _tool(name: str) -> QualifiedName:
    return QualifiedName(SCHEMA, name)


@dataclass(frozen=True)
class Objects:
    """The names of one migration's objects. `table_oid` is the original table's OID (after
    the swap, the archive's), which names the tool's own objects."""

    original: QualifiedName  # the table as the application names it (the live table)
    new: QualifiedName
    archive: QualifiedName
    backup: QualifiedName | None  # archive mode copy only
    table_oid: int

    @property
    def copy_mode(self) -> bool:
        return self.backup is not None

    @property
    def outgoing(self) -> QualifiedName:
        """What the original is renamed to by the swap: the archive (mode rename) or the
        kept backup (mode copy; the archive is then a copy of the history)."""
        return self.backup or self.archive

    def new_tables(self) -> list[tuple[QualifiedName, str]]:
        """The tables the migration builds, with the tag of their temporary index names: the
        new table N ("n") and, in archive mode copy, the archive H the history is copied to ("h")."""
        return [(self.new, "n"), *([(self.archive, "h")] if self.copy_mode else [])]

    @property
    def change_log(self) -> QualifiedName:
        """The keys the capture trigger logs until the switch to direct capture."""
        return _tool(f"changes_{self.table_oid}")

    @property
    def family_log(self) -> QualifiedName:
        """The keys the swap step's orphan check logs (tablemig.lifecycle.families)."""
        return _tool(f"family_{self.table_oid}")

    @property
    def capture_function(self) -> QualifiedName:
        return _tool(f"capture_{self.table_oid}")

    @property
    def mirror_function(self) -> QualifiedName:
        return _tool(f"mirror_{self.table_oid}")

    @property
    def prune_function(self) -> QualifiedName:
        return _tool(f"prune_{self.table_oid}")

    def family_function(self, child_oid: int) -> QualifiedName:
        """The orphan check's trigger function on one referencing table."""
        return _tool(f"family_{self.table_oid}_{child_oid}")

    def follow_object(self, kind: str, child_oid: int) -> QualifiedName:
        """One of the objects the swap step makes for a `follow` child (tablemig.lifecycle.follow):
        kind "log" (the child's changed keys), "parents" (the table's changed keys), "capture"
        and "watch" (their trigger functions), "mirror" and "prune" (after the swap)."""
        return _tool(f"follow_{kind}_{self.table_oid}_{child_oid}")

    def swap_gid(self, back: bool) -> str:
        """The prepared transaction of a logical subscriber's part of the swap (or swap back)."""
        return f"tablemig-{'swapback' if back else 'swap'}-{self.table_oid}"

    @property
    def state_row(self) -> str:
        """The table's row of table_migration.migration_state, as an object a dry run creates."""
        return f"{SCHEMA}.migration_state[{self.original}]"
