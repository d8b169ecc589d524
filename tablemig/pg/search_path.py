"""The `search_path` of the trigger functions tablemig installs on a table.

The functions are `SECURITY DEFINER` (the application's roles need no privilege on the new
table, the change log or the archive) with a fixed `search_path`. Their writes evaluate the
written table's own expressions: index expressions and predicates, CHECK constraints,
generated columns, domain constraints of its column types, row security policies. A SQL or
PL/pgSQL function called there resolves the names in its body with the current
`search_path` (one inlined in an index expression included), so under `pg_catalog, pg_temp`
alone a function that calls another unqualified fails on every write.

The path is therefore `pg_catalog, <the table's schema>, <the schemas of the functions its
expressions call>, pg_temp` (the functions that set their own `search_path` need none, nor do
C and internal functions):

* `pg_catalog` first: no schema can shadow a built-in function, operator or type with one
  of the same signature (as in an application session, where it is searched first
  implicitly); `pg_temp` last, named, so that a temporary object never comes first.
* The order is fixed and the caller's own `search_path` plays no part: an application
  session cannot point the function at objects of its choosing.
* Who can create objects in those schemas could place an overload there that the function
  would then run with its owner's privileges. The roles that already run code in it are
  safe to trust: superusers, members of the function's owner (they can act as it), the
  table's owner and the owners of the functions the expressions call (each can already
  change what the function runs, by redefining those functions). `unsafe_creators` names
  any other role (or PUBLIC) with CREATE on a schema of the path; the planner refuses the
  migration then, before anything changes.

See docs/search_path.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from .statements import Statements, statements

# The user functions the table's expressions call (directly, or as the code of an operator),
# found through pg_depend: the expressions of indexes, constraints, defaults and generated
# columns, policies, and the constraints of the domains among the column types.
_FUNCTIONS = """
WITH RECURSIVE types(oid) AS (
    SELECT a.atttypid FROM pg_attribute a
     WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
  UNION
    SELECT v.t FROM types JOIN pg_type t ON t.oid = types.oid,
           LATERAL (VALUES (t.typbasetype), (t.typelem)) v(t) WHERE v.t <> 0
), objs(classid, objid) AS (
    SELECT 'pg_class'::regclass::oid, indexrelid FROM pg_index WHERE indrelid = %(oid)s
  UNION ALL SELECT 'pg_constraint'::regclass::oid, oid FROM pg_constraint WHERE conrelid = %(oid)s
  UNION ALL SELECT 'pg_attrdef'::regclass::oid, oid FROM pg_attrdef WHERE adrelid = %(oid)s
  UNION ALL SELECT 'pg_policy'::regclass::oid, oid FROM pg_policy WHERE polrelid = %(oid)s
  UNION ALL SELECT 'pg_constraint'::regclass::oid, c.oid FROM pg_constraint c JOIN types t ON c.contypid = t.oid
), procs(oid) AS (
    SELECT d.refobjid FROM pg_depend d JOIN objs o ON o.classid = d.classid AND o.objid = d.objid
     WHERE d.refclassid = 'pg_proc'::regclass
  UNION
    SELECT op.oprcode::oid FROM pg_depend d JOIN objs o ON o.classid = d.classid AND o.objid = d.objid
      JOIN pg_operator op ON op.oid = d.refobjid WHERE d.refclassid = 'pg_operator'::regclass
)
SELECT DISTINCT n.nspname, pg_get_userbyid(p.proowner)
  FROM procs JOIN pg_proc p ON p.oid = procs.oid JOIN pg_namespace n ON n.oid = p.pronamespace
  JOIN pg_language l ON l.oid = p.prolang
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'table_migration')
   AND l.lanname NOT IN ('c', 'internal')
   AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) s WHERE s LIKE 'search\\_path=%%')
"""

# Roles (or PUBLIC) that may create objects in a schema and are none of the trusted ones.
_UNSAFE = """
SELECT DISTINCT CASE WHEN x.g = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.g) END
  FROM (SELECT CASE WHEN c.grantee = 'pg_database_owner'::regrole  -- the database's owner
                    THEN (SELECT datdba FROM pg_database WHERE datname = current_database())
                    ELSE c.grantee END AS g
          FROM pg_namespace n,
               LATERAL (SELECT n.nspowner AS grantee
                        UNION SELECT a.grantee FROM aclexplode(n.nspacl) a WHERE a.privilege_type = 'CREATE') c
         WHERE n.nspname = %(schema)s) x
 WHERE x.g = 0 OR NOT (
       (SELECT rolsuper FROM pg_roles WHERE oid = x.g)
       OR EXISTS (SELECT 1 FROM unnest(%(trusted)s::name[]) t(r)
                   WHERE pg_has_role(x.g, (SELECT oid FROM pg_roles WHERE rolname = t.r), 'MEMBER')))
 ORDER BY 1
"""


@dataclass(frozen=True)
class TriggerPath:
    """The schemas between `pg_catalog` and `pg_temp` in the trigger functions' path, and
    the roles that could create objects there without being trusted (see the module
    docstring): schema -> roles."""

    schemas: tuple[str, ...]
    unsafe: dict[str, list[str]]

    def problem(self) -> str | None:
        """A sentence naming the unsafe schemas, or None."""
        if not self.unsafe:
            return None
        who = "; ".join(f"schema {s}: {', '.join(r)}" for s, r in self.unsafe.items())
        return (f"the table's expressions call functions that resolve names at run time, so tablemig's "
                f"trigger functions need {', '.join(self.schemas)} in their search_path, where other roles "
                f"can create objects that would run with the privileges of the migrating role ({who})")


def trigger_path(conn: psycopg.Connection[Any] | Statements, table_oid: int) -> TriggerPath:
    """The path schemas for the table `table_oid` (empty when its expressions call no user
    function that resolves names), and who could abuse them."""
    st = statements(conn)
    rows = st.read(_FUNCTIONS, {"oid": table_oid}).fetchall()
    if not rows:
        return TriggerPath((), {})
    table = st.read("SELECT n.nspname, pg_get_userbyid(c.relowner), current_user FROM pg_class c"
                         " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s", (table_oid,)).fetchone()
    assert table is not None
    schemas = tuple(dict.fromkeys([table[0], *sorted({r[0] for r in rows})]))
    trusted = sorted({table[1], table[2], *(r[1] for r in rows)})
    unsafe = {}
    for s in schemas:
        roles = [r[0] for r in st.read(_UNSAFE, {"schema": s, "trusted": trusted}).fetchall()]
        if roles:
            unsafe[s] = roles
    return TriggerPath(schemas, unsafe)
