"""The `keep` policy of a child table: the parent rows it references stay live, whatever
their date (docs/families.md).

The live table then holds `D >= C` plus every row a `keep` child references. The rows dated
from the cutoff on are the engine's as always (load, capture, replay, verify); the others
are added by the swap step, on top of the orphan check it arms (tablemig.lifecycle.families):

1. *arm* (one short transaction): the capture function logs the key of every row that
   leaves the new table, and the child tables' triggers log the key of the row each new,
   changed or deleted reference pointed at (before and after the change), into the family
   log;
2. *full pass*, no lock: `INSERT ... SELECT` of the rows dated before the cutoff that a
   `keep` child references, into the new table (`ON CONFLICT DO NOTHING`: a row the
   capture function wrote meanwhile wins). A row changed while it runs was logged;
3. *under the swap's lock*, right after the renames: for each logged key, the new table's
   copy is made exact: a row not dated from the cutoff on is deleted, then inserted again
   from the original when a child still references it. The cost follows the writes since
   step 1, not the tables. After the renames, so that a logical subscriber receives these
   changes for the live table's name (its own renames are committed with the swap's), and
   before the foreign keys are re-pointed and the user triggers copied.

With the lock held nothing writes the table or its children, so what the swap publishes is
exactly `D >= C` plus the rows referenced at that moment; the foreign keys re-pointed to the
live table then validate.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from ..pg.names import QualifiedName
from ..pg.references import Reference
from ..pg.sqltext import Fragment
from ..pg.statements import Statements


@dataclass(frozen=True)
class KeepRule:
    """The rows of `original` dated before the cutoff that the `refs` (foreign keys of
    `keep` children, none a self-reference) reference."""

    refs: tuple[Reference, ...]
    original: QualifiedName
    key: tuple[str, ...]
    columns: tuple[str, ...]  # written by an INSERT (no generated columns)
    overriding: bool  # an identity column GENERATED ALWAYS
    date_column: str
    date_type: str
    cutoff: str

    def _old(self, alias: str) -> sql.Composable:
        """Not dated from the cutoff on (NULL dates included: they are history)."""
        return sql.SQL("({} >= %s::{}) IS NOT TRUE").format(
            sql.Identifier(alias, self.date_column), Fragment(self.date_type))

    def _referenced(self, alias: str) -> sql.Composable:
        """Some `keep` child row references the row `alias` (through an index on the
        referencing columns, which the plan requires)."""
        parts = []
        for ref in self.refs:
            match = sql.SQL(" AND ").join(
                sql.SQL("c.{} = {}").format(sql.Identifier(cc), sql.Identifier(alias, pc))
                for pc, cc in zip(ref.parent_columns, ref.child_columns, strict=True))
            parts.append(sql.SQL("EXISTS (SELECT 1 FROM {} c WHERE {})").format(ref.child.ident(), match))
        return sql.SQL("({})").format(sql.SQL(" OR ").join(parts))

    def _insert(self, target: QualifiedName, where: sql.Composable,
                source: QualifiedName | None = None) -> sql.Composable:
        cols = sql.SQL(", ").join(sql.Identifier("p", c) for c in self.columns)
        return sql.SQL("INSERT INTO {t} ({c}){o} SELECT {pc} FROM {src} p WHERE {w} AND {old} AND {ref}").format(
            t=target.ident(), c=sql.SQL(", ").join(map(sql.Identifier, self.columns)),
            o=sql.SQL(" OVERRIDING SYSTEM VALUE" if self.overriding else ""), pc=cols,
            src=(source or self.original).ident(),
            w=where, old=self._old("p"), ref=self._referenced("p"))

    def count(self, st: Statements) -> int:
        """How many rows the rule keeps live besides those dated from the cutoff on (a
        scan of the table, a hash of each child's referencing columns: linear)."""
        row = st.read(sql.SQL("SELECT count(*) FROM {} p WHERE {} AND {}").format(
            self.original.ident(), self._old("p"), self._referenced("p")), (self.cutoff,)).fetchone()
        return int(row[0]) if row else 0

    def full_pass(self, st: Statements, new: QualifiedName) -> int:
        """Step 2: insert the referenced rows dated before the cutoff into `new` (no lock);
        returns the rows inserted."""
        conflict = sql.SQL(", ").join(map(sql.Identifier, self.key))
        stmt = sql.SQL("{} ON CONFLICT ({}) DO NOTHING").format(self._insert(new, sql.SQL("true")), conflict)
        return max(st.run(stmt, (self.cutoff,)).rowcount, 0)

    def locked_pass(self, st: Statements, live: QualifiedName, log: QualifiedName,
                    source: QualifiedName) -> tuple[int, int]:
        """Step 3, in the swap's transaction right after the two renames (`live` is the new
        table under the table's name, `source` the original under its archive name): for
        the keys in the family `log`, the rows not dated from the cutoff on are deleted,
        then those still referenced are copied again from the original. Made then, the
        changes carry the live table's name to logical subscribers, and nothing yet
        references the live table or fires on it (foreign keys are re-pointed and user
        triggers copied after). Returns (deleted, inserted)."""
        keys = sql.SQL(", ").join(map(sql.Identifier, self.key))
        logged = sql.SQL("({}) IN (SELECT {} FROM {})").format(
            sql.SQL(", ").join(sql.Identifier("p", k) for k in self.key), keys, log.ident())
        match = sql.SQL(" AND ").join(sql.SQL("o.{0} = n.{0}").format(sql.Identifier(k)) for k in self.key)
        gone = st.run(sql.SQL(
            "DELETE FROM {live} n WHERE ({nk}) IN (SELECT {k} FROM {log})"
            " AND NOT EXISTS (SELECT 1 FROM {orig} o WHERE {match} AND o.{d} >= %s::{t})").format(
            live=live.ident(), nk=sql.SQL(", ").join(sql.Identifier("n", k) for k in self.key), k=keys,
            log=log.ident(), orig=source.ident(), match=match, d=sql.Identifier(self.date_column),
            t=Fragment(self.date_type)), (self.cutoff,)).rowcount
        back = st.run(self._insert(live, logged, source), (self.cutoff,)).rowcount
        return max(gone, 0), max(back, 0)


def keep_rule(refs: list[Reference], policy: dict[QualifiedName, str], original: QualifiedName,
              key: list[str], columns: list[str], overriding: bool, date_column: str, date_type: str,
              cutoff: str) -> KeepRule | None:
    """The rule of the plan's `keep` children (None: no child is kept)."""
    kept = tuple(r for r in refs if not r.self_ref and policy.get(r.child) == "keep")
    if not kept:
        return None
    return KeepRule(kept, original, tuple(key), tuple(columns), overriding, date_column, date_type, cutoff)


def purge_old_rows(st: Statements, new: QualifiedName, date_column: str, date_type: str, cutoff: str) -> int:
    """Delete the new table's rows not dated from the cutoff on: before the swap step only
    the `keep` rule puts such rows there (the capture function never does), so this undoes
    an earlier, unfinished swap step's copies. Through the index on the date column when
    the table has one (none such rows: a probe)."""
    d = sql.Identifier(date_column)
    return max(st.run(sql.SQL("DELETE FROM {} WHERE {} < %s::{} OR {} IS NULL").format(
        new.ident(), d, Fragment(date_type), d), (cutoff,)).rowcount, 0)
