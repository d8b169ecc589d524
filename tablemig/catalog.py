"""Read-only catalog introspection of the table to migrate and everything that depends on it.

Every query runs with `search_path` emptied (see `catalog_session`), so the definitions
PostgreSQL prints (`pg_get_indexdef`, `pg_get_viewdef`, ...) always schema-qualify names and
can be rewritten to point at another table reliably.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from .errors import InputError
from .names import QualifiedName

DATE_TYPES = ("date", "timestamp without time zone", "timestamp with time zone")


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    not_null: bool
    generated: bool  # GENERATED ALWAYS AS (...) STORED: never written
    identity: str  # '', 'a' (ALWAYS) or 'd' (BY DEFAULT)
    default: str | None


@dataclass(frozen=True)
class Index:
    oid: int
    name: str
    definition: str
    is_key: bool
    constraint: str | None  # constraint name when the index backs a PK/UNIQUE/EXCLUDE
    constraint_type: str | None
    valid: bool
    quoted_name: str  # as pg_get_indexdef prints it

    def body(self, table_quoted: str) -> tuple[str, str]:
        """Split the definition into ("CREATE [UNIQUE] ", "USING ... (...) ...") around
        the index and table names, so it can be re-issued for another table."""
        anchor = f"INDEX {self.quoted_name} ON {table_quoted} "
        head, sep, rest = self.definition.partition(anchor)
        if not sep or head not in ("CREATE ", "CREATE UNIQUE "):
            raise InputError(f"cannot parse the definition of index {self.name}: "
                             f"{self.definition}", "report this index definition")
        return head, rest


@dataclass(frozen=True)
class ForeignKey:
    name: str
    table: QualifiedName  # the referencing (child) table
    definition: str  # pg_get_constraintdef text
    validated: bool


@dataclass(frozen=True)
class DependentView:
    oid: int
    name: QualifiedName
    kind: str  # 'v' view, 'm' materialized view
    definition: str
    options: list[str]
    indexes: list[str]
    acl: list[tuple[str, str, bool]]
    owner: str


@dataclass(frozen=True)
class TriggerDef:
    name: str
    definition: str
    enabled: str


@dataclass
class TableInfo:
    name: QualifiedName
    oid: int
    relkind: str
    quoted: str  # schema.table as the catalog prints it (quote_ident)
    owner: str
    persistence: str
    columns: list[Column]
    key_columns: list[str]
    key_index: str
    indexes: list[Index]
    check_constraints: list[tuple[str, str]]
    outgoing_fks: list[tuple[str, str, bool]]
    incoming_fks: list[ForeignKey]
    views: list[DependentView]
    triggers: list[TriggerDef]
    acl: list[tuple[str, str, bool]]
    policies: list[dict[str, Any]]
    rls: tuple[bool, bool]
    publications: list[str]
    sequences: list[tuple[str, str, str]]  # (column, sequence, 'serial' | 'identity')
    comment: str | None
    reloptions: list[str]
    replica_identity: str
    statistics: list[str]
    bound_functions: list[str]
    inherits: bool
    has_children: bool
    total_bytes: int
    table_bytes: int
    estimated_rows: int
    extra: dict[str, Any] = field(default_factory=dict)

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    @property
    def writable_columns(self) -> list[Column]:
        return [c for c in self.columns if not c.generated]


@contextmanager
def catalog_session(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Cursor[Any]]:
    """A cursor with an empty search_path, so catalog output is fully qualified."""
    previous = conn.execute("SELECT current_setting('search_path')").fetchone()
    conn.execute("SELECT set_config('search_path', '', false)")
    try:
        yield conn.cursor(row_factory=dict_row)
    finally:
        conn.execute("SELECT set_config('search_path', %s, false)",
                     (previous[0] if previous else "public",))


def resolve(conn: psycopg.Connection[Any], name: QualifiedName) -> int:
    """The table's OID, or an InputError saying what the name is instead."""
    row = conn.execute(
        "SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s", (name.schema, name.name)).fetchone()
    if row is None:
        schema = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                              (name.schema,)).fetchone()
        if schema is None:
            raise InputError(f"schema {name.schema!r} does not exist (table {name})",
                             "check the schema name; quote mixed-case names: \"Sales\".\"Invoice\"")
        raise InputError(f"table {name} does not exist",
                         "check the name (unquoted names fold to lower case; "
                         "quote mixed-case names)")
    kinds = {"v": "a view", "m": "a materialized view", "f": "a foreign table",
             "S": "a sequence", "i": "an index", "c": "a composite type", "I": "an index",
             "t": "a TOAST table"}
    if row[1] == "p":
        raise InputError(
            f"{name} is a partitioned table: refused",
            "partitioned tables are shrunk by detaching or dropping old partitions "
            "(ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY), not by the rename strategy")
    if row[1] != "r":
        raise InputError(f"{name} is {kinds.get(row[1], 'not a table')}, not a table",
                         "give the ordinary table that holds the rows")
    inh = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = %s OR inhparent = %s)",
                       (row[0], row[0])).fetchone()
    if inh and inh[0]:
        raise InputError(f"{name} takes part in table inheritance: refused",
                         "the rename strategy would separate parent and children; migrate each "
                         "child table on its own after detaching it (ALTER TABLE ... NO INHERIT)")
    return int(row[0])


