"""Read-only catalog introspection of the table to migrate and everything that depends on it.

Every query runs with `search_path` emptied (see `_inspect_row`), so the definitions
PostgreSQL prints (`pg_get_indexdef`, `pg_get_viewdef`, ...) always schema-qualify names and
can be rewritten to point at another table reliably.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..errors import InputError
from .names import QualifiedName
from .schema import SCHEMA
from .statements import Statements, statements

# The triggers tablemig itself puts on a table (named in tablemig.lifecycle.objects) are told
# from the user's by their function living in tablemig's own schema: a user trigger that
# merely shares a name or the prefix is the user's and is carried over.
TOOL_SCHEMA = SCHEMA


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    not_null: bool
    generated: bool  # GENERATED ALWAYS AS (...) STORED: never written
    identity: str  # '', 'a' (ALWAYS) or 'd' (BY DEFAULT)
    default: str | None
    statistics: int | None = None  # ALTER COLUMN ... SET STATISTICS (None: the default)
    options: tuple[str, ...] = ()  # attribute options such as n_distinct=-0.5
    comment: str | None = None
    collation: str | None = None
    storage: str = ""
    compression: str = ""


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
    columns: tuple[str, ...] = ()  # plain key columns (empty for an expression index)
    unique: bool = False
    immediate: bool = True  # False: a deferrable constraint's index (never an ON CONFLICT arbiter)
    arbiter_shape: bool = False  # no expression, no predicate: ON CONFLICT (columns) would infer it
    deferrable: bool = False  # of the constraint it backs
    deferred: bool = False  # INITIALLY DEFERRED
    clustered: bool = False  # CLUSTER ON
    replica_identity: bool = False  # REPLICA IDENTITY USING INDEX
    comment: str | None = None
    constraint_comment: str | None = None
    tablespace: str | None = None  # None: the database's default

    def body(self, table_quoted: str) -> tuple[str, str]:
        """Split the definition into ("CREATE [UNIQUE] ", "USING ... (...) ...") around
        the index and table names, so it can be re-issued for another table."""
        anchor = f"INDEX {self.quoted_name} ON {table_quoted} "
        # a partitioned table's index prints ON ONLY: re-issued without, it is built on
        # every partition too
        definition = self.definition.replace(f" ON ONLY {table_quoted} ", f" ON {table_quoted} ", 1)
        head, sep, rest = definition.partition(anchor)
        if not sep or head not in ("CREATE ", "CREATE UNIQUE "):
            raise InputError(f"cannot parse the definition of index {self.name}: "
                             f"{self.definition}", "report this index definition")
        return head, rest


@dataclass(frozen=True)
class Constraint:
    """A CHECK or FOREIGN KEY constraint of the table (index-backed ones are `Index`es)."""

    name: str
    type: str  # 'c' or 'f'
    definition: str
    validated: bool
    comment: str | None


@dataclass(frozen=True)
class Rule:
    """A rewrite rule on the table (CREATE RULE ... TO table); `enabled` as pg_rewrite.ev_enabled."""

    name: str
    definition: str  # pg_get_ruledef: names schema-qualified, ends with ';'
    enabled: str
    comment: str | None = None


@dataclass(frozen=True)
class PublicationRel:
    """The table's membership of one publication, with its row filter and column list."""

    name: str
    row_filter: str | None  # the WHERE expression as PostgreSQL prints it (PostgreSQL 15+)
    columns: tuple[str, ...] | None  # the column list; None: every column


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
    comment: str | None = None
    column_comments: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RuleElsewhere:
    """A rule on another relation (table or view) whose action or condition names the
    table: bound by OID, so the swap re-creates it (tablemig.lifecycle.exchange)."""

    name: str
    relation: QualifiedName
    kind: str  # the relation's relkind
    definition: str  # pg_get_ruledef, schema-qualified


