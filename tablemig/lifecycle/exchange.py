"""The exchange of two tables' names and of everything that belongs to a name: index and
constraint names, sequences, incoming foreign keys, views (with their comments), grants,
policies, user triggers (with their enable states), rules, comment. Run inside the swap's
locked transaction on the active site, and by logical subscribers on theirs
(`tablemig.lifecycle.logical`); `exchange_back` undoes it.

The original becomes the archive, which the mirror trigger writes: its user triggers are
disabled and its rules dropped there (they are recreated on the live table), so mirrored
writes fire neither; the swap record keeps each trigger's state for the swap back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from psycopg import sql

from ..errors import TablemigError
from ..pg.catalog import DependentView, ForeignKey, PublicationRel, Rule, RuleElsewhere, TableInfo
from ..pg.names import QualifiedName
from ..pg.sqltext import Fragment
from .executor import Executor
from .objects import archive_index_name, temp_index_name
from .structure import grant_sql, not_valid_checks_sql, secondary_indexes


def repointed(table: str, constraint: str) -> str:
    """A dry run's name for a foreign key the swap re-points (NOT VALID until validated)."""
    return f"{table}#not-valid:{constraint}"


def _repoint_fks(ex: Executor, fks: list[ForeignKey]) -> None:
    for fk in fks:
        body = fk.definition.removesuffix(" NOT VALID")
        # IF EXISTS: a `follow` child's live table is new, without the key (tablemig.lifecycle.follow)
        ex.run(sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(fk.table.ident(),
                                                                             sql.Identifier(fk.name)))
        ex.run(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID").format(
            fk.table.ident(), sql.Identifier(fk.name), Fragment(body)))
        ex.creates(repointed(str(fk.table), fk.name))


def validate_foreign_keys(ex: Executor, fks: list[dict[str, Any]]) -> list[str]:
    """VALIDATE re-pointed foreign keys, each in its own transaction (SHARE UPDATE
    EXCLUSIVE on the referencing table only: writes continue)."""
    done = []
    for fk in fks:
        child = QualifiedName.parse(fk["table"])
        ex.run(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
            child.ident(), sql.Identifier(fk["name"])))
        ex.drops(repointed(str(child), fk["name"]))
        done.append(f"{child}.{fk['name']}")
    return done


def _rebuild_functions(ex: Executor, functions: list[tuple[str, str]]) -> None:
    """Functions and procedures with a SQL-standard body (BEGIN ATOMIC) are bound to the
    table by OID when created: re-issuing their definition (read under the swap's lock,
    before the renames) parses the body again, and binds it to the table now under the
    name. CREATE OR REPLACE keeps the function's OID, owner, privileges and comment."""
    for _signature, definition in functions:
        ex.run(Fragment(definition))


def _recreate_views(ex: Executor, views: list[DependentView]) -> None:
    """Views resolve table names when created: re-issuing the saved definition binds them
    to whatever table now has the name."""
    for v in views:
        body = v.definition.rstrip().rstrip(";")
        opts = (sql.SQL(" WITH ({})").format(sql.SQL(", ").join(Fragment(o) for o in v.options))
                if v.options else sql.SQL(""))
        if v.kind == "v":
            ex.run(sql.SQL("CREATE OR REPLACE VIEW {}{} AS {}").format(v.name.ident(), opts,
                                                                       Fragment(body)))
            continue
        ex.run(sql.SQL("DROP MATERIALIZED VIEW {}").format(v.name.ident()))
        ex.run(sql.SQL("CREATE MATERIALIZED VIEW {}{} AS {} WITH DATA").format(
            v.name.ident(), opts, Fragment(body)))
        ex.run(sql.SQL("ALTER MATERIALIZED VIEW {} OWNER TO {}").format(
            v.name.ident(), sql.Identifier(v.owner)))
        for idx in v.indexes:
            ex.run(Fragment(idx))
        _grant(ex, v.name, v.acl, "TABLE")
        # a view replaced in place keeps its comments; a materialized view is a new object
        if v.comment is not None:
            ex.run(sql.SQL("COMMENT ON MATERIALIZED VIEW {} IS {}").format(
                v.name.ident(), sql.Literal(v.comment)))
        for column, comment in sorted(v.column_comments.items()):
            ex.run(sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(
                v.name.ident(), sql.Identifier(column), sql.Literal(comment)))


