"""Prepare a rehearsal: the active site's schema and synthetic rows in a throwaway database.

    summary = prepare(source_dsn, rehearsal_dsn, [PlanTable(QualifiedName("public", "orders"),
                      "created_date")], scale=Scale(rows=100_000), server=pg_bin)

The active site is only read: its schema (`tablemig.rehearsal.schema`) and its statistics
(`tablemig.rehearsal.catalog`). The tables filled are the plan's, the tables whose foreign
keys reference them, and every table those reference; parents are loaded first.

Scale: one fraction for every table, so the rows per parent stay those of the active site —
the largest plan table gets `Scale.rows` rows (or every table `Scale.fraction` of its rows).
Referenced tables of up to `SMALL_TABLE` rows (lookup tables) keep all their rows. The statistics are
shares (NULLs, common values, histogram buckets), so the same distribution holds at any size.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ..errors import InputError
from ..pg.binaries import PgBin
from ..pg.connect import connect, redact
from ..pg.names import QualifiedName
from .catalog import ForeignKey, TableShape, TableStats, related_tables, table_shapes, table_stats, with_width
from .distribution import Distribution
from .kinds import DateKind, TimestampKind
from .load import LoadResult, continue_sequences, fill_after_load, load_table, parent_keys
from .schema import clone_schema, source_facts
from .synthetic import ParentKeys, TableGenerator

DEFAULT_ROWS = 100_000
SMALL_TABLE = 1000  # tables with no more rows are copied whole
UNKNOWN_PARENT_ROWS = 100  # a referenced table without statistics


@dataclass(frozen=True)
class PlanTable:
    name: QualifiedName
    date_column: str


@dataclass(frozen=True)
class Scale:
    """How small the rehearsal is: the largest plan table's rows, or a fraction of every table."""

    rows: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if self.rows is not None and self.fraction is not None:
            raise InputError("give the rehearsal's size once: rows or a fraction", "drop one of the two")
        if self.rows is not None and self.rows < 1:
            raise InputError(f"the rehearsal's rows must be at least 1, got {self.rows}", "e.g. 100000")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise InputError(f"the rehearsal's fraction must be above 0 and at most 1, got {self.fraction}",
                             "e.g. 0.001 for one row in a thousand")

    def fraction_of(self, largest: float) -> float:
        if self.fraction is not None:
            return self.fraction
        rows = self.rows if self.rows is not None else DEFAULT_ROWS
        return 1.0 if largest <= rows else rows / largest


def load_order(shapes: dict[QualifiedName, TableShape]) -> tuple[list[QualifiedName], dict[QualifiedName, set[str]]]:
    """Tables parents first, and per table the foreign keys filled after every table is loaded
    (nullable references to the table itself, and a nullable one per cycle)."""
    deferred: dict[QualifiedName, set[str]] = {t: set() for t in shapes}
    needs: dict[QualifiedName, dict[str, QualifiedName]] = {t: {} for t in shapes}
    for t, shape in shapes.items():
        for fk in shape.foreign_keys:
            nullable = all(not shape.column(c).not_null for c in fk.columns)
            if fk.parent == t:
                if nullable:
                    deferred[t].add(fk.name)
            elif fk.parent in shapes:
                needs[t][fk.name] = fk.parent
    order: list[QualifiedName] = []
    remaining = list(shapes)
    while remaining:
        ready = [t for t in remaining if all(p in order for p in needs[t].values())]
        if not ready:
            breakable = [(t, name) for t in remaining for name, p in needs[t].items() if p in remaining
                         and all(not shapes[t].column(c).not_null
                                 for c in next(f for f in shapes[t].foreign_keys if f.name == name).columns)]
            if not breakable:
                cycle = ", ".join(str(t) for t in remaining)
                raise InputError(f"the foreign keys of {cycle} form a cycle in which no column may be NULL: the "
                                 "rehearsal cannot load one table before the other",
                                 "give the rehearsal a schema file in which the columns of one of those foreign "
                                 "keys allow NULL")
            t, name = breakable[0]
            deferred[t].add(name)
            del needs[t][name]
            continue
        order += ready
        remaining = [t for t in remaining if t not in ready]
    return order, deferred


