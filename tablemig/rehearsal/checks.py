"""Simple CHECK constraints read and satisfied before a row is sent.

A row is made from each column's statistics independently, so a constraint between columns
(`end_date >= start_date`) or a bound the values may cross by interpolation can fail. The
conditions understood here, as `pg_get_expr` prints them and joined by AND, are repaired in
the row itself:

* `column op literal` with op one of `< <= > >= = <>`, `column BETWEEN a AND b`;
* `column = ANY (ARRAY[...])` and `column IN (...)`;
* `column op column` (the column the table is ordered by, its keys and foreign keys keep
  their values: the other side moves).

Order comparisons are made only for numbers, dates, timestamps and times (text order depends
on the collation). Everything else (functions, OR, casts of columns to other types) is left
to the server: `tablemig.rehearsal.load` finds the rows it rejects and draws them again.

    >>> rules, complete = parse_check("((quantity > 0) AND (status = ANY (ARRAY['a'::text, 'b'::text])))")
    >>> [(r.column, r.op) for r in rules], complete
    ([('quantity', '>'), ('status', 'in')], True)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp

from .kinds import Kind

_OPS: dict[type[exp.Expression], str] = {exp.GT: ">", exp.GTE: ">=", exp.LT: "<", exp.LTE: "<=",
                                         exp.EQ: "=", exp.NEQ: "<>"}
_FLIP = {">": "<", ">=": "<=", "<": ">", "<=": ">=", "=": "=", "<>": "<>"}


@dataclass(frozen=True)
class Rule:
    """One condition: `column op literal(s)` or `column op other`."""

    column: str
    op: str  # < <= > >= = <> in
    literals: tuple[str, ...] = ()
    other: str | None = None


def _strip(e: exp.Expression) -> exp.Expression:
    while isinstance(e, exp.Paren):
        e = e.this
    return e


def _column(e: exp.Expression, value_name: str | None, cast: bool = True) -> str | None:
    e = _strip(e)
    if isinstance(e, exp.Cast):  # (status)::text: the column compared as text; fine for = and IN only
        if not cast:
            return None
        e = _strip(e.this)
    if isinstance(e, exp.Column) and not e.table:
        ident = e.this
        name = ident.this if isinstance(ident, exp.Identifier) else str(ident)
        if value_name is not None and name.lower() == "value" and not getattr(ident, "quoted", False):
            return value_name  # a domain's CHECK names the value VALUE
        return str(name)
    return None


def _literal(e: exp.Expression) -> str | None:
    e = _strip(e)
    if isinstance(e, exp.Cast):
        e = _strip(e.this)
    negative = False
    if isinstance(e, exp.Neg):
        negative, e = True, _strip(e.this)
    if isinstance(e, exp.Literal):
        text = str(e.this)
        return f"-{text}" if negative else text
    return None


def _literals(e: exp.Expression) -> tuple[str, ...] | None:
    e = _strip(e)
    if isinstance(e, exp.Cast):
        e = _strip(e.this)
    items = e.expressions if isinstance(e, exp.Array | exp.Tuple) else None
    if items is None:
        return None
    out = [_literal(x) for x in items]
    return None if any(x is None for x in out) else tuple(str(x) for x in out)


def _rules(e: exp.Expression, value_name: str | None) -> tuple[list[Rule], bool]:
    e = _strip(e)
    if isinstance(e, exp.And):
        a, ca = _rules(e.this, value_name)
        b, cb = _rules(e.expression, value_name)
        return a + b, ca and cb
    if isinstance(e, exp.Between):
        return _between(e, value_name)
    if isinstance(e, exp.In):
        return _in_list(e, value_name)
    op = _OPS.get(type(e))
    if op is None:
        return [], False
    return _comparison(e, op, value_name)


def _between(e: exp.Between, value_name: str | None) -> tuple[list[Rule], bool]:
    col, lo, hi = _column(e.this, value_name, False), _literal(e.args["low"]), _literal(e.args["high"])
    if col and lo is not None and hi is not None:
        return [Rule(col, ">=", (lo,)), Rule(col, "<=", (hi,))], True
    return [], False


def _in_list(e: exp.In, value_name: str | None) -> tuple[list[Rule], bool]:
    col = _column(e.this, value_name)
    items = [_literal(x) for x in e.expressions]
    if col and e.expressions and all(v is not None for v in items):
        return [Rule(col, "in", tuple(str(v) for v in items))], True
    return [], False


def _comparison(e: exp.Expression, op: str, value_name: str | None) -> tuple[list[Rule], bool]:
    left, right = e.this, e.expression
    if op == "=" and isinstance(_strip(right), exp.Any):
        col, values = _column(left, value_name), _literals(_strip(right).this)
        return ([Rule(col, "in", values)], True) if col and values else ([], False)
    equality = op in ("=", "<>")
    lcol, rcol = _column(left, value_name, equality), _column(right, value_name, equality)
    if lcol and rcol:
        return [Rule(lcol, op, other=rcol)], True
    if lcol and (lit := _literal(right)) is not None:
        return [Rule(lcol, op, (lit,))], True
    if rcol and (lit := _literal(left)) is not None:
        return [Rule(rcol, _FLIP[op], (lit,))], True
    return [], False


def parse_check(expression: str, value_name: str | None = None) -> tuple[list[Rule], bool]:
    """The conditions of a CHECK expression (as `pg_get_expr` prints it) understood here, and
    whether they are the whole expression. `value_name`: the column a domain's VALUE means."""
    try:
        tree = sqlglot.parse_one(expression, read="postgres")
    except sqlglot.errors.ParseError:
        return [], False
    return _rules(tree, value_name) if isinstance(tree, exp.Expression) else ([], False)