def _recreate_rules(ex: Executor, rules: list[RuleElsewhere]) -> None:
    """Rules on other relations that write into (or read) the table are bound to it by
    OID: re-issued after the renames (their definitions name the table schema-qualified),
    they act on whichever table has the name now."""
    for r in rules:
        head, sep, rest = r.definition.partition("CREATE RULE ")
        if sep != "CREATE RULE " or head:
            raise TablemigError(f"cannot re-create rule {r.name} on {r.relation}: {r.definition}",
                                "drop the rule before the migration and create it again afterwards")
        ex.run(Fragment("CREATE OR REPLACE RULE " + rest))


def _self_references(ex: Executor, info: TableInfo, t: QualifiedName) -> list[dict[str, Any]]:
    """The table's foreign keys to itself, on the new table referencing itself (its
    definitions name the table, which now is the new one), NOT VALID: validated right after
    the swap like the re-pointed keys (the orphan check ran under the swap's lock)."""
    out = []
    comments = {c.name: c.comment for c in info.constraints if c.type == "f"}
    for fk in info.self_fks:
        body = fk.definition.removesuffix(" NOT VALID")
        ex.run(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID").format(
            t.ident(), sql.Identifier(fk.name), Fragment(body)))
        if comments.get(fk.name) is not None:
            ex.run(sql.SQL("COMMENT ON CONSTRAINT {} ON {} IS {}").format(
                sql.Identifier(fk.name), t.ident(), sql.Literal(comments[fk.name])))
        out.append({"table": str(t), "name": fk.name, "definition": fk.definition, "validated": fk.validated})
    return out


def _grant(ex: Executor, target: QualifiedName, acl: list[tuple[str, str, bool]],
           kind: str = "TABLE") -> None:
    for stmt in grant_sql(target, acl, kind):
        ex.run(stmt)


def _column_grants(ex: Executor, info: TableInfo, target: QualifiedName) -> None:
    """Column privileges (`pg_attribute.attacl`, read by the inspection): CREATE TABLE ...
    LIKE does not copy them and the table ACL does not hold them, so they are re-granted
    column by column."""
    for grantee, priv, grantable, columns in info.column_acl:
        who = sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee)
        ex.run(sql.SQL("GRANT {} ({}) ON TABLE {} TO {}{}").format(
            Fragment(priv), sql.SQL(", ").join(map(sql.Identifier, columns)), target.ident(), who,
            sql.SQL(" WITH GRANT OPTION" if grantable else "")))


def _policies(ex: Executor, target: QualifiedName, info: TableInfo) -> None:
    enabled, forced = info.rls
    if enabled:
        ex.run(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(target.ident()))
    if forced:
        ex.run(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(target.ident()))
    cmds = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}
    for p in info.policies:
        roles = sql.SQL(", ").join(sql.SQL("PUBLIC") if r == "PUBLIC" else sql.Identifier(r)
                                   for r in p["roles"])
        q = sql.SQL(" USING ({})").format(Fragment(p["qual"])) if p["qual"] else sql.SQL("")
        c = sql.SQL(" WITH CHECK ({})").format(Fragment(p["check"])) if p["check"] else sql.SQL("")
        ex.run(sql.SQL("CREATE POLICY {} ON {} AS {} FOR {} TO {}{}{}").format(
            sql.Identifier(p["name"]), target.ident(),
            sql.SQL("PERMISSIVE" if p["permissive"] else "RESTRICTIVE"),
            sql.SQL(cmds[p["cmd"]]), roles, q, c))
        _comment(ex, "POLICY", p["name"], target, p.get("comment"))


# pg_trigger.tgenabled / pg_rewrite.ev_enabled -> the ALTER TABLE clause that sets it
_ENABLE = {"O": "ENABLE", "D": "DISABLE", "R": "ENABLE REPLICA", "A": "ENABLE ALWAYS"}


def _set_enabled(ex: Executor, table: QualifiedName, kind: str, name: str, state: str) -> None:
    """ALTER TABLE ... {ENABLE | DISABLE | ENABLE REPLICA | ENABLE ALWAYS} {TRIGGER | RULE}."""
    ex.run(sql.SQL("ALTER TABLE {} {} {} {}").format(
        table.ident(), sql.SQL(_ENABLE[state]), sql.SQL(kind), sql.Identifier(name)))