def _rows_for(stats: TableStats, fraction: float, plan: bool, referenced: bool, name: QualifiedName,
              notes: list[str]) -> int:
    if stats.rows is None:
        if plan:
            raise InputError(f"{name} has no statistics on the active site (pg_class.reltuples is unknown)",
                             f"run ANALYZE {name} on the active site: it reads a sample and writes only statistics")
        made = f"{UNKNOWN_PARENT_ROWS} rows made for the tables referencing it" if referenced else "left empty"
        notes.append(f"{name}: no statistics on the active site; {made}")
        return UNKNOWN_PARENT_ROWS if referenced else 0
    scaled = round(stats.rows * fraction)
    # a small table others reference (a lookup table) keeps its rows: the values it offers
    return max(scaled, min(round(stats.rows), SMALL_TABLE)) if referenced and not plan else scaled


def _month_starts(lo: dt.date, hi: dt.date) -> list[dt.date]:
    out, d = [], dt.date(lo.year, lo.month, 1)
    while d <= hi:
        out.append(d)
        d = dt.date(d.year + d.month // 12, d.month % 12 + 1, 1)
    return out


def monthly_comparison(conn: psycopg.Connection[Any], table: QualifiedName, column: str,
                       dist: Distribution) -> list[dict[str, Any]]:
    """Per month: the share of the column's non-NULL values the active site's statistics give
    and the share the rehearsal has (both in UTC months)."""
    kind = dist.kind
    if not isinstance(kind, DateKind | TimestampKind) or not dist.described:
        return []
    rows = conn.execute(sql.SQL("SELECT date_trunc('month', {c})::date, count(*) FROM {t} WHERE {c} IS NOT NULL"
                                " GROUP BY 1 ORDER BY 1").format(c=sql.Identifier(column), t=table.ident())).fetchall()
    total = sum(r[1] for r in rows) or 1
    have = {r[0]: r[1] / total for r in rows}
    if not have:
        return []

    def at(d: dt.date) -> Any:
        if isinstance(kind, DateKind):
            return d
        t = dt.datetime(d.year, d.month, d.day)
        return t.replace(tzinfo=dt.UTC) if kind.with_zone else t

    out = []
    for m in _month_starts(min(have), max(have)):
        nxt = _month_starts(m, m + dt.timedelta(days=31))[-1]
        share = (dist.cdf(at(nxt)) or 0.0) - (dist.cdf(at(m)) or 0.0)
        out.append({"month": m.isoformat()[:7], "statistics_share": round(share, 5),
                    "rehearsal_share": round(have.get(m, 0.0), 5)})
    return out


@dataclass(frozen=True)
class _Tables:
    order: list[QualifiedName]
    shapes: dict[QualifiedName, TableShape]
    stats: dict[QualifiedName, TableStats]
    counts: dict[QualifiedName, int]
    dates: dict[QualifiedName, str]
    deferred: dict[QualifiedName, set[str]]

    def parent(self, conn: psycopg.Connection[Any], fk: ForeignKey) -> ParentKeys:
        """The parent's keys as loaded, with the distribution of its first key column on the
        active site (to place a child's value at its rank)."""
        col = self.shapes[fk.parent].column(fk.parent_columns[0])
        col_stats = self.stats[fk.parent].columns.get(fk.parent_columns[0])
        first = Distribution(with_width(col.kind, col_stats), col_stats) if col_stats else None
        return parent_keys(conn, fk.parent, fk.parent_columns, first)


def _fill(conn: psycopg.Connection[Any], t: _Tables, rng: random.Random
          ) -> tuple[dict[QualifiedName, LoadResult], dict[QualifiedName, list[str]]]:
    """Every table loaded, parents first; then the foreign keys left for after the load."""
    generators: dict[QualifiedName, TableGenerator] = {}
    results: dict[QualifiedName, LoadResult] = {}
    notes: dict[QualifiedName, list[str]] = {}
    for name in t.order:
        shape = t.shapes[name]
        parents = {fk.name: t.parent(conn, fk) for fk in shape.foreign_keys
                   if fk.name not in t.deferred[name] and fk.parent != name}
        gen = TableGenerator(shape, t.stats[name], t.counts[name], date_column=t.dates.get(name), parents=parents,
                             deferred=sorted(t.deferred[name]), rng=rng)
        rows = gen.rows()
        generators[name] = gen
        results[name] = load_table(conn, gen, rows)
        notes[name] = rows.notes
    for name in t.order:
        for fk in t.shapes[name].foreign_keys:
            if fk.name in t.deferred[name]:
                filled = fill_after_load(conn, generators[name], fk, t.parent(conn, fk))
                notes[name].append(f"{fk.name} set after the load on {filled} row(s)")
    return results, notes


def _refresh(conn: psycopg.Connection[Any], populated: list[tuple[str, str]]) -> list[str]:
    """Materialized views populated on the active site, refreshed over the rehearsal's rows
    (a schema dump leaves them empty)."""
    done = []
    for schema, view in populated:
        name = QualifiedName(schema, view)
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (str(name),)).fetchone()
        if exists and exists[0]:
            conn.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(name.ident()))
            done.append(str(name))
    return done


