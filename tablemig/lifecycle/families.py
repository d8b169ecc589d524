"""Foreign keys that reference the table: orphans found before anything changes, and again
under the swap's lock.

After the swap a foreign key referencing the table references the live table, which holds
only the rows kept. A referencing row whose referenced row is archived is an orphan: the
key re-pointed `NOT VALID` by the swap could then never be validated. The planner counts
such rows; the swap step checks again, because writes go on until its lock:

1. *arm* (one short transaction, SHARE ROW EXCLUSIVE on the table and on each referencing
   table, bounded lock_timeout and retries like every lock of tablemig): a row trigger on
   each referencing table logs the key of the row its new or changed foreign key points at,
   and the capture function logs the key of every row that leaves the new table (deleted,
   key changed, or dated back before the cutoff) and, for a self-reference, the key of the
   row a kept row points at. All into the family log `table_migration.family_<oid>`,
   which has the change log's shape (`tablemig.lifecycle.structure.change_log_sql`). The lock waits
   for writers that started before: every later write is logged.
2. *full check*, with no lock: the referencing rows whose referenced row is not in the new
   table (an anti-join over each referencing table; for a self-reference, over the new
   table itself). It sees every write committed before it started; every later one is
   logged.
3. *under the swap's lock*: the logged keys that are not in the new table, then the
   referencing rows that point at those rows. The cost follows the writes made since step
   2 (usually none), not the tables: one probe of the family log against the new table's
   key, and for each such key a lookup of the referencing rows (through an index on the
   referencing columns when there is one: PostgreSQL does not create it; without it, that
   lookup scans the referencing table, and the plan warns).

Any orphan stops the swap before it changes anything (under the lock: the swap's
transaction is rolled back), names the rows and says what to do; the step is then
disarmed (triggers dropped, the capture function back to plain direct capture).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from psycopg import sql

from ..errors import TablemigError
from ..pg.catalog import TOOL_SCHEMA
from ..pg.names import QualifiedName
from ..pg.references import Reference
from ..pg.sqltext import Fragment
from ..pg.statements import Statements
from ..pg.templating import render
from .objects import FAMILY_TRIGGER, Objects

SAMPLE = 5  # orphan rows named in an error


def trigger_name_taken(st: Statements, ref: Reference) -> bool:
    """Does the referencing table have a trigger of its own named FAMILY_TRIGGER (which
    arming would replace, and disarming drop)?"""
    return st.read(
        "SELECT 1 FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid"
        " JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE t.tgrelid = %s AND t.tgname = %s AND n.nspname <> %s",
        (ref.child_oid, FAMILY_TRIGGER, TOOL_SCHEMA)).fetchone() is not None


def _pairs(ref: Reference, left: str, right: str) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(left, p), sql.Identifier(right, c))
        for p, c in zip(ref.parent_columns, ref.child_columns, strict=True))


def _not_null(ref: Reference, alias: str) -> sql.Composable:
    return sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier(alias, c))
                                 for c in ref.child_columns)


def _texts(columns: tuple[str, ...] | list[str], alias: str) -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(alias, c)) for c in columns)


def orphans(st: Statements, ref: Reference, new: QualifiedName) -> list[list[str]]:
    """Referencing rows whose referenced row is not in `new` (the new table): a full
    anti-join, no lock. For a self-reference the referencing rows are `new`'s own. (A dry
    run, which has no new table, assumes none.)"""
    child = new if ref.self_ref else ref.child
    rows = st.read(sql.SQL(
        "SELECT {texts} FROM {child} c WHERE {nn} AND NOT EXISTS (SELECT 1 FROM {new} p WHERE {match})"
        " LIMIT %s").format(texts=_texts(ref.child_columns, "c"), child=child.ident(), nn=_not_null(ref, "c"),
                            new=new.ident(), match=_pairs(ref, "p", "c")), (SAMPLE,), reads=[str(new)]).fetchall()
    return [list(r) for r in rows]


def orphans_since_armed(st: Statements, refs: list[Reference], objects: Objects, key: list[str],
                        key_types: list[str]) -> dict[str, list[list[str]]]:
    """Under the swap's lock: the orphans among the rows written since the family log was
    armed (see the module docstring). {reference label: sample rows}."""
    log, new, original = objects.family_log, objects.new, objects.original
    match = sql.SQL(" AND ").join(sql.SQL("n.{0} = f.{0}").format(sql.Identifier(k)) for k in key)
    lost = st.read(sql.SQL(
        "SELECT DISTINCT {texts} FROM {log} f WHERE NOT EXISTS (SELECT 1 FROM {new} n WHERE {match})").format(
        texts=_texts(key, "f"), log=log.ident(), new=new.ident(), match=match), reads=[str(log)]).fetchall()
    if not lost:
        return {}
    typed = sql.SQL("({})").format(sql.SQL(", ").join(
        sql.SQL("%s::{}").format(Fragment(t)) for t in key_types))
    keys = sql.SQL(", ").join([typed] * len(lost))
    params = [v for row in lost for v in row]
    found: dict[str, list[list[str]]] = {}
    for ref in refs:
        child = new if ref.self_ref else ref.child
        # the referenced rows of the lost keys (in the original, which has them all), then
        # the rows referencing them: a few values, so nested loops over the original's key
        # and the referencing index
        rows = st.read(sql.SQL(
            "SELECT {texts} FROM {orig} p JOIN {child} c ON {match} WHERE ({k}) IN ({keys}) LIMIT %s").format(
            texts=_texts(ref.child_columns, "c"), orig=original.ident(), child=child.ident(),
            match=_pairs(ref, "p", "c"), k=sql.SQL(", ").join(sql.Identifier("p", k) for k in key),
            keys=keys), [*params, SAMPLE]).fetchall()
        if rows:
            found[ref.label()] = [list(r) for r in rows]
    return found


def child_trigger_sql(refs: list[Reference], objects: Objects, key: list[str],
                      search_path: tuple[str, ...] | list[str],
                      kept: frozenset[QualifiedName] = frozenset()) -> list[sql.Composable]:
    """The row triggers on the referencing tables (other than the table itself) that log
    the key of the row each new or changed foreign key points at; for the `kept` children
    (policy keep, tablemig.lifecycle.retain) also the row a changed or deleted one pointed at."""
    out: list[sql.Composable] = []
    by_child: dict[QualifiedName, list[Reference]] = {}
    for ref in refs:
        if not ref.self_ref:
            by_child.setdefault(ref.child, []).append(ref)
    log, original = objects.family_log, objects.original
    for child, group in by_child.items():
        fn = objects.family_function(group[0].child_oid)
        text = render("family_function.sql.j2", function=(fn.schema, fn.name), log=(log.schema, log.name),
                      source=(original.schema, original.name), key=key, search_path=list(search_path),
                      refs=[{"child": list(r.child_columns), "parent": list(r.parent_columns),
                             "old": child in kept} for r in group])
        columns = sorted({c for r in group for c in r.child_columns})
        # OR REPLACE (PostgreSQL 14+): SHARE ROW EXCLUSIVE, where DROP TRIGGER would take
        # ACCESS EXCLUSIVE on the referencing table
        out += [Fragment(text),
                sql.SQL("CREATE OR REPLACE TRIGGER {} AFTER INSERT OR UPDATE OF {}{} ON {} FOR EACH ROW"
                        " EXECUTE FUNCTION {}()")
                .format(sql.Identifier(FAMILY_TRIGGER), sql.SQL(", ").join(map(sql.Identifier, columns)),
                        sql.SQL(" OR DELETE" if child in kept else ""), child.ident(), fn.ident())]
    return out


def drop_child_trigger_sql(child: QualifiedName) -> sql.Composable:
    return sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(FAMILY_TRIGGER), child.ident())


def disarm_sql(refs: list[Reference], objects: Objects) -> list[sql.Composable]:
    """Drop the referencing tables' triggers, their functions and the family log."""
    out: list[sql.Composable] = []
    for ref in refs:
        if not ref.self_ref:
            out.append(drop_child_trigger_sql(ref.child))
            out.append(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(objects.family_function(ref.child_oid).ident()))
    out.append(sql.SQL("DROP TABLE IF EXISTS {}").format(objects.family_log.ident()))
    return out