def _rows(cur: psycopg.Cursor[Any], query: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    cur.execute(query, params)
    return list(cur.fetchall())


def _acl(cur: psycopg.Cursor[Any], acl_expr: str, oid: int) -> list[tuple[str, str, bool]]:
    rows = _rows(cur, f"""
        SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END AS grantee,
               a.privilege_type, a.is_grantable
          FROM pg_class c, aclexplode({acl_expr}) a
         WHERE c.oid = %s AND a.grantee <> c.relowner
         ORDER BY 1, 2""", (oid,))  # noqa: S608 - acl_expr is a constant column name
    return [(r["grantee"], r["privilege_type"], r["is_grantable"]) for r in rows]


def inspect_table(conn: psycopg.Connection[Any], name: QualifiedName,
                  key_override: list[str] | None = None) -> TableInfo:
    """Everything the planner needs to know about `name`, read in one snapshot."""
    oid = resolve(conn, name)
    with catalog_session(conn) as cur:
        base = _rows(cur, """
            SELECT c.relkind, pg_get_userbyid(c.relowner) AS owner, c.relpersistence,
                   c.relrowsecurity, c.relforcerowsecurity, c.relreplident,
                   coalesce(c.reloptions, '{}') AS reloptions, obj_description(c.oid, 'pg_class') AS comment,
                   c.relhassubclass, EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = c.oid) AS inherits,
                   pg_total_relation_size(c.oid) AS total_bytes, pg_table_size(c.oid) AS table_bytes,
                   greatest(c.reltuples, 0)::bigint AS estimated_rows,
                   quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS quoted
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s""", (oid,))[0]
        cols = _rows(cur, """
            SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,
                   a.attgenerated <> '' AS generated, a.attidentity,
                   pg_get_expr(d.adbin, d.adrelid) AS default
              FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""", (oid,))
        columns = [Column(r["attname"], r["type"], r["attnotnull"], r["generated"],
                          r["attidentity"], r["default"]) for r in cols]
        idx = _rows(cur, """
            SELECT i.indexrelid AS oid, ic.relname AS name, pg_get_indexdef(i.indexrelid) AS def,
                   quote_ident(ic.relname) AS qname,
                   i.indisprimary, i.indisunique, i.indisvalid, i.indpred IS NULL AS full_index,
                   i.indexprs IS NULL AS plain, con.conname, con.contype,
                   (SELECT array_agg(a.attname ORDER BY k.ord) FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
                      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum) AS cols,
                   (SELECT bool_and(a.attnotnull) FROM unnest(i.indkey) k(attnum)
                      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum) AS all_not_null
              FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
              LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
             WHERE i.indrelid = %s ORDER BY i.indisprimary DESC, ic.relname""", (oid,))
        key_cols, key_index = _choose_key(name, idx, key_override)
        indexes = [Index(r["oid"], r["name"], r["def"], r["name"] == key_index, r["conname"],
                         r["contype"], r["indisvalid"], r["qname"]) for r in idx]
        checks = _rows(cur, """SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
                                WHERE conrelid = %s AND contype = 'c' ORDER BY conname""", (oid,))
        fk_out = _rows(cur, """SELECT conname, pg_get_constraintdef(oid) AS def, convalidated
                                 FROM pg_constraint WHERE conrelid = %s AND contype = 'f'
                                ORDER BY conname""", (oid,))
        fk_in = _rows(cur, """
            SELECT con.conname, n.nspname, c.relname, pg_get_constraintdef(con.oid) AS def, con.convalidated
              FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
              JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE con.confrelid = %s AND con.contype = 'f' AND con.conrelid <> con.confrelid
             ORDER BY n.nspname, c.relname, con.conname""", (oid,))
        views = _dependent_views(cur, oid)
        trig = _rows(cur, """SELECT tgname, pg_get_triggerdef(oid) AS def, tgenabled FROM pg_trigger
                              WHERE tgrelid = %s AND NOT tgisinternal
                                AND tgname NOT LIKE 'tablemig\\_%%' ORDER BY tgname""", (oid,))
        pols = _rows(cur, """
            SELECT p.polname AS name, p.polpermissive AS permissive, p.polcmd AS cmd,
                   pg_get_expr(p.polqual, p.polrelid) AS qual, pg_get_expr(p.polwithcheck, p.polrelid) AS check,
                   ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(r) END
                           FROM unnest(p.polroles) r) AS roles
              FROM pg_policy p WHERE p.polrelid = %s ORDER BY p.polname""", (oid,))
        pubs = _rows(cur, """SELECT p.pubname FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                              WHERE pr.prrelid = %s ORDER BY 1""", (oid,))
        seqs = _rows(cur, """
            SELECT a.attname, s.oid::regclass::text AS seq, d.deptype
              FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
              JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
             WHERE d.classid = 'pg_class'::regclass AND d.refobjid = %s AND d.deptype IN ('a', 'i')
             ORDER BY a.attnum""", (oid,))
        stats = _rows(cur, "SELECT pg_get_statisticsobjdef(oid) AS def FROM pg_statistic_ext"
                           " WHERE stxrelid = %s", (oid,))
        bound = _rows(cur, """
            SELECT DISTINCT p.oid::regprocedure::text AS fn FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
             WHERE d.classid = 'pg_proc'::regclass AND d.refobjid = %s
               AND d.refclassid = 'pg_class'::regclass""", (oid,))
        acl = _acl(cur, "c.relacl", oid)
    return TableInfo(
        name=name, oid=oid, relkind=base["relkind"], quoted=base["quoted"], owner=base["owner"],
        persistence=base["relpersistence"], columns=columns, key_columns=key_cols,
        key_index=key_index, indexes=indexes,
        check_constraints=[(r["conname"], r["def"]) for r in checks],
        outgoing_fks=[(r["conname"], r["def"], r["convalidated"]) for r in fk_out],
        incoming_fks=[ForeignKey(r["conname"], QualifiedName(r["nspname"], r["relname"]), r["def"],
                                 r["convalidated"]) for r in fk_in],
        views=views,
        triggers=[TriggerDef(r["tgname"], r["def"], r["tgenabled"]) for r in trig],
        acl=acl, policies=pols, rls=(base["relrowsecurity"], base["relforcerowsecurity"]),
        publications=[r["pubname"] for r in pubs],
        sequences=[(r["attname"], r["seq"], "identity" if r["deptype"] == "i" else "serial")
                   for r in seqs],
        comment=base["comment"], reloptions=list(base["reloptions"]),
        replica_identity=base["relreplident"], statistics=[r["def"] for r in stats],
        bound_functions=[r["fn"] for r in bound], inherits=base["inherits"],
        has_children=base["relhassubclass"], total_bytes=base["total_bytes"],
        table_bytes=base["table_bytes"], estimated_rows=base["estimated_rows"],
    )


def _choose_key(name: QualifiedName, idx: list[dict[str, Any]],
                override: list[str] | None) -> tuple[list[str], str]:
    candidates = [r for r in idx if r["indisunique"] and r["indisvalid"] and r["full_index"]
                  and r["plain"] and r["all_not_null"]]
    if override:
        for r in candidates:
            if list(r["cols"]) == override:
                return override, r["name"]
        raise InputError(f"declared key ({', '.join(override)}) of {name} is not backed by a "
                         "valid unique index on NOT NULL columns",
                         "create such an index (CONCURRENTLY) or declare another key")
    for r in candidates:  # primary key first (ORDER BY indisprimary DESC)
        return list(r["cols"]), r["name"]
    raise InputError(
        f"{name} has no primary key and no unique index on NOT NULL columns: rows cannot be "
        "matched between the original and the new table",
        f"add a primary key (ALTER TABLE {name} ADD PRIMARY KEY USING INDEX ... after "
        "CREATE UNIQUE INDEX CONCURRENTLY) or declare a key column set")


def _dependent_views(cur: psycopg.Cursor[Any], oid: int) -> list[DependentView]:
    rows = _rows(cur, """
        SELECT DISTINCT v.oid, n.nspname, v.relname, v.relkind,
               pg_get_viewdef(v.oid) AS def, coalesce(v.reloptions, '{}') AS options,
               pg_get_userbyid(v.relowner) AS owner
          FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
          JOIN pg_class v ON v.oid = r.ev_class JOIN pg_namespace n ON n.oid = v.relnamespace
         WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = %s AND v.oid <> %s
         ORDER BY v.oid""", (oid, oid))
    out = []
    for r in rows:
        idx = _rows(cur, "SELECT pg_get_indexdef(indexrelid) AS def FROM pg_index WHERE indrelid = %s",
                    (r["oid"],))
        out.append(DependentView(r["oid"], QualifiedName(r["nspname"], r["relname"]), r["relkind"],
                                 r["def"], list(r["options"]), [i["def"] for i in idx],
                                 _acl(cur, "c.relacl", r["oid"]), r["owner"]))
    return out
