"""SQL text that carries names and catalog text safely into statements with parameters.

psycopg reads `%` in a statement given parameters as the start of a placeholder, also a
`%` inside a quoted identifier (`"a%b"`), a literal or a type name read from the catalog.
Names are data: any name a user can create must work. So every statement executed with
parameters on a tablemig connection (`EscapingCursor`, installed by `tablemig.pg.connect.connect`)
is rendered with `%` doubled everywhere except in the statement's own SQL text (where
`%s` are the placeholders): in identifiers, literals, and catalog text marked as
`Fragment`. Statements without parameters are sent as they are (there, `%` means `%`).

Dollar-quoted bodies the tool builds get a tag that does not occur in the body
(`dollar_quote`), so no name or value can end a body early.
"""

from __future__ import annotations

from typing import Any, Self, cast

import psycopg
from psycopg import sql
from psycopg.abc import AdaptContext, Params, Query
from psycopg.rows import Row


class Fragment(sql.SQL):
    """SQL text read from the catalog (a type name, an expression, a definition), spliced
    into a statement: it may contain `%` that is not a placeholder."""

    def __init__(self, text: str) -> None:
        super().__init__(text)  # catalog text, not a literal


def render(query: sql.Composable, context: AdaptContext | None) -> bytes:
    """`query` as bytes for execution with parameters: `%` doubled outside the
    statement's own SQL text (so psycopg reads each back as one `%`)."""
    if isinstance(query, sql.Composed):
        return b"".join(render(part, context) for part in query)
    if isinstance(query, sql.Placeholder) or (isinstance(query, sql.SQL) and not isinstance(query, Fragment)):
        return query.as_bytes(context)
    return query.as_bytes(context).replace(b"%", b"%%")


class EscapingCursor(psycopg.Cursor[Row]):
    """A cursor whose composed statements keep every `%` of names and catalog text when
    executed with parameters (see the module docstring)."""

    def execute(self, query: Query, params: Params | None = None, *,
                prepare: bool | None = None, binary: bool | None = None) -> Self:
        if params is not None and isinstance(query, sql.Composable):
            return super().execute(render(query, self.connection), params, prepare=prepare, binary=binary)
        return super().execute(cast(Any, query), params, prepare=prepare, binary=binary)


def bound_text(conn: psycopg.Connection[Any], query: sql.Composable | str, params: Params) -> str:
    """The statement with its parameters written in as literals, as psql would take it: for
    the record of what ran (never executed; the server gets the parameters apart). Quoting is
    the client-side binding of psycopg (its adapters, the connection's encoding)."""
    text: Query = render(query, conn) if isinstance(query, sql.Composable) else query
    try:
        return psycopg.ClientCursor(conn).mogrify(text, params)
    except (psycopg.Error, TypeError, ValueError, KeyError, IndexError) as exc:
        # a value no client-side adapter knows: the statement and its values apart
        shown = query.as_string(conn) if isinstance(query, sql.Composable) else query
        return f"{shown}\n-- parameters ({type(exc).__name__}): {params!r}"


def dollar_quote(body: str, stem: str = "tablemig") -> str:
    """`body` between dollar quotes whose tag occurs nowhere in it (nor across its end:
    a body ending in `$tablemig` would close early against the closing `$`)."""
    n = 0
    while True:
        tag = f"${stem}{n or ''}$"
        if (body + tag).find(tag) == len(body):
            return f"{tag}{body}{tag}"
        n += 1
