"""Planning: read-only. Resolves the table, its key, the cutoff, the counts, every dependency
and the blockers; the dry run shows this plan and changes nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from ..config.spec import TableSpec
from ..errors import InputError
from ..pg.catalog import TableInfo, inspect_table, resolve
from ..pg.cutoff import DATE_TYPES, base_types, compute_cutoff, read_cutoff, show_cutoff
from ..pg.names import QualifiedName, quote_ident
from ..pg.references import Reference, references
from ..pg.search_path import trigger_path
from ..pg.sqltext import Fragment
from ..pg.statements import Statements
from .family_plan import ChildPlan, check_reference
from .objects import TOOL_TRIGGERS, Objects, archive_name, backup_name, new_name
from .resume import remaining
from .retain import KeepRule, keep_rule
from .state import AFTER_SWAP, State
from .structure import not_valid_checks


@dataclass
class TablePlan:
    spec: TableSpec
    info: TableInfo
    original: QualifiedName
    new: QualifiedName
    archive: QualifiedName
    backup: QualifiedName | None  # archive mode "copy": where the original is renamed to
    date_column: str
    date_type: str
    cutoff: str
    total_rows: int
    keep_rows: int
    archive_rows: int
    null_dated_rows: int
    order_by_date: bool  # an index leads with the date column: keyset over (D, key)
    blockers: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    resumed_state: str | None = None
    # the tables that hold every row of the original now (empty: the original itself)
    data_tables: list[QualifiedName] = field(default_factory=list)
    objects: Objects | None = None  # the names of what the migration creates

    @property
    def swapped(self) -> bool:
        """The swap is done: `original` is the live table (the new one), the original rows are
        in `data_tables`."""
        return self.resumed_state in AFTER_SWAP

    @property
    def sources(self) -> list[QualifiedName]:
        """Where every row of the original is now: the original table until the swap; then the
        original under its archive name (kept complete until prune); after prune the live
        table and the archive, disjoint."""
        return self.data_tables or [self.original]
    # the schemas the trigger functions' search_path needs (tablemig.pg.search_path)
    search_path: tuple[str, ...] = ()
    # the cutoff with its offset in the database's TimeZone (timestamptz; tablemig.pg.cutoff)
    cutoff_local: str | None = None
    timezone: str | None = None
    references: list[Reference] = field(default_factory=list)  # foreign keys to the table
    # the `keep` children's rule (tablemig.lifecycle.retain) and each child's figures
    keep_rule: KeepRule | None = None
    children: list[ChildPlan] = field(default_factory=list)

    @property
    def key(self) -> list[str]:
        return self.info.key_columns

    @property
    def retained_rows(self) -> int:
        """Rows dated before the cutoff that `keep` children keep live (at planning time;
        the sum over the children: a row two children reference counts twice)."""
        return sum(c.retained or 0 for c in self.children)

    @property
    def table_label(self) -> str:
        return str(self.original)

    @property
    def columns(self) -> list[str]:
        return self.info.written_columns

    @property
    def overriding(self) -> bool:
        return self.info.identity_always

    @property
    def order_columns(self) -> list[str]:
        return ([self.date_column] if self.order_by_date else []) + self.key

    @property
    def names(self) -> Objects:
        """What the migration creates, by name (tablemig.lifecycle.objects)."""
        return self.objects or Objects(self.original, self.new, self.archive, self.backup, self.info.oid)

    def summary(self) -> dict[str, Any]:
        return {
            "table": str(self.original), "new_table": str(self.new),
            "archive_table": str(self.archive),
            "backup_table": str(self.backup) if self.backup else None,
            "archive_mode": self.spec.archive_mode, "key": self.key,
            "date_column": self.date_column, "date_type": self.date_type, "cutoff": self.cutoff,
            "cutoff_local": self.cutoff_local, "timezone": self.timezone,
            "rows_total": self.total_rows, "rows_keep": self.keep_rows,
            "rows_archive": self.archive_rows, "rows_null_date": self.null_dated_rows,
            "rows_kept_for_children": self.retained_rows,
            "table_bytes": self.info.table_bytes, "total_bytes": self.info.total_bytes,
            "blockers": self.blockers, "warnings": self.warnings,
            "children": [c.as_dict() for c in self.children],
            "dependencies": dependencies(self.info),
            **({"resumed_state": self.resumed_state, "remaining": remaining(self.resumed_state)}
               if self.resumed_state else {}),
        }


def dependencies(info: TableInfo) -> dict[str, Any]:
    return {
        "incoming_foreign_keys": [f"{fk.table}.{fk.name}: {fk.definition}"
                                  for fk in info.incoming_fks],
        "outgoing_foreign_keys": [f"{n}: {d}" for n, d, _ in info.outgoing_fks],
        "self_references": [f"{fk.name}: {fk.definition}" for fk in info.self_fks],
        "rules_writing_the_table": [f"{r.name} on {r.relation}" for r in info.rules_elsewhere],
        "views": [str(v.name) for v in info.views if v.kind == "v"],
        "materialized_views": [str(v.name) for v in info.views if v.kind == "m"],
        "triggers": [t.name + {"D": " (disabled)", "R": " (replica)", "A": " (always)"}.get(t.enabled, "")
                     for t in info.triggers],
        "rules": [r.name for r in info.rules],
        "indexes": [i.name for i in info.indexes],
        "grants": [f"{p} to {g}" for g, p, _ in info.acl],
        "policies": [p["name"] for p in info.policies],
        "publications": info.publications,
        "sequences": [f"{c}: {s} ({k})" for c, s, k in info.sequences],
        "statistics": info.statistics,
        "functions_bound_by_oid": info.bound_functions,
    }


def _scalar(st: Statements, query: sql.Composable | str, params: tuple[Any, ...] = ()) -> Any:
    return st.read(query, params).scalar()


def _name_taken(st: Statements, name: QualifiedName) -> str | None:
    row = st.read("SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                       " WHERE n.nspname = %s AND c.relname = %s", (name.schema, name.name)).fetchone()
    return row[0] if row else None


def planned_names(spec: TableSpec, today: dt.date | None = None) -> tuple[QualifiedName, QualifiedName,
                                                                         QualifiedName]:
    """(original, new, archive) names; new and archive stay in the original's schema
    unless given schema-qualified (tablemig.lifecycle.objects makes the defaults)."""
    t = spec.qualified
    day = (today or dt.date.today()).strftime("%Y%m%d")
    new = QualifiedName.parse(spec.new_table, t.schema) if spec.new_table else new_name(t)
    archive = QualifiedName.parse(spec.archive_table, t.schema) if spec.archive_table else archive_name(t, day)
    return t, new, archive


def build_plan(st: Statements, spec: TableSpec, existing: State | None, today: dt.date | None = None, *,
               timezone: Callable[[], str] | None = None) -> TablePlan:
    """Plan one table (`existing`: its state row, if a migration is under way). Raises
    InputError for bad input; collects blockers otherwise. `timezone` gives the database's
    own TimeZone, in which a cutoff without an offset is read (tablemig.pg.cutoff)."""
    original, new, archive = planned_names(spec, today)
    resolve(st, original)
    if existing and existing.finished:
        existing = None
    if existing and existing.swapped:
        return plan_after_swap(st, spec, existing)
    if not existing:
        _same_schema(st, spec, original, new, archive)
    info = inspect_table(st, original, list(spec.key) if spec.key else None)
    date_type = _date_type(st, info, spec, original)
    _check_persistence(info, original)
    if existing:
        cut = show_cutoff(st, existing.cutoff.text, date_type, timezone)
        new, archive = existing.new, existing.archive
    elif spec.cutoff is not None:
        cut = read_cutoff(st, spec.cutoff, date_type, timezone)
    else:
        assert spec.retention is not None
        cut = show_cutoff(st, compute_cutoff(st, original, spec.date_column, spec.retention),
                          date_type, timezone)
    d = sql.Identifier(spec.date_column)
    counts = st.read(
        sql.SQL("SELECT count(*), count(*) FILTER (WHERE {d} >= %s::{t}),"
                " count(*) FILTER (WHERE {d} IS NULL) FROM {tbl}")
        .format(d=d, t=Fragment(date_type), tbl=original.ident()), (cut.value,)).fetchone()
    assert counts is not None
    total, keep, nulls = (int(x) for x in counts)
    backup = backup_name(original) if spec.archive_mode == "copy" else None
    order_by_date = _leads_with(info, spec.date_column)
    path = trigger_path(st, info.oid)
    plan = TablePlan(spec, info, original, new, archive, backup, spec.date_column, date_type,
                     cut.value, total, keep, total - keep, nulls, order_by_date,
                     resumed_state=existing.state if existing else None, search_path=path.schemas,
                     cutoff_local=cut.local, timezone=cut.timezone,
                     references=references(st, info.oid),
                     objects=existing.objects if existing else None)
    if path.problem():
        plan.blockers.append(f"{path.problem()}; revoke CREATE on those schemas from those roles, or give the "
                             "functions the table's expressions call their own search_path (ALTER FUNCTION ... "
                             "SET search_path = ...), or run tablemig as the table's owner")
    policies = spec.child_policies
    plan.keep_rule = keep_rule(plan.references, policies, original, info.key_columns, plan.columns,
                               plan.overriding, spec.date_column, date_type, cut.value)
    _check(st, plan, existing is not None)
    return plan


def _date_type(st: Statements, info: TableInfo, spec: TableSpec, original: QualifiedName) -> str:
    """The base type of the plan's date column; InputError if it is missing or no date."""
    bases = base_types(st, info.oid)
    col = info.column(spec.date_column)
    if col is None:
        raise InputError(f"column {spec.date_column!r} does not exist in {original}",
                         f"name a date column of the table: "
                         f"{', '.join(c.name for c in info.columns if bases.get(c.name) in DATE_TYPES)}")
    date_type = bases[col.name]
    if date_type not in DATE_TYPES:
        raise InputError(f"column {spec.date_column!r} of {original} is of type {col.type}, "
                         "not a date or timestamp",
                         "choose a date, timestamp or timestamptz column (or a domain over one)")
    return date_type


