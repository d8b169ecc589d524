"""The time limit of the queries plan steps check with (the plan's `validation_timeout`).

Every connection `StepContext.connect` hands out runs with `statement_timeout` set to it.
A query the server cancels for running longer fails its step with `ValidationTimeout`,
which names the step, the query, the limit and the fix, instead of a bare "canceling
statement due to statement timeout". The migration's own work (load, indexes, replay,
swap) runs on the engine's connections, with limits of its own.
"""

from __future__ import annotations

import re
from typing import Any, Self

import psycopg
from psycopg import sql
from psycopg.abc import Params, Query

from ..errors import InputError, TablemigError
from .sqltext import EscapingCursor

_DURATION = re.compile(r"^(\d+)\s*(us|ms|s|min|h|d)?$")


def parse_timeout(text: str, setting: str = "validation_timeout") -> str:
    """`text` as a PostgreSQL duration without spaces (`30min`, `2h`, `500ms`; 0: no limit)."""
    m = _DURATION.match(str(text).strip())
    if not m:
        raise InputError(f"{setting} {text!r} is not a duration",
                         "give a number with a unit: e.g. '30min', '2h', '90s' or '500ms' (0: no limit)")
    return m.group(1) + (m.group(2) or "ms")


class ValidationTimeout(TablemigError):
    """A step's query ran longer than the plan's validation_timeout and was cancelled."""


class TimedCursor(EscapingCursor[Any]):
    """A cursor that turns a statement-timeout cancellation into `ValidationTimeout` (and,
    like every tablemig cursor, keeps the `%` of names: `tablemig.pg.sqltext`)."""

    step = "a plan step"
    timeout = ""

    def execute(self, query: Query, params: Params | None = None, *, prepare: bool | None = None,
                binary: bool | None = None) -> Self:
        try:
            return super().execute(query, params, prepare=prepare, binary=binary)
        except psycopg.errors.QueryCanceled as exc:
            if "statement timeout" not in (exc.diag.message_primary or ""):
                raise  # cancelled for another reason (pg_cancel_backend, Ctrl-C)
            raise ValidationTimeout(
                f"{self.step}: a query ran longer than validation_timeout ({self.timeout}) and was "
                f"cancelled: {_text(query, self.connection)}",
                "raise validation_timeout in the plan (PlanConfig(validation_timeout='2h')) or rerun the "
                "step when the server is less busy (the cancelled statement changed nothing)") from None


def cursor_class(step: str, timeout: str) -> type[TimedCursor]:
    """A `TimedCursor` subclass whose errors name `step` and `timeout`."""
    return type("StepCursor", (TimedCursor,), {"step": step, "timeout": timeout})


def _text(query: Query, conn: psycopg.Connection[Any]) -> str:
    if isinstance(query, sql.Composable):
        text = query.as_string(conn)
    elif isinstance(query, bytes):
        text = query.decode(errors="replace")
    else:
        text = str(query)
    text = " ".join(text.split())
    return text if len(text) <= 400 else text[:400] + " ..."