@dataclass(frozen=True)
class TriggerDef:
    name: str
    definition: str
    enabled: str
    quoted: str  # the name as pg_get_triggerdef prints it (quote_ident)
    comment: str | None = None


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
    # column privileges (pg_attribute.attacl): (grantee, privilege, grantable, columns)
    column_acl: list[tuple[str, str, bool, list[str]]] = field(default_factory=list)
    # of bound_functions, those with a SQL-standard body (BEGIN ATOMIC) that the swap rebuilds
    # against the table now under the name: (signature, CREATE OR REPLACE text). A function
    # whose arguments or result are the table's row type is not among them (refused)
    atomic_functions: list[tuple[str, str]] = field(default_factory=list)
    constraints: list[Constraint] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    publication_rels: list[PublicationRel] = field(default_factory=list)
    # extended statistics without their own names ("(ndistinct) ON a, b FROM s.t")
    statistics_bodies: list[str] = field(default_factory=list)
    access_method: str | None = None
    tablespace: str | None = None  # None: the database's default
    # foreign keys of the table referencing the table itself (not in outgoing_fks)
    self_fks: list[ForeignKey] = field(default_factory=list)
    rules_elsewhere: list[RuleElsewhere] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    @property
    def writable_columns(self) -> list[Column]:
        return [c for c in self.columns if not c.generated]

    @property
    def written_columns(self) -> list[str]:
        """The names of the columns an INSERT of a copy writes (no generated ones)."""
        return [c.name for c in self.writable_columns]

    @property
    def identity_always(self) -> bool:
        """An identity column GENERATED ALWAYS: a copy's INSERT needs OVERRIDING SYSTEM VALUE."""
        return any(c.identity == "a" for c in self.writable_columns)


def resolve(conn: psycopg.Connection[Any] | Statements, name: QualifiedName) -> int:
    """The table's OID, or an InputError saying what the name is instead."""
    return _resolve(statements(conn), name)[0]


