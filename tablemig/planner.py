"""Planning: read-only. Resolves the table, its key, the cutoff, the counts, every dependency
and the blockers; the dry run shows this plan and changes nothing."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from . import state
from .catalog import DATE_TYPES, TableInfo, inspect_table, resolve
from .errors import InputError
from .names import QualifiedName, derived_name
from .resume import AFTER_SWAP, remaining
from .schema import SCHEMA, install_schema, installed_version
from .spec import TableSpec


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

    @property
    def key(self) -> list[str]:
        return self.info.key_columns

    @property
    def table_label(self) -> str:
        return str(self.original)

    @property
    def columns(self) -> list[str]:
        return [c.name for c in self.info.writable_columns]

    @property
    def overriding(self) -> bool:
        return any(c.identity == "a" for c in self.info.writable_columns)

    @property
    def order_columns(self) -> list[str]:
        return ([self.date_column] if self.order_by_date else []) + self.key

    def function_name(self, role: str) -> QualifiedName:
        return QualifiedName(SCHEMA, f"{role}_{self.info.oid}")

    def summary(self) -> dict[str, Any]:
        return {
            "table": str(self.original), "new_table": str(self.new),
            "archive_table": str(self.archive),
            "backup_table": str(self.backup) if self.backup else None,
            "archive_mode": self.spec.archive_mode, "key": self.key,
            "date_column": self.date_column, "date_type": self.date_type, "cutoff": self.cutoff,
            "rows_total": self.total_rows, "rows_keep": self.keep_rows,
            "rows_archive": self.archive_rows, "rows_null_date": self.null_dated_rows,
            "table_bytes": self.info.table_bytes, "total_bytes": self.info.total_bytes,
            "blockers": self.blockers, "warnings": self.warnings,
            "dependencies": dependencies(self.info),
            **({"resumed_state": self.resumed_state, "remaining": remaining(self.resumed_state)}
               if self.resumed_state else {}),
        }


def dependencies(info: TableInfo) -> dict[str, Any]:
    return {
        "incoming_foreign_keys": [f"{fk.table}.{fk.name}: {fk.definition}"
                                  for fk in info.incoming_fks],
        "outgoing_foreign_keys": [f"{n}: {d}" for n, d, _ in info.outgoing_fks],
        "views": [str(v.name) for v in info.views if v.kind == "v"],
        "materialized_views": [str(v.name) for v in info.views if v.kind == "m"],
        "triggers": [t.name for t in info.triggers],
        "indexes": [i.name for i in info.indexes],
        "grants": [f"{p} to {g}" for g, p, _ in info.acl],
        "policies": [p["name"] for p in info.policies],
        "publications": info.publications,
        "sequences": [f"{c}: {s} ({k})" for c, s, k in info.sequences],
        "statistics": info.statistics,
        "functions_bound_by_oid": info.bound_functions,
    }


def _scalar(conn: psycopg.Connection[Any], query: sql.Composable | str,
            params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def compute_cutoff(conn: psycopg.Connection[Any], table: QualifiedName, column: str,
                   fraction: float) -> str:
    """`table_migration.cutoff_value`, also in a dry run: without the schema installed,
    it is installed in a transaction that is rolled back, so nothing changes."""
    query = "SELECT table_migration.cutoff_value(%s::regclass, %s::name, %s::numeric)"
    params = (str(table), column, fraction)
    try:
        if installed_version(conn) is not None:
            return str(_scalar(conn, query, params))
        with conn.transaction(force_rollback=True):
            install_schema(conn)
            return str(_scalar(conn, query, params))
    except psycopg.errors.RaiseException as exc:  # pragma: no cover - mapped below
        raise InputError(str(exc.diag.message_primary), exc.diag.message_hint or "") from None
    except psycopg.Error as exc:
        raise InputError(f"cutoff for {table}.{column}: {exc.diag.message_primary}",
                         exc.diag.message_hint or "check the column and the retention") from None


def _name_taken(conn: psycopg.Connection[Any], name: QualifiedName) -> str | None:
    row = conn.execute("SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                       " WHERE n.nspname = %s AND c.relname = %s", (name.schema, name.name)).fetchone()
    return row[0] if row else None


def build_plan(conn: psycopg.Connection[Any], spec: TableSpec,
               today: dt.date | None = None) -> TablePlan:
    """Plan one table. Raises InputError for bad input; collects blockers otherwise."""
    original, new, archive = spec.names(today)
    resolve(conn, original)
    existing = (state.load(conn, str(original)) if installed_version(conn) is not None else None)
    if existing and existing["state"] in ("rolled_back", "cleaned"):
        existing = None
    if existing and existing["state"] in AFTER_SWAP:
        return plan_after_swap(conn, spec, existing)
    info = inspect_table(conn, original, list(spec.key) if spec.key else None)
    col = info.column(spec.date_column)
    if col is None:
        raise InputError(f"column {spec.date_column!r} does not exist in {original}",
                         f"name a date column of the table: "
                         f"{', '.join(c.name for c in info.columns if c.type in DATE_TYPES)}")
    if col.type not in DATE_TYPES:
        raise InputError(f"column {spec.date_column!r} of {original} is of type {col.type}, "
                         "not a date or timestamp",
                         "choose a date, timestamp or timestamptz column")
    if info.persistence != "p":
        raise InputError(f"{original} is UNLOGGED or temporary: its rows do not replicate",
                         "make it a logged table first (ALTER TABLE ... SET LOGGED)")
    if existing:
        cutoff = existing["cutoff"]
        new = QualifiedName(existing["schema_name"], existing["new_name"])
        archive = QualifiedName(existing["schema_name"], existing["archive_name"])
    elif spec.cutoff is not None:
        try:
            cutoff = str(_scalar(conn, sql.SQL("SELECT %s::{}::text").format(sql.SQL(col.type)),
                                 (spec.cutoff,)))
        except psycopg.Error as exc:
            raise InputError(f"cutoff {spec.cutoff!r} is not a valid {col.type}: "
                             f"{exc.diag.message_primary}", "give e.g. '2024-01-01'") from None
    else:
        assert spec.retention is not None
        cutoff = compute_cutoff(conn, original, spec.date_column, spec.retention)
    d = sql.Identifier(spec.date_column)
    counts = conn.execute(
        sql.SQL("SELECT count(*), count(*) FILTER (WHERE {d} >= %s::{t}),"
                " count(*) FILTER (WHERE {d} IS NULL) FROM {tbl}")
        .format(d=d, t=sql.SQL(col.type), tbl=original.ident()), (cutoff,)).fetchone()
    assert counts is not None
    total, keep, nulls = (int(x) for x in counts)
    backup = (original.sibling(derived_name(original.name, "_backup"))
              if spec.archive_mode == "copy" else None)
    order_by_date = _leads_with(info, spec.date_column)
    plan = TablePlan(spec, info, original, new, archive, backup, spec.date_column, col.type,
                     cutoff, total, keep, total - keep, nulls, order_by_date,
                     resumed_state=existing["state"] if existing else None)
    _check(conn, plan, existing is not None)
    return plan


def plan_after_swap(conn: psycopg.Connection[Any], spec: TableSpec, m: dict[str, Any], *,
                    count: bool = True) -> TablePlan:
    """The plan of a table whose swap is done (state swapped or pruned): the live table is
    the new one, the original is the archive. Counts (unless `count` is false) are over
    every row of the original as it is now (`TablePlan.sources`)."""
    live = state.live_table(m)
    info = inspect_table(conn, live, list(m["key_columns"]))
    old = state.old_table(m)
    data = [old] if m["state"] == "swapped" else [live, old]
    total = keep = nulls = 0
    if count:
        d, t = sql.Identifier(m["date_column"]), sql.SQL(m["date_type"])
        for table in data:
            row = conn.execute(sql.SQL("SELECT count(*), count(*) FILTER (WHERE {d} >= %s::{t}),"
                                       " count(*) FILTER (WHERE {d} IS NULL) FROM {tbl}")
                               .format(d=d, t=t, tbl=table.ident()), (m["cutoff"],)).fetchone()
            assert row is not None
            total, keep, nulls = total + int(row[0]), keep + int(row[1]), nulls + int(row[2])
    schema = m["schema_name"]
    return TablePlan(spec, info, live, QualifiedName(schema, m["new_name"]), QualifiedName(schema, m["archive_name"]),
                     QualifiedName(schema, m["backup_name"]) if m.get("backup_name") else None,
                     m["date_column"], m["date_type"], m["cutoff"], total, keep, total - keep, nulls,
                     _leads_with(info, m["date_column"]), resumed_state=m["state"], data_tables=data)


def _leads_with(info: TableInfo, column: str) -> bool:
    return any(i.valid and _leading_column(i.definition) == column for i in info.indexes)


def _leading_column(indexdef: str) -> str | None:
    inside = indexdef.split(" USING ", 1)[-1].split("(", 1)[-1]
    first = inside.split(",")[0].split(")")[0].strip().split(" ")[0]
    return first.strip('"') if first else None


def _check(conn: psycopg.Connection[Any], plan: TablePlan, resuming: bool) -> None:
    info, b, w = plan.info, plan.blockers, plan.warnings
    if plan.keep_rows == 0:
        raise InputError(f"cutoff {plan.cutoff} keeps no rows of {plan.original}",
                         "choose an earlier cutoff or a larger retention")
    if plan.archive_rows == 0:
        raise InputError(f"cutoff {plan.cutoff} keeps all {plan.total_rows} rows of "
                         f"{plan.original}: nothing would be archived",
                         "choose a later cutoff or a smaller retention")
    if not resuming:
        for label, name in (("new", plan.new), ("archive", plan.archive),
                            ("backup", plan.backup)):
            if name is not None and _name_taken(conn, name):
                raise InputError(f"the {label} table name {name} is already taken",
                                 f"drop or rename {name}, or give another {label}-table name")
    if plan.null_dated_rows:
        w.append(f"{plan.null_dated_rows} rows have a NULL {plan.date_column}: they are history "
                 f"and stay in the archive {plan.archive}")
    if not plan.order_by_date:
        w.append(f"no index leads with {plan.date_column}: the backfill walks the key and reads "
                 "the whole table; CREATE INDEX CONCURRENTLY on it first to make the cost follow "
                 "the rows kept")
    for i in info.indexes:
        if i.constraint_type == "x":
            b.append(f"exclusion constraint {i.constraint} cannot be recreated on the new table "
                     "without a full lock; drop it first or migrate another way")
        if not i.valid:
            w.append(f"index {i.name} is INVALID and is not copied")
    for fk in info.incoming_fks:
        orphans = _orphans_after_swap(conn, plan, fk)
        if orphans:
            b.append(f"{orphans} rows of {fk.table} reference {plan.original} rows that will be "
                     f"archived, so foreign key {fk.name} cannot follow the live table; migrate "
                     f"{fk.table} with the same cutoff first, or drop {fk.name}")
    for v in info.views:
        if v.kind == "m":
            w.append(f"materialized view {v.name} is rebuilt WITH DATA inside the swap: the lock "
                     "is held while it is computed from the kept rows")
            deps = _scalar(conn, "SELECT count(*) FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid"
                                 " WHERE d.refobjid = %s AND r.ev_class <> %s", (v.oid, v.oid))
            if deps:
                b.append(f"materialized view {v.name} has dependent views; the swap cannot "
                         "recreate it; drop them first")
    if info.bound_functions:
        b.append("functions bound to the table by OID (SQL-standard bodies) would keep reading "
                 f"the archive: {', '.join(info.bound_functions)}; recreate them after the swap "
                 "or rewrite them as plain SQL/PL/pgSQL")
    if info.statistics:
        w.append("extended statistics are copied with LIKE ... INCLUDING STATISTICS under new "
                 "names: " + "; ".join(info.statistics))
    if plan.spec.archive_mode == "copy":
        w.append("archive mode copy: history rows are copied (time and space grow with the "
                 "table, about 2x space until cleanup); the original is kept as "
                 f"{plan.backup} until cleanup")


def missing_privileges(conn: psycopg.Connection[Any], plan: TablePlan) -> list[str]:
    """What the current role lacks to carry out the migration (empty: nothing)."""
    row = conn.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    assert row is not None
    if row[1]:
        return []
    owned = [("table", plan.original)] + [("referencing table", fk.table) for fk in plan.info.incoming_fks] + \
        [("view", v.name) for v in plan.info.views]
    out = []
    for kind, name in owned:
        ok = conn.execute("SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c"
                          " WHERE c.oid = %s::regclass", (str(name),)).fetchone()
        if not (ok and ok[0]):
            out.append(f"not the owner (or a member of the owner role) of {kind} {name}")
    create = conn.execute("SELECT has_schema_privilege(%s, 'CREATE')", (plan.original.schema,)).fetchone()
    if not (create and create[0]):
        out.append(f"no CREATE privilege on schema {plan.original.schema}")
    return out


def _orphans_after_swap(conn: psycopg.Connection[Any], plan: TablePlan, fk: Any) -> int:
    """Child rows whose parent will not be in the live table after the swap."""
    child_cols, parent_cols = _fk_columns(conn, fk.table, fk.name)
    join = sql.SQL(" AND ").join(
        sql.SQL("p.{} = c.{}").format(sql.Identifier(pc), sql.Identifier(cc))
        for pc, cc in zip(parent_cols, child_cols, strict=True))
    notnull = sql.SQL(" AND ").join(sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(cc))
                                    for cc in child_cols)
    query = sql.SQL(
        "SELECT count(*) FROM {child} c WHERE {notnull} AND NOT EXISTS ("
        "SELECT 1 FROM {parent} p WHERE {join} AND p.{d} >= %s::{t})").format(
        child=fk.table.ident(), parent=plan.original.ident(), join=join, notnull=notnull,
        d=sql.Identifier(plan.date_column), t=sql.SQL(plan.date_type))
    return int(_scalar(conn, query, (plan.cutoff,)))


def _fk_columns(conn: psycopg.Connection[Any], child: QualifiedName,
                name: str) -> tuple[list[str], list[str]]:
    row = conn.execute("""
        SELECT ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(n, o)
                       JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o),
               ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(n, o)
                       JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o)
          FROM pg_constraint con WHERE con.conrelid = %s::regclass AND con.conname = %s""",
                       (str(child), name)).fetchone()
    assert row is not None
    return list(row[0]), list(row[1])
