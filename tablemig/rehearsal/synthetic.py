"""Synthetic rows for one table, from its structure and the active site's statistics.

* Each column independently follows its statistics (`tablemig.rehearsal.distribution`): its
  NULL share (exactly), its common values, its histogram. A column whose statistics show a
  strong physical order (|correlation| >= 0.5: keys, creation dates) is drawn in that order,
  the others shuffled, so rows are written in the order the active site has them.
* A column without statistics gets values made by its kind; one with a default and no
  statistics is left to its default. Generated columns are always left to the server.
* Identity and serial columns get explicit values (their sequence is set past them after the
  load), so every key is known before a child row is made.
* A foreign key takes its parent's keys as loaded: a child row's value is drawn from the
  child column's statistics, placed at its rank among the parent's values on the active site
  (`cdf`), and the parent key at that rank in the rehearsal is taken. Children that reference
  only the newest parents on the active site do so in the rehearsal too. Without statistics on
  either side the parents are referenced evenly.
* Simple CHECKs are repaired in the row (`tablemig.rehearsal.checks`); unique keys of plain
  columns are made unique by varying a value (`Kind.bump`), or by another parent for a key
  made only of foreign-key columns.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from ..pg.names import QualifiedName
from .catalog import Column, ForeignKey, TableShape, TableStats, with_width
from .checks import Rule, parse_check, repair
from .distribution import ColumnStats, Distribution
from .kinds import Kind, TextKind, UuidKind

ORDERED = 0.5  # |correlation| from which a column is drawn in physical order
MAX_BUMPS = 1000
MAX_PARENT_TRIES = 20


@dataclass
class ParentKeys:
    """A parent's keys as loaded in the rehearsal (text, in key order) and the distribution of
    its first key column on the active site."""

    keys: list[tuple[str, ...]]
    first: Distribution | None


@dataclass
class TableRows:
    """Rows to load: values (Python values or text; None for NULL) of `columns`, in order."""

    table: QualifiedName
    columns: list[str]
    rows: list[list[Any]]
    overriding: bool  # an identity GENERATED ALWAYS column is written
    kinds: dict[str, Kind]
    notes: list[str] = field(default_factory=list)


def _order(stats: ColumnStats | None, first_choice: bool) -> int:
    corr = stats.correlation if stats else None
    if corr is None:
        return 1 if first_choice else 0
    return (1 if corr > 0 else -1) if abs(corr) >= ORDERED else 0


def _with_nulls(values: list[Any], n: int, nulls: int, rng: random.Random) -> list[Any]:
    if nulls <= 0:
        return values
    where = set(rng.sample(range(n), nulls))
    it = iter(values)
    return [None if i in where else next(it) for i in range(n)]


class TableGenerator:
    """Rows for one table; `redraw` makes another attempt at a row the server rejected."""

    def __init__(self, shape: TableShape, stats: TableStats, rows: int, *, date_column: str | None,
                 parents: dict[str, ParentKeys], deferred: Sequence[str], rng: random.Random) -> None:
        self.shape, self.stats, self.n, self.rng = shape, stats, rows, rng
        self.date_column = date_column
        self.parents = parents
        self.deferred = set(deferred)  # foreign keys filled after the load (cycles, self-references)
        self.fks = [fk for fk in shape.foreign_keys if fk.name not in self.deferred]
        self.fk_columns = {c for fk in self.fks for c in fk.columns}
        deferred_columns = {c for fk in shape.foreign_keys if fk.name in self.deferred for c in fk.columns}
        self.notes: list[str] = []
        self.kinds: dict[str, Kind] = {}
        self.dists: dict[str, Distribution] = {}
        self.written: list[Column] = []
        self.null_only: set[str] = set(deferred_columns)
        for c in shape.columns:
            if c.generated:
                continue
            col_stats = stats.columns.get(c.name)
            kind = with_width(c.kind, col_stats)
            dist = Distribution(kind, col_stats)
            self.kinds[c.name], self.dists[c.name] = dist.kind, dist
            if c.name in deferred_columns or c.name in self.fk_columns or c.sequence or dist.described:
                self.written.append(c)
            elif c.has_default:
                continue  # no statistics: the column's default fills it
            elif kind.synth(rng, 0, False) is not None:
                self.written.append(c)
            elif not c.not_null:
                self.written.append(c)
                self.null_only.add(c.name)
            else:
                raise InputError(f"cannot make values of type {c.type_name} for {shape.name}.{c.name}: it has no "
                                 "statistics on the active site, no default, and NULL is not allowed",
                                 f"ANALYZE {shape.name} on the active site, or give the column a default")
        self.unique_columns = {c for key in shape.unique_keys for c in key}
        # what a repair or a new draw never changes: the plan's dates (their distribution is the
        # point), keys from sequences, references
        self.fixed = ({c.name for c in self.written if c.sequence} | self.fk_columns | deferred_columns
                      | ({date_column} if date_column else set()))
        self.rules: list[Rule] = []
        for check in shape.checks:
            self.rules += parse_check(check.expression)[0]
        for c in self.written:
            for expression in c.domain_checks:
                self.rules += parse_check(expression, c.name)[0]

    def _order_of(self, name: str) -> int:
        # without a correlation, the plan's date column and keys from a sequence follow the
        # order rows are written in, as they do where rows are only ever appended
        first = name == self.date_column or self.shape.column(name).sequence
        return _order(self.stats.columns.get(name), first)

    # -- columns ------------------------------------------------------------------------------
    def _column_values(self, c: Column) -> list[Any]:
        n, rng = self.n, self.rng
        if c.name in self.null_only:
            return [None] * n
        s = self.stats.columns.get(c.name)
        nulls = 0 if c.not_null or s is None else min(n, round(n * s.null_frac))
        dist, kind = self.dists[c.name], self.kinds[c.name]
        unique = any(key == (c.name,) for key in self.shape.unique_keys)
        if dist.described and not (isinstance(kind, UuidKind) and s is not None and s.distinct_share(
                self.stats.rows or 0) >= 0.5):  # mostly distinct uuids: new random ones, not the bounds'

            values = dist.draw(n - nulls, rng, order=self._order_of(c.name))
            if isinstance(kind, TextKind) and s is not None and s.distinct_share(self.stats.rows or 0) >= 0.5:
                # a mostly distinct text column (names, e-mails): the statistics show a few hundred
                # of its values; a suffix keeps each row's distinct
                common = set(s.most_common_vals)
                values = [v if v in common else kind.bump(v, i + 1) for i, v in enumerate(values)]
        else:
            values = [kind.synth(rng, i, unique or c.sequence) for i in range(n - nulls)]
            if self._order_of(c.name) < 0 or c.sequence:
                values.sort(reverse=self._order_of(c.name) < 0)
        return _with_nulls(values, n, nulls, rng)

    def _parent_rank(self, fk: ForeignKey, u: float) -> float:
        """The rank (0..1) among the parent's keys of a child row at quantile `u`."""
        parent = self.parents[fk.name]
        child = self.dists.get(fk.columns[0])
        if parent.first is None or child is None or not child.described or not child.kind.ordered:
            return u
        rank = parent.first.cdf(child.value_at(u, self.rng))
        return u if rank is None else rank

    def _ranks(self, fk: ForeignKey, count: int) -> list[float]:
        """Ranks (0..1) among the parent's keys for `count` non-NULL child rows, in the child
        column's physical order."""
        order = self._order_of(fk.columns[0])
        us = [(i + self.rng.random()) / max(count, 1) for i in range(count)]
        if order < 0:
            us.reverse()
        elif order == 0:
            self.rng.shuffle(us)
        return [self._parent_rank(fk, u) for u in us]

    def _nulls(self, fk: ForeignKey) -> int:
        first = self.stats.columns.get(fk.columns[0])
        nullable = all(not self.shape.column(c).not_null for c in fk.columns)
        return min(self.n, round(self.n * first.null_frac)) if nullable and first else 0

    def fk_values(self, fk: ForeignKey) -> list[tuple[Any, ...] | None] | None:
        """One parent key (or None) per row; None when the parent has no rows and the
        foreign key does not allow NULL."""
        keys = self.parents[fk.name].keys
        if not keys:
            if any(self.shape.column(c).not_null for c in fk.columns):
                return None
            return [None] * self.n
        nulls = self._nulls(fk)
        picked = [tuple(self._parse(c, x) for c, x in zip(fk.columns, keys[min(int(q * len(keys)), len(keys) - 1)],
                                                          strict=True))
                  for q in self._ranks(fk, self.n - nulls)]
        return _with_nulls(picked, self.n, nulls, self.rng)

    def values_after_load(self, fk: ForeignKey, parent: ParentKeys, rows: int) -> list[tuple[Any, ...] | None]:
        """Values of a foreign key filled after every table is loaded (one that closes a cycle,
        or a nullable reference to the table itself), for the `rows` rows loaded."""
        self.parents[fk.name], self.n = parent, rows
        return self.fk_values(fk) or [None] * rows

    def _self_fk_values(self, fk: ForeignKey, key_rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...] | None]:
        """A foreign key to the table itself that may not be NULL: each row references itself
        or an earlier row (rows are loaded in order, so the one referenced is there)."""
        by_key = sorted(range(len(key_rows)), key=lambda i: key_rows[i])
        nulls = self._nulls(fk)
        picked = [by_key[min(int(q * len(by_key)), len(by_key) - 1)] for q in self._ranks(fk, len(key_rows) - nulls)]
        targets = _with_nulls(picked, len(key_rows), nulls, self.rng)
        return [None if j is None else key_rows[min(j, i)] for i, j in enumerate(targets)]

    def _parse(self, column: str, text: Any) -> Any:
        if not isinstance(text, str):
            return text
        try:
            return self.kinds[column].parse(text)
        except (ValueError, TypeError, ArithmeticError):
            return text

    # -- rows ---------------------------------------------------------------------------------
    def rows(self) -> TableRows:
        """The table's rows (see the module docstring)."""
        names = [c.name for c in self.written]
        index = {name: i for i, name in enumerate(names)}
        columns = {c.name: self._column_values(c) for c in self.written if c.name not in self.fk_columns}
        self_fks = [fk for fk in self.fks if fk.parent == self.shape.name]
        for fk in self.fks:
            if fk in self_fks:
                continue
            values = self.fk_values(fk)
            if values is None:
                self.notes.append(f"no rows: {fk.parent}, which {fk.name} references, has none")
                return TableRows(self.shape.name, names, [], False, self.kinds, self.notes)
            for k, col in enumerate(fk.columns):
                columns[col] = [None if v is None else v[k] for v in values]
        for col in self.fk_columns:
            columns.setdefault(col, [None] * self.n)
        rows = [[columns[name][i] for name in names] for i in range(self.n)]
        self._repair(rows, index)
        for fk in self_fks:  # the table's own keys are final now
            if not all(c in index for c in fk.parent_columns):
                raise InputError(f"{self.shape.name}: the foreign key {fk.name} to the table itself may not be NULL "
                                 "and its key is made by a default the rehearsal cannot know",
                                 "ANALYZE the table on the active site, so the key is made from its statistics")
            key_rows = [tuple(r[index[c]] for c in fk.parent_columns) for r in rows]
            for i, v in enumerate(self._self_fk_values(fk, key_rows)):
                for k, col in enumerate(fk.columns):
                    rows[i][index[col]] = None if v is None else v[k]
        overriding = any(c.identity == "a" for c in self.written)
        return TableRows(self.shape.name, names, rows, overriding, self.kinds, self.notes)

    def _repair(self, rows: list[list[Any]], index: dict[str, int]) -> None:
        if self.rules:
            names = list(index)
            for r in rows:
                row = dict(zip(names, r, strict=True))
                repair(self.rules, row, self.kinds, self.fixed, self.rng)
                r[:] = [row[n] for n in names]
        for key in self.shape.unique_keys:
            if all(c in index for c in key):
                self._make_unique(rows, key, index)

    def _make_unique(self, rows: list[list[Any]], key: tuple[str, ...], index: dict[str, int]) -> None:
        positions = [index[c] for c in key]
        vary = next((c for c in reversed(key) if c not in self.fk_columns
                     and self.kinds[c].bump(self._sample(c, rows, index), 1) is not None), None)
        fk = next((f for f in self.fks if set(f.columns) <= set(key)), None)
        seen: set[tuple[Any, ...]] = set()
        dropped = 0
        for r in rows:
            value = tuple(r[p] for p in positions)
            if any(v is None for v in value):
                continue  # NULLs never collide
            if value not in seen:
                seen.add(value)
                continue
            if vary is not None:
                value = self._bump_until_new(r, vary, positions, index, seen)
            elif fk is not None and self.parents.get(fk.name) and self.parents[fk.name].keys:
                value = self._repoint_until_new(r, fk, positions, index, seen)
            if value in seen:
                r[positions[0]] = _DROP
                dropped += 1
            else:
                seen.add(value)
        if dropped:
            rows[:] = [r for r in rows if r[positions[0]] is not _DROP]
            self.notes.append(f"{dropped} row(s) left out: no unique value for ({', '.join(key)})")

    def _bump_until_new(self, r: list[Any], vary: str, positions: list[int], index: dict[str, int],
                        seen: set[tuple[Any, ...]]) -> tuple[Any, ...]:
        """Bump the value of `vary` until the key is new (or the bumps run out); the key."""
        p = index[vary]
        base = r[p]
        value = tuple(r[q] for q in positions)
        for k in range(1, MAX_BUMPS):
            r[p] = self.kinds[vary].bump(base, k)
            value = tuple(r[q] for q in positions)
            if r[p] is not None and value not in seen:
                break
        return value

    def _repoint_until_new(self, r: list[Any], fk: ForeignKey, positions: list[int], index: dict[str, int],
                           seen: set[tuple[Any, ...]]) -> tuple[Any, ...]:
        """Point the row's foreign key at other parents until the key is new; the key."""
        keys = self.parents[fk.name].keys
        value = tuple(r[q] for q in positions)
        for _ in range(MAX_PARENT_TRIES):
            pick = keys[self.rng.randrange(len(keys))]
            for col, text in zip(fk.columns, pick, strict=True):
                r[index[col]] = self._parse(col, text)
            value = tuple(r[q] for q in positions)
            if value not in seen:
                break
        return value

    def _sample(self, column: str, rows: list[list[Any]], index: dict[str, int]) -> Any:
        return next((r[index[column]] for r in rows if r[index[column]] is not None), None)

    def redraw(self, row: list[Any], columns: list[str], constraint: str | None, attempt: int) -> list[Any] | None:
        """Another try at a row the server rejected for `constraint` (its columns; all free
        columns when unknown): first its nullable columns NULL (a NULL satisfies most CHECKs,
        and `… OR x IS NULL` is how constraints usually allow an exception), or, without any,
        its columns drawn again; the second and third time drawn again; then None (the row is
        left out)."""
        if attempt > 3:
            return None
        involved = set(self.shape.constraint_columns.get(constraint or "", ())) or set(columns)
        free = [(i, name) for i, name in enumerate(columns)
                if name in involved and name not in self.fixed and name not in self.null_only]
        nullable = [(i, name) for i, name in free if not self.shape.column(name).not_null and row[i] is not None]
        out = list(row)
        if attempt == 1 and nullable:
            for i, _ in nullable:
                out[i] = None
            return out
        for i, name in free:
            dist, kind = self.dists[name], self.kinds[name]
            value = dist.value_at(self.rng.random(), self.rng) if dist.described else kind.synth(self.rng, 0, False)
            if name in self.unique_columns and value is not None:
                value = kind.bump(value, self.rng.randrange(1, 10**6)) or value
            out[i] = value
        return out


class _Drop:
    def __repr__(self) -> str:
        return "<dropped>"


_DROP = _Drop()