def _check_persistence(info: TableInfo, original: QualifiedName) -> None:
    """Only a permanent, logged table can be migrated (its rows replicate and outlive a session)."""
    if info.persistence == "t":
        raise InputError(f"{original} is a temporary table: it exists only in the session that created it "
                         "(no other session, tablemig's included, can read its rows) and ends with it",
                         "temporary tables cannot be migrated; nothing to do")
    if info.persistence != "p":
        raise InputError(f"{original} is UNLOGGED: its rows do not replicate",
                         "make it a logged table first (ALTER TABLE ... SET LOGGED)")


def plan_after_swap(st: Statements, spec: TableSpec, m: State, *, count: bool = True) -> TablePlan:
    """The plan of a table whose swap is done (state swapped or pruned): the live table is
    the new one, the original is the archive. Counts (unless `count` is false) are over
    every row of the original as it is now (`TablePlan.sources`)."""
    live = m.live
    info = inspect_table(st, live, list(m.key))
    old = m.old_table
    data = [old] if m.state == "swapped" else [live, old]
    total = keep = nulls = 0
    if count:
        d, t = sql.Identifier(m.date_column), Fragment(m.date_type)
        for table in data:
            row = st.read(sql.SQL("SELECT count(*), count(*) FILTER (WHERE {d} >= %s::{t}),"
                                  " count(*) FILTER (WHERE {d} IS NULL) FROM {tbl}")
                          .format(d=d, t=t, tbl=table.ident()), (m.cutoff.text,)).fetchone()
            assert row is not None
            total, keep, nulls = total + int(row[0]), keep + int(row[1]), nulls + int(row[2])
    return TablePlan(spec, info, live, m.new, m.archive, m.objects.backup,
                     m.date_column, m.date_type, m.cutoff.text, total, keep, total - keep, nulls,
                     _leads_with(info, m.date_column), resumed_state=m.state, data_tables=data,
                     search_path=trigger_path(st, info.oid).schemas, references=references(st, info.oid),
                     objects=m.objects)


