"""Planning the tables that reference the table: each foreign key to it, with the policy the
plan gives its table (refuse, keep or follow), its refusals and figures (docs/families.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import sql

from ..errors import TablemigError
from ..pg.catalog import inspect_table
from ..pg.names import QualifiedName, quote_ident
from ..pg.partitions import partition_own_objects
from ..pg.references import Reference, references
from ..pg.sqltext import Fragment
from ..pg.statements import Statements
from .families import trigger_name_taken
from .objects import FAMILY_TRIGGER
from .retain import keep_rule
from .structure import deferrable_key

if TYPE_CHECKING:  # the planner imports this module: only the type is needed here
    from .planner import TablePlan


@dataclass(frozen=True)
class ChildPlan:
    """One foreign key referencing the table, with its policy (docs/families.md)."""

    ref: Reference
    policy: str  # refuse, keep or follow
    referencing_archived: int  # its rows that reference rows dated before the cutoff
    retained: int | None = None  # keep: the rows of the table it alone keeps live

    def as_dict(self) -> dict[str, Any]:
        return {"child": str(self.ref.child), "foreign_key": self.ref.name, "policy": self.policy,
                "self_reference": self.ref.self_ref, "partitioned": self.ref.partitioned,
                "indexed": self.ref.indexed, "rows_referencing_archived": self.referencing_archived,
                **({"parent_rows_kept_live": self.retained} if self.retained is not None else {})}


def refused_partitioned(st: Statements, ref: Reference) -> bool:
    """A partitioned referencing table before PostgreSQL 18 is refused whatever its policy:
    the swap re-points its foreign key NOT VALID, which those versions refuse there."""
    return ref.partitioned and st.conn.info.server_version < 180000


def policy_children(st: Statements, refs: list[Reference]) -> list[QualifiedName]:
    """The tables among `refs` a plan gives a child policy (each has a ChildPlan), once each,
    in order: every table referencing the table but itself, unless refused_partitioned."""
    return list(dict.fromkeys(r.child for r in refs if not r.self_ref and not refused_partitioned(st, r)))


def check_reference(st: Statements, plan: TablePlan, ref: Reference) -> None:
    """One foreign key referencing the table (from another table or from itself), with the
    policy the plan gives its table (docs/families.md)."""
    b, w = plan.blockers, plan.warnings
    policy = plan.spec.child_policy(ref.child)
    if refused_partitioned(st, ref):
        b.append(f"foreign key {ref.name} of the partitioned table {ref.child} references {plan.original}: "
                 "the swap re-points it NOT VALID (validated afterwards, without blocking writes), which "
                 "PostgreSQL before 18 refuses on a partitioned table, and adding it validated would scan "
                 f"{ref.child} under the swap's lock; drop {ref.name} before the migration and add it "
                 "again afterwards, or migrate on PostgreSQL 18")
        return
    if not ref.self_ref and trigger_name_taken(st, ref):
        b.append(f"trigger {FAMILY_TRIGGER} on {ref.child} has the name of the trigger tablemig puts on the "
                 f"tables referencing {plan.original} during the swap step; rename it (ALTER TRIGGER "
                 f"{FAMILY_TRIGGER} ON {ref.child} RENAME TO ...)")
    lost = _orphans_after_swap(st, plan, ref)
    retained = None
    if policy == "keep":
        retained = _check_keep(st, plan, ref)
    elif policy == "follow":  # the `lost` rows go to the archive with the rows they reference
        b.extend(follow_refusals(st, ref, plan.references, plan.key, plan.spec.archive_mode))
    elif lost:
        what = (f"{lost} kept rows of {plan.original} reference rows of it that will be archived"
                if ref.self_ref else f"{lost} rows of {ref.child} reference {plan.original} rows that "
                "will be archived")
        b.append(f"{what}, so foreign key {ref.name} cannot follow the live table; "
                 + (f"choose a cutoff that keeps the rows they reference, or drop {ref.name}" if ref.self_ref
                    else f"give {ref.child} a child policy in the plan: children={{{str(ref.child)!r}: 'keep'}} "
                    f"keeps the {plan.original} rows it references live whatever their date (docs/families.md); "
                    f"or drop {ref.name}"))
    plan.children.append(ChildPlan(ref, policy, lost, retained))
    if not ref.indexed and policy == "refuse":
        w.append(f"no index leads with the referencing columns of {ref.label()}: the swap's orphan check "
                 f"looks up {ref.child} rows by them, scanning it under the swap's lock if a write "
                 f"reached a row to be archived meanwhile; CREATE INDEX CONCURRENTLY on "
                 f"{ref.child} ({', '.join(map(quote_ident, ref.child_columns))}) first")


def _check_keep(st: Statements, plan: TablePlan, ref: Reference) -> int | None:
    """The policy keep for one child: its refusals, and the rows it keeps live."""
    b = plan.blockers
    if ref.self_ref and sorted(ref.parent_columns) != sorted(plan.key):
        b.append(f"child policy 'keep' for {ref.child} itself: the self-reference {ref.name} references "
                 f"({', '.join(ref.parent_columns)}), not the key ({', '.join(plan.key)}); only a reference to the "
                 f"key can be kept; choose a cutoff that keeps the rows they reference, or drop {ref.name}")
        return None
    if ref.self_ref and sum(1 for r in plan.references if r.self_ref) > 1:
        b.append(f"child policy 'keep' for {ref.child} itself: it has more than one foreign key to itself, "
                 "which this version cannot keep; drop all but one, or choose a cutoff that keeps the rows "
                 "they reference")
        return None
    if plan.spec.archive_mode != "rename":
        b.append(f"child policy 'keep' for {ref.child} needs archive mode rename (in mode copy the rows it "
                 "keeps live would also be copied to the archive); use archive_mode='rename'")
    if deferrable_key(plan.info):
        b.append(f"child policy 'keep' for {ref.child}: the key of {plan.original} is DEFERRABLE, which "
                 "cannot arbitrate the copies of the rows it keeps live; make the key not deferrable, or "
                 "use the policy refuse")
    if not ref.indexed:
        b.append(f"child policy 'keep' for {ref.child}: no index leads with the referencing columns of "
                 f"{ref.name}, and the rows kept live are found through them; CREATE INDEX CONCURRENTLY ON "
                 f"{ref.child} ({', '.join(map(quote_ident, ref.child_columns))}) first")
        return None
    one = keep_rule([ref], {ref.child: "keep"}, plan.original, plan.key, plan.columns, plan.overriding,
                    plan.date_column, plan.date_type, plan.cutoff)
    return one.count(st) if one is not None else None


def _orphans_after_swap(st: Statements, plan: TablePlan, ref: Reference) -> int:
    """Rows referencing the table (another table's, or the kept rows of the table itself)
    whose referenced row will not be in the live table after the swap."""
    join = sql.SQL(" AND ").join(
        sql.SQL("p.{} = c.{}").format(sql.Identifier(pc), sql.Identifier(cc))
        for pc, cc in zip(ref.parent_columns, ref.child_columns, strict=True))
    notnull = sql.SQL(" AND ").join(sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(cc))
                                    for cc in ref.child_columns)
    d, t = sql.Identifier(plan.date_column), Fragment(plan.date_type)
    kept = sql.SQL(" AND c.{} >= %s::{}").format(d, t) if ref.self_ref else sql.SQL("")
    query = sql.SQL(
        "SELECT count(*) FROM {child} c WHERE {notnull}{kept} AND NOT EXISTS ("
        "SELECT 1 FROM {parent} p WHERE {join} AND p.{d} >= %s::{t})").format(
        child=ref.child.ident(), parent=plan.original.ident(), join=join, notnull=notnull, kept=kept,
        d=d, t=t)
    return int(st.read(query, ((plan.cutoff,) if ref.self_ref else ()) + (plan.cutoff,)).scalar())


def follow_refusals(st: Statements, ref: Reference, siblings: Sequence[Reference], table_key: Sequence[str],
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
        out += _partitioned_refusals(st, ref, what)
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


def _partitioned_refusals(st: Statements, ref: Reference, what: str) -> list[str]:
    """What keeps a partitioned child from following (its new table is partitioned the same
    way: tablemig.lifecycle.follow_partitions)."""
    out = []
    own = partition_own_objects(st, ref.child)
    if own:
        out.append(f"{what}: {', '.join(own)}: the new table's partitions would not have them (a copy partitioned "
                   f"the same way has what {ref.child} itself has); create them on {ref.child} itself, or drop "
                   "them, or use 'keep'")
    return out


def _child_refusals(st: Statements, ref: Reference, what: str, archive_mode: str,
                    seen: frozenset[QualifiedName]) -> list[str]:
    """What of the child itself, or of the tables that would follow it, keeps it from following."""
    out: list[str] = []
    try:
        info = inspect_table(st, ref.child, partitioned=True)
    except TablemigError as exc:
        return [f"{what}: {exc}"]
    if any(i.is_key and (i.deferrable or not i.arbiter_shape) for i in info.indexes):
        out.append(f"{what}: the key of {ref.child} is DEFERRABLE (or partial), which cannot arbitrate "
                   "the replay's copies; make it not deferrable, or use 'keep'")
    if info.inherits or (info.has_children and info.relkind != "p"):
        out.append(f"{what}: {ref.child} uses table inheritance, which cannot follow; use 'keep'")
    # the tables referencing it follow it in turn (a grandchild whose parent is archived
    # would be an orphan)
    below = references(st, ref.child_oid)
    for g in below:
        out += follow_refusals(st, g, below, info.key_columns, archive_mode, ref.child, seen)
    return out