def _copy_triggers(ex: Executor, info: TableInfo, source: QualifiedName,
                   target: QualifiedName, target_quoted: str) -> dict[str, str]:
    """Recreate the user triggers on `target` in their enable states (disabled, replica,
    always) and disable them on `source` (the archive must not run application triggers on
    mirrored writes). Returns the states the disabled ones had on `source`."""
    disabled: dict[str, str] = {}
    for trg in info.triggers:
        ident = trg.quoted  # read by the inspection: no round trip under the lock
        head = f"CREATE TRIGGER {ident} "
        if not trg.definition.startswith(head):
            head = f"CREATE CONSTRAINT TRIGGER {ident} "
        anchor = f" ON {info.quoted} "
        before, sep, after = trg.definition[len(head):].partition(anchor)
        if not sep or anchor in after:
            raise TablemigError(f"cannot re-target trigger {trg.name}: {trg.definition}",
                                "drop and recreate this trigger by hand after the swap")
        ex.run(Fragment(head + before + " ON " + target_quoted + " " + after))
        if trg.enabled != "O":  # CREATE TRIGGER makes it fire in origin mode
            _set_enabled(ex, target, "TRIGGER", trg.name, trg.enabled)
        _comment(ex, "TRIGGER", trg.name, target, trg.comment)
        if trg.enabled != "D":
            _set_enabled(ex, source, "TRIGGER", trg.name, "D")
            disabled[trg.name] = trg.enabled
    return disabled


def _move_rules(ex: Executor, info: TableInfo, source: QualifiedName, target: QualifiedName) -> list[str]:
    """Move the rules of `info`'s table from `source` to `target`, which now has the name
    the definitions print (a rule on the archive would rewrite mirrored writes: a DO
    INSTEAD NOTHING would drop them, a DO ALSO would act twice)."""
    for rule in info.rules:
        ex.run(sql.SQL("DROP RULE {} ON {}").format(sql.Identifier(rule.name), source.ident()))
        _create_rule(ex, rule, target)
    return [r.name for r in info.rules]


def _create_rule(ex: Executor, rule: Rule, table: QualifiedName) -> None:
    """Re-issue `rule` (its definition names the table, which must now be `table`)."""
    ex.run(Fragment(rule.definition.rstrip().rstrip(";")))  # pg_get_ruledef's text
    if rule.enabled != "O":
        _set_enabled(ex, table, "RULE", rule.name, rule.enabled)
    _comment(ex, "RULE", rule.name, table, rule.comment)


def _comment(ex: Executor, kind: str, name: str, table: QualifiedName, comment: str | None) -> None:
    """COMMENT ON {TRIGGER | RULE | POLICY} name ON table: recreated objects lose theirs."""
    if comment is not None:
        ex.run(sql.SQL("COMMENT ON {} {} ON {} IS {}").format(
            sql.SQL(kind), sql.Identifier(name), table.ident(), sql.Literal(comment)))


def _sequences(ex: Executor, old: TableInfo, live: QualifiedName) -> None:
    """Serial sequences follow the live table; identity sequences continue from the old."""
    for column, seq, kind in old.sequences:
        if kind == "serial":
            ex.run(sql.SQL("ALTER SEQUENCE {} OWNED BY {}.{}").format(
                Fragment(seq), live.ident(), sql.Identifier(column)))
        else:
            ex.run(sql.SQL(
                "SELECT setval(pg_get_serial_sequence(%s, %s), s.last_value, s.is_called)"
                " FROM {} s").format(Fragment(seq)), (str(live), column))


def move_publications(ex: Executor, pubs: list[PublicationRel], old: QualifiedName,
                      live: QualifiedName) -> None:
    """Move publication membership from `old` to `live`, each with its column list and row
    filter (PostgreSQL 15+)."""
    for pub in pubs:
        ex.run(sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(sql.Identifier(pub.name), old.ident()))
        columns = (sql.SQL(" ({})").format(sql.SQL(", ").join(map(sql.Identifier, pub.columns)))
                   if pub.columns is not None else sql.SQL(""))
        where = (sql.SQL(" WHERE ({})").format(Fragment(pub.row_filter))  # pg_get_expr's text
                 if pub.row_filter is not None else sql.SQL(""))
        ex.run(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}{}{}").format(
            sql.Identifier(pub.name), live.ident(), columns, where))


