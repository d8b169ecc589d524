"""What the rehearsal needs to know about its tables, and what it may read of the active site.

The structure (columns, types, keys, foreign keys, CHECKs) is read from the rehearsal
database after the schema is loaded: rows are made for the tables as they exist there, which
is the active site's schema or the plan's schema file. From the active site only statistics
are read — `pg_class.reltuples` and `pg_stats` — never a row of a table.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..errors import InputError
from ..pg.names import QualifiedName
from .distribution import ColumnStats
from .kinds import Kind, kind_for


@dataclass(frozen=True)
class Column:
    name: str
    attnum: int
    type_name: str  # format_type(): for messages
    kind: Kind
    not_null: bool
    has_default: bool
    identity: str  # 'a' (ALWAYS), 'd' (BY DEFAULT) or ''
    generated: bool
    sequence: bool  # identity, or a default taking nextval() of a sequence
    domain_checks: tuple[str, ...] = ()  # CHECK expressions of its domains (VALUE is the column)


@dataclass(frozen=True)
class ForeignKey:
    name: str
    columns: tuple[str, ...]
    parent: QualifiedName
    parent_columns: tuple[str, ...]


@dataclass(frozen=True)
class Check:
    name: str
    expression: str
    columns: tuple[str, ...]


@dataclass
class TableShape:
    """A table of the rehearsal database as rows must be made for it."""

    name: QualifiedName
    oid: int
    columns: list[Column]
    unique_keys: list[tuple[str, ...]] = field(default_factory=list)  # plain columns, no predicate
    constraint_columns: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> columns
    foreign_keys: list[ForeignKey] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


# -- the rehearsal database ----------------------------------------------------------------
def table_oid(conn: psycopg.Connection[Any], table: QualifiedName) -> int | None:
    row = conn.execute("SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                       " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
                       (table.schema, table.name)).fetchone()
    return int(row[0]) if row else None


def _name_of(conn: psycopg.Connection[Any], oid: int) -> QualifiedName:
    row = conn.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                       " WHERE c.oid = %s", (oid,)).fetchone()
    assert row is not None
    return QualifiedName(row[0], row[1])


def related_tables(conn: psycopg.Connection[Any], tables: list[QualifiedName]) -> list[QualifiedName]:
    """The plan's tables, the tables whose foreign keys reference them, and every table these
    reference (transitively): all that must hold rows for the plan's tables to be complete."""
    oids: list[int] = []
    for t in tables:
        oid = table_oid(conn, t)
        if oid is None:
            raise InputError(f"table {t} of the plan is not in the rehearsal's schema",
                             "check the plan's table names, or the schema file the plan names")
        oids.append(oid)
    children = [r[0] for r in conn.execute(
        "SELECT DISTINCT conrelid FROM pg_constraint WHERE contype = 'f' AND conparentid = 0"
        " AND confrelid = ANY(%s) AND conrelid <> ALL(%s)", (oids, oids))]
    found = list(dict.fromkeys(oids + children))
    frontier = found
    while frontier:
        parents = [r[0] for r in conn.execute(
            "SELECT DISTINCT confrelid FROM pg_constraint WHERE contype = 'f' AND conparentid = 0"
            " AND conrelid = ANY(%s)", (frontier,))]
        frontier = [p for p in parents if p not in found]
        found += frontier
    return [_name_of(conn, o) for o in found]


_COLUMNS = """
SELECT a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity,
       a.attgenerated <> '', d.oid IS NOT NULL, a.atttypid, a.atttypmod,
       EXISTS (SELECT 1 FROM pg_depend dep JOIN pg_class s ON s.oid = dep.refobjid AND s.relkind = 'S'
                WHERE dep.classid = 'pg_attrdef'::regclass AND dep.objid = d.oid)
  FROM pg_attribute a
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum
"""

_UNIQUE = """
SELECT ic.relname, i.indpred IS NULL AND i.indexprs IS NULL,
       array(SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE k.ord <= i.indnkeyatts ORDER BY k.ord)
  FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
 WHERE i.indrelid = %s AND i.indisunique
"""

_FKS = """
SELECT c.conname, n.nspname, p.relname,
       array(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum ORDER BY k.ord),
       array(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum ORDER BY k.ord)
  FROM pg_constraint c JOIN pg_class p ON p.oid = c.confrelid JOIN pg_namespace n ON n.oid = p.relnamespace
 WHERE c.conrelid = %s AND c.contype = 'f' AND c.conparentid = 0
 ORDER BY c.conname
"""

_CHECKS = """
SELECT c.conname, pg_get_expr(c.conbin, c.conrelid),
       array(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum ORDER BY k.ord)
  FROM pg_constraint c WHERE c.conrelid = %s AND c.contype = 'c' ORDER BY c.conname
"""