class Retaining(Protocol):
    """What the guard needs of the `keep` rule (tablemig.lifecycle.retain.KeepRule)."""

    @property
    def refs(self) -> tuple[Reference, ...]: ...

    def locked_pass(self, st: Statements, live: QualifiedName, log: QualifiedName,
                    source: QualifiedName) -> tuple[int, int]: ...


@dataclass(frozen=True)
class OrphanGuard:
    """The orphan check of the swap step, armed (see the module docstring)."""

    refs: list[Reference]
    objects: Objects
    key: list[str]
    key_types: list[str]
    # the `keep` children's rule (tablemig.lifecycle.retain), applied first under the lock
    retain: Retaining | None = None
    retained_full_pass: int = 0  # rows the `keep` rule copied before the lock

    def check_locked(self, st: Statements) -> None:
        """Under the swap's lock: raise the refusal if a write made since the full check
        left an orphan (`keep` children excepted: `retain_locked` makes theirs exact)."""
        # the log's size, for the plans below: a few keys are looked up by index, not
        # joined against a scan of the table, while the lock is held
        st.run(sql.SQL("ANALYZE {}").format(self.objects.family_log.ident()))
        kept = self.retain.refs if self.retain is not None else ()
        found = orphans_since_armed(st, [r for r in self.refs if r not in kept], self.objects, self.key,
                                    self.key_types)
        if found:
            raise orphan_error(str(self.objects.original), found, under_lock=True)

    def retain_locked(self, st: Statements, live: QualifiedName, source: QualifiedName) -> dict[str, int]:
        """Under the swap's lock, after the renames: the rows the `keep` children reference
        made exact in the live table (tablemig.lifecycle.retain); what changed."""
        if self.retain is None:
            return {}
        deleted, inserted = self.retain.locked_pass(st, live, self.objects.family_log, source)
        return {"retained_rows_copied_before_lock": self.retained_full_pass,
                "retained_rows_removed_under_lock": deleted, "retained_rows_copied_under_lock": inserted}

    def disarm_sql(self) -> list[sql.Composable]:
        return disarm_sql(self.refs, self.objects)


def orphan_error(table: str, found: dict[str, list[list[str]]], *, under_lock: bool) -> TablemigError:
    """The refusal naming the orphans and what to do."""
    rows = "; ".join(f"{label}: {', '.join('(' + ', '.join(map(str, r)) + ')' for r in sample)}"
                     for label, sample in found.items())
    when = ("written while the swap waited for its lock" if under_lock
            else "found before the swap")
    return TablemigError(
        f"swap of {table} refused, nothing was changed: rows referencing {table} would lose the row they "
        f"reference, which stays in the archive ({when}): {rows}",
        "delete or re-point those rows, or date the rows they reference on or after the cutoff, or give "
        "their table the child policy 'keep' in the plan (the rows it references stay live; "
        "docs/families.md), then rerun to resume; or undo the migration: "
        f"tablemig rollback --execute --table {table}")
