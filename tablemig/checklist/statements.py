"""In a dry run, the statements a step would run (the executor's record) checked against the
active site's catalog (`tablemig.pg.statement_check`): a statement naming a table, column,
function, sequence or type that neither exists nor is created by an earlier statement of
the plan fails the step, naming the statement, the item and the object.

The objects the table_migration schema creates are known from the start: EX-1.1 installs it
before any other step runs, and under pytest-xdist that step may have run on another worker.
"""

from __future__ import annotations

from typing import Any

import psycopg

from ..errors import InputError
from ..pg.connect import connect
from ..pg.schema import render_schema
from ..pg.statement_check import MISSING, UNVERIFIED, StatementCheck, Verdict


def check_statements(dsn: str, statements: list[tuple[str, str]],
                     created: dict[tuple[str, str], frozenset[str]]) -> list[Verdict]:
    """The verdict of each of `statements` ((item, sql), in the order they would run) against
    the catalog at `dsn`; `created` holds what earlier statements create and is extended."""
    try:
        with connect(dsn, settings={"statement_timeout": "60s"}) as conn:
            check = StatementCheck(conn, created)
            if not created:
                check.check([("EX-1.1", text) for text in render_schema()])
            return check.check(statements)
    except (psycopg.Error, InputError) as exc:
        why = exc.problem if isinstance(exc, InputError) else str(exc).strip()
        return [Verdict(item, text, UNVERIFIED, f"the catalog could not be read: {why}")
                for item, text in statements]


def missing_message(verdicts: list[Verdict]) -> str:
    """Why the step fails: each statement that names a missing object, with its item."""
    parts = []
    for v in verdicts:
        if v.status == MISSING:
            parts.append(f"{v.item}: statement {_short(v.sql)!r} references {', '.join(v.missing)}, which "
                         "neither exists nor is created by an earlier statement of the plan")
    return "; ".join(parts) + " (fix the plan or the template, or create the object first)"


def _short(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def verdict_dicts(verdicts: list[Verdict], table: str | None) -> list[dict[str, Any]]:
    """The verdicts as the run's data: each with its item and table."""
    return [{**v.as_dict(), "table": table} for v in verdicts]
