"""The table's inventory: every property that defines its behaviour, as comparable data.

Built from the catalog inspection (`tablemig.pg.catalog.inspect_table`, one statement), the
same reading that drives the copy (`tablemig.lifecycle.structure`) and the exchange
(`tablemig.lifecycle.exchange`). `differences(before, after)` lists every property of the original
that the live table does not have after the swap (or the restored original after a
rollback). Items are keyed by name, so what only the OID tells apart (the table itself,
recreated views, the identity sequence, the name of an extended statistics object) is left
out; since the live table takes the original's name and its index and constraint names,
every definition PostgreSQL prints compares verbatim.

The swap compares the original's inventory, read under its lock, with the live table's
before it commits: a difference rolls the swap back (nothing changes) and names the
property. Its evidence records the comparison for the audit.

>>> differences({"triggers": {"audit": {"enabled": "D"}}}, {"triggers": {"audit": {"enabled": "O"}}})
["triggers audit: enabled 'D' before, 'O' after"]
"""

from __future__ import annotations

from typing import Any

import psycopg

from .catalog import TableInfo, inspect_table
from .names import QualifiedName
from .statements import Statements

Inventory = dict[str, dict[str, dict[str, Any]]]

# Re-pointed foreign keys, and the table's foreign keys to itself, are added NOT VALID inside
# the swap and validated right after it, each in its own transaction: under the swap's lock
# their validation is still to come.
SELF_REFERENCE = "references the table itself"


def _pending(section: str, item: dict[str, Any], attr: str) -> bool:
    return attr == "validated" and (section == "incoming_foreign_keys"
                                    or (section == "constraints" and bool(item.get(SELF_REFERENCE))))


def of(info: TableInfo) -> Inventory:
    """The inventory of an inspected table."""
    base_rls, forced = info.rls
    self_fks = {fk.name for fk in info.self_fks}
    inv: Inventory = {
        "table": {"": {
            "owner": info.owner, "persistence": info.persistence, "kind": info.relkind,
            "storage options": sorted(info.reloptions), "replica identity": info.replica_identity,
            "row level security": base_rls, "forced row level security": forced,
            "comment": info.comment, "access method": info.access_method,
            "tablespace": info.tablespace, "key": list(info.key_columns)}},
        "columns": {c.name: {
            "position": n, "type": c.type, "not null": c.not_null, "default": c.default,
            "identity": c.identity, "generated": c.generated, "collation": c.collation,
            "storage": c.storage, "compression": c.compression, "statistics": c.statistics,
            "options": sorted(c.options), "comment": c.comment} for n, c in enumerate(info.columns, 1)},
        "indexes": {i.name: {
            "definition": i.definition, "constraint": i.constraint, "constraint type": i.constraint_type,
            "deferrable": i.deferrable, "initially deferred": i.deferred, "valid": i.valid,
            "clustered": i.clustered, "replica identity": i.replica_identity, "comment": i.comment,
            "constraint comment": i.constraint_comment} for i in info.indexes},
        "constraints": {c.name: {
            "type": c.type, "definition": c.definition.removesuffix(" NOT VALID"), "validated": c.validated,
            "comment": c.comment, SELF_REFERENCE: c.name in self_fks}
            for c in info.constraints},
        "incoming_foreign_keys": {f"{fk.table}.{fk.name}": {
            "definition": fk.definition.removesuffix(" NOT VALID"), "validated": fk.validated}
            for fk in info.incoming_fks},
        "triggers": {t.name: {"definition": t.definition, "enabled": t.enabled, "comment": t.comment}
                     for t in info.triggers},
        "rules": {r.name: {"definition": r.definition, "enabled": r.enabled, "comment": r.comment}
                  for r in info.rules},
        "policies": {p["name"]: {k: v for k, v in p.items() if k != "name"} for p in info.policies},
        "privileges": {f"{g} {p}": {"grantable": w} for g, p, w in info.acl},
        "column_privileges": {f"{g} {p} ({', '.join(cols)})": {"grantable": w}
                              for g, p, w, cols in info.column_acl},
        "publications": {p.name: {
            "row filter": p.row_filter, "columns": list(p.columns) if p.columns is not None else None}
            for p in info.publication_rels},
        "sequences": {column: {"kind": kind, "sequence": seq if kind == "serial" else None}
                      for column, seq, kind in info.sequences},
        "extended_statistics": {body: {} for body in info.statistics_bodies},
        "views": {str(v.name): {
            "kind": v.kind, "definition": v.definition, "options": sorted(v.options), "owner": v.owner,
            "privileges": sorted(f"{g} {p}{' WITH GRANT OPTION' if w else ''}" for g, p, w in v.acl),
            "indexes": sorted(v.indexes), "comment": v.comment, "column comments": v.column_comments}
            for v in info.views},
    }
    return inv


def read(conn: psycopg.Connection[Any] | Statements, table: QualifiedName,
         key: list[str] | None = None) -> Inventory:
    """The inventory of `table` as the catalog shows it now (one statement)."""
    return of(inspect_table(conn, table, key))


def differences(before: Inventory, after: Inventory, *, pending_validation: bool = False) -> list[str]:
    """Every property of `before` that `after` lacks or has otherwise, one line each.
    `pending_validation`: foreign keys re-pointed or re-created by the swap and not
    validated yet are no difference."""
    out: list[str] = []
    for section in sorted(set(before) | set(after)):
        old, new = before.get(section, {}), after.get(section, {})
        for item in sorted(set(old) | set(new)):
            label = f"{section} {item}".rstrip()
            if item not in new:
                out.append(f"{label}: missing after")
                continue
            if item not in old:
                out.append(f"{label}: not there before")
                continue
            for attr in sorted(set(old[item]) | set(new[item])):
                if pending_validation and _pending(section, old[item], attr):
                    continue
                was, now = old[item].get(attr), new[item].get(attr)
                if was != now:
                    out.append(f"{label}: {attr} {was!r} before, {now!r} after")
    return out


def summary(diffs: list[str]) -> str:
    """One sentence for a report."""
    if not diffs:
        return "inventory identical except the name"
    return f"{len(diffs)} differences: " + "; ".join(diffs)