def _leads_with(info: TableInfo, column: str) -> bool:
    return any(i.valid and _leading_column(i.definition) == column for i in info.indexes)


def _same_schema(st: Statements, spec: TableSpec, original: QualifiedName,
                 new: QualifiedName, archive: QualifiedName) -> None:
    """The new table and the archive live in the table's schema: the swap renames them in
    place (a rename cannot move a table to another schema)."""
    for label, name in (("new table", new), ("archive", archive)):
        if name.schema == original.schema:
            continue
        found = st.read("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name.schema,)).fetchone()
        why = (f"schema {quote_ident(name.schema)} does not exist" if found is None
               else f"it is not the schema of {original}")
        raise InputError(
            f"the {label} {name} cannot be created there: {why}; the {label} takes its place by a rename in "
            f"schema {quote_ident(original.schema)}, which cannot move it to another schema",
            f"give the {label} a name in schema {quote_ident(original.schema)} "
            f"(e.g. {original.sibling(name.name)}), or leave it out for the default; to keep history in "
            "another schema, move the archive after the migration (ALTER TABLE ... SET SCHEMA)")


def _leading_column(indexdef: str) -> str | None:
    inside = indexdef.split(" USING ", 1)[-1].split("(", 1)[-1]
    first = inside.split(",")[0].split(")")[0].strip().split(" ")[0]
    return first.strip('"') if first else None


def _check(st: Statements, plan: TablePlan, resuming: bool) -> None:
    """Raise InputError for a cutoff that keeps or archives nothing and for names taken;
    collect the blockers and warnings of the plan, in the order a DBA reads them."""
    _check_rows(plan)
    if not resuming:
        _check_names_free(st, plan)
    _check_dates(plan)
    _check_indexes(plan)
    for ref in plan.references:
        check_reference(st, plan, ref)
    found = {r.child for r in plan.references}
    for child in plan.spec.child_policies:
        # a warning: a plan may serve databases where a child does not exist, and a name
        # misspelt leaves the real child at refuse, which blocks if it must
        if child not in found:
            plan.warnings.append(
                f"children names {child}, which has no foreign key referencing {plan.original}: its policy is "
                "not used (tablemig new-plan --dsn lists the children a table has)")
    for check, definition in not_valid_checks(plan.info):
        plan.warnings.append(f"CHECK {check} is NOT VALID ({definition}): rows it never checked are copied as "
                             "they are, and the live table gets it NOT VALID too")
    _check_views(st, plan)
    _check_other_objects(plan)


def _check_rows(plan: TablePlan) -> None:
    if plan.keep_rows == 0:
        raise InputError(f"cutoff {plan.cutoff} keeps no rows of {plan.original}",
                         "choose an earlier cutoff or a larger retention")
    if plan.archive_rows == 0:
        raise InputError(f"cutoff {plan.cutoff} keeps all {plan.total_rows} rows of "
                         f"{plan.original}: nothing would be archived",
                         "choose a later cutoff or a smaller retention")


def _check_names_free(st: Statements, plan: TablePlan) -> None:
    for label, name in (("new", plan.new), ("archive", plan.archive), ("backup", plan.backup)):
        if name is not None and _name_taken(st, name):
            raise InputError(f"the {label} table name {name} is already taken",
                             f"drop or rename {name}, or give another {label}-table name")


def _check_dates(plan: TablePlan) -> None:
    w = plan.warnings
    if plan.null_dated_rows:
        w.append(f"{plan.null_dated_rows} rows have a NULL {plan.date_column}: they are history "
                 f"and stay in the archive {plan.archive}")
    if not plan.order_by_date:
        w.append(f"no index leads with {plan.date_column}: the backfill walks the key and reads "
                 "the whole table; CREATE INDEX CONCURRENTLY on it first to make the cost follow "
                 "the rows kept")


def _check_indexes(plan: TablePlan) -> None:
    b, w = plan.blockers, plan.warnings
    for i in plan.info.indexes:
        if i.constraint_type == "x":
            b.append(f"exclusion constraint {i.constraint} cannot be recreated on the new table "
                     "without a full lock; drop it first or migrate another way")
        if not i.valid:
            w.append(f"index {i.name} is INVALID and is not copied")
        elif i.tablespace:
            w.append(f"index {i.name} is in tablespace {i.tablespace}: its copy is built in the "
                     "database's default tablespace (ALTER INDEX ... SET TABLESPACE after the swap)")


def _check_views(st: Statements, plan: TablePlan) -> None:
    for v in plan.info.views:
        if v.kind != "m":
            continue
        plan.warnings.append(f"materialized view {v.name} is rebuilt WITH DATA inside the swap: the lock "
                             "is held while it is computed from the kept rows")
        deps = _scalar(st, "SELECT count(*) FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid"
                             " WHERE d.refobjid = %s AND r.ev_class <> %s", (v.oid, v.oid))
        if deps:
            plan.blockers.append(f"materialized view {v.name} has dependent views; the swap cannot "
                                 "recreate it; drop them first")


def _check_other_objects(plan: TablePlan) -> None:
    """Triggers, functions bound by OID, extended statistics, and the archive mode."""
    info, b, w = plan.info, plan.blockers, plan.warnings
    for trg in info.triggers:  # not tablemig's own: those are left out of the inspection
        if trg.name in TOOL_TRIGGERS:
            b.append(f"trigger {trg.name} on {plan.original} has a name tablemig uses for its own "
                     f"triggers; rename it (ALTER TRIGGER {trg.name} ON {plan.original} RENAME TO ...)")
    rebuilt = {name for name, _ in info.atomic_functions}
    fixed = [f for f in info.bound_functions if f not in rebuilt]
    if fixed:
        b.append("functions bound to the table by OID whose arguments or result are the table's row type "
                 f"cannot be rebuilt against the new table by the swap: {', '.join(fixed)}; drop them before "
                 "the migration and create them again after it, or rewrite them as plain SQL/PL/pgSQL")
    if info.statistics:
        w.append("extended statistics are copied with LIKE ... INCLUDING STATISTICS under new "
                 "names: " + "; ".join(info.statistics))
    if plan.spec.archive_mode == "copy":
        w.append("archive mode copy: history rows are copied (time and space grow with the "
                 "table, about 2x space until cleanup); the original is kept as "
                 f"{plan.backup} until cleanup")


def missing_privileges(st: Statements, plan: TablePlan) -> list[str]:
    """What the current role lacks to carry out the migration (empty: nothing)."""
    row = st.read("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    assert row is not None
    if row[1]:
        return []
    owned = [("table", plan.original)] + [("referencing table", fk.table) for fk in plan.info.incoming_fks] + \
        [("view", v.name) for v in plan.info.views] + \
        [("table with a rule writing the table", r.relation) for r in plan.info.rules_elsewhere]
    out = []
    for kind, name in owned:
        ok = st.read("SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c"
                          " WHERE c.oid = %s::regclass", (str(name),)).fetchone()
        if not (ok and ok[0]):
            out.append(f"not the owner (or a member of the owner role) of {kind} {name}")
    create = st.read("SELECT has_schema_privilege(%s, 'CREATE')", (plan.original.schema,)).fetchone()
    if not (create and create[0]):
        out.append(f"no CREATE privilege on schema {plan.original.schema}")
    return out

