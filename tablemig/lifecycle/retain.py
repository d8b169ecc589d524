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

`keep` for the table itself (a self-reference, `parent_id` of a tree): the live table is
also closed under the reference, so every row a live row references is live (the ancestors
of every live row). The full pass adds the closure of the new table's references after the
children's rows (a recursive query, one index probe per row it climbs). The capture function
then logs, for every write, the rows it referenced before and after; under the lock, the
logged rows missing from the live table that a live row (or a `keep` child) references are
added, their own references in turn, and the logged rows not dated from the cutoff on that
nothing references any more are removed, the rows they referenced in turn (each round one
probe per logged key, until a round changes nothing). Rows of a cycle of old rows that only
reference each other stay live once live.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql

from ..pg.names import QualifiedName
from ..pg.references import Reference
from ..pg.sqltext import Fragment
from ..pg.statements import Statements
from .structure import change_id_column


@dataclass(frozen=True)
class KeepRule:
    """The rows of `original` dated before the cutoff that the `refs` (foreign keys of
    `keep` children, and the table's own when it keeps the rows its rows reference)
    reference."""

    refs: tuple[Reference, ...]
    original: QualifiedName
    key: tuple[str, ...]
    columns: tuple[str, ...]  # written by an INSERT (no generated columns)
    overriding: bool  # an identity column GENERATED ALWAYS
    date_column: str
    date_type: str
    cutoff: str

    @property
    def children(self) -> tuple[Reference, ...]:
        return tuple(r for r in self.refs if not r.self_ref)

    @property
    def self_ref(self) -> Reference | None:
        return next((r for r in self.refs if r.self_ref), None)

    def _old(self, alias: str) -> sql.Composable:
        """Not dated from the cutoff on (NULL dates included: they are history)."""
        return sql.SQL("({} >= %s::{}) IS NOT TRUE").format(
            sql.Identifier(alias, self.date_column), Fragment(self.date_type))

    def _referenced(self, alias: str, live: QualifiedName | None = None) -> sql.Composable:
        """Some `keep` child row references the row `alias` (through an index on the
        referencing columns, which the plan requires); with `live`, also a row of `live`
        through the self-reference."""
        parts: list[sql.Composable] = []
        refs = [*self.children, *([self.self_ref] if live is not None and self.self_ref else [])]
        for ref in refs:
            match = sql.SQL(" AND ").join(
                sql.SQL("c.{} = {}").format(sql.Identifier(cc), sql.Identifier(alias, pc))
                for pc, cc in zip(ref.parent_columns, ref.child_columns, strict=True))
            table = live if ref.self_ref and live is not None else ref.child
            parts.append(sql.SQL("EXISTS (SELECT 1 FROM {} c WHERE {})").format(table.ident(), match))
        return sql.SQL("({})").format(sql.SQL(" OR ").join(parts or [sql.SQL("false")]))

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
        scan of the table, a hash of each child's referencing columns: linear; with the
        self-reference, the closure climbed by index)."""
        if self.self_ref is not None:
            return self._closure_count(st)
        row = st.read(sql.SQL("SELECT count(*) FROM {} p WHERE {} AND {}").format(
            self.original.ident(), self._old("p"), self._referenced("p")), (self.cutoff,)).fetchone()
        return int(row[0]) if row else 0

    def _cols(self, alias: str, columns: Sequence[str]) -> sql.Composable:
        return sql.SQL(", ").join(sql.Identifier(alias, c) for c in columns)

    def _pairs(self, left: str, left_cols: Sequence[str], right: str, right_cols: Sequence[str]) -> sql.Composable:
        return sql.SQL(" AND ").join(sql.SQL("{} = {}").format(sql.Identifier(left, a), sql.Identifier(right, b))
                                     for a, b in zip(left_cols, right_cols, strict=True))

    def _closure_count(self, st: Statements) -> int:
        """The rows dated before the cutoff in the closure of the live rows (those dated from
        the cutoff on and those a `keep` child references) under the self-reference."""
        ref = self.self_ref
        assert ref is not None
        ks = [f"k{i}" for i in range(len(ref.parent_columns))]
        rs = [f"r{i}" for i in range(len(ref.child_columns))]
        cte = sql.SQL(", ").join(map(sql.Identifier, [*ks, *rs]))
        row = st.read(sql.SQL(
            "WITH RECURSIVE live ({cte}) AS ("
            " SELECT {pk}, {pr} FROM {t} p WHERE NOT {old} OR {refd}"
            " UNION SELECT {ak}, {ar} FROM {t} a JOIN live l ON {up})"
            " SELECT count(*) FROM (SELECT DISTINCT {lk} FROM live l) l JOIN {t} p ON {back} WHERE {old}").format(
            cte=cte, pk=self._cols("p", ref.parent_columns), pr=self._cols("p", ref.child_columns),
            ak=self._cols("a", ref.parent_columns), ar=self._cols("a", ref.child_columns), t=self.original.ident(),
            old=self._old("p"), refd=self._referenced("p"), up=self._pairs("a", ref.parent_columns, "l", rs),
            lk=self._cols("l", ks), back=self._pairs("p", ref.parent_columns, "l", ks)),
            (self.cutoff, self.cutoff)).fetchone()
        return int(row[0]) if row else 0

    def full_pass(self, st: Statements, new: QualifiedName) -> int:
        """Step 2: insert the referenced rows dated before the cutoff into `new` (no lock),
        and with the self-reference the closure of `new`'s references; returns the rows
        inserted."""
        conflict = sql.SQL(", ").join(map(sql.Identifier, self.key))
        done = 0
        if self.children:
            stmt = sql.SQL("{} ON CONFLICT ({}) DO NOTHING").format(self._insert(new, sql.SQL("true")), conflict)
            done += max(st.run(stmt, (self.cutoff,)).rowcount, 0)
        ref = self.self_ref
        if ref is not None:
            rs = [f"r{i}" for i in range(len(ref.child_columns))]
            notnull = sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier(a, c))
                                            for a, c in [("c", c) for c in ref.child_columns])
            pnotnull = sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier("p", c))
                                             for c in ref.child_columns)
            done += max(st.run(sql.SQL(
                "WITH RECURSIVE up ({rs}) AS ("
                " SELECT DISTINCT {cr} FROM {new} c WHERE {nn}"
                " UNION SELECT {pr} FROM {t} p JOIN up ON {join} WHERE {pnn})"
                " INSERT INTO {new} ({cols}){ovr} SELECT {pcols} FROM {t} p"
                " WHERE ({pk}) IN (SELECT {rs} FROM up) AND {old} ON CONFLICT ({conflict}) DO NOTHING").format(
                rs=sql.SQL(", ").join(map(sql.Identifier, rs)), cr=self._cols("c", ref.child_columns),
                new=new.ident(), nn=notnull, pr=self._cols("p", ref.child_columns), t=self.original.ident(),
                join=self._pairs("p", ref.parent_columns, "up", rs), pnn=pnotnull,
                cols=sql.SQL(", ").join(map(sql.Identifier, self.columns)),
                ovr=sql.SQL(" OVERRIDING SYSTEM VALUE" if self.overriding else ""),
                pcols=self._cols("p", self.columns), pk=self._cols("p", ref.parent_columns), old=self._old("p"),
                conflict=conflict), (self.cutoff,)).rowcount, 0)
        return done

    def locked_pass(self, st: Statements, live: QualifiedName, log: QualifiedName,
                    source: QualifiedName) -> tuple[int, int]:
        """Step 3, in the swap's transaction right after the two renames (`live` is the new
        table under the table's name, `source` the original under its archive name): for
        the keys in the family `log`, the rows not dated from the cutoff on are deleted,
        then those still referenced are copied again from the original. Made then, the
        changes carry the live table's name to logical subscribers, and nothing yet
        references the live table or fires on it (foreign keys are re-pointed and user
        triggers copied after). Returns (deleted, inserted)."""
        if self.self_ref is not None:
            return self._closure_locked(st, live, log, source)
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

    def _closure_locked(self, st: Statements, live: QualifiedName, log: QualifiedName,
                        source: QualifiedName) -> tuple[int, int]:
        """Step 3 with the self-reference (see the module docstring): the logged rows dated
        before the cutoff removed, then rounds of additions, then rounds of removals, each
        round over the log rows the last one added (the first over the whole log), each
        logging the rows its rows reference. Returns (deleted, inserted)."""
        ref = self.self_ref
        assert ref is not None
        cid = sql.Identifier(change_id_column(self.key))
        keys = sql.SQL(", ").join(map(sql.Identifier, self.key))
        nk = sql.SQL(", ").join(sql.Identifier("n", k) for k in self.key)
        pkeys = sql.SQL(", ").join(sql.Identifier("p", k) for k in self.key)
        moved = sql.SQL(", ").join(map(sql.Identifier, ref.child_columns))
        # the rows the changed rows reference, logged for the next round
        follow_up = sql.SQL("INSERT INTO {log} ({k}) SELECT {pk} FROM {src} p JOIN changed m ON {join}").format(
            log=log.ident(), k=keys, pk=pkeys, src=source.ident(),
            join=self._pairs("p", ref.parent_columns, "m", ref.child_columns))
        add = sql.SQL(
            "WITH changed AS (INSERT INTO {live} ({cols}){ovr} SELECT {pcols} FROM {src} p"
            " WHERE ({pk}) IN (SELECT {k} FROM {log} WHERE {cid} > %s) AND {old}"
            " AND NOT EXISTS (SELECT 1 FROM {live} x WHERE {same}) AND {refd}"
            " ON CONFLICT ({k}) DO NOTHING RETURNING {moved}),"
            " logged AS ({follow}) SELECT count(*) FROM changed").format(
            live=live.ident(), cols=sql.SQL(", ").join(map(sql.Identifier, self.columns)),
            ovr=sql.SQL(" OVERRIDING SYSTEM VALUE" if self.overriding else ""), pcols=self._cols("p", self.columns),
            src=source.ident(), pk=pkeys, k=keys, log=log.ident(), cid=cid, old=self._old("p"),
            same=self._pairs("x", self.key, "p", self.key), refd=self._referenced("p", live), moved=moved,
            follow=follow_up)
        # the logged rows dated before the cutoff first leave (a copy the full pass made may be
        # older than a write logged meanwhile); the additions then copy back those still needed
        purge = sql.SQL(
            "WITH changed AS (DELETE FROM {live} n WHERE ({nk}) IN (SELECT {k} FROM {log} WHERE {cid} > %s)"
            " AND {old} RETURNING {nmoved}), logged AS ({follow}) SELECT count(*) FROM changed").format(
            live=live.ident(), nk=nk, k=keys, log=log.ident(), cid=cid, old=self._old("n"),
            nmoved=self._cols("n", ref.child_columns), follow=follow_up)
        remove = sql.SQL(
            "WITH changed AS (DELETE FROM {live} n WHERE ({nk}) IN (SELECT {k} FROM {log} WHERE {cid} > %s)"
            " AND {old} AND NOT {refd} RETURNING {nmoved}), logged AS ({follow}) SELECT count(*) FROM changed").format(
            live=live.ident(), nk=nk, k=keys, log=log.ident(), cid=cid, old=self._old("n"),
            refd=self._referenced("n", live), nmoved=self._cols("n", ref.child_columns), follow=follow_up)
        totals = []
        for stmt, rounds in ((purge, 1), (add, 10_000), (remove, 10_000)):
            last, total = 0, 0
            for _ in range(rounds):  # a round per level of references changed (bounded: a fault, not a loop)
                upto = int(st.read(sql.SQL("SELECT coalesce(max({}), 0) FROM {}").format(cid, log.ident()),
                                   reads=[str(log)], planned=[(0,)]).scalar() or 0)
                row = st.run(stmt, (last, self.cutoff), planned=[(0,)]).fetchone()
                n = int(row[0]) if row else 0
                total, last = total + n, upto
                if n == 0:
                    break
            totals.append(total)
        purged, added, removed = totals
        return purged + removed, added


def keep_rule(refs: list[Reference], policy: dict[QualifiedName, str], original: QualifiedName,
              key: list[str], columns: list[str], overriding: bool, date_column: str, date_type: str,
              cutoff: str) -> KeepRule | None:
    """The rule of the plan's `keep` children (None: no child is kept)."""
    kept = tuple(r for r in refs if policy.get(r.child) == "keep")
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
