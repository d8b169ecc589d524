"""Every statement a dry run would run, parsed (sqlglot, postgres dialect) and its references
checked against the catalog, or against an object an earlier statement of the same plan
creates.

`StatementCheck.check` takes a list of statements in the order they would run, each with the
checklist item that would run it, and returns one `Verdict` per statement:

* "verified": every table, column, function, sequence and type it names exists;
* "missing": something it names exists neither in the catalog nor among the objects the
  plan's earlier statements create (`Verdict.missing` names each one): the dry run fails;
* "unverified": sqlglot parses it only as an opaque command (LOCK, DO, CREATE TRIGGER, ...),
  or it holds a PL/pgSQL body (checked by the server only when the function runs): listed
  with the reason, never passed silently.

References sqlglot cannot attribute to one table (an unqualified column of a join, a name
that may be an output alias) are not judged; a qualified or single-table column is.
Parameters (`%s`, `%(name)s`) are values: they are read as NULL.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import psycopg
import sqlglot
from sqlglot import exp

VERIFIED, UNVERIFIED, MISSING = "verified", "unverified", "missing"
_PARAM = re.compile(r"%\(\w+\)s|%s")
_OPAQUE_CREATE = re.compile(
    r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?(?:CONSTRAINT\s+)?(\w+)\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"((?:\"[^\"]+\"|[\w$]+)(?:\.(?:\"[^\"]+\"|[\w$]+))?)", re.IGNORECASE)
_LEADING_COMMENTS = re.compile(r"^(?:\s+|/\*.*?\*/|--[^\n]*)*", re.DOTALL)
_PLPGSQL = re.compile(r"^(?:DO\b|CREATE\b.*\bLANGUAGE\s+'?plpgsql\b)", re.IGNORECASE | re.DOTALL)
_SEQUENCE_FUNCTIONS = {"nextval", "currval", "setval"}
# SQL constructs sqlglot reads as calls of unknown functions: ROW(a, b) is a row constructor
_CONSTRUCTS = {"row"}
ANY_COLUMNS: frozenset[str] = frozenset({"*"})  # an object whose columns are not known here

logging.getLogger("sqlglot").setLevel(logging.ERROR)  # "falling back to a Command" is our verdict


@dataclass
class Verdict:
    """The check of one statement."""

    item: str
    sql: str
    status: str
    reason: str = ""
    missing: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"item": self.item, "sql": self.sql, "status": self.status, "reason": self.reason,
                "missing": list(self.missing)}


def _name(ident: exp.Expression | str | None) -> str:
    """An identifier as the catalog spells it: unquoted names fold to lower case."""
    if ident is None:
        return ""
    if isinstance(ident, str):
        return ident
    if isinstance(ident, exp.Identifier):
        return str(ident.this) if ident.quoted else str(ident.this).lower()
    return str(ident.name).lower()


def _quoted(schema: str, name: str) -> str:
    """`"schema"."name"` as text for to_regclass / to_regtype (a parameter, never SQL)."""
    part = [f'"{p.replace(chr(34), chr(34) * 2)}"' for p in (schema, name) if p]
    return ".".join(part)


def _split_name(text: str) -> tuple[str, str]:
    parts = re.findall(r'"((?:[^"]|"")+)"|([\w$]+)', text)
    names = [q.replace('""', '"') if q else u.lower() for q, u in parts]
    return (names[-2], names[-1]) if len(names) > 1 else ("", names[-1] if names else "")


class StatementCheck:
    """Checks statements in plan order against one database; remembers what they create."""

    def __init__(self, conn: psycopg.Connection[Any],
                 created: dict[tuple[str, str], frozenset[str]] | None = None) -> None:
        self.conn = conn
        # (schema or "", name) -> columns: what earlier statements create (shared across steps)
        self.created = created if created is not None else {}
        self._relations: dict[tuple[str, str], frozenset[str] | None] = {}
        self._functions: dict[tuple[str, str], bool] = {}
        self._types: dict[tuple[str, str], bool] = {}

    # -- the catalog ----------------------------------------------------------------------
    def _created(self, schema: str, name: str) -> frozenset[str] | None:
        if (schema, name) in self.created:
            return self.created[(schema, name)]
        if not schema:
            for (s, n), cols in self.created.items():
                if n == name and s in ("", "public"):
                    return cols
        return None

    def relation_columns(self, schema: str, name: str) -> frozenset[str] | None:
        """The columns of a table, view or sequence (created earlier, or in the catalog); None
        when there is no such relation."""
        made = self._created(schema, name)
        if made is not None:
            return made
        key = (schema, name)
        if key not in self._relations:
            row = self.conn.execute(
                "SELECT c.oid, array_remove(array_agg(a.attname::text), NULL) FROM pg_class c"
                " LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
                " WHERE c.oid = to_regclass(%s) GROUP BY c.oid", (_quoted(schema, name),)).fetchone()
            self._relations[key] = frozenset(row[1]) | {"ctid", "xmin", "tableoid"} if row else None
        return self._relations[key]

    def function_exists(self, schema: str, name: str) -> bool:
        if self._created(schema, name) is not None:
            return True
        key = (schema, name)
        if key not in self._functions:
            row = self.conn.execute(
                "SELECT EXISTS (SELECT FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE p.proname = %s AND (CASE WHEN %s = '' THEN pg_function_is_visible(p.oid)"
                " ELSE n.nspname = %s END))", (name, schema, schema)).fetchone()
            self._functions[key] = bool(row and row[0])
        return self._functions[key]

    def type_exists(self, schema: str, name: str) -> bool:
        if self._created(schema, name) is not None:
            return True
        key = (schema, name)
        if key not in self._types:
            row = self.conn.execute("SELECT to_regtype(%s) IS NOT NULL", (_quoted(schema, name),)).fetchone()
            self._types[key] = bool(row and row[0])
        return self._types[key]

    # -- statements -----------------------------------------------------------------------
    def check(self, statements: list[tuple[str, str]]) -> list[Verdict]:
        """One verdict per statement of `statements` ((item, sql) in the order they would run;
        a text holding several statements gives one verdict each)."""
        out: list[Verdict] = []
        for item, text in statements:
            out.extend(self._check_text(item, text))
        return out

    def _check_text(self, item: str, text: str) -> list[Verdict]:
        bare = _PARAM.sub("NULL", text)
        try:
            trees = [t for t in sqlglot.parse(bare, read="postgres") if isinstance(t, exp.Expression)]
        except sqlglot.errors.SqlglotError as exc:
            return [Verdict(item, text, UNVERIFIED, f"sqlglot cannot parse it: {str(exc).splitlines()[0]}")]
        many = len(trees) > 1
        return [self._check_tree(item, tree.sql(dialect="postgres") if many else text, tree) for tree in trees]

    def _check_tree(self, item: str, text: str, tree: exp.Expression) -> Verdict:
        if isinstance(tree, exp.Command):
            bare = _LEADING_COMMENTS.sub("", text, count=1)
            self._remember_opaque(bare)
            if _PLPGSQL.match(bare):
                return Verdict(item, text, UNVERIFIED, "a PL/pgSQL body: the server checks it only when it runs")
            verb = str(tree.this).upper()
            return Verdict(item, text, UNVERIFIED, f"{verb}: sqlglot parses it only as an opaque command")
        if isinstance(tree, exp.Comment) and str(tree.args.get("kind", "")).upper() not in ("TABLE", "VIEW",
                                                                                           "COLUMN"):
            return Verdict(item, text, UNVERIFIED, f"COMMENT ON {str(tree.args.get('kind', '')).upper()}: "
                           "the object commented on is not checked")
        missing = self._missing(tree)
        plpgsql = self._plpgsql(tree)
        self._remember(tree)
        if missing:
            return Verdict(item, text, MISSING, "not in the catalog nor created by an earlier statement: "
                           + ", ".join(missing), missing)
        if plpgsql:
            return Verdict(item, text, UNVERIFIED, "a PL/pgSQL body: the server checks it only when it runs")
        if self._routine(tree):
            return Verdict(item, text, UNVERIFIED, "a function body given as a string is not parsed here "
                           "(the server checks a LANGUAGE sql body when it creates the function)")
        return Verdict(item, text, VERIFIED)

    @staticmethod
    def _routine(tree: exp.Expression) -> bool:
        return isinstance(tree, exp.Create) and str(tree.args.get("kind", "")).upper() in ("FUNCTION", "PROCEDURE")

    @classmethod
    def _plpgsql(cls, tree: exp.Expression) -> bool:
        if not cls._routine(tree):
            return False
        lang = tree.find(exp.LanguageProperty)
        return lang is not None and _name(lang.this).lower() == "plpgsql"

    def _remember_opaque(self, text: str) -> None:
        m = _OPAQUE_CREATE.match(text)
        if m:
            self.created[_split_name(m.group(2))] = ANY_COLUMNS

    def _remember(self, tree: exp.Expression) -> None:
        if isinstance(tree, exp.Create):
            target = tree.this
            if isinstance(target, exp.Schema) and isinstance(target.this, exp.Table):
                cols = frozenset(_name(c.this) for c in target.expressions if isinstance(c, exp.ColumnDef))
                table = target.this
                self.created[(_name(table.args.get("db")), _name(table.this))] = cols or ANY_COLUMNS
            elif isinstance(target, exp.UserDefinedFunction) and isinstance(target.this, exp.Table):
                self.created[(_name(target.this.args.get("db")), _name(target.this.this))] = ANY_COLUMNS
            elif isinstance(target, exp.Table):
                self.created[(_name(target.args.get("db")), _name(target.this))] = ANY_COLUMNS
            elif isinstance(target, exp.Index) and target.this is not None:
                # an index lives in its table's schema
                on = target.args.get("table")
                schema = _name(on.args.get("db")) if isinstance(on, exp.Table) else ""
                self.created[(schema, _name(target.this))] = ANY_COLUMNS
        elif isinstance(tree, exp.Alter) and isinstance(tree.this, exp.Table):
            schema, name = _name(tree.this.args.get("db")), _name(tree.this.this)
            for action in tree.args.get("actions") or []:
                if isinstance(action, exp.AlterRename) and isinstance(action.this, exp.Table):
                    cols = self.relation_columns(schema, name) or ANY_COLUMNS
                    self.created[(_name(action.this.args.get("db")) or schema, _name(action.this.this))] = cols
                elif isinstance(action, exp.ColumnDef):
                    cols = self.relation_columns(schema, name) or frozenset()
                    self.created[(schema, name)] = cols | {_name(action.this)}

    def _missing(self, tree: exp.Expression) -> list[str]:
        missing: list[str] = []
        ctes = {_name(c.alias_or_name).lower() for c in tree.find_all(exp.CTE)}
        created_here = self._created_target(tree)
        tables: dict[str, tuple[str, str, frozenset[str] | None]] = {}  # alias -> (schema, name, columns)
        for table in tree.find_all(exp.Table):
            if not isinstance(table.this, exp.Identifier) or isinstance(table.parent, exp.UserDefinedFunction):
                continue  # a function in FROM, or the name of a function being created
            schema, name = _name(table.args.get("db")), _name(table.this)
            if (not schema and name in ctes) or (schema, name) == created_here:
                continue
            if isinstance(tree, exp.Alter) and isinstance(table.parent, exp.AlterRename):
                continue  # the new name of a rename
            if isinstance(table.parent, exp.Drop) and str(table.parent.args.get("kind", "")).upper() == "CONSTRAINT":
                continue  # ALTER TABLE ... DROP CONSTRAINT names a constraint, not a table
            cols = self.relation_columns(schema, name)
            label = f"table {schema + '.' if schema else ''}{name}"
            if cols is None:
                if not (isinstance(tree, (exp.Create, exp.Drop)) and tree.args.get("exists")):
                    missing.append(label)
                continue
            tables[_name(table.args.get("alias") and table.alias) or name] = (schema, name, cols)
        missing += self._missing_columns(tree, tables)
        missing += self._missing_routines(tree)
        return list(dict.fromkeys(missing))

    @staticmethod
    def _created_target(tree: exp.Expression) -> tuple[str, str] | None:
        if not isinstance(tree, exp.Create):
            return None
        target = tree.this.this if isinstance(tree.this, exp.Schema) else tree.this
        if isinstance(target, exp.Table):
            return _name(target.args.get("db")), _name(target.this)
        return None

    def _missing_columns(self, tree: exp.Expression,
                         tables: dict[str, tuple[str, str, frozenset[str] | None]]) -> list[str]:
        out: list[str] = []
        single = next(iter(tables.values())) if len(tables) == 1 else None
        subqueries = any(True for _ in tree.find_all(exp.Subquery)) or any(True for _ in tree.find_all(exp.CTE))
        aliases = {_name(a.alias) for a in tree.find_all(exp.Alias)}
        if isinstance(tree, exp.Insert) and isinstance(tree.this, exp.Schema):
            target = tables.get(_name(tree.this.this.args.get("alias") and tree.this.this.alias)
                                or _name(tree.this.this.this))
            if target is not None:
                for ident in tree.this.expressions:
                    out += self._column(target, _name(ident))
        for column in tree.find_all(exp.Column):
            if isinstance(column.this, exp.Star):
                continue
            qualifier = _name(column.args.get("table"))
            if qualifier:
                if qualifier in tables:
                    out += self._column(tables[qualifier], _name(column.this))
            elif single is not None and not subqueries and _name(column.this) not in aliases \
                    and not isinstance(tree, (exp.Create, exp.Insert)):
                out += self._column(single, _name(column.this))
        return out

    @staticmethod
    def _column(table: tuple[str, str, frozenset[str] | None], column: str) -> list[str]:
        schema, name, cols = table
        if cols is None or cols == ANY_COLUMNS or column in cols:
            return []
        return [f"column {column} of {schema + '.' if schema else ''}{name}"]

    def _missing_routines(self, tree: exp.Expression) -> list[str]:
        out: list[str] = []
        for call in tree.find_all(exp.Anonymous):
            out += self._missing_call(call)
        for dtype in tree.find_all(exp.DataType):
            if dtype.this == exp.DataType.Type.USERDEFINED:
                kind = dtype.args.get("kind")
                text = str(kind) if kind is not None else dtype.sql(dialect="postgres")
                schema, name = _split_name(text)
                if not self.type_exists(schema, name):
                    out.append(f"type {text}")
        return out

    def _missing_call(self, call: exp.Anonymous) -> list[str]:
        """A function call: the function, and the sequence a nextval/currval/setval names."""
        name = _name(call.this) if isinstance(call.this, exp.Identifier) else str(call.this).lower()
        if name in _CONSTRUCTS:
            return []
        parent = call.parent
        schema = ""
        if isinstance(parent, exp.Dot) and parent.expression is call:
            schema = _name(parent.this)
        elif isinstance(parent, exp.Table) and parent.this is call:  # a function in FROM
            schema = _name(parent.args.get("db"))
        out = []
        if name in _SEQUENCE_FUNCTIONS and call.expressions and isinstance(call.expressions[0], exp.Literal):
            seq = _split_name(str(call.expressions[0].this))
            if self.relation_columns(*seq) is None:
                out.append(f"sequence {'.'.join(p for p in seq if p)}")
        if not self.function_exists(schema, name):
            out.append(f"function {schema + '.' if schema else ''}{name}")
        return out