def _holds(kind: Kind, a: Any, op: str, b: Any) -> bool | None:
    """a op b; None when it cannot be judged here (text order, mixed types)."""
    if op == "=":
        return bool(a == b)
    if op == "<>":
        return bool(a != b)
    if not kind.ordered:
        return None
    try:
        return bool({"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op])
    except TypeError:
        return None


def _satisfying(kind: Kind, op: str, bound: Any, current: Any) -> Any | None:
    """A value for which `value op bound` holds, close to `current`."""
    if op in ("=", "<=", ">="):
        return bound
    if op == "<>":
        return kind.bump(current, 1) or kind.step(current, True)
    return kind.step(bound, op == ">")


def repair(rules: list[Rule], row: dict[str, Any], kinds: dict[str, Kind], fixed: set[str],
           rng: random.Random) -> None:
    """Change the values of `row` (column -> value, None for NULL) that break a rule, except
    those of the columns in `fixed`. A NULL satisfies a CHECK, so it is left alone."""
    for r in rules:
        kind = kinds.get(r.column)
        if kind is None or r.column not in row or row.get(r.column) is None:
            continue
        if r.other is not None:
            _repair_pair(r, row, kind, kinds, fixed)
        elif r.column not in fixed:
            _repair_literal(r, row, kind, rng)


def _repair_pair(r: Rule, row: dict[str, Any], kind: Kind, kinds: dict[str, Kind], fixed: set[str]) -> None:
    """A rule between two columns: change the one that may change."""
    assert r.other is not None
    a, b, other_kind = row.get(r.column), row.get(r.other), kinds.get(r.other)
    if b is None or other_kind is None or type(other_kind) is not type(kind):
        return
    if _holds(kind, a, r.op, b) is not False:
        return
    if r.column not in fixed:
        row[r.column] = _satisfying(kind, r.op, b, a)
    elif r.other not in fixed:
        row[r.other] = _satisfying(kind, _FLIP[r.op], a, b)


def _repair_literal(r: Rule, row: dict[str, Any], kind: Kind, rng: random.Random) -> None:
    """A rule between a column and literals: a value that satisfies it."""
    a = row.get(r.column)
    try:
        bounds = [kind.parse(v) for v in r.literals]
    except (ValueError, TypeError, ArithmeticError):
        return
    if r.op == "in":
        if a not in bounds and bounds:
            row[r.column] = rng.choice(bounds)
        return
    if _holds(kind, a, r.op, bounds[0]) is False:
        row[r.column] = _satisfying(kind, r.op, bounds[0], a)