def _rename_index(ex: Executor, table: QualifiedName, schema: str, constraint: str | None,
                  old: str, new: str) -> None:
    if constraint:
        ex.run(sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
            table.ident(), sql.Identifier(old), sql.Identifier(new)))
    else:
        ex.run(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
            sql.Identifier(schema, old), sql.Identifier(new)))


def exchange(ex: Executor, info: TableInfo, t: QualifiedName, n: QualifiedName,
             outgoing: QualifiedName, *, after_rename: Callable[[], object] | None = None) -> dict[str, Any]:
    """Rename `t -> outgoing` and `n -> t` and make the new `t` look like the old one
    (index and constraint names, sequences, incoming FKs, views, grants, policies, user
    triggers, rules, comment). Shared by the active site and logical subscribers.
    `after_rename` runs right after the two renames, before anything references the new
    `t` or fires on it (the rows kept for `keep` children, tablemig.lifecycle.retain)."""
    schema = t.schema
    ex.run(sql.SQL("ALTER TABLE {} RENAME TO {}").format(t.ident(), sql.Identifier(outgoing.name)))
    ex.run(sql.SQL("ALTER TABLE {} RENAME TO {}").format(n.ident(), sql.Identifier(t.name)))
    if after_rename is not None:
        after_rename()
    names = []
    for idx in [i for i in info.indexes if i.is_key] + secondary_indexes(info):
        archived, temp = archive_index_name(idx), temp_index_name(idx)
        _rename_index(ex, outgoing, schema, idx.constraint, idx.name, archived)
        _rename_index(ex, t, schema, idx.constraint, temp, idx.name)
        names.append([idx.name, archived, temp, idx.constraint])
    _sequences(ex, info, t)
    _repoint_fks(ex, info.incoming_fks)
    self_fks = _self_references(ex, info, t)
    for stmt in not_valid_checks_sql(info, t):
        ex.run(stmt)
    _recreate_views(ex, info.views)
    _rebuild_functions(ex, info.atomic_functions)
    _recreate_rules(ex, info.rules_elsewhere)
    _grant(ex, t, info.acl)
    _column_grants(ex, info, t)
    _policies(ex, t, info)
    disabled = _copy_triggers(ex, info, outgoing, t, ex.text(t.ident()))
    rules = _move_rules(ex, info, outgoing, t)
    if info.comment is not None:
        ex.run(sql.SQL("COMMENT ON TABLE {} IS {}").format(t.ident(), sql.Literal(info.comment)))
    # disabled_triggers: the names (read by the swap back of older records); trigger_states:
    # the state each one had, restored by the swap back
    return {"indexes": names, "disabled_triggers": sorted(disabled), "trigger_states": disabled,
            "rules_moved": rules, "self_foreign_keys": self_fks}


def exchange_back(ex: Executor, info: TableInfo, t: QualifiedName, n: QualifiedName,
                  outgoing: QualifiedName, rec: dict[str, Any]) -> None:
    """Undo `exchange` (the new table is renamed back to `n`; the caller drops it)."""
    schema = t.schema
    ex.run(sql.SQL("ALTER TABLE {} RENAME TO {}").format(t.ident(), sql.Identifier(n.name)))
    ex.run(sql.SQL("ALTER TABLE {} RENAME TO {}").format(outgoing.ident(), sql.Identifier(t.name)))
    for original, archived, temp, constraint in rec.get("indexes", []):
        _rename_index(ex, n, schema, constraint, original, temp)
        _rename_index(ex, t, schema, constraint, archived, original)
    _sequences(ex, info, t)  # `info` is the table now renamed to `n`: its sequences
    _repoint_fks(ex, info.incoming_fks)
    _recreate_views(ex, info.views)
    _rebuild_functions(ex, info.atomic_functions)
    _recreate_rules(ex, info.rules_elsewhere)
    _grant(ex, t, info.acl)
    _column_grants(ex, info, t)
    states = rec.get("trigger_states") or dict.fromkeys(rec.get("disabled_triggers", []), "O")
    for name, state in states.items():
        _set_enabled(ex, t, "TRIGGER", name, state)
    if "rules_moved" in rec:  # older records left the rules on the original
        for rule in info.rules:  # the live table's rules, as they are now: back to the original
            _create_rule(ex, rule, t)
    ex.run(sql.SQL("COMMENT ON TABLE {} IS {}").format(t.ident(), sql.Literal(info.comment)))