def prepare(source_dsn: str, target_dsn: str, tables: list[PlanTable], *, scale: Scale, server: PgBin,
            schema_file: Path | None = None, pg_bin: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Clone the schema, fill the tables, and return the rehearsal's record (see the module
    docstring). `server`: the rehearsal's binaries (for psql and pg_restore)."""
    started = time.monotonic()
    rng = random.Random(seed)
    with connect(source_dsn, settings={"statement_timeout": "60s"}) as src:
        facts = source_facts(src)
        record: dict[str, Any] = {"source": redact(source_dsn), "source_version": facts["server_version"],
                                  "rehearsal_version": server.version, "seed": seed}
        record.update(clone_schema(source_dsn, target_dsn, facts, server=server, schema_file=schema_file,
                                   pg_bin=pg_bin))
        with connect(target_dsn) as tgt:
            plan_names = [t.name for t in tables]
            try:
                names = related_tables(tgt, plan_names)
            except InputError as exc:
                if record.get("schema_errors"):
                    raise InputError(f"{exc.problem}; the schema loaded with errors: "
                                     + "; ".join(record["schema_errors"][:5]), exc.fix) from None
                raise
            shapes = table_shapes(tgt, names)
            stats = {t: table_stats(src, t) for t in names}
    dates = {t.name: t.date_column for t in tables}
    for t in tables:
        s = stats[t.name].columns.get(t.date_column)
        if s is None or not (s.histogram_bounds or s.most_common_vals):
            raise InputError(f"the date column {t.date_column} of {t.name} has no statistics on the active site",
                             f"run ANALYZE {t.name} on the active site: the rehearsal's dates follow its statistics")
    largest = max((stats[t].rows or 0.0) for t in plan_names)
    fraction = scale.fraction_of(largest)
    order, deferred = load_order(shapes)
    referenced = {fk.parent for s in shapes.values() for fk in s.foreign_keys}
    notes: list[str] = []
    counts = {t: _rows_for(stats[t], fraction, t in dates, t in referenced, t, notes) for t in order}
    record.update(scale={"fraction": fraction, "largest_plan_table_rows": largest,
                         "rows": scale.rows, "requested_fraction": scale.fraction})
    with connect(target_dsn) as tgt:
        results, table_notes = _fill(tgt, _Tables(order, shapes, stats, counts, dates, deferred), rng)
        sequences = {str(name): continue_sequences(tgt, shapes[name]) for name in order}
        tgt.execute("ANALYZE")
        refreshed = _refresh(tgt, facts["populated_matviews"])
        distributions = {}
        for t in tables:
            col = shapes[t.name].column(t.date_column)
            col_stats = stats[t.name].columns.get(t.date_column)
            distributions[str(t.name)] = monthly_comparison(
                tgt, t.name, t.date_column, Distribution(with_width(col.kind, col_stats), col_stats))
    record["tables"] = {}
    for name in order:
        r, source_rows = results[name], stats[name].rows
        record["tables"][str(name)] = {
            "plan_table": name in dates, "date_column": dates.get(name), "source_rows": source_rows,
            "rows": r.rows, "factor": round(source_rows / r.rows, 3) if source_rows and r.rows else None,
            "redrawn": r.redrawn, "left_out": dict(r.left_out), "notes": table_notes[name],
            "foreign_keys_after_load": sorted(deferred[name]), "sequences": sequences[str(name)],
            "statistics": stats[name].as_dict()["columns"]}
    record.update(load_order=[str(t) for t in order], notes=notes, matviews_refreshed=refreshed,
                  monthly=distributions, settings=facts["settings"], seconds=round(time.monotonic() - started, 2))
    return record