def _resolve(st: Statements, name: QualifiedName, partitioned: bool = False) -> tuple[int, bool]:
    """resolve(), and whether this session has the inspection prepared already.
    `partitioned`: a partitioned table is accepted (a `follow` child, tablemig.lifecycle.follow)."""
    row = st.read(
        "SELECT c.oid, c.relkind,"
        " EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = c.oid OR (inhparent = c.oid AND c.relkind <> 'p')),"
        " EXISTS (SELECT 1 FROM pg_prepared_statements WHERE name = %s)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s", (_INSPECT_NAME, name.schema, name.name)).fetchone()
    if row is None:
        schema = st.read("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name.schema,)).fetchone()
        if schema is None:
            raise InputError(f"schema {name.schema!r} does not exist (table {name})",
                             "check the schema name; quote mixed-case names: \"Sales\".\"Invoice\"")
        raise InputError(f"table {name} does not exist",
                         "check the name (unquoted names fold to lower case; "
                         "quote mixed-case names)")
    kinds = {"v": "a view", "m": "a materialized view", "f": "a foreign table",
             "S": "a sequence", "i": "an index", "c": "a composite type", "I": "an index",
             "t": "a TOAST table"}
    if row[1] == "p" and not partitioned:
        raise InputError(
            f"{name} is a partitioned table: refused",
            "partitioned tables are shrunk by detaching or dropping old partitions "
            "(ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY), not by the rename strategy")
    if row[1] not in ("r", "p"):
        raise InputError(f"{name} is {kinds.get(row[1], 'not a table')}, not a table",
                         "give the ordinary table that holds the rows")
    if row[2]:
        raise InputError(f"{name} takes part in table inheritance: refused",
                         "the rename strategy would separate parent and children; migrate each "
                         "child table on its own after detaching it (ALTER TABLE ... NO INHERIT)")
    return int(row[0]), bool(row[3])


_ACL = """
    SELECT coalesce(json_agg(json_build_array(g.grantee, g.privilege_type, g.is_grantable)
                             ORDER BY g.grantee, g.privilege_type), '[]')
      FROM (SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END AS grantee,
                   a.privilege_type, a.is_grantable
              FROM pg_class c, aclexplode(c.relacl) a
             WHERE c.oid = {oid} AND a.grantee <> c.relowner) g"""

# Publication row filters and column lists exist from PostgreSQL 15 on: they are read through
# to_jsonb (pg_publication_tables.rowfilter, pg_publication_rel.prattrs), so the statement
# also runs where those columns do not exist.

# Everything about one table in one statement (one snapshot): each column is one section,
# a JSON value. Run with an empty search_path (see _inspect_row).
_INSPECT = f"""
SELECT
 (SELECT row_to_json(b) FROM (
    SELECT c.relkind, pg_get_userbyid(c.relowner) AS owner, c.relpersistence,
           c.relrowsecurity, c.relforcerowsecurity, c.relreplident,
           coalesce(c.reloptions, '{{}}') AS reloptions, obj_description(c.oid, 'pg_class') AS comment,
           c.relhassubclass, EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = c.oid) AS inherits,
           pg_total_relation_size(c.oid) AS total_bytes, pg_table_size(c.oid) AS table_bytes,
           greatest(c.reltuples, 0)::bigint AS estimated_rows,
           quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS quoted,
           (SELECT amname FROM pg_am WHERE oid = c.relam) AS access_method,
           (SELECT spcname FROM pg_tablespace WHERE oid = c.reltablespace) AS tablespace
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %(oid)s) b) AS base,
 (SELECT coalesce(json_agg(x ORDER BY x.attnum), '[]') FROM (
    SELECT a.attnum, a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,
           a.attgenerated <> '' AS generated, a.attidentity,
           pg_get_expr(d.adbin, d.adrelid) AS default,
           nullif(a.attstattarget, -1) AS stattarget, coalesce(a.attoptions, '{{}}') AS options,
           col_description(a.attrelid, a.attnum) AS comment,
           CASE WHEN a.attcollation <> 0 THEN a.attcollation::regcollation::text END AS collation,
           a.attstorage::text AS storage, nullif(a.attcompression, '')::text AS compression
      FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped) x) AS cols,
 (SELECT coalesce(json_agg(x ORDER BY x.indisprimary DESC, x.name), '[]') FROM (
    SELECT i.indexrelid AS oid, ic.relname AS name, pg_get_indexdef(i.indexrelid) AS def,
           quote_ident(ic.relname) AS qname,
           i.indisprimary, i.indisunique, i.indisvalid, i.indpred IS NULL AS full_index,
           i.indexprs IS NULL AS plain, con.conname, con.contype,
           i.indimmediate, i.indisclustered, i.indisreplident,
           coalesce(con.condeferrable, false) AS condeferrable, coalesce(con.condeferred, false) AS condeferred,
           obj_description(i.indexrelid, 'pg_class') AS comment,
           obj_description(con.oid, 'pg_constraint') AS con_comment,
           (SELECT spcname FROM pg_tablespace WHERE oid = ic.reltablespace) AS tablespace,
           (SELECT array_agg(a.attname ORDER BY k.ord) FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum) AS cols,
           (SELECT bool_and(a.attnotnull) FROM unnest(i.indkey) k(attnum)
              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum) AS all_not_null
      FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
      LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
                                    AND con.contype IN ('p', 'u', 'x')
     WHERE i.indrelid = %(oid)s) x) AS idx,
 (SELECT coalesce(json_agg(x ORDER BY x.conname), '[]') FROM (
    SELECT conname, contype, pg_get_constraintdef(oid) AS def, convalidated,
           obj_description(oid, 'pg_constraint') AS comment FROM pg_constraint
     WHERE conrelid = %(oid)s AND contype IN ('c', 'f') AND conparentid = 0) x) AS cons,
 (SELECT coalesce(json_agg(x ORDER BY x.conname), '[]') FROM (
    SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
     WHERE conrelid = %(oid)s AND contype = 'c') x) AS checks,
 (SELECT coalesce(json_agg(x ORDER BY x.conname), '[]') FROM (
    SELECT conname, pg_get_constraintdef(oid) AS def, convalidated FROM pg_constraint
     WHERE conrelid = %(oid)s AND contype = 'f' AND confrelid <> conrelid AND conparentid = 0) x) AS fk_out,
 (SELECT coalesce(json_agg(x ORDER BY x.conname), '[]') FROM (
    SELECT conname, pg_get_constraintdef(oid) AS def, convalidated FROM pg_constraint
     WHERE conrelid = %(oid)s AND contype = 'f' AND confrelid = conrelid AND conparentid = 0) x) AS fk_self,
 (SELECT coalesce(json_agg(x ORDER BY x.nspname, x.relname, x.conname), '[]') FROM (
    SELECT con.conname, n.nspname, c.relname, pg_get_constraintdef(con.oid) AS def, con.convalidated
      FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE con.confrelid = %(oid)s AND con.contype = 'f' AND con.conrelid <> con.confrelid
       AND con.conparentid = 0) x) AS fk_in,
 (SELECT coalesce(json_agg(x ORDER BY x.oid), '[]') FROM (
    SELECT DISTINCT v.oid, n.nspname, v.relname, v.relkind,
           pg_get_viewdef(v.oid) AS def, coalesce(v.reloptions, '{{}}') AS options,
           pg_get_userbyid(v.relowner) AS owner,
           (SELECT coalesce(json_agg(pg_get_indexdef(indexrelid) ORDER BY indexrelid), '[]')
              FROM pg_index WHERE indrelid = v.oid)::text AS indexes,
           ({_ACL.format(oid="v.oid")})::text AS acl,
           obj_description(v.oid, 'pg_class') AS comment,
           (SELECT coalesce(json_object_agg(a.attname, col_description(v.oid, a.attnum)), '{{}}')
              FROM pg_attribute a WHERE a.attrelid = v.oid AND a.attnum > 0
               AND col_description(v.oid, a.attnum) IS NOT NULL)::text AS column_comments
      FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
      JOIN pg_class v ON v.oid = r.ev_class JOIN pg_namespace n ON n.oid = v.relnamespace
     WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
       AND d.refobjid = %(oid)s AND v.oid <> %(oid)s AND r.rulename = '_RETURN') x) AS views,
 (SELECT coalesce(json_agg(x ORDER BY x.nspname, x.relname, x.rulename), '[]') FROM (
    SELECT DISTINCT r.rulename, n.nspname, c.relname, c.relkind, pg_get_ruledef(r.oid) AS def
      FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
      JOIN pg_class c ON c.oid = r.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
       AND d.refobjid = %(oid)s AND c.oid <> %(oid)s AND r.rulename <> '_RETURN') x) AS rules_elsewhere,
 (SELECT coalesce(json_agg(x ORDER BY x.tgname), '[]') FROM (
    SELECT t.tgname, quote_ident(t.tgname) AS qname, pg_get_triggerdef(t.oid) AS def, t.tgenabled,
           obj_description(t.oid, 'pg_trigger') AS comment
      FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
     WHERE t.tgrelid = %(oid)s AND NOT t.tgisinternal
       AND NOT EXISTS (SELECT 1 FROM pg_namespace WHERE oid = p.pronamespace AND nspname = '{TOOL_SCHEMA}')
    ) x) AS trig,
 (SELECT coalesce(json_agg(x ORDER BY x.rulename), '[]') FROM (
    SELECT rulename, pg_get_ruledef(oid) AS def, ev_enabled, obj_description(oid, 'pg_rewrite') AS comment
      FROM pg_rewrite
     WHERE ev_class = %(oid)s AND rulename <> '_RETURN') x) AS rules,
 (SELECT coalesce(json_agg(x ORDER BY x.name), '[]') FROM (
    SELECT p.polname AS name, p.polpermissive AS permissive, p.polcmd AS cmd,
           pg_get_expr(p.polqual, p.polrelid) AS qual, pg_get_expr(p.polwithcheck, p.polrelid) AS check,
           ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(r) END
                   FROM unnest(p.polroles) r) AS roles,
           obj_description(p.oid, 'pg_policy') AS comment
      FROM pg_policy p WHERE p.polrelid = %(oid)s) x) AS pols,
 (SELECT coalesce(json_agg(x ORDER BY x.pubname), '[]') FROM (
    SELECT p.pubname,
           (SELECT to_jsonb(pt) ->> 'rowfilter' FROM pg_publication_tables pt
             WHERE pt.pubname = p.pubname AND pt.schemaname = n.nspname AND pt.tablename = c.relname) AS rowfilter,
           (SELECT array_agg(a.attname ORDER BY a.attnum) FROM pg_attribute a
             WHERE a.attrelid = pr.prrelid AND a.attnum::text IN (
                   SELECT jsonb_array_elements_text(to_jsonb(pr) -> 'prattrs')
                    WHERE jsonb_typeof(to_jsonb(pr) -> 'prattrs') = 'array')) AS columns
      FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
      JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE pr.prrelid = %(oid)s) x) AS pubs,
 (SELECT coalesce(json_agg(x ORDER BY x.attnum), '[]') FROM (
    SELECT a.attnum, a.attname, s.oid::regclass::text AS seq, d.deptype
      FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
      JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
     WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
       AND d.refobjid = %(oid)s AND d.deptype IN ('a', 'i')) x) AS seqs,
 (SELECT coalesce(json_agg(json_build_array(pg_get_statisticsobjdef(s.oid),
                                            quote_ident(sn.nspname) || '.' || quote_ident(s.stxname))
                           ORDER BY s.oid), '[]')
    FROM pg_statistic_ext s JOIN pg_namespace sn ON sn.oid = s.stxnamespace WHERE s.stxrelid = %(oid)s) AS stats,
 (SELECT coalesce(json_agg(DISTINCT p.oid::regprocedure::text), '[]')
    FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
   WHERE d.classid = 'pg_proc'::regclass AND d.refobjid = %(oid)s
     AND d.refclassid = 'pg_class'::regclass) AS bound,
 (SELECT coalesce(json_agg(json_build_array(p.oid::regprocedure::text, pg_get_functiondef(p.oid)) ORDER BY p.oid),
                  '[]')
    FROM pg_proc p
   WHERE p.prosqlbody IS NOT NULL
     AND p.oid IN (SELECT d.objid FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                      AND d.refclassid = 'pg_class'::regclass AND d.refobjid = %(oid)s)
     AND p.prorettype <> (SELECT reltype FROM pg_class WHERE oid = %(oid)s)
     AND NOT (SELECT reltype FROM pg_class WHERE oid = %(oid)s)
             = ANY (coalesce(p.proallargtypes, p.proargtypes::oid[]))) AS atomic,
 ({_ACL.format(oid="%(oid)s")}) AS acl,
 (SELECT coalesce(json_agg(json_build_array(g.grantee, g.privilege_type, g.is_grantable, g.cols)
                           ORDER BY g.grantee, g.privilege_type, g.is_grantable), '[]') FROM (
    SELECT CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee) END AS grantee,
           x.privilege_type, x.is_grantable, array_agg(a.attname::text ORDER BY a.attnum) AS cols
      FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid, aclexplode(a.attacl) x
     WHERE c.oid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped AND x.grantee <> c.relowner
     GROUP BY 1, 2, 3) g) AS col_acl
"""  # noqa: S608 - only the constant _ACL fragment is formatted in


def _acl(rows: list[list[Any]]) -> list[tuple[str, str, bool]]:
    return [(g, p, bool(grantable)) for g, p, grantable in rows]


# The inspection is a server-side prepared statement with a generic plan: planned once
# per session (its planning costs more than its run), also under the swap's lock. Named
# after its text, so another version of it gets another name. The harness's connection
# leaves statement preparation to this module (prepare_threshold=None): psycopg's own
# prepared statements would be discarded with all others (DEALLOCATE ALL) after any DDL.
_INSPECT_NAME = f"tablemig_inspect_{zlib.crc32(_INSPECT.encode()):08x}"
_PREPARE = f"PREPARE {_INSPECT_NAME}(oid) AS {_INSPECT.replace('%(oid)s', '$1').replace('%%', '%')}"
# search_path emptied, so definitions come out schema-qualified, and restored, in the same
# round trip; a failed statement rolls the settings back with its transaction
_EMPTY_PATH = ("SELECT set_config('tablemig.saved_search_path', current_setting('search_path'), false),"
               " set_config('tablemig.saved_plan_cache_mode', current_setting('plan_cache_mode'), false),"
               " set_config('search_path', '', false),"
               " set_config('plan_cache_mode', 'force_generic_plan', false)")
_RESTORE_PATH = ("SELECT set_config('search_path', current_setting('tablemig.saved_search_path'), false),"
                 " set_config('plan_cache_mode', current_setting('tablemig.saved_plan_cache_mode'), false)")


def _inspect_row(st: Statements, oid: int, prepared: bool) -> dict[str, Any]:
    """The inspection's one row for `oid`, in one round trip (preparing it if needed)."""
    statements_ = [_EMPTY_PATH, *([] if prepared else [_PREPARE]),
                   f"EXECUTE {_INSPECT_NAME}({int(oid)})", _RESTORE_PATH]
    rows = st.read(";\n".join(statements_)).result_set("base")
    assert rows
    return rows[0]


def inspect_table(conn: psycopg.Connection[Any] | Statements, name: QualifiedName,
                  key_override: list[str] | None = None, *, partitioned: bool = False) -> TableInfo:
    """Everything the planner needs to know about `name`, read in one snapshot by one
    statement (it also runs under the swap's lock: one round trip instead of fifteen).
    `partitioned`: a partitioned table is accepted (refused otherwise)."""
    st = statements(conn)
    oid, prepared = _resolve(st, name, partitioned)
    r = _inspect_row(st, oid, prepared)
    base, idx = r["base"], r["idx"]
    columns = [Column(c["attname"], c["type"], c["attnotnull"], c["generated"],
                      c["attidentity"], c["default"], c["stattarget"], tuple(c["options"]),
                      c["comment"], c["collation"], c["storage"], c["compression"] or "")
               for c in r["cols"]]
    key_cols, key_index = _choose_key(name, idx, key_override)
    indexes = [Index(i["oid"], i["name"], i["def"], i["name"] == key_index, i["conname"],
                     i["contype"], i["indisvalid"], i["qname"],
                     columns=tuple(c for c in (i["cols"] or []) if c is not None),
                     unique=i["indisunique"], immediate=i["indimmediate"],
                     arbiter_shape=i["plain"] and i["full_index"], deferrable=i["condeferrable"],
                     deferred=i["condeferred"], clustered=i["indisclustered"],
                     replica_identity=i["indisreplident"], comment=i["comment"],
                     constraint_comment=i["con_comment"], tablespace=i["tablespace"]) for i in idx]
    views = [DependentView(v["oid"], QualifiedName(v["nspname"], v["relname"]), v["relkind"],
                           v["def"], list(v["options"]), json.loads(v["indexes"]),
                           _acl(json.loads(v["acl"])), v["owner"], v["comment"],
                           json.loads(v["column_comments"])) for v in r["views"]]
    return TableInfo(
        name=name, oid=oid, relkind=base["relkind"], quoted=base["quoted"], owner=base["owner"],
        persistence=base["relpersistence"], columns=columns, key_columns=key_cols,
        key_index=key_index, indexes=indexes,
        check_constraints=[(c["conname"], c["def"]) for c in r["checks"]],
        outgoing_fks=[(c["conname"], c["def"], c["convalidated"]) for c in r["fk_out"]],
        incoming_fks=[ForeignKey(c["conname"], QualifiedName(c["nspname"], c["relname"]), c["def"],
                                 c["convalidated"]) for c in r["fk_in"]],
        views=views,
        triggers=[TriggerDef(t["tgname"], t["def"], t["tgenabled"], t["qname"], t["comment"]) for t in r["trig"]],
        acl=_acl(r["acl"]), policies=r["pols"], rls=(base["relrowsecurity"], base["relforcerowsecurity"]),
        publications=[p["pubname"] for p in r["pubs"]],
        sequences=[(q["attname"], q["seq"], "identity" if q["deptype"] == "i" else "serial")
                   for q in r["seqs"]],
        comment=base["comment"], reloptions=list(base["reloptions"]),
        replica_identity=base["relreplident"], statistics=[d for d, _ in r["stats"]],
        bound_functions=list(r["bound"]), inherits=base["inherits"],
        atomic_functions=[(str(name), str(text)) for name, text in r["atomic"]],
        has_children=base["relhassubclass"], total_bytes=base["total_bytes"],
        table_bytes=base["table_bytes"], estimated_rows=base["estimated_rows"],
        column_acl=[(g, p, bool(grantable), list(cols)) for g, p, grantable, cols in r["col_acl"]],
        constraints=[Constraint(c["conname"], c["contype"], c["def"], c["convalidated"], c["comment"])
                     for c in r["cons"]],
        rules=[Rule(x["rulename"], x["def"], x["ev_enabled"], x["comment"]) for x in r["rules"]],
        publication_rels=[PublicationRel(p["pubname"], p["rowfilter"],
                                         tuple(p["columns"]) if p["columns"] is not None else None)
                          for p in r["pubs"]],
        statistics_bodies=[d.removeprefix(f"CREATE STATISTICS {q} ") for d, q in r["stats"]],
        access_method=base["access_method"], tablespace=base["tablespace"],
        self_fks=[ForeignKey(c["conname"], name, c["def"], c["convalidated"]) for c in r["fk_self"]],
        rules_elsewhere=[RuleElsewhere(x["rulename"], QualifiedName(x["nspname"], x["relname"]), x["relkind"],
                                       x["def"]) for x in r["rules_elsewhere"]],
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