@dataclass
class _TypeReader:
    conn: psycopg.Connection[Any]
    cache: dict[tuple[int, int], tuple[Kind, bool, tuple[str, ...]]] = field(default_factory=dict)

    def kind(self, oid: int, typmod: int) -> tuple[Kind, bool, tuple[str, ...]]:
        """(kind, a domain forbids NULL, the domains' CHECK expressions) of a column type."""
        if (oid, typmod) in self.cache:
            return self.cache[(oid, typmod)]
        not_null, checks = False, []
        while True:
            row = self.conn.execute("SELECT typname, typtype, typcategory, typelem, typbasetype, typtypmod,"
                                    " typnotnull FROM pg_type WHERE oid = %s", (oid,)).fetchone()
            assert row is not None
            typname, typtype, category, elem, base, base_mod, domain_not_null = row
            if typtype != "d":
                break
            not_null = not_null or bool(domain_not_null)
            checks += [r[0] for r in self.conn.execute(
                "SELECT pg_get_expr(conbin, 0) FROM pg_constraint WHERE contypid = %s AND contype = 'c'", (oid,))]
            oid, typmod = int(base), int(base_mod)
        labels: tuple[str, ...] = ()
        if typtype == "e":
            labels = tuple(r[0] for r in self.conn.execute(
                "SELECT enumlabel FROM pg_enum WHERE enumtypid = %s ORDER BY enumsortorder", (oid,)))
        element = self.kind(int(elem), -1)[0] if category == "A" and elem else None
        result = (kind_for(typname, typmod, category, enum_labels=labels, element=element), not_null, tuple(checks))
        self.cache[(oid, typmod)] = result
        return result


def table_shape(conn: psycopg.Connection[Any], table: QualifiedName, types: _TypeReader | None = None) -> TableShape:
    """The structure of `table` in the rehearsal database."""
    oid = table_oid(conn, table)
    if oid is None:
        raise InputError(f"table {table} is not in the rehearsal's schema", "check the schema that was loaded")
    types = types or _TypeReader(conn)
    columns = []
    for attnum, name, type_name, not_null, identity, generated, has_default, typid, typmod, seq in \
            conn.execute(_COLUMNS, (oid,)).fetchall():
        kind, domain_not_null, domain_checks = types.kind(int(typid), int(typmod))
        columns.append(Column(name, int(attnum), type_name, kind, bool(not_null or domain_not_null),
                              bool(has_default), identity or "", bool(generated), bool(identity) or bool(seq),
                              domain_checks))
    shape = TableShape(table, oid, columns)
    for name, plain, cols in conn.execute(_UNIQUE, (oid,)).fetchall():
        shape.constraint_columns[name] = tuple(cols)
        if plain and cols:
            shape.unique_keys.append(tuple(cols))
    for name, schema, rel, cols, pcols in conn.execute(_FKS, (oid,)).fetchall():
        shape.foreign_keys.append(ForeignKey(name, tuple(cols), QualifiedName(schema, rel), tuple(pcols)))
        shape.constraint_columns[name] = tuple(cols)
    for name, expression, cols in conn.execute(_CHECKS, (oid,)).fetchall():
        shape.checks.append(Check(name, expression, tuple(cols)))
        shape.constraint_columns[name] = tuple(cols)
    return shape


def table_shapes(conn: psycopg.Connection[Any], tables: list[QualifiedName]) -> dict[QualifiedName, TableShape]:
    types = _TypeReader(conn)
    return {t: table_shape(conn, t, types) for t in tables}


# -- the active site: statistics only --------------------------------------------------------
@dataclass(frozen=True)
class TableStats:
    """What the active site's statistics say about one table."""

    rows: float | None  # pg_class.reltuples (None: never analyzed or vacuumed, or not there)
    columns: dict[str, ColumnStats]
    analyzed: bool

    def as_dict(self) -> dict[str, Any]:
        return {"reltuples": self.rows, "analyzed": self.analyzed,
                "columns": {k: v.as_dict() for k, v in self.columns.items()}}


_STATS = """
SELECT attname, null_frac, avg_width, n_distinct, most_common_vals::text::text[], most_common_freqs,
       histogram_bounds::text::text[], correlation
  FROM pg_stats WHERE schemaname = %s AND tablename = %s AND inherited = %s
"""


def _texts(values: Any) -> tuple[str, ...]:
    if not values or any(not isinstance(v, str) for v in values):
        return ()  # nested (an array column's values): not used
    return tuple(values)


def table_stats(conn: psycopg.Connection[Any], table: QualifiedName) -> TableStats:
    """reltuples and pg_stats of `table` on the active site (no row is read)."""
    row = conn.execute("SELECT c.oid, c.relkind, c.reltuples FROM pg_class c JOIN pg_namespace n"
                       " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                       (table.schema, table.name)).fetchone()
    if row is None:
        return TableStats(None, {}, False)
    oid, relkind, reltuples = row
    if relkind == "p":  # a partitioned table has no rows of its own: its leaves do
        total = conn.execute("SELECT sum(c.reltuples) FILTER (WHERE c.reltuples >= 0), bool_and(c.reltuples >= 0)"
                             " FROM pg_partition_tree(%s) t JOIN pg_class c ON c.oid = t.relid WHERE t.isleaf",
                             (oid,)).fetchone()
        reltuples = total[0] if total and total[1] else -1
    columns = {}
    for name, null_frac, width, n_distinct, mcv, mcf, hist, corr in conn.execute(
            _STATS, (table.schema, table.name, relkind == "p")).fetchall():
        columns[name] = ColumnStats(float(null_frac or 0), float(n_distinct or 0), _texts(mcv),
                                    tuple(float(f) for f in mcf or ())[: len(_texts(mcv))], _texts(hist),
                                    None if corr is None else float(corr), int(width) if width else None)
    rows = float(reltuples) if reltuples is not None and float(reltuples) >= 0 else None
    return TableStats(rows, columns, bool(columns))


def with_width(kind: Kind, stats: ColumnStats | None) -> Kind:
    """The kind with the average width the statistics give (for text made without values)."""
    if stats and stats.avg_width and hasattr(kind, "width") and dataclasses.is_dataclass(kind):
        return dataclasses.replace(kind, width=max(int(stats.avg_width), 2))
    return kind
