"""How each object that references a table is bound to it, and so what the swap does with it.

Bound **by OID**, an object follows the table wherever it is renamed: after the swap it would
reference the archive unless the swap rebuilds it against the new table. Bound **by name**, it
is resolved when it runs: after the swap it sees the new table.

`bindings(conn, table)` lists every dependent of `table` of these classes: views, materialized
views, rules (on the table, and on other tables that read or write it), SQL-standard-body
functions and procedures (`BEGIN ATOMIC`), SQL and PL/pgSQL functions whose bodies name it,
triggers, policies (on the table, and on other tables whose expressions read it),
publications, foreign keys (in and out) and sequences (owned, identity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from .dependencies import scan_functions
from .names import QualifiedName

OID, NAME = "oid", "name"


@dataclass(frozen=True)
class Binding:
    """One dependent: its class, its name, how it is bound, and what the swap does with it."""

    kind: str
    name: str
    bound_by: str  # OID or NAME
    swap: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "bound_by": self.bound_by, "swap": self.swap}


_REWRITES = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(v.relname), v.relkind, r.rulename, r.ev_class = %(oid)s
  FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class
  JOIN pg_namespace n ON n.oid = v.relnamespace
 WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = %(oid)s
   AND NOT (r.ev_class = %(oid)s AND r.rulename = '_RETURN')
UNION
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relkind, r.rulename, true
  FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE r.ev_class = %(oid)s AND r.rulename <> '_RETURN'
ORDER BY 1, 3
"""

_ATOMIC = """
SELECT DISTINCT p.oid::regprocedure::text, p.prokind,
       p.prorettype = c.reltype OR c.reltype = ANY (coalesce(p.proallargtypes, p.proargtypes::oid[]))
  FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid JOIN pg_class c ON c.oid = d.refobjid
 WHERE d.classid = 'pg_proc'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = %(oid)s
   AND p.prosqlbody IS NOT NULL
 ORDER BY 1
"""

_OTHERS = """
WITH rel AS (SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS qname
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace)
SELECT 'trigger', quote_ident(t.tgname), NULL FROM pg_trigger t WHERE t.tgrelid = %(oid)s AND NOT t.tgisinternal
UNION ALL
SELECT 'policy', quote_ident(p.polname), NULL FROM pg_policy p WHERE p.polrelid = %(oid)s
UNION ALL
SELECT DISTINCT 'policy elsewhere', quote_ident(p.polname) || ' on ' || rel.qname, NULL
  FROM pg_depend d JOIN pg_policy p ON p.oid = d.objid JOIN rel ON rel.oid = p.polrelid
 WHERE d.classid = 'pg_policy'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = %(oid)s
   AND p.polrelid <> %(oid)s
UNION ALL
SELECT 'publication', quote_ident(p.pubname), NULL
  FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid WHERE r.prrelid = %(oid)s
UNION ALL
SELECT 'publication of all tables', quote_ident(p.pubname), NULL FROM pg_publication p WHERE p.puballtables
UNION ALL
SELECT 'foreign key in', quote_ident(c.conname) || ' on ' || rel.qname, NULL
  FROM pg_constraint c JOIN rel ON rel.oid = c.conrelid
 WHERE c.contype = 'f' AND c.confrelid = %(oid)s AND c.conrelid <> %(oid)s AND c.conparentid = 0
UNION ALL
SELECT CASE WHEN c.confrelid = %(oid)s THEN 'foreign key to itself' ELSE 'foreign key out' END,
       quote_ident(c.conname), NULL
  FROM pg_constraint c WHERE c.contype = 'f' AND c.conrelid = %(oid)s AND c.conparentid = 0
UNION ALL
SELECT 'sequence', rel.qname, d.deptype::text
  FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' JOIN rel ON rel.oid = s.oid
 WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = %(oid)s
   AND d.deptype IN ('a', 'i')
"""

_SWAP = {
    "trigger": "recreated on the new table in its enable state (disabled on the archive)",
    "policy": "recreated on the new table",
    "policy elsewhere": "not rebuilt: its expression keeps reading the archive after the swap",
    "publication": "membership (row filter, column list) carried over to the new table",
    "publication of all tables": "publishes every table: the new table too",
    "foreign key in": "re-pointed to the new table (NOT VALID, then validated)",
    "foreign key out": "recreated on the new table",
    "foreign key to itself": "recreated on the new table, referencing itself",
}


def bindings(conn: psycopg.Connection[Any], table: QualifiedName) -> list[Binding]:
    """Every dependent of `table` with how it is bound and what the swap does with it."""
    row = conn.execute("SELECT to_regclass(%s)::oid", (str(table),)).fetchone()
    if row is None or row[0] is None:
        return []
    oid = row[0]
    return [*_rewrites(conn, oid), *_atomic(conn, oid), *_by_name(conn, table), *_others(conn, oid)]


def _rewrites(conn: psycopg.Connection[Any], oid: int) -> list[Binding]:
    """Views, materialized views and rules (their rewrite rules hold the table's OID)."""
    out = []
    for name, relkind, rule, on_table in conn.execute(_REWRITES, {"oid": oid}).fetchall():
        if rule == "_RETURN":
            kind = "materialized view" if relkind == "m" else "view"
            out.append(Binding(kind, name, OID, "recreated on the new table"))
        elif on_table:
            out.append(Binding("rule", f"{rule} on {name}", OID, "moved to the new table"))
        else:
            out.append(Binding("rule elsewhere", f"{rule} on {name}", OID,
                               "recreated so that it reads or writes the new table"))
    return out


def _atomic(conn: psycopg.Connection[Any], oid: int) -> list[Binding]:
    """Functions and procedures with a SQL-standard body (bound by OID, recorded in pg_depend)."""
    out = []
    for name, prokind, row_type in conn.execute(_ATOMIC, {"oid": oid}).fetchall():
        kind = "procedure (BEGIN ATOMIC)" if prokind == "p" else "function (BEGIN ATOMIC)"
        out.append(Binding(kind, name, OID, "refused before anything changes (its arguments or result are the "
                                            "table's row type): drop it and create it again after the swap"
                           if row_type else "rebuilt by the swap against the new table (and by a rollback "
                                            "against the original)"))
    return out


def _by_name(conn: psycopg.Connection[Any], table: QualifiedName) -> list[Binding]:
    """Functions whose bodies name the table as text: resolved at each call."""
    out = []
    for f in scan_functions(conn, table):
        if f["status"].startswith("bound by OID"):
            continue  # listed by _atomic, from pg_depend
        lang = "PL/pgSQL" if f["language"] == "plpgsql" else "SQL"
        how = "" if f["status"] == "references the table" else " (found by text: its body is not parsed)"
        out.append(Binding(f"{lang} function", f["function"], NAME,
                           f"resolved at each call: sees the new table after the swap{how}"))
    return out


def _others(conn: psycopg.Connection[Any], oid: int) -> list[Binding]:
    """Sequences, triggers, policies, publications, foreign keys."""
    out = []
    for kind, name, deptype in conn.execute(_OTHERS, {"oid": oid}).fetchall():
        if kind == "sequence" and deptype == "i":
            out.append(Binding("identity sequence", name, OID, "stays with the archive; the new table's "
                                                               "identity continues past the copied keys"))
        elif kind == "sequence":
            out.append(Binding("owned sequence", name, OID, "ownership moved to the new table"))
        else:
            out.append(Binding(kind, name, NAME if kind == "publication of all tables" else OID, _SWAP[kind]))
    return out
